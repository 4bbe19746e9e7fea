"""`duplexgym train --config`: config mistakes exit 2 naming the field before Ray starts; a real run."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from duplexgym.agents.training.config import TrainConfigError, load_train_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NO_TORCH_COMPILE": "1", "OMP_WAIT_POLICY": "PASSIVE", "RAY_AUTH_MODE": "disabled"}


def _base(corpus, out) -> dict:
    return {"algorithm": "grpo", "corpus": str(corpus), "model": "tiny", "out": str(out), "group_size": 2,
            "segments_per_iteration": 1, "iterations": 2, "lr": 1.0e-3, "kl_coef": 0.05, "clip_eps": 0.2,
            "axes": ["turn"], "env_runners": 0, "seed": 0}


def _bad_checkpoint(tmp: Path) -> Path:
    """A checkpoint folder with Mimi weights and tokenizer but no LM weights (nothing is loaded)."""
    folder = tmp / "ckpt"
    folder.mkdir()
    (folder / "tokenizer-e351c8d8-checkpoint125.safetensors").write_bytes(b"")
    (folder / "tokenizer_spm_32k_3.model").write_bytes(b"")
    return folder


# (name, change to the base config, strings the error names)
CASES = [
    ("typo_field", {"grup_size": 4}, ["grup_size: unknown field", "did you mean 'group_size'"]),
    ("unknown_axis", {"axes": ["turn", "turns"]},
     ["axes[1]: unknown axis 'turns'; known: pause, turn, backchannel, interruption"]),
    ("missing_corpus", {"corpus": "MISSING"}, ["corpus:", "not a built corpus"]),
    ("missing_checkpoint_file", {"model": "CKPT"}, ["model:", "missing LM weights: model.safetensors"]),
    ("ppo_field_in_grpo", {"gamma": 0.99}, ["gamma: only used by algorithm ppo; this config trains grpo"]),
    ("grpo_field_in_ppo", {"algorithm": "ppo", "advantage": "episode"},
     ["advantage: only used by algorithm grpo; this config trains ppo"]),
    ("lam_range", {"algorithm": "ppo", "lam": 1.5}, ["lam: must be <= 1, got 1.5"]),
    ("update_streams", {"update_streams": "speech"}, ["update_streams: unknown value 'speech'; known: text, audio, all"]),
    ("advantage", {"advantage": "gae"}, ["advantage: unknown value 'gae'; known: episode, reward_to_go"]),
    ("epochs_zero", {"epochs": 0}, ["epochs: must be >= 1, got 0"]),
    ("unknown_algorithm", {"algorithm": "dqn"}, ["algorithm: unknown value 'dqn'; known: grpo, ppo"]),
    ("group_size_str", {"group_size": "four"}, ["group_size: expected an integer, got 'four'"]),
    ("group_size_bool", {"group_size": True}, ["group_size: expected an integer, got True"]),
    ("group_size_small", {"group_size": 1}, ["group_size: must be >= 2, got 1"]),
    ("iterations_float", {"iterations": 2.5}, ["iterations: expected an integer, got 2.5"]),
    ("lr_text", {"lr": "1e-4"}, ["lr: expected a number, got '1e-4'", "write 1.0e-4"]),
    ("lr_zero", {"lr": 0}, ["lr: must be > 0"]),
    ("clip_range", {"clip_eps": 1.5}, ["clip_eps: must be < 1"]),
    ("axes_type", {"axes": 3}, ["axes: expected a non-empty list"]),
    ("uneven_runners", {"env_runners": 2, "segments_per_iteration": 3}, ["segments_per_iteration: 3 must split"]),
    ("axis_weights_all_zero", {"axis_weights": {"turn": 0.0}}, ["axis_weights: every weight is 0"]),
    ("axis_weights_not_in_axes", {"axis_weights": {"pause": 1.0}}, ["axis_weights.pause: axis is not in axes (turn)"]),
    ("axis_weights_negative", {"axis_weights": {"turn": -1.0}}, ["axis_weights.turn: must be >= 0"]),
    ("axis_weights_bad_axis", {"axis_weights": {"turns": 2.0}}, ["axis_weights.turns: unknown axis"]),
    ("rewards_invalid", {"rewards": {"terms": {"turn": {"wieght": 1}}}}, ["rewards: terms.turn.wieght: unknown field 'wieght'"]),
    ("rewards_vad_param", {"rewards": {"activity": {"reader": "vad", "vad": {"threshold": 2.0}}}},
     ["rewards: activity.vad.threshold: must be < 1"]),
    ("rewards_paper_param", {"rewards": {"terms": {"paper_turn": {"params": {"min_utterance_s": -1}}}}},
     ["rewards: terms.paper_turn.params.min_utterance_s"]),
    ("optimizer_typo", {"optimizer": {"nmae": "adamw"}}, ["optimizer.nmae: unknown field", "did you mean 'name'"]),
    ("optimizer_schedule", {"optimizer": {"schedule": "step"}}, ["optimizer.schedule: unknown value 'step'"]),
    ("context_without_max", {"context": {"p": 0.5}}, ["context.max_s: must be > 0 when context.p > 0"]),
    ("context_p_range", {"context": {"p": 1.5, "max_s": 30.0}}, ["context.p: must be <= 1"]),
    ("minibatch_audio", {"minibatch_size": 1, "update_streams": "all"}, ["minibatch_size: minibatches need"]),
    ("kl_unknown", {"kl": "k2"}, ["kl: unknown value 'k2'; known: k3, k1, exact"]),
    ("rewards_missing_file", {"rewards": "NO_SUCH_SPEC.yaml"}, ["rewards:", "NO_SUCH_SPEC.yaml: cannot read reward spec"]),
    ("checkpoint_interval", {"checkpoint_interval": -1}, ["checkpoint_interval", "-1"]),
    ("ray_address", {"ray_address": "head node"}, ["ray_address: expected null or an address string"]),
    ("ray_address_no_port", {"ray_address": "head"}, ["ray_address: 'head' is not a Ray address"]),
    ("missing_out", {"out": None}, ["out: required field is missing"]),
    ("lr_nan", {"lr": float("nan")}, ["lr: expected a finite number, got nan"]),
    ("kl_coef_inf", {"kl_coef": float("inf")}, ["kl_coef: expected a finite number, got inf"]),
    ("axis_weight_nan", {"axis_weights": {"turn": float("nan")}}, ["axis_weights.turn: expected a finite number"]),
    ("rewards_weight_nan", {"rewards": {"terms": {"turn": {"weight": float("nan")}}}},
     ["rewards: terms.turn.weight: expected a finite number, got nan"]),
    ("rewards_dense_inf", {"rewards": {"dense": {"weight": float("-inf")}}},
     ["rewards: dense.weight: expected a finite number, got -inf"]),
    ("tracking_typo", {"tracking": {"mlfow": {}}}, ["tracking.mlfow: unknown field", "mlflow"]),
    ("tracking_type", {"tracking": {"wandb": 3}}, ["tracking.wandb: expected a mapping, got 3"]),
]

_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    import ray_guard  # noqa: F401  (makes any Ray import fail loudly)
    from duplexgym import cli
    results = {}
    for name, path in json.loads(sys.argv[1]).items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
            rc = cli.main(["train", "--config", path])
        results[name] = {"rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue(),
                         "ray": any(m == "ray" or m.startswith("ray.") for m in sys.modules)}
    print(json.dumps(results))
""")

# Imported first by the script: importing Ray at all (let alone starting it) raises.
_RAY_GUARD = textwrap.dedent("""
    import importlib.abc, sys
    class _NoRay(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ImportError("test: Ray must not be imported while validating a config")
    sys.meta_path.insert(0, _NoRay())
""")


def test_config_mistakes_exit_2_naming_the_field_without_ray(small_corpus, tmp_path):
    ckpt = _bad_checkpoint(tmp_path)
    paths = {}
    for name, change, _ in CASES:
        cfg = _base(small_corpus, tmp_path / f"out-{name}")
        for key, value in change.items():
            value = {"MISSING": str(tmp_path / "no-such-corpus"), "CKPT": str(ckpt)}.get(value, value) \
                if isinstance(value, str) else value
            if value is None:
                cfg.pop(key)
            else:
                cfg[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        paths[name] = str(path)
    (tmp_path / "ray_guard.py").write_text(_RAY_GUARD)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(paths)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, _, expected in CASES:
        r = results[name]
        assert r["rc"] == 2, (name, r)
        assert r["stderr"].startswith("duplexgym: error: "), (name, r["stderr"])
        for text in expected:
            assert text in r["stderr"], (name, text, r["stderr"])
        assert r["stdout"] == "" and not r["ray"], (name, r)
    # nothing was written for a config that failed
    assert not any((tmp_path / f"out-{name}").exists() for name, _, _ in CASES)


def test_cli_process_exits_2_on_a_bad_config(small_corpus, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**_base(small_corpus, tmp_path / "out"), "axes": ["turns"]}))
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "train", "--config", str(path)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "duplexgym: error: " in proc.stderr and "axes[0]: unknown axis 'turns'" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr


def test_load_resolves_defaults_and_paths(small_corpus, tmp_path):
    cfg = load_train_config({"corpus": str(small_corpus), "out": str(tmp_path / "run")})
    assert cfg.algorithm == "grpo" and cfg.model == "tiny" and cfg.axes == ("turn",) and cfg.checkpoint_interval == 0
    assert Path(cfg.corpus).is_absolute() and Path(cfg.out).is_absolute()
    with pytest.raises(TrainConfigError, match=r"^corpus: required field is missing"):
        load_train_config({"out": "x"})
    with pytest.raises(TrainConfigError, match="a training config is a mapping"):
        load_train_config(["corpus"])


def test_shipped_config_is_valid_when_the_default_corpus_is_built():
    raw = yaml.safe_load((REPO / "configs" / "grpo_tiny.yaml").read_text())
    assert raw["corpus"] == "runs/default-corpus" and raw["model"] == "tiny" and raw["group_size"] == 8
    if not (REPO / "runs" / "default-corpus" / "corpus.json").is_file():
        pytest.skip("runs/default-corpus is not built (make run)")
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        cfg = load_train_config(REPO / "configs" / "grpo_tiny.yaml")
    finally:
        os.chdir(cwd)
    assert cfg.axes == ("pause",) and cfg.out == str(REPO / "runs" / "grpo-tiny")
    assert cfg.rewards["activity"]["reader"] == "text" and cfg.rewards["dense"]["weight"] == 1.0


def _png_size(path: Path) -> tuple[int, int]:
    from matplotlib.image import imread

    pixels = imread(str(path))
    assert pixels.ndim == 3 and len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 10  # not blank
    return pixels.shape[1], pixels.shape[0]


@pytest.mark.slow
def test_two_iteration_run_via_the_cli(small_corpus, tmp_path):
    out = tmp_path / "run"
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(_base(small_corpus, out)))
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "train", "--config", str(path), "--json"],
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert [m["iteration"] for m in summary["iterations"]] == [0, 1]
    assert "iter 1/2" in proc.stderr and "iter 2/2" in proc.stderr  # progress went to stderr

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    for i, m in enumerate(rows):
        assert m["iteration"] == i
        assert isinstance(m["kl"], float) and math.isfinite(m["kl"]) and m["kl"] >= 0
        assert isinstance(m["loss"], float) and math.isfinite(m["loss"])
        assert set(m["reward_mean"]) == {"turn"} and math.isfinite(m["reward_mean"]["turn"])
        assert m["frames_per_s"] > 0 and m["episodes"] == 2
    assert rows == summary["iterations"]

    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["corpus"] == str(Path(small_corpus).resolve()) and written["iterations"] == 2
    assert load_train_config(out / "config.yaml").to_dict() == written  # the resolved config loads again

    width, height = _png_size(out / "reward_curve.png")
    assert width >= 600 and height >= 400
    # TensorBoard event files beside the metrics, and the summary says where the logs are
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    turn = [(e.step, e.value) for e in events.Scalars("reward/turn")]
    assert turn == [(i + 1, pytest.approx(r["reward_mean"]["turn"], rel=1e-6)) for i, r in enumerate(rows)]
    assert [e.step for e in events.Scalars("train/kl")] == [1, 2]
    assert any(line.startswith("TensorBoard: ") and "tensorboard" in line for line in summary["logs"])
