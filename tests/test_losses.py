"""GRPO / PPO loss math on hand-made numbers, each expected value worked out by hand below."""

import math

import numpy as np
import pytest
import torch
from duplexgym.agents.training.losses import (
    N_STREAMS,
    GrpoConfig,
    PpoConfig,
    gae,
    group_advantages,
    grpo_loss,
    ppo_loss,
    stream_mask,
)

NO_KL = GrpoConfig(kl_coef=0.0)


def one_token(logp_new, logp_old, logp_ref, adv, cfg=NO_KL):
    """GRPO loss of a single text token: B = 1, T = 1 (the other streams carry the same numbers)."""
    full = lambda x: torch.full((1, N_STREAMS, 1), float(x))  # noqa: E731
    mask = torch.ones(1, 1, dtype=torch.bool)
    return grpo_loss(full(logp_new), full(logp_old), full(logp_ref), torch.tensor([float(adv)]), mask, cfg)


# --------------------------------------------------------------------------------- advantages


def test_group_advantages_two_groups_of_four():
    # group 7: rewards 1, 2, 3, 4 -> mean 2.5, deviations -1.5 -0.5 0.5 1.5,
    # population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25, std = sqrt(1.25) = 1.1180340.
    # group 3: all 0.7 -> no signal -> exactly 0. Groups interleaved, ids not contiguous.
    rewards = torch.tensor([1.0, 0.7, 2.0, 0.7, 3.0, 0.7, 4.0, 0.7])
    ids = torch.tensor([7, 3, 7, 3, 7, 3, 7, 3])
    adv = group_advantages(rewards, ids)
    s = 1.118034
    expected = torch.tensor([-1.5 / s, 0.0, -0.5 / s, 0.0, 0.5 / s, 0.0, 1.5 / s, 0.0])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert (adv[1::2] == 0).all()  # exactly zero, not 1e-10
    # population, not sample, std: sample std would be sqrt(5 / 3) = 1.29, giving 1.5 / 1.29 = 1.16
    assert adv[6].item() == pytest.approx(1.341641, abs=1e-5)

    centred = group_advantages(rewards, ids, normalize_std=False)
    torch.testing.assert_close(centred, torch.tensor([-1.5, 0, -0.5, 0, 0.5, 0, 1.5, 0]))


def test_group_advantages_rejects_nonfinite_rewards():
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))


# --------------------------------------------------------------------------------- clipped surrogate


@pytest.mark.parametrize(
    "ratio, adv, surrogate, clipped",
    [
        # A = +1: min(r, clip(r, 0.8, 1.2))
        (0.5, +1.0, 0.5, True),  # min(0.5, 0.8) = 0.5: below the range, unclipped term wins
        (1.0, +1.0, 1.0, False),
        (1.5, +1.0, 1.2, True),  # min(1.5, 1.2) = 1.2
        # A = -1: min(-r, -clip(r))
        (0.5, -1.0, -0.8, True),  # min(-0.5, -0.8) = -0.8
        (1.0, -1.0, -1.0, False),
        (1.5, -1.0, -1.5, True),  # min(-1.5, -1.2) = -1.5: above the range, unclipped term wins
    ],
)
def test_clipped_surrogate(ratio, adv, surrogate, clipped):
    loss, m = one_token(math.log(ratio), 0.0, math.log(ratio), adv)
    assert loss.item() == pytest.approx(-surrogate, abs=1e-6)
    assert m["policy_loss"].item() == pytest.approx(-surrogate, abs=1e-6)
    assert m["clip_fraction"].item() == (1.0 if clipped else 0.0)
    assert m["ratio_mean"].item() == pytest.approx(ratio, abs=1e-6)
    assert m["tokens"].item() == 1  # text only: 1 of the 9 streams


def test_clipped_region_has_no_gradient():
    for ratio, adv, has_grad in [(1.5, +1.0, False), (0.5, -1.0, False), (0.5, +1.0, True), (1.5, -1.0, True)]:
        logp_new = torch.full((1, N_STREAMS, 1), math.log(ratio), requires_grad=True)
        zeros = torch.zeros(1, N_STREAMS, 1)
        valid = torch.ones(1, 1, dtype=torch.bool)
        loss, _ = grpo_loss(logp_new, zeros, logp_new.detach(), torch.tensor([adv]), valid, NO_KL)
        loss.backward()
        # unclipped: d(-r * A)/d logp = -r * A on the text token
        assert logp_new.grad[0, 0, 0].item() == pytest.approx(-ratio * adv if has_grad else 0.0, abs=1e-6)


# --------------------------------------------------------------------------------- KL


def test_kl_k3_known_pair_and_zero_at_reference():
    # ref = log 0.5, new = log 0.25: d = ref - new = ln 2; k3 = e^d - d - 1 = 2 - 0.6931472 - 1
    cfg = GrpoConfig(kl_coef=0.1)
    loss, m = one_token(math.log(0.25), math.log(0.25), math.log(0.5), 0.0, cfg)
    assert m["kl"].item() == pytest.approx(0.3068528, abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * 0.3068528, abs=1e-6)  # A = 0: only the KL term

    _, m1 = one_token(math.log(0.25), math.log(0.25), math.log(0.5), 0.0, GrpoConfig(kl_estimator="k1"))
    assert m1["kl"].item() == pytest.approx(-0.6931472, abs=1e-6)  # new - ref = ln 0.25 - ln 0.5

    loss0, m0 = one_token(-1.3, -1.3, -1.3, 0.0, cfg)
    assert m0["kl"].item() == 0.0 and loss0.item() == 0.0


# --------------------------------------------------------------------------------- masks


def test_masks_exclude_forced_and_padding_frames_and_pick_streams():
    # B = 2, T = 3. Row 0: frame 0 forced (excluded), frames 1, 2 valid, A = +2.
    # Row 1: frame 0 valid, frames 1, 2 padding, A = -1. Excluded tokens hold NaN: they must vanish.
    loss_mask = torch.tensor([[False, True, True], [True, False, False]])
    logp_old = torch.zeros(2, N_STREAMS, 3)
    logp_new = torch.zeros(2, N_STREAMS, 3)
    logp_new[:, 1:, :] = math.log(1.1)  # audio tokens: ratio 1.1 (inside the clip range); text: ratio 1
    logp_new[~loss_mask[:, None, :].expand(-1, N_STREAMS, -1)] = float("nan")
    logp_new.requires_grad_(True)
    adv = torch.tensor([2.0, -1.0])

    # text: tokens 2, 2, -1 -> token mean (2 + 2 - 1) / 3 = 1 (a per-episode mean would give 0.5)
    _, m = grpo_loss(logp_new, logp_old, logp_old, adv, loss_mask, GrpoConfig(update_streams="text", kl_coef=0))
    assert m["tokens"].item() == 3
    assert m["policy_loss"].item() == pytest.approx(-1.0, abs=1e-6)
    # audio: 8 streams x (2 x 2.2 - 1.1) = 26.4 over 24 tokens = 1.1
    _, m = grpo_loss(logp_new, logp_old, logp_old, adv, loss_mask, GrpoConfig(update_streams="audio", kl_coef=0))
    assert m["tokens"].item() == 24
    assert m["policy_loss"].item() == pytest.approx(-1.1, abs=1e-6)
    # all: (3 + 26.4) / 27
    loss, m = grpo_loss(logp_new, logp_old, logp_old, adv, loss_mask, GrpoConfig(update_streams="all", kl_coef=0))
    assert m["tokens"].item() == 27
    assert m["policy_loss"].item() == pytest.approx(-29.4 / 27, abs=1e-6)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logp_new.grad).all()  # NaN on excluded tokens does not leak into the grad
    assert (logp_new.grad[~loss_mask[:, None, :].expand(-1, N_STREAMS, -1)] == 0).all()

    # the same advantages given per frame [B, T] give the same loss
    dense = adv[:, None].expand(2, 3).clone()
    _, md = grpo_loss(logp_new, logp_old, logp_old, dense, loss_mask, GrpoConfig(update_streams="all", kl_coef=0))
    assert md["policy_loss"].item() == pytest.approx(-29.4 / 27, abs=1e-6)


def test_stream_mask():
    assert stream_mask("text").tolist() == [True] + [False] * 8
    assert stream_mask("audio").tolist() == [False] + [True] * 8
    assert stream_mask("all").tolist() == [True] * 9


# --------------------------------------------------------------------------------- gradient direction


@pytest.mark.parametrize("adv, sign", [(+1.0, +1), (-1.0, -1)])
def test_sgd_step_moves_sampled_token_with_advantage(adv, sign):
    torch.manual_seed(0)
    logits = torch.randn(1, N_STREAMS, 2, 5, requires_grad=True)  # [B, 9, T, V]
    tokens = torch.tensor([[[3, 1]] * N_STREAMS])  # [B, 9, T] the sampled tokens

    def logp_of_tokens():
        return logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]  # [B, 9, T]

    before = logp_of_tokens().detach()
    cfg = GrpoConfig(kl_coef=0.05)  # KL gradient is 0 at new == ref, so only the advantage acts
    valid = torch.ones(1, 2, dtype=torch.bool)
    loss, _ = grpo_loss(logp_of_tokens(), before, before, torch.tensor([adv]), valid, cfg)
    loss.backward()
    assert (logits.grad[:, 1:] == 0).all()  # text-only: audio logits untouched
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    change = logp_of_tokens().detach() - before
    assert (sign * change[:, 0] > 0).all()  # the text tokens moved with the advantage
    assert (change[:, 1:] == 0).all()


# --------------------------------------------------------------------------------- GAE


def test_gae_three_steps_by_hand():
    # rewards 1, 0, 2; V(s0..s2) = 0.5, 1.0, 1.5; gamma 0.9, lambda 0.8 (gamma * lambda = 0.72)
    # row 0: truncated, bootstrap V(s3) = 2.0
    #   delta2 = 2 + 0.9 * 2.0 - 1.5 = 2.3      A2 = 2.3
    #   delta1 = 0 + 0.9 * 1.5 - 1.0 = 0.35     A1 = 0.35 + 0.72 * 2.3 = 2.006
    #   delta0 = 1 + 0.9 * 1.0 - 0.5 = 1.4      A0 = 1.4 + 0.72 * 2.006 = 2.84432
    # row 1: terminates after step 2: delta2 = 2 - 1.5 = 0.5, A1 = 0.35 + 0.72 * 0.5 = 0.71,
    #   A0 = 1.4 + 0.72 * 0.71 = 1.9112
    # row 2: only 2 valid steps (step 2 is padding), truncated, bootstrap V(s2) = 1.5 read at column 2:
    #   A1 = delta1 = 0.35, A0 = 1.4 + 0.72 * 0.35 = 1.652, A2 = 0
    rewards = torch.tensor([[1.0, 0.0, 2.0]] * 3)
    values = torch.tensor([[0.5, 1.0, 1.5, 2.0]] * 3)
    dones = torch.tensor([[False, False, False], [False, False, True], [False, False, False]])
    mask = torch.tensor([[True, True, True], [True, True, True], [True, True, False]])
    adv, ret = gae(rewards, values, dones, gamma=0.9, lam=0.8, mask=mask)
    expected = torch.tensor([[2.84432, 2.006, 2.3], [1.9112, 0.71, 0.5], [1.652, 0.35, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, expected + torch.tensor([0.5, 1.0, 1.5]) * mask, atol=1e-6, rtol=0)

    # values [B, T]: no bootstrap column, V = 0 after the last step -> row 0 behaves like row 1
    adv_t, _ = gae(rewards[:1], values[:1, :3], dones[:1], gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv_t, expected[1:2], atol=1e-6, rtol=0)


def test_ppo_loss_by_hand():
    # one row, T = 2, per-step log-probs; ratios 1 and 1.5, advantages 1 and 1 (no normalisation)
    # surrogate: 1 * 1 and min(1.5, 1.2) = 1.2 -> policy loss -(1 + 1.2) / 2 = -1.1
    # values 0, 1 vs returns 1, 3: value loss 0.5 * (1 + 4) / 2 = 1.25; total -1.1 + 0.5 * 1.25
    cfg = PpoConfig(normalize_advantages=False)
    logp_new = torch.tensor([[0.0, math.log(1.5)]])
    loss, m = ppo_loss(
        logp_new, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[0.0, 1.0]]),
        torch.tensor([[1.0, 3.0]]), torch.ones(1, 2, dtype=torch.bool), cfg,
    )
    assert m["policy_loss"].item() == pytest.approx(-1.1, abs=1e-6)
    assert m["value_loss"].item() == pytest.approx(1.25, abs=1e-6)
    assert loss.item() == pytest.approx(-1.1 + 0.625, abs=1e-6)
    assert m["clip_fraction"].item() == 0.5


# --------------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"group_size": 1}, "group_size"),
        ({"clip_eps": 0.0}, "clip_eps"),
        ({"clip_eps": 1.5}, "clip_eps"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"kl_estimator": "k2"}, "kl_estimator"),
        ({"update_streams": "video"}, "update_streams"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_grpo_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"GrpoConfig.{field}"):
        GrpoConfig(**kwargs)


def test_ppo_config_validation_and_shape_errors():
    with pytest.raises(ValueError, match="PpoConfig.vf_coef"):
        PpoConfig(vf_coef=-1.0)
    with pytest.raises(ValueError, match=r"\[B, 9, T\]"):
        grpo_loss(torch.zeros(2, 8, 3), torch.zeros(2, 8, 3), torch.zeros(2, 8, 3), torch.zeros(2),
                  torch.ones(2, 3, dtype=torch.bool), GrpoConfig())


def test_group_step_advantages_on_hand_numbers():
    from duplexgym.agents.training.losses import group_step_advantages, returns_to_go

    rewards = torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 0.0, -1.0],  # group 7: rtg [0, 1, 1] and [-2, -1, -1]
                            [1.0, 0.0, 9.0], [0.0, 0.0, 9.0],  # group 3, length 2 (the 9s are padding)
                            [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])  # group 5: identical rows
    mask = torch.tensor([[True] * 3] * 2 + [[True, True, False]] * 2 + [[True] * 3] * 2)
    groups = torch.tensor([7, 7, 3, 3, 5, 5])
    np.testing.assert_allclose(returns_to_go(rewards, mask)[:4].numpy(),
                               [[0, 1, 1], [-2, -1, -1], [1, 0, 0], [0, 0, 0]])
    adv = group_step_advantages(rewards, mask, groups, eps=0.0)
    # group 7: centred +-1 everywhere, RMS 1; group 3: centred [+-0.5, 0], RMS sqrt(0.125)
    np.testing.assert_allclose(adv.numpy(), [[1, 1, 1], [-1, -1, -1], [2**0.5, 0, 0], [-(2**0.5), 0, 0],
                                             [0, 0, 0], [0, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(group_step_advantages(rewards, mask, groups, normalize_std=False)[:2].numpy(),
                               [[1, 1, 1], [-1, -1, -1]])
    # rewards only at the last step, equal lengths: group_advantages broadcast to every step
    final = torch.tensor([1.0, 2.0, 4.0, 0.0])
    last = torch.zeros(4, 5)
    last[:, -1] = final
    ids = torch.tensor([0, 0, 0, 1])
    per_step = group_step_advantages(last, torch.ones(4, 5, dtype=torch.bool), ids)
    np.testing.assert_allclose(per_step.numpy(), group_advantages(final, ids)[:, None].expand(4, 5).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="rewards must be finite"):
        group_step_advantages(torch.tensor([[float("nan")]]), torch.ones(1, 1, dtype=torch.bool), torch.zeros(1))


def test_reference_kl_matches_the_grpo_loss_kl_term():
    from duplexgym.agents.training.losses import reference_kl

    g = torch.Generator().manual_seed(0)
    new, old, ref = (-torch.rand(3, 9, 5, generator=g) for _ in range(3))
    mask = torch.rand(3, 5, generator=g) > 0.3
    for streams in ("text", "audio", "all"):
        _, m = grpo_loss(new, old, ref, torch.ones(3), mask, GrpoConfig(group_size=2, update_streams=streams))
        assert float(reference_kl(new, ref, mask, streams)) == pytest.approx(float(m["kl"]), abs=1e-7)
    # by hand, text stream only: mean of exp(d) - d - 1 over the masked tokens, d = ref - new
    d = (ref - new)[:, 0][mask]
    assert float(reference_kl(new, ref, mask)) == pytest.approx(float((d.exp() - d - 1).mean()), abs=1e-7)


# --- the seed paper's pieces: GDPO, exact KL, sequence normalisation --------------------------------


def test_decoupled_advantages_on_hand_numbers():
    from duplexgym.agents.training.losses import decoupled_advantages

    # one group of 4: component 0 varies (1, 2, 3, 4), component 1 is the same for all (constant: adds 0)
    comps = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    adv = decoupled_advantages(comps, torch.zeros(4, dtype=torch.long))
    std = np.sqrt(((np.array([1, 2, 3, 4]) - 2.5) ** 2).mean())
    np.testing.assert_allclose(adv.numpy(), (np.array([1, 2, 3, 4]) - 2.5) / (std + 1e-6), rtol=1e-6)
    # two components, each standardised on its own then summed: a delay of seconds and a judge of 0..2
    comps = torch.tensor([[-0.2, 2.0], [-3.0, 0.0], [-0.4, 1.0], [-1.0, 1.0]])
    adv = decoupled_advantages(comps, torch.zeros(4, dtype=torch.long)).numpy()
    want = np.zeros(4)
    for c in range(2):
        x = comps[:, c].numpy().astype(np.float64)
        want += (x - x.mean()) / (x.std() + 1e-6)
    np.testing.assert_allclose(adv, want, rtol=1e-5)
    # a large-scale component does not drown a small one (what a summed reward would do)
    summed = group_advantages(comps.sum(dim=1), torch.zeros(4, dtype=torch.long)).numpy()
    assert not np.allclose(adv, summed)
    # groups are standardised apart
    two = decoupled_advantages(torch.cat([comps, comps * 10]), torch.tensor([0] * 4 + [1] * 4)).numpy()
    np.testing.assert_allclose(two[:4], two[4:], rtol=1e-5)


def test_exact_kl_equals_torch_kl_divergence_of_the_softmaxes():
    from duplexgym.agents.training.losses import exact_kl

    g = torch.Generator().manual_seed(0)
    new_logits, ref_logits = torch.randn(3, 5, 40, generator=g), torch.randn(3, 5, 40, generator=g)
    new, ref = torch.log_softmax(new_logits, -1), torch.log_softmax(ref_logits, -1)
    want = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=new_logits),
                                             torch.distributions.Categorical(logits=ref_logits))
    torch.testing.assert_close(exact_kl(new, ref), want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(exact_kl(new, new), torch.zeros(3, 5), atol=1e-6)


def test_grpo_loss_with_the_exact_kl_and_sequence_normalisation():
    B, T = 2, 4
    logp = torch.log(torch.full((B, 9, T), 0.5)).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)  # 4 tokens vs 1
    kl = torch.zeros(B, 9, T)
    kl[0, 0] = 1.0
    kl[1, 0, 0] = 3.0
    exact = GrpoConfig(group_size=2, kl_coef=1.0, kl_estimator="exact")
    _, m = grpo_loss(logp, logp.detach(), logp.detach(), torch.zeros(B), mask, exact, kl_exact=kl)
    assert m["kl"].item() == pytest.approx((4 * 1.0 + 3.0) / 5)  # token: every token weighs the same
    seq = GrpoConfig(group_size=2, kl_coef=1.0, kl_estimator="exact", normalization="sequence")
    _, m = grpo_loss(logp, logp.detach(), logp.detach(), torch.zeros(B), mask, seq, kl_exact=kl)
    assert m["kl"].item() == pytest.approx((1.0 + 3.0) / 2)  # sequence: each episode weighs the same
    with pytest.raises(ValueError, match="needs kl_exact"):
        grpo_loss(logp, logp.detach(), logp.detach(), torch.zeros(B), mask, exact)
    adv = torch.tensor([1.0, -1.0])
    tok, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, GrpoConfig(group_size=2, kl_coef=0.0))
    seqloss, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask,
                           GrpoConfig(group_size=2, kl_coef=0.0, normalization="sequence"))
    assert tok.item() == pytest.approx(-(4 * 1 - 1) / 5) and seqloss.item() == pytest.approx(-(1 - 1) / 2)
