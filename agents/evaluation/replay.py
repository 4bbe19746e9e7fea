"""``duplexgym replay EPISODE --check`` and ``duplexgym rescore``: records in, the same (or new)
rewards out.

Replay rebuilds the env from the record's configuration, resets it on the record's segment, feeds
the recorded actions back frame by frame and compares, bit for bit, the observation stream
(SHA-256), every step's reward and the final ``reward_terms``. Rescoring recomputes the rewards of
saved records under another reward spec, with no env and no agent.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
from duplexgym.rewards.dense import dense_rewards
from duplexgym.rewards.record import EpisodeRecord
from duplexgym.rewards.scoring import score_episode
from duplexgym.rewards.spec import load_spec


def replay_check(path: str | Path) -> dict:
    """Replay one record; ``{"episode", "ok", "mismatches": [...], "steps"}``."""
    record = EpisodeRecord.load(path)
    cfg = record.env
    env = gym.make(cfg["id"] or "duplexgym/Interactivity-v0", corpus=cfg["corpus"], obs_mode=cfg["obs_mode"],
                   action_mode=cfg["action_mode"], rewards=cfg["rewards"], codec=cfg["codec"],
                   text_card=cfg["text_card"], axes=tuple(cfg["axes"]), text_tokenizer=cfg.get("text_tokenizer"))
    base = env.unwrapped
    mismatches = []
    if base.corpus.codec_id != cfg.get("codec_id"):
        mismatches.append(f"corpus codec {base.corpus.codec_id} differs from the recorded {cfg.get('codec_id')}")
    obs, info = env.reset(seed=record.seed, options={"segment": record.segment.id})
    if base._obs_sha256 != record.obs_sha256:
        mismatches.append("observation stream differs (SHA-256)")
    n = record.n_frames
    rewards = np.zeros(n)
    if record.text_tokens is not None:
        actions = np.concatenate([record.text_tokens[:, None].astype(np.int64), record.audio_codes.T.astype(np.int64)], axis=1)
    else:
        actions = record.audio.reshape(n, -1)
    for t in range(n):
        obs, rewards[t], done, _, info = env.step(actions[t])
    if not np.array_equal(rewards, record.rewards):
        bad = int(np.flatnonzero(rewards != record.rewards)[0])
        mismatches.append(f"reward of step {bad} differs: {rewards[bad]!r} vs recorded {record.rewards[bad]!r}")
    if _canonical(info["reward_terms"]) != _canonical(record.reward_terms):
        mismatches.append("final reward_terms differ")
    return {"episode": str(path), "ok": not mismatches, "mismatches": mismatches, "steps": n}


def rescore(records_dir: str | Path, spec_source) -> tuple[dict, list[dict]]:
    """Recompute every record under ``spec_source``; the per-episode ``reward_terms`` (with the
    dense total of the new spec) and the record paths."""
    from duplexgym.agents.evaluation.rollout import summarize

    spec = load_spec(spec_source)
    paths = sorted(Path(records_dir).rglob("*.json")) if Path(records_dir).is_dir() else [Path(records_dir)]
    paths = [p for p in paths if p.with_suffix(".npz").is_file()]
    if not paths:
        raise FileNotFoundError(f"{records_dir}: no episode records (.json + .npz) found")
    results = []
    for p in paths:
        record = EpisodeRecord.load(p)
        dense = dense_rewards(record, spec)
        results.append(score_episode(record, spec, float(dense.sum())))
    return summarize(results), results


def _canonical(terms: dict) -> str:
    return json.dumps(terms, sort_keys=True, default=float)
