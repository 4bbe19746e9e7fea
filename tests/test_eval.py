"""``duplexgym eval``: the JSON contract, the Full-Duplex-Bench table, and the v1-layout export."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from duplexgym.agents.evaluation.evaluate import (
    evaluate,
    format_table,
    select_segments,
    summarize_eval,
)
from duplexgym.agents.evaluation.export import TASK_FOLDERS, FdbExporter
from duplexgym.agents.evaluation.published import BENCHMARK_V1, PAPER_TABLE1
from duplexgym.corpora.manifest import read_manifest
from duplexgym.corpora.sources.fdb1 import fdb1_segments, task_axis
from duplexgym.envs.corpus import ReplayCorpus

from duplexgym.constants import AXES
from tests.conftest import REPO

PER_AXIS = 3


def cli(*args):
    return subprocess.run([sys.executable, "-m", "duplexgym.cli", *args], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def vad_export(default_corpus, tmp_path_factory):
    corpus, _ = default_corpus
    out = tmp_path_factory.mktemp("export") / "fdb"
    proc = cli("eval", "--corpus", str(corpus), "--agent", "vad", "--per-axis", str(PER_AXIS), "--seed", "1",
               "--export", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return corpus, out, proc


def read_png(path):
    """A PNG read back with matplotlib: (width, height, RGB pixels [H, W, 3] in 0..255)."""
    from matplotlib.image import imread

    pixels = imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4), pixels.shape
    rgb = (pixels[..., :3] * 255).round().astype(np.uint8)
    return rgb.shape[1], rgb.shape[0], rgb


def test_eval_json_contract(vad_export):
    corpus, out, proc = vad_export
    summary = json.loads(proc.stdout)  # one object, nothing else on stdout
    assert summary["agent"] == "vad" and summary["export"] == str(out)
    assert set(summary["by_axis"]) == set(AXES)
    means = []
    for axis, entry in summary["by_axis"].items():
        assert entry["episodes"] == PER_AXIS and {"reward_mean", "tor", "latency_s"} <= set(entry)
        assert 0.0 <= entry["tor"] <= 1.0
        means.append(entry["reward_mean"])
    assert summary["overall"] == pytest.approx(np.mean(means))
    assert {"frequency", "jsd"} <= set(summary["by_axis"]["backchannel"])
    assert summary["by_axis"]["interruption"]["relevance"] is None  # no quality term in the default spec
    assert summary["by_axis"]["pause"]["latency_s"] is None
    # where the metrics' words came from, in the JSON and the table (default: VAD spans, no ASR)
    assert summary["metrics_source"] == "vad" and all(e["metrics_source"] == "vad" for e in summary["by_axis"].values())
    table = format_table([summary])
    assert "vad (12)" in table
    # the seed paper's Table 1 and the benchmark's rows, each labelled as published, with their values
    assert table.count("published, NOT measured here") == 2
    for model, values in {**PAPER_TABLE1, **BENCHMARK_V1}.items():
        rows = [line for line in table.splitlines() if re.split(r"\s{2,}", line.strip())[0] == model]
        assert len(rows) == (2 if model in PAPER_TABLE1 and model in BENCHMARK_V1 else 1), model
        row = rows[-1] if model in BENCHMARK_V1 else rows[0]
        values = BENCHMARK_V1.get(model, values)
        assert f"{values[5]:.3f}" in row and f"{values[-1]:.3f}" in row  # turn TOR, interruption latency
    assert "metrics source: vad (silero VAD speech spans stand in for ASR words" in table
    marker = json.loads((out / "export.json").read_text())
    assert marker["summary"]["metrics_source"] == "vad"


def test_relevance_comes_from_the_quality_term_and_failures_are_counted():
    def episode(tor, latency, relevance, failed=False):
        terms = {"quality": {"value": 0.0, "weight": 1.0, "metrics": {"relevance_0_5": relevance}}}
        if not failed:
            terms["interruption"] = {"value": 0.5, "weight": 1.0, "metrics": {"fdb_tor": tor, "fdb_latency_s": latency}}
        return {"axis": "interruption", "reward": 0.5, "terms": terms,
                "failed": {"interruption": "ValueError: boom"} if failed else {}}

    s = summarize_eval("x", [episode(1, 0.5, 4.0), episode(1, 0.7, 2.0), episode(0, None, None),
                             episode(1, 9.0, 0.0, failed=True)])
    entry = s["by_axis"]["interruption"]
    assert entry["episodes"] == 4 and entry["failed"] == 1 == s["failed"]
    assert entry["tor"] == pytest.approx(2 / 3) and entry["latency_s"] == pytest.approx(0.6)
    assert entry["relevance"] == pytest.approx(3.0)  # FD-Bench: mean over TOR = 1 samples
    assert "1 episodes of x had failed reward terms" in format_table([s])


def test_per_axis_selection_is_deterministic(default_corpus):
    corpus = ReplayCorpus(default_corpus[0])
    a, b, c = (select_segments(corpus, 4, seed) for seed in (0, 0, 1))
    assert [s.id for s in a] == [s.id for s in b] != [s.id for s in c]
    assert {ax: sum(s.axis == ax for s in a) for ax in AXES} == {ax: 4 for ax in AXES}
    order = {s.id: i for i, s in enumerate(corpus.segments)}
    assert [order[s.id] for s in a] == sorted(order[s.id] for s in a)  # manifest order
    assert len(select_segments(corpus, None)) == len(corpus.segments)


def test_export_is_complete_and_time_aligned(vad_export):
    corpus, out, proc = vad_export
    segments = {s.id: s for s in read_manifest(corpus)}
    marker = json.loads((out / "export.json").read_text())
    assert len(marker["samples"]) == 4 * PER_AXIS
    human = json.loads((out / TASK_FOLDERS["backchannel"] / "aggregated_all_data.json").read_text())
    gt = json.loads((out / TASK_FOLDERS["backchannel"] / "icc_gt_distribution.json").read_text())
    for item in marker["samples"]:
        folder = out / item["task"] / item["sample"]
        assert item["sample"].isdigit() and task_axis(item["task"]) == item["axis"]
        seg = segments[item["segment"]]
        episode = json.loads((folder / "episode.json").read_text())
        assert episode["segment"] == seg.id and isinstance(episode["reward"], float)
        n16 = seg.n_frames * 1280
        if seg.axis == "pause":  # cut where the pause metric's window ends (turn end - 0.4 s, or the end)
            window = episode["reward_terms"]["terms"]["pause"]["metrics"]["fdb_window_s"]
            n16 = round(window[1] * 16_000)
            assert n16 <= seg.n_frames * 1280
            if seg.turn_end_s is not None:
                assert window[1] == pytest.approx(seg.turn_end_s - seg.start_s - 0.4, abs=1e-9)
        for name in ("input.wav", "output.wav"):
            info = sf.info(str(folder / name))
            assert (info.samplerate, info.channels, info.frames) == (16_000, 1, n16), name
        listen = sf.info(str(folder / "listen.wav"))
        assert (listen.samplerate, listen.channels, listen.frames) == (24_000, 2, seg.n_frames * 1920)
        width, height, pixels = read_png(folder / "timeline.png")
        assert width >= 700 and height >= 200 and len(np.unique(pixels.reshape(-1, 3), axis=0)) >= 4
        # the user track went in, time-aligned, and the stereo file holds both tracks
        user = ReplayCorpus(corpus).audio(seg)[0]
        stereo, _ = sf.read(str(folder / "listen.wav"), dtype="float32")
        np.testing.assert_allclose(stereo[:, 0], user, atol=1.0 / 32768 + 1e-6)
        rel = lambda t: t - seg.start_s  # noqa: E731
        if seg.axis == "backchannel":
            spans = human[item["sample"]]
            assert len(spans) == len(seg.backchannels_s)
            for (a, b), (sa, sb) in zip(spans, seg.backchannels_s):
                assert a == pytest.approx(rel(sa), abs=1e-3)
                assert b == pytest.approx(min(rel(sb), seg.duration_s), abs=1e-3)
            assert len(gt[item["sample"]]) == int(seg.n_frames * 0.08 / 0.2) + 1
            continue
        name = {"pause": "pause.json", "turn": "turn_taking.json", "interruption": "interrupt.json"}[seg.axis]
        entry = json.loads((folder / name).read_text())[0]
        assert entry["timestamp"][0] == pytest.approx(rel(seg.event_s), abs=1e-3)
        if seg.axis == "pause":
            assert entry["text"] == "[PAUSE]" and entry["timestamp"][1] == pytest.approx(rel(seg.pause_end_s), abs=1e-3)
        if seg.axis == "interruption":
            assert entry["timestamp"][1] == pytest.approx(rel(seg.interruption_end_s), abs=1e-3)
            assert isinstance(entry["context"], str) and entry["interrupt"]


def test_our_fdb1_reader_reads_the_export_back(vad_export):
    corpus, out, _ = vad_export
    segments = {s.id: s for s in read_manifest(corpus)}
    by_sample = {f"{x['task']}__{x['sample']}": segments[x["segment"]]
                 for x in json.loads((out / "export.json").read_text())["samples"]}
    ready, errors = fdb1_segments(out)
    assert errors == [] and len(ready) == len(by_sample)
    for item in ready:
        got, seg = item.segment, by_sample[item.segment.id]
        assert got.axis == seg.axis
        n16 = seg.n_frames * 1280
        if seg.axis == "pause":  # cut where the pause metric's window ends
            episode = json.loads((out / TASK_FOLDERS["pause"] / item.segment.id.split("__")[-1] / "episode.json")
                                 .read_text())
            n16 = round(episode["reward_terms"]["terms"]["pause"]["metrics"]["fdb_window_s"][1] * 16_000)
        n24 = -(-n16 * 24_000 // 16_000)
        assert got.n_frames == -(-n24 // 1920) <= seg.n_frames
        assert got.event_s == pytest.approx(seg.event_s - seg.start_s, abs=1e-3)
        for key in ("pause_end_s", "interruption_end_s"):
            if getattr(seg, key) is not None:
                assert getattr(got, key) == pytest.approx(getattr(seg, key) - seg.start_s, abs=1e-3)
        if seg.axis == "backchannel":
            assert len(got.backchannels_s) == len(seg.backchannels_s)
        assert len(item.load()) == n24


def test_tokens_mode_exports_the_decoded_agent_codes(small_corpus, tmp_path):
    """In tokens mode output.wav is the agent's Mimi codes decoded with the env's codec."""
    from duplexgym.corpora.codec import decode, load_mimi

    summary = evaluate(small_corpus, "oracle", per_axis=1, seed=0, obs_mode="codes", action_mode="tokens",
                       export=tmp_path / "fdb", progress=False)
    assert summary["episodes"] == 4
    corpus = ReplayCorpus(small_corpus)
    mimi = load_mimi(corpus.codec_spec)
    for item in json.loads((tmp_path / "fdb" / "export.json").read_text())["samples"]:
        seg = corpus.by_id[item["segment"]]
        stereo, rate = sf.read(str(tmp_path / "fdb" / item["task"] / item["sample"] / "listen.wav"), dtype="float32")
        expected = np.clip(decode(mimi, corpus.codes(seg)[1].astype(np.int64)), -1, 1)  # the oracle's codes
        np.testing.assert_allclose(stereo[:, 1], expected, atol=1.0 / 32768 + 1e-6)


def test_export_refuses_a_foreign_folder(tmp_path, default_corpus):
    (tmp_path / "mine.txt").write_text("not an export")
    with pytest.raises(ValueError, match="not empty"):
        FdbExporter(tmp_path, ReplayCorpus(default_corpus[0]))
    from duplexgym.cli import main

    assert main(["eval", "--corpus", str(default_corpus[0]), "--agent", "nobody", "--quiet"]) == 2
