"""Running a validated train config on Ray: start (or join) Ray, build the algorithm, restore a
checkpoint, run the iterations, stop cleanly.

Ray's files stay out of the user's way: a local Ray keeps its session files in a temporary folder
this process makes, removed when the driver exits, even when it is killed (:class:`RaySession`);
RLlib's per-run logger folder (by default a new ``~/ray_results/<time>``, which nothing here writes
to) lives inside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from duplexgym.agents.training.algorithm import algorithm_config
from duplexgym.agents.training.checkpoints import restore_training_checkpoint

from duplexgym.runtime import ray_runtime_env

#: Learner metrics copied into each iteration's row (NaN when the algorithm has none, e.g. value_loss for GRPO).
LEARNER_METRICS = ("loss", "kl", "policy_loss", "value_loss", "clip_fraction", "ratio_mean", "approx_kl", "tokens",
                   "nonfinite_frames", "adv_abs_mean", "sampler_logp_gap", "value_mean",
                   "return_mean", "grad_norm", "lr")
#: Where RLlib logs a metric under another name (the global gradient norm, before clipping).
LEARNER_ALIASES = {"grad_norm": "gradients_default_optimizer_global_norm"}
#: RLlib's id of the single module every algorithm here trains.
MODULE_ID = "default_policy"


class RaySession:
    """A local Ray started for one run (``address`` None) or a connection to the cluster at
    ``address``; nothing is started when Ray already runs in this process. Use as a context
    manager.

    A local Ray keeps its session files in a folder this session makes (under ``temp_dir``, default
    the system's temporary folder; short, since Ray's socket paths must stay below 108 characters),
    and a watcher process (:mod:`.ray_reaper`) stops the node's processes and removes that folder
    when the driver exits in any way, killed included. ``scratch``: a folder inside it for files
    that need a place but are not kept (RLlib's per-run logger folder)."""

    def __init__(self, address: str | None = None, temp_dir: str | os.PathLike | None = None):
        self.address, self.temp_dir = address, temp_dir
        self.started = False
        self.folder: Path | None = None
        self._reaper: subprocess.Popen | None = None

    @property
    def scratch(self) -> Path | None:
        return None if self.folder is None else self.folder / "scratch"

    def __enter__(self) -> "RaySession":
        import ray

        if ray.is_initialized():
            return self
        if self.address is not None:
            ray.init(address=self.address, log_to_driver=False, runtime_env=ray_runtime_env())
            self.started = True
            return self
        parent = Path(self.temp_dir) if self.temp_dir else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="duplexgym-ray-", dir=parent))
        ray.init(_temp_dir=str(self.folder), include_dashboard=False, num_cpus=max(2, os.cpu_count() or 1),
                 log_to_driver=False, runtime_env=ray_runtime_env())
        self.started = True
        node_id = ray.get_runtime_context().get_node_id()
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "duplexgym.agents.training.ray_reaper", str(self.folder), node_id,
             str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc) -> None:
        import ray

        if self.started:
            ray.shutdown()
        if self._reaper is not None:  # it stops what ray.shutdown left and removes the folder
            self._reaper.stdin.close()
            try:
                self._reaper.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._reaper.kill()
        elif self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def train_policy(cfg, on_iteration=None, resume: str | os.PathLike | None = None, on_start=None,
                 ray_temp_dir: str | os.PathLike | None = None, segments=None,
                 trust_pickled_checkpoint: bool = False) -> list[dict]:
    """Run ``cfg`` (a validated :class:`~duplexgym.agents.training.config.TrainConfig`) on Ray: a local
    one, or the cluster at ``cfg.ray_address``. Returns per-iteration metrics (reward and axis-score
    means per axis, loss, kl, frames/s, ...); ``on_iteration(algo, metrics)`` is called after each.

    ``cfg.iterations`` counts from the start of training: with ``resume`` (a folder written by
    :func:`~duplexgym.agents.training.checkpoints.save_training_checkpoint`) the algorithm (weights,
    optimizer state, the runners' segment schedule) is restored and iterations ``k .. iterations - 1``
    run, ``k`` the checkpoint's finished iterations. ``trust_pickled_checkpoint``: also accept a
    checkpoint in RLlib's own (pickled) format. ``on_start(algo, k)`` is called once the algorithm is
    built (and restored)."""
    out = []
    with RaySession(cfg.ray_address, ray_temp_dir) as session:
        algo = None
        own_logdir = None
        if session.scratch is None:  # Ray was running already, or a cluster: a folder of our own
            own_logdir = Path(tempfile.mkdtemp(prefix="duplexgym-rllib-"))
        try:
            algo = algorithm_config(cfg, segments, logdir=session.scratch or own_logdir).build_algo()
            start = 0
            if resume is not None:
                start = restore_training_checkpoint(algo, resume, trust_pickled=trust_pickled_checkpoint)
            if on_start is not None:
                on_start(algo, start)
            for i in range(start, cfg.iterations):
                t0 = time.perf_counter()
                result = algo.train()
                learner = result.get("learners", {}).get(MODULE_ID, {})
                m = dict(algo.last_iteration)
                m.update(iteration=i, wall_s=time.perf_counter() - t0,
                         **{k: _num(learner.get(k, learner.get(LEARNER_ALIASES.get(k, k)))) for k in LEARNER_METRICS})
                out.append(m)
                if on_iteration is not None:
                    on_iteration(algo, m)
        finally:
            if algo is not None:
                algo.stop()
            if own_logdir is not None:
                shutil.rmtree(own_logdir, ignore_errors=True)
    return out


def _num(x) -> float:
    if x is None:
        return float("nan")
    if hasattr(x, "peek"):
        x = x.peek()
    return float(x)
