"""The RLlib algorithm of every trainer here: group sampling on the env runners, one learner update,
weight sync; and the ``AlgorithmConfig`` of a validated train config.

- :class:`GroupSamplingAlgorithm`: each iteration samples groups on the env runners
  (:class:`~duplexgym.agents.training.runner.GroupEnvRunner`), runs one learner update of ``epochs``
  passes, and syncs the weights back; it brings dead env runners back within the iteration.
- :func:`algorithm_config`: the RLlib config of a :class:`~duplexgym.agents.training.config.TrainConfig`:
  GRPO (:class:`~duplexgym.agents.training.learner.GrpoLearner`) or PPO (:mod:`.ppo`), both on the
  same module, runner and connector.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from duplexgym.agents.training.batch import episode_advantages
from duplexgym.agents.training.checkpoints import on_learners
from duplexgym.agents.training.connector import GroupBatchConnector, episode_record
from duplexgym.agents.training.learner import GrpoLearner
from duplexgym.agents.training.module import MoshiRLModule
from duplexgym.agents.training.ppo import PpoConnector, PpoLearner, PpoRLModule
from duplexgym.agents.training.runner import ENV_NAME, GroupEnvRunner, make_env
from gymnasium import spaces
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.connectors.learner import NumpyToTensor
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from duplexgym.constants import (
    MIMI_CARDINALITY,
    MIMI_CODEBOOKS,
    SAMPLER_DEFAULTS,
    TEXT_CARD,
)


class GroupSamplingConfig(AlgorithmConfig):
    """``AlgorithmConfig`` of :class:`GroupSamplingAlgorithm`: its RLModule and Learner by default."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GroupSamplingAlgorithm)
        #: The folder of RLlib's per-run logger (None: Trainable's own, a new ~/ray_results/<time>).
        self.run_logdir = None

    def get_default_rl_module_spec(self):
        return RLModuleSpec(module_class=MoshiRLModule)

    def get_default_learner_class(self):
        return GrpoLearner


class PpoAlgoConfig(GroupSamplingConfig):
    """``AlgorithmConfig`` whose defaults are the PPO module and learner."""

    def get_default_rl_module_spec(self):
        return RLModuleSpec(module_class=PpoRLModule)

    def get_default_learner_class(self):
        return PpoLearner


#: ``algorithm`` of the train config -> (AlgorithmConfig class, RLModule, Learner, learner connector).
ALGORITHMS = {
    "grpo": (GroupSamplingConfig, MoshiRLModule, GrpoLearner, GroupBatchConnector),
    "ppo": (PpoAlgoConfig, PpoRLModule, PpoLearner, PpoConnector),
}


logger = logging.getLogger(__name__)

#: Key of this package's per-iteration numbers (reward means per axis, frames/s, ...) in RLlib's results.
RESULT_KEY = "duplexgym"
#: How long a training iteration waits for Ray to bring a dead env runner back (seconds).
RUNNER_RESTORE_TIMEOUT_S = 180.0


class GroupSamplingAlgorithm(Algorithm):
    """Samples groups on the env runners, one learner update, weight sync (GRPO and PPO alike).

    Fault tolerance: with remote env runners (``restart_failed_env_runners``), a runner that dies
    loses only its share of the current iteration's rollouts: Ray restarts the actor, the
    iteration waits for it, gives it the learner's weights and the segment schedule the dead one
    had when the iteration began, and samples that share again. No finished iteration is lost,
    and the restarted runner replays the segments the dead one would have."""

    @classmethod
    def get_default_config(cls):
        return GroupSamplingConfig()

    def setup(self, config):
        #: ``{worker_index: GroupEnvRunner.sampler_state()}`` after the last finished sampling (or a restore).
        self.runner_states: dict[int, dict] = {}
        self.last_episodes: list = []  # the last iteration's episodes
        self.last_iteration: dict = {}  # the last iteration's metrics (train_policy's per-iteration row)
        super().setup(config)

    def _updates(self, episodes: list, train: dict) -> list[tuple[list, int]]:
        """The learner updates of one iteration: ``(episodes, epochs)`` pairs. Without
        ``minibatch_size``, one update of ``epochs`` passes over every episode; with it, each epoch
        visits the episodes in a seeded order (``seed``, iteration) in minibatches of that many, one
        gradient step each."""
        size = train.get("minibatch_size")
        if not size:
            return [(episodes, int(train["epochs"]))]
        rng = np.random.default_rng([int(train["seed"]), 3, int(self.iteration)])
        out = []
        for _ in range(int(train["epochs"])):
            order = rng.permutation(len(episodes))
            out += [([episodes[i] for i in order[lo:lo + size]], 1) for lo in range(0, len(order), size)]
        return out

    def _learner_data(self, episodes: list) -> dict:
        """The data of one learner-group update. One learner: the episodes. Several: one object
        ref per learner holding its share (RLlib would otherwise slice episodes by length, splitting
        groups and dropping ``custom_data``: RLLIB.md), from :func:`deal_groups`."""
        n = len(self.learner_group)  # remote learners (0: the local one)
        if n <= 1:
            return {"episodes": episodes}
        import ray

        return {"episodes_refs": [ray.put(share) for share in deal_groups(episodes, n)]}

    def _setup_logdir(self):
        """Trainable makes a fresh ``~/ray_results/<time>`` folder for RLlib's logger, which nothing
        here writes to: use the config's ``run_logdir`` instead (the Ray session's scratch folder,
        removed with it), when it names one."""
        logdir = getattr(self.config, "run_logdir", None)
        if logdir is None:
            return super()._setup_logdir()
        os.makedirs(logdir, exist_ok=True)
        self._logdir = logdir

    def sync_weights(self) -> str:
        """The learner's weights into the sampling runners. A learner and a runner in this process
        (``num_learners: 0``, ``env_runners: 0``): the trained tensors are copied in place, tensor to
        tensor on their devices (``"direct"``); otherwise :meth:`push_weights` (``"broadcast"`` or
        ``"numpy"``)."""
        group = self.env_runner_group
        if self.learner_group.is_local and not self.sampling_remote() and group.local_env_runner is not None:
            source = self.learner_group._learner.module[DEFAULT_MODULE_ID].unwrapped()
            target = group.local_env_runner._module()
            source.copy_weights_to(target)
            return "direct"
        return self.push_weights()

    def push_weights(self) -> str:
        """The learners' weights into the env runners: with ``weight_sync: broadcast`` and remote
        runners, over their own process group (:mod:`~duplexgym.agents.training.weight_broadcast`,
        ``"broadcast"``); otherwise, or when a broadcast fails (reported), RLlib's sync through the
        object store (``"numpy"``). Sharded learners gather the whole tensors first, every one of
        them (a collective)."""
        train = self.config.rl_module_spec.model_config["train"]
        gather = train.get("sharding") == "fsdp"
        if gather:
            on_learners(self, lambda learner: learner.gather_sync_state())
        if train.get("weight_sync") == "broadcast" and self.sampling_remote():
            if getattr(self, "_broadcaster", None) is None:
                from duplexgym.agents.training.weight_broadcast import WeightBroadcaster

                self._broadcaster = WeightBroadcaster(train["weight_backend"])
            try:
                self._broadcaster.push(self)
                return "broadcast"
            except ValueError:  # the runners' tensors do not fit the learner's: no other sync would do
                raise
            except Exception as e:  # a runner died mid-sync, a timeout: the object store this time
                logger.warning("weight sync: the broadcast failed (%s: %s); this sync goes through Ray's "
                               "object store, the next builds a new group", type(e).__name__, e)
                if gather:
                    on_learners(self, lambda learner: learner.gather_sync_state())
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        return "numpy"

    def sampling_remote(self) -> bool:
        """True when remote env runners sample (the local one then has no env)."""
        return self.env_runner_group.num_remote_env_runners() > 0

    def _sample(self) -> tuple[list, int]:
        """Every sampling runner's episodes and metrics (``[(worker_index, episodes, metrics, state)]``,
        sorted by runner) and the number of runners restored on the way."""
        def work(runner):
            episodes = runner.sample()
            return int(runner.worker_index), episodes, runner.get_metrics(), runner.sampler_state()

        if not self.sampling_remote():
            return [work(self.env_runner)], 0
        group = self.env_runner_group
        expected = set(range(1, group.num_remote_env_runners() + 1))
        results = group.foreach_env_runner(work, local_env_runner=False)
        restored_total = 0
        deadline = time.monotonic() + RUNNER_RESTORE_TIMEOUT_S
        while missing := sorted(expected - {r[0] for r in results}):
            if time.monotonic() > deadline:
                raise RuntimeError(f"env runner(s) {missing} died and did not come back within "
                                   f"{RUNNER_RESTORE_TIMEOUT_S:.0f} s; the finished iterations are kept "
                                   "(resume from the last checkpoint)")
            restored = self.restore_env_runners(group)
            back = sorted(set(restored) & set(missing))
            if not back:
                time.sleep(1.0)
                continue
            restored_total += len(back)
            self.push_weights()
            for idx in back:
                state = self.runner_states.get(idx)
                if state is not None:  # a runner that died in its first iteration starts fresh, as it did
                    group.foreach_env_runner(lambda r, state=state: r.set_sampler_state(state),
                                             remote_worker_ids=[idx], local_env_runner=False)
            results += group.foreach_env_runner(work, remote_worker_ids=back, local_env_runner=False)
        return sorted(results, key=lambda r: r[0]), restored_total

    def training_step(self):
        t0 = time.perf_counter()
        results, restored = self._sample()
        sample_s = time.perf_counter() - t0
        self.runner_states.update({idx: state for idx, _, _, state in results})
        episodes = [e for _, eps, _, _ in results for e in eps]
        self.metrics.aggregate([m for _, _, m, _ in results], key="env_runners")
        frames = sum(len(e) for e in episodes)
        train = self.config.rl_module_spec.model_config["train"]  # = the modules' train_settings()
        t1 = time.perf_counter()
        if train["algorithm"] == "grpo":  # over the whole iteration's groups, before any split
            for e, adv in zip(episodes, episode_advantages([episode_record(e) for e in episodes], train["advantage"])):
                e.custom_data["advantage"] = adv
        steps = 0
        for part, epochs in self._updates(episodes, train):
            learner_results = self.learner_group.update(**self._learner_data(part), num_epochs=epochs,
                                                        minibatch_size=None,
                                                        timesteps={"num_env_steps_sampled_lifetime": frames})
            self.metrics.aggregate(learner_results, key="learners")
            steps += epochs
        update_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        sync_path = self.sync_weights()
        sync_s = time.perf_counter() - t2
        by_axis: dict[str, list] = {}
        scores: dict[str, list] = {}
        for e in episodes:
            by_axis.setdefault(e.custom_data["axis"], []).append(e.custom_data["reward"])
            if e.custom_data.get("score") is not None:
                scores.setdefault(e.custom_data["axis"], []).append(e.custom_data["score"])
        self.last_episodes = episodes
        total = sample_s + update_s + sync_s
        # the reward's share: scoring seconds (decode, silero, terms) over the runners, which sample in parallel
        reward_s = float(sum(e.custom_data.get("reward_s", 0.0) for e in episodes))
        parallel = max(1, int(self.config.num_env_runners))
        self.last_iteration = {"episodes": len(episodes), "frames": frames, "sample_s": sample_s, "update_s": update_s,
                          "sync_s": sync_s, "sync": sync_path,
                          "learner_share": update_s / total if total > 0 else float("nan"),
                          "reward_s": reward_s, "reward_share": reward_s / parallel / total if total > 0 else float("nan"),
                          "frames_per_s": frames / sample_s if sample_s > 0 else float("nan"),
                          "iteration_frames_per_s": frames / total if total > 0 else float("nan"),
                          "reward_mean": {a: float(np.mean(v)) for a, v in by_axis.items()},
                          "score_mean": {a: float(np.mean(v)) for a, v in scores.items()},
                          "failed_episodes": sum(1 for e in episodes if e.custom_data.get("failed")),
                          "gradient_steps": on_learners(self, lambda learner: learner.gradient_steps)[0],
                          "runners_restored": restored,
                          "groups": sorted({e.custom_data["group"] for e in episodes}),
                          "segments": sorted({e.custom_data["segment"] for e in episodes})}
        # Also where RLlib logs (the result dict of ``algo.train()``, and Tune's loggers under Tune):
        # the numbers of the iteration's progress line, under RESULT_KEY.
        self.metrics.log_dict({k: v for k, v in self.last_iteration.items() if k not in ("groups", "segments", "sync")},
                              key=RESULT_KEY, window=1)
        return None


def deal_groups(episodes: list, n: int) -> list[list]:
    """``episodes`` dealt to ``n`` learners, equally many each (every learner takes one gradient step
    per update: DDP steps them together). Whole groups (``custom_data["group"]``) go to one learner
    as long as the groups divide evenly among them; otherwise (minibatches smaller than a group) the
    episodes are dealt in order. Advantages were computed over whole groups before this split."""
    if len(episodes) % n or len(episodes) < n:
        raise ValueError(f"{len(episodes)} episodes do not split evenly over {n} learners")
    groups: dict = {}
    for e in episodes:
        groups.setdefault(e.custom_data["group"], []).append(e)
    if len({len(g) for g in groups.values()}) == 1 and len(groups) % n == 0:
        shares: list[list] = [[] for _ in range(n)]
        for i, group in enumerate(groups.values()):
            shares[i % n].extend(group)
        return shares
    per, flat = len(episodes) // n, [e for g in groups.values() for e in g]
    return [flat[i * per:(i + 1) * per] for i in range(n)]


def algorithm_config(cfg, segments=None, logdir: str | os.PathLike | None = None) -> AlgorithmConfig:
    """The ``AlgorithmConfig`` of a validated :class:`~duplexgym.agents.training.config.TrainConfig`:
    GRPO or PPO (:data:`ALGORITHMS`).
    ``segments``: sample only these segment ids (default: ``cfg.segments``). ``logdir``: the folder
    of RLlib's per-run logger (default: a new one under ``~/ray_results``)."""
    from ray.tune.registry import register_env

    register_env(ENV_NAME, make_env)
    n_runners = max(1, int(cfg.env_runners))
    if cfg.segments_per_iteration % n_runners:
        raise ValueError(f"segments_per_iteration={cfg.segments_per_iteration} must split evenly over "
                         f"{n_runners} env runners")
    sampling = {"seed": int(cfg.seed), "groups_per_runner": cfg.segments_per_iteration // n_runners,
                "iterations": int(cfg.iterations), "context": cfg.context.model_dump(),
                "reward_decode": cfg.reward_decode}
    segments = segments if segments is not None else cfg.segments
    env_config = {"corpus": str(cfg.corpus), "axes": list(cfg.axes), "segments": list(segments) if segments else None,
                  "axis_weights": cfg.axis_weights, "rewards": cfg.rewards, "sampling": sampling,
                  "lead_in_s": cfg.lead_in_silence_s, "env": cfg.env,
                  "conversation": None if cfg.conversation is None else cfg.conversation.env_kwargs()}
    train = {k: getattr(cfg, k) for k in ("algorithm", "clip_eps", "kl_coef", "update_streams", "advantage", "epochs",
                                          "gamma", "lam", "vf_coef", "kl", "normalization", "minibatch_size",
                                          "lr", "seed")}
    train["optimizer"] = cfg.optimizer.model_dump()
    train["trainable"], train["dtype"] = cfg.trainable, cfg.dtype
    train["activation_checkpointing"] = cfg.activation_checkpointing
    train["sharding"] = cfg.sharding
    train["weight_sync"], train["weight_backend"] = cfg.weight_sync_path(), cfg.weight_backend()
    train["lora"] = None if cfg.lora is None else cfg.lora.model_dump()
    train["total_steps"] = cfg.iterations * cfg.gradient_steps_per_iteration
    config_cls, module_cls, learner_cls, connector_cls = ALGORITHMS[cfg.algorithm]
    obs_space = spaces.MultiDiscrete([MIMI_CARDINALITY] * MIMI_CODEBOOKS)
    act_space = spaces.MultiDiscrete([TEXT_CARD] + [MIMI_CARDINALITY] * MIMI_CODEBOOKS)
    config = (
        config_cls()
        .environment(ENV_NAME, env_config=env_config)
        # DDP: parameters outside the loss (the depformer under text-only updates, a frozen part)
        # get no gradient, which DDP must be told about
        .framework("torch", torch_ddp_kwargs={"find_unused_parameters": True})
        .env_runners(env_runner_cls=GroupEnvRunner, num_env_runners=int(cfg.env_runners),
                     num_envs_per_env_runner=int(cfg.group_size), sample_timeout_s=None,
                     gym_env_vectorize_mode="sync", num_gpus_per_env_runner=float(cfg.gpus_per_env_runner))
        .learners(num_learners=int(cfg.num_learners), num_gpus_per_learner=float(cfg.gpus_per_learner),
                  num_cpus_per_learner=1, learner_class=learner_cls,
                  learner_connector=lambda obs, act: [connector_cls(), NumpyToTensor()],
                  add_default_connectors_to_learner_pipeline=False)
        .training(lr=cfg.lr, grad_clip=cfg.optimizer.grad_clip, grad_clip_by="global_norm")
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module_cls, observation_space=obs_space,
                                               action_space=act_space,
                                               model_config={**SAMPLER_DEFAULTS, **cfg.sampling.model_dump(),
                                                             "model": cfg.model, "train": train,
                                                             "prompt": None if cfg.prompt is None
                                                             else cfg.prompt.model_dump()}))
        .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=100,
                         delay_between_env_runner_restarts_s=1.0)
        .reporting(log_gradients=True)  # the global gradient norm of each step (metrics: grad_norm)
        .debugging(seed=int(cfg.seed))
    )
    config.run_logdir = None if logdir is None else str(logdir)
    return config

