# The two commands of the README. Both set up everything on a fresh machine first.
.PHONY: setup run test bench

OUT ?= runs/default-corpus

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/duplexgym corpus build synthetic --out $(OUT) --codec tiny
	.venv/bin/duplexgym corpus stats $(OUT)

test: setup
	.venv/bin/python -m pytest -q tests

bench: setup
	.venv/bin/python benchmarks/corpus_build.py
	.venv/bin/python benchmarks/env_step.py
	.venv/bin/python benchmarks/rollout.py
