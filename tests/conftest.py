"""Shared test set-up: process settings before torch is imported, and real-speech fixtures."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from duplexgym.runtime import configure_runtime

configure_runtime()  # before torch and moshi are imported, as the CLI does

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

import duplexgym  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]


def flite_speech(text: str, voice: str = "slt", rate: int = 24_000) -> np.ndarray:
    """Real synthetic speech from Debian's flite, float32 mono at ``rate`` Hz (silence trimmed)."""
    import librosa

    if shutil.which("flite") is None:
        pytest.fail("flite is missing: run `make test` (scripts/setup.sh installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
        audio, sr = sf.read(str(path), dtype="float32")
    audio, _ = librosa.effects.trim(audio, top_db=40)
    return librosa.resample(audio, orig_sr=sr, target_sr=rate, res_type="soxr_hq").astype(np.float32)


def place(track: np.ndarray, clip: np.ndarray, at_s: float, rate: int = 24_000) -> tuple[float, float]:
    """Add ``clip`` into ``track`` at ``at_s``; returns the clip's (start_s, end_s)."""
    lo = int(round(at_s * rate))
    track[lo : lo + len(clip)] += clip[: len(track) - lo]
    return at_s, at_s + len(clip) / rate


@pytest.fixture(scope="session")
def speech():
    """A few real utterances (24 kHz float32) from two voices, made once per test session."""
    return {
        "a_long": flite_speech("I was thinking we could walk down to the old market tomorrow morning", "slt"),
        "a_short": flite_speech("and then we can have lunch by the river", "slt"),
        "b_long": flite_speech("that sounds like a lovely plan for the weekend", "rms"),
        "b_bc": flite_speech("yeah", "rms"),
    }


@pytest.fixture(scope="session")
def pyannote_call(tmp_path_factory):
    """The 30 s two-person phone call shipped in the pyannote.audio 4.0.7 wheel (16 kHz mono),
    its RTTM speaker turns and timed transcript: fetched from PyPI with pip, never committed."""
    import zipfile

    cache = Path(os.environ.get("DUPLEXGYM_TEST_CACHE", Path.home() / ".cache" / "duplexgym" / "test-data"))
    folder = cache / "pyannote-audio-4.0.7"
    wav = folder / "sample.wav"
    if not wav.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        dl = tmp_path_factory.mktemp("wheel")
        subprocess.run(
            [os.sys.executable, "-m", "pip", "download", "-q", "--no-deps", "pyannote.audio==4.0.7", "-d", str(dl)],
            check=True,
        )
        wheel = next(dl.glob("pyannote_audio-4.0.7-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in ("sample.wav", "sample.rttm", "sample.stm"):
                (folder / name).write_bytes(zf.read(f"pyannote/audio/sample/{name}"))
    turns = []
    for line in (folder / "sample.rttm").read_text().splitlines():
        parts = line.split()
        turns.append((parts[7], float(parts[3]), float(parts[3]) + float(parts[4])))
    return {"wav": wav, "turns": turns, "stm": folder / "sample.stm"}


def scripted_dialogue(speech: dict, interrupt_stop_s: float = 0.8) -> tuple[np.ndarray, dict]:
    """A 2-speaker dialogue of real speech with one of each event, and its true event times.

    Returns float32 ``[2, N]`` at 24 kHz and ``{"pause": (start, end), "turn": (end, onset),
    "backchannel": (start, end), "interruption": (onset, stop)}`` in seconds.
    """
    a_long, a_short, b_long, b_bc = speech["a_long"], speech["a_short"], speech["b_long"], speech["b_bc"]
    sec = lambda clip: len(clip) / 24_000  # noqa: E731
    total = 3 * sec(a_long) + sec(a_short) + 2 * sec(b_long) + 12
    tracks = np.zeros((2, int(total * 24_000)), dtype=np.float32)
    truth = {}
    _, e1 = place(tracks[0], a_long, 0.5)
    s2, e2 = place(tracks[0], a_short, e1 + 1.2)
    truth["pause"] = (e1, s2)
    s3, e3 = place(tracks[1], b_long, e2 + 0.5)
    truth["turn"] = (e2, s3)
    s4, e4 = place(tracks[0], a_long, e3 + 0.6)
    bc = place(tracks[1], b_bc, s4 + 1.3)
    truth["backchannel"] = bc
    _, e5 = place(tracks[1], b_long, e4 + 0.4)
    s6, _ = place(tracks[0], a_long, e5 + 0.5)
    onset = s6 + 1.8
    stop = onset + interrupt_stop_s
    lo = int(stop * 24_000)
    fade = np.linspace(1, 0, 480, dtype=np.float32)
    tracks[0, lo : lo + 480] *= fade
    tracks[0, lo + 480 :] = 0
    place(tracks[1], b_long, onset)
    truth["interruption"] = (onset, stop)
    tracks += np.random.default_rng(7).standard_normal(tracks.shape).astype(np.float32) * 1e-4
    return tracks, truth


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """8 synthetic dialogues with tiny-Mimi codes: every env mode works on it.

    ``DUPLEXGYM_SMALL_CORPUS``: a folder holding this very corpus, built elsewhere (for machines
    without flite, such as a GPU machine running tests/test_cuda.py)."""
    from duplexgym.corpora.build import BuildOptions, build_corpus

    prebuilt = os.environ.get("DUPLEXGYM_SMALL_CORPUS")
    if prebuilt:
        return Path(prebuilt).resolve()
    out = tmp_path_factory.mktemp("small_corpus")
    build_corpus("synthetic", out, BuildOptions(dialogues=8, codec="tiny"))
    return out


@pytest.fixture(scope="session")
def default_corpus(tmp_path_factory):
    """The embedded default corpus (48 dialogues), without codes (waveform modes)."""
    from duplexgym.corpora.build import BuildOptions, build_corpus

    out = tmp_path_factory.mktemp("default_corpus")
    summary = build_corpus("synthetic", out, BuildOptions())
    return out, summary
