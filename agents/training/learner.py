"""The learners: what they share (metric logging) and GRPO's loss. PPO's is in :mod:`.ppo`."""

from __future__ import annotations

from duplexgym.agents.training.batch import (
    ADVANTAGES,
    FAILED_EPISODES,
    LOSS_MASK,
    NONFINITE,
    OLD_LOGP,
    REF_LOGP,
    SAMPLER_GAP,
)
from duplexgym.agents.training.losses import GrpoConfig, grpo_loss
from ray.rllib.core.learner.torch.torch_learner import TorchLearner


class GroupLearner(TorchLearner):
    """What every learner here logs besides its loss terms: frames left out of the loss, failed
    episodes, the mean advantage size and the sampler's log-prob gap."""

    def log_metrics(self, module_id, batch, loss, metrics: dict, loss_name: str) -> None:
        metrics["nonfinite_frames"] = batch[NONFINITE].sum()
        metrics["failed_episodes"] = batch[FAILED_EPISODES].sum()
        metrics["adv_abs_mean"] = batch[ADVANTAGES].abs().mean()
        metrics["sampler_logp_gap"] = batch[SAMPLER_GAP].max()
        self.metrics.log_dict({loss_name: loss.item(), "loss": loss.item(), **{k: float(v) for k, v in metrics.items()}},
                              key=module_id, window=1)


class GrpoLearner(GroupLearner):
    """GRPO: the clipped surrogate on group advantages plus the KL to the frozen reference
    (:func:`~duplexgym.agents.training.losses.grpo_loss`)."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        train = self.module[module_id].train_settings()
        cfg = GrpoConfig(group_size=max(2, int(config.num_envs_per_env_runner)), clip_eps=train["clip_eps"],
                         kl_coef=train["kl_coef"], update_streams=train["update_streams"])
        loss, metrics = grpo_loss(fwd_out["logp"], batch[OLD_LOGP], batch[REF_LOGP], batch[ADVANTAGES],
                                  batch[LOSS_MASK].bool(), cfg)
        self.log_metrics(module_id, batch, loss, metrics, "grpo_loss")
        return loss
