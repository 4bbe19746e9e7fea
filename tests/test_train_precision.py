"""One GRPO run on a real local Ray with the paper's audio reward and the bf16 path: ``dtype: bf16``
(runners and reference in bfloat16, the learner's float32 master weights under autocast),
``trainable: temporal`` (the depformer frozen) and ``activity: {reader: vad}`` (every rollout
decoded with the corpus' Mimi and read with silero): its rewards equal a rescoring of the same
rollouts' records."""

import numpy as np
import pytest
import torch
from duplexgym.agents.policies.checkpoint import build_tiny_lm
from duplexgym.agents.training.adapters import DEPFORMER_CHILDREN
from duplexgym.agents.training.config import load_train_config


@pytest.mark.slow
def test_bf16_temporal_run_with_the_vad_reader_rewards_equal_rescoring(small_corpus, tmp_path):
    from duplexgym.agents.training import driver
    from duplexgym.agents.training.checkpoints import MODULE_ID, sampling_runners
    from duplexgym.envs.replay import DuplexReplayEnv
    from duplexgym.rewards.scoring import score_episode
    from duplexgym.rewards.spec import load_spec

    rewards = {"activity": {"reader": "vad"}}
    cfg = load_train_config({"corpus": str(small_corpus), "out": str(tmp_path / "run"), "group_size": 3,
                             "segments_per_iteration": 1, "iterations": 2, "axes": ["turn"], "lr": 1e-3,
                             "dtype": "bf16", "trainable": "temporal", "rewards": rewards, "seed": 2})
    seen = []

    def on_iteration(algo, m):
        learner = algo.learner_group._learner.module[MODULE_ID].unwrapped()
        dtypes = sampling_runners(algo, lambda r: {p.dtype for p in r._module().lm.parameters()})
        seen.append((m, list(algo.last_episodes), {k: v.detach().clone() for k, v in learner.lm.state_dict().items()},
                     {p.dtype for p in learner.lm.parameters()}, {p.dtype for p in learner.ref_lm.parameters()},
                     dtypes))

    driver.train_policy(cfg, on_iteration=on_iteration)
    base = build_tiny_lm().state_dict()
    spec = load_spec(rewards)
    env = DuplexReplayEnv(small_corpus, axes=("turn",), obs_mode="codes", action_mode="tokens", rewards=rewards)
    scored = 0
    for m, episodes, lm, learner_dtypes, ref_dtypes, runner_dtypes in seen:
        assert np.isfinite(m["loss"]) and m["failed_episodes"] == 0
        assert learner_dtypes == {torch.float32, torch.bfloat16} and ref_dtypes == {torch.bfloat16}
        assert all(d == {torch.bfloat16} for d in runner_dtypes)  # rollouts in bf16
        for k, v in lm.items():  # temporal: the depformer never moves (kept in bf16 by the learner)
            if k.split(".")[0] in DEPFORMER_CHILDREN:
                assert v.dtype == torch.bfloat16 and torch.equal(v, base[k].to(torch.bfloat16)), k
            else:
                assert v.dtype == torch.float32, k  # fp32 master weights of what it trains
        for e in episodes:
            obs, info = env.reset(options={"segment": e.custom_data["segment"]})
            total = 0.0
            for a in e.get_actions():
                obs, r, done, _, info = env.step(a)
                total += r
            assert done
            terms = score_episode(env.episode_record(), spec)  # what `duplexgym rescore` computes
            assert terms["reward"] == pytest.approx(info["reward_terms"]["reward"], abs=1e-12)
            assert total == pytest.approx(e.custom_data["reward"], abs=1e-9)
            scored += 1
    moved = [k for k, v in seen[-1][2].items() if k.split(".")[0] not in DEPFORMER_CHILDREN
             and not torch.equal(v, base[k])]
    assert moved and scored == 6
