"""The corpus build end to end on real speech: segments per axis, bad files skipped, determinism,
resume, selection, and the CLI's --json output."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from duplexgym.corpora.build import BuildOptions, build_corpus
from duplexgym.corpora.manifest import read_manifest

from duplexgym.constants import AXES
from tests.conftest import REPO, scripted_dialogue


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory, speech):
    """Two good dialogues (16 kHz and 44.1 kHz), one good audio with a broken transcript, and bad files."""
    import librosa

    root = tmp_path_factory.mktemp("stereo")
    tracks, truth = scripted_dialogue(speech)
    sf.write(str(root / "call1.wav"), tracks.T, 24_000, subtype="PCM_16")
    words = [{"speaker": "A", "start": truth["pause"][0] - 0.4, "end": truth["pause"][0] - 0.1, "word": "market"},
             {"speaker": "B", "start": truth["backchannel"][0], "end": truth["backchannel"][1], "word": "yeah"}]
    (root / "call1.json").write_text(json.dumps({"words": words}))
    tracks2, _ = scripted_dialogue(speech, interrupt_stop_s=1.0)
    sf.write(str(root / "sub" / "call2.flac") if (root / "sub").mkdir() is None else None,
             librosa.resample(tracks2, orig_sr=24_000, target_sr=44_100).T, 44_100)
    sf.write(str(root / "call3.wav"), tracks.T, 24_000, subtype="PCM_16")
    (root / "call3.json").write_text('{"words": [{"speaker": "Z"}]}')
    (root / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    sf.write(str(root / "mono.wav"), tracks[0], 24_000)
    full = (root / "call1.wav").read_bytes()
    (root / "truncated.wav").write_bytes(full[: len(full) // 3])
    return root, truth


@pytest.fixture(scope="module")
def built(source_dir, tmp_path_factory):
    root, _ = source_dir
    out = tmp_path_factory.mktemp("corpus")
    summary = build_corpus(root, out, BuildOptions(seed=3))
    return out, summary


def test_every_axis_gets_segments_and_bad_files_are_reported(built, source_dir):
    out, summary = built
    root, truth = source_dir
    assert summary.format == "stereo" and summary.dialogues == 2
    skipped = {Path(s["file"]).name: s["reason"] for s in summary.skipped}
    assert set(skipped) == {"call3.json", "corrupt.wav", "mono.wav", "truncated.wav"}
    assert "speaker" in skipped["call3.json"] and "truncated WAV" in skipped["truncated.wav"]
    assert "mono audio" in skipped["mono.wav"]
    segments = read_manifest(out)
    assert {s.axis for s in segments} == set(AXES)
    call1 = {s.axis: s for s in segments if s.dialogue == "call1"}
    assert call1["pause"].event_s == pytest.approx(truth["pause"][0], abs=0.15)
    assert call1["pause"].pause_end_s == pytest.approx(truth["pause"][1], abs=0.15)
    assert call1["pause"].user == "A" and call1["pause"].reference == "B"
    turn = [s for s in segments if s.dialogue == "call1" and s.axis == "turn" and s.user == "A"][0]
    assert turn.event_s == pytest.approx(truth["turn"][0], abs=0.15)
    assert turn.response_s == pytest.approx(truth["turn"][1], abs=0.15)
    bc = call1["backchannel"]
    assert bc.user == "A" and bc.backchannels_s[0][0] == pytest.approx(truth["backchannel"][0], abs=0.15)
    intr = call1["interruption"]
    assert intr.user == "B" and intr.event_s == pytest.approx(truth["interruption"][0], abs=0.15)
    assert intr.reference_stop_s == pytest.approx(truth["interruption"][1], abs=0.15)
    assert intr.agent_prefix_s[0] == intr.start_s and intr.agent_prefix_s[1] == intr.event_s
    assert call1["pause"].user_words and call1["pause"].user_words[0]["text"] == "market"


def test_segment_audio_is_user_and_reference_on_the_frame_grid(built, source_dir):
    out, _ = built
    for seg in read_manifest(out):
        info = sf.info(str(out / seg.audio))
        assert (info.channels, info.samplerate, info.frames) == (2, 24_000, seg.n_frames * 1920)
        assert seg.end_s == pytest.approx(seg.start_s + seg.n_frames * 0.08)
    seg = next(s for s in read_manifest(out) if s.axis == "turn" and s.dialogue == "call1")
    audio, _ = sf.read(str(out / seg.audio), dtype="float32")
    rel = lambda t: int((t - seg.start_s) * 24_000)  # noqa: E731
    before, after = audio[: rel(seg.event_s) - 2400], audio[rel(seg.response_s) + 2400 :]
    assert np.abs(before[:, 0]).max() > 0.1 and np.abs(after[:, 1]).max() > 0.1  # user talks, then reference
    assert np.abs(audio[rel(seg.event_s) + 1200 : rel(seg.response_s) - 1200]).max() < 0.05  # the gap


def test_same_input_and_seed_give_a_byte_identical_corpus(built, source_dir, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build_corpus(source_dir[0], again, BuildOptions(seed=3))
    assert (again / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    for seg in read_manifest(out):
        assert (again / seg.audio).read_bytes() == (out / seg.audio).read_bytes()


def test_rerun_resumes_instead_of_starting_over(source_dir, tmp_path, monkeypatch):
    from duplexgym.corpora import build as build_module

    out = tmp_path / "c"
    calls = {"n": 0}
    real = build_module.sf.write

    def dies_after_two(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(build_module.sf, "write", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(source_dir[0], out, BuildOptions(seed=3))
    monkeypatch.setattr(build_module.sf, "write", real)
    kept = sorted(p.name for p in (out / "audio").glob("*.flac"))
    assert len(kept) == 2 and not (out / "manifest.jsonl").exists()
    mtimes = {p: (out / "audio" / p).stat().st_mtime_ns for p in kept}
    summary = build_corpus(source_dir[0], out, BuildOptions(seed=3))
    assert summary.reused_dialogues == 2  # no dialogue was loaded or VAD-ed again
    assert all((out / "audio" / p).stat().st_mtime_ns == m for p, m in mtimes.items())
    fresh = tmp_path / "fresh"
    build_corpus(source_dir[0], fresh, BuildOptions(seed=3))
    assert (out / "manifest.jsonl").read_bytes() == (fresh / "manifest.jsonl").read_bytes()


def test_per_axis_selection_is_a_seeded_subset(built, source_dir, tmp_path):
    out, summary = built
    full = {s.id for s in read_manifest(out)}
    small = tmp_path / "small"
    s1 = build_corpus(source_dir[0], small, BuildOptions(seed=3, per_axis=1))
    ids = {s.id for s in read_manifest(small)}
    assert all(n <= 1 for n in s1.segments.values()) and ids <= full
    contexts = {f"{s.id}.context" for s in read_manifest(small) if s.context_s}
    assert contexts  # segments after the dialogue's start store the audio before them
    assert sorted(p.stem for p in (small / "audio").glob("*.flac")) == sorted(ids | contexts)
    picks = {seed: {s.id for s in (build_corpus(source_dir[0], tmp_path / f"s{seed}", BuildOptions(seed=seed, per_axis=1)), read_manifest(tmp_path / f"s{seed}"))[1]}
             for seed in range(6)}
    assert len({frozenset(v) for v in picks.values()}) > 1  # the seed changes the choice


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", *args], capture_output=True, text=True, cwd=REPO)
    return proc


def test_cli_json_contract(built, source_dir, tmp_path):
    proc = run_cli("corpus", "build", str(source_dir[0]), "--out", str(tmp_path / "cli"), "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout holds exactly one JSON object
    assert result["dialogues"] == 2 and result["out"] == str(tmp_path / "cli")
    assert set(result["segments"]) == set(AXES)
    assert {Path(s["file"]).name for s in result["skipped"]} == {"call3.json", "corrupt.wav", "mono.wav", "truncated.wav"}
    assert all(set(s) == {"file", "reason"} for s in result["skipped"])
    stats = run_cli("corpus", "stats", str(tmp_path / "cli"), "--json")
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["segments"] == sum(result["segments"].values())
    assert data["by_axis"]["turn"]["gap_s"]["n"] == result["segments"]["turn"]
    table = run_cli("corpus", "stats", str(tmp_path / "cli"))
    assert "interruption" in table.stdout and table.returncode == 0


def test_cli_user_errors_exit_2_with_a_message(tmp_path):
    proc = run_cli("corpus", "build", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    proc = run_cli("corpus", "stats", str(tmp_path))
    assert proc.returncode == 2 and "no manifest.jsonl" in proc.stderr
    proc = run_cli("corpus", "build", str(tmp_path), "--out", str(tmp_path / "o"), "--dialogues", "3", "--format", "stereo")
    assert proc.returncode == 2 and "--dialogues applies to the synthetic format only" in proc.stderr


def test_codes_cache_with_the_tiny_codec(built, source_dir, tmp_path):
    """--codec tiny stores user and reference codes per segment; a resumed build recomputes
    missing ones in other batches and still gets the same bytes."""
    from duplexgym.corpora.codec import codec_id, encode, load_mimi

    out = tmp_path / "codes"
    summary = build_corpus(source_dir[0], out, BuildOptions(seed=3, per_axis=3, codec="tiny"))
    segments = read_manifest(out)
    info = json.loads((out / "corpus.json").read_text())
    mimi = load_mimi("tiny")
    assert info["codec"] == codec_id(mimi)
    first = {}
    for seg in segments:
        with np.load(out / seg.codes) as z:
            assert z["user"].shape == z["reference"].shape == (8, seg.n_frames)
            assert z["user"].dtype == np.int16 and str(z["codec"]) == info["codec"]
            first[seg.id] = (out / seg.codes).read_bytes()
    seg = segments[0]  # the stored codes are the streaming codes of the stored audio
    audio, _ = sf.read(str(out / seg.audio), dtype="float32")
    with np.load(out / seg.codes) as z:
        np.testing.assert_array_equal(z["user"], encode(mimi, audio[:, 0]))
    for seg in segments[::2]:
        (out / seg.codes).unlink()
    build_corpus(source_dir[0], out, BuildOptions(seed=3, per_axis=3, codec="tiny"))
    assert {s.id: (out / s.codes).read_bytes() for s in read_manifest(out)} == first
    assert sum(summary.segments.values()) == len(segments)


def test_a_bad_codec_fails_before_any_work(source_dir, tmp_path):
    from duplexgym.corpora.errors import SourceError

    bad = tmp_path / "mimi.pt"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(SourceError, match="mimi.pt"):
        build_corpus(source_dir[0], tmp_path / "o", BuildOptions(codec=str(bad)))
    assert not (tmp_path / "o" / "audio").exists()


def test_segments_carry_both_speakers_speech_spans(built, source_dir):
    out, _ = built
    _, truth = source_dir
    seg = next(s for s in read_manifest(out) if s.axis == "pause" and s.dialogue == "call1")
    assert all(seg.start_s <= a < b <= seg.end_s for a, b in seg.user_spans_s + seg.reference_spans_s)
    # the user's speech stops at the pause and resumes at its end; the listener is silent there
    assert any(abs(b - truth["pause"][0]) < 0.15 for _, b in seg.user_spans_s)
    assert any(abs(a - truth["pause"][1]) < 0.15 for a, _ in seg.user_spans_s)
    assert not any(a < truth["pause"][1] and b > truth["pause"][0] for a, b in seg.reference_spans_s)


def test_pause_segments_run_to_the_turn_end_and_backchannel_segments_stop_before_the_listener_talks(built, source_dir):
    out, _ = built
    _, truth = source_dir
    segments = read_manifest(out)
    pause = next(s for s in segments if s.axis == "pause" and s.dialogue == "call1")
    assert pause.turn_end_s == pytest.approx(truth["turn"][0], abs=0.15)
    assert pause.response_s == pytest.approx(truth["turn"][1], abs=0.15)
    assert pause.end_s > pause.response_s
    for seg in (s for s in segments if s.axis == "backchannel"):
        bcs = [a for a, _ in seg.backchannels_s]
        # the reference speaks only in its backchannels inside a backchannel segment
        assert all(any(abs(a - b) < 0.05 for b in bcs) for a, _ in seg.reference_spans_s), seg.id
