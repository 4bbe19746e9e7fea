"""Corpus builds never delete or read what is not theirs: the cases found by trying bad input
(issue 10: ``--out`` equal to, inside or around the source; foreign files; id collisions; links
out of the folder; single files; a bad codec; a stereo file as a pairs track)."""

import hashlib
import json
import os

import numpy as np
import pytest
import soundfile as sf
from duplexgym.corpora.build import OWNER_NAME, BuildOptions, build_corpus
from duplexgym.corpora.errors import SourceError
from duplexgym.corpora.manifest import read_manifest
from duplexgym.corpora.stats import corpus_stats

from tests.conftest import scripted_dialogue

FAST = BuildOptions(per_axis=2)


@pytest.fixture(scope="module")
def recordings(speech):
    """Two different real-speech dialogues (stereo float32 at 24 kHz)."""
    first, _ = scripted_dialogue(speech)
    second, _ = scripted_dialogue(speech, interrupt_stop_s=1.0)
    return first, second


def write_stereo(path, tracks):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tracks.T, 24_000, subtype="PCM_16")
    return path


def digest_tree(root):
    """{relative path: sha256} of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_equal_to_the_source_is_refused_and_nothing_is_touched(tmp_path, recordings):
    src = tmp_path / "calls"
    write_stereo(src / "call1.wav", recordings[0])
    before = digest_tree(src)
    with pytest.raises(SourceError, match="is the source folder itself"):
        build_corpus(src, src, FAST)
    assert digest_tree(src) == before  # not a byte written, nothing deleted


def test_out_equal_to_a_pairs_listing_folder_is_refused(tmp_path, recordings):
    root = tmp_path / "pairs"
    root.mkdir()
    sf.write(str(root / "a.wav"), recordings[0][0], 24_000)
    sf.write(str(root / "b.wav"), recordings[0][1], 24_000)
    (root / "list.jsonl").write_text(json.dumps({"id": "c1", "track_a": "a.wav", "track_b": "b.wav"}) + "\n")
    before = digest_tree(root)
    with pytest.raises(SourceError, match="is the source folder itself"):
        build_corpus(root / "list.jsonl", root, FAST)
    assert digest_tree(root) == before


def test_out_inside_or_around_the_source_is_refused(tmp_path, recordings):
    src = tmp_path / "data" / "calls"
    write_stereo(src / "call1.wav", recordings[0])
    with pytest.raises(SourceError, match="lies inside the source folder"):
        build_corpus(src, src / "corpus", FAST)
    assert not (src / "corpus").exists()
    with pytest.raises(SourceError, match="contains the source folder"):
        build_corpus(src, tmp_path / "data", FAST)


def test_a_folder_of_someone_else_is_refused(tmp_path, recordings):
    src = tmp_path / "calls"
    write_stereo(src / "call1.wav", recordings[0])
    out = tmp_path / "out"
    (out / "audio").mkdir(parents=True)
    (out / "audio" / "keep-me.flac").write_bytes(b"not ours")
    (out / "notes.txt").write_text("mine")
    before = digest_tree(out)
    with pytest.raises(SourceError, match=f"not empty and was not made by .*no {OWNER_NAME}"):
        build_corpus(src, out, FAST)
    assert digest_tree(out) == before


def test_a_rebuild_deletes_only_files_its_journal_lists(tmp_path, recordings):
    src = tmp_path / "calls"
    write_stereo(src / "call1.wav", recordings[0])
    write_stereo(src / "call2.wav", recordings[1])
    out = tmp_path / "out"
    first = build_corpus(src, out, BuildOptions(per_axis=3))
    planted = out / "audio" / "not-a-segment.flac"
    planted.write_bytes(b"someone put this here")
    ids_before = {s.id for s in read_manifest(out)}
    build_corpus(src, out, BuildOptions(per_axis=1))  # fewer segments: the others' files go
    ids_after = {s.id for s in read_manifest(out)}
    assert ids_after < ids_before and sum(first.segments.values()) > len(ids_after)
    contexts = {f"{s.id}.context" for s in read_manifest(out) if s.context_s}  # a segment's context goes with it
    assert {p.stem for p in (out / "audio").glob("*.flac")} == ids_after | contexts | {"not-a-segment"}
    assert planted.read_bytes() == b"someone put this here"


def test_colliding_names_give_distinct_stable_ids(tmp_path, recordings):
    src = tmp_path / "calls"
    write_stereo(src / "a b.wav", recordings[0])
    write_stereo(src / "a_b.wav", recordings[1])
    write_stereo(src / "dup.wav", recordings[1])
    sf.write(str(src / "dup.flac"), recordings[0].T, 24_000)
    out = tmp_path / "out"
    summary = build_corpus(src, out, BuildOptions(per_axis=50))
    segments = read_manifest(out)
    ids = [s.id for s in segments]
    assert len(ids) == len(set(ids))  # no segment id twice
    assert len({s.dialogue for s in segments}) == 4 == summary.dialogues
    stats = corpus_stats(out)
    assert stats["dialogues"] == summary.dialogues == 4
    again = build_corpus(src, tmp_path / "again", BuildOptions(per_axis=50))
    assert (out / "manifest.jsonl").read_bytes() == (tmp_path / "again" / "manifest.jsonl").read_bytes()
    assert again.dialogues == 4


def test_links_out_of_the_folder_are_refused(tmp_path, recordings):
    outside = write_stereo(tmp_path / "elsewhere" / "secret.wav", recordings[1])
    src = tmp_path / "calls"
    write_stereo(src / "call1.wav", recordings[0])
    os.symlink(outside, src / "link.wav")
    os.symlink(outside.parent, src / "linked-folder")
    summary = build_corpus(src, tmp_path / "out", FAST)
    assert summary.dialogues == 1
    reasons = {os.path.basename(item["file"]): item["reason"] for item in summary.skipped}
    assert "outside the corpus folder" in reasons["link.wav"] and "not followed" in reasons["linked-folder"]


def test_single_files_bad_codecs_and_file_outs_say_what_is_wrong(tmp_path, recordings):
    src = tmp_path / "calls"
    wav = write_stereo(src / "call1.wav", recordings[0])
    with pytest.raises(SourceError, match="a single file is not a corpus source"):
        build_corpus(wav, tmp_path / "out1", FAST)
    with pytest.raises(SourceError, match="--codec"):
        build_corpus(src, tmp_path / "out2", BuildOptions(codec=str(tmp_path / "no-such.safetensors")))
    assert not (tmp_path / "out2").exists()  # no empty --out left behind
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SourceError, match="exists and is not a folder"):
        build_corpus(src, tmp_path / "a-file", FAST)


def test_a_stereo_file_as_a_pairs_track_says_so(tmp_path, recordings):
    root = tmp_path / "pairs"
    write_stereo(root / "a.wav", recordings[0])
    sf.write(str(root / "b.wav"), recordings[0][1], 24_000)
    (root / "list.jsonl").write_text(json.dumps({"id": "c1", "track_a": "a.wav", "track_b": "b.wav"}) + "\n")
    summary = build_corpus(root / "list.jsonl", tmp_path / "out", FAST)
    assert summary.dialogues == 0 and "a pairs track holds one speaker" in summary.skipped[0]["reason"]
    from duplexgym.corpora.sources.pairs import pairs_sources

    (source,), _ = pairs_sources(root / "list.jsonl")
    with pytest.raises(Exception, match="2-channel audio, expected 1 channel: a pairs track holds one speaker.*stereo"):
        source.load()
    assert np.isfinite(recordings[0]).all()
