"""The reward curve of a training run (``OUT/reward_curve.png``), drawn with matplotlib (Agg).

Two panels over the iterations (x: iteration number, 1 = the first): on top, per axis, the mean
episode reward (solid; dense shaping and every weighted term included) and the mean axis score
(dashed; the axis term's value alone, in [-1, 1]); below, the mean per-token KL to the frozen
reference. The title names the run (its folder and algorithm).
"""

from __future__ import annotations

import math
from pathlib import Path

from duplexgym.constants import AXES

#: One colour per axis, the same in every picture of the project (matplotlib's tab10).
AXIS_COLOURS = {"pause": "tab:blue", "turn": "tab:orange", "backchannel": "tab:green", "interruption": "tab:red"}


def _series(rows: list[dict], key: str, axis: str | None = None) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        if axis is not None:
            value = (value or {}).get(axis)
        if value is not None and math.isfinite(value):
            xs.append(int(row.get("iteration", i)) + 1)
            ys.append(float(value))
    return xs, ys


def reward_curve_figure(rows: list[dict], axes=AXES, title: str | None = None):
    """The matplotlib ``Figure`` of ``rows`` (the per-iteration rows of ``metrics.jsonl``): axes
    ``[rewards, kl]`` as the module docstring describes."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 5.5), dpi=110, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    for axis in axes:
        colour = AXIS_COLOURS.get(axis, "black")
        xs, ys = _series(rows, "reward_mean", axis)
        if xs:
            top.plot(xs, ys, color=colour, marker="o", markersize=3.5, label=f"{axis}: episode reward")
        xs, ys = _series(rows, "score_mean", axis)
        if xs:
            top.plot(xs, ys, color=colour, linestyle="--", linewidth=1.2, label=f"{axis}: axis score")
    top.axhline(0.0, color="0.7", linewidth=0.8, zorder=0)
    top.set_ylabel("mean over the iteration's episodes")
    top.grid(True, alpha=0.3)
    if any(not line.get_label().startswith("_") for line in top.lines):
        top.legend(loc="best", fontsize=8, ncols=2)
    xs, ys = _series(rows, "kl")
    if xs:
        bottom.plot(xs, ys, color="0.25", marker="o", markersize=3)
    bottom.set_ylabel("KL to reference\n(per token)")
    bottom.set_xlabel("iteration")
    bottom.grid(True, alpha=0.3)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    if rows:
        last = int(rows[-1].get("iteration", len(rows) - 1)) + 1
        bottom.set_xlim(0.5, max(last, 1) + 0.5)
    fig.suptitle(title or "training run", fontsize=11)
    return fig


def write_reward_curve(path: str | Path, rows: list[dict], axes=AXES, title: str | None = None,
                       svg: bool = False) -> Path:
    """Draw :func:`reward_curve_figure` to the PNG ``path`` (and an SVG beside it when ``svg``),
    atomically; returns the PNG path."""
    path = Path(path)
    fig = reward_curve_figure(rows, axes, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    if svg:
        fig.savefig(path.with_suffix(".svg"), format="svg")
    return path
