"""Tiny Moshi inside the env: frames/s at batch 1, 4 and 16, and the share of time outside the model.

B envs (``gymnasium.vector.SyncVectorEnv``, same-step autoreset) step in lockstep with one
``MoshiAgent("tiny", batch_size=B)`` (LMGen + Mimi streaming, per-row reset when an episode ends).
Model time = time inside ``act_batch``; everything else (env steps, resets, end-of-episode reward
scoring, agent resets) is "outside". Frames/s counts agent frames (B per step); real time is
12.5 frames/s per stream. One core (torch and BLAS threads = 1), wall time, median of runs.

Usage: python benchmarks/rollout.py [--steps N] [--batches 1 4 16]
Prints a table and writes benchmarks/results/rollout.json.
"""

from __future__ import annotations

from duplexgym.runtime import configure_runtime

configure_runtime(threads=1)  # one core, before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402
from duplexgym.agents.policies.base import row_infos  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "rollout.json"
FRAME_RATE = 12.5


def corpus_dir() -> Path:
    from duplexgym.corpora.build import BuildOptions, build_corpus

    out = Path(tempfile.gettempdir()) / "duplexgym-bench-corpus-8-tiny"
    build_corpus("synthetic", out, BuildOptions(dialogues=8, codec="tiny"))
    return out


def run(corpus: Path, batch: int, steps: int, seed: int = 0) -> dict:
    from duplexgym.agents.policies.moshi_agent import MoshiAgent

    def make():
        return gym.make("duplexgym/Interactivity-v0", corpus=str(corpus))

    envs = gym.vector.SyncVectorEnv([make] * batch, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    agent = MoshiAgent("tiny", batch_size=batch, seed=seed)
    try:
        obs, infos = envs.reset(seed=seed)
        agent.reset_batch(row_infos(infos, batch))
        for _ in range(3):  # warm-up steps outside the timing
            obs, _, term, _, infos = envs.step(agent.act_batch(obs))
            if term.any():
                agent.reset_batch(row_infos(infos, batch), mask=term)
        model = 0.0
        episodes = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            a0 = time.perf_counter()
            actions = agent.act_batch(obs)
            model += time.perf_counter() - a0
            obs, _, term, _, infos = envs.step(actions)
            if term.any():
                episodes += int(term.sum())
                agent.reset_batch(row_infos(infos, batch), mask=term)
        total = time.perf_counter() - t0
    finally:
        agent.close()
        envs.close()
    fps = batch * steps / total
    return {"batch": batch, "steps": steps, "episodes_finished": episodes, "wall_s": total, "model_s": model,
            "frames_per_s": fps, "x_real_time": fps / FRAME_RATE, "outside_share": 1.0 - model / total,
            "ms_per_step": 1000 * total / steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    corpus = corpus_dir()
    rows = []
    for batch in args.batches:
        runs = [run(corpus, batch, args.steps, seed=r) for r in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float)}
        rows.append({**runs[0], **med, "episodes_finished": sum(r["episodes_finished"] for r in runs)})
    print(f"tiny Moshi in duplexgym/Interactivity-v0 (codes/tokens), {args.steps} steps, median of {args.repeats}, one core")
    print(f"{'batch':>5}{'ms/step':>10}{'frames/s':>11}{'x real time':>13}{'outside model':>15}{'episodes':>10}")
    for r in rows:
        print(f"{r['batch']:>5}{r['ms_per_step']:>10.2f}{r['frames_per_s']:>11.1f}{r['x_real_time']:>13.2f}"
              f"{100 * r['outside_share']:>14.1f}%{r['episodes_finished']:>10}")
    big = [r for r in rows if r["batch"] == 16]
    if big:
        verdict = "met" if big[0]["outside_share"] < 0.05 else "MISSED"
        print(f"target: time outside the model < 5% at batch 16: {100 * big[0]['outside_share']:.1f}% ({verdict})")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
