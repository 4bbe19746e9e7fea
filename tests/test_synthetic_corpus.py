"""The embedded default corpus (``duplexgym.corpora.synthetic``), rendered with the real flite."""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from duplexgym.corpora.synthetic import (
    GENERATOR_VERSION,
    STAMP_NAME,
    SyntheticParams,
    TTSUnavailableError,
    check_truth,
    generate_corpus,
    phrases,
    tts,
)
from duplexgym.corpora.synthetic.generate import VOICE_PAIRS
from duplexgym.corpora.transcript import load_transcript

SMALL = SyntheticParams(n_dialogues=4)
FIELDS = {
    "pause": {"type", "speaker", "start_s", "end_s"},
    "turn": {"type", "from", "to", "end_s", "onset_s"},
    "backchannel": {"type", "speaker", "holder", "start_s", "end_s", "text"},
    "interruption": {"type", "speaker", "interrupted", "onset_s", "stop_s", "end_s"},
}
ANCHOR = {"pause": "start_s", "turn": "end_s", "backchannel": "start_s", "interruption": "onset_s"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    calls = []
    wavs = generate_corpus(out, seed=0, params=SMALL, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 4) for i in range(1, 5)]
    return out, wavs


def _truth(wav):
    return json.loads(wav.with_name(wav.stem + ".truth.json").read_text())


def test_files_and_formats(corpus):
    out, wavs = corpus
    assert [w.name for w in wavs] == [f"syn{i:04d}.wav" for i in range(4)]
    for wav in wavs:
        info = sf.info(str(wav))
        assert (info.channels, info.samplerate, info.subtype) == (2, 24_000, "PCM_16")
        words = load_transcript(wav.with_suffix(".json"))
        assert {w.speaker for w in words} == {"A", "B"}
        truth = _truth(wav)
        assert truth["dialogue"] == wav.stem
        assert truth["duration_s"] == pytest.approx(info.frames / 24_000, abs=1e-4)
        assert 12.0 <= truth["duration_s"] <= 25.0
        audio, _ = sf.read(str(wav), dtype="float32")
        for channel in (0, 1):  # two voices, both audible
            assert np.abs(audio[:, channel]).max() > 0.2
    stamp = json.loads((out / STAMP_NAME).read_text())
    assert stamp["generator_version"] == GENERATOR_VERSION and stamp["seed"] == 0


def test_label_sanity(corpus):
    _, wavs = corpus
    kinds = set()
    for wav in wavs:
        truth = _truth(wav)
        assert check_truth(truth, SMALL) == []
        events = truth["events"]
        anchors = [e[ANCHOR[e["type"]]] for e in events]
        assert anchors == sorted(anchors)
        for e in events:
            assert set(e) == FIELDS[e["type"]], e
            for key, value in e.items():
                if key.endswith("_s"):
                    assert 0.0 <= value <= truth["duration_s"] and value == round(value, 4)
            who = [e[k] for k in ("speaker", "holder", "interrupted", "from", "to") if k in e]
            assert set(who) <= {"A", "B"} and len(set(who)) == len(who)
            if e["type"] == "pause":
                assert 0.7 <= e["end_s"] - e["start_s"] <= 2.5
            elif e["type"] == "turn":
                gap = e["onset_s"] - e["end_s"]
                assert 0.15 <= gap <= 1.2 or 0.1 <= -gap <= 0.3
            elif e["type"] == "backchannel":
                assert e["text"] in phrases.BACKCHANNELS and e["end_s"] - e["start_s"] < 0.8
            else:
                assert 0.5 <= e["stop_s"] - e["onset_s"] <= 1.2 < e["end_s"] - e["onset_s"]
        speech = truth["speech"]  # each speaker's exact speech: the labels' boundaries are its edges
        assert set(speech) == {"A", "B"}
        for spans in speech.values():
            assert spans == sorted(spans) and all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:] + [[1e9, 0]]))
        starts = {s: {a for a, _ in v} for s, v in speech.items()}
        ends = {s: {b for _, b in v} for s, v in speech.items()}
        for e in events:
            if e["type"] == "pause":
                assert e["start_s"] in ends[e["speaker"]] and e["end_s"] in starts[e["speaker"]]
            elif e["type"] == "turn":
                assert e["end_s"] in ends[e["from"]] and e["onset_s"] in starts[e["to"]]
            elif e["type"] == "backchannel":
                assert [e["start_s"], e["end_s"]] in speech[e["speaker"]]
            else:
                assert e["onset_s"] in starts[e["speaker"]] and e["stop_s"] in ends[e["interrupted"]]
        counts = {k: sum(e["type"] == k for e in events) for k in FIELDS}
        assert counts["pause"] >= 1 and counts["backchannel"] >= 1 and counts["turn"] >= 2
        kinds |= {k for k, n in counts.items() if n}
    assert kinds == set(FIELDS)


def test_audio_agrees_with_labels(corpus):
    """Speech energy where the labels say someone speaks, silence where they say nobody does."""
    _, wavs = corpus
    rate = 24_000

    def loud(track, a, b):  # RMS in [a, b] seconds, dBFS
        seg = track[int(a * rate) : int(b * rate)]
        return 20 * np.log10(np.sqrt(np.mean(seg.astype(np.float64) ** 2)) + 1e-12)

    for wav in wavs:
        audio, _ = sf.read(str(wav), dtype="float32")
        ch = {"A": audio[:, 0], "B": audio[:, 1]}
        for e in _truth(wav)["events"]:
            if e["type"] == "pause":
                for track in ch.values():  # nobody speaks during a pause
                    assert loud(track, e["start_s"] + 0.02, e["end_s"] - 0.02) < -55
                assert loud(ch[e["speaker"]], e["end_s"], e["end_s"] + 0.2) > -40
            elif e["type"] == "backchannel":
                assert loud(ch[e["speaker"]], e["start_s"], e["end_s"]) > -40
                assert loud(ch[e["speaker"]], e["start_s"] - 1.5, e["start_s"] - 0.01) < -55
                assert loud(ch[e["holder"]], e["start_s"] - 0.8, e["end_s"] + 0.8) > -40
            elif e["type"] == "interruption":
                assert loud(ch[e["interrupted"]], e["stop_s"] - 0.1, e["stop_s"] - 0.02) > -35
                assert loud(ch[e["interrupted"]], e["stop_s"] + 0.001, e["end_s"]) < -55
                assert loud(ch[e["speaker"]], e["onset_s"], e["onset_s"] + 0.2) > -40


def test_labels_match_silero_vad(corpus):
    """Every labelled speech boundary is within 0.2 s of a silero VAD boundary (100 ms minimum
    silence, 30 ms padding), and the VAD finds no unlabelled silence >= 0.5 s inside a turn."""
    import librosa
    import silero_vad

    model = silero_vad.load_silero_vad()
    _, wavs = corpus
    worst = 0.0
    for wav in wavs:
        audio, rate = sf.read(str(wav), dtype="float32")
        segs = {}
        for index, spk in enumerate("AB"):
            x = librosa.resample(audio[:, index], orig_sr=rate, target_sr=16_000, res_type="soxr_hq")
            stamps = silero_vad.get_speech_timestamps(
                x, model, sampling_rate=16_000, min_silence_duration_ms=100, speech_pad_ms=30
            )
            segs[spk] = [(s["start"] / 16_000, s["end"] / 16_000) for s in stamps]
        truth = _truth(wav)
        checks = []
        for e in truth["events"]:
            if e["type"] == "pause":
                checks += [(e["speaker"], 1, e["start_s"]), (e["speaker"], 0, e["end_s"])]
            elif e["type"] == "turn":
                checks += [(e["from"], 1, e["end_s"]), (e["to"], 0, e["onset_s"])]
            elif e["type"] == "backchannel":
                checks += [(e["speaker"], 0, e["start_s"]), (e["speaker"], 1, e["end_s"])]
            else:
                checks += [(e["speaker"], 0, e["onset_s"]), (e["interrupted"], 1, e["stop_s"]),
                           (e["speaker"], 1, e["end_s"])]
        for spk, side, t in checks:
            error = min(abs(seg[side] - t) for seg in segs[spk])
            worst = max(worst, error)
            assert error < 0.2, (wav.stem, spk, side, t, error)
        pauses = [e for e in truth["events"] if e["type"] == "pause"]
        for spk, other in (("A", "B"), ("B", "A")):
            for (_, g0), (g1, _) in zip(segs[spk], segs[spk][1:]):
                if g1 - g0 < 0.5 or any(a < g1 and b > g0 for a, b in segs[other]):
                    continue  # short, or the other speaker talks: not an in-turn silence
                assert any(p["speaker"] == spk and abs(p["start_s"] - g0) < 0.2 and abs(p["end_s"] - g1) < 0.2
                           for p in pauses), (wav.stem, spk, g0, g1)
    assert worst < 0.2


def test_same_seed_gives_identical_files(tmp_path):
    params = SyntheticParams(n_dialogues=2)
    generate_corpus(tmp_path / "one", seed=3, params=params)
    generate_corpus(tmp_path / "two", seed=3, params=params)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len(names) == 7  # 2 x (wav, json, truth) + stamp
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    generate_corpus(tmp_path / "other", seed=4, params=params)
    assert (tmp_path / "other" / "syn0000.wav").read_bytes() != (tmp_path / "one" / "syn0000.wav").read_bytes()


def test_stamp_reuses_an_up_to_date_folder(tmp_path):
    params = SyntheticParams(n_dialogues=2)
    wavs = generate_corpus(tmp_path, seed=1, params=params)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    started = time.perf_counter()
    assert generate_corpus(tmp_path, seed=1, params=params) == wavs
    assert time.perf_counter() - started < 0.5
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes

    # other arguments re-render, and files of the earlier, larger render do not linger
    generate_corpus(tmp_path, seed=1, params=SyntheticParams(n_dialogues=3))
    generate_corpus(tmp_path, seed=2, params=params)
    assert sorted(p.name for p in tmp_path.glob("syn*")) == [
        "syn0000.json", "syn0000.truth.json", "syn0000.wav", "syn0001.json", "syn0001.truth.json", "syn0001.wav"
    ]
    assert json.loads((tmp_path / STAMP_NAME).read_text())["seed"] == 2

    # a missing file also re-renders
    (tmp_path / "syn0001.wav").unlink()
    generate_corpus(tmp_path, seed=2, params=params)
    assert (tmp_path / "syn0001.wav").is_file()


def test_missing_flite_gives_a_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(TTSUnavailableError, match="install Debian package flite"):
        generate_corpus(tmp_path / "out", params=SyntheticParams(n_dialogues=1))
    with pytest.raises(TTSUnavailableError, match="install Debian package flite"):
        tts.synthesize("slt", "hello there")
    assert not (tmp_path / "out").exists()


def test_params_are_validated():
    with pytest.raises(ValueError, match="pause_range_s"):
        SyntheticParams(pause_range_s=(2.0, 1.0))
    with pytest.raises(ValueError, match="n_dialogues"):
        replace(SMALL, n_dialogues=0)


def test_trim_and_silence_check():
    """The trimmed clip starts and ends on speech; an inner silence of 0.4 s is caught."""
    clip = tts.synthesize("slt", "the garden looks amazing now")
    db = tts.frame_rms_db(clip)
    assert db[0] > -tts.TRIM_THRESHOLD_DB and db[-1] > -tts.TRIM_THRESHOLD_DB
    assert np.abs(clip).max() == pytest.approx(tts.PEAK_LEVEL, rel=1e-3)
    assert tts.longest_internal_silence_s(clip) < phrases.MAX_INTERNAL_SILENCE_S
    paused = np.concatenate([clip, np.zeros(int(0.4 * tts.TTS_RATE), np.float32), clip])
    assert tts.longest_internal_silence_s(paused) == pytest.approx(0.4, abs=0.03)


@pytest.mark.slow
def test_phrase_bank_has_no_long_internal_silence():
    """No phrase of any voice used has a flite pause inside it (it would be an unlabelled pause)."""
    voices = sorted({v for pair in VOICE_PAIRS for v in pair})
    jobs = [(v, t) for v in voices for t in phrases.SENTENCES + phrases.INTERRUPTIONS + phrases.BACKCHANNELS]
    for text in phrases.SENTENCES + phrases.INTERRUPTIONS + phrases.BACKCHANNELS:
        assert not set(text) & set(",.;:!?-"), text
    assert len(phrases.SENTENCES) >= 60 and len(phrases.BACKCHANNELS) >= 8 and len(phrases.INTERRUPTIONS) >= 5
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        clips = list(pool.map(lambda job: tts.synthesize(*job), jobs))
    bad = [(v, t, round(tts.longest_internal_silence_s(c), 2)) for (v, t), c in zip(jobs, clips)
           if tts.longest_internal_silence_s(c) >= phrases.MAX_INTERNAL_SILENCE_S]
    assert bad == []
    for voice in voices:  # every voice has several usable backchannels
        usable = [t for t in phrases.BACKCHANNELS if 0.3 <= len(tts.synthesize(voice, t)) / 16_000 <= 0.75]
        assert len(usable) >= 6, (voice, usable)
