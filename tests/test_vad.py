"""Batched silero VAD: row independence (so caching is safe), agreement with silero's own
get_speech_timestamps on real speech, and the probability cache."""

import numpy as np
import pytest
from duplexgym.corpora import vad

from tests.conftest import place


@pytest.fixture(scope="module")
def dialogue_track(speech):
    """20 s of real speech with known gaps, 24 kHz."""
    track = np.zeros(24_000 * 20, dtype=np.float32)
    spans = [place(track, speech["a_long"], 1.0)]
    spans.append(place(track, speech["a_short"], spans[-1][1] + 1.2))
    spans.append(place(track, speech["a_long"], spans[-1][1] + 0.8))
    return track, spans


def test_a_tracks_probabilities_do_not_depend_on_its_batch_mates(dialogue_track, speech):
    track16 = vad.to_vad_rate(dialogue_track[0])
    alone = vad.speech_probabilities([track16])[0]
    rng = np.random.default_rng(0)
    others = [rng.standard_normal(16_000 * 30).astype(np.float32) * 0.05, vad.to_vad_rate(speech["b_long"])]
    together = vad.speech_probabilities([others[0], track16, others[1]])[1]
    assert alone.dtype == np.float32 and alone.shape == (-(-len(track16) // vad.CHUNK_SAMPLES),)
    np.testing.assert_array_equal(alone, together)


@pytest.mark.parametrize("blocking", ["build", "scoring"])
def test_spans_match_silero_get_speech_timestamps(dialogue_track, blocking):
    """Both blockings (corpus building's long rows, scoring's short ones) agree with silero's own spans."""
    import silero_vad
    import torch

    track, truth = dialogue_track
    ours = vad.speech_spans([track], blocking=vad.BUILD_BLOCKING if blocking == "build" else vad.SEQUENTIAL)[0]
    track16 = vad.to_vad_rate(track)
    stamps = silero_vad.get_speech_timestamps(torch.from_numpy(track16), vad.silero_model(), sampling_rate=16_000)
    theirs = [(s["start"] / 16_000, s["end"] / 16_000) for s in stamps]
    assert len(ours) == len(theirs) >= 3
    worst = max(max(abs(a - c), abs(b - d)) for (a, b), (c, d) in zip(ours, theirs))
    assert worst <= 0.1, f"batched VAD spans differ from silero's by up to {worst:.3f} s"
    # and both find the placed utterances (gaps of 0.8 s and more stay gaps)
    for start, end in truth:
        assert any(abs(a - start) < 0.15 for a, _ in ours), (start, ours)
        assert any(abs(b - end) < 0.15 for _, b in ours), (end, ours)


def test_fdb_vad_segments_are_silero_get_speech_timestamps_exactly(dialogue_track, speech):
    """The benchmark's backchannel VAD, computed through the scripted audio_forward, is bit for bit
    get_speech_timestamps(return_seconds=True) on the same PCM samples, odd lengths included."""
    import silero_vad
    import torch
    from duplexgym.rewards.activity import fdb_vad_segments, pcm16_float

    track, _ = dialogue_track
    tracks = [track, speech["b_long"], speech["a_short"][: 24_000 // 3 + 77], track[: 24_000 * 7 + 1001]]
    for t in tracks:
        pcm = np.round(np.clip(vad.to_vad_rate(t), -1, 1) * 32767).astype(np.int16)
        stamps = silero_vad.get_speech_timestamps(torch.from_numpy(pcm16_float(pcm)), vad.silero_model(),
                                                  return_seconds=True)
        assert fdb_vad_segments(pcm) == tuple((s["start"], s["end"]) for s in stamps)
    assert fdb_vad_segments(np.zeros(0, dtype=np.int16)) == ()


def test_probability_cache_round_trip(dialogue_track, tmp_path):
    track16 = vad.to_vad_rate(dialogue_track[0])
    first = vad.speech_probabilities([track16], cache_dir=tmp_path)[0]
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1
    again = vad.speech_probabilities([track16], cache_dir=tmp_path)[0]
    np.testing.assert_array_equal(first, again)
    # a corrupt cache entry is recomputed, not trusted
    files[0].write_bytes(b"garbage")
    np.testing.assert_array_equal(vad.speech_probabilities([track16], cache_dir=tmp_path)[0], first)


def test_silence_has_no_speech_and_params_are_validated():
    assert vad.speech_spans([np.zeros(24_000 * 3, dtype=np.float32)]) == [[]]
    with pytest.raises(ValueError, match="threshold"):
        vad.VadParams(threshold=1.5)


def test_sequential_probabilities_are_silero_sequential_audio_forward(dialogue_track, speech):
    """The scoring path's ONNX sequence model gives what silero's TorchScript model gives run over
    the whole track with its state carried (the order get_speech_timestamps runs), odd lengths and
    the empty track included."""
    import torch

    track, _ = dialogue_track
    model = vad.silero_model()
    for t in (track, speech["b_long"], speech["a_short"][: 24_000 // 3 + 77]):
        t16 = vad.to_vad_rate(t)
        ours = vad.sequential_probabilities(t16)
        padded = np.zeros(-(-len(t16) // 512) * 512, dtype=np.float32)
        padded[: len(t16)] = t16
        with torch.inference_mode():
            model.reset_states()
            theirs = model.audio_forward(torch.from_numpy(padded)[None], 16_000)[0].numpy()
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
        assert ours.max() > 0.9 and ours.min() < 0.1  # real speech and real gaps
    assert vad.sequential_probabilities(np.zeros(0, dtype=np.float32)).shape == (0,)
    assert vad.speech_probabilities([t16, t16], blocking=vad.SEQUENTIAL)[1].tolist() == ours.tolist()
