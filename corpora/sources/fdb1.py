"""``fdb1`` source: a Full-Duplex-Bench v1 task folder, read as ready-made segments.

Full-Duplex-Bench v1 (FD-Bench) ships one folder per task and one sub-folder per sample::

    {task}/{id}/input.wav            the user's speech (mono; 16 kHz, Candor pause handling 48 kHz)
    {task}/{id}/pause.json           *pause_handling tasks
    {task}/{id}/turn_taking.json     *turn_taking tasks
    {task}/{id}/interrupt.json       *user_interruption tasks (+ context.wav, interrupt.wav, unused here)
    {task}/{id}/transcription.json   optional: word timings of the input

Tasks: ``candor_pause_handling``, ``synthetic_pause_handling`` -> ``pause``; ``candor_turn_taking``
-> ``turn``; ``icc_backchannel`` -> ``backchannel``; ``synthetic_user_interruption`` ->
``interruption``. A folder name is matched by the substrings ``pause_handling``, ``turn_taking``,
``backchannel`` and ``interrupt``, so the upstream example folders (``pause_handling_example``, ...)
work too. ``root`` is one task folder or a folder holding several.

Annotation shapes
-----------------
Read from DanielLin94144/Full-Duplex-Bench (commit d7336bd): the example samples under
``v1_v1.5/evaluation/example_data/`` and the scorers ``v1_v1.5/evaluation/eval_*.py`` that read
them; the layout from ``v1_v1.5/dataset/README.md``. Times are seconds from the start of
``input.wav``.

- ``pause.json`` (``example_data/pause_handling_example/1/pause.json``)::

      [{"text": "[PAUSE]", "timestamp": [3.32, 4.0]}]          # [pause start, user resumes]

  Upstream's scorer never reads it. Every entry is validated; the earliest pause is the event.
- ``turn_taking.json`` (``example_data/smooth_turn_taking_example/1/turn_taking.json``)::

      [{"text": "[TURN-TAKING]", "timestamp": [2.01, 2.40]}]

  ``eval_smooth_turn_taking.py`` takes the user's turn end from ``[0]["timestamp"][0]`` and
  ignores the second number (third-party generators write ``0.0`` there), so only that one is used.
- ``interrupt.json`` (``example_data/user_interruption_example/1/interrupt.json``)::

      [{"context": "Could you suggest ...?", "interrupt": "Can we talk about ...?",
        "timestamp": [10.53, 13.144]}]                         # [onset, end] of the interruption

  ``eval_user_interruption.py`` reads ``[0]``: both texts (for the relevance judge) and
  ``timestamp[1]`` (latency is measured from the interruption end).
- ``transcription.json`` (``example_data/smooth_turn_taking_example/1/transcription.json``, the
  only one upstream publishes)::

      [{"speaker": 1, "item": [{"text": "Is", "timestamp": [0.0, 0.54]}, ...]},
       {"speaker": 0, "item": [{"text": "I", "timestamp": [2.01, 2.42]}, ...]}]

  It holds *both* Candor speakers: in that sample speaker 1 asks (the audio in ``input.wav``)
  and speaker 0 answers from the turn end on (not in ``input.wav``, which is silent there). Two
  more shapes are accepted because third-party readers report them: a flat word list
  ``[{"text", "timestamp": [s, e]}, ...]`` and a CrisperWhisper object
  ``{"text": ..., "chunks": [{"text", "timestamp": [s, e]}, ...]}`` (the shape of FD-Bench's
  ``output.json``). A word whose start or end is ``null`` (CrisperWhisper writes those; the
  scorers skip them) is skipped.
- ``icc_backchannel/aggregated_all_data.json`` (optional, one per task folder): the human
  listeners' backchannels, ``{"<id>": [[start, end], ...], ...}``, pooled over the ICC
  annotators. Not in the upstream README's layout; it is what a third-party FD-Bench adapter
  reads from the downloaded ``icc_backchannel`` folder. Upstream's scorer instead compares with
  ``evaluation/icc_gt_distribution.json``, a 0.2 s-binned histogram per sample, which holds no
  times and is not read here.

The segment of a sample
-----------------------
One :class:`ReadySegment` per sample: the whole ``input.wav``. ``id`` and ``dialogue`` are
``"{task}__{id}"`` (characters outside ``[A-Za-z0-9_.-]`` become ``_``); the user is ``"A"``,
the reference ``"B"``, and ``has_reference`` is false: FD-Bench has no human reference track.
``start_s`` is 0 and ``end_s = n_frames * 0.08`` with ``n_frames = ceil(n_24k / 1920)``, where
``n_24k = ceil(n * 24000 / rate)`` is the length :func:`~duplexgym.corpora.audio.read_tracks`
returns (``n`` frames at ``rate`` Hz from the WAV header) -- ``ceil(duration * 12.5)`` up to
rounding. The builder zero-pads the loaded track to ``n_frames * 1920`` samples.

``event_s`` and the other anchors, per axis:

- pause: the earliest pause's start; ``pause_end_s`` its end.
- turn: the annotated turn end; ``response_s``, when the transcript has the other speaker, the
  start of that speaker's first word at or after the turn end (within :data:`RESPONSE_SLACK_S`):
  when the human actually answered.
- backchannel: with ``aggregated_all_data.json`` listing the sample, the onset of the first human
  backchannel, and ``backchannels_s`` all of them (inside the segment). Otherwise the start of the
  user's speech: the first user word of the transcript, or 0.0 without one. Why: the backchannel
  axis scores the whole input (FD-Bench's TOR, frequency and JSD run over all of ``output.wav``),
  so the anchor only has to mark where listening starts, and reading the audio to find the speech
  onset would break the lazy loading.
- interruption: the onset; ``interruption_end_s`` its end. ``agent_prefix_s`` stays ``None``: in
  FD-Bench the model answers the context turn on its own before the user cuts in, and there is no
  reference track to force. The two texts are in :attr:`ReadySegment.texts`.

``user_words`` comes from ``transcription.json`` when present (``None`` otherwise): the words of
the speaker who spoke most before the event (pause, turn), or overall (backchannel, interruption),
as ``{"text", "start_s", "end_s"}`` sorted by start.

Reading the annotations reads only the WAV header, never the audio: ``load()`` does that. Bad
input for one sample (no ``input.wav``, an unreadable header, a missing, invalid or wrongly shaped
annotation, an annotated time outside the audio) is returned as an ``InputFileError`` naming the
file, and the other samples still come back; problems inside the audio itself (stereo, a bad
sample rate, truncation) surface when ``load()`` is called. A root without task folders, or with
task folders but no samples, raises ``SourceError``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from duplexgym.corpora.audio import read_tracks
from duplexgym.corpora.errors import InputFileError, SourceError
from duplexgym.corpora.manifest import Segment

from duplexgym.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE

#: Folder-name substring -> axis, checked in this order.
TASK_AXES = (
    ("pause_handling", "pause"),
    ("turn_taking", "turn"),
    ("backchannel", "backchannel"),
    ("interrupt", "interruption"),
)
#: The five v1 task folders, for messages.
KNOWN_TASKS = (
    "candor_pause_handling",
    "synthetic_pause_handling",
    "candor_turn_taking",
    "icc_backchannel",
    "synthetic_user_interruption",
)
#: The annotation file each axis needs (``None``: none needed).
ANNOTATION_FILES = {
    "pause": "pause.json",
    "turn": "turn_taking.json",
    "backchannel": None,
    "interruption": "interrupt.json",
}
INPUT_NAME = "input.wav"
TRANSCRIPT_NAME = "transcription.json"
#: Per-task file of the human backchannels of ICC (optional, see the module docstring).
ICC_BACKCHANNELS_NAME = "aggregated_all_data.json"
#: Speaker labels: the input is the user (channel 0); the reference channel stays empty.
USER, REFERENCE = "A", "B"
#: How far before the turn end the other speaker's first word may start and still count as the
#: response (Candor's word alignment puts it exactly at the turn end).
RESPONSE_SLACK_S = 0.001

LAYOUT = (
    "{task}/{id}/input.wav plus pause.json | turn_taking.json | interrupt.json "
    "(and optionally transcription.json), with {task} one of " + ", ".join(KNOWN_TASKS)
)


@dataclass(frozen=True)
class ReadySegment:
    """One FD-Bench sample as a segment, ready for the corpus builder.

    ``segment``: the manifest record, ``audio``/``codes`` left empty (the builder fills them);
    ``load``: reads ``input.wav`` as float32 ``[N]`` at 24 kHz (raises ``InputFileError``);
    ``files``: every file the segment was made from (their sizes and mtimes fingerprint the cache);
    ``texts``: interruption samples' ``{"context": ..., "interrupt": ...}`` from ``interrupt.json``
    (what FD-Bench's relevance judge is given), empty otherwise.
    """

    segment: Segment
    load: Callable[[], np.ndarray] = field(compare=False)
    files: tuple[Path, ...] = ()
    texts: dict = field(default_factory=dict, compare=False)


def task_axis(name: str) -> str | None:
    """The axis of a task folder name (``"candor_turn_taking"`` -> ``"turn"``), or ``None``."""
    lowered = name.lower()
    for marker, axis in TASK_AXES:
        if marker in lowered:
            return axis
    return None


def fdb1_segments(root: Path) -> tuple[list[ReadySegment], list[InputFileError]]:
    """Enumerate the samples under ``root``: ready segments, and one error per unusable sample.

    Order: task folders by name, then samples by id (numeric ids numerically). Raises
    ``SourceError`` when ``root`` holds no task folder or no sample at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder; the fdb1 format reads a folder laid out as {LAYOUT}")
    tasks = _task_folders(root)
    ready: list[ReadySegment] = []
    errors: list[InputFileError] = []
    seen: dict[str, Path] = {}
    n_samples = 0
    for task_dir, axis in tasks:
        samples = sorted((p for p in task_dir.iterdir() if _is_sample_dir(p)), key=_natural)
        n_samples += len(samples)
        human_backchannels: dict | None = None
        if axis == "backchannel" and (task_dir / ICC_BACKCHANNELS_NAME).is_file():
            try:
                human_backchannels = _read_icc_backchannels(task_dir / ICC_BACKCHANNELS_NAME)
            except InputFileError as exc:
                errors.append(
                    InputFileError(
                        exc.path, f"{exc.problem}; the {len(samples)} samples of {task_dir.name} were skipped"
                    )
                )
                continue
        for sample_dir in samples:
            try:
                item = _sample(task_dir.name, axis, sample_dir, human_backchannels)
                if item.segment.id in seen:
                    raise InputFileError(
                        sample_dir,
                        f"sample id {item.segment.id!r} collides with {seen[item.segment.id]} "
                        "(ids keep only [A-Za-z0-9_.-]); rename one of the folders",
                    )
                seen[item.segment.id] = sample_dir
                ready.append(item)
            except InputFileError as exc:
                errors.append(exc)
    if n_samples == 0:
        names = ", ".join(d.name for d, _ in tasks)
        raise SourceError(f"{root}: the task folders ({names}) hold no sample folders; expected {LAYOUT}")
    return ready, errors


# ----------------------------------------------------------------------------- folders


def _task_folders(root: Path) -> list[tuple[Path, str]]:
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    tasks = [(p, task_axis(p.name)) for p in children if task_axis(p.name) is not None]
    if tasks:
        return tasks
    if task_axis(root.name) is not None:
        return [(root, task_axis(root.name))]
    hint = ""
    for child in children:
        grandchildren = [p for p in child.iterdir() if p.is_dir()]
        if any(task_axis(p.name) for p in grandchildren):
            hint = f"; {child} holds task folders, pass that folder"
            break
    raise SourceError(f"{root}: no Full-Duplex-Bench v1 task folder found; expected {LAYOUT}{hint}")


def _is_sample_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and path.name != "__MACOSX"


def _natural(path: Path) -> tuple:
    name = path.name
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def segment_id(task: str, sample: str) -> str:
    """``"{task}__{sample}"`` with characters outside ``[A-Za-z0-9_.-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{task}__{sample}")


# ----------------------------------------------------------------------------- one sample


def _sample(task: str, axis: str, sample_dir: Path, human_backchannels: dict | None) -> ReadySegment:
    input_path = sample_dir / INPUT_NAME
    if not input_path.is_file():
        raise InputFileError(
            input_path, f"file not found; every Full-Duplex-Bench sample folder holds the user's audio as {INPUT_NAME}"
        )
    n_24k = _samples_at_24k(input_path)
    n_frames = max(1, math.ceil(n_24k / FRAME_SAMPLES))
    end_s = n_frames * FRAME_S
    files = [input_path]

    annotation_name = ANNOTATION_FILES[axis]
    annotation = None
    if annotation_name is not None:
        annotation_path = sample_dir / annotation_name
        annotation = _read_json(annotation_path)
        files.append(annotation_path)

    transcript_path = sample_dir / TRANSCRIPT_NAME
    speakers = None
    if transcript_path.is_file():
        speakers = _parse_transcript(_read_json(transcript_path), transcript_path)
        files.append(transcript_path)

    fields: dict = {}
    texts: dict = {}
    if axis == "pause":
        spans = _timestamp_entries(annotation, annotation_path, '{"text": "[PAUSE]", "timestamp": [start, end]}')
        for i, (start, end) in enumerate(spans):
            if end < start:
                raise InputFileError(annotation_path, f"entry {i}: the pause ends ({end}) before it starts ({start})")
        event_s, pause_end_s = min(spans)
        fields["pause_end_s"] = pause_end_s
    elif axis == "turn":
        shape = '{"text": "[TURN-TAKING]", "timestamp": [turn end, ...]}'
        spans = _timestamp_entries(annotation, annotation_path, shape)
        event_s = spans[0][0]
    elif axis == "interruption":
        shape = '{"context": str, "interrupt": str, "timestamp": [onset, end]}'
        spans = _timestamp_entries(annotation, annotation_path, shape)
        for key in ("context", "interrupt"):
            if not isinstance(annotation[0].get(key), str):
                got = _describe(annotation[0].get(key))
                raise InputFileError(annotation_path, f'entry 0: "{key}" must be the text of that user turn, got {got}')
            texts[key] = annotation[0][key]
        event_s, interruption_end_s = spans[0]
        if interruption_end_s < event_s:
            raise InputFileError(
                annotation_path, f"entry 0: the interruption ends ({interruption_end_s}) before it starts ({event_s})"
            )
        fields["interruption_end_s"] = interruption_end_s
    else:
        event_s = None  # decided below, once the user's words are known

    user_key = _pick_user(speakers, before_s=event_s if axis in ("pause", "turn") else None)
    user_words = None
    if speakers is not None:
        user_words = tuple(
            {"text": text, "start_s": start, "end_s": end}
            for text, start, end in sorted(speakers.get(user_key, []), key=lambda w: (w[1], w[2]))
        )

    if axis == "turn" and speakers is not None:
        onsets = [
            start
            for key, words in speakers.items()
            if key != user_key
            for _, start, _ in words
            if start >= event_s - RESPONSE_SLACK_S
        ]
        fields["response_s"] = min(onsets) if onsets else None
    if axis == "backchannel":
        listed = None if human_backchannels is None else human_backchannels.get(sample_dir.name)
        if listed is not None:
            files.append(sample_dir.parent / ICC_BACKCHANNELS_NAME)
            inside = tuple((s, min(e, end_s)) for s, e in listed if s < end_s)
            fields["backchannels_s"] = inside
        if fields.get("backchannels_s"):
            event_s = fields["backchannels_s"][0][0]
        else:
            event_s = user_words[0]["start_s"] if user_words else 0.0

    where = annotation_path if annotation_name is not None else transcript_path
    anchors = (("event", event_s), ("end", fields.get("pause_end_s")), ("end", fields.get("interruption_end_s")))
    for name, value in anchors:
        if value is not None and value > end_s:
            raise InputFileError(
                where,
                f"the annotated {axis} {name} at {value:.3f} s lies past the end of {INPUT_NAME} "
                f"({n_24k / SAMPLE_RATE:.3f} s); the annotation does not belong to this audio",
            )

    sid = segment_id(task, sample_dir.name)
    segment = Segment(
        id=sid,
        axis=axis,
        dialogue=sid,
        user=USER,
        reference=REFERENCE,
        start_s=0.0,
        end_s=end_s,
        n_frames=n_frames,
        event_s=float(event_s),
        user_words=user_words,
        has_reference=False,
        **fields,
    )

    def load() -> np.ndarray:
        track = read_tracks(input_path, channels=1)[0]
        if len(track) != n_24k:
            raise InputFileError(
                input_path,
                f"changed since it was listed ({len(track)} samples at 24 kHz, the header said {n_24k}); build again",
            )
        return track

    return ReadySegment(segment=segment, load=load, files=tuple(files), texts=texts)


def _samples_at_24k(path: Path) -> int:
    """Length at 24 kHz from the header alone, as ``read_tracks`` (soxr) returns it."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InputFileError(path, f"not a readable audio file ({str(exc).strip()})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise InputFileError(path, f"no audio samples ({info.frames} frames at {info.samplerate} Hz)")
    return -(-info.frames * SAMPLE_RATE // info.samplerate)


# ----------------------------------------------------------------------------- JSON shapes


def _read_json(path: Path):
    if not path.is_file():
        raise InputFileError(path, f"file not found; a sample of this task needs {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot read the file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _timestamp_entries(raw, path: Path, shape: str) -> list[tuple[float, float]]:
    """Validate ``[{..., "timestamp": [a, b]}, ...]`` (non-empty); return the ``(a, b)`` pairs."""
    expected = f"expected a non-empty list of {shape} objects"
    if not isinstance(raw, list) or not raw:
        raise InputFileError(path, f"{expected}, got {_describe(raw)}")
    pairs = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or "timestamp" not in entry:
            raise InputFileError(path, f"{expected}; entry {i} is {_describe(entry)}")
        pairs.append(_time_pair(entry["timestamp"], path, f"entry {i}"))
    return pairs


def _time_pair(value, path: Path, where: str, allow_null: bool = False):
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputFileError(path, f'{where}: "timestamp" must be [start, end] in seconds, got {_describe(value)}')
    out = []
    for v in value:
        if v is None and allow_null:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InputFileError(
                path, f'{where}: "timestamp" must hold two non-negative numbers of seconds, got {_describe(value)}'
            )
        out.append(float(v))
    return out[0], out[1]


def _parse_transcript(raw, path: Path) -> dict:
    """Words per speaker: ``{speaker: [(text, start_s, end_s), ...]}`` (``None`` key: one speaker)."""
    expected = (
        'expected a list of {"speaker": id, "item": [{"text", "timestamp": [start, end]}, ...]} objects, '
        'a list of {"text", "timestamp"} words, or {"chunks": [...]}'
    )
    if isinstance(raw, dict):
        if not isinstance(raw.get("chunks"), list):
            raise InputFileError(path, f"{expected}, got {_describe(raw)}")
        return {None: _words(raw["chunks"], path, "chunks")}
    if not isinstance(raw, list):
        raise InputFileError(path, f"{expected}, got {_describe(raw)}")
    if not raw:
        return {}
    if all(isinstance(e, dict) and "item" in e for e in raw):
        speakers: dict = {}
        for i, entry in enumerate(raw):
            speaker = entry.get("speaker")
            if isinstance(speaker, bool) or not isinstance(speaker, (int, str)):
                raise InputFileError(path, f'entry {i}: "speaker" must be a number or a name, got {_describe(speaker)}')
            if not isinstance(entry["item"], list):
                raise InputFileError(path, f'entry {i}: "item" must be a list of words, got {_describe(entry["item"])}')
            speakers.setdefault(speaker, []).extend(_words(entry["item"], path, f"entry {i} item"))
        return speakers
    if all(isinstance(e, dict) and "timestamp" in e for e in raw):
        return {None: _words(raw, path, "word")}
    bad = next(i for i, e in enumerate(raw) if not (isinstance(e, dict) and ("item" in e or "timestamp" in e)))
    raise InputFileError(path, f"{expected}; entry {bad} is {_describe(raw[bad])}")


def _words(entries: list, path: Path, where: str) -> list[tuple[str, float, float]]:
    words = []
    for j, entry in enumerate(entries):
        here = f"{where} {j}"
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str) or "timestamp" not in entry:
            expected = '{"text": str, "timestamp": [start, end]}'
            raise InputFileError(path, f"{here}: expected {expected}, got {_describe(entry)}")
        pair = _time_pair(entry["timestamp"], path, here, allow_null=True)
        if pair is None:
            continue  # an unaligned word (null time); FD-Bench's scorers skip these too
        if pair[1] < pair[0]:
            raise InputFileError(path, f"{here}: the word ends ({pair[1]}) before it starts ({pair[0]})")
        words.append((entry["text"].strip(), pair[0], pair[1]))
    return words


def _read_icc_backchannels(path: Path) -> dict[str, list[tuple[float, float]]]:
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise InputFileError(path, f'expected {{"<sample id>": [[start, end], ...], ...}}, got {_describe(raw)}')
    out = {}
    for key, spans in raw.items():
        if not isinstance(spans, list):
            raise InputFileError(path, f'"{key}": expected a list of [start, end] pairs, got {_describe(spans)}')
        pairs = [_time_pair(span, path, f'"{key}" backchannel {i}') for i, span in enumerate(spans)]
        for i, (start, end) in enumerate(pairs):
            if end < start:
                raise InputFileError(path, f'"{key}" backchannel {i}: ends ({end}) before it starts ({start})')
        out[str(key)] = sorted(pairs)
    return out


def _pick_user(speakers: dict | None, before_s: float | None):
    """The transcript speaker replayed in ``input.wav``: most word time before ``before_s``
    (all of it when ``None`` or when nobody spoke before it); ties go to the first key."""
    if not speakers:
        return None
    if len(speakers) == 1:
        return next(iter(speakers))

    def talk(words, limit):
        return sum(max(0.0, min(end, limit) - start) for _, start, end in words if start < limit)

    keys = sorted(speakers, key=str)
    for limit in ((before_s, math.inf) if before_s is not None else (math.inf,)):
        totals = {k: talk(speakers[k], limit) for k in keys}
        best = max(keys, key=lambda k: totals[k])  # max keeps the first of equals
        if totals[best] > 0:
            return best
    return keys[0]


def _describe(value) -> str:
    """A short description of a JSON value for error messages."""
    if isinstance(value, dict):
        keys = list(value)[:6]
        return f"an object with keys {keys}" + (" ..." if len(value) > 6 else "")
    if isinstance(value, list):
        plural = "s" if len(value) != 1 else ""
        return f"a list of {len(value)} item{plural}: {_clip(json.dumps(value))}"
    if value is None:
        return "null"
    return f"{type(value).__name__} {_clip(json.dumps(value))}"


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
