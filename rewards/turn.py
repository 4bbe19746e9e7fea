"""Turn-taking: the user finishes a turn; the agent takes the floor promptly, not before the end.

value in [-1, 1]: -1 if the agent takes the floor (Full-Duplex-Bench takeover rule) before
``turn end - early_s`` (a cut-in while the user holds the floor); -1 if no agent utterance that is a
takeover starts in [turn end - ``early_s``, episode end) (no answer; a backchannel is no answer,
and the latency is that of the answer, not of a backchannel before it); otherwise its
latency (onset - turn end, clipped at 0) scores 1 up to ``on_time_s`` (human gaps are ~0.2-0.6 s),
falling linearly to -1 at ``late_s``.

Metrics: ``fdb_tor`` and ``fdb_latency_s`` (Full-Duplex-Bench smooth turn-taking), ``latency_s``,
``cut_in``.
"""

from __future__ import annotations

from dataclasses import dataclass

from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.fdb import AgentSpeech, turn_metrics
from duplexgym.rewards.terms import (
    RewardTerm,
    first_takeover_onset,
    frame_mask,
    linear,
    rel,
    takes_floor,
)
from duplexgym.rewards.terms import check_params as _check

from duplexgym.constants import FRAME_S


@dataclass(frozen=True)
class TurnParams:
    """Seconds."""

    early_s: float = 0.4
    on_time_s: float = 0.6
    late_s: float = 2.5

    def __post_init__(self):
        _check(self, ordered=("on_time_s", "late_s"))


def score(speech: AgentSpeech, segment: Segment, p: TurnParams = TurnParams()) -> RewardTerm:
    end = segment.n_frames * FRAME_S
    turn_end = rel(segment, segment.event_s)
    cut_in = takes_floor(speech, 0.0, turn_end - p.early_s)
    onset = first_takeover_onset(speech, turn_end - p.early_s, end, end)
    answered = onset is not None
    latency = max(0.0, onset - turn_end) if answered else None
    if cut_in or not answered:
        value = -1.0
    else:
        value = linear(latency, p.on_time_s, p.late_s)
    fdb = turn_metrics(speech, turn_end)
    return RewardTerm(value, {"fdb_tor": fdb["tor"], "fdb_latency_s": fdb["latency_s"],
                              "latency_s": latency, "cut_in": int(cut_in)})


def dense_targets(segment: Segment, p: TurnParams = TurnParams()):
    """Silent in the 2 s before the turn end, speaking from ``on_time_s`` after it for 1 s."""
    n, t = segment.n_frames, rel(segment, segment.event_s)
    silent = frame_mask(n, t - 2.0, t - p.early_s)
    speak = frame_mask(n, t + p.on_time_s, t + p.on_time_s + 1.0)
    return speak, silent | speak
