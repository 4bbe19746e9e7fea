"""Speech spans of each speaker track with silero VAD, batched and cached.

silero VAD scores 32 ms chunks (512 samples at 16 kHz) with a small recurrent model. Its own
``get_speech_timestamps`` scores one chunk per call, so Python call overhead dominates. Here every
track is cut into fixed blocks of :data:`BLOCK_CHUNKS` chunks, each preceded by
:data:`WARMUP_CHUNKS` chunks of the audio before it (zeros before the start) so the recurrent state
has settled, and the blocks of many tracks run as rows of one batch of fixed size
:data:`BATCH_ROWS`. A row's output depends only on its own samples (checked bit for bit in the
tests), so a track's probabilities are the same whatever else is in the batch: caching them is
safe and a build is deterministic. Probabilities become spans with silero's own
``get_speech_timestamps_from_probs`` (the Full-Duplex-Bench post-processing).

Scoring an episode (:data:`SEQUENTIAL`) runs each track whole instead, with the state carried over
every chunk as ``get_speech_timestamps`` does, through the sequence model silero ships beside its
TorchScript one (``silero_vad_16k_sequence.onnx``: ``[chunks, 64 context + 512]`` samples in, one
probability per chunk out, the recurrence inside one ONNX Runtime call on one thread). Measured
against the TorchScript model's own sequential ``audio_forward`` on real speech: probabilities within
1e-6 (tested), ~4x less CPU than it and ~2.5x less than the short-block batch it replaces.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from duplexgym.corpora.audio import resample
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from duplexgym.config import STRICT, Integer, Number
from duplexgym.constants import SAMPLE_RATE

#: silero VAD's input rate in Hz.
VAD_RATE = 16_000
#: Samples per VAD chunk at :data:`VAD_RATE` (32 ms).
CHUNK_SAMPLES = 512
#: Chunks per block (8.192 s); blocks of all tracks are the rows of a batch.
BLOCK_CHUNKS = 256
#: Chunks of preceding audio a block is warmed up with (1.024 s); their scores are discarded.
WARMUP_CHUNKS = 32
#: Rows per batch. Fixed, so a row's result never depends on how many rows were filled.
BATCH_ROWS = 64
#: Identifies the model and the blocking in cache keys; change it when either changes.
MODEL_ID = "silero-vad-6.2.3-jit/block256+32/b64"


@pydantic_dataclass(config=STRICT)
class VadParams:
    """Turning speech probabilities into spans (silero / Full-Duplex-Bench defaults).

    ``threshold``: a chunk with probability >= threshold starts speech. ``neg_threshold``: while in
    speech, chunks below it count as silence (default ``threshold - 0.15``). ``min_speech_ms``:
    shorter spans are dropped. ``min_silence_ms``: silence needed to end a span.
    ``speech_pad_ms``: padding added on each side of a span.
    """

    threshold: Number = Field(0.5, gt=0, lt=1)
    neg_threshold: Number | None = Field(None, gt=0, lt=1)
    min_speech_ms: Integer = Field(250, ge=0)
    min_silence_ms: Integer = Field(100, ge=0)
    speech_pad_ms: Integer = Field(30, ge=0)

    @model_validator(mode="after")
    def _neg_below_threshold(self):
        if self.neg_threshold is not None and not self.neg_threshold < self.threshold:
            raise ValueError(f"neg_threshold ({self.neg_threshold:g}) must be below threshold ({self.threshold:g})")
        return self


Span = tuple[float, float]


@dataclass(frozen=True)
class Blocking:
    """How tracks are cut into batch rows: ``block_chunks`` scored chunks per row after
    ``warmup_chunks`` of preceding audio; ``batch_rows`` rows per model call (``None``: all rows of
    the call in one batch, which is deterministic for the same input but not shared across calls)."""

    block_chunks: int = BLOCK_CHUNKS
    warmup_chunks: int = WARMUP_CHUNKS
    batch_rows: int | None = BATCH_ROWS


#: Corpus building: long blocks, a fixed batch shared by many tracks (cacheable).
BUILD_BLOCKING = Blocking()


@dataclass(frozen=True)
class Sequential:
    """Each track whole, the recurrent state carried over all its chunks (silero's own
    ``get_speech_timestamps`` order), through silero's sequence ONNX model (module docstring)."""


#: Scoring episodes: every track sequentially, as the benchmark's silero runs. Never cached.
SEQUENTIAL = Sequential()
#: Samples of the previous chunk silero v5 prepends to each chunk.
CONTEXT_SAMPLES = 64
#: silero's sequence model (ships in the silero-vad wheel).
SEQUENCE_MODEL_FILE = "silero_vad_16k_sequence.onnx"

_MODEL = None
_SEQUENCE_SESSION = None


def silero_model():
    """The process's one silero VAD model (loaded on first use)."""
    global _MODEL
    if _MODEL is None:
        import silero_vad  # sets torch to one thread for the process (FACTS.md)

        _MODEL = silero_vad.load_silero_vad()
    return _MODEL


def sequence_session():
    """The process's one ONNX Runtime session of :data:`SEQUENCE_MODEL_FILE`, on one thread
    (created on first use)."""
    global _SEQUENCE_SESSION
    if _SEQUENCE_SESSION is None:
        from importlib.resources import files

        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        model = files("silero_vad") / "data" / SEQUENCE_MODEL_FILE
        _SEQUENCE_SESSION = onnxruntime.InferenceSession(model.read_bytes(), options,
                                                         providers=["CPUExecutionProvider"])
    return _SEQUENCE_SESSION


def sequential_probabilities(track_16k: np.ndarray) -> np.ndarray:
    """silero speech probability per 32 ms chunk of one 16 kHz float32 ``[N]`` track, the state
    carried from the first chunk to the last (the last chunk zero-padded): float32 ``[ceil(N/512)]``."""
    n = _n_chunks(track_16k)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    padded = np.zeros(CONTEXT_SAMPLES + n * CHUNK_SAMPLES, dtype=np.float32)
    padded[CONTEXT_SAMPLES : CONTEXT_SAMPLES + len(track_16k)] = track_16k
    rows = np.lib.stride_tricks.sliding_window_view(padded, CONTEXT_SAMPLES + CHUNK_SAMPLES)[::CHUNK_SAMPLES]
    state = np.zeros((1, 1, 128), dtype=np.float32)
    probs = sequence_session().run(["speech_probs"], {"input": np.ascontiguousarray(rows), "h": state, "c": state})[0]
    return np.asarray(probs, dtype=np.float32).reshape(n)


def to_vad_rate(track: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a float32 ``[N]`` track to 16 kHz for the VAD."""
    return resample(track, rate, VAD_RATE)


def speech_probabilities(tracks_16k: list[np.ndarray], cache_dir: Path | None = None,
                         blocking: Blocking | Sequential = BUILD_BLOCKING) -> list[np.ndarray]:
    """silero speech probability per 32 ms chunk of each 16 kHz track: float32 ``[ceil(N/512)]``.

    Cached under ``cache_dir`` (keyed by the track's samples and :data:`MODEL_ID`) when given
    (only with :data:`BUILD_BLOCKING`). ``SEQUENTIAL``: each track whole, never cached.
    """
    if isinstance(blocking, Sequential):
        return [sequential_probabilities(t) for t in tracks_16k]
    if blocking != BUILD_BLOCKING:
        cache_dir = None
    results: list[np.ndarray | None] = [None] * len(tracks_16k)
    keys = [_cache_key(t) for t in tracks_16k]
    todo = []
    for i, key in enumerate(keys):
        cached = _cache_read(cache_dir, key)
        if cached is not None and len(cached) == _n_chunks(tracks_16k[i]):
            results[i] = cached
        else:
            todo.append(i)
    if todo:
        computed = _batched_probabilities([tracks_16k[i] for i in todo], blocking)
        for i, probs in zip(todo, computed):
            results[i] = probs
            _cache_write(cache_dir, keys[i], probs)
    return results  # type: ignore[return-value]


def spans_from_probabilities(probs: np.ndarray, n_samples_16k: int, params: VadParams = VadParams()) -> list[Span]:
    """Speech spans ``[(start_s, end_s), ...]`` from chunk probabilities, silero's post-processing."""
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    stamps = get_speech_timestamps_from_probs(
        probs.tolist(),
        sampling_rate=VAD_RATE,
        threshold=params.threshold,
        neg_threshold=params.neg_threshold,
        min_speech_duration_ms=params.min_speech_ms,
        min_silence_duration_ms=params.min_silence_ms,
        speech_pad_ms=params.speech_pad_ms,
        audio_length_samples=n_samples_16k,
    )
    return [(s["start"] / VAD_RATE, s["end"] / VAD_RATE) for s in stamps]


def speech_spans(
    tracks: list[np.ndarray], params: VadParams = VadParams(), rate: int = SAMPLE_RATE, cache_dir: Path | None = None,
    blocking: Blocking | Sequential = BUILD_BLOCKING,
) -> list[list[Span]]:
    """Speech spans of each float32 ``[N]`` track at ``rate`` Hz, in seconds from the track start."""
    tracks_16k = [to_vad_rate(t, rate) for t in tracks]
    probs = speech_probabilities(tracks_16k, cache_dir, blocking)
    return [spans_from_probabilities(p, len(t), params) for p, t in zip(probs, tracks_16k)]


def params_dict(params: VadParams) -> dict:
    return {"model": MODEL_ID, **asdict(params)}


# --- batching ------------------------------------------------------------------------------


def _n_chunks(track_16k: np.ndarray) -> int:
    return -(-len(track_16k) // CHUNK_SAMPLES)


def _blocks(track_16k: np.ndarray, blocking: Blocking) -> np.ndarray:
    """Rows ``[n_blocks, (warmup + block) * 512]``: each block with its warm-up."""
    n_blocks = max(1, -(-_n_chunks(track_16k) // blocking.block_chunks))
    warm = blocking.warmup_chunks * CHUNK_SAMPLES
    block = blocking.block_chunks * CHUNK_SAMPLES
    padded = np.zeros(warm + n_blocks * block, dtype=np.float32)
    padded[warm : warm + len(track_16k)] = track_16k
    starts = np.arange(n_blocks) * block
    return np.stack([padded[s : s + warm + block] for s in starts])


def _batched_probabilities(tracks_16k: list[np.ndarray], blocking: Blocking = BUILD_BLOCKING) -> list[np.ndarray]:
    import torch

    rows = [_blocks(t, blocking) for t in tracks_16k]
    counts = [len(r) for r in rows]
    allrows = np.concatenate(rows)
    batch_rows = blocking.batch_rows or len(allrows)
    out = np.empty((len(allrows), blocking.block_chunks), dtype=np.float32)
    model = silero_model()
    with torch.inference_mode():
        for lo in range(0, len(allrows), batch_rows):
            batch = np.zeros((batch_rows, allrows.shape[1]), dtype=np.float32)
            take = allrows[lo : lo + batch_rows]
            batch[: len(take)] = take
            model.reset_states()
            probs = model.audio_forward(torch.from_numpy(batch), VAD_RATE).numpy()
            out[lo : lo + len(take)] = probs[: len(take), blocking.warmup_chunks :]
    results, lo = [], 0
    for track, count in zip(tracks_16k, counts):
        results.append(out[lo : lo + count].reshape(-1)[: _n_chunks(track)].copy())
        lo += count
    return results


# --- cache ---------------------------------------------------------------------------------


def _cache_key(track_16k: np.ndarray) -> str:
    digest = hashlib.sha256(MODEL_ID.encode())
    digest.update(np.ascontiguousarray(track_16k, dtype=np.float32).tobytes())
    return digest.hexdigest()[:32]


def _cache_read(cache_dir: Path | None, key: str) -> np.ndarray | None:
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{key}.npy"
    try:
        return np.load(path)
    except (OSError, ValueError):
        return None


def _cache_write(cache_dir: Path | None, key: str, probs: np.ndarray) -> None:
    if cache_dir is None:
        return
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{key}.{os.getpid()}.npy"
    np.save(tmp, probs.astype(np.float32))
    os.replace(tmp, cache_dir / f"{key}.npy")
