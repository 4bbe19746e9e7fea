"""The YAML config of ``duplexgym train --config CONFIG.yaml`` (GRPO on Ray RLlib).

A config (relative paths are read from the current working directory, as the other commands do)::

    algorithm: grpo                  # grpo | ppo (PPO with a value head on the LM's hidden state)
    corpus: runs/default-corpus      # a built corpus folder WITH Mimi codes (--codec tiny)
    model: tiny                      # tiny | a Moshi checkpoint folder in Kyutai's layout (a run's policy/)
    out: runs/grpo-tiny              # the run folder: metrics.jsonl, config.yaml, reward_curve.png
    group_size: 4                    # G rollouts per segment (>= 2)
    segments_per_iteration: 2        # groups per iteration, split evenly over the env runners
    iterations: 3                    # training iterations (one learner update of `epochs` passes each)
    epochs: 1                        # passes over each iteration's batch (>= 1)
    lr: 1.0e-4                       # (peak) learning rate (> 0); write 1.0e-4, YAML reads 1e-4 as text
    kl_coef: 0.05                    # weight of the KL to the frozen reference (>= 0)
    clip_eps: 0.2                    # PPO-style ratio clip (0 < clip_eps < 1)
    update_streams: text             # text | audio | all: the token streams the loss covers
    advantage: episode               # grpo: episode (one per rollout) | reward_to_go (per frame) | decoupled (GDPO)
    kl: k3                           # k3 | k1 | exact (the full-distribution KL over the vocabulary)
    normalization: token             # token (mean over the batch's tokens) | sequence (per completion, then over them)
    minibatch_size: null             # null (one step per epoch) | episodes per optimizer step
    optimizer:                       # name adam|adamw, betas, eps, weight_decay, grad_clip (global norm, null: none),
      name: adam                     #   schedule constant|linear|cosine over the run's steps, warmup_steps, min_lr
    context: {p: 0.0, max_s: 0.0, schedule: linear}  # prepend the preceding recording (the paper's curriculum)
    lead_in_silence_s: 0.0           # seconds of user silence first (Moshi in the paper: 3.0)
    sampling: {temp: 0.8, temp_text: 0.7, top_k: 250, top_k_text: 25}   # the rollouts' sampler
    trainable: all                   # all | temporal (the depformer frozen unless audio streams are updated) | lora
    lora: {rank: 16, scaling: 2.0, modules: null, export_merged: false}   # trainable: lora (moshi.modules.lora)
    dtype: fp32                      # fp32 | bf16 (rollouts and reference in bf16, the learner in mixed precision)
    gamma: 1.0                       # ppo: discount per 80 ms frame, in [0, 1]
    lam: 0.95                        # ppo: GAE lambda, in [0, 1]
    vf_coef: 0.5                     # ppo: weight of the value loss (>= 0)
    env: replay                      # replay (segments of the corpus) | conversation (Conversation-v0: a live simulated user)
    conversation: null               # env conversation: {user: replay|script|llm, max_s, max_turns, dialogues, user_params, script, llm, scoring, judge}
    axes: [turn]                     # non-empty subset of pause, turn, backchannel, interruption
    axis_weights: null               # null (uniform over axes) or {axis: weight >= 0}: the axis mix
    segments: null                   # null (every segment of the axes) or a list of segment ids to train on
    rewards: null                    # null (the env's default spec, text reader) | a reward spec mapping or YAML path
    tracking: {tensorboard: true}    # plus wandb: {...} and/or mlflow: {...}
    env_runners: 0                   # remote env runners (0: sample in the driver)
    gpus_per_env_runner: 0           # GPUs per env runner (fractional: several runners share one GPU)
    num_learners: 0                  # remote learners, data-parallel (DDP; 0: learn in the driver)
    sharding: ddp                    # ddp (a whole copy per learner) | fsdp (weights, gradients, Adam moments sharded over >= 2 learners)
    gpus_per_learner: 0              # GPUs per learner (0: CPU)
    weight_sync: auto                # auto | broadcast (learner -> remote runners over a process group) | object_store (RLlib's numpy sync)
    seed: 0                          # seeds segment choice and sampling (>= 0)
    checkpoint_interval: 0           # checkpoint every N iterations (and after the last); 0: after the last only
    ray_address: null                # null: start a local Ray; an address ("auto", "HOST:PORT", "ray://HOST:PORT"): join that cluster

Every mistake raises :class:`TrainConfigError` (a ``ValueError``; the CLI exits 2) naming the field,
e.g. ``axes[1]: unknown axis 'turns'; known: pause, turn, backchannel, interruption``. Loading
never imports or starts Ray: the corpus is checked by reading its ``corpus.json`` and manifest,
a checkpoint folder by :func:`~duplexgym.agents.policies.checkpoint.resolve_checkpoint` (no weights loaded),
a reward spec by :func:`~duplexgym.rewards.spec.load_spec`.

A reward spec whose activity reader is ``vad`` (the seed paper's: silero on the decoded audio) makes
every env decode each rollout's audio codes with the corpus's Mimi on the env runner's CPU and
run silero over it before scoring it; the ``text`` reader reads the text stream and costs nothing. Fields of one algorithm set in the other's config are refused
(``advantage`` for PPO; ``gamma``, ``lam``, ``vf_coef`` for GRPO).
On a cluster (``ray_address``) ``corpus`` and ``out`` must be paths every node can read (a shared
file system) and duplexgym must be installed on every node.
Checkpoints (``out/checkpoints/iter_XXXX``, ``out/policy``): see :mod:`duplexgym.agents.training.run`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from duplexgym.config import STRICT, Integer, Number, choice, explain, located
from duplexgym.constants import AXES, TINY_MODEL, UPDATE_STREAMS

KNOWN_ALGORITHMS = ("grpo", "ppo")
ADVANTAGES = ("episode", "reward_to_go", "decoupled")
KL_ESTIMATORS = ("k3", "k1", "exact")  # = losses.KL_ESTIMATORS (not imported here: it imports torch)
NORMALIZATIONS = ("token", "sequence")
#: Fields only one algorithm reads: setting one in the other's config is an error.
ALGORITHM_FIELDS = {"grpo": ("advantage",), "ppo": ("gamma", "lam", "vf_coef")}


class OptimizerConfig(BaseModel):
    """The learner's optimizer and learning-rate schedule (the rate itself is ``lr``)."""

    model_config = ConfigDict(**STRICT, use_attribute_docstrings=True)

    name: choice("adam", "adamw") = "adam"
    """``adam`` (weight decay added to the gradient) or ``adamw`` (decoupled weight decay)."""
    betas: tuple[Number, Number] = (0.9, 0.999)
    """Adam's (beta1, beta2), each in [0, 1)."""
    eps: Number = Field(1e-8, gt=0)
    """Adam's epsilon."""
    weight_decay: Number = Field(0.0, ge=0)
    """Weight decay (AdamW's decoupled decay with ``name: adamw``)."""
    grad_clip: Number | None = Field(None, gt=0)
    """Clip the global gradient norm to this; null: no clipping."""
    schedule: choice("constant", "linear", "cosine") = "constant"
    """How ``lr`` changes over the run's gradient steps: kept, or decayed linearly or along a half
    cosine to ``min_lr`` at the last step, after ``warmup_steps`` of linear warm-up from 0."""
    warmup_steps: Integer = Field(0, ge=0)
    """Gradient steps of linear warm-up from 0 to ``lr``."""
    min_lr: Number = Field(0.0, ge=0)
    """The learning rate at the last gradient step of a ``linear`` or ``cosine`` schedule."""

    @model_validator(mode="after")
    def _betas(self):
        if not all(0 <= b < 1 for b in self.betas):
            raise located("optimizer.betas", f"each beta must lie in [0, 1), got {list(self.betas)}")
        return self


class ContextConfig(BaseModel):
    """Conversation before the segment, prepended to episodes (the seed paper's context curriculum)."""

    model_config = ConfigDict(**STRICT, use_attribute_docstrings=True)

    p: Number = Field(0.0, ge=0, le=1)
    """Probability that an episode gets context."""
    max_s: Number = Field(0.0, ge=0)
    """The largest context (s) at the end of the schedule; each context's length is uniform in
    [0, l_max]."""
    schedule: choice("linear", "constant") = "linear"
    """``linear``: l_max rises from 0 to ``max_s`` over the iterations; ``constant``: always ``max_s``."""


class SamplingConfig(BaseModel):
    """The streaming sampler's temperatures and top-k, per stream (Moshi's defaults; the paper's)."""

    model_config = ConfigDict(**STRICT, use_attribute_docstrings=True)

    temp: Number = Field(0.8, ge=0)
    """Audio temperature (0: greedy)."""
    temp_text: Number = Field(0.7, ge=0)
    """Text temperature (0: greedy)."""
    top_k: Integer = Field(250, ge=0)
    """Audio top-k (0: the whole codebook)."""
    top_k_text: Integer = Field(25, ge=0)
    """Text top-k (0: the whole vocabulary)."""


class ConversationConfig(BaseModel):
    """``env: conversation``: the live env (:class:`~duplexgym.envs.conversation.ConversationEnv`)
    each group's G rollouts play. Each group draws one dialogue seed from the run's seeded stream:
    it picks the dialogue and seeds the user, so the group shares content and the user's draws and
    the user reacts to each rollout's agent on its own. Every field is the env's argument of the
    same name (its checks apply: the env is built once when the config is loaded)."""

    model_config = ConfigDict(**STRICT, use_attribute_docstrings=True)

    user: choice("replay", "script", "llm") = "replay"
    """What the user says: ``replay`` (the corpus dialogues' human turns), ``script`` (staged tasks,
    offline TTS) or ``llm`` (an OpenAI-compatible chat server writes the lines)."""
    max_s: Number = Field(60.0, gt=0)
    """The longest dialogue (s); FD-Bench v2's 60 s by default. Rollout length, so training cost."""
    max_turns: Integer | None = Field(None, ge=1)
    """The most user turns (null: as many as fit in ``max_s``)."""
    dialogues: tuple[str, ...] | None = None
    """Dialogue ids to train on (``source.dialogue_ids()``); null: every dialogue of the source."""
    user_params: dict | None = None
    """The simulated user's timing (:class:`~duplexgym.envs.simulated_user.UserParams` fields)."""
    script: str | dict | None = None
    """``script`` / ``llm``: a script YAML path or mapping; null: the built-in tasks."""
    llm: dict | None = None
    """``llm``: :class:`~duplexgym.envs.user_lines.LlmParams` (``base_url``, ``model``, ...)."""
    scoring: dict | None = None
    """:class:`~duplexgym.rewards.live.LiveScoring` fields (how events are cut from the dialogue)."""
    judge: dict | None = None
    """FD-Bench v2's transcript judge (:class:`~duplexgym.rewards.live_judge.LiveJudgeParams`); null: none."""

    @field_validator("script", mode="after")
    @classmethod
    def _script_path(cls, value):
        return str(_path(value, "conversation.script")) if isinstance(value, str) else value

    def env_kwargs(self) -> dict:
        """The keyword arguments of ConversationEnv (codes in, tokens out are the trainer's)."""
        return {"user": self.user, "max_s": float(self.max_s), "max_turns": self.max_turns,
                "dialogues": None if self.dialogues is None else list(self.dialogues),
                "user_params": self.user_params, "script": self.script, "llm": self.llm,
                "scoring": self.scoring, "judge": self.judge}


#: Fields that only replay training reads: set with ``env: conversation`` they are refused.
REPLAY_FIELDS = ("axes", "axis_weights", "segments", "context", "lead_in_silence_s")


class PromptConfig(BaseModel):
    """``model: personaplex:PATH``: the prompts each episode starts with (:mod:`duplexgym.agents.policies.personaplex`),
    the same at training and evaluation (the exported policy keeps them)."""

    model_config = ConfigDict(**STRICT, use_attribute_docstrings=True)

    text: str | dict[str, str] | None = None
    """The text system prompt (wrapped in ``<system>`` tags as the official code does), or one per axis
    (``{pause: ..., interruption: ...}``); null or a missing axis: the official Full-Duplex-Bench prompt
    of the episode's axis (interruption: the teacher prompt; the others: "You enjoy having a good conversation.")."""
    voice: str | None = None
    """The voice prompt: a wav/flac (resampled to 24 kHz, -24 LUFS) or an official PersonaPlex voice ``.pt``
    (read with ``torch.load(weights_only=True)`` from a zip archive only); null: no voice phase."""

    @field_validator("text", mode="after")
    @classmethod
    def _text(cls, value):
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(AXES) - {"conversation"})
            if unknown:
                raise ValueError(f"text: unknown axis {unknown[0]!r} (axes: {', '.join(AXES)}, conversation)")
        if isinstance(value, str) and not value.strip():
            raise ValueError("text: empty (the official code needs a prompt; null takes the FD-Bench prompts)")
        return value

    @field_validator("voice", mode="after")
    @classmethod
    def _voice(cls, value):
        if value is None:
            return None
        from duplexgym.agents.policies.personaplex import PromptError, voice_prompt_frames

        path = _path(value, "prompt.voice")
        try:
            voice_prompt_frames(path)  # refuses pickles unopened, checks the official shapes, reads a wav
        except PromptError as exc:
            raise ValueError(f"voice: {exc}") from None
        return str(path)


class LoraConfig(BaseModel):
    """``trainable: lora``: moshi's ``LoRALinear`` adapters (:mod:`duplexgym.agents.training.adapters`)."""

    model_config = ConfigDict(**STRICT, use_attribute_docstrings=True)

    rank: Integer = Field(16, ge=1)
    """The adapters' rank r (moshi-finetune: 128)."""
    scaling: Number = Field(2.0, gt=0)
    """The adapters' output scale (moshi's ``lora_scaling``; moshi-finetune: 2)."""
    modules: tuple[str, ...] | None = None
    """Children of the LM whose linears get adapters (``transformer``, ``text_linear``, ``depformer_in``,
    ``depformer``, ``linears``); null: the temporal transformer, plus the depformer's when audio
    streams are updated."""
    export_merged: bool = False
    """Also write ``OUT/policy_merged/``: a plain checkpoint with the adapters merged into the weights."""

    @field_validator("modules", mode="after")
    @classmethod
    def _modules(cls, value):
        from duplexgym.agents.training.adapters import LORA_CHILDREN  # torch + moshi: only when given

        if value is None:
            return value
        if not value:
            raise located("lora.modules", f"expected null or a non-empty list of {', '.join(LORA_CHILDREN)}")
        return _unique_names(value, "lora.modules", LORA_CHILDREN, "module")


class TrainConfigError(ValueError):
    """A training config that cannot be used; the message names the field."""


class TrainConfig(BaseModel):
    """A validated training config; see the module docstring for the YAML form. Each field's
    default is written once, here; its docstring says what it does.

    Paths are absolute once loaded. Units: ``group_size`` rollouts per group,
    ``segments_per_iteration`` groups per iteration, ``iterations`` and ``checkpoint_interval``
    training iterations, ``env_runners`` Ray actors; ``lr``, ``kl_coef``, ``clip_eps`` are
    dimensionless.
    """

    model_config = ConfigDict(**STRICT, use_attribute_docstrings=True)

    corpus: str
    """Built corpus folder with Mimi codes of the model's codec."""
    out: str
    """Run folder: ``metrics.jsonl``, ``config.yaml``, ``reward_curve.png``, ``checkpoints/``, ``policy/``."""
    algorithm: choice(*KNOWN_ALGORITHMS) = "grpo"
    """``grpo`` (group-relative advantages, no value function) or ``ppo`` (GAE with a value head)."""
    model: str = TINY_MODEL
    """``tiny`` (the tiny random Moshi), a checkpoint folder (Kyutai layout, e.g. a run's ``policy/``) or
    ``personaplex:FOLDER`` (a PersonaPlex checkpoint, prompted as ``prompt`` says), whose Mimi made the
    corpus' codes."""
    prompt: PromptConfig | None = None
    """``model: personaplex:...``: its text and voice prompts (the official FD-Bench text prompts and no
    voice when omitted); refused for other models."""
    group_size: Integer = Field(4, ge=2)
    """G: rollouts of the same segment per group (>= 2)."""
    segments_per_iteration: Integer = Field(2, ge=1)
    """Groups (one segment each) sampled per iteration; a multiple of ``max(1, env_runners)``."""
    iterations: Integer = Field(3, ge=1)
    """Training iterations, one learner update each (>= 1)."""
    epochs: Integer = Field(1, ge=1)
    """Passes of the learner over each iteration's batch (>= 1); the ratio clip matters from the second."""
    lr: Number = Field(1e-4, gt=0)
    """Adam learning rate (> 0)."""
    kl_coef: Number = Field(0.05, ge=0)
    """Weight of the KL to the frozen reference (>= 0)."""
    clip_eps: Number = Field(0.2, gt=0, lt=1)
    """Clip of the probability ratio (0 < clip_eps < 1)."""
    update_streams: choice(*UPDATE_STREAMS) = "text"
    """Token streams the policy loss covers: ``text`` (stream 0, the stable published recipe),
    ``audio`` (the 8 codebooks) or ``all``."""
    advantage: choice(*ADVANTAGES) = "episode"
    """GRPO: ``episode`` (one group-normalised advantage per rollout, from its return),
    ``reward_to_go`` (per frame, from the rewards still to come: credit in time for dense shaping) or
    ``decoupled`` (GDPO: each reward term standardised within the group on its own, then summed)."""
    kl: choice(*KL_ESTIMATORS) = "k3"
    """The KL to the reference: ``k3`` or ``k1`` estimators on the sampled tokens, or ``exact`` (the
    full-distribution KL at each position, the seed paper's)."""
    normalization: choice(*NORMALIZATIONS) = "token"
    """How the loss averages tokens: ``token`` (over every valid token of the batch) or ``sequence``
    (over each episode's tokens, then over the episodes: the seed paper's)."""
    minibatch_size: Integer | None = Field(None, ge=1)
    """Episodes per gradient step inside an iteration (the seed paper: 1, so G steps per group);
    null: one step over the whole batch per epoch."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """The optimizer and learning-rate schedule (``name``, ``betas``, ``weight_decay``, ``grad_clip``,
    ``schedule``, ``warmup_steps``, ``min_lr``)."""
    context: ContextConfig = Field(default_factory=ContextConfig)
    """Conversation before each segment prepended to episodes (``p``, ``max_s``, ``schedule``);
    teacher-forced and left out of the loss and the rewards. Needs a corpus built with ``--context-s``."""
    lead_in_silence_s: Number = Field(0.0, ge=0)
    """Seconds of user silence before everything (Moshi: 3 s, so its opening falls before the user
    speaks); the model speaks freely there, left out of the loss and the rewards."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """The streaming sampler per stream (``temp``, ``temp_text``, ``top_k``, ``top_k_text``)."""
    trainable: choice("all", "temporal", "lora") = "all"
    """What the learner updates: ``all`` parameters, the ``temporal`` transformer side (the depformer
    too when audio streams are updated) or ``lora`` adapters only (the reference is then the same
    network with its adapters off: no second copy of the LM)."""
    lora: LoraConfig | None = None
    """The adapters of ``trainable: lora`` (its defaults when omitted); refused otherwise."""
    activation_checkpointing: bool = False
    """The learner recomputes each transformer layer's activations in the backward pass instead of
    keeping them (moshi's per-layer checkpointing): the same gradients, activation memory of one layer
    instead of all (long segments with context at 7B), about one more forward pass of time."""
    dtype: choice("fp32", "bf16") = "fp32"
    """``bf16``: the env runners' LM and the reference in bfloat16, the learner's passes under bf16
    autocast over float32 master weights; ``fp32``: float32 everywhere."""
    gamma: Number = Field(1.0, ge=0, le=1)
    """PPO: discount per 80 ms frame, in [0, 1]."""
    lam: Number = Field(0.95, ge=0, le=1)
    """PPO: GAE lambda, in [0, 1]."""
    vf_coef: Number = Field(0.5, ge=0)
    """PPO: weight of the value loss (>= 0)."""
    env: choice("replay", "conversation") = "replay"
    """What a group plays: ``replay`` (one corpus segment, replayed open-loop to G rollouts) or
    ``conversation`` (one live dialogue of Conversation-v0, its simulated user reacting to each
    rollout: ``conversation``)."""
    conversation: ConversationConfig | None = None
    """The live env of ``env: conversation`` (its defaults when omitted); refused with ``env: replay``."""
    axes: tuple[str, ...] = ("turn",)
    """Interactivity axes whose segments are trained on (subset of ``duplexgym.constants.AXES``)."""
    axis_weights: dict[str, Number] | None = None
    """``{axis: weight >= 0}``: each group's axis is drawn with these weights, then its segment
    uniformly (:class:`~duplexgym.envs.corpus.SegmentSampler`); null: every axis weight 1."""
    segments: tuple[str, ...] | None = None
    """Segment ids to train on (each of one of ``axes``); null: every segment of ``axes``."""
    rewards: dict | None = None
    """The env's reward spec as a mapping (``RewardSpec.to_dict()`` of the validated spec); null: the
    env's default (every axis term, weight 1, the text reader, no dense shaping). A YAML path is read."""
    env_runners: Integer = Field(0, ge=0)
    """Remote env-runner actors (0: sample in the driver process)."""
    gpus_per_env_runner: Number = Field(0.0, ge=0)
    """GPUs per env runner (its MoshiAgent and the Mimi decode of the ``vad`` reader run there);
    fractional values let several runners share one GPU; 0: CPU."""
    reward_decode: choice("auto", "group", "episode") = "auto"
    """With the ``vad`` reader, where the rollouts' Mimi codes are decoded for the reward: ``group``
    (the runner decodes its group in one batch on its device), ``episode`` (each env decodes its own,
    on CPU: a rescore on CPU gives the same bits), ``auto`` (``group`` on a GPU runner, else
    ``episode``). Batched decoding rounds differently from one by one (5.5e-7 at most on the tiny
    Mimi), so a rescore of a ``group``-scored record agrees to float rounding."""
    num_learners: Integer = Field(0, ge=0)
    """Learner actors (RLlib's learner group, data-parallel with torch DDP across GPUs and nodes:
    gloo on CPU, nccl on GPU); 0: one learner in the driver process. Each update's episodes are
    dealt out in whole groups, advantages computed before (GRPO only)."""
    sharding: choice("ddp", "fsdp") = "ddp"
    """How several learners hold the model: ``ddp`` (each a whole copy: weights, gradients, Adam
    moments; gradients all-reduced) or ``fsdp`` (torch FSDP2: each learner holds ``1 / num_learners``
    of them and gathers one layer at a time; :mod:`~duplexgym.agents.training.sharding`), for
    ``trainable: all | temporal`` of a model too large for one GPU's copy (Moshi 7B ``all``: ~138 GB per
    learner under DDP, ~17 GB each over 8 under FSDP)."""
    gpus_per_learner: Number = Field(0.0, ge=0)
    """GPUs per learner (with ``num_learners: 0``, the driver's learner; 0: CPU)."""
    weight_sync: choice("auto", "broadcast", "object_store") = "auto"
    """How the learner's weights reach remote env runners after each update: ``broadcast`` (the
    first learner sends the trained tensors into the runners' own over a process group of their
    own: gloo, or nccl when the learners and runners have whole GPUs each;
    :mod:`~duplexgym.agents.training.weight_broadcast`), ``object_store`` (RLlib's sync: numpy through
    Ray's object store), ``auto`` (broadcast with remote env runners). Without remote env runners
    the driver's runner is synced in place (one learner in the driver) or through RLlib."""
    seed: Integer = Field(0, ge=0)
    """Seed of segment choice and sampling (>= 0)."""
    checkpoint_interval: Integer = Field(0, ge=0)
    """Iterations between checkpoints (``out/checkpoints/iter_XXXX``, plus ``out/policy``); one is also
    written after the last iteration; 0: after the last iteration only."""
    ray_address: str | None = None
    """Ray cluster to join (``ray.init(address=...)``); null: start a local Ray."""
    tracking: dict = Field(default_factory=lambda: {"tensorboard": True})
    """Experiment tracking: ``{tensorboard: true}`` (event files in ``out/tensorboard/``, the default),
    plus ``wandb: {project: ...}`` (offline unless ``mode: online``) and/or ``mlflow: {tracking_uri:
    ..., experiment_name: ...}`` through Ray's integrations, when those packages are installed
    (:mod:`duplexgym.agents.training.tracking`)."""

    # -- field checks (each error names the field) -------------------------------------------------

    @field_validator("axes", mode="before")
    @classmethod
    def _axes(cls, value):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise located("axes", f"expected a non-empty list of axis names ({', '.join(AXES)}), got {value!r}")
        return _unique_names(value, "axes", AXES, "axis")

    @field_validator("axis_weights", mode="before")
    @classmethod
    def _axis_weight_names(cls, value):
        if value is None:
            return None
        if not isinstance(value, dict) or not value:
            raise located("axis_weights", f"expected null or a mapping axis -> weight, got {value!r}")
        for axis in value:
            if axis not in AXES:
                raise located(f"axis_weights.{axis}", f"unknown axis; known: {', '.join(AXES)}")
        return value

    @field_validator("axis_weights")
    @classmethod
    def _axis_weights(cls, value, info: ValidationInfo):
        if value is None:
            return None
        axes = info.data.get("axes", ())
        for axis, weight in value.items():
            if axes and axis not in axes:
                raise located(f"axis_weights.{axis}", f"axis is not in axes ({', '.join(axes)})")
            if weight < 0:
                raise located(f"axis_weights.{axis}", f"must be >= 0, got {weight:g}")
        if not any(value.get(axis, 0.0) > 0 for axis in axes):
            raise located("axis_weights", f"every weight is 0; at least one of {', '.join(axes)} needs a weight > 0")
        return value

    @field_validator("segments", mode="before")
    @classmethod
    def _segment_list(cls, value):
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
            raise located("segments", f"expected null or a non-empty list of segment ids, got {value!r}")
        for i, sid in enumerate(value):
            if sid in value[:i]:
                raise located(f"segments[{i}]", f"{sid!r} is listed twice")
        return tuple(value)

    @field_validator("rewards", mode="before")
    @classmethod
    def _rewards(cls, value):
        if value is None:
            return None
        if not isinstance(value, (dict, str)):
            raise located("rewards", f"expected null, a reward spec mapping or a YAML path, got {value!r}")
        from duplexgym.rewards.spec import RewardSpecError, spec_from_dict

        from duplexgym.config import load_yaml

        def parse(raw: Any):
            """A spec that names no reader reads the text stream (the default of token actions)."""
            if isinstance(raw, dict) and isinstance(raw.get("activity", {}), dict) \
                    and "reader" not in (raw.get("activity") or {}):
                raw = {**raw, "activity": {**(raw.get("activity") or {}), "reader": "text"}}
            return spec_from_dict(raw)

        try:
            spec = parse(value) if isinstance(value, dict) else load_yaml(value, parse, RewardSpecError, "reward spec")
        except RewardSpecError as exc:
            raise located("rewards", str(exc)) from None
        return spec.to_dict()

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking(cls, value):
        from duplexgym.agents.training.tracking import validate_tracking

        try:
            return validate_tracking(value)
        except ValueError as exc:  # its messages start with the field: "tracking.wandb: ..."
            where, _, message = str(exc).partition(": ")
            raise located(where, message) from None

    @field_validator("ray_address", mode="before")
    @classmethod
    def _ray_address(cls, value):
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
            raise located("ray_address", f"expected null or an address string ('auto', 'HOST:PORT', "
                                         f"'ray://HOST:PORT'), got {value!r}")
        value = value.strip()
        if value not in ("auto", "local") and ":" not in value:
            raise located("ray_address", f"{value!r} is not a Ray address; expected 'auto', 'HOST:PORT' or "
                                         "'ray://HOST:PORT'")
        return value

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, value):
        out = _path(value, "out")
        if out.exists() and not out.is_dir():
            raise located("out", f"{out} exists and is not a folder")
        return str(out)

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value):
        if value == TINY_MODEL:
            return TINY_MODEL
        if not isinstance(value, str) or not value.strip():
            raise located("model", f"expected 'tiny', a checkpoint folder or personaplex:FOLDER, got {value!r}")
        from duplexgym.agents.policies.checkpoint import (PERSONAPLEX_PREFIX, is_personaplex, resolve_source,
                                                          source_folder)

        try:
            path = Path(source_folder(value)).expanduser().resolve()
            source = f"{PERSONAPLEX_PREFIX}{path}" if is_personaplex(value) else str(path)
            resolve_source(source)  # finds the files, loads no weights
        except ValueError as exc:
            raise located("model", str(exc)) from None
        return source

    @field_validator("corpus", mode="before")
    @classmethod
    def _corpus_path(cls, value):
        path = _path(value, "corpus")
        if not (path / "corpus.json").is_file():
            what = "no such folder" if not path.exists() else "no corpus.json in it"
            raise located("corpus", f"{path}: not a built corpus ({what}); build one with "
                                    f"`duplexgym corpus build synthetic --out {value} --codec tiny`")
        return str(path)

    # -- checks across fields -------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _live_defaults(cls, raw):
        if isinstance(raw, dict) and raw.get("env") == "conversation" and raw.get("conversation") is None:
            raw = {**raw, "conversation": {}}  # the live env's defaults, written out in config.yaml
        if isinstance(raw, dict) and raw.get("trainable") == "lora" and raw.get("lora") is None:
            raw = {**raw, "lora": {}}
        return raw

    @model_validator(mode="after")
    def _across_fields(self):
        for other, names in ALGORITHM_FIELDS.items():
            for name in names:
                if other != self.algorithm and name in self.model_fields_set:
                    raise located(name, f"only used by algorithm {other}; this config trains {self.algorithm} "
                                        "(remove the field)")
        if self.env == "conversation":
            for name in REPLAY_FIELDS:
                if name in self.model_fields_set:
                    raise located(name, "only used with env: replay (replayed segments); env: conversation plays "
                                        "live dialogues (remove the field)")
        elif self.conversation is not None:
            raise located("conversation", "only used with env: conversation (set env: conversation, or remove it)")
        from duplexgym.agents.policies.checkpoint import is_personaplex

        if self.prompt is not None and not is_personaplex(self.model):
            raise located("prompt", f"only used with model: personaplex:FOLDER (this config trains {self.model!r})")
        if self.lora is not None and self.trainable != "lora":
            raise located("lora", f"only used with trainable: lora (this config trains {self.trainable})")
        if self.num_learners > 1:
            if self.algorithm != "grpo":
                raise located("num_learners", "several learners are wired for grpo (PPO's value loss is not "
                                              "normalised across learners yet); use num_learners: 0 or 1")
            per_update = self.minibatch_size or self.episodes_per_iteration
            if self.minibatch_size and self.episodes_per_iteration % self.minibatch_size:
                raise located("minibatch_size", f"with several learners the iteration's {self.episodes_per_iteration} "
                                                f"episodes must split into whole minibatches of {self.minibatch_size}")
            if per_update % self.num_learners:
                raise located("num_learners", f"each update's {per_update} episodes (minibatch_size, else "
                                              f"segments_per_iteration x group_size) must split evenly over "
                                              f"{self.num_learners} learners: every learner steps together")
        if self.sharding == "fsdp":
            if self.num_learners < 2:
                raise located("sharding", f"fsdp shards over several learners; num_learners is {self.num_learners} "
                                          "(use num_learners >= 2, or sharding: ddp)")
            if self.trainable == "lora":
                raise located("sharding", "fsdp shards trainable: all | temporal; a LoRA learner holds the frozen base "
                                          "once and fits one GPU (use sharding: ddp)")
        if self.weight_sync == "broadcast" and self.env_runners == 0:
            raise located("weight_sync", "broadcast sends to remote env runners; env_runners is 0 (use env_runners >= 1, "
                                         "or weight_sync: auto)")
        if self.gpus_per_learner and self.gpus_per_learner != int(self.gpus_per_learner) and self.num_learners > 1:
            raise located("gpus_per_learner", "several learners need whole GPUs each (DDP)")
        if self.minibatch_size is not None and self.update_streams != "text":
            raise located("minibatch_size", "minibatches need update_streams: text (the old log-probs of the audio "
                                            "streams are recomputed per update, which would be the updated policy's)")
        if self.context.p > 0 and self.context.max_s <= 0:
            raise located("context.max_s", "must be > 0 when context.p > 0")
        if self.segments_per_iteration % max(1, self.env_runners):
            raise located("segments_per_iteration", f"{self.segments_per_iteration} must split evenly over "
                                                    f"{max(1, self.env_runners)} env runner(s) "
                                                    f"(env_runners: {self.env_runners})")
        _check_corpus(self)
        return self

    @property
    def reward_axes(self) -> tuple[str, ...]:
        """The names rewards are reported under (``reward_mean``, the reward curve): ``axes``, or
        ``("conversation",)`` for live dialogues (each dialogue's reward sums the axis terms of its events)."""
        return ("conversation",) if self.env == "conversation" else tuple(self.axes)

    @property
    def episodes_per_iteration(self) -> int:
        """Rollouts sampled per iteration: ``segments_per_iteration`` groups of ``group_size``."""
        return self.segments_per_iteration * self.group_size

    @property
    def gradient_steps_per_iteration(self) -> int:
        """Optimizer steps per iteration: ``epochs``, times the minibatches of an epoch."""
        per_epoch = 1 if self.minibatch_size is None else -(-self.episodes_per_iteration // self.minibatch_size)
        return self.epochs * per_epoch

    def weight_sync_path(self) -> str:
        """``broadcast`` or ``object_store``: ``weight_sync`` with ``auto`` resolved (broadcast with
        remote env runners)."""
        if self.weight_sync != "auto":
            return self.weight_sync
        return "broadcast" if self.env_runners > 0 else "object_store"

    def weight_backend(self) -> str:
        """The broadcast's process group: ``nccl`` when remote learners and the env runners hold
        whole GPUs each (every member its own device), else ``gloo`` (host memory)."""
        whole = self.num_learners >= 1 and self.gpus_per_learner >= 1 and self.gpus_per_env_runner >= 1
        return "nccl" if whole else "gloo"

    def to_dict(self) -> dict:
        """The resolved config as plain YAML-able values (written to ``out/config.yaml``); the fields
        of the other algorithm are left out."""
        d = self.model_dump(mode="json")
        for name, fields in ALGORITHM_FIELDS.items():
            if name != self.algorithm:
                for key in fields:
                    d.pop(key)
        return d


FIELDS = dict(TrainConfig.model_fields)
REQUIRED = tuple(name for name, f in FIELDS.items() if f.is_required())


def load_train_config(source: str | Path | dict) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML path or a dict; raises :class:`TrainConfigError`."""
    if not isinstance(source, (str, Path)):
        return config_from_dict(source)  # a dict, or a clear error for anything else
    from duplexgym.config import load_yaml

    return load_yaml(source, config_from_dict, TrainConfigError, "training config")


def config_from_dict(raw: Any) -> TrainConfig:
    """Validate a config mapping; every problem is a line of the :class:`TrainConfigError`."""
    from pydantic import ValidationError

    if not isinstance(raw, dict):
        raise TrainConfigError(f"a training config is a mapping of fields ({', '.join(FIELDS)}); "
                               f"got {type(raw).__name__}")
    # null means "not given": the default, or for a required field, missing
    raw = {k: v for k, v in raw.items() if v is not None or k in ("axis_weights", "segments", "rewards",
                                                                    "ray_address", "tracking")}
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise TrainConfigError(explain(exc, TrainConfig)) from None


# ------------------------------------------------------------------------------------ helpers


def _unique_names(value, where: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    """``value`` (a list) as a tuple, each entry one of ``known`` and listed once; else the error
    names the entry (``axes[1]: unknown axis 'turns'; known: ...``)."""
    for i, name in enumerate(value):
        if name not in known:
            raise located(f"{where}[{i}]", f"unknown {what} {name!r}; known: {', '.join(known)}")
        if name in value[:i]:
            raise located(f"{where}[{i}]", f"{what} {name!r} is listed twice")
    return tuple(value)


def _path(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise located(where, f"expected a path string, got {value!r}")
    return Path(value).expanduser().resolve()


def _check_corpus(cfg: TrainConfig) -> None:
    """The corpus against the rest: Mimi codes of the model's codec, segments of every axis, the
    listed segment ids (the corpus is opened once, without Ray)."""
    from duplexgym.corpora.errors import CorpusError
    from duplexgym.envs.corpus import ReplayCorpus

    path = Path(cfg.corpus)
    try:
        corpus = ReplayCorpus(path)
    except (CorpusError, ValueError, OSError) as exc:
        raise located("corpus", str(exc)) from None
    if not corpus.has_codes or not corpus.codec_id:
        raise located("corpus", f"{path} holds no Mimi codes (training replays codes); rebuild it with "
                                "`duplexgym corpus build ... --codec tiny`")
    if cfg.model == TINY_MODEL and corpus.codec_spec != TINY_MODEL:
        raise located("corpus", f"{path} was built with codec {corpus.codec_spec!r}; model 'tiny' needs codes "
                                "of the tiny Mimi (`--codec tiny`)")
    if cfg.model != TINY_MODEL:
        from duplexgym.agents.policies.checkpoint import load_checkpoint_mimi, resolve_source
        from duplexgym.corpora.codec import codec_id

        mimi_id = codec_id(load_checkpoint_mimi(resolve_source(cfg.model), "cpu"))  # Mimi only, not the LM
        if mimi_id != corpus.codec_id:
            raise located("model", f"the Mimi of {cfg.model} is codec {mimi_id}, but the corpus {path} holds codes "
                                   f"of {corpus.codec_id}; build the corpus with this model's Mimi (`--codec PATH`)")
    if cfg.env == "conversation":
        _check_conversation(cfg, corpus)
        return
    missing = [axis for axis in cfg.axes if not corpus.select((axis,))]
    if missing:
        raise located("axes", f"the corpus {path} has no {missing[0]!r} segments")
    for i, sid in enumerate(cfg.segments or ()):
        seg = corpus.by_id.get(sid)
        if seg is None:
            close = difflib.get_close_matches(sid, corpus.by_id, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise located(f"segments[{i}]", f"no segment {sid!r} in {corpus.path}{hint}")
        if seg.axis not in cfg.axes:
            raise located(f"segments[{i}]", f"{sid!r} is a {seg.axis} segment, not of axes ({', '.join(cfg.axes)})")
    if cfg.context.p > 0:
        chosen = corpus.select(tuple(cfg.axes), cfg.segments)
        if not any(s.context_s for s in chosen):
            raise located("context.p", f"the corpus {path} stores no context before its segments; rebuild it with "
                                       "`duplexgym corpus build ... --context-s 30` (or set context.p: 0)")


def make_live_env(corpus, rewards, conversation: dict):
    """The live env of ``env: conversation`` as a run builds it (config check, plan, env runners):
    Conversation-v0 with codes in and tokens out, ``conversation`` = :meth:`ConversationConfig.env_kwargs`."""
    from duplexgym.envs.conversation import ConversationEnv

    return ConversationEnv(corpus, obs_mode="codes", action_mode="tokens", rewards=rewards, **conversation)


def _check_conversation(cfg: TrainConfig, corpus) -> None:
    """``env: conversation``: the live env the runners will build, built once here (corpus codec and
    silence codes, user source, script, dialogue ids, user timing, scoring, judge: its own checks)."""
    try:
        make_live_env(corpus, cfg.rewards, cfg.conversation.env_kwargs()).close()
    except (ValueError, TypeError, OSError) as exc:
        raise located("conversation", str(exc)) from None
