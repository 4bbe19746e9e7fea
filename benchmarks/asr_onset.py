"""How early faster-whisper starts the first word of an answer, against exact labels.

On a synthetic corpus (``duplexgym corpus build synthetic --out DIR``: ``DIR/source/synNNNN.truth.json``
holds every turn shift's true answer onset), each turn segment's human reference track -- what the
``oracle`` agent plays, and so the ``output.wav`` the metrics see -- is turned into the benchmark's
16 kHz PCM_16 output (:func:`duplexgym.rewards.activity.output_pcm16`) and transcribed as the
``asr`` metric source does (:func:`duplexgym.rewards.asr.transcribe_16k`: whisper-base, int8,
greedy, word timestamps), with faster-whisper's VAD filter on (what the metrics use) and off. The
answer's first word is the first word ending after the true onset (earlier words belong to
earlier speech). Reported per setting: its start minus the true onset (median, p10, p90, n), raw
and refined (:func:`duplexgym.rewards.fdb.refine_first_onset`: snapped to the silero VAD onset
inside the word, the vad reader's spans), and the VAD onset alone.

Usage: python benchmarks/asr_onset.py [--corpus DIR] [--limit N]
(default: runs/default-corpus). Prints a table and writes benchmarks/results/asr_onset.json.
"""

from __future__ import annotations

from duplexgym.runtime import configure_runtime

configure_runtime()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from duplexgym.envs.corpus import ReplayCorpus  # noqa: E402
from duplexgym.rewards.activity import output_pcm16, pcm16_float, speech_from_audio  # noqa: E402
from duplexgym.rewards.asr import transcribe_16k, whisper_base_dir  # noqa: E402
from duplexgym.rewards.fdb import refine_first_onset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "asr_onset.json"
#: A labelled turn shift belongs to a segment when its turn end lies this close to the segment's.
MATCH_S = 0.3


def truth_onsets(corpus: ReplayCorpus) -> list[tuple]:
    """``[(segment, true answer onset in episode seconds)]`` for the turn segments with a label."""
    truths: dict[str, list[dict]] = {}
    out = []
    for seg in corpus.select(("turn",)):
        if seg.dialogue not in truths:
            path = corpus.path / "source" / f"{seg.dialogue}.truth.json"
            truths[seg.dialogue] = json.loads(path.read_text())["events"] if path.is_file() else []
        shifts = [e for e in truths[seg.dialogue]
                  if e["type"] == "turn" and e["to"] == seg.reference and abs(e["end_s"] - seg.event_s) <= MATCH_S]
        if len(shifts) == 1 and seg.start_s <= shifts[0]["onset_s"] < seg.end_s:
            out.append((seg, shifts[0]["onset_s"] - seg.start_s))
    return out


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = np.asarray(values)
    return {"median_s": round(float(np.median(v)), 3), "p10_s": round(float(np.percentile(v, 10)), 3),
            "p90_s": round(float(np.percentile(v, 90)), 3), "mean_s": round(float(v.mean()), 3), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT / "runs" / "default-corpus"))
    parser.add_argument("--limit", type=int, default=None, help="at most N turn segments")
    args = parser.parse_args()
    corpus = ReplayCorpus(args.corpus)
    labelled = truth_onsets(corpus)[: args.limit]
    if not labelled:
        parser.error(f"{corpus.path}: no turn segment with a label in source/*.truth.json (build it with "
                     "`duplexgym corpus build synthetic`)")
    model = whisper_base_dir()
    rows = {name: [] for name in ("vad_onset", "filter_on_raw", "filter_on_refined", "filter_off_raw",
                                  "filter_off_refined")}
    missed = {"filter_on": 0, "filter_off": 0}
    speech_s, t0 = 0.0, time.perf_counter()
    for seg, onset in labelled:
        reference = np.asarray(corpus.audio(seg)[1], dtype=np.float32)
        spans = speech_from_audio(reference).spans_s
        onsets = [a for a, _ in spans]
        speech_s += sum(b - a for a, b in spans)
        near = [a for a in onsets if abs(a - onset) < 0.5]
        if near:
            rows["vad_onset"].append(min(near, key=lambda a: abs(a - onset)) - onset)
        audio = pcm16_float(output_pcm16(reference, seg.n_frames))
        for name, vad_filter in (("filter_on", True), ("filter_off", False)):
            words = [w for w in transcribe_16k(audio, model, vad_filter=vad_filter) if w[1] > onset]
            if not words:
                missed[name] += 1
                continue
            rows[f"{name}_raw"].append(words[0][0] - onset)
            rows[f"{name}_refined"].append(refine_first_onset(words, onsets)[0][0] - onset)
    wall = time.perf_counter() - t0
    result = {
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
        "corpus": str(corpus.path), "turn_segments": len(labelled), "reference_speech_s": round(speech_s, 1),
        "seconds": round(wall, 1), "asr": "faster-whisper whisper-base int8, beam 1, en, word timestamps",
        "bias": {name: stats(values) for name, values in rows.items()},
        "no_answer_word": missed,
        "definition": "first word ending after the true answer onset: its start minus that onset (s); refined: "
                      "snapped to the silero onset inside it; vad_onset: the nearest silero span start (pad 30 ms)",
    }
    print(f"{len(labelled)} labelled turn segments of {corpus.path}, {speech_s:.0f} s of reference speech, "
          f"{wall:.0f} s")
    print(f"{'first word start - true onset':<32}{'median':>8}{'p10':>8}{'p90':>8}{'n':>6}")
    for name in rows:
        s = result["bias"][name]
        if s["n"]:
            print(f"{name:<32}{s['median_s']:>8.3f}{s['p10_s']:>8.3f}{s['p90_s']:>8.3f}{s['n']:>6}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
