"""A built corpus opened for replay: its segments, and their audio and codes on demand.

Arrays are read once per segment and kept (the ``cache_segments`` most recently used; 64 by
default, about 120 MB of 10 s segments per env), so resets after the first cost no file I/O. Shapes: audio float32 ``[2, n_frames * 1920]`` (row 0 user,
row 1 human reference, 24 kHz); codes int16 ``[2, 8, n_frames]``.

:meth:`ReplayCorpus.context` returns the recording stored just before a segment (for a training
option that prepends context): whole 80 ms frames that end exactly at the segment's first sample,
so ``context audio ++ segment audio`` is the dialogue's audio without a gap or an overlap.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import soundfile as sf
from duplexgym.corpora.build import load_corpus_info
from duplexgym.corpora.errors import SourceError
from duplexgym.corpora.manifest import Segment, context_paths, read_manifest

from duplexgym.constants import FRAME_S, FRAME_SAMPLES, MIMI_CODEBOOKS


class ReplayCorpus:
    """Read access to a corpus folder (see ``duplexgym.corpora.build`` for the layout)."""

    def __init__(self, path: str | Path, cache_segments: int = 64):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"{self.path}: corpus folder not found; build one with `duplexgym corpus build`")
        self.info = load_corpus_info(self.path)
        self.segments = read_manifest(self.path)
        if not self.segments:
            raise SourceError(f"{self.path}: the manifest holds no segments")
        self.by_id = {s.id: s for s in self.segments}
        self.codec_id: str | None = self.info.get("codec")
        self.codec_spec: str | None = (self.info.get("options") or {}).get("codec")
        self.has_codes = all(s.codes for s in self.segments)
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._cache_size = cache_segments

    def select(self, axes, ids=None) -> list[Segment]:
        """Segments of the given axes (and ids, when given), in manifest order."""
        chosen = [s for s in self.segments if s.axis in axes]
        if ids is not None:
            missing = [i for i in ids if i not in self.by_id]
            if missing:
                raise SourceError(f"{self.path}: no segment {missing[0]!r} in the manifest")
            wanted = set(ids)
            chosen = [s for s in chosen if s.id in wanted]
        return chosen

    def audio(self, segment: Segment) -> np.ndarray:
        """float32 ``[2, n_frames*1920]``: user, human reference."""
        return self._cached("audio", segment, self._read_audio)

    def codes(self, segment: Segment) -> np.ndarray:
        """int16 ``[2, 8, n_frames]``: user codes, reference codes."""
        if not segment.codes:
            raise SourceError(f"{self.path}: segment {segment.id} has no Mimi codes; rebuild the corpus with --codec")
        return self._cached("codes", segment, self._read_codes)

    def context(self, segment: Segment, seconds: float) -> tuple[np.ndarray, np.ndarray | None]:
        """The last whole frames of the recording stored before ``segment``, at most ``seconds``.

        Returns ``(audio, codes)``: audio float32 ``[2, n * 1920]`` (user, human reference) and
        codes int16 ``[2, 8, n]`` (``None`` when the corpus has no codes), ``n = min(floor(seconds
        / 0.08), segment.context_s / 0.08)``; ``n = 0`` (empty arrays) when nothing is stored.

        Alignment: the stored context is whole frames ending exactly at the segment's first sample
        (``round(start_s * 24000)``), and this returns its *last* ``n`` frames, so the returned
        audio ends where the segment's begins. Its codes are the last ``n`` frames of the codes a
        streaming Mimi computes over the whole stored context (a stream started at its first
        frame, as a segment's codes are of a stream started at the segment's first frame).
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        stored = int(round((segment.context_s or 0.0) / FRAME_S))
        n = min(int(np.floor(seconds / FRAME_S + 1e-9)), stored)
        has_codes = bool(segment.codes)
        if n == 0:
            empty = np.zeros((2, MIMI_CODEBOOKS, 0), dtype=np.int16) if has_codes else None
            return np.zeros((2, 0), dtype=np.float32), empty
        audio = self._cached("context_audio", segment, lambda seg: self._read_context_audio(seg, stored))
        codes = self._cached("context_codes", segment, lambda seg: self._read_context_codes(seg, stored)) if has_codes else None
        return audio[:, audio.shape[1] - n * FRAME_SAMPLES :], (None if codes is None else codes[:, :, stored - n :])

    def _read_context_audio(self, segment: Segment, frames: int) -> np.ndarray:
        path = self.path / context_paths(segment)[0]
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise SourceError(f"{path}: cannot read the context of segment {segment.id} ({exc})") from None
        if rate != 24_000 or data.shape != (frames * FRAME_SAMPLES, 2):
            raise SourceError(f"{path}: expected 2 x {frames * FRAME_SAMPLES} samples at 24000 Hz, "
                              f"got {data.shape} at {rate} Hz")
        return np.ascontiguousarray(data.T)

    def _read_context_codes(self, segment: Segment, frames: int) -> np.ndarray:
        path = self.path / context_paths(segment)[1]
        try:
            with np.load(path) as z:
                codes = np.stack([z["user"], z["reference"]]).astype(np.int16)
        except (OSError, KeyError, ValueError) as exc:
            raise SourceError(f"{path}: cannot read the context codes of segment {segment.id} ({exc})") from None
        if codes.shape != (2, MIMI_CODEBOOKS, frames):
            raise SourceError(f"{path}: expected codes of shape (2, 8, {frames}), got {codes.shape}")
        return codes

    def _cached(self, kind: str, segment: Segment, read) -> np.ndarray:
        key = (kind, segment.id)
        value = self._cache.get(key)
        if value is None:
            value = read(segment)
            value.setflags(write=False)
            self._cache[key] = value
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return value

    def _read_audio(self, segment: Segment) -> np.ndarray:
        path = self.path / segment.audio
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise SourceError(f"{path}: cannot read segment audio ({exc})") from None
        expected = segment.n_frames * 1920
        if rate != 24_000 or data.shape != (expected, 2):
            raise SourceError(f"{path}: expected 2 x {expected} samples at 24000 Hz, got {data.shape} at {rate} Hz")
        return np.ascontiguousarray(data.T)

    def _read_codes(self, segment: Segment) -> np.ndarray:
        path = self.path / segment.codes
        try:
            with np.load(path) as z:
                codes = np.stack([z["user"], z["reference"]]).astype(np.int16)
        except (OSError, KeyError, ValueError) as exc:
            raise SourceError(f"{path}: cannot read segment codes ({exc})") from None
        if codes.shape != (2, 8, segment.n_frames):
            raise SourceError(f"{path}: expected codes of shape (2, 8, {segment.n_frames}), got {codes.shape}")
        return codes


def default_modes(corpus: "ReplayCorpus | str | Path") -> tuple[str, str]:
    """``(obs_mode, action_mode)`` for a corpus: ``("codes", "tokens")`` when it holds Mimi codes
    (built with ``--codec``), else ``("waveform", "waveform")``. What ``rollout`` and ``eval`` use
    when no mode is given."""
    corpus = corpus if isinstance(corpus, ReplayCorpus) else ReplayCorpus(corpus)
    return ("codes", "tokens") if corpus.has_codes else ("waveform", "waveform")


class SegmentSampler:
    """Draws episode segments: an axis by ``axis_weights``, then a segment of it uniformly.

    ``axes``: the axes to draw from (those without segments in ``corpus``, among ``ids`` when given,
    are skipped); ``axis_weights``: ``{axis: weight >= 0}`` (default: 1 for every axis). Both the
    env's ``reset`` and the GRPO env runners draw with it, so one config means one mix.
    """

    def __init__(self, corpus: ReplayCorpus, axes, axis_weights: dict | None = None, ids=None):
        by_axis = {a: corpus.select((a,), ids) for a in axes}
        self.by_axis: dict[str, list[Segment]] = {a: s for a, s in by_axis.items() if s}
        if not self.by_axis:
            raise ValueError(f"{corpus.path}: no segments of axes {tuple(axes)}" + (" among the given ids" if ids else ""))
        weights = axis_weights or {a: 1.0 for a in self.by_axis}
        bad = [a for a in weights if a not in axes]
        if bad:
            raise ValueError(f"axis_weights names {bad[0]!r}, which is not among the axes {tuple(axes)}")
        p = np.array([float(w) for w in weights.values()])
        if not np.all(np.isfinite(p)) or (p < 0).any():
            raise ValueError(f"axis_weights must be finite and >= 0, got {weights}")
        self.axes = [a for a in axes if a in self.by_axis and float(weights.get(a, 0.0)) > 0]
        if not self.axes:
            raise ValueError("axis_weights leave no axis with segments and a positive weight")
        p = np.array([float(weights[a]) for a in self.axes])
        self.axis_p = p / p.sum()

    def draw(self, rng: np.random.Generator) -> Segment:
        """One segment: ``rng.choice`` of an axis (by weight), then ``rng.integers`` within it."""
        axis = self.axes[int(rng.choice(len(self.axes), p=self.axis_p))]
        pool = self.by_axis[axis]
        return pool[int(rng.integers(len(pool)))]
