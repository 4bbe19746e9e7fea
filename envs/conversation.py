"""``duplexgym/Conversation-v0``: a live multi-turn dialogue with a simulated user that reacts to the agent."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import ChainMap
from pathlib import Path

import gymnasium as gym
import numpy as np
from duplexgym.corpora.manifest import Segment
from duplexgym.envs.corpus import ReplayCorpus
from duplexgym.envs.replay import (
    ACTION_MODES,
    OBS_MODES,
    DuplexReplayEnv,
    ForcedPrefix,
    ResetNeeded,
)
from duplexgym.envs.simulated_user import (
    STREAMS,
    SimulatedUser,
    StreamingSpeech,
    load_user_params,
)
from duplexgym.envs.user_lines import SOURCES, UserSourceError, Utterance, make_source
from duplexgym.rewards.dense import frame_is_speech
from duplexgym.rewards.live import (
    LIVE_AXIS,
    LiveScoring,
    dense_unit,
    dense_window,
    score_live,
)
from duplexgym.rewards.live_judge import load_judge_params
from duplexgym.rewards.record import EpisodeRecord
from duplexgym.rewards.spec import RewardSpec, load_spec
from gymnasium import spaces

from duplexgym.constants import (
    FRAME_S,
    FRAME_SAMPLES,
    MIMI_CARDINALITY,
    MIMI_CODEBOOKS,
    N_STREAMS,
    TEXT_CARD,
    TEXT_PAD_IDS,
)

ENV_ID = "duplexgym/Conversation-v0"
#: Keys of ``reset(options=...)``.
RESET_OPTIONS = {"dialogue", "user_seed", "stored_lines", "stored_terms"}
#: Longest dialogue (s).
MAX_S_LIMIT = 600.0
LIVE_RECORD_VERSION = 1


class LiveCorpus:
    """The env's corpus as agents see it (``env.unwrapped.corpus``): the corpus folder's segments,
    codec and silence codes, plus the current dialogue as a segment of axis ``conversation`` (so
    the baselines, which look their episode up by ``info["segment"]``, run unchanged). It has no
    recorded audio: an agent that replays the human reference (``oracle``) cannot play it."""

    def __init__(self, corpus: ReplayCorpus):
        self.base = corpus
        self._live: dict[str, Segment] = {}
        self.by_id = ChainMap(self._live, corpus.by_id)

    def __getattr__(self, name):
        return getattr(self.base, name)

    def register(self, segment: Segment) -> None:
        self._live.clear()
        self._live[segment.id] = segment

    def audio(self, segment: Segment) -> np.ndarray:
        if segment.axis == LIVE_AXIS:
            raise ValueError(f"{segment.id}: a live dialogue has no recorded human reference to replay (the oracle "
                             "agent plays one); use the vad agent as the rule-based reference")
        return self.base.audio(segment)

    def codes(self, segment: Segment) -> np.ndarray:
        if segment.axis == LIVE_AXIS:
            raise ValueError(f"{segment.id}: a live dialogue has no recorded human reference codes (the oracle "
                             "agent plays them); use the vad agent as the rule-based reference")
        return self.base.codes(segment)


class ConversationEnv(gym.Env):
    """A live dialogue of up to ``max_s`` with a simulated user that reacts to the agent, frame by frame.

    ## Description
    Replay episodes are open-loop: the user's audio is fixed whatever the model does. Here the user
    is simulated (:mod:`duplexgym.envs.simulated_user`): it hears whether the agent is speaking,
    read online from the agent's own output (Moshi's text stream in ``tokens`` mode; streaming
    silero VAD on its audio in ``waveform`` mode), and decides every 80 ms frame what it does:
    after its turn it waits; when the agent's answer ends it starts its next turn after a human gap;
    if the agent stays silent it re-prompts or goes on; if the agent cuts in it yields (or talks on);
    during long agent turns it backchannels and sometimes barges in. What it says comes from one of
    three sources (:mod:`duplexgym.envs.user_lines`): ``replay`` (real human turns of a corpus
    dialogue, in order), ``script`` (staged tasks spoken with offline flite TTS) or ``llm`` (lines
    written by an OpenAI-compatible chat server from the transcript so far, spoken with the same TTS).

    ## Action Space, Observation Space
    Exactly the replay envs' (:class:`~duplexgym.envs.replay.DuplexReplayEnv`), so every agent runs
    unchanged: ``action_mode="tokens"``: ``MultiDiscrete([text_card] + [2048] * 8)``;
    ``"waveform"``: ``Box(-1, 1, (1920,), float32)``. ``obs_mode="codes"``: the user's next frame
    as 8 Mimi codes; ``"waveform"``: its 1920 samples. ``reset()`` returns user frame 0, ``step(t)``
    user frame ``t + 1``. In codes mode each user utterance is encoded once with the corpus' codec
    (on its own, starting from silence: memoised), and silent frames are the codec's silence codes,
    so the stream's codes at an utterance's edges can differ slightly from encoding the whole
    stream at once; waveform observations are the exact audio.

    ## Rewards
    At the last step: the dialogue reward (:func:`duplexgym.rewards.live.score_live`): the axis
    terms of the reward spec applied to each event of the dialogue (every user turn end a
    turn-taking event, every user pause a pause event, every barge-in an interruption event, every
    long user turn a backchannel window), summed, plus the optional ``judge`` term (Full-Duplex-Bench
    v2's 1-5 scales over the transcript). With ``dense.weight > 0`` each step also pays a shaping
    reward (:func:`~duplexgym.rewards.live.live_dense_rewards`; total in ``[-weight, 0]``).
    ``info["reward_terms"]`` at the last step: ``reward``, ``terms`` (per axis: summed ``value``,
    ``weight``, ``events``), ``events`` (each with the ``frame`` its window closes: for credit in
    time), ``timing`` (answered share, latency median / p90, cut-ins per minute, yield time,
    overlap share, backchannels per minute, long silences), ``failed``.

    ## Starting State
    A dialogue of the source and a user seed. ``reset(seed=s)`` draws both from ``self.np_random``;
    ``options["dialogue"]``: a dialogue id (``source.dialogue_ids()``: ``"syn0003.A"`` for replay,
    the task id for script / llm) or an int *dialogue seed*, which picks the dialogue and is the
    user seed; ``options["user_seed"]``: the user seed explicitly. Equal dialogue and user seed give
    the same user draws (gaps, yields, barge-ins, backchannels), so G rollouts of one group
    (``options={"dialogue": k}`` for each) share content and randomness and differ only where
    their agents do. ``options["stored_lines"]``: the llm source's lines, as a record holds them
    (replays; no request is made); ``options["stored_terms"]``: the judge term to take from a record.

    ## Episode End
    Terminates when the user would start a turn past ``max_turns``, when its source has nothing
    more to say, after ``max_s`` (``info["n_frames"]`` bounds the length), or at once when the
    source fails (a server that fails or hangs past its retries, a TTS failure): then
    ``info["failed"]`` holds the error, the reward is 0 and the dialogue is no data to learn from
    (eval counts it as failed). Never truncates. Stepping again raises :class:`ResetNeeded`.

    ## Info
    ``reset``: ``segment`` (the dialogue's segment id, ``live-{dialogue}``), ``axis``
    (``"conversation"``), ``n_frames`` (the most frames: ``max_s / 0.08``), ``event_frame`` (0),
    ``forced_frames`` (0), ``forced_prefix`` (empty), ``forced`` (False), ``dialogue``, ``user``
    (the source), ``user_seed``, ``goal`` (script / llm: the task's goal, else None).
    ``step``: ``frame``, ``forced`` (False); at the last step ``reward_terms``, ``live`` (the
    user's schedule: what was said, when, why), ``n_frames`` (the dialogue's length), ``failed``
    (when it failed) and ``record`` (with ``record_dir``).

    ## Arguments
    ``corpus`` (folder or ReplayCorpus; required: the codec, silence codes and, for ``replay``, the
    speech), ``user`` (``replay`` | ``script`` | ``llm``), ``obs_mode``, ``action_mode``, ``rewards``,
    ``codec``, ``text_card``, ``text_tokenizer`` (as the replay envs), ``max_s`` (60), ``max_turns``
    (None: no limit), ``user_params`` (:class:`~duplexgym.envs.simulated_user.UserParams` or a dict:
    every timing parameter), ``script`` (a script YAML / dict for ``script`` and ``llm``; None: the
    built-in tasks), ``llm`` (:class:`~duplexgym.envs.user_lines.LlmParams` dict: ``base_url``,
    ``model``, ...), ``dialogues`` (restrict to these ids), ``scoring``
    (:class:`~duplexgym.rewards.live.LiveScoring` or a dict), ``judge``
    (:class:`~duplexgym.rewards.live_judge.LiveJudgeParams` dict; None: no judge), ``asr_model_dir``
    (a faster-whisper folder: the agent's words for the llm source in waveform mode), ``record_dir``.

    ## Example
    >>> import gymnasium as gym, duplexgym
    >>> env = gym.make("duplexgym/Conversation-v0", corpus="runs/default-corpus", user="script")  # doctest: +SKIP
    >>> obs, info = env.reset(seed=0)                                                           # doctest: +SKIP
    >>> done = False
    >>> while not done:                                                                         # doctest: +SKIP
    ...     obs, reward, done, _, info = env.step(env.action_space.sample())
    >>> info["reward_terms"]["timing"]["answered_share"]                                        # doctest: +SKIP
    """

    metadata = {"render_modes": []}

    # the replay env's action checks, shared (they read nothing but ``text_card``)
    _coerce_tokens = DuplexReplayEnv._coerce_tokens
    _bad_tokens = DuplexReplayEnv._bad_tokens
    _coerce_wave = DuplexReplayEnv._coerce_wave

    def __init__(self, corpus, user: str = "replay", obs_mode: str = "codes", action_mode: str = "tokens",
                 rewards=None, codec: str | None = None, text_card: int = TEXT_CARD, max_s: float = 60.0,
                 max_turns: int | None = None, user_params=None, script=None, llm=None, dialogues=None,
                 scoring=None, judge=None, record_dir=None, env_id: str | None = ENV_ID,
                 text_tokenizer=None, asr_model_dir=None):
        super().__init__()
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        if user not in SOURCES:
            raise ValueError(f"user must be one of {', '.join(SOURCES)}, got {user!r}")
        if isinstance(max_s, bool) or not isinstance(max_s, (int, float)) or not 0 < max_s <= MAX_S_LIMIT:
            raise ValueError(f"max_s must be a number in (0, {MAX_S_LIMIT:g}] seconds, got {max_s!r}")
        if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1):
            raise ValueError(f"max_turns must be a whole number >= 1 or None, got {max_turns!r}")
        if int(text_card) < 5:
            raise ValueError(f"text_card must be at least 5, got {text_card}")
        base = corpus if isinstance(corpus, ReplayCorpus) else ReplayCorpus(corpus)
        self.corpus = LiveCorpus(base)
        self.obs_mode, self.action_mode, self.text_card = obs_mode, action_mode, int(text_card)
        self.user_kind = user
        self.max_s, self.max_turns = float(max_s), max_turns
        self.max_frames = max(1, int(round(self.max_s / FRAME_S)))
        self.user_params = load_user_params(user_params)
        self.scoring = scoring if isinstance(scoring, LiveScoring) else _load_scoring(scoring)
        self.judge_params = load_judge_params(judge)
        default_reader = "text" if action_mode == "tokens" else "vad"
        self.reward_spec: RewardSpec = load_spec(rewards) if rewards is not None else load_spec(
            {"activity": {"reader": default_reader}})
        if self.reward_spec.activity.reader == "text" and action_mode == "waveform":
            raise ValueError("the reward spec reads the text stream (activity.reader: text), but action_mode='waveform' "
                             "has none")
        self.codec = codec if codec is not None else base.codec_spec
        needs_codec = obs_mode == "codes" or (action_mode == "tokens" and self.reward_spec.activity.reader == "vad")
        if needs_codec and not self.codec:
            raise ValueError(f"{base.path}: obs_mode='codes' needs the corpus codec to encode the user's lines (and a "
                             "vad reward reader in tokens mode to decode the agent's); build the corpus with --codec "
                             "or use obs_mode='waveform', action_mode='waveform'")
        if obs_mode == "codes" and base.info.get("silence_codes") is None:
            raise ValueError(f"{base.path}: corpus.json has no silence_codes; rebuild the corpus with --codec")
        try:
            self.source = make_source(user, base, script, llm)
        except UserSourceError as exc:
            raise ValueError(str(exc)) from None
        ids = self.source.dialogue_ids()
        if dialogues is not None:
            dialogues = [dialogues] if isinstance(dialogues, str) else list(dialogues)
            missing = [d for d in dialogues if d not in ids]
            if missing:
                raise ValueError(f"dialogues: no {user} dialogue {missing[0]!r}; known: {', '.join(ids[:8])}"
                                 + (" ..." if len(ids) > 8 else ""))
            ids = dialogues
        if not ids:
            raise ValueError(f"the {user} source has no dialogues ({base.path})")
        self.dialogue_ids = ids
        self._dialogues_arg = None if dialogues is None else list(ids)
        self.asr_model_dir = None if asr_model_dir is None else str(asr_model_dir)
        self.env_id = env_id
        self.record_dir = None if record_dir is None else Path(record_dir)
        self.text_tokenizer = None
        if text_tokenizer is not None:
            self.set_text_tokenizer(text_tokenizer)

        if obs_mode == "codes":
            self.observation_space = spaces.MultiDiscrete([MIMI_CARDINALITY] * MIMI_CODEBOOKS, dtype=np.int64)
            self._silence = np.asarray(base.info["silence_codes"], dtype=np.int64)
        else:
            self.observation_space = spaces.Box(-1.0, 1.0, (FRAME_SAMPLES,), np.float32)
            self._silence = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        if action_mode == "tokens":
            self.action_space = spaces.MultiDiscrete([self.text_card] + [MIMI_CARDINALITY] * MIMI_CODEBOOKS,
                                                     dtype=np.int64)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (FRAME_SAMPLES,), np.float32)
        self._tokens = action_mode == "tokens"
        act = self.reward_spec.activity
        self._n_word = max(1, int(np.ceil(act.word_s / FRAME_S - 1e-9)))
        self._vad = None
        if not self._tokens:
            vad = act.vad
            self._vad = StreamingSpeech(vad.threshold, vad.neg_threshold)
        self._mimi = None
        self._obs_cache: dict[str, np.ndarray] = {}
        self._row_cache: dict[str, list] = {}
        self._episodes_saved = 0
        self._t = -1
        self._done = True
        self._record: EpisodeRecord | None = None
        self._config = self.config()

    # -- episode set-up ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._seed = seed
        options = dict(options or {})
        unknown = set(options) - RESET_OPTIONS
        if unknown:
            raise ValueError(f"reset options: unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(RESET_OPTIONS))}")
        choice = options.get("dialogue")
        user_seed = options.get("user_seed")
        if user_seed is not None and (isinstance(user_seed, bool) or not isinstance(user_seed, (int, np.integer))
                                      or user_seed < 0):
            raise ValueError(f"reset options: user_seed must be a whole number >= 0, got {user_seed!r}")
        if choice is None:
            choice = int(self.np_random.integers(2**62))
        if isinstance(choice, (int, np.integer)) and not isinstance(choice, bool):
            if choice < 0:
                raise ValueError(f"reset options: a dialogue seed must be >= 0, got {choice}")
            pick = np.random.default_rng([int(choice), 0x1D1A]).integers(len(self.dialogue_ids))
            dialogue = self.dialogue_ids[int(pick)]
            user_seed = int(choice) if user_seed is None else int(user_seed)
        elif isinstance(choice, str):
            if choice not in self.dialogue_ids:
                raise ValueError(f"reset options: no dialogue {choice!r} among {len(self.dialogue_ids)} of the "
                                 f"{self.user_kind} source (e.g. {', '.join(self.dialogue_ids[:3])})")
            dialogue = choice
            user_seed = int(self.np_random.integers(2**62)) if user_seed is None else int(user_seed)
        else:
            raise ValueError(f"reset options: dialogue must be an id (str) or a dialogue seed (int), got {choice!r}")
        stored_lines = options.get("stored_lines")
        self._stored_terms = options.get("stored_terms")
        self._begin(dialogue, user_seed, stored_lines)
        return self._obs[0].copy(), self._reset_info()

    def _begin(self, dialogue: str, user_seed: int, stored_lines) -> None:
        n = self.max_frames
        self._dialogue, self._user_seed = dialogue, user_seed
        pauses_rng = np.random.default_rng([user_seed, STREAMS.index("pause")])
        lo, hi = self.user_params.pause_s
        try:
            lines = self.source.open(dialogue, np.random.default_rng([user_seed, STREAMS.index("source")]),
                                     lambda k: tuple(float(lo + (hi - lo) * pauses_rng.random()) for _ in range(k)),
                                     stored_lines)
        except UserSourceError as exc:
            raise ValueError(str(exc)) from None
        self._lines = lines
        self._user = SimulatedUser(self.user_params, lines, self._obs_rows, user_seed, self.max_turns, self._agent_words)
        self._obs = np.empty((1,) + self._silence.shape, dtype=self._silence.dtype)
        self._obs[0] = self._silence  # the whole stream is rebuilt from the schedule at the end
        self._holding = np.zeros(n + 1, dtype=bool)
        if self._tokens:
            self._act = np.zeros((n, N_STREAMS), dtype=np.int64)
        else:
            self._wave = np.zeros((n, FRAME_SAMPLES), dtype=np.float32)
            self._vad.reset()
        self._was_speaking, self._flips = False, []
        self._speech_end = 0
        self._rewards = np.zeros(n, dtype=np.float64)
        self._dense_weight = float(self.reward_spec.dense_weight)
        self._dense_on = self._dense_weight != 0.0
        self._unit = dense_unit(self._dense_weight, n)
        self._win = dense_window(self.scoring)
        self._last_end = -1
        self._failed: str | None = None
        self._t, self._done = 0, False
        self._record = None
        self._segment_id = f"live-{dialogue}"
        self.corpus.register(self._segment(n, (), ()))

    def _segment(self, n: int, spans, words) -> Segment:
        return Segment(id=self._segment_id, axis=LIVE_AXIS, dialogue=self._dialogue, user="user", reference="agent",
                       start_s=0.0, end_s=round(n * FRAME_S, 4), n_frames=n, event_s=0.0,
                       user_spans_s=tuple(tuple(s) for s in spans) if spans else None,
                       user_words=tuple(words) if words else None, has_reference=False)

    def _reset_info(self) -> dict:
        empty = np.zeros((0, N_STREAMS) if self._tokens else (0, FRAME_SAMPLES),
                         dtype=np.int64 if self._tokens else np.float32)
        return {"segment": self._segment_id, "axis": LIVE_AXIS, "n_frames": self.max_frames, "event_frame": 0,
                "forced_frames": 0, "forced_prefix": ForcedPrefix(0, empty, np.zeros(0, np.float32)),
                "forced": False, "dialogue": self._dialogue, "user": self.user_kind, "user_seed": self._user_seed,
                "goal": self._lines.goal}

    def _obs_rows(self, utt: Utterance) -> list:
        """:meth:`_obs_of` as a list of rows (what the user indexes every frame: a list is faster)."""
        rows = self._row_cache.get(utt.key)
        if rows is None:
            rows = self._row_cache[utt.key] = list(self._obs_of(utt))
            if len(self._row_cache) > 512:
                self._row_cache.pop(next(iter(self._row_cache)))
        return rows

    def _obs_of(self, utt: Utterance) -> np.ndarray:
        """An utterance's observation rows ``[n, 8]`` int64 or ``[n, 1920]`` float32 (memoised)."""
        rows = self._obs_cache.get(utt.key)
        if rows is None:
            if self.obs_mode == "waveform":
                rows = utt.audio.reshape(-1, FRAME_SAMPLES)
            else:
                from duplexgym.corpora.codec import encode, load_mimi

                if self._mimi is None:
                    self._mimi = load_mimi(self.codec)
                rows = np.ascontiguousarray(encode(self._mimi, np.array(utt.audio)).T, dtype=np.int64)
                rows.setflags(write=False)
            if len(self._obs_cache) >= 512:
                self._obs_cache.pop(next(iter(self._obs_cache)))
            self._obs_cache[utt.key] = rows
        return rows

    # -- stepping -----------------------------------------------------------------------------------

    def step(self, action):
        t = self._t
        if t < 0 or self._done:
            raise ResetNeeded("call reset() before step()" if t < 0 else
                              "the dialogue ended; call reset() before stepping again")
        if self._tokens:
            a = action if (type(action) is np.ndarray and action.shape == (9,) and action.dtype.kind in "iu") \
                else self._coerce_tokens(action)
            v = a.tolist()
            if not 0 <= v[0] < self.text_card or min(v) < 0 or max(v[1:]) >= MIMI_CARDINALITY:
                self._bad_tokens(a)
            self._act[t] = a
            tok = v[0]
            said = tok != TEXT_PAD_IDS[1] and tok != TEXT_PAD_IDS[0]
            if said and t + self._n_word > self._speech_end:
                self._speech_end = t + self._n_word
            speaking = t < self._speech_end
            dense_speaking = said
        else:
            a = self._coerce_wave(action)
            self._wave[t] = a
            speaking = self._vad.push(a)
            if speaking:
                self._speech_end = t + 1
            dense_speaking = self._dense_on and frame_is_speech(a)
        if speaking != self._was_speaking:  # the online reading's turns, for the llm's transcript
            self._was_speaking = speaking
            self._flips.append(t)
        reward = 0.0
        if self._dense_on:
            holding = self._holding[t]
            since = t - self._last_end
            want = self._last_end >= 0 and self._win[0] <= since < self._win[1] and not holding
            if (holding and dense_speaking) or (want and not dense_speaking):
                reward = self._unit
        n = t + 1
        user = self._user
        try:
            row = user.step(t, speaking, self._speech_end)
        except (UserSourceError, OSError) as exc:
            row, self._failed = None, f"{type(exc).__name__}: {exc}"
        if self._dense_on:
            self._holding[n] = row is not None and user.holding
            if self._holding[t] and not self._holding[n]:
                self._last_end = n
        self._rewards[t] = reward
        self._t = n
        info = {"frame": t, "forced": False}
        if user.done or n >= self.max_frames or self._failed is not None:
            self._done = True
            reward += self._finish(n, info)
            self._rewards[t] = reward
            if self.record_dir is not None:
                self._episodes_saved += 1
                path = self.episode_record().save(self.record_dir / f"{self._episodes_saved:06d}-{self._segment_id}")
                info["record"] = str(path)
            return self._obs[n].copy(), reward, True, False, info
        return (self._silence if row is None else row).copy(), reward, False, False, info

    # -- the end --------------------------------------------------------------------------------

    def _finish(self, n: int, info: dict) -> float:
        user = self._user
        user.close(n)
        self._obs = self._observations(n)
        live = self._live(n)
        record = self._make_record(n, live)
        judge = None
        if self.judge_params is not None and self._failed is None:
            judge = _Judge(self.judge_params, self._lines.goal)
        terms = score_live(record, self.reward_spec, self.scoring, float(self._rewards[:n].sum()),
                           stored=self._stored_terms, judge=judge)
        if self._failed is not None:
            info["failed"] = self._failed
        self._record = dataclasses.replace(record, reward_terms=terms)
        info["reward_terms"], info["live"], info["n_frames"] = terms, live, n
        return terms["reward"]

    def _live(self, n: int) -> dict:
        user = self._user
        live = user.record(n)
        live.update({"version": LIVE_RECORD_VERSION, "source": self.user_kind, "dialogue": self._dialogue,
                     "user_seed": self._user_seed, "goal": self._lines.goal, "task": self._lines.task,
                     "max_frames": self.max_frames, "lines": self._lines.said(), "failed": self._failed})
        return live

    def _make_record(self, n: int, live: dict) -> EpisodeRecord:
        spans = sorted(tuple(s) for e in live["schedule"] for s in e.get("speech_s") or ())
        words = [{"start_s": w[0], "end_s": w[1], "text": w[2]}
                 for e in live["schedule"] for w in (e.get("words") or ())]
        text, agent_words = None, None
        if self._tokens and self.text_tokenizer is not None:
            from duplexgym.rewards.text import decode_words

            text, agent_words = decode_words(self._act[:n, 0], self.text_tokenizer)
        obs = np.ascontiguousarray(self._obs)
        return EpisodeRecord(
            segment=self._segment(n, spans, words), seed=self._seed, env=self._config, forced_frames=0,
            text_tokens=self._act[:n, 0].astype(np.int32) if self._tokens else None,
            audio_codes=self._act[:n, 1:].T.astype(np.int16) if self._tokens else None,
            audio=None if self._tokens else self._wave[:n].reshape(-1).copy(),
            agent_text=text, agent_words=agent_words, obs_sha256=hashlib.sha256(obs.tobytes()).hexdigest(),
            rewards=self._rewards[:n].copy(), live=live)

    def _observations(self, n: int) -> np.ndarray:
        """The observation stream of the ``n``-frame dialogue that just ended, ``[n + 1, ...]``:
        what ``reset`` and every ``step`` returned, rebuilt from the schedule."""
        obs = np.empty((n + 1,) + self._silence.shape, dtype=self._silence.dtype)
        obs[:] = self._silence
        for e, utt in zip(self._user.schedule, self._user.played):
            lo, hi = e["start_frame"], min(n + 1, e["end_frame"])
            if hi > lo:
                obs[lo:hi] = self._obs_of(utt)[: hi - lo]
        return obs

    def _agent_words(self, frame: int) -> list:
        """The agent's ``(start_s, end_s, word)`` before ``frame`` (the llm user's transcript)."""
        if self._tokens and self.text_tokenizer is not None:
            from duplexgym.rewards.text import decode_words

            return list(decode_words(self._act[:frame, 0], self.text_tokenizer)[1])
        if not self._tokens and self.asr_model_dir is not None and frame > 0:
            from duplexgym.rewards.asr import transcribe

            return transcribe(self._wave[:frame].reshape(-1), self.asr_model_dir)
        flips = [f for f in self._flips if f < frame]
        if len(flips) % 2:
            flips.append(frame)
        return [(a * FRAME_S, b * FRAME_S, f"[speech {(b - a) * FRAME_S:.1f} s, words unknown]")
                for a, b in zip(flips[::2], flips[1::2])]

    # -- records ----------------------------------------------------------------------------------

    def user_audio(self) -> np.ndarray:
        """The user's 24 kHz audio of the dialogue that just ended, float32 ``[F * 1920]``."""
        if self._record is None:
            raise ResetNeeded("no finished dialogue yet: step until terminated first")
        n = self._record.n_frames
        out = np.zeros(n * FRAME_SAMPLES, dtype=np.float32)
        for e, utt in zip(self._user.schedule, self._user.played):
            if e.get("end_frame") is None:
                continue
            lo, hi = e["start_frame"] * FRAME_SAMPLES, e["end_frame"] * FRAME_SAMPLES
            out[lo:hi] = utt.audio[: hi - lo]
        return out

    def set_text_tokenizer(self, path) -> None:
        """Decode the agent's text stream with this SentencePiece model from the next episode on."""
        from duplexgym.rewards.text import load_tokenizer

        load_tokenizer(str(path))
        self.text_tokenizer = str(path)
        if hasattr(self, "_config"):
            self._config = self.config()

    def config(self) -> dict:
        """What it takes to rebuild this env for a replay (JSON-ready; no API key)."""
        return {
            "id": self.env_id, "corpus": str(self.corpus.path), "user": self.user_kind,
            "obs_mode": self.obs_mode, "action_mode": self.action_mode, "text_card": self.text_card,
            "codec": self.codec, "codec_id": self.corpus.codec_id, "text_tokenizer": self.text_tokenizer,
            "rewards": self.reward_spec.to_dict(), "max_s": self.max_s, "max_turns": self.max_turns,
            "user_params": dataclasses.asdict(self.user_params), "dialogues": self._dialogues_arg,
            "source": self.source.describe(), "scoring": dataclasses.asdict(self.scoring),
            "judge": None if self.judge_params is None else self.judge_params.model_dump(),
            "asr_model_dir": self.asr_model_dir,
        }

    def episode_record(self) -> EpisodeRecord:
        """The record of the dialogue that just ended (rewards filled in)."""
        if self._record is None:
            raise ResetNeeded("no finished dialogue yet: step until terminated first")
        rec = self._record
        return dataclasses.replace(rec, rewards=self._rewards[: rec.n_frames].copy())


class _Judge:
    """The ``judge`` term's callable for :func:`~duplexgym.rewards.live.score_live`."""

    def __init__(self, params, goal):
        self.params, self.goal, self.weight = params, goal, params.weight

    def __call__(self, record, speech) -> dict:
        from duplexgym.rewards.live import judge_transcript
        from duplexgym.rewards.live_judge import judge_dialogue

        turns = judge_transcript(record, speech)
        return judge_dialogue(turns, self.goal, bool(speech.spans_s), self.params)


def _load_scoring(raw) -> LiveScoring:
    from duplexgym.config import validate_section

    if raw is None:
        return LiveScoring()
    return validate_section(LiveScoring, raw, ValueError, "scoring",
                            f"scoring must be a mapping of LiveScoring fields, got {type(raw).__name__}")

