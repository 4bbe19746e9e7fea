"""The embedded default corpus: scripted two-speaker dialogues with exact event labels.

Each dialogue is planned as a sequence of turns (one speaker holds the floor, 1-3 utterances),
rendered with offline TTS (:mod:`.tts`, two clearly different flite voices), and written as

- ``synNNNN.wav``: 2-channel PCM_16 at 24 kHz; channel 0 = speaker A, channel 1 = speaker B,
  with seeded low-level noise (:attr:`SyntheticParams.noise_dbfs`) under the speech;
- ``synNNNN.json``: a word-timing transcript in the ``stereo`` source's format
  (``{"words": [{"speaker", "start", "end", "word"}, ...]}``). Word times are **approximate**:
  each utterance's trimmed duration is shared among its words in proportion to their characters;
- ``synNNNN.truth.json``: the exact events (seconds, rounded to 1e-4), sorted by anchor time
  (pause ``start_s``, turn ``end_s``, backchannel ``start_s``, interruption ``onset_s``)::

    {"dialogue": "syn0001", "duration_s": 18.2, "events": [
      {"type": "pause", "speaker": "A", "start_s": 3.1, "end_s": 4.6},
      {"type": "turn", "from": "A", "to": "B", "end_s": 7.2, "onset_s": 7.55},
      {"type": "backchannel", "speaker": "B", "holder": "A", "start_s": 9.0, "end_s": 9.4,
       "text": "yeah"},
      {"type": "interruption", "speaker": "B", "interrupted": "A", "onset_s": 12.0,
       "stop_s": 12.8, "end_s": 14.9}],
     "speech": {"A": [[0.5, 3.1], ...], "B": [...]}}

  ``speech`` holds each speaker's exact speech spans (one per clip, trimmed; an interrupted clip
  ends at its cut), from which other rule sets' events can be labelled (the seed paper's
  utterance-level rules: :func:`duplexgym.corpora.synthetic.dense.label_spans`).

What the labels guarantee (checked by :func:`check_truth` for every dialogue written):

- **pause**: a silence of :attr:`~SyntheticParams.pause_range_s` between two utterances of one
  speaker's turn, the other speaker silent throughout. Every other in-turn gap is short
  (:attr:`~SyntheticParams.short_gap_range_s`), so any in-turn silence >= 0.5 s is a labelled pause.
- **turn**: ``from`` ends its turn at ``end_s`` (true end of speech), ``to`` starts at ``onset_s``;
  the gap is in :attr:`~SyntheticParams.shift_gap_range_s`, or ``to`` starts
  :attr:`~SyntheticParams.overlap_range_s` before ``end_s`` (overlapping shift, onset < end).
- **backchannel**: one short response (clip 0.3-0.75 s, 1-2 words) by the listener, at least
  :attr:`~SyntheticParams.backchannel_inset_s` inside one of the holder's utterances; no other
  event and no other speech of the listener within :attr:`~SyntheticParams.backchannel_clearance_s`.
- **interruption**: the listener barges in at ``onset_s`` after the holder has talked at least
  :attr:`~SyntheticParams.interruption_talk_range_s` (low end) in the current utterance; the holder's audio is
  cut (short fade) at ``stop_s`` (``onset_s`` + :attr:`~SyntheticParams.stop_delay_range_s`); the
  interrupting turn (1-2 sentences) ends at ``end_s``. No other event lies within
  :attr:`~SyntheticParams.interruption_clearance_s` of it, except the reply that may follow: a
  turn shift back whose ``end_s`` equals the interruption's ``end_s``.

Everything random comes from ``np.random.default_rng([seed, index])``: the same seed and
parameters give byte-identical files.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from duplexgym.corpora.audio import write_audio
from duplexgym.corpora.dialogue import SPEAKERS, other_speaker
from duplexgym.corpora.synthetic import phrases
from duplexgym.corpora.synthetic.tts import (
    FRAME_S,
    TTS_RATE,
    flite_path,
    frame_rms_db,
    synthesize,
)

from duplexgym.constants import SAMPLE_RATE

#: Bump whenever the output for given (seed, params) changes; a stamp with another version re-renders.
GENERATOR_VERSION = "2"
#: Stamp file written last into the output folder; its presence marks a complete render.
STAMP_NAME = ".synthetic.json"
#: Suffix of the ground-truth file beside each ``synNNNN.wav``.
TRUTH_SUFFIX = ".truth.json"
#: Decimal places of every time written (0.1 ms).
TIME_DECIMALS = 4
#: Voice pairs (speakers of one dialogue); the order inside a pair is drawn per dialogue. Female US
#: (slt), male US (rms) and male Scottish (awb) are clearly different voices; kal16 is left out
#: (robotic diphone voice).
VOICE_PAIRS: tuple[tuple[str, str], ...] = (
    ("slt", "rms"),
    ("slt", "awb"),
    ("rms", "awb"),
)
#: Backchannel clips used: trimmed duration in this range, in seconds (long enough for a VAD
#: with 250 ms minimum speech, short enough to read as a backchannel).
BACKCHANNEL_CLIP_RANGE_S = (0.3, 0.75)

#: Shortest utterance chosen to host a backchannel, in seconds.
_BACKCHANNEL_HOST_MIN_S = 3.0
#: Longest utterance chosen where no event needs room (keeps dialogues within 25 s), in seconds.
_FILLER_MAX_S = 2.5
#: Bounds of a trimmed clip's seconds per character over the bank's sentences and voices
#: (measured 0.045-0.091); only used to skip hopeless candidates before synthesizing them.
_SECONDS_PER_CHAR = (0.040, 0.10)
#: An interrupted utterance is cut at least this long before its natural end, in seconds.
_CUT_MARGIN_S = 0.3

_NAME = re.compile(r"^syn\d{4}(\.wav|\.json|\.truth\.json)$")


@dataclass(frozen=True)
class SyntheticParams:
    """Every knob of the generator. Ranges are ``(low, high)``, drawn uniformly; times in seconds.

    Counts per dialogue are drawn from ``*_count_probs`` (entry ``k`` = probability of ``k``
    events, after ``*_count_min``); a plan that does not fit ``duration_range_s`` or places no
    pause or backchannel is redrawn (deterministically).
    """

    #: Number of dialogues rendered.
    n_dialogues: int = 48
    #: Accepted dialogue duration, lead-in and tail included.
    duration_range_s: tuple[float, float] = (12.0, 25.0)
    #: Silence before the first utterance.
    lead_in_range_s: tuple[float, float] = (0.3, 0.8)
    #: Silence after the last utterance.
    tail_range_s: tuple[float, float] = (0.5, 1.0)
    #: Gap between two utterances of one turn that is not a pause.
    short_gap_range_s: tuple[float, float] = (0.05, 0.2)
    #: Labelled in-turn pause.
    pause_range_s: tuple[float, float] = (0.7, 2.5)
    #: Gap of a non-overlapping turn shift (onset - end).
    shift_gap_range_s: tuple[float, float] = (0.15, 1.2)
    #: How early the next speaker starts in an overlapping turn shift (end - onset).
    overlap_range_s: tuple[float, float] = (0.1, 0.3)
    #: Probability that a turn shift overlaps (never right after an interruption).
    overlap_prob: float = 0.25
    #: Time from barge-in onset until the interrupted speaker's audio stops.
    stop_delay_range_s: tuple[float, float] = (0.5, 1.2)
    #: Talk time of the interrupted utterance before the barge-in: at least the low end.
    interruption_talk_range_s: tuple[float, float] = (1.5, 2.5)
    #: Probability that an interrupting turn has a second sentence after its opener.
    interruption_second_sentence_prob: float = 0.5
    #: Turn shifts per dialogue: minimum, then probabilities of min, min+1, ...
    shift_count_min: int = 2
    shift_count_probs: tuple[float, ...] = (0.6, 0.3, 0.1)
    #: Pauses per dialogue (planned; each needs one extra utterance).
    pause_count_min: int = 1
    pause_count_probs: tuple[float, ...] = (0.7, 0.25, 0.05)
    #: Backchannels per dialogue (planned; one that finds no legal slot is dropped).
    backchannel_count_min: int = 1
    backchannel_count_probs: tuple[float, ...] = (0.7, 0.25, 0.05)
    #: Interruptions per dialogue.
    interruption_count_min: int = 0
    interruption_count_probs: tuple[float, ...] = (0.15, 0.5, 0.35)
    #: A backchannel starts and ends at least this far inside the holder's utterance.
    backchannel_inset_s: float = 0.8
    #: No other event, and no other speech of the backchanneler, this close to a backchannel.
    backchannel_clearance_s: float = 1.5
    #: No other event this close to an interruption (its reply shift excepted).
    interruption_clearance_s: float = 1.0
    #: Fade-out of the interrupted speaker's audio, ending at ``stop_s``.
    cut_fade_s: float = 0.02
    #: Fade in/out at every clip edge (avoids clicks; far below any VAD's resolution).
    clip_fade_s: float = 0.005
    #: Per-speaker level change drawn per dialogue, in dB.
    speaker_gain_range_db: tuple[float, float] = (-4.0, 0.0)
    #: RMS level of the white noise under both channels, in dB full scale.
    noise_dbfs: float = -60.0
    #: Redraws of one dialogue's plan before giving up.
    max_attempts: int = 500

    def __post_init__(self) -> None:
        if self.n_dialogues < 1:
            raise ValueError(f"n_dialogues must be >= 1, got {self.n_dialogues}")
        for name in (
            "duration_range_s", "lead_in_range_s", "tail_range_s", "short_gap_range_s",
            "pause_range_s", "shift_gap_range_s", "overlap_range_s", "stop_delay_range_s",
            "interruption_talk_range_s", "speaker_gain_range_db",
        ):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"{name}: low {low} is above high {high}")
        for name in ("shift_count_probs", "pause_count_probs", "backchannel_count_probs",
                     "interruption_count_probs"):
            probs = getattr(self, name)
            if not probs or abs(sum(probs) - 1.0) > 1e-6 or min(probs) < 0:
                raise ValueError(f"{name} must be non-negative probabilities summing to 1, got {probs}")


# --------------------------------------------------------------------------------------------
# Public entry point


def generate_corpus(
    out_dir: str | Path,
    seed: int = 0,
    params: SyntheticParams = SyntheticParams(),
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Render the dialogues into ``out_dir``; returns the wav paths. Reuses an up-to-date folder.

    A folder whose stamp (:data:`STAMP_NAME`) matches this generator version, ``seed`` and
    ``params`` and whose files are all present is returned as is. Otherwise earlier ``syn*``
    files are removed and everything is rendered again. ``progress(done, total)`` is called after
    each dialogue. Raises :class:`~duplexgym.corpora.synthetic.tts.TTSUnavailableError` when
    ``flite`` is not installed.
    """
    out = Path(out_dir)
    names = [f"syn{i:04d}" for i in range(params.n_dialogues)]
    wavs = [out / f"{n}.wav" for n in names]
    stamp = {"generator_version": GENERATOR_VERSION, "seed": int(seed), "params": asdict(params)}
    stamp_text = json.dumps(stamp, sort_keys=True, indent=1) + "\n"
    stamp_path = out / STAMP_NAME
    if _up_to_date(stamp_path, stamp_text, out, names):
        return wavs

    flite_path()  # fail before touching the folder when flite is missing
    out.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)
    for old in out.iterdir():
        if _NAME.match(old.name):
            old.unlink()
    # Dialogues are independent (own RNG); rendering two at a time overlaps the flite runs.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        jobs = [pool.submit(_write_dialogue, out, name, seed, i, params) for i, name in enumerate(names)]
        for done, job in enumerate(jobs, start=1):
            job.result()
            if progress is not None:
                progress(done, len(names))
    tmp = stamp_path.with_suffix(".tmp")
    tmp.write_text(stamp_text, encoding="utf-8")
    os.replace(tmp, stamp_path)
    return wavs


def _up_to_date(stamp_path: Path, stamp_text: str, out: Path, names: list[str]) -> bool:
    if not stamp_path.is_file() or stamp_path.read_text(encoding="utf-8") != stamp_text:
        return False
    return all(
        (out / f"{n}{suffix}").is_file() for n in names for suffix in (".wav", ".json", TRUTH_SUFFIX)
    )


def _write_dialogue(out: Path, name: str, seed: int, index: int, params: SyntheticParams) -> None:
    tracks, words, truth = render_dialogue(seed, index, params)
    write_audio(out / f"{name}.wav", tracks.T, SAMPLE_RATE, subtype="PCM_16")
    (out / f"{name}.json").write_text(json.dumps({"words": words}, indent=1) + "\n", encoding="utf-8")
    (out / f"{name}{TRUTH_SUFFIX}").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# One dialogue


@dataclass
class _Clip:
    """One placed clip of one speaker. Positions in 24 kHz samples."""

    speaker: str
    text: str
    audio: np.ndarray
    start: int
    stop: int | None = None  # absolute sample where an interrupted clip is cut; None = whole clip

    @property
    def end(self) -> int:
        return self.start + len(self.audio) if self.stop is None else self.stop


@dataclass
class _Turn:
    speaker: str
    n_pauses: int = 0
    wants_backchannel: bool = False
    interrupting: bool = False
    interrupted: bool = False
    interruption_event: dict | None = None  # the event this (interrupting) turn opened
    utterances: list[_Clip] = field(default_factory=list)


class _Redraw(Exception):
    """The drawn plan cannot be laid out within the rules; draw another."""


def render_dialogue(seed: int, index: int, params: SyntheticParams) -> tuple[np.ndarray, list[dict], dict]:
    """Plan and render dialogue ``index``: ``(tracks [2, N] float32 at 24 kHz, words, truth)``."""
    rng = np.random.default_rng([seed, index])
    name = f"syn{index:04d}"
    pair = VOICE_PAIRS[int(rng.integers(len(VOICE_PAIRS)))]
    if rng.random() < 0.5:
        pair = pair[::-1]
    voices = dict(zip(SPEAKERS, pair))
    gains = {s: 10 ** (rng.uniform(*params.speaker_gain_range_db) / 20) for s in SPEAKERS}
    for _ in range(params.max_attempts):
        try:
            clips, events, n_samples = _plan(rng, voices, params)
        except _Redraw:
            continue
        duration_s = n_samples / SAMPLE_RATE
        truth = {"dialogue": name, "duration_s": _t(n_samples), "events": events, "speech": speech_of(clips)}
        fits = params.duration_range_s[0] <= duration_s <= params.duration_range_s[1]
        if fits and not check_truth(truth, params):
            break
    else:
        raise RuntimeError(
            f"{name}: no plan fitting the parameters after {params.max_attempts} attempts; "
            "widen duration_range_s or lower the event counts"
        )
    tracks = np.zeros((2, n_samples), dtype=np.float32)
    for clip in clips:
        _mix(tracks[SPEAKERS.index(clip.speaker)], clip, gains[clip.speaker], params)
    noise_rms = 10 ** (params.noise_dbfs / 20)
    tracks += rng.normal(0.0, noise_rms, size=tracks.shape).astype(np.float32)
    np.clip(tracks, -1.0, 1.0, out=tracks)
    return tracks, _words(clips), truth


def _plan(rng: np.random.Generator, voices: dict[str, str], p: SyntheticParams):
    """Draw one dialogue plan: ``(clips, events, n_samples)``, or raise :class:`_Redraw`.

    1. Draw the event counts and the order of the floor transitions (shift / interruption).
    2. Give each turn its utterances: interrupting turns an opener (+ maybe a sentence); other
       turns one sentence, plus one per pause, plus a long host sentence if a backchannel is
       wanted there; an interrupted turn ends with a sentence long enough to be cut.
    3. Lay the turns out in time (gaps, pauses, shifts, barge-ins and cuts), then put the
       backchannels into legal slots of their turns.
    """
    def count(low: int, probs: tuple[float, ...]) -> int:
        return low + int(rng.choice(len(probs), p=probs))

    n_shift = count(p.shift_count_min, p.shift_count_probs)
    n_int = count(p.interruption_count_min, p.interruption_count_probs)
    n_pause = count(p.pause_count_min, p.pause_count_probs)
    n_bc = count(p.backchannel_count_min, p.backchannel_count_probs)
    n_int = min(n_int, n_shift + 1)  # interruptions never follow one another
    kinds = _transition_order(rng, n_shift, n_int)

    speaker = SPEAKERS[int(rng.integers(2))]
    turns = [_Turn(speaker)]
    for kind in kinds:
        turns[-1].interrupted = kind == "interrupt"
        speaker = other_speaker(speaker)
        turns.append(_Turn(speaker, interrupting=kind == "interrupt"))
    plain = [i for i, t in enumerate(turns) if not t.interrupting]
    for i in rng.choice(plain, size=n_pause, replace=True):
        turns[i].n_pauses = min(2, turns[i].n_pauses + 1)
    for i in rng.choice(plain, size=min(n_bc, len(plain)), replace=False):
        turns[i].wants_backchannel = True

    sentences = {s: list(rng.permutation(len(phrases.SENTENCES))) for s in SPEAKERS}

    def sentence(spk: str, min_s: float = 0.0, max_s: float = np.inf) -> tuple[str, np.ndarray]:
        pool = sentences[spk]
        for k, idx in enumerate(pool):
            text = phrases.SENTENCES[idx]
            if not _may_fit(text, min_s, max_s):
                continue  # clearly too short or too long: skip without running flite
            audio = _clip24(voices[spk], text)
            if min_s <= len(audio) / SAMPLE_RATE <= max_s:
                del pool[k]
                return text, audio
        raise _Redraw

    def sec(x: float) -> int:
        return int(round(x * SAMPLE_RATE))

    clips: list[_Clip] = []
    events: list[dict] = []
    t = sec(rng.uniform(*p.lead_in_range_s))
    for ti, turn in enumerate(turns):
        spk = turn.speaker
        if turn.interrupting:
            opener = phrases.INTERRUPTIONS[int(rng.integers(len(phrases.INTERRUPTIONS)))]
            texts_audio = [(opener, _clip24(voices[spk], opener))]
            if rng.random() < p.interruption_second_sentence_prob:
                texts_audio.append(sentence(spk, 0.0, _FILLER_MAX_S))
            gaps = ["short"] * (len(texts_audio) - 1)
        else:
            n_utt = 1 + turn.n_pauses + (1 if turn.wants_backchannel else 0)
            gaps = ["pause"] * turn.n_pauses + ["short"] * (n_utt - 1 - turn.n_pauses)
            gaps = [gaps[k] for k in rng.permutation(len(gaps))]
            host = int(rng.integers(n_utt)) if turn.wants_backchannel else -1
            texts_audio = []
            for k in range(n_utt):
                min_s, max_s = 0.0, _FILLER_MAX_S
                if k == host:
                    min_s, max_s = _BACKCHANNEL_HOST_MIN_S, np.inf
                if k == n_utt - 1 and turn.interrupted:
                    shortest = p.interruption_talk_range_s[0] + p.stop_delay_range_s[0] + _CUT_MARGIN_S
                    min_s = max(min_s, shortest + 0.2)
                    max_s = np.inf
                texts_audio.append(sentence(spk, min_s, max_s))
        for k, (text, audio) in enumerate(texts_audio):
            if k > 0:
                gap_kind = gaps[k - 1]
                gap = sec(rng.uniform(*(p.pause_range_s if gap_kind == "pause" else p.short_gap_range_s)))
                prev_end = turn.utterances[-1].end
                t = prev_end + gap
                if gap_kind == "pause":
                    events.append({"type": "pause", "speaker": spk, "start_s": _t(prev_end), "end_s": _t(t)})
            clip = _Clip(spk, text, audio, t)
            turn.utterances.append(clip)
            clips.append(clip)
        if turn.interrupting:  # never itself interrupted: its last utterance plays out
            turn.interruption_event["end_s"] = _t(turn.utterances[-1].end)
        if ti + 1 == len(turns):
            break
        last = turn.utterances[-1]
        nxt = turns[ti + 1]
        if nxt.interrupting:
            dur = len(last.audio) / SAMPLE_RATE
            delay = rng.uniform(*p.stop_delay_range_s)
            delay = min(delay, dur - _CUT_MARGIN_S - p.interruption_talk_range_s[0])
            talk_hi = min(p.interruption_talk_range_s[1], dur - _CUT_MARGIN_S - delay)
            onset = last.start + sec(rng.uniform(p.interruption_talk_range_s[0], talk_hi))
            stop = _cut_point(last, onset, delay, p)
            last.stop = stop
            t = onset
            nxt.interruption_event = {"type": "interruption", "speaker": nxt.speaker, "interrupted": spk,
                                      "onset_s": _t(onset), "stop_s": _t(stop)}  # end_s: when laid out
            events.append(nxt.interruption_event)
        else:
            end = last.end
            if not turn.interrupting and rng.random() < p.overlap_prob:
                onset = end - sec(rng.uniform(*p.overlap_range_s))
            else:
                onset = end + sec(rng.uniform(*p.shift_gap_range_s))
            events.append({"type": "turn", "from": spk, "to": nxt.speaker,
                           "end_s": _t(end), "onset_s": _t(onset)})
            t = onset
    n_samples = max(c.end for c in clips) + sec(rng.uniform(*p.tail_range_s))

    for turn in turns:
        if turn.wants_backchannel:
            _place_backchannel(rng, turn, clips, events, voices, p)
    if not any(e["type"] == "pause" for e in events) or not any(e["type"] == "backchannel" for e in events):
        raise _Redraw
    events.sort(key=lambda e: (_anchor(e), e["type"]))
    return clips, events, n_samples


def _may_fit(text: str, min_s: float, max_s: float) -> bool:
    """Whether ``text``'s clip could last ``min_s``-``max_s`` for any voice (by character count)."""
    return _SECONDS_PER_CHAR[0] * len(text) <= max_s and _SECONDS_PER_CHAR[1] * len(text) >= min_s


def _transition_order(rng: np.random.Generator, n_shift: int, n_int: int) -> list[str]:
    """Shuffle ``n_shift`` shifts and ``n_int`` interruptions; an interruption never follows one."""
    while True:
        kinds = ["shift"] * n_shift + ["interrupt"] * n_int
        kinds = [kinds[k] for k in rng.permutation(len(kinds))]
        if all(not (a == b == "interrupt") for a, b in zip(kinds, kinds[1:])):
            return kinds


def _cut_point(clip: _Clip, onset: int, delay_s: float, p: SyntheticParams) -> int:
    """Where to cut an interrupted clip: ``onset + delay``, moved (within the allowed delay range)
    to the nearest point where the last 60 ms before the cut are loud speech, so that the cut is
    the true end of speech and not a weak consonant or a short in-word silence."""
    frame = int(round(FRAME_S * SAMPLE_RATE))
    db = frame_rms_db(clip.audio, frame)
    lo, hi = p.stop_delay_range_s
    want = onset + int(round(delay_s * SAMPLE_RATE))
    best = None
    for k in range(len(db)):
        cut = clip.start + (k + 1) * frame  # cut at the end of frame k
        delay = (cut - onset) / SAMPLE_RATE
        if not lo <= delay <= hi or cut > clip.start + len(clip.audio) - int(_CUT_MARGIN_S * SAMPLE_RATE):
            continue
        if k >= 5 and np.all(db[k - 5 : k + 1] > -20.0):
            if best is None or abs(cut - want) < abs(best - want):
                best = cut
    if best is None:
        raise _Redraw
    return best


def _place_backchannel(rng, turn: _Turn, clips, events, voices, p: SyntheticParams) -> None:
    """Put one backchannel of the listener inside one of ``turn``'s utterances, if a legal slot exists."""
    listener = other_speaker(turn.speaker)
    low, high = BACKCHANNEL_CLIP_RANGE_S
    usable = [t for t in phrases.BACKCHANNELS if low <= len(_clip24(voices[listener], t)) / SAMPLE_RATE <= high]
    text = usable[int(rng.integers(len(usable)))]
    audio = _clip24(voices[listener], text)
    length = len(audio)
    inset = int(round(p.backchannel_inset_s * SAMPLE_RATE))
    clear = int(round(p.backchannel_clearance_s * SAMPLE_RATE))
    points = [int(round(v * SAMPLE_RATE)) for e in events for k, v in e.items() if k.endswith("_s")]
    listener_speech = [(c.start, c.end) for c in clips if c.speaker == listener]
    step = int(round(FRAME_S * SAMPLE_RATE))
    slots = []
    for utt in turn.utterances:
        for start in range(utt.start + inset, utt.end - inset - length + 1, step):
            end = start + length
            if any(start - clear < x < end + clear for x in points):
                continue
            if any(start - clear < b and a < end + clear for a, b in listener_speech):
                continue
            slots.append(start)
    if not slots:
        return
    start = slots[int(rng.integers(len(slots)))]
    clips.append(_Clip(listener, text, audio, start))
    events.append({"type": "backchannel", "speaker": listener, "holder": turn.speaker,
                   "start_s": _t(start), "end_s": _t(start + length), "text": text})


# --------------------------------------------------------------------------------------------
# Label rules


#: The time field events are sorted by, per event type.
ANCHOR_KEY = {"pause": "start_s", "turn": "end_s", "backchannel": "start_s", "interruption": "onset_s"}


def _anchor(event: dict) -> float:
    return event[ANCHOR_KEY[event["type"]]]


def check_truth(truth: dict, params: SyntheticParams = SyntheticParams()) -> list[str]:
    """The rules a truth file must satisfy (see the module docstring); returns the broken ones."""
    p = params
    tol = 2e-4
    problems: list[str] = []
    events = truth["events"]
    anchors = [_anchor(e) for e in events]
    if anchors != sorted(anchors):
        problems.append("events are not sorted by anchor time")
    times = [(i, k, v) for i, e in enumerate(events) for k, v in e.items() if k.endswith("_s")]
    for i, key, value in times:
        if not 0.0 <= value <= truth["duration_s"]:
            problems.append(f"event {i}: {key} {value} outside [0, {truth['duration_s']}]")

    def inside(value: float, rng: tuple[float, float]) -> bool:
        return rng[0] - tol <= value <= rng[1] + tol

    for i, e in enumerate(events):
        kind = e["type"]
        if kind == "pause" and not inside(e["end_s"] - e["start_s"], p.pause_range_s):
            problems.append(f"event {i}: pause length {e['end_s'] - e['start_s']:.3f} s")
        elif kind == "turn":
            gap = e["onset_s"] - e["end_s"]
            if not (inside(gap, p.shift_gap_range_s) or inside(-gap, p.overlap_range_s)):
                problems.append(f"event {i}: turn gap {gap:.3f} s")
        elif kind == "backchannel":
            if not inside(e["end_s"] - e["start_s"], BACKCHANNEL_CLIP_RANGE_S):
                problems.append(f"event {i}: backchannel length {e['end_s'] - e['start_s']:.3f} s")
            lo, hi = e["start_s"] - p.backchannel_clearance_s, e["end_s"] + p.backchannel_clearance_s
            for j, key, value in times:
                if j != i and lo + tol < value < hi - tol:
                    problems.append(f"event {i}: backchannel within clearance of event {j} {key}")
        elif kind == "interruption":
            if not inside(e["stop_s"] - e["onset_s"], p.stop_delay_range_s):
                problems.append(f"event {i}: stop delay {e['stop_s'] - e['onset_s']:.3f} s")
            if not e["end_s"] > e["stop_s"]:
                problems.append(f"event {i}: interrupting turn ends before the interrupted speaker stops")
            lo = e["onset_s"] - p.interruption_clearance_s
            hi = e["end_s"] + p.interruption_clearance_s
            for j, key, value in times:
                other = events[j]
                reply = (other["type"] == "turn" and other["from"] == e["speaker"]
                         and abs(other["end_s"] - e["end_s"]) < tol)
                if j != i and not reply and lo + tol < value < hi - tol:
                    problems.append(f"event {i}: interruption within clearance of event {j} {key}")
    return problems


# --------------------------------------------------------------------------------------------
# Audio and transcript


_CLIPS24: dict[tuple[str, str], np.ndarray] = {}


def _clip24(voice: str, text: str) -> np.ndarray:
    """The trimmed TTS clip resampled to 24 kHz (soxr_hq), memoised; read-only."""
    key = (voice, text)
    clip = _CLIPS24.get(key)
    if clip is None:
        import librosa  # deferred: librosa's import costs ~1 s

        audio16 = synthesize(voice, text)
        clip = librosa.resample(
            np.asarray(audio16), orig_sr=TTS_RATE, target_sr=SAMPLE_RATE, res_type="soxr_hq"
        )
        clip = np.ascontiguousarray(clip, dtype=np.float32)
        clip.setflags(write=False)
        _CLIPS24[key] = clip
    return clip


def _mix(track: np.ndarray, clip: _Clip, gain: float, p: SyntheticParams) -> None:
    audio = np.array(clip.audio[: clip.end - clip.start], dtype=np.float32) * gain
    fade = int(round(p.clip_fade_s * SAMPLE_RATE))
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade, dtype=np.float32)))
    audio[:fade] *= ramp
    if clip.stop is None:
        audio[-fade:] *= ramp[::-1]
    else:
        cut = int(round(p.cut_fade_s * SAMPLE_RATE))
        audio[-cut:] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, cut, dtype=np.float32))
    track[clip.start : clip.end] += audio


def speech_of(clips: list[_Clip]) -> dict[str, list[list[float]]]:
    """Each speaker's exact speech: ``{"A": [[start_s, end_s], ...], "B": ...}``, one span per
    clip (trimmed, cut where the speaker is interrupted), sorted."""
    return {s: [[_t(c.start), _t(c.end)] for c in sorted(clips, key=lambda c: c.start) if c.speaker == s]
            for s in SPEAKERS}


def _words(clips: list[_Clip]) -> list[dict]:
    """Approximate word times: each clip's duration shared in proportion to word characters."""
    words = []
    for clip in clips:
        tokens = clip.text.split()
        weights = np.array([len(w) + 1 for w in tokens], dtype=np.float64)
        edges = clip.start + np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * len(clip.audio)
        for w, a, b in zip(tokens, edges[:-1], edges[1:]):
            if a >= clip.end:
                break
            words.append({"speaker": clip.speaker, "start": _t(a), "end": _t(min(b, clip.end)), "word": w})
    words.sort(key=lambda w: (w["start"], w["speaker"]))
    return words


def _t(samples: float) -> float:
    """24 kHz sample position -> seconds rounded to 1e-4."""
    return round(float(samples) / SAMPLE_RATE, TIME_DECIMALS) + 0.0
