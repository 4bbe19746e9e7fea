"""The YAML config of ``duplexgym train --config CONFIG.yaml`` (GRPO on Ray RLlib).

A config (relative paths are read from the current working directory, as the other commands do)::

    algorithm: grpo                  # grpo | ppo (ppo: known, not available yet)
    corpus: runs/default-corpus      # a built corpus folder WITH Mimi codes (--codec tiny)
    model: tiny                      # tiny | a Moshi checkpoint folder (checked; training it: not yet)
    out: runs/grpo-tiny              # the run folder: metrics.jsonl, config.yaml, reward_curve.png
    group_size: 4                    # G rollouts per segment (>= 2)
    segments_per_iteration: 2        # groups per iteration, split evenly over the env runners
    iterations: 3                    # training iterations (one learner update each)
    lr: 1.0e-4                       # Adam learning rate (> 0); write 1.0e-4, YAML reads 1e-4 as text
    kl_coef: 0.05                    # weight of the k3 KL to the frozen reference (>= 0)
    clip_eps: 0.2                    # PPO-style ratio clip (0 < clip_eps < 1)
    axes: [turn]                     # non-empty subset of pause, turn, backchannel, interruption
    axis_weights: null               # not supported by GRPO training yet: null only
    rewards: null                    # a reward spec (mapping or YAML path), validated; non-null: not yet
    env_runners: 0                   # remote env runners (0: sample in the driver)
    seed: 0                          # seeds segment choice and sampling (>= 0)
    checkpoint_interval: 0           # checkpoint every N iterations (and after the last); 0: after the last only
    ray_address: null                # null: a local Ray; a cluster address: not supported yet

Every mistake raises :class:`TrainConfigError` (a ``ValueError``; the CLI exits 2) naming the field,
e.g. ``axes[1]: unknown axis 'turns'; known: pause, turn, backchannel, interruption``. Loading
never imports or starts Ray: the corpus is checked by reading its ``corpus.json`` and manifest,
a checkpoint folder by :func:`~duplexgym.agents.checkpoint.resolve_checkpoint` (no weights loaded).

What :func:`~duplexgym.agents.rllib_grpo.train_grpo` cannot do yet is refused, never ignored:
``algorithm: ppo``, a checkpoint-folder ``model`` (GRPO trains the tiny random Moshi only),
``axis_weights``, ``rewards`` (the GRPO env uses the env's default reward spec) and ``ray_address``.
Checkpoints (``out/checkpoints/iter_XXXX``, ``out/policy``): see :mod:`duplexgym.agents.train`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duplexgym import AXES

KNOWN_ALGORITHMS = ("grpo", "ppo")
AVAILABLE_ALGORITHMS = ("grpo",)
TINY_MODEL = "tiny"


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
    """``grpo`` (``ppo`` is known but not available yet)."""
    model: str = TINY_MODEL
    """``tiny`` (the tiny random Moshi); a checkpoint folder is checked, then refused (not yet)."""
    group_size: int = 4
    """G: rollouts of the same segment per group (>= 2)."""
    segments_per_iteration: int = 2
    """Groups (one segment each) sampled per iteration; a multiple of ``max(1, env_runners)``."""
    iterations: int = 3
    """Training iterations, one learner update each (>= 1)."""
    lr: float = 1e-4
    """Adam learning rate (> 0)."""
    kl_coef: float = 0.05
    """Weight of the KL to the frozen reference (>= 0)."""
    clip_eps: float = 0.2
    """Clip of the probability ratio (0 < clip_eps < 1)."""
    axes: tuple[str, ...] = ("turn",)
    """Interactivity axes whose segments are trained on (subset of ``duplexgym.AXES``)."""
    axis_weights: dict | None = None
    """Per-axis weights; must be null (not supported by GRPO training yet)."""
    rewards: dict | None = None
    """Reward spec (validated with ``duplexgym.rewards.spec.load_spec``); must be null for now."""
    env_runners: int = 0
    """Remote env-runner actors (0: sample in the driver process)."""
    seed: int = 0
    """Seed of segment choice and sampling (>= 0)."""
    checkpoint_interval: int = 0
    """Iterations between checkpoints (``out/checkpoints/iter_XXXX``, plus ``out/policy``); one is also
    written after the last iteration; 0: after the last iteration only."""
    ray_address: str | None = None
    """Ray cluster address; only null (a local Ray) is supported yet."""

    def to_dict(self) -> dict:
        """The resolved config as plain YAML-able values (written to ``out/config.yaml``)."""
        d = dataclasses.asdict(self)
        d["axes"] = list(self.axes)
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
    if algorithm not in AVAILABLE_ALGORITHMS:
        raise TrainConfigError(f"algorithm: {algorithm!r} is known but not available yet; "
                               f"available: {', '.join(AVAILABLE_ALGORITHMS)}")
    group_size = _int(raw.get("group_size", 4), "group_size", minimum=2)
    segments = _int(raw.get("segments_per_iteration", 2), "segments_per_iteration", minimum=1)
    iterations = _int(raw.get("iterations", 3), "iterations", minimum=1)
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
    ray_address = raw.get("ray_address")
    if ray_address is not None:
        if not isinstance(ray_address, str) or not ray_address.strip():
            raise TrainConfigError(f"ray_address: expected null or an address string, got {ray_address!r}")
        raise TrainConfigError(f"ray_address: {ray_address!r}: training on a Ray cluster is not supported yet "
                               "(train_grpo starts a local Ray); set null")
    out = _out(raw["out"])
    model = _model(raw.get("model", TINY_MODEL))
    corpus = _corpus(raw["corpus"], axes, model)
    return TrainConfig(corpus=corpus, out=out, algorithm=algorithm, model=model, group_size=group_size,
                       segments_per_iteration=segments, iterations=iterations, lr=lr, kl_coef=kl_coef,
                       clip_eps=clip_eps, axes=axes, axis_weights=axis_weights, rewards=rewards,
                       env_runners=env_runners, seed=seed, checkpoint_interval=checkpoint_interval,
                       ray_address=ray_address)


# ------------------------------------------------------------------------------------ field checks


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrainConfigError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise TrainConfigError(f"{where}: must be >= {minimum}, got {value}")
    return int(value)


def _float(value: Any, where: str, low: float | None = None, low_open: bool = False,
           high: float | None = None) -> float:
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
    if high is not None and value >= high:
        raise TrainConfigError(f"{where}: must be < {high:g}, got {value:g}")
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


def _axis_weights(value: Any, axes: tuple[str, ...]) -> None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise TrainConfigError(f"axis_weights: expected null or a mapping axis -> weight, got {value!r}")
    for axis, weight in value.items():
        if axis not in AXES:
            raise TrainConfigError(f"axis_weights.{axis}: unknown axis; known: {', '.join(AXES)}")
        if axis not in axes:
            raise TrainConfigError(f"axis_weights.{axis}: axis is not in axes ({', '.join(axes)})")
        _float(weight, f"axis_weights.{axis}", low=0.0)
    raise TrainConfigError("axis_weights: per-axis weights are not supported by GRPO training yet "
                           "(train_grpo samples the listed axes uniformly); set null")


def _rewards(value: Any) -> None:
    if value is None:
        return None
    from duplexgym.rewards.spec import RewardSpecError, load_spec

    if not isinstance(value, (dict, str)):
        raise TrainConfigError(f"rewards: expected null, a reward spec mapping or a YAML path, got {value!r}")
    try:
        load_spec(value)
    except RewardSpecError as exc:
        raise TrainConfigError(f"rewards: {exc}") from None
    raise TrainConfigError("rewards: a custom reward spec is valid but not supported by GRPO training yet "
                           "(train_grpo uses the env's default reward spec); set null")


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
    from duplexgym.agents.checkpoint import resolve_checkpoint

    path = Path(value).expanduser().resolve()
    try:
        resolve_checkpoint(path)  # finds the files, loads no weights
    except ValueError as exc:
        raise TrainConfigError(f"model: {exc}") from None
    raise TrainConfigError(f"model: {path} is a usable checkpoint folder, but GRPO training of checkpoints is not "
                           "supported yet (train_grpo trains the tiny random Moshi); set model: tiny")


def _corpus(value: Any, axes: tuple[str, ...], model: str) -> str:
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
    missing = [axis for axis in axes if not corpus.select((axis,))]
    if missing:
        raise TrainConfigError(f"axes: the corpus {path} has no {missing[0]!r} segments")
    return str(path)
