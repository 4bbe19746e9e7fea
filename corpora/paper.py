"""The seed paper's segment rules (PAPER.md, "Segment extraction"): ``corpus build --rules paper``.

Pure functions of each speaker's speech spans, like :mod:`.events` (our rules, ``--rules
duplexgym``, the default). Every threshold is a field of :class:`PaperParams`.

**Utterances.** The VAD spans of one speaker (silero, :mod:`.vad`) are its inter-pausal units
(IPUs). Consecutive IPUs of one speaker form one utterance unless the silence between them is
longer than ``pause_max_s`` (1.0 s); a silence of at most 1.0 s inside an utterance is a *pause*.
All utterances of both speakers, sorted by start, are *consecutive* when no other utterance starts
between them (read literally: a backchannel of Y inside X's utterance is an utterance too, so X's
utterance and Y's later answer are then not consecutive). X is the user channel, Y the other (the
model's, whose human track is the reference).

**Criteria.**

- **pause**: an utterance of X of at least ``pause_min_utterance_s`` (4.0 s) with at least one
  internal pause and no speech (no IPU) of Y overlapping it.
- **turn**: consecutive utterances X then Y, both at least ``turn_min_utterance_s`` (5.0 s), with
  gap = Y start - X end at most ``turn_max_gap_s`` (0.4 s; negative for an overlap). Y must end
  after X (an utterance of Y inside X's is not "X then Y").
- **backchannel**: an utterance of X of at least ``backchannel_min_utterance_s`` (5.0 s) during
  which Y says only utterances of at most ``backchannel_max_s`` (1.0 s): every utterance of Y
  overlapping it is that short, and at least one starts inside it. Those starting inside it are
  the ground-truth backchannels (the segment's ``backchannels_s``).
- **interruption**: four consecutive utterances X, Y, X, Y (U_k .. U_k+3), all at least
  ``interruption_min_utterance_s`` (3.0 s): Y answers X, X starts again (U_k+2, the barge-in)
  before Y's utterance U_k+1 ends, then Y answers (U_k+3). Nothing else is required (in
  particular, nothing about when Y stops: the paper does not say).

Comparisons allow :data:`EPS` (1e-6 s) of float rounding: a 4.0 s utterance meets 4.0 s, a gap of
exactly 0.4 s is a turn, a silence of exactly 1.0 s is a pause inside an utterance, a 1.0 s
utterance is a backchannel; 3.99 s, 0.41 s and 1.01 s are not.

**Segment windows** (dialogue times; ``start`` snapped down to the 10 ms grid and the length to
whole 80 ms frames, as in :mod:`.segments`; segments of less than ``min_segment_s`` dropped):

=============  =====  =========  ============================================  ==============================
axis           user   reference  window                                        anchors
=============  =====  =========  ============================================  ==============================
pause          X      Y          X's utterance: its start (at most             ``event_s`` first pause start,
                                 ``before_max_s`` before the first pause) ..   ``pause_end_s`` its end
                                 its end (at most ``max_segment_s`` long)
turn           X      Y          X's utterance start (at most ``before_max_s`` ``event_s`` X's end,
                                 before its end) .. Y's utterance end (at      ``response_s`` Y's start
                                 most ``after_max_s`` after X's end)
backchannel    X      Y          X's utterance: its start (at most             ``backchannels_s`` Y's short
                                 ``before_max_s`` before the first             utterances in the window,
                                 backchannel) .. its end (at most              ``event_s`` the first onset
                                 ``max_segment_s`` long)
interruption   X      Y          U_k+1 start (at most                          ``event_s`` U_k+2 start,
                                 ``interruption_prefix_max_s`` before the      ``interruption_end_s`` its end,
                                 barge-in) .. U_k+3 end (at most               ``reference_stop_s`` U_k+1 end,
                                 ``after_max_s`` after U_k+2 ends)             ``agent_prefix_s`` [start,
                                                                               ``event_s``]
=============  =====  =========  ============================================  ==============================

Why these windows: the paper's rewards are computed on the generated audio of the whole segment.
A pause or backchannel segment ends with X's utterance, so any speech over 1 s in it is a
takeover while X holds the floor (pause reward: -1), and the ground-truth backchannels are all of
Y's speech in it (backchannel F1 within +-1 s). A turn segment runs on after X's end into Y's
answer, so the delay d to the first generated utterance over 1 s is measurable, and the rest of
the segment after X's end (up to ``after_max_s``) is d when the model never answers. An
interruption segment starts inside Y's answer U_k+1: the reference track up to the barge-in is the
agent's forced prefix (``agent_prefix_s``, as for our interruption segments), so the model is
speaking when X barges in, and d runs from the barge-in's end (``interruption_end_s``) to the
model's next speech, within U_k+3's time. The fields are those of our segments, so every env and
reward works on both rule sets; the context before a segment (U_k for an interruption) is stored
separately (``corpus build --context-s``, :meth:`duplexgym.envs.corpus.ReplayCorpus.context`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Union

from duplexgym.corpora.dialogue import SPEAKERS, Word, other_speaker
from duplexgym.corpora.manifest import Segment
from duplexgym.corpora.segments import _snap_start, _window, _with_spans, _with_words
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from duplexgym.config import STRICT, Number

Span = tuple[float, float]
#: Float slack of every comparison with a threshold, in seconds.
EPS = 1e-6


@pydantic_dataclass(config=STRICT)
class PaperParams:
    """The paper's criteria (tau_min per axis, the 1.0 s pause, the 0.4 s turn gap, the 1.0 s
    backchannel) and the segment windows, all in seconds (module docstring)."""

    pause_max_s: Number = Field(1.0, ge=0)
    pause_min_utterance_s: Number = Field(4.0, ge=0)
    turn_min_utterance_s: Number = Field(5.0, ge=0)
    backchannel_min_utterance_s: Number = Field(5.0, ge=0)
    interruption_min_utterance_s: Number = Field(3.0, ge=0)
    turn_max_gap_s: Number = Field(0.4)
    backchannel_max_s: Number = Field(1.0, ge=0)
    before_max_s: Number = Field(20.0, ge=0)
    after_max_s: Number = Field(8.0, ge=0)
    interruption_prefix_max_s: Number = Field(8.0, ge=0)
    max_segment_s: Number = Field(30.0, gt=0)
    min_segment_s: Number = Field(2.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_segment_s > self.max_segment_s:
            raise ValueError("min_segment_s must be <= max_segment_s")
        return self


@dataclass(frozen=True)
class Utterance:
    """IPUs of one speaker joined across silences of at most ``pause_max_s``."""

    speaker: str
    start_s: float
    end_s: float
    ipus: tuple[Span, ...]

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def pauses_s(self) -> tuple[Span, ...]:
        """The silences between its IPUs."""
        return tuple((a[1], b[0]) for a, b in zip(self.ipus, self.ipus[1:]))


@dataclass(frozen=True)
class PaperPause:
    """``speaker``'s utterance with internal pauses; ``start_s``/``end_s``: its first pause."""

    speaker: str
    start_s: float
    end_s: float
    utterance_start_s: float
    utterance_end_s: float
    pauses_s: tuple[Span, ...]
    type: str = "pause"

    @property
    def anchor_s(self) -> float:
        return self.start_s


@dataclass(frozen=True)
class PaperTurn:
    """``from_speaker``'s utterance (``turn_start_s``..``end_s``), then ``to_speaker``'s
    (``onset_s``..``response_end_s``)."""

    from_speaker: str
    to_speaker: str
    end_s: float
    onset_s: float
    turn_start_s: float
    response_end_s: float
    type: str = "turn"

    @property
    def anchor_s(self) -> float:
        return self.end_s

    @property
    def gap_s(self) -> float:
        return self.onset_s - self.end_s


@dataclass(frozen=True)
class PaperBackchannel:
    """Listener ``speaker``'s short utterances ``backchannels_s`` inside ``holder``'s utterance;
    ``start_s``/``end_s``: the first one."""

    speaker: str
    holder: str
    start_s: float
    end_s: float
    utterance_start_s: float
    utterance_end_s: float
    backchannels_s: tuple[Span, ...]
    type: str = "backchannel"

    @property
    def anchor_s(self) -> float:
        return self.start_s


@dataclass(frozen=True)
class PaperInterruption:
    """X = ``speaker`` (U_k from ``context_start_s``; U_k+2 ``onset_s``..``end_s``, the barge-in),
    Y = ``interrupted`` (U_k+1 ``turn_start_s``..``stop_s``; U_k+3 ``response_s``..``response_end_s``)."""

    speaker: str
    interrupted: str
    onset_s: float
    stop_s: float
    end_s: float
    turn_start_s: float
    context_start_s: float
    response_s: float
    response_end_s: float
    type: str = "interruption"

    @property
    def anchor_s(self) -> float:
        return self.onset_s


PaperEvent = Union[PaperPause, PaperTurn, PaperBackchannel, PaperInterruption]
PAPER_EVENT_TYPES = {"pause": PaperPause, "turn": PaperTurn, "backchannel": PaperBackchannel,
                     "interruption": PaperInterruption}


def paper_event_from_dict(raw: dict) -> PaperEvent:
    raw = dict(raw)
    for key in ("pauses_s", "backchannels_s"):
        if key in raw:
            raw[key] = tuple(tuple(x) for x in raw[key])
    return PAPER_EVENT_TYPES[raw.pop("type")](**raw)


def utterances(ipus: list[Span], speaker: str, p: PaperParams = PaperParams()) -> list[Utterance]:
    """One speaker's utterances from its IPUs (sorted; overlapping IPUs are joined)."""
    groups: list[list[Span]] = []
    for a, b in sorted((float(a), float(b)) for a, b in ipus):
        if groups and a - groups[-1][-1][1] <= p.pause_max_s + EPS:
            last = groups[-1][-1]
            if a <= last[1]:
                groups[-1][-1] = (last[0], max(last[1], b))
            else:
                groups[-1].append((a, b))
        else:
            groups.append([(a, b)])
    return [Utterance(speaker, g[0][0], g[-1][1], tuple(g)) for g in groups]


def detect_paper_events(spans: dict[str, list[Span]], p: PaperParams = PaperParams()) -> list[PaperEvent]:
    """All events of one dialogue under the paper's criteria, sorted by anchor time.

    ``spans``: ``{"A": [(start_s, end_s), ...], "B": [...]}``, the VAD spans (IPUs) per speaker.
    """
    utts = {s: utterances(spans.get(s, ()), s, p) for s in SPEAKERS}
    ipus = {s: [i for u in utts[s] for i in u.ipus] for s in SPEAKERS}
    timeline = sorted((u for s in SPEAKERS for u in utts[s]), key=lambda u: (u.start_s, u.end_s, u.speaker))
    events: list[PaperEvent] = []
    for u in timeline:
        y = other_speaker(u.speaker)
        if u.duration_s >= p.pause_min_utterance_s - EPS and len(u.ipus) > 1 and not any(
                a < u.end_s and b > u.start_s for a, b in ipus[y]):
            first = u.pauses_s[0]
            events.append(PaperPause(u.speaker, first[0], first[1], u.start_s, u.end_s, u.pauses_s))
        if u.duration_s >= p.backchannel_min_utterance_s - EPS:
            during = [v for v in utts[y] if v.start_s < u.end_s and v.end_s > u.start_s]
            inside = [v for v in during if v.start_s >= u.start_s]
            if inside and all(v.duration_s <= p.backchannel_max_s + EPS for v in during):
                events.append(PaperBackchannel(y, u.speaker, inside[0].start_s, inside[0].end_s, u.start_s, u.end_s,
                                               tuple((v.start_s, v.end_s) for v in inside)))
    for x, yu in zip(timeline, timeline[1:]):
        if (x.speaker != yu.speaker and min(x.duration_s, yu.duration_s) >= p.turn_min_utterance_s - EPS
                and yu.start_s - x.end_s <= p.turn_max_gap_s + EPS and yu.end_s > x.end_s):
            events.append(PaperTurn(x.speaker, yu.speaker, x.end_s, yu.start_s, x.start_s, yu.end_s))
    for uk, uk1, uk2, uk3 in zip(timeline, timeline[1:], timeline[2:], timeline[3:]):
        xs, ys = uk.speaker, uk1.speaker
        if xs == ys or uk2.speaker != xs or uk3.speaker != ys:
            continue
        if min(u.duration_s for u in (uk, uk1, uk2, uk3)) < p.interruption_min_utterance_s - EPS:
            continue
        if uk2.start_s < uk1.end_s:
            events.append(PaperInterruption(xs, ys, uk2.start_s, uk1.end_s, uk2.end_s, uk1.start_s, uk.start_s,
                                            uk3.start_s, uk3.end_s))
    return sorted(events, key=lambda e: (e.anchor_s, e.type, e.speaker if hasattr(e, "speaker") else e.from_speaker))


def cut_paper_segments(
    dialogue_id: str,
    duration_s: float,
    events: list[PaperEvent],
    words: tuple[Word, ...] | None,
    params: PaperParams = PaperParams(),
    spans: dict[str, list[Span]] | None = None,
) -> list[Segment]:
    """Every candidate segment of one dialogue under the paper's rules (windows: module docstring)."""
    p = params
    segments: list[Segment] = []
    for e in events:
        seg = None
        if isinstance(e, PaperPause):
            start = max(e.utterance_start_s, e.start_s - p.before_max_s)
            seg = _window(dialogue_id, "pause", e.speaker, start, e.utterance_end_s, e.start_s, duration_s, p,
                          pause_end_s=e.end_s)
        elif isinstance(e, PaperTurn):
            start = max(e.turn_start_s, e.end_s - p.before_max_s)
            end = min(e.response_end_s, e.end_s + p.after_max_s)
            seg = _window(dialogue_id, "turn", e.from_speaker, start, end, e.end_s, duration_s, p,
                          response_s=e.onset_s)
        elif isinstance(e, PaperBackchannel):
            start = max(e.utterance_start_s, e.start_s - p.before_max_s)
            seg = _window(dialogue_id, "backchannel", e.holder, start, e.utterance_end_s, e.start_s, duration_s, p)
            if seg is not None:
                bcs = tuple((a, min(b, seg.end_s)) for a, b in e.backchannels_s if seg.start_s <= a < seg.end_s)
                seg = Segment(**{**seg.__dict__, "backchannels_s": bcs})
        elif isinstance(e, PaperInterruption):
            start = _snap_start(max(e.turn_start_s, e.onset_s - p.interruption_prefix_max_s))
            end = min(e.response_end_s, e.end_s + p.after_max_s)
            seg = _window(dialogue_id, "interruption", e.speaker, start, end, e.onset_s, duration_s, p,
                          interruption_end_s=e.end_s, agent_prefix_s=(start, e.onset_s), reference_stop_s=e.stop_s)
        if seg is not None:
            segments.append(seg)
    segments = [_with_spans(_with_words(s, words), spans) for s in segments]
    return sorted(segments, key=lambda s: (s.event_s, s.axis, s.user))


def paper_event_to_dict(event: PaperEvent) -> dict:
    return asdict(event)
