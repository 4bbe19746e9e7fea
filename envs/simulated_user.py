"""The simulated user of ``Conversation-v0``: a frame-by-frame turn-taker that reacts to the agent.

It hears the agent through one boolean per 80 ms frame, *is the agent speaking*, read online from
the agent's own output by the env (Moshi's text stream in tokens mode; streaming silero VAD on its
audio in waveform mode, :class:`StreamingSpeech`), and decides, frame by frame, what it says next:
its lines come from a :mod:`~duplexgym.envs.user_lines` source, the timing is its own. Every random
draw comes from its own seeded stream (:data:`STREAMS`), so a seed fixes all of them given the
agent's actions, and a change in one kind of decision never shifts the draws of another.

The rules (parameters in :class:`UserParams`; "the floor" = one of the user's turns is playing)
------------------------------------------------------------------------------------------------
- **Opening.** The user speaks first after ``opening_s`` of agent silence; if the agent opens (a
  greeting of ``answer_min_s`` or more), the user waits for it to end, as after any answer.
- **After a turn the user waits.** Agent speech of at least ``answer_min_s`` in total since the
  user's turn ended is an answer (shorter is a backchannel). When an answer's speech stops, the
  user starts its next turn after a gap drawn from a log-normal human gap distribution
  (``gap_median_s``, ``gap_sigma``, at most ``gap_max_s``), provided the agent stays silent for
  the whole gap (if it goes on, the gap is drawn again at its next stop). The user has to hear
  silence before it can react to it, so a gap under one frame (80 ms) takes one frame.
- **Silence.** If the agent says nothing (no answer) for ``reprompt_s`` after the user's turn, the
  user re-prompts with probability ``reprompt_p`` (at most ``max_reprompts`` times per turn: the
  source's re-prompt line, or the last turn again in ``replay``), else it goes on with its next turn.
- **Cut-ins.** If the agent starts speaking while the user holds the floor and keeps at it for
  ``cut_in_s`` (shorter overlaps are the agent's backchannels), the user yields with probability
  ``yield_p``: it stops after a reaction time drawn uniformly from ``yield_reaction_s`` (the rest of
  that turn is dropped, as a speaker who gives up the floor does); otherwise it talks on. One
  decision per agent utterance; speech already running when the user's turn began (a barge-in) is
  no cut-in.
- **Barge-ins.** At every ``barge_in_s`` of one running agent utterance (pauses under
  :data:`AGENT_PAUSE_S` do not end it; counted from its start, or from the end of the user's last
  turn if the agent talked through it), the user barges in with probability ``barge_in_p``: it
  starts its next turn at once, over the agent.
- **Backchannels.** During agent utterances longer than ``backchannel_after_s`` (counted the same
  way) the user says the
  source's backchannels ("yeah", "okay") at ``backchannel_per_min`` per minute of such speech:
  exponential intervals, never closer than ``backchannel_min_gap_s``, only while the agent speaks.
- **It never talks over itself.** One utterance plays at a time: a turn that falls due while a
  backchannel plays waits for it to end, and a re-prompt follows only a finished turn.
- **End.** The dialogue ends when the user would start a turn past ``max_turns`` or the source has
  none left (or at the env's ``max_s``).

The defaults come from published conversation statistics:
Stivers et al. (2009, PNAS 106:10587) found response offsets in ten languages clustering around a
mode of 0-200 ms (English mean ~236 ms); Heldner & Edlund (2010, J. Phonetics 38:555) show
between-speaker gaps spread widely around a few hundred ms, with overlaps a large minority of
transitions; Levinson & Torreira (2015, Front. Psychol. 6:731) summarise the ~200 ms modal gap.
A reactive user cannot start before the agent's end (it cannot predict it), so only gaps are
drawn: median ``gap_median_s`` = 0.25 s, ``gap_sigma`` = 0.5 (10th-90th percentile ~0.13-0.47 s).
Jefferson (1989, "a standard maximum silence of approximately one second") motivates re-prompting
after a silence; ``reprompt_s`` = 3 s leaves a model more room than a person would.
Schegloff (2000, Lang. Soc. 29:1) reports that overlaps are mostly resolved within a beat or two
(a syllable or so), hence ``cut_in_s`` = 0.6 s and ``yield_reaction_s`` = 0.2-0.5 s; who drops
out is not fixed (``yield_p`` = 0.5). Ward & Tsukahara (2000, J. Pragmatics 32:1177) describe
where listeners place backchannels (after regions of low pitch) and how much the rates vary
between speakers and languages; ``backchannel_per_min`` = 6 (one per ~10 s of the agent's
speech) is a moderate English listener: set it from your corpus. ``answer_min_s`` = 1 s is
Full-Duplex-Bench's takeover duration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from duplexgym.envs.user_lines import DialogueLines, Utterance
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from duplexgym.config import STRICT, Integer, Number
from duplexgym.constants import FRAME_S

#: Agent silences shorter than this do not end an agent utterance (s; rewards.terms.UTTERANCE_GAP_S).
AGENT_PAUSE_S = 0.5
#: The user's random streams, in this order (``default_rng([seed, index])``); the last two are drawn
#: by the env for its source (scripted pause lengths; the voice and backchannel choices).
STREAMS = ("gap", "yield", "barge_in", "reprompt", "backchannel", "pause", "source")

# What the user says (``kind``), why it started (``why``) and how it ended (``cut``).
TURN, REPROMPT, BACKCHANNEL = "turn", "reprompt", "backchannel"
OPENING, ANSWER, NO_ANSWER, BARGE_IN = "opening", "answer", "no_answer", "barge_in"
FLOOR_KINDS = (TURN, REPROMPT)
ENDED, YIELDED, EPISODE_END = "end", "yield", "episode_end"
#: ``_floor_free`` while the user holds the floor.
_BUSY = 1 << 60


@pydantic_dataclass(config=STRICT)
class UserParams:
    """The simulated user's timing; seconds, except probabilities and counts. Defaults and their
    sources: module docstring.

    ``opening_s``: agent silence before the user's first turn. ``gap_median_s``, ``gap_sigma``,
    ``gap_max_s``: the log-normal gap after an answer (median; shape, 0 = always the median; cap).
    ``answer_min_s``: agent speech since the user's turn that counts as an answer.
    ``reprompt_s``: silence after the user's turn before it re-prompts or goes on;
    ``reprompt_p``: the chance it re-prompts; ``max_reprompts``: per turn.
    ``cut_in_s``: agent speech over the user's turn that the user treats as a cut-in;
    ``yield_p``: the chance it then yields; ``yield_reaction_s``: ``(lo, hi)`` of its reaction time.
    ``barge_in_s``: agent utterance length at each multiple of which the user may barge in;
    ``barge_in_p``: the chance it does, each time.
    ``backchannel_per_min``: backchannels per minute of long agent utterances (0: none);
    ``backchannel_after_s``: agent speech before the first; ``backchannel_min_gap_s``: their
    least spacing (start to start). ``pause_s``: ``(lo, hi)`` of a scripted pause (``...``).
    """

    opening_s: Number = Field(1.0, ge=0, le=60)
    gap_median_s: Number = Field(0.25, ge=0, le=10)
    gap_sigma: Number = Field(0.5, ge=0, le=3)
    gap_max_s: Number = Field(1.5, ge=0, le=10)
    answer_min_s: Number = Field(1.0, ge=0, le=30)
    reprompt_s: Number = Field(3.0, gt=0, le=60)
    reprompt_p: Number = Field(0.5, ge=0, le=1)
    max_reprompts: Integer = Field(1, ge=0, le=100)
    cut_in_s: Number = Field(0.6, ge=0, le=30)
    yield_p: Number = Field(0.5, ge=0, le=1)
    yield_reaction_s: tuple[Number, Number] = (0.2, 0.5)
    barge_in_s: Number = Field(6.0, gt=0, le=600)
    barge_in_p: Number = Field(0.3, ge=0, le=1)
    backchannel_per_min: Number = Field(6.0, ge=0, le=120)
    backchannel_after_s: Number = Field(2.0, ge=0, le=60)
    backchannel_min_gap_s: Number = Field(1.5, ge=0, le=60)
    pause_s: tuple[Number, Number] = (0.5, 1.0)

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("yield_reaction_s", "pause_s"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 10:
                raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi <= 10, got ({lo:g}, {hi:g})")
        return self


def load_user_params(raw) -> UserParams:
    """:class:`UserParams` from a dict, itself or None (defaults); ``ValueError`` naming each bad
    field (``user_params.yield_p: must be <= 1, got 1.5``)."""
    from duplexgym.config import validate_section

    if raw is None:
        return UserParams()
    if isinstance(raw, UserParams):
        return raw
    return validate_section(UserParams, raw, ValueError, "user_params",
                            f"user_params must be a mapping of UserParams fields, got {type(raw).__name__}")


def _frames(s: float) -> int:
    return int(round(s / FRAME_S))


@dataclass
class _Playing:
    """The utterance being played: from frame ``start``, ``n`` frames, ``obs`` its observation rows."""

    utt: Utterance
    entry: dict
    obs: list
    start: int
    n: int
    floor: bool
    run0: int  # the agent's utterance id when it began (speech already running is no cut-in)
    decided: int = -1  # the agent utterance a yield decision was made for
    stop_at: int = -1  # the frame it yields at, -1: none


class SimulatedUser:
    """One episode's user (module docstring).

    ``params``: timing; ``lines``: the source's dialogue; ``obs_of(utt)``: an utterance's
    observation rows (a sequence of ``n_frames`` arrays); ``seed``: the user seed; ``max_turns``: None = no limit;
    ``agent_words(frame)``: the agent's ``(start_s, end_s, word)`` before ``frame`` (the llm source's
    transcript). Drive it with :meth:`step` once per frame, then :meth:`close`.
    """

    def __init__(self, params: UserParams, lines: DialogueLines, obs_of: Callable[[Utterance], list],
                 seed: int, max_turns: int | None = None,
                 agent_words: Callable[[int], list] | None = None):
        self.p, self.lines, self._obs_of = params, lines, obs_of
        self.rng = {name: np.random.default_rng([int(seed), i]) for i, name in enumerate(STREAMS[:5])}
        self.max_turns = max_turns
        self._agent_words = agent_words or (lambda frame: [])
        self.schedule: list[dict] = []
        self.played: list[Utterance] = []  # the utterance of each schedule entry
        self.decisions: list[dict] = []
        self.done, self.end_reason = False, None
        # frames of the timing rules
        self._opening, self._reprompt = _frames(params.opening_s), max(1, _frames(params.reprompt_s))
        self._answer_min, self._cut_in = _frames(params.answer_min_s), _frames(params.cut_in_s)
        self._barge, self._barge_p = max(1, _frames(params.barge_in_s)), params.barge_in_p
        self._bc_after, self._bc_gap = _frames(params.backchannel_after_s), _frames(params.backchannel_min_gap_s)
        self._bc_mean = 60.0 / params.backchannel_per_min if params.backchannel_per_min > 0 else 0.0
        self._run_gap = int(np.ceil(AGENT_PAUSE_S / FRAME_S - 1e-9))
        # the agent as the user hears it
        self._run_start, self._run_id, self._a_end = -1, 0, 0
        self._answer = 0  # agent speech frames since the user's floor was last free
        self._barge_k = 0  # barge-in decisions made in this agent utterance
        self._bc_due = -1
        # the user
        self._play: _Playing | None = None
        self._floor_free = 0  # the frame the user's last turn ended (0 before the first)
        self._gap_at = -1
        self._turns = 0
        self._reprompts = 0
        self._last_turn: Utterance | None = None

    @property
    def holding(self) -> bool:
        """The user holds the floor (a turn or re-prompt is playing)."""
        return self._play is not None and self._play.floor

    # -- the frame loop ----------------------------------------------------------------------

    def step(self, t: int, speaking: bool, speech_end: int):
        """Hear agent frame ``t`` (``speaking``; ``speech_end``: the frame its current speech ends,
        exclusive, possibly later than ``t + 1`` for a text-stream word) and give the user's frame
        ``t + 1``: an observation row, or None for silence. Source errors propagate
        (:class:`~duplexgym.envs.user_lines.UserSourceError`); ``done`` is set when the dialogue ends."""
        n = t + 1
        if speaking:
            if self._run_start < 0 or t - self._a_end >= self._run_gap:
                self._run_start, self._run_id, self._barge_k, self._bc_due = t, self._run_id + 1, 0, -1
            if speech_end > self._a_end:
                self._a_end = speech_end
            if t >= self._floor_free:
                self._answer += 1
        elif self._run_start >= 0 and t - self._a_end >= self._run_gap:
            self._run_start = -1
        p = self._play
        if p is not None:
            if p.floor:
                if (speaking and self._run_id != p.run0 and self._run_id != p.decided
                        and n - self._run_start >= self._cut_in):
                    self._decide_yield(p, n)
                if 0 <= p.stop_at <= n:
                    self._finish(n, YIELDED)
                    p = None
            if p is not None:
                pos = n - p.start
                if pos < p.n:
                    return p.obs[pos]
                self._finish(n, ENDED)
        if not self.done:
            self._wait(n, speaking)
            if self._play is not None:
                return self._play.obs[0]
        return None

    def close(self, n_frames: int) -> None:
        """The episode ended after ``n_frames`` frames: finish what is playing."""
        if self._play is not None:
            self._finish(n_frames, EPISODE_END)
        if self.end_reason is None:
            self.end_reason = "max_s"

    # -- decisions ---------------------------------------------------------------------------

    def _decide_yield(self, p: _Playing, n: int) -> None:
        p.decided = self._run_id
        rng = self.rng["yield"]
        yields = rng.random() < self.p.yield_p
        entry = {"frame": n, "what": "yield" if yields else "talk_on", "agent_onset_frame": self._run_start,
                 "utterance": len(self.schedule) - 1}
        if yields:
            lo, hi = self.p.yield_reaction_s
            p.stop_at = n + _frames(lo + (hi - lo) * rng.random())
            entry["stop_frame"] = p.stop_at
        self.decisions.append(entry)

    def _wait(self, n: int, speaking: bool) -> None:
        """Nothing plays at frame ``n``: start something there, or not."""
        if self._run_start >= 0 and (speaking or self._a_end > n):  # the agent is in an utterance
            self._gap_at = -1
            dur = n - max(self._run_start, self._floor_free)  # how long the user has listened to it
            if self._barge_p > 0 and dur >= self._barge * (self._barge_k + 1):
                self._barge_k += 1
                barges = self.rng["barge_in"].random() < self._barge_p
                self.decisions.append({"frame": n, "what": "barge_in" if barges else "no_barge_in",
                                       "agent_onset_frame": self._run_start})
                if barges:
                    self._start_turn(n, BARGE_IN)
                    return
            if speaking and self._bc_mean > 0 and dur >= self._bc_after:
                if self._bc_due < 0:
                    self._bc_due = n + self._bc_interval()
                elif n >= self._bc_due:
                    utt = self.lines.backchannel(self.rng["backchannel"])
                    self._play_utt(utt, BACKCHANNEL, BACKCHANNEL, n)
                    self._bc_due = n + max(self._bc_gap, self._bc_interval(), utt.n_frames)
            return
        if self._answer >= max(1, self._answer_min):  # the agent answered; its speech has stopped
            if self._gap_at < 0:
                self._gap_at = self._a_end + self._gap()
            if n >= self._gap_at:
                self._start_turn(n, OPENING if self._turns == 0 else ANSWER)
            return
        base = max(self._floor_free, self._a_end)
        if self._turns == 0:
            if n - base >= self._opening:
                self._start_turn(n, OPENING)
            return
        if n - base >= self._reprompt:
            if self._reprompts < self.p.max_reprompts and self.p.reprompt_p > 0 and \
                    self.rng["reprompt"].random() < self.p.reprompt_p:
                self._reprompts += 1
                self.decisions.append({"frame": n, "what": "reprompt"})
                self._play_utt(self.lines.reprompt(self._last_turn), REPROMPT, REPROMPT, n)
            else:
                self.decisions.append({"frame": n, "what": "go_on"})
                self._start_turn(n, NO_ANSWER)

    def _gap(self) -> int:
        p = self.p
        z = self.rng["gap"].standard_normal()
        return _frames(min(p.gap_max_s, p.gap_median_s * float(np.exp(p.gap_sigma * z))))

    def _bc_interval(self) -> int:
        return max(1, _frames(self.rng["backchannel"].exponential(self._bc_mean)))

    # -- utterances --------------------------------------------------------------------------

    def _start_turn(self, n: int, why: str) -> None:
        if self.max_turns is not None and self._turns >= self.max_turns:
            self._end("max_turns")
            return
        utt = self.lines.next_turn(self._turns, lambda: self.transcript(n))
        if utt is None:
            self._end("exhausted")
            return
        self._turns += 1
        self._reprompts = 0
        self._last_turn = utt
        self._play_utt(utt, TURN, why, n)
        self._play.entry["turn"] = self._turns - 1

    def _end(self, reason: str) -> None:
        self.done, self.end_reason = True, reason

    def _play_utt(self, utt: Utterance, kind: str, why: str, n: int) -> None:
        floor = kind != BACKCHANNEL
        entry = {"kind": kind, "why": why, "turn": max(0, self._turns - 1), "start_frame": n, "end_frame": None,
                 "full_frames": utt.n_frames, "cut": None, "text": utt.text, "origin": utt.origin, "key": utt.key}
        self.schedule.append(entry)
        self.played.append(utt)
        if floor:
            self._gap_at = -1
            self._floor_free = _BUSY  # agent speech from now on is no answer to the last turn
            if self._a_end < n:  # silent in the last frame: the user took that for its end, new speech is new
                self._run_start = -1
        self._play = _Playing(utt, entry, self._obs_of(utt), n, utt.n_frames, floor, self._run_id)

    def _finish(self, n: int, how: str) -> None:
        p = self._play
        self._play = None
        e = p.entry
        e["end_frame"], e["cut"] = n, how
        said = (n - p.start) * FRAME_S
        t0 = p.start * FRAME_S
        u = p.utt

        def spans(items):
            return [[round(t0 + a, 4), round(t0 + min(b, said), 4)] for a, b in items if a < said]

        e["start_s"], e["end_s"] = round(t0, 4), round(t0 + said, 4)
        e["speech_s"] = spans(u.speech_s)
        e["pauses_s"] = [x for x, (a, b) in zip(spans(u.pauses_s), u.pauses_s) if b <= said]
        e["words"] = None if u.words is None else [[round(t0 + a, 4), round(t0 + b, 4), w] for a, b, w in u.words
                                                  if (a + b) / 2 < said]
        e["human_backchannels_s"] = None if u.human_backchannels_s is None else \
            [x for x, (a, b) in zip(spans(u.human_backchannels_s), u.human_backchannels_s) if b <= said]
        if p.floor:
            self._floor_free = n
            self._answer = 0
            self._gap_at = -1
            self._barge_k, self._bc_due = 0, -1

    # -- what was said -----------------------------------------------------------------------

    def transcript(self, frame: int) -> list[dict]:
        """``[{"speaker": "USER" | "ASSISTANT", "text"}]`` before ``frame``: the user's turns as
        said (a yielded turn up to the cut) and the agent's words, in time order."""
        items = []
        for e in self.schedule:
            if e["kind"] == BACKCHANNEL:
                continue
            text = e["text"]
            if e.get("cut") == YIELDED and e.get("words") is not None:
                text = " ".join(w[2] for w in e["words"]) + " -"
            if text:
                items.append((e["start_frame"] * FRAME_S, "USER", text))
        items += [(a, "ASSISTANT", w) for a, _, w in self._agent_words(frame)]
        out: list[dict] = []
        for _, speaker, text in sorted(items, key=lambda x: x[0]):
            if out and out[-1]["speaker"] == speaker:
                out[-1]["text"] += " " + text
            else:
                out.append({"speaker": speaker, "text": text})
        return out

    def record(self, n_frames: int) -> dict:
        """The JSON-ready account of what happened (the record's ``live`` minus the env's keys)."""
        return {"params": asdict(self.p), "schedule": self.schedule, "decisions": self.decisions,
                "end": self.end_reason, "frames": n_frames, "turns": self._turns}


# --------------------------------------------------------------------------------- hearing audio


class StreamingSpeech:
    """Is the agent speaking, frame by frame, from its 24 kHz audio: soxr's streaming resampler
    to 16 kHz, then silero VAD 6.2.3 on 512-sample (32 ms) chunks with its recurrent state kept,
    with hysteresis (``threshold`` starts speech, below ``neg_threshold`` it ends). A frame is speech
    when any chunk completed in it is. The same reading as the ``vad`` baseline's
    (``agents/policies/vad_agent.py``, which envs may not import); a model instance of its own,
    since :mod:`duplexgym.corpora.vad`'s shared one is reset by batched scoring.
    """

    RATE, CHUNK = 16_000, 512

    def __init__(self, threshold: float = 0.5, neg_threshold: float | None = None):
        import silero_vad  # sets torch to one thread (FACTS.md)
        import torch

        self._torch = torch
        self.model = silero_vad.load_silero_vad()
        self.threshold = float(threshold)
        self.neg_threshold = float(threshold - 0.15 if neg_threshold is None else neg_threshold)
        self.reset()

    def reset(self) -> None:
        import soxr

        self.model.reset_states()
        self._stream = soxr.ResampleStream(24_000, self.RATE, 1, dtype="float32", quality="HQ")
        self._pending = np.zeros(0, dtype=np.float32)
        self._voiced = False

    def push(self, frame_24k: np.ndarray) -> bool:
        """Feed one frame ``[1920]``; True when it holds speech."""
        out = self._stream.resample_chunk(np.ascontiguousarray(frame_24k, dtype=np.float32))
        pending = np.concatenate([self._pending, out]) if len(self._pending) else out
        n = len(pending) // self.CHUNK
        any_voiced = False
        if n:
            torch = self._torch
            with torch.inference_mode():
                for i in range(n):
                    chunk = torch.from_numpy(np.ascontiguousarray(pending[i * self.CHUNK:(i + 1) * self.CHUNK]))
                    prob = float(self.model(chunk, self.RATE))
                    self._voiced = prob >= self.threshold or (self._voiced and prob >= self.neg_threshold)
                    any_voiced |= self._voiced
        else:
            any_voiced = self._voiced
        self._pending = pending[n * self.CHUNK:]
        return any_voiced

