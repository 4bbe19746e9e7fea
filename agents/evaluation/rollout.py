"""Running an agent over episodes: ``duplexgym rollout`` (and later ``eval``).

Each finished episode's record is saved under ``out/episodes/`` as ``{index:05d}-{segment}``
(``.npz`` + ``.json``), and ``out/rollout.json`` holds the summary the CLI prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

from duplexgym.constants import AXES


def summarize(per_episode: list[dict]) -> dict:
    """``{"episodes", "reward_mean", "reward_std", "failed", "by_axis": {axis: {"episodes",
    "reward_mean", <metric means>}}}`` from ``reward_terms`` dicts."""
    rewards = np.array([e["reward"] for e in per_episode], dtype=np.float64)
    out = {
        "episodes": len(per_episode),
        "reward_mean": float(rewards.mean()) if len(rewards) else None,
        "reward_std": float(rewards.std()) if len(rewards) else None,
        "failed": sum(1 for e in per_episode if e.get("failed")),
        "by_axis": {},
    }
    for axis in AXES:
        mine = [e for e in per_episode if e["axis"] == axis]
        if not mine:
            continue
        entry = {"episodes": len(mine), "reward_mean": float(np.mean([e["reward"] for e in mine]))}
        metrics: dict[str, list] = {}
        for e in mine:
            for term in e["terms"].values():
                for key, value in term["metrics"].items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        metrics.setdefault(key, []).append(value)
        for key, values in sorted(metrics.items()):
            entry[key] = float(np.mean(values))
        out["by_axis"][axis] = entry
    return out


def play_episode(env, agent, seed: int | None = None, options: dict | None = None) -> dict:
    """Reset ``env``, let ``agent`` act until the episode ends; the final ``reward_terms``."""
    obs, info = env.reset(seed=seed, options=options)
    agent.reset(info)
    done = False
    while not done:
        obs, _, done, _, info = env.step(agent.act(obs))
    return info["reward_terms"]


SUMMARY_NAME = "rollout.json"
EPISODES_NAME = "episodes"


def prepare_out(out: Path, overwrite: bool = False) -> None:
    """Check ``out`` before any episode runs: a new or empty folder, or (with ``overwrite``) an
    earlier rollout, whose ``rollout.json`` and episode records (and nothing else) are removed."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder; pass a new or empty folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    ours = (out / SUMMARY_NAME).is_file()
    if not ours:
        raise ValueError(f"--out {out}: the folder is not empty and holds no {SUMMARY_NAME} of an earlier rollout; "
                         "pass a new or empty folder")
    records = sorted((out / EPISODES_NAME).glob("[0-9][0-9][0-9][0-9][0-9]-*.*"))
    if not overwrite:
        raise ValueError(f"--out {out}: holds an earlier rollout ({len(records) // 2} episode records); pass "
                         "--overwrite to replace it, or another folder (records of two runs are never mixed)")
    for path in records:
        if path.suffix in (".json", ".npz"):
            path.unlink()
    (out / SUMMARY_NAME).unlink()


def rollout(env_id: str, corpus: str, agent_name: str, episodes: int, seed: int, out: str | Path,
            env_kwargs: dict | None = None, progress: bool = True, overwrite: bool = False,
            agent_options: dict | None = None) -> dict:
    """Run ``episodes`` episodes of ``agent_name`` in ``env_id``; the first reset is seeded with
    ``seed`` and later ones continue the env's random stream, so the run is reproducible. Modes
    missing from ``env_kwargs`` follow :func:`~duplexgym.envs.corpus.default_modes`. ``out`` must
    be new or empty, or an earlier rollout with ``overwrite`` (:func:`prepare_out`)."""
    from duplexgym.agents.policies import make_agent
    from duplexgym.envs.corpus import default_modes
    from tqdm import tqdm

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"--episodes must be a whole number >= 1, got {episodes!r}")
    out = Path(out)
    prepare_out(out, overwrite)
    episodes_dir = out / EPISODES_NAME
    env_kwargs = dict(env_kwargs or {})
    if "obs_mode" not in env_kwargs or "action_mode" not in env_kwargs:
        obs_mode, action_mode = default_modes(corpus)
        env_kwargs.setdefault("obs_mode", obs_mode)
        env_kwargs.setdefault("action_mode", action_mode)
    env = gym.make(env_id, corpus=corpus, **env_kwargs)
    agent = make_agent(agent_name, env, **(agent_options or {}))  # personaplex: text_prompt, voice_prompt
    results = []
    for i in tqdm(range(episodes), desc="rollout", file=sys.stderr, leave=False, disable=not progress):
        results.append(play_episode(env, agent, seed=seed if i == 0 else None))
        record = env.unwrapped.episode_record()
        record = type(record)(**{**record.__dict__, "seed": seed, "env": {**record.env, "episode_index": i}})
        record.save(episodes_dir / f"{i:05d}-{record.segment.id}")
    if hasattr(agent, "close"):
        agent.close()
    summary = {**summarize(results), "agent": agent_name, "env": env_id, "seed": seed, "out": str(out)}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary
