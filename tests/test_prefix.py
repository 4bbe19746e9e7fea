"""Episodes that begin before the segment: a lead-in of user silence (the agent speaks freely) and the
conversation's context (both sides teacher-forced). Rewards see the segment alone; records keep the
prefix for replay; the trainer leaves every prefix frame out of the loss."""

import gymnasium as gym
import numpy as np
import pytest
from duplexgym.agents.evaluation.replay import replay_check
from duplexgym.agents.policies import make_agent
from duplexgym.constants import FRAME_S, TEXT_PAD
from duplexgym.envs.corpus import ReplayCorpus


def _segment_with_context(corpus, axis: str, frames: int):
    segs = [s for s in ReplayCorpus(corpus).select((axis,)) if (s.context_s or 0) >= frames * FRAME_S]
    assert segs, f"no {axis} segment with {frames} frames of context in the corpus"
    return segs[0]


def _play(env, plan, options, seed=0):
    """Reset with ``options`` and play ``plan(t, info)``; (reward_terms, infos of every step, reset info)."""
    obs, info = env.reset(seed=seed, options=options)
    steps, done, t = [], False, 0
    while not done:
        obs, _, done, _, step = env.step(plan(t, info))
        steps.append(step)
        t += 1
    return step["reward_terms"], steps, info


def test_lead_in_and_context_lay_out_the_episode_and_rewards_ignore_them(small_corpus, tmp_path):
    corpus = ReplayCorpus(small_corpus)
    seg = _segment_with_context(small_corpus, "interruption", 25)
    env = gym.make("duplexgym/Interruption-v0", corpus=str(small_corpus), record_dir=tmp_path)
    oracle = make_agent("oracle", env).plan(seg)  # [F, 9] the human reference, per segment frame
    silence = np.concatenate([[TEXT_PAD], corpus.info["silence_codes"]]).astype(np.int64)

    plain, _, _ = _play(env, lambda t, info: oracle[t], {"segment": seg.id})
    lead, ctx = 5, 25

    def with_prefix(t, info):
        p = info["prefix_frames"]
        return silence if t < p else oracle[t - p]

    terms, steps, info = _play(env, with_prefix, {"segment": seg.id, "lead_in_s": lead * FRAME_S,
                                                  "context_s": ctx * FRAME_S})
    assert (info["lead_in_frames"], info["context_frames"], info["prefix_frames"]) == (lead, ctx, lead + ctx)
    assert info["n_frames"] == lead + ctx + seg.n_frames == len(steps)
    assert terms == plain  # the rewards see the segment alone
    # observations: silence codes, then the user's context, then the segment
    stream = env.unwrapped._obs  # the episode just played
    audio, codes = corpus.context(seg, ctx * FRAME_S)
    np.testing.assert_array_equal(stream[:lead], np.tile(corpus.info["silence_codes"], (lead, 1)))
    np.testing.assert_array_equal(stream[lead:lead + ctx], codes[0].T)
    np.testing.assert_array_equal(stream[lead + ctx:lead + ctx + seg.n_frames], corpus.codes(seg)[0].T)
    # forced: the context (the reference's codes, padding text) and the interruption prefix; the lead-in is free
    prefix = info["forced_prefix"]
    k = seg_forced = int(round((seg.agent_prefix_s[1] - seg.start_s) / FRAME_S))
    assert prefix.frames == lead + ctx + seg_forced
    np.testing.assert_array_equal(prefix.forced(), [False] * lead + [True] * (ctx + k))
    np.testing.assert_array_equal(prefix.action[lead:lead + ctx, 1:], codes[1].T)
    assert (prefix.action[lead:lead + ctx, 0] == TEXT_PAD).all()
    np.testing.assert_array_equal(prefix.audio[lead * 1920:(lead + ctx) * 1920], audio[1])
    assert [s["forced"] for s in steps] == [False] * lead + [True] * (ctx + k) + [False] * (seg.n_frames - k)
    assert [s["in_segment"] for s in steps] == [False] * (lead + ctx) + [True] * seg.n_frames
    # the record: the segment's arrays, the prefix beside them, bit for bit what was played
    record = env.unwrapped.episode_record()
    assert record.n_frames == seg.n_frames and len(record.text_tokens) == seg.n_frames
    assert record.prefix["lead_in_frames"] == lead and record.prefix["context_frames"] == ctx
    np.testing.assert_array_equal(record.prefix["audio_codes"][:, lead:], codes[1])  # the forced context
    np.testing.assert_array_equal(record.prefix["audio_codes"][:, :lead].T, np.tile(silence[1:], (lead, 1)))
    path = sorted(tmp_path.glob("*.json"))[-1]
    result = replay_check(path)
    assert result["ok"], result["mismatches"]
    assert result["steps"] == lead + ctx + seg.n_frames


def test_context_is_clipped_to_what_the_corpus_stores_and_bad_options_are_refused(small_corpus):
    seg = min(ReplayCorpus(small_corpus).segments, key=lambda s: s.context_s or 0)
    env = gym.make("duplexgym/Interactivity-v0", corpus=str(small_corpus))
    _, info = env.reset(options={"segment": seg.id, "context_s": 1000.0})
    assert info["context_frames"] == int(round((seg.context_s or 0) / FRAME_S))
    for bad in (-1.0, float("nan"), "2", True):
        with pytest.raises(ValueError, match="context_s must be a number of seconds"):
            env.reset(options={"segment": seg.id, "context_s": bad})
    with pytest.raises(ValueError, match="lead_in_s"):
        gym.make("duplexgym/Interactivity-v0", corpus=str(small_corpus), lead_in_s=-3)


def test_moshi_is_teacher_forced_through_the_context_and_free_in_the_lead_in(small_corpus):
    seg = _segment_with_context(small_corpus, "turn", 12)
    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(small_corpus))
    agent = make_agent("moshi", env)
    try:
        lead, ctx = 4, 12
        obs, info = env.reset(seed=0, options={"segment": seg.id, "lead_in_s": lead * FRAME_S, "context_s": ctx * FRAME_S})
        agent.reset(info)
        actions, done = [], False
        while not done:
            a = agent.act(obs)
            actions.append(a)
            obs, _, done, _, _ = env.step(a)
        actions = np.stack(actions)
        forced = info["forced_prefix"]
        # the agent's own outputs on the context frames are the forced tokens, read back from its streams
        np.testing.assert_array_equal(actions[lead:lead + ctx], forced.action[lead:lead + ctx])
        assert not np.array_equal(actions[1:lead], np.tile(forced.action[0], (lead - 1, 1)))  # free in the lead-in
    finally:
        agent.close()


@pytest.mark.slow
def test_training_leaves_the_prefix_out_of_the_loss_and_follows_the_context_schedule(small_corpus, tmp_path):
    from duplexgym.agents.training import driver
    from duplexgym.agents.training.batch import FORCED
    from duplexgym.agents.training.config import load_train_config

    cfg = load_train_config({"corpus": str(small_corpus), "out": str(tmp_path / "run"), "group_size": 2,
                             "segments_per_iteration": 2, "iterations": 2, "axes": ["turn"], "seed": 5,
                             "lead_in_silence_s": 0.4, "context": {"p": 1.0, "max_s": 2.0, "schedule": "linear"}})
    seen = []
    driver.train_policy(cfg, on_iteration=lambda algo, m: seen.append((m, list(algo.last_episodes))))
    limits = [0.0, 2.0]  # linear from 0 at the first iteration to max_s at the last
    for (m, episodes), limit in zip(seen, limits):
        assert np.isfinite(m["loss"])
        groups: dict = {}
        for e in episodes:
            p, c = e.custom_data["prefix_frames"], e.custom_data["context_frames"]
            assert p == 5 + c and c * FRAME_S <= limit + 1e-9
            masked = e.get_extra_model_outputs(FORCED)
            assert masked[:p].all()  # lead-in and context: never in the loss
            assert not masked[p:].any()  # turn segments force nothing
            groups.setdefault(e.custom_data["group"], set()).add(c)
        assert all(len(c) == 1 for c in groups.values())  # a group shares its context
    assert any(e.custom_data["context_frames"] > 0 for e in seen[1][1])
