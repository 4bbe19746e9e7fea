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

Where the metrics read the agent's words from is the reward spec's ``metrics.source``
(:class:`duplexgym.rewards.activity.MetricsParams`): reported per axis and overall as
``metrics_source`` (``vad``: silero speech spans stand in for words; ``text``: the Moshi text
stream's tokens; ``asr``: faster-whisper words, the benchmark's procedure) in the JSON and the
table header. With ``metrics.onset_refinement`` the turn and interruption entries also hold
``latency_refined_s`` (first word snapped to the VAD onset inside it).

The table ends with published Full-Duplex-Bench v1 rows (:mod:`.published`: the seed paper's Table 1
and the benchmark repository's rows), labelled as published: the numbers the papers report for Moshi, PersonaPlex
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
from duplexgym.rewards.spec import axis_term

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
#: What each metric source label means (table header).
SOURCE_NOTES = {
    "vad": "silero VAD speech spans stand in for ASR words (one chunk per span)",
    "text": "the Moshi text stream's tokens stand in for ASR words",
    "asr": "faster-whisper (whisper-base) words of output.wav, the benchmark's procedure",
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
    term = axis_term(reward_terms["terms"], axis)
    if term is None:
        return None
    m = term["metrics"]
    sample = {"tor": m["fdb_tor"], "source": m.get("fdb_source")}
    if axis in ("turn", "interruption"):
        sample["latency_s"] = m["fdb_latency_s"]
        if "fdb_latency_refined_s" in m:
            sample["latency_refined_s"] = m["fdb_latency_refined_s"]
    if axis == "backchannel":
        sample["frequency"], sample["jsd"] = m["fdb_frequency"], m["fdb_jsd"]
    if axis == "interruption":
        quality = reward_terms["terms"].get("quality")
        sample["relevance"] = None if quality is None else quality["metrics"].get(RELEVANCE_METRIC)
    return sample


def _source(labels) -> str | None:
    """One label for a set of metric-source labels: the label, ``"mixed: a, b"``, or None."""
    labels = sorted({x for x in labels if x is not None})
    if not labels:
        return None
    return labels[0] if len(labels) == 1 else "mixed: " + ", ".join(labels)


def summarize_eval(agent: str, per_episode: list[dict]) -> dict:
    """``{"agent", "overall", "episodes", "failed", "metrics_source", "by_axis": {axis: {"episodes",
    "reward_mean", "failed", "metrics_source", <AXIS_METRICS>}}}`` from the episodes'
    ``reward_terms``. ``overall``: the mean of the per-axis reward means. Metrics an axis does not
    have (pause latency, ...) are ``None``; ``latency_refined_s`` is there when the episodes carry it."""
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
        refined = [s for s in samples if "latency_refined_s" in s]
        if refined:  # FD-Bench's latency averaging (TOR = 1 samples) on the refined onsets
            took = [float(s["latency_refined_s"]) for s in refined if s["tor"] == 1]
            entry["latency_refined_s"] = float(np.mean(took)) if took else None
        entry["metrics_source"] = _source(s["source"] for s in samples)
        by_axis[axis] = entry
    overall = float(np.mean([v["reward_mean"] for v in by_axis.values()])) if by_axis else None
    return {"agent": agent, "overall": overall, "episodes": len(per_episode),
            "failed": sum(1 for e in per_episode if e.get("failed")),
            "metrics_source": _source(v["metrics_source"] for v in by_axis.values()), "by_axis": by_axis}


def evaluate(corpus: str | Path, agent: str, *, per_axis: int | None = None, seed: int = 0,
             obs_mode: str | None = None, action_mode: str | None = None, rewards=None,
             export: str | Path | None = None, progress: bool = True, agent_options: dict | None = None) -> dict:
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
    agent_obj = make_agent(agent, env, **(agent_options or {}))  # personaplex: text_prompt, voice_prompt
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

_COLUMNS = (  # (header, axis, key, published metric: agents.evaluation.published.COLUMNS)
    ("TOR-", "pause", "tor", "tor"),
    ("TOR-", "backchannel", "tor", "tor"),
    ("freq+", "backchannel", "frequency", "frequency"),
    ("JSD-", "backchannel", "jsd", "jsd"),
    ("TOR+", "turn", "tor", "tor"),
    ("lat-", "turn", "latency_s", "latency_s"),
    ("TOR+", "interruption", "tor", "tor"),
    ("rel+", "interruption", "relevance", "relevance_0_5"),
    ("lat-", "interruption", "latency_s", "latency_s"),
)
_GROUPS = (("pause", 1), ("backchannel", 3), ("turn-taking", 2), ("user interruption", 3))
_NAME_W, _COL_W = 36, 7


def _published_cells(values: dict) -> str:
    """One published row (``{"axis.metric": value}``) in the table's columns; pause TOR is
    synthetic/Candor."""
    cells = []
    for _, axis, _, metric in _COLUMNS:
        if axis == "pause":
            cells.append(_cell((values["pause.tor_synthetic"], values["pause.tor_candor"]), _COL_W + 4))
        else:
            cells.append(_cell(values.get(f"{axis}.{metric}")))
    return "".join(" " + c for c in cells)


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
    for source in dict.fromkeys(s.get("metrics_source") for s in summaries):
        agents = ", ".join(s["agent"] for s in summaries if s.get("metrics_source") == source)
        note = SOURCE_NOTES.get(source, "see each episode's fdb_source")
        lines.append(f"metrics source: {source} ({note})" + (f" -- {agents}" if len(summaries) > 1 else ""))
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
        refined = {a: by_axis[a]["latency_refined_s"] for a in ("turn", "interruption")
                   if a in by_axis and "latency_refined_s" in by_axis[a]}
        if refined:
            lines.append("  latency with onsets refined (first word snapped to the VAD onset): "
                         + ", ".join(f"{a} {_cell(v).strip()}" for a, v in refined.items()))
    from duplexgym.agents.evaluation.published import SOURCES, published_rows

    for key, (label, _) in SOURCES.items():
        lines.append(f"published, NOT measured here (the benchmark's own test sets; pause TOR synthetic/candor): "
                     f"{label}")
        for row in published_rows():
            if row["source"] == key:
                lines.append(f"{'  ' + row['model']:<{_NAME_W - 4}}{_published_cells(row['values'])}")
    lines.append("'-' lower is better, '+' higher is better; lat = latency in s (TOR = 1 samples); freq = "
                 "backchannels per s; rel = relevance 0-5 (needs a quality term)")
    return "\n".join(lines)
