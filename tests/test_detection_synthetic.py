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


def test_paper_rules_on_the_embedded_corpus(default_corpus, tmp_path):
    """The paper's rules (``--rules paper``) against its criteria applied to the labels' exact
    speech. The default corpus' short turns (12-25 s dialogues, utterances mostly under 5 s) leave
    the paper's tau_min little to select: backchannels mostly; the figures are printed."""
    import shutil

    from duplexgym.corpora.build import OWNER_NAME, BuildOptions, build_corpus
    from duplexgym.corpora.manifest import read_manifest

    from tests.test_dense_detection import expand, paper_truth, scores

    out, _ = default_corpus
    paper = tmp_path / "paper"
    shutil.copytree(out / "source", paper / "source")  # rendered already (its stamp matches)
    shutil.copytree(out / ".work" / "vad", paper / ".work" / "vad")  # the same tracks: VAD cached
    shutil.copy(out / OWNER_NAME, paper / OWNER_NAME)
    summary = build_corpus("synthetic", paper, BuildOptions(rules="paper"))
    found = {}
    for line in (paper / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        found.setdefault(e["dialogue"], []).extend(expand(e))
    truths = [json.loads(p.read_text()) for p in sorted((paper / "source").glob("*.truth.json"))]
    truth = {t["dialogue"]: [k for e in paper_truth(t) for k in expand(e)] for t in truths}
    for kind in ("pause", "turn", "backchannel", "interruption"):
        n_t, n_f, precision, recall, _ = scores(found, truth, kind)
        print(f"\npaper rules, embedded corpus, {kind}: {n_t} in the truth, {n_f} detected; "
              f"precision {precision:.3f}, recall {recall:.3f}")
        if n_t >= 10:
            assert precision >= 0.8 and recall >= 0.9
    print(f"\nsegments of the embedded corpus, paper rules: {summary.segments}")
    assert sum(summary.segments.values()) == len(read_manifest(paper)) > 0
