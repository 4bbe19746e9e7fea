"""Env step throughput and episode scoring speed, on one core.

1. Steps/s of ``DuplexReplayEnv`` in codes/tokens mode (no codec work; the default reward spec,
   which reads Moshi's text stream), raw (``env.unwrapped``) and through
   ``gymnasium.make("duplexgym/TurnTaking-v0")`` with its wrappers, stepping pre-generated valid
   actions (the oracle's ``[F, 9]`` int64 plan, made before timing) over whole episodes of turn
   segments. Reported: (a) the pure step cost, terminal step excluded, and (b) steps/s over whole
   episodes, reset and the end-of-episode scoring included (each also shown on its own).
2. Baseline, same run, same frames: the floor, a bare NumPy loop doing what a step must minimally
   do: copy the next observation frame (``obs[t + 1].copy()``) and store the action frame into a
   preallocated record (``rec[t] = actions[t]``). Targets (the issue): a step costs at most 5x the
   floor, and at least 50,000 steps/s on one core.
3. Episode scoring with rule rewards and silero VAD: ``rewards.scoring.score_episode`` in waveform
   mode (default spec: ``vad`` reader, ``metrics.source: vad``) on the oracle's episodes (the human
   reference's audio, real speech), against the episodes' audio duration: the real-time factor.
   Target: >= 100x. silero is loaded and run once before timing.
4. Same run, same records: the same spec with ``metrics.source: asr`` (the Full-Duplex-Bench
   metrics from faster-whisper words, whisper-base int8; the model loaded and run once before
   timing; ``--asr-reps`` repetitions, it is slow, each right after a VAD repetition so both see
   the same load). Reported: CPU seconds per minute of audio for both (medians), and the ratio:
   the median over the interleaved (VAD, ASR) pairs. Target: the VAD path at least 20x faster.
   (ASR uses the threads CTranslate2 starts; CPU time counts them all.)

One core: OMP/MKL/OpenBLAS get one thread (set before numpy is imported) and torch
``set_num_threads(1)``. Times are CPU time of this process (``time.process_time_ns``), garbage
collection off while timing (as ``timeit`` does); each figure is the median over ``--reps``
repetitions, env and floor interleaved segment by segment in every repetition.

Usage: python benchmarks/env_step.py [--corpus DIR] [--segments N] [--reps N] [--score-segments N] [--asr-reps N]
(default: runs/default-corpus, built by ``duplexgym corpus build synthetic --out
runs/default-corpus --codec tiny``). Prints a table and writes benchmarks/results/env_step.json.
"""

from __future__ import annotations

from duplexgym.runtime import configure_runtime

configure_runtime(threads=1)  # one core, before torch is imported

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from duplexgym.agents.policies import make_agent  # noqa: E402
from duplexgym.envs.corpus import ReplayCorpus  # noqa: E402
from duplexgym.envs.replay import DuplexReplayEnv  # noqa: E402
from duplexgym.rewards.scoring import score_episode  # noqa: E402

from duplexgym.constants import (
    AXES,  # noqa: E402
    FRAME_S,  # noqa: E402
)

RESULTS = Path(__file__).parent / "results" / "env_step.json"
ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "duplexgym/TurnTaking-v0"
TARGET_RATIO = 5.0
TARGET_STEPS_S = 50_000
TARGET_RTF = 100.0
TARGET_ASR_RATIO = 20.0
clock = time.process_time_ns


def spread(items: list, k: int) -> list:
    """``k`` items evenly spread over ``items`` (all of them when ``k >= len``)."""
    if k >= len(items):
        return list(items)
    return [items[int(i * len(items) / k)] for i in range(k)]


def episode(env, seg_id: str, actions: np.ndarray) -> tuple[int, int, int]:
    """One whole episode on ``seg_id``: ns of reset, of the ``F - 1`` non-terminal steps, of the last step."""
    step = env.step
    n = len(actions)
    t0 = clock()
    env.reset(options={"segment": seg_id})
    t1 = clock()
    for t in range(n - 1):
        step(actions[t])
    t2 = clock()
    terminated = step(actions[n - 1])[2]
    t3 = clock()
    if not terminated:
        raise RuntimeError(f"{seg_id}: the episode did not end after {n} steps")
    return t1 - t0, t2 - t1, t3 - t2


def floor(obs: np.ndarray, actions: np.ndarray, rec: np.ndarray) -> int:
    """ns of the bare loop over the same ``F - 1`` frames: next observation copied, action recorded."""
    n = len(actions)
    t0 = clock()
    for t in range(n - 1):
        obs[t + 1].copy()
        rec[t] = actions[t]
    return clock() - t0


def bench_steps(corpus: ReplayCorpus, n_segments: int, reps: int) -> dict:
    raw = DuplexReplayEnv(corpus, axes=("turn",), env_id=ENV_ID)
    made = gym.make(ENV_ID, corpus=corpus)
    assert type(made.unwrapped) is DuplexReplayEnv and made is not made.unwrapped
    segments = spread(corpus.select(("turn",)), n_segments)
    agent = make_agent("oracle", raw)
    plans = []
    for seg in segments:  # actions and the observation frames, made before any timing
        actions = np.ascontiguousarray(agent.plan(seg), dtype=np.int64)
        assert actions.shape == (seg.n_frames, 9) and raw.action_space.contains(actions[0])
        raw.reset(options={"segment": seg.id})
        plans.append((seg.id, actions, raw._obs.copy(), np.empty_like(actions)))
    for seg_id, actions, _, _ in plans:  # warm-up: corpus cache, gymnasium's first-step checks
        episode(raw, seg_id, actions)
        episode(made, seg_id, actions)

    per_rep = []
    n_steps = sum(len(a) - 1 for _, a, _, _ in plans)
    n_frames = sum(len(a) for _, a, _, _ in plans)
    gc.disable()
    try:
        for _ in range(reps):
            acc = {"floor": 0, "raw": [0, 0, 0], "make": [0, 0, 0]}
            for seg_id, actions, obs, rec in plans:
                acc["floor"] += floor(obs, actions, rec)
                for name, env in (("raw", raw), ("make", made)):
                    for i, ns in enumerate(episode(env, seg_id, actions)):
                        acc[name][i] += ns
            row = {"floor_us": acc["floor"] / n_steps / 1e3}
            for name in ("raw", "make"):
                reset_ns, steps_ns, last_ns = acc[name]
                row[name] = {
                    "step_us": steps_ns / n_steps / 1e3,
                    "reset_us": reset_ns / len(plans) / 1e3,
                    "terminal_us": last_ns / len(plans) / 1e3,
                    "episode_steps_s": n_frames / ((reset_ns + steps_ns + last_ns) / 1e9),
                    "ratio": steps_ns / acc["floor"],
                }
            per_rep.append(row)
    finally:
        gc.enable()

    def med(get):
        return statistics.median(get(r) for r in per_rep)

    out = {"segments": len(plans), "steps_per_rep": n_steps, "frames_per_rep": n_frames,
           "floor_step_us": med(lambda r: r["floor_us"])}
    for name in ("raw", "make"):
        out[name] = {k: med(lambda r, k=k: r[name][k]) for k in per_rep[0][name]}
        out[name]["step_steps_s"] = 1e6 / out[name]["step_us"]
    return out


def _score_all(records: list, spec) -> tuple[float, float]:
    """CPU seconds and wall seconds of scoring every record once under ``spec``."""
    gc.disable()
    try:
        w0, t0 = time.perf_counter(), clock()
        for record in records:
            score_episode(record, spec)
        return (clock() - t0) / 1e9, time.perf_counter() - w0
    finally:
        gc.enable()


def _time_sources(records: list, spec, asr_spec, reps: int, asr_reps: int) -> dict:
    """Scoring every record under the VAD spec ``reps`` times and under the ASR spec ``asr_reps``
    times, interleaved (a VAD pass, then an ASR pass, ...) so both see the same machine load: per
    source the median CPU and wall seconds, and the median over the interleaved pairs of the ASR /
    VAD CPU ratio."""
    vad, asr, ratios = [], [], []
    for i in range(max(reps, asr_reps)):
        if i < reps:
            vad.append(_score_all(records, spec))
        if i < asr_reps:
            asr.append(_score_all(records, asr_spec))
            ratios.append(asr[-1][0] / vad[min(i, len(vad) - 1)][0])
    med = statistics.median
    return {"vad": (med(t for t, _ in vad), med(w for _, w in vad)),
            "asr": (med(t for t, _ in asr), med(w for _, w in asr)), "pair_ratio": med(ratios)}


def bench_scoring(corpus: ReplayCorpus, per_axis: int, reps: int, asr_reps: int) -> dict:
    import dataclasses

    from duplexgym.rewards.activity import MetricsParams

    env = DuplexReplayEnv(corpus, axes=AXES, obs_mode="waveform", action_mode="waveform")
    spec = env.reward_spec
    assert spec.activity.reader == "vad" and spec.metrics.source == "vad"
    agent = make_agent("oracle", env)
    segments = [s for axis in AXES for s in spread(corpus.select((axis,)), per_axis)]
    records = []
    for seg in segments:  # the env scores each episode once: loads and warms up silero
        obs, info = env.reset(options={"segment": seg.id})
        agent.reset(info)
        done = False
        while not done:
            obs, _, done, _, info = env.step(agent.act(obs))
        records.append(env.episode_record())
    score_episode(records[0], spec)  # warm-up again, outside the env
    audio_s = sum(r.n_frames * FRAME_S for r in records)
    speech_s = sum(b - a for r in records for a, b in r.reward_terms.get("agent_speech_s", ()))
    failed = sorted({name for r in records for name in r.reward_terms["failed"]})
    if speech_s <= 0:
        raise RuntimeError("the oracle's records hold no agent speech: nothing real to score")

    asr_spec = dataclasses.replace(spec, metrics=MetricsParams(source="asr"))
    warm = score_episode(records[0], asr_spec)  # loads whisper-base
    asr_failed = sorted({name for r in records[:1] for name in warm["failed"]})
    timed = _time_sources(records, spec, asr_spec, reps, asr_reps)
    (score_s, wall_s), (asr_s, asr_wall_s) = timed["vad"], timed["asr"]
    minutes = audio_s / 60.0
    return {
        "episodes": len(records),
        "audio_s": round(audio_s, 3),
        "agent_speech_s": round(speech_s, 3),
        "failed_terms": failed,
        "score_ms_per_episode": round(score_s / len(records) * 1e3, 3),
        "real_time_factor": round(audio_s / score_s, 1),
        "metric_sources": {
            "vad": {"reps": reps, "cpu_s_per_audio_min": round(score_s / minutes, 3),
                    "wall_s_per_audio_min": round(wall_s / minutes, 3),
                    "score_ms_per_episode": round(score_s / len(records) * 1e3, 3)},
            "asr": {"reps": asr_reps, "cpu_s_per_audio_min": round(asr_s / minutes, 3),
                    "wall_s_per_audio_min": round(asr_wall_s / minutes, 3),
                    "cpu_s_per_speech_min": round(asr_s / (speech_s / 60.0), 3),
                    "score_ms_per_episode": round(asr_s / len(records) * 1e3, 3), "failed_terms": asr_failed},
            "asr_over_vad_cpu": round(timed["pair_ratio"], 1),
            "asr_over_vad_cpu_of_medians": round(asr_s / score_s, 1),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT / "runs" / "default-corpus"))
    parser.add_argument("--segments", type=int, default=32, help="turn segments stepped per repetition")
    parser.add_argument("--reps", type=int, default=9, help="repetitions (medians reported)")
    parser.add_argument("--score-segments", type=int, default=4, help="scored episodes per axis")
    parser.add_argument("--asr-reps", type=int, default=3,
                        help="repetitions of the ASR-based scoring, interleaved with the VAD ones")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    corpus = ReplayCorpus(args.corpus)
    if not corpus.has_codes:
        parser.error(f"{corpus.path}: built without --codec; codes/tokens mode needs Mimi codes")
    steps = bench_steps(corpus, args.segments, args.reps)
    scoring = bench_scoring(corpus, args.score_segments, args.reps, args.asr_reps)

    floor_us = steps["floor_step_us"]
    print(f"{steps['segments']} turn segments, {steps['frames_per_rep']} frames per repetition, "
          f"{args.reps} repetitions (medians), one core, CPU time")
    print(f"{'codes/tokens stepping':<34}{'us/step':>9}{'steps/s':>11}{'x floor':>9}"
          f"{'reset us':>10}{'last us':>9}{'episode steps/s':>17}")
    print(f"{'floor (obs copy + action store)':<34}{floor_us:>9.2f}{1e6 / floor_us:>11,.0f}{1.0:>9.1f}")
    for name, label in (("raw", "DuplexReplayEnv (raw)"), ("make", f"gym.make({ENV_ID.split('/')[1]})")):
        r = steps[name]
        print(f"{label:<34}{r['step_us']:>9.2f}{r['step_steps_s']:>11,.0f}{r['ratio']:>9.1f}"
              f"{r['reset_us']:>10.0f}{r['terminal_us']:>9.0f}{r['episode_steps_s']:>17,.0f}")
    raw = steps["raw"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"targets (raw env): step <= {TARGET_RATIO:.0f}x floor: {raw['ratio']:.1f}x "
          f"{verdict(raw['ratio'] <= TARGET_RATIO)}; "
          f">= {TARGET_STEPS_S:,} steps/s: {raw['step_steps_s']:,.0f} per step "
          f"{verdict(raw['step_steps_s'] >= TARGET_STEPS_S)}, {raw['episode_steps_s']:,.0f} over whole episodes "
          f"{verdict(raw['episode_steps_s'] >= TARGET_STEPS_S)}")
    print(f"scoring (waveform, silero VAD): {scoring['episodes']} oracle episodes, {scoring['audio_s']:.1f} s of "
          f"audio ({scoring['agent_speech_s']:.1f} s agent speech), {scoring['score_ms_per_episode']:.1f} ms per "
          f"episode, {scoring['real_time_factor']:.0f}x real time "
          f"(target >= {TARGET_RTF:.0f}x: {verdict(scoring['real_time_factor'] >= TARGET_RTF)})")
    src = scoring["metric_sources"]
    ratio = src["asr_over_vad_cpu"]
    print(f"FD-Bench metric sources, same records: vad {src['vad']['cpu_s_per_audio_min']:.2f} CPU s per audio minute, "
          f"asr {src['asr']['cpu_s_per_audio_min']:.2f} ({src['asr']['cpu_s_per_speech_min']:.1f} per speech minute): "
          f"vad {ratio:.1f}x faster (target >= {TARGET_ASR_RATIO:.0f}x: {verdict(ratio >= TARGET_ASR_RATIO)})")

    def rounded(d: dict) -> dict:
        return {k: round(v, 3) for k, v in d.items()}

    result = {
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
                   f"numpy {np.__version__}, gymnasium {gym.__version__}",
        "clock": "process CPU time, one thread, gc off while timing",
        "reps": args.reps,
        "stepping": {
            "env_id": ENV_ID,
            "modes": "obs codes, action tokens, default spec (text reader)",
            "segments": steps["segments"],
            "frames_per_rep": steps["frames_per_rep"],
            "floor": {"step_us": round(floor_us, 3), "steps_s": round(1e6 / floor_us)},
            "raw": rounded(steps["raw"]),
            "make": rounded(steps["make"]),
        },
        "scoring": scoring,
        "targets": {
            "step_ratio_max": TARGET_RATIO, "step_ratio_met": raw["ratio"] <= TARGET_RATIO,
            "steps_s_min": TARGET_STEPS_S, "step_steps_s_met": raw["step_steps_s"] >= TARGET_STEPS_S,
            "episode_steps_s_met": raw["episode_steps_s"] >= TARGET_STEPS_S,
            "real_time_factor_min": TARGET_RTF, "real_time_factor_met": scoring["real_time_factor"] >= TARGET_RTF,
            "asr_over_vad_min": TARGET_ASR_RATIO,
            "asr_over_vad_met": scoring["metric_sources"]["asr_over_vad_cpu"] >= TARGET_ASR_RATIO,
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
