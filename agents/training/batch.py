"""The learner batch of a group-sampled iteration: column names and how whole episodes become one
zero-padded ``[B, ., T]`` batch in model-frame order. Pure numpy and torch (no Ray): the learner
connector (:mod:`.connector`) calls :func:`build_group_batch`, tests call it on hand-made episodes.
"""

from __future__ import annotations

import numpy as np
import torch
from duplexgym.agents.training.losses import decoupled_advantages, group_advantages, group_step_advantages

#: Batch columns built by :func:`build_group_batch` and the learner connector.
AGENT_TOKENS, USER_CODES, LOSS_MASK = "agent_tokens", "user_codes", "loss_mask"
ADVANTAGES, OLD_LOGP, REF_LOGP, GROUP = "advantages", "old_logp", "ref_logp", "group"
SAMPLER_GAP = "sampler_logp_gap"  # per row: max |sampler - teacher-forced| text log-prob
STEP_REWARDS = "step_rewards"  # [B, T] env reward of env frame f + 1 at model frame f
FAILED_EPISODES = "failed_episodes"  # per row: 1.0 when a reward term failed (left out of the loss)
NONFINITE = "nonfinite_frames"  # per row: frames left out for a non-finite old/ref log-prob
SAMPLER_TEXT_LOGP = "sampler_text_logp"  # [B, T] the sampler's text log-probs (ACTION_LOGP)
#: RLlib's ``Columns.SEQ_LENS`` (the same string; checked in the tests).
SEQ_LENS = "seq_lens"
#: Per-step extra model output of the env runner: the env forced this frame.
FORCED = "forced"
#: How advantages are computed (``advantage`` of the train config).
ADVANTAGE_MODES = ("episode", "reward_to_go", "decoupled")


def episode_advantages(episodes: list[dict], advantage: str = "episode", normalize_std: bool = True) -> list:
    """Each episode's GRPO advantage, computed over its group before any batch is split: a float per
    episode (``episode``, ``decoupled``) or a float32 array over its model frames (``reward_to_go``).

    ``episodes``: as for :func:`build_group_batch`; ``decoupled`` also needs each episode's
    ``"components"`` (``{term: weighted value}``, the terms of its reward plus ``dense``): GDPO,
    :func:`~duplexgym.agents.training.losses.decoupled_advantages`. Episodes with a failed term get 0
    and never shift their group's statistics."""
    if advantage not in ADVANTAGE_MODES:
        raise ValueError(f"advantage: expected one of {ADVANTAGE_MODES}, got {advantage!r}")
    B = len(episodes)
    usable = np.array([not e.get("failed") for e in episodes], bool)
    keys = {g: i for i, g in enumerate(dict.fromkeys(e["group"] for e in episodes))}
    groups = np.array([keys[e["group"]] for e in episodes], np.int64)
    # Failed episodes sit in a group of their own (id -1 - b): they never shift their group's mean.
    stat_groups = torch.from_numpy(np.where(usable, groups, -1 - np.arange(B)))
    if advantage == "episode":
        rewards = torch.tensor([float(e["reward"]) for e in episodes], dtype=torch.float64)
        adv = group_advantages(rewards, stat_groups, normalize_std=normalize_std).numpy()
        return [float(a) if ok else 0.0 for a, ok in zip(adv, usable)]
    if advantage == "decoupled":
        names = sorted({k for e in episodes for k in (e.get("components") or {})})
        if not names:
            raise ValueError("advantage='decoupled' needs each episode's reward 'components'")
        comps = torch.tensor([[float((e.get("components") or {}).get(k, 0.0)) for k in names] for e in episodes],
                             dtype=torch.float64)
        adv = decoupled_advantages(comps, stat_groups).numpy()
        return [float(a) if ok else 0.0 for a, ok in zip(adv, usable)]
    lengths = [len(e["actions"]) - 1 for e in episodes]
    T = max(lengths)
    step_rewards = np.zeros((B, T), np.float64)
    for b, e in enumerate(episodes):
        if e.get("rewards") is None:
            raise ValueError("advantage='reward_to_go' needs each episode's per-step 'rewards'")
        step_rewards[b, : lengths[b]] = np.asarray(e["rewards"], np.float64)[1:]  # env frame f + 1 -> model frame f
    valid = torch.from_numpy(np.arange(T)[None, :] < np.asarray(lengths)[:, None])
    adv = group_step_advantages(torch.from_numpy(step_rewards), valid, stat_groups, normalize_std=normalize_std)
    return [adv[b, : lengths[b]].numpy().astype(np.float32) * float(usable[b]) for b in range(B)]


def build_group_batch(episodes: list[dict], normalize_std: bool = True, advantage: str = "episode") -> dict[str, np.ndarray]:
    """The zero-padded learner batch of whole episodes, in model-frame order.

    ``episodes``: per episode ``{"actions": [N, 9], "observations": [N(+1), 8], "forced": [N] bool,
    "reward": float, "group": hashable}`` and optionally ``"rewards": [N]`` (per-step env rewards;
    needed by ``advantage="reward_to_go"``), ``"components"`` (needed by ``decoupled``),
    ``"failed": [term names]`` (an episode with a reward term that failed is left out of its
    group's statistics and of the loss), ``"text_logp"``, and ``"advantage"``: the advantage
    computed beforehand over the whole iteration's groups (:func:`episode_advantages`), which the
    batch then takes as it is (when every episode has one): a minibatch or a learner that sees part
    of a group still gets the group's advantages. ``forced`` marks the frames the loss leaves out:
    forced by the env, or outside the scored segment (context, lead-in). Env-frame indexed, ``N``
    steps. Model frame ``f`` is env frame ``f + 1``
    (:func:`~duplexgym.agents.training.logprobs.episode_model_frames`), so ``T = N - 1``.

    ``advantage``: ``"episode"`` (one group-normalised advantage per episode from its return,
    :func:`~duplexgym.agents.training.losses.group_advantages`; ``advantages [B]``),
    ``"decoupled"`` (GDPO; ``[B]``) or ``"reward_to_go"`` (per model frame, from the per-step
    rewards: :func:`~duplexgym.agents.training.losses.group_step_advantages`; ``advantages [B, T]``;
    model frame ``f`` is credited with the env rewards of frames ``f + 1 ..``).

    Returns ``agent_tokens [B, 9, T]``, ``user_codes [B, 8, T]``, ``loss_mask [B, T]`` (False on
    padding, on forced frames and on failed episodes), ``advantages``, ``group [B]`` (int ids),
    ``seq_lens [B]``, ``sampler_text_logp [B, T]``, ``step_rewards [B, T]`` (model frame ``f``: the
    env reward of env frame ``f + 1``; zeros when episodes carry no ``"rewards"``).
    """
    if advantage not in ADVANTAGE_MODES:
        raise ValueError(f"advantage: expected one of {ADVANTAGE_MODES}, got {advantage!r}")
    B = len(episodes)
    lengths = [len(e["actions"]) - 1 for e in episodes]
    T = max(lengths)
    tokens = np.zeros((B, 9, T), np.int64)
    user = np.zeros((B, 8, T), np.int64)
    mask = np.zeros((B, T), bool)
    text_logp = np.zeros((B, T), np.float32)
    step_rewards = np.zeros((B, T), np.float64)
    usable = np.array([not e.get("failed") for e in episodes], bool)
    for b, e in enumerate(episodes):
        a = np.asarray(e["actions"], np.int64)  # [N, 9]
        o = np.asarray(e["observations"], np.int64)[: len(a)]  # [N, 8] user frames fed at steps 0..N-1
        n = lengths[b]
        tokens[b, :, :n] = a[1:].T  # model frames 0..N-2 = env frames 1..N-1
        user[b, :, :n] = o[:-1].T  # user frames fed at steps 0..N-2
        forced = np.asarray(e["forced"], bool)[1:]  # env frames 1..N-1
        mask[b, :n] = ~forced & usable[b]
        if e.get("text_logp") is not None:
            text_logp[b, :n] = np.asarray(e["text_logp"], np.float32)[1:]
        if e.get("rewards") is not None:
            step_rewards[b, :n] = np.asarray(e["rewards"], np.float64)[1:]  # env frame f + 1 -> model frame f
    keys = {g: i for i, g in enumerate(dict.fromkeys(e["group"] for e in episodes))}
    groups = np.array([keys[e["group"]] for e in episodes], np.int64)
    given = [e.get("advantage") for e in episodes]
    per_episode = given if all(g is not None for g in given) else episode_advantages(episodes, advantage,
                                                                                      normalize_std)
    if any(np.ndim(a) for a in per_episode):  # per frame
        adv = np.zeros((B, T), np.float32)
        for b, a in enumerate(per_episode):
            adv[b, : lengths[b]] = np.asarray(a, np.float32)[: lengths[b]]
    else:
        adv = np.asarray(per_episode, np.float32)
    adv = adv * usable.reshape((B,) + (1,) * (adv.ndim - 1))
    return {AGENT_TOKENS: tokens, USER_CODES: user, LOSS_MASK: mask, SAMPLER_TEXT_LOGP: text_logp,
            ADVANTAGES: adv.astype(np.float32), GROUP: groups, SEQ_LENS: np.asarray(lengths, np.int32),
            STEP_REWARDS: step_rewards,
            FAILED_EPISODES: (~usable).astype(np.float32)}
