"""``duplexgym train --config CONFIG.yaml``: a validated :class:`~duplexgym.agents.train_config.TrainConfig`
run with :func:`~duplexgym.agents.rllib_train.train_policy`, and its run folder.

The run folder (``out``) gets these files and folders (a rerun overwrites them, and nothing else):

- ``config.yaml``: the resolved config (defaults filled in, absolute paths), written before training;
- ``metrics.jsonl``: one JSON object per iteration, appended as each one ends (non-finite numbers
  are written as ``null``);
- ``reward_curve.png``: mean episode reward per iteration, one line per axis (pause blue, turn
  orange, backchannel green, interruption red), a grey zero line when 0 is in range; drawn with
  :func:`duplexgym.agents.export.write_png`.

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

from duplexgym import AXES
from duplexgym.agents.train_config import TrainConfig

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.yaml"
CURVE_NAME = "reward_curve.png"
POLICY_NAME = "policy"
CHECKPOINTS_NAME = "checkpoints"
#: Beside an ``algo.save_to_path`` checkpoint: the iterations done, every sampling env runner's segment
#: schedule and the config (written by ``rllib_train.save_training_checkpoint``).
RUNNER_STATE_NAME = "grpo_runners.json"
#: Config fields a resumed run must share with its checkpoint.
RESUME_KEYS = ("algorithm", "corpus", "axes", "axis_weights", "segments", "group_size", "segments_per_iteration", "env_runners",
               "seed")
AXIS_COLOURS = {"pause": (66, 133, 244), "turn": (245, 150, 30), "backchannel": (52, 168, 83),
                "interruption": (220, 30, 30)}


def checkpoint_path(out: str | Path, iterations_done: int) -> Path:
    return Path(out) / CHECKPOINTS_NAME / f"iter_{iterations_done:04d}"


def read_checkpoint_meta(path: str | Path) -> dict:
    """The :data:`RUNNER_STATE_NAME` of a training checkpoint folder; ``ValueError`` if it is not one."""
    path = Path(path)
    meta = path / RUNNER_STATE_NAME
    if not meta.is_file():
        raise ValueError(f"resume: {path} is not a training checkpoint (no {RUNNER_STATE_NAME}; "
                         "checkpoints are written to OUT/checkpoints/iter_XXXX)")
    return json.loads(meta.read_text(encoding="utf-8"))


def check_resume(cfg: TrainConfig, resume: str | Path) -> int:
    """Checks a ``--resume`` folder against ``cfg`` without Ray; returns its iterations done."""
    path = Path(resume).expanduser().resolve()
    meta = read_checkpoint_meta(path)
    saved = meta.get("config") or {}
    mine = cfg.to_dict()
    for key in RESUME_KEYS:
        if key in saved and saved[key] != mine[key]:
            raise ValueError(f"resume: {key}: the checkpoint was trained with {saved[key]!r}, the config says "
                             f"{mine[key]!r}; they must be equal to resume")
    done = int(meta["iterations_done"])
    if done >= cfg.iterations:
        raise ValueError(f"resume: the checkpoint {path} has {done} iteration(s) done; iterations: {cfg.iterations} "
                         "leaves nothing to train (iterations counts from the start of training)")
    return done


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
        write_reward_curve(out / CURVE_NAME, rows, cfg.axes)
        done = int(m["iteration"]) + 1
        if done == cfg.iterations or (cfg.checkpoint_interval and done % cfg.checkpoint_interval == 0):
            path = checkpoint_path(out, done)
            save_training_checkpoint(algo, path, done, extra={"config": cfg.to_dict()})
            export_policy(algo, policy)
            checkpoints.append(str(path))
            if on_checkpoint is not None:
                on_checkpoint(algo, path, done)
        if on_iteration is not None:
            on_iteration(row)

    from duplexgym.agents.rllib_train import export_policy, save_training_checkpoint, train_policy  # imports Ray: only now

    t0 = time.perf_counter()
    train_policy(cfg, on_iteration=record, resume=None if resume is None else Path(resume).expanduser().resolve(),
                 on_start=on_start)
    write_reward_curve(out / CURVE_NAME, rows, cfg.axes)
    return {"algorithm": cfg.algorithm, "out": str(out), "iterations": rows,
            "reward_mean": dict(rows[-1]["reward_mean"]) if rows else {},
            "wall_s": time.perf_counter() - t0, "resumed_from": start if resume is not None else None,
            "files": {"metrics": str(metrics_path), "config": str(out / CONFIG_NAME),
                      "reward_curve": str(out / CURVE_NAME), "policy": str(policy), "checkpoints": checkpoints}}


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


# ------------------------------------------------------------------------------------ reward curve

_W, _H, _MARGIN = 480, 240, 16
_BG, _FRAME, _GRID, _ZERO = (255, 255, 255), (120, 120, 120), (230, 230, 230), (170, 170, 170)


def write_reward_curve(path: str | Path, rows: list[dict], axes=AXES) -> None:
    """PNG (``_W`` x ``_H``) of ``rows[i]["reward_mean"][axis]`` over iterations, one coloured
    polyline per axis; the y range is the data's (padded), one vertical grid line per iteration."""
    from duplexgym.agents.export import write_png

    img = np.empty((_H, _W, 3), np.uint8)
    img[:] = _BG
    x0, x1, y0, y1 = _MARGIN, _W - 1 - _MARGIN, _MARGIN, _H - 1 - _MARGIN
    series = {axis: [(i, r.get("reward_mean", {}).get(axis)) for i, r in enumerate(rows)] for axis in axes}
    values = [v for pts in series.values() for _, v in pts if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (-1.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    n = max(len(rows), 1)

    def px(i: float, v: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (i / (n - 1) if n > 1 else 0.5)
        y = y1 - (y1 - y0) * (v - lo) / (hi - lo)
        return x, y

    for i in range(len(rows)):
        img[y0:y1 + 1, int(round(px(i, lo)[0]))] = _GRID
    if lo < 0 < hi:
        img[int(round(px(0, 0.0)[1])), x0:x1 + 1] = _ZERO
    img[y0, x0:x1 + 1] = img[y1, x0:x1 + 1] = _FRAME
    img[y0:y1 + 1, x0] = img[y0:y1 + 1, x1] = _FRAME
    for axis, pts in series.items():
        colour = AXIS_COLOURS.get(axis, (0, 0, 0))
        pts = [px(i, v) for i, v in pts if v is not None and math.isfinite(v)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            steps = int(max(abs(xb - xa), abs(yb - ya))) * 2 + 2
            for t in np.linspace(0.0, 1.0, steps):
                _dot(img, xa + (xb - xa) * t, ya + (yb - ya) * t, colour, 1)
        for x, y in pts:
            _dot(img, x, y, colour, 3)
    write_png(path, img)


def _dot(img: np.ndarray, x: float, y: float, colour, r: int) -> None:
    xi, yi = int(round(x)), int(round(y))
    img[max(0, yi - r):yi + r + 1, max(0, xi - r):xi + r + 1] = colour
