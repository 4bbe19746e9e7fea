"""The Mimi codec module on real moshi modules and real (flite) speech: codes, streaming
exactness, determinism across processes, loading by path, and the errors a user can cause."""

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from duplexgym.corpora import codec
from duplexgym.corpora.errors import SourceError
from safetensors.torch import save_file

from tests.conftest import REPO, flite_speech

FRAME = 1920


@pytest.fixture(scope="module")
def mimi():
    return codec.load_mimi("tiny")


@pytest.fixture(scope="module")
def utterance():
    """~2.5 s of real speech at 24 kHz, trimmed to whole 80 ms frames."""
    audio = flite_speech("Could you tell me the way to the station, please?", "slt")
    return audio[: len(audio) // FRAME * FRAME]


def streaming_reference(mimi, pcm: np.ndarray) -> np.ndarray:
    """What a live streaming Moshi computes: mimi.encode on one [B, 1, 1920] frame at a time."""
    x = torch.from_numpy(pcm)[:, None]
    with torch.no_grad(), mimi.streaming(x.shape[0]):
        codes = [mimi.encode(x[..., f * FRAME : (f + 1) * FRAME]) for f in range(x.shape[-1] // FRAME)]
    return torch.cat(codes, dim=-1).numpy()


def test_tiny_codes_shape_range_and_variation(mimi, utterance):
    assert 1_000_000 <= sum(p.numel() for p in mimi.parameters()) <= 3_000_000
    assert (mimi.sample_rate, mimi.frame_size, mimi.num_codebooks, mimi.cardinality) == (24_000, FRAME, 8, 2048)
    codes = codec.encode(mimi, utterance)
    n_frames = len(utterance) // FRAME
    assert codes.shape == (codec.MIMI_CODEBOOKS, n_frames) and codes.dtype == np.int16
    assert codes.min() >= 0 and codes.max() < codec.MIMI_CARDINALITY
    for k in range(codec.MIMI_CODEBOOKS):  # every codebook follows the speech, not one constant
        assert len(np.unique(codes[k])) > n_frames // 3, (k, codes[k])
    # codes follow the input at any level, and silence has its own codes
    quiet = codec.encode(mimi, utterance * 0.01)
    assert all(len(np.unique(row)) > n_frames // 3 for row in quiet)
    silence = codec.encode(mimi, np.zeros(10 * FRAME, np.float32))
    assert (silence == silence[:, :1]).all() and not (silence[:, :1] == codes).all(axis=0).any()


def test_encode_is_the_frame_by_frame_streaming_encode(mimi, utterance):
    other = flite_speech("Yes, it is just around the corner.", "rms")
    n = min(len(utterance), len(other)) // FRAME * FRAME
    batch = np.stack([utterance[:n], other[:n]])
    codes = codec.encode(mimi, batch)
    assert codes.shape == (2, 8, n // FRAME) and codes.dtype == np.int16
    np.testing.assert_array_equal(codes, streaming_reference(mimi, batch))
    np.testing.assert_array_equal(codec.encode(mimi, utterance), streaming_reference(mimi, utterance[None])[0])
    np.testing.assert_array_equal(codec.encode(mimi, batch), codes)  # deterministic across calls
    # A row alone and in a batch, and the whole-signal (non-streaming) pass, compute the same
    # function with other float rounding: codes agree unless two centroids tie within ~1e-6.
    alone = codec.encode(mimi, batch[1])
    with torch.no_grad():
        whole = mimi.encode(torch.from_numpy(batch)[:, None]).numpy()
    assert np.mean(alone != codes[1]) <= 1e-3
    assert np.mean(whole != codes) <= 1e-3


def test_decode_is_the_frame_by_frame_streaming_decode(mimi, utterance):
    codes = codec.encode(mimi, utterance)
    audio = codec.decode(mimi, codes)
    assert audio.shape == (len(utterance),) and audio.dtype == np.float32
    assert np.isfinite(audio).all() and 1e-4 < np.sqrt(np.mean(audio**2)) < 1.0
    tokens = torch.from_numpy(codes.astype(np.int64))[None]
    with torch.no_grad(), mimi.streaming(1):
        reference = torch.cat([mimi.decode(tokens[..., f : f + 1]) for f in range(codes.shape[-1])], -1)
    np.testing.assert_array_equal(audio, reference[0, 0].numpy())
    batch = codec.decode(mimi, np.stack([codes, codes[:, ::-1]]))
    assert batch.shape == (2, len(utterance))
    np.testing.assert_allclose(batch[0], audio, atol=1e-6)
    assert codec.decode(mimi, np.zeros((8, 0), np.int16)).shape == (0,)


def test_tiny_is_identical_across_processes_and_leaves_the_global_rng_alone(mimi, utterance, tmp_path):
    np.save(tmp_path / "x.npy", utterance)
    script = (
        "import sys, hashlib, numpy as np\n"
        "from duplexgym.corpora import codec\n"
        "m = codec.load_mimi('tiny')\n"
        "h = hashlib.sha256()\n"
        "for k, v in sorted(m.state_dict().items()): h.update(k.encode() + v.contiguous().numpy().tobytes())\n"
        "c = codec.encode(m, np.load(sys.argv[1]))\n"
        "print(codec.codec_id('tiny'), h.hexdigest(), hashlib.sha256(c.tobytes()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npy")], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout.split()
    h = hashlib.sha256()
    for k, v in sorted(mimi.state_dict().items()):
        h.update(k.encode() + v.contiguous().numpy().tobytes())
    codes = codec.encode(mimi, utterance)
    assert out == [codec.codec_id("tiny"), h.hexdigest(), hashlib.sha256(codes.tobytes()).hexdigest()]
    assert codec.codec_id("tiny") == codec.codec_id(mimi) and codec.codec_id("tiny").startswith("mimi-sha256:")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    codec.load_mimi("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_safetensors_path_round_trip(mimi, utterance, tmp_path):
    path = tmp_path / "tiny-mimi.safetensors"
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(path))
    loaded = codec.load_mimi(str(path))
    np.testing.assert_array_equal(codec.encode(loaded, utterance), codec.encode(mimi, utterance))
    codes = codec.encode(mimi, utterance)
    np.testing.assert_array_equal(codec.decode(loaded, codes), codec.decode(mimi, codes))
    assert codec.codec_id(path) == codec.codec_id("tiny") == codec.codec_id(loaded)


def test_pickled_checkpoint_is_refused_unopened(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "mimi.pt"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(codec.CodecError, match=r"mimi\.pt.*safetensors") as info:
        codec.load_mimi(str(path))
    assert "arbitrary code" in str(info.value)
    assert not marker.exists()


def test_missing_file_error(tmp_path):
    path = tmp_path / "nowhere" / "tokenizer.safetensors"
    with pytest.raises(codec.CodecError, match="tokenizer.safetensors: file not found") as info:
        codec.load_mimi(str(path))
    assert isinstance(info.value, ValueError) and isinstance(info.value, SourceError)


def test_mismatched_architecture_errors(mimi, tmp_path):
    state = {k: v.contiguous() for k, v in mimi.state_dict().items()}
    name = "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum"
    wrong_shape = dict(state, **{name: state[name][:1024].clone()})
    path = tmp_path / "wrong-shape.safetensors"
    save_file(wrong_shape, str(path))
    with pytest.raises(codec.CodecError, match=r"wrong-shape\.safetensors.*do not match the Mimi architecture.*"
                       r"embedding_sum.*\[1024, 32\] in the file, \[2048, 32\] expected"):
        codec.load_mimi(str(path))
    missing = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    path = tmp_path / "encoder-only.safetensors"
    save_file(missing, str(path))
    with pytest.raises(codec.CodecError, match=r"encoder-only\.safetensors.*missing, e\.g\. 'decoder\."):
        codec.load_mimi(str(path))
    path = tmp_path / "unrelated.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(codec.CodecError, match=r"unrelated\.safetensors.*unexpected, e\.g\. 'weight'"):
        codec.load_mimi(str(path))
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(codec.CodecError, match=r"garbage\.safetensors: not a readable safetensors file"):
        codec.load_mimi(str(path))


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros(FRAME * 3 + 7, np.float32), "not a multiple of 1920"),
        (np.zeros((1, 2, FRAME), np.float32), "must be \\[N\\] or \\[B, N\\]"),
        (np.full(FRAME, np.nan, np.float32), "NaN or infinite"),
        (np.zeros(FRAME, np.int16), "float"),
    ],
)
def test_bad_audio_is_refused(mimi, audio, message):
    with pytest.raises(ValueError, match=message):
        codec.encode(mimi, audio)


def test_bad_codes_are_refused(mimi):
    with pytest.raises(ValueError, match=r"\[0, 2048\)"):
        codec.decode(mimi, np.full((8, 2), 2048, np.int64))
    with pytest.raises(ValueError, match="shape"):
        codec.decode(mimi, np.zeros((4, 2), np.int64))
    with pytest.raises(ValueError, match="integers"):
        codec.decode(mimi, np.zeros((8, 2), np.float32))


def test_empty_input_gives_empty_output(mimi):
    assert codec.encode(mimi, np.zeros(0, np.float32)).shape == (8, 0)
    assert codec.encode(mimi, np.zeros((3, 0), np.float32)).shape == (3, 8, 0)
    assert codec.decode(mimi, np.zeros((2, 8, 0), np.int16)).shape == (2, 0)
