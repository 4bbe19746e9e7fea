"""Real human speech: the 30 s two-person phone call shipped in the pyannote.audio 4.0.7 wheel.

The call is a mono mix; it is split into two channels with its RTTM speaker turns (each channel
keeps the mix inside its speaker's turns, so overlaps appear on both). The floor changes and the
overlaps that our VAD + event detection find are compared with the RTTM's. Measured agreement is
printed (run pytest with -s to see it) and must stay high.
"""

import json

import numpy as np
import pytest
import soundfile as sf
from duplexgym.corpora.audio import read_tracks
from duplexgym.corpora.build import BuildOptions, build_corpus

TOLERANCE_S = 0.3


def rttm_floor_changes(turns):
    """(from, to, onset_s) for every RTTM turn that takes the floor from the other speaker.
    A turn lying entirely inside the other speaker's turn does not take the floor."""
    turns = sorted(turns, key=lambda t: t[1])
    changes, holder = [], None  # holder: (speaker, end)
    for spk, start, end in turns:
        if holder is not None and spk != holder[0]:
            if end <= holder[1]:
                continue
            changes.append((holder[0], spk, start))
        if holder is None or spk != holder[0] or end > holder[1]:
            holder = (spk, end)
    return changes


def overlaps(a, b):
    out = []
    for s1, e1 in a:
        for s2, e2 in b:
            lo, hi = max(s1, s2), min(e1, e2)
            if hi > lo:
                out.append((lo, hi))
    return sorted(out)


@pytest.fixture(scope="module")
def call_corpus(pyannote_call, tmp_path_factory):
    root = tmp_path_factory.mktemp("call")
    mix = read_tracks(pyannote_call["wav"], channels=1)[0]
    speakers = sorted({t[0] for t in pyannote_call["turns"]})
    tracks = np.zeros((2, len(mix)), dtype=np.float32)
    ramp = 240  # 10 ms fades at turn edges
    for ch, spk in enumerate(speakers):
        mask = np.zeros(len(mix), dtype=np.float32)
        for s, start, end in pyannote_call["turns"]:
            if s == spk:
                lo, hi = int(start * 24_000), min(len(mix), int(end * 24_000))
                mask[lo:hi] = 1.0
                mask[lo : lo + ramp] = np.linspace(0, 1, len(mask[lo : lo + ramp]))
                mask[max(lo, hi - ramp) : hi] = np.linspace(1, 0, len(mask[max(lo, hi - ramp) : hi]))
        tracks[ch] = mix * mask
    sf.write(str(root / "call.wav"), tracks.T, 24_000, subtype="PCM_16")
    out = tmp_path_factory.mktemp("call_corpus")
    summary = build_corpus(root, out, BuildOptions())
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    work = json.loads((out / ".work" / "dialogues" / "call.json").read_text())
    label = {spk: "AB"[i] for i, spk in enumerate(speakers)}
    turns = [(label[s], a, b) for s, a, b in pyannote_call["turns"]]
    return summary, events, work["spans"], turns


def test_floor_changes_agree_with_the_rttm(call_corpus):
    summary, events, _, turns = call_corpus
    assert summary.dialogues == 1 and not summary.skipped
    truth = rttm_floor_changes(turns)
    found = [(e["from_speaker"], e["to_speaker"], e["onset_s"]) for e in events if e["type"] == "turn"]
    found += [(e["interrupted"], e["speaker"], e["onset_s"]) for e in events if e["type"] == "interruption"]
    matched = sum(any(f[:2] == t[:2] and abs(f[2] - t[2]) <= TOLERANCE_S for f in found) for t in truth)
    correct = sum(any(f[:2] == t[:2] and abs(f[2] - t[2]) <= TOLERANCE_S for t in truth) for f in found)
    recall, precision = matched / len(truth), correct / max(1, len(found))
    print(f"\nreal call: {len(truth)} RTTM floor changes, {len(found)} detected; "
          f"recall {recall:.2f}, precision {precision:.2f}")
    assert len(truth) >= 7
    assert recall >= 0.85 and precision >= 0.85


def test_overlaps_agree_with_the_rttm(call_corpus):
    _, _, spans, turns = call_corpus
    truth = overlaps([(a, b) for s, a, b in turns if s == "A"], [(a, b) for s, a, b in turns if s == "B"])
    found = overlaps(spans["A"], spans["B"])
    hit = sum(any(lo < e + TOLERANCE_S and hi > s - TOLERANCE_S for s, e in found) for lo, hi in truth)
    total_truth, total_found = sum(b - a for a, b in truth), sum(b - a for a, b in found)
    print(f"\nreal call: {len(truth)} RTTM overlaps ({total_truth:.2f} s), {len(found)} detected "
          f"({total_found:.2f} s); {hit} of the RTTM overlaps found")
    assert hit >= len(truth) - 1
    assert abs(total_found - total_truth) <= 0.5 * total_truth + 0.3
