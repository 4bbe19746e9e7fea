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
"""

from __future__ import annotations

import functools

import numpy as np
from duplexgym.corpora.vad import VadParams
from duplexgym.rewards.fdb import AgentSpeech
from duplexgym.rewards.record import EpisodeRecord
from pydantic import Field
from pydantic.dataclasses import dataclass

from duplexgym.config import STRICT, Number, choice
from duplexgym.constants import FRAME_S, SAMPLE_RATE, TEXT_PAD_IDS

READERS = ("vad", "text")
Reader = choice(*READERS)


@dataclass(config=STRICT)
class ActivityParams:
    """How the agent's speech is read. ``reader``: ``"vad"`` or ``"text"``; the rest per reader:
    ``word_s`` (text: seconds one token lasts), ``merge_gap_s`` (text: words closer than this form
    one span, s), ``vad`` (silero's post-processing)."""

    reader: Reader = "vad"
    word_s: Number = Field(0.4, gt=0)
    merge_gap_s: Number = Field(0.1, ge=0)
    vad: VadParams = Field(default_factory=VadParams)


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
    from duplexgym.corpora.vad import SCORING_BLOCKING, speech_spans

    spans = speech_spans([np.asarray(audio, dtype=np.float32)], params.vad, blocking=SCORING_BLOCKING)[0]
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


def agent_speech(record: EpisodeRecord, params: ActivityParams = ActivityParams()) -> AgentSpeech:
    """The agent's speech in ``record``, read as ``params.reader`` says."""
    if params.reader == "text":
        if record.text_tokens is None:
            raise ValueError(
                f"episode {record.segment.id}: the text reader needs text tokens, but the agent acted "
                "with waveforms; use the vad reader"
            )
        return speech_from_text(record.text_tokens, params)
    return speech_from_audio(agent_audio(record), params)


def frames_speaking(speech: AgentSpeech, n_frames: int) -> np.ndarray:
    """bool ``[n_frames]``: frames overlapping agent speech."""
    out = np.zeros(n_frames, dtype=bool)
    for start, end in speech.spans_s:
        lo = max(0, int(np.floor(start / FRAME_S)))
        hi = min(n_frames, int(np.ceil(end / FRAME_S)))
        out[lo:hi] = True
    return out


__all__ = ["ActivityParams", "TEXT_PAD_IDS", "agent_speech", "agent_audio", "speech_from_text",
           "speech_from_audio", "frames_speaking", "SAMPLE_RATE"]
