"""The Moshi agent: the real ``moshi`` package streaming (``LMGen`` + Mimi) inside duplexgym envs.

``MoshiAgent(source)`` loads a Moshi (:mod:`duplexgym.agents.policies.checkpoint`: ``"tiny"`` or a checkpoint
folder in Kyutai's layout), enters ``lm_gen.streaming(B)`` and ``mimi.streaming(B)`` once for its
whole life, and answers each 80 ms user frame with one action: int64 ``[9]``, the text token and
the 8 Mimi codes of its own voice for that frame (the env's ``tokens`` action mode). Observations
are the user's 8 Mimi codes (``codes`` mode, codes of the agent's own Mimi) or 1920 samples
(``waveform`` mode, encoded by the agent's Mimi in streaming mode).

## Alignment (which frame each returned token belongs to)
``LMGen`` runs one step per env step; step ``t`` is fed user frame ``t`` (what ``reset``/``step``
returned). Moshi's streams are delayed: text and the semantic codebook 0 by 0 frames, the 7
acoustic codebooks by 1 (``delays = [0, 0,1,1,1,1,1,1,1, ...]``), so step ``t`` samples the text
token and codebook 0 of model frame ``t`` and codebooks 1..7 of model frame ``t - 1``, and returns
(``out = lm_gen.step(codes)``, ``[B, 1+8, 1]``, index 0 the text) the complete model frame ``t - 1``.
Moshi was trained with the user stream one step ahead of its own (``LMModel.forward`` pairs model
frame ``f`` with the user frame fed at step ``f + 1``; the user frame fed at step 0 is never read),
so model frame ``t - 1`` is the one simultaneous with user frame ``t``. Hence:

- the action returned for env frame ``t >= 1`` is ``out`` of step ``t``, model frame ``t - 1``: its
  text and codebook 0 were sampled at step ``t - 1`` (having read user frames up to ``t - 1``), its
  codebooks 1..7 at step ``t``, after reading codebook 0 of user frame ``t`` (the user's codebooks
  1..7 of frame ``t`` are read at step ``t + 1``, by the same delays). As a live Moshi, which plays
  this frame while the user's next one arrives: one frame (80 ms) of latency;
- env frame 0 has no model frame (step 0 returns nothing): the agent answers with the text padding
  token (3) and its Mimi's codes of silence (steady state of encoding zeros), or with the forced
  frame 0 in an interruption episode.

## Teacher-forced prefix (interruption episodes)
``reset`` info ``forced_frames = k`` and ``forced_prefix.action = A`` (``[k, 9]``; a bare
``forced_action`` array is read too): the env plays the human reference as the agent's first ``k``
frames (those ``forced_prefix.mask`` marks: a lead-in of user silence before a context is the
agent's own; below, "forced frame ``j``" means ``mask[j]``). The agent makes its state as if it had said them:
env frame ``j`` is model frame ``j - 1``, so at step ``t``

- text and codebook 0 are forced to ``A[t + 1, 0:2]`` while ``t + 1 < k`` (the text
  through ``on_text_logits_hook``: every logit ``-inf`` but the forced token's);
- codebooks 1..7 are forced to ``A[t, 2:]`` while ``t < k``;

through ``lm_gen.step(codes, depformer_replace_tokens=[B, 8, 1])`` when every row is fully forced
(the depformer is skipped; the ``[B, 8]`` are in cache order: codebook 0 of model frame ``t``,
1..7 of model frame ``t - 1``), else through the agent's depformer sampling (step ``k - 1`` samples text and codebook 0
of frame ``k`` freely but keeps the forced acoustic codes of frame ``k - 1``). The actions returned
for frames ``< k`` are therefore read back from the model's own streams and equal the forced ones
exactly (tested); frame 0's forced tokens are returned as given (no model frame holds them).
A waveform-action env's prefix (``[k, 1920]``) is refused: the agent acts in tokens.

## Prompt phases (PersonaPlex)
``prompt`` (a :class:`~duplexgym.agents.policies.personaplex.PersonaPlexPrompt`, or any object with
its ``voice_of(mimi, lm)`` and ``frames_for(axis, tokenizer, mimi, lm)``): at each row reset the
agent runs that episode's :class:`~duplexgym.agents.policies.personaplex.PromptFrames` (``P`` LM steps,
user stream given, every agent stream forced, as one forced prefix with the env's own after it)
before the env's first frame; the other rows do not execute (the LMGen's exec mask) and draw no
noise. Steps of an embeddings voice read its stored input embeddings (a pre-hook of the LM's
transformer, branch-free for CUDA graphs). Env frame 0 is then the model frame of LM step ``P``
(its text and codebook 0 sampled at the last prompt step), so no silence frame stands in for it;
``prompt_frames[r]`` is what row ``r``'s episode started with.

## Sampling and seeds
Top-k sampling with temperature as moshi's ``sample_token`` (``temp``/``top_k`` for audio,
``temp_text``/``top_k_text`` for text; a temperature <= 0 is greedy), drawn with the Gumbel-max
trick from one private ``torch.Generator`` per batch row: the LMGen is built with
``use_sampling=False`` and the agent's text hook and depformer step make the choice, so the global
torch RNG is untouched and a row's actions depend only on its episode seed and its observations,
never on the other rows. Each row reset starts a new episode with seed
``SeedSequence([seed, n])`` (``n`` counts the episodes the agent has started) unless a seed is
passed. Equal seeds and observations give equal actions (in a batch of the same size: batched
float math may round differently across batch sizes).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from duplexgym.agents.policies.base import row_infos
from duplexgym.agents.policies.checkpoint import (  # runtime settings first
    MoshiModels,
    load_models,
)
from duplexgym.agents.policies.personaplex import SINE_TOKENS
from duplexgym.corpora.codec import codec_id, encode
from moshi.models.lm import LMGen, LMModel

from duplexgym.constants import (
    FRAME_SAMPLES,
    MIMI_CARDINALITY,
    MIMI_CODEBOOKS,
    N_STREAMS,
    TEXT_END_PAD,
    TEXT_PAD,
)

#: Silent frames encoded to get the steady-state silence codes (as the corpus builder does).
SILENCE_WARMUP_FRAMES = 4


@dataclass
class _StepControls:
    """What the agent tells its LMGen for one step (persistent tensors, updated in place)."""

    gumbel: torch.Tensor  # [B, n_text + dep_q * n_audio] Gumbel noise of this step, per row
    n_text: int  # noise columns of the text draw (top_k_text, or text_card)
    n_audio: int  # noise columns of each codebook's draw (top_k, or card)
    force_text: torch.Tensor  # [B] bool
    forced_text: torch.Tensor  # [B] long
    force_audio: torch.Tensor  # [B, dep_q] bool, cache order (codebook 0 of frame t, 1..7 of t - 1)
    forced_audio: torch.Tensor  # [B, dep_q] long
    forcing: bool = False  # any row forced this step


def _gumbel_sample(logits: torch.Tensor, gumbel: torch.Tensor, temp: float, top_k: int) -> torch.Tensor:
    """Top-k sampling at temperature ``temp`` (moshi's ``sample_token``), by Gumbel-max.

    ``logits`` ``[B, V]``; ``gumbel`` ``[B, >= min(top_k, V)]``, standard Gumbel noise assigned to
    the candidates in decreasing logit order. Returns ``[B]`` long.
    """
    if temp <= 0.0:
        return logits.argmax(dim=-1)
    k = top_k if 0 < top_k < logits.shape[-1] else logits.shape[-1]
    values, indices = logits.float().topk(k, dim=-1)  # [B, k], sorted
    choice = (values / temp + gumbel[:, :k]).argmax(dim=-1, keepdim=True)
    return indices.gather(-1, choice)[:, 0]


class _AgentLMGen(LMGen):
    """``LMGen`` whose depformer samples from the agent's per-row noise and honours per-row forcing."""

    def __init__(self, lm_model: LMModel, controls: _StepControls, temp: float, top_k: int, **kwargs):
        super().__init__(lm_model, use_sampling=False, temp=temp, top_k=top_k, **kwargs)
        self.controls = controls

    def depformer_step(self, text_token: torch.Tensor, transformer_out: torch.Tensor) -> torch.Tensor:
        # Branch-free in the tensors' values (CUDA-graph safe): masks decide, not Python.
        c, lm = self.controls, self.lm_model
        batch = text_token.shape[0]
        previous = text_token  # [B]
        tokens = []
        with lm.depformer.streaming(batch):
            for cb in range(lm.dep_q):
                logits = lm.forward_depformer(cb, previous[:, None, None], transformer_out)  # [B, 1, 1, card]
                noise = c.gumbel[:, c.n_text + cb * c.n_audio: c.n_text + (cb + 1) * c.n_audio]
                token = _gumbel_sample(logits[:, 0, 0], noise, self.temp, self.top_k)  # [B]
                token = torch.where(c.force_audio[:, cb], c.forced_audio[:, cb], token)
                tokens.append(token)
                previous = token
        return torch.stack(tokens, dim=1)  # [B, dep_q]


class MoshiAgent:
    """A full-duplex Moshi acting in duplexgym envs (tokens action mode; codes or waveform observations).

    ``source``: ``"tiny"``, a checkpoint folder in Kyutai's layout (see
    :mod:`duplexgym.agents.policies.checkpoint`), or a loaded :class:`~duplexgym.agents.policies.checkpoint.MoshiModels`
    (used by this agent alone: the modules hold the streaming state). ``batch_size`` rows run in
    parallel (``reset_batch``/``act_batch``, for vector envs); ``reset``/``act`` are the one-row
    protocol. Sampling: ``temp``/``top_k`` (audio), ``temp_text``/``top_k_text`` (text), Moshi's
    defaults. ``text_tokenizer``: a SentencePiece model overriding the source's (the tiny source
    finds mistral-common's). See the module docstring for the frame alignment, the forced prefix
    and seeding. ``prompt``: the prompt phases each episode starts with (module docstring; a
    ``personaplex:DIR`` source without one is prompted as :func:`~.personaplex.personaplex_prompt` says).

    >>> agent = MoshiAgent("tiny", seed=0)                      # doctest: +SKIP
    >>> agent.check_codec(env.unwrapped.corpus.codec_id)        # doctest: +SKIP
    >>> agent.reset(info); action = agent.act(obs)              # doctest: +SKIP
    """

    name = "moshi"

    def __init__(self, source: str | os.PathLike | MoshiModels = "tiny", batch_size: int = 1, seed: int = 0,
                 temp: float = 0.8, temp_text: float = 0.7, top_k: int = 250, top_k_text: int = 25,
                 device: str | torch.device = "cpu", text_tokenizer: str | os.PathLike | None = None,
                 dtype: torch.dtype = torch.float32, prompt=None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed = int(batch_size), int(seed)
        if isinstance(source, MoshiModels):  # already loaded: its device and dtype rule
            models = source if text_tokenizer is None else replace(source, text_tokenizer=Path(text_tokenizer))
        else:
            models = load_models(source, text_tokenizer, torch.device(device), dtype)
        self.device = models.lm.device
        self.models = models
        self.lm, self.mimi = models.lm, models.mimi
        if self.lm.is_streaming or self.mimi.is_streaming:
            raise ValueError("these Moshi models are already streaming for another agent; load them again")
        self.text_tokenizer_path = str(models.text_tokenizer)
        self._tokenizer = None
        self._codec_id: str | None = None
        # Silence: steady-state codes of zeros, computed before Mimi enters streaming mode.
        silence = encode(self.mimi, np.zeros(SILENCE_WARMUP_FRAMES * FRAME_SAMPLES, dtype=np.float32))[:, -1]
        self.silence_action = np.concatenate([[TEXT_PAD], silence]).astype(np.int64)  # [9]
        self.silence_action.setflags(write=False)

        B, dep_q = self.batch_size, self.lm.dep_q
        n_text = top_k_text if 0 < top_k_text < self.lm.text_card else self.lm.text_card
        n_audio = top_k if 0 < top_k < self.lm.card else self.lm.card
        dev = self.device
        self._gumbel_cpu = torch.zeros(B, n_text + dep_q * n_audio)
        self._controls = _StepControls(
            gumbel=self._gumbel_cpu if dev.type == "cpu" else torch.zeros(B, n_text + dep_q * n_audio, device=dev),
            n_text=n_text, n_audio=n_audio,
            force_text=torch.zeros(B, dtype=torch.bool, device=dev),
            forced_text=torch.zeros(B, dtype=torch.long, device=dev),
            force_audio=torch.zeros(B, dep_q, dtype=torch.bool, device=dev),
            forced_audio=torch.zeros(B, dep_q, dtype=torch.long, device=dev),
        )
        self.temp, self.temp_text, self.top_k, self.top_k_text = float(temp), float(temp_text), int(top_k), int(top_k_text)
        self.lm_gen = _AgentLMGen(self.lm, self._controls, temp=self.temp, top_k=self.top_k,
                                  temp_text=self.temp_text, top_k_text=self.top_k_text,
                                  on_text_logits_hook=self._on_text_logits, support_out_of_sync=True)
        self._generators = [torch.Generator() for _ in range(B)]
        self._codes_in = torch.zeros(B, MIMI_CODEBOOKS, 1, dtype=torch.long, device=dev)  # [B, K, 1]
        self._replace = torch.zeros(B, dep_q, 1, dtype=torch.long, device=dev)  # depformer_replace_tokens

        # Per-row episode state.
        self._started = np.zeros(B, dtype=bool)
        self._t = np.zeros(B, dtype=np.int64)  # steps taken since the row's reset = env frame of the next act
        self._k = np.zeros(B, dtype=np.int64)  # forced frames
        self._prefix: list[np.ndarray] = [np.zeros((0, N_STREAMS), np.int64)] * B
        self._mask: list[np.ndarray] = [np.zeros(0, bool)] * B  # which of the prefix frames are forced
        self.episode_seeds = np.zeros(B, dtype=np.uint64)
        self.episodes_started = 0

        # Prompt phases run at each reset before the episode (PersonaPlex: .personaplex.PersonaPlexPrompt);
        # a PersonaPlex source without one gets its saved prompt, else the official FD-Bench prompts
        if prompt is None and models.personaplex:
            from duplexgym.agents.policies.personaplex import personaplex_prompt

            prompt = personaplex_prompt(models)
        self.prompt = prompt
        self.prompt_frames: list = [None] * B  # per row: the PromptFrames its episode started with
        self._p = np.zeros(B, dtype=np.int64)  # prompt frames of the row's episode
        self._drawing = np.ones(B, dtype=bool)  # rows whose generator draws noise this step
        self._emb_mask = torch.zeros(B, dtype=torch.bool, device=dev)  # transformer input replaced (prompt embeddings)
        self._emb_values = torch.zeros(B, 1, self.lm.dim, dtype=self.lm.dtype, device=dev)
        self._stack = contextlib.ExitStack()
        if prompt is not None:  # the input-embedding replacement of an embeddings voice prompt (branch-free)
            prompt.voice_of(self.mimi, self.lm)  # a wav voice is Mimi-encoded now, before Mimi streams
            handle = self.lm.transformer.register_forward_pre_hook(self._replace_input, with_kwargs=True)
            self._stack.callback(handle.remove)
        with torch.inference_mode():
            self._stack.enter_context(self.lm_gen.streaming(B))
            self._stack.enter_context(self.mimi.streaming(B))

    # -- set-up helpers -----------------------------------------------------------------------

    @classmethod
    def for_env(cls, env, source: str | os.PathLike | MoshiModels = "tiny", **kwargs) -> "MoshiAgent":
        """An agent checked against ``env`` (a DuplexReplayEnv or a wrapper): tokens action mode,
        a text vocabulary that fits the action space, and the corpus' codec (:meth:`check_codec`)."""
        base = env.unwrapped
        if getattr(base, "action_mode", "tokens") != "tokens":
            raise ValueError(f"the moshi agent acts in action_mode='tokens', the env has {base.action_mode!r}")
        agent = cls(source, **kwargs)
        try:
            if agent.lm.text_card > base.text_card:
                raise ValueError(f"the LM emits text ids below {agent.lm.text_card}, the env's action space "
                                 f"only {base.text_card} (its text_card)")
            agent.check_codec(base.corpus.codec_id)
        except Exception:
            agent.close()
            raise
        return agent

    @property
    def codec_id(self) -> str:
        """The id of the agent's Mimi (:func:`duplexgym.corpora.codec.codec_id`)."""
        if self._codec_id is None:
            self._codec_id = codec_id(self.mimi)
        return self._codec_id

    def check_codec(self, corpus_codec_id: str | None) -> None:
        """Raise ``ValueError`` unless codes of ``corpus_codec_id`` are codes of the agent's Mimi.

        The agent reads the user's codes and writes its own with its Mimi; codes of another codec
        mean nothing to it.
        """
        if corpus_codec_id is None:
            raise ValueError("the corpus records no codec id (built without --codec?); the moshi agent needs "
                             f"Mimi codes of its own codec {self.codec_id}")
        if corpus_codec_id != self.codec_id:
            raise ValueError(
                f"codec mismatch: the corpus codes come from {corpus_codec_id}, the agent's Mimi is "
                f"{self.codec_id} (source {self.models.source!r}); build the corpus with the agent's Mimi "
                "(`--codec tiny` for the tiny Moshi, or the checkpoint's Mimi .safetensors) or load the matching model"
            )

    def close(self) -> None:
        """Leave streaming mode (the models can then serve another agent)."""
        self._stack.close()

    def __enter__(self) -> "MoshiAgent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- protocol ------------------------------------------------------------------------------

    def reset(self, info: dict, seed: int | None = None) -> None:
        """Start an episode (``batch_size`` 1): ``info`` is the env's reset info."""
        self._need_single()
        self.reset_batch([info], None, None if seed is None else [seed])

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The agent's frame for the user frame ``observation`` (``[8]`` codes or ``[1920]`` samples): int64 ``[9]``."""
        self._need_single()
        return self.act_batch(np.asarray(observation)[None])[0]

    def reset_batch(self, infos: list, mask=None, seeds=None) -> None:
        """Start a new episode on the rows where ``mask`` is true (all rows when ``None``).

        ``infos``: one reset info per row (ignored where the mask is false), or a gymnasium vector
        env's info dict (arrays over the rows, ``_key`` masks). ``seeds[r]``: an explicit episode
        seed (default: derived from the agent seed and the episode count). Other rows go on
        untouched (``reset_streaming(mask)`` of the LMGen and the Mimi).
        """
        B = self.batch_size
        rows = np.ones(B, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).reshape(-1)
        if rows.shape != (B,):
            raise ValueError(f"mask must have {B} entries (batch_size), got {rows.shape[0]}")
        if isinstance(infos, dict):
            infos = row_infos(infos, B)
        if len(infos) != B:
            raise ValueError(f"infos must have {B} entries (batch_size), got {len(infos)}")
        if seeds is not None and len(seeds) != B:
            raise ValueError(f"seeds must have {B} entries (batch_size), got {len(seeds)}")
        if not rows.any():
            return
        prefixes = {r: self._forced_prefix(infos[r], r) for r in np.flatnonzero(rows)}
        for r, prefix in prefixes.items():
            if seeds is not None and seeds[r] is not None:
                episode_seed = int(seeds[r])
            else:
                episode_seed = int(np.random.SeedSequence([self.seed, self.episodes_started]).generate_state(1, np.uint64)[0])
            if not 0 <= episode_seed < 2**64:
                raise ValueError(f"episode seeds must lie in [0, 2**64), got {episode_seed}")
            self.episodes_started += 1
            self.episode_seeds[r] = episode_seed
            self._generators[r].manual_seed(episode_seed)
            frames = None if self.prompt is None else self.prompt.frames_for(
                infos[r].get("axis"), self.text_tokenizer_path, self.mimi, self.lm)
            self.prompt_frames[r] = frames
            if frames is not None:  # the prompt frames lead the forced prefix, all forced
                prefix = (np.concatenate([frames.actions, prefix[0]]), np.concatenate([np.ones(frames.frames, bool),
                                                                                      prefix[1]]))
            (self._prefix[r], self._mask[r]), self._k[r], self._t[r] = prefix, len(prefix[0]), 0
            self._p[r] = 0 if frames is None else frames.frames
            self._started[r] = True
        with torch.inference_mode():
            reset = torch.from_numpy(rows).to(self.device)
            self.lm_gen.reset_streaming(reset)
            self.mimi.reset_streaming(reset)
            if self.prompt is not None:
                self._run_prompts(rows)

    def act_batch(self, observations: np.ndarray) -> np.ndarray:
        """One step of every row: ``observations`` ``[B, 8]`` user codes or ``[B, 1920]`` samples
        -> int64 ``[B, 9]`` actions (text token, 8 codes) for the current env frame of each row."""
        if not self._started.all():
            raise RuntimeError(f"rows {np.flatnonzero(~self._started).tolist()} were never reset: "
                               "call reset()/reset_batch() with the env's reset info first")
        with torch.inference_mode():
            self._read_observations(observations)
            replace = self._set_forcing()
            out = self.lm_gen.step(self._codes_in, depformer_replace_tokens=replace)  # [B, 9, 1]
            actions = out[:, :, 0].cpu().numpy().astype(np.int64, copy=True)  # model frame t - 1
        first = self._t == 0  # (never after a prompt: env frame 0 is then a model frame)
        if first.any():  # step 0 of a row: no model frame yet (LMGen marks it ungenerated, -2)
            for r in np.flatnonzero(first):
                actions[r] = self._prefix[r][0] if self._k[r] and self._mask[r][0] else self.silence_action
        if actions.min() < 0:  # any other ungenerated token would be an alignment bug
            raise RuntimeError(f"LMGen returned ungenerated tokens at steps {self._t.tolist()}: {actions.tolist()}")
        self._t += 1
        return actions

    # -- text -----------------------------------------------------------------------------------

    def decode_text(self, tokens) -> str:
        """The text of a stream of the agent's text tokens (padding 0 and 3 dropped)."""
        if self._tokenizer is None:
            import sentencepiece

            self._tokenizer = sentencepiece.SentencePieceProcessor(self.text_tokenizer_path)
        size = self._tokenizer.vocab_size()
        ids = [int(t) for t in np.asarray(tokens).reshape(-1) if int(t) not in (TEXT_END_PAD, TEXT_PAD) and 0 <= int(t) < size]
        return self._tokenizer.decode(ids)

    # -- internals -------------------------------------------------------------------------------

    def _need_single(self) -> None:
        if self.batch_size != 1:
            raise RuntimeError(f"reset()/act() drive one row; this agent has batch_size={self.batch_size}: "
                               "use reset_batch()/act_batch()")

    def _forced_prefix(self, info: dict | None, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``row``'s leading frames from reset info: tokens ``[k, 9]`` and which of them are forced
        (bool ``[k]``), from ``forced_prefix`` (the env's :class:`~duplexgym.envs.replay.ForcedPrefix`;
        its mask leaves a lead-in free), else a bare ``forced_action`` array (all forced)."""
        k = int(info.get("forced_frames", 0) or 0) if info is not None else 0
        if k == 0:
            return np.zeros((0, N_STREAMS), np.int64), np.zeros(0, bool)
        prefix = info.get("forced_prefix")
        forced = np.asarray(prefix.action if prefix is not None else info.get("forced_action"))
        mask = prefix.forced() if prefix is not None else np.ones(k, bool)
        if mask.shape != (k,):
            raise ValueError(f"row {row}: the forced prefix's mask has {mask.shape[0]} entries for {k} frames")
        if forced.ndim != 2 or forced.shape != (k, N_STREAMS) or forced.dtype.kind not in "iu":
            raise ValueError(f"row {row}: reset info forced_frames={k} needs the forced prefix as integer tokens "
                             f"[{k}, {N_STREAMS}] (env action_mode='tokens'), got {forced.dtype} {forced.shape}")
        if forced[:, 0].min() < 0 or forced[:, 0].max() >= self.lm.text_card \
                or forced[:, 1:].min() < 0 or forced[:, 1:].max() >= MIMI_CARDINALITY:
            raise ValueError(f"row {row}: forced_action tokens out of range (text < {self.lm.text_card}, "
                             f"audio < {MIMI_CARDINALITY})")
        return forced.astype(np.int64), mask

    def _read_observations(self, observations) -> None:
        obs = np.asarray(observations)
        B = self.batch_size
        if obs.shape == (B, MIMI_CODEBOOKS) and obs.dtype.kind in "iu":
            if obs.min() < 0 or obs.max() >= MIMI_CARDINALITY:
                raise ValueError(f"user codes must lie in [0, {MIMI_CARDINALITY}), got [{obs.min()}, {obs.max()}]")
            self._codes_in[:, :, 0] = torch.from_numpy(obs.astype(np.int64, copy=False))
        elif obs.shape == (B, FRAME_SAMPLES) and obs.dtype.kind == "f":
            if not np.isfinite(obs).all():
                raise ValueError("user waveform contains NaN or infinite samples")
            pcm = torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32)).to(self.device)[:, None]  # [B, 1, 1920]
            self._codes_in.copy_(self.mimi.encode(pcm))  # [B, 8, 1]
        else:
            raise ValueError(f"observations must be [{B}, {MIMI_CODEBOOKS}] integer Mimi codes or [{B}, {FRAME_SAMPLES}] "
                             f"float samples (batch_size={B}), got {obs.dtype} {obs.shape}")

    def _run_prompts(self, rows: np.ndarray) -> None:
        """The prompt phases of the rows just reset (``rows`` bool ``[B]``), each row's own frames,
        every stream forced; the other rows do not execute (the LMGen's exec mask) and draw no noise.
        The last prompt step samples text and codebook 0 of env frame 0 (unless the env forces it)."""
        lengths = np.where(rows, self._p, 0)
        sine = torch.tensor(SINE_TOKENS, dtype=torch.long, device=self.device)
        for i in range(int(lengths.max(initial=0))):
            active = lengths > i
            on_device = torch.from_numpy(active).to(self.device)
            if not active.all():
                self.lm_gen.set_exec_mask(on_device)
            self._drawing = active
            self._codes_in[on_device, :, 0] = sine
            emb = np.zeros(self.batch_size, bool)
            for r in np.flatnonzero(active):
                frames = self.prompt_frames[r]
                if i < frames.embedded:
                    emb[r] = True
                    self._emb_values[r, 0] = frames.embeddings[i].to(self._emb_values)
            self._emb_mask.copy_(torch.from_numpy(emb))
            replace = self._set_forcing(active)
            self.lm_gen.step(self._codes_in, depformer_replace_tokens=replace)
            self._t[active] += 1
        self._emb_mask.zero_()
        self._drawing = np.ones(self.batch_size, dtype=bool)
        self.lm_gen.set_exec_mask(torch.ones(self.batch_size, dtype=torch.bool, device=self.device))

    def _replace_input(self, module, args, kwargs):
        """Forward pre-hook of the LM's transformer while streaming: rows of ``_emb_mask`` read
        ``_emb_values`` (a prompt's stored input embeddings) instead of their tokens' embedding."""
        if getattr(module, "_streaming_state", None) is None or not args:
            return None
        x = args[0]
        return (torch.where(self._emb_mask[:, None, None], self._emb_values.to(x.dtype), x), *args[1:]), kwargs

    def _set_forcing(self, among: np.ndarray | None = None) -> torch.Tensor | None:
        """Fill the step controls from each row's forced prefix (rows of ``among`` only, default all);
        the replace tokens if all rows are fully forced."""
        c = self._controls
        rows = np.flatnonzero((self._t < self._k) & (True if among is None else among))
        if not len(rows) and not c.forcing:
            return None
        B, dep_q = self.batch_size, self.lm.dep_q
        force_text = np.zeros(B, bool)
        force_audio = np.zeros((B, dep_q), bool)
        forced_audio = np.zeros((B, dep_q), np.int64)
        forced_text = np.zeros(B, np.int64)
        for r in rows:
            t, k, prefix, mask = self._t[r], self._k[r], self._prefix[r], self._mask[r]
            if t + 1 < k and mask[t + 1]:  # text and codebook 0 of model frame t = env frame t + 1
                force_text[r] = force_audio[r, 0] = True
                forced_text[r], forced_audio[r, 0] = prefix[t + 1, 0], prefix[t + 1, 1]
            if mask[t]:  # codebooks 1..7 of model frame t - 1 = env frame t
                force_audio[r, 1:] = True
                forced_audio[r, 1:] = prefix[t, 2:]
        c.force_text.copy_(torch.from_numpy(force_text))
        c.forced_text.copy_(torch.from_numpy(forced_text))
        c.force_audio.copy_(torch.from_numpy(force_audio))
        c.forced_audio.copy_(torch.from_numpy(forced_audio))
        c.forcing = bool(force_text.any() or force_audio.any())
        if c.forcing and force_audio.all():
            self._replace[:, :, 0] = c.forced_audio
            return self._replace
        return None

    def _on_text_logits(self, text_logits: torch.Tensor) -> None:
        """LMGen's text hook (``[B, 1, 1, text_card]``, edited in place): draw this step's noise of
        every row, sample the text token (forced rows: the forced token), leave only it finite."""
        noise = self._gumbel_cpu
        for row, generator in enumerate(self._generators):
            if self._drawing[row]:
                noise[row].exponential_(generator=generator)
            else:  # a row not executing this step (another row's prompt): its generator is left alone
                noise[row].fill_(1.0)
        noise.log_().neg_()  # -log(Exp(1)) is standard Gumbel
        c = self._controls
        if c.gumbel is not noise:
            c.gumbel.copy_(noise, non_blocking=True)
        logits = text_logits[:, 0, 0]  # [B, V]
        token = _gumbel_sample(logits, c.gumbel[:, : c.n_text], self.temp_text, self.top_k_text)
        if c.forcing:
            token = torch.where(c.force_text, c.forced_text, token)
        logits.fill_(float("-inf"))
        logits.scatter_(-1, token[:, None], 0.0)
