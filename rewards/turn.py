"""Turn-taking: the user finishes a turn; the agent takes the floor promptly, not before the end.

value in [-1, 1]: -1 if the agent takes the floor (Full-Duplex-Bench takeover rule) before
``turn end - early_s`` (a cut-in while the user holds the floor); -1 if no agent utterance that is a
takeover starts in [turn end - ``early_s``, episode end) (no answer; a backchannel is no answer,
and the latency is that of the answer, not of a backchannel before it); otherwise its
latency (onset - turn end, clipped at 0) scores 1 up to ``on_time_s`` (human gaps are ~0.2-0.6 s),
falling linearly to -1 at ``late_s``.

Metrics: ``fdb_tor`` and ``fdb_latency_s`` (Full-Duplex-Bench smooth turn-taking, on the whole
output), ``fdb_source`` and ``fdb_chunks`` (where its words come from, and the ``output.json``
chunks it scored), ``fdb_latency_refined_s`` (with ``metrics.onset_refinement``: the first word's
start snapped to the VAD onset inside it), ``latency_s``, ``cut_in``.
"""

from __future__ import annotations

from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.fdb import AgentSpeech, benchmark_output, fdb_latency_metrics
from duplexgym.rewards.terms import (
    RewardTerm,
    first_takeover_onset,
    frame_mask,
    linear,
    rel,
    takes_floor,
)
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from duplexgym.config import STRICT, Number
from duplexgym.constants import FRAME_S


@dataclass(config=STRICT)
class TurnParams:
    """Seconds."""

    early_s: Number = Field(0.4, ge=0)
    on_time_s: Number = Field(0.6, ge=0)
    late_s: Number = Field(2.5, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if not self.on_time_s < self.late_s:
            raise ValueError(f"on_time_s ({self.on_time_s:g}) must be < late_s ({self.late_s:g})")
        return self


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
    fdb = fdb_latency_metrics(benchmark_output(speech, segment.n_frames), turn_end)
    return RewardTerm(value, {**fdb, "latency_s": latency, "cut_in": int(cut_in)})


def dense_targets(segment: Segment, p: TurnParams = TurnParams()):
    """Silent in the 2 s before the turn end, speaking from ``on_time_s`` after it for 1 s."""
    n, t = segment.n_frames, rel(segment, segment.event_s)
    silent = frame_mask(n, t - 2.0, t - p.early_s)
    speak = frame_mask(n, t + p.on_time_s, t + p.on_time_s + 1.0)
    return speak, silent | speak
