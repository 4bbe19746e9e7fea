"""The ``duplexgym`` command line (stable contract; see DESIGN.md).

``--json`` prints exactly one JSON object on stdout; progress and logs go to stderr. A user error
(bad input, bad options) prints ``duplexgym: error: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import duplexgym  # noqa: F401  (sets NO_TORCH_COMPILE etc. before torch is imported)


def _corpus_build(args) -> int:
    from duplexgym.corpora.build import BuildOptions, build_corpus, no_progress, tqdm_progress

    options = BuildOptions(format=args.format, per_axis=args.per_axis, seed=args.seed, codec=args.codec,
                           dialogues=args.dialogues)
    progress = no_progress if args.quiet else tqdm_progress
    summary = build_corpus(args.source, args.out, options, progress=progress)
    if args.json:
        print(json.dumps(summary.to_json(), sort_keys=True))
    else:
        counts = ", ".join(f"{axis} {n}" for axis, n in summary.segments.items())
        print(f"built {args.out}: {summary.dialogues} dialogues ({summary.audio_s / 60:.1f} min), "
              f"segments: {counts} [{summary.seconds:.1f} s]")
        for item in summary.skipped:
            print(f"  skipped {item['file']}: {item['reason']}")
    return 0


def _corpus_stats(args) -> int:
    from duplexgym.corpora.stats import corpus_stats, format_stats

    stats = corpus_stats(args.dir)
    print(json.dumps(stats, sort_keys=True) if args.json else format_stats(stats))
    return 0


def _rollout(args) -> int:
    from duplexgym.agents.rollout import rollout

    kwargs = {}
    for key in ("obs_mode", "action_mode", "rewards"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    summary = rollout(args.env, args.corpus, args.agent, args.episodes, args.seed, args.out, kwargs,
                      progress=not args.quiet)
    _print_summary(summary, args.json)
    return 0


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    head = f"{summary['episodes']} episodes, reward {summary['reward_mean']:.3f} +- {summary['reward_std']:.3f}"
    if summary.get("failed"):
        head += f" ({summary['failed']} with failed terms)"
    print(head)
    for axis, entry in summary["by_axis"].items():
        extra = ", ".join(f"{k} {v:.3f}" for k, v in entry.items() if k.startswith("fdb_"))
        print(f"  {axis:<13}{entry['episodes']:>5} episodes  reward {entry['reward_mean']:+.3f}  {extra}")


def _eval(args) -> int:
    from duplexgym.agents.evaluate import evaluate, format_table

    summary = evaluate(args.corpus, args.agent, per_axis=args.per_axis, seed=args.seed,
                       obs_mode=args.obs_mode or "waveform", action_mode=args.action_mode or "waveform",
                       rewards=args.rewards, export=args.export, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(format_table([summary]))
        if args.export:
            print(f"exported {summary['episodes']} episodes in Full-Duplex-Bench v1 layout to {args.export}")
    return 0


def _rescore(args) -> int:
    from duplexgym.agents.replay import rescore

    summary, _ = rescore(args.episodes, args.rewards)
    summary["out"] = str(args.episodes)
    _print_summary(summary, args.json)
    return 0


def _replay(args) -> int:
    from duplexgym.agents.replay import replay_check

    result = replay_check(args.episode)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(("OK" if result["ok"] else "MISMATCH") + f": {result['episode']} ({result['steps']} steps)")
        for m in result["mismatches"]:
            print(f"  {m}")
    return 0 if result["ok"] else 1


def _train(args) -> int:
    import contextlib
    import os

    from duplexgym.agents.train_config import load_train_config

    cfg = load_train_config(args.config)  # validated before Ray is imported or started
    from duplexgym.agents.train import format_iteration, run_training

    if args.resume is not None:
        from duplexgym.agents.train import check_resume

        check_resume(cfg, args.resume)  # before Ray starts
    if not args.json:
        summary = run_training(cfg, on_iteration=lambda m: print(format_iteration(m, cfg.iterations), flush=True),
                               resume=args.resume)
        print(f"wrote {summary['files']['metrics']}, {summary['files']['config']}, "
              f"{summary['files']['reward_curve']}, {summary['files']['policy']} [{summary['wall_s']:.1f} s]")
        return 0
    # --json: stdout holds the one JSON object; whatever Ray, RLlib or native code print goes to stderr
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            summary = run_training(cfg, on_iteration=lambda m: print(format_iteration(m, cfg.iterations),
                                                                     file=sys.stderr, flush=True),
                                   resume=args.resume)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    print(json.dumps(summary, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duplexgym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    corpus = sub.add_parser("corpus", help="build and inspect corpora").add_subparsers(dest="corpus_command", required=True)
    build = corpus.add_parser("build", help="conversation audio -> per-axis segments + manifest")
    build.add_argument("source", help="a folder, a .jsonl listing, or 'synthetic' (the embedded default)")
    build.add_argument("--out", required=True, help="corpus folder to write (a rerun resumes)")
    build.add_argument("--format", choices=["stereo", "pairs", "fdb1", "synthetic"], default=None,
                       help="source format (inferred when omitted)")
    build.add_argument("--per-axis", type=int, default=2000, help="most segments kept per axis (default 2000)")
    build.add_argument("--seed", type=int, default=0, help="seed of the per-axis selection (default 0)")
    build.add_argument("--codec", default=None, help="store Mimi codes: 'tiny' or a Mimi .safetensors path")
    build.add_argument("--dialogues", type=int, default=None, help="synthetic format: number of dialogues (default 48)")
    build.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_corpus_build)

    stats = corpus.add_parser("stats", help="segments per axis, durations, event statistics")
    stats.add_argument("dir", help="a built corpus folder")
    stats.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    stats.set_defaults(func=_corpus_stats)

    roll = sub.add_parser("rollout", help="run an agent in an env and save the episode records")
    roll.add_argument("--env", required=True, help="e.g. duplexgym/TurnTaking-v0")
    roll.add_argument("--corpus", required=True)
    roll.add_argument("--agent", required=True, help="silent | talk | oracle | vad | moshi | moshi:CHECKPOINT_DIR")
    roll.add_argument("--episodes", type=int, required=True)
    roll.add_argument("--seed", type=int, default=0)
    roll.add_argument("--out", required=True)
    roll.add_argument("--obs-mode", dest="obs_mode", choices=["codes", "waveform"], default=None)
    roll.add_argument("--action-mode", dest="action_mode", choices=["tokens", "waveform"], default=None)
    roll.add_argument("--rewards", default=None, help="reward spec YAML")
    roll.add_argument("--json", action="store_true")
    roll.add_argument("--quiet", action="store_true")
    roll.set_defaults(func=_rollout)

    ev = sub.add_parser("eval", help="an agent over every segment, as a Full-Duplex-Bench v1 table")
    ev.add_argument("--corpus", required=True)
    ev.add_argument("--agent", required=True, help="silent | talk | oracle | vad")
    ev.add_argument("--per-axis", dest="per_axis", type=int, default=None,
                    help="at most N segments per axis, drawn with --seed (default: all)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--obs-mode", dest="obs_mode", choices=["codes", "waveform"], default=None,
                    help="default waveform")
    ev.add_argument("--action-mode", dest="action_mode", choices=["tokens", "waveform"], default=None,
                    help="default waveform")
    ev.add_argument("--rewards", default=None, help="reward spec YAML")
    ev.add_argument("--export", default=None, help="also write the episodes in Full-Duplex-Bench v1 layout here")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_eval)

    res = sub.add_parser("rescore", help="recompute rewards of saved episodes under a reward spec")
    res.add_argument("episodes", help="a folder of episode records (or one record)")
    res.add_argument("--rewards", required=True, help="reward spec YAML")
    res.add_argument("--json", action="store_true")
    res.set_defaults(func=_rescore)

    rep = sub.add_parser("replay", help="replay an episode record and check it bit for bit")
    rep.add_argument("episode", help="an episode record (.json/.npz)")
    rep.add_argument("--check", action="store_true", help="compare observations and rewards (the default)")
    rep.add_argument("--json", action="store_true")
    rep.set_defaults(func=_replay)

    tr = sub.add_parser("train", help="GRPO or PPO on Ray RLlib from a YAML config (agents/train_config.py)")
    tr.add_argument("--config", required=True, help="training config YAML (see configs/grpo_tiny.yaml)")
    tr.add_argument("--json", action="store_true", help="print one JSON object with every iteration at the end")
    tr.add_argument("--resume", default=None, metavar="CHECKPOINT",
                    help="continue from OUT/checkpoints/iter_XXXX up to the config's iterations (a total)")
    tr.set_defaults(func=_train)
    return parser


def gym_errors():
    from gymnasium import error

    return error.Error


def main(argv: list[str] | None = None) -> int:
    from duplexgym.corpora.errors import CorpusError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CorpusError, ValueError, FileNotFoundError, gym_errors()) as exc:
        print(f"duplexgym: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("duplexgym: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
