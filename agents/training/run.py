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
  ``model.safetensors``, the tiny Mimi, the text tokenizer, ``config.json``), rewritten at every
  checkpoint and at the end: ``duplexgym eval --agent moshi:OUT/policy --obs-mode codes
  --action-mode tokens`` evaluates it;
- ``checkpoints/iter_XXXX/`` (``XXXX``: iterations done, counted from the start of training): an
  ``algo.save_to_path`` checkpoint (learner and reference LM weights, Adam state) plus
  ``grpo_runners.json`` (the env runners' segment RNG and counters, the iterations done and the
  config). Written after every ``checkpoint_interval``-th iteration and after the last one
  (``checkpoint_interval: 0``: after the last one only).

``--resume OUT/checkpoints/iter_XXXX`` continues training from such a checkpoint up to
``iterations`` (a total, not a number of further iterations), keeping ``metrics.jsonl``'s rows of
the iterations before it. The checkpoint's ``algorithm``, ``corpus``, ``axes``, ``axis_weights``, ``segments``,
``group_size``, ``segments_per_iteration``, ``env_runners`` and ``seed`` must equal the config's.

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
from duplexgym.agents.training.checkpoints import check_resume, checkpoint_path
from duplexgym.agents.training.config import TrainConfig
from duplexgym.agents.training.plots import write_reward_curve

from duplexgym.constants import AXES

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.yaml"
CURVE_NAME = "reward_curve.png"
POLICY_NAME = "policy"


def run_training(cfg: TrainConfig, on_iteration: Callable[[dict], None] | None = None,
                 resume: str | Path | None = None, on_start: Callable | None = None,
                 on_checkpoint: Callable | None = None) -> dict:
    """Train as ``cfg`` says (from ``resume``, a checkpoint folder, if given); returns ``{"algorithm",
    "out", "iterations": [per-iteration metrics], "reward_mean": {axis: last iteration's mean},
    "wall_s", "files": {...}}``. ``on_start(algo, iterations_done)`` and ``on_checkpoint(algo, path,
    iterations_done)`` expose the algorithm (tests)."""
    import yaml

    start = check_resume(cfg, resume) if resume is not None else 0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    metrics_path = out / METRICS_NAME
    rows: list[dict] = []
    if start and metrics_path.is_file():  # keep the rows of the iterations before the checkpoint
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if int(row.get("iteration", start)) < start:
                    rows.append(row)
    metrics_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    checkpoints: list[str] = []
    policy = out / POLICY_NAME

    def record(algo, m: dict) -> None:
        row = _plain(m)
        rows.append(row)
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        write_reward_curve(out / CURVE_NAME, rows, cfg.axes, title=curve_title(cfg))
        done = int(m["iteration"]) + 1
        if done == cfg.iterations or (cfg.checkpoint_interval and done % cfg.checkpoint_interval == 0):
            path = checkpoint_path(out, done)
            save_training_checkpoint(algo, path, done, cfg.to_dict())
            export_policy(algo, policy)
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
    train_policy(cfg, on_iteration=record, resume=None if resume is None else Path(resume).expanduser().resolve(),
                 on_start=on_start)
    write_reward_curve(out / CURVE_NAME, rows, cfg.axes, title=curve_title(cfg))
    return {"algorithm": cfg.algorithm, "out": str(out), "iterations": rows,
            "reward_mean": dict(rows[-1]["reward_mean"]) if rows else {},
            "wall_s": time.perf_counter() - t0, "resumed_from": start if resume is not None else None,
            "files": {"metrics": str(metrics_path), "config": str(out / CONFIG_NAME),
                      "reward_curve": str(out / CURVE_NAME), "policy": str(policy), "checkpoints": checkpoints}}


def curve_title(cfg: TrainConfig) -> str:
    """The reward curve's title: the run folder, algorithm, model and axes."""
    model = cfg.model if cfg.model == "tiny" else Path(cfg.model).name
    return f"{Path(cfg.out).name}: {cfg.algorithm.upper()} on {', '.join(cfg.axes)} (model {model}, G = {cfg.group_size})"


def format_iteration(m: dict, total: int) -> str:
    """One progress line: iteration, per-axis reward means, kl, loss, frames/s."""
    rewards = "  ".join(f"{axis} {_fmt(v, '+.3f')}" for axis, v in sorted(m.get("reward_mean", {}).items(),
                                                                          key=lambda kv: AXES.index(kv[0])))
    return (f"iter {m['iteration'] + 1}/{total}  reward {rewards or '-'}  kl {_fmt(m.get('kl'), '.5f')}  "
            f"loss {_fmt(m.get('loss'), '+.5f')}  frames/s {_fmt(m.get('frames_per_s'), '.1f')}  "
            f"[{_fmt(m.get('wall_s'), '.1f')} s]")


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
