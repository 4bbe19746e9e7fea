"""GRPO on Ray RLlib: frames/s through a whole training iteration with 0, 1 and 2 remote env
runners, and the learner's share of the iteration.

One iteration = sample the groups on the env runners (0: in the driver) + one learner update
(teacher-forced old/reference log-probs, loss, backward, Adam) + the weight sync to the runners.
Frames/s = agent frames sampled in the iteration / the iteration's wall time; learner share =
update time / iteration time. Same corpus, config and seed for every runner count (the tiny
Moshi, G = 4, 2 groups per iteration: one group per runner with 2 runners), the first iteration
(warm-up: Ray actors start, caches fill) left out, median of the rest. The baseline is 0 runners
(sampling in the driver process), in the same run. Real time is 12.5 frames/s per stream.

Usage: python benchmarks/train.py [--iterations N] [--runners 0 1 2]
Prints a table and writes benchmarks/results/train.json.
"""

from __future__ import annotations

from duplexgym.runtime import configure_runtime

configure_runtime()  # before torch and Ray are imported

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "train.json"
FRAME_RATE = 12.5


def corpus_dir() -> Path:
    from duplexgym.corpora.build import BuildOptions, build_corpus

    out = Path(tempfile.gettempdir()) / "duplexgym-bench-corpus-8-tiny"
    build_corpus("synthetic", out, BuildOptions(dialogues=8, codec="tiny"))  # resumable: reuses a finished build
    return out


def run(corpus: Path, runners: int, iterations: int, group_size: int, groups: int) -> dict:
    from duplexgym.agents.training.config import load_train_config
    from duplexgym.agents.training.driver import train_policy

    cfg = load_train_config({"corpus": str(corpus), "out": str(Path(tempfile.gettempdir()) / "duplexgym-bench-train"),
                             "axes": ["turn"], "group_size": group_size, "segments_per_iteration": groups,
                             "iterations": iterations, "env_runners": runners, "seed": 0, "lr": 1.0e-4})
    rows = train_policy(cfg)[1:]  # the first iteration is the warm-up
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("wall_s", "sample_s", "update_s", "sync_s", "frames", "learner_share")}
    med["frames_per_s"] = statistics.median(r["frames"] / r["wall_s"] for r in rows)
    med["sampling_frames_per_s"] = statistics.median(r["frames_per_s"] for r in rows)
    return {"env_runners": runners, "iterations_timed": len(rows), **med}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6, help="iterations per runner count (the first is warm-up)")
    parser.add_argument("--runners", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--groups", type=int, default=2, help="groups (segments) per iteration")
    args = parser.parse_args()
    corpus = corpus_dir()
    rows = [run(corpus, n, args.iterations, args.group_size, args.groups) for n in args.runners]
    base = next((r for r in rows if r["env_runners"] == 0), rows[0])
    for r in rows:
        r["speedup_vs_driver_sampling"] = r["frames_per_s"] / base["frames_per_s"]
    print(f"GRPO iteration, tiny Moshi, G={args.group_size}, {args.groups} groups/iteration, median of "
          f"{args.iterations - 1} iterations after a warm-up, {os.cpu_count()} CPU cores")
    print(f"{'runners':>7}{'iter s':>8}{'frames':>8}{'frames/s':>10}{'x real time':>13}{'sample s':>10}"
          f"{'learner s':>11}{'sync s':>8}{'learner share':>15}{'vs 0':>7}")
    for r in rows:
        print(f"{r['env_runners']:>7}{r['wall_s']:>8.2f}{r['frames']:>8.0f}{r['frames_per_s']:>10.1f}"
              f"{r['frames_per_s'] / FRAME_RATE:>13.1f}{r['sample_s']:>10.2f}{r['update_s']:>11.2f}{r['sync_s']:>8.3f}"
              f"{100 * r['learner_share']:>14.1f}%{r['speedup_vs_driver_sampling']:>7.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"group_size": args.group_size, "groups": args.groups, "cpu_count": os.cpu_count(),
                                   "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
