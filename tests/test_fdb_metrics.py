"""Full-Duplex-Bench v1 metrics (rewards/fdb.py) on hand-made inputs at every edge.

Expected numbers are re-derived by hand from the official scorers' rules (see the module
docstring of duplexgym.rewards.fdb); a few use the timings of upstream's example samples.
"""

import dataclasses
import math

import numpy as np
import pytest
from duplexgym.rewards import fdb
from duplexgym.rewards.fdb import (
    AgentSpeech,
    aggregate,
    backchannel_histogram,
    backchannel_metrics,
    backchannel_segments,
    interruption_metrics,
    jensen_shannon_distance,
    jsd_distance,
    jsd_to_histogram,
    pause_metrics,
    resample_histogram,
    takeover,
    turn_metrics,
)

SQRT_LN2 = math.sqrt(math.log(2.0))  # the largest Jensen-Shannon distance with the natural log


def words(*triples):
    """AgentSpeech with these (start, end) words (texts w0, w1, ...) and matching spans."""
    ws = tuple((s, e, f"w{i}") for i, (s, e) in enumerate(triples))
    return AgentSpeech(spans_s=tuple((s, e) for s, e, _ in ws), words=ws)


def spans(*pairs):
    return AgentSpeech(spans_s=tuple(pairs), words=None)


# --- constants ---------------------------------------------------------------------------------

def test_constants_match_the_benchmark():
    assert fdb.TAKEOVER_MIN_DURATION_S == 1.0 and fdb.TAKEOVER_MAX_WORDS == 3
    assert fdb.BACKCHANNEL_MAX_DURATION_S == 1.0 and fdb.BACKCHANNEL_MAX_WORDS == 2
    assert fdb.BACKCHANNEL_TAKEOVER_DURATION_S == 3.0 and fdb.BACKCHANNEL_TAKEOVER_WORDS == 3
    assert fdb.JSD_BIN_S == 0.2 and fdb.JSD_EPSILON == 1e-10 and fdb.JSD_NO_BACKCHANNEL == 1.0
    assert dataclasses.asdict(fdb.FDB_VAD) == {"threshold": 0.5, "neg_threshold": None, "min_speech_ms": 250,
                                               "min_silence_ms": 100, "speech_pad_ms": 30}
    assert fdb.FDB_VAD_RATE_HZ == 16_000 and fdb.FDB_VAD_TIME_DECIMALS == 1


def test_vad_params_feed_the_corpus_vad():
    from duplexgym.corpora.vad import VadParams

    assert VadParams(**dataclasses.asdict(fdb.FDB_VAD)) == VadParams()


# --- takeover ----------------------------------------------------------------------------------

def test_no_speech_is_no_takeover():
    assert takeover(AgentSpeech(spans_s=(), words=())) == 0
    assert takeover(spans()) == 0
    assert pause_metrics(spans()) == {"tor": 0}


def test_duration_edge_is_strict():
    # 1.5 - 0.5 == 1.0 exactly: not "< 1.0", so a takeover even with 2 words
    assert takeover(words((0.5, 0.9), (1.2, 1.5))) == 1
    assert takeover(words((0.5, 0.9), (1.2, 1.49))) == 0


def test_word_count_edge():
    assert takeover(words((0.0, 0.3), (0.3, 0.6), (0.6, 0.9))) == 0  # exactly 3 words in 0.9 s
    assert takeover(words((0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.5))) == 1  # 4 words in 0.5 s


def test_words_none_falls_back_to_spans_without_the_word_condition():
    assert takeover(spans((1.0, 1.5))) == 0
    assert takeover(spans((1.0, 1.3), (1.5, 2.0))) == 1  # first start to last end: exactly 1.0 s
    # four words in 0.5 s: a takeover on words, not on spans (the word condition is skipped)
    four = words((0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.5))
    assert takeover(four) == 1
    assert takeover(AgentSpeech(spans_s=((0.0, 0.5),), words=None)) == 0
    # with words known, the spans are not looked at
    assert takeover(AgentSpeech(spans_s=((0.0, 9.0),), words=())) == 0


def test_speech_throughout():
    assert takeover(spans((0.0, 30.0))) == 1
    assert pause_metrics(spans((0.0, 30.0))) == {"tor": 1}


def test_cut_time_straddling_word_counts_from_the_cut():
    speech = words((1.0, 2.5), (2.6, 2.9))
    assert takeover(speech) == 1  # 1.9 s in all
    # after 2.0: (2.0, 2.5) and (2.6, 2.9) -> 0.9 s, 2 words
    assert takeover(speech, after_s=2.0) == 0
    # a word ending exactly at the cut is gone (the cropped audio holds none of it)
    assert takeover(words((1.0, 2.0)), after_s=2.0) == 0
    assert takeover(words((1.0, 2.0), (2.0, 3.0)), after_s=2.0) == 1
    # spans are cut the same way
    assert takeover(spans((0.0, 5.0)), after_s=4.5) == 0
    assert takeover(spans((0.0, 5.0)), after_s=4.0) == 1


def test_words_in_any_order():
    assert takeover(words((2.0, 2.2), (0.5, 0.7))) == 1


# --- turn-taking and interruption --------------------------------------------------------------

def test_turn_latency_on_upstream_example():
    # smooth_turn_taking_example/1: turn_taking.json starts at 2.0100000000000016; the output's
    # words start at 3.36 (first six shown here)
    speech = words((3.36, 3.9), (4.46, 4.6899999999999995), (4.6899999999999995, 4.84), (4.84, 5.04),
                   (5.04, 5.35), (5.35, 5.65))
    m = turn_metrics(speech, 2.0100000000000016)
    assert m["tor"] == 1
    assert m["latency_s"] == pytest.approx(3.36 - 2.0100000000000016)


def test_turn_counts_speech_before_the_turn_end_and_clips_latency_at_zero():
    # a backchannel at 1.0 s during the user's turn, then an answer at 3.4 s: the whole output is
    # scored, so TOR is 1 and the latency (1.0 - 3.0 < 0) is recorded as 0
    speech = words((1.0, 1.3), (3.4, 3.6), (3.6, 4.0))
    assert turn_metrics(speech, 3.0) == {"tor": 1, "latency_s": 0.0}
    assert turn_metrics(words((3.2, 3.5)), 3.0) == {"tor": 0, "latency_s": None}
    assert turn_metrics(spans(), 3.0) == {"tor": 0, "latency_s": None}
    # spans fallback: latency from the first span start
    assert turn_metrics(spans((3.25, 5.0)), 3.0) == {"tor": 1, "latency_s": 0.25}


def test_interruption_on_upstream_example():
    # user_interruption_example/1: interruption ends at 13.144; output words after it run from
    # 17.224 to 28.124 -> TOR 1, latency 4.08
    speech = words((17.224, 17.704), (17.904, 18.104), (27.683999999999997, 28.124000000000002))
    m = interruption_metrics(speech, 13.144)
    assert m["tor"] == 1 and m["latency_s"] == pytest.approx(17.224 - 13.144)


def test_interruption_looks_only_after_the_interruption_end():
    # the agent talks through the interruption (0..5 s) and stops: only 5.0..5.4 is left
    speech = words((0.0, 2.0), (2.0, 4.0), (4.0, 5.4))
    assert interruption_metrics(speech, 5.0) == {"tor": 0, "latency_s": None}
    # straddling word + answer: latency 0 (the tail starts at the cut)
    speech = words((4.0, 5.4), (5.5, 6.0), (6.0, 7.0))
    assert interruption_metrics(speech, 5.0) == {"tor": 1, "latency_s": 0.0}
    assert interruption_metrics(words((6.0, 6.5), (6.5, 7.5)), 5.0) == {"tor": 1, "latency_s": 1.0}


# --- backchannel segments ----------------------------------------------------------------------

def test_segment_duration_edges():
    kinds = [k for _, _, k in backchannel_segments(spans((0.0, 1.0), (2.0, 2.9), (5.0, 8.0), (10.0, 13.1)))]
    assert kinds == ["other", "backchannel", "other", "takeover"]  # 1.0 s; 0.9 s; exactly 3.0 s; 3.1 s


def test_segment_times_are_rounded_like_silero():
    # 0.04..0.96 (0.92 s) comes back from silero as 0.0..1.0: not a backchannel
    assert backchannel_segments(spans((0.04, 0.96))) == [(0.0, 1.0, "other")]
    # and the float difference of rounded times is what is compared: 1.4 - 0.4 < 1.0
    assert backchannel_segments(spans((0.4, 1.4))) == [(0.4, 1.4, "backchannel")]


def test_segment_word_counts():
    seg = (1.0, 1.8)
    two = AgentSpeech(spans_s=(seg,), words=((1.1, 1.3, "uh"), (1.3, 1.6, "huh")))
    three = AgentSpeech(spans_s=(seg,), words=((1.1, 1.3, "a"), (1.3, 1.5, "b"), (1.5, 1.7, "c")))
    four = AgentSpeech(spans_s=(seg,), words=((1.1, 1.2, "a"), (1.2, 1.3, "b"), (1.3, 1.5, "c"), (1.5, 1.7, "d")))
    assert backchannel_segments(two)[0][2] == "backchannel"
    assert backchannel_segments(three)[0][2] == "other"
    assert backchannel_segments(four)[0][2] == "takeover"


def test_segment_word_overlap_rule():
    # segment 1.0..1.5: a word ending exactly at its start is not in it; one starting exactly at
    # its end is; one covering it is
    speech = AgentSpeech(spans_s=((1.0, 1.5),), words=((0.5, 1.0, "out"), (1.5, 1.7, "in")))
    assert fdb._words_in_segment(1.0, 1.5, speech.words) == 1
    assert fdb._words_in_segment(1.0, 1.5, ((0.5, 2.0, "cover"),)) == 1
    assert fdb._words_in_segment(1.0, 1.5, ((1.1, 1.1, "zero-length"),)) == 1
    assert fdb._words_in_segment(1.0, 1.5, ((1.6, 1.9, "after"),)) == 0


# --- backchannel metrics -----------------------------------------------------------------------

def test_no_speech_backchannel_metrics():
    assert backchannel_metrics(spans(), 20.0, [(3.0, 3.4)]) == {"tor": 0, "frequency": 0.0, "jsd": 1.0}


def test_speech_throughout_backchannel_metrics():
    assert backchannel_metrics(spans((0.0, 20.0)), 20.0, [(3.0, 3.4)]) == {"tor": 1, "frequency": 0.0, "jsd": 1.0}


def test_good_backchannels():
    human = [(3.0, 3.4), (8.0, 8.4)]
    m = backchannel_metrics(spans((3.0, 3.4), (8.0, 8.4)), 20.0, human)
    assert m["tor"] == 0 and m["frequency"] == pytest.approx(2 / 20.0) and m["jsd"] == pytest.approx(0.0, abs=1e-7)


def test_last_segment_decides_tor_and_every_short_segment_counts():
    # a 5-word 0.8 s segment then an "mhm": the script's TOR is the last segment's (0), and both
    # count as backchannels
    ws = tuple((1.0 + 0.16 * i, 1.16 + 0.16 * i, "w") for i in range(5)) + ((5.0, 5.3, "mhm"),)
    speech = AgentSpeech(spans_s=((1.0, 1.8), (5.0, 5.4)), words=ws)
    assert [k for *_, k in backchannel_segments(speech)] == ["takeover", "backchannel"]
    m = backchannel_metrics(speech, 10.0, [(5.0, 5.4)])
    assert m["tor"] == 0 and m["frequency"] == pytest.approx(0.2)
    # reversed order: the takeover is last, TOR 1
    ws2 = ((1.0, 1.3, "mhm"),) + tuple((5.0 + 0.16 * i, 5.16 + 0.16 * i, "w") for i in range(5))
    assert backchannel_metrics(AgentSpeech(spans_s=((1.0, 1.4), (5.0, 5.8)), words=ws2), 10.0, [])["tor"] == 1


def test_long_segment_stops_the_scan():
    speech = spans((1.0, 1.4), (3.0, 7.0), (9.0, 9.4))
    m = backchannel_metrics(speech, 10.0, [(1.0, 1.4)])
    assert m["tor"] == 1 and m["frequency"] == pytest.approx(0.1)  # only the segment before it
    assert m["jsd"] == pytest.approx(0.0, abs=1e-7)
    # exactly 3.0 s does not stop it: counted, TOR 1 (an "other" segment) unless a later one wins
    assert backchannel_metrics(spans((3.0, 6.0)), 10.0, [])["tor"] == 1
    assert backchannel_metrics(spans((3.0, 6.0), (8.0, 8.4)), 10.0, [])["frequency"] == pytest.approx(0.2)


# --- JSD ---------------------------------------------------------------------------------------

def test_histogram_bins():
    h = backchannel_histogram([(0.2, 0.5)], 2.0)
    assert h.shape == (11,)  # int(2.0 / 0.2) + 1
    assert h[1] == pytest.approx(0.5) and h[2] == pytest.approx(0.5) and h[0] == pytest.approx(0.0, abs=1e-9)
    assert h.sum() == pytest.approx(1.0)
    # 0.6 / 0.2 == 2.9999999999999996 -> bin 2 (the script truncates the float quotient)
    assert int(np.argmax(backchannel_histogram([0.6], 1.0))) == 2
    # bins past the end are dropped
    assert backchannel_histogram([(0.9, 5.0)], 1.0)[4:].tolist() == pytest.approx([0.5, 0.5])


def test_jsd_identical_disjoint_and_none():
    assert jsd_distance([(1.0, 1.4)], [(1.0, 1.4)], duration_s=5.0) == pytest.approx(0.0, abs=1e-9)
    assert jsd_distance([(0.0, 0.1)], [(4.0, 4.1)], duration_s=5.0) == pytest.approx(SQRT_LN2, abs=1e-6)
    assert jsd_distance([], [(4.0, 4.1)], duration_s=5.0) == 1.0
    # a human side with no backchannels is uniform
    # p = one-hot at bin 0, q = 1/n everywhere: m0 = (1 + 1/n) / 2, m_i = 1 / (2n)
    n = int(5.0 / 0.2) + 1
    m0 = (1 + 1 / n) / 2
    kl_p = math.log(1 / m0)
    kl_q = (1 / n) * math.log((1 / n) / m0) + (n - 1) / n * math.log(2)
    one_bin = math.sqrt((kl_p + kl_q) / 2)
    assert jsd_distance([0.0], [], duration_s=5.0) == pytest.approx(one_bin, abs=1e-6)


def test_jsd_by_hand():
    # 2.0 s, 11 bins; model (0.2, 0.5) -> bins 1, 2; human (0.4, 0.5) -> bin 2 (0.4 / 0.2 == 2.0)
    # p = [0, .5, .5, 0...], q = [0, 0, 1, 0...], m = [0, .25, .75, 0...]
    kl_p = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl_q = math.log(1 / 0.75)
    expected = math.sqrt((kl_p + kl_q) / 2)
    assert jsd_distance([(0.2, 0.5)], [(0.4, 0.5)], duration_s=2.0) == pytest.approx(expected, abs=1e-7)


def test_jsd_matches_scipy():
    scipy_distance = pytest.importorskip("scipy.spatial.distance")
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, q = rng.random(40) * (rng.random(40) > 0.5), rng.random(40) + 1e-10
        assert jensen_shannon_distance(p + 1e-10, q) == pytest.approx(scipy_distance.jensenshannon(p + 1e-10, q), abs=1e-12)


def test_ready_human_histogram_is_resampled():
    assert resample_histogram([0.0, 1.0, 0.0], 5).tolist() == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    human = backchannel_histogram([(1.0, 1.4)], 5.0)
    assert jsd_to_histogram([(1.0, 1.4)], human, duration_s=5.0) == pytest.approx(0.0, abs=1e-9)
    assert jsd_to_histogram([(1.0, 1.4)], human, duration_s=5.0) == jsd_distance([(1.0, 1.4)], [(1.0, 1.4)], duration_s=5.0)
    assert jsd_to_histogram([], human, duration_s=5.0) == 1.0


# --- aggregate ---------------------------------------------------------------------------------

def test_aggregate_per_task():
    assert aggregate("pause", [{"tor": 1}, {"tor": 0}, {"tor": 0}, {"tor": 1}]) == {"tor": 0.5}
    turn = [{"tor": 1, "latency_s": 0.2}, {"tor": 0, "latency_s": None}, {"tor": 1, "latency_s": 0.6}]
    out = aggregate("turn", turn)
    assert out["tor"] == pytest.approx(2 / 3) and out["latency_s"] == pytest.approx(0.4)
    assert aggregate("turn", [{"tor": 0, "latency_s": None}]) == {"tor": 0.0, "latency_s": None}
    inter = [{"tor": 1, "latency_s": 1.0, "relevance": 4}, {"tor": 1, "latency_s": 2.0},
             {"tor": 0, "latency_s": None, "relevance": 0}]
    out = aggregate("interruption", inter)
    assert out == {"tor": pytest.approx(2 / 3), "latency_s": pytest.approx(1.5), "relevance": 4.0}
    assert aggregate("interruption", inter[1:2])["relevance"] is None
    bc = [{"tor": 1, "frequency": 0.0, "jsd": 1.0}, {"tor": 0, "frequency": 0.1, "jsd": 0.5}]
    assert aggregate("backchannel", bc) == {"tor": 0.5, "frequency": pytest.approx(0.05), "jsd": 0.75}


def test_aggregate_of_real_metric_dicts():
    per = [turn_metrics(words((3.2, 3.5), (3.5, 4.5)), 3.0), turn_metrics(spans(), 3.0)]
    assert aggregate("turn", per) == {"tor": 0.5, "latency_s": pytest.approx(0.2)}


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown task"):
        aggregate("turn_taking", [{"tor": 1}])
    with pytest.raises(ValueError, match="no samples"):
        aggregate("pause", [])
    with pytest.raises(ValueError, match="lacks"):
        aggregate("backchannel", [{"tor": 1}])
    with pytest.raises(ValueError, match="latency_s None"):
        aggregate("turn", [{"tor": 1, "latency_s": None}])
    with pytest.raises(ValueError, match="start_s <= end_s"):
        AgentSpeech(spans_s=((2.0, 1.0),))
    with pytest.raises(ValueError, match="words"):
        AgentSpeech(spans_s=(), words=((0.0, 1.0),))
    with pytest.raises(ValueError, match="duration_s"):
        backchannel_metrics(spans(), 0.0, [])


# --- what the scorers read: output.json chunks and output.wav segments ------------------------

def test_output_duration_is_that_of_the_16khz_file():
    assert fdb.output_duration_s(100) == 128_000 / 16_000 == 8.0
    assert fdb.output_duration_s(37) == 37 * 1280 / 16_000


def test_crop_samples_follows_asr_py_and_the_pause_cut():
    n = 16_000 * 8
    assert fdb.crop_samples(0.0, None, n) == (0, n)
    assert fdb.crop_samples(4.50006, None, n) == (72_000, n)  # int(end * sr), as asr.py crops
    assert fdb.crop_samples(0.0, 3.59997, n) == (0, 57_600)  # round(hi * sr)
    assert fdb.crop_samples(-1.0, 99.0, n) == (0, n) and fdb.crop_samples(5.0, 4.0, n) == (80_000, 80_000)


def test_fallback_chunks_are_spans_or_words_cropped_like_the_audio():
    out = fdb.FdbOutput(spans((0.5, 1.0), (2.0, 3.5), (4.0, 4.5)), 8.0)
    assert out.source == "vad" and out.duration_s == 8.0
    assert out.chunks() == ((0.5, 1.0, "[speech]"), (2.0, 3.5, "[speech]"), (4.0, 4.5, "[speech]"))
    # after 3.0 (interruption): a chunk ending at or before it is gone, one straddling it starts there
    assert out.chunks(3.0) == ((3.0, 3.5, "[speech]"), (4.0, 4.5, "[speech]"))
    assert out.chunks(1.0) == ((2.0, 3.5, "[speech]"), (4.0, 4.5, "[speech]"))
    # before 3.0 (the pause window): one straddling the end ends there, one starting at it is gone
    assert out.chunks(0.0, 3.0) == ((0.5, 1.0, "[speech]"), (2.0, 3.0, "[speech]"))
    assert out.chunks(0.0, 4.0) == out.chunks(0.0, 3.5)
    assert out.segments() == ((0.5, 1.0), (2.0, 3.5), (4.0, 4.5)) and out.onsets() == (0.5, 2.0, 4.0)
    w = fdb.FdbOutput(words((1.0, 1.2), (1.2, 1.5)), 8.0)
    assert w.source == "text" and w.chunks() == ((1.0, 1.2, "w0"), (1.2, 1.5, "w1"))
    speech = spans((1.0, 2.0))
    assert fdb.benchmark_output(speech, 100).chunks() == ((1.0, 2.0, "[speech]"),)
    attached = fdb.FdbOutput(speech, 4.0, source="asr")
    assert fdb.benchmark_output(dataclasses.replace(speech, output=attached), 100) is attached
    assert dataclasses.replace(speech, output=attached) == speech  # the view is not part of equality
    with pytest.raises(ValueError, match="duration_s"):
        fdb.FdbOutput(speech, 0.0)


def test_chunk_rules_count_chunks_in_file_order():
    span4 = [(0.0, 0.1, "[speech]"), (0.2, 0.3, "[speech]"), (0.4, 0.5, "[speech]"), (0.6, 0.9, "[speech]")]
    assert fdb.chunk_takeover([]) == 0 and fdb.chunk_takeover(span4[:3]) == 0 and fdb.chunk_takeover(span4) == 1
    # unlike takeover() on spans alone, the chunk rule counts: four spans in 0.9 s are a takeover
    assert takeover(spans(*[c[:2] for c in span4])) == 0
    assert fdb.chunk_takeover([(0.0, 0.5, "a"), (0.5, 1.0, "b")]) == 1  # exactly 1.0 s
    assert fdb.tor_and_latency([(3.2, 3.5, "a"), (3.5, 4.5, "b")], 3.0) == {"tor": 1, "latency_s": pytest.approx(0.2)}
    assert fdb.tor_and_latency([(2.0, 2.5, "a"), (2.5, 3.5, "b")], 3.0) == {"tor": 1, "latency_s": 0.0}
    assert fdb.tor_and_latency([(3.2, 3.5, "a")], 3.0) == {"tor": 0, "latency_s": None}


def test_refine_first_onset_snaps_to_the_onset_inside_the_first_word():
    chunks = ((1.6, 2.3, "that"), (2.3, 2.6, "sounds"))
    assert fdb.refine_first_onset(chunks, (0.4, 1.95, 2.1)) == ((1.95, 2.3, "that"), (2.3, 2.6, "sounds"))
    assert fdb.refine_first_onset(chunks, (1.6,)) == chunks  # at the start: the same
    assert fdb.refine_first_onset(chunks, (1.0, 2.3)) == chunks  # none inside [start, end)
    assert fdb.refine_first_onset((), (1.0,)) == ()
    answer = chunks + ((2.6, 3.0, "lovely"),)
    out = fdb.FdbOutput(AgentSpeech(spans_s=((1.95, 3.1),), words=answer), 8.0, onset_refinement=True)
    m = fdb.fdb_latency_metrics(out, 1.5)
    assert m == {"fdb_tor": 1, "fdb_latency_s": pytest.approx(0.1), "fdb_source": "text",
                 "fdb_chunks": [list(c) for c in answer], "fdb_latency_refined_s": pytest.approx(0.45)}
    assert "fdb_latency_refined_s" not in fdb.fdb_latency_metrics(fdb.FdbOutput(out.speech, 8.0), 1.5)
    short = fdb.FdbOutput(AgentSpeech(spans_s=((1.95, 2.4),), words=chunks[:1]), 8.0, onset_refinement=True)
    assert fdb.fdb_latency_metrics(short, 1.5)["fdb_latency_refined_s"] is None  # TOR 0: no latency


def test_lists_are_accepted_and_stored_as_tuples():
    s = AgentSpeech(spans_s=[[0.0, 1.0]], words=[[0.0, 0.5, "hi"]])
    assert s.spans_s == ((0.0, 1.0),) and s.words == ((0.0, 0.5, "hi"),)
    hash(s)
