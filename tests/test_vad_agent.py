"""The ``vad`` baseline: its rules on hand-made real-speech streams, and its score on the default corpus."""

import numpy as np
import pytest
from duplexgym.agents.evaluation.evaluate import evaluate, format_table
from duplexgym.agents.policies.vad_agent import (
    FORCED,
    StreamResampler,
    VadAgent,
    VadAgentParams,
)
from duplexgym.envs.corpus import ReplayCorpus

from duplexgym.constants import AXES, FRAME_S, FRAME_SAMPLES
from tests.conftest import place

RATE = 24_000


@pytest.fixture(scope="module")
def agent(default_corpus):
    corpus, _ = default_corpus
    return VadAgent(ReplayCorpus(corpus), "waveform")


def stream(length_s: float, clips: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A user track of real speech clips placed at given times over faint noise, as frames."""
    n = int(np.ceil(length_s / FRAME_S)) * FRAME_SAMPLES
    track = np.random.default_rng(3).standard_normal(n).astype(np.float32) * 1e-4
    spans = [place(track, clip, at) for clip, at in clips]
    return track.reshape(-1, FRAME_SAMPLES), spans


def run(agent, frames, forced_frames=0):
    agent.reset({"forced_frames": forced_frames})
    actions = np.stack([agent.act(f) for f in frames])
    return actions, np.array(agent.log)


def frames_where(log, what):
    return np.flatnonzero(log == what) * FRAME_S


def test_stream_resampler_equals_whole_signal_resampling():
    import soxr

    x = np.random.default_rng(0).standard_normal(FRAME_SAMPLES * 12).astype(np.float32) * 0.1
    r = StreamResampler()
    y = np.concatenate([r.push(f) for f in x.reshape(-1, FRAME_SAMPLES)])
    ref = soxr.resample(x, 24_000, 16_000, quality="HQ")
    assert len(ref) - 480 <= len(y) < len(ref)  # at most 30 ms held back
    np.testing.assert_array_equal(y, ref[: len(y)])
    r.reset()  # a new stream: the same samples again
    np.testing.assert_array_equal(np.concatenate([r.push(f) for f in x.reshape(-1, FRAME_SAMPLES)]), y)


def test_responds_after_the_turn_end(agent, speech):
    frames, [(_, end)] = stream(7.0, [(speech["a_long"], 0.3)])
    actions, log = run(agent, frames)
    speak = frames_where(log, "speak")
    assert len(speak), "no answer after the turn end"
    latency = speak[0] - end
    assert agent.params.silence_s - 0.1 <= latency <= agent.params.silence_s + 0.25, latency
    assert not (log[: int(end / FRAME_S)] == "speak").any()  # never while the user holds the turn
    first = int(np.flatnonzero(log == "speak")[0])
    np.testing.assert_array_equal(actions[first], agent._talk[0])  # the talk clip, from its start
    assert np.abs(actions[log == "-"]).max() == 0.0


def test_stops_when_the_user_starts_again(agent, speech):
    restart = 0.3 + len(speech["a_long"]) / RATE + 1.6
    frames, [(_, end), (again, again_end)] = stream(12.0, [(speech["a_long"], 0.3), (speech["a_short"], restart)])
    _, log = run(agent, frames)
    speak = frames_where(log, "speak")
    assert speak[0] < again, "should be answering when the user starts again"
    # the answer stops within stop_after_s (+ VAD and frame latency) of the user's restart ...
    during = speak[(speak >= again)]
    talked_over = during[during < again + 1.0]
    assert len(talked_over) * FRAME_S <= agent.params.stop_after_s + 0.25, talked_over
    # ... and stays off while the user speaks, then answers the new turn
    assert not ((speak > again + 0.5) & (speak < again_end)).any()
    assert (speak > again_end).any()


def test_backchannels_in_a_long_turn(agent, speech):
    a, b = speech["a_long"], speech["a_short"]
    second = 0.3 + len(a) / RATE + 0.12  # one turn: a short in-turn gap, no pause
    frames, [(start, _), (_, end)] = stream(second + len(b) / RATE + 0.4, [(a, 0.3), (b, second)])
    actions, log = run(agent, frames)
    bc = np.flatnonzero(log == "bc")
    assert len(bc) >= len(agent._bc), "no backchannel in a long turn"
    onsets = [f for f in bc if f == 0 or log[f - 1] != "bc"]
    assert (np.array(onsets) * FRAME_S >= start + agent.params.backchannel_after_s - 0.1).all()
    np.testing.assert_array_equal(actions[onsets[0] : onsets[0] + len(agent._bc)], agent._bc)
    assert not (log[: int(end / FRAME_S)] == "speak").any()  # a backchannel is not a takeover


def test_after_a_barge_in_on_the_forced_prefix_it_waits_then_answers(agent, speech):
    k = 25  # 2 s of forced agent speech; the user barges in at its end with a long turn
    frames, [(onset, end)] = stream(9.0, [(speech["a_long"], k * FRAME_S)])
    _, log = run(agent, frames, forced_frames=k)
    assert (log[:k] == "forced").all() and agent.mode != FORCED
    assert not np.isin(log[k : int(end / FRAME_S)], ["speak", "bc"]).any()  # silent, no backchannel
    speak = frames_where(log, "speak")
    assert len(speak) and end < speak[0] <= end + agent.params.silence_s + 0.25


def test_params_are_checked():
    with pytest.raises(ValueError, match="backchannel_pause_s"):
        VadAgentParams(silence_s=0.5, backchannel_pause_s=0.6)
    with pytest.raises(ValueError, match="neg_threshold"):
        VadAgentParams(threshold=0.3, neg_threshold=0.4)
    VadAgentParams(backchannel_after_s=float("inf"), backchannel_pause_s=float("inf"))


def test_tokens_actions_and_codes_observations(small_corpus):
    """Tokens mode: the clips' Mimi codes with text tokens; codes observations are decoded first."""
    import gymnasium as gym
    from duplexgym.agents.policies import make_agent
    from duplexgym.rewards.activity import TEXT_PAD_IDS

    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(small_corpus), obs_mode="codes", action_mode="tokens")
    agent = make_agent("vad", env)
    assert isinstance(agent, VadAgent) and agent.obs_mode == "codes" and agent.action_mode == "tokens"
    obs, info = env.reset(seed=0)
    agent.reset(info)
    done = False
    while not done:
        action = agent.act(obs)
        assert action.shape == (9,) and action.dtype == np.int64
        obs, _, done, _, info = env.step(action)
    assert "turn" in info["reward_terms"]["terms"]
    silence = np.asarray(ReplayCorpus(small_corpus).info["silence_codes"])
    np.testing.assert_array_equal(agent._silent[1:], silence)
    assert agent._silent[0] in TEXT_PAD_IDS
    assert agent._bc_actions[0, 0] not in TEXT_PAD_IDS and (agent._bc_actions[1:, 0] == agent._silent[0]).all()
    assert (agent._talk_actions[:, 0] != agent._silent[0]).sum() >= 8  # one word per 0.4 s of a 4 s answer


def test_vad_beats_silent_and_talk(default_corpus):
    """Overall score (mean of the per-axis reward means), waveform, silero-read rewards."""
    corpus, _ = default_corpus
    results = {a: evaluate(corpus, a, per_axis=12, seed=0, progress=False) for a in ("silent", "talk", "oracle", "vad")}
    print("\n" + format_table(list(results.values())))
    for r in results.values():
        assert r["failed"] == 0 and set(r["by_axis"]) == set(AXES)
    assert results["vad"]["overall"] > results["silent"]["overall"] + 0.2
    assert results["vad"]["overall"] > results["talk"]["overall"] + 0.2
    assert results["vad"]["by_axis"]["turn"]["reward_mean"] > 0.5  # answers turn ends on time
