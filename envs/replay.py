"""The replay environment: one segment of real conversation per episode, one 80 ms frame per step."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from duplexgym.corpora.manifest import Segment
from duplexgym.envs.corpus import ReplayCorpus, SegmentSampler
from duplexgym.rewards.activity import text_stream
from duplexgym.rewards.dense import frame_is_speech, penalties
from duplexgym.rewards.record import EpisodeRecord
from duplexgym.rewards.scoring import score_episode
from duplexgym.rewards.spec import RewardSpec, load_spec
from gymnasium import spaces

from duplexgym.constants import (
    AXES,
    FRAME_S,
    FRAME_SAMPLES,
    MIMI_CARDINALITY,
    MIMI_CODEBOOKS,
    N_STREAMS,
    TEXT_CARD,
    TEXT_PAD,
)

#: Text token put on forced frames where the human reference speaks (one per word length, see
#: ``rewards.activity.text_stream``), so the text stream marks the forced speech (the reference
#: transcript is not tokenized here).
FORCED_SPEECH_TOKEN = 4
OBS_MODES = ("codes", "waveform")
#: Keys of ``reset(options=...)``: ``segment`` (an id to replay), ``stored_terms`` (reward terms to
#: take from a saved record instead of computing them: replays of judged episodes).
RESET_OPTIONS = {"segment", "stored_terms", "context_s", "lead_in_s"}
ACTION_MODES = ("tokens", "waveform")


@dataclass(frozen=True)
class ForcedPrefix:
    """The agent's forced frames at the start of an episode: a context's (the conversation before
    the segment) and an interruption segment's opening. Empty when there are none.

    ``frames``: how many leading frames ``k`` it describes; ``action``: what the env plays as the
    agent's output there, ``[k, 9]`` int64 tokens or ``[k, 1920]`` float32 waveform; ``audio``: the
    human reference's audio of those frames, float32 ``[k * 1920]``; ``mask``: bool ``[k]``, which of
    them are forced (False on the lead-in silence, where the agent speaks freely). One object per
    episode, so vector envs can carry it in their infos (arrays of varying shape cannot be batched).
    """

    frames: int
    action: np.ndarray
    audio: np.ndarray
    mask: np.ndarray | None = None

    def forced(self) -> np.ndarray:
        """bool ``[frames]``: the forced frames (all of them when no mask is given)."""
        return np.ones(self.frames, dtype=bool) if self.mask is None else np.asarray(self.mask, dtype=bool)


def _seconds(name: str, value) -> float:
    """``value`` as seconds in [0, 3600); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 3600:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _seconds_option(options: dict, key: str, default: float) -> float:
    value = options.get(key)
    return default if value is None else _seconds(f"reset options: {key}", value)


class ResetNeeded(RuntimeError):
    """``step()`` was called before ``reset()`` or after the episode ended."""


class DuplexReplayEnv(gym.Env):
    """Replays one segment of a real two-party conversation to a full-duplex agent.

    ## Description
    Each episode is one segment of a corpus built by ``duplexgym corpus build``: a stretch of real
    conversation around one event of an interactivity axis (``pause``, ``turn``, ``backchannel``,
    ``interruption``). One speaker of the recording plays the *user*: the agent hears the user's
    track one 80 ms frame (1920 samples at 24 kHz) per step and answers with its own frame, at the
    same time, as a full-duplex model does. What the other speaker of the recording did there is
    the *human reference* (``oracle`` agent).

    ## Action Space
    ``action_mode="tokens"``: ``MultiDiscrete([text_card] + [2048] * 8)``, Moshi's text token and
    its 8 Mimi codebooks for this frame. ``action_mode="waveform"``: ``Box(-1, 1, (1920,), float32)``.
    Step ``t``'s action is the agent's output for frame ``t``.

    ## Observation Space
    ``obs_mode="codes"``: ``MultiDiscrete([2048] * 8)``, the user's Mimi codes of the next frame,
    read from the corpus' code cache (no codec work at step time). ``obs_mode="waveform"``:
    ``Box(-1, 1, (1920,), float32)``. ``reset()`` returns user frame 0, ``step(t)`` user frame
    ``t + 1`` (zeros after the last frame).

    ## Rewards
    At the last step: the episode reward of the axis (``duplexgym.rewards``: pause, turn,
    backchannel or interruption term in [-1, 1], each with the Full-Duplex-Bench v1 metrics) times
    its weight, plus any other weighted term of the reward spec. With ``dense.weight > 0`` in the
    spec every step also pays a shaping reward (total in [-weight, 0]). ``info["reward_terms"]`` at
    the last step holds every term, its metrics, and the terms that failed (never scored as 0).

    ## Starting State
    A segment drawn with ``self.np_random`` (axis by ``axis_weights``, then uniformly), or the one
    named by ``reset(options={"segment": id})`` (``options["stored_terms"]``: reward terms taken from a
    saved record instead of computed, as ``duplexgym replay`` does for judged terms). Interruption episodes start with the agent already
    speaking: for the first ``info["forced_frames"]`` frames the env plays the human reference as
    the agent's output whatever the action, gives those frames in ``info["forced_prefix"]`` (a
    :class:`ForcedPrefix`: ``.action`` ``[k, 9]`` tokens or ``[k, 1920]`` waveform, ``.audio``
    ``[k * 1920]`` float32) so a model can be teacher-forced, and marks those
    steps ``info["forced"] = True`` so trainers leave them out of the loss.

    ## Episode End
    Terminates after the segment's last frame (``info["n_frames"]`` steps). Never truncates.
    Stepping again raises :class:`ResetNeeded`.

    ## Info
    ``reset`` returns these keys (every episode):

    ==================  ===============  ===============================================================
    key                 type             meaning
    ==================  ===============  ===============================================================
    ``segment``         str              the segment id (a manifest line of the corpus)
    ``axis``            str              ``pause``, ``turn``, ``backchannel`` or ``interruption``
    ``n_frames``        int              the episode's length in 80 ms frames (= steps)
    ``event_frame``     int              the frame of the axis' anchor (pause start, turn end, first
                                         backchannel onset, barge-in onset)
    ``forced_frames``   int              ``k``: frames the env plays for the agent (0 outside interruption)
    ``forced_prefix``   ForcedPrefix     ``.frames`` (k), ``.action`` (``[k, 9]`` int64 tokens or
                                         ``[k, 1920]`` float32 waveform), ``.audio`` (``[k * 1920]``
                                         float32, the human reference's audio)
    ``forced``          bool             frame 0 is forced (``forced_frames > 0``)
    ==================  ===============  ===============================================================

    ``step`` returns these keys:

    ==================  ===============  ===============================================================
    key                 type             when present, and meaning
    ==================  ===============  ===============================================================
    ``frame``           int              every step: the frame the action was for (0-based)
    ``forced``          bool             every step: the env played the forced prefix, not the action
    ``reward_terms``    dict             last step: ``reward``, ``axis``, ``terms`` (each term's
                                         ``value``, ``weight``, ``metrics``; ``fdb_*`` are the
                                         Full-Duplex-Bench v1 metrics), ``failed`` (term -> error),
                                         ``dense`` (the episode's shaping total), ``agent_speech_s``
    ``record``          str              last step, with ``record_dir``: the saved record's ``.json``
    ==================  ===============  ===============================================================

    ## Arguments
    ===================  =======================  ==========================  =========================================
    argument             type                     default                     meaning
    ===================  =======================  ==========================  =========================================
    ``corpus``           str | Path | ReplayCorpus  (required)                a corpus folder (``duplexgym corpus build``)
    ``axes``             tuple[str, ...] | str    all four                    the axes to sample (each registered id
                                                                              fixes one; ``Interactivity-v0`` all four)
    ``axis_weights``     dict[str, float] | None  None (uniform)              ``{axis: weight >= 0}`` mixing the axes
    ``obs_mode``         str                      ``"codes"``                 ``codes`` or ``waveform``; ``codes`` needs a
                                                                              corpus built with ``--codec``
    ``action_mode``      str                      ``"tokens"``                ``tokens`` or ``waveform``; ``tokens`` needs
                                                                              codes too
    ``rewards``          path | dict | RewardSpec  None                       a reward spec; None: every axis term, weight
                                                                              1, read from the text stream in tokens mode
                                                                              and with silero VAD in waveform mode
    ``codec``            str | None               None (the corpus' codec)    the Mimi decoding token actions when a
                                                                              reward reads audio
    ``text_card``        int                      32000                       Moshi's text vocabulary size
    ``segments``         list[str] | None         None (all)                  restrict to these segment ids
    ``record_dir``       str | Path | None        None                        save each finished episode's record there
                                                                              (``{n:06d}-{segment}.npz/.json``)
    ``text_tokenizer``   str | Path | None        None                        the agent's SentencePiece model; tokens-mode
                                                                              records then carry its decoded text and words
    ===================  =======================  ==========================  =========================================

    ## Example
    >>> import gymnasium as gym, duplexgym
    >>> env = gym.make("duplexgym/TurnTaking-v0", corpus="runs/default-corpus")  # doctest: +SKIP
    >>> obs, info = env.reset(seed=0)                                               # doctest: +SKIP
    >>> done = False
    >>> while not done:                                                             # doctest: +SKIP
    ...     obs, reward, done, _, info = env.step(env.action_space.sample())
    >>> info["reward_terms"]["terms"]["turn"]["metrics"]["fdb_tor"]                 # doctest: +SKIP
    """

    metadata = {"render_modes": []}

    def __init__(self, corpus: str | Path, axes=AXES, axis_weights: dict | None = None, obs_mode: str = "codes",
                 action_mode: str = "tokens", rewards=None, codec: str | None = None, text_card: int = TEXT_CARD,
                 segments=None, record_dir: str | Path | None = None, env_id: str | None = None,
                 text_tokenizer: str | Path | None = None, lead_in_s: float = 0.0):
        super().__init__()
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        unknown = [a for a in axes if a not in AXES]
        if unknown or not axes:
            raise ValueError(f"axes must be among {AXES}, got {axes!r}")
        if int(text_card) < 5:
            raise ValueError(f"text_card must be at least 5, got {text_card}")
        self.corpus = corpus if isinstance(corpus, ReplayCorpus) else ReplayCorpus(corpus)
        self.obs_mode, self.action_mode, self.text_card = obs_mode, action_mode, int(text_card)
        if (obs_mode == "codes" or action_mode == "tokens") and not self.corpus.has_codes:
            raise ValueError(
                f"{self.corpus.path}: obs_mode='codes' and action_mode='tokens' need Mimi codes, but the corpus "
                "was built without --codec; rebuild it with `--codec tiny` (or a Mimi checkpoint), or use "
                "obs_mode='waveform', action_mode='waveform'"
            )
        default_reader = "text" if action_mode == "tokens" else "vad"
        self.reward_spec: RewardSpec = load_spec(rewards) if rewards is not None else load_spec({"activity": {"reader": default_reader}})
        if self.reward_spec.activity.reader == "text" and action_mode == "waveform":
            raise ValueError("the reward spec reads the text stream (activity.reader: text), but action_mode='waveform' has none")
        self.codec = codec if codec is not None else self.corpus.codec_spec
        if action_mode == "tokens" and self.reward_spec.activity.reader == "vad" and not self.codec:
            raise ValueError("a vad reward reader in tokens mode needs a codec to decode the agent's tokens; pass codec=")
        self.env_id = env_id
        self.lead_in_s = _seconds("lead_in_s", lead_in_s)
        self.record_dir = None if record_dir is None else Path(record_dir)
        self.text_tokenizer = None
        if text_tokenizer is not None:
            self.set_text_tokenizer(text_tokenizer)

        self._sampler = SegmentSampler(self.corpus, axes, axis_weights, segments)
        self._by_axis = self._sampler.by_axis

        if obs_mode == "codes":
            self.observation_space = spaces.MultiDiscrete([MIMI_CARDINALITY] * MIMI_CODEBOOKS, dtype=np.int64)
        else:
            self.observation_space = spaces.Box(-1.0, 1.0, (FRAME_SAMPLES,), np.float32)
        if action_mode == "tokens":
            self.action_space = spaces.MultiDiscrete([self.text_card] + [MIMI_CARDINALITY] * MIMI_CODEBOOKS, dtype=np.int64)
            self._high = np.array([self.text_card - 1] + [MIMI_CARDINALITY - 1] * MIMI_CODEBOOKS, dtype=np.int64)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (FRAME_SAMPLES,), np.float32)
        self._tokens = action_mode == "tokens"
        self._episodes_saved = 0
        self._t = -1
        self._n = 0
        self._segment: Segment | None = None
        self._stored_terms: dict | None = None
        self._config = self.config()

    # -- episode set-up ---------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._seed = seed
        options = options or {}
        unknown = set(options) - RESET_OPTIONS
        if unknown:
            raise ValueError(f"reset options: unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(RESET_OPTIONS))}")
        self._stored_terms = options.get("stored_terms")
        lead_in_s = _seconds_option(options, "lead_in_s", self.lead_in_s)
        context_s = _seconds_option(options, "context_s", 0.0)
        if options.get("segment") is not None:
            seg = self.corpus.by_id.get(options["segment"])
            if seg is None or seg.axis not in self._by_axis:
                raise ValueError(f"reset options: no segment {options['segment']!r} of axes {tuple(self._by_axis)} in {self.corpus.path}")
        else:
            seg = self._sampler.draw(self.np_random)
        self._begin(seg, int(round(lead_in_s / FRAME_S)), int(round(context_s / FRAME_S)))
        return self._obs[0].copy(), self._reset_info()

    def _begin(self, seg: Segment, lead: int = 0, context: int = 0) -> None:
        """Lay out one episode: ``lead`` frames of user silence, ``context`` frames of the
        conversation before the segment (at most what the corpus stores), then the segment."""
        f = seg.n_frames
        ctx_audio, ctx_codes = self._context(seg, context)
        context = ctx_audio.shape[1] // FRAME_SAMPLES
        p = lead + context
        n = p + f
        self._segment, self._n, self._t = seg, n, 0
        self._lead, self._ctx, self._p = lead, context, p
        self._decoded = None  # (codes [8, f], audio [f * 1920]) given by provide_decoded_audio
        if self.obs_mode == "codes":
            silence = np.tile(self._silence_codes() if lead else np.zeros(MIMI_CODEBOOKS, np.int64), (lead, 1))
            parts = [silence, ctx_codes[0].T.astype(np.int64), self.corpus.codes(seg)[0].T.astype(np.int64)]
            self._obs = np.concatenate(parts + [np.zeros((1, MIMI_CODEBOOKS), np.int64)])  # [n + 1, 8]
        else:
            parts = [np.zeros((lead, FRAME_SAMPLES), np.float32), ctx_audio[0].reshape(context, FRAME_SAMPLES),
                     self.corpus.audio(seg)[0].reshape(f, FRAME_SAMPLES)]
            self._obs = np.concatenate(parts + [np.zeros((1, FRAME_SAMPLES), np.float32)])  # [n + 1, 1920]
        self._obs.setflags(write=False)
        self._obs_sha256 = hashlib.sha256(self._obs.tobytes()).hexdigest()
        self._k = self._forced_frames(seg)
        self._forced, self._fmask = self._forced_actions(seg, self._k, lead, ctx_audio, ctx_codes)
        self._reference_head = np.concatenate([np.zeros(lead * FRAME_SAMPLES, np.float32), ctx_audio[1],
                                               self.corpus.audio(seg)[1, : self._k * FRAME_SAMPLES]])
        self._fmask_list = self._fmask.tolist()
        if self._tokens:
            self._act = np.zeros((n, N_STREAMS), dtype=np.int64)
        else:
            self._wave = np.zeros((n, FRAME_SAMPLES), dtype=np.float32)
        speak, silent = penalties(seg, self.reward_spec, self._k)
        self._pen_speak, self._pen_silent = np.concatenate([np.zeros(p), speak]), np.concatenate([np.zeros(p), silent])
        self._dense_on = self.reward_spec.dense_weight != 0.0
        self._rewards = np.zeros(n, dtype=np.float64)
        self._record: EpisodeRecord | None = None

    def _context(self, seg: Segment, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """The last ``frames`` frames the corpus stores before ``seg`` (fewer when it stores less):
        audio float32 ``[2, c * 1920]`` and codes int16 ``[2, 8, c]`` (empty ``c = 0``)."""
        empty = np.zeros((2, 0), np.float32), np.zeros((2, MIMI_CODEBOOKS, 0), np.int16)
        if frames <= 0 or not getattr(seg, "context_s", None):
            return empty
        audio, codes = self.corpus.context(seg, frames * FRAME_S)
        if self.obs_mode == "codes" or self._tokens:
            if codes is None:
                raise ValueError(f"{self.corpus.path}: segment {seg.id} has context audio but no context codes; "
                                 "rebuild the corpus with --codec")
        else:
            codes = np.zeros((2, MIMI_CODEBOOKS, audio.shape[1] // FRAME_SAMPLES), np.int16)
        return audio, codes

    def _silence_codes(self) -> np.ndarray:
        codes = self.corpus.info.get("silence_codes")
        if codes is None:
            raise ValueError(f"{self.corpus.path}: corpus.json has no silence_codes for a lead-in in codes mode; "
                             "rebuild the corpus with --codec")
        return np.asarray(codes, dtype=np.int64)

    @staticmethod
    def _forced_frames(seg: Segment) -> int:
        if seg.axis != "interruption" or not seg.agent_prefix_s:
            return 0
        return min(seg.n_frames, int(round((seg.agent_prefix_s[1] - seg.start_s) / FRAME_S)))

    def _forced_actions(self, seg: Segment, k: int, lead: int, ctx_audio: np.ndarray, ctx_codes: np.ndarray):
        """What the env plays for the agent on every frame of the episode that it forces, and which
        frames those are: ``(actions [n, 9] or [n, 1920], mask [n] bool)``. The lead-in is free; the
        context is the human reference's (its codes, and padding text: the reference's words are
        not known there); the segment's first ``k`` frames are the interruption prefix."""
        c = ctx_audio.shape[1] // FRAME_SAMPLES
        p, n = lead + c, lead + c + seg.n_frames
        mask = np.zeros(n, dtype=bool)
        mask[lead:p + k] = True
        if self.action_mode == "waveform":
            forced = np.zeros((n, FRAME_SAMPLES), dtype=np.float32)
            forced[lead:p] = ctx_audio[1].reshape(c, FRAME_SAMPLES)
            forced[p:p + k] = self.corpus.audio(seg)[1, : k * FRAME_SAMPLES].reshape(k, FRAME_SAMPLES)
        else:
            forced = np.zeros((n, N_STREAMS), dtype=np.int64)
            forced[lead:p, 0] = TEXT_PAD
            forced[lead:p, 1:] = ctx_codes[1].T
            if k:
                forced[p:p + k, 1:] = self.corpus.codes(seg)[1, :, :k].T
                spans = [(a - seg.start_s, b - seg.start_s) for a, b in seg.reference_spans_s or ()]
                forced[p:p + k, 0] = text_stream(spans, seg.n_frames, FORCED_SPEECH_TOKEN, self.reward_spec.activity)[:k]
        forced.setflags(write=False)
        mask.setflags(write=False)
        return forced, mask

    def _reset_info(self) -> dict:
        seg, p, k = self._segment, self._p, self._k
        head = p + k  # the leading frames the forced prefix describes
        return {
            "segment": seg.id,
            "axis": seg.axis,
            "n_frames": self._n,
            "segment_frames": seg.n_frames,
            "prefix_frames": p,
            "lead_in_frames": self._lead,
            "context_frames": self._ctx,
            "event_frame": p + int((seg.event_s - seg.start_s) / FRAME_S),
            "forced_frames": head,
            "forced_prefix": ForcedPrefix(head, self._forced[:head], self._reference_head, self._fmask[:head]),
            "forced": bool(self._fmask_list[0]) if self._n else False,
        }

    # -- stepping -------------------------------------------------------------------------------

    def step(self, action):
        t = self._t
        if t < 0 or t >= self._n:
            raise ResetNeeded("call reset() before step()" if t < 0 else
                              f"the episode ended after {self._n} frames; call reset() before stepping again")
        forced = self._fmask_list[t]
        if self._tokens:
            a = action if (type(action) is np.ndarray and action.shape == (9,) and action.dtype.kind in "iu") \
                else self._coerce_tokens(action)
            v = a.tolist()  # plain ints: exact range checks at a fraction of numpy's cost
            if not 0 <= v[0] < self.text_card or min(v) < 0 or max(v[1:]) >= MIMI_CARDINALITY:
                self._bad_tokens(a)
            if forced:
                a = self._forced[t]
            self._act[t] = a
            speaking = self._dense_on and a[0] != TEXT_PAD and a[0] != 0
        else:
            a = self._coerce_wave(action)
            if forced:
                a = self._forced[t]
            self._wave[t] = a
            speaking = self._dense_on and frame_is_speech(a)
        reward = float(self._pen_speak[t] if speaking else self._pen_silent[t]) if self._dense_on else 0.0
        t += 1
        self._t = t
        info = {"frame": t - 1, "forced": forced, "in_segment": t > self._p}
        terminated = t == self._n
        if terminated:
            reward += self._finish(reward, info)
        self._rewards[t - 1] = reward
        if terminated and self.record_dir is not None:
            self._episodes_saved += 1
            path = self.episode_record().save(self.record_dir / f"{self._episodes_saved:06d}-{self._segment.id}")
            info["record"] = str(path)
        return self._obs[t].copy(), reward, terminated, False, info

    def _coerce_tokens(self, action) -> np.ndarray:
        a = np.asarray(action)
        if a.shape != (N_STREAMS,):
            raise ValueError(f"tokens action must have shape (9,) (text token + 8 codebooks), got {a.shape}")
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)):
                raise ValueError(f"tokens action contains NaN or inf: {a.tolist()}")
            if not np.all(a == np.round(a)):
                raise ValueError(f"tokens action must hold integers, got {a.tolist()}")
        elif a.dtype.kind not in "iu":
            raise ValueError(f"tokens action must be an integer array, got dtype {a.dtype}")
        return a.astype(np.int64)

    def _bad_tokens(self, a: np.ndarray):
        if a[0] < 0 or a[0] >= self.text_card:
            raise ValueError(f"text token {int(a[0])} is out of range [0, {self.text_card})")
        bad = int(np.flatnonzero((a[1:] < 0) | (a[1:] >= MIMI_CARDINALITY))[0])
        raise ValueError(f"audio token {int(a[1 + bad])} of codebook {bad} is out of range [0, {MIMI_CARDINALITY})")

    def _coerce_wave(self, action) -> np.ndarray:
        a = action if type(action) is np.ndarray else np.asarray(action)
        if a.shape != (FRAME_SAMPLES,):
            raise ValueError(f"waveform action must have shape ({FRAME_SAMPLES},) (80 ms at 24 kHz), got {a.shape}")
        if a.dtype.kind != "f":
            raise ValueError(f"waveform action must be floating point in [-1, 1], got dtype {a.dtype}")
        lo, hi = float(a.min()), float(a.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("waveform action contains NaN or inf")
        if lo < -1.0 or hi > 1.0:
            raise ValueError(f"waveform action must lie in [-1, 1], got samples from {lo:.3f} to {hi:.3f}")
        return a

    def provide_decoded_audio(self, codes: np.ndarray, audio: np.ndarray) -> None:
        """The agent's audio of this episode's segment frames decoded elsewhere (a trainer's runner
        decodes its whole group in one Mimi batch on its device): codes ``[8, segment_frames]`` and
        float32 ``[segment_frames * 1920]``. The vad reader reads it at the episode's end instead of
        decoding the record, if the record's codes are these (else the env decodes them itself)."""
        f = self._segment.n_frames
        codes, audio = np.asarray(codes), np.asarray(audio, dtype=np.float32)
        if codes.shape != (MIMI_CODEBOOKS, f) or audio.shape != (f * FRAME_SAMPLES,):
            raise ValueError(f"decoded audio of this episode: codes [{MIMI_CODEBOOKS}, {f}] and [{f * FRAME_SAMPLES}] "
                             f"samples, got {codes.shape} and {audio.shape}")
        self._decoded = (codes.astype(np.int16), audio)

    def _finish(self, dense_last: float, info: dict) -> float:
        dense_total = float(self._rewards[self._p : self._n - 1].sum()) + dense_last
        record = self._make_record()
        decoded = None
        if self._decoded is not None and record.audio_codes is not None \
                and np.array_equal(self._decoded[0], record.audio_codes):
            decoded = self._decoded[1]
        terms = score_episode(record, self.reward_spec, dense_total, stored=self._stored_terms, decoded=decoded)
        self._record = EpisodeRecord(**{**record.__dict__, "reward_terms": terms})
        info["reward_terms"] = terms
        return terms["reward"]

    def _make_record(self) -> EpisodeRecord:
        seg, p = self._segment, self._p
        tokens = self.action_mode == "tokens"
        text, words = None, None
        act = self._act[p:] if tokens else None  # the segment's frames: rewards see only them
        if tokens and self.text_tokenizer is not None:
            from duplexgym.rewards.text import decode_words

            text, words = decode_words(act[:, 0], self.text_tokenizer)
        prefix = None
        if p:
            prefix = {"lead_in_frames": self._lead, "context_frames": self._ctx,
                      "text_tokens": self._act[:p, 0].astype(np.int32) if tokens else None,
                      "audio_codes": self._act[:p, 1:].T.astype(np.int16) if tokens else None,
                      "audio": None if tokens else self._wave[:p].reshape(-1).copy()}
        return EpisodeRecord(
            segment=seg,
            seed=self._seed,
            env=self._config,
            forced_frames=self._k,
            text_tokens=act[:, 0].astype(np.int32) if tokens else None,
            audio_codes=act[:, 1:].T.astype(np.int16) if tokens else None,
            audio=None if tokens else self._wave[p:].reshape(-1).copy(),
            agent_text=text,
            agent_words=words,
            obs_sha256=self._obs_sha256,
            rewards=self._rewards[p:],
            prefix=prefix,
        )

    # -- records ------------------------------------------------------------------------------

    def set_text_tokenizer(self, path: str | Path) -> None:
        """Decode the agent's text stream with this SentencePiece model from the next episode on
        (an agent that brings its own tokenizer, e.g. Moshi's, calls it)."""
        from duplexgym.rewards.text import load_tokenizer

        load_tokenizer(str(path))  # a bad path fails here, not at an episode's end
        self.text_tokenizer = str(path)
        if hasattr(self, "_config"):
            self._config = self.config()

    def config(self) -> dict:
        """What it takes to rebuild this env for a replay (JSON-ready)."""
        return {
            "id": self.env_id,
            "corpus": str(self.corpus.path),
            "axes": list(self._by_axis),
            "obs_mode": self.obs_mode,
            "action_mode": self.action_mode,
            "text_card": self.text_card,
            "codec": self.codec,
            "codec_id": self.corpus.codec_id,
            "text_tokenizer": self.text_tokenizer,
            "lead_in_s": self.lead_in_s,
            "rewards": self.reward_spec.to_dict(),
        }

    def episode_record(self) -> EpisodeRecord:
        """The record of the episode that just ended (rewards filled in)."""
        if self._record is None:
            raise ResetNeeded("no finished episode yet: step until terminated first")
        rec = self._record
        return EpisodeRecord(**{**rec.__dict__, "rewards": self._rewards[self._p:].copy()})
