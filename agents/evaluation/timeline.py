"""The picture of one episode (``timeline.png`` of ``duplexgym eval --export``), drawn with matplotlib (Agg).

Rows, top to bottom: the user's speech, the agent's speech (its forced prefix in a darker shade),
the human reference's speech (what the person in the recording did). A time axis in seconds from
the segment start; vertical lines at the axis' event (red: pause start, turn end, backchannel
onsets, barge-in onset) and its end (purple: pause end, interruption end); the axis and the
episode reward in the title.
"""

from __future__ import annotations

from pathlib import Path

#: Row colours (the same in the legend).
USER_COLOUR, AGENT_COLOUR, FORCED_COLOUR, REFERENCE_COLOUR = "tab:blue", "tab:orange", "saddlebrown", "0.55"
EVENT_COLOUR, EVENT_END_COLOUR = "tab:red", "tab:purple"
#: Legend names of the event lines per axis: (event, its end).
EVENT_NAMES = {"pause": ("pause start", "pause end"), "turn": ("user's turn end", "end"),
               "backchannel": ("human backchannel onset", "end"), "interruption": ("barge-in onset", "interruption end")}


def _bars(spans, lo: float = 0.0, hi: float = float("inf")) -> list[tuple[float, float]]:
    """``(start, width)`` pairs of the spans clipped to ``[lo, hi]``."""
    out = []
    for a, b in spans:
        a, b = max(float(a), lo), min(float(b), hi)
        if b > a:
            out.append((a, b - a))
    return out


def write_timeline(path: str | Path, duration_s: float, *, user_spans, agent_spans, reference_spans=(),
                   forced_s: float = 0.0, events: dict | None = None, reward: float | None = None,
                   title: str | None = None, axis: str | None = None, svg: bool = False) -> Path:
    """Draw the episode to the PNG ``path`` (and an SVG beside it when ``svg``); returns the PNG path.

    Spans are ``(start_s, end_s)`` in seconds from the segment start; ``events`` holds
    :func:`duplexgym.agents.evaluation.export.event_times`' keys (``event_s``, ``pause_end_s``,
    ``interruption_end_s``, ``backchannels_s`` ...); ``forced_s``: the forced agent prefix's length;
    ``axis`` names the event lines in the legend.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    path = Path(path)
    width_in = min(24.0, max(7.0, 1.5 + 0.55 * duration_s))
    fig = Figure(figsize=(width_in, 2.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    rows = [("user", 2.0, USER_COLOUR), ("agent", 1.0, AGENT_COLOUR), ("human reference", 0.0, REFERENCE_COLOUR)]
    spans = {"user": user_spans, "agent": agent_spans, "human reference": reference_spans}
    for name, y, colour in rows:
        ax.broken_barh(_bars(spans[name]), (y + 0.15, 0.7), facecolors=colour)
    if forced_s > 0:
        ax.broken_barh(_bars(agent_spans, 0.0, forced_s), (1.15, 0.7), facecolors=FORCED_COLOUR)
    events = events or {}
    marks = []
    if events.get("event_s") is not None:
        marks.append((events["event_s"], EVENT_COLOUR))
    marks += [(a, EVENT_COLOUR) for a, _ in events.get("backchannels_s", [])]
    marks += [(events[k], EVENT_END_COLOUR) for k in ("pause_end_s", "interruption_end_s") if events.get(k) is not None]
    for t, colour in marks:
        ax.axvline(t, color=colour, linewidth=1.4)
    ax.set_yticks([y + 0.5 for _, y, _ in rows], [name for name, _, _ in rows])
    ax.set_ylim(0, 3)
    ax.set_xlim(0, duration_s)
    ax.set_xlabel("time in the segment (s)")
    ax.grid(True, axis="x", alpha=0.3)
    legend = [Patch(color=USER_COLOUR, label="user speech"), Patch(color=AGENT_COLOUR, label="agent speech"),
              Patch(color=REFERENCE_COLOUR, label="human reference")]
    if forced_s > 0:
        legend.append(Patch(color=FORCED_COLOUR, label="forced prefix"))
    event_name, end_name = EVENT_NAMES.get(axis, ("event", "event end"))
    legend.append(Line2D([], [], color=EVENT_COLOUR, label=event_name))
    if any(colour == EVENT_END_COLOUR for _, colour in marks):
        legend.append(Line2D([], [], color=EVENT_END_COLOUR, label=end_name))
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    head = title or "episode"
    if reward is not None:
        head += f": reward {reward:+.3f}"
    ax.set_title(head, fontsize=10, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    if svg:
        fig.savefig(path.with_suffix(".svg"), format="svg")
    return path
