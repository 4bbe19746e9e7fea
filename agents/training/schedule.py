"""What changes over a training run: the learning rate per gradient step, and the longest context
per iteration (the seed paper's curriculum). Pure functions of the step or iteration, so a resumed
run continues exactly where it stopped (no schedule state to save beyond the step count)."""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "linear", "cosine")


def learning_rate(step: int, total_steps: int, lr: float, schedule: str = "constant", warmup_steps: int = 0,
                  min_lr: float = 0.0) -> float:
    """The learning rate of gradient step ``step`` (0-based) of ``total_steps``.

    Warm-up: ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. After it,
    ``constant`` keeps ``lr``; ``linear`` falls from ``lr`` to ``min_lr`` and ``cosine`` follows half
    a cosine from ``lr`` to ``min_lr``, reaching ``min_lr`` at the last step (``total_steps - 1``).
    Steps past the end keep the last value.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "linear":
        return lr + (min_lr - lr) * progress
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def context_limit_s(iteration: int, iterations: int, max_s: float, schedule: str = "linear") -> float:
    """The longest context (s) of ``iteration`` (0-based) of ``iterations``: ``max_s`` for
    ``constant``; for ``linear``, rising from 0 at the first iteration to ``max_s`` at the last."""
    if schedule == "constant" or iterations <= 1:
        return float(max_s)
    return float(max_s) * min(1.0, iteration / (iterations - 1))


def draw_context_s(rng: np.random.Generator, p: float, limit_s: float) -> float:
    """Context length of one group: 0 with probability ``1 - p``, else uniform in ``[0, limit_s]``.
    Two draws from ``rng`` every time (whatever the outcome), so the stream stays aligned."""
    gate, length = rng.random(), rng.random()
    return float(length * limit_s) if gate < p and limit_s > 0 else 0.0
