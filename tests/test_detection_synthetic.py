"""Event detection against the exact labels of the embedded synthetic corpus.

Per event type, precision and recall of the detected events (the builder's ``events.jsonl``)
against the generator's ``*.truth.json`` must be >= 0.9, an event matching when its speakers agree
and its anchor time is within 0.3 s. The figures are printed (pytest -s).
"""

import json

import pytest

TOLERANCE_S = 0.3
MIN_SCORE = 0.9


def key(event: dict):
    """(type, speakers, anchor_s) of a detected or a labelled event."""
    kind = event["type"]
    if kind == "pause":
        return kind, (event["speaker"],), event["start_s"]
    if kind == "turn":
        return kind, (event.get("from_speaker", event.get("from")), event.get("to_speaker", event.get("to"))), event["end_s"]
    if kind == "backchannel":
        return kind, (event["speaker"],), event["start_s"]
    return kind, (event["speaker"],), event["onset_s"]


def matches(a, pool):
    return any(a[0] == b[0] and a[1] == b[1] and abs(a[2] - b[2]) <= TOLERANCE_S for b in pool)


@pytest.fixture(scope="module")
def synthetic(default_corpus):
    out, summary = default_corpus
    detected, truth = {}, {}
    for line in (out / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        detected.setdefault(e["dialogue"], []).append(key(e))
    for path in sorted((out / "source").glob("*.truth.json")):
        t = json.loads(path.read_text())
        truth[t["dialogue"]] = [key(e) for e in t["events"]]
    return summary, detected, truth


def test_default_corpus_size(synthetic):
    summary, _, truth = synthetic
    assert summary.dialogues == len(truth) >= 40
    assert summary.audio_s >= 600
    assert not summary.skipped
    assert all(n >= 40 for n in summary.segments.values()), summary.segments


@pytest.mark.parametrize("kind", ["pause", "turn", "backchannel", "interruption"])
def test_precision_and_recall_per_event_type(synthetic, kind):
    _, detected, truth = synthetic
    tp_truth = n_truth = tp_found = n_found = 0
    for dialogue, labels in truth.items():
        mine = [e for e in detected.get(dialogue, []) if e[0] == kind]
        labels = [e for e in labels if e[0] == kind]
        n_truth += len(labels)
        n_found += len(mine)
        tp_truth += sum(matches(t, mine) for t in labels)
        tp_found += sum(matches(f, labels) for f in mine)
    recall, precision = tp_truth / n_truth, tp_found / max(1, n_found)
    print(f"\n{kind}: {n_truth} labelled, {n_found} detected; precision {precision:.3f}, recall {recall:.3f}")
    assert n_truth >= 40
    assert precision >= MIN_SCORE and recall >= MIN_SCORE
