"""Episodes written in Full-Duplex-Bench v1's folder layout (``duplexgym eval --export DIR``).

The official scorers (DanielLin94144/Full-Duplex-Bench, ``v1_v1.5/evaluation/``, commit d7336bd)
and our own ``fdb1`` source (:mod:`duplexgym.corpora.sources.fdb1`) both read what this writes::

    DIR/export.json                                    the eval summary; sample -> segment id
    DIR/duplexgym_pause_handling/{n}/pause.json         [{"text": "[PAUSE]", "timestamp": [start, end]}]
    DIR/duplexgym_turn_taking/{n}/turn_taking.json      [{"text": "[TURN-TAKING]", "timestamp": [turn end, response]}]
    DIR/duplexgym_user_interruption/{n}/interrupt.json  [{"context", "interrupt", "timestamp": [onset, end]}]
    DIR/duplexgym_backchannel/aggregated_all_data.json  {"n": [[start, end], ...]}: the human backchannels
    DIR/duplexgym_backchannel/icc_gt_distribution.json  {"n": [...]}: their 0.2 s histogram (official scorer)
    DIR/{task}/{n}/input.wav     the user track, mono 16 kHz PCM_16 (pause: up to the metric's window end)
    DIR/{task}/{n}/output.wav    the agent's audio, mono 16 kHz PCM_16, same length, time-aligned
    DIR/{task}/{n}/output.json   the words the metrics scored, in the official format (below)
    DIR/{task}/{n}/transcription.json  the user's timed words [{"text", "timestamp"}], when known
    DIR/{task}/{n}/listen.wav    stereo 24 kHz PCM_16: user left, agent right (for listening)
    DIR/{task}/{n}/timeline.png  voice activity over time, the events marked, the reward written
    DIR/{task}/{n}/episode.json  segment id, reward, reward_terms, event times, spans

Decisions, each forced by what the official scripts do:

- **16 kHz.** ``eval_backchannel.py`` runs silero's ``get_speech_timestamps`` on ``output.wav``
  without a sample rate, so silero assumes 16 kHz: any other rate gives wrong times. The ASR step
  (``get_transcript/asr.py``, parakeet) reads any rate; the benchmark's own inputs are 16 kHz.
  Both tracks are resampled from 24 kHz with soxr (``n_frames * 1280`` samples each) by
  :func:`duplexgym.rewards.activity.output_pcm16` and written as those int16 samples, so
  ``output.wav`` is exactly as long as ``input.wav``, aligned with it, and holds the very samples
  the in-env metrics ran silero (and ASR) on.
- **Exactly what the metric scored.** Pause episodes are cut at the end of the pause metric's
  window (the term's ``fdb_window_s``: the user's turn end minus ``respond_early_s``; the answer
  after it is not pause handling), both ``input.wav`` and ``output.wav``. ``output.json``
  (``{"text", "chunks": [{"text", "timestamp": [start, end]}], "source"}``) holds the chunks the
  axis term scored (its ``fdb_chunks``): faster-whisper words (``source: asr``; interruption:
  of the audio after the interruption end, times plus that end, as the official ``asr.py``
  writes them) or one ``[speech]`` chunk per VAD speech span (``source: vad``; ``text``: the
  text stream's words). So the official scorers need no ASR step, and run on this folder give
  the per-sample values of ``duplexgym eval``. A sample whose axis term failed has no
  ``output.json`` (``episode.json`` says why).
- **Sample folders are numbered** 1, 2, ... per task (manifest order): ``eval_backchannel.py``
  skips every folder whose name is not all digits. ``episode.json`` and ``export.json`` map them
  back to segment ids.
- **No files beside the sample folders** of the pause and turn-taking tasks:
  ``eval_pause_handling.py`` and ``eval_smooth_turn_taking.py`` call ``os.listdir`` on every
  entry of the task folder. The backchannel scorer only looks at digit folders, so the two
  backchannel files live in its task folder. It reads ``./icc_gt_distribution.json`` from the
  working directory: run it from ``DIR/duplexgym_backchannel`` (``--root_dir .``) or copy that
  file over the official one, so our human backchannels are the reference.
- **Task folder names** contain the official markers (``pause_handling``, ``turn_taking``,
  ``backchannel``, ``interrupt``), so :func:`~duplexgym.corpora.sources.fdb1.task_axis` maps them
  back to the axis; ``--task`` of the official ``evaluate.py`` is given per folder anyway.
- **Times** are seconds from the start of ``input.wav`` (the segment start): in the annotation
  files and ``output.json`` the exact floats the metrics used (latencies must come out equal),
  elsewhere rounded to 0.1 ms. The turn-taking entry's second number (ignored by every reader) is the human reference's
  response onset when known, else the turn end. A pause segment's later turn end has no place in
  the format and is only in ``episode.json``. Interruption texts come from the segment's
  ``texts`` (fdb1 sources) or else from its user words (context: words before the onset).
- ``output.wav`` is the agent channel as the env scored it: in interruption episodes it begins
  with the forced prefix (the human reference the env played as the agent); the official
  transcription crops at the interruption end, so that prefix is never scored. In tokens mode
  the audio is decoded from the agent's Mimi codes with the env's codec.
- ``icc_gt_distribution.json`` is built from the human backchannel spans
  (:func:`duplexgym.rewards.backchannel.human_spans`) on ``int(duration / 0.2) + 1`` bins,
  ``duration`` being ``output.wav``'s length, the same histogram the in-env JSD compares with.
- To score with the benchmark's own ASR instead, run the official ``asr.py`` on the folder (it
  needs a GPU and the parakeet model); it overwrites ``output.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from duplexgym.agents.evaluation.timeline import write_timeline
from duplexgym.rewards.spec import axis_term

from duplexgym.constants import AXES, FRAME_S, SAMPLE_RATE

#: The folder of each axis (official markers inside, see the module docstring).
TASK_FOLDERS = {
    "pause": "duplexgym_pause_handling",
    "turn": "duplexgym_turn_taking",
    "backchannel": "duplexgym_backchannel",
    "interruption": "duplexgym_user_interruption",
}
#: Rate of input.wav / output.wav (silero in the official backchannel scorer assumes it).
FDB_RATE_HZ = 16_000
#: Rate of listen.wav (duplexgym's own rate).
LISTEN_RATE_HZ = SAMPLE_RATE
#: The per-axis annotation file (backchannel: the task-level files).
ANNOTATION_FILES = {"pause": "pause.json", "turn": "turn_taking.json", "interruption": "interrupt.json"}
OUTPUT_JSON_NAME = "output.json"
HUMAN_BACKCHANNELS_NAME = "aggregated_all_data.json"
GT_DISTRIBUTION_NAME = "icc_gt_distribution.json"
MARKER_NAME = "export.json"
TIME_DECIMALS = 4


class FdbExporter:
    """Writes episodes one by one (:meth:`add`), then the task-level files (:meth:`finish`).

    ``out``: a new or empty folder, or an earlier export (its task folders are replaced); any
    other non-empty folder is refused, so nothing of the user's is ever deleted.
    """

    def __init__(self, out: str | Path, corpus, svg: bool = False):
        self.out, self.corpus, self.svg = Path(out), corpus, svg
        if self.out.exists():
            if not self.out.is_dir():
                raise ValueError(f"--export {self.out}: exists and is not a folder; pass a new or empty folder")
            if any(self.out.iterdir()) and not (self.out / MARKER_NAME).is_file():
                raise ValueError(f"--export {self.out}: the folder is not empty and holds no {MARKER_NAME} of an "
                                 "earlier export; pass a new or empty folder")
            for name in TASK_FOLDERS.values():
                if (self.out / name).is_dir():
                    shutil.rmtree(self.out / name)
        self.out.mkdir(parents=True, exist_ok=True)
        self._count = {axis: 0 for axis in AXES}
        self._human_backchannels: dict[str, list] = {}
        self._gt: dict[str, list] = {}
        self.samples: list[dict] = []

    def add(self, record, reward_terms: dict) -> Path:
        """Write one finished episode (``EpisodeRecord``; ``reward_terms`` as the env returned
        them); returns its sample folder."""
        from duplexgym.rewards.activity import agent_audio, output_pcm16
        from duplexgym.rewards.backchannel import human_spans
        from duplexgym.rewards.fdb import (
            backchannel_histogram,
            crop_samples,
            output_duration_s,
        )

        seg = record.segment
        axis = seg.axis
        self._count[axis] += 1
        sample = str(self._count[axis])
        folder = self.out / TASK_FOLDERS[axis] / sample
        folder.mkdir(parents=True)
        n = seg.n_frames
        user = np.asarray(self.corpus.audio(seg)[0], dtype=np.float32)
        agent = np.asarray(agent_audio(record), dtype=np.float32)
        if user.shape != agent.shape:
            raise ValueError(f"episode {seg.id}: user audio {user.shape} and agent audio {agent.shape} differ")
        term = axis_term(reward_terms.get("terms", {}), axis)
        metrics = term["metrics"] if term is not None else {}
        tracks = {"input.wav": output_pcm16(user, n), "output.wav": output_pcm16(agent, n)}
        window = metrics.get("fdb_window_s")
        if axis == "pause":  # only what the pause metric scored (its window; the defaults' without the term)
            if window is None:
                from duplexgym.rewards.pause import metric_window_end_s

                window = [0.0, metric_window_end_s(seg)]
            _, end = crop_samples(0.0, window[1], len(tracks["input.wav"]))
            tracks = {name: pcm[:end] for name, pcm in tracks.items()}
        for name, pcm in tracks.items():
            _write_wav(folder / name, pcm, FDB_RATE_HZ)
        _write_wav(folder / "listen.wav", np.stack([user, agent], axis=1), LISTEN_RATE_HZ)
        output_note = write_output_json(folder / OUTPUT_JSON_NAME, term)

        events = event_times(seg)
        if axis in ANNOTATION_FILES:
            (folder / ANNOTATION_FILES[axis]).write_text(json.dumps(annotation(seg), indent=1) + "\n")
        else:
            self._human_backchannels[sample] = [list(x) for x in events.get("backchannels_s", [])]
            self._gt[sample] = backchannel_histogram(human_spans(seg), output_duration_s(n)).tolist()
        words = _user_words(seg)
        if words is not None:
            (folder / "transcription.json").write_text(json.dumps(words, indent=1) + "\n")

        agent_spans = [tuple(x) for x in reward_terms.get("agent_speech_s", [])]
        user_spans = _rel_spans(seg, seg.user_spans_s) if seg.user_spans_s is not None else None
        if user_spans is None:
            from duplexgym.corpora.vad import SEQUENTIAL, speech_spans

            user_spans = [(round(a, TIME_DECIMALS), round(b, TIME_DECIMALS))
                          for a, b in speech_spans([user], blocking=SEQUENTIAL)[0]]
        reference = _rel_spans(seg, seg.reference_spans_s) if seg.reference_spans_s else []
        forced_s = record.forced_frames * FRAME_S
        write_timeline(folder / "timeline.png", n * FRAME_S, user_spans=user_spans, agent_spans=agent_spans,
                       reference_spans=reference, forced_s=forced_s, events=events,
                       reward=float(reward_terms["reward"]), title=f"{axis} segment {seg.id}", axis=axis, svg=self.svg)
        info = {
            "segment": seg.id, "axis": axis, "task": TASK_FOLDERS[axis], "sample": sample,
            "reward": reward_terms["reward"], "reward_terms": reward_terms,
            "duration_s": round(n * FRAME_S, TIME_DECIMALS), "events_s": events,
            "forced_prefix_s": round(forced_s, TIME_DECIMALS),
            "scored_window_s": None if window is None else [round(float(x), TIME_DECIMALS) for x in window],
            "fdb_source": metrics.get("fdb_source"), OUTPUT_JSON_NAME: output_note,
            "user_spans_s": [list(x) for x in user_spans], "agent_speech_s": [list(x) for x in agent_spans],
            "reference_spans_s": [list(x) for x in reference],
            "files": {"input.wav": f"user, mono {FDB_RATE_HZ} Hz", "output.wav": f"agent, mono {FDB_RATE_HZ} Hz",
                      "listen.wav": f"user left, agent right, {LISTEN_RATE_HZ} Hz (the whole episode)"},
            "timeline.png": "rows: user (blue), agent (orange; brown: forced prefix), human reference (grey); "
                            "red line: the event, purple: its end; x: seconds; title: the episode reward",
        }
        (folder / "episode.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        self.samples.append({"task": TASK_FOLDERS[axis], "sample": sample, "segment": seg.id, "axis": axis})
        return folder

    def finish(self, summary: dict | None = None) -> None:
        """Write the backchannel task files and ``export.json``."""
        if self._human_backchannels:
            task = self.out / TASK_FOLDERS["backchannel"]
            (task / HUMAN_BACKCHANNELS_NAME).write_text(json.dumps(self._human_backchannels, indent=1) + "\n")
            (task / GT_DISTRIBUTION_NAME).write_text(json.dumps(self._gt) + "\n")
        marker = {"format": "Full-Duplex-Bench v1", "rate_hz": FDB_RATE_HZ, "summary": summary,
                  "samples": self.samples}
        (self.out / MARKER_NAME).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")


def write_output_json(path: Path, term: dict | None) -> str:
    """Write the official ``output.json`` of the chunks an axis term scored (its metrics'
    ``fdb_chunks``); returns what ``episode.json`` says about the file."""
    if term is None:
        return "not written: the axis term failed or is not in the reward spec"
    metrics = term["metrics"]
    if "fdb_chunks" not in metrics:
        return "not written: the axis term reports no fdb_chunks"
    chunks = [{"text": str(text), "timestamp": [float(a), float(b)]} for a, b, text in metrics["fdb_chunks"]]
    doc = {"text": " ".join(c["text"] for c in chunks), "chunks": chunks, "source": metrics.get("fdb_source")}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return f"the chunks the metric scored (source {metrics.get('fdb_source')})"


# ----------------------------------------------------------------------------- annotations


def _t(seg, t_s: float | None) -> float | None:
    """Dialogue seconds -> seconds from the segment start, rounded, never negative."""
    return None if t_s is None else round(max(0.0, t_s - seg.start_s), TIME_DECIMALS) + 0.0


def _rel_spans(seg, spans) -> list[tuple[float, float]]:
    end = seg.n_frames * FRAME_S
    out = []
    for a, b in spans or ():
        a, b = _t(seg, a), min(_t(seg, b), round(end, TIME_DECIMALS))
        if b > a:
            out.append((a, b))
    return out


def event_times(seg) -> dict:
    """The segment's anchors in seconds from its start (what the annotations hold)."""
    out = {"event_s": _t(seg, seg.event_s)}
    for key in ("pause_end_s", "turn_end_s", "response_s", "interruption_end_s", "reference_stop_s"):
        value = getattr(seg, key)
        if value is not None:
            out[key] = _t(seg, value)
    if seg.backchannels_s is not None:
        out["backchannels_s"] = [list(x) for x in _rel_spans(seg, seg.backchannels_s)]
    return out


def _exact(seg, t_s: float | None) -> float | None:
    """Dialogue seconds -> episode seconds exactly as the rewards compute them (``t - start``)."""
    return None if t_s is None else max(0.0, t_s - seg.start_s)


def annotation(seg) -> list[dict]:
    """The official annotation entry list of a pause, turn or interruption segment (exact times:
    the scorers' latencies are measured from them)."""
    ev = _exact(seg, seg.event_s)
    if seg.axis == "pause":
        return [{"text": "[PAUSE]", "timestamp": [ev, _exact(seg, seg.pause_end_s)]}]
    if seg.axis == "turn":
        second = _exact(seg, seg.response_s) if seg.response_s is not None else ev
        return [{"text": "[TURN-TAKING]", "timestamp": [ev, second]}]
    if seg.axis == "interruption":
        end = _exact(seg, seg.interruption_end_s)
        texts = seg.texts or {}
        words = seg.user_words or ()
        interrupt = texts.get("interrupt")
        if interrupt is None:
            interrupt = " ".join(w["text"] for w in words if seg.event_s - 0.1 <= w["start_s"] < seg.interruption_end_s)
        context = texts.get("context")
        if context is None:
            context = " ".join(w["text"] for w in words if w["start_s"] < seg.event_s - 0.1)
        return [{"context": context, "interrupt": interrupt, "timestamp": [ev, end]}]
    raise ValueError(f"segment {seg.id}: axis {seg.axis!r} has no per-sample annotation file")


def _user_words(seg) -> list[dict] | None:
    """The user's words inside the segment as a flat ``[{"text", "timestamp"}]`` list, or None."""
    if seg.user_words is None:
        return None
    end = round(seg.n_frames * FRAME_S, TIME_DECIMALS)
    out = []
    for w in seg.user_words:
        if w["start_s"] < seg.start_s or w["start_s"] - seg.start_s >= end:
            continue
        a = _t(seg, w["start_s"])
        out.append({"text": w["text"], "timestamp": [a, max(a, min(_t(seg, w["end_s"]), end))]})
    return out


# ----------------------------------------------------------------------------- audio


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    """int16 samples are written as they are; float ones clipped to [-1, 1] (libsndfile scales)."""
    if audio.dtype != np.int16:
        audio = np.clip(audio, -1.0, 1.0)
    sf.write(str(path), audio, rate, subtype="PCM_16", format="WAV")
