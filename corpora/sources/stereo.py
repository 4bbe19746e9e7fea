"""``stereo`` source: a folder of 2-channel wav/flac files, one speaker per channel.

Channel 0 is speaker A, channel 1 speaker B (Fisher / Switchboard style). A word-timing transcript
may sit beside each file with the same stem and ``.json`` suffix (see :mod:`..transcript`).
Files are found recursively and sorted by relative path, so ids and order are stable.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from duplexgym.corpora.audio import AUDIO_SUFFIXES, read_tracks
from duplexgym.corpora.dialogue import Dialogue
from duplexgym.corpora.errors import InputFileError
from duplexgym.corpora.sources import DialogueSource, dialogue_id
from duplexgym.corpora.transcript import load_transcript


def stereo_sources(root: Path) -> tuple[list[DialogueSource], list[InputFileError]]:
    """One :class:`DialogueSource` per audio file under ``root``, and one error per file refused.

    Ids come from the relative path (:func:`~duplexgym.corpora.sources.dialogue_id`); files whose
    ids would collide (``a b.wav`` and ``a_b.wav``, ``dup.wav`` and ``dup.flac``) each get a suffix
    from a digest of their own relative path, so every dialogue keeps an id of its own, the same in
    every run. Links (to files or folders) that lead outside ``root`` are refused, as the pairs
    format refuses paths that escape its folder; links are never followed into folders.
    """
    root = Path(root)
    real_root = root.resolve()
    files, refused = [], []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                refused.append(InputFileError(path, f"a link to {path.resolve()}, outside the corpus folder {root}; "
                                                    "copy the file into the folder instead"))
                continue
            if path.is_file():
                files.append(path)
        for name in dirs:
            link = Path(folder) / name
            if link.is_symlink():
                refused.append(InputFileError(link, "a link to a folder; links are not followed (copy the files in)"))
    files.sort(key=lambda f: f.relative_to(root).as_posix())
    ids = [dialogue_id(root, f) for f in files]
    clashes = {i for i in ids if ids.count(i) > 1}
    sources = []
    for audio, did in zip(files, ids):
        if did in clashes:
            rel = audio.relative_to(root).as_posix()
            did = f"{did}~{hashlib.blake2b(rel.encode(), digest_size=4).hexdigest()}"
        transcript = audio.with_suffix(".json")
        inputs = (audio, transcript) if transcript.is_file() else (audio,)
        sources.append(DialogueSource(did, inputs, _loader(did, audio, inputs[1:])))
    return sources, refused


def _loader(did: str, audio: Path, transcript: tuple[Path, ...]):
    def load() -> Dialogue:
        tracks = read_tracks(audio, channels=2)
        words = load_transcript(transcript[0]) if transcript else None
        return Dialogue(id=did, tracks=tracks, words=words, source=str(audio))

    return load
