"""Every kind of bad input gives an error naming the file and the problem."""

import json

import numpy as np
import pytest
import soundfile as sf
from duplexgym.corpora.audio import read_tracks
from duplexgym.corpora.errors import InputFileError, SourceError
from duplexgym.corpora.sources.pairs import pairs_sources
from duplexgym.corpora.transcript import load_transcript


def stereo(seconds=2.0, rate=16_000):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((int(seconds * rate), 2)) * 0.1).astype(np.float32)


def write(path, data, rate=16_000, **kw):
    sf.write(str(path), data, rate, **kw)
    return path


def raises(path_fragment, match, fn, *args, **kw):
    with pytest.raises(InputFileError, match=match) as info:
        fn(*args, **kw)
    assert path_fragment in str(info.value) and path_fragment in info.value.path
    return info.value


def test_good_stereo_is_resampled_to_24k(tmp_path):
    out = read_tracks(write(tmp_path / "ok.wav", stereo(2.0, 8_000), 8_000), channels=2)
    assert out.shape == (2, 48_000) and out.dtype == np.float32


def test_resample_is_librosas_soxr_hq_bit_for_bit():
    import librosa
    from duplexgym.corpora.audio import resample

    rng = np.random.default_rng(0)
    for rate, target in ((24_000, 16_000), (16_000, 24_000), (44_100, 24_000), (8_000, 24_000), (22_050, 16_000)):
        for shape in ((1,), (7,), (1921,), (2, 24_000 * 2 + 17), (3, 2, 999)):
            x = (rng.standard_normal(shape) * 0.3).astype(np.float32)
            want = librosa.resample(x, orig_sr=rate, target_sr=target, res_type="soxr_hq", axis=-1)
            got = resample(x, rate, target)
            assert got.dtype == np.float32 and got.shape == want.shape, (rate, target, shape)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(np.random.default_rng(1).bytes(4000))
    raises("corrupt", "not a readable audio file", read_tracks, path, 2)


def test_empty_file_and_zero_frames(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    raises("empty.wav", "empty file", read_tracks, empty, 2)
    zero = write(tmp_path / "zero.wav", np.zeros((0, 2), np.float32))
    raises("zero.wav", "no audio samples", read_tracks, zero, 2)


def test_truncated_wav_and_flac(tmp_path):
    full = write(tmp_path / "full.wav", stereo(), subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    raises("cut.wav", "truncated WAV", read_tracks, cut, 2)
    full_flac = write(tmp_path / "full.flac", stereo())
    cut_flac = tmp_path / "cut.flac"
    cut_flac.write_bytes(full_flac.read_bytes()[: full_flac.stat().st_size // 2])
    raises("cut.flac", "corrupt or truncated", read_tracks, cut_flac, 2)


def test_mono_where_two_channels_are_expected(tmp_path):
    mono = write(tmp_path / "mono.wav", stereo()[:, 0])
    err = raises("mono.wav", "mono audio, expected 2 channels", read_tracks, mono, 2)
    assert "one speaker per channel" in err.problem


def test_odd_sample_rates(tmp_path):
    low = write(tmp_path / "low.wav", stereo(2.0, 4_000), 4_000)
    raises("low.wav", "sample rate 4000 Hz is outside", read_tracks, low, 2)
    # an unusual but valid rate is resampled
    odd = read_tracks(write(tmp_path / "odd.wav", stereo(1.5, 11_025), 11_025), 2)
    assert odd.shape == (2, -(-int(1.5 * 11_025) * 24_000 // 11_025))  # ceil, as soxr


def test_too_short_and_non_finite(tmp_path):
    short = write(tmp_path / "short.wav", stereo(0.3))
    raises("short.wav", "only 0.30 s of audio", read_tracks, short, 2)
    bad = stereo()
    bad[100, 0] = np.nan
    nan = write(tmp_path / "nan.wav", bad, subtype="FLOAT")
    raises("nan.wav", "NaN", read_tracks, nan, 2)


def test_missing_file(tmp_path):
    raises("nope.wav", "file not found", read_tracks, tmp_path / "nope.wav", 2)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('{"words": 3}', 'must be a list of words or an object with a "words" list'),
        ('[{"speaker": "C", "start": 0, "end": 1, "word": "x"}]', 'word 0: "speaker" must be'),
        ('[{"speaker": "A", "start": "0", "end": 1, "word": "x"}]', 'word 0: "start" must be a non-negative number'),
        ('[{"speaker": "A", "start": 2, "end": 1, "word": "x"}]', "word 0: end 1.0 s is before start 2.0 s"),
        ('[{"speaker": "A", "start": 0, "end": 1}]', 'word 0: "word" \\(or "text"\\) must be a string'),
        ('[{"speaker": 1, "end": 1, "word": "x"}]', 'word 0: missing "start"'),
    ],
)
def test_transcript_of_the_wrong_shape(tmp_path, content, match):
    path = tmp_path / "words.json"
    path.write_text(content)
    raises("words.json", match, load_transcript, path)


def test_transcript_accepts_both_shapes(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps([{"speaker": 1, "start_s": 0.5, "end_s": 0.9, "text": "hi"},
                                {"speaker": "a", "start": 0.1, "end": 0.4, "word": "yo"}]))
    words = load_transcript(path)
    assert [(w.speaker, w.text) for w in words] == [("A", "yo"), ("B", "hi")]


def test_pairs_listing_errors_are_per_line(tmp_path):
    (tmp_path / "audio").mkdir()
    write(tmp_path / "audio" / "a.wav", stereo()[:, 0])
    write(tmp_path / "audio" / "b.wav", stereo()[:, 1])
    lines = [
        {"id": "good", "track_a": "audio/a.wav", "track_b": "audio/b.wav"},
        {"id": "escape", "track_a": "../outside.wav", "track_b": "audio/b.wav"},
        {"id": "absolute", "track_a": "/etc/passwd", "track_b": "audio/b.wav"},
        {"id": "nob", "track_a": "audio/a.wav"},
        {"id": "good", "track_a": "audio/a.wav", "track_b": "audio/b.wav"},
    ]
    listing = tmp_path / "dialogues.jsonl"
    listing.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    sources, errors = pairs_sources(listing)
    assert [s.id for s in sources] == ["good"]
    problems = [e.problem for e in errors]
    assert all(e.path == str(listing) for e in errors)
    assert "line 2: path '../outside.wav' escapes the corpus root" in problems[0]
    assert "line 3: absolute path" in problems[1]
    assert 'line 4: missing "track_b"' in problems[2]
    assert "line 5: duplicate dialogue id 'good'" in problems[3]
    assert "line 6: not valid JSON" in problems[4]
    dialogue = sources[0].load()
    assert dialogue.tracks.shape == (2, 48_000)


def test_pairs_tracks_must_be_aligned(tmp_path):
    write(tmp_path / "a.wav", stereo(2.0)[:, 0])
    write(tmp_path / "b.wav", stereo(4.0)[:, 0])
    listing = tmp_path / "l.jsonl"
    listing.write_text(json.dumps({"id": "x", "track_a": "a.wav", "track_b": "b.wav"}) + "\n")
    sources, _ = pairs_sources(listing)
    raises("b.wav", "track lengths differ by 2.00 s", sources[0].load)


def test_missing_listing_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="listing file not found"):
        pairs_sources(tmp_path / "none.jsonl")
