"""What every reward term shares: its result record and the episode-time helpers.

Times inside rewards are **episode seconds** (0 = the segment start); :func:`rel` converts the
manifest's dialogue seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.fdb import AgentSpeech, takeover

from duplexgym.constants import FRAME_S


@dataclass(frozen=True)
class RewardTerm:
    """A term's value (axis terms: in [-1, 1]; quality: in [0, 1]) and its metrics (floats,
    ints or None, JSON-ready), among them the Full-Duplex-Bench metrics under ``fdb_*`` keys."""

    value: float
    metrics: dict = field(default_factory=dict)


def rel(segment: Segment, t_s: float | None) -> float | None:
    """Dialogue seconds -> episode seconds."""
    return None if t_s is None else t_s - segment.start_s


def clip(speech: AgentSpeech, lo_s: float, hi_s: float) -> AgentSpeech:
    """The part of ``speech`` inside ``[lo_s, hi_s)``: spans cut at the bounds, words kept whole
    when their start lies inside."""
    if hi_s <= lo_s:
        return AgentSpeech(spans_s=(), words=None if speech.words is None else ())
    spans = tuple((max(a, lo_s), min(b, hi_s)) for a, b in speech.spans_s if b > lo_s and a < hi_s)
    words = None if speech.words is None else tuple(w for w in speech.words if lo_s <= w[0] < hi_s)
    return AgentSpeech(spans_s=spans, words=words)


def seconds(speech: AgentSpeech) -> float:
    """Total speech duration in seconds."""
    return float(sum(b - a for a, b in speech.spans_s))


#: Speech spans closer than this form one utterance when judging takeovers (s).
UTTERANCE_GAP_S = 0.5


def utterances(speech: AgentSpeech, gap_s: float = UTTERANCE_GAP_S) -> list[AgentSpeech]:
    """``speech`` split into utterances: runs of spans separated by less than ``gap_s``."""
    groups: list[list[tuple[float, float]]] = []
    for a, b in sorted(speech.spans_s):
        if groups and a - groups[-1][-1][1] < gap_s:
            groups[-1].append((a, b))
        else:
            groups.append([(a, b)])
    return [clip(speech, g[0][0], max(b for _, b in g) + 1e-9) for g in groups]


def takes_floor(speech: AgentSpeech, lo_s: float, hi_s: float) -> bool:
    """Does any utterance inside ``[lo_s, hi_s)`` amount to a takeover by the Full-Duplex-Bench
    rule (>= 1 s, or > 3 words)? Judged per utterance, unlike Full-Duplex-Bench's TOR, which spans
    from the first to the last word of the whole output (two "mhm"s 4 s apart make a takeover
    there); the ``fdb_*`` metrics keep that definition."""
    return any(takeover(u) for u in utterances(clip(speech, lo_s, hi_s)))


def first_takeover_onset(speech: AgentSpeech, lo_s: float, hi_s: float, end_s: float) -> float | None:
    """Start of the first utterance that begins inside ``[lo_s, hi_s)`` and is a takeover (judged
    on the whole utterance, up to ``end_s``), or None. Speech already running at ``lo_s`` is no
    new utterance, and a backchannel before the takeover is no answer."""
    for utt in utterances(clip(speech, 0.0, end_s)):
        start = utt.spans_s[0][0]
        if start >= hi_s:
            return None
        if start >= lo_s and takeover(utt):
            return start
    return None


def linear(x: float, good_at: float, bad_at: float) -> float:
    """1 for ``x <= good_at``, -1 for ``x >= bad_at``, linear between (``good_at < bad_at``)."""
    if x <= good_at:
        return 1.0
    if x >= bad_at:
        return -1.0
    return float(1.0 - 2.0 * (x - good_at) / (bad_at - good_at))


def frame_mask(n_frames: int, lo_s: float, hi_s: float) -> np.ndarray:
    """bool ``[n_frames]``: frames whose start lies in ``[lo_s, hi_s)``."""
    starts = np.arange(n_frames) * FRAME_S
    return (starts >= lo_s) & (starts < hi_s)
