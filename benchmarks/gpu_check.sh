#!/usr/bin/env bash
# The GPU checks of duplexgym in one run (< 8 min on one H200): the CUDA tests, then
# benchmarks/scale.py at full size (Moshi 7B's architecture and the full Mimi, random weights).
# Prepare here first: bash benchmarks/gpu_wheels.sh; then, through the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "runs/gpu-corpus"], timeout_s=540)
# Results land in $OUT (the device tool's folder that comes back) or benchmarks/results/.
# Dry run on a CPU machine, in a Python with only the GPU image's packages (torch, numpy, scipy,
# pyyaml, safetensors, sentencepiece, einops, huggingface-hub, pytest, ...) plus the wheels:
#   DUPLEXGYM_TEST_DEVICE=cpu SCALE_ARGS="--size smoke --device cpu --frames 8 --groups 1 2" \
#     PY=/path/to/that/python WHEELS=DIR_OF_ITS_WHEELS OUT=/tmp/gpuout bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NO_TORCH_COMPILE=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ]; then  # the wheels of gpu_wheels.sh, without their own needs (all named there)
  rm -rf /tmp/site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# duplexgym from this tree, as pyproject's package-dir maps it (no build step)
rm -rf /tmp/dg && mkdir -p /tmp/dg/duplexgym
cp -r duplexgym/. /tmp/dg/duplexgym/
for sub in corpora envs rewards agents; do ln -s "$PWD/$sub" "/tmp/dg/duplexgym/$sub"; done
export PYTHONPATH=/tmp/dg:$PWD:${PYTHONPATH}
export DUPLEXGYM_SMALL_CORPUS=${DUPLEXGYM_SMALL_CORPUS:-$PWD/runs/gpu-corpus}
"$PY" -P - <<'PYEOF' 2>&1 | tee "$OUT/gpu_env.txt"
import torch, duplexgym, moshi, silero_vad, gymnasium
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("duplexgym", duplexgym.__version__, "moshi", moshi.__version__, "gymnasium", gymnasium.__version__)
PYEOF
status=0
timeout 200 "$PY" -P -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/gpu_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
SCALE_ARGS=${SCALE_ARGS:---size full --device cuda}  # a CPU dry run: --size smoke --device cpu --frames 8
# shellcheck disable=SC2086
timeout 280 "$PY" -P benchmarks/scale.py $SCALE_ARGS --corpus "$DUPLEXGYM_SMALL_CORPUS" \
  --out "$OUT/scale.json" 2>&1 | tee "$OUT/scale.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=$((status + 2))
echo "gpu_check status $status (1: CUDA tests failed, 2: scale.py failed, 3: both)"
exit $status
