"""Published Full-Duplex-Bench v1 numbers to read a measured table against: the seed paper's Table 1
(arXiv 2606.11167; ``shared/PAPER.md``) and the benchmark repository's own rows (``shared/FACTS.md``).
They are published figures, not measured here; :func:`published_table` labels them so.

Columns (the benchmark's order): pause TOR on its synthetic and Candor subsets (lower is better);
backchannel TOR (lower), frequency per second (higher), JSD (lower); turn-taking TOR (higher),
latency s (lower); interruption TOR (higher), GPT-4o relevance 0-5 (higher), latency s (lower).
The two sources differ most for base Moshi (pause TOR .445 vs .985): the paper prepends 3 s of
silence to Moshi's input, the repository does not; the paper also resampled the output to 16 kHz
before the backchannel script's silero, which the official script did not.
"""

from __future__ import annotations

#: ``(axis, metric, better)``, in the benchmark's order; ``better``: "lower" or "higher".
COLUMNS = (("pause", "tor_synthetic", "lower"), ("pause", "tor_candor", "lower"),
           ("backchannel", "tor", "lower"), ("backchannel", "frequency", "higher"), ("backchannel", "jsd", "lower"),
           ("turn", "tor", "higher"), ("turn", "latency_s", "lower"),
           ("interruption", "tor", "higher"), ("interruption", "relevance_0_5", "higher"),
           ("interruption", "latency_s", "lower"))

#: Column headings of :func:`published_table`, one per COLUMNS entry.
SHORT = ("pause syn", "pause cand", "bc TOR", "bc freq", "bc JSD", "turn TOR", "turn lat", "intr TOR", "intr rel",
         "intr lat")

#: The seed paper's Table 1 (Full-Duplex-Bench v1), one tuple of COLUMNS per model.
PAPER_TABLE1 = {
    "Moshi (3 s silence prepended)": (.445, .528, .255, .074, .824, .739, .162, .920, 3.440, 1.377),
    "Moshi + RL (Fisher)": (.226, .417, .091, .095, .789, .966, .121, 1.000, 3.575, .461),
    "Moshi + RL (Seamless)": (.307, .463, .145, .101, .794, .958, .160, 1.000, 3.630, .409),
    "PersonaPlex": (.482, .444, .182, .046, .841, .958, .219, .940, 4.500, .271),
    "PersonaPlex + RL (Seamless)": (.350, .356, .073, .112, .786, .975, .086, .995, 4.533, .223),
}

#: The rows the Full-Duplex-Bench repository publishes for v1.
BENCHMARK_V1 = {
    "Moshi": (.985, .980, 1.000, .001, .957, .941, .265, 1.000, .765, .257),
    "PersonaPlex": (.584, .662, .327, .025, .649, .992, .070, 1.000, 4.210, .400),
    "GPT-Realtime": (.010, .120, .000, .007, .980, 1.000, 1.470, .970, 3.850, 1.500),
}

SOURCES = {"paper": ("seed paper, Table 1 (arXiv 2606.11167)", PAPER_TABLE1),
           "benchmark": ("Full-Duplex-Bench repository, v1", BENCHMARK_V1)}


def published_rows() -> list[dict]:
    """Every published row as ``{"source", "model", "values": {"axis.metric": value}}``."""
    rows = []
    for key, (label, table) in SOURCES.items():
        for model, values in table.items():
            rows.append({"source": key, "source_label": label, "model": model,
                         "values": {f"{a}.{m}": v for (a, m, _), v in zip(COLUMNS, values)}})
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}"


def published_table(measured: dict | None = None, measured_label: str = "measured here") -> str:
    """A text table of the published rows (labelled published, not measured here), with a first row
    of ``measured`` values (``{"axis.metric": value}``; missing ones shown as ``-``) when given."""
    head = ["model"] + list(SHORT)
    lines = ["Full-Duplex-Bench v1 (pause: lower TOR better; backchannel: lower TOR, higher frequency, lower JSD; "
             "turn and interruption: higher TOR, lower latency, higher relevance)"]
    body = []
    if measured is not None:
        body.append([measured_label] + [_cell(measured.get(f"{a}.{m}")) for a, m, _ in COLUMNS])
    for key, (label, table) in SOURCES.items():
        for model, values in table.items():
            body.append([f"{model} [published: {key}]"] + [_cell(v) for v in values])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines.append(fmt(head))
    lines += [fmt(r) for r in body]
    lines.append("published rows: " + "; ".join(f"{k} = {label}" for k, (label, _) in SOURCES.items())
                 + "; not measured here")
    return "\n".join(lines)
