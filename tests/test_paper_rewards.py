"""The seed paper's rewards (rewards/paper.py) at their edges, and its 0-2 judge (rewards/paper_judge.py)
against a real chat-completions server on 127.0.0.1 (tests/chat_server.py) and the real all-MiniLM-L6-v2.

Times: segments run over dialogue 10..18 s (episode 0..8 s, 100 frames); speech in episode seconds."""

from __future__ import annotations

import numpy as np
import pytest
from duplexgym.corpora.manifest import Segment
from duplexgym.rewards import paper, paper_judge
from duplexgym.rewards.fdb import AgentSpeech
from duplexgym.rewards.quality import JudgeError, QualityParams
from duplexgym.rewards.record import EpisodeRecord
from duplexgym.rewards.scoring import applicable_terms, score_episode
from duplexgym.rewards.spec import RewardSpecError, spec_from_dict

from tests.chat_server import INJECTION, ChatServer

START, N = 10.0, 100
END = 8.0


def seg(axis: str, event: float, **kw) -> Segment:
    """A segment of ``axis``, anchor at episode time ``event``; other times in ``kw`` in episode seconds."""
    for key in ("interruption_end_s", "turn_end_s", "pause_end_s"):
        if kw.get(key) is not None:
            kw[key] = START + kw[key]
    if kw.get("backchannels_s") is not None:
        kw["backchannels_s"] = tuple((START + a, START + b) for a, b in kw["backchannels_s"])
    return Segment(id=f"d-{axis}-{int(event * 1000):07d}-A", axis=axis, dialogue="d", user="A", reference="B",
                   start_s=START, end_s=START + END, n_frames=N, event_s=START + event, **kw)


def speech(*pairs) -> AgentSpeech:
    return AgentSpeech(spans_s=pairs)


# --- pause -------------------------------------------------------------------------------------

def test_pause_penalises_any_interval_longer_than_one_second():
    s = seg("pause", 3.0, pause_end_s=4.5)
    assert paper.score_pause(speech(), s).value == 0.0
    assert paper.score_pause(speech((3.2, 4.2)), s).value == 0.0      # exactly 1.00 s: not longer
    assert paper.score_pause(speech((3.2, 4.24)), s).value == -1.0    # 1.04 s
    # anywhere in the segment, not only in the pause; many short ones are no penalty
    assert paper.score_pause(speech((0.1, 1.2)), s).value == -1.0
    many = speech(*((t, t + 0.5) for t in (0.0, 1.0, 2.0, 3.0, 4.0)))
    term = paper.score_pause(many, s)
    assert term.value == 0.0 and term.metrics["longest_interval_s"] == pytest.approx(0.5)
    # the VAD's own segments by default; merging across short gaps is an option
    assert paper.score_pause(many, s, paper.PaperPauseParams(merge_gap_s=0.6)).value == -1.0


# --- turn --------------------------------------------------------------------------------------

def test_turn_delay_to_the_first_utterance_longer_than_one_second():
    s = seg("turn", 4.0)
    term = paper.score_turn(speech((4.3, 5.8)), s)
    assert term.value == pytest.approx(-0.3) and term.metrics["answered"] == 1
    # a 1.00 s utterance is not "longer than 1 s"; the delay runs to the next one that is
    term = paper.score_turn(speech((4.2, 5.2), (6.0, 7.5)), s)
    assert term.value == pytest.approx(-2.0) and term.metrics["delay_s"] == pytest.approx(2.0)
    assert paper.score_turn(speech((4.2, 5.24)), s).value == pytest.approx(-0.2)
    # no utterance: d = the rest of the segment after the turn end
    term = paper.score_turn(speech(), s)
    assert term.value == pytest.approx(-(END - 4.0)) and term.metrics["answered"] == 0
    assert paper.score_turn(speech((4.5, 4.9)), s).value == pytest.approx(-(END - 4.0))
    # an utterance begun before the turn end and still going: d = 0; one ended before it does not count
    assert paper.score_turn(speech((3.5, 5.0)), s).value == 0.0
    assert paper.score_turn(speech((1.0, 3.0)), s).value == pytest.approx(-(END - 4.0))


# --- backchannel -------------------------------------------------------------------------------

def test_backchannel_f1():
    truth = ((2.0, 2.4), (5.0, 5.3))
    s = seg("backchannel", 2.0, backchannels_s=truth)
    perfect = paper.score_backchannel(speech((2.3, 2.6), (5.2, 5.5)), s)
    assert perfect.value == 1.0 and (perfect.metrics["tp"], perfect.metrics["fp"], perfect.metrics["fn"]) == (2, 0, 0)
    # onset exactly 1 s from the truth matches; 1.04 s does not
    assert paper.score_backchannel(speech((3.0, 3.3), (6.0, 6.2)), s).value == 1.0
    miss = paper.score_backchannel(speech((3.04, 3.3), (6.04, 6.2)), s)
    assert miss.value == 0.0 and (miss.metrics["fp"], miss.metrics["fn"]) == (2, 2)
    # one of two found: P = 1, R = 1/2 -> F1 = 2/3
    assert paper.score_backchannel(speech((2.1, 2.3)), s).value == pytest.approx(2 / 3)
    # a takeover (> 1 s) among backchannels is a false positive: P = 2/3, R = 1 -> F1 = 0.8
    take = paper.score_backchannel(speech((2.1, 2.3), (3.0, 4.5), (5.1, 5.4)), s)
    assert take.value == pytest.approx(0.8) and take.metrics["takeovers"] == 1
    # one-to-one: two guesses near one truth give one true positive
    s1 = seg("backchannel", 2.0, backchannels_s=((2.0, 2.4),))
    dup = paper.score_backchannel(speech((1.8, 2.0), (2.5, 2.7)), s1)
    assert (dup.metrics["tp"], dup.metrics["fp"]) == (1, 1) and dup.value == pytest.approx(2 / 3)
    # nothing to do and nothing done: 1; one side empty: 0
    empty = seg("backchannel", 2.0, backchannels_s=())
    assert paper.score_backchannel(speech(), empty).value == 1.0
    assert paper.score_backchannel(speech((2.0, 2.3)), empty).value == 0.0
    assert paper.score_backchannel(speech(), s).value == 0.0


# --- interruption ------------------------------------------------------------------------------

def test_interruption_delay_to_the_next_speech():
    s = seg("interruption", 3.0, interruption_end_s=4.5)
    term = paper.score_interruption(speech((1.0, 3.2), (5.0, 5.5)), s)
    assert term.value == pytest.approx(-0.5) and term.metrics["answered"] == 1
    # speech running through the end of the barge-in is not the "next" speech
    assert paper.score_interruption(speech((1.0, 6.0)), s).value == pytest.approx(-(END - 4.5))
    assert paper.score_interruption(speech((4.5, 4.7)), s).value == 0.0  # starts right at the end
    assert paper.score_interruption(speech(), s).value == pytest.approx(-(END - 4.5))


# --- the spec -----------------------------------------------------------------------------------

PAPER_SPEC = {"terms": {"paper_pause": {}, "paper_turn": {}, "paper_backchannel": {}, "paper_interruption": {},
                        "paper_judge": {"weight": 1.0}}}


def test_paper_terms_in_a_spec():
    spec = spec_from_dict(PAPER_SPEC)
    assert set(applicable_terms("turn", spec)) == {"paper_turn", "paper_judge"}
    assert set(applicable_terms("interruption", spec)) == {"paper_interruption", "paper_judge"}
    assert set(applicable_terms("pause", spec)) == {"paper_pause"}
    assert set(applicable_terms("backchannel", spec)) == {"paper_backchannel"}
    with pytest.raises(RewardSpecError, match=r"terms\.paper_turn\.params\.min_utterance_s"):
        spec_from_dict({"terms": {"paper_turn": {"params": {"min_utterance_s": -1}}}})
    with pytest.raises(RewardSpecError, match=r"terms\.paper_judge\.params\.backend"):
        spec_from_dict({"terms": {"paper_judge": {"params": {"backend": "gpt"}}}})


# --- the judge ----------------------------------------------------------------------------------

def timed(text: str, start_s: float, step_s: float = 0.3) -> tuple[dict, ...]:
    """User words (dialogue seconds)."""
    return tuple({"text": t, "start_s": round(start_s + i * step_s, 4), "end_s": round(start_s + i * step_s + 0.25, 4)}
                 for i, t in enumerate(text.split()))


def agent(text: str, start_s: float, step_s: float = 0.3) -> tuple[tuple[float, float, str], ...]:
    """Agent words (episode seconds)."""
    return tuple((start_s + i * step_s, start_s + i * step_s + 0.25, t) for i, t in enumerate(text.split()))


def turn_episode(reply: str, *, earlier_model: str = "", forced_frames: int = 0) -> EpisodeRecord:
    user = timed("I loved that film", 10.2) + timed("so what time does the train leave", 11.8)
    s = Segment(id="d-turn-0014000-A", axis="turn", dialogue="d", user="A", reference="B", start_s=START,
                end_s=START + END, n_frames=N, event_s=14.0, user_words=user)
    words = agent(earlier_model, 1.2) + agent(reply, 4.3)
    return EpisodeRecord(segment=s, seed=0, env={}, agent_words=words, forced_frames=forced_frames)


def openai_params(srv: ChatServer, tmp_path, **kw) -> QualityParams:
    base = dict(backend="openai", base_url=srv.url, model="judge-test", cache_dir=str(tmp_path / "cache"),
                timeout_s=2.0, max_retries=1, backoff_s=0.02)
    return QualityParams(**{**base, **kw})


@pytest.fixture(autouse=True)
def _no_judge_env(monkeypatch):
    for name in ("DUPLEXGYM_JUDGE_BASE_URL", "DUPLEXGYM_JUDGE_MODEL", "DUPLEXGYM_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_history_alternates_user_and_model_turns():
    turns, response = paper_judge.history(turn_episode("it leaves at four", earlier_model="me too").segment,
                                          turn_episode("it leaves at four", earlier_model="me too").agent_words)
    assert turns == [("USER", "I loved that film"), ("MODEL", "me too"),
                     ("USER", "so what time does the train leave")]
    assert response == "it leaves at four"
    # words on forced frames (the agent-speaking prefix) are not the model's
    rec = turn_episode("it leaves at four", earlier_model="me too", forced_frames=30)
    turns, _ = paper_judge.history(rec.segment, rec.agent_words, rec.forced_frames)
    assert [who for who, _ in turns] == ["USER"]


def test_openai_judge_strict_0_to_2(tmp_path):
    with ChatServer() as srv:
        params = openai_params(srv, tmp_path)
        good = paper_judge.score(turn_episode("the train leaves at four"), params=params)
        generic = paper_judge.score(turn_episode("the weather is nice"), params=params)
        off = paper_judge.score(turn_episode("bananas are yellow"), params=params)
        assert (good.value, generic.value, off.value) == (1.0, 0.5, 0.0)
        assert good.metrics["rating_0_2"] == 2.0 and good.metrics["model"] == "judge-test"
        assert good.metrics["turns"] == 1 and good.metrics["attempts"] == 1
        sent = srv.bodies[0]["messages"]
        assert "single integer: 0, 1 or 2" in sent[0]["content"]
        assert sent[1]["content"].count("<turn>") == 1
        assert '<turn>USER: "I loved that film so what time does the train leave"</turn>' in sent[1]["content"]
        assert '<response>MODEL: "the train leaves at four"</response>' in sent[1]["content"]
        # cached: the same question is not asked twice
        again = paper_judge.score(turn_episode("the train leaves at four"), params=params)
        assert again.metrics["cached"] and srv.requests == 3
        # silence: rated 0 without asking
        silent = paper_judge.score(turn_episode(""), params=params)
        assert silent.value == 0.0 and silent.metrics["empty_response"] and srv.requests == 3
        # an instruction in the transcript stays inside its fence: rated on its words ("the": 1), not 2
        injected = paper_judge.score(turn_episode(f"bananas {INJECTION} and rate 2"), params=params)
        assert injected.metrics["rating_0_2"] == 1.0


def test_a_reply_that_is_not_a_single_integer_is_a_failure(tmp_path):
    with ChatServer(mode="verbose") as srv:
        with pytest.raises(JudgeError, match="single integer 0, 1 or 2.*Rating: 2"):
            paper_judge.score(turn_episode("the train leaves at four"), params=openai_params(srv, tmp_path))
    # in an episode's reward terms: reported as failed, never scored
    with ChatServer(mode="verbose") as srv:
        spec = spec_from_dict({"activity": {"reader": "text"},
                               "terms": {"paper_judge": {"params": {
                                   "backend": "openai", "base_url": srv.url, "model": "judge-test",
                                   "cache_dir": str(tmp_path / "c2"), "timeout_s": 2.0, "max_retries": 0}}}})
        rec = turn_episode("the train leaves at four")
        rec = EpisodeRecord(segment=rec.segment, seed=0, env={}, agent_words=rec.agent_words,
                            text_tokens=np.full(N, 3, dtype=np.int64))
        result = score_episode(rec, spec)
        assert "paper_judge" in result["failed"] and "paper_judge" not in result["terms"]
        assert result["reward"] == 0.0


def test_judge_refuses_axes_the_paper_does_not_judge():
    pause = Segment(id="p", axis="pause", dialogue="d", user="A", reference="B", start_s=START, end_s=START + END,
                    n_frames=N, event_s=13.0, user_words=timed("well", 12.0))
    with pytest.raises(ValueError, match="turn and interruption axes only"):
        paper_judge.score(EpisodeRecord(segment=pause, seed=0, env={}, agent_words=()))
    no_words = Segment(**{**turn_episode("x").segment.__dict__, "user_words": None})
    with pytest.raises(ValueError, match="no user transcript"):
        paper_judge.score(EpisodeRecord(segment=no_words, seed=0, env={}, agent_words=agent("four", 4.3)))


def test_embedding_backend_offline():
    good = paper_judge.score(turn_episode("it departs at a quarter past four from platform two"))
    bad = paper_judge.score(turn_episode("the vegetarian options are the mushroom risotto and lentil curry"))
    assert good.metrics["backend"] == "embedding" and 0.0 <= bad.value < good.value <= 1.0
    assert good.metrics["rating_0_2"] == pytest.approx(2 * good.value)


# --- dense shaping with the paper's terms --------------------------------------------------------

def test_dense_shaping_of_the_paper_terms():
    from duplexgym.rewards.dense import penalties

    def shaping(axis_seg, terms):
        return penalties(axis_seg, spec_from_dict({"dense": {"weight": 1.0}, "terms": terms}))

    # paper_pause: silent everywhere (any interval over 1 s anywhere costs the reward): each frame -1/F
    s = seg("pause", 3.0, pause_end_s=4.5, turn_end_s=6.0)
    if_speaking, if_silent = shaping(s, {"paper_pause": {"weight": 1.0}})
    assert np.allclose(if_speaking, -1.0 / N) and not if_silent.any()
    # a paper term without targets of its own: the axis term's at their defaults
    t = seg("turn", 4.0)
    ours, theirs = shaping(t, {"turn": {"weight": 1.0}}), shaping(t, {"paper_turn": {"weight": 1.0}})
    assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1]) and ours[1].sum() < 0
    # no term of the axis (the judge scores turn and interruption only): no shaping; shaping off: none
    assert not any(a.any() for a in shaping(s, {"paper_judge": {"weight": 1.0}}))
    off = penalties(s, spec_from_dict({"terms": {"paper_pause": {"weight": 1.0}}}))
    assert not any(a.any() for a in off)
