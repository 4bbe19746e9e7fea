"""Conversational events from two speakers' speech spans: pure functions, no audio.

Input: each speaker's speech spans (seconds, from :mod:`.vad`) and optionally timed words.
Output: :class:`Pause`, :class:`TurnShift`, :class:`Backchannel` and :class:`Interruption`
records, each with an ``anchor_s`` (the time the axis is scored around).

These are the ``duplexgym`` rules (``corpus build --rules duplexgym``, the default); the seed
paper's utterance-level rules are in :mod:`.paper`. Every threshold is a field of
:class:`DetectionParams`:

1. **Backchannel**: a span of listener X shorter than ``backchannel_max_s`` (and with at most
   ``backchannel_max_words`` words when words are known), with no other speech of X within
   ``backchannel_isolation_before_s`` before it or ``backchannel_isolation_after_s`` after it,
   while the other speaker Y holds the floor: Y spoke within ``backchannel_holder_gap_s`` before
   its onset, and speaks again within ``backchannel_holder_resume_s`` of its end, going on for at
   least ``backchannel_holder_after_s`` past it. Backchannels do not take the floor; every other
   span is a *floor span*.
2. **Pause**: two consecutive floor spans of one speaker separated by a silence of
   ``min_pause_s``..``max_pause_s`` in which the other speaker has no floor speech (a backchannel
   there is fine). Anchor: the pause start.
3. **Turn shift**: a floor span of Y starts and the floor span that reached furthest among those
   started before it is X's (X held the floor). If X had stopped, the gap must be at most
   ``max_turn_gap_s``; if X was still speaking, X must stop within ``max_shift_overlap_s`` of Y's
   onset (a small overlap at a turn end). Anchor: X's turn end.
   An overlap up to ``interruption_max_stop_s`` on a turn of X younger than
   ``interruption_min_prior_s`` is a turn shift too (a competitive start at a short turn's end).
4. **Interruption**: as 3, but X is still speaking and stops ``max_shift_overlap_s`` to
   ``interruption_max_stop_s`` after Y's onset, X had held its turn for at least
   ``interruption_min_prior_s`` before it, X yields (it does not speak again before Y's span
   ends, or it stays silent for at least ``interruption_min_yield_s`` after stopping), and Y goes
   on for at least ``interruption_min_hold_s`` after X stops. Anchor: Y's onset. The interrupting
   turn ends where Y's floor spans, chained over gaps shorter than ``min_pause_s``, end.

Y's span lying entirely inside X's (X keeps talking) is none of these.

Dense talk (events next to events). The rules above were first written with isolation margins
that assumed events apart from each other; in dense talk they missed about half the backchannels
and interruptions (those next to another event). Three changes, each measured on the dense
two-voice corpus of :mod:`.synthetic.dense` (exact labels) and on the embedded default corpus:

- *Backchannel isolation is asymmetric and shorter*: ``backchannel_isolation_before_s`` = 0.3 s
  and ``backchannel_isolation_after_s`` = 0.5 s replace one 1.0 s margin on both sides. A listener
  often backchannels right after its own turn (the new holder has just started: 0.5 s later is
  common) or takes the turn 0.8 s after a backchannel; with 1.0 s both were floor spans, and a
  floor span inside the holder's span is no event. What still tells a backchannel from a turn
  fragment is the holder condition (Y speaks before and goes on after it); 0.5 s after keeps a
  short span that runs straight into the listener's own turn ("yeah [0.3 s] so I think...") a
  turn start. The word and length limits are unchanged.
- *An interrupted speaker may come back while the interrupter still talks*:
  ``interruption_min_yield_s`` = 1.0 s. The old rule rejected an interruption whenever X spoke
  again before Y's span ended, which also rejects the common cases of X taking the turn back with
  an overlap at the end of Y's interrupting turn, and of X interrupting Y in turn (chained
  interruptions). X's return now only voids the interruption when it comes within 1.0 s of X
  stopping (X merely paused inside an overlap, and the return is X's floor again: A stops at 4 s,
  resumes at 4.5 s while B talks to 6 s, so A interrupts B, not B A).
- *A turn-end overlap may be 0.5 s* (``max_shift_overlap_s``, was 0.4 s): the VAD ends speech
  ~0.08 s late (30 ms padding and silero's release), so a true 0.3-0.35 s overlap at a turn end
  measured 0.41 s and became an interruption once the interrupted speaker's return no longer hid
  it. Barge-ins stop the interrupted speaker 0.5 s or more after the onset (0.58 s and more on the
  VAD's spans), so they stay interruptions.

Measured (precision / recall per axis; events match when their speakers agree and their anchors
are within 0.3 s). Dense corpus (:mod:`.synthetic.dense`, 10 dialogues, seed 0: 63 pauses, 95 turn
shifts, 42 backchannels, 37 interruptions): before the changes pause 1.00 / 1.00, turn 1.00 / 1.00,
backchannel 1.00 / 0.62, interruption 1.00 / 0.43 (seeds 1 and 2: backchannel recall 0.70 and 0.72,
interruption 0.42 and 0.42); after, 1.00 / 1.00 on every axis for the three seeds. Embedded default
corpus: before, turn 1.00 / 0.99 and interruption 1.00 / 0.98, the rest 1.00 / 1.00; after, the
same but turn 1.00 / 1.00 (tests/test_dense_detection.py, tests/test_detection_synthetic.py; pytest
-s prints them).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict, dataclass
from typing import Iterable, Union

from duplexgym.corpora.dialogue import SPEAKERS, Word, other_speaker
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from duplexgym.config import STRICT, Integer, Number

Span = tuple[float, float]


@pydantic_dataclass(config=STRICT)
class DetectionParams:
    """Thresholds of the event rules (module docstring), all in seconds except word counts."""

    min_pause_s: Number = Field(0.5, ge=0)
    max_pause_s: Number = Field(5.0, ge=0)
    max_turn_gap_s: Number = Field(3.0, ge=0)
    max_shift_overlap_s: Number = Field(0.5, ge=0)
    backchannel_max_s: Number = Field(1.0, ge=0)
    backchannel_max_words: Integer = Field(2, ge=0)
    backchannel_isolation_before_s: Number = Field(0.3, ge=0)
    backchannel_isolation_after_s: Number = Field(0.5, ge=0)
    backchannel_holder_gap_s: Number = Field(0.4, ge=0)
    backchannel_holder_resume_s: Number = Field(1.0, ge=0)
    backchannel_holder_after_s: Number = Field(0.3, ge=0)
    interruption_max_stop_s: Number = Field(2.0, ge=0)
    interruption_min_prior_s: Number = Field(1.0, ge=0)
    interruption_min_hold_s: Number = Field(0.5, ge=0)
    interruption_min_yield_s: Number = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_pause_s > self.max_pause_s:
            raise ValueError("min_pause_s must be <= max_pause_s")
        if self.max_shift_overlap_s > self.interruption_max_stop_s:
            raise ValueError("max_shift_overlap_s must be <= interruption_max_stop_s")
        return self


@dataclass(frozen=True)
class Pause:
    """``speaker`` pauses from ``start_s`` to ``end_s`` and then goes on; the other stays silent."""

    speaker: str
    start_s: float
    end_s: float
    type: str = "pause"

    @property
    def anchor_s(self) -> float:
        return self.start_s


@dataclass(frozen=True)
class TurnShift:
    """``from_speaker`` ends a turn at ``end_s``; ``to_speaker`` starts at ``onset_s`` (may be earlier)."""

    from_speaker: str
    to_speaker: str
    end_s: float
    onset_s: float
    type: str = "turn"

    @property
    def anchor_s(self) -> float:
        return self.end_s

    @property
    def gap_s(self) -> float:
        """Silence between the turns in seconds; negative for an overlap."""
        return self.onset_s - self.end_s


@dataclass(frozen=True)
class Backchannel:
    """Listener ``speaker`` says something short from ``start_s`` to ``end_s`` while ``holder`` talks."""

    speaker: str
    holder: str
    start_s: float
    end_s: float
    n_words: int | None = None
    type: str = "backchannel"

    @property
    def anchor_s(self) -> float:
        return self.start_s


@dataclass(frozen=True)
class Interruption:
    """``speaker`` barges in at ``onset_s`` on ``interrupted`` (turn begun at ``turn_start_s``),
    who stops at ``stop_s``; the interrupting turn ends at ``end_s``."""

    speaker: str
    interrupted: str
    onset_s: float
    stop_s: float
    end_s: float
    turn_start_s: float
    type: str = "interruption"

    @property
    def anchor_s(self) -> float:
        return self.onset_s


Event = Union[Pause, TurnShift, Backchannel, Interruption]
EVENT_TYPES = {"pause": Pause, "turn": TurnShift, "backchannel": Backchannel, "interruption": Interruption}


def event_to_dict(event: Event) -> dict:
    return asdict(event)


def event_from_dict(raw: dict) -> Event:
    raw = dict(raw)
    return EVENT_TYPES[raw.pop("type")](**raw)


def detect_events(
    spans: dict[str, list[Span]], words: Iterable[Word] | None = None, params: DetectionParams = DetectionParams()
) -> list[Event]:
    """All events of one dialogue, sorted by anchor time.

    ``spans``: ``{"A": [(start_s, end_s), ...], "B": [...]}``, speech spans per speaker.
    ``words``: the timed transcript or ``None``.
    """
    spans = {s: sorted((float(a), float(b)) for a, b in spans.get(s, ())) for s in SPEAKERS}
    word_mids = None
    if words is not None:
        word_mids = {s: [] for s in SPEAKERS}
        for w in words:
            word_mids[w.speaker].append((w.start_s + w.end_s) / 2)
        for s in SPEAKERS:
            word_mids[s].sort()

    events: list[Event] = []
    floor: dict[str, list[Span]] = {}
    for x in SPEAKERS:
        floor[x] = []
        for i, span in enumerate(spans[x]):
            n_words = _count(word_mids[x], span) if word_mids is not None else None
            if _is_backchannel(spans[x], i, spans[other_speaker(x)], n_words, params):
                events.append(Backchannel(x, other_speaker(x), span[0], span[1], n_words))
            else:
                floor[x].append(span)

    for x in SPEAKERS:
        events.extend(_pauses(x, floor[x], floor[other_speaker(x)], params))
    events.extend(_floor_changes(floor, params))
    return sorted(events, key=lambda e: (e.anchor_s, e.type))


def _count(sorted_mids: list[float], span: Span) -> int:
    return bisect_left(sorted_mids, span[1]) - bisect_left(sorted_mids, span[0])


def _is_backchannel(own: list[Span], i: int, other: list[Span], n_words: int | None, p: DetectionParams) -> bool:
    start, end = own[i]
    if end - start >= p.backchannel_max_s:
        return False
    if n_words is not None and n_words > p.backchannel_max_words:
        return False
    if i > 0 and own[i - 1][1] > start - p.backchannel_isolation_before_s:
        return False
    if i + 1 < len(own) and own[i + 1][0] < end + p.backchannel_isolation_after_s:
        return False
    held_before = any(a < start and b > start - p.backchannel_holder_gap_s for a, b in other)
    goes_on = any(a < end + p.backchannel_holder_resume_s and b >= end + p.backchannel_holder_after_s for a, b in other)
    return held_before and goes_on


def _overlaps(spans: list[Span], lo: float, hi: float) -> bool:
    return any(a < hi and b > lo for a, b in spans)


def _pauses(x: str, own: list[Span], other: list[Span], p: DetectionParams) -> list[Pause]:
    found = []
    for (_, end), (nxt, _) in zip(own, own[1:]):
        gap = nxt - end
        if p.min_pause_s <= gap <= p.max_pause_s and not _overlaps(other, end, nxt):
            found.append(Pause(x, end, nxt))
    return found


def _turn_start(own: list[Span], i: int, other: list[Span], p: DetectionParams) -> float:
    """Start of the turn that own[i] belongs to: chain back over pauses the other didn't fill."""
    while i > 0:
        gap_lo, gap_hi = own[i - 1][1], own[i][0]
        if gap_hi - gap_lo > p.max_pause_s or _overlaps(other, gap_lo, gap_hi):
            break
        i -= 1
    return own[i][0]


def _turn_end(own: list[Span], i: int, p: DetectionParams) -> float:
    """End of own[i] chained forward over gaps shorter than ``min_pause_s``."""
    while i + 1 < len(own) and own[i + 1][0] - own[i][1] < p.min_pause_s:
        i += 1
    return own[i][1]


def _floor_changes(floor: dict[str, list[Span]], p: DetectionParams) -> list[Event]:
    tagged = sorted((span, s) for s in SPEAKERS for span in floor[s])
    index = {s: {span: i for i, span in enumerate(floor[s])} for s in SPEAKERS}
    found: list[Event] = []
    holder = None  # (end, start, speaker) of the furthest-reaching floor span begun so far
    seen = 0
    for (y_start, y_end), y in tagged:
        while seen < len(tagged) and tagged[seen][0][0] < y_start:
            (a, b), s = tagged[seen]
            holder = max(holder, (b, a, s)) if holder else (b, a, s)
            seen += 1
        if holder is None or holder[2] == y:
            continue
        x_end, x_start, x = holder
        own_x = floor[x]
        ix = index[x][(x_start, x_end)]
        resumes = own_x[ix + 1][0] if ix + 1 < len(own_x) else float("inf")
        if x_end <= y_start:
            if y_start - x_end <= p.max_turn_gap_s:
                found.append(TurnShift(x, y, x_end, y_start))
            continue
        overlap = x_end - y_start
        if y_end <= x_end:
            continue  # X talks through Y's span and keeps the floor
        if overlap <= p.max_shift_overlap_s:
            found.append(TurnShift(x, y, x_end, y_start))
        elif overlap <= p.interruption_max_stop_s:
            turn_start = _turn_start(own_x, ix, floor[y], p)
            if y_start - turn_start < p.interruption_min_prior_s:
                found.append(TurnShift(x, y, x_end, y_start))  # X's turn had barely begun
                continue
            y_end_turn = _turn_end(floor[y], index[y][(y_start, y_end)], p)
            yields = resumes >= y_end or resumes - x_end >= p.interruption_min_yield_s
            if yields and y_end_turn - x_end >= p.interruption_min_hold_s:
                found.append(Interruption(y, x, y_start, x_end, y_end_turn, turn_start))
    return found
