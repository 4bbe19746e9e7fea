"""``duplexgym eval``: an agent over a corpus' segments, scored as Full-Duplex-Bench v1 scores models.

Every segment of every axis is played once (``env.reset(options={"segment": id})``, manifest
order; ``per_axis`` keeps that many per axis, drawn with ``seed``). Per axis the benchmark's
dataset numbers are computed with :func:`duplexgym.rewards.fdb.aggregate` from the episodes'
``fdb_*`` metrics, next to our reward means:

- pause: TOR (lower is better);
- backchannel: TOR (lower), frequency (backchannels per second, higher), JSD (lower);
- turn: TOR (higher), latency (s, over TOR = 1 episodes, lower);
- interruption: TOR (higher), relevance (0-5, the ``quality`` term's ``relevance_0_5`` metric
  when the reward spec has a quality term, else none), latency (s, lower).

:data:`PUBLISHED` holds the numbers the Full-Duplex-Bench v1 papers report for Moshi, PersonaPlex
and GPT-Realtime on the benchmark's own test sets (FACTS.md): printed for orientation, they were
not measured on the corpus being evaluated. ``export`` writes the episodes in the benchmark's
folder layout (:mod:`duplexgym.agents.evaluation.export`) so its official scorer can run on them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
from duplexgym.rewards.fdb import aggregate

from duplexgym.constants import AXES

#: Per-axis FD-Bench metric keys in ``by_axis`` (besides ``episodes`` and ``reward_mean``).
AXIS_METRICS = {
    "pause": ("tor", "latency_s"),
    "turn": ("tor", "latency_s"),
    "backchannel": ("tor", "latency_s", "frequency", "jsd"),
    "interruption": ("tor", "latency_s", "relevance"),
}
#: The quality term's metric that holds the FD-Bench-style relevance rating (0-5).
RELEVANCE_METRIC = "relevance_0_5"

#: Published Full-Duplex-Bench v1 numbers (FACTS.md): not measured here. Pause TOR is given for
#: the synthetic and the Candor test set.
PUBLISHED = {
    "Moshi": {"pause_tor": (0.985, 0.980), "backchannel_tor": 1.000, "backchannel_frequency": 0.001,
              "backchannel_jsd": 0.957, "turn_tor": 0.941, "turn_latency_s": 0.265,
              "interruption_tor": 1.000, "interruption_relevance": 0.765, "interruption_latency_s": 0.257},
    "PersonaPlex": {"pause_tor": (0.584, 0.662), "backchannel_tor": 0.327, "backchannel_frequency": 0.025,
                    "backchannel_jsd": 0.649, "turn_tor": 0.992, "turn_latency_s": 0.070,
                    "interruption_tor": 1.000, "interruption_relevance": 4.210, "interruption_latency_s": 0.400},
    "GPT-Realtime": {"pause_tor": (0.010, 0.120), "backchannel_tor": 0.000, "backchannel_frequency": 0.007,
                     "backchannel_jsd": 0.980, "turn_tor": 1.000, "turn_latency_s": 1.470,
                     "interruption_tor": 0.970, "interruption_relevance": 3.850, "interruption_latency_s": 1.500},
}


def select_segments(corpus, per_axis: int | None = None, seed: int = 0) -> list:
    """The segments to evaluate, in manifest order: all, or ``per_axis`` of each axis chosen with
    ``seed`` by the corpus builder's own selection (:func:`duplexgym.corpora.segments.select_segments`)."""
    if per_axis is None:
        return list(corpus.segments)
    if per_axis < 1:
        raise ValueError(f"--per-axis must be >= 1, got {per_axis}")
    from duplexgym.corpora.segments import select_segments as choose

    keep = {s.id for s in choose(corpus.segments, per_axis, seed)}
    return [s for s in corpus.segments if s.id in keep]


def fdb_sample(axis: str, reward_terms: dict) -> dict | None:
    """One episode's per-sample FD-Bench metrics for :func:`aggregate`, or ``None`` when the axis
    term is missing (failed, or not in the reward spec)."""
    term = reward_terms["terms"].get(axis)
    if term is None:
        return None
    m = term["metrics"]
    sample = {"tor": m["fdb_tor"]}
    if axis in ("turn", "interruption"):
        sample["latency_s"] = m["fdb_latency_s"]
    if axis == "backchannel":
        sample["frequency"], sample["jsd"] = m["fdb_frequency"], m["fdb_jsd"]
    if axis == "interruption":
        quality = reward_terms["terms"].get("quality")
        sample["relevance"] = None if quality is None else quality["metrics"].get(RELEVANCE_METRIC)
    return sample


def summarize_eval(agent: str, per_episode: list[dict]) -> dict:
    """``{"agent", "overall", "episodes", "failed", "by_axis": {axis: {"episodes", "reward_mean",
    "failed", <AXIS_METRICS>}}}`` from the episodes' ``reward_terms``. ``overall``: the mean of the
    per-axis reward means. Metrics an axis does not have (pause latency, ...) are ``None``."""
    by_axis = {}
    for axis in AXES:
        mine = [e for e in per_episode if e["axis"] == axis]
        if not mine:
            continue
        entry = {"episodes": len(mine), "reward_mean": float(np.mean([e["reward"] for e in mine])),
                 "failed": sum(1 for e in mine if e.get("failed"))}
        samples = [s for s in (fdb_sample(axis, e) for e in mine) if s is not None]
        fdb = aggregate(axis, samples) if samples else {}
        for key in AXIS_METRICS[axis]:
            value = fdb.get(key)
            entry[key] = None if value is None else float(value)
        by_axis[axis] = entry
    overall = float(np.mean([v["reward_mean"] for v in by_axis.values()])) if by_axis else None
    return {"agent": agent, "overall": overall, "episodes": len(per_episode),
            "failed": sum(1 for e in per_episode if e.get("failed")), "by_axis": by_axis}


def evaluate(corpus: str | Path, agent: str, *, per_axis: int | None = None, seed: int = 0,
             obs_mode: str | None = None, action_mode: str | None = None, rewards=None,
             export: str | Path | None = None, progress: bool = True) -> dict:
    """Run ``agent`` (a name for :func:`~duplexgym.agents.policies.baselines.make_agent`) over the corpus
    and return :func:`summarize_eval`'s dict plus ``corpus``, ``seed``, ``obs_mode``,
    ``action_mode`` and ``export``. ``rewards``: a reward spec (YAML path or dict; default: the
    env's). ``export``: a folder to write the episodes to in Full-Duplex-Bench v1 layout.
    ``obs_mode`` / ``action_mode``: None takes :func:`~duplexgym.envs.corpus.default_modes`."""
    from duplexgym.agents.evaluation.rollout import play_episode
    from duplexgym.agents.policies import make_agent
    from duplexgym.envs.corpus import default_modes
    from tqdm import tqdm

    modes = default_modes(corpus) if obs_mode is None or action_mode is None else (obs_mode, action_mode)
    obs_mode, action_mode = obs_mode or modes[0], action_mode or modes[1]
    kwargs = {"obs_mode": obs_mode, "action_mode": action_mode}
    if rewards is not None:
        kwargs["rewards"] = rewards
    env = gym.make("duplexgym/Interactivity-v0", corpus=str(corpus), **kwargs)
    base = env.unwrapped
    segments = select_segments(base.corpus, per_axis, seed)
    agent_obj = make_agent(agent, env)
    exporter = None
    if export is not None:
        from duplexgym.agents.evaluation.export import FdbExporter

        exporter = FdbExporter(export, base.corpus)
    results = []
    for seg in tqdm(segments, desc=f"eval {agent}", file=sys.stderr, leave=False, disable=not progress):
        terms = play_episode(env, agent_obj, seed=seed, options={"segment": seg.id})
        results.append(terms)
        if exporter is not None:
            exporter.add(base.episode_record(), terms)
    if hasattr(agent_obj, "close"):
        agent_obj.close()
    env.close()
    summary = summarize_eval(agent, results)
    summary.update({"corpus": str(corpus), "seed": seed, "per_axis": per_axis, "obs_mode": obs_mode,
                    "action_mode": action_mode, "export": None if export is None else str(export)})
    if exporter is not None:
        exporter.finish(summary)
    return summary


# ----------------------------------------------------------------------------- the table

_COLUMNS = (  # (header, axis, key, published key)
    ("TOR-", "pause", "tor", "pause_tor"),
    ("TOR-", "backchannel", "tor", "backchannel_tor"),
    ("freq+", "backchannel", "frequency", "backchannel_frequency"),
    ("JSD-", "backchannel", "jsd", "backchannel_jsd"),
    ("TOR+", "turn", "tor", "turn_tor"),
    ("lat-", "turn", "latency_s", "turn_latency_s"),
    ("TOR+", "interruption", "tor", "interruption_tor"),
    ("rel+", "interruption", "relevance", "interruption_relevance"),
    ("lat-", "interruption", "latency_s", "interruption_latency_s"),
)
_GROUPS = (("pause", 1), ("backchannel", 3), ("turn-taking", 2), ("user interruption", 3))
_NAME_W, _COL_W = 22, 7


def _cell(value, width: int = _COL_W) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if isinstance(value, tuple):
        return f"{'/'.join(f'{v:.3f}'.lstrip('0') for v in value):>{width}}"
    return f"{value:>{width}.3f}"


def format_table(summaries: list[dict]) -> str:
    """The Full-Duplex-Bench v1 table of one or more :func:`evaluate` results, our reward means
    beside it, and the published reference rows (clearly labelled)."""
    first = summaries[0]
    lines = []
    head = f"Full-Duplex-Bench v1 metrics on {first.get('corpus', '?')}"
    if "obs_mode" in first:
        head += f" (obs {first['obs_mode']}, actions {first['action_mode']})"
    lines.append(head)
    group = " " * _NAME_W + "".join(f" {name:<{n * (_COL_W + 1) - 1}}" for name, n in _GROUPS)
    group += "  | our reward means, [-1, 1]"
    lines.append(group)
    cols = "".join(f" {h:>{_COL_W}}" for h, *_ in _COLUMNS)
    rewards = "".join(f" {a[:5]:>{_COL_W}}" for a in AXES) + f" {'overall':>{_COL_W}}"
    lines.append(f"{'agent (episodes)':<{_NAME_W}}{cols}  |{rewards}")
    for s in summaries:
        by_axis = s["by_axis"]
        row = "".join(" " + _cell(by_axis.get(axis, {}).get(key)) for _, axis, key, _ in _COLUMNS)
        rew = "".join(" " + _cell(by_axis.get(a, {}).get("reward_mean")) for a in AXES) + " " + _cell(s["overall"])
        name = f"{s['agent']} ({s['episodes']})"
        lines.append(f"{name:<{_NAME_W}}{row}  |{rew}")
        if s.get("failed"):
            lines.append(f"  {s['failed']} episodes of {s['agent']} had failed reward terms (left out of the metrics)")
    lines.append("published Full-Duplex-Bench v1 numbers (the benchmark's own test sets, NOT this corpus;"
                 " pause TOR synthetic/candor):")
    for model, ref in PUBLISHED.items():
        row = "".join(" " + _cell(ref[pkey], _COL_W + (4 if pkey == "pause_tor" else 0))
                      for _, _, _, pkey in _COLUMNS)
        lines.append(f"{'  ' + model:<{_NAME_W - 4}}{row}")
    lines.append("'-' lower is better, '+' higher is better; lat = latency in s (TOR = 1 samples); freq = "
                 "backchannels per s; rel = relevance 0-5 (needs a quality term)")
    return "\n".join(lines)
