"""Scores of live dialogues (``duplexgym/Conversation-v0``): pure functions of an episode record.

A live record holds the agent's output (as every record) and, in ``record.live``, the schedule of
what the simulated user said: one entry per utterance with ``kind`` (``turn`` | ``reprompt`` |
``backchannel``), ``why`` it started (``opening`` | ``answer`` | ``no_answer`` | ``barge_in`` |
``reprompt`` | ``backchannel``), ``start_s`` / ``end_s`` (episode seconds, what was actually said),
``cut`` (``end``: said to its end; ``yield``: the user gave up the floor; ``episode_end``),
``speech_s``, ``pauses_s``, ``words`` and ``human_backchannels_s`` (the listener's backchannels in
the original recording, replay source only). The agent's speech is read as the reward spec's
``activity`` says (the text stream, or silero VAD on its audio), exactly as for replay episodes.

The axis rewards, applied to each event of the dialogue (:func:`live_events`)
---------------------------------------------------------------------------
Each event becomes a small segment (a window of the dialogue) scored by the replay envs' own term
(:mod:`.pause`, :mod:`.turn`, :mod:`.backchannel`, :mod:`.interruption`, with the spec's
parameters and weights):

- **turn** (each user turn or re-prompt that ended, not a barge-in): event = its end; window from
  its start to the next user turn's start (or the dialogue's end). A cut-in while the user held
  the floor scores -1, as does no answer before the next turn.
- **pause** (each pause inside a user turn): window from 1 s before the pause (not before the turn)
  to ``resume_grace_s`` after the user resumes; the pause term's hold part only (the turn end is
  the turn event's business).
- **interruption** (each barge-in): onset = its start, end = its end; window from the onset to the
  next user turn's start. The agent should stop, then answer.
- **backchannel** (each user turn of ``backchannel_window_s`` or more): window = the turn; the human
  reference backchannels are the recording's (replay source). Without them (script, llm) the
  term can only penalise a takeover (-1) and otherwise gives 0.

The dialogue reward is the weighted sum over terms of each term's event values, summed (or averaged,
``reduce: mean``); ``reward_terms["events"]`` lists every event with the frame its window closes,
so a trainer can credit each where it happened.

Timing (:func:`timing_metrics`, per dialogue; the eval table's columns)
------------------------------------------------------------------------
``answered_share`` (user turns and re-prompts whose end an agent takeover followed before the next
user turn), ``latency_median_s`` / ``latency_p90_s`` (answer onset - turn end, >= 0),
``cut_ins_per_min`` (user turns the agent talked over: at least 1 s, Full-Duplex-Bench's
takeover duration, of agent speech inside the user's turn, for a barge-in counted after the
interruption term's ``stop_grace_s``; per minute of dialogue), ``yield_median_s`` (barge-in onset -> end of the agent utterance running then),
``overlap_share`` (time both speak / time anyone speaks), ``backchannels_per_min`` (agent
backchannels, Full-Duplex-Bench's rule, starting inside user turns, per minute of user turn
time), ``long_silences_per_min`` and ``long_silence_s`` (stretches of ``long_silence_s`` or more
in which nobody speaks, after the first speech).

Dense shaping (:func:`live_dense_rewards`, with the spec's ``dense.weight``): a frame in which the
agent speaks while the user holds the floor, or is silent in ``[on_time_s, on_time_s +
window_s)`` after the end of the user's last turn, costs ``weight / max_frames``; the reading per
frame is :func:`duplexgym.rewards.dense.speaking_frames`'. The env pays the same values online.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.activity import agent_speech
from duplexgym.rewards.fdb import (
    TAKEOVER_MIN_DURATION_S,
    AgentSpeech,
    backchannel_segments,
)
from duplexgym.rewards.record import EpisodeRecord
from duplexgym.rewards.scoring import plain_metrics
from duplexgym.rewards.spec import TERMS, RewardSpec
from duplexgym.rewards.terms import first_takeover_onset, utterances
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from duplexgym.config import STRICT, Number, choice
from duplexgym.constants import FRAME_S

#: The ``axis`` of a live record's segment.
LIVE_AXIS = "conversation"
#: Kinds of user utterance that hold the floor (backchannels do not).
FLOOR_KINDS = ("turn", "reprompt")
#: A pause event's window starts this long before the pause (not before its turn), s.
PAUSE_CONTEXT_S = 1.0


@pydantic_dataclass(config=STRICT)
class LiveScoring:
    """How a live dialogue is scored (seconds): ``long_silence_s`` (a mutual silence that counts
    as long), ``backchannel_window_s`` (user turns this long are backchannel windows), ``reduce``
    (``sum`` or ``mean`` of each term's event values), ``on_time_s`` / ``window_s`` (the dense
    shaping's response window after a user turn)."""

    long_silence_s: Number = Field(3.0, gt=0)
    backchannel_window_s: Number = Field(5.0, gt=0)
    reduce: choice("sum", "mean") = "sum"
    on_time_s: Number = Field(0.6, ge=0)
    window_s: Number = Field(1.0, gt=0)


@dataclass(frozen=True)
class UserUtterance:
    """One schedule entry, in episode seconds (module docstring)."""

    index: int
    kind: str
    why: str
    cut: str
    start_s: float
    end_s: float
    speech_s: tuple[tuple[float, float], ...]
    pauses_s: tuple[tuple[float, float], ...]
    human_backchannels_s: tuple[tuple[float, float], ...] | None
    text: str | None

    @property
    def floor(self) -> bool:
        return self.kind in FLOOR_KINDS


def user_utterances(live: dict) -> list[UserUtterance]:
    """The schedule of a record's ``live`` as :class:`UserUtterance` s, in time order."""
    out = []
    for i, e in enumerate(live.get("schedule") or ()):
        if e.get("end_s") is None:
            continue
        hb = e.get("human_backchannels_s")
        out.append(UserUtterance(i, e["kind"], e["why"], e.get("cut") or "end", float(e["start_s"]), float(e["end_s"]),
                                 tuple(tuple(x) for x in e.get("speech_s") or ()),
                                 tuple(tuple(x) for x in e.get("pauses_s") or ()),
                                 None if hb is None else tuple(tuple(x) for x in hb), e.get("text")))
    return sorted(out, key=lambda u: (u.start_s, u.index))


def user_speech(utts: list[UserUtterance]) -> list[tuple[float, float]]:
    """Every span of user speech (backchannels included), merged."""
    spans: list[list[float]] = []
    for a, b in sorted(s for u in utts for s in u.speech_s):
        if spans and a <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    return [(a, b) for a, b in spans]


# --- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveEvent:
    """One scored moment: ``axis``, the utterance it belongs to, its window ``[lo_s, hi_s)``
    (episode seconds) and the window as a :class:`Segment` (times relative to nothing: the window's
    own ``start_s`` is ``lo_s``)."""

    axis: str
    utterance: int
    lo_s: float
    hi_s: float
    segment: Segment

    @property
    def close_frame(self) -> int:
        """The frame in which the window closes (where its reward belongs in time)."""
        return max(0, int(math.ceil(self.hi_s / FRAME_S - 1e-9)) - 1)


def _window(axis: str, sid: str, i: int, lo: float, hi: float, **times) -> Segment:
    n = max(1, int(math.ceil((hi - lo) / FRAME_S - 1e-9)))
    return Segment(id=f"{sid}#{axis}{i}", axis=axis, dialogue=sid, user="user", reference="agent", start_s=lo,
                   end_s=lo + n * FRAME_S, n_frames=n, has_reference=False, **times)


def live_events(utts: list[UserUtterance], duration_s: float, spec: RewardSpec, scoring: LiveScoring = LiveScoring(),
                sid: str = "live") -> list[LiveEvent]:
    """The events of a dialogue (module docstring) for the axis terms in ``spec``, in time order."""
    floor = [u for u in utts if u.floor]
    events = []

    def next_onset(u):
        later = [v.start_s for v in floor if v.start_s > u.start_s + 1e-9]
        return min(later) if later else duration_s

    for u in floor:
        nxt = next_onset(u)
        if u.why == "barge_in":
            if "interruption" in spec.terms and u.cut != "episode_end" and nxt - u.start_s > FRAME_S:
                events.append(LiveEvent("interruption", u.index, u.start_s, nxt, _window(
                    "interruption", sid, len(events), u.start_s, nxt, event_s=u.start_s, interruption_end_s=u.end_s)))
        elif "turn" in spec.terms and u.cut != "episode_end" and nxt > u.end_s:
            events.append(LiveEvent("turn", u.index, u.start_s, nxt,
                                    _window("turn", sid, len(events), u.start_s, nxt, event_s=u.end_s)))
        if "pause" in spec.terms:
            grace = spec.terms["pause"].params.resume_grace_s
            for a, b in u.pauses_s:
                lo, hi = max(u.start_s, a - PAUSE_CONTEXT_S), min(duration_s, b + grace)
                events.append(LiveEvent("pause", u.index, lo, hi,
                                        _window("pause", sid, len(events), lo, hi, event_s=a, pause_end_s=b)))
        if "backchannel" in spec.terms and u.end_s - u.start_s >= scoring.backchannel_window_s:
            human = tuple(u.human_backchannels_s or ())
            events.append(LiveEvent("backchannel", u.index, u.start_s, u.end_s, _window(
                "backchannel", sid, len(events), u.start_s, u.end_s,
                event_s=human[0][0] if human else u.start_s, backchannels_s=human)))
    return sorted(events, key=lambda e: (e.hi_s, e.lo_s, e.axis))


def shifted(speech: AgentSpeech, lo_s: float, hi_s: float) -> AgentSpeech:
    """``speech`` inside ``[lo_s, hi_s)``, moved so that ``lo_s`` is 0 (a window's own time)."""
    spans = tuple((max(a, lo_s) - lo_s, min(b, hi_s) - lo_s) for a, b in speech.spans_s if b > lo_s and a < hi_s)
    words = None if speech.words is None else tuple(
        (max(a, lo_s) - lo_s, max(min(b, hi_s), max(a, lo_s)) - lo_s, w) for a, b, w in speech.words if lo_s <= a < hi_s)
    return AgentSpeech(spans_s=spans, words=words)


# --- timing ----------------------------------------------------------------------------------------


def _answer(speech: AgentSpeech, u: UserUtterance, nxt: float, early_s: float, duration_s: float):
    """The answer onset to floor turn ``u`` (before ``nxt``), or None."""
    return first_takeover_onset(speech, u.end_s - early_s, nxt, duration_s)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    total = 0.0
    for x0, x1 in a:
        for y0, y1 in b:
            total += max(0.0, min(x1, y1) - max(x0, y0))
    return total


def _union(spans) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def talked_over(speech: AgentSpeech, u: UserUtterance, stop_grace_s: float = 1.0) -> float:
    """Seconds of agent speech inside user floor turn ``u`` (up to ``early_s`` before its end is
    not counted apart: the whole turn); for a barge-in only after ``stop_grace_s`` (the agent is
    given that long to stop, as by the interruption term)."""
    lo = u.start_s + (stop_grace_s if u.why == "barge_in" else 0.0)
    return float(sum(max(0.0, min(b, u.end_s) - max(a, lo)) for a, b in speech.spans_s))


def timing_metrics(utts: list[UserUtterance], speech: AgentSpeech, duration_s: float,
                   scoring: LiveScoring = LiveScoring(), early_s: float = 0.4, stop_grace_s: float = 1.0) -> dict:
    """One dialogue's timing metrics (module docstring), plus the counts they come from:
    ``user_turns``, ``answered``, ``latencies_s``, ``cut_ins``, ``yields_s``, ``overlap_s``,
    ``speech_s`` (time anyone speaks), ``agent_backchannels``, ``user_turn_s``, ``long_silences``,
    ``duration_s``. Shares and medians are None when there is nothing to take them over."""
    floor = [u for u in utts if u.floor]
    turns = [u for u in floor if u.cut != "episode_end"]
    answered, latencies = 0, []
    for u in turns:
        later = [v.start_s for v in floor if v.start_s > u.start_s + 1e-9]
        onset = _answer(speech, u, min(later) if later else duration_s, early_s, duration_s)
        if onset is not None:
            answered += 1
            latencies.append(max(0.0, onset - u.end_s))
    agent_utts = utterances(speech)
    cut_ins = sum(1 for u in floor if talked_over(speech, u, stop_grace_s) >= TAKEOVER_MIN_DURATION_S - 1e-9)
    yields = []
    for u in floor:
        if u.why != "barge_in":
            continue
        running = [max(b for _, b in utt.spans_s) for utt in agent_utts
                   if utt.spans_s[0][0] <= u.start_s < max(b for _, b in utt.spans_s)]
        if running:
            yields.append(max(running) - u.start_s)
    user = user_speech(utts)
    agent = list(speech.spans_s)
    overlap = _overlap(user, agent)
    anyone = _union(user + agent)
    turn_s = sum(u.end_s - u.start_s for u in floor)
    bcs = sum(1 for a, _, kind in backchannel_segments(speech)
              if kind == "backchannel" and any(u.start_s <= a < u.end_s for u in floor))
    silences = []
    spans = sorted(user + agent)
    if spans:
        end = spans[0][1]
        for a, b in spans[1:]:
            if a - end >= scoring.long_silence_s:
                silences.append(a - end)
            end = max(end, b)
        if duration_s - end >= scoring.long_silence_s:
            silences.append(duration_s - end)
    minutes = duration_s / 60.0

    def q(values, p):
        return float(np.percentile(values, p)) if values else None

    return {
        "answered_share": answered / len(turns) if turns else None,
        "latency_median_s": q(latencies, 50), "latency_p90_s": q(latencies, 90),
        "cut_ins_per_min": cut_ins / minutes if minutes > 0 else None,
        "yield_median_s": q(yields, 50),
        "overlap_share": overlap / anyone if anyone > 0 else None,
        "backchannels_per_min": bcs / (turn_s / 60.0) if turn_s > 0 else None,
        "long_silences_per_min": len(silences) / minutes if minutes > 0 else None,
        "long_silence_s": float(sum(silences)),
        "user_turns": len(turns), "answered": answered, "latencies_s": [round(x, 4) for x in latencies],
        "cut_ins": cut_ins, "yields_s": [round(x, 4) for x in yields], "overlap_s": round(overlap, 4),
        "speech_s": round(anyone, 4), "agent_backchannels": bcs, "user_turn_s": round(turn_s, 4),
        "long_silences": len(silences), "duration_s": round(duration_s, 4),
    }


# --- the dialogue's reward -------------------------------------------------------------------------


def score_live(record: EpisodeRecord, spec: RewardSpec, scoring: LiveScoring = LiveScoring(),
               dense_total: float = 0.0, stored: dict | None = None, judge=None) -> dict:
    """The ``reward_terms`` of a live record::

        {"axis": "conversation", "reward": x, "dense": d,
         "terms": {axis: {"value", "weight", "events", "metrics": {"mean", "min", "max"}}, "judge": {...}},
         "failed": {"turn#3": "...", "judge": "..."},   # events / terms that raised: never scored
         "events": [{"axis", "utterance", "frame", "value", "metrics"}],
         "timing": timing_metrics(...), "agent_speech_s": [[a, b], ...], "notes": [...]}

    ``stored``: ``{"judge": {"value", "metrics"}}`` to take as it is (replays); ``judge``: a callable
    ``(record, speech) -> {"value", "metrics"}`` for the ``judge`` term (None: no judge), weighted by
    its own ``weight`` attribute."""
    live = record.live or {}
    duration = record.n_frames * FRAME_S
    result = {"axis": LIVE_AXIS, "reward": 0.0, "dense": float(dense_total), "terms": {}, "failed": {},
              "events": [], "timing": {}, "notes": []}
    if live.get("failed"):
        result["failed"]["user"] = str(live["failed"])
        return result
    try:
        speech = agent_speech(record, spec.activity)
    except Exception as exc:  # noqa: BLE001 - reported, never scored
        result["failed"]["activity"] = f"reading agent speech: {type(exc).__name__}: {exc}"
        return result
    result["agent_speech_s"] = [[round(a, 4), round(b, 4)] for a, b in speech.spans_s]
    utts = user_utterances(live)
    early = spec.terms["turn"].params.early_s if "turn" in spec.terms else 0.4
    grace = spec.terms["interruption"].params.stop_grace_s if "interruption" in spec.terms else 1.0
    result["timing"] = timing_metrics(utts, speech, duration, scoring, early, grace)
    if "quality" in spec.terms:
        result["notes"].append("the quality term is not applied to live dialogues (pass judge= for the "
                               "dialogue judge)")
    values: dict[str, list[float]] = {}
    for k, ev in enumerate(live_events(utts, duration, spec, scoring, record.segment.id)):
        term = spec.terms[ev.axis]
        try:
            scored = TERMS[ev.axis].score(shifted(speech, ev.lo_s, ev.hi_s), ev.segment, term.params)
            value = float(scored.value)
            if not math.isfinite(value):
                raise ValueError(f"term returned {value}")
        except Exception as exc:  # noqa: BLE001 - reported, never silently scored
            result["failed"][f"{ev.axis}#{k}"] = f"{type(exc).__name__}: {exc}"
            continue
        values.setdefault(ev.axis, []).append(value)
        result["events"].append({"axis": ev.axis, "utterance": ev.utterance, "frame": ev.close_frame,
                                 "window_s": [round(ev.lo_s, 4), round(ev.hi_s, 4)], "value": value,
                                 "metrics": plain_metrics(scored.metrics)})
    for axis, vals in values.items():
        weight = spec.terms[axis].weight
        total = float(sum(vals)) if scoring.reduce == "sum" else float(np.mean(vals))
        result["terms"][axis] = {"value": total, "weight": weight, "events": len(vals),
                                 "metrics": {"mean": float(np.mean(vals)), "min": float(min(vals)),
                                             "max": float(max(vals))}}
        result["reward"] += weight * total
    if stored is not None and "judge" in stored:
        entry = stored["judge"]
        if "failed" in entry:
            result["failed"]["judge"] = str(entry["failed"])
        else:
            result["terms"]["judge"] = dict(entry)
            result["reward"] += float(entry["weight"]) * float(entry["value"])
    elif judge is not None:
        try:
            rated = judge(record, speech)
            entry = {"value": float(rated["value"]), "weight": float(judge.weight), "events": 1,
                     "metrics": plain_metrics(rated["metrics"])}
            result["terms"]["judge"] = entry
            result["reward"] += entry["weight"] * entry["value"]
        except Exception as exc:  # noqa: BLE001 - a judge that fails is reported, never scored
            result["failed"]["judge"] = f"{type(exc).__name__}: {exc}"
    return result


# --- dense shaping ---------------------------------------------------------------------------------


def floor_frames(live: dict, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``(holding, last_end)`` over ``n_frames``: bool, the user holds the floor in frame ``t`` (a
    turn or re-prompt is playing); int, the end frame of the user's last floor utterance that ended
    at or before ``t`` (-1: none yet)."""
    holding = np.zeros(n_frames, dtype=bool)
    last_end = np.full(n_frames, -1, dtype=np.int64)
    ends = []
    for e in live.get("schedule") or ():
        if e["kind"] in FLOOR_KINDS and e.get("end_frame") is not None:
            holding[e["start_frame"]:e["end_frame"]] = True
            ends.append(int(e["end_frame"]))
    current = -1
    ends = sorted(ends)
    j = 0
    for t in range(n_frames):
        while j < len(ends) and ends[j] <= t:
            current = ends[j]
            j += 1
        last_end[t] = current
    return holding, last_end


def dense_unit(weight: float, max_frames: int) -> float:
    """The cost of one mismatched frame."""
    return -float(weight) / max(1, int(max_frames))


def dense_window(scoring: LiveScoring) -> tuple[int, int]:
    """The response window after a user turn, in frames ``[lo, hi)`` from its end."""
    lo = int(round(scoring.on_time_s / FRAME_S))
    return lo, lo + max(1, int(round(scoring.window_s / FRAME_S)))


def live_dense_rewards(live: dict, speaking: np.ndarray, weight: float, max_frames: int,
                       scoring: LiveScoring = LiveScoring()) -> np.ndarray:
    """float64 ``[F]`` shaping rewards (module docstring) from the schedule and the per-frame
    speaking reading ``speaking[F]``."""
    n = len(speaking)
    out = np.zeros(n)
    if weight == 0.0:
        return out
    unit = dense_unit(weight, max_frames)
    holding, last_end = floor_frames(live, n)
    lo, hi = dense_window(scoring)
    since = np.arange(n) - last_end
    want = (last_end >= 0) & (since >= lo) & (since < hi) & ~holding
    out[holding & speaking] = unit
    out[want & ~speaking] = unit
    return out


# --- the judge's transcript ------------------------------------------------------------------------


def judge_transcript(record: EpisodeRecord, speech: AgentSpeech) -> list[dict]:
    """The dialogue as the judge reads it: ``[{"speaker", "start_s", "end_s", "text", "note"?}]``
    in time order. The user's turns as said (words up to a cut), the agent's utterances with its
    words (``record.agent_words``) when known; notes mark barge-ins, yields and overlaps."""
    utts = [u for u in user_utterances(record.live or {}) if u.floor]
    schedule = (record.live or {}).get("schedule") or []
    turns = []
    for u in utts:
        e = schedule[u.index]
        text = u.text
        if e.get("words") is not None and u.cut != "end":
            text = " ".join(w[2] for w in e["words"])
        entry = {"speaker": "USER", "start_s": round(u.start_s, 2), "end_s": round(u.end_s, 2),
                 "text": text or "[speech, words unknown]"}
        notes = []
        if u.why == "barge_in":
            notes.append("the user barges in while the assistant speaks")
        if u.why == "reprompt":
            notes.append("the user re-prompts a silent assistant")
        if u.cut == "yield":
            notes.append("the user stops: the assistant talked over them")
        if notes:
            entry["note"] = "; ".join(notes)
        turns.append(entry)
    words = record.agent_words
    for utt in utterances(speech):
        a, b = utt.spans_s[0][0], max(y for _, y in utt.spans_s)
        text = None
        if words is not None:
            text = " ".join(w for s, _, w in words if a - FRAME_S <= s < b) or None
        entry = {"speaker": "ASSISTANT", "start_s": round(a, 2), "end_s": round(b, 2),
                 "text": text or "[speech, words unknown]"}
        if any(u.start_s < b and a < u.end_s for u in utts):
            entry["note"] = "overlaps the user's turn"
        turns.append(entry)
    return sorted(turns, key=lambda x: (x["start_s"], x["speaker"]))
