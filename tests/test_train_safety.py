"""Training runs lose nothing and run nothing they were handed: ``--resume`` never opens a pickle
unless told to trust it, a rerun never truncates a run, an interrupt names the command that resumes
(issue 10, cases 3 and 6)."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from duplexgym.agents.training.checkpoints import CheckpointFormatError, check_resume
from duplexgym.agents.training.config import load_train_config
from duplexgym.agents.training.run import RunFolderError, run_training


def _raw(corpus, out, **kw) -> dict:
    return {"algorithm": "grpo", "corpus": str(corpus), "model": "tiny", "out": str(out), "group_size": 2,
            "segments_per_iteration": 1, "iterations": 1, "lr": 1.0e-3, "axes": ["turn"], "seed": 0, **kw}


class Trap:
    """Unpickling this writes ``path``: proof that a pickle was opened."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).write_text, ("opened",))


def plant_pickles(folder: Path, marker: Path) -> None:
    for name in ("algorithm_state.pkl", "class_and_ctor_args.pkl"):
        (folder / name).write_bytes(pickle.dumps(Trap(marker)))


@pytest.mark.slow
def test_resume_reads_no_pickle_and_refuses_rllib_checkpoints_without_trust(small_corpus, tmp_path):
    first = run_training(load_train_config(_raw(small_corpus, tmp_path / "a", iterations=1)))
    ckpt = Path(first["files"]["checkpoints"][0])
    marker = tmp_path / "OPENED"
    plant_pickles(ckpt, marker)
    resumed = run_training(load_train_config(_raw(small_corpus, tmp_path / "b", iterations=2)), resume=ckpt)
    assert [r["iteration"] for r in resumed["iterations"]] == [1] and not marker.exists()

    rllib_style = tmp_path / "rllib-style"
    rllib_style.mkdir()
    (rllib_style / "rllib_checkpoint.json").write_text("{}")
    (rllib_style / "grpo_runners.json").write_text(json.dumps({"iterations_done": 1, "runners": []}))
    plant_pickles(rllib_style, marker)
    cfg = load_train_config(_raw(small_corpus, tmp_path / "c", iterations=2))
    with pytest.raises(CheckpointFormatError, match="RLlib's own format.*--trust-pickled-checkpoint"):
        check_resume(cfg, rllib_style)
    assert check_resume(cfg, rllib_style, trust_pickled=True) == 1  # the metadata is JSON: still nothing unpickled
    assert not marker.exists()


@pytest.mark.slow
def test_a_rerun_never_truncates_and_an_interrupt_names_the_resume_command(small_corpus, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_raw(small_corpus, out, iterations=30, checkpoint_interval=1)))
    cmd = [sys.executable, "-m", "duplexgym.cli", "train", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (out / "checkpoints" / "iter_0002").is_dir():
        time.sleep(0.5)
    assert (out / "checkpoints" / "iter_0002").is_dir(), "no checkpoint within 240 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "keeps every finished iteration; resume it with `duplexgym train --config" in err
    last = sorted((out / "checkpoints").glob("iter_*"))[-1]
    assert f"--resume {last}`" in err
    rows = (out / "metrics.jsonl").read_text()
    assert len(rows.splitlines()) >= 2

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # the same command again
    assert again.returncode == 2 and "already holds a training run" in again.stderr
    assert f"--resume {last}" in again.stderr and "--overwrite" in again.stderr
    assert (out / "metrics.jsonl").read_text() == rows  # not truncated
    with pytest.raises(RunFolderError, match="already holds a training run"):
        run_training(load_train_config(_raw(small_corpus, out, iterations=1)))

    (out / "mine.txt").write_text("keep")
    summary = run_training(load_train_config(_raw(small_corpus, out, iterations=1)), overwrite=True)
    assert len(summary["iterations"]) == 1 and len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter_0001"]
    assert (out / "mine.txt").read_text() == "keep"  # overwrite removes the run's outputs only
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob(f"duplexgym-ray-{proc.pid}"))


def test_a_planted_format_key_cannot_ask_for_unpickling(tmp_path):
    """Whether a checkpoint is in RLlib's pickled format is decided from the folder, never from a key
    in its JSON: a duplexgym checkpoint whose checkpoint.json says ``rllib_format: true`` is still
    read as safetensors (restore then never reaches RLlib's unpickling restore)."""
    from duplexgym.agents.training import checkpoints as ck

    folder = tmp_path / "iter_0001"
    folder.mkdir()
    (folder / ck.META_NAME).write_text(json.dumps({"format": ck.FORMAT, "version": ck.FORMAT_VERSION,
                                                   "iterations_done": 1, "runners": [], "rllib_format": True}))
    for name in (ck.MODULE_WEIGHTS_NAME, ck.OPTIMIZER_STATE_NAME):
        (folder / name).write_bytes(b"")
    assert ck.read_checkpoint_meta(folder)["rllib_format"] is False
