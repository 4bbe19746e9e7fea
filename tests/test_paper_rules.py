"""The seed paper's segment rules (corpora/paper.py) on hand-built span timelines: utterances,
the four criteria with their tau_min and gap edges, and the segment windows."""

import pytest
from duplexgym.corpora.paper import (
    PaperBackchannel,
    PaperInterruption,
    PaperParams,
    PaperPause,
    PaperTurn,
    cut_paper_segments,
    detect_paper_events,
    paper_event_from_dict,
    paper_event_to_dict,
    utterances,
)

P = PaperParams()


def of(kind, events):
    return [e for e in events if isinstance(e, kind)]


def test_utterances_join_ipus_across_at_most_one_second():
    (one,) = utterances([(0.0, 2.0), (3.0, 5.0)], "A")  # a silence of exactly 1.0 s: a pause inside
    assert (one.start_s, one.end_s, one.pauses_s) == (0.0, 5.0, ((2.0, 3.0),))
    assert len(utterances([(0.1, 1.2), (2.2, 4.0)], "A")) == 1  # 1.0 s up to float rounding
    assert [(u.start_s, u.end_s) for u in utterances([(0.0, 2.0), (3.01, 5.0)], "A")] == [(0.0, 2.0), (3.01, 5.0)]
    assert utterances([], "B") == []


def test_pause_needs_tau_min_an_internal_pause_and_a_silent_listener():
    four = {"A": [(0.0, 1.5), (2.5, 4.0)], "B": []}  # 4.0 s with a 1.0 s pause inside
    assert detect_paper_events(four) == [PaperPause("A", 1.5, 2.5, 0.0, 4.0, ((1.5, 2.5),))]
    assert detect_paper_events({"A": [(0.0, 1.5), (2.5, 3.99)], "B": []}) == []  # 3.99 s
    assert detect_paper_events({"A": [(0.0, 6.0)], "B": []}) == []  # no pause
    assert detect_paper_events({"A": [(0.0, 1.5), (2.5, 4.0)], "B": [(3.0, 3.4)]}) == []  # Y speaks
    assert detect_paper_events({"A": [(0.0, 1.5), (2.51, 4.0)], "B": []}) == []  # 1.01 s: two utterances
    two = detect_paper_events({"A": [(0.0, 2.0), (2.5, 3.0), (3.6, 5.0)], "B": []})
    assert two == [PaperPause("A", 2.0, 2.5, 0.0, 5.0, ((2.0, 2.5), (3.0, 3.6)))]  # anchored on the first


def test_turn_gap_and_tau_min_edges():
    x, y = [(0.0, 5.0)], [(5.4, 10.4)]
    assert detect_paper_events({"A": x, "B": y}) == [PaperTurn("A", "B", 5.0, 5.4, 0.0, 10.4)]  # 0.40 s
    assert detect_paper_events({"A": x, "B": [(5.41, 10.41)]}) == []  # 0.41 s
    assert detect_paper_events({"A": [(0.0, 4.99)], "B": [(5.2, 10.2)]}) == []  # X shorter than 5 s
    assert detect_paper_events({"A": x, "B": [(5.2, 10.19)]}) == []  # Y shorter than 5 s
    overlap = detect_paper_events({"A": x, "B": [(4.0, 9.5)]})  # Y starts 1 s before X ends
    assert of(PaperTurn, overlap) == [PaperTurn("A", "B", 5.0, 4.0, 0.0, 9.5)]
    assert of(PaperTurn, detect_paper_events({"A": [(0.0, 12.0)], "B": [(4.0, 9.5)]})) == []  # Y inside X
    # consecutive: a short utterance of Y in between (it starts before Y's answer) breaks the pair
    assert of(PaperTurn, detect_paper_events({"A": x, "B": [(2.0, 2.4), (5.2, 10.2)]})) == []


def test_backchannel_utterances_up_to_one_second():
    x = [(0.0, 5.0)]
    one = detect_paper_events({"A": x, "B": [(2.0, 3.0)]})
    assert one == [PaperBackchannel("B", "A", 2.0, 3.0, 0.0, 5.0, ((2.0, 3.0),))]
    assert detect_paper_events({"A": x, "B": [(2.0, 3.01)]}) == []  # 1.01 s
    two = detect_paper_events({"A": [(0.0, 8.0)], "B": [(1.0, 1.4), (3.0, 3.5)]})
    assert of(PaperBackchannel, two)[0].backchannels_s == ((1.0, 1.4), (3.0, 3.5))
    # two short IPUs 0.6 s apart are one utterance of 1.3 s: not a backchannel
    assert of(PaperBackchannel, detect_paper_events({"A": [(0.0, 8.0)], "B": [(1.0, 1.4), (2.0, 2.3)]})) == []
    assert detect_paper_events({"A": [(0.0, 4.99)], "B": [(2.0, 2.5)]}) == []  # X shorter than 5 s
    # a long utterance of Y overlapping X's start disqualifies it (Y does not say only short ones)
    assert of(PaperBackchannel, detect_paper_events({"A": [(0.0, 9.0)], "B": [(-3.0, 0.5), (4.0, 4.4)]})) == []


def test_interruption_pattern_x_y_x_y():
    spans = {"A": [(0.0, 3.0), (6.0, 9.0)], "B": [(3.2, 6.5), (9.3, 12.3)]}
    assert of(PaperInterruption, detect_paper_events(spans)) == [
        PaperInterruption("A", "B", 6.0, 6.5, 9.0, 3.2, 0.0, 9.3, 12.3)]
    # X waits for Y's end: no barge-in
    assert of(PaperInterruption, detect_paper_events({"A": [(0.0, 3.0), (6.6, 9.6)],
                                                      "B": [(3.2, 6.5), (9.9, 12.9)]})) == []
    for k, short in enumerate(([(0.01, 3.0), (6.0, 9.0)], [(3.51, 6.5), (9.3, 12.3)],
                               [(0.0, 3.0), (6.0, 8.99)], [(3.2, 6.5), (9.3, 12.29)])):
        bad = dict(spans)
        bad["AB"[k % 2]] = short  # one of the four utterances 2.99 s long
        assert of(PaperInterruption, detect_paper_events(bad)) == [], k


def test_segment_windows_carry_the_anchors_the_rewards_read():
    # A asks (0-6 s, a pause at 3 s), B answers (6.2-11.4), A barges in at 11.0, B answers at 14.8
    spans = {"A": [(0.0, 3.0), (3.5, 6.0), (11.0, 14.5)], "B": [(6.2, 11.4), (14.8, 20.0)]}
    events = detect_paper_events(spans)
    assert [type(e) for e in events] == [PaperPause, PaperTurn, PaperInterruption]
    segs = {s.axis: s for s in cut_paper_segments("d", 21.0, events, None, P, spans)}
    assert set(segs) == {"pause", "turn", "interruption"}
    pause, turn, intr = segs["pause"], segs["turn"], segs["interruption"]
    # pause: A's utterance, the listener silent throughout
    assert (pause.user, pause.start_s, pause.end_s, pause.event_s, pause.pause_end_s) == ("A", 0.0, 6.0, 3.0, 3.5)
    assert pause.reference_spans_s == () and pause.turn_end_s is None
    # turn: A's utterance, then B's answer to its end (whole frames)
    assert (turn.user, turn.start_s, turn.event_s, turn.response_s) == ("A", 0.0, 6.0, 6.2)
    assert turn.n_frames == 142 and turn.reference_spans_s == ((6.2, turn.end_s),)
    # interruption: from B's answer (the agent's forced prefix) to B's answer of the barge-in
    assert (intr.user, intr.reference, intr.start_s, intr.event_s) == ("A", "B", 6.2, 11.0)
    assert intr.agent_prefix_s == (6.2, 11.0) and intr.interruption_end_s == 14.5 and intr.reference_stop_s == 11.4
    assert intr.n_frames == 172  # 6.2 .. 19.96: through B's answer
    for s in segs.values():
        assert round(s.end_s - s.start_s, 6) == round(s.n_frames * 0.08, 6) and s.start_s <= s.event_s < s.end_s
    # windows are capped: at most after_max_s after the turn end, before_max_s before it
    short = PaperParams(after_max_s=2.0, before_max_s=4.0)
    turn2 = [s for s in cut_paper_segments("d", 21.0, events, None, short, spans) if s.axis == "turn"][0]
    assert (turn2.start_s, turn2.end_s) == (2.0, 8.0)


def test_a_backchannel_segment_is_the_holders_utterance():
    spans = {"A": [(1.0, 3.0), (3.8, 11.0)], "B": [(8.0, 8.4), (12.5, 16.0)]}
    events = detect_paper_events(spans)
    assert [type(e) for e in events] == [PaperBackchannel]  # B's "yeah" also rules out a pause
    (seg,) = cut_paper_segments("d", 17.0, events, None, P, spans)
    assert (seg.axis, seg.user, seg.start_s, seg.end_s, seg.event_s) == ("backchannel", "A", 1.0, 11.0, 8.0)
    assert seg.backchannels_s == ((8.0, 8.4),) and seg.reference_spans_s == ((8.0, 8.4),)


def test_a_pause_segment_is_the_utterance():
    spans = {"A": [(2.0, 4.0), (4.7, 7.5)], "B": [(8.0, 12.0)]}
    (seg,) = [s for s in cut_paper_segments("d", 13.0, detect_paper_events(spans), None, P, spans)
              if s.axis == "pause"]
    assert (seg.start_s, seg.event_s, seg.pause_end_s, seg.turn_end_s) == (2.0, 4.0, 4.7, None)
    assert 7.42 <= seg.end_s <= 7.5 and seg.reference_spans_s == ()  # B answers after the window


def test_events_round_trip_and_params_name_the_field():
    spans = {"A": [(0.0, 3.0), (6.0, 9.0), (9.5, 10.0)], "B": [(3.2, 6.5), (9.3, 12.3), (1.0, 1.3)]}
    for e in detect_paper_events(spans):
        assert paper_event_from_dict(paper_event_to_dict(e)) == e
    with pytest.raises(ValueError, match="turn_min_utterance_s"):
        PaperParams(turn_min_utterance_s=-1)
    with pytest.raises(ValueError, match="pause_max_s"):
        PaperParams(pause_max_s="1.0")
    with pytest.raises(ValueError, match="min_segment_s"):
        PaperParams(min_segment_s=40, max_segment_s=30)
