"""Conversation-v0: the env contract, the simulated user's rules and every timing parameter at its
edges, seeded determinism, and replay / rescore of live records.

The agents here are real duplexgym agents (silent, talk) or small scripted ones that listen to the
user's real TTS audio (frame energy) and speak on Moshi's text stream: tokens actions with
waveform observations, so no codec work and no silero run per frame; the env reads the agent from
its text stream as it does for Moshi."""

import json

import gymnasium as gym
import numpy as np
import pytest
from duplexgym.agents.evaluation.live import replay_check_live, rescore_record
from duplexgym.agents.policies import make_agent
from duplexgym.envs.conversation import ConversationEnv
from duplexgym.envs.replay import ResetNeeded
from duplexgym.envs.simulated_user import UserParams
from duplexgym.rewards.record import EpisodeRecord
from scipy.stats import binomtest

from duplexgym.constants import FRAME_S, FRAME_SAMPLES, TEXT_PAD

SPEECH = 1000  # any text token that is not padding reads as speech
#: A short script: three turns, one with a pause.
SCRIPT = {"dialogues": [
    {"id": "t1", "task": "daily", "goal": "book a table", "voice": "slt",
     "lines": ["hello I would like to book a table", "for four people ... on friday", "thanks a lot"]},
    {"id": "t2", "task": "correction", "goal": "change a flight", "voice": "rms",
     "lines": ["I need to change my flight", "sorry I meant tuesday", "please confirm the date"]},
]}


class Scripted:
    """Hears the user by frame energy; speaks (text tokens) as its rule says. ``rule``:
    ``"answer"``: ``length`` frames, ``delay`` frames after the user stops; ``"cut_in"``:
    ``length`` frames once the user has spoken ``delay`` frames of an utterance; ``"brief"``: a
    ``length``-frame blip after each user utterance."""

    name = "scripted"

    def __init__(self, rule="answer", delay=6, length=25):
        self.rule, self.delay, self.length = rule, delay, length

    def reset(self, info):
        self.user_run, self.user_silent = 0, 8
        self.left = 0
        self.heard = False
        self.cut_done = False

    def act(self, obs):
        voiced = float(np.dot(obs, obs)) > 1e-2 * 1e-2 * FRAME_SAMPLES
        if voiced:
            if self.user_silent >= 8:  # a new user utterance (not a dip inside a word)
                self.user_run, self.cut_done = 0, False
            self.user_run += 1
            self.user_silent = 0
            self.heard = True
        else:
            self.user_silent += 1
        if self.left == 0:
            if self.rule in ("answer", "brief") and self.heard and self.user_silent == self.delay:
                self.left, self.heard = self.length, False
            if self.rule == "cut_in" and self.user_run >= self.delay and not self.cut_done:
                self.left, self.cut_done = self.length, True
        action = np.zeros(9, dtype=np.int64)
        action[0] = TEXT_PAD
        if self.left:
            self.left -= 1
            action[0] = SPEECH
        return action


def make_env(corpus, **kw):
    kw.setdefault("user", "script")
    kw.setdefault("script", SCRIPT)
    kw.setdefault("obs_mode", "waveform")
    kw.setdefault("action_mode", "tokens")
    kw.setdefault("max_s", 12.0)
    return ConversationEnv(corpus, **kw)


def play(env, agent, options=None, seed=None):
    obs, info = env.reset(seed=seed, options=options)
    agent.reset(info)
    done, steps = False, 0
    while not done:
        obs, _, done, _, info = env.step(agent.act(obs))
        steps += 1
    return info


def floor(info):
    return [e for e in info["live"]["schedule"] if e["kind"] != "backchannel"]


# ----------------------------------------------------------------------------- the contract


def test_make_check_env_and_vector_env(small_corpus):
    from gymnasium.utils.env_checker import check_env

    env = gym.make("duplexgym/Conversation-v0", corpus=str(small_corpus), user="script", max_s=4.0)
    base = env.unwrapped
    assert base.observation_space.shape == (8,) and base.action_space.shape == (9,)  # the replay envs' spaces
    check_env(base, skip_render_check=True)
    vec = gym.vector.SyncVectorEnv([lambda: make_env(small_corpus, max_s=2.0) for _ in range(2)])
    obs, infos = vec.reset(seed=3)
    assert obs.shape == (2, FRAME_SAMPLES) and list(infos["axis"]) == ["conversation"] * 2
    for _ in range(30):  # past the end of the 25-frame dialogues: autoreset
        obs, r, term, trunc, infos = vec.step(np.tile(np.r_[TEXT_PAD, np.zeros(8, np.int64)], (2, 1)))
    vec.close()


def test_reset_info_steps_and_end(small_corpus):
    env = make_env(small_corpus)
    obs, info = env.reset(seed=0)
    assert not obs.any()  # the user starts silent
    assert info["axis"] == "conversation" and info["n_frames"] == 150 and info["forced_frames"] == 0
    assert info["dialogue"] in ("t1", "t2") and info["goal"] in ("book a table", "change a flight")
    assert env.corpus.by_id[info["segment"]].n_frames == 150  # the baselines find their episode
    with pytest.raises(ValueError, match="unknown key 'segment'"):
        env.reset(options={"segment": "x"})
    with pytest.raises(ValueError, match="no dialogue 'nope'"):
        env.reset(options={"dialogue": "nope"})
    with pytest.raises(ResetNeeded):
        ConversationEnv(small_corpus, user="script", obs_mode="waveform", action_mode="waveform").step(
            np.zeros(FRAME_SAMPLES, np.float32))
    info = play(env, make_agent("silent", env), {"dialogue": "t1", "user_seed": 1})
    assert info["n_frames"] == 150 and info["live"]["end"] == "max_s"
    with pytest.raises(ResetNeeded, match="dialogue ended"):
        env.step(np.r_[TEXT_PAD, np.zeros(8, np.int64)])
    rec = env.episode_record()
    assert rec.segment.axis == "conversation" and rec.n_frames == 150 and rec.live["dialogue"] == "t1"


def test_bad_arguments_name_the_field(small_corpus):
    with pytest.raises(ValueError, match=r"user_params\.yield_p: must be <= 1, got 1.5"):
        make_env(small_corpus, user_params={"yield_p": 1.5})
    with pytest.raises(ValueError, match=r"user_params.*yield_reaction_s must be \(lo, hi\)"):
        make_env(small_corpus, user_params={"yield_reaction_s": (0.5, 0.2)})
    with pytest.raises(ValueError, match=r"user_params\.gap_sigma: expected a number, got 'wide'"):
        make_env(small_corpus, user_params={"gap_sigma": "wide"})
    with pytest.raises(ValueError, match=r"user_params.*unknown field 'yeild_p'; did you mean 'yield_p'"):
        make_env(small_corpus, user_params={"yeild_p": 0.3})
    with pytest.raises(ValueError, match=r"user_params\.reprompt_s: must be > 0"):
        make_env(small_corpus, user_params={"reprompt_s": 0})
    with pytest.raises(ValueError, match="max_s must be a number in"):
        make_env(small_corpus, max_s=0)
    with pytest.raises(ValueError, match="max_turns must be a whole number"):
        make_env(small_corpus, max_turns=0)
    with pytest.raises(ValueError, match=r"scoring\.long_silence_s"):
        make_env(small_corpus, scoring={"long_silence_s": -1})
    with pytest.raises(ValueError, match="user must be one of replay, script, llm"):
        make_env(small_corpus, user="tts")
    with pytest.raises(ValueError, match="needs a server that writes the user.s lines: llm="):
        make_env(small_corpus, user="llm")


# ----------------------------------------------------------------------------- the user's rules


def test_waits_answers_after_a_gap_and_never_overlaps_itself(small_corpus):
    env = make_env(small_corpus, max_s=15.0, user_params={"gap_sigma": 0.0, "gap_median_s": 0.4, "pause_s": (0.3, 0.3)})
    agent = Scripted("answer", delay=6, length=20)  # answers after 0.48 s of silence: not in the 0.3 s pause
    info = play(env, agent, {"dialogue": "t1", "user_seed": 0})
    turns = floor(info)
    assert [e["why"] for e in turns] == ["opening", "answer", "answer"]
    tokens = env.episode_record().text_tokens
    for prev, nxt in zip(turns, turns[1:]):
        said = np.flatnonzero(tokens[prev["end_frame"]:nxt["start_frame"]] != TEXT_PAD) + prev["end_frame"]
        speech_end = said[-1] + 5  # a text-stream word lasts 0.4 s
        assert nxt["start_frame"] - speech_end == 5  # exactly the 0.4 s gap (gap_sigma 0)
    spans = sorted((e["start_frame"], e["end_frame"]) for e in info["live"]["schedule"])
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    t = info["reward_terms"]["timing"]
    assert t["answered_share"] == 1.0 and t["cut_ins"] == 0


@pytest.mark.parametrize("agent_name", ["silent", "talk", "cut_in", "brief"])
def test_the_user_never_talks_over_its_own_previous_utterance(small_corpus, agent_name):
    env = make_env(small_corpus, max_s=20.0, user_params={"backchannel_per_min": 40.0, "barge_in_s": 2.0,
                                                          "barge_in_p": 0.5, "reprompt_p": 1.0, "max_reprompts": 2})
    agent = make_agent(agent_name, env) if agent_name in ("silent", "talk") else \
        Scripted(agent_name, 5, 20 if agent_name == "cut_in" else 1)
    kinds = set()
    for seed in range(6):
        info = play(env, agent, {"dialogue": seed % 2, "user_seed": seed})
        spans = sorted((e["start_frame"], e["end_frame"]) for e in info["live"]["schedule"])
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
        kinds |= {(e["kind"], e["why"]) for e in info["live"]["schedule"]}
        # the observations hold the user's audio exactly where the schedule says, silence elsewhere
        audio = env.user_audio().reshape(-1, FRAME_SAMPLES)
        busy = np.zeros(len(audio), bool)
        for a, b in spans:
            busy[a:b] = True
        assert not audio[~busy].any()
    expected = {"silent": {("reprompt", "reprompt"), ("turn", "no_answer")},
                "talk": {("turn", "barge_in"), ("backchannel", "backchannel")},
                "cut_in": {("turn", "answer")}, "brief": {("reprompt", "reprompt"), ("turn", "no_answer")}}[agent_name]
    assert expected <= kinds, kinds


def yield_decisions(corpus, yield_p, seeds):
    env = make_env(corpus, max_s=14.0, user_params={"yield_p": yield_p})
    agent = Scripted("cut_in", delay=6, length=25)
    what = []
    for seed in seeds:
        info = play(env, agent, {"dialogue": seed % 2, "user_seed": seed})
        what += [d["what"] for d in info["live"]["decisions"] if d["what"] in ("yield", "talk_on")]
        for d in info["live"]["decisions"]:
            if d["what"] == "yield":
                lo, hi = (round(x / FRAME_S) for x in UserParams().yield_reaction_s)
                assert lo <= d["stop_frame"] - d["frame"] <= hi
                entry = info["live"]["schedule"][d["utterance"]]  # stops then, unless its turn ended first
                assert entry["end_frame"] <= d["stop_frame"]
                assert (entry["cut"] == "yield") == (entry["end_frame"] == d["stop_frame"])
    return what


@pytest.mark.parametrize("yield_p", [0.5, 0.2])
def test_a_cutting_in_agent_makes_the_user_yield_at_yield_p(small_corpus, yield_p):
    what = yield_decisions(small_corpus, yield_p, range(60))
    n, k = len(what), what.count("yield")
    assert n >= 120
    ci = binomtest(k, n, yield_p).proportion_ci(confidence_level=0.999)
    assert ci.low <= yield_p <= ci.high, (k, n, ci)
    print(f"yield_p {yield_p}: {k}/{n} = {k / n:.3f}, 99.9% CI [{ci.low:.3f}, {ci.high:.3f}]")


def test_yield_p_yield_reaction_s_and_cut_in_s_at_their_edges(small_corpus):
    assert set(yield_decisions(small_corpus, 1.0, range(4))) == {"yield"}
    assert set(yield_decisions(small_corpus, 0.0, range(4))) == {"talk_on"}
    for reaction_s in (0.0, 0.4):  # lo == hi: that reaction exactly (0: it stops the frame it decides)
        env = make_env(small_corpus, max_s=14.0, user_params={"yield_p": 1.0, "yield_reaction_s": (reaction_s, reaction_s)})
        info = play(env, Scripted("cut_in", delay=6, length=25), {"dialogue": "t1", "user_seed": 0})
        stops = [d["stop_frame"] - d["frame"] for d in info["live"]["decisions"] if d["what"] == "yield"]
        assert stops and set(stops) == {round(reaction_s / FRAME_S)}
    # a 5-frame (0.4 s) overlap is a backchannel under the default cut_in_s (0.6 s) but a cut-in at 0
    for cut_in_s, expect in ((0.6, set()), (0.0, {"yield", "talk_on"})):
        env = make_env(small_corpus, max_s=14.0, user_params={"cut_in_s": cut_in_s})
        what = set()
        for seed in range(4):
            info = play(env, Scripted("cut_in", delay=6, length=1), {"dialogue": seed % 2, "user_seed": seed})
            what |= {d["what"] for d in info["live"]["decisions"] if d["what"] in ("yield", "talk_on")}
        assert what == expect, (cut_in_s, what)


def test_barge_in_edges_with_the_talk_agent(small_corpus):
    env = make_env(small_corpus, max_s=20.0, user_params={"barge_in_p": 0.0, "backchannel_per_min": 0.0})
    info = play(env, make_agent("talk", env), {"dialogue": "t1", "user_seed": 0})
    assert info["live"]["schedule"] == []  # talk never stops: the user never gets the floor
    assert {d["what"] for d in info["live"]["decisions"]} <= {"no_barge_in"}
    env = make_env(small_corpus, max_s=20.0, user_params={"barge_in_p": 1.0, "barge_in_s": 3.0,
                                                          "backchannel_per_min": 0.0})
    info = play(env, make_agent("talk", env), {"dialogue": "t1", "user_seed": 0})
    first = info["live"]["schedule"][0]
    assert first["why"] == "barge_in" and first["start_frame"] == round(3.0 / FRAME_S)  # talk speaks from frame 0
    bi = [e for e in info["live"]["schedule"] if e["why"] == "barge_in"]
    for prev, nxt in zip(bi, bi[1:]):  # the next one after barge_in_s more of listening
        assert nxt["start_frame"] - prev["end_frame"] == round(3.0 / FRAME_S)
    events = info["reward_terms"]["events"]
    assert {e["axis"] for e in events} >= {"interruption"}
    assert info["reward_terms"]["timing"]["yield_median_s"] > 1.0  # talk never stops


def test_reprompt_edges_with_the_silent_agent(small_corpus):
    def whys(**params):
        env = make_env(small_corpus, max_s=20.0, user_params=params)
        info = play(env, make_agent("silent", env), {"dialogue": "t1", "user_seed": 0})
        return [(e["why"], e["start_frame"], e["end_frame"]) for e in floor(info)]

    never = whys(reprompt_p=0.0)
    assert [w for w, *_ in never] == ["opening", "no_answer", "no_answer"]
    assert whys(reprompt_p=1.0, max_reprompts=0) == never
    twice = whys(reprompt_p=1.0, max_reprompts=2, reprompt_s=1.5)
    assert [w for w, *_ in twice][:4] == ["opening", "reprompt", "reprompt", "no_answer"]
    for (_, _, end), (_, start, _) in zip(twice, twice[1:]):
        assert start - end == round(1.5 / FRAME_S)  # re-prompt after exactly reprompt_s of silence
    assert whys(opening_s=0.0)[0][1] == 1  # the first frame the user can speak in


def test_gap_edges(small_corpus):
    def gaps(**params):
        env = make_env(small_corpus, max_s=15.0, user_params=params)
        info = play(env, Scripted("answer", delay=3, length=15), {"dialogue": "t2", "user_seed": 4})
        tokens = env.episode_record().text_tokens
        turns = floor(info)
        out = []
        for prev, nxt in zip(turns, turns[1:]):
            said = np.flatnonzero(tokens[prev["end_frame"]:nxt["start_frame"]] != TEXT_PAD) + prev["end_frame"]
            out.append(int(nxt["start_frame"] - (said[-1] + 5)))
        return out

    assert set(gaps(gap_median_s=0.0, gap_sigma=0.0)) == {1}  # it must hear one silent frame first
    assert set(gaps(gap_median_s=1.0, gap_sigma=0.0, gap_max_s=0.24)) == {3}  # capped at gap_max_s
    drawn = gaps(gap_sigma=1.0)
    assert len(set(drawn)) > 1 and all(0 <= g <= round(1.5 / FRAME_S) for g in drawn)


def test_answer_min_s_max_turns_and_pauses(small_corpus):
    # a 0.4 s blip answers under answer_min_s = 0 but not under the default 1 s (the user re-prompts)
    for answer_min_s, why in ((0.0, "answer"), (1.0, "no_answer")):
        env = make_env(small_corpus, max_s=12.0, user_params={"answer_min_s": answer_min_s, "reprompt_p": 0.0})
        info = play(env, Scripted("brief", delay=3, length=1), {"dialogue": "t1", "user_seed": 0})
        assert floor(info)[1]["why"] == why
    env = make_env(small_corpus, max_s=30.0, max_turns=1)
    info = play(env, Scripted("answer", 3, 15), {"dialogue": "t1", "user_seed": 0})
    assert len(floor(info)) == 1 and info["live"]["end"] == "max_turns" and info["n_frames"] < 150
    # the scripted pause ("...") lasts what pause_s draws; each one is a pause event
    for lo, hi in ((0.5, 0.5), (1.2, 1.2)):
        env = make_env(small_corpus, max_s=12.0, user_params={"pause_s": (lo, hi)})
        info = play(env, Scripted("answer", 4, 15), {"dialogue": "t1", "user_seed": 0})
        second = floor(info)[1]
        [(a, b)] = second["pauses_s"]
        assert b - a == pytest.approx(lo, abs=1e-3)
        assert "pause" in {e["axis"] for e in info["reward_terms"]["events"]}


def test_backchannel_edges_with_the_talk_agent(small_corpus):
    def backchannels(**params):
        env = make_env(small_corpus, max_s=20.0, user_params={"barge_in_p": 0.0, **params})
        info = play(env, make_agent("talk", env), {"dialogue": "t2", "user_seed": 2})
        return [e for e in info["live"]["schedule"] if e["kind"] == "backchannel"]

    assert backchannels(backchannel_per_min=0.0) == []
    many = backchannels(backchannel_per_min=120.0, backchannel_min_gap_s=2.0, backchannel_after_s=1.0)
    assert len(many) >= 5 and many[0]["start_frame"] >= round(1.0 / FRAME_S)
    starts = [e["start_frame"] for e in many]
    assert min(np.diff(starts)) >= round(2.0 / FRAME_S)
    assert {e["text"] for e in many} <= {"yeah", "okay", "right", "I see"}
    few = backchannels(backchannel_per_min=3.0)
    assert len(few) < len(many)


# ----------------------------------------------------------------------------- determinism, groups


def test_seeded_determinism_bit_for_bit(small_corpus, tmp_path):
    env = make_env(small_corpus, max_s=14.0, user_params={"gap_sigma": 1.0})
    agent = Scripted("cut_in", delay=6, length=25)
    a = play(env, agent, seed=11)
    ra = env.episode_record()
    b = play(env, agent, seed=11)
    rb = env.episode_record()
    assert json.dumps(a["live"], sort_keys=True) == json.dumps(b["live"], sort_keys=True)
    assert ra.obs_sha256 == rb.obs_sha256 and np.array_equal(ra.rewards, rb.rewards)
    assert json.dumps(a["reward_terms"], sort_keys=True) == json.dumps(b["reward_terms"], sort_keys=True)
    c = play(env, agent, seed=12)
    assert json.dumps(c["live"], sort_keys=True) != json.dumps(a["live"], sort_keys=True)


def test_a_group_shares_one_dialogue_seed_and_the_user_reacts_to_each_rollout(small_corpus):
    env = make_env(small_corpus, max_s=14.0)
    group = [play(env, agent, {"dialogue": 1234}) for agent in
             (Scripted("answer", 3, 15), Scripted("answer", 3, 15), Scripted("cut_in", 6, 25), make_agent("silent", env))]
    assert len({g["live"]["dialogue"] for g in group}) == 1 and len({g["live"]["user_seed"] for g in group}) == 1
    assert group[0]["live"] == group[1]["live"]  # the same agent: the same dialogue, bit for bit
    openings = {floor(g)[0]["start_frame"] for g in group}
    assert len(openings) == 1  # the same user until the agents differ ...
    assert len({json.dumps(g["live"]["schedule"]) for g in group}) == 3  # ... then it reacts to each


# ----------------------------------------------------------------------------- records


@pytest.mark.parametrize("modes", [("waveform", "tokens"), ("waveform", "waveform"), ("codes", "tokens")])
def test_replay_check_and_rescore_equal_the_live_run(small_corpus, tmp_path, modes):
    obs_mode, action_mode = modes
    kw = {"rewards": {"activity": {"reader": "text" if action_mode == "tokens" else "vad"}, "dense": {"weight": 0.5}}}
    env = make_env(small_corpus, obs_mode=obs_mode, action_mode=action_mode, record_dir=tmp_path, max_s=10.0, **kw)
    agents = [make_agent("talk", env), make_agent("vad", env) if obs_mode == "waveform" else make_agent("silent", env)]
    if action_mode == "tokens" and obs_mode == "waveform":
        agents.append(Scripted("cut_in", 6, 25))
    paths = []
    for i, agent in enumerate(agents):
        info = play(env, agent, {"dialogue": i % 2, "user_seed": i})
        paths.append(info["record"])
        rewards = env.episode_record().rewards
        assert info["reward_terms"]["dense"] == pytest.approx(float(rewards.sum() - info["reward_terms"]["reward"]))
        assert -0.5 <= info["reward_terms"]["dense"] <= 0.0
    for path in paths:
        result = replay_check_live(path)
        assert result["ok"], result
        record = EpisodeRecord.load(path)
        assert json.dumps(rescore_record(record), sort_keys=True, default=float) == \
            json.dumps(record.reward_terms, sort_keys=True, default=float)


def test_an_edited_schedule_is_a_mismatch_and_older_records_still_load(small_corpus, tmp_path):
    env = make_env(small_corpus, record_dir=tmp_path, max_s=8.0)
    info = play(env, Scripted("answer", 3, 15), {"dialogue": "t1", "user_seed": 0})
    path = info["record"]
    meta = json.loads(open(path).read())
    meta["live"]["schedule"][0]["start_frame"] += 1
    open(path, "w").write(json.dumps(meta))
    result = replay_check_live(path)
    assert not result["ok"] and any("schedule" in m for m in result["mismatches"])
    del meta["live"]  # a record without the field (every replay episode) loads as before
    open(path, "w").write(json.dumps(meta))
    assert EpisodeRecord.load(path).live is None
    assert "not a live record" in replay_check_live(path)["mismatches"][0]


def test_dense_shaping_rewards_the_right_frames(small_corpus):
    rewards = {"activity": {"reader": "text"}, "dense": {"weight": 1.0}}
    totals = {}
    for name, agent in (("answer", Scripted("answer", 4, 20)), ("cut_in", Scripted("cut_in", 4, 40))):
        env = make_env(small_corpus, rewards=rewards, max_s=12.0)
        info = play(env, agent, {"dialogue": "t1", "user_seed": 0})
        r = env.episode_record().rewards
        totals[name] = float(r.sum() - info["reward_terms"]["reward"])
        assert totals[name] == pytest.approx(info["reward_terms"]["dense"])
        assert -1.0 <= totals[name] <= 0.0
    assert totals["answer"] > totals["cut_in"]
