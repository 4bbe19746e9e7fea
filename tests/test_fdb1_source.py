"""The ``fdb1`` source on tiny Full-Duplex-Bench-shaped folders: real flite speech, annotation JSON
in the shapes the benchmark ships (see the docstring of ``duplexgym.corpora.sources.fdb1``)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from duplexgym.corpora.errors import InputFileError, SourceError
from duplexgym.corpora.sources import fdb1
from duplexgym.corpora.sources.fdb1 import ReadySegment, fdb1_segments

from tests.conftest import flite_speech

WORD_GAP_S = 0.06


def utterance(words: str, rate: int, voice: str = "slt") -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Each word synthesized on its own and joined with short gaps, so every word time is exact."""
    parts, timed, t = [], [], 0.0
    for word in words.split():
        clip = flite_speech(word, voice, rate)
        timed.append((word, t, t + len(clip) / rate))
        parts += [clip, np.zeros(int(WORD_GAP_S * rate), np.float32)]
        t += len(clip) / rate + WORD_GAP_S
    audio = np.concatenate(parts[:-1])
    return audio, [(w, s, e) for w, s, e in timed]


def shifted(words, by_s):
    return [(w, s + by_s, e + by_s) for w, s, e in words]


def item_words(words):
    """Upstream's word entry: ``{"text", "timestamp": [start, end]}``."""
    return [{"text": w, "timestamp": [s, e]} for w, s, e in words]


def write(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4), encoding="utf-8")


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), np.float32)


def build_root(root: Path) -> dict:
    """All five v1 tasks; returns the true times the tests compare with."""
    truth = {}

    # candor_pause_handling/1 (48 kHz like the released Candor clips): "so I was thinking | about the trip"
    rate = 48_000
    first, w1 = utterance("so I was thinking", rate)
    second, w2 = utterance("about the trip", rate)
    pause_start = len(first) / rate
    pause_end = pause_start + 1.2
    audio = np.concatenate([first, silence(1.2, rate), second, silence(0.5, rate)])
    d = root / "candor_pause_handling" / "1"
    d.mkdir(parents=True)
    sf.write(d / "input.wav", audio, rate, subtype="PCM_16")
    write(d / "pause.json", [{"text": "[PAUSE]", "timestamp": [pause_start, pause_end]}])
    words = w1 + shifted(w2, pause_end)
    write(d / "transcription.json", [{"speaker": 0, "item": item_words(words)}])
    truth["candor_pause"] = dict(n=len(audio), rate=rate, pause=(pause_start, pause_end), words=words)

    # synthetic_pause_handling/{2,10} (16 kHz, no transcript): numeric ids sort numerically
    rate = 16_000
    halves = {"2": ("I would like to book", "a table for two"), "10": ("what is the weather", "like tomorrow")}
    for sid, (a, b) in halves.items():
        first, _ = utterance(a, rate)
        second, _ = utterance(b, rate)
        audio = np.concatenate([first, silence(1.0, rate), second])
        d = root / "synthetic_pause_handling" / sid
        d.mkdir(parents=True)
        sf.write(d / "input.wav", audio, rate, subtype="PCM_16")
        start = len(first) / rate
        write(d / "pause.json", [{"text": "[PAUSE]", "timestamp": [start, start + 1.0]}])
        truth[f"synthetic_pause_{sid}"] = dict(n=len(audio), rate=rate, pause=(start, start + 1.0))

    # candor_turn_taking/1, as upstream's example: speaker 1 (in input.wav) asks, speaker 0 answers
    # from the turn end on (in the transcript only; input.wav is silent there)
    question, wq = utterance("is this your first time doing this", rate)
    _, wa = utterance("I actually did it yesterday", rate, voice="rms")
    turn_end = len(question) / rate
    audio = np.concatenate([question, silence(4.0, rate)])
    d = root / "candor_turn_taking" / "1"
    d.mkdir(parents=True)
    sf.write(d / "input.wav", audio, rate, subtype="PCM_16")
    write(d / "turn_taking.json", [{"text": "[TURN-TAKING]", "timestamp": [turn_end, turn_end + 0.39]}])
    answer = shifted(wa, turn_end)
    write(
        d / "transcription.json",
        [{"speaker": 0, "item": item_words(answer)}, {"speaker": 1, "item": item_words(wq)}],
    )
    truth["turn"] = dict(n=len(audio), rate=rate, turn_end=turn_end, words=wq, answer_start=answer[0][1])

    # icc_backchannel/{0,1}: a monologue; the human listeners' backchannels for sample 0 only
    for sid in ("0", "1"):
        lead = 0.4
        a, wa = utterance("so we drove all the way to the coast", rate)
        b, wb = utterance("and the weather was perfect the whole time", rate)
        audio = np.concatenate([silence(lead, rate), a, silence(0.8, rate), b, silence(0.3, rate)])
        d = root / "icc_backchannel" / sid
        d.mkdir(parents=True)
        sf.write(d / "input.wav", audio, rate, subtype="PCM_16")
        words = shifted(wa, lead) + shifted(wb, lead + len(a) / rate + 0.8)
        write(d / "transcription.json", item_words(words))  # the flat word-list shape
        truth[f"icc_{sid}"] = dict(n=len(audio), rate=rate, words=words)
    gap = truth["icc_0"]["words"][8][2] + 0.1  # just after "coast"
    human = [[gap, gap + 0.35], [gap + 2.0, gap + 2.3]]
    write(root / "icc_backchannel" / "aggregated_all_data.json", {"0": human})
    truth["icc_0"]["backchannels"] = [tuple(p) for p in human]

    # synthetic_user_interruption/1: context, 4 s for the model's answer, the interruption
    context, _ = utterance("tell me about cats", rate)
    interrupt, _ = utterance("what about dogs instead", rate, voice="rms")
    onset = len(context) / rate + 4.0
    end = onset + len(interrupt) / rate
    audio = np.concatenate([context, silence(4.0, rate), interrupt, silence(3.0, rate)])
    d = root / "synthetic_user_interruption" / "1"
    d.mkdir(parents=True)
    sf.write(d / "input.wav", audio, rate, subtype="PCM_16")
    sf.write(d / "context.wav", context, rate, subtype="PCM_16")
    sf.write(d / "interrupt.wav", interrupt, rate, subtype="PCM_16")
    write(
        d / "interrupt.json",
        [{"context": "Tell me about cats.", "interrupt": "What about dogs instead?", "timestamp": [onset, end]}],
    )
    truth["interruption"] = dict(n=len(audio), rate=rate, span=(onset, end))
    return truth


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("fdb") / "v1_0"
    truth = build_root(root)
    return root, truth


@pytest.fixture
def bench_copy(bench, tmp_path):
    root, truth = bench
    copy = tmp_path / "v1_0"
    shutil.copytree(root, copy)
    return copy, truth


def by_id(ready):
    return {r.segment.id: r for r in ready}


def frames_of(n: int, rate: int) -> int:
    return math.ceil(math.ceil(n * 24_000 / rate) / 1920)


# ----------------------------------------------------------------------------- parsing


def test_every_task_becomes_segments_in_sorted_order(bench):
    root, _ = bench
    ready, errors = fdb1_segments(root)
    assert errors == []
    assert [r.segment.id for r in ready] == [
        "candor_pause_handling__1",
        "candor_turn_taking__1",
        "icc_backchannel__0",
        "icc_backchannel__1",
        "synthetic_pause_handling__2",
        "synthetic_pause_handling__10",
        "synthetic_user_interruption__1",
    ]
    axes = ["pause", "turn", "backchannel", "backchannel", "pause", "pause", "interruption"]
    assert [r.segment.axis for r in ready] == axes
    for r in ready:
        s = r.segment
        assert isinstance(r, ReadySegment)
        assert (s.dialogue, s.user, s.reference, s.has_reference) == (s.id, "A", "B", False)
        assert (s.audio, s.codes, s.start_s) == ("", None, 0.0)
        assert s.end_s == pytest.approx(s.n_frames * 0.08)
        assert r.files[0].name == "input.wav"
    again, _ = fdb1_segments(root)
    assert [r.segment.to_json() for r in again] == [r.segment.to_json() for r in ready]


def test_pause_segment_times_words_and_audio(bench):
    root, truth = bench
    t = truth["candor_pause"]
    r = by_id(fdb1_segments(root)[0])["candor_pause_handling__1"]
    s = r.segment
    assert (s.event_s, s.pause_end_s) == pytest.approx(t["pause"])
    assert s.n_frames == frames_of(t["n"], 48_000)
    assert [w["text"] for w in s.user_words] == [w for w, _, _ in t["words"]]
    got = [t for w in s.user_words for t in (w["start_s"], w["end_s"])]
    assert got == pytest.approx([x for _, a, b in t["words"] for x in (a, b)])
    assert [r.files[i].name for i in range(3)] == ["input.wav", "pause.json", "transcription.json"]
    track = r.load()
    assert track.dtype == np.float32 and track.ndim == 1
    assert len(track) == math.ceil(t["n"] * 24_000 / 48_000)
    assert (s.n_frames - 1) * 1920 < len(track) <= s.n_frames * 1920
    # the pause is silent in the loaded audio, the speech around it is not
    rms = lambda a, b: float(np.sqrt(np.mean(track[int(a * 24_000) : int(b * 24_000)] ** 2)))  # noqa: E731
    assert rms(s.event_s + 0.1, s.pause_end_s - 0.1) < 1e-3 < rms(0.0, s.event_s)
    without_transcript = by_id(fdb1_segments(root)[0])["synthetic_pause_handling__2"].segment
    assert without_transcript.user_words is None
    assert without_transcript.event_s == pytest.approx(truth["synthetic_pause_2"]["pause"][0])


def test_turn_segment_picks_the_speaker_of_input_wav_and_the_human_response(bench):
    root, truth = bench
    t = truth["turn"]
    s = by_id(fdb1_segments(root)[0])["candor_turn_taking__1"].segment
    assert s.event_s == pytest.approx(t["turn_end"])
    assert [w["text"] for w in s.user_words] == [w for w, _, _ in t["words"]]  # speaker 1, not the answer
    assert s.response_s == pytest.approx(t["answer_start"])
    assert s.n_frames == frames_of(t["n"], 16_000)


def test_backchannel_anchor_is_the_first_human_backchannel_else_the_speech_start(bench):
    root, truth = bench
    segs = by_id(fdb1_segments(root)[0])
    listed = segs["icc_backchannel__0"]
    assert np.allclose(listed.segment.backchannels_s, truth["icc_0"]["backchannels"])
    assert listed.segment.event_s == pytest.approx(truth["icc_0"]["backchannels"][0][0])
    assert listed.files[-1].name == "aggregated_all_data.json"
    unlisted = segs["icc_backchannel__1"].segment
    assert unlisted.backchannels_s is None
    assert unlisted.event_s == pytest.approx(truth["icc_1"]["words"][0][1]) == pytest.approx(0.4)
    assert len(unlisted.user_words) == len(truth["icc_1"]["words"])


def test_interruption_segment(bench):
    root, truth = bench
    r = by_id(fdb1_segments(root)[0])["synthetic_user_interruption__1"]
    s = r.segment
    assert (s.event_s, s.interruption_end_s) == pytest.approx(truth["interruption"]["span"])
    assert s.agent_prefix_s is None and s.user_words is None
    assert r.texts == {"context": "Tell me about cats.", "interrupt": "What about dogs instead?"}
    assert [p.name for p in r.files] == ["input.wav", "interrupt.json"]  # context/interrupt.wav are not read


def test_one_task_folder_as_root(bench):
    root, _ = bench
    ready, errors = fdb1_segments(root / "synthetic_pause_handling")
    assert errors == []
    assert [r.segment.id for r in ready] == ["synthetic_pause_handling__2", "synthetic_pause_handling__10"]


def test_crisperwhisper_chunks_transcript_and_null_times(bench_copy):
    root, truth = bench_copy
    words = truth["icc_1"]["words"]
    chunks = [{"text": " " + w, "timestamp": [s, e]} for w, s, e in words]
    chunks.append({"text": " uh", "timestamp": [None, None]})  # unaligned: skipped
    text = " ".join(w for w, _, _ in words)
    write(root / "icc_backchannel" / "1" / "transcription.json", {"text": text, "chunks": chunks})
    s = by_id(fdb1_segments(root)[0])["icc_backchannel__1"].segment
    assert [w["text"] for w in s.user_words] == [w for w, _, _ in words]


# ----------------------------------------------------------------------------- laziness


def test_enumeration_reads_no_audio(bench, monkeypatch):
    root, _ = bench
    calls = []

    def no_read(*args, **kwargs):
        calls.append(args)
        raise AssertionError("audio read while enumerating")

    monkeypatch.setattr(sf, "read", no_read)
    monkeypatch.setattr(fdb1, "read_tracks", no_read)
    ready, errors = fdb1_segments(root)
    assert len(ready) == 7 and errors == [] and calls == []
    with pytest.raises(AssertionError):
        ready[0].load()
    assert len(calls) == 1


def test_stereo_input_fails_at_load_naming_the_file(bench_copy):
    root, _ = bench_copy
    path = root / "synthetic_pause_handling" / "2" / "input.wav"
    mono, rate = sf.read(path, dtype="float32")
    sf.write(path, np.stack([mono, mono], axis=1), rate, subtype="PCM_16")
    ready, errors = fdb1_segments(root)
    assert errors == []
    r = by_id(ready)["synthetic_pause_handling__2"]
    with pytest.raises(InputFileError) as info:
        r.load()
    assert info.value.path == str(path) and "2-channel" in info.value.problem


# ----------------------------------------------------------------------------- bad samples


def errors_by_file(errors):
    return {Path(e.path).relative_to(e.path.split("/v1_0/")[0] + "/v1_0").as_posix(): e.problem for e in errors}


def test_bad_samples_are_reported_and_the_others_come_back(bench_copy):
    root, _ = bench_copy
    (root / "candor_turn_taking" / "1" / "input.wav").unlink()
    (root / "synthetic_pause_handling" / "2" / "pause.json").write_text("[{\"text\": \"[PAUSE]\", ", encoding="utf-8")
    write(root / "synthetic_pause_handling" / "10" / "pause.json", [[1.0, 2.0]])
    (root / "synthetic_user_interruption" / "1" / "interrupt.json").unlink()
    write(root / "candor_pause_handling" / "1" / "transcription.json", {"words": []})
    ready, errors = fdb1_segments(root)
    assert [r.segment.id for r in ready] == ["icc_backchannel__0", "icc_backchannel__1"]
    problems = errors_by_file(errors)
    assert list(problems) == [
        "candor_pause_handling/1/transcription.json",
        "candor_turn_taking/1/input.wav",
        "synthetic_pause_handling/2/pause.json",
        "synthetic_pause_handling/10/pause.json",
        "synthetic_user_interruption/1/interrupt.json",
    ]
    assert problems["candor_turn_taking/1/input.wav"].startswith("file not found")
    assert problems["synthetic_pause_handling/2/pause.json"].startswith("not valid JSON")
    assert problems["synthetic_pause_handling/10/pause.json"] == (
        'expected a non-empty list of {"text": "[PAUSE]", "timestamp": [start, end]} objects; '
        "entry 0 is a list of 2 items: [1.0, 2.0]"
    )
    assert problems["synthetic_user_interruption/1/interrupt.json"].startswith("file not found")
    assert "got an object with keys ['words']" in problems["candor_pause_handling/1/transcription.json"]
    assert all(str(e).startswith(e.path + ": ") for e in errors)


@pytest.mark.parametrize(
    "task, name, value, needle",
    [
        ("candor_pause_handling/1", "pause.json", [], "expected a non-empty list"),
        ("candor_pause_handling/1", "pause.json", [{"text": "[PAUSE]", "timestamp": [4.0, 3.0]}], "ends (3.0)"),
        ("candor_pause_handling/1", "pause.json", [{"text": "[PAUSE]", "timestamp": [99.0, 100.0]}], "past the end"),
        ("candor_turn_taking/1", "turn_taking.json", [{"timestamp": ["2.0", 2.4]}], "two non-negative numbers"),
        ("candor_turn_taking/1", "transcription.json", [{"speaker": 0, "item": [{"text": "hi"}]}], "entry 0 item 0"),
        ("synthetic_user_interruption/1", "interrupt.json", [{"timestamp": [5.0, 6.0]}], '"context" must be the text'),
        ("icc_backchannel/0", "transcription.json", "hello", "got str"),
    ],
)
def test_wrongly_shaped_annotations(bench_copy, task, name, value, needle):
    root, _ = bench_copy
    write(root / task / name, value)
    ready, errors = fdb1_segments(root)
    assert len(ready) == 6 and len(errors) == 1
    assert errors[0].path == str(root / task / name) and needle in errors[0].problem


def test_a_bad_icc_backchannel_file_is_one_error_for_its_task(bench_copy):
    root, _ = bench_copy
    write(root / "icc_backchannel" / "aggregated_all_data.json", {"0": [[1.0]]})
    ready, errors = fdb1_segments(root)
    assert len(ready) == 5 and not any(r.segment.axis == "backchannel" for r in ready)
    (error,) = errors
    assert error.path.endswith("icc_backchannel/aggregated_all_data.json")
    assert '"0" backchannel 0' in error.problem and "2 samples of icc_backchannel were skipped" in error.problem


# ----------------------------------------------------------------------------- bad roots


def test_root_without_task_folders(tmp_path):
    (tmp_path / "music").mkdir()
    with pytest.raises(SourceError) as info:
        fdb1_segments(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "{task}/{id}/input.wav" in message and "candor_turn_taking" in message


def test_root_one_level_too_high_gets_a_hint(bench):
    root, _ = bench
    with pytest.raises(SourceError, match="holds task folders, pass that folder"):
        fdb1_segments(root.parent)


def test_task_folders_without_samples(tmp_path):
    (tmp_path / "candor_turn_taking").mkdir()
    with pytest.raises(SourceError, match="hold no sample folders"):
        fdb1_segments(tmp_path)
    with pytest.raises(SourceError, match="not a folder"):
        fdb1_segments(tmp_path / "missing")


def test_build_corpus_from_fdb1(bench, tmp_path):
    """Through the builder: segments with the user track, a silent reference, texts kept."""
    import soundfile as sf
    from duplexgym.corpora.build import BuildOptions, build_corpus, infer_format
    from duplexgym.corpora.manifest import read_manifest

    root, _ = bench
    assert infer_format(str(root)) == "fdb1"
    summary = build_corpus(root, tmp_path / "c", BuildOptions())
    segments = read_manifest(tmp_path / "c")
    assert summary.format == "fdb1" and len(segments) == sum(summary.segments.values()) >= 5
    assert {s.axis for s in segments} == {"pause", "turn", "backchannel", "interruption"}
    for seg in segments:
        audio, rate = sf.read(str(tmp_path / "c" / seg.audio), dtype="float32")
        assert rate == 24_000 and audio.shape == (seg.n_frames * 1920, 2)
        assert np.abs(audio[:, 0]).max() > 0.05 and np.abs(audio[:, 1]).max() == 0.0
        assert seg.has_reference is False
    intr = [s for s in segments if s.axis == "interruption"]
    assert intr and all(s.texts and "interrupt" in s.texts for s in intr)
