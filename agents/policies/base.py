"""The agent protocol: what ``duplexgym rollout`` / ``eval`` and trainers drive.

An agent is told about each episode with ``reset(info)`` (the env's reset info: segment id, axis,
``n_frames``, forced prefix ...) and answers each observation with ``act(observation) -> action``
in the env's action mode. ``act_batch`` is the batched variant for vector envs (default: one
``act`` per row, each row its own agent state via ``reset_batch``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Agent(Protocol):
    name: str

    def reset(self, info: dict) -> None: ...

    def act(self, observation: np.ndarray) -> np.ndarray: ...


def row_infos(infos: dict, batch: int) -> list[dict]:
    """Per-row reset infos out of a Gymnasium vector env's merged info dict
    (``{key: [B] values, "_key": [B] mask}``): a row gets the keys its mask marks present;
    ``final_*`` entries and values that are not batched are dropped."""
    rows: list[dict] = [{} for _ in range(batch)]
    for key, values in infos.items():
        if key.startswith("_") or key in ("final_obs", "final_info") or isinstance(values, dict):
            continue
        if not hasattr(values, "__len__") or len(values) != batch:
            continue
        present = infos.get(f"_{key}", np.ones(batch, dtype=bool))
        for r in range(batch):
            if present[r]:
                rows[r][key] = values[r]
    return rows


class PerRowBatch:
    """The batched protocol over one single-row agent per vector-env row (for agents without a
    batched model, such as the baselines): ``reset_batch(infos, mask)`` / ``act_batch(obs)``."""

    def __init__(self, agents: list):
        if not agents:
            raise ValueError("PerRowBatch needs at least one agent")
        self.agents = list(agents)
        self.batch_size = len(self.agents)
        self.name = getattr(self.agents[0], "name", "agent")

    def reset_batch(self, infos, mask=None) -> None:
        """Reset the rows where ``mask`` is true (all when None); ``infos``: a list of per-row
        infos or a vector env's merged info dict."""
        if isinstance(infos, dict):
            infos = row_infos(infos, self.batch_size)
        rows = np.ones(self.batch_size, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        for agent, info, reset in zip(self.agents, infos, rows):
            if reset:
                agent.reset(info)

    def act_batch(self, observations: np.ndarray) -> np.ndarray:
        """``[B, ...]`` observations -> ``[B, ...]`` actions, row by row."""
        return np.stack([agent.act(obs) for agent, obs in zip(self.agents, observations)])
