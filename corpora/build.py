"""``duplexgym corpus build``: a source in, a corpus folder out; resumable.

Corpus folder layout::

    manifest.jsonl         one segment per line (schema: :mod:`.manifest`)
    corpus.json            how it was built: format, source, options, codec, summary
    events.jsonl           every event detected in every dialogue (candidates before selection)
    audio/{id}.flac        2 channels, 24 kHz, 16 bit: user, human reference
    audio/{id}.context.flac  the recording just before the segment, same channels: the last
                           ``context_s`` seconds (manifest field) before ``start_s``, whole frames
    codes/{id}.npz         Mimi codes "user" and "reference" (int16 [8, n_frames]) with --codec
    codes/{id}.context.npz the context's codes, same keys (int16 [8, context frames])
    source/                the rendered dialogues of the synthetic format
    .work/                 resume state: per-dialogue detections, VAD probabilities

Stages: (1) per dialogue, load -> VAD -> events, saved in ``.work`` as soon as each batch of
dialogues is done; (2) cut candidates and select ``per_axis`` per axis with ``seed``; (3) write the
segment audio and its context; (4) codes of both. A rerun reuses every finished piece whose
inputs and options are unchanged, so an interrupted build resumes. Bad input files are skipped and
reported in the summary with the reason; the good ones are built.

Rules (``rules``, ``--rules``): ``duplexgym`` (default) detects events with :mod:`.events` and
cuts segments with :mod:`.segments`; ``paper`` uses the seed paper's utterance-level criteria and
windows, :mod:`.paper`. Both give the same manifest schema; ``corpus.json`` records which
(``"rules"``; ``null`` for fdb1, whose segments come ready-made).

Context (``context_s``, ``--context-s``, default 30 s; 0 stores none): for each segment, the
``n`` whole 80 ms frames of both tracks that end exactly at the segment's first sample
(``round(start_s * 24000)``), ``n = floor(min(context_s, start_s) / 0.08)``: fewer at the start of
a dialogue. The manifest's ``context_s`` is ``n * 0.08``. With ``--codec`` its codes are
:func:`.codec.encode` of that audio alone (a stream started at the context's first frame), as a
segment's codes are of the segment's audio alone; :meth:`duplexgym.envs.corpus.ReplayCorpus.context`
reads both. Context files are journaled like segment files (ids ``{id}.context``), so builds stay
resumable and byte-deterministic and a build with another ``context_s`` rewrites only what changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import soundfile as sf
from duplexgym.corpora.audio import write_audio
from duplexgym.corpora.dialogue import SPEAKERS, Dialogue
from duplexgym.corpora.errors import InputFileError, SourceError
from duplexgym.corpora.events import (
    DetectionParams,
    detect_events,
    event_from_dict,
    event_to_dict,
)
from duplexgym.corpora.manifest import CONTEXT_SUFFIX, Segment, read_manifest, write_manifest
from duplexgym.corpora.paper import PaperParams, cut_paper_segments, detect_paper_events, paper_event_from_dict
from duplexgym.corpora.segments import SegmentParams, cut_segments, select_segments
from duplexgym.corpora.sources import FORMATS, DialogueSource
from duplexgym.corpora.vad import VadParams, params_dict, speech_spans

from duplexgym.constants import AXES, FRAME_S, FRAME_SAMPLES, SAMPLE_RATE

#: Bump when the layout or the meaning of the .work files changes.
BUILD_VERSION = 3
#: Dialogues are loaded and VAD-ed together in groups of at most this much audio (s), so the
#: VAD batches are full and memory stays bounded (about 23 MB per minute of stereo audio).
GROUP_AUDIO_S = 1200.0
#: Rows per Mimi batch when computing codes (2 per segment). Fixed, like the VAD's batch.
CODES_BATCH_ROWS = 16
#: Default number of dialogues of the synthetic format.
DEFAULT_SYNTHETIC_DIALOGUES = 48
#: Segment rules: ours (:mod:`.events`, :mod:`.segments`) and the seed paper's (:mod:`.paper`).
RULES = ("duplexgym", "paper")
#: Default seconds of recording stored before each segment.
DEFAULT_CONTEXT_S = 30.0


@dataclass(frozen=True)
class BuildOptions:
    """Everything that shapes a corpus besides the source. ``dialogues``: synthetic format only.
    ``rules``: one of :data:`RULES`; ``detection`` and ``segments`` shape the ``duplexgym`` rules,
    ``paper`` the ``paper`` rules. ``context_s``: seconds of recording stored before each segment."""

    format: str | None = None
    per_axis: int = 2000
    seed: int = 0
    codec: str | None = None
    dialogues: int | None = None
    rules: str = "duplexgym"
    context_s: float = DEFAULT_CONTEXT_S
    vad: VadParams = field(default_factory=VadParams)
    detection: DetectionParams = field(default_factory=DetectionParams)
    segments: SegmentParams = field(default_factory=SegmentParams)
    paper: PaperParams = field(default_factory=PaperParams)

    def __post_init__(self):
        if self.format is not None and self.format not in FORMATS:
            raise SourceError(f"unknown format {self.format!r}; expected one of {', '.join(FORMATS)}")
        if self.per_axis < 0:
            raise SourceError(f"--per-axis must be >= 0, got {self.per_axis}")
        if self.dialogues is not None and self.dialogues < 1:
            raise SourceError(f"--dialogues must be >= 1, got {self.dialogues}")
        if self.rules not in RULES:
            raise SourceError(f"--rules must be one of {', '.join(RULES)}, got {self.rules!r}")
        context = self.context_s
        if isinstance(context, bool) or not isinstance(context, (int, float)) or not math.isfinite(context) or context < 0:
            raise SourceError(f"--context-s must be a finite number of seconds >= 0, got {context!r}")


@dataclass
class BuildSummary:
    """What a build did; ``to_json()`` is the CLI's ``--json`` object."""

    out: str
    format: str
    dialogues: int = 0
    segments: dict = field(default_factory=dict)
    candidates: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    reused_dialogues: int = 0
    audio_s: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


Progress = Callable[[Iterable, str, int], Iterable]


def no_progress(items: Iterable, desc: str, total: int) -> Iterable:
    return items


def tqdm_progress(items: Iterable, desc: str, total: int) -> Iterable:
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)


#: The mark of a folder that ``corpus build`` made: only such a folder (or a new or empty one) is
#: written into, and only files its journals list are ever deleted.
OWNER_NAME = ".duplexgym-corpus"


def source_root(source: str, fmt: str) -> Path:
    """The folder a source's files live in (a pairs listing's folder, else the source itself)."""
    path = Path(source)
    return path.parent if fmt == "pairs" and path.is_file() else path


def claim_out(out: Path, source: Path | None) -> None:
    """Make sure ``out`` can be written by this build, then mark it as a corpus folder.

    Refused, with the reason: ``out`` is a file; ``out`` is the source folder, lies inside it (a
    later build would read the segment files as dialogues) or contains it; ``out`` is a non-empty
    folder that no corpus build made (nothing of the user's is ever overwritten or deleted). A
    folder an earlier build made (its mark, or ``corpus.json`` and ``.work/`` of builds before the
    mark existed) is resumed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SourceError(f"--out {out}: exists and is not a folder; pass a new or empty folder")
    if source is not None and source.exists():
        o, s = out.resolve(), source.resolve()
        if o == s:
            raise SourceError(f"--out {out} is the source folder itself: the build would write its segment files "
                              "among your recordings; pass another (new or empty) folder")
        if o.is_relative_to(s):
            raise SourceError(f"--out {out} lies inside the source folder {source}: a later build would read its "
                              "segment files as new dialogues; pass a folder outside the source")
        if s.is_relative_to(o):
            raise SourceError(f"--out {out} contains the source folder {source}; pass a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not (out / OWNER_NAME).is_file():
        if not ((out / "corpus.json").is_file() and (out / ".work").is_dir()):
            raise SourceError(f"--out {out}: the folder is not empty and was not made by `duplexgym corpus build` "
                              f"(no {OWNER_NAME} in it); pass a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    marker = out / OWNER_NAME
    if not marker.is_file():
        _write_text(marker, json.dumps({"made_by": "duplexgym corpus build", "build_version": BUILD_VERSION}) + "\n")


def infer_format(source: str) -> str:
    """The format of ``source`` when none is given (``synthetic`` for the literal name)."""
    path = Path(source)
    if source == "synthetic" and not path.exists():
        return "synthetic"
    if path.is_file() and path.suffix == ".jsonl":
        return "pairs"
    if path.is_file():
        raise SourceError(f"{source}: a single file is not a corpus source; put the recording(s) in a folder (the "
                          "stereo format reads 2-channel wav/flac files) and pass the folder, or pass a pairs "
                          ".jsonl listing")
    if path.is_dir():
        if any(path.glob("*/input.wav")) or any(path.glob("*/*/input.wav")):
            return "fdb1"
        if any(path.glob("*.jsonl")):
            return "pairs"
        return "stereo"
    raise SourceError(f"{source}: no such file or folder (or pass --format synthetic for the default corpus)")


def build_corpus(source: str | Path, out: str | Path, options: BuildOptions = BuildOptions(),
                 progress: Progress = no_progress) -> BuildSummary:
    """Build (or resume building) a corpus folder from ``source``; see the module docstring."""
    t0 = time.perf_counter()
    source = str(source)
    out = Path(out)
    fmt = options.format or infer_format(source)
    if options.dialogues is not None and fmt != "synthetic":
        raise SourceError("--dialogues applies to the synthetic format only")
    if fmt == "fdb1" and options.rules != "duplexgym":
        raise SourceError("--rules does not apply to the fdb1 format: its segments come ready-made")
    mimi = _load_codec(options.codec)  # fail on a bad --codec before anything is written
    claim_out(out, None if fmt == "synthetic" else source_root(source, fmt))
    summary = BuildSummary(out=str(out), format=fmt)

    if fmt == "fdb1":
        candidates, loaders, fingerprints = _fdb1_candidates(Path(source), summary)
        events_lines: list[str] = []
    else:
        sources = _dialogue_sources(source, fmt, out, options, summary, progress)
        candidates, events_lines, loaders, fingerprints = _detect_all(sources, out, options, summary, progress)

    for axis in AXES:
        summary.candidates[axis] = sum(1 for s in candidates if s.axis == axis)
    selected = select_segments(candidates, options.per_axis, options.seed)
    selected = _write_audio(selected, loaders, fingerprints, out, summary, progress, options.context_s)
    if mimi is not None:
        selected = _write_codes(selected, mimi, out, progress)
    for axis in AXES:
        summary.segments[axis] = sum(1 for s in selected if s.axis == axis)

    _write_text(out / "events.jsonl", "".join(line + "\n" for line in events_lines))
    write_manifest(out, selected)
    _remove_orphans(out, selected)  # only files of this folder's own journals
    summary.seconds = round(time.perf_counter() - t0, 3)
    info = {
        "build_version": BUILD_VERSION,
        "source": source,
        "format": fmt,
        "rules": None if fmt == "fdb1" else options.rules,
        "options": _options_json(options),
        "codec": None if mimi is None else _codec_id(mimi),
        "silence_codes": None if mimi is None else _silence_codes(mimi),
        "summary": {k: v for k, v in summary.to_json().items() if k not in ("seconds", "reused_dialogues")},
    }
    _write_text(out / "corpus.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return summary


# --- stage 1: dialogues -> events ---------------------------------------------------------


def _dialogue_sources(source: str, fmt: str, out: Path, options: BuildOptions, summary: BuildSummary,
                      progress: Progress) -> list[DialogueSource]:
    if fmt == "synthetic":
        from duplexgym.corpora.sources.stereo import stereo_sources
        from duplexgym.corpora.synthetic import SyntheticParams, generate_corpus

        n = options.dialogues or DEFAULT_SYNTHETIC_DIALOGUES
        generate_corpus(out / "source", seed=0, params=SyntheticParams(n_dialogues=n))
        return stereo_sources(out / "source")[0]
    root = Path(source)
    if fmt == "stereo":
        from duplexgym.corpora.sources.stereo import stereo_sources

        if not root.is_dir():
            raise SourceError(f"{root}: the stereo format needs a folder of 2-channel wav/flac files")
        sources, refused = stereo_sources(root)
        summary.skipped.extend({"file": e.path, "reason": e.problem} for e in refused)
        if not sources:
            raise SourceError(f"{root}: no .wav or .flac files found")
        return sources
    if fmt == "pairs":
        from duplexgym.corpora.sources.pairs import pairs_sources

        sources, errors = pairs_sources(root)
        summary.skipped.extend({"file": e.path, "reason": e.problem} for e in errors)
        return sources
    raise SourceError(f"format {fmt!r} has no dialogue source")


def _fingerprint(src: DialogueSource, options: BuildOptions) -> str:
    rules = {"detection": asdict(options.detection)} if options.rules == "duplexgym" else {"paper": asdict(options.paper)}
    return _files_fingerprint(src.files, {"vad": params_dict(options.vad), "rules": options.rules, **rules})


def _files_fingerprint(paths: Iterable[Path], extra: dict) -> str:
    """Identifies input files by path, size and mtime, plus the options that shaped the result."""
    files = []
    for f in paths:
        st = f.stat() if f.exists() else None
        files.append([str(f), st.st_size if st else -1, st.st_mtime_ns if st else -1])
    blob = json.dumps({"v": BUILD_VERSION, "files": files, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _detect_all(sources: list[DialogueSource], out: Path, options: BuildOptions, summary: BuildSummary,
                progress: Progress):
    work = out / ".work" / "dialogues"
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    pending: list[tuple[DialogueSource, str]] = []
    for src in sources:
        key = _fingerprint(src, options)
        cached = _read_json(work / f"{src.id}.json")
        if cached is not None and cached.get("fingerprint") == key:
            results[src.id] = cached
            summary.reused_dialogues += 1
        else:
            pending.append((src, key))

    group: list[tuple[Dialogue, str]] = []
    group_s = 0.0
    for src, key in progress(pending, "detect", len(pending)):
        try:
            dialogue = src.load()
        except InputFileError as exc:
            summary.skipped.append({"file": exc.path, "reason": exc.problem})
            continue
        group.append((dialogue, key))
        group_s += dialogue.duration_s
        if group_s >= GROUP_AUDIO_S:
            results.update(_detect_group(group, work, options))
            group, group_s = [], 0.0
    if group:
        results.update(_detect_group(group, work, options))

    candidates: list[Segment] = []
    events_lines: list[str] = []
    loaders = {src.id: src.load for src in sources}
    for src in sources:  # source order keeps every output deterministic
        res = results.get(src.id)
        if res is None:
            continue
        summary.dialogues += 1
        summary.audio_s += res["duration_s"]
        events_lines.extend(json.dumps({"dialogue": src.id, **e}, sort_keys=True) for e in res["events"])
        spans = {k: [tuple(x) for x in v] for k, v in res["spans"].items()}
        if options.rules == "paper":
            events = [paper_event_from_dict(e) for e in res["events"]]
            candidates.extend(cut_paper_segments(src.id, res["duration_s"], events, _words(res), options.paper, spans))
        else:
            events = [event_from_dict(e) for e in res["events"]]
            candidates.extend(cut_segments(src.id, res["duration_s"], events, _words(res), options.segments, spans))
    summary.audio_s = round(summary.audio_s, 3)
    fingerprints = {did: res["fingerprint"] for did, res in results.items()}
    return candidates, events_lines, loaders, fingerprints


def _words(res: dict):
    from duplexgym.corpora.dialogue import Word

    if res.get("words") is None:
        return None
    return tuple(Word(**w) for w in res["words"])


def _detect_group(group: list[tuple[Dialogue, str]], work: Path, options: BuildOptions) -> dict[str, dict]:
    tracks = [d.track(s) for d, _ in group for s in SPEAKERS]
    spans = speech_spans(tracks, options.vad, cache_dir=work.parent / "vad")
    results = {}
    for i, (dialogue, key) in enumerate(group):
        per_speaker = {"A": spans[2 * i], "B": spans[2 * i + 1]}
        if options.rules == "paper":
            events = detect_paper_events(per_speaker, options.paper)
        else:
            events = detect_events(per_speaker, dialogue.words, options.detection)
        res = {
            "fingerprint": key,
            "dialogue": dialogue.id,
            "duration_s": dialogue.duration_s,
            "spans": {s: [list(x) for x in v] for s, v in per_speaker.items()},
            "events": [event_to_dict(e) for e in events],
            "words": None if dialogue.words is None else [asdict(w) for w in dialogue.words],
        }
        _write_text(work / f"{dialogue.id}.json", json.dumps(res))
        results[dialogue.id] = res
    return results


def _fdb1_candidates(root: Path, summary: BuildSummary):
    from duplexgym.corpora.sources.fdb1 import fdb1_segments

    ready, errors = fdb1_segments(root)
    summary.skipped.extend({"file": e.path, "reason": e.problem} for e in errors)
    summary.dialogues = len(ready)
    summary.audio_s = round(sum(r.segment.duration_s for r in ready), 3)

    def loader_for(r):
        def load() -> Dialogue:
            user = r.load()
            n = r.segment.n_frames * FRAME_SAMPLES
            tracks = np.zeros((2, n), dtype=np.float32)
            tracks[0, : min(n, len(user))] = user[:n]
            return Dialogue(id=r.segment.dialogue, tracks=tracks, words=None, source=str(r.files[0]))

        return load

    segments = [Segment(**{**r.segment.__dict__, "texts": r.texts or None}) for r in ready]
    fingerprints = {r.segment.dialogue: _files_fingerprint(r.files, {}) for r in ready}
    return segments, {r.segment.dialogue: loader_for(r) for r in ready}, fingerprints


# --- stage 3: segment audio ---------------------------------------------------------------


def _segment_key(seg: Segment, fingerprint: str) -> str:
    return hashlib.sha256(f"{fingerprint}:{seg.start_s}:{seg.n_frames}:{seg.user}".encode()).hexdigest()[:24]


def _context_key(seg: Segment, fingerprint: str, n_frames: int) -> str:
    return hashlib.sha256(f"{fingerprint}:{seg.start_s}:{n_frames}:{seg.user}:context".encode()).hexdigest()[:24]


def context_frames(start_s: float, context_s: float) -> int:
    """Whole 80 ms frames of context stored before a segment starting at ``start_s``: at most
    ``context_s`` seconds and at most the recording before the segment's first sample."""
    lo = int(round(start_s * SAMPLE_RATE))
    return min(int(math.floor(context_s / FRAME_S + 1e-9)), lo // FRAME_SAMPLES)


def _write_audio(selected: list[Segment], loaders: dict, fingerprints: dict[str, str], out: Path,
                 summary: BuildSummary, progress: Progress, context_s: float) -> list[Segment]:
    """Each segment's ``audio/{id}.flac`` and, when it has context, ``audio/{id}.context.flac``;
    the segments come back with ``audio`` and ``context_s`` set."""
    audio_dir = out / "audio"
    audio_dir.mkdir(exist_ok=True)
    journal = _Journal(out / ".work" / "audio.journal")
    by_dialogue: dict[str, list[tuple[Segment, bool, int]]] = {}
    contexts: dict[str, int] = {}
    for seg in selected:
        fp = fingerprints[seg.dialogue]
        n_ctx = context_frames(seg.start_s, context_s)
        contexts[seg.id] = n_ctx
        seg_todo = not ((audio_dir / f"{seg.id}.flac").is_file() and journal.get(seg.id) == _segment_key(seg, fp))
        ctx_todo = n_ctx > 0 and not ((audio_dir / f"{seg.id}{CONTEXT_SUFFIX}.flac").is_file()
                                      and journal.get(seg.id + CONTEXT_SUFFIX) == _context_key(seg, fp, n_ctx))
        if seg_todo or ctx_todo:
            by_dialogue.setdefault(seg.dialogue, []).append((seg, seg_todo, n_ctx if ctx_todo else 0))
    failed: set[str] = set()
    try:
        for did, todo in progress(sorted(by_dialogue.items()), "audio", len(by_dialogue)):
            try:
                dialogue = loaders[did]()
            except InputFileError as exc:  # the file changed or vanished since detection
                summary.skipped.append({"file": exc.path, "reason": exc.problem})
                failed.update(s.id for s, _, _ in todo)
                continue
            for seg, seg_todo, n_ctx in todo:
                lo = int(round(seg.start_s * SAMPLE_RATE))
                if seg_todo:
                    n = seg.n_frames * FRAME_SAMPLES
                    write_audio(audio_dir / f"{seg.id}.flac", _clip(dialogue, seg, lo, lo + n), SAMPLE_RATE,
                                subtype="PCM_16", format="FLAC")
                    journal.add(seg.id, _segment_key(seg, fingerprints[did]))
                if n_ctx:
                    clip = _clip(dialogue, seg, lo - n_ctx * FRAME_SAMPLES, lo)
                    write_audio(audio_dir / f"{seg.id}{CONTEXT_SUFFIX}.flac", clip, SAMPLE_RATE, subtype="PCM_16",
                                format="FLAC")
                    journal.add(seg.id + CONTEXT_SUFFIX, _context_key(seg, fingerprints[did], n_ctx))
    finally:
        journal.close()
    return [
        Segment(**{**s.__dict__, "audio": f"audio/{s.id}.flac", "context_s": round(contexts[s.id] * FRAME_S, 6)})
        for s in selected if s.id not in failed
    ]


def _clip(dialogue: Dialogue, seg: Segment, lo: int, hi: int) -> np.ndarray:
    """Samples ``lo:hi`` of the segment's user and reference tracks, ``[hi - lo, 2]`` (zeros past the end)."""
    clip = np.zeros((hi - lo, 2), dtype=np.float32)
    user = dialogue.track(seg.user)[lo:hi]
    ref = dialogue.track(seg.reference)[lo:hi]
    clip[: len(user), 0] = user
    clip[: len(ref), 1] = ref
    return clip


# --- stage 4: codes -----------------------------------------------------------------------


def _load_codec(spec: str | None):
    if spec is None:
        return None
    from duplexgym.corpora.codec import load_mimi

    try:
        return load_mimi(spec)
    except (SourceError, OSError, ValueError) as exc:
        raise SourceError(f"--codec {spec}: {exc}") from None


def _silence_codes(mimi) -> list[int]:
    """The codec's 8 codes of a silent frame (steady state, after 4 silent frames)."""
    from duplexgym.corpora.codec import encode

    return [int(c) for c in encode(mimi, np.zeros(4 * FRAME_SAMPLES, dtype=np.float32))[:, -1]]


def _codec_id(mimi) -> str:
    from duplexgym.corpora.codec import codec_id

    return codec_id(mimi)


def _write_codes(selected: list[Segment], mimi, out: Path, progress: Progress) -> list[Segment]:
    """Mimi codes of each segment's user and reference channel, and of its context's, in batches of
    a fixed :data:`CODES_BATCH_ROWS` rows (zero rows pad the last): a row's codes depend only on
    its own samples (checked bit for bit in the tests), so resumed and fresh builds agree."""
    from duplexgym.corpora.codec import codec_id, encode

    cid = codec_id(mimi)
    codes_dir = out / "codes"
    codes_dir.mkdir(exist_ok=True)
    audio_keys = _Journal(out / ".work" / "audio.journal")
    audio_keys.close()
    journal = _Journal(out / ".work" / "codes.journal")
    key = lambda jid: f"{cid}:{audio_keys.get(jid)}"  # noqa: E731
    items = [(s.id, s.n_frames) for s in selected]  # (journal id = file stem, frames)
    items += [(s.id + CONTEXT_SUFFIX, int(round(s.context_s / FRAME_S))) for s in selected if s.context_s]
    todo = [(jid, n) for jid, n in items if not ((codes_dir / f"{jid}.npz").is_file() and journal.get(jid) == key(jid))]
    todo.sort(key=lambda item: (item[1], item[0]))  # similar lengths share a batch: little padding
    per_batch = CODES_BATCH_ROWS // 2
    batches = [todo[i : i + per_batch] for i in range(0, len(todo), per_batch)]
    try:
        for batch in progress(batches, "codes", len(batches)):
            n = max(frames for _, frames in batch) * FRAME_SAMPLES
            rows = np.zeros((CODES_BATCH_ROWS, n), dtype=np.float32)
            for i, (jid, _) in enumerate(batch):
                audio, _ = sf.read(str(out / "audio" / f"{jid}.flac"), dtype="float32", always_2d=True)
                rows[2 * i : 2 * i + 2, : len(audio)] = audio.T
            codes = encode(mimi, rows)  # [rows, 8, frames]
            for i, (jid, frames) in enumerate(batch):
                tmp = codes_dir / f".{jid}.tmp.npz"
                with open(tmp, "wb") as fh:
                    np.savez(fh, user=codes[2 * i, :, :frames], reference=codes[2 * i + 1, :, :frames],
                             codec=np.array(cid))
                os.replace(tmp, codes_dir / f"{jid}.npz")
                journal.add(jid, key(jid))
    finally:
        journal.close()
    return [Segment(**{**seg.__dict__, "codes": f"codes/{seg.id}.npz"}) for seg in selected]


# --- files --------------------------------------------------------------------------------


class _Journal:
    """An append-only ``{id: key}`` record of finished files: one line per file, flushed at once,
    so an interrupted stage loses nothing it finished. The last line for an id wins."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, str] = {}
        try:
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    sid, key = json.loads(line)
                    self.entries[sid] = key
                except (ValueError, TypeError):
                    continue  # a line cut by a crash
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def get(self, sid: str) -> str | None:
        return self.entries.get(sid)

    def add(self, sid: str, key: str) -> None:
        self.entries[sid] = key
        self._fh.write(json.dumps([sid, key]) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _remove_orphans(out: Path, selected: list[Segment]) -> None:
    """Drop the audio/codes of segments no longer in the manifest (e.g. after a smaller --per-axis):
    only files this folder's journals say the build wrote; nothing else is ever deleted."""
    keep = {s.id for s in selected} | {s.id + CONTEXT_SUFFIX for s in selected if s.context_s}
    for sub, suffix, journal_name in (("audio", ".flac", "audio.journal"), ("codes", ".npz", "codes.journal")):
        journal = _Journal(out / ".work" / journal_name)
        journal.close()
        for sid in set(journal.entries) - keep:
            path = out / sub / f"{sid}{suffix}"
            if path.is_file():
                path.unlink()
        for sid in set(journal.entries) | keep:  # half-written files of an interrupted write
            for tmp in [out / sub / f".{sid}.tmp{suffix}", *(out / sub).glob(f".{sid}{suffix}.*.tmp")]:
                if tmp.is_file():
                    tmp.unlink()


def _options_json(options: BuildOptions) -> dict:
    d = asdict(options)
    d["vad"] = params_dict(options.vad)
    return d


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def load_corpus_info(corpus_dir: str | Path) -> dict:
    """``corpus.json`` of a built corpus (raises :class:`SourceError` if missing)."""
    info = _read_json(Path(corpus_dir) / "corpus.json")
    if info is None:
        raise SourceError(f"{corpus_dir}: no corpus.json; build the corpus with `duplexgym corpus build`")
    return info


__all__ = ["BuildOptions", "BuildSummary", "build_corpus", "infer_format", "read_manifest", "load_corpus_info"]
