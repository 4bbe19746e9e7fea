"""The segment record (one line of ``manifest.jsonl``) and the manifest's reading and writing.

Schema of one line (all times are **dialogue seconds**, i.e. seconds from the start of the source
dialogue, not of the segment; ``null`` where not applicable)::

    id                  str    unique, file-name safe: "{dialogue}-{axis}-{event ms:07d}-{user}"
    axis                str    "pause" | "turn" | "backchannel" | "interruption"
    dialogue            str    source dialogue id
    user                str    "A" | "B": the speaker replayed to the agent as the user
    reference           str    the other speaker: what a person actually did (the human reference)
    start_s, end_s      float  segment bounds; end_s - start_s == n_frames * 0.08
    n_frames            int    number of 80 ms frames (1920 samples at 24 kHz)
    event_s             float  the axis' anchor: pause start | turn end | first backchannel onset
                               | interruption onset
    pause_end_s         float  pause axis: when the user resumes
    turn_end_s          float  pause axis: when the user's turn ends after the pause, if inside the
                               segment (the agent should then take the floor)
    response_s          float  turn axis (and pause axis with turn_end_s): when the human
                               reference took the floor
    backchannels_s      list   backchannel axis: [[start, end], ...] of the reference's
                               backchannels inside the segment
    interruption_end_s  float  interruption axis: end of the user's interrupting turn
    agent_prefix_s      list   interruption axis: [start, end] during which the agent is already
                               speaking (the reference track is forced as the agent's channel)
    reference_stop_s    float  interruption axis: when the interrupted human actually stopped
    user_spans_s        list   [[start, end], ...] the user's speech (VAD) inside the segment, or null
    reference_spans_s   list   the same for the human reference (null for fdb1)
    user_words          list   [{"text", "start_s", "end_s"}, ...] of the user inside the segment,
                               or null when no transcript is known
    texts               dict   interruption axis, when the source gives them (fdb1):
                               {"context": ..., "interrupt": ...} transcripts for the quality judge
    has_reference       bool   false when the source has no human reference track (fdb1)
    audio               str    path relative to the corpus folder of a 2-channel 24 kHz FLAC:
                               channel 0 = user, channel 1 = human reference
    codes               str    path of a .npz with "user" and "reference" Mimi codes
                               (int16 [8, n_frames]), or null without ``--codec``
    context_s           float  seconds of the recording just before ``start_s`` that the corpus
                               stores (whole 80 ms frames ending exactly at the segment's first
                               sample; ``corpus build --context-s``, less at the start of a
                               dialogue); 0 for none; null in corpora built before contexts.
                               When > 0 the files are ``audio`` and ``codes`` with ``.context``
                               before the suffix (:func:`context_paths`): ``audio/{id}.context.flac``
                               (same channels as ``audio``) and ``codes/{id}.context.npz`` (same
                               keys, ``[8, context_s / 0.08]``)

Files are written with sorted keys and fixed float rounding, so the same input and seed give a
byte-identical manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from duplexgym.corpora.errors import SourceError

MANIFEST_NAME = "manifest.jsonl"
#: Inserted before the suffix of a segment's audio and codes paths to name its context's files.
CONTEXT_SUFFIX = ".context"
#: Decimal places kept for times in the manifest (0.1 ms).
TIME_DECIMALS = 4


@dataclass(frozen=True)
class Segment:
    """One manifest line; see the module docstring for the meaning and units of each field."""

    id: str
    axis: str
    dialogue: str
    user: str
    reference: str
    start_s: float
    end_s: float
    n_frames: int
    event_s: float
    pause_end_s: float | None = None
    turn_end_s: float | None = None
    response_s: float | None = None
    backchannels_s: tuple[tuple[float, float], ...] | None = None
    interruption_end_s: float | None = None
    agent_prefix_s: tuple[float, float] | None = None
    reference_stop_s: float | None = None
    user_spans_s: tuple[tuple[float, float], ...] | None = None
    reference_spans_s: tuple[tuple[float, float], ...] | None = None
    user_words: tuple[dict, ...] | None = None
    texts: dict | None = None
    has_reference: bool = True
    audio: str = ""
    codes: str | None = None
    context_s: float | None = None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_json(self) -> str:
        """One manifest line (no newline), deterministic."""
        return json.dumps(_rounded(asdict(self)), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: dict) -> "Segment":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        for key in ("backchannels_s", "user_spans_s", "reference_spans_s"):
            if values.get(key) is not None:
                values[key] = tuple(tuple(pair) for pair in values[key])
        if values.get("agent_prefix_s") is not None:
            values["agent_prefix_s"] = tuple(values["agent_prefix_s"])
        if values.get("user_words") is not None:
            values["user_words"] = tuple(values["user_words"])
        return cls(**values)


def context_paths(segment: Segment) -> tuple[str | None, str | None]:
    """``(audio, codes)`` paths (relative to the corpus folder) of ``segment``'s stored context:
    ``None`` where there is none (no context, or no codes)."""
    if not segment.context_s:
        return None, None

    def insert(path: str) -> str:
        stem, dot, suffix = path.rpartition(".")
        return f"{stem}{CONTEXT_SUFFIX}{dot}{suffix}"

    return insert(segment.audio), (insert(segment.codes) if segment.codes else None)


def _rounded(value):
    if isinstance(value, float):
        return round(value, TIME_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def write_manifest(corpus_dir: Path, segments: list[Segment]) -> Path:
    """Write ``manifest.jsonl`` atomically (a crash never leaves half a manifest)."""
    path = Path(corpus_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(s.to_json() + "\n" for s in segments), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(corpus_dir: str | Path) -> list[Segment]:
    """Read a corpus folder's manifest; raises :class:`SourceError` naming the line on bad input."""
    path = Path(corpus_dir) / MANIFEST_NAME
    if not path.is_file():
        raise SourceError(f"{corpus_dir}: no {MANIFEST_NAME}; build one with `duplexgym corpus build`")
    segments = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            segments.append(Segment.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise SourceError(f"{path}: line {number} is not a valid segment ({exc})") from None
    return segments
