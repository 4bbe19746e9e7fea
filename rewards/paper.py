"""The seed paper's four interactivity rewards (arXiv 2606.11167, Section 3.4; ``shared/PAPER.md``),
exactly as it defines them, on the agent's speech intervals.

The paper runs a VAD on the decoded generated audio; its "speech intervals" and "utterances" of the
generated audio are the VAD's segments (IPUs). Here they are ``speech.spans_s`` of the activity reader
(silero on decoded audio with ``activity: {reader: vad}``, the paper's way; the text-stream reader
for tiny random models), optionally merged across silences shorter than ``merge_gap_s`` (default 0:
the VAD's own segments, as the paper). Times are episode seconds.

==============  ===========================================================================
term            value
==============  ===========================================================================
paper_pause     -1 if the generated audio has any speech interval longer than
                ``max_interval_s`` (1 s) anywhere in the segment, else 0
paper_turn      ``-d``: ``d`` = delay from the end of the user's turn (``event_s``) to the start
                of the first generated interval longer than ``min_utterance_s`` (1 s) that is
                still going on after the turn end (an interval that began before the end counts
                with ``d = 0``); no such interval: ``d`` = the rest of the segment after the turn end
paper_backch.   F1 of the generated short intervals (``<= max_backchannel_s``, 1 s) against the
                ground-truth backchannels (the reference's, ``backchannels_s``): a generated
                backchannel whose onset lies within ``match_s`` (1 s) of a true one's onset is a
                true positive (one-to-one, closest first); unmatched backchannels and every longer
                interval (a takeover) are false positives. No generated interval and no true
                backchannel: F1 = 1 (nothing to do, nothing done); one side empty: 0
paper_interr.   ``-d``: ``d`` from the end of the barge-in utterance (``interruption_end_s``) to the
                start of the model's next speech: the first interval that starts at or after it
                (speech already running then is no "next" speech); none: the rest of the segment
==============  ===========================================================================

Every term also reports the Full-Duplex-Bench v1 metrics of its axis (``fdb_*``, :mod:`.fdb`), as
the other axis terms do, so a paper-recipe run is measured on the benchmark's scale too.
"""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass

from duplexgym.config import STRICT, Number
from duplexgym.constants import FRAME_S
from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.backchannel import match_onsets
from duplexgym.rewards.fdb import (
    AgentSpeech,
    backchannel_metrics,
    interruption_metrics,
    pause_metrics,
    turn_metrics,
)
from duplexgym.rewards.terms import RewardTerm, rel


def intervals(speech: AgentSpeech, merge_gap_s: float = 0.0) -> list[tuple[float, float]]:
    """The generated speech intervals: the reader's spans, sorted, merged across silences shorter
    than ``merge_gap_s`` (0: as they are)."""
    out: list[list[float]] = []
    for a, b in sorted(speech.spans_s):
        if out and a - out[-1][1] < merge_gap_s:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


@dataclass(config=STRICT)
class PaperPauseParams:
    """Seconds."""

    max_interval_s: Number = Field(1.0, ge=0)
    merge_gap_s: Number = Field(0.0, ge=0)


@dataclass(config=STRICT)
class PaperTurnParams:
    """Seconds."""

    min_utterance_s: Number = Field(1.0, ge=0)
    merge_gap_s: Number = Field(0.0, ge=0)


@dataclass(config=STRICT)
class PaperBackchannelParams:
    """Seconds."""

    max_backchannel_s: Number = Field(1.0, ge=0)
    match_s: Number = Field(1.0, ge=0)
    merge_gap_s: Number = Field(0.0, ge=0)


@dataclass(config=STRICT)
class PaperInterruptionParams:
    """Seconds."""

    merge_gap_s: Number = Field(0.0, ge=0)


def pause_dense_targets(segment: Segment, p: PaperPauseParams = PaperPauseParams()):
    """(desired speaking, cared-for) bool masks ``[F]`` for optional dense shaping (not the paper's:
    it defines none): silent in every frame, since any interval over ``max_interval_s`` anywhere in
    the segment costs the whole reward."""
    import numpy as np

    n = segment.n_frames
    return np.zeros(n, dtype=bool), np.ones(n, dtype=bool)


def score_pause(speech: AgentSpeech, segment: Segment, p: PaperPauseParams = PaperPauseParams()) -> RewardTerm:
    longest = max((b - a for a, b in intervals(speech, p.merge_gap_s)), default=0.0)
    value = -1.0 if longest > p.max_interval_s else 0.0
    return RewardTerm(value, {"fdb_tor": pause_metrics(speech)["tor"], "longest_interval_s": longest})


def score_turn(speech: AgentSpeech, segment: Segment, p: PaperTurnParams = PaperTurnParams()) -> RewardTerm:
    end = segment.n_frames * FRAME_S
    turn_end = rel(segment, segment.event_s)
    onset = next((a for a, b in intervals(speech, p.merge_gap_s) if b - a > p.min_utterance_s and b > turn_end), None)
    delay = max(0.0, onset - turn_end) if onset is not None else max(0.0, end - turn_end)
    fdb = turn_metrics(speech, turn_end)
    return RewardTerm(-delay, {"fdb_tor": fdb["tor"], "fdb_latency_s": fdb["latency_s"], "delay_s": delay,
                               "answered": int(onset is not None)})


def _f1(predicted: list[float], takeovers: int, truth: list[float], match_s: float) -> tuple[float, dict]:
    if not predicted and not takeovers and not truth:
        return 1.0, {"tp": 0, "fp": 0, "fn": 0}
    tp = match_onsets(predicted, truth, match_s)
    fp = len(predicted) - tp + takeovers
    fn = len(truth) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f1, {"tp": tp, "fp": fp, "fn": fn}


def score_backchannel(speech: AgentSpeech, segment: Segment,
                      p: PaperBackchannelParams = PaperBackchannelParams()) -> RewardTerm:
    end = segment.n_frames * FRAME_S
    spans = intervals(speech, p.merge_gap_s)
    short = [a for a, b in spans if b - a <= p.max_backchannel_s]
    takeovers = sum(1 for a, b in spans if b - a > p.max_backchannel_s)
    truth = [rel(segment, a) for a, _ in (segment.backchannels_s or ())]
    f1, counts = _f1(short, takeovers, truth, p.match_s)
    human = [(rel(segment, a), rel(segment, b)) for a, b in (segment.backchannels_s or ())]
    fdb = backchannel_metrics(speech, end, human)
    return RewardTerm(f1, {"fdb_tor": fdb["tor"], "fdb_frequency": fdb["frequency"], "fdb_jsd": fdb["jsd"],
                           "takeovers": takeovers, **counts})


def score_interruption(speech: AgentSpeech, segment: Segment,
                       p: PaperInterruptionParams = PaperInterruptionParams()) -> RewardTerm:
    end = segment.n_frames * FRAME_S
    intr_end = rel(segment, segment.interruption_end_s)
    onset = next((a for a, _ in intervals(speech, p.merge_gap_s) if a >= intr_end - 1e-9), None)
    delay = onset - intr_end if onset is not None else max(0.0, end - intr_end)
    fdb = interruption_metrics(speech, intr_end)
    return RewardTerm(-max(0.0, delay), {"fdb_tor": fdb["tor"], "fdb_latency_s": fdb["latency_s"],
                                         "delay_s": max(0.0, delay), "answered": int(onset is not None)})
