"""The axis rewards, the reward spec, episode scoring, dense shaping and the episode record, on
hand-built timelines at their edges.

Segments are written in dialogue seconds with ``start_s = 10.0``, so episode time = dialogue
time - 10 (:func:`d` converts). Anchors sit on binary-exact times (multiples of 0.25 s) wherever a
test asserts an exact value at a threshold. Every segment has 100 frames: the episode lasts
``100 * 0.08 = 8.0`` s.
"""

import dataclasses

import numpy as np
import pytest
from duplexgym.corpora.manifest import Segment
from duplexgym.rewards import backchannel, dense, interruption, pause, turn
from duplexgym.rewards import spec as spec_mod
from duplexgym.rewards.activity import (
    ActivityParams,
    frames_speaking,
    speech_from_text,
    text_stream,
)
from duplexgym.rewards.backchannel import BackchannelParams
from duplexgym.rewards.fdb import (
    AgentSpeech,
    backchannel_metrics,
    interruption_metrics,
    pause_metrics,
    turn_metrics,
)
from duplexgym.rewards.interruption import InterruptionParams
from duplexgym.rewards.pause import PauseParams
from duplexgym.rewards.record import EpisodeRecord
from duplexgym.rewards.scoring import applicable_terms, score_episode
from duplexgym.rewards.spec import (
    RewardSpec,
    RewardSpecError,
    TermKind,
    TermSpec,
    default_spec,
    load_spec,
    spec_from_dict,
)
from duplexgym.rewards.terms import RewardTerm
from duplexgym.rewards.turn import TurnParams

from duplexgym.constants import FRAME_S

START = 10.0
N = 100
END = N * FRAME_S  # 8.0 s
PAD = 3
TEXT = ActivityParams(reader="text")


# The edge tests below were written for a 0.2 s early window; the defaults allow 0.4 s overlaps.
EARLY_02_PAUSE = PauseParams(respond_early_s=0.2)
EARLY_02_TURN = TurnParams(early_s=0.2)
EARLY_02_INTR = InterruptionParams(respond_early_s=0.2)


def d(t: float) -> float:
    """Episode seconds -> dialogue seconds."""
    return START + t


def segment(axis: str, event: float, **kw) -> Segment:
    """A segment of ``axis`` with its anchor at episode time ``event``; other times in ``kw`` are
    episode seconds too (converted to dialogue seconds here)."""
    for key in ("pause_end_s", "turn_end_s", "response_s", "interruption_end_s"):
        if kw.get(key) is not None:
            kw[key] = d(kw[key])
    if kw.get("backchannels_s") is not None:
        kw["backchannels_s"] = tuple((d(a), d(b)) for a, b in kw["backchannels_s"])
    if kw.get("agent_prefix_s") is not None:
        a, b = kw["agent_prefix_s"]
        kw["agent_prefix_s"] = (d(a), d(b))
    return Segment(id=f"dlg-{axis}-{int(event * 1000):07d}-A", axis=axis, dialogue="dlg", user="A", reference="B",
                   start_s=START, end_s=d(END), n_frames=N, event_s=d(event), **kw)


def spans(*pairs) -> AgentSpeech:
    return AgentSpeech(spans_s=pairs)


def words(*triples) -> AgentSpeech:
    """Speech of these (start, end) words, one span per word."""
    return AgentSpeech(spans_s=triples, words=tuple((a, b, f"w{i}") for i, (a, b) in enumerate(triples)))


def n_words(n: int, start: float, duration: float) -> AgentSpeech:
    """``n`` equal words filling ``[start, start + duration]`` as one span."""
    w = duration / n
    ws = tuple((start + i * w, start + (i + 1) * w, f"w{i}") for i in range(n))
    ws = ws[:-1] + ((ws[-1][0], start + duration, ws[-1][2]),)
    return AgentSpeech(spans_s=((start, start + duration),), words=ws)


SILENT = spans()
THROUGHOUT = spans((0.0, END))


# --- the segments every axis test uses ---------------------------------------------------------
# pause: the user pauses at 1.0, resumes at 2.0, ends the turn at 4.0. Pause window with the
# default grace: [1.0, 2.5); hold until 4.0 - 0.2 = 3.8; respond window [3.8, 6.0).
PAUSE = segment("pause", 1.0, pause_end_s=2.0, turn_end_s=4.0, response_s=4.5)
PAUSE_NO_END = segment("pause", 1.0, pause_end_s=2.0)
# turn: the user's turn ends at 4.0.
TURN = segment("turn", 4.0, response_s=4.5)
# backchannel: the human listener backchanneled at 2.0 and 5.0.
BACKCHANNEL = segment("backchannel", 2.0, backchannels_s=((2.0, 2.25), (5.0, 5.25)))
# interruption: the user barges in at 2.0 and stops at 4.5. Talk-over window with the default
# grace: [3.0, 4.5) (1.5 s = talk_over_max_s); respond window [4.3, 7.0).
INTR = segment("interruption", 2.0, interruption_end_s=4.5, agent_prefix_s=(0.0, 2.0), reference_stop_s=2.75)

SEGMENTS = {"pause": PAUSE, "turn": TURN, "backchannel": BACKCHANNEL, "interruption": INTR}
SCORERS = {"pause": pause.score, "turn": turn.score, "backchannel": backchannel.score,
           "interruption": interruption.score}


def test_episode_time_is_dialogue_time_minus_start():
    assert END == 8.0
    assert PAUSE.duration_s == pytest.approx(END)
    from duplexgym.rewards.terms import rel

    assert rel(PAUSE, PAUSE.turn_end_s) == 4.0 and rel(INTR, INTR.interruption_end_s) == 4.5
    assert rel(PAUSE, None) is None


# ============================================================================================
# pause handling
# ============================================================================================

def test_pause_silence_holds_but_does_not_answer():
    term = pause.score(SILENT, PAUSE)
    assert isinstance(term, RewardTerm)
    assert term.metrics == {"fdb_tor": 0, "fdb_source": "vad", "fdb_window_s": [0.0, 3.6], "fdb_chunks": [],
                            "hold": 1.0, "respond": -1.0, "pause_speech_s": 0.0}
    assert term.value == pytest.approx(0.75 * 1.0 + 0.25 * -1.0)  # default respond_weight 0.25
    # A pure hold reward: silence scores full marks.
    assert pause.score(SILENT, PAUSE, PauseParams(respond_weight=0.0)).value == 1.0


def test_pause_without_a_turn_end_is_a_pure_hold_reward():
    term = pause.score(SILENT, PAUSE_NO_END)
    assert term.value == 1.0 and term.metrics["respond"] is None
    term = pause.score(spans((1.25, 1.5)), PAUSE_NO_END, PauseParams(speech_penalty=0.4))
    assert term.value == pytest.approx(1.0 - 0.4 * 0.25 / 1.5)
    # Without a turn end the floor may not be taken up to the episode end.
    assert pause.score(spans((6.5, END)), PAUSE_NO_END).value == -1.0


def test_pause_speech_throughout_takes_the_floor():
    term = pause.score(THROUGHOUT, PAUSE)
    assert term.metrics["hold"] == -1.0 and term.metrics["respond"] == -1.0  # no onset in the window
    assert term.value == -1.0
    assert term.metrics["fdb_tor"] == 1
    assert term.metrics["pause_speech_s"] == pytest.approx(1.5)


@pytest.mark.parametrize("penalty, respond_weight", [(0.5, 0.25), (0.8, 0.4), (1.0, 0.0), (0.2, 1.0)])
def test_pause_hold_formula(penalty, respond_weight):
    """hold = 1 - speech_penalty * share of the pause window spoken in; value mixes in respond."""
    p = PauseParams(speech_penalty=penalty, respond_weight=respond_weight)
    speech = spans((1.25, 1.625), (4.0, 5.5))  # a 0.375 s "mhm" in the 1.5 s window; an answer
    term = pause.score(speech, PAUSE, p)
    hold = 1.0 - penalty * 0.375 / 1.5
    assert term.metrics["pause_speech_s"] == 0.375
    assert term.metrics["hold"] == pytest.approx(hold)
    assert term.metrics["respond"] == 1.0
    assert term.value == pytest.approx((1 - respond_weight) * hold + respond_weight * 1.0)


def test_pause_share_is_capped_at_one():
    # Overlapping spans (possible in a hand-built AgentSpeech) count twice; the share stays <= 1.
    speech = spans((1.0, 1.75), (1.0, 1.75), (1.125, 1.875))  # one 0.875 s utterance
    term = pause.score(speech, PAUSE_NO_END)
    assert term.metrics["pause_speech_s"] == 2.25
    assert term.value == 0.5


def test_pause_window_bounds_and_grace():
    # Speech starting exactly at the grace bound (2.0 + 0.5) is outside the window.
    assert pause.score(spans((2.5, 2.75)), PAUSE).metrics["pause_speech_s"] == 0.0
    # Speech inside the grace counts.
    assert pause.score(spans((2.25, 2.75)), PAUSE).metrics["pause_speech_s"] == 0.25
    # Speech ending exactly at the pause start is outside; starting there is inside.
    assert pause.score(spans((0.5, 1.0)), PAUSE).metrics["pause_speech_s"] == 0.0
    assert pause.score(spans((1.0, 1.25)), PAUSE).metrics["pause_speech_s"] == 0.25
    # A longer grace widens the window (and the denominator).
    term = pause.score(spans((2.5, 2.75)), PAUSE, PauseParams(resume_grace_s=1.0, speech_penalty=1.0))
    assert term.metrics["pause_speech_s"] == 0.25
    assert term.metrics["hold"] == pytest.approx(1.0 - 0.25 / 2.0)


def test_pause_takeover_threshold():
    p = PauseParams(respond_weight=0.0)
    # Exactly 1.0 s is a takeover (spans: no word condition).
    assert pause.score(spans((1.25, 2.25)), PAUSE, p).value == -1.0
    # 0.99 s is not: a penalised backchannel.
    term = pause.score(spans((1.25, 2.24)), PAUSE, p)
    assert term.metrics["hold"] == pytest.approx(1.0 - 0.5 * 0.99 / 1.5)
    # On words: 3 words in 0.99 s are no takeover, 4 words in 0.5 s are.
    assert pause.score(n_words(3, 1.25, 0.99), PAUSE, p).value > 0
    assert pause.score(n_words(4, 1.25, 0.5), PAUSE, p).value == -1.0
    # Two short spans less than 0.5 s apart are one utterance: 0.375 + 0.25 gap + 0.375 = 1.0 s.
    assert pause.score(spans((1.25, 1.625), (1.875, 2.25)), PAUSE, p).value == -1.0
    # 0.5 s apart: two utterances, no takeover.
    assert pause.score(spans((1.0, 1.375), (1.875, 2.25)), PAUSE, p).value > 0


def test_pause_response_window_edges():
    answer = 1.5
    # Onset exactly at turn end - respond_early_s (3.8): an answer, not a takeover in the pause.
    term = pause.score(spans((3.8, 3.8 + answer)), PAUSE, EARLY_02_PAUSE)
    assert term.metrics == {"fdb_tor": 0, "fdb_source": "vad", "fdb_window_s": [0.0, 3.8], "fdb_chunks": [],
                            "hold": 1.0, "respond": 1.0, "pause_speech_s": 0.0}
    assert term.value == 1.0
    # Starting earlier: neither an onset in the window nor (0.05 s before it) a takeover.
    term = pause.score(spans((3.75, 3.75 + answer)), PAUSE, EARLY_02_PAUSE)
    assert term.metrics["hold"] == 1.0 and term.metrics["respond"] == -1.0
    # The window ends at turn end + respond_late_s (6.0), exclusive.
    assert pause.score(spans((5.75, 7.25)), PAUSE, EARLY_02_PAUSE).metrics["respond"] == 1.0
    assert pause.score(spans((6.0, 7.5)), PAUSE, EARLY_02_PAUSE).metrics["respond"] == -1.0
    # An onset in the window that is only a backchannel is no answer.
    assert pause.score(spans((4.25, 4.5)), PAUSE, EARLY_02_PAUSE).metrics["respond"] == -1.0


def test_pause_overlap_at_first_and_last_frame():
    # A takeover starting at frame 0.
    term = pause.score(spans((0.0, 1.0)), PAUSE)
    assert term.metrics["hold"] == -1.0 and term.metrics["fdb_tor"] == 1
    # A short backchannel at frame 0 (before the pause) costs nothing.
    assert pause.score(spans((0.0, 0.25)), PAUSE_NO_END).value == 1.0
    # Turn end near the episode end: the window is cut at the episode end; an answer ending on
    # the last frame boundary counts.
    late = segment("pause", 1.0, pause_end_s=2.0, turn_end_s=6.75)
    term = pause.score(spans((6.75, END)), late)
    assert term.metrics["respond"] == 1.0 and term.value == 1.0
    # A takeover in the last second before the hold bound is a takeover in the pause.
    assert pause.score(spans((6.75, END)), PAUSE_NO_END).value == -1.0


def test_pause_fdb_tor_follows_the_benchmark_rule():
    """Full-Duplex-Bench pause TOR by hand: 0 without speech; else 1 unless the material (words, or
    spans without words) lasts < 1.0 s with <= 3 words. With a turn end in the segment, only the
    output before the response window (turn end - respond_early_s) is the benchmark's input."""
    cases = [  # (speech, TOR without a turn end, TOR with the turn end at 4.0)
        (SILENT, 0, 0),
        (THROUGHOUT, 1, 1),
        (spans((1.25, 1.5)), 0, 0),
        (spans((0.0, 1.0)), 1, 1),  # exactly 1.0 s is a takeover
        (spans((1.25, 1.5), (4.0, 6.0)), 1, 0),  # 1.25 .. 6.0 overall; the answer lies after the window
        (n_words(4, 1.0, 0.5), 1, 1),  # four words in 0.5 s
        (n_words(2, 1.0, 0.5), 0, 0),
    ]
    for speech, no_end, with_end in cases:
        assert pause.score(speech, PAUSE_NO_END).metrics["fdb_tor"] == no_end, speech
        assert pause.score(speech, PAUSE).metrics["fdb_tor"] == with_end, speech


def test_pause_respond_needs_the_speech_starting_in_the_window_to_be_the_takeover():
    # "mhm" right at the turn end, then a takeover at 6.5 s (after the 6.0 s window end).
    term = pause.score(spans((4.0, 4.25), (6.5, END)), PAUSE)
    assert term.metrics["respond"] == -1.0


# ============================================================================================
# turn-taking
# ============================================================================================

def test_turn_silence_is_no_answer():
    term = turn.score(SILENT, TURN)
    assert term.value == -1.0
    assert term.metrics == {"fdb_tor": 0, "fdb_latency_s": None, "fdb_source": "vad", "fdb_chunks": [],
                            "latency_s": None, "cut_in": 0}


def test_turn_speech_throughout_is_a_cut_in():
    term = turn.score(THROUGHOUT, TURN)
    assert term.value == -1.0 and term.metrics["cut_in"] == 1
    assert term.metrics["latency_s"] is None  # speech that goes on is no new onset
    assert term.metrics["fdb_tor"] == 1 and term.metrics["fdb_latency_s"] == 0.0


def test_turn_latency_thresholds_exact():
    p = TurnParams(early_s=0.25, on_time_s=0.5, late_s=2.5)
    answer = 1.25
    assert turn.score(spans((4.5, 4.5 + answer)), TURN, p).value == 1.0   # latency == on_time_s
    assert turn.score(spans((6.5, 6.5 + answer)), TURN, p).value == -1.0  # latency == late_s
    assert turn.score(spans((5.5, 5.5 + answer)), TURN, p).value == 0.0   # halfway
    assert turn.score(spans((5.0, 5.0 + answer)), TURN, p).value == 0.5   # a quarter of the way
    assert turn.score(spans((4.25, 4.25 + answer)), TURN, p).value == 1.0  # faster than on time
    term = turn.score(spans((6.75, 6.75 + answer)), TURN, p)
    assert term.value == -1.0 and term.metrics["latency_s"] == 2.75  # later than late_s: clipped


def test_turn_latency_thresholds_defaults():
    p = TurnParams()
    for latency, want in ((p.on_time_s, 1.0), (p.late_s, -1.0), ((p.on_time_s + p.late_s) / 2, 0.0),
                          (0.0, 1.0), (1.0, 1.0 - 2.0 * 0.4 / 1.9)):
        term = turn.score(spans((4.0 + latency, 4.0 + latency + 1.2)), TURN)
        assert term.metrics["latency_s"] == pytest.approx(latency, abs=1e-12)
        assert term.value == pytest.approx(want, abs=1e-9)


def test_turn_onset_at_turn_end_minus_early():
    # Exactly at turn end - early_s (3.8): an answer with latency 0 (clipped), full marks.
    term = turn.score(spans((3.8, 5.0)), TURN, EARLY_02_TURN)
    assert term.value == 1.0 and term.metrics["latency_s"] == 0.0 and term.metrics["cut_in"] == 0
    # 0.05 s earlier: speech that merely goes on through the window start is no answer.
    term = turn.score(spans((3.75, 5.0)), TURN, EARLY_02_TURN)
    assert term.value == -1.0 and term.metrics["cut_in"] == 0 and term.metrics["latency_s"] is None
    # A backchannel just before the window does not spoil a later answer.
    assert turn.score(spans((3.0, 3.25), (4.5, 6.0)), TURN, EARLY_02_TURN).value == pytest.approx(1.0)


def test_turn_takeover_threshold_for_the_answer_and_the_cut_in():
    # The answer: exactly 1.0 s is a takeover, 0.99 s is a backchannel (no answer).
    assert turn.score(spans((4.5, 5.5)), TURN, EARLY_02_TURN).value == pytest.approx(1.0)
    assert turn.score(spans((4.5, 5.49)), TURN, EARLY_02_TURN).value == -1.0
    assert turn.score(n_words(3, 4.5, 0.99), TURN, EARLY_02_TURN).value == -1.0
    assert turn.score(n_words(4, 4.5, 0.5), TURN, EARLY_02_TURN).value == pytest.approx(1.0)
    # The cut-in: 1.0 s before the turn end is one, 0.99 s is a tolerated backchannel.
    term = turn.score(spans((1.0, 2.0), (4.5, 6.0)), TURN, EARLY_02_TURN)
    assert term.value == -1.0 and term.metrics["cut_in"] == 1 and term.metrics["latency_s"] is not None
    term = turn.score(spans((1.0, 1.99), (4.5, 6.0)), TURN, EARLY_02_TURN)
    assert term.metrics["cut_in"] == 0 and term.value == pytest.approx(1.0)
    # A cut-in whose tail reaches into the window: only the part before the window is judged.
    assert turn.score(spans((3.0, 3.9)), TURN, EARLY_02_TURN).metrics["cut_in"] == 0
    assert turn.score(spans((2.75, 3.9)), TURN, EARLY_02_TURN).metrics["cut_in"] == 1


def test_turn_overlap_at_first_and_last_frame():
    assert turn.score(spans((0.0, 1.0), (4.5, 6.0)), TURN).metrics["cut_in"] == 1
    assert turn.score(spans((0.0, 0.25), (4.5, 6.0)), TURN).value == pytest.approx(1.0)
    # A turn end near the episode end: an answer ending exactly at the last frame boundary.
    late = segment("turn", 6.5)
    term = turn.score(spans((7.0, END)), late)
    assert term.metrics["latency_s"] == 0.5 and term.value == 1.0
    # Only the last frame: too short for an answer.
    assert turn.score(spans((END - FRAME_S, END)), late).value == -1.0


def test_turn_fdb_metrics_follow_the_benchmark_rule():
    """Full-Duplex-Bench smooth turn-taking by hand (turn end 4.0): TOR on the whole output; latency
    = first start - turn end, negatives recorded as 0, only when TOR = 1."""
    cases = [
        (SILENT, 0, None),
        (THROUGHOUT, 1, 0.0),
        (spans((1.0, 1.5)), 0, None),
        (spans((4.5, 6.0)), 1, 0.5),
        (spans((1.0, 1.25), (4.5, 6.0)), 1, 0.0),  # a backchannel before the end starts the material
        (spans((3.75, 5.0)), 1, 0.0),
        (n_words(4, 4.5, 0.5), 1, 0.5),
        (n_words(3, 4.5, 0.9), 0, None),
    ]
    for speech, tor, latency in cases:
        m = turn.score(speech, TURN).metrics
        assert (m["fdb_tor"], m["fdb_latency_s"]) == (tor, latency), speech


def test_turn_latency_is_that_of_the_answer_not_of_an_earlier_backchannel():
    term = turn.score(spans((4.125, 4.375), (6.625, END)), TURN)
    assert term.value == -1.0


# ============================================================================================
# backchannel
# ============================================================================================

def test_backchannel_silence_scores_zero():
    term = backchannel.score(SILENT, BACKCHANNEL)
    assert term.value == 0.0
    assert term.metrics == {"fdb_tor": 0, "fdb_frequency": 0.0, "fdb_jsd": 1.0, "fdb_source": "vad", "fdb_chunks": [],
                            "fdb_segments": [], "precision": 0.0, "recall": 0.0, "n_agent": 0, "n_human": 2}


def test_backchannel_speech_throughout_is_a_takeover():
    term = backchannel.score(THROUGHOUT, BACKCHANNEL)
    assert term.value == -1.0 and term.metrics["fdb_tor"] == 1 and term.metrics["n_agent"] == 0


def test_backchannel_perfect_match():
    term = backchannel.score(spans((2.0, 2.25), (5.0, 5.25)), BACKCHANNEL)
    assert term.value == 1.0
    assert term.metrics["precision"] == 1.0 and term.metrics["recall"] == 1.0
    assert term.metrics["n_agent"] == 2 and term.metrics["fdb_frequency"] == 2 / END


@pytest.mark.parametrize("agent, precision, recall", [
    ([(2.25, 2.5)], 1.0, 0.5),                          # one of two human ones, no false alarm
    ([(2.25, 2.5), (3.5, 3.75)], 0.5, 0.5),             # one match, one false alarm
    ([(0.5, 0.75), (3.5, 3.75), (6.5, 6.75)], 0.0, 0.0),  # all off
    ([(0.0, 1.25), (5.0, 5.25)], 0.5, 0.5),             # an "other" (1..3 s) response is an unmatched response
])
def test_backchannel_f1(agent, precision, recall):
    term = backchannel.score(spans(*agent), BACKCHANNEL)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert term.metrics["precision"] == pytest.approx(precision)
    assert term.metrics["recall"] == pytest.approx(recall)
    assert term.value == pytest.approx(f1)


def test_backchannel_match_window_exact():
    p = BackchannelParams(match_s=0.5)
    # Human onsets at 2.0 and 5.0; agent onsets exactly 0.5 s away (before and after) match.
    term = backchannel.score(spans((1.5, 1.75), (5.5, 5.75)), BACKCHANNEL, p)
    assert term.metrics["precision"] == 1.0 and term.metrics["recall"] == 1.0 and term.value == 1.0
    # 0.6 s away: no match (onsets are rounded to 0.1 s as the benchmark's VAD does).
    term = backchannel.score(spans((1.4, 1.65), (5.6, 5.85)), BACKCHANNEL, p)
    assert term.metrics["precision"] == 0.0 and term.value == 0.0
    # Default match_s = 0.6 where the float difference is below 0.6.
    assert backchannel.score(spans((5.6, 5.85)), BACKCHANNEL).metrics["precision"] == 1.0
    assert backchannel.score(spans((5.7, 5.95)), BACKCHANNEL).metrics["precision"] == 0.0


def test_backchannel_onset_exactly_match_s_away_matches_with_default_params():
    assert backchannel.score(spans((2.6, 2.85)), BACKCHANNEL).metrics["precision"] == 1.0


def test_backchannel_duration_thresholds():
    # 0.9 s is a backchannel; 1.0 s is not (official: strictly < 1.0).
    assert backchannel.score(spans((2.0, 2.9)), BACKCHANNEL).metrics["n_agent"] == 1
    assert backchannel.score(spans((2.0, 3.0)), BACKCHANNEL).metrics["n_agent"] == 0
    # More than 3 s is a takeover, wherever it is (the benchmark's scan stops there).
    assert backchannel.score(spans((0.25, 3.5), (5.0, 5.25)), BACKCHANNEL).value == -1.0
    # Exactly 3.0 s is no takeover (strictly > 3.0): an unmatched "other" response.
    term = backchannel.score(spans((0.5, 3.5), (5.0, 5.25)), BACKCHANNEL)
    assert term.metrics["fdb_tor"] == 0 and term.metrics["n_agent"] == 1
    assert term.metrics["precision"] == 0.5 and term.metrics["recall"] == 0.5 and term.value == 0.5
    # 3.0 s as the last segment: the benchmark's TOR (the last segment's) is 1 there.
    assert backchannel.score(spans((2.0, 2.25), (4.5, 7.5)), BACKCHANNEL).metrics["fdb_tor"] == 1
    # Words: 2 words in 0.5 s are a backchannel; 3 words are "other".
    assert backchannel.score(n_words(2, 2.0, 0.5), BACKCHANNEL).metrics["n_agent"] == 1
    assert backchannel.score(n_words(3, 2.0, 0.5), BACKCHANNEL).metrics["n_agent"] == 0
    assert backchannel.score(n_words(4, 2.0, 0.5), BACKCHANNEL).value == -1.0


def test_backchannel_overlap_at_first_and_last_frame():
    edges = segment("backchannel", 0.0, backchannels_s=((0.0, 0.25), (7.75, END)))
    term = backchannel.score(spans((0.0, 0.25), (7.75, END)), edges)
    assert term.value == 1.0 and term.metrics["n_agent"] == 2
    m = backchannel_metrics(spans((0.0, 0.25), (7.75, END)), END, [(0.0, 0.25), (7.75, END)])  # the human spans
    assert term.metrics["fdb_jsd"] == m["jsd"] and term.metrics["fdb_frequency"] == m["frequency"]


def _official_jsd(model_bins: list[range], human_bins: list[range], n_bins: int = 41) -> float:
    """The benchmark's JSD from bin ranges written by hand: +1 per span over its bins, +1e-10, normalised."""
    from scipy.spatial.distance import jensenshannon

    def hist(ranges):
        h = np.zeros(n_bins)
        for r in ranges:
            h[list(r)] += 1.0
        h += 1e-10
        return h / h.sum()

    return float(jensenshannon(hist(model_bins), hist(human_bins)))


def test_backchannel_fdb_metrics_follow_the_benchmark_rule():
    """Full-Duplex-Bench backchannel by hand (8 s output, human backchannels 2.0-2.25 and 5.0-5.25:
    bins 10-11 and 25-26 of 41, the human *spans*, as the benchmark's icc_gt_distribution.json is
    built, not their onsets): segment times rounded to 0.1 s; > 3 s stops the scan with TOR 1; the
    last segment's class is the TOR; every scanned segment counts for frequency and JSD (1 without any)."""
    human = [range(10, 12), range(25, 27)]
    cases = [  # (speech, tor, counted segments, their bins)
        (SILENT, 0, 0, None),
        (THROUGHOUT, 1, 0, None),  # 8 s > 3 s: the scan stops before counting it
        (spans((2.0, 2.25)), 0, 1, [range(10, 12)]),  # rounded to 2.0 .. 2.2
        (spans((0.0, 1.25), (5.0, 5.25)), 0, 2, [range(0, 6), range(25, 27)]),  # 1.2 s then an "mhm": TOR of the last
        (spans((0.25, 3.5), (5.0, 5.25)), 1, 0, None),  # 0.2 .. 3.5 lasts 3.3 s: stop
        (n_words(2, 2.0, 0.5), 0, 1, [range(10, 13)]),
        (n_words(4, 2.0, 0.5), 1, 1, [range(10, 13)]),  # four words: a takeover, still counted
    ]
    for speech, tor, counted, bins in cases:
        m = backchannel.score(speech, BACKCHANNEL).metrics
        assert m["fdb_tor"] == tor and m["fdb_frequency"] == counted / END, speech
        want = 1.0 if bins is None else _official_jsd(bins, human)
        assert m["fdb_jsd"] == pytest.approx(want, abs=1e-12), speech


def test_backchannel_takeover_by_words_then_mhm_is_minus_one():
    five = tuple((0.25 + 0.5 * i, 0.25 + 0.5 * (i + 1), f"w{i}") for i in range(5))
    speech = AgentSpeech(spans_s=((0.25, 2.75), (5.0, 5.25)), words=five + ((5.0, 5.25, "mhm"),))
    assert backchannel.score(speech, BACKCHANNEL).value == -1.0


def test_backchannel_other_segment_last_is_an_unmatched_response():
    term = backchannel.score(spans((2.0, 2.25), (6.0, 7.25)), BACKCHANNEL)
    assert term.value == pytest.approx(0.5)


# ============================================================================================
# user interruption
# ============================================================================================

def test_interruption_silence_stops_but_does_not_answer():
    term = interruption.score(SILENT, INTR)
    assert term.metrics == {"fdb_tor": 0, "fdb_latency_s": None, "fdb_source": "vad", "fdb_chunks": [],
                            "fdb_window_s": [4.5, END], "stop_latency_s": 0.0, "talk_over_s": 0.0,
                            "stop": 1.0, "respond": -1.0}
    assert term.value == 0.0


def test_interruption_speech_throughout():
    term = interruption.score(THROUGHOUT, INTR)
    assert term.metrics["talk_over_s"] == 1.5 and term.metrics["stop"] == -1.0
    assert term.metrics["respond"] == -1.0  # speech that goes on is no answer
    assert term.metrics["stop_latency_s"] == END - 2.0
    assert term.value == -1.0
    assert term.metrics["fdb_tor"] == 1 and term.metrics["fdb_latency_s"] == 0.0


@pytest.mark.parametrize("stop_end, talk_over, stop", [
    (3.0, 0.0, 1.0),     # stopped exactly at onset + grace
    (3.375, 0.375, 0.5),
    (3.75, 0.75, 0.0),   # half of talk_over_max_s
    (4.5, 1.5, -1.0),    # exactly talk_over_max_s
])
def test_interruption_stop_formula(stop_end, talk_over, stop):
    answer = spans((0.0, stop_end), (5.0, 6.5))
    for w in (0.5, 0.3, 1.0, 0.0):
        term = interruption.score(answer, INTR, InterruptionParams(stop_weight=w))
        assert term.metrics["talk_over_s"] == talk_over
        assert term.metrics["stop"] == stop
        assert term.metrics["respond"] == 1.0
        assert term.metrics["stop_latency_s"] == stop_end - 2.0
        assert term.value == pytest.approx(w * stop + (1 - w) * 1.0)


def test_interruption_talk_over_max_and_grace_params():
    speech = spans((0.0, 3.5))
    p = InterruptionParams(stop_grace_s=0.5, talk_over_max_s=1.0)
    term = interruption.score(speech, INTR, p)
    assert term.metrics["talk_over_s"] == 1.0 and term.metrics["stop"] == -1.0
    p = InterruptionParams(stop_grace_s=0.5, talk_over_max_s=2.0)
    assert interruption.score(speech, INTR, p).metrics["stop"] == 0.0


def test_interruption_response_window_edges():
    # Onset exactly at interruption end - respond_early_s (4.3).
    # Its first 0.2 s fall inside the interrupting turn: talk-over.
    term = interruption.score(spans((4.3, 5.5)), INTR, EARLY_02_INTR)
    assert term.metrics["respond"] == 1.0 and term.metrics["talk_over_s"] == pytest.approx(0.2)
    assert term.value == pytest.approx(0.5 * (1.0 - 2.0 * 0.2 / 1.5) + 0.5 * 1.0)
    # 0.05 s earlier: no onset in the window; a little talk-over.
    term = interruption.score(spans((4.25, 5.5)), INTR, EARLY_02_INTR)
    assert term.metrics["respond"] == -1.0 and term.metrics["talk_over_s"] == 0.25
    assert term.metrics["stop"] == pytest.approx(1.0 - 2.0 * 0.25 / 1.5)
    # The window ends at interruption end + respond_late_s (7.0), exclusive.
    assert interruption.score(spans((6.75, END)), INTR, EARLY_02_INTR).metrics["respond"] == 1.0
    assert interruption.score(spans((7.0, END)), INTR, EARLY_02_INTR).metrics["respond"] == -1.0
    # Takeover threshold of the answer.
    assert interruption.score(spans((5.0, 6.0)), INTR, EARLY_02_INTR).metrics["respond"] == 1.0
    assert interruption.score(spans((5.0, 5.99)), INTR, EARLY_02_INTR).metrics["respond"] == -1.0
    assert interruption.score(n_words(4, 5.0, 0.5), INTR, EARLY_02_INTR).metrics["respond"] == 1.0
    assert interruption.score(n_words(3, 5.0, 0.99), INTR, EARLY_02_INTR).metrics["respond"] == -1.0


def test_interruption_overlap_at_first_and_last_frame():
    # The forced prefix from frame 0 running 0.5 s past the onset: within the grace.
    term = interruption.score(spans((0.0, 2.5), (5.0, 6.5)), INTR)
    assert term.metrics["stop_latency_s"] == 0.5 and term.metrics["talk_over_s"] == 0.0 and term.value == 1.0
    # Prefix ending exactly at the onset: not running at the onset.
    assert interruption.score(spans((0.0, 2.0)), INTR).metrics["stop_latency_s"] == 0.0
    # An interruption ending late: the answer ends on the last frame boundary.
    late = segment("interruption", 4.0, interruption_end_s=6.5, agent_prefix_s=(0.0, 4.0))
    term = interruption.score(spans((0.0, 4.5), (6.5, END)), late)
    assert term.metrics["respond"] == 1.0 and term.value == 1.0
    assert term.metrics["fdb_tor"] == 1 and term.metrics["fdb_latency_s"] == 0.0


def test_interruption_fdb_metrics_follow_the_benchmark_rule():
    """Full-Duplex-Bench user interruption by hand (interruption end 4.5): only the output after the
    end counts (a span or word straddling it starts at 4.5); latency from the end, when TOR = 1."""
    cases = [
        (SILENT, 0, None),
        (THROUGHOUT, 1, 0.0),
        (spans((0.0, 2.5)), 0, None),
        (spans((0.0, 2.5), (5.0, 6.5)), 1, 0.5),
        (spans((4.25, 5.5)), 1, 0.0),  # 4.5 .. 5.5: exactly 1.0 s
        (n_words(4, 5.0, 0.5), 1, 0.5),
        (words((4.0, 4.75), (4.75, 5.0)), 0, None),  # two words, 4.5 .. 5.0
        (spans((0.0, 4.75)), 0, None),
    ]
    for speech, tor, latency in cases:
        m = interruption.score(speech, INTR).metrics
        assert (m["fdb_tor"], m["fdb_latency_s"]) == (tor, latency), speech


def test_interruption_respond_needs_a_takeover_starting_in_the_window():
    term = interruption.score(spans((0.0, 2.5), (4.5, 4.75), (7.0, END)), INTR)
    assert term.metrics["respond"] == -1.0


def test_interruption_shorter_than_the_grace():
    short = segment("interruption", 2.0, interruption_end_s=2.5, agent_prefix_s=(0.0, 2.0))
    term = interruption.score(spans((0.0, 4.0)), short)
    assert term.metrics["talk_over_s"] == 0.0


# ============================================================================================
# every axis: the value stays in [-1, 1] and the fdb metrics are those of rewards.fdb
# ============================================================================================

def _random_speech(rng: np.random.Generator) -> AgentSpeech:
    n = int(rng.integers(0, 6))
    cuts = np.sort(rng.uniform(0.0, END, 2 * n))
    if rng.random() < 0.2 and n:
        cuts[0] = 0.0
    if rng.random() < 0.2 and n:
        cuts[-1] = END
    pairs = [(float(cuts[2 * i]), float(cuts[2 * i + 1])) for i in range(n)]
    if rng.random() < 0.5:
        return AgentSpeech(spans_s=pairs)
    ws = []
    for a, b in pairs:
        k = int(rng.integers(1, 6))
        edges = np.linspace(a, b, k + 1)
        ws += [(float(edges[i]), float(edges[i + 1]), "w") for i in range(k)]
    return AgentSpeech(spans_s=pairs, words=ws)


def test_values_in_range_and_fdb_metrics_on_random_timelines():
    rng = np.random.default_rng(0)
    for _ in range(150):
        speech = _random_speech(rng)
        for axis, seg in SEGMENTS.items():
            term = SCORERS[axis](speech, seg)
            assert -1.0 <= term.value <= 1.0, (axis, speech, term)
            m = term.metrics
            # without words, each span is one output.json chunk: the word-count rules count spans
            as_words = speech if speech.words is not None else AgentSpeech(
                spans_s=speech.spans_s, words=tuple((a, b, "[speech]") for a, b in speech.spans_s))
            if axis == "pause":
                hold = 4.0 - PauseParams().respond_early_s
                cut = AgentSpeech(spans_s=(), words=tuple((a, min(b, hold), t) for a, b, t in as_words.words if a < hold))
                assert m["fdb_tor"] == pause_metrics(cut)["tor"]
            elif axis == "turn":
                assert (m["fdb_tor"], m["fdb_latency_s"]) == tuple(turn_metrics(as_words, 4.0).values())
            elif axis == "backchannel":
                want = backchannel_metrics(as_words, END, [(2.0, 2.25), (5.0, 5.25)])
                assert (m["fdb_tor"], m["fdb_frequency"], m["fdb_jsd"]) == tuple(want.values())
            else:
                assert (m["fdb_tor"], m["fdb_latency_s"]) == tuple(interruption_metrics(as_words, 4.5).values())
            assert m["fdb_source"] == ("vad" if speech.words is None else "text")


# ============================================================================================
# reward specs
# ============================================================================================

def test_default_spec():
    s = default_spec()
    assert set(s.terms) == {"pause", "turn", "backchannel", "interruption"}
    assert all(t.weight == 1.0 for t in s.terms.values())
    assert s.terms["pause"].params == PauseParams() and s.terms["turn"].params == TurnParams()
    assert s.terms["backchannel"].params == BackchannelParams()
    assert s.terms["interruption"].params == InterruptionParams()
    assert s.activity.reader == "vad" and s.dense_weight == 0.0
    assert default_spec("text").activity.reader == "text"
    assert load_spec(None) == s
    assert load_spec(s) is s
    # No terms given: every term with defaults, the rest as given.
    s = load_spec({"activity": {"reader": "text"}, "dense": {"weight": 0.25}})
    assert set(s.terms) == set(spec_mod.DEFAULT_TERMS) and s.activity.reader == "text" and s.dense_weight == 0.25


def test_load_spec_from_yaml(tmp_path):
    path = tmp_path / "ablation.yaml"
    path.write_text(
        "activity: {reader: text, word_s: 0.32}\n"
        "dense: {weight: 0.1}\n"
        "terms:\n"
        "  pause: {weight: 2, params: {speech_penalty: 0.7, respond_weight: 0}}\n"
        "  turn:\n"
        "    weight: 0.0\n"
        "    params: {late_s: 3}\n",
        encoding="utf-8",
    )
    s = load_spec(path)
    assert s == load_spec(str(path))
    assert set(s.terms) == {"pause", "turn"}
    assert s.terms["pause"] == TermSpec(2.0, PauseParams(speech_penalty=0.7, respond_weight=0.0))
    assert s.terms["turn"] == TermSpec(0.0, TurnParams(late_s=3.0))
    assert s.activity == ActivityParams(reader="text", word_s=0.32) and s.dense_weight == 0.1
    # An empty file is the default spec.
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_spec(empty) == default_spec()


def test_load_spec_from_dict():
    s = load_spec({"terms": {"backchannel": {"params": {"match_s": 0.4}}, "interruption": None},
                   "activity": {"reader": "vad", "vad": {"threshold": 0.6, "min_speech_ms": 200.0}}})
    assert s.terms["backchannel"] == TermSpec(1.0, BackchannelParams(match_s=0.4))
    assert s.terms["interruption"] == TermSpec(1.0, InterruptionParams())
    assert s.activity.vad.threshold == 0.6
    assert s.activity.vad.min_speech_ms == 200 and isinstance(s.activity.vad.min_speech_ms, int)


@pytest.mark.parametrize("raw, fragments", [
    ({"terms": {"pauses": {}}}, ["terms.pauses", "unknown term", "pause, turn"]),
    ({"terms": {"pause": {"params": {"speech_penaly": 0.5}}}},
     ["terms.pause.params", "'speech_penaly'", "speech_penalty"]),
    ({"terms": {"turn": {"weight": "high"}}}, ["terms.turn.weight", "expected a number", "'high'"]),
    ({"terms": {"turn": {"weight": True}}}, ["terms.turn.weight", "expected a number"]),
    ({"terms": {"turn": {"weigth": 1}}}, ["terms.turn", "'weigth'"]),
    ({"terms": {"pause": {"params": {"speech_penalty": "lots"}}}}, ["terms.pause.params.speech_penalty", "'lots'"]),
    ({"term": {"pause": {}}}, ["term: unknown field 'term'", "did you mean 'terms'"]),
    ({"activity": {"reader": "asr"}}, ["activity", "reader", "'asr'", "vad", "text"]),
    ({"activity": {"reader": 1}}, ["activity.reader", "expected str"]),
    ({"activity": {"vad": {"treshold": 0.5}}}, ["activity.vad", "'treshold'"]),
    ({"activity": "text"}, ["activity", "mapping"]),
    ({"dense": {"weight": "x"}}, ["dense.weight", "expected a number"]),
    ({"dense": {"wieght": 0.1}}, ["dense", "'wieght'"]),
    ({"terms": {}}, ["terms", "non-empty"]),
    ({"terms": {"pause": 3}}, ["terms.pause", "mapping"]),
    ([1, 2], ["mapping", "list"]),
    ({"terms": {"turn": {"weight": float("nan")}}}, ["terms.turn.weight: expected a finite number, got nan"]),
    ({"dense": {"weight": float("inf")}}, ["dense.weight: expected a finite number, got inf"]),
    ({"terms": {"pause": {"params": {"speech_penalty": float("nan")}}}}, ["terms.pause.params.speech_penalty", "finite"]),
    ({"activity": {"vad": {"threshold": float("nan")}}}, ["activity.vad.threshold", "finite"]),
    ({"metrics": {"source": "whisper"}}, ["metrics.source", "'whisper'", "vad, asr"]),
    ({"metrics": {"source": 1}}, ["metrics.source", "expected str"]),
    ({"metrics": {"sources": "asr"}}, ["metrics", "'sources'", "did you mean 'source'"]),
    ({"metrics": {"onset_refinement": True}}, ["metrics.onset_refinement", "source: asr"]),
    ({"metrics": {"onset_refinement": "yes"}}, ["metrics.onset_refinement", "true or false"]),
    ({"metrics": {"source": "asr", "asr_model_dir": "/nonexistent/whisper"}},
     ["metrics.asr_model_dir", "/nonexistent/whisper", "not a faster-whisper model directory"]),
    ({"metrics": "asr"}, ["metrics", "mapping"]),
])
def test_spec_errors_name_the_field(raw, fragments):
    with pytest.raises(RewardSpecError) as err:
        load_spec(raw) if isinstance(raw, dict) else spec_from_dict(raw)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_spec_errors_in_a_file_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("terms: [pause\n  turn: {\n", encoding="utf-8")
    with pytest.raises(RewardSpecError, match="not valid YAML") as err:
        load_spec(bad)
    assert str(bad) in str(err.value)
    typo = tmp_path / "typo.yaml"
    typo.write_text("terms:\n  pause: {params: {speech_penaly: 0.5}}\n", encoding="utf-8")
    with pytest.raises(RewardSpecError) as err:
        load_spec(typo)
    assert str(typo) in str(err.value) and "terms.pause.params" in str(err.value)
    with pytest.raises(RewardSpecError, match="cannot read") as err:
        load_spec(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(err.value)


def test_spec_to_dict_round_trips_with_explicit_vad():
    raw = {"activity": {"reader": "text", "merge_gap_s": 0.2, "vad": {"neg_threshold": 0.3}},
           "dense": {"weight": 0.5},
           "terms": {"pause": {"weight": 0.5, "params": {"resume_grace_s": 0.75}}, "interruption": {"weight": 0}}}
    s = load_spec(raw)
    assert spec_from_dict(s.to_dict()) == s
    assert spec_from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_default_spec_to_dict_round_trips():
    s = default_spec("text")
    assert spec_from_dict(s.to_dict()) == s


def test_metrics_source_in_the_spec():
    from duplexgym.rewards.activity import MetricsParams

    s = default_spec()
    assert s.metrics == MetricsParams() and s.metrics.source == "vad" and s.to_dict()["metrics"] == {
        "source": "vad", "asr_model_dir": None, "onset_refinement": False}
    pytest.importorskip("faster_whisper", reason="faster-whisper not installed (optional: ASR metrics)")
    from duplexgym.rewards.asr import asr_available

    if asr_available():
        pytest.skip(asr_available())
    raw = {"metrics": {"source": "asr", "onset_refinement": True}, "terms": {"turn": {"weight": 1.0}}}
    s = load_spec(raw)
    assert s.metrics == MetricsParams(source="asr", onset_refinement=True) and set(s.terms) == {"turn"}
    assert spec_from_dict(s.to_dict()) == s
    assert load_spec({"metrics": {"source": "asr"}}).terms == default_spec().terms  # no terms: the defaults


# ============================================================================================
# scoring an episode record
# ============================================================================================

def _tokens_record(seg: Segment, tokens: np.ndarray, forced_frames: int = 0) -> EpisodeRecord:
    return EpisodeRecord(segment=seg, seed=7, env={"codec": None}, forced_frames=forced_frames,
                         text_tokens=tokens.astype(np.int32), audio_codes=np.zeros((8, seg.n_frames), np.int16))


def _answer_tokens() -> np.ndarray:
    """Padding, then one word every 5 frames from frame 65 (5.2 s) to 85: speech 5.2 .. 7.2 s."""
    tokens = np.full(N, PAD, np.int32)
    tokens[65:90:5] = 1234
    return tokens


def test_score_episode_weights_multiply():
    record = _tokens_record(TURN, _answer_tokens())
    speech = speech_from_text(record.text_tokens, TEXT)
    assert len(speech.spans_s) == 1 and speech.spans_s[0] == pytest.approx((5.2, 7.2))
    direct = turn.score(speech, TURN, TurnParams())
    assert 0.0 < direct.value < 1.0  # latency 1.2 s: between on time and late
    for weight in (1.0, 0.5, -2.0):
        s = load_spec({"activity": {"reader": "text"}, "terms": {"turn": {"weight": weight}}})
        out = score_episode(record, s, dense_total=-0.125)
        assert out["axis"] == "turn" and out["failed"] == {} and out["dense"] == -0.125
        assert out["terms"]["turn"] == {"value": direct.value, "weight": weight, "metrics": direct.metrics}
        assert out["reward"] == weight * direct.value
        assert out["agent_speech_s"] == [[round(a, 4), round(b, 4)] for a, b in speech.spans_s]


def test_score_episode_weight_zero_is_reported_not_rewarded():
    record = _tokens_record(TURN, _answer_tokens())
    s = load_spec({"activity": {"reader": "text"}, "terms": {"turn": {"weight": 0}}})
    out = score_episode(record, s)
    assert out["reward"] == 0.0 and out["failed"] == {}
    assert out["terms"]["turn"]["weight"] == 0.0 and out["terms"]["turn"]["value"] != 0.0


def test_score_episode_applies_only_the_episode_axis():
    record = _tokens_record(TURN, _answer_tokens())
    s = default_spec("text")
    assert set(applicable_terms("turn", s)) == {"turn"}
    out = score_episode(record, s)
    assert set(out["terms"]) == {"turn"} and out["failed"] == {}
    for axis, seg in SEGMENTS.items():
        out = score_episode(_tokens_record(seg, _answer_tokens()), s)
        assert set(out["terms"]) == {axis} and out["axis"] == axis
        assert -1.0 <= out["reward"] <= 1.0


def test_score_episode_reports_a_failing_term_and_leaves_it_out(monkeypatch):
    def boom(speech, segment, params):
        raise RuntimeError("judge unreachable")

    def nan(speech, segment, params):
        return RewardTerm(float("nan"))

    monkeypatch.setitem(spec_mod.TERMS, "turn", TermKind(boom, TurnParams, None, "turn"))
    monkeypatch.setitem(spec_mod.TERMS, "turn_nan", TermKind(nan, TurnParams, None, "turn"))
    monkeypatch.setitem(spec_mod.TERMS, "turn_ok", TermKind(turn.score, TurnParams, turn.dense_targets, "turn"))
    s = load_spec({"activity": {"reader": "text"},
                   "terms": {"turn": {"weight": 1.0}, "turn_nan": {"weight": 1.0}, "turn_ok": {"weight": 0.5}}})
    record = _tokens_record(TURN, _answer_tokens())
    out = score_episode(record, s)
    assert out["failed"]["turn"] == "RuntimeError: judge unreachable"
    assert "ValueError" in out["failed"]["turn_nan"] and "nan" in out["failed"]["turn_nan"]
    assert set(out["terms"]) == {"turn_ok"}
    ok = turn.score(speech_from_text(record.text_tokens, TEXT), TURN).value
    assert out["reward"] == 0.5 * ok


def test_score_episode_term_for_every_axis(monkeypatch):
    def const(speech, segment, params):
        return RewardTerm(0.25, {"n": np.int64(3)})

    monkeypatch.setitem(spec_mod.TERMS, "everywhere", TermKind(const, TurnParams, None, None))
    s = RewardSpec(terms={"everywhere": TermSpec(2.0, TurnParams()), "pause": TermSpec(1.0, PauseParams())},
                   activity=TEXT)
    out = score_episode(_tokens_record(TURN, _answer_tokens()), s)
    assert set(out["terms"]) == {"everywhere"} and out["reward"] == 0.5
    assert out["terms"]["everywhere"]["metrics"] == {"n": 3} and type(out["terms"]["everywhere"]["metrics"]["n"]) is int


def test_score_episode_unreadable_speech_fails_every_term():
    # The vad reader on a tokens-mode record without a codec: nothing can be read.
    out = score_episode(_tokens_record(TURN, _answer_tokens()), default_spec("vad"))
    assert out["terms"] == {} and out["reward"] == 0.0
    assert set(out["failed"]) == {"turn"} and "reading agent speech" in out["failed"]["turn"]
    assert "codec" in out["failed"]["turn"]


# ============================================================================================
# reading speech from the text stream
# ============================================================================================

def test_speech_from_text_reads_words_and_merges_spans():
    tokens = np.full(N, PAD, np.int32)
    tokens[[10, 15, 40]] = [7, 8, 9]
    tokens[20] = 0  # end-of-padding is padding too
    speech = speech_from_text(tokens, TEXT)
    assert [w[2] for w in speech.words] == ["7", "8", "9"]
    assert [w[:2] for w in speech.words] == [pytest.approx((0.8, 1.2)), pytest.approx((1.2, 1.6)),
                                             pytest.approx((3.2, 3.6))]
    assert len(speech.spans_s) == 2
    assert speech.spans_s[0] == (0.8, pytest.approx(1.6)) and speech.spans_s[1][0] == 3.2
    assert speech_from_text(np.full(N, PAD), TEXT) == AgentSpeech(spans_s=(), words=())


@pytest.mark.parametrize("pairs", [
    [(0.0, 2.0)],            # from the first frame
    [(6.0, END)],            # to the last frame boundary
    [(0.0, END)],            # the whole episode
    [(0.96, 2.16), (4.0, 4.4)],
    [(0.48, 1.28), (3.2, 5.2)],
])
def test_text_stream_round_trip_where_spans_fit_the_word_grid(pairs):
    """Spans whose length is a whole number of words come back within one frame."""
    stream = text_stream(pairs, N, 42, TEXT)
    assert stream.dtype == np.int32 and stream.shape == (N,)
    assert set(np.unique(stream)) <= {PAD, 42}
    back = speech_from_text(stream, TEXT).spans_s
    assert len(back) == len(pairs)
    for (a, b), (a2, b2) in zip(pairs, back):
        assert abs(a2 - a) <= FRAME_S + 1e-9 and abs(b2 - b) <= FRAME_S + 1e-9, (pairs, back)


def test_text_stream_round_trip_start_and_cover():
    """Any span: the start comes back within one frame, and the read-back span covers it."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        a = float(rng.uniform(0.0, 6.0))
        b = a + float(rng.uniform(0.1, 1.9))
        back = speech_from_text(text_stream([(a, b)], N, 42, TEXT), TEXT).spans_s
        assert len(back) == 1
        a2, b2 = back[0]
        assert a - FRAME_S - 1e-9 <= a2 <= a + 1e-9
        assert b2 >= b - FRAME_S - 1e-9 and b2 <= b + TEXT.word_s + 1e-9


def test_text_stream_round_trip_within_one_frame():
    for pair in [(1.0, 1.9), (1.0, 1.5), (2.0, 3.0)]:
        (a2, b2), = speech_from_text(text_stream([pair], N, 42, TEXT), TEXT).spans_s
        assert abs(a2 - pair[0]) <= FRAME_S and abs(b2 - pair[1]) <= FRAME_S, (pair, (a2, b2))


def test_frames_speaking():
    mask = frames_speaking(spans((0.0, 0.1), (7.9, END)), N)
    assert mask.dtype == bool and mask.shape == (N,)
    assert np.flatnonzero(mask).tolist() == [0, 1, 98, 99]
    assert not frames_speaking(SILENT, N).any()


# ============================================================================================
# dense shaping
# ============================================================================================

def _dense_spec(weight: float) -> RewardSpec:
    return dataclasses.replace(default_spec("text"), dense_weight=weight)


def test_dense_is_zero_when_off():
    s = _dense_spec(0.0)
    for seg in SEGMENTS.values():
        a, b = dense.penalties(seg, s)
        assert a.shape == b.shape == (N,) and not a.any() and not b.any()
        assert not dense.dense_rewards(_tokens_record(seg, _answer_tokens()), s).any()
    # The axis has no term in the spec: zeros too.
    s = RewardSpec(terms={"turn": TermSpec(1.0, TurnParams())}, activity=TEXT, dense_weight=0.5)
    assert not dense.dense_rewards(_tokens_record(PAUSE, _answer_tokens()), s).any()


@pytest.mark.parametrize("weight", [0.1, 1.0])
def test_dense_sums_within_minus_weight_and_zero(weight):
    s = _dense_spec(weight)
    rng = np.random.default_rng(2)
    for axis, seg in SEGMENTS.items():
        term = s.terms[axis]
        want, care = spec_mod.TERMS[axis].dense_targets(seg, term.params)
        if_speaking, if_silent = dense.penalties(seg, s)
        assert (if_speaking <= 0).all() and (if_silent <= 0).all()
        patterns = [np.zeros(N, bool), np.ones(N, bool), rng.random(N) < 0.5, want.copy(), ~want]
        sums = []
        for speaking in patterns:
            tokens = np.where(speaking, 77, PAD).astype(np.int32)
            r = dense.dense_rewards(_tokens_record(seg, tokens), s)
            assert np.array_equal(dense.speaking_frames(_tokens_record(seg, tokens)), speaking)
            assert -weight - 1e-12 <= r.sum() <= 0.0, (axis, r.sum())
            sums.append(r.sum())
        assert sums[3] == 0.0  # doing what is wanted costs nothing
        assert sums[4] == pytest.approx(-weight)  # the opposite everywhere cared for costs the weight


def test_dense_forced_frames_are_never_judged():
    s = _dense_spec(1.0)
    forced = 30
    a, b = dense.penalties(INTR, s, forced_frames=forced)
    assert not a[:forced].any() and not b[:forced].any()
    r = dense.dense_rewards(_tokens_record(INTR, np.full(N, 77, np.int32), forced_frames=forced), s)
    assert not r[:forced].any() and -1.0 - 1e-12 <= r.sum() <= 0.0


def test_dense_speaking_frames_in_waveform_mode():
    from duplexgym.constants import FRAME_SAMPLES

    audio = np.zeros(N * FRAME_SAMPLES, np.float32)
    audio[:FRAME_SAMPLES] = dense.SPEAKING_RMS * 1.001  # just above the bound: speech
    audio[FRAME_SAMPLES:2 * FRAME_SAMPLES] = dense.SPEAKING_RMS * 0.999
    record = EpisodeRecord(segment=TURN, seed=0, env={}, audio=audio)
    speaking = dense.speaking_frames(record)
    assert speaking[0] and not speaking[1:].any()


# ============================================================================================
# the episode record
# ============================================================================================

def test_record_save_load_round_trip_tokens_mode(tmp_path):
    seg = segment("backchannel", 2.0, backchannels_s=((2.0, 2.25), (5.0, 5.25)), response_s=2.0,
                  user_spans_s=((0.0, 7.5),), reference_spans_s=((2.0, 2.25),),
                  user_words=({"text": "hello", "start_s": d(0.1), "end_s": d(0.5)},), texts={"context": "hi"})
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 32000, N).astype(np.int32)
    tokens[::3] = PAD
    codes = rng.integers(0, 2048, (8, N)).astype(np.int16)
    rewards = rng.normal(size=N)
    rewards[0], rewards[1], rewards[-1] = -0.0, np.pi, 1e-300
    record = EpisodeRecord(segment=seg, seed=123, env={"codec": None, "id": "duplexgym/Backchannel-v0"},
                           forced_frames=4, text_tokens=tokens, audio_codes=codes, agent_text="mhm yeah",
                           obs_sha256="ab" * 32, rewards=rewards, reward_terms={"axis": "backchannel", "reward": 0.5})
    path = record.save(tmp_path / "sub" / "ep0")
    assert path == tmp_path / "sub" / "ep0.json" and (tmp_path / "sub" / "ep0.npz").is_file()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["ep0.json", "ep0.npz"]  # no temp files left
    for where in (path, path.with_suffix(".npz"), path.with_suffix("")):
        back = EpisodeRecord.load(where)
        assert back.segment == seg
        for name in ("text_tokens", "audio_codes", "rewards"):
            a, b = getattr(record, name), getattr(back, name)
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        assert back.audio is None and back.action_mode == "tokens" and back.n_frames == N
        assert (back.seed, back.env, back.forced_frames, back.agent_text, back.obs_sha256, back.reward_terms) == (
            123, record.env, 4, "mhm yeah", "ab" * 32, record.reward_terms)
    # Rescoring the loaded record gives the same breakdown.
    s = default_spec("text")
    assert score_episode(EpisodeRecord.load(path), s) == score_episode(record, s)


def test_record_save_load_round_trip_waveform_mode(tmp_path):
    audio = np.random.default_rng(4).standard_normal(N * 1920).astype(np.float32)
    record = EpisodeRecord(segment=INTR, seed=None, env={}, audio=audio)
    back = EpisodeRecord.load(record.save(tmp_path / "w"))
    assert back.segment == INTR and back.action_mode == "waveform"
    assert back.audio.dtype == np.float32 and back.audio.tobytes() == audio.tobytes()
    assert back.text_tokens is None and back.audio_codes is None and back.rewards is None and back.seed is None


def test_record_load_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="nothing.json"):
        EpisodeRecord.load(tmp_path / "nothing")
    record = EpisodeRecord(segment=TURN, seed=0, env={}, text_tokens=np.full(N, PAD, np.int32))
    path = record.save(tmp_path / "r")
    path.with_suffix(".npz").unlink()
    with pytest.raises(ValueError, match="r.npz"):
        EpisodeRecord.load(path)
