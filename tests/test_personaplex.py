"""PersonaPlex on stock moshi (agents/policies/personaplex.py): its 16-step checkpoint layout cut to 8
steps, the official prompt phases and tokens, wav and official-.pt voice prompts (pickles refused
unopened), per-row prompting in a batch, and GRPO on a real local Ray with the prompt frames leading
every episode, forced and out of the loss."""

import json
import pickle

import gymnasium as gym
import numpy as np
import pytest
import soundfile as sf
import torch
from duplexgym.agents.policies import make_agent
from duplexgym.agents.policies.checkpoint import CheckpointError, _empty_lm, load_models, tiny_lm_kwargs
from duplexgym.agents.policies.moshi_agent import MoshiAgent
from duplexgym.agents.policies.personaplex import (
    CONVERSATION_PROMPT,
    FDB_TEXT_PROMPTS,
    PROMPT_SILENCE_FRAMES,
    SILENCE_TOKENS,
    SINE_TOKENS,
    TEACHER_PROMPT,
    PersonaPlexPrompt,
    PromptError,
    build_prompt_frames,
    check_moshi_package,
    load_voice_embeddings,
    read_voice_wav,
    save_tiny_personaplex,
    save_voice_embeddings,
    text_prompt_ids,
    voice_embeddings_of,
    wrap_with_system_tags,
)
from duplexgym.agents.training.config import TrainConfigError, load_train_config
from duplexgym.corpora.codec import encode
from safetensors import safe_open

from duplexgym.constants import TEXT_PAD


@pytest.fixture(scope="module")
def personaplex_dir(tmp_path_factory):
    return save_tiny_personaplex(tmp_path_factory.mktemp("personaplex"))


@pytest.fixture(scope="module")
def voice_files(tmp_path_factory, speech, personaplex_dir):
    """A real 16 kHz voice recording, and the official .pt of the same voice (written from its codes)."""
    import soxr

    folder = tmp_path_factory.mktemp("voice")
    wav = folder / "voice.wav"
    sf.write(wav, soxr.resample(speech["b_long"][:36_000], 24_000, 16_000), 16_000)
    models = load_models(f"personaplex:{personaplex_dir}")
    codes = encode(models.mimi, read_voice_wav(wav)).T.astype(np.int64)
    pt = save_voice_embeddings(voice_embeddings_of(models.lm, codes), folder / "voice.pt")
    return wav, pt, codes


def _interruption_env(small_corpus):
    return gym.make("duplexgym/Interruption-v0", corpus=str(small_corpus), obs_mode="codes", action_mode="tokens")


def _episode(env, agent, seed=0):
    obs, info = env.reset(seed=seed)
    agent.reset(info, seed=123)
    actions, done = [], False
    while not done:
        actions.append(agent.act(obs))
        obs, _, term, trunc, _ = env.step(actions[-1])
        done = term or trunc
    return info, np.stack(actions)


def test_layout_is_cut_to_8_steps_with_the_16_step_distributions(personaplex_dir):
    with safe_open(str(personaplex_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("text_emb.weight").dtype == torch.bfloat16  # as the official file
    assert "depformer_in.15.weight" in keys and "depformer.layers.0.self_attn.in_proj_weight" in keys  # fork names
    lm = load_models(f"personaplex:{personaplex_dir}").lm
    assert lm.dep_q == 8
    # stock moshi builds the 16-step LM and loads the fork's names strictly: the reference distributions
    lm16 = _empty_lm({**tiny_lm_kwargs(), "dep_q": 16})
    from safetensors.torch import load_file

    lm16.load_state_dict({k: v.float() for k, v in load_file(personaplex_dir / "model.safetensors").items()},
                         strict=True, assign=True)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (2, 17, 24), generator=g)
    codes[:, 0] = torch.randint(0, 32000, (2, 24), generator=g)
    with torch.no_grad():
        full, cut = lm16.eval()(codes), lm(codes)
    assert torch.allclose(full.text_logits.nan_to_num(), cut.text_logits.nan_to_num(), atol=1e-5)
    assert torch.allclose(full.logits[:, :8].nan_to_num(), cut.logits.nan_to_num(), atol=1e-5)
    with pytest.raises(CheckpointError, match="dep_q=8, got n_q=16, dep_q=16"):
        load_models(str(personaplex_dir))  # as a plain Moshi folder: refused, naming the depformer
    check_moshi_package()  # stock moshi 0.2.x is installed, not the fork


def test_prompt_phases_follow_the_official_order_and_tokens(personaplex_dir):
    assert wrap_with_system_tags("  Be kind. ") == "<system> Be kind. <system>"
    assert wrap_with_system_tags("<system> x <system>") == "<system> x <system>"
    tokenizer = load_models(f"personaplex:{personaplex_dir}").text_tokenizer
    ids = text_prompt_ids(TEACHER_PROMPT, tokenizer)
    voice = np.random.default_rng(0).integers(0, 2048, (7, 8))
    frames = build_prompt_frames(ids, voice, TEACHER_PROMPT)
    assert frames.phases == (("voice", 7), ("silence", 6), ("text", len(ids)), ("silence", 6))
    n, S = 7, PROMPT_SILENCE_FRAMES
    assert frames.frames == n + 2 * S + len(ids) and frames.embeddings is None
    assert (frames.user == SINE_TOKENS).all()  # the user stream hears the sine code frame throughout
    assert (frames.actions[:n, 1:] == voice).all() and (frames.actions[n:, 1:] == SILENCE_TOKENS).all()
    text = frames.actions[:, 0]
    assert (text[: n + S] == TEXT_PAD).all() and text[n + S: n + S + len(ids)].tolist() == ids
    assert (text[n + S + len(ids):] == TEXT_PAD).all()
    assert build_prompt_frames(ids).phases == (("silence", 6), ("text", len(ids)), ("silence", 6))  # no voice
    prompt = PersonaPlexPrompt()
    assert [prompt.text_for(a) for a in ("pause", "turn", "backchannel", "interruption")] == [
        CONVERSATION_PROMPT, CONVERSATION_PROMPT, CONVERSATION_PROMPT, TEACHER_PROMPT]
    assert FDB_TEXT_PROMPTS["interruption"] == TEACHER_PROMPT
    assert PersonaPlexPrompt({"pause": "Listen."}).text_for("pause") == "Listen."
    with pytest.raises(PromptError, match="text prompt is empty"):
        text_prompt_ids("  ", tokenizer)


def test_wav_voice_is_normalised_and_pickled_voices_are_refused_unopened(voice_files, tmp_path):
    import pyloudnorm

    wav, pt, codes = voice_files
    audio = read_voice_wav(wav)
    assert len(audio) % 1920 == 0 and len(audio) // 1920 == len(codes)
    assert abs(pyloudnorm.Meter(24_000).integrated_loudness(audio.astype(np.float64)) + 24.0) < 0.1
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(24_000, np.float32), 24_000)
    with pytest.raises(PromptError, match="silent"):
        read_voice_wav(silent)

    loaded = load_voice_embeddings(pt, dim=64)
    assert loaded.frames == len(codes) and tuple(loaded.cache.shape) == (17, 4)

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    raw = tmp_path / "voice.pkl"
    raw.write_bytes(pickle.dumps(Payload()))
    legacy = tmp_path / "legacy.pt"  # a raw pickle under the official suffix
    legacy.write_bytes(pickle.dumps({"embeddings": Payload()}))
    zipped = tmp_path / "zipped.pt"  # a torch zip archive holding a non-tensor global
    torch.save({"embeddings": Payload(), "cache": torch.zeros(1, 17, 4, dtype=torch.long)}, zipped)
    assert not marker.exists()
    for path, reason in ((raw, "refused unopened: a .pkl"), (legacy, "refused unopened: not a torch zip"),
                         (zipped, "weights_only refused it")):
        with pytest.raises(PromptError, match=reason):
            load_voice_embeddings(path)
        assert not marker.exists()  # nothing was unpickled
    wrong = tmp_path / "wrong.pt"
    torch.save({"embeddings": torch.zeros(3, 1, 1, 32), "cache": torch.zeros(1, 17, 4, dtype=torch.long)}, wrong)
    with pytest.raises(PromptError, match=r"\[N-1, 1, 1, 64\]"):
        load_voice_embeddings(wrong, dim=64)


def test_the_official_pt_voice_plays_the_episode_of_its_wav(personaplex_dir, voice_files, small_corpus):
    wav, pt, _ = voice_files
    env = _interruption_env(small_corpus)
    episodes = []
    for voice in (wav, pt, wav):
        agent = make_agent(f"personaplex:{personaplex_dir}", env, voice_prompt=str(voice))
        info, actions = _episode(env, agent)
        phases = agent.prompt_frames[0].phases
        agent.close()
        episodes.append(actions)
        k = info["forced_frames"]
        forced = info["forced_prefix"].forced()
        assert (actions[:k][forced] == info["forced_prefix"].action[:k][forced]).all()  # the env's prefix, forced
    assert phases[0][0] == "voice" and dict(phases)["text"] == len(text_prompt_ids(TEACHER_PROMPT, agent.text_tokenizer_path))
    assert np.array_equal(episodes[0], episodes[2])  # the same prompt and seed: the same episode
    assert np.array_equal(episodes[0], episodes[1])  # the .pt replays what the wav gives
    with pytest.raises(ValueError, match="prompts are for personaplex"):
        make_agent("moshi", env, text_prompt="hi")


def test_a_row_prompted_alone_in_a_batch_acts_as_a_fresh_agent(personaplex_dir, voice_files):
    _, pt, _ = voice_files
    user = np.random.default_rng(3).integers(0, 2048, (12, 8))
    prompt = PersonaPlexPrompt(voice=str(pt))

    def fresh():
        agent = MoshiAgent(load_models(f"personaplex:{personaplex_dir}"), prompt=prompt, seed=5)
        agent.reset({"axis": "pause", "forced_frames": 0}, seed=11)
        out = np.stack([agent.act(u) for u in user])
        agent.close()
        return out

    alone = fresh()
    batch = MoshiAgent(load_models(f"personaplex:{personaplex_dir}"), batch_size=2, prompt=prompt, seed=5)
    batch.reset_batch([{"axis": "turn", "forced_frames": 0}] * 2, seeds=[1, 2])
    for u in user[:5]:
        batch.act_batch(np.stack([u, u]))
    batch.reset_batch([None, {"axis": "pause", "forced_frames": 0}], mask=[False, True], seeds=[None, 11])
    assert batch._t[0] == batch.prompt_frames[0].frames + 5  # row 0 did not step during row 1's prompt
    assert batch._t[1] == batch.prompt_frames[1].frames
    rows = np.stack([batch.act_batch(np.stack([u, u]))[1] for u in user])
    batch.close()
    assert np.array_equal(rows, alone)


def test_prompt_config_is_checked(personaplex_dir, voice_files, small_corpus, tmp_path):
    base = {"corpus": str(small_corpus), "out": str(tmp_path / "run")}
    with pytest.raises(TrainConfigError, match="^prompt: only used with model: personaplex"):
        load_train_config({**base, "prompt": {"text": "hi"}})
    pickled = tmp_path / "v.pkl"
    pickled.write_bytes(b"\x80\x04N.")
    with pytest.raises(TrainConfigError, match="prompt.voice: .*refused unopened"):
        load_train_config({**base, "model": f"personaplex:{personaplex_dir}", "prompt": {"voice": str(pickled)}})
    with pytest.raises(TrainConfigError, match="prompt.text: .*unknown axis 'chat'"):
        load_train_config({**base, "model": f"personaplex:{personaplex_dir}", "prompt": {"text": {"chat": "x"}}})
    cfg = load_train_config({**base, "model": f"personaplex:{personaplex_dir}", "prompt": {"voice": str(voice_files[1])}})
    assert cfg.model == f"personaplex:{personaplex_dir.resolve()}"
    from duplexgym.agents.training.plan import format_plan, training_plan

    plan = training_plan(cfg)
    tokenizer = load_models(f"personaplex:{personaplex_dir}").text_tokenizer
    assert plan["prompt"] == {"voice": len(voice_files[2]), "silence": 12,
                              "text": {axis: len(text_prompt_ids(FDB_TEXT_PROMPTS[axis], tokenizer))
                                       for axis in cfg.axes}}
    assert "PersonaPlex prompt before each rollout (forced, out of the loss): voice" in format_plan(plan)


@pytest.mark.slow
def test_grpo_on_personaplex_records_the_prompt_forced_and_out_of_the_loss(personaplex_dir, voice_files, small_corpus,
                                                                        tmp_path):
    """Also the group decode of the vad reader (``reward_decode: group``, forced on CPU): the runner
    decodes the group's codes in one Mimi batch, and each rollout's reward is the rescoring of its
    record read from that audio (which is the one-by-one decode to float rounding)."""
    from duplexgym.agents.training import driver
    from duplexgym.agents.training.batch import build_group_batch
    from duplexgym.agents.training.connector import episode_record

    _, pt, _ = voice_files
    cfg = load_train_config({
        "corpus": str(small_corpus), "out": str(tmp_path / "run"), "model": f"personaplex:{personaplex_dir}",
        "prompt": {"voice": str(pt)}, "group_size": 2, "segments_per_iteration": 1, "iterations": 1,
        "axes": ["interruption"], "lr": 1e-3, "seed": 2, "rewards": {"activity": {"reader": "vad"}},
        "reward_decode": "group"})
    from duplexgym.agents.training.checkpoints import export_policy

    seen = []
    policy = tmp_path / "policy"
    driver.train_policy(cfg, on_iteration=lambda algo, m: seen.append((m, list(algo.last_episodes),
                                                                        export_policy(algo, policy))))
    (m, episodes, _), = seen
    assert np.isfinite(m["loss"]) and m["episodes"] == 2 and 0 < m["reward_share"] < 1
    # the learner's teacher-forced pass (prompt frames prepended, the voice read as embeddings)
    # reproduces the sampler's text log-probs
    assert m["sampler_logp_gap"] < 1e-4
    ids = text_prompt_ids(TEACHER_PROMPT, load_models(f"personaplex:{personaplex_dir}").text_tokenizer)
    expected = build_prompt_frames(ids, load_voice_embeddings(pt, dim=64))
    for e in episodes:
        P = e.custom_data["prompt_frames"]
        assert P == expected.frames and e.custom_data["prompt_embedded"] == expected.embedded
        actions, obs = np.asarray(e.get_actions()), np.asarray(e.get_observations())
        assert np.array_equal(actions[:P], expected.actions) and (obs[:P] == SINE_TOKENS).all()
        forced = np.asarray(e.get_extra_model_outputs("forced"))
        assert forced[:P].all() and not forced[P + e.custom_data["forced_frames"]:].all()
        assert (np.asarray(e.get_rewards())[:P] == 0).all()
        mask = build_group_batch([episode_record(e)])["loss_mask"][0]  # model frame f = step f + 1
        assert not mask[: P - 1].any() and mask[P - 1 + e.custom_data["forced_frames"]:].any()
    # the vad reader read the group's batched decode: rescoring each record from it gives its reward
    from duplexgym.corpora.codec import decode, load_mimi
    from duplexgym.envs.replay import DuplexReplayEnv
    from duplexgym.rewards.scoring import score_episode

    env = DuplexReplayEnv(small_corpus, axes=("interruption",), obs_mode="codes", action_mode="tokens",
                          rewards=cfg.rewards)
    records = []
    for e in episodes:
        env.reset(options={"segment": e.custom_data["segment"]})
        for a in np.asarray(e.get_actions())[e.custom_data["prompt_frames"]:]:
            env.step(a)
        records.append(env.episode_record())
    mimi = load_mimi("tiny")
    batch = decode(mimi, np.stack([r.audio_codes.astype(np.int64) for r in records]))
    assert {e.custom_data["reward_decode"] for e in episodes} == {"group"}
    for e, record, audio in zip(episodes, records, batch):
        assert np.abs(audio - decode(mimi, record.audio_codes.astype(np.int64))).max() < 1e-5
        dense = float(record.rewards[:-1].sum())
        terms = score_episode(record, env.reward_spec, dense, decoded=audio)
        assert terms["reward"] + dense == pytest.approx(e.custom_data["reward"], abs=1e-9)
    saved = json.loads((policy / "personaplex_prompt.json").read_text())
    assert saved == {"text": None, "voice": "voice.pt"} and (policy / "voice.pt").read_bytes() == pt.read_bytes()
    env = _interruption_env(small_corpus)
    agent = make_agent(f"personaplex:{policy}", env)  # evaluation gets the training prompts back
    assert agent.prompt_frames[0] is None and str(agent.prompt.voice) == str(policy / "voice.pt")
    agent.close()
