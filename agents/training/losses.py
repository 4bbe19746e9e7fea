"""The loss math of GRPO and of PPO's clipped objective, as small pure torch functions.

Nothing here knows about RLlib, Moshi or the envs: the learner computes log-probabilities by
teacher forcing and hands them over as tensors. Shapes are written ``[B, S, T]``: ``B`` episodes
(rows), ``S = N_STREAMS = 9`` token streams per frame, ``T`` frames. Stream 0 is Moshi's text
stream, streams 1..8 its eight audio codebooks (the agent's own voice). ``logp[b, s, t]`` is the
log-probability of the token that stream ``s`` emitted at frame ``t`` of row ``b``; the learner
aligns the streams to frames (Moshi's acoustic delay included) before calling in here.

GRPO (Shao et al. 2024, DeepSeekMath), as computed by :func:`grpo_loss`::

    A_i     = (r_i - mean(r_group)) / (std(r_group) + eps)           # group_advantages
    ratio   = exp(logp_new - logp_old)                                 # per token
    surr    = min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A)
    kl      = exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1     # k3 (Schulman 2020)
    loss    = -mean_tokens(surr) + kl_coef * mean_tokens(kl)

``mean_tokens`` averages over the valid tokens of the whole batch: a token is valid when its frame
is in ``loss_mask`` (False for padding and for forced-prefix frames, which the policy did not
choose) and its stream is in ``cfg.update_streams``. This is the token-level normalisation of DAPO
(Yu et al. 2025) and of TRL's GRPO: every token weighs the same, so long episodes count in
proportion to their length. The alternative, the original GRPO's per-sequence mean
(``mean_b(mean_t(...))``), gives each episode the same weight whatever its length, so a token of a
short episode weighs more than one of a long episode; Dr. GRPO (Liu et al. 2025) instead divides
the token sum by a constant. Only the token-level mean is implemented here.

PPO (:func:`ppo_loss`, :func:`gae`) uses the same clipped surrogate and the same token masking,
with per-step advantages from GAE and an unclipped squared-error value loss.

Example::

    >>> cfg = GrpoConfig(group_size=4)
    >>> adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(4, dtype=torch.long))
    >>> loss, metrics = grpo_loss(logp_new, logp_old, logp_ref, adv, loss_mask, cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from duplexgym.constants import N_STREAMS, TEXT_STREAM, UPDATE_STREAMS

#: KL to the reference: the per-token estimators k1 / k3 on the sampled tokens, or ``exact``, the
#: full-distribution KL at each position (the seed paper's; needs the whole distributions).
KL_ESTIMATORS = ("k1", "k3", "exact")
#: How token terms are averaged: ``token`` (over every valid token of the batch: DAPO, TRL) or
#: ``sequence`` (over each episode's valid tokens, then over the episodes: the original GRPO and
#: the seed paper).
NORMALIZATIONS = ("token", "sequence")


# --------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class GrpoConfig:
    """Hyper-parameters of the GRPO loss.

    Arguments:
        group_size: rollouts per group (the same prompt / segment replayed ``group_size`` times);
            at least 2, since a group of one always has advantage 0.
        clip_eps: PPO clip range: the ratio is clipped to ``[1 - clip_eps, 1 + clip_eps]``; in
            (0, 1).
        kl_coef: weight of the KL penalty to the frozen reference policy; 0 turns it off (the KL
            is still computed and logged).
        kl_estimator: ``"k3"`` (``exp(ref - new) - (ref - new) - 1``: unbiased, always >= 0, the
            GRPO paper's choice), ``"k1"`` (``new - ref``: unbiased, can be negative per token) or
            ``"exact"`` (``sum_v p_new(v) (log p_new(v) - log p_ref(v))`` at each position, from
            the whole distributions: :func:`exact_kl`; the seed paper's).
        normalization: ``"token"`` or ``"sequence"`` (:data:`NORMALIZATIONS`).
        update_streams: which of the 9 token streams the loss covers: ``"text"`` (stream 0 only,
            the published stable recipe), ``"audio"`` (streams 1..8) or ``"all"``.
        normalize_std: divide the group-centred rewards by the group's std (GRPO); False gives
            the Dr. GRPO variant ``r - mean(r_group)``.
        eps: added to the group std before dividing; > 0.
    """

    group_size: int = 8
    clip_eps: float = 0.2
    kl_coef: float = 0.05
    kl_estimator: str = "k3"
    update_streams: str = "text"
    normalize_std: bool = True
    eps: float = 1e-6
    normalization: str = "token"

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"GrpoConfig.group_size: expected an int >= 2, got {self.group_size!r}")
        _check_clip_eps("GrpoConfig", self.clip_eps)
        if not self.kl_coef >= 0:
            raise ValueError(f"GrpoConfig.kl_coef: expected >= 0, got {self.kl_coef!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"GrpoConfig.kl_estimator: expected one of {KL_ESTIMATORS}, got {self.kl_estimator!r}"
            )
        _check_streams("GrpoConfig", self.update_streams)
        if not self.eps > 0:
            raise ValueError(f"GrpoConfig.eps: expected > 0, got {self.eps!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"GrpoConfig.normalization: expected one of {NORMALIZATIONS}, got {self.normalization!r}")


@dataclass(frozen=True)
class PpoConfig:
    """Hyper-parameters of the PPO loss (CleanRL's names where they exist).

    Arguments:
        clip_eps: PPO clip range, in (0, 1).
        vf_coef: weight of the value loss ``0.5 * (V - R)^2``; >= 0.
        update_streams: which token streams the policy loss covers (see :class:`GrpoConfig`);
            used only when the log-probs are given per stream ``[B, 9, T]``.
        normalize_advantages: standardise the advantages over the valid steps of the batch
            (CleanRL's ``norm_adv``).
        eps: added to the std when normalising advantages; > 0.
    """

    clip_eps: float = 0.2
    vf_coef: float = 0.5
    update_streams: str = "text"
    normalize_advantages: bool = True
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _check_clip_eps("PpoConfig", self.clip_eps)
        if not self.vf_coef >= 0:
            raise ValueError(f"PpoConfig.vf_coef: expected >= 0, got {self.vf_coef!r}")
        _check_streams("PpoConfig", self.update_streams)
        if not self.eps > 0:
            raise ValueError(f"PpoConfig.eps: expected > 0, got {self.eps!r}")


def _check_clip_eps(owner: str, clip_eps: float) -> None:
    if not 0 < clip_eps < 1:
        raise ValueError(f"{owner}.clip_eps: expected a float in (0, 1), got {clip_eps!r}")


def _check_streams(owner: str, update_streams: str) -> None:
    if update_streams not in UPDATE_STREAMS:
        raise ValueError(
            f"{owner}.update_streams: expected one of {UPDATE_STREAMS}, got {update_streams!r}"
        )


# --------------------------------------------------------------------------------- advantages


def group_advantages(
    rewards: Tensor, group_ids: Tensor, normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO's group-relative advantage of each rollout: ``(r - mean_group) / (std_group + eps)``.

    Args:
        rewards: ``[N]`` one scalar reward per rollout; must be finite (a reward that failed must
            be reported upstream, not scored here).
        group_ids: ``[N]`` integer id of each rollout's group; any ids, in any order.
        normalize_std: divide by the group std; False returns ``r - mean_group`` (Dr. GRPO).
        eps: added to the std so that near-constant groups do not blow up.

    Returns:
        ``[N]`` advantages, in the dtype of ``rewards``. A group whose rewards are all equal gets
        exactly 0 (it carries no learning signal), as does a group of one.

    The std is the population std (divide by ``n``, not ``n - 1``): the normalised advantages of a
    group then have unit root-mean-square whatever the group size, so the size of the update does
    not depend on ``group_size``, and a group of one is well defined. TRL's GRPO uses the sample
    std (``n - 1``), which makes its advantages smaller by ``sqrt((n - 1) / n)``.
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_advantages: expected rewards [N] and group_ids [N], got "
            f"{tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError(f"group_advantages: rewards must be finite, got {rewards.tolist()}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N] group index 0..G-1
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    zeros = rewards.new_zeros(n_groups)
    count = zeros.index_add(0, inv, torch.ones_like(rewards))  # [G]
    mean = zeros.index_add(0, inv, rewards) / count  # [G]
    centred = rewards - mean[inv]  # [N]
    if normalize_std:
        std = (zeros.index_add(0, inv, centred**2) / count).sqrt()  # [G] population std
        centred = centred / (std[inv] + eps)
    hi = zeros.scatter_reduce(0, inv, rewards, "amax", include_self=False)
    lo = zeros.scatter_reduce(0, inv, rewards, "amin", include_self=False)
    flat = (hi == lo)[inv]  # [N] the rollout's group has all-equal rewards
    return torch.where(flat, torch.zeros_like(centred), centred)


def returns_to_go(rewards: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[B, T]`` undiscounted reward-to-go ``sum_{t' >= t} rewards[:, t']`` (0 on padding).

    ``rewards``: ``[B, T]`` per-step rewards, 0 on padding (``mask`` False, if given)."""
    if mask is not None:
        rewards = torch.where(mask.bool(), rewards, torch.zeros_like(rewards))
    out = rewards.flip(-1).cumsum(-1).flip(-1)
    return out if mask is None else torch.where(mask.bool(), out, torch.zeros_like(out))


def group_step_advantages(
    rewards: Tensor, mask: Tensor, group_ids: Tensor, normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """Per-step group-relative advantages from per-step rewards (dense shaping plus the episode's
    final reward): a GRPO advantage with credit assignment in time.

    Args:
        rewards: ``[B, T]`` reward of each step (the last valid step carries the episode reward).
        mask: ``[B, T]`` bool, False on padding; valid steps are a prefix of each row.
        group_ids: ``[B]`` group of each row. The rows of a group replay the same segment, so
            step ``t`` is the same moment of the conversation in every row of the group.
        normalize_std: divide by the group's scale (below); False: centred only (Dr. GRPO).

    Returns:
        ``[B, T]``: ``A[b, t] = (R[b, t] - mean_g R[., t]) / (s_g + eps)``, ``R`` the reward-to-go
        (:func:`returns_to_go`), the mean over the rows of ``b``'s group valid at ``t``, and
        ``s_g`` the root-mean-square of the group's centred values over its valid steps (one scale
        per group, so a step where the rows barely differ keeps a small advantage). 0 on padding
        and for a group whose reward-to-go is the same in every row at every step. With rewards
        only at the last step and equal lengths this is :func:`group_advantages` on every step.
    """
    B, T = rewards.shape
    if mask.shape != (B, T) or group_ids.shape != (B,):
        raise ValueError(f"group_step_advantages: expected rewards [B, T], mask [B, T], group_ids [B]; got "
                         f"{tuple(rewards.shape)}, {tuple(mask.shape)}, {tuple(group_ids.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("group_step_advantages: rewards must be finite")
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    valid = mask.bool()
    rtg = returns_to_go(rewards, valid)
    out = torch.zeros_like(rtg)
    for g in torch.unique(group_ids):
        rows = group_ids == g
        r, v = rtg[rows], valid[rows]  # [n, T]
        count = v.sum(dim=0).clamp(min=1)  # [T]
        centred = torch.where(v, r - (r * v).sum(dim=0) / count, torch.zeros_like(r))
        if normalize_std:
            scale = ((centred**2).sum() / v.sum().clamp(min=1)).sqrt()
            if scale <= eps:  # the rows agree everywhere: no signal
                continue
            centred = centred / (scale + eps)
        out[rows] = centred
    return out


def gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded rows.

    Args:
        rewards: ``[B, T]`` reward of each step.
        values: ``[B, T + 1]`` value of each step's state plus, per row, the value of the state
            after its last valid step (the bootstrap value, read at column ``length``); or
            ``[B, T]``, in which case the bootstrap value after the last column is 0.
        dones: ``[B, T]`` bool, True where the episode terminated after this step (no bootstrap).
            A row cut short without termination (truncation) leaves it False and is bootstrapped.
        gamma, lam: discount and GAE lambda, in [0, 1].
        mask: ``[B, T]`` bool, False for padding; the valid steps of a row must be a prefix.
            None means all valid.

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` and 0 on padding, with ``returns = advantages +
        values[:, :T]`` (the value-function targets).

    Recursion: ``delta_t = r_t + gamma * (1 - done_t) * V_{t+1} - V_t``,
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``, with ``A = 0`` on padding.
    """
    B, T = rewards.shape
    if values.shape == (B, T):
        values = torch.cat([values, values.new_zeros(B, 1)], dim=1)
    if values.shape != (B, T + 1) or dones.shape != (B, T):
        raise ValueError(
            f"gae: expected rewards [B, T], values [B, T + 1] or [B, T], dones [B, T]; got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(dones.shape)}"
        )
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gae: gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    valid = torch.ones_like(dones, dtype=torch.bool) if mask is None else mask.bool()
    nonterminal = 1.0 - dones.to(rewards.dtype)  # [B, T]
    advantages = torch.zeros_like(rewards)
    next_adv = rewards.new_zeros(B)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * nonterminal[:, t] * values[:, t + 1] - values[:, t]
        adv_t = delta + gamma * lam * nonterminal[:, t] * next_adv
        next_adv = torch.where(valid[:, t], adv_t, torch.zeros_like(adv_t))
        advantages[:, t] = next_adv
    returns = torch.where(valid, advantages + values[:, :T], torch.zeros_like(advantages))
    return advantages, returns


# --------------------------------------------------------------------------------- masks


def stream_mask(update_streams: str) -> Tensor:
    """``[9]`` bool: which token streams the loss covers. Index 0 = text, 1..8 = audio codebooks."""
    _check_streams("stream_mask", update_streams)
    mask = torch.zeros(N_STREAMS, dtype=torch.bool)
    if update_streams in ("text", "all"):
        mask[TEXT_STREAM] = True
    if update_streams in ("audio", "all"):
        mask[TEXT_STREAM + 1 :] = True
    return mask


def _token_mask(logp: Tensor, loss_mask: Tensor, update_streams: str) -> Tensor:
    """``[B, 9, T]`` bool (or ``[B, T]`` for per-step log-probs): the tokens the loss counts."""
    B, T = loss_mask.shape
    if logp.dim() == 2 and logp.shape == (B, T):
        return loss_mask.bool()
    if logp.shape != (B, N_STREAMS, T):
        raise ValueError(
            f"expected log-probs [B, {N_STREAMS}, T] matching loss_mask [B, T] = {(B, T)}, "
            f"got {tuple(logp.shape)}"
        )
    streams = stream_mask(update_streams).to(loss_mask.device)
    return loss_mask.bool()[:, None, :] & streams[None, :, None]  # [B, 9, T]


def _zero_outside(mask: Tensor, *xs: Tensor) -> list[Tensor]:
    """Each ``x`` as float32 with 0 outside ``mask``, before any arithmetic.

    A NaN or -inf on a padded token (a pad token's log-prob, say) would otherwise leak into the
    gradient: ``where`` blocks it in the forward pass, but ``0 * d exp(nan)`` is still NaN.
    """
    return [torch.where(mask, x.float(), torch.zeros((), dtype=torch.float32, device=x.device)) for x in xs]


def _masked_mean(x: Tensor, mask: Tensor, n_tokens: Tensor | str = "token") -> Tensor:
    """Mean of ``x`` over ``mask`` (0 when nothing is valid). ``n_tokens``: ``"token"`` (the sum over
    the batch divided by the number of valid entries), ``"sequence"`` (each row's mean, then the mean
    over the rows that have a valid entry), or a tensor count to divide the sum by."""
    x = torch.where(mask, x, torch.zeros_like(x))
    if isinstance(n_tokens, Tensor):
        return x.sum() / n_tokens.clamp(min=1)
    if n_tokens == "token":
        return x.sum() / mask.sum().clamp(min=1)
    rows = mask.reshape(mask.shape[0], -1).sum(dim=1)  # [B]
    per_row = x.reshape(x.shape[0], -1).sum(dim=1) / rows.clamp(min=1)
    has = rows > 0
    return (per_row * has).sum() / has.sum().clamp(min=1)


def exact_kl(logp_new_full: Tensor, logp_ref_full: Tensor) -> Tensor:
    """``KL(p_new || p_ref)`` at each position from log-probabilities over the whole vocabulary
    ``[..., V]``: ``sum_v exp(new_v) (new_v - ref_v)``, shape ``[...]``, >= 0 (differentiable in
    ``logp_new_full``; the reference is detached)."""
    return (logp_new_full.exp() * (logp_new_full - logp_ref_full.detach())).sum(dim=-1)


def decoupled_advantages(components: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """Reward-decoupled group normalisation (GDPO, arXiv 2601.05242): each reward component is
    standardised within its group on its own (:func:`group_advantages`), and the per-component
    advantages are summed with equal weight.

    Args:
        components: ``[N, C]`` the value of each of ``C`` reward components of each rollout.
        group_ids: ``[N]`` the group of each rollout.

    Returns:
        ``[N]``. A component that is the same over a group adds 0 to that group's advantages.
    """
    if components.dim() != 2 or components.shape[0] != group_ids.shape[0]:
        raise ValueError(f"decoupled_advantages: expected components [N, C] and group_ids [N], got "
                         f"{tuple(components.shape)} and {tuple(group_ids.shape)}")
    out = torch.zeros(components.shape[0], dtype=components.dtype if components.is_floating_point() else torch.float32)
    for c in range(components.shape[1]):
        out = out + group_advantages(components[:, c], group_ids, eps=eps)
    return out


# --------------------------------------------------------------------------------- losses


def _clipped_surrogate(
    logp_new: Tensor, logp_old: Tensor, adv: Tensor, clip_eps: float, mask: Tensor, n: Tensor | str
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's pessimistic clipped surrogate, negated to a loss, and the ratio diagnostics."""
    logratio = logp_new - logp_old
    ratio = logratio.exp()
    surr_unclipped = ratio * adv
    surr_clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    policy_loss = -_masked_mean(torch.minimum(surr_unclipped, surr_clipped), mask, n)
    with torch.no_grad():
        metrics = {
            "clip_fraction": _masked_mean(((ratio - 1).abs() > clip_eps).float(), mask, n),
            "ratio_mean": _masked_mean(ratio, mask, n),
            "approx_kl": _masked_mean((ratio - 1) - logratio, mask, n),  # k3 of old vs new
        }
    return policy_loss, metrics


def grpo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    logp_ref: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    cfg: GrpoConfig,
    kl_exact: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss: clipped surrogate plus ``kl_coef`` times the KL to the reference policy.

    Args:
        logp_new: ``[B, 9, T]`` log-probs of the sampled tokens under the policy being trained
            (with grad).
        logp_old: ``[B, 9, T]`` the same under the policy that sampled them (no grad).
        logp_ref: ``[B, 9, T]`` the same under the frozen reference policy (no grad).
        advantages: ``[B]`` one advantage per episode (from :func:`group_advantages`), broadcast
            to every token; or ``[B, T]`` per frame (dense shaping terms added).
        loss_mask: ``[B, T]`` bool, False for padding and forced-prefix frames.
        cfg: the :class:`GrpoConfig`.
        kl_exact: ``[B, 9, T]`` the exact KL at each stream and position (:func:`exact_kl`, with
            grad through the policy), required with ``cfg.kl_estimator == "exact"``.

    Returns:
        ``(loss, metrics)``: the scalar loss to minimise, and detached scalars ``policy_loss``,
        ``kl`` (mean per token, before ``kl_coef``), ``clip_fraction`` (share of tokens with
        ``|ratio - 1| > clip_eps``), ``ratio_mean``, ``approx_kl`` (k3 estimate of KL(old || new),
        CleanRL's) and ``tokens`` (the number of tokens averaged over). Every mean is over the valid
        tokens, as ``cfg.normalization`` says (the whole batch's, or each episode's then the episodes').
    """
    if logp_old.shape != logp_new.shape or logp_ref.shape != logp_new.shape:
        raise ValueError(
            f"grpo_loss: logp_new, logp_old, logp_ref must have one shape, got "
            f"{tuple(logp_new.shape)}, {tuple(logp_old.shape)}, {tuple(logp_ref.shape)}"
        )
    mask = _token_mask(logp_new, loss_mask, cfg.update_streams)  # [B, 9, T]
    if logp_new.dim() != 3:
        raise ValueError(f"grpo_loss: expected log-probs [B, 9, T], got {tuple(logp_new.shape)}")
    B, _, T = logp_new.shape
    if advantages.shape == (B,):
        adv = advantages[:, None, None]  # [B, 1, 1]
    elif advantages.shape == (B, T):
        adv = advantages[:, None, :]  # [B, 1, T]
    else:
        raise ValueError(
            f"grpo_loss: expected advantages [B] or [B, T] = {(B, T)}, got {tuple(advantages.shape)}"
        )
    logp_new, logp_old, logp_ref, adv = _zero_outside(mask, logp_new, logp_old, logp_ref, adv)
    norm = cfg.normalization

    # policy term: the clipped surrogate
    policy_loss, metrics = _clipped_surrogate(logp_new, logp_old.detach(), adv, cfg.clip_eps, mask, norm)

    # KL term: to the frozen reference, per token (or exactly, per position)
    if cfg.kl_estimator == "exact":
        if kl_exact is None or kl_exact.shape != mask.shape:
            raise ValueError(f"grpo_loss: kl_estimator 'exact' needs kl_exact {tuple(mask.shape)}, got "
                             f"{None if kl_exact is None else tuple(kl_exact.shape)}")
        (kl_tokens,) = _zero_outside(mask, kl_exact)
        kl = _masked_mean(kl_tokens, mask, norm)
    else:
        kl = _kl_tokens_mean(logp_new, logp_ref, mask, norm, cfg.kl_estimator)

    loss = policy_loss + cfg.kl_coef * kl
    metrics = {"policy_loss": policy_loss.detach(), "kl": kl.detach(), **metrics, "tokens": mask.sum(),
               "norm_count": normalizer_count(mask, norm)}
    return loss, metrics


def normalizer_count(mask: Tensor, normalization: str) -> Tensor:
    """What :func:`_masked_mean` divides by: the valid entries (``token``) or the rows holding one
    (``sequence``). Several learners scale their loss by ``world * local / global`` of it, so that
    DDP's gradient average equals one learner's gradient over the whole batch."""
    if normalization == "token":
        return mask.sum().to(torch.float64)
    return (mask.reshape(mask.shape[0], -1).sum(dim=1) > 0).sum().to(torch.float64)


def _kl_tokens_mean(logp_new: Tensor, logp_ref: Tensor, mask: Tensor, n_tokens: Tensor | str,
                    estimator: str) -> Tensor:
    log_ref_over_new = logp_ref.detach() - logp_new
    if estimator == "k3":
        kl_tokens = log_ref_over_new.exp() - log_ref_over_new - 1
    elif estimator == "k1":
        kl_tokens = -log_ref_over_new
    else:
        raise ValueError(f"a per-token KL estimator is k1 or k3, got {estimator!r} (exact needs the distributions)")
    return _masked_mean(kl_tokens, mask, n_tokens)


def reference_kl(logp_new: Tensor, logp_ref: Tensor, loss_mask: Tensor, update_streams: str = "text",
                 estimator: str = "k3") -> Tensor:
    """Mean per-token KL estimate to the frozen reference (``k3``: ``exp(ref - new) - (ref - new) - 1``)
    over the tokens of ``update_streams`` in ``loss_mask`` ``[B, T]``; ``logp_*`` ``[B, 9, T]``.
    The same term :func:`grpo_loss` adds; PPO adds it too."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"reference_kl: estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    mask = _token_mask(logp_new, loss_mask, update_streams)
    logp_new, logp_ref = _zero_outside(mask, logp_new, logp_ref)
    return _kl_tokens_mean(logp_new, logp_ref, mask, mask.sum(), estimator)


def exact_reference_kl(kl_exact: Tensor, loss_mask: Tensor, update_streams: str = "text",
                       normalization: str = "token") -> Tensor:
    """Mean exact KL (``kl_exact`` ``[B, 9, T]``, from :func:`exact_kl`) over the positions of
    ``update_streams`` in ``loss_mask`` ``[B, T]``."""
    mask = _token_mask(kl_exact, loss_mask, update_streams)
    (kl_tokens,) = _zero_outside(mask, kl_exact)
    return _masked_mean(kl_tokens, mask, normalization)


def ppo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    values: Tensor,
    returns: Tensor,
    loss_mask: Tensor,
    cfg: PpoConfig,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's loss: clipped surrogate plus ``vf_coef`` times an unclipped value loss.

    Args:
        logp_new, logp_old: ``[B, 9, T]`` per-stream log-probs (``cfg.update_streams`` picks the
            streams) or ``[B, T]`` per-step log-probs of the joint action.
        advantages: ``[B, T]`` per-step advantages (from :func:`gae`), shared by the streams.
        values: ``[B, T]`` value predictions of the model being trained (with grad).
        returns: ``[B, T]`` value targets (from :func:`gae`).
        loss_mask: ``[B, T]`` bool, False for padding and forced-prefix frames.
        cfg: the :class:`PpoConfig`.

    Returns:
        ``(loss, metrics)``; metrics ``policy_loss``, ``value_loss``, ``clip_fraction``,
        ``ratio_mean``, ``approx_kl``, ``tokens``, as in :func:`grpo_loss`.

    The value loss is ``0.5 * mean((V - R)^2)`` over the valid steps, not clipped: clipping needs
    the old values, and Andrychowicz et al. (2021, "What matters in on-policy RL") found value
    clipping does not help, or hurts.
    """
    B, T = loss_mask.shape
    for name, x in (("advantages", advantages), ("values", values), ("returns", returns)):
        if x.shape != (B, T):
            raise ValueError(f"ppo_loss: expected {name} [B, T] = {(B, T)}, got {tuple(x.shape)}")
    if logp_old.shape != logp_new.shape:
        raise ValueError(
            f"ppo_loss: logp_new {tuple(logp_new.shape)} != logp_old {tuple(logp_old.shape)}"
        )
    mask = _token_mask(logp_new, loss_mask, cfg.update_streams)
    step_mask = loss_mask.bool()
    logp_new, logp_old = _zero_outside(mask, logp_new, logp_old)
    adv, values, returns = _zero_outside(step_mask, advantages, values, returns)
    if cfg.normalize_advantages:
        n_steps = step_mask.sum()
        mean = _masked_mean(adv, step_mask, n_steps)
        std = _masked_mean((adv - mean) ** 2, step_mask, n_steps).sqrt()
        adv = (adv - mean) / (std + cfg.eps)
    if logp_new.dim() == 3:
        adv = adv[:, None, :]  # [B, 1, T]
    n_tokens = mask.sum()

    # policy term: the clipped surrogate
    policy_loss, metrics = _clipped_surrogate(
        logp_new, logp_old.detach(), adv.detach(), cfg.clip_eps, mask, n_tokens
    )

    # value term: squared error to the returns
    value_loss = 0.5 * _masked_mean((values - returns.detach()) ** 2, step_mask, step_mask.sum())

    loss = policy_loss + cfg.vf_coef * value_loss
    metrics = {
        "policy_loss": policy_loss.detach(),
        "value_loss": value_loss.detach(),
        **metrics,
        "tokens": n_tokens,
    }
    return loss, metrics
