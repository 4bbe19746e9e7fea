"""``pairs`` source: a JSONL listing of dialogues whose speakers are stored as separate files.

The Seamless Interaction style. One object per line::

    {"id": "conv-0001", "track_a": "audio/0001_a.wav", "track_b": "audio/0001_b.wav",
     "transcript": "words/0001.json"}          # transcript optional

Paths are relative to the listing's folder (the corpus root) and may not escape it. The two
tracks may have different sample rates; they are resampled to 24 kHz, and the shorter one is
padded with silence when they differ by at most :data:`MAX_LENGTH_MISMATCH_S`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from duplexgym.corpora.audio import read_tracks
from duplexgym.corpora.dialogue import Dialogue
from duplexgym.corpora.errors import InputFileError, SourceError
from duplexgym.corpora.sources import DialogueSource, inside_root
from duplexgym.corpora.transcript import load_transcript

#: Largest length difference between the two tracks of a pair that is padded, in seconds.
MAX_LENGTH_MISMATCH_S = 1.0


#: What a pairs track must be (said when a track has more channels).
ONE_SPEAKER = ("a pairs track holds one speaker; for 2-channel recordings (one speaker per channel) use the "
               "stereo format: a folder of such files, `--format stereo`")


class BadListingLine(InputFileError):
    """A line of the listing itself is unusable; the build skips just that line."""


def pairs_sources(listing: Path) -> tuple[list[DialogueSource], list[InputFileError]]:
    """Parse the listing: loadable entries, and one error per bad line (reported, not fatal)."""
    if listing.is_dir():
        candidates = sorted(listing.glob("*.jsonl"))
        if len(candidates) != 1:
            raise SourceError(
                f"{listing}: pairs format needs a .jsonl listing; found {len(candidates)} in the folder, pass the file"
            )
        listing = candidates[0]
    if not listing.is_file():
        raise SourceError(f"{listing}: listing file not found")
    root = listing.parent
    sources: list[DialogueSource] = []
    errors: list[InputFileError] = []
    seen: set[str] = set()
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = _parse_line(line, number, listing, root)
            if entry.id in seen:
                raise BadListingLine(listing, f"line {number}: duplicate dialogue id {entry.id!r}")
            seen.add(entry.id)
            sources.append(entry)
        except InputFileError as exc:
            errors.append(exc)
    return sources, errors


def _parse_line(line: str, number: int, listing: Path, root: Path) -> DialogueSource:
    where = f"line {number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadListingLine(listing, f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(entry, dict):
        raise BadListingLine(listing, f"{where}: expected a JSON object")
    did = entry.get("id")
    if not isinstance(did, str) or not did or "/" in did or did.startswith("."):
        raise BadListingLine(listing, f'{where}: "id" must be a non-empty name without "/", got {did!r}')
    for key in ("track_a", "track_b"):
        if key not in entry:
            raise BadListingLine(listing, f'{where}: missing "{key}"')
    track_a = inside_root(root, entry["track_a"], listing, where)
    track_b = inside_root(root, entry["track_b"], listing, where)
    transcript = None
    if entry.get("transcript") is not None:
        transcript = inside_root(root, entry["transcript"], listing, where)
    files = tuple(p for p in (track_a, track_b, transcript) if p is not None)

    def load() -> Dialogue:
        a = read_tracks(track_a, channels=1, hint=ONE_SPEAKER)[0]
        b = read_tracks(track_b, channels=1, hint=ONE_SPEAKER)[0]
        mismatch = abs(len(a) - len(b)) / 24_000
        if mismatch > MAX_LENGTH_MISMATCH_S:
            raise InputFileError(
                track_b,
                f"track lengths differ by {mismatch:.2f} s ({track_a.name}: {len(a) / 24_000:.2f} s, "
                f"{track_b.name}: {len(b) / 24_000:.2f} s); the two tracks must be time-aligned",
            )
        n = max(len(a), len(b))
        tracks = np.zeros((2, n), dtype=np.float32)
        tracks[0, : len(a)] = a
        tracks[1, : len(b)] = b
        words = load_transcript(transcript) if transcript is not None else None
        return Dialogue(id=did, tracks=tracks, words=words, source=str(listing) + f":{number}")

    return DialogueSource(did, files, load)
