"""The ``asr`` metric source on real speech: faster-whisper (the shipped whisper-base) words of the
16 kHz PCM_16 output, the interruption crop, and the onset refinement against an exactly known onset.

Real flite speech placed at known times in low noise (the ``speech`` fixture); one short episode
per test, the ASR model shared (~1-2 s of CPU per episode)."""

import dataclasses

import numpy as np
import pytest
from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.activity import MetricsParams, output_pcm16, pcm16_float
from duplexgym.rewards.record import EpisodeRecord
from duplexgym.rewards.scoring import score_episode
from duplexgym.rewards.spec import default_spec

from tests.conftest import place

N_FRAMES = 75  # 6.0 s


@pytest.fixture(scope="module")
def asr_spec():
    pytest.importorskip("faster_whisper", reason="faster-whisper not installed (optional: ASR metrics)")
    from duplexgym.rewards.asr import asr_available

    if asr_available():
        pytest.skip(asr_available())
    return dataclasses.replace(default_spec(), metrics=MetricsParams(source="asr", onset_refinement=True))


def _record(axis: str, audio: np.ndarray, **times) -> EpisodeRecord:
    seg = Segment(id=f"t-{axis}", axis=axis, dialogue="t", user="A", reference="B", start_s=0.0,
                  end_s=N_FRAMES * 0.08, n_frames=N_FRAMES, **times)
    return EpisodeRecord(segment=seg, seed=0, env={}, audio=audio.astype(np.float32))


def _track(clip: np.ndarray, at_s: float) -> tuple[np.ndarray, float]:
    track = np.random.default_rng(7).standard_normal(N_FRAMES * 1920).astype(np.float32) * 1e-4
    _, end = place(track, clip, at_s)
    return track, end


@pytest.mark.parametrize("onset_s", [1.37, 2.13])
def test_asr_turn_metrics_start_early_and_the_refinement_snaps_to_the_vad_onset(speech, asr_spec, onset_s):
    """The answer starts at ``onset_s`` (the clip's first sample; flite trimmed to its speech).
    whisper-base puts its first word's start ~0.3 s early (benchmarks/asr_onset.py measures it on
    the synthetic corpus); snapped to silero's onset inside that word it lands within 0.1 s."""
    turn_end = 1.0
    track, _ = _track(speech["b_long"], onset_s)
    terms = score_episode(_record("turn", track, event_s=turn_end), asr_spec)
    m = terms["terms"]["turn"]["metrics"]
    assert m["fdb_source"] == "asr" and m["fdb_tor"] == 1
    words = [w[2].strip(".,").lower() for w in m["fdb_chunks"]]
    assert words[:3] == ["that", "sounds", "like"]
    first = m["fdb_chunks"][0][0]
    assert m["fdb_latency_s"] == pytest.approx(first - turn_end)
    assert first < onset_s - 0.2  # early
    refined = turn_end + m["fdb_latency_refined_s"]
    assert onset_s - 0.05 <= refined <= onset_s + 0.1
    # the default spec (vad source) reads the spans: no words, no refinement
    plain = score_episode(_record("turn", track, event_s=turn_end), default_spec())["terms"]["turn"]["metrics"]
    assert plain["fdb_source"] == "vad" and "fdb_latency_refined_s" not in plain
    assert [c[2] for c in plain["fdb_chunks"]] == ["[speech]"]


def test_asr_interruption_words_come_from_the_audio_after_the_interruption_end(speech, asr_spec):
    """As the benchmark's asr.py: the output is cut at sample int(end * 16000) and transcribed;
    word times are those of the cut audio plus the end. Speech before the end is not heard."""
    track, first_end = _track(speech["a_short"], 0.3)  # "and then we can have lunch by the river"
    intr_end = first_end + 0.4
    place(track, speech["b_long"], intr_end + 0.6)
    record = _record("interruption", track, event_s=0.5, interruption_end_s=intr_end, agent_prefix_s=(0.0, 0.5))
    m = score_episode(record, asr_spec)["terms"]["interruption"]["metrics"]
    assert m["fdb_window_s"] == [intr_end, N_FRAMES * 0.08]
    words = [w[2].strip(".,").lower() for w in m["fdb_chunks"]]
    assert "lunch" not in words and words[:2] == ["that", "sounds"]
    assert all(a >= intr_end for a, _, _ in m["fdb_chunks"])
    # exactly the words of the cropped samples, shifted by the end
    from duplexgym.rewards.asr import transcribe_16k, whisper_base_dir

    pcm = output_pcm16(track, N_FRAMES)
    cropped = transcribe_16k(pcm16_float(pcm[int(intr_end * 16_000):]), whisper_base_dir())
    assert m["fdb_chunks"] == [[a + intr_end, b + intr_end, t] for a, b, t in cropped]
    assert m["fdb_tor"] == 1 and m["fdb_latency_s"] == pytest.approx(m["fdb_chunks"][0][0] - intr_end)
