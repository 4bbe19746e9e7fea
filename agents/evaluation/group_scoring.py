"""Scoring a Moshi policy on fixed segments, ``rollouts`` sampled rollouts each, in one batch.

What a training run is judged by: the same segments and the same sampling seeds before and after
training, so a change in the mean is the policy's, not the draw's. Each segment is replayed by
``rollouts`` envs stepped in lockstep (``reset(options={"segment": id})``; plain envs rather than a
vector env, whose merged infos would scatter each row's ``reward_terms``) and one batched
streaming :class:`~duplexgym.agents.policies.moshi_agent.MoshiAgent` acts for all rows, as the GRPO env
runner samples a group. Env: codes observations, token actions, the given reward spec.
"""

from __future__ import annotations

import os

import numpy as np
from duplexgym.rewards.spec import axis_term


def score_policy(policy, corpus: str | os.PathLike, segments: list[str], rollouts: int = 4, seed: int = 0,
                 rewards: dict | None = None, sampler: dict | None = None) -> list[dict]:
    """Per episode ``{"segment", "axis", "row", "return", "score", "reward"}`` for every segment x row.

    ``policy``: what :class:`~duplexgym.agents.policies.moshi_agent.MoshiAgent` loads (``"tiny"``, a
    checkpoint folder such as a training run's ``policy/``, or ``MoshiModels``). ``return``: the
    episode's summed env rewards (dense shaping included); ``score``: the value of the segment's
    axis term (``None`` if it failed); ``reward``: the weighted sum of the terms. The agent's
    episode seeds follow from ``seed`` alone, so two policies scored with one ``seed`` draw their
    samples from the same random streams.
    """
    from duplexgym.agents.policies.moshi_agent import MoshiAgent
    from duplexgym.envs.corpus import ReplayCorpus
    from duplexgym.envs.replay import DuplexReplayEnv

    if rollouts < 1 or not segments:
        raise ValueError(f"score_policy: need rollouts >= 1 and at least one segment, got {rollouts}, {segments!r}")
    replay = ReplayCorpus(corpus)
    unknown = [s for s in segments if s not in replay.by_id]
    if unknown:
        raise ValueError(f"score_policy: no segment {unknown[0]!r} in {corpus}")
    axes = tuple(dict.fromkeys(replay.by_id[s].axis for s in segments))

    def make():
        return DuplexReplayEnv(replay, axes=axes, obs_mode="codes", action_mode="tokens", rewards=rewards)

    envs = [make() for _ in range(rollouts)]
    agent = MoshiAgent(policy, batch_size=rollouts, seed=seed, **(sampler or {}))
    out = []
    try:
        for segment in segments:
            obs, infos = zip(*(env.reset(options={"segment": segment}) for env in envs))
            agent.reset_batch(list(infos))
            obs = np.stack(obs)
            returns = np.zeros(rollouts)
            final: list[dict | None] = [None] * rollouts
            while any(f is None for f in final):  # the rows replay one segment: they end together
                actions = agent.act_batch(obs)
                steps = [env.step(a) for env, a in zip(envs, actions)]
                obs = np.stack([o for o, *_ in steps])
                for r, (_, reward, term, trunc, info) in enumerate(steps):
                    returns[r] += reward
                    if term or trunc:
                        final[r] = info["reward_terms"]
            axis = replay.by_id[segment].axis
            for r, terms in enumerate(final):
                term = axis_term(terms["terms"], axis)
                out.append({"segment": segment, "axis": axis, "row": r, "return": float(returns[r]),
                            "score": None if term is None else float(term["value"]), "reward": float(terms["reward"])})
    finally:
        agent.close()
        for env in envs:
            env.close()
    return out


def mean_of(episodes: list[dict], key: str) -> float:
    """Mean of ``key`` over the episodes where it is not ``None``."""
    values = [e[key] for e in episodes if e[key] is not None]
    return float(np.mean(values)) if values else float("nan")
