"""Per-axis segments cut around detected events, and their deterministic selection.

These are the windows of the ``duplexgym`` rules (the default); the seed paper's rules and
windows (``corpus build --rules paper``) are in :mod:`.paper`, and use :func:`select_segments` too.

A segment is the stretch of a dialogue an episode replays: ``context_s`` of conversation before
the event, the event, and a window after it for the agent to act in. The *user* is the speaker
replayed to the agent; the *reference* is the other speaker, what a person actually did there:

=============  ==================  ========================  ==========================================
axis           user                reference                 window
=============  ==================  ========================  ==========================================
pause          who pauses          the silent listener       context .. pause end + ``pause_after_s``,
                                                             or, when the user's turn ends within
                                                             ``pause_turn_end_max_s`` of resuming, ..
                                                             turn end + ``turn_window_s``
turn           who ends the turn   who takes the floor       context .. turn end + ``turn_window_s``
backchannel    who holds the floor who backchannels          context .. last backchannel +
                                                             ``backchannel_after_s`` (grouped), ended
                                                             before the listener speaks again
interruption   who barges in       who is interrupted        up to ``interruption_prefix_max_s`` of the
                                                             interrupted turn .. interrupting turn end
                                                             + ``interruption_after_s``
=============  ==================  ========================  ==========================================

The context never reaches back before the start of the user's current turn (the floor change that
gave the user the floor), so the human reference never holds the floor at the start of a pause,
turn or backchannel segment. Bounds are snapped: ``start_s`` to a 10 ms grid (a whole number of 24 kHz samples), the length
to whole 80 ms frames. Segments longer than ``max_segment_s`` are cut at the end.
"""

from __future__ import annotations

import hashlib
import math

from duplexgym.corpora.dialogue import Word, other_speaker
from duplexgym.corpora.events import Backchannel, Event, Interruption, Pause, TurnShift
from duplexgym.corpora.manifest import Segment
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from duplexgym.config import STRICT, Number
from duplexgym.constants import AXES, FRAME_S

AXIS_OF_EVENT = {"pause": "pause", "turn": "turn", "backchannel": "backchannel", "interruption": "interruption"}
#: Reference spans at least this long (s) hold the floor; a segment's context starts after them.
BACKCHANNEL_MAX_S = 1.0
#: Start times are snapped down to this grid (s): 240 samples at 24 kHz.
START_GRID_S = 0.01


@pydantic_dataclass(config=STRICT)
class SegmentParams:
    """Segment windows, in seconds."""

    context_s: Number = Field(4.0, ge=0)
    pause_after_s: Number = Field(2.0, ge=0)
    pause_turn_end_max_s: Number = Field(6.0, ge=0)
    turn_window_s: Number = Field(4.0, ge=0)
    backchannel_after_s: Number = Field(2.0, ge=0)
    interruption_prefix_max_s: Number = Field(4.0, ge=0)
    interruption_prefix_min_s: Number = Field(1.0, ge=0)
    interruption_after_s: Number = Field(3.0, ge=0)
    max_segment_s: Number = Field(30.0, ge=0)
    min_segment_s: Number = Field(2.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_segment_s > self.max_segment_s:
            raise ValueError("min_segment_s must be <= max_segment_s")
        return self


def cut_segments(
    dialogue_id: str,
    duration_s: float,
    events: list[Event],
    words: tuple[Word, ...] | None,
    params: SegmentParams = SegmentParams(),
    spans: dict[str, list[tuple[float, float]]] | None = None,
) -> list[Segment]:
    """Every candidate segment of one dialogue (all axes), in event order.

    ``spans``: each speaker's speech spans (dialogue seconds); clipped to each segment they
    become its ``user_spans_s`` / ``reference_spans_s``.
    """
    segments: list[Segment] = []
    onsets = {s: sorted(e.onset_s for e in events if isinstance(e, (TurnShift, Interruption))
                        and (e.to_speaker if isinstance(e, TurnShift) else e.speaker) == s) for s in "AB"}

    def context_start(user: str, t: float) -> float:
        """``t - context_s``, but not before the user's current turn began (the last floor change
        to the user, or the end of the reference's last span longer than a backchannel)."""
        start = t - params.context_s
        began = [o for o in onsets[user] if o <= t]
        if began:
            start = max(start, began[-1])
        if spans is not None:
            ref_floor = [b for a, b in spans[other_speaker(user)] if b - a >= BACKCHANNEL_MAX_S and b <= t]
            if ref_floor:
                start = max(start, ref_floor[-1])
        return start

    for event in events:
        if isinstance(event, Pause):
            turn = next((e for e in events if isinstance(e, TurnShift) and e.from_speaker == event.speaker
                         and event.end_s < e.end_s <= event.end_s + params.pause_turn_end_max_s), None)
            end = event.end_s + params.pause_after_s if turn is None else turn.end_s + params.turn_window_s
            seg = _window(dialogue_id, "pause", event.speaker, context_start(event.speaker, event.start_s),
                          end, event.start_s, duration_s, params, pause_end_s=event.end_s,
                          turn_end_s=None if turn is None else turn.end_s,
                          response_s=None if turn is None else turn.onset_s)
            if seg is not None and seg.turn_end_s is not None and seg.turn_end_s >= seg.end_s:
                seg = Segment(**{**seg.__dict__, "turn_end_s": None, "response_s": None})
        elif isinstance(event, TurnShift):
            seg = _window(dialogue_id, "turn", event.from_speaker, context_start(event.from_speaker, event.end_s),
                          event.end_s + params.turn_window_s, event.end_s, duration_s, params,
                          response_s=event.onset_s)
        elif isinstance(event, Interruption):
            start = max(event.turn_start_s, event.onset_s - params.interruption_prefix_max_s)
            if event.onset_s - start < params.interruption_prefix_min_s:
                continue
            start = _snap_start(start)
            seg = _window(dialogue_id, "interruption", event.speaker, start,
                          event.end_s + params.interruption_after_s, event.onset_s, duration_s, params,
                          interruption_end_s=event.end_s, agent_prefix_s=(start, event.onset_s),
                          reference_stop_s=event.stop_s)
            if seg is not None and seg.agent_prefix_s[0] < seg.start_s:
                continue
        else:
            continue
        if seg is not None:
            segments.append(seg)
    segments.extend(_backchannel_segments(dialogue_id, duration_s, [e for e in events if isinstance(e, Backchannel)],
                                          params, onsets, context_start))
    segments = [_with_spans(_with_words(s, words), spans) for s in segments]
    return sorted(segments, key=lambda s: (s.event_s, s.axis, s.user))


def _backchannel_segments(did: str, duration_s: float, bcs: list[Backchannel], params: SegmentParams,
                          listener_floor: dict[str, list[float]], context_start) -> list[Segment]:
    """Group each listener's backchannels into windows no longer than ``max_segment_s``, each
    ending before the listener next takes the floor (so the human reference only backchannels)."""
    segments = []
    for listener in sorted({b.speaker for b in bcs}):
        mine = sorted((b for b in bcs if b.speaker == listener), key=lambda b: b.start_s)
        group: list[Backchannel] = []
        for bc in mine + [None]:
            if bc is not None and group:
                start = context_start(group[0].holder, group[0].start_s)
                floor_between = any(group[-1].end_s < t < bc.start_s for t in listener_floor[listener])
                if not floor_between and bc.end_s + params.backchannel_after_s - max(0.0, start) <= params.max_segment_s:
                    group.append(bc)
                    continue
            if group:
                first, last = group[0], group[-1]
                end = last.end_s + params.backchannel_after_s
                end = min([end] + [t for t in listener_floor[listener] if t > last.end_s])
                seg = _window(did, "backchannel", first.holder, context_start(first.holder, first.start_s),
                              end, first.start_s, duration_s, params,
                              backchannels_s=tuple((b.start_s, b.end_s) for b in group))
                if seg is not None:
                    segments.append(seg)
            group = [bc] if bc is not None else []
    return segments


def _snap_start(t: float) -> float:
    return round(math.floor(round(t / START_GRID_S, 6)) * START_GRID_S, 2)


def _window(did: str, axis: str, user: str, start: float, end: float, event_s: float,
            duration_s: float, params: SegmentParams, **fields) -> Segment | None:
    start = _snap_start(max(0.0, start))
    end = min(end, duration_s, start + params.max_segment_s)
    n_frames = int(math.floor((end - start) / FRAME_S + 1e-9))
    if n_frames * FRAME_S < params.min_segment_s or event_s >= start + n_frames * FRAME_S:
        return None
    seg_id = f"{did}-{axis}-{int(round(event_s * 1000)):07d}-{user}"
    return Segment(id=seg_id, axis=axis, dialogue=did, user=user, reference=other_speaker(user),
                   start_s=start, end_s=round(start + n_frames * FRAME_S, 6), n_frames=n_frames,
                   event_s=event_s, **fields)


def _with_words(seg: Segment, words: tuple[Word, ...] | None) -> Segment:
    if words is None:
        return seg
    inside = tuple(
        {"text": w.text, "start_s": w.start_s, "end_s": w.end_s}
        for w in words
        if w.speaker == seg.user and w.end_s > seg.start_s and w.start_s < seg.end_s
    )
    return Segment(**{**seg.__dict__, "user_words": inside})


def _clip_spans(spans: list[tuple[float, float]], lo: float, hi: float) -> tuple[tuple[float, float], ...]:
    return tuple((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi)


def _with_spans(seg: Segment, spans: dict | None) -> Segment:
    if spans is None:
        return seg
    return Segment(**{**seg.__dict__,
                      "user_spans_s": _clip_spans(spans[seg.user], seg.start_s, seg.end_s),
                      "reference_spans_s": _clip_spans(spans[seg.reference], seg.start_s, seg.end_s)})


def select_segments(candidates: list[Segment], per_axis: int, seed: int) -> list[Segment]:
    """At most ``per_axis`` segments per axis, chosen by a seeded hash of each segment id.

    The choice of one segment does not depend on which other candidates exist, so adding a
    dialogue to a corpus keeps the earlier choices where the quota allows. Output order: axis,
    dialogue, event time.
    """
    chosen = []
    for axis in AXES:
        pool = [s for s in candidates if s.axis == axis]
        pool.sort(key=lambda s: hashlib.blake2b(f"{seed}:{s.id}".encode(), digest_size=8).digest())
        chosen.extend(pool[:per_axis])
    order = {a: i for i, a in enumerate(AXES)}
    return sorted(chosen, key=lambda s: (order[s.axis], s.dialogue, s.event_s, s.id))
