"""The learner connector of group sampling: whole episodes -> the padded batch
(:func:`~duplexgym.agents.training.batch.build_group_batch`) with old and reference log-probs."""

from __future__ import annotations

import numpy as np
import torch
from duplexgym.agents.training.batch import (
    AGENT_TOKENS,
    FORCED,
    LOSS_MASK,
    NONFINITE,
    OLD_LOGP,
    REF_LOGP,
    SAMPLER_GAP,
    SAMPLER_TEXT_LOGP,
    USER_CODES,
    build_group_batch,
)
from duplexgym.agents.training.losses import stream_mask
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode


def episode_record(e: SingleAgentEpisode) -> dict:
    """What :func:`~duplexgym.agents.training.batch.build_group_batch` reads of an RLlib episode."""
    return {"actions": e.get_actions(), "observations": e.get_observations(),
            "forced": e.get_extra_model_outputs(FORCED), "text_logp": e.get_extra_model_outputs(Columns.ACTION_LOGP),
            "reward": e.custom_data["reward"], "rewards": e.get_rewards(),
            "components": e.custom_data.get("components"), "advantage": e.custom_data.get("advantage"),
            "failed": e.custom_data.get("failed") or [], "group": e.custom_data["group"]}


class GroupBatchConnector(ConnectorV2):
    """Learner connector: whole episodes -> the padded GRPO batch, with old and reference log-probs."""

    def policy_pass(self, module, t: dict, cols: dict) -> torch.Tensor:
        """``[B, 9, T]`` teacher-forced log-probs under the learner's weights (no grad); a subclass
        may keep more of the same pass in ``cols`` (PPO: the values)."""
        return module.logprobs(module.lm, t)

    def add_columns(self, module, cols: dict) -> None:
        """Hook for subclasses (PPO adds GAE advantages and returns); GRPO adds nothing."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        eps = list(self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False))
        if not eps:
            return batch
        module = (rl_module[DEFAULT_MODULE_ID] if hasattr(rl_module, "keys") else rl_module).unwrapped()
        settings = module.train_settings()
        self.last_groups = sorted({str(e.custom_data["group"]) for e in eps})  # what this learner was dealt
        cols = build_group_batch([episode_record(e) for e in eps], advantage=settings["advantage"])
        with torch.no_grad():
            t = {k: torch.from_numpy(cols[k]) for k in (AGENT_TOKENS, USER_CODES)}
            old = self.policy_pass(module, t, cols)
            ref = module.ref_logprobs(t)
        # Frames with a non-finite log-prob in a stream the loss covers leave the loss, counted. The
        # last frame's codebooks 1..7 are undefined (NaN: agents.logprobs), so with audio streams
        # each episode's last frame is left out; nothing else is expected.
        streams = stream_mask(settings["update_streams"])
        finite = (torch.isfinite(old[:, streams]).all(dim=1) & torch.isfinite(ref[:, streams]).all(dim=1)).numpy()
        cols[NONFINITE] = (cols[LOSS_MASK] & ~finite).sum(axis=1).astype(np.float32)  # [B]
        cols[LOSS_MASK] = cols[LOSS_MASK] & finite
        # The old text log-probs are the sampler's own (ACTION_LOGP); their gap to the teacher-forced
        # pass under the learner's weights checks that the runners sample with the synced weights.
        sampler = torch.from_numpy(cols[SAMPLER_TEXT_LOGP])
        valid = torch.from_numpy(cols[LOSS_MASK]) & torch.isfinite(sampler)
        gap = torch.where(valid, (sampler - old[:, 0]).abs(), torch.zeros_like(sampler))
        cols[SAMPLER_GAP] = gap.amax(dim=1).numpy()  # [B]
        cols[LOSS_MASK] = cols[LOSS_MASK] & torch.isfinite(sampler).numpy()
        old[:, 0] = torch.where(torch.isfinite(sampler), sampler, old[:, 0])
        cols[OLD_LOGP] = old.numpy()
        cols[REF_LOGP] = ref.numpy()
        self.add_columns(module, cols)
        batch[DEFAULT_MODULE_ID] = cols
        if shared_data is not None:
            shared_data[f"_zero_padded_for_mid={DEFAULT_MODULE_ID}"] = True
        return batch

