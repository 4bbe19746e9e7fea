"""GRPO on Ray RLlib (agents/training/): the padded batch, and the whole loop on a real local Ray."""


import numpy as np
import pytest
import torch
from duplexgym.agents.policies.checkpoint import build_tiny_lm
from duplexgym.agents.training import algorithm, connector, driver, inspection
from duplexgym.agents.training import batch as rg
from duplexgym.agents.training.losses import GrpoConfig, grpo_loss


def _episode(n, group, reward, forced=0, seed=0):
    rng = np.random.default_rng(seed)
    return {"actions": rng.integers(0, 2048, (n, 9)), "observations": rng.integers(0, 2048, (n + 1, 8)),
            "forced": np.arange(n) < forced, "text_logp": -rng.random(n), "reward": reward, "group": group}


def test_batch_masks_padding_and_forced_frames_and_centres_groups():
    eps = [_episode(10, "a", 1.0, seed=1), _episode(10, "a", 0.0, seed=2), _episode(7, "b", 0.5, forced=4, seed=3),
           _episode(7, "b", 0.2, forced=4, seed=4), _episode(7, "b", 0.2, forced=4, seed=5)]
    b = rg.build_group_batch(eps)
    assert b[rg.AGENT_TOKENS].shape == (5, 9, 9) and b[rg.USER_CODES].shape == (5, 8, 9)
    assert b[rg.LOSS_MASK].shape == (5, 9)
    # model frame f = env frame f + 1; forced env frames 0..3 -> model frames 0..2 out; padding out
    assert b[rg.LOSS_MASK][:2].all()
    assert (b[rg.LOSS_MASK][2:] == (np.arange(9) >= 3) & (np.arange(9) < 6)).all()
    np.testing.assert_array_equal(b[rg.AGENT_TOKENS][0], eps[0]["actions"][1:].T)
    np.testing.assert_array_equal(b[rg.USER_CODES][2, :, :6], eps[2]["observations"][:6].T)
    assert (b[rg.AGENT_TOKENS][2:, :, 6:] == 0).all()  # zero padding
    adv = b[rg.ADVANTAGES]
    for g in np.unique(b[rg.GROUP]):
        assert abs(adv[b[rg.GROUP] == g].mean()) < 1e-6
    assert adv[0] > 0 > adv[1] and adv[2] > 0

    # what lies outside the mask (padding, forced frames, audio streams) does not reach the loss
    cfg = GrpoConfig(group_size=2, update_streams="text")
    new = torch.randn(5, 9, 9, requires_grad=True)
    old, ref = new.detach() + 0.01, new.detach() - 0.02
    mask = torch.from_numpy(b[rg.LOSS_MASK])
    loss, _ = grpo_loss(new, old, ref, torch.from_numpy(adv), mask, cfg)
    junk = ~mask[:, None, :].expand(5, 9, 9).clone()
    junk[:, 1:] = True  # audio streams are not updated with update_streams="text"
    new2 = torch.where(junk, torch.full_like(new, float("nan")), new)
    old2 = torch.where(junk, torch.full_like(old, float("-inf")), old)
    loss2, _ = grpo_loss(new2, old2, torch.where(junk, torch.nan, ref), torch.from_numpy(adv), mask, cfg)
    assert torch.isclose(loss, loss2)
    loss2.backward()
    assert torch.isfinite(new.grad).all() and (new.grad[junk] == 0).all() and new.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's tests, as ``duplexgym train`` starts it (driver.RaySession)."""
    with driver.RaySession() as session:
        yield session.folder


def _cfg(corpus, **fields):
    """A validated training config (``out`` is never written by ``train_policy``)."""
    from duplexgym.agents.training.config import load_train_config

    return load_train_config({"corpus": str(corpus), "out": "/tmp/duplexgym-unused-out", **fields})


def _shortest(corpus, axis, n):
    from duplexgym.envs.corpus import ReplayCorpus

    segs = sorted(ReplayCorpus(corpus).select((axis,)), key=lambda s: (s.n_frames, s.id))
    return [s.id for s in segs[:n]]


def _check_iteration(m, episodes, G):
    assert np.isfinite(m["loss"]) and np.isfinite(m["kl"]) and m["kl"] >= 0
    assert m["frames_per_s"] > 0 and len(episodes) == m["episodes"]
    # groups: G episodes replaying one segment each, a distinct episode seed per row
    by_group = {}
    for e in episodes:
        by_group.setdefault(e.custom_data["group"], []).append(e)
    for group in by_group.values():
        assert len(group) == G and len({e.custom_data["segment"] for e in group}) == 1
        assert len({e.custom_data["episode_seed"] for e in group}) == G
        assert len({len(e) for e in group}) == 1
    records = [connector.episode_record(e) for e in episodes]
    batch = rg.build_group_batch(records)
    for g in np.unique(batch[rg.GROUP]):
        assert abs(batch[rg.ADVANTAGES][batch[rg.GROUP] == g].mean()) < 1e-5
    # the loss counted exactly the unforced, unpadded text tokens (less frames whose token fell
    # outside a top-k: reported as nonfinite_frames)
    expected = sum(len(e) - 1 - max(e.custom_data["forced_frames"] - 1, 0) for e in episodes)
    assert batch[rg.LOSS_MASK].sum() == expected
    assert m["tokens"] == expected - m["nonfinite_frames"]
    # the old log-probs are the sampler's: the teacher-forced pass under the learner's weights
    # reproduces them, so the runner sampled with the synced weights
    assert m["sampler_logp_gap"] < 1e-3


@pytest.mark.slow
def test_grpo_loop_on_ray_updates_and_syncs_text_weights(small_corpus, local_ray):
    G = 4
    initial = inspection.text_weights(build_tiny_lm())
    seen = []

    def on_iteration(algo, m):
        seen.append((m, list(algo.last_episodes), inspection.learner_text_weights(algo), inspection.runner_text_weights(algo)))

    cfg = _cfg(small_corpus, iterations=2, group_size=G, segments_per_iteration=2, lr=1.0e-3, kl_coef=0.05, seed=3,
               axes=["turn"], env_runners=1)
    results = []

    def on_start(algo, done):  # keep what algo.train() returns: where RLlib logs
        train = algo.train
        algo.train = lambda: results.append(train()) or results[-1]

    metrics = driver.train_policy(cfg, segments=_shortest(small_corpus, "turn", 2), on_iteration=on_iteration,
                              on_start=on_start)
    assert [m["iteration"] for m in metrics] == [0, 1]
    for m, result in zip(metrics, results, strict=True):
        logged = result[algorithm.RESULT_KEY]
        assert logged["reward_mean"] == m["reward_mean"] and logged["frames"] == m["frames"]
        assert logged["frames_per_s"] == m["frames_per_s"] and "learner_share" in logged
    for m, episodes, _, _ in seen:
        _check_iteration(m, episodes, G)
        assert set(m["reward_mean"]) == {"turn"} and np.isfinite(m["reward_mean"]["turn"])
        assert m["segments"] and len(m["groups"]) == 2
        assert m["sync"] == "broadcast"  # a remote runner: weight_sync auto, a gloo group of the learner and it
    assert seen[0][0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first batch is sampled by the reference
    for m, _, learner, runners in seen:
        assert len(runners) == 1
        for name in learner:
            np.testing.assert_array_equal(runners[0][name], learner[name])  # synced to the runner
    changed = [not np.array_equal(seen[-1][2][n], initial[n]) for n in initial]
    assert all(changed), "the text weights must move"
    assert seen[1][0]["kl"] > 0


@pytest.mark.slow
def test_grpo_masks_forced_frames_of_interruption_rollouts(small_corpus, local_ray):
    seen = []
    cfg = _cfg(small_corpus, iterations=1, group_size=2, segments_per_iteration=1, seed=0, axes=["interruption"])
    metrics = driver.train_policy(cfg, segments=_shortest(small_corpus, "interruption", 1),
                              on_iteration=lambda algo, m: seen.append((m, list(algo.last_episodes))))
    (m, episodes), = seen
    assert metrics[0]["episodes"] == 2
    assert all(e.custom_data["forced_frames"] > 1 for e in episodes)
    forced = episodes[0].get_extra_model_outputs(rg.FORCED)
    assert forced[: episodes[0].custom_data["forced_frames"]].all() and not forced[episodes[0].custom_data["forced_frames"]:].any()
    _check_iteration(m, episodes, 2)


@pytest.mark.slow
def test_update_streams_all_trains_the_audio_codebooks_too(small_corpus, local_ray):
    from ray.rllib.core import DEFAULT_MODULE_ID

    cfg = _cfg(small_corpus, iterations=1, group_size=2, segments_per_iteration=1, seed=2, axes=["turn"],
               update_streams="all", lr=1.0e-3, rewards={"dense": {"weight": 1.0}})
    seen = []

    def on_iteration(algo, m):
        lm = algo.learner_group._learner.module[DEFAULT_MODULE_ID].lm
        seen.append((m, list(algo.last_episodes), {n: p.detach().clone() for n, p in lm.depformer.named_parameters()}))

    initial = {n: p.detach().clone() for n, p in build_tiny_lm().depformer.named_parameters()}
    driver.train_policy(cfg, segments=_shortest(small_corpus, "turn", 1), on_iteration=on_iteration)
    (m, episodes, depformer), = seen
    assert np.isfinite(m["loss"]) and np.isfinite(m["kl"])
    # each episode's last frame leaves the loss (its codebooks 1..7 are undefined); the other
    # frames count 9 tokens each: text and the 8 codebooks
    frames = sum(len(e) - 1 for e in episodes)
    assert m["nonfinite_frames"] == len(episodes)
    assert m["tokens"] == 9 * (frames - len(episodes))
    assert any(not torch.equal(initial[n], depformer[n]) for n in initial), "the audio depformer must move"


def test_batch_reward_to_go_advantages_and_failed_episodes():
    """advantage="reward_to_go": per model frame, from the env rewards of the frames after it; an
    episode whose reward term failed leaves the loss and its group's statistics."""
    eps = [_episode(5, "a", 0.0, seed=1), _episode(5, "a", 0.0, seed=2), _episode(5, "a", 0.0, seed=3)]
    eps[0]["rewards"] = np.array([9.0, 0.0, -1.0, 0.0, 1.0])  # env frame 0's reward is no model frame's
    eps[1]["rewards"] = np.array([0.0, -1.0, -1.0, 0.0, -1.0])
    eps[2]["rewards"] = np.array([0.0, 5.0, 5.0, 5.0, 5.0])
    eps[2]["failed"] = ["quality"]
    b = rg.build_group_batch(eps, advantage="reward_to_go")
    # model frames 0..3 = env frames 1..4; rewards-to-go [0, 0, 1, 1] and [-3, -2, -1, -1];
    # centred +-[1.5, 1, 1, 1], RMS sqrt(5.25 / 4)
    scale = np.sqrt((1.5**2 + 3) / 4)
    np.testing.assert_allclose(b[rg.ADVANTAGES][:2], np.array([[1.5, 1, 1, 1], [-1.5, -1, -1, -1]]) / scale, rtol=1e-5)
    assert (b[rg.ADVANTAGES][2] == 0).all() and not b[rg.LOSS_MASK][2].any() and b[rg.LOSS_MASK][:2].all()
    np.testing.assert_array_equal(b[rg.FAILED_EPISODES], [0, 0, 1])
    np.testing.assert_array_equal(b[rg.STEP_REWARDS][0], [0.0, -1.0, 0.0, 1.0])
    # episode advantages leave the failed one out of the group's mean as well
    for e, r in zip(eps, (1.0, 0.0, 100.0)):
        e["reward"] = r
    adv = rg.build_group_batch(eps)[rg.ADVANTAGES]
    np.testing.assert_allclose(adv, [1.0, -1.0, 0.0], atol=1e-5)
    with pytest.raises(ValueError, match="advantage: expected one of"):
        rg.build_group_batch(eps, advantage="gae")


@pytest.mark.slow
def test_the_seed_papers_optimisation_on_ray(small_corpus, local_ray):
    """AdamW (betas, weight decay), the global-norm clip, a cosine schedule with warm-up, minibatches
    of one episode (G gradient steps per group), the exact KL and the sequence normalisation: the
    learner does as many steps as the config says, at the schedule's rates, with clipped gradients,
    and GRPO's advantages come from whole groups although each step sees one episode."""
    from duplexgym.agents.training.schedule import learning_rate
    from ray.rllib.core import DEFAULT_MODULE_ID

    G, iterations, clip = 2, 2, 1e-3
    cfg = _cfg(small_corpus, iterations=iterations, group_size=G, segments_per_iteration=2, seed=4, axes=["turn"],
               lr=1.0e-3, kl_coef=0.01, kl="exact", normalization="sequence", minibatch_size=1,
               advantage="decoupled", rewards={"dense": {"weight": 1.0}},
               optimizer={"name": "adamw", "betas": [0.9, 0.95], "weight_decay": 0.1, "grad_clip": clip,
                          "schedule": "cosine", "warmup_steps": 1})
    assert cfg.gradient_steps_per_iteration == 4  # 2 groups x 2 episodes, one step each
    seen = []

    def on_iteration(algo, m):
        learner = algo.learner_group._learner
        (optimizer,) = learner._named_optimizers.values()
        grads = [p.grad for p in learner.module[DEFAULT_MODULE_ID].parameters() if p.grad is not None]
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)).item()
        group = dict(optimizer.param_groups[0], params=None)  # as it is now, after this iteration's last step
        seen.append((m, list(algo.last_episodes), learner.gradient_steps, (type(optimizer), group), norm))

    driver.train_policy(cfg, segments=_shortest(small_corpus, "turn", 2), on_iteration=on_iteration)
    total = iterations * 4
    for i, (m, episodes, steps, optimizer, norm) in enumerate(seen):
        assert steps == 4 * (i + 1) and m["gradient_steps"] == steps
        kind, group = optimizer
        assert kind is torch.optim.AdamW
        assert group["betas"] == (0.9, 0.95) and group["weight_decay"] == 0.1
        assert group["lr"] == pytest.approx(learning_rate(steps - 1, total, 1e-3, "cosine", 1))  # the last step's
        assert m["grad_norm"] > clip and norm <= clip * (1 + 1e-4)  # logged before the clip, applied after
        assert np.isfinite(m["loss"]) and m["kl"] >= 0
        # advantages were computed per group before the minibatches: they sum to 0 within each group
        by_group: dict = {}
        for e in episodes:
            by_group.setdefault(e.custom_data["group"], []).append(e.custom_data["advantage"])
        assert len(by_group) == 2 and all(abs(sum(a)) < 1e-5 for a in by_group.values())
    assert seen[0][0]["kl"] > 0 and seen[1][0]["kl"] > 0  # steps 2..4 of the first iteration already moved the policy
