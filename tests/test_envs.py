"""The replay envs: Gymnasium's checker in every mode, vector envs, determinism, the forced
interruption prefix, and clear errors for bad actions and bad use."""

import gymnasium as gym
import numpy as np
import pytest
from duplexgym.envs import ENV_IDS
from duplexgym.envs.replay import DuplexReplayEnv, ResetNeeded
from gymnasium.utils.env_checker import check_env

MODES = [("codes", "tokens"), ("waveform", "waveform"), ("codes", "waveform"), ("waveform", "tokens")]


def run_episode(env, actions=None, rng=None, seed=None):
    obs, first = env.reset(seed=seed)
    stream, rewards = [obs], []
    done = False
    while not done:
        action = env.action_space.sample() if actions is None else actions(rng)
        obs, r, done, trunc, info = env.step(action)
        assert not trunc
        stream.append(obs)
        rewards.append(r)
    return np.stack(stream), np.array(rewards), info, first


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
@pytest.mark.parametrize("obs_mode, action_mode", MODES)
def test_gymnasium_env_checker(small_corpus, env_id, obs_mode, action_mode):
    env = gym.make(env_id, corpus=str(small_corpus), obs_mode=obs_mode, action_mode=action_mode)
    check_env(env.unwrapped, skip_render_check=True)


def test_registered_ids_and_episode_shape(small_corpus):
    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(small_corpus))
    stream, rewards, last, info = run_episode(env, seed=1)
    assert info["axis"] == "turn" and stream.shape[1:] == (8,) and stream.dtype == np.int64
    seg = env.unwrapped.corpus.by_id[info["segment"]]
    codes = env.unwrapped.corpus.codes(seg)[0]
    np.testing.assert_array_equal(stream[:-1], codes.T)
    assert len(rewards) == info["n_frames"] == seg.n_frames
    assert (stream[-1] == 0).all()  # after the last frame: zeros
    assert set(last["reward_terms"]["terms"]) == {"turn"}
    assert rewards[-1] == pytest.approx(last["reward_terms"]["reward"])


def test_waveform_observations_are_the_user_track(small_corpus):
    env = gym.make("duplexgym/PauseHandling-v0", corpus=str(small_corpus), obs_mode="waveform", action_mode="waveform")
    obs, info = env.reset(seed=3)
    audio = env.unwrapped.corpus.audio(env.unwrapped.corpus.by_id[info["segment"]])
    np.testing.assert_array_equal(obs, audio[0, :1920])
    obs, *_ = env.step(np.zeros(1920, np.float32))
    np.testing.assert_array_equal(obs, audio[0, 1920:3840])


def test_same_seed_same_episodes_bit_for_bit(small_corpus):
    def run(seed):
        env = gym.make("duplexgym/Interactivity-v0", corpus=str(small_corpus), rewards={"activity": {"reader": "text"}, "dense": {"weight": 0.2}})
        env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        high = np.array([32000] + [2048] * 8)
        out = []
        for _ in range(4):
            stream, rewards, info, _ = run_episode(env, lambda r: (r.integers(0, high) * (r.random() < 0.3)).astype(np.int64), rng)
            out.append((stream.tobytes(), rewards.tobytes(), info["reward_terms"]))
        return out

    first, second = run(7), run(7)
    assert first == second
    assert run(8) != first


def test_interruption_starts_with_a_forced_reference_prefix(small_corpus):
    env = gym.make("duplexgym/Interruption-v0", corpus=str(small_corpus))
    obs, info = env.reset(seed=0)
    k = info["forced_frames"]
    seg = env.unwrapped.corpus.by_id[info["segment"]]
    assert k == round((seg.event_s - seg.start_s) / 0.08) > 0 and info["forced"] is True
    forced = info["forced_prefix"].action
    assert info["forced_prefix"].frames == k
    assert forced.shape == (k, 9)
    np.testing.assert_array_equal(forced[:, 1:], env.unwrapped.corpus.codes(seg)[1, :, :k].T)
    assert (forced[:, 0] != 3).any()  # the reference speaks in its prefix: the text stream says so
    np.testing.assert_array_equal(info["forced_prefix"].audio, env.unwrapped.corpus.audio(seg)[1, : k * 1920])
    flags = []
    silent = np.array([3] + [0] * 8)
    done = False
    while not done:
        obs, r, done, _, step_info = env.step(silent)
        flags.append(step_info["forced"])
    assert flags == [True] * k + [False] * (info["n_frames"] - k)
    record = env.unwrapped.episode_record()
    np.testing.assert_array_equal(record.audio_codes[:, :k].T, forced[:, 1:])  # forced, whatever the action
    assert (record.text_tokens[k:] == 3).all() and record.forced_frames == k
    wave = gym.make("duplexgym/Interruption-v0", corpus=str(small_corpus), obs_mode="waveform", action_mode="waveform")
    _, winfo = wave.reset(seed=0)
    assert winfo["forced_prefix"].action.shape == (winfo["forced_frames"], 1920)


@pytest.mark.parametrize("vector_cls", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
def test_vector_envs(small_corpus, vector_cls):
    def make():
        import duplexgym  # noqa: F401  (registers the ids in subprocesses)

        # interruption episodes first: their forced prefixes differ in length between the envs
        return gym.make("duplexgym/Interactivity-v0", corpus=str(small_corpus),
                        axis_weights={"interruption": 3.0, "turn": 1.0, "pause": 1.0, "backchannel": 1.0})

    envs = vector_cls([make for _ in range(3)])
    try:
        obs, infos = envs.reset(seed=[1, 2, 3])
        assert obs.shape == (3, 8)
        assert [p.frames for p in infos["forced_prefix"]] == list(infos["forced_frames"])
        finished = 0
        for _ in range(250):
            obs, rewards, term, trunc, infos = envs.step(envs.action_space.sample())
            if term.any():
                assert "reward_terms" in infos
                finished += int(term.sum())
        assert finished >= 3
    finally:
        envs.close()


@pytest.mark.parametrize(
    "action, error",
    [
        (np.array([1.5] + [0] * 8), "must hold integers"),
        (np.array([np.nan] + [0] * 8), "NaN"),
        (np.array([32000] + [0] * 8), "text token 32000 is out of range"),
        (np.array([-1] + [0] * 8), "text token -1 is out of range"),
        (np.array([3, 0, 0, 2048, 0, 0, 0, 0, 0]), "audio token 2048 of codebook 2 is out of range"),
        (np.array([3, 0, 0, 0, 0, 0, 0, -5, 0]), "audio token -5 of codebook 6"),
        (np.zeros(8, np.int64), r"shape \(9,\)"),
        (np.zeros((2, 9), np.int64), r"shape \(9,\)"),
        (np.array(["a"] * 9), "integer array"),
    ],
)
def test_bad_token_actions(small_corpus, action, error):
    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(small_corpus)).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=error):
        env.step(action)
    env.step(np.array([3] + [0] * 8))  # the episode goes on after a refused action


@pytest.mark.parametrize(
    "action, error",
    [
        (np.full(1920, np.nan, np.float32), "NaN"),
        (np.full(1920, 1.5, np.float32), r"must lie in \[-1, 1\]"),
        (np.zeros(1000, np.float32), r"shape \(1920,\)"),
        (np.zeros(1920, np.int16), "floating point"),
    ],
)
def test_bad_waveform_actions(small_corpus, action, error):
    env = gym.make("duplexgym/PauseHandling-v0", corpus=str(small_corpus), obs_mode="waveform",
                   action_mode="waveform").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=error):
        env.step(action)


def test_step_before_reset_and_after_the_end(small_corpus):
    env = DuplexReplayEnv(small_corpus, axes=("pause",))
    with pytest.raises(ResetNeeded, match="call reset"):
        env.step(np.array([3] + [0] * 8))
    run_episode(env)
    with pytest.raises(ResetNeeded, match="episode ended"):
        env.step(np.array([3] + [0] * 8))


def test_bad_configuration_is_refused_with_a_reason(small_corpus, default_corpus, tmp_path):
    with pytest.raises(ValueError, match="built without --codec"):
        DuplexReplayEnv(default_corpus[0])
    with pytest.raises(ValueError, match="obs_mode"):
        DuplexReplayEnv(small_corpus, obs_mode="mel")
    with pytest.raises(ValueError, match="axis_weights names 'turn'"):
        DuplexReplayEnv(small_corpus, axes=("pause",), axis_weights={"turn": 1.0})
    with pytest.raises(ValueError, match="text stream"):
        DuplexReplayEnv(small_corpus, action_mode="waveform", obs_mode="waveform", rewards={"activity": {"reader": "text"}})
    env = DuplexReplayEnv(small_corpus, axes=("pause",))
    with pytest.raises(ValueError, match="no segment 'nope'"):
        env.reset(options={"segment": "nope"})
    with pytest.raises(ValueError, match="unknown key 'segmnt'"):
        env.reset(options={"segmnt": "x"})
    from duplexgym.corpora.errors import SourceError

    with pytest.raises(SourceError, match="corpus folder not found"):
        DuplexReplayEnv(tmp_path / "missing")


def test_axis_weights_mix_the_axes(small_corpus):
    env = DuplexReplayEnv(small_corpus, axis_weights={"pause": 1.0, "turn": 0.0, "backchannel": 0.0, "interruption": 3.0})
    env.reset(seed=0)
    axes = []
    for _ in range(200):
        _, info = env.reset()
        axes.append(info["axis"])
    assert set(axes) == {"pause", "interruption"}
    assert 0.6 < axes.count("interruption") / len(axes) < 0.9


def test_text_tokenizer_puts_the_agents_words_in_the_record(small_corpus):
    """Moshi's text stream decoded with a real 32000-piece SentencePiece model (mistral-common's)."""
    import importlib.resources

    sp_path = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_path))
    env = DuplexReplayEnv(small_corpus, axes=("turn",), text_tokenizer=str(sp_path))
    _, info = env.reset(seed=0)
    ids = sp.encode("okay let me answer that")
    stream = np.full(info["n_frames"], 3)
    start = info["event_frame"] + 6
    stream[start : start + 2 * len(ids) : 2] = ids
    for tok in stream:
        env.step(np.array([tok] + [0] * 8))
    rec = env.episode_record()
    assert rec.agent_text == "okay let me answer that"
    assert [w[2] for w in rec.agent_words] == ["okay", "let", "me", "answer", "that"]
    assert rec.agent_words[0][0] == pytest.approx(start * 0.08)
    with pytest.raises(ValueError, match="SentencePiece"):
        DuplexReplayEnv(small_corpus, text_tokenizer=str(small_corpus / "manifest.jsonl"))


def test_record_dir_saves_each_finished_episode(small_corpus, tmp_path):
    from duplexgym.rewards.record import EpisodeRecord

    env = DuplexReplayEnv(small_corpus, axes=("pause",), record_dir=tmp_path)
    _, rewards, last, info = run_episode(env, seed=4)
    saved = EpisodeRecord.load(last["record"])
    assert saved.segment.id == info["segment"] and saved.rewards.tobytes() == rewards.tobytes()
    run_episode(env)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_baselines_batched_over_a_vector_env(small_corpus):
    """PerRowBatch gives the baselines the batched protocol; each row replays its own episode: row r
    draws the segments a lone env seeded 11 + r draws, and each finished episode scores exactly what
    the oracle scores on that segment alone."""
    from duplexgym.agents.evaluation.rollout import play_episode
    from duplexgym.agents.policies import make_agent
    from duplexgym.agents.policies.base import PerRowBatch

    def make():
        return gym.make("duplexgym/Interactivity-v0", corpus=str(small_corpus))

    envs = gym.vector.SyncVectorEnv([make] * 3, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    agents = PerRowBatch([make_agent("oracle", envs.envs[i]) for i in range(3)])
    obs, infos = envs.reset(seed=11)
    agents.reset_batch(infos)
    playing = list(infos["segment"])
    finished: list[list[tuple[str, float]]] = [[], [], []]
    for _ in range(200):
        obs, _, term, _, infos = envs.step(agents.act_batch(obs))
        if term.any():  # same-step autoreset: the finished episodes' infos are merged in final_info
            final = infos["final_info"]["reward_terms"]
            for r in np.flatnonzero(term):
                finished[r].append((playing[r], float(final["reward"][r])))
                playing[r] = infos["segment"][r]
            agents.reset_batch(infos, mask=term)
    envs.close()
    assert sum(len(f) for f in finished) >= 3 and all(finished)
    lone = make()
    oracle = make_agent("oracle", lone)
    for r, episodes in enumerate(finished):
        lone.reset(seed=11 + r)  # the row's own seeded stream of segments
        drawn = [lone.unwrapped._segment.id] + [lone.reset()[1]["segment"] for _ in range(len(episodes) - 1)]
        assert [seg for seg, _ in episodes] == drawn, r
        for seg, reward in episodes:
            assert play_episode(lone, oracle, options={"segment": seg})["reward"] == reward, (r, seg)


def test_segment_sampler_draws_axes_by_weight_then_segments_among_the_ids(small_corpus):
    """The draw the env's reset and the GRPO env runners share (envs.corpus.SegmentSampler)."""
    from duplexgym.envs.corpus import ReplayCorpus, SegmentSampler

    corpus = ReplayCorpus(small_corpus)
    ids = [s.id for s in corpus.select(("pause",))[:2]] + [s.id for s in corpus.select(("turn",))[:3]]
    sampler = SegmentSampler(corpus, ("pause", "turn", "backchannel"), {"pause": 1.0, "turn": 3.0}, ids)
    assert sampler.axes == ["pause", "turn"]  # backchannel: no segment among the ids, and weight 0
    rng = np.random.default_rng(0)
    drawn = [sampler.draw(rng) for _ in range(2000)]
    assert {s.id for s in drawn} == set(ids)
    share = sum(s.axis == "turn" for s in drawn) / len(drawn)
    assert 0.72 < share < 0.78  # 3 : 1
    again = np.random.default_rng(0)
    assert [sampler.draw(again).id for _ in range(50)] == [s.id for s in drawn[:50]]  # seeded
    with pytest.raises(ValueError, match="axis_weights names 'interruption'"):
        SegmentSampler(corpus, ("pause",), {"interruption": 1.0})
    with pytest.raises(ValueError, match="leave no axis"):
        SegmentSampler(corpus, ("pause", "turn"), {"pause": 0.0, "turn": 0.0})
