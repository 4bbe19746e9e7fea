"""benchmarks/scale.py runs on CPU at the ~100M smoke size (what benchmarks/gpu_check.sh runs at full
size on a GPU), and its report holds every part with sane values."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scale_benchmark_smoke_on_cpu(small_corpus, tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--size", "smoke", "--device", "cpu",
                           "--frames", "6", "--groups", "2", "--corpus", str(small_corpus), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["size"] == "smoke" and 0.08e9 < r["lm_params"] < 0.15e9 and 70e6 < r["mimi_params"] < 90e6
    assert [x["G"] for x in r["rollout"]] == [2]
    for x in r["rollout"]:
        assert x["frames"] == 6 and x["env_frames_per_s"] > 0 and x["lmgen_frames_per_s"] > 0
        assert 0.0 <= x["outside_model_share"] < 1.0
    assert r["audio_reward"]["decode_s"] > 0 and 0 < r["audio_reward"]["share_of_rollout"] < 1
    lora, full, ckpt = r["learner"]
    assert lora["trainable"] == "lora" and full["trainable"] == "all" and not lora["oom"] and not full["oom"]
    assert ckpt["trainable"] == "lora" and ckpt["checkpointing"] and not lora["checkpointing"] and not ckpt["oom"]
    assert ckpt["trained_params"] == lora["trained_params"] and ckpt["step_s"] > 0
    assert 0 < lora["trained_params"] < full["trained_params"] / 20
    assert r["sync"]["tensors"] > 0 and r["sync"]["direct_s"] > 0
    assert 0 < r["iteration"]["model_share"] <= 1
    assert "learner lora:" in proc.stdout and "iteration (G=2, lora)" in proc.stdout
