"""Corpus-build throughput: speech-track hours processed per CPU minute.

Ours: resample to 16 kHz + batched silero VAD (corpora.vad) + event detection + segment cutting,
with no cache. Baseline, same run, same tracks: resample + silero's own ``get_speech_timestamps``
(one 32 ms chunk per model call), which is what a straightforward pipeline would do. CPU time is
``time.process_time`` of this process (torch runs one thread after ``import silero_vad``).

Usage: python benchmarks/corpus_build.py [--dialogues N] [--source DIR]   (default: the embedded
synthetic corpus, 48 dialogues). Prints a table and writes benchmarks/results/corpus_build.json.
"""

from __future__ import annotations

from duplexgym.runtime import configure_runtime

configure_runtime()  # before torch is imported

import argparse  # noqa: E402
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from duplexgym.corpora.dialogue import SPEAKERS
from duplexgym.corpora.events import detect_events
from duplexgym.corpora.segments import cut_segments
from duplexgym.corpora.sources.stereo import stereo_sources
from duplexgym.corpora.vad import VAD_RATE, speech_spans, to_vad_rate

RESULTS = Path(__file__).parent / "results" / "corpus_build.json"


def ours(dialogues) -> tuple[float, int, int]:
    t0 = time.process_time()
    tracks = [d.track(s) for d in dialogues for s in SPEAKERS]
    spans = speech_spans(tracks)
    n_events = n_segments = 0
    for i, d in enumerate(dialogues):
        events = detect_events({"A": spans[2 * i], "B": spans[2 * i + 1]}, d.words)
        n_events += len(events)
        n_segments += len(cut_segments(d.id, d.duration_s, events, d.words))
    return time.process_time() - t0, n_events, n_segments


def baseline(dialogues) -> float:
    import silero_vad
    import torch

    model = silero_vad.load_silero_vad()
    t0 = time.process_time()
    for d in dialogues:
        for s in SPEAKERS:
            audio = torch.from_numpy(to_vad_rate(d.track(s)))
            silero_vad.get_speech_timestamps(audio, model, sampling_rate=VAD_RATE)
    return time.process_time() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=48)
    parser.add_argument("--source", default=None, help="a stereo folder (default: the synthetic corpus)")
    args = parser.parse_args()
    if args.source:
        root = Path(args.source)
    else:
        from duplexgym.corpora.synthetic import SyntheticParams, generate_corpus

        root = Path(tempfile.gettempdir()) / f"duplexgym-bench-synthetic-{args.dialogues}"
        generate_corpus(root, seed=0, params=SyntheticParams(n_dialogues=args.dialogues))
    dialogues = [src.load() for src in stereo_sources(root)[0]]
    track_h = sum(d.duration_s for d in dialogues) * len(SPEAKERS) / 3600

    ours(dialogues[:1])  # warm-up: model load, librosa/numba first calls
    cpu_ours, n_events, n_segments = ours(dialogues)
    cpu_base = baseline(dialogues)
    rows = {
        "ours (batched VAD + detection + segmenting)": cpu_ours,
        "baseline (silero get_speech_timestamps)": cpu_base,
    }
    print(f"{len(dialogues)} dialogues, {track_h * 60:.1f} min of speaker tracks; "
          f"{n_events} events, {n_segments} candidate segments")
    print(f"{'pipeline':<46}{'CPU s':>9}{'track-h / CPU min':>20}")
    for name, cpu in rows.items():
        print(f"{name:<46}{cpu:>9.2f}{track_h / (cpu / 60):>20.2f}")
    ratio = cpu_base / cpu_ours
    print(f"ours / baseline throughput: {ratio:.1f}x")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
        "dialogues": len(dialogues),
        "track_hours": round(track_h, 4),
        "cpu_s": {"ours": round(cpu_ours, 3), "baseline": round(cpu_base, 3)},
        "track_hours_per_cpu_min": {"ours": round(track_h / (cpu_ours / 60), 3),
                                    "baseline": round(track_h / (cpu_base / 60), 3)},
        "ratio": round(ratio, 2),
        "events": n_events,
        "segments": n_segments,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
