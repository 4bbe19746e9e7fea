"""``eval --live``: the baselines and the tiny Moshi in live dialogues, the table and JSON, the export."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from duplexgym.agents.evaluation.live import (
    evaluate_live,
    format_live_table,
    live_eval,
    replay_check_live,
    rescore_live,
)

from duplexgym.constants import FRAME_S, SAMPLE_RATE
from tests.conftest import REPO

#: The keys ``duplexgym eval --live --json`` promises.
JSON_KEYS = {"agent", "dialogues", "answered_share", "latency_median_s", "latency_p90_s", "cut_ins_per_min",
             "yield_median_s", "overlap_share", "backchannels_per_min", "reward_mean"}


@pytest.fixture(scope="module")
def baselines(small_corpus, tmp_path_factory):
    """silent, talk and vad in 4 live dialogues of 16 s with the script user (waveform, silero)."""
    out = {}
    for agent in ("silent", "talk", "vad"):
        folder = tmp_path_factory.mktemp(agent)
        out[agent] = evaluate_live(small_corpus, agent, user="script", dialogues=4, max_s=16.0, seed=0,
                                   obs_mode="waveform", action_mode="waveform", record_dir=folder / "records",
                                   export=folder / "export" if agent == "vad" else None, progress=False)
        out[agent]["folder"] = folder
    return out


def test_vad_answers_more_than_silent_and_cuts_in_less_than_talk(baselines):
    silent, talk, vad = baselines["silent"], baselines["talk"], baselines["vad"]
    print("\n" + format_live_table([silent, talk, vad]))
    assert silent["answered_share"] == 0.0 and vad["answered_share"] > 0.5
    assert talk["cut_ins_per_min"] > 0 and vad["cut_ins_per_min"] < talk["cut_ins_per_min"]
    assert vad["reward_mean"] > max(silent["reward_mean"], talk["reward_mean"])
    assert silent["long_silences_per_min"] > vad["long_silences_per_min"]
    assert 0.2 < vad["latency_median_s"] < 1.5 and talk["overlap_share"] > vad["overlap_share"]
    for s in (silent, talk, vad):
        assert JSON_KEYS <= set(s) and s["failed"] == 0 and s["dialogues"] == 4
        json.dumps(s, default=str)


def test_records_replay_and_rescore_to_the_same_numbers(baselines):
    for agent in ("talk", "vad"):
        records = baselines[agent]["folder"] / "records"
        first = sorted(records.glob("*.json"))[0]
        assert replay_check_live(first)["ok"]
        summary, _ = rescore_live(records)
        for key in JSON_KEYS - {"agent"}:
            assert summary[key] == baselines[agent][key], key


def test_export_writes_a_stereo_wav_a_timeline_and_a_transcript(baselines):
    export = baselines["vad"]["folder"] / "export"
    marker = json.loads((export / "live_export.json").read_text())
    assert len(marker["dialogues"]) == 4
    folder = export / marker["dialogues"][0]["folder"]
    audio, rate = sf.read(str(folder / "listen.wav"))
    info = json.loads((folder / "dialogue.json").read_text())
    assert rate == SAMPLE_RATE and audio.shape == (round(info["duration_s"] / FRAME_S) * 1920, 2)
    user, agent = np.abs(audio[:, 0]).max(), np.abs(audio[:, 1]).max()
    assert user > 0.1 and agent > 0.1  # both sides speak
    assert (folder / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    transcript = json.loads((folder / "transcript.json").read_text())
    assert {t["speaker"] for t in transcript} == {"USER", "ASSISTANT"}
    first_user = next(t for t in transcript if t["speaker"] == "USER")
    assert first_user["text"] == info["schedule"][0]["text"]
    assert "USER" in (folder / "transcript.txt").read_text()


def test_tiny_moshi_in_a_live_dialogue_and_its_replay(small_corpus, tmp_path):
    summary = evaluate_live(small_corpus, "moshi", user="replay", dialogues=1, max_s=10.0, seed=0,
                            record_dir=tmp_path / "records", progress=False)
    assert summary["obs_mode"] == "codes" and summary["action_mode"] == "tokens" and summary["failed"] == 0
    assert JSON_KEYS <= set(summary) and summary["per_dialogue"][0]["frames"] > 0
    [record] = sorted((tmp_path / "records").glob("*.json"))
    result = replay_check_live(record)  # no agent needed: the record holds Moshi's tokens
    assert result["ok"], result
    meta = json.loads(record.read_text())
    assert meta["agent_text"] is not None  # decoded with Moshi's own tokenizer


def test_live_eval_prints_both_tables_and_one_json_object(small_corpus):
    summary, text = live_eval(small_corpus, "silent", user="script", dialogues=2, max_s=8.0, obs_mode="waveform",
                              action_mode="waveform", progress=False)
    assert JSON_KEYS <= set(summary) and summary["dialogues"] == 2
    assert summary["replay"]["agent"] == "silent" and "by_axis" in summary["replay"]
    assert "Full-Duplex-Bench v1 metrics" in text and "Live dialogues (Conversation-v0" in text
    assert text.index("Full-Duplex-Bench") < text.index("Live dialogues")
    json.loads(json.dumps(summary))
    with pytest.raises(ValueError, match="--dialogues must be a whole number >= 1"):
        evaluate_live(small_corpus, "silent", dialogues=0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "duplexgym.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_the_command_line_plays_live_dialogues_and_replays_and_rescores_their_records(small_corpus, baselines,
                                                                                    tmp_path):
    proc = _cli("eval", "--live", "--corpus", str(small_corpus), "--agent", "silent", "--user", "script",
                "--dialogues", "2", "--max-s", "8", "--per-axis", "1", "--obs-mode", "waveform", "--action-mode",
                "waveform", "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert JSON_KEYS <= set(summary) and summary["dialogues"] == 2 and summary["user"] == "script"
    assert summary["answered_share"] == 0.0 and summary["replay"]["episodes"] == 4  # 1 per axis
    # `duplexgym replay` and `rescore` take live records as they take replay records
    record = sorted((baselines["vad"]["folder"] / "records").glob("*.json"))[0]
    proc = _cli("replay", str(record), "--check", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout + proc.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text("terms: {turn: {weight: 1.0}}\n")
    proc = _cli("rescore", str(baselines["vad"]["folder"] / "records"), "--rewards", str(spec), "--json")
    assert proc.returncode == 0, proc.stderr
    rescored = json.loads(proc.stdout)
    assert rescored["episodes"] == 4 and set(rescored["by_axis"]) == {"turn"}


@pytest.mark.parametrize("args, message", [
    (["--user", "script"], "--user applies to live dialogues only: add --live"),
    (["--live", "--user", "llm"], "--user llm needs --llm-url"),
    (["--live", "--script", "x.yaml"], "--script applies to --user script or llm only"),
    (["--live", "--dialogues", "0"], "--dialogues must be a whole number >= 1"),
])
def test_live_options_are_checked_on_the_command_line(small_corpus, args, message):
    proc = _cli("eval", "--corpus", str(small_corpus), "--agent", "silent", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
