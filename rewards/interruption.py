"""User interruption: the agent is speaking (a forced prefix of the human reference) when the user
barges in; it stops quickly, then answers the interrupting turn.

value = stop_weight * stop + (1 - stop_weight) * respond, in [-1, 1]:

- stop: from the agent's speech over the interrupting turn after ``stop_grace_s`` (people take
  ~0.5-1.2 s to stop): 0 s scores 1, ``talk_over_max_s`` or more scores -1, linear between.
- respond: +1 if an agent utterance that is a takeover (Full-Duplex-Bench rule) starts within
  [interruption end - ``respond_early_s``, interruption end + ``respond_late_s``), else -1. Speech that merely goes
  on through the interruption end is no answer.

Metrics: ``fdb_tor``, ``fdb_latency_s`` (Full-Duplex-Bench user interruption, on the output after
the interruption end, ``fdb_window_s``: the crop the benchmark's ASR step makes), ``fdb_source``,
``fdb_chunks``, ``fdb_latency_refined_s`` (as for :mod:`.turn`), ``stop_latency_s`` (onset -> end of the agent speech running at the onset;
0 if none), ``talk_over_s``, ``stop``, ``respond``.
"""

from __future__ import annotations

from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.fdb import AgentSpeech, benchmark_output, fdb_latency_metrics
from duplexgym.rewards.terms import (
    RewardTerm,
    clip,
    first_takeover_onset,
    frame_mask,
    linear,
    rel,
    seconds,
)
from pydantic import Field
from pydantic.dataclasses import dataclass

from duplexgym.config import STRICT, Number
from duplexgym.constants import FRAME_S


@dataclass(config=STRICT)
class InterruptionParams:
    """Seconds, except ``stop_weight``."""

    stop_grace_s: Number = Field(1.0, ge=0)
    talk_over_max_s: Number = Field(1.5, gt=0)
    respond_early_s: Number = Field(0.4, ge=0)
    respond_late_s: Number = Field(2.5, ge=0)
    stop_weight: Number = Field(0.5, ge=0, le=1)


def score(speech: AgentSpeech, segment: Segment, p: InterruptionParams = InterruptionParams()) -> RewardTerm:
    end = segment.n_frames * FRAME_S
    onset = rel(segment, segment.event_s)
    intr_end = rel(segment, segment.interruption_end_s)
    talk_over = seconds(clip(speech, onset + p.stop_grace_s, intr_end))
    stop = linear(talk_over, 0.0, p.talk_over_max_s)
    answer = first_takeover_onset(speech, intr_end - p.respond_early_s, intr_end + p.respond_late_s, end)
    respond = 1.0 if answer is not None else -1.0
    running = [b for a, b in speech.spans_s if a <= onset < b]
    fdb = fdb_latency_metrics(benchmark_output(speech, segment.n_frames), intr_end, after_s=intr_end)
    value = p.stop_weight * stop + (1.0 - p.stop_weight) * respond
    return RewardTerm(value, {**fdb, "fdb_window_s": [intr_end, end],
                              "stop_latency_s": (max(running) - onset) if running else 0.0,
                              "talk_over_s": talk_over, "stop": stop, "respond": respond})


def dense_targets(segment: Segment, p: InterruptionParams = InterruptionParams()):
    """Silent over the interrupting turn after the grace, speaking shortly after it ends."""
    n = segment.n_frames
    onset, intr_end = rel(segment, segment.event_s), rel(segment, segment.interruption_end_s)
    silent = frame_mask(n, onset + p.stop_grace_s, intr_end)
    speak = frame_mask(n, intr_end + 0.6, intr_end + 1.6)
    return speak, silent | speak
