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
