"""``duplexgym eval --live``: an agent in live dialogues with the simulated user, and the replay,
rescoring and export of live records.

:func:`evaluate_live` plays ``dialogues`` dialogues of ``Conversation-v0`` (the source's dialogue
ids in order, cycled; dialogue ``i`` gets the user seed ``SeedSequence([seed, i])``, so a run is
reproducible) and pools their timing (:func:`duplexgym.rewards.live.timing_metrics`) over all
of them: shares and rates are totals over totals, latencies and yield times the median / p90 of
all of them. A dialogue whose user source failed (a server that failed or hung past its retries,
a TTS failure) or whose agent speech could not be read is counted in ``failed`` and left out of
every number. :func:`format_live_table` prints the table; :func:`live_eval` runs the replay eval
and the live one and returns both tables for the command line.

:func:`replay_check_live` (``duplexgym replay REC --check`` for a live record) rebuilds the env from
the record, resets it on the record's dialogue and user seed, feeds the recorded actions back and
compares, bit for bit, the observation stream, every step's reward, the user's schedule and
decisions, the final ``reward_terms`` and every array. It never contacts a server the record names:
the llm source speaks the recorded lines (``stored_lines``) and a judged term is taken from the
record unless the caller names their own judge. :func:`rescore_live` recomputes live records
under another reward spec (no env, no agent). :class:`LiveExporter` writes, per dialogue, a
stereo wav (user left, agent right), a timeline picture and a transcript.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from duplexgym.constants import FRAME_S, SAMPLE_RATE

LIVE_ENV_ID = "duplexgym/Conversation-v0"
#: The table's columns: (header, summary key, format).
COLUMNS = (
    ("answered+", "answered_share", "{:.2f}"),
    ("lat med-", "latency_median_s", "{:.2f}"),
    ("lat p90-", "latency_p90_s", "{:.2f}"),
    ("cut-in/m-", "cut_ins_per_min", "{:.2f}"),
    ("yield-", "yield_median_s", "{:.2f}"),
    ("overlap-", "overlap_share", "{:.3f}"),
    ("bc/min", "backchannels_per_min", "{:.2f}"),
    ("silence/m-", "long_silences_per_min", "{:.2f}"),
    ("reward+", "reward_mean", "{:+.2f}"),
)
MARKER_NAME = "live_export.json"


def dialogue_seed(seed: int, i: int) -> int:
    """The user seed of dialogue ``i`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1, np.uint64)[0] >> 2)


def make_live_env(corpus, user: str = "replay", **kwargs):
    """``gymnasium.make("duplexgym/Conversation-v0", ...)`` with the corpus' default modes."""
    import gymnasium as gym
    from duplexgym.envs.corpus import default_modes

    if kwargs.get("obs_mode") is None or kwargs.get("action_mode") is None:
        obs_mode, action_mode = default_modes(corpus)
        kwargs["obs_mode"] = kwargs.get("obs_mode") or obs_mode
        kwargs["action_mode"] = kwargs.get("action_mode") or action_mode
    return gym.make(LIVE_ENV_ID, corpus=str(corpus), user=user, **{k: v for k, v in kwargs.items() if v is not None})


def play_dialogue(env, agent, options: dict, seed: int | None = None) -> dict:
    """One dialogue of ``agent`` in ``env``; the final step's info (``reward_terms``, ``live``, ...)."""
    obs, info = env.reset(seed=seed, options=options)
    agent.reset(info)
    done = False
    while not done:
        obs, _, done, _, info = env.step(agent.act(obs))
    return info


def is_failed(terms: dict) -> bool:
    """A dialogue that is no data: its user source failed or its agent speech could not be read."""
    failed = terms.get("failed") or {}
    return "user" in failed or "activity" in failed


def summarize_live(agent: str, per_dialogue: list[dict]) -> dict:
    """The pooled numbers of :func:`evaluate_live` from each dialogue's ``reward_terms``."""
    ok = [t for t in per_dialogue if not is_failed(t)]
    timing = [t["timing"] for t in ok]

    def total(key):
        return float(sum(x[key] for x in timing))

    latencies = [v for x in timing for v in x["latencies_s"]]
    yields = [v for x in timing for v in x["yields_s"]]
    minutes = total("duration_s") / 60.0
    turns, turn_min = total("user_turns"), total("user_turn_s") / 60.0
    rewards = [t["reward"] for t in ok]
    by_term: dict[str, dict] = {}
    for t in ok:
        for name, term in t["terms"].items():
            entry = by_term.setdefault(name, {"dialogues": 0, "events": 0, "value_sum": 0.0, "weight": term["weight"]})
            entry["dialogues"] += 1
            entry["events"] += int(term.get("events", 1))
            entry["value_sum"] += float(term["value"])
    for entry in by_term.values():
        entry["value_mean"] = entry.pop("value_sum") / entry["dialogues"]
    judge = [t["terms"]["judge"]["metrics"] for t in ok if "judge" in t["terms"]]
    out = {
        "agent": agent, "dialogues": len(per_dialogue), "failed": len(per_dialogue) - len(ok),
        "answered_share": total("answered") / turns if turns else None,
        "latency_median_s": float(np.median(latencies)) if latencies else None,
        "latency_p90_s": float(np.percentile(latencies, 90)) if latencies else None,
        "cut_ins_per_min": total("cut_ins") / minutes if minutes else None,
        "yield_median_s": float(np.median(yields)) if yields else None,
        "overlap_share": total("overlap_s") / total("speech_s") if timing and total("speech_s") else None,
        "backchannels_per_min": total("agent_backchannels") / turn_min if turn_min else None,
        "long_silences_per_min": total("long_silences") / minutes if minutes else None,
        "reward_mean": float(np.mean(rewards)) if rewards else None,
        "reward_std": float(np.std(rewards)) if rewards else None,
        "user_turns": int(turns), "minutes": round(minutes, 3), "terms": by_term,
        "event_failures": sum(1 for t in ok for k in (t.get("failed") or {}) if "#" in k or k == "judge"),
    }
    if judge:
        from duplexgym.rewards.live_judge import SCALES

        out["judge"] = {k: float(np.mean([m[k] for m in judge])) for k in SCALES}
    return out


def evaluate_live(corpus, agent: str, *, user: str = "replay", dialogues: int | None = None, seed: int = 0,
                  max_s: float = 60.0, max_turns: int | None = None, obs_mode: str | None = None,
                  action_mode: str | None = None, rewards=None, user_params=None, script=None, llm=None,
                  judge=None, scoring=None, export=None, record_dir=None, progress: bool = True,
                  agent_options: dict | None = None) -> dict:
    """Run ``agent`` (a :func:`~duplexgym.agents.policies.make_agent` name) in ``dialogues`` live
    dialogues (None: each of the source's dialogues once) and return :func:`summarize_live`'s dict
    plus ``user``, ``corpus``, ``seed``, ``max_s``, ``obs_mode``, ``action_mode``, ``export`` and
    ``per_dialogue`` (``dialogue``, ``user_seed``, ``frames``, ``reward``, ``end``, ``failed``)."""
    from duplexgym.agents.policies import make_agent
    from tqdm import tqdm

    if dialogues is not None and (isinstance(dialogues, bool) or not isinstance(dialogues, int) or dialogues < 1):
        raise ValueError(f"--dialogues must be a whole number >= 1, got {dialogues!r}")
    env = make_live_env(corpus, user, obs_mode=obs_mode, action_mode=action_mode, rewards=rewards, max_s=max_s,
                        max_turns=max_turns, user_params=user_params, script=script, llm=llm, judge=judge,
                        scoring=scoring, record_dir=record_dir)
    base = env.unwrapped
    ids = base.dialogue_ids
    n = len(ids) if dialogues is None else dialogues
    agent_obj = make_agent(agent, env, **(agent_options or {}))
    exporter = LiveExporter(export) if export is not None else None
    results, rows = [], []
    try:
        for i in tqdm(range(n), desc=f"live {agent}", file=sys.stderr, leave=False, disable=not progress):
            options = {"dialogue": ids[i % len(ids)], "user_seed": dialogue_seed(seed, i)}
            info = play_dialogue(env, agent_obj, options, seed=seed if i == 0 else None)
            terms = info["reward_terms"]
            results.append(terms)
            rows.append({"dialogue": options["dialogue"], "user_seed": options["user_seed"],
                         "frames": info["n_frames"], "reward": terms["reward"], "end": info["live"]["end"],
                         "failed": (terms.get("failed") or {}).get("user")})
            if exporter is not None:
                exporter.add(base.episode_record(), base.user_audio())
    finally:
        if hasattr(agent_obj, "close"):
            agent_obj.close()
        env.close()
    summary = summarize_live(agent, results)
    summary.update({"user": user, "corpus": str(corpus), "seed": seed, "max_s": max_s, "max_turns": max_turns,
                    "obs_mode": base.obs_mode, "action_mode": base.action_mode,
                    "export": None if export is None else str(export), "per_dialogue": rows})
    if exporter is not None:
        exporter.finish(summary)
    return summary


def _cell(value, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{fmt.format(value):>{width}}"


def format_live_table(summaries: list[dict]) -> str:
    """The live table of one or more :func:`evaluate_live` results."""
    first = summaries[0]
    width, name_w = 11, 22
    lines = [f"Live dialogues (Conversation-v0, user {first.get('user')}, up to {first.get('max_s', 60):g} s) on "
             f"{first.get('corpus', '?')} (obs {first.get('obs_mode')}, actions {first.get('action_mode')})",
             f"{'agent (dialogues)':<{name_w}}" + "".join(f"{h:>{width}}" for h, _, _ in COLUMNS)]
    for s in summaries:
        name = f"{s['agent']} ({s['dialogues']})"
        lines.append(f"{name:<{name_w}}" + "".join(_cell(s.get(k), f, width) for _, k, f in COLUMNS))
        if s.get("failed"):
            lines.append(f"  {s['failed']} of {s['dialogues']} dialogues of {s['agent']} failed (user source or agent "
                         "speech): left out of every number")
        if s.get("judge"):
            lines.append("  judge (1-5): " + ", ".join(f"{k} {v:.2f}" for k, v in s["judge"].items()))
    lines.append("answered = share of user turns answered; lat = answer latency (s), median / p90; cut-in/m = user "
                 "turns talked over per min; yield = s to stop after a barge-in; overlap = share of speech time both "
                 "speak; bc/min = agent backchannels per min of user turns; silence/m = mutual silences >= 3 s per "
                 "min; reward = dialogue reward (sum of event rewards); '+' higher better, '-' lower better")
    return "\n".join(lines)


def live_eval(corpus, agent: str, *, user: str = "replay", dialogues: int | None = None, seed: int = 0,
              replay_table: bool = True, per_axis: int | None = None, **kwargs) -> tuple[dict, str]:
    """What ``duplexgym eval --live`` prints: ``(json_object, text)``. The object is the live
    summary (:func:`evaluate_live`) with the replay eval's summary under ``"replay"``; the text is
    the replay table, then the live table. ``kwargs`` go to :func:`evaluate_live` (``export``,
    ``obs_mode``, ``rewards``, ...); the replay eval gets the modes, the reward spec and ``per_axis``."""
    from duplexgym.agents.evaluation.evaluate import evaluate, format_table

    summary = evaluate_live(corpus, agent, user=user, dialogues=dialogues, seed=seed, **kwargs)
    text = format_live_table([summary])
    if replay_table:
        replay = evaluate(corpus, agent, per_axis=per_axis, seed=seed, obs_mode=summary["obs_mode"],
                          action_mode=summary["action_mode"], rewards=kwargs.get("rewards"),
                          progress=kwargs.get("progress", True), agent_options=kwargs.get("agent_options"))
        summary["replay"] = replay
        text = format_table([replay]) + "\n\n" + text
    return summary, text


# ----------------------------------------------------------------------------- replay and rescore


def is_live_record(record) -> bool:
    """Is this ``EpisodeRecord`` (or a record path) a live dialogue's?"""
    from duplexgym.rewards.record import EpisodeRecord

    if not isinstance(record, EpisodeRecord):
        record = EpisodeRecord.load(record)
    return record.live is not None


def _env_kwargs(cfg: dict) -> dict:
    source = cfg.get("source") or {}
    return {"corpus": cfg["corpus"], "user": cfg["user"], "obs_mode": cfg["obs_mode"],
            "action_mode": cfg["action_mode"], "rewards": cfg["rewards"], "codec": cfg["codec"],
            "text_card": cfg["text_card"], "max_s": cfg["max_s"], "max_turns": cfg["max_turns"],
            "user_params": cfg["user_params"], "script": source.get("script"), "llm": source.get("llm"),
            "dialogues": cfg.get("dialogues"), "scoring": cfg.get("scoring"),
            "text_tokenizer": cfg.get("text_tokenizer")}


def replay_check_live(path, judge: dict | None = None) -> dict:
    """Replay one live record; ``{"episode", "ok", "mismatches", "notes", "steps"}`` (as
    :func:`duplexgym.agents.evaluation.replay.replay_check`). ``judge``: ``{"base_url", "model"}``
    of the caller's own server to re-judge the ``judge`` term; without it the term is taken from
    the record."""
    from duplexgym.agents.evaluation.replay import _canonical
    from duplexgym.envs.conversation import ConversationEnv
    from duplexgym.rewards.record import ARRAY_NAMES, EpisodeRecord, RecordError

    try:
        record = EpisodeRecord.load(path)
    except RecordError as exc:
        return {"episode": str(path), "ok": False, "mismatches": [str(exc)], "notes": [], "steps": 0}
    if record.live is None:
        return {"episode": str(path), "ok": False, "steps": 0, "notes": [],
                "mismatches": ["not a live record (no 'live' schedule): replay it with replay_check"]}
    cfg, live = record.env, record.live
    kwargs = _env_kwargs(cfg)
    notes, options = [], {"dialogue": live["dialogue"], "user_seed": live["user_seed"]}
    if cfg["user"] == "llm":
        options["stored_lines"] = live.get("lines") or []
        notes.append("llm user: the recorded lines were spoken again; the record's server was not contacted")
    if cfg.get("judge"):
        if judge:
            kwargs["judge"] = {**cfg["judge"], **{k: v for k, v in judge.items() if v is not None}}
            notes.append(f"judge: re-judged by {judge.get('base_url')} (given on the command line)")
        else:
            kwargs["judge"] = cfg["judge"]
            recorded = (record.reward_terms.get("terms") or {}).get("judge")
            failed = (record.reward_terms.get("failed") or {}).get("judge")
            options["stored_terms"] = {"judge": recorded if recorded is not None else {"failed": failed or "not in the record"}}
            notes.append("judge: taken from the record, not re-judged (its server comes from the record; pass "
                         "--judge-url to re-judge with your own server)")
    env = ConversationEnv(**kwargs, env_id=cfg.get("id"))
    mismatches = []
    if env.corpus.codec_id != cfg.get("codec_id"):
        mismatches.append(f"corpus codec {env.corpus.codec_id} differs from the recorded {cfg.get('codec_id')}")
    env.reset(seed=record.seed, options=options)
    n = record.n_frames
    if record.text_tokens is not None:
        actions = np.concatenate([record.text_tokens[:, None].astype(np.int64),
                                  record.audio_codes.T.astype(np.int64)], axis=1)
    else:
        actions = record.audio.reshape(n, -1)
    rewards = np.zeros(n)
    info, steps = {}, 0
    for t in range(n):
        _, rewards[t], done, _, info = env.step(actions[t])
        steps += 1
        if done:
            break
    if steps != n or not done:
        mismatches.append(f"the dialogue ran {steps} frames{'' if done else ' without ending'}, the record {n}")
    else:
        replayed = env.episode_record()
        if replayed.obs_sha256 != record.obs_sha256:
            mismatches.append("observation stream differs (SHA-256)")
        if not np.array_equal(rewards, record.rewards):
            bad = int(np.flatnonzero(rewards != record.rewards)[0])
            mismatches.append(f"reward of step {bad} differs: {rewards[bad]!r} vs recorded {record.rewards[bad]!r}")
        for key in ("schedule", "decisions", "end", "lines"):
            if _canonical({"v": replayed.live.get(key)}) != _canonical({"v": live.get(key)}):
                mismatches.append(f"the user's {key} differs from the record's")
        if _canonical(info["reward_terms"]) != _canonical(record.reward_terms):
            mismatches.append("final reward_terms differ")
        for name in ARRAY_NAMES:
            mine, theirs = getattr(replayed, name), getattr(record, name)
            if (mine is None) != (theirs is None) or (mine is not None and not (
                    mine.dtype == theirs.dtype and np.array_equal(mine, theirs))):
                mismatches.append(f"array {name} differs from what the replay produces")
    env.close()
    return {"episode": str(path), "ok": not mismatches, "mismatches": mismatches, "notes": notes, "steps": steps}


def rescore_record(record, spec_source=None) -> dict:
    """The ``reward_terms`` of one live record under ``spec_source`` (None: the record's own spec),
    read with the record's activity reader unless the spec names one; the judge term from the record."""
    import dataclasses

    from duplexgym.agents.evaluation.replay import _raw_spec
    from duplexgym.rewards.dense import speaking_frames
    from duplexgym.rewards.live import LiveScoring, live_dense_rewards, score_live
    from duplexgym.rewards.spec import load_spec

    cfg = record.env
    if spec_source is None:
        spec = load_spec(cfg["rewards"])
    else:
        spec = load_spec(spec_source)
        raw = _raw_spec(spec_source)
        made_with = ((cfg.get("rewards") or {}).get("activity") or {}).get("reader")
        if not (isinstance(raw, dict) and "reader" in (raw.get("activity") or {})) and made_with:
            spec = dataclasses.replace(spec, activity=dataclasses.replace(spec.activity, reader=made_with))
    scoring = LiveScoring(**(cfg.get("scoring") or {}))
    live = record.live
    dense = live_dense_rewards(live, speaking_frames(record), spec.dense_weight, live["max_frames"], scoring)
    stored = None
    if cfg.get("judge"):
        recorded = (record.reward_terms.get("terms") or {}).get("judge")
        failed = (record.reward_terms.get("failed") or {}).get("judge")
        stored = {"judge": recorded if recorded is not None else {"failed": failed or "not in the record"}}
    return score_live(record, spec, scoring, float(dense.sum()), stored=stored)


def rescore_live(records_dir, spec_source=None) -> tuple[dict, list[dict]]:
    """Every live record under ``records_dir`` (or the one record) rescored
    (:func:`rescore_record`); ``(summary, per-record reward_terms)``. The summary is
    :func:`summarize_live`'s, with ``agent`` ``"records"``, plus ``episodes``, ``by_axis`` (per term:
    ``episodes``, ``reward_mean``, ``events``) and ``notes``, the keys ``duplexgym rescore`` prints."""
    from duplexgym.rewards.record import EpisodeRecord

    root = Path(records_dir)
    paths = sorted(root.rglob("*.json")) if root.is_dir() else [root]
    paths = [p for p in paths if p.with_suffix(".npz").is_file()]
    records = [EpisodeRecord.load(p) for p in paths]
    records = [r for r in records if r.live is not None]
    if not records:
        raise FileNotFoundError(f"{records_dir}: no live episode records (.json + .npz with a 'live' schedule) found")
    results = [rescore_record(r, spec_source) for r in records]
    summary = summarize_live("records", results)
    # the keys `duplexgym rescore` prints for replay records, so its printer serves both
    summary["episodes"] = len(records)
    summary["by_axis"] = {name: {"episodes": t["dialogues"], "reward_mean": t["value_mean"], "events": t["events"]}
                          for name, t in summary["terms"].items()}
    summary["notes"] = ["live dialogues: reward_mean is the mean dialogue reward; per term, the mean over dialogues "
                        "of its summed event values"]
    return summary, results


# ----------------------------------------------------------------------------- export


def write_live_timeline(path, duration_s: float, live: dict, agent_spans, reward: float | None = None,
                        title: str | None = None) -> Path:
    """The picture of one live dialogue: the user's turns (blue; re-prompts light blue,
    backchannels grey), the agent's speech (orange), barge-ins (purple lines), yields (red lines),
    the user's turn ends (thin black); the reward in the title."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    path = Path(path)
    fig = Figure(figsize=(min(30.0, max(8.0, 1.5 + 0.3 * duration_s)), 2.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    colours = {"turn": "tab:blue", "reprompt": "lightskyblue", "backchannel": "0.6"}
    for kind, colour in colours.items():
        bars = [(a, b - a) for e in live["schedule"] if e["kind"] == kind for a, b in e.get("speech_s") or ()]
        ax.broken_barh(bars, (1.15, 0.7), facecolors=colour)
    ax.broken_barh([(a, b - a) for a, b in agent_spans], (0.15, 0.7), facecolors="tab:orange")
    for e in live["schedule"]:
        if e.get("end_s") is None:
            continue
        if e["why"] == "barge_in":
            ax.axvline(e["start_s"], color="tab:purple", linewidth=1.4)
        if e.get("cut") == "yield":
            ax.axvline(e["end_s"], color="tab:red", linewidth=1.4)
        elif e["kind"] != "backchannel":
            ax.axvline(e["end_s"], color="k", linewidth=0.5, alpha=0.6)
    ax.set_yticks([0.5, 1.5], ["agent", "user"])
    ax.set_ylim(0, 2)
    ax.set_xlim(0, duration_s)
    ax.set_xlabel("time in the dialogue (s)")
    ax.grid(True, axis="x", alpha=0.3)
    legend = [Patch(color=c, label=f"user {k}") for k, c in colours.items()]
    legend += [Patch(color="tab:orange", label="agent speech"), Line2D([], [], color="tab:purple", label="barge-in"),
               Line2D([], [], color="tab:red", label="user yields"), Line2D([], [], color="k", lw=0.5, label="turn end")]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    head = title or "live dialogue"
    if reward is not None:
        head += f": reward {reward:+.3f}"
    ax.set_title(head, fontsize=10, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


class LiveExporter:
    """``eval --live --export DIR``: per dialogue ``DIR/{n:03d}-{dialogue}/`` with ``listen.wav``
    (stereo 24 kHz PCM_16: user left, agent right), ``timeline.png``, ``transcript.txt`` and
    ``transcript.json`` (both sides' turns with times, notes on barge-ins, yields and overlaps) and
    ``dialogue.json`` (reward terms, the user's schedule and decisions); ``DIR/live_export.json``
    holds the summary. ``DIR`` must be new or empty, or an earlier live export (replaced)."""

    def __init__(self, out):
        import shutil

        self.out = Path(out)
        if self.out.exists():
            if not self.out.is_dir():
                raise ValueError(f"--export {self.out}: exists and is not a folder; pass a new or empty folder")
            if any(self.out.iterdir()) and not (self.out / MARKER_NAME).is_file():
                raise ValueError(f"--export {self.out}: the folder is not empty and holds no {MARKER_NAME} of an "
                                 "earlier live export; pass a new or empty folder")
            for child in self.out.iterdir():
                if child.is_dir() and child.name[:3].isdigit():
                    shutil.rmtree(child)
        self.out.mkdir(parents=True, exist_ok=True)
        self.samples: list[dict] = []

    def add(self, record, user_audio: np.ndarray) -> Path:
        import soundfile as sf
        from duplexgym.rewards.activity import agent_audio
        from duplexgym.rewards.fdb import AgentSpeech
        from duplexgym.rewards.live import judge_transcript

        live, terms = record.live, record.reward_terms
        folder = self.out / f"{len(self.samples) + 1:03d}-{live['dialogue']}"
        folder.mkdir(parents=True)
        agent = np.asarray(agent_audio(record), dtype=np.float32)
        user = np.asarray(user_audio, dtype=np.float32)[: len(agent)]
        sf.write(str(folder / "listen.wav"), np.clip(np.stack([user, agent], axis=1), -1, 1), SAMPLE_RATE,
                 subtype="PCM_16", format="WAV")
        spans = [tuple(x) for x in terms.get("agent_speech_s", [])]
        duration = record.n_frames * FRAME_S
        write_live_timeline(folder / "timeline.png", duration, live, spans, reward=terms.get("reward"),
                            title=f"{live['source']} dialogue {live['dialogue']} (user seed {live['user_seed']})")
        turns = judge_transcript(record, AgentSpeech(spans_s=spans))
        (folder / "transcript.json").write_text(json.dumps(turns, indent=1) + "\n")
        text = "\n".join(f"[{t['start_s']:6.2f} - {t['end_s']:6.2f}] {t['speaker']:<9} {t['text']}"
                         + (f"   ({t['note']})" if t.get("note") else "") for t in turns)
        (folder / "transcript.txt").write_text(text + "\n")
        info = {"dialogue": live["dialogue"], "user_seed": live["user_seed"], "source": live["source"],
                "goal": live.get("goal"), "duration_s": round(duration, 4), "reward": terms.get("reward"),
                "reward_terms": terms, "schedule": live["schedule"], "decisions": live["decisions"],
                "end": live["end"], "files": {"listen.wav": "user left, agent right, 24 kHz",
                                              "timeline.png": "user and agent speech over time",
                                              "transcript.txt": "both sides' turns with times"}}
        (folder / "dialogue.json").write_text(json.dumps(info, indent=1, sort_keys=True, default=float) + "\n")
        self.samples.append({"folder": folder.name, "dialogue": live["dialogue"], "reward": terms.get("reward")})
        return folder

    def finish(self, summary: dict | None = None) -> None:
        marker = {"format": "duplexgym live export", "summary": summary, "dialogues": self.samples}
        (self.out / MARKER_NAME).write_text(json.dumps(marker, indent=1, sort_keys=True, default=float) + "\n")
