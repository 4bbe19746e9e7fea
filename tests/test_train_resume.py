"""`duplexgym train`: the exported policy (out/policy, moshi-loadable) and checkpoint/resume."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from duplexgym.agents.training.config import load_train_config

ENV = {**os.environ, "NO_TORCH_COMPILE": "1", "OMP_WAIT_POLICY": "PASSIVE", "RAY_AUTH_MODE": "disabled"}


def _cfg(corpus, out, **kw):
    raw = {"algorithm": "grpo", "corpus": str(corpus), "model": "tiny", "out": str(out), "group_size": 2,
           "segments_per_iteration": 1, "iterations": 1, "lr": 1.0e-3, "kl_coef": 0.05, "clip_eps": 0.2,
           "axes": ["turn"], "env_runners": 0, "seed": 0, **kw}
    return load_train_config(raw)


def _lm_state(algo) -> dict:
    from duplexgym.agents.training.inspection import learner_lm

    return {k: v.detach().cpu().clone() for k, v in learner_lm(algo).state_dict().items()}


def _optim_state(algo) -> dict:
    from duplexgym.agents.training.inspection import learner_optimizer_state

    return copy.deepcopy(learner_optimizer_state(algo))


def _assert_equal_tree(a, b, where="optimizer"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(a), sorted(b) if isinstance(b, dict) else b)
        for k in a:
            _assert_equal_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, (np.ndarray, torch.Tensor, np.generic)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
    else:
        assert a == b, (where, a, b)


def _adam_moments(optim: dict) -> list:
    """(step, exp_avg, exp_avg_sq) of every parameter that has Adam state."""
    (entry,) = optim.values()
    state = entry["state"]["state"]
    return [state[k] for k in sorted(state)]


@pytest.mark.slow
def test_exported_policy_loads_as_a_moshi_agent_and_evaluates(small_corpus, tmp_path):
    from duplexgym.agents.policies import make_agent
    from duplexgym.agents.training.run import run_training

    out = tmp_path / "run"
    final = {}
    summary = run_training(_cfg(small_corpus, out),
                           on_checkpoint=lambda algo, path, done: final.update(lm=_lm_state(algo), done=done))
    assert final["done"] == 1 and (out / "checkpoints" / "iter_0001").is_dir()
    policy = out / "policy"
    assert summary["files"]["policy"] == str(policy)
    assert {"model.safetensors", "config.json"} <= {p.name for p in policy.iterdir()}

    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(small_corpus))
    agent = make_agent(f"moshi:{policy}", env)
    try:
        loaded = agent.lm.state_dict()
        assert set(loaded) == set(final["lm"])
        for k, v in final["lm"].items():
            assert torch.equal(loaded[k].cpu().to(v.dtype), v), k
        obs, info = env.reset(seed=0)
        agent.reset(info)
        done, n = False, 0
        while not done:
            obs, _, term, trunc, info = env.step(agent.act(obs))
            done, n = term or trunc, n + 1
        assert n > 0 and "reward_terms" in info
    finally:
        agent.close()

    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "eval", "--corpus", str(small_corpus), "--agent",
                           f"moshi:{policy}", "--obs-mode", "codes", "--action-mode", "tokens", "--per-axis", "1",
                           "--json"], env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("env_runners", [0, 1], ids=["driver-sampling", "remote-runner"])
def test_resume_restores_weights_adam_and_the_segment_schedule(small_corpus, tmp_path, env_runners):
    from duplexgym.agents.training.run import run_training

    saved = {}

    def on_checkpoint(algo, path, done):
        saved[done] = {"path": path, "lm": _lm_state(algo), "optim": _optim_state(algo)}

    # the driver-sampling run also uses AdamW with a cosine schedule: its state and step count come back too
    optim = {} if env_runners else {"optimizer": {"name": "adamw", "betas": [0.9, 0.95], "weight_decay": 0.1,
                                                  "schedule": "cosine", "min_lr": 1.0e-4}}
    full = run_training(_cfg(small_corpus, tmp_path / "full", iterations=2, checkpoint_interval=1,
                             env_runners=env_runners, **optim),
                        on_checkpoint=on_checkpoint)
    assert sorted(saved) == [1, 2]
    assert saved[1]["path"] == tmp_path / "full" / "checkpoints" / "iter_0001"
    assert {p.name for p in saved[1]["path"].iterdir()} == {"checkpoint.json", "module.safetensors", "optimizer.safetensors"}

    started = {}

    def on_start(algo, done):
        learner = algo.learner_group._learner
        started.update(done=done, lm=_lm_state(algo), optim=_optim_state(algo), steps=learner.gradient_steps,
                       kind=type(next(iter(learner._named_optimizers.values()))))

    ended = {}
    resumed = run_training(_cfg(small_corpus, tmp_path / "resumed", iterations=2, env_runners=env_runners, **optim),
                           resume=saved[1]["path"],
                           on_start=on_start, on_checkpoint=lambda algo, path, done: ended.update({done: _lm_state(algo)}))
    assert started["done"] == 1
    # the resumed run starts with the checkpoint's LM weights ...
    assert set(started["lm"]) == set(saved[1]["lm"])
    for k, v in saved[1]["lm"].items():
        assert torch.equal(started["lm"][k], v), k
    assert any(not torch.equal(saved[1]["lm"][k], saved[2]["lm"][k]) for k in saved[1]["lm"])  # training moved them
    # ... and its Adam state: step counts and both moments
    moments = _adam_moments(started["optim"])
    assert moments and all(float(np.asarray(m["step"])) == 1.0 for m in moments)
    _assert_equal_tree(saved[1]["optim"], started["optim"])
    assert started["steps"] == 1  # the schedule goes on from the checkpoint's step
    assert started["kind"] is (torch.optim.Adam if env_runners else torch.optim.AdamW)

    # iteration 2 (index 1) replays the uninterrupted run's segment schedule
    assert [r["iteration"] for r in resumed["iterations"]] == [1]
    a, b = full["iterations"][1], resumed["iterations"][0]
    assert b["segments"] == a["segments"] and b["groups"] == a["groups"]
    assert b["groups"] != full["iterations"][0]["groups"]
    # same weights, same episode seeds: the same rollouts
    assert b["reward_mean"] == a["reward_mean"]
    # the resumed run's final weights equal the uninterrupted run's
    assert (tmp_path / "resumed" / "checkpoints" / "iter_0002").is_dir() and sorted(ended) == [2]
    for k, v in saved[2]["lm"].items():
        torch.testing.assert_close(ended[2][k], v, rtol=0, atol=1e-6)


def test_resume_mistakes_exit_2_before_ray(small_corpus, tmp_path):
    import yaml

    cfg = _cfg(small_corpus, tmp_path / "out", iterations=2).to_dict()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    fake = tmp_path / "ckpt"
    fake.mkdir()
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "train", "--config", str(path), "--resume",
                           str(fake)], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "resume:" in proc.stderr and "not a training checkpoint" in proc.stderr
    for name in ("module.safetensors", "optimizer.safetensors"):
        (fake / name).write_bytes(b"")
    meta = {"format": "duplexgym-training-checkpoint", "version": 1, "runners": []}
    (fake / "checkpoint.json").write_text(json.dumps({**meta, "iterations_done": 2, "config": cfg}))
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "train", "--config", str(path), "--resume",
                           str(fake)], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "leaves nothing to train" in proc.stderr
    (fake / "checkpoint.json").write_text(json.dumps({**meta, "iterations_done": 1, "config": {**cfg, "group_size": 4}}))
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "train", "--config", str(path), "--resume",
                           str(fake)], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "resume: group_size" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr


@pytest.mark.slow
def test_training_continues_from_an_exported_policy_checkpoint(small_corpus, tmp_path):
    """model: a checkpoint folder (here the policy/ of a first run): policy and reference start from
    its weights, and a checkpoint whose Mimi did not make the corpus' codes is refused before Ray."""
    import shutil

    from duplexgym.agents.training.config import TrainConfigError
    from duplexgym.agents.training.run import run_training
    from safetensors.torch import load_file, save_file

    first = run_training(_cfg(small_corpus, tmp_path / "first", iterations=1))
    policy = Path(first["files"]["policy"])
    saved = load_file(str(policy / "model.safetensors"))
    started = {}

    def on_start(algo, done):
        from ray.rllib.core import DEFAULT_MODULE_ID

        module = algo.learner_group._learner.module[DEFAULT_MODULE_ID]
        started.update(lm=_lm_state(algo), ref={k: v.clone() for k, v in module.ref_lm.state_dict().items()})

    second = run_training(_cfg(small_corpus, tmp_path / "second", iterations=1, model=str(policy)), on_start=on_start)
    for name, weights in (("policy", started["lm"]), ("reference", started["ref"])):
        assert set(weights) == set(saved), name
        for k, v in saved.items():
            assert torch.equal(weights[k], v), (name, k)
    assert np.isfinite(second["iterations"][0]["loss"])
    assert (tmp_path / "second" / "policy" / "model.safetensors").is_file()

    # the same LM with another Mimi: its codes are not the corpus' codes
    other = tmp_path / "other-mimi"
    shutil.copytree(policy, other)
    mimi_file = next(p for p in other.iterdir() if p.name.startswith("mimi") and p.suffix == ".safetensors")
    mimi = load_file(str(mimi_file))
    key = next(k for k, v in mimi.items() if v.is_floating_point())
    mimi[key] = mimi[key] + 0.01
    save_file(mimi, str(mimi_file))
    with pytest.raises(TrainConfigError, match=r"model: the Mimi of .* is codec .*, but the corpus .* holds codes of"):
        _cfg(small_corpus, tmp_path / "third", model=str(other))
