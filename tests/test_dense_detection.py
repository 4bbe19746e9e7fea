"""Dense talk is real talk: both segment rule sets on dense two-voice dialogues with exact labels.

The corpus (``corpora/synthetic/dense.py``, real flite speech, real silero VAD) puts events right
next to other events: a backchannel right after the listener's own turn, a turn taken 0.8 s after
a backchannel, an interruption followed by an overlapping turn shift, chained interruptions, among
ordinary ones. Our rules (``--rules duplexgym``) are scored against every labelled event; the
paper's (``--rules paper``) against the labelled events that meet its criteria: its criteria
applied to the exact speech of the labels (:func:`label_spans`). An event matches when its type
and speakers agree and its anchor is within 0.3 s; pauses and backchannels of the paper's rules
are scored one by one (an utterance event lists them). The figures are printed (pytest -s).
"""

import json
from collections import Counter

import numpy as np
import pytest
from duplexgym.corpora.build import BuildOptions, build_corpus
from duplexgym.corpora.manifest import read_manifest
from duplexgym.corpora.paper import detect_paper_events
from duplexgym.corpora.stats import corpus_stats
from duplexgym.corpora.synthetic.dense import DENSE_SCENES, DenseParams, check_dense, generate_dense_corpus, label_spans

from duplexgym.constants import AXES
from tests.test_detection_synthetic import key, matches

PARAMS = DenseParams()


def expand(event: dict) -> list[tuple]:
    """Match keys of one event: one per pause / backchannel of a paper utterance event."""
    if event["type"] == "pause" and "pauses_s" in event:
        return [("pause", (event["speaker"],), a) for a, _ in event["pauses_s"]]
    if event["type"] == "backchannel" and "backchannels_s" in event:
        return [("backchannel", (event["speaker"],), a) for a, _ in event["backchannels_s"]]
    return [key(event)]


def paper_truth(truth: dict) -> list[dict]:
    from dataclasses import asdict

    return [asdict(e) for e in detect_paper_events(label_spans(truth))]


def scores(found: dict, truth: dict, kind: str):
    """(labelled, found, precision, recall, missed keys)."""
    tp_t = n_t = tp_f = n_f = 0
    missed = []
    for dialogue, labels in truth.items():
        mine = [k for k in found.get(dialogue, []) if k[0] == kind]
        labels = [k for k in labels if k[0] == kind]
        n_t, n_f = n_t + len(labels), n_f + len(mine)
        tp_t += sum(matches(t, mine) for t in labels)
        tp_f += sum(matches(f, labels) for f in mine)
        missed += [(dialogue, t) for t in labels if not matches(t, mine)]
    return n_t, n_f, tp_f / max(1, n_f), tp_t / max(1, n_t), missed


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    src = tmp_path_factory.mktemp("dense_source")
    generate_dense_corpus(src, seed=0, params=PARAMS)
    truths = {t["dialogue"]: t for t in (json.loads(p.read_text()) for p in sorted(src.glob("*.truth.json")))}
    out = tmp_path_factory.mktemp("dense_corpus")
    built = {}
    for rules in ("duplexgym", "paper"):  # the same folder: the paper build reuses the VAD
        summary = build_corpus(src, out, BuildOptions(rules=rules, per_axis=100_000, context_s=0))
        events = {}
        for line in (out / "events.jsonl").read_text().splitlines():
            e = json.loads(line)
            events.setdefault(e["dialogue"], []).extend(expand(e))
        built[rules] = {"summary": summary, "events": events, "manifest": read_manifest(out),
                        "info": json.loads((out / "corpus.json").read_text()), "stats": corpus_stats(out)}
    return truths, built, out


def test_the_dense_corpus_holds_every_scene_and_unambiguous_labels(dense):
    truths, built, _ = dense
    assert len(truths) == PARAMS.n_dialogues and not built["duplexgym"]["summary"].skipped
    for truth in truths.values():
        assert check_dense(truth) == []
        scenes = {e.get("scene") for e in truth["events"]}
        assert set(DENSE_SCENES) <= scenes, truth["dialogue"]
    counts = Counter(e["type"] for t in truths.values() for e in t["events"])
    assert all(counts[a] >= 30 for a in AXES), counts
    paper = Counter(k[0] for t in truths.values() for e in paper_truth(t) for k in expand(e))
    assert all(paper[a] >= 10 for a in AXES), paper  # fewer: the paper's tau_min


@pytest.mark.parametrize("kind", AXES)
def test_our_rules_find_events_next_to_events(dense, kind):
    truths, built, _ = dense
    labels = {d: [key(e) for e in t["events"]] for d, t in truths.items()}
    n_t, n_f, precision, recall, missed = scores(built["duplexgym"]["events"], labels, kind)
    scene = {(d, key(e)): e["scene"] for d, t in truths.items() for e in t["events"]}
    by_scene = Counter(scene[m] for m in missed)
    print(f"\nduplexgym rules, dense, {kind}: {n_t} labelled, {n_f} detected; precision {precision:.3f}, "
          f"recall {recall:.3f}; missed by scene {dict(by_scene)}")
    assert precision >= 0.9 and recall >= 0.85


@pytest.mark.parametrize("kind", AXES)
def test_paper_rules_on_dense_talk(dense, kind):
    truths, built, _ = dense
    truth = {d: [k for e in paper_truth(t) for k in expand(e)] for d, t in truths.items()}
    n_t, n_f, precision, recall, _ = scores(built["paper"]["events"], truth, kind)
    # the segments too: each segment's anchor against the truth's events of its axis
    segs = {}
    for s in built["paper"]["manifest"]:
        who = (s.user, s.reference) if s.axis == "turn" else (s.reference,) if s.axis == "backchannel" else (s.user,)
        segs.setdefault(s.dialogue, []).append((s.axis, who, s.event_s))
    anchors = {d: [key(e) for e in paper_truth(t)] for d, t in truths.items()}
    s_t, s_f, s_precision, s_recall, _ = scores(segs, anchors, kind)
    print(f"\npaper rules, dense, {kind}: {n_t} in the truth, {n_f} detected; precision {precision:.3f}, "
          f"recall {recall:.3f}; segments {s_f} of {s_t}: precision {s_precision:.3f}, recall {s_recall:.3f}")
    assert precision >= 0.9 and recall >= 0.9
    assert s_precision >= 0.9 and s_recall >= 0.9


def test_the_papers_events_are_labelled_events(dense):
    """What the paper's criteria select on the exact speech is among the labels: its pauses and
    backchannels are labelled ones, its turns are labelled turn shifts (their end or their onset,
    which the 1 s grouping may move to a backchannel it joins) or labelled interruptions (the stop,
    which the paper's turn gap admits as a negative gap), its barge-ins are
    labelled interruptions or turn shifts whose new speaker's utterance starts before the old one
    ends (an overlap, or a backchannel joined to a turn by the 1 s grouping)."""
    kinds = papers_events_in_the_labels(dense[0])
    print(f"\npaper's events of the dense labels: {dict(kinds)}")


def papers_events_in_the_labels(truths: dict) -> Counter:
    kinds = Counter()
    for d, t in truths.items():
        labels = t["events"]
        for e in paper_truth(t):
            if e["type"] in ("pause", "backchannel"):
                assert all(matches(k, [key(x) for x in labels]) for k in expand(e)), (d, e)
                kinds[e["type"]] += 1
            elif e["type"] == "turn":
                turn = [x for x in labels if x["type"] == "turn" and x["from"] == e["from_speaker"] and (
                        abs(x["end_s"] - e["end_s"]) <= 0.3 or abs(x["onset_s"] - e["onset_s"]) <= 0.3)]
                barge = [x for x in labels if x["type"] == "interruption" and x["interrupted"] == e["from_speaker"]
                         and abs(x["stop_s"] - e["end_s"]) <= 0.3]
                assert turn or barge, (d, e)
                kinds["turn: labelled turn" if turn else "turn: labelled interruption"] += 1
            else:
                intr = [x for x in labels if x["type"] == "interruption" and x["speaker"] == e["speaker"]
                        and abs(x["onset_s"] - e["onset_s"]) <= 0.3]
                # a labelled turn shift to X where X's utterance starts before Y's ends: an overlap,
                # X's backchannel that its turn joins within 1 s (X starts at the backchannel), or
                # Y's backchannel that joins Y's turn (Y's utterance ends at the backchannel)
                early = [x for x in labels if x["type"] == "turn" and x["to"] == e["speaker"]
                         and (abs(x["onset_s"] - e["onset_s"]) <= 0.3 or abs(x["end_s"] - e["stop_s"]) <= 0.3)]
                assert intr or early, (d, e)
                kinds["interruption: labelled interruption" if intr else "interruption: labelled turn, X started early"] += 1
    return kinds


def test_the_corpus_records_its_rules(dense):
    _, built, out = dense
    assert built["duplexgym"]["info"]["rules"] == "duplexgym" and built["duplexgym"]["stats"]["rules"] == "duplexgym"
    assert built["paper"]["info"]["rules"] == "paper" and built["paper"]["stats"]["rules"] == "paper"
    assert built["paper"]["info"]["options"]["paper"]["turn_min_utterance_s"] == 5.0
    assert built["paper"]["summary"].reused_dialogues == 0  # other rules: detection ran again (VAD cached)
    counts = {r: {a: sum(s.axis == a for s in built[r]["manifest"]) for a in AXES} for r in built}
    print(f"\nsegments of the dense corpus: {counts}")
    assert all(counts["paper"][a] < counts["duplexgym"][a] for a in AXES)  # the paper's tau_min
    again = build_corpus(built["paper"]["info"]["source"], out, BuildOptions(rules="paper", per_axis=100_000, context_s=0))
    assert again.reused_dialogues == PARAMS.n_dialogues
    assert (out / "manifest.jsonl").read_text().splitlines() == [s.to_json() for s in built["paper"]["manifest"]]


@pytest.mark.parametrize("env_id", ["duplexgym/PauseHandling-v0", "duplexgym/TurnTaking-v0",
                                    "duplexgym/Backchannel-v0", "duplexgym/Interruption-v0"])
def test_envs_and_rewards_run_on_paper_segments(dense, env_id):
    import gymnasium as gym

    _, _, out = dense  # holds the paper build (the last one)
    env = gym.make(env_id, corpus=str(out), obs_mode="waveform", action_mode="waveform")
    obs, info = env.reset(seed=0)
    n_frames = info["n_frames"]
    done, steps, reward = False, 0, 0.0
    silence = np.zeros(env.action_space.shape, dtype=env.action_space.dtype)
    while not done:
        obs, reward, terminated, truncated, info = env.step(silence)
        done, steps = terminated or truncated, steps + 1
    assert steps == n_frames and np.isfinite(reward)
    assert info["reward_terms"]["terms"], info["reward_terms"]
    env.close()
