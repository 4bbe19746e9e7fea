# The two commands of the README. Both set up everything on a fresh machine first.
.PHONY: setup run test bench

setup:
	bash scripts/setup.sh

# The main job: build the embedded default corpus (with tiny-Mimi codes), print its statistics,
# then post-train the tiny random Moshi with GRPO on Ray RLlib for a few iterations
# (configs/grpo_tiny.yaml: per-iteration rewards on stdout, runs/grpo-tiny/reward_curve.png).
run: setup
	.venv/bin/duplexgym corpus build synthetic --out runs/default-corpus --codec tiny
	.venv/bin/duplexgym corpus stats runs/default-corpus
	.venv/bin/duplexgym train --config configs/grpo_tiny.yaml --overwrite

test: setup
	.venv/bin/python -m pytest -q --durations=25 tests

bench: setup
	.venv/bin/python benchmarks/corpus_build.py
	.venv/bin/python benchmarks/env_step.py
	.venv/bin/python benchmarks/rollout.py
	.venv/bin/python benchmarks/train.py
	.venv/bin/python benchmarks/weight_sync.py
