"""``stereo`` source: a folder of 2-channel wav/flac files, one speaker per channel.

Channel 0 is speaker A, channel 1 speaker B (Fisher / Switchboard style). A word-timing transcript
may sit beside each file with the same stem and ``.json`` suffix (see :mod:`..transcript`).
Files are found recursively and sorted by relative path, so ids and order are stable.
"""

from __future__ import annotations

from pathlib import Path

from duplexgym.corpora.audio import AUDIO_SUFFIXES, read_tracks
from duplexgym.corpora.dialogue import Dialogue
from duplexgym.corpora.sources import DialogueSource, dialogue_id
from duplexgym.corpora.transcript import load_transcript


def stereo_sources(root: Path) -> list[DialogueSource]:
    """One :class:`DialogueSource` per audio file under ``root``."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    sources = []
    for audio in files:
        transcript = audio.with_suffix(".json")
        inputs = (audio, transcript) if transcript.is_file() else (audio,)
        did = dialogue_id(root, audio)
        sources.append(DialogueSource(did, inputs, _loader(did, audio, inputs[1:])))
    return sources


def _loader(did: str, audio: Path, transcript: tuple[Path, ...]):
    def load() -> Dialogue:
        tracks = read_tracks(audio, channels=2)
        words = load_transcript(transcript[0]) if transcript else None
        return Dialogue(id=did, tracks=tracks, words=words, source=str(audio))

    return load
