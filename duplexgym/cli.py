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
    return parser


def main(argv: list[str] | None = None) -> int:
    from duplexgym.corpora.errors import CorpusError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CorpusError as exc:
        print(f"duplexgym: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("duplexgym: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
