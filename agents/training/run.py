"""``duplexgym train --config CONFIG.yaml``: a validated :class:`~duplexgym.agents.training.config.TrainConfig`
run with :func:`~duplexgym.agents.rllib_train.train_policy`, and its run folder.

The run folder (``out``) gets these files and folders (a rerun overwrites them, and nothing else):

- ``config.yaml``: the resolved config (defaults filled in, absolute paths), written before training;
- ``metrics.jsonl``: one JSON object per iteration, appended as each one ends (non-finite numbers
  are written as ``null``);
- ``reward_curve.png``: mean episode reward per iteration, one line per axis (pause blue, turn
  orange, backchannel green, interruption red), a grey zero line when 0 is in range; drawn with
  :func:`duplexgym.agents.evaluation.export.write_png`.

- ``policy/``: the trained policy as a moshi-loadable checkpoint folder (Kyutai layout:
  ``model.safetensors``, the model's Mimi, the text tokenizer, ``config.json``; with ``trainable:
  lora`` the base weights plus moshi's LoRA file ``lora.safetensors``, which moshi's loaders apply),
  rewritten at every checkpoint and at the end: ``duplexgym eval --agent moshi:OUT/policy`` evaluates
  it; ``policy_merged/`` (``lora.export_merged``): the same policy with its adapters merged in;
- ``checkpoints/iter_XXXX/`` (``XXXX``: iterations done, counted from the start of training): the
  trained weights and optimizer state as safetensors and the env runners' schedules as JSON
  (:mod:`duplexgym.agents.training.checkpoints`). Written after every ``checkpoint_interval``-th
  iteration and after the last one (``checkpoint_interval: 0``: after the last one only).

``--resume OUT/checkpoints/iter_XXXX`` continues training from such a checkpoint up to
``iterations`` (a total, not a number of further iterations), keeping ``metrics.jsonl``'s rows of
the iterations before it. The checkpoint's fields in
:data:`~duplexgym.agents.training.checkpoints.RESUME_KEYS` must equal the config's.

Ray (and :mod:`duplexgym.agents.rllib_train`, which imports it) is imported only after the config
validated.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
from duplexgym.agents.training.checkpoints import (
    CHECKPOINTS_NAME,
    LEGACY_RUNNER_STATE_NAME,
    META_NAME,
    check_resume,
    checkpoint_path,
    latest_checkpoint,
)
from duplexgym.agents.training.config import TrainConfig
from duplexgym.agents.training.plots import write_reward_curve
from duplexgym.agents.training.tracking import RunLogger

from duplexgym.constants import AXES

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.yaml"
CURVE_NAME = "reward_curve.png"
POLICY_NAME = "policy"
#: ``lora.export_merged``: the adapted policy with its adapters merged, a plain checkpoint.
MERGED_POLICY_NAME = "policy_merged"
#: Written first into a run folder: what made it (``duplexgym train``); only such a folder is ever
#: resumed into or, with ``overwrite``, cleared.
MARK_NAME = "run.json"
#: What ``overwrite`` removes of an earlier run (files and folders this command writes; nothing else).
RUN_FILES = (METRICS_NAME, CONFIG_NAME, CURVE_NAME, "reward_curve.svg", MARK_NAME)
RUN_FOLDERS = ("tensorboard",)
#: The files ``export_policy`` writes into ``policy/``.
POLICY_FILES = ("model.safetensors", "mimi.safetensors", "mimi_config.json", "config.json", "lora.safetensors",
                "personaplex_prompt.json", "voice.wav", "voice.flac", "voice.pt")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; the message says why and what to do."""


def _is_run_folder(out: Path) -> bool:
    return (out / MARK_NAME).is_file() or ((out / METRICS_NAME).is_file() and (out / CONFIG_NAME).is_file())


def resume_hint(cfg_path: str | Path, out: str | Path) -> str:
    """How to go on with the run in ``out``: the ``--resume`` command of its latest checkpoint."""
    last = latest_checkpoint(out)
    if last is None:
        return (f"it has no checkpoint yet; start it again with `duplexgym train --config {cfg_path} --overwrite` "
                "(checkpoint_interval: N keeps one every N iterations)")
    return f"resume it with `duplexgym train --config {cfg_path} --resume {last}`"


def prepare_run_folder(cfg: TrainConfig, resume: str | Path | None = None, overwrite: bool = False,
                       cfg_path: str | Path = "CONFIG.yaml") -> None:
    """Make ``cfg.out`` ready: a new or empty folder; the folder of the run being resumed; or, with
    ``overwrite``, an earlier run whose outputs (and only those) are removed first. Anything else is
    refused with a :class:`RunFolderError` naming the command to resume, so a rerun never truncates
    a run's logs by accident."""
    import shutil

    out = Path(cfg.out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not _is_run_folder(out):
        raise RunFolderError(f"out: {out} is not empty and was not made by `duplexgym train` (no {MARK_NAME}); "
                             "pass a new or empty folder")
    if resume is not None:
        return
    if not overwrite:
        raise RunFolderError(f"out: {out} already holds a training run; {resume_hint(cfg_path, out)}, or pass "
                             "--overwrite to start over (it replaces that run's metrics, curves, logs, checkpoints "
                             "and policy)")
    for name in RUN_FILES:
        if (out / name).is_file():
            (out / name).unlink()
    for name in RUN_FOLDERS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for folder in (out / CHECKPOINTS_NAME).glob("iter_*"):
        if (folder / META_NAME).is_file() or (folder / LEGACY_RUNNER_STATE_NAME).is_file():
            shutil.rmtree(folder)
    for policy in (out / POLICY_NAME, out / MERGED_POLICY_NAME):
        if (policy / "config.json").is_file():
            for name in POLICY_FILES + tuple(p.name for p in policy.glob("*.model")):
                if (policy / name).is_file():
                    (policy / name).unlink()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def run_training(cfg: TrainConfig, on_iteration: Callable[[dict], None] | None = None,
                 resume: str | Path | None = None, on_start: Callable | None = None,
                 on_checkpoint: Callable | None = None, overwrite: bool = False,
                 trust_pickled_checkpoint: bool = False) -> dict:
    """Train as ``cfg`` says (from ``resume``, a checkpoint folder, if given); returns ``{"algorithm",
    "out", "iterations": [per-iteration metrics], "reward_mean": {axis: last iteration's mean},
    "wall_s", "files": {...}}``. The run folder is checked first (:func:`prepare_run_folder`).
    ``on_start(algo, iterations_done)`` and ``on_checkpoint(algo, path, iterations_done)`` expose the
    algorithm (tests)."""
    import yaml

    start = check_resume(cfg, resume, trust_pickled_checkpoint) if resume is not None else 0
    prepare_run_folder(cfg, resume, overwrite)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / MARK_NAME, json.dumps({"made_by": "duplexgym train", "algorithm": cfg.algorithm}) + "\n")
    _write_atomic(out / CONFIG_NAME, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    metrics_path = out / METRICS_NAME
    rows: list[dict] = []
    if start and metrics_path.is_file():  # keep the rows of the iterations before the checkpoint
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if int(row.get("iteration", start)) < start:
                    rows.append(row)
    _write_atomic(metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    checkpoints: list[str] = []
    policy = out / POLICY_NAME
    merged = out / MERGED_POLICY_NAME if cfg.lora is not None and cfg.lora.export_merged else None

    def record(algo, m: dict) -> None:
        row = _plain(m)
        rows.append(row)
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        tracker.log(row)
        write_reward_curve(out / CURVE_NAME, rows, cfg.reward_axes, title=curve_title(cfg))
        done = int(m["iteration"]) + 1
        if done == cfg.iterations or (cfg.checkpoint_interval and done % cfg.checkpoint_interval == 0):
            path = checkpoint_path(out, done)
            save_training_checkpoint(algo, path, done, cfg.to_dict())
            export_policy(algo, policy, merged)
            checkpoints.append(str(path))
            if on_checkpoint is not None:
                on_checkpoint(algo, path, done)
        if on_iteration is not None:
            on_iteration(row)

    from duplexgym.agents.training.checkpoints import (  # imports Ray: only now
        export_policy,
        save_training_checkpoint,
    )
    from duplexgym.agents.training.driver import train_policy

    t0 = time.perf_counter()
    with RunLogger(out, cfg.to_dict(), cfg.tracking, start_iteration=start) as tracker:
        train_policy(cfg, on_iteration=record, resume=None if resume is None else Path(resume).expanduser().resolve(),
                     on_start=on_start, trust_pickled_checkpoint=trust_pickled_checkpoint)
    write_reward_curve(out / CURVE_NAME, rows, cfg.reward_axes, title=curve_title(cfg))
    return {"algorithm": cfg.algorithm, "out": str(out), "iterations": rows,
            "reward_mean": dict(rows[-1]["reward_mean"]) if rows else {},
            "wall_s": time.perf_counter() - t0, "resumed_from": start if resume is not None else None,
            "logs": tracker.locations(),
            "files": {"metrics": str(metrics_path), "config": str(out / CONFIG_NAME),
                      "reward_curve": str(out / CURVE_NAME), "policy": str(policy), "checkpoints": checkpoints,
                      **({"policy_merged": str(merged)} if merged is not None else {})}}


def curve_title(cfg: TrainConfig) -> str:
    """The reward curve's title: the run folder, algorithm, model and axes."""
    model = cfg.model if cfg.model == "tiny" else Path(cfg.model).name
    return f"{Path(cfg.out).name}: {cfg.algorithm.upper()} on {', '.join(cfg.reward_axes)} (model {model}, G = {cfg.group_size})"


def format_iteration(m: dict, total: int) -> str:
    """One progress line: iteration, per-axis reward means, kl, loss, frames/s."""
    rewards = "  ".join(f"{axis} {_fmt(v, '+.3f')}" for axis, v in sorted(m.get("reward_mean", {}).items(),
                                                                          key=lambda kv: _axis_order(kv[0])))
    return (f"iter {m['iteration'] + 1}/{total}  reward {rewards or '-'}  kl {_fmt(m.get('kl'), '.5f')}  "
            f"loss {_fmt(m.get('loss'), '+.5f')}  frames/s {_fmt(m.get('frames_per_s'), '.1f')}  "
            f"[{_fmt(m.get('wall_s'), '.1f')} s]")


def _axis_order(axis: str) -> int:
    """The position of an axis in progress lines: ``AXES`` order, then anything else (``conversation``)."""
    return AXES.index(axis) if axis in AXES else len(AXES)


def _fmt(v, spec: str) -> str:
    return "nan" if v is None or not math.isfinite(v) else format(v, spec)


def _plain(obj):
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
