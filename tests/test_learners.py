"""Several learners (RLlib's learner group, torch DDP over gloo on CPU): the episodes of an update are
dealt in whole groups, and two learners give the update one learner gives on the same batch (here
with ``trainable: temporal``: the frozen depformer stays put)."""

import types

import numpy as np
import pytest
import torch
from duplexgym.agents.policies.checkpoint import build_tiny_lm
from duplexgym.agents.training.adapters import DEPFORMER_CHILDREN
from duplexgym.agents.training.algorithm import deal_groups
from duplexgym.agents.training.config import TrainConfigError, load_train_config


LR = 5e-4


def _eps(groups: int, size: int):
    return [types.SimpleNamespace(custom_data={"group": f"g{g}", "i": i}) for g in range(groups) for i in range(size)]


def test_deal_groups_keeps_groups_whole_and_shares_equal():
    shares = deal_groups(_eps(4, 3), 2)
    assert [len(s) for s in shares] == [6, 6]
    for share in shares:
        assert all(len({e.custom_data["group"] for e in share if e.custom_data["group"] == g}) <= 1
                   for g in ("g0", "g1", "g2", "g3"))
    seen = [{e.custom_data["group"] for e in share} for share in shares]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {"g0", "g1", "g2", "g3"}  # no group split
    # minibatches smaller than a group: dealt in order, still equally many
    assert [len(s) for s in deal_groups(_eps(1, 4), 2)] == [2, 2]
    with pytest.raises(ValueError, match="do not split evenly over 2 learners"):
        deal_groups(_eps(1, 3), 2)


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_the_data_parallel_scale_makes_the_mean_of_shard_gradients_the_batch_gradient(normalization):
    """What DDP computes with two learners (each the gradient of its shard's loss times
    ``world x local / global`` of the normaliser, then averaged), equals the gradient of the whole
    batch's loss: episodes of unequal lengths and masks, both normalisations (the Ray run below
    checks the same end to end with gloo for ``token``)."""
    from duplexgym.agents.training.losses import GrpoConfig, grpo_loss, normalizer_count

    g = torch.Generator().manual_seed(0)
    B, T = 6, 11
    theta = torch.randn(B, 9, T, generator=g, dtype=torch.float64)
    old, ref = -torch.rand(B, 9, T, generator=g, dtype=torch.float64), -torch.rand(B, 9, T, generator=g,
                                                                                   dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.tensor([11, 3, 7, 11, 5, 9])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    mask[2, :2] = False  # a forced prefix
    mask[1] = False  # a failed episode: the shards hold unequal numbers of episodes too
    cfg = GrpoConfig(group_size=2, clip_eps=0.2, kl_coef=0.05, normalization=normalization)

    def grad(rows, scale=None):
        p = theta.clone().requires_grad_(True)
        loss, m = grpo_loss(p[rows] * 0.1 + old[rows], old[rows], ref[rows], adv[rows], mask[rows], cfg)
        (loss * (1.0 if scale is None else scale(m["norm_count"]))).backward()
        return p.grad

    whole = grad(torch.arange(B))
    shards = (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))
    counts = [normalizer_count(mask[r][:, None].expand(-1, 9, -1) & (torch.arange(9) == 0)[None, :, None],
                               normalization) for r in shards]
    total = sum(counts)
    averaged = sum(grad(r, lambda c: 2 * c / total) for r in shards) / 2
    torch.testing.assert_close(averaged, whole, rtol=1e-6, atol=1e-9)  # grpo_loss computes in float32
    naive = sum(grad(r) for r in shards) / 2  # each learner's own mean: not the batch's gradient
    assert (naive - whole).abs().max() > 1e-4


def test_learner_config_checks(small_corpus, tmp_path):
    base = {"corpus": str(small_corpus), "out": str(tmp_path / "run"), "group_size": 2, "segments_per_iteration": 3}
    with pytest.raises(TrainConfigError, match="^num_learners: each update's 6 episodes .* split evenly over 4"):
        load_train_config({**base, "num_learners": 4})
    with pytest.raises(TrainConfigError, match="^num_learners: several learners are wired for grpo"):
        load_train_config({**base, "num_learners": 2, "algorithm": "ppo"})
    with pytest.raises(TrainConfigError, match="^gpus_per_learner: several learners need whole GPUs"):
        load_train_config({**base, "num_learners": 2, "gpus_per_learner": 0.5})
    with pytest.raises(TrainConfigError, match="^minibatch_size: with several learners the iteration's 6 episodes"):
        load_train_config({**base, "num_learners": 2, "minibatch_size": 4})
    with pytest.raises(TrainConfigError, match="^sharding: fsdp shards over several learners; num_learners is 1"):
        load_train_config({**base, "num_learners": 1, "sharding": "fsdp"})
    with pytest.raises(TrainConfigError, match="^sharding: fsdp shards trainable: all | temporal"):
        load_train_config({**base, "num_learners": 2, "sharding": "fsdp", "trainable": "lora"})
    with pytest.raises(TrainConfigError, match="^sharding: "):
        load_train_config({**base, "num_learners": 2, "sharding": "zero3"})
    assert load_train_config({**base, "num_learners": 2, "sharding": "fsdp"}).sharding == "fsdp"
    cfg = load_train_config({**base, "num_learners": 2, "gpus_per_env_runner": 0.25})
    assert cfg.num_learners == 2 and cfg.gpus_per_env_runner == 0.25


@pytest.mark.slow
def test_two_learners_update_like_one_on_the_same_batch(small_corpus, tmp_path):
    """Two learners under DDP and under FSDP (sharded weights, gradients and Adam moments, the
    reference sharded too, the runners synced from the gathered weights, a checkpoint gathered and
    resumed into sharded learners) give the update of one learner on the same batch."""
    normalization = "token"
    from duplexgym.agents.training import driver
    from duplexgym.agents.training.checkpoints import (
        MODULE_ID,
        MODULE_WEIGHTS_NAME,
        OPTIMIZER_STATE_NAME,
        on_learners,
        restore_training_checkpoint,
        save_training_checkpoint,
    )
    from duplexgym.agents.training.inspection import learner_lm_state, runner_text_weights
    from safetensors.torch import load_file

    def run(num_learners: int, sharding: str = "ddp", check_resume: bool = False):
        cfg = load_train_config({"corpus": str(small_corpus), "out": str(tmp_path / f"run{num_learners}{sharding}"),
                                 "group_size": 2, "segments_per_iteration": 2, "iterations": 1,
                                 "axes": ["turn", "pause"], "lr": LR, "seed": 4, "num_learners": num_learners,
                                 "normalization": normalization, "rewards": {"dense": {"weight": 1.0}},
                                 "trainable": "temporal", "sharding": sharding})
        seen = {}

        def on_iteration(algo, m):
            seen["m"], seen["episodes"] = m, list(algo.last_episodes)
            states = on_learners(algo, learner_lm_state)
            seen["lm"] = [s["state"] for s in states]
            seen["sharded"] = [s["sharded"] for s in states]
            seen["ref_sharded"] = on_learners(algo, lambda learner: type(
                learner.module[MODULE_ID].unwrapped().ref_lm.transformer.layers[0]).__name__)
            seen["groups"] = on_learners(algo, lambda learner: next(
                c.last_groups for c in learner._learner_connector.connectors if hasattr(c, "last_groups")))
            seen["runner"] = runner_text_weights(algo)[0]
            if check_resume:  # a checkpoint gathered from the learners, then loaded back into them
                first = save_training_checkpoint(algo, tmp_path / f"ck{sharding}", 1, cfg.to_dict())
                saved = {**load_file(str(first / MODULE_WEIGHTS_NAME)), **load_file(str(first / OPTIMIZER_STATE_NAME))}
                on_learners(algo, lambda learner: [p.detach().zero_() for p in learner.module[MODULE_ID].parameters()])
                restore_training_checkpoint(algo, first)
                again = save_training_checkpoint(algo, tmp_path / f"ck{sharding}2", 1, cfg.to_dict())
                seen["resumed"] = (saved, {**load_file(str(again / MODULE_WEIGHTS_NAME)),
                                           **load_file(str(again / OPTIMIZER_STATE_NAME))})
                seen["runner_resumed"] = runner_text_weights(algo)[0]

        driver.train_policy(cfg, on_iteration=on_iteration)
        return seen

    one, two, fsdp = run(0), run(2), run(2, "fsdp", check_resume=True)
    # the same rollouts (same seeds, same starting weights), in two segments of different lengths
    for other in (two, fsdp):
        assert [e.custom_data["reward"] for e in one["episodes"]] == [e.custom_data["reward"] for e in other["episodes"]]
    assert len({len(e) for e in one["episodes"]}) == 2
    assert two["sharded"] == [[], []] and fsdp["sharded"][0] == sorted(one["lm"][0])  # every tensor sharded
    assert fsdp["ref_sharded"][0].startswith("FSDP")
    base = build_tiny_lm().state_dict()
    for name, other in (("ddp", two), ("fsdp", fsdp)):
        assert len(other["lm"]) == 2
        a, b = other["lm"]
        assert all(torch.equal(a[k], b[k]) for k in a)  # the learners agree (DDP: equal copies; FSDP: one gather)
        assert [k for k in a if not torch.equal(a[k], base[k])], "nothing was updated"
        for k in a:  # trainable: temporal, text updates: the depformer stays where it was (unused parameters)
            if k.split(".")[0] in DEPFORMER_CHILDREN:
                assert torch.equal(a[k], base[k]) and torch.equal(one["lm"][0][k], base[k]), (name, k)
        # Adam's first step is lr * g / (|g| + eps): where |g| is near eps, the float rounding of a
        # gradient summed in two halves shows; measured at lr 1e-3: 1.08e-5 at most (1.1% of a step)
        worst = max(float((one["lm"][0][k] - a[k]).abs().max()) for k in a)
        step = max(float((one["lm"][0][k] - base[k]).abs().max()) for k in a)
        assert step == pytest.approx(LR, rel=1e-3)
        assert worst <= 1e-5 and worst <= 0.02 * LR, f"{name}: two learners' update differs from one's by {worst:.2e}"
        # the runners sample with the updated weights
        assert set(other["runner"]) == {"text_emb.weight", "text_linear.weight"}
        for k, v in other["runner"].items():
            np.testing.assert_array_equal(v, a[k].numpy(), err_msg=f"{name}: {k}")
        # each learner was dealt one whole group
        groups = other["groups"]
        assert [len(g) for g in groups] == [1, 1] and not set(groups[0]) & set(groups[1])
        assert np.isfinite(other["m"]["loss"])
    # FSDP: the gathered checkpoint (module and Adam moments) goes back into the sharded learners
    saved, again = fsdp["resumed"]
    assert any(k.endswith("/exp_avg") for k in saved) and set(saved) == set(again)
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    for k, v in fsdp["runner_resumed"].items():
        np.testing.assert_array_equal(v, fsdp["lm"][0][k].numpy(), err_msg=k)
