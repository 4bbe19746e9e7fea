"""Rollouts, bit-for-bit replay, rescoring, and the sanity of the rewards on the default corpus."""

import json
import subprocess
import sys

import pytest
import yaml
from duplexgym.agents.evaluation.replay import replay_check, rescore
from duplexgym.agents.evaluation.rollout import play_episode, rollout
from duplexgym.rewards.record import EpisodeRecord

from duplexgym.constants import AXES
from tests.conftest import REPO


def cli(*args):
    return subprocess.run([sys.executable, "-m", "duplexgym.cli", *args], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def oracle_run(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("rollout")
    proc = cli("rollout", "--env", "duplexgym/Interactivity-v0", "--corpus", str(small_corpus), "--agent", "oracle",
               "--episodes", "12", "--seed", "5", "--out", str(out), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_rollout_json_contract_and_records(oracle_run):
    out, summary = oracle_run
    assert summary["episodes"] == 12 and summary["out"] == str(out)
    assert {"reward_mean", "reward_std", "by_axis"} <= set(summary)
    assert sum(v["episodes"] for v in summary["by_axis"].values()) == 12
    assert all({"episodes", "reward_mean"} <= set(v) for v in summary["by_axis"].values())
    records = sorted((out / "episodes").glob("*.json"))
    assert len(records) == 12
    rec = EpisodeRecord.load(records[0])
    assert rec.text_tokens.shape == (rec.n_frames,) and rec.audio_codes.shape == (8, rec.n_frames)
    assert rec.rewards.sum() == pytest.approx(rec.reward_terms["reward"])


def test_same_seed_same_rollout(oracle_run, small_corpus, tmp_path):
    out, summary = oracle_run
    again = rollout("duplexgym/Interactivity-v0", str(small_corpus), "oracle", 12, 5, tmp_path, progress=False)
    assert again["reward_mean"] == summary["reward_mean"] and again["by_axis"] == summary["by_axis"]
    for a, b in zip(sorted((out / "episodes").glob("*.npz")), sorted((tmp_path / "episodes").glob("*.npz"))):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()


def test_replay_check_reproduces_every_bit(oracle_run):
    out, _ = oracle_run
    for record in sorted((out / "episodes").glob("*.json"))[:4]:
        result = replay_check(record)
        assert result["ok"], result["mismatches"]
    proc = cli("replay", str(sorted((out / "episodes").glob("*.json"))[0]), "--check")
    assert proc.returncode == 0 and proc.stdout.startswith("OK")


def test_replay_check_catches_a_changed_record(oracle_run, tmp_path):
    out, _ = oracle_run
    src = sorted((out / "episodes").glob("*.json"))[0]
    rec = EpisodeRecord.load(src)
    rewards = rec.rewards.copy()
    rewards[-1] += 1e-12
    tampered = type(rec)(**{**rec.__dict__, "rewards": rewards})
    path = tampered.save(tmp_path / "tampered")
    proc = cli("replay", str(path), "--check", "--json")
    assert proc.returncode == 1
    assert "reward of step" in " ".join(json.loads(proc.stdout)["mismatches"])


def test_rescore_with_the_same_spec_gives_the_rollout_rewards(oracle_run, tmp_path):
    out, summary = oracle_run
    spec = EpisodeRecord.load(sorted((out / "episodes").glob("*.json"))[0]).env["rewards"]
    (tmp_path / "same.yaml").write_text(yaml.safe_dump(spec))
    again, per_episode = rescore(out / "episodes", tmp_path / "same.yaml")
    assert again["reward_mean"] == summary["reward_mean"] and again["by_axis"] == summary["by_axis"]
    saved = [EpisodeRecord.load(p).reward_terms for p in sorted((out / "episodes").glob("*.json"))]
    assert [t["reward"] for t in per_episode] == [t["reward"] for t in saved]


def test_rescore_an_ablation(oracle_run, tmp_path):
    out, summary = oracle_run
    spec = {"activity": {"reader": "text"},
            "terms": {"pause": {"weight": 0.0}, "turn": {"weight": 2.0}, "backchannel": {}, "interruption": {}}}
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump(spec))
    proc = cli("rescore", str(out / "episodes"), "--rewards", str(tmp_path / "ablation.yaml"), "--json")
    assert proc.returncode == 0, proc.stderr
    ablated = json.loads(proc.stdout)
    for axis, entry in ablated["by_axis"].items():
        base = summary["by_axis"][axis]
        factor = {"pause": 0.0, "turn": 2.0}.get(axis, 1.0)
        assert entry["reward_mean"] == pytest.approx(factor * base["reward_mean"])
        assert entry.get("fdb_tor") == base.get("fdb_tor")  # weight 0 still logs the metrics
    bad = tmp_path / "bad.yaml"
    bad.write_text("terms: {pause: {weight: heavy}}\n")
    proc = cli("rescore", str(out / "episodes"), "--rewards", str(bad))
    assert proc.returncode == 2 and "terms.pause.weight: expected a number" in proc.stderr


def test_oracle_beats_silent_and_talk_on_every_axis(default_corpus, tmp_path):
    """Rule rewards with silero VAD on the agents' audio, over every segment of the default corpus."""
    corpus, _ = default_corpus
    from duplexgym.corpora.manifest import read_manifest

    n = len(read_manifest(corpus))
    table = {}
    for agent in ("silent", "talk", "oracle"):
        summary = rollout("duplexgym/Interactivity-v0", str(corpus), agent, n, 0, tmp_path / agent,
                          env_kwargs={"obs_mode": "waveform", "action_mode": "waveform"}, progress=False)
        assert summary["failed"] == 0
        table[agent] = {axis: summary["by_axis"][axis]["reward_mean"] for axis in AXES}
    print("\nreward means (waveform, silero VAD), default corpus:")
    print(f"{'agent':<8}" + "".join(f"{a:>14}" for a in AXES))
    for agent, row in table.items():
        print(f"{agent:<8}" + "".join(f"{row[a]:>14.3f}" for a in AXES))
    for axis in AXES:
        assert table["oracle"][axis] > table["silent"][axis], axis
        assert table["oracle"][axis] > table["talk"][axis], axis


def test_quality_term_in_episodes_and_judge_failures_are_reported(small_corpus, tmp_path):
    """The quality term rides along every axis; a judge that cannot be reached is reported in
    ``failed`` (the episode and the other terms go on), never scored as 0."""
    import importlib.resources

    import gymnasium as gym

    sp_path = str(importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1")
    spec = {"activity": {"reader": "text"},
            "terms": {"turn": {}, "quality": {"weight": 0.5, "params": {"backend": "embedding"}}}}
    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(small_corpus), rewards=spec, text_tokenizer=sp_path)
    from duplexgym.agents.policies import make_agent

    agent = make_agent("oracle", env)
    terms = play_episode(env, agent, seed=0)
    assert set(terms["terms"]) == {"turn", "quality"} and not terms["failed"]
    q = terms["terms"]["quality"]
    assert 0.0 <= q["value"] <= 1.0 and q["metrics"]["backend"] == "embedding"
    assert terms["reward"] == pytest.approx(terms["terms"]["turn"]["value"] + 0.5 * q["value"])

    down = {"activity": {"reader": "text"},
            "terms": {"turn": {}, "quality": {"weight": 0.5, "params": {
                "backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "judge", "timeout_s": 0.5,
                "max_retries": 1, "backoff_s": 0.01, "use_cache": False}}}}
    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(small_corpus), rewards=down, text_tokenizer=sp_path)
    terms = play_episode(env, agent, seed=0)
    assert "quality" in terms["failed"] and "quality" not in terms["terms"]
    assert terms["reward"] == terms["terms"]["turn"]["value"]
