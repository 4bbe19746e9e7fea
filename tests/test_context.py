"""Context storage (``corpus build --context-s``): the recording just before each segment, both
tracks, audio and Mimi codes, equal bit for bit to the dialogue's audio and a fresh streaming
encode of it; ``ReplayCorpus.context`` reads it frame-aligned; builds stay resumable and
byte-deterministic."""

import math
import shutil

import numpy as np
import pytest
import soundfile as sf
from duplexgym.corpora.build import BuildOptions, build_corpus, context_frames
from duplexgym.corpora.codec import encode, load_mimi
from duplexgym.corpora.errors import SourceError
from duplexgym.corpora.manifest import context_paths, read_manifest
from duplexgym.corpora.stats import corpus_stats
from duplexgym.envs.corpus import ReplayCorpus

from tests.conftest import scripted_dialogue

CONTEXT_S = 6.0  # less than most segment starts and more than some: both sides of min()
OPTIONS = BuildOptions(per_axis=2, codec="tiny", context_s=CONTEXT_S)


@pytest.fixture(scope="module")
def source(tmp_path_factory, speech):
    root = tmp_path_factory.mktemp("context_source")
    dialogues = {}
    for name, stop in (("call1", 0.8), ("call2", 1.0)):
        tracks, _ = scripted_dialogue(speech, interrupt_stop_s=stop)
        sf.write(str(root / f"{name}.wav"), tracks.T, 24_000, subtype="PCM_16")
        audio, _ = sf.read(str(root / f"{name}.wav"), dtype="float32")  # the dialogue as the build reads it
        dialogues[name] = {"A": audio[:, 0], "B": audio[:, 1]}
    return root, dialogues


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("context_corpus")
    build_corpus(source[0], out, OPTIONS)
    return out, read_manifest(out)


@pytest.fixture(scope="module")
def mimi():
    return load_mimi("tiny")


def before(dialogues: dict, seg, n_frames: int) -> np.ndarray:
    """``[2, n * 1920]``: user and reference just before the segment's first sample."""
    tracks = dialogues[seg.dialogue]
    lo = int(round(seg.start_s * 24_000))
    return np.stack([tracks[seg.user][lo - n_frames * 1920 : lo], tracks[seg.reference][lo - n_frames * 1920 : lo]])


def test_the_stored_length_is_min_of_context_s_and_the_segment_start(built):
    out, segments = built
    assert len(segments) >= 8
    lengths = set()
    for seg in segments:
        expected = math.floor(min(CONTEXT_S, seg.start_s) / 0.08 + 1e-9)
        assert seg.context_s == pytest.approx(expected * 0.08, abs=1e-9), seg.id
        assert min(CONTEXT_S, seg.start_s) - 0.08 < seg.context_s <= min(CONTEXT_S, seg.start_s)
        audio_path, codes_path = context_paths(seg)
        if expected:
            assert audio_path == f"audio/{seg.id}.context.flac" and codes_path == f"codes/{seg.id}.context.npz"
        assert (out / f"audio/{seg.id}.context.flac").is_file() == (expected > 0)
        lengths.add("full" if expected == CONTEXT_S / 0.08 else "shorter")
    assert lengths == {"full", "shorter"}


def test_stored_audio_and_codes_equal_the_dialogue_and_a_fresh_encode(built, source, mimi):
    out, segments = built
    _, tracks = source
    with_context = [s for s in segments if s.context_s]
    rows, frames = [], []
    for seg in with_context:
        n = int(round(seg.context_s / 0.08))
        stored, rate = sf.read(str(out / context_paths(seg)[0]), dtype="float32", always_2d=True)
        assert rate == 24_000 and stored.shape == (n * 1920, 2)
        np.testing.assert_array_equal(stored.T, before(tracks, seg, n))  # bit for bit
        rows += list(before(tracks, seg, n))
        frames.append(n)
    # a fresh streaming encode of each context alone: one at a time for a short and a long one ...
    for seg in (min(with_context, key=lambda s: s.context_s), max(with_context, key=lambda s: s.context_s)):
        n = int(round(seg.context_s / 0.08))
        with np.load(out / context_paths(seg)[1]) as z:
            assert z["user"].dtype == np.int16 and z["user"].shape == (8, n)
            np.testing.assert_array_equal(np.stack([z["user"], z["reference"]]), encode(mimi, before(tracks, seg, n)))
    # ... and all of them (each row's codes depend on its own samples only)
    longest = max(frames) * 1920
    batch = np.stack([np.pad(r, (0, longest - len(r))) for r in rows])
    codes = encode(mimi, batch)
    for i, (seg, n) in enumerate(zip(with_context, frames)):
        with np.load(out / context_paths(seg)[1]) as z:
            np.testing.assert_array_equal(z["user"], codes[2 * i, :, :n])
            np.testing.assert_array_equal(z["reference"], codes[2 * i + 1, :, :n])


def test_replay_corpus_context_is_frame_aligned_with_the_segment(built, source):
    out, segments = built
    corpus = ReplayCorpus(out)
    seg = max(segments, key=lambda s: s.context_s)
    n = int(round(seg.context_s / 0.08))
    audio, codes = corpus.context(seg, 60.0)  # more than stored: all of it
    assert audio.shape == (2, n * 1920) and audio.dtype == np.float32
    assert codes.shape == (2, 8, n) and codes.dtype == np.int16
    whole = np.concatenate([audio, corpus.audio(seg)], axis=1)  # no gap, no overlap at the seam
    tracks = source[1][seg.dialogue]
    lo = int(round(seg.start_s * 24_000))
    np.testing.assert_array_equal(whole[0], tracks[seg.user][lo - n * 1920 : lo + seg.n_frames * 1920])
    np.testing.assert_array_equal(whole[1], tracks[seg.reference][lo - n * 1920 : lo + seg.n_frames * 1920])
    last, last_codes = corpus.context(seg, 1.0)  # the last 12 frames
    np.testing.assert_array_equal(last, audio[:, -12 * 1920 :])
    np.testing.assert_array_equal(last_codes, codes[:, :, -12:])
    assert corpus.context(seg, 0.239)[0].shape == (2, 2 * 1920)  # whole frames only
    assert corpus.context(seg, 3 * 0.08)[1].shape == (2, 8, 3)  # 0.24 s is 3 frames, float rounding aside
    empty_audio, empty_codes = corpus.context(seg, 0)
    assert empty_audio.shape == (2, 0) and empty_codes.shape == (2, 8, 0)
    first = min(segments, key=lambda s: s.start_s)
    if not first.context_s:
        assert corpus.context(first, 30.0)[0].shape == (2, 0)
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="seconds"):
            corpus.context(seg, bad)


def test_a_corpus_without_codes_gives_context_audio_only(source, tmp_path):
    out = tmp_path / "nocodes"
    build_corpus(source[0], out, BuildOptions(per_axis=1, context_s=5.0))
    corpus = ReplayCorpus(out)
    seg = max(corpus.segments, key=lambda s: s.context_s)
    audio, codes = corpus.context(seg, 5.0)
    assert audio.shape == (2, int(round(seg.context_s / 0.08)) * 1920) and codes is None
    assert not (out / "codes").exists()
    assert corpus_stats(out)["context_s"]["max"] <= 5.0


def test_rebuilds_are_byte_identical_and_resume_only_what_is_missing(built, source, tmp_path):
    out, segments = built
    fresh = tmp_path / "fresh"  # the same build with every segment and context file written anew
    shutil.copytree(out, fresh)  # (its VAD cache kept: the slow part, and not what is tested here)
    for gone in ("audio", "codes"):
        shutil.rmtree(fresh / gone)
    for gone in ("manifest.jsonl", ".work/audio.journal", ".work/codes.journal"):
        (fresh / gone).unlink()
    build_corpus(source[0], fresh, OPTIONS)
    files = sorted(p.relative_to(out) for sub in ("audio", "codes") for p in (out / sub).iterdir())
    assert sorted(p.relative_to(fresh) for sub in ("audio", "codes") for p in (fresh / sub).iterdir()) == files
    for rel in files:
        assert (fresh / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert (fresh / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    # lose some context files: the rerun writes those again, byte for byte, and touches nothing else
    lost = [s for s in segments if s.context_s][:3]
    expected = {rel: (fresh / rel).read_bytes() for rel in files}
    for seg in lost:
        for path in context_paths(seg):
            (fresh / path).unlink()
    kept = {rel: (fresh / rel).stat().st_mtime_ns for rel in files if (fresh / rel).exists()}
    build_corpus(source[0], fresh, OPTIONS)
    assert {rel: (fresh / rel).read_bytes() for rel in files} == expected
    assert all((fresh / rel).stat().st_mtime_ns == t for rel, t in kept.items())


def test_another_context_length_rewrites_only_the_contexts(source, tmp_path):
    out = tmp_path / "c"
    build_corpus(source[0], out, BuildOptions(per_axis=2, context_s=CONTEXT_S))
    segments = read_manifest(out)
    seg_mtimes = {s.id: (out / s.audio).stat().st_mtime_ns for s in segments}
    build_corpus(source[0], out, BuildOptions(per_axis=2, context_s=2.0))
    shorter = read_manifest(out)
    assert [s.id for s in shorter] == [s.id for s in segments]
    assert {s.id: (out / s.audio).stat().st_mtime_ns for s in shorter} == seg_mtimes
    for seg in shorter:
        assert seg.context_s == pytest.approx(context_frames(seg.start_s, 2.0) * 0.08, abs=1e-9) and seg.context_s <= 2.0
        if seg.context_s:
            assert sf.info(str(out / context_paths(seg)[0])).frames == round(seg.context_s / 0.08) * 1920
    build_corpus(source[0], out, BuildOptions(per_axis=2, context_s=0))
    assert all(s.context_s == 0 for s in read_manifest(out))
    assert not list((out / "audio").glob("*.context.flac"))  # the build's own context files are gone


def test_bad_options_name_the_option():
    with pytest.raises(SourceError, match="--context-s"):
        BuildOptions(context_s=-1)
    with pytest.raises(SourceError, match="--context-s"):
        BuildOptions(context_s=float("nan"))
    with pytest.raises(SourceError, match="--rules must be one of duplexgym, paper"):
        BuildOptions(rules="kyutai")
