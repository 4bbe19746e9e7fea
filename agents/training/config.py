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
    lr: 1.0e-4                       # Adam learning rate (> 0); write 1.0e-4, YAML reads 1e-4 as text
    kl_coef: 0.05                    # weight of the k3 KL to the frozen reference (>= 0)
    clip_eps: 0.2                    # PPO-style ratio clip (0 < clip_eps < 1)
    update_streams: text             # text | audio | all: the token streams the loss covers
    advantage: episode               # grpo: episode (one per rollout) | reward_to_go (per frame)
    gamma: 1.0                       # ppo: discount per 80 ms frame, in [0, 1]
    lam: 0.95                        # ppo: GAE lambda, in [0, 1]
    vf_coef: 0.5                     # ppo: weight of the value loss (>= 0)
    axes: [turn]                     # non-empty subset of pause, turn, backchannel, interruption
    axis_weights: null               # null (uniform over axes) or {axis: weight >= 0}: the axis mix
    segments: null                   # null (every segment of the axes) or a list of segment ids to train on
    rewards: null                    # null (the env's default spec, text reader) | a reward spec mapping or YAML path
    env_runners: 0                   # remote env runners (0: sample in the driver)
    seed: 0                          # seeds segment choice and sampling (>= 0)
    checkpoint_interval: 0           # checkpoint every N iterations (and after the last); 0: after the last only
    ray_address: null                # null: start a local Ray; an address ("auto", "HOST:PORT", "ray://HOST:PORT"): join that cluster

Every mistake raises :class:`TrainConfigError` (a ``ValueError``; the CLI exits 2) naming the field,
e.g. ``axes[1]: unknown axis 'turns'; known: pause, turn, backchannel, interruption``. Loading
never imports or starts Ray: the corpus is checked by reading its ``corpus.json`` and manifest,
a checkpoint folder by :func:`~duplexgym.agents.policies.checkpoint.resolve_checkpoint` (no weights loaded),
a reward spec by :func:`~duplexgym.rewards.spec.load_spec`.

What training cannot do yet is refused, never ignored: a reward spec whose activity reader is ``vad`` (the env would
decode every rollout's audio; use ``text``), fields of one algorithm set in the other's config
(``advantage`` for PPO; ``gamma``, ``lam``, ``vf_coef`` for GRPO).
On a cluster (``ray_address``) ``corpus`` and ``out`` must be paths every node can read (a shared
file system) and duplexgym must be installed on every node.
Checkpoints (``out/checkpoints/iter_XXXX``, ``out/policy``): see :mod:`duplexgym.agents.training.run`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duplexgym.constants import AXES, TINY_MODEL, UPDATE_STREAMS

KNOWN_ALGORITHMS = ("grpo", "ppo")
ADVANTAGES = ("episode", "reward_to_go")
#: Fields only one algorithm reads, and their defaults: setting one for the other is an error.
ALGORITHM_FIELDS = {"grpo": {"advantage": "episode"}, "ppo": {"gamma": 1.0, "lam": 0.95, "vf_coef": 0.5}}


class TrainConfigError(ValueError):
    """A training config that cannot be used; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    """A validated training config; see the module docstring for the YAML form.

    Paths are absolute once loaded. Units: ``group_size`` rollouts per group,
    ``segments_per_iteration`` groups per iteration, ``iterations`` and ``checkpoint_interval``
    training iterations, ``env_runners`` Ray actors; ``lr``, ``kl_coef``, ``clip_eps`` are
    dimensionless.
    """

    corpus: str
    """Built corpus folder with Mimi codes of the tiny codec."""
    out: str
    """Run folder: ``metrics.jsonl``, ``config.yaml``, ``reward_curve.png``."""
    algorithm: str = "grpo"
    """``grpo`` (group-relative advantages, no value function) or ``ppo`` (GAE with a value head)."""
    model: str = TINY_MODEL
    """``tiny`` (the tiny random Moshi) or a checkpoint folder (Kyutai layout, e.g. a run's ``policy/``) whose
    Mimi made the corpus' codes. Training runs on CPU in float32: a 7B Moshi needs GPU learners (not wired)."""
    group_size: int = 4
    """G: rollouts of the same segment per group (>= 2)."""
    segments_per_iteration: int = 2
    """Groups (one segment each) sampled per iteration; a multiple of ``max(1, env_runners)``."""
    iterations: int = 3
    """Training iterations, one learner update each (>= 1)."""
    epochs: int = 1
    """Passes of the learner over each iteration's batch (>= 1); the ratio clip matters from the second."""
    lr: float = 1e-4
    """Adam learning rate (> 0)."""
    kl_coef: float = 0.05
    """Weight of the KL to the frozen reference (>= 0)."""
    clip_eps: float = 0.2
    """Clip of the probability ratio (0 < clip_eps < 1)."""
    update_streams: str = "text"
    """Token streams the policy loss covers: ``text`` (stream 0, the stable published recipe),
    ``audio`` (the 8 codebooks) or ``all``."""
    advantage: str = "episode"
    """GRPO: ``episode`` (one group-normalised advantage per rollout, from its return) or
    ``reward_to_go`` (per frame, from the rewards still to come: credit in time for dense shaping)."""
    gamma: float = 1.0
    """PPO: discount per 80 ms frame, in [0, 1]."""
    lam: float = 0.95
    """PPO: GAE lambda, in [0, 1]."""
    vf_coef: float = 0.5
    """PPO: weight of the value loss (>= 0)."""
    axes: tuple[str, ...] = ("turn",)
    """Interactivity axes whose segments are trained on (subset of ``duplexgym.AXES``)."""
    axis_weights: dict | None = None
    """``{axis: weight >= 0}``: each group's axis is drawn with these weights, then its segment
    uniformly (:class:`~duplexgym.envs.corpus.SegmentSampler`); null: every axis weight 1."""
    segments: tuple[str, ...] | None = None
    """Segment ids to train on (each of one of ``axes``); null: every segment of ``axes``."""
    rewards: dict | None = None
    """The env's reward spec as a mapping (``RewardSpec.to_dict()`` of the validated spec); null: the
    env's default (every axis term, weight 1, the text reader, no dense shaping)."""
    env_runners: int = 0
    """Remote env-runner actors (0: sample in the driver process)."""
    seed: int = 0
    """Seed of segment choice and sampling (>= 0)."""
    checkpoint_interval: int = 0
    """Iterations between checkpoints (``out/checkpoints/iter_XXXX``, plus ``out/policy``); one is also
    written after the last iteration; 0: after the last iteration only."""
    ray_address: str | None = None
    """Ray cluster to join (``ray.init(address=...)``); null: start a local Ray."""

    def to_dict(self) -> dict:
        """The resolved config as plain YAML-able values (written to ``out/config.yaml``)."""
        d = dataclasses.asdict(self)
        d["axes"] = list(self.axes)
        d["segments"] = None if self.segments is None else list(self.segments)
        for name, fields in ALGORITHM_FIELDS.items():
            if name != self.algorithm:
                for key in fields:
                    d.pop(key)
        return d


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
REQUIRED = tuple(name for name, f in FIELDS.items()
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def load_train_config(source: str | Path | dict) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML path or a dict; raises :class:`TrainConfigError`."""
    if not isinstance(source, (str, Path)):
        return config_from_dict(source)  # a dict, or a clear error for anything else
    from duplexgym.config import load_yaml

    return load_yaml(source, config_from_dict, TrainConfigError, "training config")


def config_from_dict(raw: Any) -> TrainConfig:
    if not isinstance(raw, dict):
        raise TrainConfigError(f"a training config is a mapping of fields ({', '.join(FIELDS)}); "
                               f"got {type(raw).__name__}")
    for key in raw:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TrainConfigError(f"{key}: unknown field; {hint}known: {', '.join(FIELDS)}")
    for key in REQUIRED:
        if raw.get(key) is None:
            raise TrainConfigError(f"{key}: required field is missing")

    algorithm = _choice(raw.get("algorithm", "grpo"), "algorithm", KNOWN_ALGORITHMS)
    for other, fields in ALGORITHM_FIELDS.items():
        for key in fields:
            if other != algorithm and raw.get(key) is not None:
                raise TrainConfigError(f"{key}: only used by algorithm {other}; this config trains {algorithm} "
                                       "(remove the field)")
    group_size = _int(raw.get("group_size", 4), "group_size", minimum=2)
    segments = _int(raw.get("segments_per_iteration", 2), "segments_per_iteration", minimum=1)
    iterations = _int(raw.get("iterations", 3), "iterations", minimum=1)
    epochs = _int(raw.get("epochs", 1), "epochs", minimum=1)
    update_streams = _choice(raw.get("update_streams", "text"), "update_streams", UPDATE_STREAMS)
    advantage = _choice(_given(raw, "advantage", "episode"), "advantage", ADVANTAGES)
    gamma = _float(_given(raw, "gamma", 1.0), "gamma", low=0.0, high=1.0, high_closed=True)
    lam = _float(_given(raw, "lam", 0.95), "lam", low=0.0, high=1.0, high_closed=True)
    vf_coef = _float(_given(raw, "vf_coef", 0.5), "vf_coef", low=0.0)
    lr = _float(raw.get("lr", 1e-4), "lr", low=0.0, low_open=True)
    kl_coef = _float(raw.get("kl_coef", 0.05), "kl_coef", low=0.0)
    clip_eps = _float(raw.get("clip_eps", 0.2), "clip_eps", low=0.0, low_open=True, high=1.0)
    env_runners = _int(raw.get("env_runners", 0), "env_runners", minimum=0)
    seed = _int(raw.get("seed", 0), "seed", minimum=0)
    if segments % max(1, env_runners):
        raise TrainConfigError(f"segments_per_iteration: {segments} must split evenly over "
                               f"{max(1, env_runners)} env runner(s) (env_runners: {env_runners})")
    axes = _axes(raw.get("axes", ["turn"]))
    axis_weights = _axis_weights(raw.get("axis_weights"), axes)
    rewards = _rewards(raw.get("rewards"))
    checkpoint_interval = _int(raw.get("checkpoint_interval", 0), "checkpoint_interval", minimum=0)
    ray_address = _ray_address(raw.get("ray_address"))
    out = _out(raw["out"])
    model = _model(raw.get("model", TINY_MODEL))
    replay = _corpus(raw["corpus"], axes, model)
    segment_ids = _segments(raw.get("segments"), replay, axes)
    corpus = str(replay.path)
    return TrainConfig(corpus=corpus, out=out, algorithm=algorithm, model=model, group_size=group_size,
                       segments_per_iteration=segments, iterations=iterations, epochs=epochs, lr=lr,
                       kl_coef=kl_coef, clip_eps=clip_eps, update_streams=update_streams, advantage=advantage,
                       gamma=gamma, lam=lam, vf_coef=vf_coef, axes=axes, axis_weights=axis_weights, segments=segment_ids,
                       rewards=rewards, env_runners=env_runners, seed=seed,
                       checkpoint_interval=checkpoint_interval, ray_address=ray_address)


# ------------------------------------------------------------------------------------ field checks


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrainConfigError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise TrainConfigError(f"{where}: must be >= {minimum}, got {value}")
    return int(value)


def _given(raw: dict, key: str, default: Any) -> Any:
    value = raw.get(key)
    return default if value is None else value


def _float(value: Any, where: str, low: float | None = None, low_open: bool = False,
           high: float | None = None, high_closed: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML reads a number like 1e-4 as text: write 1.0e-4)"
            except ValueError:
                pass
        raise TrainConfigError(f"{where}: expected a number, got {value!r}{hint}")
    value = float(value)
    if not math.isfinite(value):
        raise TrainConfigError(f"{where}: expected a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise TrainConfigError(f"{where}: must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value > high if high_closed else value >= high):
        raise TrainConfigError(f"{where}: must be {'<=' if high_closed else '<'} {high:g}, got {value:g}")
    return value


def _choice(value: Any, where: str, known: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in known:
        raise TrainConfigError(f"{where}: unknown value {value!r}; known: {', '.join(known)}")
    return value


def _axes(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise TrainConfigError(f"axes: expected a non-empty list of axis names ({', '.join(AXES)}), got {value!r}")
    for i, axis in enumerate(value):
        if axis not in AXES:
            raise TrainConfigError(f"axes[{i}]: unknown axis {axis!r}; known: {', '.join(AXES)}")
        if axis in value[:i]:
            raise TrainConfigError(f"axes[{i}]: axis {axis!r} is listed twice")
    return tuple(value)


def _axis_weights(value: Any, axes: tuple[str, ...]) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise TrainConfigError(f"axis_weights: expected null or a mapping axis -> weight, got {value!r}")
    weights = {}
    for axis, weight in value.items():
        if axis not in AXES:
            raise TrainConfigError(f"axis_weights.{axis}: unknown axis; known: {', '.join(AXES)}")
        if axis not in axes:
            raise TrainConfigError(f"axis_weights.{axis}: axis is not in axes ({', '.join(axes)})")
        weights[axis] = _float(weight, f"axis_weights.{axis}", low=0.0)
    if not any(weights.get(axis, 0.0) > 0 for axis in axes):
        raise TrainConfigError(f"axis_weights: every weight is 0; at least one of {', '.join(axes)} needs a weight > 0")
    return weights


def _rewards(value: Any) -> dict | None:
    if value is None:
        return None
    from duplexgym.rewards.spec import RewardSpecError, spec_from_dict

    from duplexgym.config import load_yaml

    def parse(raw: Any):
        """A spec that names no reader reads the text stream (the default of token actions)."""
        if isinstance(raw, dict) and isinstance(raw.get("activity", {}), dict) and "reader" not in raw.get("activity", {}):
            raw = {**raw, "activity": {**raw.get("activity", {}), "reader": "text"}}
        return spec_from_dict(raw)

    if not isinstance(value, (dict, str)):
        raise TrainConfigError(f"rewards: expected null, a reward spec mapping or a YAML path, got {value!r}")
    try:
        spec = parse(value) if isinstance(value, dict) else load_yaml(value, parse, RewardSpecError, "reward spec")
    except RewardSpecError as exc:
        raise TrainConfigError(f"rewards: {exc}") from None
    if spec.activity.reader != "text":
        raise TrainConfigError(f"rewards: activity.reader: {spec.activity.reader!r} is not supported for training "
                               "(it decodes every rollout's audio); use reader: text")
    return spec.to_dict()


def _ray_address(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise TrainConfigError(f"ray_address: expected null or an address string ('auto', 'HOST:PORT', "
                               f"'ray://HOST:PORT'), got {value!r}")
    value = value.strip()
    if value not in ("auto", "local") and ":" not in value:
        raise TrainConfigError(f"ray_address: {value!r} is not a Ray address; expected 'auto', 'HOST:PORT' or "
                               "'ray://HOST:PORT'")
    return value


def _path(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise TrainConfigError(f"{where}: expected a path string, got {value!r}")
    return Path(value).expanduser().resolve()


def _out(value: Any) -> str:
    out = _path(value, "out")
    if out.exists() and not out.is_dir():
        raise TrainConfigError(f"out: {out} exists and is not a folder")
    return str(out)


def _model(value: Any) -> str:
    if value == TINY_MODEL:
        return TINY_MODEL
    if not isinstance(value, str) or not value.strip():
        raise TrainConfigError(f"model: expected 'tiny' or a checkpoint folder, got {value!r}")
    from duplexgym.agents.policies.checkpoint import resolve_checkpoint

    path = Path(value).expanduser().resolve()
    try:
        resolve_checkpoint(path)  # finds the files, loads no weights
    except ValueError as exc:
        raise TrainConfigError(f"model: {exc}") from None
    return str(path)


def _corpus(value: Any, axes: tuple[str, ...], model: str):
    """The checked corpus, opened (a ``ReplayCorpus`` at the resolved path)."""
    from duplexgym.corpora.errors import CorpusError
    from duplexgym.envs.corpus import ReplayCorpus

    path = _path(value, "corpus")
    if not (path / "corpus.json").is_file():
        what = "no such folder" if not path.exists() else "no corpus.json in it"
        raise TrainConfigError(f"corpus: {path}: not a built corpus ({what}); build one with "
                               f"`duplexgym corpus build synthetic --out {value} --codec tiny`")
    try:
        corpus = ReplayCorpus(path)
    except (CorpusError, ValueError, OSError) as exc:
        raise TrainConfigError(f"corpus: {exc}") from None
    if not corpus.has_codes or not corpus.codec_id:
        raise TrainConfigError(f"corpus: {path} holds no Mimi codes (GRPO replays codes); rebuild it with "
                               "`duplexgym corpus build ... --codec tiny`")
    if model == TINY_MODEL and corpus.codec_spec != TINY_MODEL:
        raise TrainConfigError(f"corpus: {path} was built with codec {corpus.codec_spec!r}; model 'tiny' needs codes "
                               "of the tiny Mimi (`--codec tiny`)")
    if model != TINY_MODEL:
        from duplexgym.agents.policies.checkpoint import (
            load_checkpoint_mimi,
            resolve_checkpoint,
        )
        from duplexgym.corpora.codec import codec_id

        mimi_id = codec_id(load_checkpoint_mimi(resolve_checkpoint(model), "cpu"))  # Mimi only, not the LM
        if mimi_id != corpus.codec_id:
            raise TrainConfigError(f"model: the Mimi of {model} is codec {mimi_id}, but the corpus {path} holds codes of "
                                   f"{corpus.codec_id}; build the corpus with this model's Mimi (`--codec PATH`)")
    missing = [axis for axis in axes if not corpus.select((axis,))]
    if missing:
        raise TrainConfigError(f"axes: the corpus {path} has no {missing[0]!r} segments")
    return corpus


def _segments(value: Any, corpus, axes: tuple[str, ...]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise TrainConfigError(f"segments: expected null or a non-empty list of segment ids, got {value!r}")
    by_id = corpus.by_id
    for i, sid in enumerate(value):
        seg = by_id.get(sid)
        if seg is None:
            close = difflib.get_close_matches(sid, by_id, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TrainConfigError(f"segments[{i}]: no segment {sid!r} in {corpus.path}{hint}")
        if seg.axis not in axes:
            raise TrainConfigError(f"segments[{i}]: {sid!r} is a {seg.axis} segment, not of axes ({', '.join(axes)})")
        if sid in value[:i]:
            raise TrainConfigError(f"segments[{i}]: {sid!r} is listed twice")
    return tuple(value)
