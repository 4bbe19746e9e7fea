"""PPO with a value head for the streaming Moshi, on the pieces GRPO uses too (:mod:`.module`,
:mod:`.runner`, :mod:`.connector`; driven by :mod:`.algorithm`).

The same env runner (groups of rollouts; PPO does not need them, it is simply how the runner
samples), the same padded batch, the same weight sync. What differs:

- :class:`PpoRLModule`: a value head (``Linear(d_model, 256) - Tanh - Linear(256, 1)``) on the
  LM's hidden state at each model frame: the output of ``lm.out_norm``, the state from which the
  frame's text token is drawn (position ``f`` of ``LMModel.forward`` has seen model frames
  ``< f`` and the user's audio up to the step that produces frame ``f``). The head reads the state
  **detached**: the value loss trains the head only and never moves the LM, so with
  ``update_streams: text`` only the text policy gradient changes the policy. The head lives on
  the learner only (it is not sent to the env runners).
- :class:`PpoConnector`: per model frame the env's rewards (``rewards[f]`` = the env reward of
  env frame ``f + 1``: dense shaping, plus the episode reward on the last frame), the values
  ``V[f]`` under ``no_grad``, and GAE (:func:`~duplexgym.agents.training.losses.gae`, ``gamma`` and
  ``lam`` of the config; episodes terminate, so no bootstrap) -> ``advantages [B, T]``,
  ``returns [B, T]``.
- :class:`PpoLearner`: :func:`~duplexgym.agents.training.losses.ppo_loss` (clipped surrogate over the
  ``update_streams`` tokens with batch-normalised advantages, ``vf_coef`` times the value loss) plus
  ``kl_coef`` times the same k3 KL to the frozen reference LM that GRPO uses
  (:func:`~duplexgym.agents.training.losses.reference_kl`).
"""

from __future__ import annotations

import numpy as np
import torch
from duplexgym.agents.training.batch import (
    ADVANTAGES,
    LOSS_MASK,
    OLD_LOGP,
    REF_LOGP,
    STEP_REWARDS,
)
from duplexgym.agents.training.connector import GroupBatchConnector
from duplexgym.agents.training.learner import GroupLearner
from duplexgym.agents.training.losses import PpoConfig, exact_reference_kl, gae, ppo_loss, reference_kl
from duplexgym.agents.training.module import MoshiRLModule
from torch import nn

RETURNS = "returns"  # [B, T] GAE value targets
VALUES_OLD = "values_old"  # [B, T] the value head's predictions when the batch was built
VALUE_HIDDEN = 256


class PpoRLModule(MoshiRLModule):
    """:class:`MoshiRLModule` plus a value head on the detached hidden state (learner only)."""

    def setup(self):
        super().setup()
        if not self.inference_only:
            d_model = self.lm.text_linear.in_features
            self.value_head = nn.Sequential(nn.Linear(d_model, VALUE_HIDDEN), nn.Tanh(), nn.Linear(VALUE_HIDDEN, 1))

    def get_non_inference_attributes(self):
        return ["ref_lm", "value_head"]

    def logprobs_and_values(self, batch, full: bool = False):
        """``([B, 9, T]`` teacher-forced log-probs, ``[B, T]`` values): one LM pass, the hidden
        state captured at ``lm.out_norm``; ``full``: the whole distributions too (then a 4-tuple)."""
        captured = []
        handle = self.lm.out_norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            out = self.logprobs(self.lm, batch, full=full)
        finally:
            handle.remove()
        (hidden,) = captured  # [B, T, d_model]: position f decides model frame f's text
        values = self.value_head(hidden.detach().float()).squeeze(-1)
        return (out, values) if not full else (out[0], values, out[1], out[2])

    def _forward_train(self, batch, **kwargs):
        if self.train_settings().get("kl") != "exact":
            logp, values = self.logprobs_and_values(batch)
            return {"logp": logp, "values": values}
        logp, values, text_full, audio_full = self.logprobs_and_values(batch, full=True)
        return {"logp": logp, "values": values, "kl_exact": self.exact_kl(batch, text_full, audio_full)}


class PpoConnector(GroupBatchConnector):
    """:class:`GroupBatchConnector`'s batch plus the per-frame GAE advantages and value targets."""

    def policy_pass(self, module, t: dict, cols: dict) -> torch.Tensor:
        logp, cols[VALUES_OLD] = module.logprobs_and_values(t)
        return logp

    def add_columns(self, module, cols: dict) -> None:
        train = module.train_settings()
        mask = torch.from_numpy(np.arange(cols[STEP_REWARDS].shape[1])[None, :] < cols["seq_lens"][:, None])
        values = cols[VALUES_OLD]
        values = torch.where(mask, values.double(), torch.zeros_like(values, dtype=torch.float64))
        rewards = torch.from_numpy(cols[STEP_REWARDS]).double()
        dones = torch.zeros_like(mask)
        dones[torch.arange(len(mask)), mask.sum(dim=1) - 1] = True  # every episode terminates
        adv, returns = gae(rewards, values, dones, float(train["gamma"]), float(train["lam"]), mask)
        cols[ADVANTAGES] = adv.float().numpy()
        cols[RETURNS] = returns.float().numpy()
        cols[VALUES_OLD] = values.float().numpy()


class PpoLearner(GroupLearner):
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        train = self.module[module_id].unwrapped().train_settings()
        cfg = PpoConfig(clip_eps=train["clip_eps"], vf_coef=train["vf_coef"], update_streams=train["update_streams"])
        mask = batch[LOSS_MASK].bool()
        loss, metrics = ppo_loss(fwd_out["logp"], batch[OLD_LOGP], batch[ADVANTAGES], fwd_out["values"],
                                 batch[RETURNS], mask, cfg)
        if train.get("kl") == "exact":
            kl = exact_reference_kl(fwd_out["kl_exact"], mask, cfg.update_streams)
        else:
            kl = reference_kl(fwd_out["logp"], batch[REF_LOGP], mask, cfg.update_streams, estimator=train.get("kl", "k3"))
        loss = loss + float(train["kl_coef"]) * kl
        metrics["kl"] = kl.detach()
        valid = mask.float()
        metrics["value_mean"] = (fwd_out["values"].detach() * valid).sum() / valid.sum().clamp(min=1)
        metrics["return_mean"] = (batch[RETURNS] * valid).sum() / valid.sum().clamp(min=1)
        self.log_metrics(module_id, batch, loss, metrics, "ppo_loss")
        return loss

