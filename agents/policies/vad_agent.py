"""``vad``: a rule-based turn-taker, the reference point a trained policy has to beat.

It hears only its observations (never the corpus' reference track): a streaming silero VAD tells
it, 32 ms at a time, whether the user is speaking, and a handful of timing rules decide what it
says. Everything it says is one of two fixed clips, so it tests *when* a policy speaks, not what.

Hearing
-------
Waveform observations (24 kHz, 1920 samples per frame) are resampled to 16 kHz with soxr's
streaming resampler (:class:`StreamResampler`: the same samples as ``soxr.resample`` of the whole
signal, ~20 ms late) and fed to silero VAD 6.2.3 (JIT) chunk by chunk, 512 samples
(32 ms) per call, with the model's recurrent state kept between calls (:class:`StreamingVad`). A
chunk is user speech when its probability reaches ``threshold``; speech goes on until the
probability falls below ``neg_threshold`` (hysteresis). Codes observations are first decoded with
the corpus' Mimi, frame by frame in streaming mode (with the tiny random test codec that audio is
noise, so use waveform observations there).

Per-frame cost of ``act`` on this 2-core CPU: ~1.4 ms (2.5 silero calls of ~0.45 ms, resampling
~0.08 ms, the rules a few us); with codes observations the tiny Mimi's decoding makes it ~7.4 ms.
That is under 2 % of the 80 ms frame, so silero runs live and no energy-VAD fallback is needed
(it does make ``duplexgym eval`` of this agent ~3x slower than of the table-lookup baselines).

Rules (all thresholds in :class:`VadAgentParams`)
-------------------------------------------------
- LISTENING. The user's current turn accumulates their speech time. When they have spoken at
  least ``min_turn_s`` and then been silent for ``silence_s``, the agent SPEAKS: the talk clip
  (``agents/data/talk.flac``, looped) for ``response_s``.
- SPEAKING. If the user speaks again for ``stop_after_s`` without a break (a barge-in), the agent
  stops in that frame and LISTENS; what the user said so far starts their new turn. After
  ``response_s`` it LISTENS with a fresh turn. User speech shorter than ``stop_after_s`` while it
  speaks (a backchannel) is ignored.
- Backchannels while LISTENING: once the user has spoken ``backchannel_after_s`` since the turn
  began or since the last backchannel, the agent says the backchannel clip
  (``agents/data/backchannel.flac``, flite "yeah", 0.48 s) after the next brief pause: as the
  user resumes after a silence of at least ``backchannel_pause_s`` but shorter than
  ``silence_s`` (so the turn goes on; a backchannel said *in* the pause would run into the
  answer when the pause turns out to be the turn end, and the two read as one takeover); or
  anyway once that speech time reaches ``backchannel_every_s`` while the user is speaking. It
  stays LISTENING: a turn end during the clip cuts it short and starts the answer.
- Interruption episodes start with ``info["forced_frames"]`` frames in which the env plays the
  human reference as the agent: the agent knows it was speaking and that the user has just barged
  in, so it keeps silent (no backchannel either) until the user's turn ends, then answers.

Actions: waveform mode plays the clips' frames (zeros when silent); tokens mode plays the clips'
Mimi codes (encoded once with the corpus' codec) with one text token per ``word_s`` of speech
(:func:`duplexgym.rewards.activity.text_stream`, so the text reader reads back what it said), and
``TEXT_PAD`` plus the corpus' ``silence_codes`` when silent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from duplexgym.agents.policies.baselines import SPEECH_TOKEN, TALK_CLIP
from duplexgym.envs.corpus import ReplayCorpus
from duplexgym.rewards.activity import ActivityParams, text_stream

from duplexgym.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE, TEXT_PAD

BACKCHANNEL_CLIP = Path(__file__).parent / "data" / "backchannel.flac"
#: silero's rate (Hz) and chunk (samples, 32 ms).
VAD_RATE = 16_000
VAD_CHUNK = 512
CHUNK_S = VAD_CHUNK / VAD_RATE

# The agent's modes.
LISTENING, SPEAKING, FORCED = "listening", "speaking", "forced"


@dataclass(frozen=True)
class VadAgentParams:
    """The turn-taker's thresholds; seconds unless named otherwise.

    ``threshold`` / ``neg_threshold``: silero speech probability that starts / ends user speech.
    ``min_turn_s``: user speech a turn needs before its end is answered (ignores clicks, coughs;
    low because an episode may begin late in the user's turn).
    ``silence_s``: user silence that ends a turn (humans answer after ~0.2-0.6 s gaps; in-turn
    pauses are often longer, so this trades turn-taking latency against pause handling).
    ``response_s``: length of an answer. ``stop_after_s``: continuous user speech that stops an
    answer (a barge-in). ``backchannel_after_s``: user speech since the turn start or the last
    backchannel before a backchannel is due (``inf`` disables backchannels).
    ``backchannel_pause_s``: a due backchannel is said when the user resumes after a pause at
    least this long (and shorter than ``silence_s``; ``inf``: never after pauses).
    ``backchannel_every_s``: ... or anyway, while the user speaks, once their speech since the
    last one reaches this (``inf``: only after pauses).
    """

    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_turn_s: float = 0.3
    silence_s: float = 0.6
    response_s: float = 4.0
    stop_after_s: float = 0.2
    backchannel_after_s: float = 2.0
    backchannel_pause_s: float = 0.15
    backchannel_every_s: float = 3.0

    def __post_init__(self):
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ValueError(f"VadAgentParams: need 0 < neg_threshold <= threshold < 1, got "
                             f"{self.neg_threshold}, {self.threshold}")
        for name in ("min_turn_s", "silence_s", "response_s", "stop_after_s", "backchannel_after_s",
                     "backchannel_pause_s", "backchannel_every_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ValueError(f"VadAgentParams.{name} must be a number >= 0 (inf allowed), got {value!r}")
        if not math.isfinite(self.silence_s) or self.silence_s <= 0:
            raise ValueError(f"VadAgentParams.silence_s must be finite and > 0, got {self.silence_s}")
        if not math.isfinite(self.response_s) or self.response_s < FRAME_S:
            raise ValueError(f"VadAgentParams.response_s must be finite and >= one frame ({FRAME_S} s), "
                             f"got {self.response_s}")
        if math.isfinite(self.backchannel_pause_s) and self.backchannel_pause_s >= self.silence_s:
            raise ValueError("VadAgentParams.backchannel_pause_s must be < silence_s (a brief pause, not a "
                             f"turn end), got {self.backchannel_pause_s} >= {self.silence_s}")


class StreamResampler:
    """24 kHz -> 16 kHz, frame by frame: ``soxr.ResampleStream`` (quality HQ, what the corpus
    builder's one-shot resampling uses). The concatenated output equals ``soxr.resample`` of the
    whole signal sample for sample; soxr holds back ~15-25 ms of output until later input arrives."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        import soxr

        self._stream = soxr.ResampleStream(24_000, VAD_RATE, 1, dtype="float32", quality="HQ")

    def push(self, x: np.ndarray) -> np.ndarray:
        """Resample the next input samples; returns the output that is ready (float32)."""
        return self._stream.resample_chunk(np.ascontiguousarray(x, dtype=np.float32))


class StreamingVad:
    """silero VAD fed 512-sample chunks at 16 kHz as they arrive, its recurrent state kept.

    Owns its model instance: ``duplexgym.corpora.vad`` shares one for batched scoring and resets
    its state, which must not touch this stream.
    """

    def __init__(self):
        import silero_vad  # sets torch to one thread (FACTS.md)
        import torch

        self._torch = torch
        self.model = silero_vad.load_silero_vad()
        self.resampler = StreamResampler()
        self.reset()

    def reset(self) -> None:
        self.model.reset_states()
        self.resampler.reset()
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, frame_24k: np.ndarray) -> list[float]:
        """Speech probabilities of the 32 ms chunks completed by this 24 kHz audio."""
        pending = np.concatenate([self._pending, self.resampler.push(frame_24k)])
        n = len(pending) // VAD_CHUNK
        probs = []
        with self._torch.inference_mode():
            for i in range(n):
                chunk = self._torch.from_numpy(pending[i * VAD_CHUNK : (i + 1) * VAD_CHUNK].copy())
                probs.append(float(self.model(chunk, VAD_RATE)))
        self._pending = pending[n * VAD_CHUNK :]
        return probs


class VadAgent:
    """The rule-based turn-taker (module docstring). Agent protocol: ``reset(info)``, ``act(obs)``.

    ``corpus``: the env's corpus (clip codes and silence codes in tokens mode; the codec for codes
    observations). ``action_mode``: ``"waveform"`` or ``"tokens"``. ``activity``: how the reward
    reads speech (tokens mode: the text stream's ``word_s``). ``obs_mode``: ``"waveform"`` or
    ``"codes"``. ``params``: the thresholds.
    """

    name = "vad"

    def __init__(self, corpus: ReplayCorpus, action_mode: str, activity: ActivityParams = ActivityParams(),
                 params: VadAgentParams = VadAgentParams(), obs_mode: str = "waveform"):
        if action_mode not in ("waveform", "tokens"):
            raise ValueError(f"action_mode must be 'waveform' or 'tokens', got {action_mode!r}")
        if obs_mode not in ("waveform", "codes"):
            raise ValueError(f"obs_mode must be 'waveform' or 'codes', got {obs_mode!r}")
        self.corpus, self.action_mode, self.activity = corpus, action_mode, activity
        self.params, self.obs_mode = params, obs_mode
        self.vad = StreamingVad()
        self._talk = _clip_frames(TALK_CLIP)  # [F, 1920]
        self._bc = _clip_frames(BACKCHANNEL_CLIP)
        self._n_response = max(1, int(round(params.response_s / FRAME_S)))
        self._mimi = None
        if action_mode == "tokens" or obs_mode == "codes":
            if not corpus.codec_spec:
                raise ValueError(f"{corpus.path}: the vad agent needs the corpus codec for "
                                 f"obs_mode={obs_mode!r}, action_mode={action_mode!r}; rebuild it with --codec")
            from duplexgym.corpora.codec import load_mimi

            self._mimi = load_mimi(corpus.codec_spec)
        if action_mode == "tokens":
            from duplexgym.corpora.codec import encode

            silence = corpus.info.get("silence_codes")
            if silence is None:
                raise ValueError(f"{corpus.path}: corpus.json has no silence_codes; rebuild the corpus with --codec")
            self._silent = np.concatenate([[TEXT_PAD], np.asarray(silence, dtype=np.int64)]).astype(np.int64)
            talk_codes = encode(self._mimi, self._talk.reshape(-1).copy()).T.astype(np.int64)  # [F, 8]
            bc_codes = encode(self._mimi, self._bc.reshape(-1).copy()).T.astype(np.int64)
            idx = np.arange(self._n_response) % len(talk_codes)
            talk_text = text_stream([(0.0, self._n_response * FRAME_S)], self._n_response, SPEECH_TOKEN, activity)
            self._talk_actions = np.concatenate([talk_text[:, None].astype(np.int64), talk_codes[idx]], axis=1)
            bc_text = text_stream([(0.0, len(bc_codes) * FRAME_S)], len(bc_codes), SPEECH_TOKEN, activity)
            self._bc_actions = np.concatenate([bc_text[:, None].astype(np.int64), bc_codes], axis=1)
        else:
            self._silent = np.zeros(FRAME_SAMPLES, dtype=np.float32)
            self._talk_actions = self._talk[np.arange(self._n_response) % len(self._talk)]
            self._bc_actions = self._bc
        for a in (self._silent, self._talk_actions, self._bc_actions):
            a.setflags(write=False)
        if self._mimi is not None and obs_mode == "codes":
            self._mimi.streaming_forever(1)
        self.reset({"forced_frames": 0})

    # -- protocol ------------------------------------------------------------------------------

    def reset(self, info: dict) -> None:
        self.vad.reset()
        if self._mimi is not None and self.obs_mode == "codes":
            self._mimi.reset_streaming()
        self._forced_left = int(info.get("forced_frames", 0))
        self.mode = FORCED if self._forced_left > 0 else LISTENING
        self._voiced = False
        self._voiced_run_s = 0.0  # continuous user speech (s)
        self._silence_run_s = 0.0  # continuous user silence (s)
        self._turn_speech_s = 0.0  # user speech in the current turn (s)
        self._bc_speech_s = 0.0  # user speech since the turn start or the last backchannel (s)
        self._hold = False  # after a barge-in on the forced prefix: no backchannel until answering
        self._response_frame = 0
        self._bc_frame = -1  # frame of the backchannel clip being played, -1 when none
        self._resumed_after_s = 0.0  # gap (s) the user just resumed after in this frame, 0 if none
        self.log: list[str] = []  # what the agent did per frame ("-", "speak", "bc", "forced")

    def act(self, observation: np.ndarray) -> np.ndarray:
        audio = self._hear(observation)
        self._resumed_after_s = 0.0
        for prob in self.vad.push(audio):
            self._chunk(prob)
        action, what = self._decide()
        self.log.append(what)
        return action

    # -- hearing -------------------------------------------------------------------------------

    def _hear(self, observation: np.ndarray) -> np.ndarray:
        if self.obs_mode == "waveform":
            frame = np.asarray(observation, dtype=np.float32)
            if frame.shape != (FRAME_SAMPLES,):
                raise ValueError(f"waveform observation must have shape ({FRAME_SAMPLES},), got {frame.shape}")
            return frame
        import torch

        codes = np.asarray(observation, dtype=np.int64).reshape(1, -1, 1)  # [B=1, 8, 1]
        with torch.no_grad():
            pcm = self._mimi.decode(torch.from_numpy(codes))  # [1, 1, 1920]
        return pcm[0, 0].float().numpy()

    def _chunk(self, prob: float) -> None:
        p = self.params
        was_voiced = self._voiced
        self._voiced = prob >= p.threshold or (self._voiced and prob >= p.neg_threshold)
        if self._voiced and not was_voiced and self._silence_run_s > 0:
            self._resumed_after_s = self._silence_run_s  # the user resumes after this gap
        if self._voiced:
            self._voiced_run_s += CHUNK_S
            self._silence_run_s = 0.0
            if self.mode == LISTENING:
                self._turn_speech_s += CHUNK_S
                self._bc_speech_s += CHUNK_S
        else:
            self._silence_run_s += CHUNK_S
            self._voiced_run_s = 0.0

    # -- deciding ------------------------------------------------------------------------------

    def _decide(self) -> tuple[np.ndarray, str]:
        p = self.params
        if self.mode == FORCED:
            self._forced_left -= 1
            if self._forced_left <= 0:  # the user barged in on the forced speech: listen to them
                self.mode, self._hold = LISTENING, True
                self._new_turn(self._voiced_run_s)
            return self._silent, "forced"
        if self.mode == SPEAKING:
            if self._voiced_run_s >= p.stop_after_s:  # barge-in: stop at once
                self.mode = LISTENING
                self._new_turn(self._voiced_run_s)
                return self._silent, "-"
            if self._response_frame >= self._n_response:
                self.mode = LISTENING
                self._new_turn(0.0)
                return self._silent, "-"
            action = self._talk_actions[self._response_frame]
            self._response_frame += 1
            return action, "speak"
        # LISTENING
        if self._turn_speech_s >= p.min_turn_s and self._silence_run_s >= p.silence_s:
            self.mode, self._hold = SPEAKING, False
            self._response_frame, self._bc_frame = 1, -1
            self._new_turn(0.0)
            return self._talk_actions[0], "speak"
        if self._bc_frame < 0 and not self._hold and self._bc_speech_s >= p.backchannel_after_s:
            at_pause = p.backchannel_pause_s <= self._resumed_after_s < p.silence_s
            long_talk = self._voiced and self._bc_speech_s >= p.backchannel_every_s
            if at_pause or long_talk:
                self._bc_frame, self._bc_speech_s = 0, 0.0
        if self._bc_frame >= 0:
            action = self._bc_actions[self._bc_frame]
            self._bc_frame += 1
            if self._bc_frame >= len(self._bc_actions):
                self._bc_frame = -1
            return action, "bc"
        return self._silent, "-"
    def _new_turn(self, speech_s: float) -> None:
        self._turn_speech_s = self._bc_speech_s = speech_s


def _clip_frames(path: Path) -> np.ndarray:
    """A mono 24 kHz clip as float32 ``[F, 1920]`` (zero-padded to whole frames), read-only."""
    clip, rate = sf.read(str(path), dtype="float32")
    if rate != SAMPLE_RATE or clip.ndim != 1:
        raise ValueError(f"{path}: expected a mono {SAMPLE_RATE} Hz clip, got {clip.shape} at {rate} Hz")
    n = -(-len(clip) // FRAME_SAMPLES) * FRAME_SAMPLES
    frames = np.zeros(n, dtype=np.float32)
    frames[: len(clip)] = np.clip(clip, -1.0, 1.0)
    frames = frames.reshape(-1, FRAME_SAMPLES)
    frames.setflags(write=False)
    return frames
