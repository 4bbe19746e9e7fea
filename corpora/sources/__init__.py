"""Corpus sources: each turns a folder or listing into :class:`DialogueSource` entries.

A source only enumerates; nothing is read until ``load()`` is called, so one bad file never stops
the enumeration of the others. Formats: ``stereo``, ``pairs``, ``fdb1`` (ready-made segments,
see :mod:`.fdb1`) and ``synthetic`` (the embedded default, rendered to a ``stereo`` folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from duplexgym.corpora.dialogue import Dialogue

FORMATS = ("stereo", "pairs", "fdb1", "synthetic")


@dataclass(frozen=True)
class DialogueSource:
    """One dialogue that a source can load.

    ``files``: every input file it reads (their sizes and mtimes fingerprint the cache);
    ``load``: reads, validates and resamples, raising ``InputFileError`` on bad input.
    """

    id: str
    files: tuple[Path, ...]
    load: Callable[[], Dialogue] = field(compare=False)


def dialogue_id(root: Path, path: Path) -> str:
    """A file-name-safe id from ``path`` relative to ``root`` without suffix (``a/b.wav`` -> ``a__b``)."""
    rel = path.relative_to(root).with_suffix("")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "__".join(rel.parts))


def inside_root(root: Path, rel: str, listing: Path, where: str) -> Path:
    """Resolve ``rel`` against ``root``; refuse absolute paths and paths that escape ``root``."""
    from duplexgym.corpora.errors import InputFileError

    if not isinstance(rel, str) or not rel:
        raise InputFileError(listing, f"{where}: expected a relative file path, got {rel!r}")
    candidate = Path(rel)
    if candidate.is_absolute():
        raise InputFileError(listing, f"{where}: absolute path {rel!r}; paths must be relative to {root}")
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InputFileError(listing, f"{where}: path {rel!r} escapes the corpus root {root}")
    return resolved
