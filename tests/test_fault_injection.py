"""Fault injection: kill -9 at random points of a corpus build and of training, a full disk during
both. After each, the rerun (or ``--resume``) ends exactly where an uninterrupted run ends: the same
manifest byte for byte, every training iteration once in ``metrics.jsonl`` and in TensorBoard, and no
Ray process or session folder of the killed run left behind."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

BUILD = ["corpus", "build", "synthetic", "--dialogues", "4", "--codec", "tiny", "--quiet", "--per-axis", "50"]


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duplexgym.cli", *args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 600), **kw)


def tree_digest(root: Path) -> dict:
    """What a build produced: the manifest's bytes and the digest of every segment file."""
    out = {"manifest": (root / "manifest.jsonl").read_bytes()}
    for sub in ("audio", "codes"):
        for f in sorted((root / sub).iterdir()):
            out[f"{sub}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "corpus"
    t0 = time.monotonic()
    proc = cli(*BUILD, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tree_digest(out), time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_during_a_build_then_the_same_command_gives_the_same_corpus(tmp_path, reference_build, seed):
    reference, seconds = reference_build
    out = tmp_path / "corpus"
    rng = random.Random(seed)
    kills, longest = 0, seconds
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-m", "duplexgym.cli", *BUILD, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=rng.uniform(2.0, max(2.5, longest)) if kills < 3 else 600)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: nothing gets to clean up
            proc.wait()
            kills += 1
            continue
        if kills:
            break
        # finished before the first kill (a warm build beat the drawn delay): start over, sooner
        shutil.rmtree(out)
        longest /= 2
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert kills >= 1
    assert tree_digest(out) == reference  # byte for byte what the uninterrupted build wrote


def _train_config(corpus, out: Path, **kw) -> dict:
    return {"corpus": str(corpus), "out": str(out), "group_size": 2, "segments_per_iteration": 1, "iterations": 4,
            "lr": 1.0e-3, "axes": ["turn"], "seed": 0, "checkpoint_interval": 1, **kw}


def _events(run: Path, tag: str) -> list[int]:
    """Steps of ``tag`` in the run's TensorBoard logs, as TensorBoard reads them (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _ray_results() -> set[str]:
    folder = Path.home() / "ray_results"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.mark.slow
def test_kill_9_of_the_training_driver_then_resume_repeats_and_loses_no_iteration(small_corpus, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_train_config(small_corpus, out, env_runners=1)))
    from duplexgym.agents.training.ray_reaper import ray_processes

    results_before = _ray_results()
    proc = subprocess.Popen([sys.executable, "-m", "duplexgym.cli", "train", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill after the third iteration's row, before its checkpoint or after
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    (session,) = Path(tempfile.gettempdir()).glob(f"duplexgym-ray-*/session_*_{proc.pid}")
    ray_folder = session.parent
    assert ray_processes(str(ray_folder), "", {os.getpid()})  # the run's Ray is up
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows_then = [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]
    assert rows_then[:3] == [0, 1, 2]
    deadline = time.monotonic() + 30  # the watcher stops the killed run's Ray and removes its folder
    while time.monotonic() < deadline and (ray_folder.exists() or ray_processes(str(ray_folder), "", {os.getpid()})):
        time.sleep(0.5)
    assert not ray_folder.exists(), "Ray's session folder was left"
    assert not ray_processes(str(ray_folder), "", {os.getpid()}), "Ray processes of the killed run are still running"
    assert _ray_results() == results_before  # no empty ~/ray_results/<time> folder either

    last = sorted((out / "checkpoints").glob("iter_*"))[-1]
    done = int(last.name.split("_")[1])
    assert done in (2, 3)
    resumed = cli("train", "--config", str(config), "--resume", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()] == [0, 1, 2, 3]
    assert _events(out, "reward/turn") == [1, 2, 3, 4]  # each iteration once in TensorBoard too


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill a disk ({proc.stderr.strip()})")


def _grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@pytest.mark.slow
def test_a_full_disk_during_a_build_is_a_clear_error_and_the_rerun_resumes(tmp_path, reference_build):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "6m")
    try:
        out = disk / "corpus"
        proc = cli(*BUILD, "--out", str(out))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "No space left on device" in proc.stderr and "rerun the same command" in proc.stderr
        _grow(disk, "400m")
        proc = cli(*BUILD, "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert tree_digest(out) == reference_build[0]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_during_training_keeps_the_finished_checkpoints_and_resumes(small_corpus, tmp_path):
    probe = tmp_path / "probe"
    proc = cli("train", "--config", _write(tmp_path / "probe.yaml", _train_config(small_corpus, probe, iterations=1)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = sum(f.stat().st_size for f in probe.rglob("*") if f.is_file())  # a run folder with one checkpoint
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, f"{int(one * 1.5)}")  # room for one checkpoint, not for two
    try:
        out = disk / "run"
        config = _write(tmp_path / "run.yaml", _train_config(small_corpus, out, iterations=3))
        proc = cli("train", "--config", config)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "No space left on device" in proc.stderr and "--resume" in proc.stderr
        checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert checkpoints == ["iter_0001"]  # the finished one is whole, no half-written one is left
        assert {p.name for p in (out / "checkpoints" / "iter_0001").iterdir()} == {
            "checkpoint.json", "module.safetensors", "optimizer.safetensors"}
        _grow(disk, f"{int(one * 6)}")
        proc = cli("train", "--config", config, "--resume", str(out / "checkpoints" / "iter_0001"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
        assert _events(out, "reward/turn") == [1, 2, 3]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _write(path: Path, raw: dict) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)
