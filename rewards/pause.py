"""Pause handling: the user pauses mid-turn and goes on; the agent holds back, then answers when
the user's turn really ends.

value = (1 - respond_weight) * hold + respond_weight * respond, in [-1, 1]:

- hold: -1 if the agent takes the floor (Full-Duplex-Bench takeover rule) at any time before the
  user's turn end (or before the episode end when the segment has none); otherwise
  ``1 - speech_penalty * share of the pause window the agent spoke in`` (a short backchannel is
  fine). Pause window: pause start .. resumption + ``resume_grace_s``.
- respond (only when the segment holds the user's turn end, ``turn_end_s``): +1 if an agent
  utterance that is a takeover starts within [turn end - ``respond_early_s``, turn end +
  ``respond_late_s``), else -1. It is what makes pause handling a discrimination task: staying
  silent forever does not score full marks. ``respond_weight = 0`` gives a pure hold reward.

Metrics: ``fdb_tor`` (Full-Duplex-Bench pause handling TOR over the output up to the user's turn
end - ``respond_early_s``, the part that corresponds to its pause inputs: the metric's window
``fdb_window_s``, where ``duplexgym eval --export`` cuts the episode's ``input.wav`` and
``output.wav``, so the official scorer sees the same audio), ``fdb_source`` (where its words come
from: ``vad``, ``text`` or ``asr``), ``fdb_chunks`` (the ``output.json`` chunks it scored,
``[start_s, end_s, text]``), ``hold``, ``respond``, ``pause_speech_s``.
"""

from __future__ import annotations

from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.fdb import AgentSpeech, benchmark_output, chunk_takeover
from duplexgym.rewards.terms import (
    RewardTerm,
    clip,
    first_takeover_onset,
    frame_mask,
    rel,
    seconds,
    takes_floor,
)
from pydantic import Field
from pydantic.dataclasses import dataclass

from duplexgym.config import STRICT, Number
from duplexgym.constants import FRAME_S


@dataclass(config=STRICT)
class PauseParams:
    """Seconds, except the two shares."""

    resume_grace_s: Number = Field(0.5, ge=0)
    speech_penalty: Number = Field(0.5, ge=0, le=2.0)
    respond_weight: Number = Field(0.25, ge=0, le=1)
    respond_early_s: Number = Field(0.4, ge=0)
    respond_late_s: Number = Field(2.0, ge=0)


def metric_window_end_s(segment: Segment, p: PauseParams = PauseParams()) -> float:
    """Episode second where the pause metric's window ends: the user's turn end minus
    ``respond_early_s``, or the episode end when the segment holds no turn end."""
    turn_end = rel(segment, segment.turn_end_s)
    return segment.n_frames * FRAME_S if turn_end is None else turn_end - p.respond_early_s


def score(speech: AgentSpeech, segment: Segment, p: PauseParams = PauseParams()) -> RewardTerm:
    end = segment.n_frames * FRAME_S
    pause_lo, pause_hi = rel(segment, segment.event_s), rel(segment, segment.pause_end_s) + p.resume_grace_s
    turn_end = rel(segment, segment.turn_end_s)
    hold_until = metric_window_end_s(segment, p)
    in_pause = seconds(clip(speech, pause_lo, pause_hi))
    took_floor = takes_floor(speech, 0.0, hold_until)
    hold = -1.0 if took_floor else 1.0 - p.speech_penalty * min(1.0, in_pause / (pause_hi - pause_lo))
    respond = None
    value = hold
    if turn_end is not None:
        onset = first_takeover_onset(speech, turn_end - p.respond_early_s, turn_end + p.respond_late_s, end)
        respond = 1.0 if onset is not None else -1.0
        value = (1.0 - p.respond_weight) * hold + p.respond_weight * respond
    out = benchmark_output(speech, segment.n_frames)
    chunks = out.chunks(0.0, hold_until)
    return RewardTerm(value, {"fdb_tor": chunk_takeover(chunks), "fdb_source": out.source,
                              "fdb_window_s": [0.0, hold_until], "fdb_chunks": [list(c) for c in chunks],
                              "hold": hold, "respond": respond, "pause_speech_s": in_pause})


def dense_targets(segment: Segment, p: PauseParams = PauseParams()):
    """(desired speaking, cared-for) bool masks ``[F]``: silent through the pause, speaking
    shortly after the user's turn end."""
    n = segment.n_frames
    care_silent = frame_mask(n, rel(segment, segment.event_s), rel(segment, segment.pause_end_s) + p.resume_grace_s)
    want_speech = frame_mask(n, 0, 0)
    if segment.turn_end_s is not None and p.respond_weight > 0:
        t = rel(segment, segment.turn_end_s)
        want_speech = frame_mask(n, t + 0.6, t + 1.6)
    return want_speech, care_silent | want_speech
