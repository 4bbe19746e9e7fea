"""Backchanneling: the user holds a long turn; the agent gives short "mhm / yeah" responses at the
moments a person did, and never takes over.

value in [-1, 1]: -1 if any agent speech segment is a takeover by the Full-Duplex-Bench
backchannel rule (> 3 s or > 3 words; judged on every segment, unlike the benchmark's TOR which
keeps the last segment's verdict); otherwise the F1 score in [0, 1] of the agent's backchannels
(Full-Duplex-Bench's rule: < 1 s and <= 2 words) against the human reference's backchannel onsets,
matched one to one when their onsets are within ``match_s``. Agent speech that
is neither a backchannel nor a takeover counts as an unmatched agent response. Silence scores 0.

Metrics: ``fdb_tor``, ``fdb_frequency`` (backchannels per second), ``fdb_jsd`` (Jensen-Shannon
distance of the timing histograms against the human's: the human backchannel *spans*, as the
benchmark's ``icc_gt_distribution.json`` is built, see :func:`human_spans`), ``fdb_source``,
``fdb_chunks`` (the ``output.json`` chunks), ``fdb_segments`` (silero's segments of
``output.wav`` the benchmark's scorer classifies), ``precision``, ``recall``, ``n_agent``,
``n_human``. The F1 matching of the reward compares onsets.
"""

from __future__ import annotations

from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.fdb import (
    AgentSpeech,
    backchannel_metrics,
    backchannel_segments,
    benchmark_output,
)
from duplexgym.rewards.terms import RewardTerm, frame_mask, rel
from pydantic import Field
from pydantic.dataclasses import dataclass

from duplexgym.config import STRICT, Number
from duplexgym.constants import FRAME_S


@dataclass(config=STRICT)
class BackchannelParams:
    """Seconds."""

    match_s: Number = Field(0.6, ge=0)


def human_spans(segment: Segment) -> list[tuple[float, float]]:
    """The human reference's backchannels as episode-second spans cut to the episode (those left
    empty dropped): what the benchmark's human histogram is built from (``icc_gt_distribution.json``;
    ``duplexgym eval --export`` writes this one's)."""
    end = segment.n_frames * FRAME_S
    out = []
    for a, b in segment.backchannels_s or ():
        a, b = max(0.0, rel(segment, a)), min(rel(segment, b), end)
        if b > a:
            out.append((a, b))
    return out


def score(speech: AgentSpeech, segment: Segment, p: BackchannelParams = BackchannelParams()) -> RewardTerm:
    human = [rel(segment, a) for a, _ in (segment.backchannels_s or ())]
    out = benchmark_output(speech, segment.n_frames)
    segments, chunks = out.segments(), out.chunks()
    fdb = backchannel_metrics(AgentSpeech(spans_s=segments, words=chunks), out.duration_s, human_spans(segment))
    responses = backchannel_segments(speech)
    took_over = any(kind == "takeover" for _, _, kind in responses)
    agent_bc = [a for a, _, kind in responses if kind == "backchannel"]
    matched = match_onsets(agent_bc, human, p.match_s)
    precision = matched / len(responses) if responses else 0.0
    recall = matched / len(human) if human else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    value = -1.0 if took_over else f1
    return RewardTerm(value, {"fdb_tor": fdb["tor"], "fdb_frequency": fdb["frequency"], "fdb_jsd": fdb["jsd"],
                              "fdb_source": out.source, "fdb_chunks": [list(c) for c in chunks],
                              "fdb_segments": [list(x) for x in segments],
                              "precision": precision, "recall": recall, "n_agent": len(agent_bc),
                              "n_human": len(human)})


def match_onsets(agent: list[float], human: list[float], match_s: float) -> int:
    """One-to-one matches between onsets no more than ``match_s`` apart (greedy, closest first)."""
    pairs = sorted((abs(a - h), i, j) for i, a in enumerate(agent) for j, h in enumerate(human)
                   if abs(a - h) <= match_s + 1e-9)
    used_a, used_h = set(), set()
    for _, i, j in pairs:
        if i not in used_a and j not in used_h:
            used_a.add(i)
            used_h.add(j)
    return len(used_a)


def dense_targets(segment: Segment, p: BackchannelParams = BackchannelParams()):
    """Silent except near the human's backchannels (no target there)."""
    n = segment.n_frames
    care = frame_mask(n, 0.0, n * FRAME_S)
    for a, _ in segment.backchannels_s or ():
        care &= ~frame_mask(n, rel(segment, a) - p.match_s, rel(segment, a) + p.match_s)
    return frame_mask(n, 0, 0), care
