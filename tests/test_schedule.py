"""Learning-rate schedules and the context curriculum: values at the start, middle and end."""

import numpy as np
import pytest
from duplexgym.agents.training.schedule import context_limit_s, draw_context_s, learning_rate


def test_learning_rate_schedules_at_their_edges():
    lr, n = 2e-7, 101
    assert [learning_rate(s, n, lr) for s in (0, 50, 100)] == [lr, lr, lr]
    assert learning_rate(0, n, lr, "linear") == lr
    assert learning_rate(50, n, lr, "linear") == pytest.approx(lr / 2)
    assert learning_rate(100, n, lr, "linear") == pytest.approx(0.0, abs=1e-20)
    assert learning_rate(0, n, lr, "cosine") == pytest.approx(lr)
    assert learning_rate(50, n, lr, "cosine") == pytest.approx(lr / 2)
    assert learning_rate(100, n, lr, "cosine", min_lr=1e-8) == pytest.approx(1e-8)
    assert learning_rate(500, n, lr, "cosine") == pytest.approx(0.0, abs=1e-20)  # past the end: the last value
    # warm-up: linear from lr / warmup to lr, then the schedule over the remaining steps
    assert [learning_rate(s, n, 1.0, "cosine", warmup_steps=4) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert learning_rate(4, n, 1.0, "cosine", warmup_steps=4) == pytest.approx(1.0)
    assert learning_rate(100, n, 1.0, "cosine", warmup_steps=4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0, n, lr, "exponential")


def test_context_curriculum_limit_and_draws():
    assert [context_limit_s(i, 100, 30.0) for i in (0, 33, 99)] == pytest.approx([0.0, 10.0, 30.0])
    assert context_limit_s(0, 100, 30.0, "constant") == 30.0
    rng = np.random.default_rng(0)
    draws = np.array([draw_context_s(rng, 0.5, 20.0) for _ in range(4000)])
    assert 0.47 < (draws > 0).mean() < 0.53  # p
    assert draws.max() <= 20.0 and 9.0 < draws[draws > 0].mean() < 11.0  # uniform in [0, l_max]
    again = np.random.default_rng(0)
    assert [draw_context_s(again, 0.5, 20.0) for _ in range(50)] == list(draws[:50])  # seeded
    assert all(draw_context_s(rng, 0.0, 20.0) == 0.0 for _ in range(100))
