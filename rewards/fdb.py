"""Full-Duplex-Bench v1 metrics as small pure functions (numpy, scipy and the standard library only).

Every episode reports these unchanged, so our numbers compare with published ones. The
definitions were read from the official scorers (``DanielLin94144/Full-Duplex-Bench``, commit
``d7336bd``; the v1 code lives under ``v1_v1.5/``, older commits had it at the top level):

- ``v1_v1.5/get_transcript/asr.py`` -- the word timings every scorer reads (``output.json``:
  parakeet-tdt-0.6b-v2 words of ``output.wav``; older outputs came from CrisperWhisper).
  Task ``default`` transcribes the **whole** output; task ``user_interruption`` first **crops**
  the output at sample ``int(interruption_end * sr)`` and adds ``interruption_end`` to every
  timestamp, so only speech after the interruption end exists for that scorer.
- ``v1_v1.5/evaluation/eval_pause_handling.py``, ``eval_smooth_turn_taking.py``,
  ``eval_user_interruption.py``, ``eval_backchannel.py``, ``evaluate.py`` (dispatch) and
  ``icc_gt_distribution.json`` (the human backchannel histograms).
- silero-vad 6.2.3 ``get_speech_timestamps`` defaults (``eval_backchannel.py`` passes none).

What the scripts do, per task
-----------------------------
**Takeover (TOR) rule**, shared by pause, turn and interruption, on the ASR words
``w_1..w_n`` (in transcript order): no words -> 0; else ``duration = end(w_n) - start(w_1)``;
TOR = 0 if ``duration < 1.0`` (strict) **and** ``n <= 3``, else 1. So exactly 1.0 s is a
takeover, 3 words in 0.9 s is not, 4 words in 0.5 s is. See :func:`takeover`.

**Pause handling** (TOR, lower is better): the rule on the words of the whole output.
Dataset number: mean TOR over samples.

**Smooth turn-taking** (TOR higher is better, latency lower): the rule on the words of the
*whole* output -- words spoken before the turn end count too. ``latency = start(w_1) -
turn_end`` where ``turn_end`` is ``turn_taking.json[0]["timestamp"][0]``; a negative latency
(the model spoke before the turn end, e.g. a backchannel during the user's turn) is recorded as 0.
Latency exists only for TOR = 1 samples. Dataset numbers: mean TOR over all samples; mean latency
over TOR = 1 samples.

**User interruption** (TOR higher, relevance higher, latency lower): the rule on the words of the
output *after the interruption end* (``interrupt.json[0]["timestamp"][1]``; ASR on the cropped
audio, see above). ``latency = start(w_1) - interruption_end`` (>= 0 by construction; negatives
would be recorded as 0). Only for TOR = 1 samples, an LLM (gpt-4-turbo, seed 0) rates the
relevance 0..5 of the response text to the interrupting turn given the context turn; samples whose
reply does not parse are re-asked. Dataset numbers: mean TOR over all samples; mean latency and
mean relevance over TOR = 1 samples. (The script appends each rating twice; the mean is
unchanged.) Here ``relevance`` is not computed: an LLM judge fills it in later; :func:`aggregate`
averages it when present.

**Backchannel** (TOR lower, frequency higher, JSD lower): silero VAD on ``output.wav`` with
``return_seconds=True`` and defaults (:data:`FDB_VAD`): segment times are **rounded to 0.1 s**
(``time_resolution=1``), and the script passes no sample rate, so silero assumes 16 kHz.
For each VAD segment in time order:

1. ``end - start > 3.0`` -> TOR = 1 and the scan **stops** (later segments are never looked at);
2. else the segment's words are the ASR words (whole output) overlapping it: word ``[a, b]`` of
   segment ``[s, e]`` counts if ``s <= a and b <= e``, or ``a <= e < b``, or ``a <= s < b``;
   ``> 3`` words -> TOR = 1; else duration ``< 1.0`` and ``<= 2`` words -> TOR = 0; else TOR = 1;
3. the segment is then appended to the "backchannel" list **whatever its class**.

Odd, reproduced here: TOR is overwritten by every segment, so the sample's TOR is that of the
*last* segment unless a > 3 s segment stopped the scan (a 5-word segment followed by an "mhm"
gives TOR = 0); every segment up to the first > 3 s one counts as a backchannel for frequency
and JSD, even one of 2.5 s or with 5 words; and durations are float differences of the rounded
times, so a nominal 1.0 s segment such as 0.4..1.4 (0.9999999999999999 s) can be a backchannel.
``frequency = n_backchannels / length of output.wav in s``. JSD: histogram of ``int(len_s / 0.2) + 1`` bins, each backchannel adds 1 to bins
``int(start / 0.2) .. int(end / 0.2)`` inclusive (Python float division and truncation, so 0.6 s
falls in bin 2, not 3; bins past the end are dropped), ``+ 1e-10`` to every bin, normalised to sum
1. The human histogram (``icc_gt_distribution.json``, built the same way from all ICC listeners'
backchannel spans: its smallest entries are exactly ``1e-10 / sum(counts)``) is linearly
resampled to the model's bin count, then ``scipy.spatial.distance.jensenshannon(model, human)``:
the Jensen-Shannon **distance** with the natural log, so it is at most ``sqrt(ln 2) ~= 0.833``
for disjoint histograms. A sample with no backchannels gets JSD = 1 (worse than any real value).
Dataset numbers: mean TOR, mean frequency, mean JSD over all samples.

What the metrics read (the benchmark's files, and ours)
-------------------------------------------------------
Every scorer reads files: ``output.json`` (ASR word chunks of ``output.wav``, cropped at the
interruption end for that task) and, for backchannels, silero's segments of ``output.wav``. An
episode's metrics are computed from :class:`FdbOutput`: the same two things for the agent's output
as ``duplexgym eval --export`` writes them (``output.wav``: the agent's audio at 16 kHz PCM_16, see
:func:`output_duration_s`; ``output.json``: :meth:`FdbOutput.chunks`), so the official scripts run
on an export give every per-sample value ours give. The chunks come from the reward spec's
``metrics.source`` (:class:`duplexgym.rewards.activity.MetricsParams`):

- ``vad`` (default; no ASR): the activity reader's speech stands in for the words. With the
  ``vad`` reader each silero speech span is one chunk (text ``[speech]``): takeover and
  backchannel rules then count spans where the benchmark counts words, and span durations run
  ~60 ms longer than word runs (30 ms VAD padding on each side). With the ``text`` reader the
  chunks are the text stream's words (label ``text``).
- ``asr``: faster-whisper words of the very samples of ``output.wav``, cropped exactly as the
  benchmark's ``asr.py`` crops (interruption: from sample ``int(end * 16000)``, times plus
  ``end``), i.e. the benchmark's own procedure with whisper-base in place of parakeet. Whisper's
  word starts run early: measured on the synthetic corpus (``benchmarks/asr_onset.py``), see
  :func:`refine_first_onset` for the figures and the optional onset refinement.

The backchannel scorer's segments are silero's ``get_speech_timestamps`` (defaults,
``return_seconds=True``) on the 16 kHz PCM_16 output, for both sources (text reader: the text
spans). The human backchannel reference is the benchmark's: the human listeners' backchannel
**spans** (``icc_gt_distribution.json`` is their histogram), on the same bins as the model's, so
the official resampling is the identity (:func:`jsd_to_histogram` takes an official
``icc_gt_distribution.json`` entry instead). Pause episodes are scored, and exported, up to the
end of the pause metric's window (:mod:`.pause`), so the official scorer sees the same audio.

Without an :class:`FdbOutput` (``AgentSpeech.output`` is None: hand-made speech), the chunks are
``speech.words``, or one chunk per span when ``words=None``; and :func:`takeover` on
``words=None`` (the reward terms' utterance rule) uses the spans without the word condition (no
speech -> 0; duration from the first span start to the last span end; TOR = 0 iff duration <
1.0 s). The interruption cut of such chunks follows the crop: a chunk ending at or before the cut
is dropped, one straddling it starts at the cut (the ASR of the cropped audio hears its tail from
time 0).

Checked once (not in the test suite, which needs no network): the official pause, turn-taking and
backchannel scorers, run on 300 random word/segment sets each (silero and torchaudio stubbed to
return the segments), agree with these functions on every TOR, latency, frequency and JSD
(JSD to 1e-9, including the resampling of a human histogram of another length).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from duplexgym.constants import AXES

# --- the takeover rule (pause, turn, interruption) -------------------------------------------
#: A response shorter than this (first word start to last word end, s) may be no takeover...
TAKEOVER_MIN_DURATION_S = 1.0
#: ... if it has at most this many words.
TAKEOVER_MAX_WORDS = 3

# --- backchannel classification of one VAD segment ---------------------------------------------
#: A segment strictly longer than this (s) is a takeover, and ends the official scan.
BACKCHANNEL_TAKEOVER_DURATION_S = 3.0
#: A segment with strictly more words than this is a takeover.
BACKCHANNEL_TAKEOVER_WORDS = 3
#: A backchannel is strictly shorter than this (s) ...
BACKCHANNEL_MAX_DURATION_S = 1.0
#: ... and has at most this many words.
BACKCHANNEL_MAX_WORDS = 2

# --- backchannel timing histogram (JSD) --------------------------------------------------------
#: Histogram bin width in seconds.
JSD_BIN_S = 0.2
#: Added to every bin before normalising.
JSD_EPSILON = 1e-10
#: JSD of a sample whose output holds no backchannel.
JSD_NO_BACKCHANNEL = 1.0

# --- the VAD the backchannel scorer runs on output.wav -----------------------------------------
#: Sample rate (Hz) silero assumes (the script passes none; output.wav must be at this rate).
FDB_VAD_RATE_HZ = 16_000
#: ``get_speech_timestamps(return_seconds=True)`` rounds segment times to this many decimals.
FDB_VAD_TIME_DECIMALS = 1

# --- output.wav and output.json ----------------------------------------------------------------
#: Rate of ``output.wav`` (the benchmark's inputs are 16 kHz; its backchannel scorer needs it).
OUTPUT_RATE_HZ = FDB_VAD_RATE_HZ
#: ``output.wav`` samples per 80 ms frame.
OUTPUT_FRAME_SAMPLES = 1280
#: The text of a chunk that stands for one speech span (``metrics.source: vad``, no words known).
SPAN_CHUNK_TEXT = "[speech]"


@dataclass(frozen=True)
class FdbVadParams:
    """silero ``get_speech_timestamps`` defaults, as Full-Duplex-Bench's backchannel scorer uses them.

    Field names match :class:`duplexgym.corpora.vad.VadParams`, so
    ``VadParams(**dataclasses.asdict(FDB_VAD))`` gives the benchmark's VAD.
    ``threshold``: speech probability that starts speech; ``neg_threshold``: below it speech ends
    (``None``: ``threshold - 0.15``); ``min_speech_ms``: shorter segments are dropped (ms);
    ``min_silence_ms``: silence that ends a segment (ms); ``speech_pad_ms``: padding on each side (ms).
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30


#: The benchmark's VAD settings.
FDB_VAD = FdbVadParams()

#: Axis names, as everywhere in duplexgym.
TASKS = AXES

#: Segment classes returned by :func:`backchannel_segments`.
SEGMENT_KINDS = ("backchannel", "takeover", "other")


@dataclass(frozen=True)
class AgentSpeech:
    """What the agent said, times in seconds from the start of the episode / output.

    ``spans_s``: speech spans ``((start_s, end_s), ...)`` from a VAD or from the text stream.
    ``words``: timed words ``((start_s, end_s, text), ...)`` when known; ``None`` means the word
    count is unknown (not "no words": use ``()`` for that). Lists are accepted and stored as tuples.
    """

    spans_s: tuple[tuple[float, float], ...]
    words: tuple[tuple[float, float, str], ...] | None = None
    #: How the benchmark's scorers read this output (:class:`FdbOutput`), when the reader knows
    #: it (the agent's audio); None: from ``spans_s`` and ``words`` (:func:`benchmark_output`).
    output: FdbOutput | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        spans = tuple(_interval(x, f"AgentSpeech.spans_s[{i}]") for i, x in enumerate(self.spans_s))
        object.__setattr__(self, "spans_s", spans)
        if self.words is not None:
            words = []
            for i, w in enumerate(self.words):
                if len(w) != 3:
                    raise ValueError(f"AgentSpeech.words[{i}] must be (start_s, end_s, text), got {w!r}")
                start, end = _interval(w[:2], f"AgentSpeech.words[{i}]")
                words.append((start, end, str(w[2])))
            object.__setattr__(self, "words", tuple(words))


def _interval(x, where: str) -> tuple[float, float]:
    """``(start_s, end_s)`` as floats, checked: finite, 0 <= start <= end."""
    try:
        start, end = (float(v) for v in x)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a (start_s, end_s) pair of numbers, got {x!r}") from None
    if not (math.isfinite(start) and math.isfinite(end)) or not 0.0 <= start <= end:
        raise ValueError(f"{where} must satisfy 0 <= start_s <= end_s (finite), got ({start}, {end})")
    return start, end


def _after(items: Iterable[tuple], after_s: float) -> list[tuple]:
    """Items (start, end, ...) sorted by time, cut at ``after_s`` like cropping the audio there.

    ``after_s <= 0`` keeps everything (the uncropped transcript). Otherwise an item ending at or
    before ``after_s`` is dropped and one straddling it starts at ``after_s``.
    """
    items = sorted(items, key=lambda x: (x[0], x[1]))
    if after_s <= 0.0:
        return items
    return [(max(x[0], after_s), *x[1:]) for x in items if x[1] > after_s]


def _material(speech: AgentSpeech, after_s: float) -> tuple[list[tuple], bool]:
    """The words (``True``) or, without words, the spans (``False``) after ``after_s``."""
    if speech.words is not None:
        return _after(speech.words, after_s), True
    return _after(speech.spans_s, after_s), False


Chunk = tuple[float, float, str]


def output_duration_s(n_frames: int) -> float:
    """Length in seconds of an episode's ``output.wav`` (``n_frames * 1280`` samples at 16 kHz), the
    float the scorers compute from the file: the backchannel frequency's denominator and histogram range."""
    return n_frames * OUTPUT_FRAME_SAMPLES / OUTPUT_RATE_HZ


def crop_samples(lo_s: float, hi_s: float | None, n_samples: int) -> tuple[int, int]:
    """The samples ``[i0, i1)`` of a 16 kHz ``output.wav`` of ``n_samples`` that a window
    ``[lo_s, hi_s)`` keeps: ``i0 = int(lo_s * 16000)`` (the official ``asr.py``'s interruption
    crop), ``i1 = round(hi_s * 16000)`` (the end of the pause window, where the export cuts pause
    episodes; ``None``: the end), both clamped to ``[0, n_samples]``."""
    i0 = min(n_samples, max(0, int(lo_s * OUTPUT_RATE_HZ)))
    i1 = n_samples if hi_s is None else min(n_samples, max(0, round(hi_s * OUTPUT_RATE_HZ)))
    return i0, max(i0, i1)


class FdbOutput:
    """One episode's output as the benchmark's scorers read it (module docstring): the
    ``output.json`` chunks of a window of ``output.wav`` (:meth:`chunks`), silero's segments of it
    (:meth:`segments`), its length (``duration_s``) and the label of where the chunks come from
    (``source``: ``"vad"``, ``"text"`` or ``"asr"``).

    This base class reads them from an :class:`AgentSpeech` alone: chunks are its words, or one
    :data:`SPAN_CHUNK_TEXT` chunk per span when ``words=None``; segments are its spans.
    :class:`duplexgym.rewards.activity.AudioOutput` reads the agent's audio instead (silero on the
    16 kHz PCM_16 output, ASR words). ``onset_refinement``: turn and interruption also report the
    latency of :func:`refine_first_onset` (``fdb_latency_refined_s``).
    """

    def __init__(self, speech: AgentSpeech, duration_s: float, source: str | None = None,
                 onset_refinement: bool = False):
        if not duration_s > 0.0:
            raise ValueError(f"FdbOutput: duration_s must be > 0 (the output length in s), got {duration_s}")
        self.speech = speech
        self.duration_s = float(duration_s)
        self.source = source or ("vad" if speech.words is None else "text")
        self.onset_refinement = bool(onset_refinement)

    def chunks(self, lo_s: float = 0.0, hi_s: float | None = None) -> tuple[Chunk, ...]:
        """The ``output.json`` chunks ``(start_s, end_s, text)`` of the output cropped to
        ``[lo_s, hi_s)``, in episode seconds and time order: a chunk ending at or before ``lo_s``
        is dropped, one straddling it starts at ``lo_s``; one starting at or after ``hi_s`` is
        dropped, one straddling it ends at ``hi_s`` (what the cropped audio holds)."""
        if self.speech.words is not None:
            items = list(self.speech.words)
        else:
            items = [(a, b, SPAN_CHUNK_TEXT) for a, b in self.speech.spans_s]
        items = _after(items, lo_s)
        if hi_s is not None:
            items = [(a, min(b, hi_s), text) for a, b, text in items if a < hi_s]
        return tuple(items)

    def segments(self) -> tuple[tuple[float, float], ...]:
        """silero's speech segments of ``output.wav`` as the backchannel scorer gets them (s)."""
        return tuple(sorted(self.speech.spans_s))

    def onsets(self) -> tuple[float, ...]:
        """Speech onsets (s) for :func:`refine_first_onset`: the starts of the speech spans."""
        return tuple(sorted(a for a, _ in self.speech.spans_s))


def benchmark_output(speech: AgentSpeech, n_frames: int) -> FdbOutput:
    """``speech.output``, or an :class:`FdbOutput` of ``speech`` itself for an episode of ``n_frames``."""
    return speech.output if speech.output is not None else FdbOutput(speech, output_duration_s(n_frames))


def chunk_takeover(chunks: Sequence[tuple]) -> int:
    """The takeover rule on ``output.json`` chunks in file order: none -> 0; else 0 if
    ``end(last) - start(first) < TAKEOVER_MIN_DURATION_S`` and there are at most
    ``TAKEOVER_MAX_WORDS`` chunks, else 1."""
    if not chunks:
        return 0
    duration_s = chunks[-1][1] - chunks[0][0]
    return 0 if duration_s < TAKEOVER_MIN_DURATION_S and len(chunks) <= TAKEOVER_MAX_WORDS else 1


def tor_and_latency(chunks: Sequence[tuple], event_s: float) -> dict:
    """Turn-taking and user interruption on the chunks their scorer reads (whole output; after
    the interruption end): ``{"tor": 0|1, "latency_s": start(first) - event_s, negatives recorded
    as 0.0, or None when tor == 0}``."""
    tor = chunk_takeover(chunks)
    return {"tor": tor, "latency_s": max(0.0, chunks[0][0] - event_s) if tor else None}


def fdb_latency_metrics(out: FdbOutput, event_s: float, after_s: float = 0.0) -> dict:
    """The ``fdb_*`` metrics of a turn-taking (``after_s = 0``: the whole output) or interruption
    (``after_s`` = the interruption end) episode from ``out``'s chunks after ``after_s``:
    ``fdb_tor``, ``fdb_latency_s`` (:func:`tor_and_latency` from ``event_s``), ``fdb_source``,
    ``fdb_chunks`` (``[start_s, end_s, text]``: what ``output.json`` holds) and, when
    ``out.onset_refinement``, ``fdb_latency_refined_s`` (the latency of
    :func:`refine_first_onset`'s first start; the TOR stays the benchmark's)."""
    chunks = out.chunks(after_s, None)
    m = tor_and_latency(chunks, event_s)
    result = {"fdb_tor": m["tor"], "fdb_latency_s": m["latency_s"], "fdb_source": out.source,
              "fdb_chunks": [list(c) for c in chunks]}
    if out.onset_refinement:
        refined = refine_first_onset(chunks, out.onsets())
        result["fdb_latency_refined_s"] = max(0.0, refined[0][0] - event_s) if m["tor"] else None
    return result


def refine_first_onset(chunks: Sequence[tuple], onsets: Sequence[float]) -> tuple[Chunk, ...]:
    """``chunks`` with the first one's start snapped to the first speech onset inside it
    (``start <= onset < end``), when there is one; unchanged otherwise.

    Why: faster-whisper (base, int8, its VAD filter on) starts the first word of a reply early.
    On the default synthetic corpus' 114 turn segments (the human reference's answers, exact onset
    labels) its start was a median -0.380 s from the true onset (p10 -0.403, p90 -0.261; -0.441
    without its VAD filter); snapped to silero's onset (the VAD span start, 30 ms padding
    included): median -0.016 s (p10 -0.032, p90 -0.001). ``benchmarks/asr_onset.py`` measures it
    (``benchmarks/results/asr_onset.json``). Word-based latencies therefore come out short by about
    that much; the benchmark's own number is the unrefined one.
    """
    chunks = tuple(chunks)
    if not chunks:
        return chunks
    start, end, text = chunks[0]
    inside = [t for t in onsets if start <= t < end]
    if not inside:
        return chunks
    return ((min(inside), end, text),) + chunks[1:]


def takeover(speech: AgentSpeech, after_s: float = 0.0) -> int:
    """Full-Duplex-Bench's takeover (TOR) of the material after ``after_s`` (s): 0 or 1.

    On words: none -> 0; ``duration = end(last) - start(first)``; 0 if
    ``duration < TAKEOVER_MIN_DURATION_S`` and ``n_words <= TAKEOVER_MAX_WORDS``, else 1.
    With ``words=None``, the same on the spans without the word condition (an approximation:
    four words in 0.5 s are a takeover on words but not on spans). A word or span straddling
    ``after_s`` counts from ``after_s`` on; one ending at or before it is ignored.
    """
    items, are_words = _material(speech, after_s)
    if are_words:
        return chunk_takeover(items)  # official: chunks[-1] end minus chunks[0] start, in time order
    if not items:
        return 0
    return 0 if items[-1][1] - items[0][0] < TAKEOVER_MIN_DURATION_S else 1


def _latency_s(speech: AgentSpeech, event_s: float, after_s: float) -> float:
    """First word (or span) start after ``after_s`` minus ``event_s``, negatives recorded as 0."""
    items, _ = _material(speech, after_s)
    return max(0.0, items[0][0] - event_s)


def pause_metrics(speech: AgentSpeech) -> dict:
    """Pause handling: ``{"tor": 0|1}``, the takeover rule on the whole output (lower is better)."""
    return {"tor": takeover(speech)}


def turn_metrics(speech: AgentSpeech, turn_end_s: float) -> dict:
    """Smooth turn-taking: ``{"tor": 0|1, "latency_s": float | None}``.

    ``tor``: the takeover rule on the *whole* output (speech before ``turn_end_s`` counts, as in
    the official script). ``latency_s``: first word start minus ``turn_end_s`` (s), negatives
    recorded as 0.0; ``None`` when ``tor == 0``.
    """
    tor = takeover(speech)
    return {"tor": tor, "latency_s": _latency_s(speech, turn_end_s, 0.0) if tor else None}


def interruption_metrics(speech: AgentSpeech, interruption_end_s: float) -> dict:
    """User interruption: ``{"tor": 0|1, "latency_s": float | None}``, on speech after the interruption.

    ``tor``: the takeover rule on what follows ``interruption_end_s`` (s) (see :func:`takeover`
    for a straddling word). ``latency_s``: first word start after it minus ``interruption_end_s``
    (>= 0); ``None`` when ``tor == 0``. The benchmark's ``relevance`` (LLM rating 0..5, TOR = 1
    samples only) is added by a judge elsewhere, under the key ``"relevance"``.
    """
    tor = takeover(speech, after_s=interruption_end_s)
    return {"tor": tor, "latency_s": _latency_s(speech, interruption_end_s, interruption_end_s) if tor else None}


def _words_in_segment(start_s: float, end_s: float, words: Sequence[tuple]) -> int:
    """How many words the official scorer assigns to VAD segment ``[start_s, end_s]``."""
    n = 0
    for a, b, _ in words:
        inside = start_s <= a and b <= end_s
        over_end = a <= end_s < b
        over_start = a <= start_s < b
        n += inside or over_end or over_start
    return n


def backchannel_segments(speech: AgentSpeech) -> list[tuple[float, float, str]]:
    """Each VAD segment (``speech.spans_s``) with its Full-Duplex-Bench class, in time order.

    Returns ``[(start_s, end_s, kind)]``, times rounded to 0.1 s as silero returns them to the
    official scorer, ``kind`` one of :data:`SEGMENT_KINDS`:
    ``"takeover"``: longer than ``BACKCHANNEL_TAKEOVER_DURATION_S`` or more than
    ``BACKCHANNEL_TAKEOVER_WORDS`` words; ``"backchannel"``: shorter than
    ``BACKCHANNEL_MAX_DURATION_S`` with at most ``BACKCHANNEL_MAX_WORDS`` words; ``"other"``:
    the rest (the official per-segment TOR is 1 for these too). Words per segment follow the
    official overlap rule; with ``words=None`` the class depends on the duration alone.
    """
    out = []
    for start_s, end_s in sorted(speech.spans_s):
        start_s, end_s = round(start_s, FDB_VAD_TIME_DECIMALS), round(end_s, FDB_VAD_TIME_DECIMALS)
        # Float difference of the rounded times, as in the script: 1.4 - 0.4 < 1.0.
        duration_s = end_s - start_s
        n_words = None if speech.words is None else _words_in_segment(start_s, end_s, speech.words)
        if duration_s > BACKCHANNEL_TAKEOVER_DURATION_S or (n_words is not None and n_words > BACKCHANNEL_TAKEOVER_WORDS):
            kind = "takeover"
        elif duration_s < BACKCHANNEL_MAX_DURATION_S and (n_words is None or n_words <= BACKCHANNEL_MAX_WORDS):
            kind = "backchannel"
        else:
            kind = "other"
        out.append((start_s, end_s, kind))
    return out


def backchannel_metrics(speech: AgentSpeech, duration_s: float,
                        human_backchannels_s: Sequence[float | tuple[float, float]]) -> dict:
    """Backchannel task: ``{"tor": 0|1, "frequency": per s, "jsd": distance}``, as the script scores.

    ``duration_s``: length of the output (s), the frequency's denominator and the histogram range.
    ``human_backchannels_s``: the human listeners' backchannels, spans ``(start_s, end_s)`` or
    onset times (a time ``t`` is the span ``(t, t)``).
    Reproduces the script's quirks (module docstring): the scan stops at the first segment longer
    than ``BACKCHANNEL_TAKEOVER_DURATION_S`` (TOR = 1); otherwise TOR is the last segment's; every
    segment scanned counts as a backchannel for ``frequency`` and ``jsd``, whatever its class.
    """
    if not duration_s > 0.0:
        raise ValueError(f"backchannel_metrics: duration_s must be > 0 (the output length in s), got {duration_s}")
    tor = 0
    counted: list[tuple[float, float]] = []
    for start_s, end_s, kind in backchannel_segments(speech):
        if end_s - start_s > BACKCHANNEL_TAKEOVER_DURATION_S:
            tor = 1
            break
        tor = 0 if kind == "backchannel" else 1  # overwritten by every segment: the last one wins
        counted.append((start_s, end_s))  # counted whatever its class, as in the script
    return {
        "tor": tor,
        "frequency": len(counted) / duration_s,
        "jsd": jsd_distance(counted, human_backchannels_s, duration_s=duration_s),
    }


def _spans(items: Iterable, where: str) -> list[tuple[float, float]]:
    """Spans from ``(start_s, end_s)`` pairs or onset times (``t`` -> ``(t, t)``)."""
    out = []
    for i, x in enumerate(items):
        out.append(_interval((x, x) if isinstance(x, (int, float, np.number)) else x, f"{where}[{i}]"))
    return out


def backchannel_histogram(spans_s: Iterable, duration_s: float, bin_s: float = JSD_BIN_S) -> np.ndarray:
    """The official backchannel timing histogram: ``[int(duration_s / bin_s) + 1]``, sums to 1.

    Each span ``(start_s, end_s)`` (or onset time) adds 1 to bins ``int(start_s / bin_s)`` through
    ``int(end_s / bin_s)`` inclusive (float division truncated, as the script does: 0.6 / 0.2
    lands in bin 2); bins past the end are dropped; ``JSD_EPSILON`` is added to every bin.
    """
    if not duration_s > 0.0 or not bin_s > 0.0:
        raise ValueError(f"backchannel_histogram: duration_s and bin_s must be > 0, got {duration_s}, {bin_s}")
    counts = np.zeros(int(duration_s / bin_s) + 1)
    for start_s, end_s in _spans(spans_s, "backchannel spans"):
        lo, hi = int(start_s / bin_s), int(end_s / bin_s)
        counts[lo : hi + 1] += 1.0  # slicing drops bins past the end, like the script's check
    hist = counts + JSD_EPSILON
    return hist / hist.sum()


def resample_histogram(hist: Sequence[float], n_bins: int) -> np.ndarray:
    """Linear resampling of ``hist`` onto ``n_bins`` points spread over the same [0, 1] range.

    The script's way to match the human histogram's length to the model's (``interp1d`` at
    ``linspace(0, 1, n)``); not renormalised (the distance normalises).
    """
    hist = np.asarray(hist, dtype=float)
    if hist.ndim != 1 or hist.size == 0:
        raise ValueError(f"resample_histogram: expected a non-empty 1-D histogram, got shape {hist.shape}")
    if hist.size == 1:
        return np.full(n_bins, hist[0])
    return np.interp(np.linspace(0.0, 1.0, n_bins), np.linspace(0.0, 1.0, hist.size), hist)


def jensen_shannon_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance with the natural log, in [0, sqrt(ln 2)]: exactly what the official
    script computes, ``scipy.spatial.distance.jensenshannon(p, q)`` (both normalised to sum 1).

    One difference: for histograms equal up to rounding (the official resampling of the human
    histogram moves its values by ~1e-17) scipy takes the square root of a divergence a rounding
    error below 0 and returns nan, which makes the script's dataset mean nan; here that is 0.0."""
    from scipy.spatial.distance import jensenshannon

    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"jensen_shannon_distance: need two 1-D histograms of one length, got {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any() or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("jensen_shannon_distance: histograms must be non-negative with a positive sum")
    distance = float(jensenshannon(p, q))
    return 0.0 if math.isnan(distance) else distance


def jsd_to_histogram(model_s: Sequence, human_hist: Sequence[float], *, duration_s: float,
                     bin_s: float = JSD_BIN_S) -> float:
    """JSD between the model's backchannels and a ready human histogram (e.g. an official
    ``icc_gt_distribution.json`` entry), resampled to the model's bin count as the script does.
    ``JSD_NO_BACKCHANNEL`` when the model has no backchannel."""
    model = _spans(model_s, "model backchannels")
    if not model:
        return JSD_NO_BACKCHANNEL
    hist = backchannel_histogram(model, duration_s, bin_s)
    return jensen_shannon_distance(hist, resample_histogram(human_hist, hist.size))


def jsd_distance(model_s: Sequence, human_s: Sequence, *, duration_s: float, bin_s: float = JSD_BIN_S) -> float:
    """Jensen-Shannon distance between model and human backchannel histograms over ``duration_s``.

    ``model_s``, ``human_s``: spans ``(start_s, end_s)`` or onset times (s). Both histograms come
    from :func:`backchannel_histogram` on the same bins. ``JSD_NO_BACKCHANNEL`` (1.0) when the
    model has none; identical histograms give 0, disjoint ones about ``sqrt(ln 2) ~= 0.833``.
    A human side with no backchannels gives a uniform histogram (all bins epsilon).
    """
    model = _spans(model_s, "model backchannels")
    if not model:
        return JSD_NO_BACKCHANNEL
    return jensen_shannon_distance(backchannel_histogram(model, duration_s, bin_s),
                                   backchannel_histogram(human_s, duration_s, bin_s))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(task: str, per_sample: list[dict]) -> dict:
    """The benchmark's dataset-level numbers for ``task`` from per-sample metric dicts.

    - ``pause``: ``{"tor"}``, mean over samples.
    - ``turn``: ``{"tor", "latency_s"}``: mean TOR; mean latency over ``tor == 1`` samples
      (``None`` if there are none; the script would divide by zero).
    - ``interruption``: ``{"tor", "latency_s", "relevance"}``: as ``turn``, plus the mean
      ``relevance`` over ``tor == 1`` samples that carry one (``None`` if none does).
    - ``backchannel``: ``{"tor", "frequency", "jsd"}``, each the mean over all samples.
    """
    if task not in TASKS:
        raise ValueError(f"aggregate: unknown task {task!r}; expected one of {TASKS}")
    if not per_sample:
        raise ValueError(f"aggregate({task!r}): no samples")
    keys = {"pause": ("tor",), "turn": ("tor", "latency_s"), "interruption": ("tor", "latency_s"),
            "backchannel": ("tor", "frequency", "jsd")}[task]
    for i, sample in enumerate(per_sample):
        missing = [k for k in keys if k not in sample]
        if missing:
            raise ValueError(f"aggregate({task!r}): sample {i} lacks {missing}; got keys {sorted(sample)}")
    out: dict = {"tor": _mean([float(s["tor"]) for s in per_sample])}
    if task == "backchannel":
        out["frequency"] = _mean([float(s["frequency"]) for s in per_sample])
        out["jsd"] = _mean([float(s["jsd"]) for s in per_sample])
        return out
    if task in ("turn", "interruption"):
        took = [s for s in per_sample if s["tor"] == 1]
        for s in took:
            if s["latency_s"] is None:
                raise ValueError(f"aggregate({task!r}): a sample with tor == 1 has latency_s None: {s}")
        out["latency_s"] = _mean([float(s["latency_s"]) for s in took])
        if task == "interruption":
            out["relevance"] = _mean([float(s["relevance"]) for s in took if s.get("relevance") is not None])
    return out
