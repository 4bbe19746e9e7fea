"""PPO with a value head (agents/training/ppo.py): the value head and GAE columns, and the loop on a real Ray."""

import numpy as np
import pytest
import torch
from duplexgym.agents.training import batch as rg
from duplexgym.agents.training import driver, inspection
from duplexgym.agents.training import ppo as rp
from duplexgym.agents.training.config import load_train_config
from duplexgym.agents.training.losses import returns_to_go

from duplexgym.constants import SAMPLER_DEFAULTS


def _module(gamma=1.0, lam=1.0):
    from gymnasium import spaces
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    train = {"algorithm": "ppo", "clip_eps": 0.2, "kl_coef": 0.05, "update_streams": "text", "epochs": 1,
             "gamma": gamma, "lam": lam, "vf_coef": 0.5}
    spec = RLModuleSpec(module_class=rp.PpoRLModule, observation_space=spaces.MultiDiscrete([2048] * 8),
                        action_space=spaces.MultiDiscrete([32000] + [2048] * 8),
                        model_config={**SAMPLER_DEFAULTS, "train": train})
    return spec.build()


def _episodes():
    rng = np.random.default_rng(0)
    eps = []
    for i, n in enumerate((9, 9, 6)):
        rewards = np.round(rng.normal(size=n), 2)
        eps.append({"actions": np.concatenate([rng.integers(4, 100, (n, 1)), rng.integers(0, 2048, (n, 8))], axis=1),
                    "observations": rng.integers(0, 2048, (n + 1, 8)), "forced": np.zeros(n, bool),
                    "reward": float(rewards.sum()), "rewards": rewards, "group": i // 2})
    return eps


def test_value_head_reads_the_detached_hidden_state_and_gae_columns_are_reward_to_go_minus_value():
    module = _module(gamma=1.0, lam=1.0)
    eps = _episodes()
    cols = rg.build_group_batch(eps)
    t = {k: torch.from_numpy(cols[k]) for k in (rg.AGENT_TOKENS, rg.USER_CODES)}
    logp, values = module.logprobs_and_values(t)
    assert values.shape == (3, 8)
    # the hook leaves the log-probs as the plain teacher-forced pass computes them
    torch.testing.assert_close(logp, module.logprobs(module.lm, t), equal_nan=True)
    # the value loss trains the head only: no gradient reaches the LM
    values.sum().backward()
    assert all(p.grad is None for p in module.lm.parameters())
    assert all(p.grad is not None for p in module.value_head.parameters())

    connector = rp.PpoConnector()
    with torch.no_grad():
        connector.policy_pass(module, t, cols)
        connector.add_columns(module, cols)
    mask = torch.from_numpy(np.arange(8)[None, :] < cols["seq_lens"][:, None])
    # gamma = lam = 1: GAE is the reward-to-go minus the value (0 on padding)
    rtg = returns_to_go(torch.from_numpy(cols[rg.STEP_REWARDS]), mask)
    expected = torch.where(mask, rtg - values.detach().double(), torch.zeros_like(rtg))
    np.testing.assert_allclose(cols[rg.ADVANTAGES], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(cols[rp.RETURNS], rtg.numpy(), atol=1e-5)  # value targets = returns
    # model frame f carries the env reward of env frame f + 1
    np.testing.assert_allclose(cols[rg.STEP_REWARDS][2, :5], eps[2]["rewards"][1:])
    assert (cols[rg.STEP_REWARDS][2, 5:] == 0).all()


@pytest.mark.slow
def test_ppo_loop_on_ray_trains_the_text_policy_and_the_value_head(small_corpus):
    from ray.rllib.core import DEFAULT_MODULE_ID

    segments = [s for s in _shortest(small_corpus, "pause", 2)]
    cfg = load_train_config({"corpus": str(small_corpus), "out": "/tmp/duplexgym-unused-out", "algorithm": "ppo",
                             "axes": ["pause"], "group_size": 2, "segments_per_iteration": 2, "iterations": 3,
                             "epochs": 2, "lr": 1.0e-3, "gamma": 0.99, "lam": 0.95,
                             "rewards": {"dense": {"weight": 1.0}}, "seed": 1})
    seen = []

    def on_iteration(algo, m):
        learner = algo.learner_group._learner.module[DEFAULT_MODULE_ID]
        runner = algo.env_runner_group.local_env_runner._module()
        seen.append((m, inspection.text_weights(learner), {n: p.detach().clone() for n, p in learner.value_head.named_parameters()},
                     hasattr(runner, "value_head") or hasattr(runner, "ref_lm")))

    metrics = driver.train_policy(cfg, segments=segments, on_iteration=on_iteration)
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    for m, _, _, runner_has_extras in seen:
        for key in ("loss", "policy_loss", "value_loss", "kl", "value_mean", "return_mean"):
            assert np.isfinite(m[key]), (key, m)
        assert m["kl"] >= 0 and m["value_loss"] >= 0 and m["episodes"] == 4
        assert not runner_has_extras  # the value head and the reference LM stay on the learner
        assert m["sampler_logp_gap"] < 1e-3  # the runners sampled with the synced weights
    assert any(not np.array_equal(seen[0][1][n], seen[-1][1][n]) for n in seen[0][1])  # the text policy moved
    assert any(not torch.equal(seen[0][2][n], seen[-1][2][n]) for n in seen[0][2])  # the value head learned


def _shortest(corpus, axis, n):
    from duplexgym.envs.corpus import ReplayCorpus

    segs = sorted(ReplayCorpus(corpus).select((axis,)), key=lambda s: (s.n_frames, s.id))
    return [s.id for s in segs[:n]]
