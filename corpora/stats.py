"""``duplexgym corpus stats``: what a corpus holds, per axis, from its manifest alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from duplexgym.corpora.manifest import Segment, read_manifest

from duplexgym.constants import AXES


def _describe(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "mean": round(float(a.mean()), 3), "median": round(float(np.median(a)), 3),
            "min": round(float(a.min()), 3), "max": round(float(a.max()), 3)}


def corpus_stats(corpus_dir: str | Path) -> dict:
    """Per-axis counts, durations (s) and the axis' event statistics (s); the segment rules the
    corpus was built with (``rules``: ``duplexgym`` or ``paper``; ``null`` for fdb1) and the
    stored context per segment (``context_s``)."""
    from duplexgym.corpora.build import load_corpus_info

    segments = read_manifest(corpus_dir)
    info = load_corpus_info(corpus_dir)
    by_axis = {}
    for axis in AXES:
        segs = [s for s in segments if s.axis == axis]
        entry = {"segments": len(segs), "duration_s": _describe([s.duration_s for s in segs]),
                 "dialogues": len({s.dialogue for s in segs})}
        entry.update(_event_stats(axis, segs))
        by_axis[axis] = entry
    return {
        "corpus": str(corpus_dir),
        "format": info.get("format"),
        "rules": info.get("rules", None if info.get("format") == "fdb1" else "duplexgym"),
        "codec": info.get("codec"),
        "dialogues": (info.get("summary") or {}).get("dialogues", len({s.dialogue for s in segments})),
        "dialogues_with_segments": len({s.dialogue for s in segments}),
        "segments": len(segments),
        "total_s": round(sum(s.duration_s for s in segments), 3),
        "with_words": sum(1 for s in segments if s.user_words is not None),
        "context_s": _describe([s.context_s for s in segments if s.context_s is not None]),
        "by_axis": by_axis,
    }


def _event_stats(axis: str, segs: list[Segment]) -> dict:
    if axis == "pause":
        return {"pause_s": _describe([s.pause_end_s - s.event_s for s in segs if s.pause_end_s is not None])}
    if axis == "turn":
        gaps = [s.response_s - s.event_s for s in segs if s.response_s is not None]
        return {"gap_s": _describe(gaps), "overlap_share": round(float(np.mean([g < 0 for g in gaps])), 3) if gaps else None}
    if axis == "backchannel":
        counts = [len(s.backchannels_s or ()) for s in segs]
        per_min = [60.0 * len(s.backchannels_s or ()) / s.duration_s for s in segs if s.duration_s > 0]
        return {"backchannels_per_segment": _describe(counts), "backchannels_per_min": _describe(per_min)}
    if axis == "interruption":
        return {
            "stop_delay_s": _describe([s.reference_stop_s - s.event_s for s in segs if s.reference_stop_s is not None]),
            "interrupting_turn_s": _describe([s.interruption_end_s - s.event_s for s in segs if s.interruption_end_s is not None]),
            "agent_prefix_s": _describe([s.agent_prefix_s[1] - s.agent_prefix_s[0] for s in segs if s.agent_prefix_s]),
        }
    return {}


def format_stats(stats: dict) -> str:
    """A plain-text table of :func:`corpus_stats` for people."""
    lines = [
        f"corpus {stats['corpus']}  format={stats['format']}  rules={stats['rules'] or 'none'}  "
        f"codec={stats['codec'] or 'none'}",
        f"{stats['dialogues']} dialogues, {stats['segments']} segments, {stats['total_s'] / 60:.1f} min"
        f" ({stats['with_words']} with user words)"
        + ("" if stats["context_s"]["n"] == 0 else f", context {stats['context_s']['mean']:.1f} s per segment on average"),
        "",
        f"{'axis':<13}{'segments':>9}{'dialogues':>10}{'mean s':>8}{'min s':>7}{'max s':>7}  event statistics",
    ]
    for axis, e in stats["by_axis"].items():
        d = e["duration_s"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        detail = []
        for key, value in e.items():
            if key in ("segments", "duration_s", "dialogues"):
                continue
            if isinstance(value, dict):
                detail.append(f"{key} mean {fmt(value['mean'])} median {fmt(value['median'])}")
            else:
                detail.append(f"{key} {fmt(value)}")
        lines.append(f"{axis:<13}{e['segments']:>9}{e['dialogues']:>10}{fmt(d['mean']):>8}{fmt(d['min']):>7}"
                     f"{fmt(d['max']):>7}  " + "; ".join(detail))
    return "\n".join(lines)
