"""The live env's cost: steps/s of ``Conversation-v0`` against the replay env's, and dialogues per
minute with the tiny Moshi.

1. Step cost, codes / tokens mode (the reactive user reads the agent's text stream), one core.
   Replay: ``DuplexReplayEnv`` on (up to 30 of) the corpus' turn segments stepping the oracle's pre-made plan
   (as ``benchmarks/env_step.py`` does). Live: ``ConversationEnv(user="script")`` (TTS and codes
   of every line memoised by a warm-up pass, so no flite or Mimi work is timed) stepping a
   pre-made plan that speaks 2 s in every 5 s, so the user waits, answers, re-prompts, yields and
   backchannels while it is timed. Reported: ns per non-terminal step (the terminal step, which
   scores the whole dialogue, is timed on its own), steps/s over whole episodes (reset and scoring
   included), and the ratio live / replay. Target (the issue): the reactive user costs at most 2x
   a replay step. Both envs run interleaved, episode by episode, in every repetition; CPU time of
   this process (``time.process_time_ns``), garbage collection off while timing; medians over
   ``--reps``.
2. The same in waveform mode, where the user hears the agent through streaming silero VAD (about
   1 ms per frame: it dominates; reported for information, no target).
3. Dialogues per minute: ``ConversationEnv`` with the tiny random Moshi (``make_agent("moshi")``,
   codes / tokens, the script user, ``--moshi-dialogues`` dialogues of ``--max-s`` s), wall
   clock, the agent's time included.

Usage: python benchmarks/live.py [--corpus DIR] [--reps N] [--max-s S] [--moshi-dialogues N]
(default corpus: runs/default-corpus, built with ``--codec tiny``). Prints a table and writes
benchmarks/results/live.json.
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

import numpy as np  # noqa: E402
from duplexgym.agents.policies import make_agent  # noqa: E402
from duplexgym.envs.conversation import ConversationEnv  # noqa: E402
from duplexgym.envs.corpus import ReplayCorpus  # noqa: E402
from duplexgym.envs.replay import DuplexReplayEnv  # noqa: E402
from duplexgym.rewards.activity import text_stream  # noqa: E402

from duplexgym.constants import FRAME_S, FRAME_SAMPLES, TEXT_PAD  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "live.json"
ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 2.0
clock = time.process_time_ns


def episode(env, options: dict, actions: np.ndarray) -> tuple[int, int, int, int]:
    """ns of reset, of the non-terminal steps, of the terminal step; the number of steps."""
    step = env.step
    t0 = clock()
    env.reset(options=options)
    t1 = clock()
    k, n = 0, len(actions)
    t2 = t1
    while k < n:
        done = step(actions[k])[2]
        k += 1
        if done:
            break
        t2 = clock()
    t3 = clock()
    return t1 - t0, t2 - t1, t3 - t2, k


def live_plan(env: ConversationEnv, waveform: bool) -> np.ndarray:
    """An agent that speaks 2 s in every 5 s (from 2.5 s on), as tokens or as the talk clip."""
    n = env.max_frames
    spans = [(a, a + 2.0) for a in np.arange(2.5, n * FRAME_S, 5.0)]
    text = text_stream(spans, n, 1000)
    if waveform:
        import soundfile as sf
        from duplexgym.agents.policies.baselines import TALK_CLIP

        clip, _ = sf.read(str(TALK_CLIP), dtype="float32")
        frames = clip[: len(clip) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
        plan = np.zeros((n, FRAME_SAMPLES), np.float32)
        on = np.flatnonzero(text != TEXT_PAD)
        for a, b in spans:
            lo, hi = int(round(a / FRAME_S)), min(n, int(round(b / FRAME_S)))
            plan[lo:hi] = frames[np.arange(hi - lo) % len(frames)]
        del on
        return plan
    plan = np.empty((n, 9), np.int64)
    plan[:, 0] = text
    plan[:, 1:] = np.asarray(env.corpus.info["silence_codes"], dtype=np.int64)
    return plan


def bench_mode(corpus: ReplayCorpus, mode: str, reps: int, max_s: float) -> dict:
    waveform = mode == "waveform"
    modes = dict(obs_mode="waveform", action_mode="waveform") if waveform else dict(obs_mode="codes",
                                                                                       action_mode="tokens")
    replay = DuplexReplayEnv(corpus, axes=("turn",), **modes)
    live = ConversationEnv(corpus, user="script", max_s=max_s, **modes)
    oracle = make_agent("oracle", replay)
    segments = corpus.select(("turn",))[:30]  # audio and codes of each fit the reader cache: no file I/O
    replay_plans = [(s.id, np.ascontiguousarray(oracle.plan(s))) for s in segments]
    plan = live_plan(live, waveform)
    dialogues = live.dialogue_ids
    for sid, actions in replay_plans:  # warm-up: corpus cache
        episode(replay, {"segment": sid}, actions)
    for i, d in enumerate(dialogues):  # warm-up: TTS and codes of every line
        episode(live, {"dialogue": d, "user_seed": i}, plan)
    per_rep = []
    gc.disable()
    try:
        for _ in range(reps):
            acc = {"replay": [0, 0, 0, 0, 0], "live": [0, 0, 0, 0, 0]}
            for i in range(max(len(replay_plans), len(dialogues))):
                sid, actions = replay_plans[i % len(replay_plans)]
                r = episode(replay, {"segment": sid}, actions)
                x = episode(live, {"dialogue": dialogues[i % len(dialogues)], "user_seed": i}, plan)
                for key, res in (("replay", r), ("live", x)):
                    for j in range(4):
                        acc[key][j] += res[j]
                    acc[key][4] += 1
            per_rep.append(acc)
    finally:
        gc.enable()

    def med(key, j):
        return statistics.median(a[key][j] for a in per_rep)

    out = {}
    for key in ("replay", "live"):
        steps = med(key, 3)
        episodes = per_rep[0][key][4]
        out[key] = {
            "ns_per_step": med(key, 1) / max(1, steps - episodes),
            "steps_per_s_pure": 1e9 * (steps - episodes) / max(1, med(key, 1)),
            "steps_per_s_whole": 1e9 * steps / max(1, med(key, 0) + med(key, 1) + med(key, 2)),
            "reset_ms": med(key, 0) / episodes / 1e6, "terminal_step_ms": med(key, 2) / episodes / 1e6,
            "episodes": episodes, "steps": int(steps),
        }
    out["ratio"] = out["live"]["ns_per_step"] / out["replay"]["ns_per_step"]
    out["ratio_whole"] = out["replay"]["steps_per_s_whole"] / out["live"]["steps_per_s_whole"]
    return out


def bench_moshi(corpus_path: str, n: int, max_s: float) -> dict:
    import gymnasium as gym

    env = gym.make("duplexgym/Conversation-v0", corpus=corpus_path, user="script", max_s=max_s)
    agent = make_agent("moshi", env)
    frames, wall = 0, 0.0
    rewards = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        obs, info = env.reset(options={"dialogue": i})
        agent.reset(info)
        done = False
        k = 0
        while not done:
            obs, _, done, _, info = env.step(agent.act(obs))
            k += 1
        if i:  # the first dialogue warms up (model, TTS)
            wall += time.perf_counter() - t0
            frames += k
            rewards.append(info["reward_terms"]["reward"])
    agent.close()
    return {"dialogues": n, "max_s": max_s, "wall_s": wall, "dialogues_per_min": 60.0 * n / wall,
            "frames": frames, "real_time_factor": frames * FRAME_S / wall, "reward_mean": float(np.mean(rewards))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT / "runs" / "default-corpus"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-s", type=float, default=60.0)
    ap.add_argument("--moshi-dialogues", type=int, default=3)
    ap.add_argument("--moshi-max-s", type=float, default=60.0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    corpus = ReplayCorpus(args.corpus)
    if not corpus.has_codes:
        print(f"{args.corpus}: needs Mimi codes (build it with --codec tiny)", file=sys.stderr)
        return 2
    results = {"corpus": args.corpus, "machine": platform.platform(), "python": platform.python_version(),
               "reps": args.reps, "max_s": args.max_s}
    results["tokens"] = bench_mode(corpus, "tokens", args.reps, args.max_s)
    results["waveform"] = bench_mode(corpus, "waveform", max(1, args.reps // 2), args.max_s)
    if args.moshi_dialogues > 0:
        results["moshi"] = bench_moshi(args.corpus, args.moshi_dialogues, args.moshi_max_s)
    tok = results["tokens"]
    results["target_ratio"] = TARGET_RATIO
    results["meets_target"] = tok["ratio"] <= TARGET_RATIO
    lines = [f"Conversation-v0 vs the replay env, one core ({args.corpus}, median of {args.reps} reps)",
             f"{'mode':<10}{'env':<8}{'ns/step':>10}{'steps/s':>11}{'whole ep steps/s':>18}{'reset ms':>10}"
             f"{'last step ms':>14}"]
    for mode in ("tokens", "waveform"):
        for key in ("replay", "live"):
            r = results[mode][key]
            lines.append(f"{mode:<10}{key:<8}{r['ns_per_step']:>10.0f}{r['steps_per_s_pure']:>11.0f}"
                         f"{r['steps_per_s_whole']:>18.0f}{r['reset_ms']:>10.2f}{r['terminal_step_ms']:>14.2f}")
        lines.append(f"{mode:<10}live / replay step cost: {results[mode]['ratio']:.2f}x "
                     f"(whole episodes {results[mode]['ratio_whole']:.2f}x)"
                     + (f"  target <= {TARGET_RATIO:g}x: {'met' if results['meets_target'] else 'NOT met'}"
                        if mode == "tokens" else "  (streaming silero; no target)"))
    if "moshi" in results:
        m = results["moshi"]
        lines.append(f"tiny Moshi, script user, {m['dialogues']} dialogues of up to {m['max_s']:g} s: "
                     f"{m['dialogues_per_min']:.2f} dialogues/min, {m['real_time_factor']:.2f}x real time "
                     f"({m['frames']} frames in {m['wall_s']:.1f} s wall)")
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
