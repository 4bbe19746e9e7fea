"""The ``duplexgym`` command line (stable contract; see DESIGN.md).

``--json`` prints exactly one JSON object on stdout; progress and logs go to stderr. A user error
(bad input, bad options) prints ``duplexgym: error: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys

from duplexgym.runtime import configure_runtime


def _corpus_build(args) -> int:
    from duplexgym.corpora.build import (
        BuildOptions,
        build_corpus,
        no_progress,
        tqdm_progress,
    )

    options = BuildOptions(format=args.format, per_axis=args.per_axis, seed=args.seed, codec=args.codec,
                           dialogues=args.dialogues, rules=args.rules, context_s=args.context_s)
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
    from duplexgym.agents.evaluation.rollout import rollout

    kwargs = {}
    for key in ("obs_mode", "action_mode", "rewards"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    summary = rollout(args.env, args.corpus, args.agent, args.episodes, args.seed, args.out, kwargs,
                      progress=not args.quiet, overwrite=args.overwrite, agent_options=_agent_options(args))
    _print_summary(summary, args.json)
    return 0


def _prompt_arguments(parser) -> None:
    parser.add_argument("--text-prompt", dest="text_prompt", default=None,
                        help="personaplex agents: the text system prompt (default: the policy's saved prompt, else the "
                             "official Full-Duplex-Bench prompt of each episode's axis)")
    parser.add_argument("--voice-prompt", dest="voice_prompt", default=None,
                        help="personaplex agents: a voice prompt wav/flac or an official voice .pt (default: the "
                             "policy's saved voice, else none)")


def _agent_options(args) -> dict:
    """``--text-prompt`` / ``--voice-prompt`` (personaplex:DIR agents) as :func:`make_agent` keywords."""
    return {k: getattr(args, k) for k in ("text_prompt", "voice_prompt") if getattr(args, k, None) is not None}


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
    if summary.get("activity_readers"):
        print("  activity read with: " + ", ".join(f"{r} ({n} records)" for r, n in summary["activity_readers"].items()))
    for note in summary.get("notes") or ():
        print(f"  note: {note}")


def _eval(args) -> int:
    if args.live:
        return _eval_live(args)
    for flag, value in (("--user", args.user), ("--dialogues", args.dialogues), ("--max-s", args.max_s),
                        ("--script", args.script), ("--llm-url", args.llm_url)):
        if value is not None:
            raise ValueError(f"{flag} applies to live dialogues only: add --live")
    from duplexgym.agents.evaluation.evaluate import evaluate, format_table

    summary = evaluate(args.corpus, args.agent, per_axis=args.per_axis, seed=args.seed,
                       obs_mode=args.obs_mode, action_mode=args.action_mode,
                       rewards=args.rewards, export=args.export, progress=not args.quiet,
                       agent_options=_agent_options(args))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(format_table([summary]))
        if args.export:
            print(f"exported {summary['episodes']} episodes in Full-Duplex-Bench v1 layout to {args.export}")
    return 0


def _eval_live(args) -> int:
    from duplexgym.agents.evaluation.live import live_eval

    user = args.user or "replay"
    llm = None
    if user == "llm":
        if args.llm_url is None or args.llm_model is None:
            raise ValueError("--user llm needs --llm-url (an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1) "
                             "and --llm-model")
        llm = {"base_url": args.llm_url, "model": args.llm_model}
    elif args.llm_url is not None:
        raise ValueError("--llm-url applies to --user llm only")
    if args.script is not None and user == "replay":
        raise ValueError("--script applies to --user script or llm only")
    summary, text = live_eval(args.corpus, args.agent, user=user, dialogues=args.dialogues, seed=args.seed,
                              per_axis=args.per_axis, max_s=60.0 if args.max_s is None else args.max_s,
                              obs_mode=args.obs_mode, action_mode=args.action_mode, rewards=args.rewards,
                              script=args.script, llm=llm, export=args.export, progress=not args.quiet,
                              agent_options=_agent_options(args))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(text)
        if args.export:
            print(f"exported {summary['dialogues']} live dialogues (wav, timeline, transcript) to {args.export}")
    return 0


def _rescore(args) -> int:
    from duplexgym.agents.evaluation.replay import rescore

    summary, _ = rescore(args.episodes, args.rewards)
    summary["out"] = str(args.episodes)
    _print_summary(summary, args.json)
    return 0


def _replay(args) -> int:
    from duplexgym.agents.evaluation.replay import replay_check

    judge = None
    if args.judge_url is not None:
        judge = {"base_url": args.judge_url, "model": args.judge_model}
    result = replay_check(args.episode, judge=judge)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(("OK" if result["ok"] else "MISMATCH") + f": {result['episode']} ({result['steps']} steps)")
        for m in result["mismatches"]:
            print(f"  {m}")
        for note in result["notes"]:
            print(f"  note: {note}")
    return 0 if result["ok"] else 1


def _train(args) -> int:
    import contextlib
    import os
    import signal

    from duplexgym.agents.training.config import load_train_config

    cfg = load_train_config(args.config)  # validated before Ray is imported or started
    if args.dry_run:
        from duplexgym.agents.training.plan import format_plan, training_plan

        plan = training_plan(cfg)
        print(json.dumps(plan, sort_keys=True) if args.json else format_plan(plan))
        return 0
    from duplexgym.agents.training.checkpoints import check_resume
    from duplexgym.agents.training.run import format_iteration, prepare_run_folder, resume_hint, run_training

    if args.resume is not None:
        check_resume(cfg, args.resume, args.trust_pickled_checkpoint)  # before Ray starts
    prepare_run_folder(cfg, args.resume, args.overwrite, cfg_path=args.config)  # likewise
    run = dict(resume=args.resume, overwrite=args.overwrite, trust_pickled_checkpoint=args.trust_pickled_checkpoint)
    log = sys.stderr if args.json else sys.stdout
    # A Ctrl-C that lands while Python runs a finalizer or a weakref callback is printed as
    # "Exception ignored" and lost (seen in a test: the run went on to its last iteration), so the
    # handler also notes it and the next finished iteration raises it again.
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    def after_iteration(m: dict) -> None:
        print(format_iteration(m, cfg.iterations), file=log, flush=True)
        if interrupted:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        if not args.json:
            summary = run_training(cfg, on_iteration=after_iteration, **run)
        else:  # stdout holds the one JSON object; whatever Ray, RLlib or native code print goes to stderr
            sys.stdout.flush()
            saved = os.dup(1)
            try:
                os.dup2(2, 1)
                with contextlib.redirect_stdout(sys.stderr):
                    summary = run_training(cfg, on_iteration=after_iteration, **run)
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
                os.close(saved)
    except KeyboardInterrupt:
        print(f"duplexgym: interrupted; the run in {cfg.out} keeps every finished iteration; "
              f"{resume_hint(args.config, cfg.out)}", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk while writing a checkpoint, say: the earlier ones are whole
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"duplexgym: error: {exc.strerror or exc}{where}; the run in {cfg.out} keeps every finished "
              f"iteration; {resume_hint(args.config, cfg.out)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    files = summary["files"]
    print(f"wrote {files['metrics']}, {files['config']}, {files['reward_curve']}, {files['policy']} "
          f"[{summary['wall_s']:.1f} s]", file=log)
    for line in summary.get("logs", ()):
        print(f"  {line}", file=log)
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows an option's default value (when it has one and the text does not already
    say what happens without it) and keeps the descriptions' line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if action.required or default is None or default is False or default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _sub(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help, formatter_class=_HelpFormatter)


def _json_quiet(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else there")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")


MODES_HELP = "default: codes / tokens when the corpus was built with --codec, else waveform"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duplexgym", description=__doc__.splitlines()[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    corpus = _sub(sub, "corpus", "build and inspect corpora").add_subparsers(dest="corpus_command", required=True,
                                                                              metavar="COMMAND")
    build = _sub(corpus, "build", "conversation audio -> per-axis segments, manifest, audio and codes",
                 "Build a corpus folder from SOURCE. A rerun with the same options resumes an interrupted build.")
    build.add_argument("source", help="a folder of stereo files, a pairs .jsonl listing, a Full-Duplex-Bench v1 "
                                      "folder, or the word 'synthetic' (the embedded default)")
    build.add_argument("--out", required=True, help="the corpus folder to write (new, or one this command built)")
    build.add_argument("--format", choices=["stereo", "pairs", "fdb1", "synthetic"], default=None,
                       help="the source format; inferred from SOURCE when omitted")
    build.add_argument("--per-axis", type=int, default=2000, help="at most this many segments per axis")
    build.add_argument("--seed", type=int, default=0, help="seed of the per-axis selection of segments")
    build.add_argument("--codec", default=None,
                       help="also store Mimi codes of every track: 'tiny' (the random test codec) or the path of a "
                            "Mimi .safetensors file; none: waveform envs only")
    build.add_argument("--dialogues", type=int, default=None,
                       help="synthetic format only: how many dialogues to render (none: 48)")
    build.add_argument("--rules", choices=["duplexgym", "paper"], default="duplexgym",
                       help="segment rules: duplexgym (ours) or paper (the seed paper's utterance-level criteria and "
                            "windows; see corpora/paper.py)")
    build.add_argument("--context-s", dest="context_s", type=float, default=30.0,
                       help="seconds of recording stored before each segment (audio and codes), for training's "
                            "context curriculum; 0 stores none")
    _json_quiet(build)
    build.set_defaults(func=_corpus_build)

    stats = _sub(corpus, "stats", "segments per axis, durations, event statistics of a built corpus")
    stats.add_argument("dir", help="a corpus folder made by `duplexgym corpus build`")
    _json_quiet(stats, quiet=False)
    stats.set_defaults(func=_corpus_stats)

    roll = _sub(sub, "rollout", "run an agent in an env and save every episode record",
                "Run --episodes episodes of --agent in --env; records go to OUT/episodes/, the summary to "
                "OUT/rollout.json.")
    roll.add_argument("--env", required=True, help="an env id: duplexgym/PauseHandling-v0, TurnTaking-v0, "
                                                   "Backchannel-v0, Interruption-v0 or Interactivity-v0")
    roll.add_argument("--corpus", required=True, help="a corpus folder made by `duplexgym corpus build`")
    roll.add_argument("--agent", required=True,
                      help="silent | talk | oracle | vad | moshi | moshi:CHECKPOINT_DIR | personaplex:CHECKPOINT_DIR")
    _prompt_arguments(roll)
    roll.add_argument("--episodes", type=int, required=True, help="how many episodes to run (>= 1)")
    roll.add_argument("--seed", type=int, default=0, help="seed of the first reset; later episodes continue its stream")
    roll.add_argument("--out", required=True, help="the run folder to write (new or empty)")
    roll.add_argument("--overwrite", action="store_true",
                      help="replace an earlier rollout in --out (its rollout.json and episode records only)")
    roll.add_argument("--obs-mode", dest="obs_mode", choices=["codes", "waveform"], default=None,
                      help="what the agent hears: the user's Mimi codes or samples (" + MODES_HELP + ")")
    roll.add_argument("--action-mode", dest="action_mode", choices=["tokens", "waveform"], default=None,
                      help="what the agent answers with: Moshi tokens or samples (" + MODES_HELP + ")")
    roll.add_argument("--rewards", default=None,
                      help="a reward spec YAML; none: every axis term, read from the text stream in tokens mode "
                           "and with silero VAD in waveform mode")
    _json_quiet(roll)
    roll.set_defaults(func=_rollout)

    ev = _sub(sub, "eval", "an agent over a corpus' segments, as a Full-Duplex-Bench v1 table",
              "Play every segment (or --per-axis of each axis) once with --agent and print the Full-Duplex-Bench "
              "v1 metrics beside our rewards and the published reference rows.")
    ev.add_argument("--corpus", required=True, help="a corpus folder made by `duplexgym corpus build`")
    ev.add_argument("--agent", required=True,
                    help="silent | talk | oracle | vad | moshi | moshi:CHECKPOINT_DIR | personaplex:CHECKPOINT_DIR")
    _prompt_arguments(ev)
    ev.add_argument("--per-axis", dest="per_axis", type=int, default=None,
                    help="at most N segments per axis, drawn with --seed; none: every segment")
    ev.add_argument("--seed", type=int, default=0, help="seed of the --per-axis draw and of every episode")
    ev.add_argument("--obs-mode", dest="obs_mode", choices=["codes", "waveform"], default=None,
                    help="what the agent hears (" + MODES_HELP + ")")
    ev.add_argument("--action-mode", dest="action_mode", choices=["tokens", "waveform"], default=None,
                    help="what the agent answers with (" + MODES_HELP + ")")
    ev.add_argument("--rewards", default=None, help="a reward spec YAML; none: the env's default spec")
    ev.add_argument("--export", default=None,
                    help="also write the episodes in Full-Duplex-Bench v1 layout to this (new or empty) folder "
                         "(with --live: a wav, timeline and transcript per dialogue)")
    ev.add_argument("--live", action="store_true",
                    help="also play live multi-turn dialogues (duplexgym/Conversation-v0) with a simulated user that "
                         "reacts to the agent, and print the live table after the replay table")
    ev.add_argument("--user", choices=["replay", "script", "llm"], default=None,
                    help="--live: what the user says: the corpus' human turns (replay, the default), staged tasks "
                         "(script) or lines an OpenAI-compatible server writes (llm)")
    ev.add_argument("--dialogues", type=int, default=None,
                    help="--live: how many dialogues (none: each of the source's dialogues once)")
    ev.add_argument("--max-s", dest="max_s", type=float, default=None, help="--live: seconds per dialogue (none: 60)")
    ev.add_argument("--script", default=None,
                    help="--live --user script|llm: a task script YAML (see configs/live/example.yaml; none: the "
                         "built-in tasks)")
    ev.add_argument("--llm-url", dest="llm_url", default=None,
                    help="--live --user llm: the server writing the user's lines (e.g. http://127.0.0.1:8000/v1; key "
                         "from $DUPLEXGYM_USER_API_KEY)")
    ev.add_argument("--llm-model", dest="llm_model", default=None, help="--live --user llm: the model name there")
    _json_quiet(ev)
    ev.set_defaults(func=_eval)

    res = _sub(sub, "rescore", "recompute the rewards of saved episodes under a reward spec (no env, no agent)")
    res.add_argument("episodes", help="a folder of episode records (searched recursively) or one record")
    res.add_argument("--rewards", required=True, help="the reward spec YAML to score them under")
    _json_quiet(res, quiet=False)
    res.set_defaults(func=_rescore)

    rep = _sub(sub, "replay", "replay an episode record in its env and check it bit for bit",
               "Rebuild the env from the record, feed the recorded actions back and compare observations, every "
               "step's reward, the final reward terms and every stored array. Exit status 1 on a mismatch.")
    rep.add_argument("episode", help="an episode record (NAME.json, NAME.npz or NAME)")
    rep.add_argument("--check", action="store_true", help="compare with the record (what replay always does)")
    rep.add_argument("--judge-url", dest="judge_url", default=None,
                     help="re-judge LLM-judged terms on this OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1; "
                          "key from the params' api_key_env); none: such terms are taken from the record, whose "
                          "server is never contacted")
    rep.add_argument("--judge-model", dest="judge_model", default=None,
                     help="the model name on --judge-url; none: the record's")
    _json_quiet(rep, quiet=False)
    rep.set_defaults(func=_replay)

    tr = _sub(sub, "train", "GRPO or PPO on Ray RLlib from a YAML config",
              "Train a Moshi policy as CONFIG says (every field: duplexgym.agents.training.config). Writes "
              "OUT/metrics.jsonl, reward_curve.png, TensorBoard logs, checkpoints/ and policy/.")
    tr.add_argument("--config", required=True, help="the training config YAML (see configs/grpo_tiny.yaml)")
    tr.add_argument("--resume", default=None, metavar="CHECKPOINT",
                    help="continue from OUT/checkpoints/iter_XXXX up to the config's iterations (a total)")
    tr.add_argument("--overwrite", action="store_true",
                    help="start over in a run folder that holds an earlier run (its outputs are removed first)")
    tr.add_argument("--trust-pickled-checkpoint", dest="trust_pickled_checkpoint", action="store_true",
                    help="let --resume read a checkpoint in RLlib's own format, whose .pkl files can run code when "
                         "loaded: only for checkpoints you made yourself")
    tr.add_argument("--dry-run", dest="dry_run", action="store_true",
                    help="validate CONFIG and print the plan (segments per axis, groups, gradient steps, frames to "
                         "generate, judge calls) without starting Ray or writing anything")
    tr.add_argument("--json", action="store_true", help="print one JSON object with every iteration at the end "
                                                         "(with --dry-run: the plan)")
    tr.set_defaults(func=_train)
    return parser


def _version() -> str:
    from duplexgym import __version__

    return __version__


def gym_errors():
    from gymnasium import error

    return error.Error


def main(argv: list[str] | None = None) -> int:
    configure_runtime()  # before torch, moshi or Ray are imported (duplexgym.runtime)
    from duplexgym.corpora.errors import CorpusError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CorpusError, ValueError, FileNotFoundError, gym_errors()) as exc:
        print(f"duplexgym: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's, not the input's: a full disk, a folder without write permission
        where = f" ({exc.filename})" if exc.filename else ""
        again = ("; free space and rerun the same command: finished work is kept"
                 if exc.errno == errno.ENOSPC else "")
        print(f"duplexgym: error: {exc.strerror or exc}{where}{again}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        again = {"corpus": "rerun the same command to resume the build"}.get(getattr(args, "command", ""),
                                                                              "nothing was resumed")
        print(f"duplexgym: interrupted; {again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
