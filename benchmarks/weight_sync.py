"""Weight sync from a learner to remote env runners: ``weight_sync: broadcast`` against RLlib's
object-store sync, same run, same Ray actors, interleaved.

Three Ray actors on this machine: a learner holding fp32 master weights, two env runners holding
the sampler's LM (``--runner-dtype``: bf16 as ``dtype: bf16`` trains, or fp32). One sync each way:

- **object_store** (RLlib's ``sync_weights`` with a remote learner): the learner's state as numpy
  (``ray.rllib.utils.numpy.convert_to_numpy``, bf16 widened to float32 as ``MoshiRLModule.get_state``
  does) returned to the driver, put into the object store once, each runner gets it and loads it
  (``convert_to_torch_tensor`` + ``load_state_dict``, as ``set_state``).
- **broadcast** (:mod:`duplexgym.agents.training.weight_broadcast`): the learner sends its tensors,
  cast to the runners' dtype, in buckets over a gloo group of the three; the runners unpack them
  into their own tensors. Group construction is timed once, apart.

Each sync's wall time from the driver's call to the last runner done, median over ``--reps``;
after each, the runners' tensors are checked equal to the learner's cast to their dtype.
Models: ``tiny`` (the test LM, 10.7M parameters) and ``smoke`` (benchmarks/scale.py's ~100M Moshi
of the full shape), every tensor synced (``trainable: all``).

Usage: python benchmarks/weight_sync.py [--sizes tiny smoke] [--runner-dtype bf16] [--reps 5]
Writes benchmarks/results/weight_sync.json.
"""

from __future__ import annotations

from duplexgym.runtime import configure_runtime

configure_runtime()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "weight_sync.json"
sys.path.insert(0, str(Path(__file__).parent))


def build(size: str, dtype: torch.dtype):
    if size == "tiny":
        from duplexgym.agents.policies.checkpoint import build_tiny_lm

        return build_tiny_lm(dtype=dtype)
    from scale import build_lm

    return build_lm(size, torch.device("cpu"), dtype)


class Holder:
    """An actor holding one LM (``learner``: fp32, perturbed so it differs from the runners')."""

    def __init__(self, size: str, dtype: str, learner: bool):
        torch.set_num_threads(1)
        self.lm = build(size, getattr(torch, dtype))
        if learner:
            with torch.no_grad():
                for p in self.lm.parameters():
                    p.add_(0.01)
        self.state = self.lm.state_dict()
        self.channel = None

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.state.values())

    def manifest(self):
        from duplexgym.agents.training.weight_broadcast import manifest

        return manifest(self.state)

    def open(self, world: int):
        from duplexgym.agents.training.weight_broadcast import WeightChannel

        self.store, address = WeightChannel.open(world)
        return address

    def join(self, address, rank: int, world: int, entries) -> None:
        from duplexgym.agents.training.weight_broadcast import WeightChannel

        self.channel = WeightChannel(address, rank, world, "gloo", entries, 1,
                                     store=self.store if rank == 0 else None)

    def send(self) -> int:
        return self.channel.send(self.state)

    def receive(self) -> int:
        return self.channel.receive(self.state)

    def numpy_state(self):  # RLlib's get_state of MoshiRLModule
        from ray.rllib.utils.numpy import convert_to_numpy

        return convert_to_numpy({k: v.float() if v.dtype == torch.bfloat16 else v for k, v in self.state.items()})

    def load(self, state) -> None:  # RLlib's set_state
        from ray.rllib.utils.torch_utils import convert_to_torch_tensor

        self.lm.load_state_dict(convert_to_torch_tensor(state), strict=False)

    def fingerprint(self, dtype: str) -> list[float]:
        """Per tensor, the sum of the state cast to ``dtype`` (float64 sum): what equality is checked on."""
        return [float(v.to(getattr(torch, dtype)).double().sum()) for _, v in sorted(self.state.items())]


def measure(size: str, runner_dtype: str, reps: int) -> dict:
    import ray

    actor = ray.remote(num_cpus=0)(Holder)
    learner = actor.remote(size, "float32", True)
    runners = [actor.remote(size, runner_dtype, False) for _ in range(2)]
    world = len(runners) + 1
    nbytes_fp32 = ray.get(learner.nbytes.remote())
    entries = ray.get(runners[0].manifest.remote())
    t0 = time.perf_counter()
    address = ray.get(learner.open.remote(world))
    joins = [r.join.remote(address, i, world, entries) for i, r in enumerate(runners, start=1)]
    ray.get([learner.join.remote(address, 0, world, entries)] + joins)
    group_s = time.perf_counter() - t0

    def object_store() -> None:
        state = ray.get(learner.numpy_state.remote())
        ref = ray.put(state)
        ray.get([r.load.remote(ref) for r in runners])

    def broadcast() -> None:
        refs = [r.receive.remote() for r in runners]
        ray.get([learner.send.remote()] + refs)

    want = ray.get(learner.fingerprint.remote(runner_dtype))
    times: dict[str, list[float]] = {"object_store": [], "broadcast": []}
    for _ in range(reps):
        for name, fn in (("object_store", object_store), ("broadcast", broadcast)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            got = ray.get([r.fingerprint.remote(runner_dtype) for r in runners])
            assert all(g == want for g in got), f"{name}: the runners do not hold the learner's weights"
    runner_bytes = ray.get(runners[0].nbytes.remote())
    for a in [learner, *runners]:
        ray.kill(a)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"size": size, "runner_dtype": runner_dtype, "learner_mb": nbytes_fp32 / 2**20,
            "broadcast_mb": runner_bytes / 2**20, "object_store_mb": nbytes_fp32 / 2**20,
            "group_build_s": group_s, "object_store_s": med["object_store"], "broadcast_s": med["broadcast"],
            "speedup": med["object_store"] / med["broadcast"], "all_s": times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "smoke"], choices=["tiny", "smoke"])
    ap.add_argument("--runner-dtype", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for size in args.sizes:
            for dtype in args.runner_dtype:
                row = measure(size, dtype, args.reps)
                rows.append(row)
                print(f"{size:5s} runners {dtype:8s}: object store {row['object_store_s'] * 1e3:7.1f} ms "
                      f"({row['object_store_mb']:.0f} MB as fp32), broadcast {row['broadcast_s'] * 1e3:7.1f} ms "
                      f"({row['broadcast_mb']:.0f} MB), {row['speedup']:.2f}x; group built in "
                      f"{row['group_build_s'] * 1e3:.0f} ms", flush=True)
    finally:
        ray.shutdown()
    result = {"machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
                         f"torch {torch.__version__}", "runners": 2, "reps": args.reps, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
