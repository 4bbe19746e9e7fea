"""Baseline agents: ``silent``, ``talk``, ``oracle``.

- ``silent``: never speaks (padding text token and the codec's silence codes; zeros as waveform).
- ``talk``: speaks all the time: a fixed 4.9 s speech clip (``agents/data/talk.flac``, flite) on
  loop, with one text token per word length in tokens mode.
- ``oracle``: plays the human reference track (what the other person actually did): its audio,
  or its Mimi codes from the corpus' code cache with a text stream marking its speech spans.

In tokens mode the text tokens follow :func:`duplexgym.rewards.activity.text_stream`, so the text
reader reads back exactly the agent's speech spans.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import soundfile as sf
from duplexgym.envs.corpus import ReplayCorpus
from duplexgym.rewards.activity import ActivityParams, text_stream

from duplexgym.constants import FRAME_S, FRAME_SAMPLES, TEXT_PAD

TALK_CLIP = Path(__file__).parent / "data" / "talk.flac"
#: Text token the baselines emit for a spoken word (any non-padding id reads as speech).
SPEECH_TOKEN = 1000


class _FrameAgent(ABC):
    """Plays a precomputed ``[F, ...]`` action sequence for each episode."""

    name = "base"

    def __init__(self, corpus: ReplayCorpus, action_mode: str, activity: ActivityParams = ActivityParams()):
        self.corpus, self.action_mode, self.activity = corpus, action_mode, activity
        self._plan = np.zeros((0,))
        self._t = 0

    def reset(self, info: dict) -> None:
        self._plan = self.plan(self.corpus.by_id[info["segment"]])
        self._t = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        t = min(self._t, len(self._plan) - 1)
        self._t += 1
        return self._plan[t]

    @abstractmethod
    def plan(self, segment) -> np.ndarray:
        """The whole episode's actions, ``[F, 9]`` tokens or ``[F, 1920]`` waveform."""

    def _silence_codes(self) -> np.ndarray:
        codes = self.corpus.info.get("silence_codes")
        if codes is None:
            raise ValueError(f"{self.corpus.path}: corpus.json has no silence_codes; rebuild the corpus with --codec")
        return np.asarray(codes, dtype=np.int64)


class SilentAgent(_FrameAgent):
    name = "silent"

    def plan(self, segment) -> np.ndarray:
        n = segment.n_frames
        if self.action_mode == "waveform":
            return np.zeros((n, FRAME_SAMPLES), dtype=np.float32)
        plan = np.empty((n, 9), dtype=np.int64)
        plan[:, 0] = TEXT_PAD
        plan[:, 1:] = self._silence_codes()
        return plan


class TalkAgent(_FrameAgent):
    name = "talk"

    def __init__(self, corpus: ReplayCorpus, action_mode: str, activity: ActivityParams = ActivityParams()):
        super().__init__(corpus, action_mode, activity)
        clip, _ = sf.read(str(TALK_CLIP), dtype="float32")
        self._clip = clip.reshape(-1, FRAME_SAMPLES)
        self._clip_codes = None
        if action_mode == "tokens":
            from duplexgym.corpora.codec import encode, load_mimi

            if not corpus.codec_spec:
                raise ValueError(f"{corpus.path}: the talk agent needs the corpus codec to encode its clip")
            self._clip_codes = encode(load_mimi(corpus.codec_spec), clip).T.astype(np.int64)  # [F, 8]

    def plan(self, segment) -> np.ndarray:
        n = segment.n_frames
        idx = np.arange(n) % len(self._clip)
        if self.action_mode == "waveform":
            return self._clip[idx]
        plan = np.empty((n, 9), dtype=np.int64)
        plan[:, 0] = text_stream([(0.0, n * FRAME_S)], n, SPEECH_TOKEN, self.activity)
        plan[:, 1:] = self._clip_codes[idx]
        return plan


class OracleAgent(_FrameAgent):
    name = "oracle"

    def plan(self, segment) -> np.ndarray:
        n = segment.n_frames
        if self.action_mode == "waveform":
            return self.corpus.audio(segment)[1].reshape(n, FRAME_SAMPLES)
        spans = [(a - segment.start_s, b - segment.start_s) for a, b in segment.reference_spans_s or ()]
        plan = np.empty((n, 9), dtype=np.int64)
        plan[:, 0] = text_stream(spans, n, SPEECH_TOKEN, self.activity)
        plan[:, 1:] = self.corpus.codes(segment)[1].T
        return plan


BASELINES = {"silent": SilentAgent, "talk": TalkAgent, "oracle": OracleAgent}
