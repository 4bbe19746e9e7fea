"""Training on Ray RLlib: the algorithm that drives the GRPO / PPO pieces, Ray start-up, the
training loop, checkpoints and policy export.

- :class:`GroupSamplingAlgorithm`: each iteration samples groups on the env runners
  (:class:`~duplexgym.agents.rllib_grpo.GrpoEnvRunner`), runs one learner update of ``epochs``
  passes, and syncs the weights back; it brings dead env runners back within the iteration.
- :func:`algorithm_config`: the RLlib config of a validated
  :class:`~duplexgym.agents.train_config.TrainConfig` (GRPO: :mod:`.rllib_grpo`; PPO: :mod:`.rllib_ppo`).
- :func:`train_policy`: runs it on a local Ray or the cluster at ``ray_address``.
- :func:`save_training_checkpoint` / :func:`restore_training_checkpoint`: RLlib's checkpoint plus
  the env runners' segment schedules; :func:`export_policy`: the learner's LM as a moshi-loadable
  checkpoint folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from duplexgym.agents.checkpoint import with_lm  # noqa: E402
from duplexgym.agents.rllib_grpo import (  # noqa: E402
    DEFAULT_SAMPLER, ENV_NAME, GrpoConnector, GrpoEnvRunner, GrpoLearner, GrpoRLModule, _make_env)
from duplexgym.agents.train import RUNNER_STATE_NAME, read_checkpoint_meta  # noqa: E402

from ray.rllib.algorithms.algorithm import Algorithm  # noqa: E402
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig  # noqa: E402
from ray.rllib.connectors.learner import NumpyToTensor  # noqa: E402
from ray.rllib.core import DEFAULT_MODULE_ID  # noqa: E402
from ray.rllib.core.rl_module.rl_module import RLModuleSpec  # noqa: E402


class GroupSamplingConfig(AlgorithmConfig):
    """``AlgorithmConfig`` of :class:`GroupSamplingAlgorithm`: its RLModule and Learner by default."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GroupSamplingAlgorithm)

    def get_default_rl_module_spec(self):
        return RLModuleSpec(module_class=GrpoRLModule)

    def get_default_learner_class(self):
        return GrpoLearner


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
        #: ``{worker_index: GrpoEnvRunner.grpo_state()}`` after the last finished sampling (or a restore).
        self.runner_states: dict[int, dict] = {}
        self.last_episodes: list = []  # the last iteration's episodes
        self.last_grpo: dict = {}  # the last iteration's metrics (train_policy's per-iteration row)
        super().setup(config)

    def sampling_remote(self) -> bool:
        """True when remote env runners sample (the local one then has no env)."""
        return self.env_runner_group.num_remote_env_runners() > 0

    def _sample(self) -> tuple[list, int]:
        """Every sampling runner's episodes and metrics (``[(worker_index, episodes, metrics, state)]``,
        sorted by runner) and the number of runners restored on the way."""
        def work(runner):
            episodes = runner.sample()
            return int(runner.worker_index), episodes, runner.get_metrics(), runner.grpo_state()

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
            group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
            for idx in back:
                state = self.runner_states.get(idx)
                if state is not None:  # a runner that died in its first iteration starts fresh, as it did
                    group.foreach_env_runner(lambda r, state=state: r.set_grpo_state(state),
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
        epochs = int(self.config.rl_module_spec.model_config["train"]["epochs"])  # = the modules' train_settings()
        t1 = time.perf_counter()
        learner_results = self.learner_group.update(episodes=episodes, num_epochs=epochs, minibatch_size=None,
                                                    timesteps={"num_env_steps_sampled_lifetime": frames})
        update_s = time.perf_counter() - t1
        self.metrics.aggregate(learner_results, key="learners")
        t2 = time.perf_counter()
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        sync_s = time.perf_counter() - t2
        by_axis: dict[str, list] = {}
        scores: dict[str, list] = {}
        for e in episodes:
            by_axis.setdefault(e.custom_data["axis"], []).append(e.custom_data["reward"])
            if e.custom_data.get("score") is not None:
                scores.setdefault(e.custom_data["axis"], []).append(e.custom_data["score"])
        self.last_episodes = episodes
        total = sample_s + update_s + sync_s
        self.last_grpo = {"episodes": len(episodes), "frames": frames, "sample_s": sample_s, "update_s": update_s,
                          "sync_s": sync_s, "learner_share": update_s / total if total > 0 else float("nan"),
                          "frames_per_s": frames / sample_s if sample_s > 0 else float("nan"),
                          "iteration_frames_per_s": frames / total if total > 0 else float("nan"),
                          "reward_mean": {a: float(np.mean(v)) for a, v in by_axis.items()},
                          "score_mean": {a: float(np.mean(v)) for a, v in scores.items()},
                          "failed_episodes": sum(1 for e in episodes if e.custom_data.get("failed")),
                          "runners_restored": restored,
                          "groups": sorted({e.custom_data["group"] for e in episodes}),
                          "segments": sorted({e.custom_data["segment"] for e in episodes})}
        # Also where RLlib logs (the result dict of ``algo.train()``, and Tune's loggers under Tune):
        # the numbers of the iteration's progress line, under RESULT_KEY.
        self.metrics.log_dict({k: v for k, v in self.last_grpo.items() if k not in ("groups", "segments")},
                              key=RESULT_KEY, window=1)
        return None


def algorithm_config(cfg, segments=None) -> AlgorithmConfig:
    """The ``AlgorithmConfig`` of a validated :class:`~duplexgym.agents.train_config.TrainConfig`:
    GRPO (:class:`GrpoRLModule`, :class:`GrpoLearner`) or PPO (:mod:`duplexgym.agents.rllib_ppo`).
    ``segments``: sample only these segment ids (default: ``cfg.segments``)."""
    from ray.tune.registry import register_env

    from duplexgym.envs.replay import AUDIO_CARD, N_CODEBOOKS, TEXT_CARD

    register_env(ENV_NAME, _make_env)
    n_runners = max(1, int(cfg.env_runners))
    if cfg.segments_per_iteration % n_runners:
        raise ValueError(f"segments_per_iteration={cfg.segments_per_iteration} must split evenly over "
                         f"{n_runners} env runners")
    grpo = {"seed": int(cfg.seed), "groups_per_runner": cfg.segments_per_iteration // n_runners}
    segments = segments if segments is not None else cfg.segments
    env_config = {"corpus": str(cfg.corpus), "axes": list(cfg.axes), "segments": list(segments) if segments else None,
                  "axis_weights": cfg.axis_weights, "rewards": cfg.rewards, "grpo": grpo}
    train = {k: getattr(cfg, k) for k in ("algorithm", "clip_eps", "kl_coef", "update_streams", "advantage", "epochs",
                                          "gamma", "lam", "vf_coef")}
    if cfg.algorithm == "ppo":
        from duplexgym.agents.rllib_ppo import PpoAlgoConfig, PpoConnector, PpoLearner, PpoRLModule

        config_cls, module_cls, learner_cls, connector_cls = PpoAlgoConfig, PpoRLModule, PpoLearner, PpoConnector
    else:
        config_cls, module_cls, learner_cls, connector_cls = GroupSamplingConfig, GrpoRLModule, GrpoLearner, GrpoConnector
    obs_space = spaces.MultiDiscrete([AUDIO_CARD] * N_CODEBOOKS)
    act_space = spaces.MultiDiscrete([TEXT_CARD] + [AUDIO_CARD] * N_CODEBOOKS)
    return (
        config_cls()
        .environment(ENV_NAME, env_config=env_config)
        .framework("torch")
        .env_runners(env_runner_cls=GrpoEnvRunner, num_env_runners=int(cfg.env_runners),
                     num_envs_per_env_runner=int(cfg.group_size), sample_timeout_s=None,
                     gym_env_vectorize_mode="sync")
        .learners(num_learners=0, learner_class=learner_cls,
                  learner_connector=lambda obs, act: [connector_cls(), NumpyToTensor()],
                  add_default_connectors_to_learner_pipeline=False)
        .training(lr=cfg.lr)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module_cls, observation_space=obs_space,
                                               action_space=act_space,
                                               model_config={**DEFAULT_SAMPLER, "model": cfg.model, "train": train}))
        .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=100,
                         delay_between_env_runner_restarts_s=1.0)
        .debugging(seed=int(cfg.seed))
    )


def start_ray(address: str | None = None, temp_dir: str | os.PathLike | None = None) -> bool:
    """Start a local Ray (``address`` None) or join the cluster at ``address``; False if Ray was
    already running in this process (then nothing is started)."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"NO_TORCH_COMPILE": "1", "OMP_WAIT_POLICY": "PASSIVE", "RAY_AUTH_MODE": "disabled"}}
    if address is not None:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        return True
    temp = Path(temp_dir or Path("/tmp") / f"duplexgym-ray-{os.getpid()}")
    temp.mkdir(parents=True, exist_ok=True)
    ray.init(_temp_dir=str(temp), include_dashboard=False, num_cpus=max(2, os.cpu_count() or 1), log_to_driver=False,
             runtime_env=runtime_env)
    return True


def train_policy(cfg, on_iteration=None, resume: str | os.PathLike | None = None, on_start=None,
                 ray_temp_dir: str | os.PathLike | None = None, segments=None) -> list[dict]:
    """Run ``cfg`` (a validated :class:`~duplexgym.agents.train_config.TrainConfig`) on Ray: a local
    one, or the cluster at ``cfg.ray_address``. Returns per-iteration metrics (reward and axis-score
    means per axis, loss, kl, frames/s, ...); ``on_iteration(algo, metrics)`` is called after each.

    ``cfg.iterations`` counts from the start of training: with ``resume`` (a folder written by
    :func:`save_training_checkpoint`) the algorithm (weights, Adam state, the runners' segment
    schedule) is restored and iterations ``k .. iterations - 1`` run, ``k`` the checkpoint's
    finished iterations. ``on_start(algo, k)`` is called once the algorithm is built (and restored)."""
    import ray

    started = start_ray(cfg.ray_address, ray_temp_dir)
    algo = None
    out = []
    try:
        algo = algorithm_config(cfg, segments).build_algo()
        start = restore_training_checkpoint(algo, resume) if resume is not None else 0
        if on_start is not None:
            on_start(algo, start)
        for i in range(start, cfg.iterations):
            t0 = time.perf_counter()
            result = algo.train()
            learner = result.get("learners", {}).get(DEFAULT_MODULE_ID, {})
            m = dict(algo.last_grpo)
            m.update(iteration=i, wall_s=time.perf_counter() - t0,
                     **{k: _num(learner.get(k)) for k in LEARNER_METRICS})
            out.append(m)
            if on_iteration is not None:
                on_iteration(algo, m)
    finally:
        if algo is not None:
            algo.stop()
        if started:
            ray.shutdown()
    return out


#: Learner metrics copied into each iteration's row (NaN when the algorithm has none, e.g. value_loss for GRPO).
LEARNER_METRICS = ("loss", "kl", "policy_loss", "value_loss", "clip_fraction", "ratio_mean", "approx_kl", "tokens",
                   "nonfinite_frames", "adv_abs_mean", "sampler_logp_gap", "value_mean",
                   "return_mean")


def _num(x) -> float:
    if x is None:
        return float("nan")
    if hasattr(x, "peek"):
        x = x.peek()
    return float(x)


def text_weights(module) -> dict[str, np.ndarray]:
    """Copies of an RLModule's (or LM's) text weights, to check that updates and syncs happened."""
    lm = getattr(module, "lm", module)
    return {n: p.detach().cpu().numpy().copy() for n, p in lm.named_parameters()
            if n in ("text_emb.weight", "text_linear.weight")}


def runner_text_weights(algo) -> list[dict[str, np.ndarray]]:
    """:func:`text_weights` of the LM each env runner's MoshiAgent samples with (remote runners,
    else the local one); asserts the agent streams with the runner's RLModule LM."""

    def read(runner):
        module = runner._module()
        if runner._agent is not None:
            assert runner._agent.lm is module.lm, "the sampler must stream with the RLModule's LM"
        return text_weights(module)

    return _sampling_runners(algo, read)


def learner_text_weights(algo) -> dict[str, np.ndarray]:
    """:func:`text_weights` of the (local) learner's LM."""
    return text_weights(algo.learner_group._learner.module[DEFAULT_MODULE_ID])


# ------------------------------------------------------------------------------------ checkpoints


def _sampling_runners(algo, fn):
    """``fn`` on every env runner that samples: the remote ones, else the local one."""
    return algo.env_runner_group.foreach_env_runner(fn, local_env_runner=not algo.sampling_remote())


def save_training_checkpoint(algo, path: str | os.PathLike, iterations_done: int, extra: dict | None = None) -> Path:
    """``algo.save_to_path(path)`` (learner weights, reference LM, Adam state, runner states) plus
    ``grpo_runners.json``: ``iterations_done`` and every sampling runner's segment schedule
    (:meth:`GrpoEnvRunner.grpo_state`; remote runners' states are not in RLlib's checkpoint)."""
    import json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    algo.save_to_path(str(path))
    runners = _sampling_runners(algo, lambda r: r.grpo_state())
    (path / RUNNER_STATE_NAME).write_text(json.dumps(
        {"iterations_done": int(iterations_done), "runners": runners, **(extra or {})}, indent=1) + "\n")
    return path


def restore_training_checkpoint(algo, path: str | os.PathLike) -> int:
    """Restore ``algo`` from :func:`save_training_checkpoint`'s folder; returns the iterations done."""
    meta = read_checkpoint_meta(path)
    states = {int(st["worker_index"]): st for st in meta["runners"]}
    algo.restore_from_path(str(Path(path).resolve()))
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)

    def apply(runner, states=states):
        state = states.get(int(runner.worker_index))
        if state is None:
            raise ValueError(f"resume: the checkpoint holds no segment schedule for env runner {runner.worker_index} "
                             f"(it has {sorted(states)}); resume with the same env_runners")
        runner.set_grpo_state(state)
        return True

    if len(states) != len(_sampling_runners(algo, lambda r: r.worker_index)):
        raise ValueError(f"resume: the checkpoint has {len(states)} env runner state(s); this run samples on "
                         f"{max(1, algo.env_runner_group.num_remote_env_runners())}; resume with the same env_runners")
    _sampling_runners(algo, apply)
    algo.runner_states.update(states)
    return int(meta["iterations_done"])


def learner_lm(algo):
    """The (local) learner's trained LM."""
    return algo.learner_group._learner.module[DEFAULT_MODULE_ID].lm


def export_policy(algo, out_dir: str | os.PathLike) -> Path:
    """The learner's LM as a moshi-loadable checkpoint folder (Kyutai layout, with the trained model's
    Mimi and text tokenizer): ``make_agent("moshi:" + out_dir, env)`` and ``duplexgym eval --agent
    moshi:DIR`` load it."""
    from duplexgym.agents.checkpoint import save_checkpoint

    module = algo.learner_group._learner.module[DEFAULT_MODULE_ID]
    models = with_lm(module.model_source(), module.lm)
    return save_checkpoint(models.lm, models.mimi, models.text_tokenizer, out_dir, models.lm_kwargs)


def learner_optimizer_state(algo) -> dict:
    """The learner's optimizer state (numpy), as RLlib checkpoints it."""
    return algo.learner_group._learner._get_optimizer_state()
