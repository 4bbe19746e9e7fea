"""An env runner killed mid-training (SIGKILL, a real Ray actor) is replaced and the run goes on,
losing no finished iteration and keeping the dead runner's segment schedule."""

import os
import signal

import numpy as np
import pytest
from duplexgym.agents.training import driver, inspection
from duplexgym.agents.training.config import load_train_config
from duplexgym.envs.corpus import ReplayCorpus, SegmentSampler


def _runner_pids(algo) -> dict[int, int]:
    pairs = algo.env_runner_group.foreach_env_runner(lambda r: (int(r.worker_index), os.getpid()),
                                                     local_env_runner=False)
    return dict(pairs)


def _expected_segments(corpus, cfg, segments, worker_index, n):
    """The segments runner ``worker_index`` draws in its first ``n`` groups (its seeded stream)."""
    sampler = SegmentSampler(ReplayCorpus(corpus), cfg.axes, cfg.axis_weights, segments)
    rng = np.random.default_rng([cfg.seed, 2, worker_index])
    return [sampler.draw(rng).id for _ in range(n)]


@pytest.mark.slow
def test_killed_env_runner_is_replaced_and_no_iteration_is_lost(small_corpus, tmp_path, monkeypatch):
    """Also the broadcast weight sync's failures: the restarted runner joins a new group; a sync
    that fails (a runner's tensors gone) goes through the object store, the next one broadcasts again."""
    monkeypatch.setenv("DUPLEXGYM_WEIGHT_SYNC_TIMEOUT_S", "10")  # Ray starts below: its actors inherit it
    segments = [s.id for s in sorted(ReplayCorpus(small_corpus).select(("turn",)), key=lambda s: (s.n_frames, s.id))[:3]]
    cfg = load_train_config({"corpus": str(small_corpus), "out": str(tmp_path / "run"), "group_size": 2,
                             "segments_per_iteration": 2, "env_runners": 2, "iterations": 3, "seed": 5,
                             "axes": ["turn"], "lr": 1.0e-3})
    seen = []
    pids = []
    synced = []  # (broadcast group generation, learner text weights, each runner's)
    again = []

    def on_iteration(algo, m):
        seen.append((m, [(e.custom_data["group"], e.custom_data["segment"]) for e in algo.last_episodes]))
        pids.append(_runner_pids(algo))
        synced.append((algo._broadcaster.generation, inspection.learner_text_weights(algo),
                       inspection.runner_text_weights(algo)))
        if m["iteration"] == 0:
            os.kill(pids[0][1], signal.SIGKILL)  # runner 1 dies between iterations 1 and 2
        if m["iteration"] == 1:  # runner 2 loses what it receives into: the third sync's broadcast fails
            algo.env_runner_group.foreach_env_runner(lambda r: setattr(r, "_weight_targets", {}),
                                                     remote_worker_ids=[2], local_env_runner=False)
        if m["iteration"] == 2:  # the next sync builds a new group and broadcasts again
            again.append((algo.sync_weights(), algo._broadcaster.generation, inspection.learner_text_weights(algo),
                          inspection.runner_text_weights(algo)))

    metrics = driver.train_policy(cfg, on_iteration=on_iteration, segments=segments, ray_temp_dir=None)
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    assert [m["episodes"] for m in metrics] == [4, 4, 4]  # every iteration has both runners' groups
    assert [m["runners_restored"] for m in metrics] == [0, 1, 0]
    assert pids[1][1] != pids[0][1] and pids[1][2] == pids[0][2]  # runner 1 replaced, runner 2 untouched
    for m in metrics:
        assert np.isfinite(m["loss"]) and np.isfinite(m["reward_mean"]["turn"])
    # the replacement joined a new group (generation 2) with the survivor; the failed broadcast's sync
    # went through the object store; then a new group (3); every time both runners hold the learner's weights
    assert [m["sync"] for m in metrics] == ["broadcast", "broadcast", "numpy"]
    assert [g for g, _, _ in synced] == [1, 2, 2]
    assert [(path, g) for path, g, _, _ in again] == [("broadcast", 3)]
    for _, learner, runners in synced + [a[1:] for a in again]:
        assert len(runners) == 2
        for runner in runners:
            for name in learner:
                np.testing.assert_array_equal(runner[name], learner[name])
    # the replacement went on with the dead runner's schedule: its groups replay the segments the
    # seeded stream of runner 1 gives, with the group counter continuing (w1-g1 after w1-g0)
    for worker in (1, 2):
        expected = _expected_segments(small_corpus, cfg, segments, worker, 3)
        got = [dict(groups)[f"w{worker}-g{i}"] for i, (_, groups) in enumerate(seen)]
        assert got == expected, (worker, got, expected)
