"""Reading, validating and resampling conversation audio.

Every track inside duplexgym is float32 mono at 24 kHz (:data:`SAMPLE_RATE`). Input files of any
sample rate in [:data:`MIN_INPUT_RATE`, :data:`MAX_INPUT_RATE`] are resampled with soxr (``soxr_hq``).
Unusable files raise :class:`~duplexgym.corpora.errors.InputFileError` naming the file and the problem.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf
from duplexgym.corpora.errors import InputFileError

from duplexgym.constants import SAMPLE_RATE

#: Lowest input sample rate accepted, in Hz (telephone speech, e.g. Switchboard / Fisher).
MIN_INPUT_RATE = 8_000
#: Highest input sample rate accepted, in Hz.
MAX_INPUT_RATE = 192_000
#: Shortest usable input, in seconds: shorter files cannot hold a conversational event.
MIN_DURATION_S = 1.0
#: Audio file suffixes the corpus sources pick up.
AUDIO_SUFFIXES = (".wav", ".flac")


def read_audio(path: str | Path, channels: int | None = None, hint: str = "") -> tuple[np.ndarray, int]:
    """Read an audio file as float32 ``[C, N]`` at its own sample rate.

    ``channels``: the channel count the caller needs (``None`` accepts any); ``hint`` is added to
    the message of a wrong channel count (what the caller expects the file to hold). Raises
    :class:`InputFileError` for a missing, empty, corrupt or truncated file, a wrong channel
    count, a sample rate outside the accepted range, or non-finite samples.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputFileError(path, "empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InputFileError(path, f"not a readable audio file ({_libsndfile_reason(exc)})") from None
    if info.format == "WAV":
        _check_wav_not_truncated(path)
    if channels is not None and info.channels != channels:
        what = "mono" if info.channels == 1 else f"{info.channels}-channel"
        want = "1 channel" if channels == 1 else f"{channels} channels"
        raise InputFileError(path, f"{what} audio, expected {want}" + (f": {hint}" if hint else
                                                                      " (one speaker per channel)"))
    if not MIN_INPUT_RATE <= info.samplerate <= MAX_INPUT_RATE:
        raise InputFileError(
            path,
            f"sample rate {info.samplerate} Hz is outside the accepted "
            f"{MIN_INPUT_RATE}-{MAX_INPUT_RATE} Hz",
        )
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InputFileError(path, f"corrupt or truncated audio ({_libsndfile_reason(exc)})") from None
    if data.shape[0] == 0:
        raise InputFileError(path, "no audio samples (0 frames)")
    if data.shape[0] / rate < MIN_DURATION_S:
        raise InputFileError(
            path, f"only {data.shape[0] / rate:.2f} s of audio, need at least {MIN_DURATION_S} s"
        )
    if not np.isfinite(data).all():
        raise InputFileError(path, "audio contains NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(rate)


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample ``[..., N]`` float32 audio from ``rate`` to ``target`` Hz with soxr (``soxr_hq``),
    each channel on its own, to ``ceil(N * target / rate)`` samples (zero-padded or cut): bit for
    bit what ``librosa.resample(res_type="soxr_hq")`` returns (tested), without importing librosa
    (~1 s, and numba) on the scoring path. float32 out."""
    audio = np.asarray(audio, dtype=np.float32)
    if rate == target:
        return np.ascontiguousarray(audio)
    import soxr

    n = int(np.ceil(audio.shape[-1] * (float(target) / rate)))
    flat = audio.reshape(-1, audio.shape[-1])
    rows = [soxr.resample(ch, rate, target, quality="soxr_hq") for ch in flat]
    out = np.zeros((len(rows), n), dtype=np.float32)
    for row, r in zip(out, rows):
        row[: min(n, len(r))] = r[:n]
    return out.reshape(audio.shape[:-1] + (n,))


def read_tracks(path: str | Path, channels: int, hint: str = "") -> np.ndarray:
    """Read a file and return float32 ``[channels, N]`` at 24 kHz, clipped to [-1, 1]
    (``hint``: see :func:`read_audio`)."""
    data, rate = read_audio(path, channels=channels, hint=hint)
    return np.clip(resample(data, rate), -1.0, 1.0)


def write_audio(path: str | Path, data: np.ndarray, rate: int, **kwargs) -> Path:
    """``soundfile.write`` into a temporary file beside ``path``, then renamed into place: a crash or
    a full disk never leaves half a file under the real name. libsndfile reports write failures as a
    bare "System error", so a failure becomes an ``OSError`` (``ENOSPC`` when the disk is full)
    naming the file. ``kwargs``: ``subtype``, ``format`` as for ``soundfile.write``."""
    import errno
    import os
    import shutil

    path = Path(path)
    fmt = kwargs.pop("format", None) or path.suffix.lstrip(".").upper()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sf.write(str(tmp), data, rate, format=fmt, **kwargs)
    except (sf.LibsndfileError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        if free < max(1 << 20, np.asarray(data).nbytes):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise OSError(errno.EIO, f"could not write audio ({_libsndfile_reason(exc)})", str(path)) from None
    os.replace(tmp, path)
    return path


def _libsndfile_reason(exc: Exception) -> str:
    text = str(exc).strip()
    # libsndfile messages look like "Error opening 'x.wav': Format not recognised."
    return text.split(": ", 1)[-1].rstrip(".") if ": " in text else text


def _check_wav_not_truncated(path: Path) -> None:
    """libsndfile silently shortens a truncated WAV; compare the data chunk's declared size."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return
        if head[:4] == b"RF64":
            return  # 64-bit sizes live in a ds64 chunk; libsndfile validates those itself
        offset = 12
        while offset + 8 <= size:
            fh.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"data":
                available = size - (offset + 8)
                if chunk_size in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                    return
                if chunk_size > available:
                    raise InputFileError(
                        path,
                        f"truncated WAV: the header declares {chunk_size} bytes of audio data "
                        f"but only {available} are present",
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)
