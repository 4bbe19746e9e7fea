"""The Mimi audio codec: loading it, naming it, and turning 24 kHz audio into codes and back.

The corpus stores Mimi codes of its tracks so that envs replay them without running the codec;
envs and agents decode agent tokens with the same functions. Everything here is exact with
respect to *streaming* Mimi, the way a live Moshi runs it: :func:`encode` and :func:`decode` go
frame by frame inside ``mimi.streaming(B)``, so stored codes are the codes a streaming model
fed the same frames (in a batch of the same size) computes. The whole-signal (non-streaming)
pass of moshi computes the same function, but its float rounding differs (relative ~1e-6 in the
latent), which can flip a code whose two nearest centroids are that close.

Codecs (the ``--codec`` argument, :func:`load_mimi`):

- ``"tiny"``: a small random-weight Mimi (~1.4 M parameters) with the real interface (24 kHz,
  12.5 Hz, 1920-sample frames, 8 codebooks of 2048 entries). Its weights are drawn from a private
  generator on an integer grid, so they are bit-identical in every process and on every machine.
  Its audio is noise; it is for tests and CPU runs.
- a path to a Mimi ``.safetensors`` file in Kyutai's layout (e.g.
  ``tokenizer-e351c8d8-checkpoint125.safetensors`` from ``kyutai/moshiko-pytorch-bf16``), or one
  written from a tiny model's ``state_dict``. Pickled checkpoints are refused.

:func:`codec_id` names a codec by a digest of its weights, so a corpus records which codec made
its codes and an env can check it decodes with the same one.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
from duplexgym.corpora.errors import SourceError
from moshi.models import loaders
from moshi.models.compression import MimiModel

from duplexgym.constants import (
    FRAME_SAMPLES,
    MIMI_CARDINALITY,
    MIMI_CODEBOOKS,
    SAMPLE_RATE,
    TINY_MODEL,
)

#: Seed of the private generator the tiny Mimi's weights are drawn from.
TINY_MIMI_SEED = 20_240_917
#: File suffixes read as safetensors (the ones moshi's loader treats as safetensors).
SAFETENSORS_SUFFIXES = (".safetensors", ".sft", ".sfts")

# The tiny Mimi: Kyutai's config with narrower layers. Same hop (ratios 8*6*5*4 = 960 samples,
# 25 Hz, then a stride-2 conv to 12.5 Hz), same quantizer layout (1 semantic + 7 acoustic levels).
_TINY_DIM = 128
_TINY_SEANET = {"dimension": _TINY_DIM, "n_filters": 8}
_TINY_TRANSFORMER = {
    "d_model": _TINY_DIM, "num_heads": 4, "num_layers": 2, "dim_feedforward": 512,
    "input_dimension": _TINY_DIM, "output_dimensions": [_TINY_DIM],
}
_TINY_QUANTIZER = {
    "dimension": 32, "n_q": MIMI_CODEBOOKS, "bins": MIMI_CARDINALITY,
    "input_dimension": _TINY_DIM, "output_dimension": _TINY_DIM,
}
# Codebook entries are uniform in a cube times a radius 2**-e * (1 + m/8), e drawn from this
# range: entry norms span ~1e-6 .. 0.1, the latent norms of the tiny encoder for inputs from
# about -80 dBFS to 0 dBFS, so codes follow the input at any level (a codebook at a single
# scale maps all quiet input, or all loud input, to one entry). Moshi leaves codebooks at zero
# until k-means runs in training, which would make every code 0.
_TINY_RADIUS_EXPONENTS = (5, 22)
# Output gain of the tiny decoder's last conv, so that decoded audio is a signal rather than
# ~1e-5 of noise: codes of speech at rms 0.17 decode to rms ~0.015, uniformly random codes (what
# a random LM samples) to rms ~0.13 with peaks below 1.
_TINY_DECODER_GAIN = 2.0**12
# Pre-k-means names of codebook buffers, which moshi still loads (EuclideanCodebook).
_LEGACY_BUFFER_NAMES = {
    "inited": "_initialized", "cluster_size": "cluster_usage",
    "embed_avg": "embedding_sum", "embed_sum": "embedding_sum",
}
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class CodecError(SourceError, ValueError):
    """A codec given by the user is unusable (unknown spec, not safetensors, missing, wrong tensors).

    A :class:`~duplexgym.corpora.errors.SourceError` for the corpus builder, and a ``ValueError``
    for everyone else.
    """


# ----------------------------------------------------------------------------------------------
# Loading


def tiny_mimi_config() -> dict:
    """The tiny Mimi's config: a copy of ``moshi.models.loaders._mimi_config`` with narrow layers."""
    config = copy.deepcopy(loaders._mimi_config)
    config["seanet"].update(_TINY_SEANET)
    config["transformer"].update(_TINY_TRANSFORMER)
    config["quantizer"].update(_TINY_QUANTIZER)
    return config


def load_mimi(spec: str | os.PathLike, device: str | torch.device = "cpu") -> MimiModel:
    """Load the Mimi codec ``spec`` in eval mode with :data:`MIMI_CODEBOOKS` active codebooks.

    ``spec``: ``"tiny"`` (random weights, identical everywhere) or the path of a Mimi
    ``.safetensors`` file (Kyutai's layout, or a tiny model's ``state_dict``). Raises
    :class:`CodecError` for any other suffix (pickles are never loaded: they can run code), a
    missing or unreadable file, or tensors that do not fit the Mimi architecture.
    """
    if isinstance(spec, str) and spec == TINY_MODEL:
        return _build_tiny_mimi().to(device)
    path = Path(spec)
    config = _config_of_checkpoint(path)
    try:
        model = loaders.get_mimi(str(path), config, device=device, num_codebooks=MIMI_CODEBOOKS)
    except Exception as exc:  # a torch/safetensors error: say which file, keep the reason
        raise CodecError(f"{path}: could not load the Mimi weights ({type(exc).__name__}: {exc})") from exc
    state = model.state_dict()
    bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CodecError(f"{path}: {len(bad)} tensors hold NaN or infinite values, e.g. {bad[0]!r}")
    return model


@functools.lru_cache(maxsize=1)
def _tiny_state() -> dict[str, torch.Tensor]:
    """The tiny Mimi's weights (built once per process; callers get fresh copies)."""
    generator = torch.Generator().manual_seed(TINY_MIMI_SEED)
    # moshi's constructors draw from the global RNG; fork_rng leaves the caller's stream as it was.
    # Every tensor they drew is then overwritten from `generator`, so nothing depends on them.
    with torch.random.fork_rng(devices=[]):
        model = loaders.get_mimi(None, tiny_mimi_config(), device="cpu", num_codebooks=MIMI_CODEBOOKS)
    last_decoder_weight = model.decoder.model[-1].conv.conv.weight
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.zero_()  # no offsets: silence encodes to a zero latent
            elif param.ndim >= 2:
                fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(param)
                gain = _TINY_DECODER_GAIN if param is last_decoder_weight else 1.0
                _grid_uniform_(param, gain / math.sqrt(fan_in), generator)  # torch's default bound
            elif not bool((param == param.reshape(-1)[0]).all()):
                # norm weights (1.0) and layer scales (0.01) are constants; anything else is not
                raise RuntimeError(f"tiny Mimi: unexpected randomly initialised parameter {name!r}")
        lo, hi = _TINY_RADIUS_EXPONENTS
        for layer in _codebooks(model):
            size, dim = layer.embedding_sum.shape
            exponent = torch.randint(lo, hi + 1, (size,), generator=generator).tolist()
            mantissa = torch.randint(8, 16, (size,), generator=generator).tolist()
            # (8..15) * 2**-(e+3) * 2**-23, exact in float32: the one rounding is in the product below.
            scale = torch.tensor([math.ldexp(m, -(e + 3 + 23)) for m, e in zip(mantissa, exponent)],
                                 dtype=torch.float32)[:, None]
            grid = torch.randint(-(2**23), 2**23 + 1, (size, dim), generator=generator)
            layer.embedding_sum.copy_(grid.to(torch.float32) * scale)
            layer.cluster_usage.fill_(1.0)  # embedding = embedding_sum / cluster_usage
            layer._initialized.fill_(1.0)  # never k-means-initialise, even in train mode
            layer._embedding = None  # drop any cached centroids
    return {name: t.clone() for name, t in model.state_dict().items()}


def _build_tiny_mimi() -> MimiModel:
    with torch.random.fork_rng(devices=[]):
        model = loaders.get_mimi(None, tiny_mimi_config(), device="cpu", num_codebooks=MIMI_CODEBOOKS)
    model.load_state_dict(_tiny_state())  # every persistent tensor; the rest is moshi's constants
    return model


def _grid_uniform_(param: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    """Fill ``param`` uniformly in [-bound, bound] on a grid of 2**24 + 1 points.

    Integers from the generator times one float32 constant: a single correctly rounded product,
    so the values are the same on every IEEE machine (torch's float samplers may use vectorised
    transcendental functions that differ by an ulp between CPUs).
    """
    grid = torch.randint(-(2**23), 2**23 + 1, param.shape, generator=generator)
    step = torch.tensor(bound / 2**23, dtype=torch.float32)
    param.copy_(grid.to(torch.float32) * step)


def _codebooks(model: MimiModel) -> list:
    return [m for m in model.modules() if type(m).__name__ == "EuclideanCodebook"]


# What a checkpoint must hold, per known config: parameter/buffer name -> shape.
_KYUTAI = "Kyutai Mimi (moshi.models.loaders._mimi_config)"
_TINY = "duplexgym tiny Mimi"


@functools.lru_cache(maxsize=None)
def _expected_shapes(which: str) -> dict[str, tuple[int, ...]]:
    config = tiny_mimi_config() if which == _TINY else loaders._mimi_config
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = loaders.get_mimi(None, config, device="meta", num_codebooks=MIMI_CODEBOOKS)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _config_of_checkpoint(path: Path) -> dict | None:
    """Check a Mimi checkpoint without loading its data; return the config it was made with.

    ``None`` means Kyutai's config (what ``get_mimi`` uses by default).
    """
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise CodecError(
            f"{path}: a codec must be 'tiny' or a Mimi safetensors file "
            f"({', '.join(SAFETENSORS_SUFFIXES)}), got suffix {path.suffix or '(none)'!r}; "
            "pickled checkpoints (.pt, .pth, .ckpt, .bin) are "
            "refused because loading them can run arbitrary code. Convert it with "
            "safetensors.torch.save_file(state_dict, 'mimi.safetensors')"
        )
    if not path.exists():
        raise CodecError(f"{path}: file not found (pass 'tiny' or the path of a Mimi .safetensors file)")
    if not path.is_file():
        raise CodecError(f"{path}: not a file (pass the Mimi .safetensors file itself)")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            header = {name: (tuple(t.get_shape()), t.get_dtype()) for name, t in slices.items()}
    except Exception as exc:  # safetensors raises its own error types for a bad header or size
        raise CodecError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    not_float = sorted(name for name, (_, dtype) in header.items() if dtype not in _FLOAT_DTYPES)
    if not_float:
        dtype = header[not_float[0]][1]
        raise CodecError(f"{path}: Mimi tensors are floating point, but {not_float[0]!r} is {dtype}")
    shapes = {_modern_name(name): shape for name, (shape, _) in header.items()}
    mismatches = {}
    for which in (_KYUTAI, _TINY):
        expected = _expected_shapes(which)
        if shapes == expected:
            return None if which == _KYUTAI else tiny_mimi_config()
        mismatches[which] = _describe_mismatch(shapes, expected)
    which = min(mismatches, key=lambda w: mismatches[w][0])
    raise CodecError(
        f"{path}: its {len(shapes)} tensors do not match the Mimi architecture "
        f"(compared with the {which}: {mismatches[which][1]}); pass a Mimi tokenizer checkpoint "
        "such as tokenizer-e351c8d8-checkpoint125.safetensors, or 'tiny'"
    )


def _modern_name(name: str) -> str:
    head, _, last = name.rpartition(".")
    return f"{head}.{_LEGACY_BUFFER_NAMES[last]}" if last in _LEGACY_BUFFER_NAMES else name


def _describe_mismatch(got: dict, expected: dict) -> tuple[int, str]:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    reshaped = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]!r}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} with another shape, e.g. {k!r}: {list(got[k])} in the file, "
                     f"{list(expected[k])} expected")
    return len(missing) + len(unexpected) + len(reshaped), "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# Identity


def codec_id(spec: str | os.PathLike | MimiModel) -> str:
    """A stable name of a codec: ``"mimi-sha256:"`` + the first 16 hex digits of a digest of its weights.

    ``spec``: a codec spec as for :func:`load_mimi`, or a loaded model. The digest covers every
    tensor of the ``state_dict`` (sorted names, dtypes, shapes, bytes) after loading, so equal
    weights give equal ids whatever file or spec they came from: ``"tiny"`` and a safetensors
    copy of its ``state_dict`` share an id. Specs are digested once per process (files are keyed
    by path, size and modification time); with a model already loaded, pass the model.
    """
    if isinstance(spec, MimiModel):
        return _digest_id(spec.state_dict())
    if isinstance(spec, str) and spec == TINY_MODEL:
        return _tiny_codec_id()
    path = Path(spec).resolve()
    stat = path.stat() if path.is_file() else None
    return _file_codec_id(str(path), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1)


@functools.lru_cache(maxsize=1)
def _tiny_codec_id() -> str:
    return _digest_id(_tiny_state())


@functools.lru_cache(maxsize=8)
def _file_codec_id(path: str, size: int, mtime_ns: int) -> str:
    return _digest_id(load_mimi(path).state_dict())


def _digest_id(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "mimi-sha256:" + digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Encoding and decoding


def encode(mimi: MimiModel, audio: np.ndarray) -> np.ndarray:
    """Mimi codes of 24 kHz audio, exactly as streaming Mimi computes them frame by frame.

    ``audio``: float ``[N]`` or ``[B, N]`` at 24 kHz, ``N`` a multiple of 1920 (80 ms frames).
    Returns int16 ``[8, N // 1920]`` or ``[B, 8, N // 1920]``, values in ``[0, 2048)``: what
    ``mimi.encode(pcm[B, 1, 1920])`` returns frame after frame inside ``mimi.streaming(B)``
    (the rows of a batch run together, as B parallel streams). Deterministic. Raises
    ``ValueError`` for another ndim, a non-float dtype, a length that is not a multiple of 1920,
    or NaN/infinite samples.
    """
    x = np.asarray(audio)
    if x.ndim not in (1, 2):
        raise ValueError(f"audio must be [N] or [B, N] samples, got an array of shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"audio must be float samples in [-1, 1], got dtype {x.dtype}")
    n_samples = x.shape[-1]
    if n_samples % FRAME_SAMPLES:
        shorter = n_samples // FRAME_SAMPLES * FRAME_SAMPLES
        raise ValueError(
            f"audio length {n_samples} samples is not a multiple of {FRAME_SAMPLES} (80 ms frames at "
            f"{SAMPLE_RATE} Hz): trim to {shorter} or pad to {shorter + FRAME_SAMPLES} samples"
        )
    if not np.isfinite(x).all():
        raise ValueError("audio contains NaN or infinite samples")
    _check_model(mimi)
    batch = np.ascontiguousarray(x if x.ndim == 2 else x[None], dtype=np.float32)  # [B, N]
    n_batch, n_frames = batch.shape[0], n_samples // FRAME_SAMPLES
    codes = torch.empty(n_batch, MIMI_CODEBOOKS, n_frames, dtype=torch.int64)  # [B, K, F]
    if n_batch and n_frames:
        device = next(mimi.parameters()).device
        pcm = torch.from_numpy(batch).to(device)[:, None]  # [B, 1, N]
        with torch.no_grad(), mimi.streaming(n_batch):
            for f in range(n_frames):
                frame = pcm[..., f * FRAME_SAMPLES : (f + 1) * FRAME_SAMPLES]  # [B, 1, 1920]
                codes[..., f : f + 1] = mimi.encode(frame)  # [B, K, 1]
    out = codes.numpy().astype(np.int16)
    return out[0] if x.ndim == 1 else out


def decode(mimi: MimiModel, codes: np.ndarray) -> np.ndarray:
    """24 kHz audio of Mimi codes, exactly as streaming Mimi decodes them frame by frame.

    ``codes``: integers ``[8, F]`` or ``[B, 8, F]`` in ``[0, 2048)``. Returns float32 ``[F * 1920]``
    or ``[B, F * 1920]``: what ``mimi.decode(codes[B, 8, 1])`` returns frame after frame inside
    ``mimi.streaming(B)``. Raises ``ValueError`` for another shape, a non-integer dtype or a code
    out of range.
    """
    c = np.asarray(codes)
    if c.ndim not in (2, 3) or c.shape[-2] != MIMI_CODEBOOKS:
        k = MIMI_CODEBOOKS
        raise ValueError(f"codes must be [{k}, F] or [B, {k}, F], got an array of shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {c.dtype}")
    if c.size and (c.min() < 0 or c.max() >= MIMI_CARDINALITY):
        raise ValueError(f"codes must lie in [0, {MIMI_CARDINALITY}), got values in [{c.min()}, {c.max()}]")
    _check_model(mimi)
    batch = np.ascontiguousarray(c if c.ndim == 3 else c[None], dtype=np.int64)  # [B, K, F]
    n_batch, n_frames = batch.shape[0], batch.shape[-1]
    audio = torch.empty(n_batch, n_frames * FRAME_SAMPLES, dtype=torch.float32)  # [B, N]
    if n_batch and n_frames:
        device = next(mimi.parameters()).device
        tokens = torch.from_numpy(batch).to(device)
        with torch.no_grad(), mimi.streaming(n_batch):
            for f in range(n_frames):
                pcm = mimi.decode(tokens[..., f : f + 1])  # [B, 1, 1920]
                audio[:, f * FRAME_SAMPLES : (f + 1) * FRAME_SAMPLES] = pcm[:, 0].float().cpu()
    out = audio.numpy()
    return out[0] if c.ndim == 2 else out


def _check_model(mimi: MimiModel) -> None:
    if mimi.is_streaming:
        raise ValueError("the Mimi model is already in streaming mode: "
                         "call encode/decode outside `with mimi.streaming(...)`")
    if mimi.frame_size != FRAME_SAMPLES or mimi.sample_rate != SAMPLE_RATE:
        raise ValueError(f"expected a {SAMPLE_RATE} Hz Mimi with {FRAME_SAMPLES}-sample frames, got "
                         f"{mimi.sample_rate} Hz and {mimi.frame_size}-sample frames")
    if mimi.num_codebooks != MIMI_CODEBOOKS:
        raise ValueError(f"expected {MIMI_CODEBOOKS} active codebooks, got {mimi.num_codebooks} "
                         f"(call mimi.set_num_codebooks({MIMI_CODEBOOKS}))")
