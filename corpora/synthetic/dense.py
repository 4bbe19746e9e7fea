"""Dense two-voice dialogues with exact labels: events right next to other events.

The embedded default corpus (:mod:`.generate`) keeps every event clear of the others, which is
what makes it a clean benchmark and also what hides the rules' blind spots: real conversation is
dense. This generator strings together *scenes* in which events touch, plus ordinary ones:

==========================  =======================================================================
scene                       what happens (A holds the floor, B listens; times of the true audio)
==========================  =======================================================================
``backchannel_after_turn``  B ends a turn, A takes the floor, and B backchannels in A's first
                            utterance, :attr:`~DenseParams.own_turn_backchannel_gaps_s` after B's
                            own last word (0.5-0.75 s, or 1.4-1.7 s when A started late)
``turn_after_backchannel``  B backchannels near the end of A's last utterance (A goes on
                            :attr:`~DenseParams.holder_after_backchannel_s`), then takes the turn
                            :attr:`~DenseParams.backchannel_to_turn_s` (0.7-0.9 s) after it
``interruption_overlap``    B barges in on A, A stops, and after B's interrupting turn A takes the
                            floor back with an overlap (:attr:`~DenseParams.overlap_range_s`)
``chained_interruptions``   B barges in on A; A, silent for :attr:`~DenseParams.yield_range_s`,
                            barges back in on B
``paused_turn``             a turn with a short pause (:attr:`~DenseParams.pause_range_s`) between
                            plain turn shifts, the listener silent: material for the paper's pause
``backchannel_turn``        a long turn with one backchannel between plain turn shifts
ordinary                    a turn shift (gap or overlap), an interruption answered by a turn shift;
                            inside turns: pauses (:attr:`~DenseParams.pause_range_s`, or longer
                            ones, :attr:`~DenseParams.long_pause_range_s`) and backchannels
==========================  =======================================================================

Each dialogue holds every scene above but the ordinary ones once, plus
:attr:`~DenseParams.ordinary_scenes` ordinary ones, in a seeded order (about 70-110 s). The
default 10 dialogues hold about 68 pauses, 97 turn shifts, 41 backchannels and 37 interruptions.

Files (the ``stereo`` source's layout, like the default corpus): ``denseNNNN.wav`` (2 channels,
24 kHz, PCM_16), ``denseNNNN.json`` (approximate word times) and ``denseNNNN.truth.json`` with
the events in the format of :mod:`.generate` (every floor change is a labelled ``turn`` or
``interruption``; every short listener response a ``backchannel``; every in-turn silence of
0.5 s or more a ``pause``), each event with its ``scene``, and ``speech``: each speaker's exact
speech spans (the trimmed clips, cut where a speaker is interrupted), from which the paper's
utterance-level events follow (:func:`label_spans`, then
:func:`duplexgym.corpora.paper.detect_paper_events`). Build it like any stereo folder
(``corpus build DIR``, with ``--rules paper`` too).

Labels are *unambiguous to a VAD*. Times are drawn away from the thresholds of our rules (gaps of
0.14-0.3 s or 0.6-1.1 s, overlaps under 0.25 s, stops 0.6 s or more after a barge-in, an
interrupted speaker silent 1.35 s or more before it comes back, ...). For the paper's rules, whose
events hinge on sums (utterance lengths against tau_min, silences against 1.0 s, gaps against
0.4 s), :func:`check_dense` redraws any dialogue whose paper events change when the true speech
is shifted as a VAD shifts it (:data:`VAD_SHIFTS_S`: silero with 30 ms padding ends speech
0.02-0.13 s late), or that has a same-speaker silence a VAD may or may not split
(:data:`AMBIGUOUS_SILENCES_S`). Everything random comes from ``np.random.default_rng([seed,
index, 1])``; the same seed and parameters give byte-identical files. Two voices (slt, rms) and a
bank of :attr:`~DenseParams.bank_size` sentences keep the flite work small (about 140 distinct
clips; 25-30 s of flite on 2 cores, less when the default corpus was rendered in the same process).
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from duplexgym.corpora.audio import write_audio
from duplexgym.corpora.dialogue import SPEAKERS, other_speaker
from duplexgym.corpora.synthetic import phrases
from duplexgym.corpora.synthetic.generate import (
    BACKCHANNEL_CLIP_RANGE_S,
    TRUTH_SUFFIX,
    _anchor,
    _clip24,
    _Clip,
    _cut_point,
    _mix,
    _Redraw,
    _t,
    _words,
    speech_of,
)
from duplexgym.corpora.synthetic.tts import flite_path

from duplexgym.constants import SAMPLE_RATE

#: Bump whenever the output for given (seed, params) changes.
DENSE_VERSION = "3"
#: Stamp file written last into the output folder.
DENSE_STAMP_NAME = ".dense.json"
#: Same-speaker silences (s) no label may have: a VAD may or may not split an IPU there.
AMBIGUOUS_SILENCES_S = ((0.1, 0.2),)
#: VAD-like boundary errors, ``(start shift, end shift)`` in seconds, under which the paper's
#: events of the true speech must not change (silero with 30 ms padding ends speech 0.02-0.13 s
#: late and starts it up to 0.04 s early).
VAD_SHIFTS_S = ((0.0, 0.03), (-0.04, 0.13))
#: Sentences starting so are left out: silero finds the soft onset of slt's "our ..." 0.25-0.41 s
#: late (measured on every sentence of the bank), which turns a labelled overlap into a gap.
LATE_ONSET_STARTS = ("our ",)
#: Two paper events agree under a shift when their anchors are this close (s).
_SHIFT_TOLERANCE_S = 0.2
#: The dense scenes each dialogue holds once; the ordinary ones are drawn.
DENSE_SCENES = ("backchannel_after_turn", "turn_after_backchannel", "interruption_overlap", "chained_interruptions")
#: Scenes each dialogue holds once so that the paper's criteria have material: a turn with a
#: short pause and a long turn with a backchannel, each between plain turn shifts.
CLEAR_SCENES = ("paused_turn", "backchannel_turn")
ORDINARY_SCENES = ("shift", "overlap", "interruption_shift")
#: Transitions (how the floor passes to the next turn) of each scene.
_TRANSITIONS = {
    "backchannel_after_turn": ("shift_bc",),
    "turn_after_backchannel": ("bc_shift",),
    "interruption_overlap": ("interrupt", "overlap"),
    "chained_interruptions": ("interrupt", "interrupt"),
    "paused_turn": ("shift", "shift"),
    "backchannel_turn": ("shift", "shift"),
    "shift": ("shift",),
    "overlap": ("overlap",),
    "interruption_shift": ("interrupt", "shift"),
}
_NAME = re.compile(r"^dense\d{4}(\.wav|\.json|\.truth\.json)$")


@dataclass(frozen=True)
class DenseParams:
    """Knobs of the dense generator; ranges ``(low, high)`` drawn uniformly, seconds."""

    n_dialogues: int = 10
    #: Ordinary scenes per dialogue besides the dense and the clear ones (low, high inclusive).
    ordinary_scenes: tuple[int, int] = (2, 3)
    lead_in_range_s: tuple[float, float] = (0.3, 0.6)
    tail_range_s: tuple[float, float] = (0.5, 0.8)
    #: Gap between two sentences of one utterance (a VAD merges it).
    short_gap_range_s: tuple[float, float] = (0.03, 0.07)
    #: Probability that a gap inside a (non-interrupting) turn is a pause.
    pause_prob: float = 0.5
    #: In-turn pause: a pause for both rule sets (inside one of the paper's utterances).
    pause_range_s: tuple[float, float] = (0.65, 0.85)
    #: Probability that a pause is long: a pause for duplexgym, an utterance break for the paper.
    long_pause_prob: float = 0.3
    long_pause_range_s: tuple[float, float] = (1.4, 2.2)
    #: Turn-shift gaps: one of the two ranges (either side of the paper's 0.4 s), drawn evenly.
    shift_gaps_s: tuple[tuple[float, float], ...] = ((0.14, 0.3), (0.6, 1.1))
    overlap_range_s: tuple[float, float] = (0.1, 0.25)
    #: Barge-in onset -> the interrupted speaker's stop.
    stop_delay_range_s: tuple[float, float] = (0.6, 1.1)
    #: Talk of the interrupted utterance before the barge-in.
    interruption_talk_range_s: tuple[float, float] = (1.5, 2.5)
    #: Silence of the interrupted speaker before it comes back while the interrupter still talks
    #: (barging back in, or an overlapping take-back).
    yield_range_s: tuple[float, float] = (1.35, 2.0)
    #: Listener's own last word -> its backchannel in the new holder's first utterance.
    own_turn_backchannel_gaps_s: tuple[tuple[float, float], ...] = ((0.5, 0.75), (1.4, 1.7))
    #: Backchannel end -> the listener's turn onset.
    backchannel_to_turn_s: tuple[float, float] = (0.7, 0.9)
    #: Backchannel end -> the holder's end, in ``turn_after_backchannel``.
    holder_after_backchannel_s: tuple[float, float] = (0.35, 0.5)
    #: A backchannel lies at least this far inside the holder's utterance (0.35 s at the start
    #: of ``backchannel_after_turn``).
    backchannel_inset_s: float = 0.8
    #: Probability that a turn gets an ordinary backchannel of the listener.
    backchannel_prob: float = 0.45
    #: An ordinary backchannel: no other speech of the listener this close.
    backchannel_clearance_s: float = 1.4
    #: An ordinary backchannel: no other labelled time this close.
    event_clearance_s: float = 1.0
    #: Sentences of the phrase bank used (the first ones, but :data:`LATE_ONSET_STARTS`), and the two voices.
    bank_size: int = 45
    voices: tuple[str, str] = ("slt", "rms")
    cut_fade_s: float = 0.02
    clip_fade_s: float = 0.005
    speaker_gain_range_db: tuple[float, float] = (-4.0, 0.0)
    noise_dbfs: float = -60.0
    max_attempts: int = 2000

    def __post_init__(self) -> None:
        if self.n_dialogues < 1:
            raise ValueError(f"n_dialogues must be >= 1, got {self.n_dialogues}")
        for name, value in asdict(self).items():
            if name.endswith("_range_s") and not value[0] <= value[1]:
                raise ValueError(f"{name}: low {value[0]} is above high {value[1]}")


def generate_dense_corpus(out_dir: str | Path, seed: int = 0, params: DenseParams = DenseParams()) -> list[Path]:
    """Render the dense dialogues into ``out_dir`` (reused when its stamp matches); the wav paths."""
    out = Path(out_dir)
    names = [f"dense{i:04d}" for i in range(params.n_dialogues)]
    wavs = [out / f"{n}.wav" for n in names]
    stamp = json.dumps({"dense_version": DENSE_VERSION, "seed": int(seed), "params": asdict(params)},
                       sort_keys=True, indent=1) + "\n"
    stamp_path = out / DENSE_STAMP_NAME
    if stamp_path.is_file() and stamp_path.read_text(encoding="utf-8") == stamp and all(
            (out / f"{n}{s}").is_file() for n in names for s in (".wav", ".json", TRUTH_SUFFIX)):
        return wavs
    flite_path()
    out.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)
    for old in out.iterdir():
        if _NAME.match(old.name):
            old.unlink()
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for job in [pool.submit(_write, out, name, seed, i, params) for i, name in enumerate(names)]:
            job.result()
    tmp = stamp_path.with_suffix(".tmp")
    tmp.write_text(stamp, encoding="utf-8")
    os.replace(tmp, stamp_path)
    return wavs


def _write(out: Path, name: str, seed: int, index: int, params: DenseParams) -> None:
    tracks, words, truth = render_dense_dialogue(seed, index, params)
    write_audio(out / f"{name}.wav", tracks.T, SAMPLE_RATE, subtype="PCM_16")
    (out / f"{name}.json").write_text(json.dumps({"words": words}, indent=1) + "\n", encoding="utf-8")
    (out / f"{name}{TRUTH_SUFFIX}").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")


def render_dense_dialogue(seed: int, index: int, params: DenseParams = DenseParams()):
    """``(tracks [2, N] float32 at 24 kHz, words, truth)`` of dense dialogue ``index``."""
    rng = np.random.default_rng([seed, index, 1])
    voices = dict(zip(SPEAKERS, params.voices if rng.random() < 0.5 else params.voices[::-1]))
    gains = {s: 10 ** (rng.uniform(*params.speaker_gain_range_db) / 20) for s in SPEAKERS}
    name = f"dense{index:04d}"
    for _ in range(params.max_attempts):
        try:
            clips, events, n_samples = _Planner(rng, voices, params).plan()
        except _Redraw:
            continue
        truth = {"dialogue": name, "duration_s": _t(n_samples), "events": events, "speech": speech_of(clips)}
        if not check_dense(truth):
            break
    else:
        raise RuntimeError(f"{name}: no unambiguous dense plan after {params.max_attempts} attempts")
    tracks = np.zeros((2, n_samples), dtype=np.float32)
    for clip in clips:
        _mix(tracks[SPEAKERS.index(clip.speaker)], clip, gains[clip.speaker], params)
    tracks += rng.normal(0.0, 10 ** (params.noise_dbfs / 20), size=tracks.shape).astype(np.float32)
    np.clip(tracks, -1.0, 1.0, out=tracks)
    return tracks, _words(clips), truth


# --------------------------------------------------------------------------------------------
# Labels


def label_spans(truth: dict, merge_s: float = 0.15) -> dict[str, list[tuple[float, float]]]:
    """Each speaker's true speech as IPUs: the truth's clip spans, joined across silences shorter
    than ``merge_s`` (which a VAD does not split)."""
    out = {}
    for spk in SPEAKERS:
        merged: list[list[float]] = []
        for a, b in sorted(truth["speech"][spk]):
            if merged and a - merged[-1][1] < merge_s:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out[spk] = [(a, b) for a, b in merged]
    return out


def paper_keys(spans: dict[str, list[tuple[float, float]]]) -> list[tuple]:
    """``(type, speakers, anchor_s, n)`` of each paper event of ``spans`` (``n``: pauses of a pause
    event, backchannels of a backchannel event, else 0)."""
    from duplexgym.corpora.paper import PaperBackchannel, PaperPause, PaperTurn, detect_paper_events

    keys = []
    for e in detect_paper_events(spans):
        who = (e.from_speaker, e.to_speaker) if isinstance(e, PaperTurn) else (e.speaker,)
        n = len(e.pauses_s) if isinstance(e, PaperPause) else len(e.backchannels_s) if isinstance(
            e, PaperBackchannel) else 0
        keys.append((e.type, who, e.anchor_s, n))
    return keys


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and x[1] == y[1] and x[3] == y[3]
                                    and abs(x[2] - y[2]) <= _SHIFT_TOLERANCE_S for x, y in zip(a, b))


def check_dense(truth: dict) -> list[str]:
    """What makes ``truth`` ambiguous to a VAD (module docstring); empty when nothing does."""
    problems = []
    for spk in SPEAKERS:
        spans = sorted(tuple(x) for x in truth["speech"][spk])
        for (_, b), (a, _) in zip(spans, spans[1:]):
            if any(lo < a - b < hi for lo, hi in AMBIGUOUS_SILENCES_S):
                problems.append(f"{spk}: silence of {a - b:.3f} s at {b:.2f} s")
    exact = label_spans(truth)
    want = paper_keys(exact)
    for lo, hi in VAD_SHIFTS_S:
        shifted = {s: [(a + lo, b + hi) for a, b in v] for s, v in exact.items()}
        got = paper_keys(label_spans({"speech": shifted}))
        if not _same(want, got):
            problems.append(f"the paper's events change when speech starts {lo:+.2f} s and ends {hi:+.2f} s off")
    return problems


# --------------------------------------------------------------------------------------------
# Planning


@dataclass
class _DTurn:
    speaker: str
    entry: str | None  # transition that gave this turn the floor
    exit: str | None  # transition to the next turn
    scene_in: str | None = None
    scene_out: str | None = None
    clips: list | None = None

    @property
    def role(self) -> str | None:
        """The scene this turn is the middle of (``paused_turn``, ``backchannel_turn``), if any."""
        return self.scene_in if self.scene_in == self.scene_out and self.scene_in in CLEAR_SCENES else None


class _Planner:
    def __init__(self, rng: np.random.Generator, voices: dict[str, str], p: DenseParams):
        self.rng, self.voices, self.p = rng, voices, p
        self.clips: list[_Clip] = []
        self.events: list[dict] = []
        usable = [i for i, text in enumerate(phrases.SENTENCES) if not text.startswith(LATE_ONSET_STARTS)]
        bank = usable[: p.bank_size]
        self.bank = {s: [bank[k] for k in rng.permutation(len(bank))] for s in SPEAKERS}

    def sec(self, x: float) -> int:
        return int(round(x * SAMPLE_RATE))

    def u(self, rng_s) -> float:
        return float(self.rng.uniform(*rng_s))

    def one_of(self, ranges) -> float:
        return self.u(ranges[int(self.rng.integers(len(ranges)))])

    def sentence(self, spk: str, min_s: float = 0.0, max_s: float = np.inf) -> tuple[str, np.ndarray]:
        pool = self.bank[spk]
        for k, idx in enumerate(pool):
            text = phrases.SENTENCES[idx]
            audio = _clip24(self.voices[spk], text)
            if min_s <= len(audio) / SAMPLE_RATE <= max_s:
                pool.append(pool.pop(k))  # used last next time: variety
                return text, audio
        raise _Redraw

    def backchannel_clip(self, spk: str) -> tuple[str, np.ndarray]:
        lo, hi = BACKCHANNEL_CLIP_RANGE_S
        usable = [t for t in phrases.BACKCHANNELS if lo <= len(_clip24(self.voices[spk], t)) / SAMPLE_RATE <= hi]
        text = usable[int(self.rng.integers(len(usable)))]
        return text, _clip24(self.voices[spk], text)

    def scenes(self) -> list[tuple[str, str]]:
        p, rng = self.p, self.rng
        n_ord = int(rng.integers(p.ordinary_scenes[0], p.ordinary_scenes[1] + 1))
        chosen = list(DENSE_SCENES + CLEAR_SCENES) + [ORDINARY_SCENES[int(rng.integers(len(ORDINARY_SCENES)))] for _ in range(n_ord)]
        for _ in range(100):
            order = [chosen[k] for k in rng.permutation(len(chosen))]
            flat = [(t, s) for s in order for t in _TRANSITIONS[s]]
            kinds = [t for t, _ in flat]
            if not any(kinds[i:i + 3] == ["interrupt"] * 3 for i in range(len(kinds))):
                return flat
        raise _Redraw

    def plan(self):
        p, rng = self.p, self.rng
        flat = self.scenes()
        speaker = SPEAKERS[int(rng.integers(2))]
        turns = []
        for i in range(len(flat) + 1):
            entry = flat[i - 1] if i > 0 else (None, None)
            exit_ = flat[i] if i < len(flat) else (None, None)
            turns.append(_DTurn(speaker, entry[0], exit_[0], entry[1], exit_[1]))
            speaker = other_speaker(speaker)
        t = self.sec(self.u(p.lead_in_range_s))
        pending_interruption = None  # the event the current (interrupting) turn opened
        prev_stop = None  # where the previous (interrupted) turn stopped
        for i, turn in enumerate(turns):
            turn.clips = self.lay_turn(turn, t)
            if pending_interruption is not None:
                pending_interruption["end_s"] = _t(turn.clips[-1].end) if turn.exit != "interrupt" else None
            if turn.exit is None:
                if pending_interruption is not None and pending_interruption["end_s"] is None:
                    raise _Redraw
                break
            t, stop, event = self.transition(turn, turns[i + 1], prev_stop)
            if pending_interruption is not None and pending_interruption["end_s"] is None:
                pending_interruption["end_s"] = _t(stop)  # cut by the next barge-in
            pending_interruption, prev_stop = event, stop
        for i, turn in enumerate(turns):
            if turn.entry == "shift_bc":
                self.backchannel_after_turn(turn, turns[i - 1])
        for turn in turns:  # turns with pauses are left to the pause axis (the paper's needs Y silent)
            paused = any(b.start - a.end >= self.sec(0.5) for a, b in zip(turn.clips, turn.clips[1:]))
            wanted = turn.role == "backchannel_turn" or rng.random() < p.backchannel_prob
            if turn.entry != "interrupt" and turn.role != "paused_turn" and not paused and wanted:
                self.ordinary_backchannel(turn)
        n_samples = max(c.end for c in self.clips) + self.sec(self.u(p.tail_range_s))
        self.events.sort(key=lambda e: (_anchor(e), e["type"]))
        return self.clips, self.events, n_samples

    def lay_turn(self, turn: _DTurn, t: int) -> list[_Clip]:
        p, rng, spk = self.p, self.rng, turn.speaker
        texts: list[tuple[str, np.ndarray]] = []
        if turn.entry == "interrupt":
            opener = phrases.INTERRUPTIONS[int(rng.integers(len(phrases.INTERRUPTIONS)))]
            texts.append((opener, _clip24(self.voices[spk], opener)))
            if turn.exit == "interrupt":  # chained: long enough to be interrupted in turn
                texts.append(self.sentence(spk, 3.6))
            elif turn.exit == "overlap" or rng.random() < 0.5:
                texts.append(self.sentence(spk, 1.3, 4.5))
            gaps = ["short"] * (len(texts) - 1)
        else:
            n = 1 + int(rng.choice(3, p=(0.3, 0.45, 0.25)))
            if turn.entry == "shift_bc" or turn.role is not None:
                n = max(n, 2)  # the next floor change stays clear of the backchannel
            for k in range(n):
                lo = 1.3
                if k == n - 1 and turn.exit == "interrupt":
                    lo = p.interruption_talk_range_s[0] + p.stop_delay_range_s[1] + 0.6
                elif k == n - 1 and turn.exit == "bc_shift":
                    lo = p.backchannel_inset_s + BACKCHANNEL_CLIP_RANGE_S[1] + p.holder_after_backchannel_s[1] + 0.3
                elif k == 0 and turn.entry == "shift_bc":
                    lo = 3.0
                texts.append(self.sentence(spk, lo))
            gaps = []
            for k in range(n - 1):
                if turn.role == "paused_turn":
                    gaps.append("pause" if k == 0 else "short")
                elif turn.role == "backchannel_turn":
                    gaps.append("short")
                elif rng.random() < p.pause_prob:
                    gaps.append("long" if rng.random() < p.long_pause_prob else "pause")
                else:
                    gaps.append("short")
        clips = []
        for k, (text, audio) in enumerate(texts):
            if k > 0:
                kind = gaps[k - 1]
                rng_s = {"short": p.short_gap_range_s, "pause": p.pause_range_s, "long": p.long_pause_range_s}[kind]
                prev_end = clips[-1].end
                t = prev_end + self.sec(self.u(rng_s))
                if kind != "short":
                    self.events.append({"type": "pause", "speaker": spk, "start_s": _t(prev_end), "end_s": _t(t),
                                        "scene": "pause"})
            clip = _Clip(spk, text, audio, t)
            clips.append(clip)
            self.clips.append(clip)
        return clips

    def transition(self, turn: _DTurn, nxt: _DTurn, prev_stop: int | None):
        """Lay the floor change after ``turn``: ``(next onset, where turn stopped, interruption event or None)``."""
        p, last, spk = self.p, turn.clips[-1], turn.speaker
        scene = turn.scene_out
        if turn.exit in ("shift", "shift_bc"):
            onset = last.end + self.sec(self.one_of(p.shift_gaps_s))
        elif turn.exit == "overlap":
            onset = last.end - self.sec(self.u(p.overlap_range_s))
            if turn.entry == "interrupt" and onset - prev_stop < self.sec(p.yield_range_s[0]):
                raise _Redraw  # the interrupted speaker comes back too soon
        elif turn.exit == "bc_shift":
            text, audio = self.backchannel_clip(nxt.speaker)
            bc_end = last.end - self.sec(self.u(p.holder_after_backchannel_s))
            bc_start = bc_end - len(audio)
            if bc_start < last.start + self.sec(p.backchannel_inset_s):
                raise _Redraw
            if any(b > bc_start - self.sec(p.backchannel_clearance_s) for _, b in self.listener_speech(nxt.speaker)):
                raise _Redraw  # the listener spoke just before: not a clean backchannel
            self.clips.append(_Clip(nxt.speaker, text, audio, bc_start))
            self.events.append({"type": "backchannel", "speaker": nxt.speaker, "holder": spk, "start_s": _t(bc_start),
                                "end_s": _t(bc_end), "text": text, "scene": scene})
            onset = bc_end + self.sec(self.u(p.backchannel_to_turn_s))
        else:  # interrupt
            delay = self.u(p.stop_delay_range_s)
            room = len(last.audio) / SAMPLE_RATE - 0.3 - delay  # _cut_point keeps 0.3 s of the clip
            talk_lo, talk_hi = p.interruption_talk_range_s
            if room < talk_lo:
                raise _Redraw
            onset = last.start + self.sec(self.u((talk_lo, min(talk_hi, room))))
            if turn.entry == "interrupt":  # chained: the speaker interrupted before comes back
                onset = max(onset, prev_stop + self.sec(self.u(p.yield_range_s)))
            stop = _cut_point(last, onset, delay, p)
            last.stop = stop
            event = {"type": "interruption", "speaker": nxt.speaker, "interrupted": spk, "onset_s": _t(onset),
                     "stop_s": _t(stop), "end_s": None, "scene": scene}
            self.events.append(event)
            return onset, stop, event
        self.events.append({"type": "turn", "from": spk, "to": nxt.speaker, "end_s": _t(last.end),
                            "onset_s": _t(onset), "scene": scene})
        return onset, last.end, None

    def listener_speech(self, listener: str) -> list[tuple[int, int]]:
        return [(c.start, c.end) for c in self.clips if c.speaker == listener]

    def backchannel_after_turn(self, turn: _DTurn, prev: _DTurn) -> None:
        p, host, listener = self.p, turn.clips[0], prev.speaker
        own_end = prev.clips[-1].end
        text, audio = self.backchannel_clip(listener)
        early, late = p.own_turn_backchannel_gaps_s
        start = own_end + self.sec(self.u(early))
        if start < host.start + self.sec(0.35):
            start = own_end + self.sec(self.u(late))
        end = start + len(audio)
        if start < host.start + self.sec(0.35) or end > host.end - self.sec(p.backchannel_inset_s):
            raise _Redraw
        clear = self.sec(p.backchannel_clearance_s)
        if any(a < end + clear and b > end for a, b in self.listener_speech(listener)):
            raise _Redraw
        self.clips.append(_Clip(listener, text, audio, start))
        self.events.append({"type": "backchannel", "speaker": listener, "holder": turn.speaker, "start_s": _t(start),
                            "end_s": _t(end), "text": text, "scene": "backchannel_after_turn"})

    def ordinary_backchannel(self, turn: _DTurn) -> None:
        p, listener = self.p, other_speaker(turn.speaker)
        text, audio = self.backchannel_clip(listener)
        inset, clear = self.sec(p.backchannel_inset_s), self.sec(p.backchannel_clearance_s)
        ev_clear = self.sec(p.event_clearance_s)
        points = [self.sec(v) for e in self.events for k, v in e.items() if k.endswith("_s") and v is not None]
        own = self.listener_speech(listener)
        step = self.sec(0.01)
        slots = []
        for utt in turn.clips:
            for start in range(utt.start + inset, utt.end - inset - len(audio) + 1, step):
                end = start + len(audio)
                if any(start - ev_clear < x < end + ev_clear for x in points):
                    continue
                if any(start - clear < b and a < end + clear for a, b in own):
                    continue
                slots.append(start)
        if not slots:
            return
        start = slots[int(self.rng.integers(len(slots)))]
        self.clips.append(_Clip(listener, text, audio, start))
        self.events.append({"type": "backchannel", "speaker": listener, "holder": turn.speaker, "start_s": _t(start),
                            "end_s": _t(start + len(audio)), "text": text, "scene": "backchannel"})
