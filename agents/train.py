"""``duplexgym train --config CONFIG.yaml``: a validated :class:`~duplexgym.agents.train_config.TrainConfig`
run with :func:`~duplexgym.agents.rllib_grpo.train_grpo`, and its run folder.

The run folder (``out``) gets, overwriting these three files only:

- ``config.yaml``: the resolved config (defaults filled in, absolute paths), written before training;
- ``metrics.jsonl``: one JSON object per iteration, appended as each one ends (non-finite numbers
  are written as ``null``);
- ``reward_curve.png``: mean episode reward per iteration, one line per axis (pause blue, turn
  orange, backchannel green, interruption red), a grey zero line when 0 is in range; drawn with
  :func:`duplexgym.agents.export.write_png`.

Ray (and :mod:`duplexgym.agents.rllib_grpo`, which imports it) is imported only after the config
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
AXIS_COLOURS = {"pause": (66, 133, 244), "turn": (245, 150, 30), "backchannel": (52, 168, 83),
                "interruption": (220, 30, 30)}


def run_training(cfg: TrainConfig, on_iteration: Callable[[dict], None] | None = None) -> dict:
    """Train as ``cfg`` says; returns ``{"algorithm", "out", "iterations": [per-iteration metrics],
    "reward_mean": {axis: last iteration's mean}, "wall_s", "files": {...}}``."""
    import yaml

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    metrics_path = out / METRICS_NAME
    metrics_path.write_text("", encoding="utf-8")
    rows: list[dict] = []

    def record(_algo, m: dict) -> None:
        row = _plain(m)
        rows.append(row)
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        write_reward_curve(out / CURVE_NAME, rows, cfg.axes)
        if on_iteration is not None:
            on_iteration(row)

    from duplexgym.agents.rllib_grpo import train_grpo  # imports Ray: only now

    t0 = time.perf_counter()
    train_grpo(cfg.corpus, iterations=cfg.iterations, group_size=cfg.group_size,
               segments_per_iter=cfg.segments_per_iteration, lr=cfg.lr, kl_coef=cfg.kl_coef, seed=cfg.seed,
               axes=cfg.axes, num_env_runners=cfg.env_runners, clip_eps=cfg.clip_eps, on_iteration=record)
    write_reward_curve(out / CURVE_NAME, rows, cfg.axes)
    return {"algorithm": cfg.algorithm, "out": str(out), "iterations": rows,
            "reward_mean": dict(rows[-1]["reward_mean"]) if rows else {},
            "wall_s": time.perf_counter() - t0,
            "files": {"metrics": str(metrics_path), "config": str(out / CONFIG_NAME),
                      "reward_curve": str(out / CURVE_NAME)}}


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
