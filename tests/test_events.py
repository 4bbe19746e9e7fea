"""Event detection rules on hand-built span timelines, including their edges."""

import pytest
from duplexgym.corpora.dialogue import Word
from duplexgym.corpora.events import (
    Backchannel,
    DetectionParams,
    Interruption,
    Pause,
    TurnShift,
    detect_events,
    event_from_dict,
    event_to_dict,
)

P = DetectionParams()


def kinds(events):
    return [type(e).__name__ for e in events]


def test_pause_needs_the_other_speaker_silent():
    events = detect_events({"A": [(0, 2), (3, 5)], "B": []})
    assert events == [Pause("A", 2, 3)]
    # B takes the floor inside the gap: a turn shift and back, no pause
    events = detect_events({"A": [(0, 2), (3.5, 5)], "B": [(2.2, 3.3)]})
    assert kinds(events) == ["TurnShift", "TurnShift"]


def test_pause_length_edges():
    at_min = detect_events({"A": [(0, 2), (2 + P.min_pause_s, 4)], "B": []})
    assert kinds(at_min) == ["Pause"]
    below = detect_events({"A": [(0, 2), (2 + P.min_pause_s - 0.01, 4)], "B": []})
    assert below == []
    above_max = detect_events({"A": [(0, 2), (2 + P.max_pause_s + 0.01, 9)], "B": []})
    assert above_max == []


def test_backchannel_inside_a_pause_keeps_the_pause():
    events = detect_events({"A": [(0, 3), (4.5, 8)], "B": [(3.3, 3.7)]})
    assert kinds(events) == ["Pause", "Backchannel"]
    assert events[1] == Backchannel("B", "A", 3.3, 3.7, None)


def test_backchannel_while_holder_talks_and_its_edges():
    base = {"A": [(0, 6)], "B": [(2, 2.4)]}
    assert detect_events(base) == [Backchannel("B", "A", 2, 2.4, None)]
    too_long = {"A": [(0, 6)], "B": [(2, 2 + P.backchannel_max_s)]}
    assert detect_events(too_long) == []  # a 1 s overlap that A talks through: no event
    words = [Word("B", 2.0, 2.1, "yes"), Word("B", 2.1, 2.2, "I"), Word("B", 2.2, 2.35, "see")]
    assert detect_events(base, words) == []  # three words: not a backchannel
    two = [Word("B", 2.0, 2.1, "uh"), Word("B", 2.1, 2.35, "huh")]
    assert detect_events(base, two) == [Backchannel("B", "A", 2, 2.4, 2)]


def test_backchannel_needs_holder_close_before():
    # A fell silent 0.45 s before B's short "hello?": B answers, it is a turn, not a backchannel
    events = detect_events({"A": [(0, 2), (3.35, 6)], "B": [(2.45, 3.3)]})
    assert kinds(events) == ["TurnShift", "TurnShift"]


def test_backchannel_needs_holder_to_go_on():
    # A stops right at the short utterance and never resumes: B's "okay" ends the exchange
    events = detect_events({"A": [(0, 2)], "B": [(2.3, 2.8)]})
    assert kinds(events) == ["TurnShift"]


def test_turn_shift_gap_and_overlap_edges():
    gap = detect_events({"A": [(0, 3)], "B": [(3.4, 6)]})
    assert gap == [TurnShift("A", "B", 3, 3.4)] and gap[0].gap_s == pytest.approx(0.4)
    too_late = detect_events({"A": [(0, 3)], "B": [(3 + P.max_turn_gap_s + 0.01, 8)]})
    assert too_late == []
    overlap = detect_events({"A": [(0, 3)], "B": [(3 - P.max_shift_overlap_s, 6)]})
    assert overlap == [TurnShift("A", "B", 3, 3 - P.max_shift_overlap_s)]
    assert overlap[0].gap_s < 0


def test_interruption_and_its_edges():
    events = detect_events({"A": [(0, 4)], "B": [(3, 6)]})
    assert events == [Interruption("B", "A", 3, 4, 6, 0)]
    # A talks on more than interruption_max_stop_s after B's onset: no floor change
    assert detect_events({"A": [(0, 5.5)], "B": [(3, 6)]}) == []
    # A had barely started (< interruption_min_prior_s): an overlapping turn shift instead
    assert detect_events({"A": [(2.5, 4)], "B": [(3, 6)]}) == [TurnShift("A", "B", 4, 3)]
    # A takes the floor back while B still talks: B did not interrupt A, A interrupts B
    assert detect_events({"A": [(0, 4), (4.5, 9)], "B": [(3, 6)]}) == [Interruption("A", "B", 4.5, 6, 9, 3)]
    # B stops right after A: it does not hold the floor
    assert detect_events({"A": [(0, 4)], "B": [(3, 4.2)]}) == []


def test_interruption_prefix_starts_at_the_interrupted_turn():
    events = detect_events({"A": [(0, 2), (2.8, 6)], "B": [(5, 8)]})
    intr = [e for e in events if isinstance(e, Interruption)]
    assert intr == [Interruption("B", "A", 5, 6, 8, 0)]


def test_overlap_talked_through_is_no_event_and_floor_follows_furthest_span():
    # B speaks 1.5 s inside A's long span (A keeps the floor), then takes a real turn later
    events = detect_events({"A": [(0, 6)], "B": [(2, 3.5), (6.3, 9)]})
    assert events == [TurnShift("A", "B", 6, 6.3)]


def test_events_round_trip_and_params_validation():
    for e in detect_events({"A": [(0, 2), (3, 4)], "B": [(4.2, 7)]}):
        assert event_from_dict(event_to_dict(e)) == e
    with pytest.raises(ValueError, match="min_pause_s"):
        DetectionParams(min_pause_s=-1)
    with pytest.raises(ValueError, match="max_shift_overlap_s"):
        DetectionParams(max_shift_overlap_s=3, interruption_max_stop_s=2)


def test_no_speech_no_events():
    assert detect_events({"A": [], "B": []}) == []
    assert detect_events({"A": [(0, 30)], "B": []}) == []


# --- dense talk: events next to events (the rule changes of corpora/events.py's docstring) ---


def test_backchannel_right_after_the_listeners_own_turn():
    # A ends its turn at 3.0, B takes the floor at 3.2, A says "yeah" 0.5 s after its own last word
    events = detect_events({"A": [(0, 3), (3.5, 3.9)], "B": [(3.2, 8)]})
    assert events == [TurnShift("A", "B", 3, 3.2), Backchannel("A", "B", 3.5, 3.9, None)]
    gap = P.backchannel_isolation_before_s
    at_edge = detect_events({"A": [(0, 3), (3 + gap, 3.4 + gap)], "B": [(2.9, 8)]})
    assert Backchannel("A", "B", 3 + gap, 3.4 + gap, None) in at_edge
    too_close = detect_events({"A": [(0, 3), (3 + gap - 0.01, 3.39 + gap)], "B": [(2.9, 8)]})
    assert not any(isinstance(e, Backchannel) for e in too_close)  # the tail of A's own turn


def test_listener_takes_the_turn_soon_after_a_backchannel():
    # B backchannels in A's last words, A goes on 0.4 s, B takes the turn 0.8 s after the backchannel
    events = detect_events({"A": [(0, 5.3)], "B": [(4.5, 4.9), (5.7, 9)]})
    assert events == [Backchannel("B", "A", 4.5, 4.9, None), TurnShift("A", "B", 5.3, 5.7)]
    after = P.backchannel_isolation_after_s
    assert Backchannel("B", "A", 4.5, 4.9, None) in detect_events({"A": [(0, 5.3)], "B": [(4.5, 4.9), (4.9 + after, 9)]})
    # straight into its own turn ("yeah [0.3 s] so I think..."): the start of B's turn, no backchannel
    events = detect_events({"A": [(0, 5.3)], "B": [(4.5, 4.9), (4.9 + after - 0.01, 9)]})
    assert not any(isinstance(e, Backchannel) for e in events)


def test_interruption_then_an_overlapping_turn_shift_back():
    # B barges in at 3, A stops at 4; A takes the floor back at 6.8, 0.2 s before B ends
    events = detect_events({"A": [(0, 4), (6.8, 10)], "B": [(3, 7)]})
    assert events == [Interruption("B", "A", 3, 4, 7, 0), TurnShift("B", "A", 7, 6.8)]


def test_chained_interruptions_and_the_yield_edge():
    # B barges in on A; A, silent 1.5 s, barges back in on B, who stops 0.7 s later
    events = detect_events({"A": [(0, 4), (5.5, 9)], "B": [(3, 6.2)]})
    assert events == [Interruption("B", "A", 3, 4, 6.2, 0), Interruption("A", "B", 5.5, 6.2, 9, 3)]
    y = P.interruption_min_yield_s
    at_edge = detect_events({"A": [(0, 4), (4 + y, 9)], "B": [(3, 6.2)]})
    assert Interruption("B", "A", 3, 4, 6.2, 0) in at_edge
    # back within the yield: A only paused inside the overlap, B did not take its floor
    early = detect_events({"A": [(0, 4), (4 + y - 0.01, 9)], "B": [(3, 6.2)]})
    assert [type(e) for e in early] == [Interruption] and early[0].speaker == "A"


def test_turn_end_overlap_edge_is_the_vad_measured_one():
    # the 0.5 s limit: a true 0.3-0.4 s overlap measures ~0.1 s more on the VAD's spans
    assert detect_events({"A": [(0, 3)], "B": [(2.5, 6)]}) == [TurnShift("A", "B", 3, 2.5)]
    assert [type(e) for e in detect_events({"A": [(0, 3)], "B": [(2.49, 6)]})] == [Interruption]
