"""``duplexgym replay EPISODE --check`` and ``duplexgym rescore``: records in, the same (or new)
rewards out.

Replay rebuilds the env from the record's configuration, resets it on the record's segment, feeds
the recorded actions back frame by frame and compares, bit for bit, the observation stream
(SHA-256), every step's reward, the final ``reward_terms`` and every array the replay produces
with the stored one; every stored array is also checked against the digest its ``.json`` holds
(an edited or corrupt ``.npz`` is a MISMATCH naming the file). Rescoring recomputes the rewards of
saved records under another reward spec, with no env and no agent.

A record is a file anyone can hand you, so replay never contacts a server or loads a model that
only the record names: a term judged by an LLM server (``quality`` with ``backend: openai``) or by a
model folder the record names is taken from the record's stored value (and the check says so),
unless the caller names the judge (``judge``: ``{"base_url": ..., "model": ...}`` from the user's
own command line). ``rescore`` scores under the spec the user passes (``--rewards``), never the
records' own. Records of live dialogues (``duplexgym/Conversation-v0``, a ``live`` schedule) go to
:func:`.live.replay_check_live` and :func:`.live.rescore_live`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np

from duplexgym.rewards.dense import dense_rewards
from duplexgym.constants import FRAME_S, FRAME_SAMPLES
from duplexgym.rewards.record import ARRAY_NAMES, PREFIX_ARRAYS, EpisodeRecord, RecordError
from duplexgym.rewards.scoring import score_episode
from duplexgym.rewards.spec import load_spec


def _named_by_file(name: str, params: dict) -> str | None:
    """Why term ``name``'s params would contact a server or load a model that the file names (or None)."""
    if params.get("backend") == "openai":
        return f"its judge server {params.get('base_url') or '(from the environment)'} comes from the record"
    if params.get("model_dir") or params.get("asr_model_dir"):
        return "its model folder comes from the record"
    return None


def replay_check(path: str | Path, judge: dict | None = None) -> dict:
    """Replay one record; ``{"episode", "ok", "mismatches": [...], "notes": [...], "steps"}``.

    ``judge``: ``{"base_url", "model"}`` of the user's own judge server to re-judge terms whose
    server the record names (their API key from the environment variable their params name);
    without it those terms are taken from the record (a note says which)."""
    try:
        record = EpisodeRecord.load(path)
    except RecordError as exc:
        return {"episode": str(path), "ok": False, "mismatches": [str(exc)], "notes": [], "steps": 0}
    if record.live is not None:  # a live dialogue (Conversation-v0): its own env and checks
        from duplexgym.agents.evaluation.live import replay_check_live

        return replay_check_live(path, judge=judge)
    cfg = record.env
    spec = dict(cfg["rewards"])
    stored, notes = {}, []
    terms = dict(spec.get("terms") or {})
    for name, term in terms.items():
        params = dict(term.get("params") or {})
        why = _named_by_file(name, params)
        if why is None:
            continue
        if judge and params.get("backend") == "openai":
            params.update({k: v for k, v in judge.items() if v is not None})
            terms[name] = {**term, "params": params}
            notes.append(f"{name}: re-judged by {judge.get('base_url')} (given on the command line)")
        else:
            recorded = (record.reward_terms.get("terms") or {}).get(name)
            failed = (record.reward_terms.get("failed") or {}).get(name)
            stored[name] = recorded if recorded is not None else {"failed": failed or "not in the record"}
            notes.append(f"{name}: taken from the record, not re-judged ({why}; pass --judge-url to re-judge "
                         "with your own server)")
    spec["terms"] = terms
    env = gym.make(cfg["id"] or "duplexgym/Interactivity-v0", corpus=cfg["corpus"], obs_mode=cfg["obs_mode"],
                   action_mode=cfg["action_mode"], rewards=spec, codec=cfg["codec"],
                   text_card=cfg["text_card"], axes=tuple(cfg["axes"]), text_tokenizer=cfg.get("text_tokenizer"),
                   lead_in_s=float(cfg.get("lead_in_s") or 0.0))
    base = env.unwrapped
    mismatches = []
    if base.corpus.codec_id != cfg.get("codec_id"):
        mismatches.append(f"corpus codec {base.corpus.codec_id} differs from the recorded {cfg.get('codec_id')}")
    prefix = record.prefix or {}
    lead, context = int(prefix.get("lead_in_frames", 0)), int(prefix.get("context_frames", 0))
    options = {"segment": record.segment.id, "lead_in_s": lead * FRAME_S, "context_s": context * FRAME_S}
    if stored:
        options["stored_terms"] = stored
    _, info = env.reset(seed=record.seed, options=options)
    if base._obs_sha256 != record.obs_sha256:
        mismatches.append("observation stream differs (SHA-256)")
    if (info.get("lead_in_frames", 0), info.get("context_frames", 0)) != (lead, context):
        mismatches.append(f"the corpus gives {info.get('context_frames', 0)} context frames, the record has {context}")
    actions = np.concatenate([_actions(prefix, lead + context), _actions(record.__dict__, record.n_frames)])
    rewards = np.zeros(len(actions))
    for t in range(len(actions)):
        _, rewards[t], _, _, info = env.step(actions[t])
    if rewards[: lead + context].any():
        mismatches.append("a frame before the segment was rewarded")
    rewards = rewards[lead + context:]
    if not np.array_equal(rewards, record.rewards):
        bad = int(np.flatnonzero(rewards != record.rewards)[0])
        mismatches.append(f"reward of step {bad} differs: {rewards[bad]!r} vs recorded {record.rewards[bad]!r}")
    if _canonical(info["reward_terms"]) != _canonical(record.reward_terms):
        mismatches.append("final reward_terms differ")
    replayed = base.episode_record()
    pairs = [(name, getattr(replayed, name), getattr(record, name)) for name in ARRAY_NAMES]
    pairs += [(f"prefix_{name}", (replayed.prefix or {}).get(name), prefix.get(name)) for name in PREFIX_ARRAYS]
    for name, mine, theirs in pairs:
        if (mine is None) != (theirs is None) or (mine is not None and not (
                mine.dtype == theirs.dtype and np.array_equal(mine, theirs))):
            mismatches.append(f"array {name} differs from what the replay produces")
    env.close()
    return {"episode": str(path), "ok": not mismatches, "mismatches": mismatches, "notes": notes, "steps": len(actions)}


def _actions(arrays: dict, n: int) -> np.ndarray:
    """The ``n`` recorded actions (``[n, 9]`` tokens or ``[n, 1920]`` samples) of a record's arrays."""
    if n == 0:
        return np.zeros((0, 9), np.int64) if arrays.get("audio") is None else np.zeros((0, FRAME_SAMPLES), np.float32)
    if arrays.get("text_tokens") is not None:
        return np.concatenate([arrays["text_tokens"][:, None].astype(np.int64),
                               arrays["audio_codes"].T.astype(np.int64)], axis=1)
    return arrays["audio"].reshape(n, FRAME_SAMPLES)


def rescore(records_dir: str | Path, spec_source) -> tuple[dict, list[dict]]:
    """Recompute every record under ``spec_source``; the summary and the per-episode ``reward_terms``
    (with the dense total of the new spec).

    When the spec does not say how to read the agent's activity (no ``activity.reader``), each
    record is read as the env that made it read it; the summary's ``activity_readers`` counts the
    records per reader used, and ``notes`` says when the spec's reader differs from the records'."""
    from duplexgym.agents.evaluation.rollout import summarize

    raw = _raw_spec(spec_source)
    spec = load_spec(spec_source)
    reader_given = isinstance(raw, dict) and "reader" in (raw.get("activity") or {})
    paths = sorted(Path(records_dir).rglob("*.json")) if Path(records_dir).is_dir() else [Path(records_dir)]
    paths = [p for p in paths if p.with_suffix(".npz").is_file()]
    if not paths:
        raise FileNotFoundError(f"{records_dir}: no episode records (.json + .npz) found")
    live = sum(1 for p in paths if _is_live_meta(p))  # the small .json only: each record is loaded once below
    if live:  # live dialogues (Conversation-v0) are scored per event of the dialogue
        if live < len(paths):
            raise ValueError(f"{records_dir}: holds {live} live dialogue records and {len(paths) - live} replay "
                             "episode records; rescore each kind on its own")
        from duplexgym.agents.evaluation.live import rescore_live

        return rescore_live(records_dir, spec_source)
    results, readers, differs = [], {}, 0
    for p in paths:
        record = EpisodeRecord.load(p)
        made_with = ((record.env.get("rewards") or {}).get("activity") or {}).get("reader")
        mine = spec
        if not reader_given and made_with and made_with != spec.activity.reader:
            mine = dataclasses.replace(spec, activity=dataclasses.replace(spec.activity, reader=made_with))
        differs += int(made_with is not None and mine.activity.reader != made_with)
        readers[mine.activity.reader] = readers.get(mine.activity.reader, 0) + 1
        dense = dense_rewards(record, mine)
        results.append(score_episode(record, mine, float(dense.sum())))
    summary = summarize(results)
    summary["activity_readers"] = readers
    summary["notes"] = []
    if differs:
        summary["notes"].append(f"{differs} record(s) were made with another activity reader than the spec's "
                                f"{spec.activity.reader!r} (rescored with the spec's, as it says)")
    elif not reader_given:
        summary["notes"].append("activity reader: the records' own (the spec names none)")
    return summary, results


def _is_live_meta(path: Path) -> bool:
    """Whether a record's metadata holds a live schedule (read without loading its arrays)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("live") is not None
    except (OSError, ValueError, AttributeError):
        return False  # EpisodeRecord.load reports the problem with the file


def _raw_spec(source):
    """The spec as the user wrote it (to see which fields it sets), or None for a built spec."""
    if isinstance(source, dict):
        return source
    if isinstance(source, (str, Path)):
        import yaml

        try:
            return yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return None  # load_spec reports it
    return None


def _canonical(terms: dict) -> str:
    return json.dumps(terms, sort_keys=True, default=float)
