"""Word-timing transcripts (JSON), validated.

Accepted shape (one file per dialogue)::

    {"words": [{"speaker": "A", "start": 0.52, "end": 0.81, "word": "hello"}, ...]}

or the bare list. ``speaker`` is ``"A"``/``"B"`` (case-insensitive) or channel index ``0``/``1``;
``start``/``end`` are dialogue seconds (``start_s``/``end_s`` also accepted); the text key is
``word`` or ``text``. Anything else raises :class:`InputFileError` naming the file and the entry.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from duplexgym.corpora.dialogue import SPEAKERS, Word
from duplexgym.corpora.errors import InputFileError


def load_transcript(path: str | Path) -> tuple[Word, ...]:
    """Read and validate a word-timing transcript; words sorted by start time."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot read transcript ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"transcript is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return parse_words(raw, path)


def parse_words(raw: object, path: str | Path) -> tuple[Word, ...]:
    """Validate an already-decoded transcript object (see module docstring)."""
    entries = raw.get("words") if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        raise InputFileError(
            path, 'transcript must be a list of words or an object with a "words" list'
        )
    words = [_parse_word(entry, i, path) for i, entry in enumerate(entries)]
    return tuple(sorted(words, key=lambda w: (w.start_s, w.end_s, w.speaker)))


def _parse_word(entry: object, index: int, path: str | Path) -> Word:
    where = f"transcript word {index}"
    if not isinstance(entry, dict):
        raise InputFileError(path, f"{where}: expected an object, got {type(entry).__name__}")
    speaker = _speaker(entry.get("speaker"), where, path)
    start = _seconds(entry, ("start", "start_s"), where, path)
    end = _seconds(entry, ("end", "end_s"), where, path)
    if end < start:
        raise InputFileError(path, f"{where}: end {end} s is before start {start} s")
    text = entry.get("word", entry.get("text"))
    if not isinstance(text, str):
        raise InputFileError(path, f'{where}: "word" (or "text") must be a string')
    return Word(speaker=speaker, start_s=start, end_s=end, text=text.strip())


def _speaker(value: object, where: str, path: str | Path) -> str:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value in (0, 1):
        return SPEAKERS[value]
    if isinstance(value, str) and value.upper() in SPEAKERS:
        return value.upper()
    raise InputFileError(path, f'{where}: "speaker" must be "A", "B", 0 or 1, got {value!r}')


def _seconds(entry: dict, keys: tuple[str, ...], where: str, path: str | Path) -> float:
    for key in keys:
        if key in entry:
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputFileError(path, f'{where}: "{key}" must be a non-negative number of seconds, got {value!r}')
            return float(value)
    raise InputFileError(path, f'{where}: missing "{keys[0]}" (seconds)')
