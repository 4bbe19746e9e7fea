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
from duplexgym.agents.training.schedule import learning_rate
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.torch.torch_learner import TorchLearner


def data_parallel_scale(local_count: torch.Tensor) -> float:
    """The factor a learner's loss is scaled by under DDP (``world`` learners, each averaging over
    its ``local_count`` of the batch's ``global_count`` tokens or episodes): ``world * local /
    global``, so DDP's mean of the learners' gradients is the gradient of the whole batch's loss;
    1 for a single learner. The counts are all-reduced (one scalar per step)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return 1.0
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # nccl reduces device tensors only
    total = local_count.detach().to(device=device, dtype=torch.float64, copy=True)
    dist.all_reduce(total)
    return float(dist.get_world_size() * local_count.item() / max(total.item(), 1.0))


class GroupLearner(TorchLearner):
    """What every learner here shares: the optimizer the config names (Adam or AdamW, over the
    trainable parameters only), the learning rate of each gradient step from the schedule
    (:func:`~duplexgym.agents.training.schedule.learning_rate`; ``gradient_steps`` counts the steps,
    and is saved in checkpoints), and the metrics besides the loss terms: frames left out of the
    loss, failed episodes, the mean advantage size, the sampler's log-prob gap, the learning rate.
    With ``sharding: fsdp`` the module is sharded across the learners before the optimizer is built
    (:mod:`~duplexgym.agents.training.sharding`), instead of being wrapped in DDP after."""

    gradient_steps = 0
    _sharding = "ddp"

    def sharding(self) -> str:
        """``ddp`` or ``fsdp`` (the training config's ``sharding``, read when the module is built)."""
        return self._sharding

    def _make_module(self):
        module = super()._make_module()
        self._sharding = module[DEFAULT_MODULE_ID].unwrapped().train_settings().get("sharding") or "ddp"
        if self._sharding == "fsdp":
            from duplexgym.agents.training.sharding import shard_module

            shard_module(module[DEFAULT_MODULE_ID].unwrapped())
        return module

    def build(self) -> None:
        super().build()
        self.gather_sync_state()  # RLlib's setup reads the first learner's state for the first sync

    def _make_modules_ddp_if_necessary(self) -> None:
        if self.sharding() != "fsdp":  # fsdp: sharded in _make_module already
            super()._make_modules_ddp_if_necessary()

    def _get_clip_function(self):
        if self.sharding() != "fsdp":
            return super()._get_clip_function()
        from duplexgym.agents.training.sharding import global_norm_clip

        return global_norm_clip

    def gather_sync_state(self) -> None:
        """Run on every learner before RLlib's weight sync reads the first learner's module state:
        with ``sharding: fsdp`` the sync's tensors are gathered (a collective) and kept for it."""
        if self.sharding() == "fsdp":
            self.module[DEFAULT_MODULE_ID].unwrapped().gather_sync_state()

    # -- weight_sync: broadcast (the first learner sends: weight_broadcast.WeightBroadcaster) ------

    @staticmethod
    def rank() -> int:
        """This learner's rank in the learner group (0 for the driver's only learner)."""
        import torch.distributed as dist

        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def open_weight_group(self, world: int):
        """The first learner: a new broadcast group's store for ``world`` members; its ``(host,
        port)``. The others: None."""
        if self.rank() != 0:
            return None
        from duplexgym.agents.training.weight_broadcast import WeightChannel

        self._weight_channel = None
        self._weight_store, address = WeightChannel.open(world)
        self._weight_world = world
        return address

    def join_weight_group(self, entries: list, backend: str, generation: int) -> None:
        """The first learner joins the group :meth:`open_weight_group` opened (returns once every
        runner has joined) after checking its tensors against the runners' ``entries``."""
        if self.rank() != 0:
            return
        from duplexgym.agents.training.weight_broadcast import WeightChannel, check_fits

        # the whole shapes (a sharded tensor's are), nothing gathered
        check_fits(entries, self.module[DEFAULT_MODULE_ID].unwrapped().sync_state(), "the learner")
        if backend == "nccl":
            torch.cuda.set_device(self._device)
        self._weight_channel = WeightChannel(None, 0, self._weight_world, backend, entries, generation,
                                             store=self._weight_store)

    def broadcast_weights(self) -> int:
        """One sync from the first learner (bytes sent; 0 on the others)."""
        if self.rank() != 0:
            return 0
        return self._weight_channel.send(self.module[DEFAULT_MODULE_ID].unwrapped().sync_tensors())

    def configure_optimizers_for_module(self, module_id, config=None):
        module = self._module[module_id].unwrapped()
        opt = module.train_settings()["optimizer"]
        params = [p for p in self.get_parameters(module) if p.requires_grad]  # not the frozen reference
        cls = torch.optim.AdamW if opt["name"] == "adamw" else torch.optim.Adam
        optimizer = cls(params, lr=float(config.lr), betas=tuple(opt["betas"]), eps=float(opt["eps"]),
                        weight_decay=float(opt["weight_decay"]))
        # no RLlib lr scheduler: apply_gradients sets each step's rate from the schedule
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params, lr_or_lr_schedule=None)

    def current_lr(self, module_id) -> float:
        """The learning rate of the next gradient step."""
        train = self.module[module_id].unwrapped().train_settings()
        opt = train["optimizer"]
        return learning_rate(self.gradient_steps, int(train["total_steps"]), float(train["lr"]), opt["schedule"],
                             int(opt["warmup_steps"]), float(opt["min_lr"]))

    def apply_gradients(self, gradients_dict) -> None:
        for module_id in self.module.keys():
            lr = self.current_lr(module_id)
            for _, optimizer in self.get_optimizers_for_module(module_id):
                for group in optimizer.param_groups:
                    group["lr"] = lr
        super().apply_gradients(gradients_dict)
        self.gradient_steps += 1

    def log_metrics(self, module_id, batch, loss, metrics: dict, loss_name: str) -> None:
        metrics["nonfinite_frames"] = batch[NONFINITE].sum()
        metrics["failed_episodes"] = batch[FAILED_EPISODES].sum()
        metrics["adv_abs_mean"] = batch[ADVANTAGES].abs().mean()
        metrics["sampler_logp_gap"] = batch[SAMPLER_GAP].max()
        metrics["lr"] = self.current_lr(module_id)  # the iteration's row: the mean over its steps
        self.metrics.log_dict({loss_name: loss.item(), "loss": loss.item(), **{k: float(v) for k, v in metrics.items()}},
                              key=module_id, window=1)


class GrpoLearner(GroupLearner):
    """GRPO: the clipped surrogate on group advantages plus the KL to the frozen reference
    (:func:`~duplexgym.agents.training.losses.grpo_loss`)."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        train = self.module[module_id].unwrapped().train_settings()
        cfg = GrpoConfig(group_size=max(2, int(config.num_envs_per_env_runner)), clip_eps=train["clip_eps"],
                         kl_coef=train["kl_coef"], kl_estimator=train["kl"], update_streams=train["update_streams"],
                         normalization=train["normalization"])
        loss, metrics = grpo_loss(fwd_out["logp"], batch[OLD_LOGP], batch[REF_LOGP], batch[ADVANTAGES],
                                  batch[LOSS_MASK].bool(), cfg, kl_exact=fwd_out.get("kl_exact"))
        count = metrics.pop("norm_count")
        self.log_metrics(module_id, batch, loss, metrics, "grpo_loss")
        return loss * data_parallel_scale(count)
