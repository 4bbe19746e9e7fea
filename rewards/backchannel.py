"""Backchanneling: the user holds a long turn; the agent gives short "mhm / yeah" responses at the
moments a person did, and never takes over.

value in [-1, 1]: -1 if the Full-Duplex-Bench backchannel takeover rule fires (an agent speech
segment > 3 s or > 3 words); otherwise the F1 score in [0, 1] of the agent's backchannels
(Full-Duplex-Bench's rule: < 1 s and <= 2 words) against the human reference's backchannel onsets,
an agent backchannel matching a human one when its onset is within ``match_s``. Agent speech that
is neither a backchannel nor a takeover counts as an unmatched agent response. Silence scores 0.

Metrics: ``fdb_tor``, ``fdb_frequency`` (backchannels per second), ``fdb_jsd`` (Jensen-Shannon
distance of the timing histograms against the human's), ``precision``, ``recall``, ``n_agent``,
``n_human``.
"""

from __future__ import annotations

from dataclasses import dataclass

from duplexgym.corpora.dialogue import FRAME_S
from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.fdb import AgentSpeech, backchannel_metrics, backchannel_segments
from duplexgym.rewards.terms import RewardTerm, frame_mask, rel


@dataclass(frozen=True)
class BackchannelParams:
    """Seconds."""

    match_s: float = 0.6


def score(speech: AgentSpeech, segment: Segment, p: BackchannelParams = BackchannelParams()) -> RewardTerm:
    end = segment.n_frames * FRAME_S
    human = [rel(segment, a) for a, _ in (segment.backchannels_s or ())]
    fdb = backchannel_metrics(speech, end, human)
    responses = [(a, kind) for a, _, kind in backchannel_segments(speech)]
    agent_bc = [a for a, kind in responses if kind == "backchannel"]
    matched_agent = sum(any(abs(a - h) <= p.match_s for h in human) for a in agent_bc)
    matched_human = sum(any(abs(a - h) <= p.match_s for a in agent_bc) for h in human)
    precision = matched_agent / len(responses) if responses else 0.0
    recall = matched_human / len(human) if human else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    value = -1.0 if fdb["tor"] else f1
    return RewardTerm(value, {"fdb_tor": fdb["tor"], "fdb_frequency": fdb["frequency"], "fdb_jsd": fdb["jsd"],
                              "precision": precision, "recall": recall, "n_agent": len(agent_bc),
                              "n_human": len(human)})


def dense_targets(segment: Segment, p: BackchannelParams = BackchannelParams()):
    """Silent except near the human's backchannels (no target there)."""
    n = segment.n_frames
    care = frame_mask(n, 0.0, n * FRAME_S)
    for a, _ in segment.backchannels_s or ():
        care &= ~frame_mask(n, rel(segment, a) - p.match_s, rel(segment, a) + p.match_s)
    return frame_mask(n, 0, 0), care
