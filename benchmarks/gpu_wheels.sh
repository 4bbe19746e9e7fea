#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what benchmarks/gpu_check.sh needs on the GPU machine, which
# reaches no package registry and has Python 3.12 with torch but none of duplexgym's other needs:
#   .whl/             the py3.12 manylinux wheels of the packages the CUDA tests and scale.py import
#   runs/gpu-corpus/  a 4-dialogue synthetic corpus with tiny-Mimi codes (the GPU machine has no flite)
# Both are ignored by git (.git/info/exclude, runs/); name them in the device run's `carry`:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "runs/gpu-corpus"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PY:-.venv/bin/python}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  moshi==0.2.13 gymnasium==1.2.2 farama-notifications==0.0.4 silero-vad==6.2.3 soundfile==0.14.0 \
  cffi==2.1.1 pycparser==3.12 soxr==1.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 mistral-common==1.13.1 pyloudnorm==0.2.0
if [ ! -f runs/gpu-corpus/corpus.json ]; then
  "$PY" -m duplexgym.cli corpus build synthetic --out runs/gpu-corpus --dialogues 4 --codec tiny
fi
du -sh .whl runs/gpu-corpus
