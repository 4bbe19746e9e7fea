"""Round trip: ``duplexgym eval --export``, then Full-Duplex-Bench's scoring re-implemented over the
exported files only (tests/fdb_file_scorer.py), gives every per-sample value the env reported.

On the embedded default corpus (the ``default_corpus`` fixture), for the four baselines (silent,
talk, oracle = the human reference, vad), with both metric sources: ``vad`` (3 segments per axis)
and ``asr`` (real faster-whisper with the shipped whisper-base, 1 segment per axis: CPU ASR costs
~15-18 s per minute of speech).
"""

import json

import numpy as np
import pytest
import soundfile as sf
from duplexgym.agents.evaluation.evaluate import evaluate
from duplexgym.agents.evaluation.export import TASK_FOLDERS

from tests.fdb_file_scorer import dataset_numbers, score_export

AGENTS = ("silent", "talk", "oracle", "vad")
PER_AXIS = {"vad": 3, "asr": 1}
SPECS = {"vad": None, "asr": {"metrics": {"source": "asr", "onset_refinement": True}}}


def _asr_or_skip():
    pytest.importorskip("faster_whisper", reason="faster-whisper not installed (optional: ASR metrics)")
    from duplexgym.rewards.asr import asr_available

    if asr_available():
        pytest.skip(asr_available())


def _export_all(corpus, tmp_path_factory, source: str) -> dict:
    out = {}
    for agent in AGENTS:
        folder = tmp_path_factory.mktemp(f"fdb-{source}-{agent}") / "export"
        summary = evaluate(corpus, agent, per_axis=PER_AXIS[source], seed=3, rewards=SPECS[source],
                           export=folder, progress=False)
        out[agent] = (summary, folder)
    return out


@pytest.fixture(scope="module")
def vad_exports(default_corpus, tmp_path_factory):
    """``{agent: (eval summary, export folder)}`` with the default metric source (vad)."""
    return _export_all(default_corpus[0], tmp_path_factory, "vad")


@pytest.fixture(scope="module")
def asr_exports(default_corpus, tmp_path_factory):
    """The same with ``metrics: {source: asr, onset_refinement: true}``."""
    _asr_or_skip()
    return _export_all(default_corpus[0], tmp_path_factory, "asr")


def _env_metrics(folder, axis: str) -> dict[str, dict]:
    """``{sample: the axis term's metrics}`` as the env returned them (episode.json)."""
    task = folder / TASK_FOLDERS[axis]
    out = {}
    for sample in task.iterdir():
        if sample.is_dir():
            episode = json.loads((sample / "episode.json").read_text())
            out[sample.name] = episode["reward_terms"]["terms"][axis]["metrics"]
    return out


def _check(summary, folder, source):
    files = score_export(folder)
    assert set(files) == set(TASK_FOLDERS)
    compared = 0
    for axis, per_sample in files.items():
        env = _env_metrics(folder, axis)
        assert set(env) == set(per_sample) and per_sample
        for sample, got in per_sample.items():
            mine = env[sample]
            assert mine["fdb_source"] == source
            where = f"{axis}/{sample}"
            assert got["tor"] == mine["fdb_tor"], where
            if axis in ("turn", "interruption"):
                assert got["latency_s"] == mine["fdb_latency_s"], where
            if axis == "backchannel":
                assert [list(x) for x in got["segments"]] == mine["fdb_segments"], where
                assert got["frequency"] == pytest.approx(mine["fdb_frequency"], abs=1e-12), where
                assert got["jsd"] == pytest.approx(mine["fdb_jsd"], abs=1e-9), where
            compared += 1
        # the dataset numbers of the files are the summary's
        numbers = dataset_numbers(axis, per_sample)
        entry = summary["by_axis"][axis]
        for key, value in numbers.items():
            assert entry[key] == pytest.approx(value, abs=1e-9) if value is not None else entry[key] is None, (axis, key)
        assert entry["metrics_source"] == source
    assert summary["metrics_source"] == source
    return compared


@pytest.mark.parametrize("agent", AGENTS)
def test_exported_files_score_as_the_env_vad_source(vad_exports, agent):
    summary, folder = vad_exports[agent]
    assert _check(summary, folder, "vad") == 4 * PER_AXIS["vad"]


@pytest.mark.parametrize("agent", AGENTS)
def test_exported_files_score_as_the_env_asr_source(asr_exports, agent):
    summary, folder = asr_exports[agent]
    assert _check(summary, folder, "asr") == 4 * PER_AXIS["asr"]
    # refined latencies are reported beside the benchmark's, never instead of them
    for axis in ("turn", "interruption"):
        for m in _env_metrics(folder, axis).values():
            assert "fdb_latency_refined_s" in m
            if m["fdb_tor"]:
                assert m["fdb_latency_refined_s"] >= m["fdb_latency_s"]
            else:
                assert m["fdb_latency_refined_s"] is None


def test_output_json_is_in_the_official_format(vad_exports):
    for agent, (_, folder) in vad_exports.items():
        for axis, task in TASK_FOLDERS.items():
            for sample in (folder / task).iterdir():
                if not sample.is_dir():
                    continue
                doc = json.loads((sample / "output.json").read_text())
                assert set(doc) == {"text", "chunks", "source"} and doc["source"] == "vad"
                assert all(set(c) == {"text", "timestamp"} and len(c["timestamp"]) == 2 for c in doc["chunks"])
                assert doc["text"] == " ".join(c["text"] for c in doc["chunks"])
                assert sf.info(str(sample / "input.wav")).frames == sf.info(str(sample / "output.wav")).frames
    # the talk agent speaks throughout: a takeover everywhere, as the files say too
    assert vad_exports["talk"][0]["by_axis"]["pause"]["tor"] == 1.0


def test_pause_episodes_are_exported_up_to_the_metric_window(default_corpus, tmp_path):
    """A pause segment that holds the user's turn end: the human reference answers after it, which
    is no pause handling. The metric's window ends 0.4 s before the turn end and the export cuts
    input.wav and output.wav there, so the files score as the env does (before, the export held
    the answer and the official TOR of the human reference was 1 where ours was 0)."""
    import gymnasium as gym
    from duplexgym.agents.evaluation.export import FdbExporter
    from duplexgym.agents.evaluation.rollout import play_episode
    from duplexgym.agents.policies import make_agent

    corpus = default_corpus[0]
    env = gym.make("duplexgym/PauseHandling-v0", corpus=str(corpus), obs_mode="waveform", action_mode="waveform")
    base = env.unwrapped
    seg = next(s for s in base.corpus.segments if s.axis == "pause" and s.turn_end_s is not None
               and s.reference_spans_s and max(b for _, b in s.reference_spans_s) > s.turn_end_s)
    tor = {}
    for agent in ("oracle", "talk"):
        exporter = FdbExporter(tmp_path / agent, base.corpus)
        terms = play_episode(env, make_agent(agent, env), seed=0, options={"segment": seg.id})
        sample = exporter.add(base.episode_record(), terms)
        exporter.finish()
        metrics = terms["terms"]["pause"]["metrics"]
        end_s = metrics["fdb_window_s"][1]
        assert end_s == pytest.approx(seg.turn_end_s - seg.start_s - 0.4, abs=1e-9)
        n16 = round(end_s * 16_000)
        assert sf.info(str(sample / "input.wav")).frames == sf.info(str(sample / "output.wav")).frames == n16
        assert n16 < seg.n_frames * 1280
        chunks = json.loads((sample / "output.json").read_text())["chunks"]
        assert all(c["timestamp"][0] < end_s and c["timestamp"][1] <= end_s for c in chunks)
        got = score_export(tmp_path / agent)["pause"]["1"]["tor"]
        assert got == metrics["fdb_tor"]
        tor[agent] = got
    env.close()
    assert tor == {"oracle": 0, "talk": 1}


def test_human_reference_backchannel_jsd_is_the_benchmarks(vad_exports):
    """The human reference (oracle) backchannels where the humans did: the benchmark's JSD, whose
    human histogram is built from the human backchannel spans, is small (not 0: the VAD segments of
    the output are not the labelled spans), and is what the files give. The histogram of the
    onsets alone, which rewards/backchannel.py used before, is much further away."""
    from duplexgym.rewards.fdb import JSD_BIN_S, jsd_distance

    summary, folder = vad_exports["oracle"]
    files = score_export(folder)["backchannel"]
    spans = json.loads((folder / TASK_FOLDERS["backchannel"] / "aggregated_all_data.json").read_text())
    by_spans, by_onsets = [], []
    for sample, got in files.items():
        episode = json.loads((folder / TASK_FOLDERS["backchannel"] / sample / "episode.json").read_text())
        n16 = sf.info(str(folder / TASK_FOLDERS["backchannel"] / sample / "output.wav")).frames
        counted = [tuple(x) for x in got["segments"] if x[1] - x[0] <= 3.0]
        assert got["jsd"] == pytest.approx(episode["reward_terms"]["terms"]["backchannel"]["metrics"]["fdb_jsd"], abs=1e-9)
        by_spans.append(got["jsd"])
        by_onsets.append(jsd_distance(counted, [a for a, _ in spans[sample]], duration_s=n16 / 16_000, bin_s=JSD_BIN_S))
    assert summary["by_axis"]["backchannel"]["jsd"] == pytest.approx(np.mean(by_spans), abs=1e-9)
    assert 0.0 < np.mean(by_spans) < 0.35
    assert np.mean(by_onsets) > np.mean(by_spans) + 0.2
