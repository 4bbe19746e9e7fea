"""Offline text-to-speech with Debian ``flite``: one phrase -> trimmed float32 mono at 16 kHz.

Each clip is synthesized through a temporary wav file, trimmed to its true speech boundaries with
an energy gate (10 ms frames, a frame counts as speech when its RMS is within
:data:`TRIM_THRESHOLD_DB` of the clip's loudest frame), and peak-normalised to
:data:`PEAK_LEVEL`. The trimmed clip starts and ends within one frame (10 ms) of audible speech,
which is what makes the synthetic corpus' label times exact. Clips are memoised in-process, so
each distinct ``(voice, text)`` costs one ``flite`` run.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

#: Sample rate of every voice used here (flite's 16 kHz voices), in Hz.
TTS_RATE = 16_000
#: Voices used by the generator: female US, male US, male Scottish, male US (diphone).
VOICES = ("slt", "rms", "awb", "kal16")
#: Analysis frame for trimming and silence checks, in seconds.
FRAME_S = 0.010
#: A frame is speech when its RMS is at most this far below the clip's loudest frame, in dB.
TRIM_THRESHOLD_DB = 40.0
#: Peak amplitude every clip is normalised to (full scale = 1.0).
PEAK_LEVEL = 0.5

_FRAME = int(round(FRAME_S * TTS_RATE))


class TTSUnavailableError(RuntimeError):
    """The ``flite`` program is not installed (or not on ``PATH``)."""


class TTSError(RuntimeError):
    """``flite`` ran but produced no usable audio for a phrase."""


def flite_path() -> str:
    """The ``flite`` executable; raises :class:`TTSUnavailableError` saying how to install it."""
    path = shutil.which("flite")
    if path is None:
        raise TTSUnavailableError(
            "the synthetic corpus needs the offline TTS program `flite`, which is not on PATH: "
            "install Debian package flite (`sudo apt-get install flite`; scripts/setup.sh does it)"
        )
    return path


def synthesize(voice: str, text: str) -> np.ndarray:
    """Speak ``text`` with flite ``voice``; float32 mono ``[N]`` at :data:`TTS_RATE`, trimmed.

    The returned array is shared by the memo cache: treat it as read-only.
    """
    if voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}; expected one of {', '.join(VOICES)}")
    return _synthesize_cached(voice, text, flite_path())


@functools.lru_cache(maxsize=None)
def _synthesize_cached(voice: str, text: str, flite: str) -> np.ndarray:
    fd, wav = tempfile.mkstemp(suffix=".wav", prefix="duplexgym-tts-")
    os.close(fd)
    try:
        run = subprocess.run(
            [flite, "-voice", voice, "-t", text, "-o", wav],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            raise TTSError(f"flite -voice {voice} failed on {text!r}: {run.stderr.strip()}")
        audio, rate = sf.read(wav, dtype="float32", always_2d=False)
    finally:
        os.unlink(wav)
    if rate != TTS_RATE:
        raise TTSError(f"flite voice {voice} speaks at {rate} Hz, expected {TTS_RATE} Hz")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    start, end = speech_bounds(audio)
    if end <= start:
        raise TTSError(f"flite -voice {voice} produced silence for {text!r}")
    clip = audio[start:end].astype(np.float64)
    clip *= PEAK_LEVEL / float(np.max(np.abs(clip)))
    clip = clip.astype(np.float32)
    clip.setflags(write=False)
    return clip


def frame_rms_db(audio: np.ndarray, frame: int = _FRAME) -> np.ndarray:
    """RMS of each full ``frame``-sample frame (default 10 ms at 16 kHz) in dB relative to the
    loudest frame (0 dB = loudest)."""
    n = len(audio) // frame
    if n == 0:
        return np.zeros(0)
    frames = np.asarray(audio[: n * frame], dtype=np.float64).reshape(n, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1)) + 1e-12
    return 20.0 * np.log10(rms / rms.max())


def speech_bounds(audio: np.ndarray, threshold_db: float = TRIM_THRESHOLD_DB) -> tuple[int, int]:
    """``(start, end)`` sample indices of the first and past-the-last speech frame (10 ms grid)."""
    db = frame_rms_db(audio)
    loud = np.flatnonzero(db > -threshold_db)
    if len(loud) == 0:
        return 0, 0
    return int(loud[0]) * _FRAME, min(len(audio), (int(loud[-1]) + 1) * _FRAME)


def longest_internal_silence_s(clip: np.ndarray, threshold_db: float = TRIM_THRESHOLD_DB) -> float:
    """Longest run of non-speech frames inside a trimmed clip, in seconds.

    Used to reject phrases where flite inserts a long pause (it may at punctuation and sentence
    breaks): such a silence would be an unlabelled pause in the corpus.
    """
    quiet = frame_rms_db(clip) <= -threshold_db
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return longest * FRAME_S
