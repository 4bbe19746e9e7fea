"""`ray_address` in the train config: the same job joins a running Ray cluster (a real head node
started with `ray start --head`) instead of starting a local Ray."""

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ENV = {**os.environ, "NO_TORCH_COMPILE": "1", "OMP_WAIT_POLICY": "PASSIVE", "RAY_AUTH_MODE": "disabled"}
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head node in its own processes (as on a cluster); stopped afterwards."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="dgclu", dir="/tmp")  # short: Ray's socket paths have a length limit
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp}",
                    "--include-dashboard=false", "--disable-usage-stats"], env=ENV, check=True, capture_output=True,
                   timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True, timeout=120)


@pytest.mark.slow
def test_train_joins_a_running_cluster_at_ray_address(small_corpus, tmp_path, ray_head):
    out = tmp_path / "run"
    config = {"corpus": str(small_corpus), "out": str(out), "axes": ["turn"], "group_size": 2,
              "segments_per_iteration": 2, "iterations": 1, "env_runners": 1, "seed": 0, "ray_address": ray_head}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "train", "--config", str(path), "--json"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert [m["iteration"] for m in summary["iterations"]] == [0] and summary["iterations"][0]["episodes"] == 4
    assert (out / "policy" / "model.safetensors").is_file()
