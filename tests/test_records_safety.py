"""Records are files anyone can hand you: replay never sends the judge key to a server a record
names, every stored array is checked, rescoring keeps the records' own activity reader, and
rollouts never mix or lose runs (issue 10, cases 2, 8, 10, 11)."""

import importlib.resources
import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from duplexgym.agents.evaluation.replay import replay_check, rescore
from duplexgym.agents.evaluation.rollout import play_episode, rollout
from duplexgym.agents.policies import make_agent
from duplexgym.rewards.record import EpisodeRecord

from tests.chat_server import ChatServer

SP = str(importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1")
KEY = "sk-duplexgym-test-secret-0123456789"


def judged_record(corpus, tmp_path, url: str) -> EpisodeRecord:
    """A turn episode of the oracle with an LLM-judged quality term on the server at ``url``."""
    spec = {"activity": {"reader": "text"},
            "terms": {"turn": {}, "quality": {"weight": 0.5, "params": {
                "backend": "openai", "base_url": url, "model": "judge", "use_cache": False, "timeout_s": 5}}}}
    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(corpus), rewards=spec, text_tokenizer=SP,
                   record_dir=tmp_path / "records")
    play_episode(env, make_agent("oracle", env), seed=0)
    return env.unwrapped.episode_record()


def test_replay_never_sends_the_key_to_a_server_named_by_the_record(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("DUPLEXGYM_JUDGE_API_KEY", KEY)
    with ChatServer() as mine, ChatServer() as attacker:
        record = judged_record(small_corpus, tmp_path, mine.url)
        assert "quality" in record.reward_terms["terms"] and mine.requests == 1
        assert mine.auth_headers == [f"Bearer {KEY}"]  # the user's own run, the user's own server
        # someone edits the shared record so that its spec names their server
        path = next((tmp_path / "records").glob("*.json"))
        meta = json.loads(path.read_text())
        meta["env"]["rewards"]["terms"]["quality"]["params"]["base_url"] = attacker.url
        path.write_text(json.dumps(meta))
        result = replay_check(path)
        assert result["ok"], result
        assert attacker.requests == 0 and mine.requests == 1  # nobody was contacted
        assert any("quality: taken from the record" in n for n in result["notes"])
        # with a judge named on the command line, the user's own server re-judges it
        again = replay_check(path, judge={"base_url": mine.url, "model": "judge"})
        assert again["ok"] and mine.requests == 2 and attacker.requests == 0
        assert any("re-judged by" in n for n in again["notes"])
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "replay", str(path), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "note: quality: taken from the record" in proc.stdout


def test_replay_checks_every_stored_array_and_reports_corrupt_files(small_corpus, tmp_path):
    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(small_corpus), record_dir=tmp_path)
    play_episode(env, make_agent("oracle", env), seed=1)
    path = next(tmp_path.glob("*.json"))
    assert replay_check(path)["ok"]
    npz = path.with_suffix(".npz")
    original = npz.read_bytes()
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    for name in ("audio_codes", "text_tokens"):
        edited = dict(arrays)
        edited[name] = edited[name].copy()
        edited[name].flat[3] = (edited[name].flat[3] + 1) % 2048  # an edit that changes no reward
        with open(npz, "wb") as fh:
            np.savez(fh, **edited)
        result = replay_check(path)
        assert not result["ok"] and any(name in m and "digest" in m for m in result["mismatches"]), (name, result)
    npz.write_bytes(original[: len(original) // 2])  # a cut file: a MISMATCH naming it, no traceback
    result = replay_check(path)
    assert not result["ok"] and str(npz) in result["mismatches"][0] and "not a readable" in result["mismatches"][0]
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "replay", str(path), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout.startswith("MISMATCH") and "Traceback" not in proc.stderr


def test_rescore_follows_the_records_reader_unless_the_spec_names_one(small_corpus, tmp_path):
    run = tmp_path / "run"
    rollout("duplexgym/TurnTaking-v0", str(small_corpus), "oracle", 3, 0, run, progress=False)  # tokens, text reader
    made = rollout("duplexgym/TurnTaking-v0", str(small_corpus), "oracle", 3, 0, tmp_path / "again", progress=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text("terms:\n  turn: {weight: 1.0}\n")  # no activity reader: the records' own
    summary, _ = rescore(run / "episodes", spec)
    assert summary["activity_readers"] == {"text": 3}
    assert summary["reward_mean"] == pytest.approx(made["reward_mean"])  # the oracle's score is kept
    vad = tmp_path / "vad.yaml"
    vad.write_text("activity: {reader: vad}\nterms:\n  turn: {weight: 1.0}\n")
    summary, _ = rescore(run / "episodes", vad)
    assert summary["activity_readers"] == {"vad": 3}
    assert any("another activity reader" in n for n in summary["notes"])  # said, not silent
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "rescore", str(run / "episodes"), "--rewards",
                           str(vad)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "activity read with: vad (3 records)" in proc.stdout and "note:" in proc.stdout


def test_rollout_outs_never_mix_runs(small_corpus, tmp_path):
    with pytest.raises(ValueError, match="--episodes must be a whole number >= 1, got 0"):
        rollout("duplexgym/TurnTaking-v0", str(small_corpus), "silent", 0, 0, tmp_path / "zero", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        rollout("duplexgym/TurnTaking-v0", str(small_corpus), "silent", 1, 0, tmp_path / "file", progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no rollout.json"):
        rollout("duplexgym/TurnTaking-v0", str(small_corpus), "silent", 1, 0, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    run = tmp_path / "run"
    rollout("duplexgym/TurnTaking-v0", str(small_corpus), "silent", 3, 0, run, progress=False)
    with pytest.raises(ValueError, match="holds an earlier rollout .3 episode records.; pass --overwrite"):
        rollout("duplexgym/TurnTaking-v0", str(small_corpus), "oracle", 2, 0, run, progress=False)
    (run / "keep.txt").write_text("mine")
    rollout("duplexgym/TurnTaking-v0", str(small_corpus), "oracle", 2, 0, run, progress=False, overwrite=True)
    assert len(list((run / "episodes").glob("*.json"))) == 2 and (run / "keep.txt").read_text() == "mine"
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "rollout", "--env", "duplexgym/TurnTaking-v0",
                           "--corpus", str(small_corpus), "--agent", "silent", "--episodes", "0", "--seed", "0",
                           "--out", str(tmp_path / "cli")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--episodes must be" in proc.stderr and not (tmp_path / "cli").exists()
