"""Full-Duplex-Bench v1's scoring, re-implemented from the official scripts' rules, reading only the
files of an export: the round-trip tests' stand-in for running those scripts.

What it follows (DanielLin94144/Full-Duplex-Bench, commit d7336bd, ``v1_v1.5/evaluation/``), written
here from their behaviour and on purpose independent of :mod:`duplexgym.rewards.fdb`:

- every task: a sample is a sub-folder; its ``output.json`` is ``{"chunks": [{"text",
  "timestamp": [start, end]}, ...]}`` in file order. Takeover: no chunk -> 0; else 0 when
  ``last end - first start < 1`` and there are at most 3 chunks, else 1.
- pause handling (``eval_pause_handling.py``): that rule per sample.
- smooth turn-taking (``eval_smooth_turn_taking.py``): the rule; latency ``first start -
  turn_taking.json[0]["timestamp"][0]`` for TOR 1 samples, a negative one counted as 0.
- user interruption (``eval_user_interruption.py``): the same from ``interrupt.json[0]["timestamp"][1]``
  (the chunks were written for the audio after that end).
- backchannel (``eval_backchannel.py``): silero's ``get_speech_timestamps`` with its defaults and
  ``return_seconds=True`` on ``output.wav`` as read from the file (16 kHz assumed); per segment in
  order: longer than 3 s -> TOR 1 and stop; else count the chunks overlapping it (inside it, or
  holding its end, or holding its start), > 3 -> TOR 1, else < 1 s and <= 2 chunks -> TOR 0,
  else 1, and keep the segment as a prediction. Frequency: predictions / (samples / rate). JSD:
  ``int(length / 0.2) + 1`` bins, each prediction +1 on its bins (truncated quotients, bins past
  the end dropped), +1e-10, normalised; the task folder's ``icc_gt_distribution.json`` entry of the
  sample linearly interpolated onto as many points; scipy's Jensen-Shannon distance (its nan for
  histograms equal up to rounding taken as 0); 1 without predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

MARKERS = {"pause": "pause_handling", "turn": "turn_taking", "backchannel": "backchannel", "interruption": "interrupt"}


def _chunks(sample: Path) -> list[tuple[float, float, str]]:
    doc = json.loads((sample / "output.json").read_text())
    return [(c["timestamp"][0], c["timestamp"][1], c["text"]) for c in doc["chunks"]]


def _tor(chunks) -> int:
    if len(chunks) == 0:
        return 0
    span = chunks[-1][1] - chunks[0][0]
    if span < 1 and len(chunks) <= 3:
        return 0
    return 1


def _latency(chunks, reference_s: float) -> float:
    gap = chunks[0][0] - reference_s
    return 0 if gap < 0 else gap


def _samples(task_dir: Path) -> list[Path]:
    return sorted((p for p in task_dir.iterdir() if p.is_dir()), key=lambda p: int(p.name))


def score_pause(task_dir: Path) -> dict[str, dict]:
    return {s.name: {"tor": _tor(_chunks(s))} for s in _samples(task_dir)}


def score_turn(task_dir: Path) -> dict[str, dict]:
    out = {}
    for s in _samples(task_dir):
        chunks = _chunks(s)
        turn_end = json.loads((s / "turn_taking.json").read_text())[0]["timestamp"][0]
        tor = _tor(chunks)
        out[s.name] = {"tor": tor, "latency_s": _latency(chunks, turn_end) if tor else None}
    return out


def score_interruption(task_dir: Path) -> dict[str, dict]:
    out = {}
    for s in _samples(task_dir):
        chunks = _chunks(s)
        end = json.loads((s / "interrupt.json").read_text())[0]["timestamp"][1]
        tor = _tor(chunks)
        out[s.name] = {"tor": tor, "latency_s": _latency(chunks, end) if tor else None}
    return out


def _vad_segments(wav: Path) -> tuple[list[tuple[float, float]], float]:
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    global _VAD
    if _VAD is None:
        _VAD = load_silero_vad()
    audio, rate = sf.read(str(wav), dtype="float32")
    stamps = get_speech_timestamps(torch.from_numpy(audio), _VAD, return_seconds=True)
    return [(s["start"], s["end"]) for s in stamps], len(audio) / rate


_VAD = None


def score_backchannel(task_dir: Path) -> dict[str, dict]:
    from scipy.interpolate import interp1d
    from scipy.spatial.distance import jensenshannon

    reference = json.loads((task_dir / "icc_gt_distribution.json").read_text())
    out = {}
    for s in _samples(task_dir):
        segments, length_s = _vad_segments(s / "output.wav")
        chunks = _chunks(s)
        tor, kept = 0, []
        for start, end in segments:
            duration = end - start
            if duration > 3:
                tor = 1
                break
            n = sum(1 for a, b, _ in chunks
                    if (a >= start and b <= end) or (a <= end < b) or (a <= start < b))
            if n > 3:
                tor = 1
            elif duration < 1 and n <= 2:
                tor = 0
            else:
                tor = 1
            kept.append((start, end))
        if kept:
            bins = np.zeros(int(length_s / 0.2) + 1)
            for start, end in kept:
                for i in range(int(start / 0.2), int(end / 0.2) + 1):
                    if i < len(bins):
                        bins[i] += 1
            model = (bins + 1e-10) / (bins + 1e-10).sum()
            human = np.asarray(reference[s.name], dtype=float)
            resized = interp1d(np.linspace(0, 1, len(human)), human, kind="linear",
                               fill_value="extrapolate")(np.linspace(0, 1, len(model)))
            jsd = float(jensenshannon(model, resized))
            if np.isnan(jsd):  # the script's sqrt of a divergence a rounding error below 0 (equal
                jsd = 0.0      # histograms): nan there, which would make its mean nan; 0 here
        else:
            jsd = 1.0
        out[s.name] = {"tor": tor, "frequency": len(kept) / length_s, "jsd": jsd, "segments": segments}
    return out


SCORERS = {"pause": score_pause, "turn": score_turn, "backchannel": score_backchannel,
           "interruption": score_interruption}


def score_export(root: Path) -> dict[str, dict[str, dict]]:
    """``{axis: {sample: per-sample values}}`` for every task folder of an export."""
    out = {}
    for task_dir in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        axis = next((a for a, marker in MARKERS.items() if marker in task_dir.name), None)
        if axis is not None:
            out[axis] = SCORERS[axis](task_dir)
    return out


def dataset_numbers(axis: str, per_sample: dict[str, dict]) -> dict:
    """The scripts' dataset numbers: means over samples (latency: over TOR 1 samples)."""
    values = list(per_sample.values())
    out = {"tor": float(np.mean([v["tor"] for v in values]))}
    if axis in ("turn", "interruption"):
        took = [v["latency_s"] for v in values if v["tor"] == 1]
        out["latency_s"] = float(np.mean(took)) if took else None
    if axis == "backchannel":
        out["frequency"] = float(np.mean([v["frequency"] for v in values]))
        out["jsd"] = float(np.mean([v["jsd"] for v in values]))
    return out
