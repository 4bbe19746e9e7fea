"""The moshi agent: the tiny Moshi, Kyutai-layout checkpoints, the forced prefix, seeds, batches, env episodes."""

import json
import os
import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from duplexgym.agents.policies import checkpoint, make_agent
from duplexgym.agents.policies.checkpoint import (
    CheckpointError,
    load_models,
    save_checkpoint,
)
from duplexgym.agents.policies.moshi_agent import MoshiAgent
from duplexgym.corpora.codec import codec_id, encode, load_mimi
from duplexgym.envs.replay import ForcedPrefix

from tests.conftest import REPO


def user_codes(n_frames: int, seed: int = 0) -> np.ndarray:
    """int64 [n_frames, 8]: a stand-in user stream of Mimi codes."""
    return np.random.default_rng(seed).integers(0, 2048, (n_frames, 8))


def forced_prefix(k: int, seed: int = 1) -> np.ndarray:
    """int64 [k, 9]: text tokens (no padding) and audio codes to force."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(4, 32000, (k, 1)), rng.integers(0, 2048, (k, 8))], axis=1)


def prefix_info(forced: np.ndarray) -> dict:
    """Reset info of an episode whose first len(forced) agent frames are forced (as the env gives it)."""
    k = len(forced)
    return {"forced_frames": k, "forced_prefix": ForcedPrefix(k, forced, np.zeros(k * 1920, np.float32))}


def play(agent: MoshiAgent, obs: np.ndarray, info: dict | None = None, seed: int | None = None) -> np.ndarray:
    agent.reset(info or {}, seed=seed)
    return np.stack([agent.act(o) for o in obs])


def weights_digest(state: dict) -> str:
    """sha256 of a state dict's names and bytes (first 16 hex digits)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode() + state[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def test_tiny_weights_are_the_same_in_every_process():
    here = weights_digest(checkpoint.build_tiny_lm().state_dict())
    code = ("import duplexgym; from duplexgym.agents.policies.checkpoint import build_tiny_lm; "
            "from tests.test_moshi_agent import weights_digest; print(weights_digest(build_tiny_lm().state_dict()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == here


def test_checkpoint_round_trip_in_kyutai_layout(tmp_path):
    models = load_models("tiny")
    out = save_checkpoint(models.lm, models.mimi, models.text_tokenizer, tmp_path / "ckpt", models.lm_kwargs)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "mimi.safetensors", "mimi_config.json", "model.safetensors", "tokenizer.model"]
    config = json.loads((out / "config.json").read_text())
    assert (config["n_q"], config["dep_q"], config["text_card"]) == (16, 8, 32000)
    assert config["delays"] == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]

    # moshi's own reader loads the folder (explicit local paths: no hub)
    from moshi.models import loaders

    info = loaders.CheckpointInfo.from_hf_repo(
        "local/none", moshi_weights=out / "model.safetensors", mimi_weights=out / "mimi.safetensors",
        tokenizer=out / "tokenizer.model", config_path=out / "config.json", mimi_config_path=out / "mimi_config.json")
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), models.lm.state_dict().values()))
    assert codec_id(info.get_mimi()) == codec_id(models.mimi)

    obs, forced = user_codes(30), forced_prefix(5)
    with MoshiAgent("tiny", seed=4) as tiny, MoshiAgent(out, seed=4) as loaded:
        assert loaded.text_tokenizer_path == str(out / "tokenizer.model")
        assert loaded.codec_id == tiny.codec_id == codec_id("tiny")
        for info_ in ({}, prefix_info(forced)):
            assert np.array_equal(play(tiny, obs, info_), play(loaded, obs, info_))

    # a bf16 export loads back as float32 (the bf16 values exactly)
    bf16 = save_checkpoint(models.lm, models.mimi, models.text_tokenizer, tmp_path / "bf16", models.lm_kwargs,
                           dtype=torch.bfloat16)
    back = load_models(bf16 / "model.safetensors").lm.state_dict()
    for name, tensor in models.lm.state_dict().items():
        assert back[name].dtype == torch.float32 and torch.equal(back[name], tensor.to(torch.bfloat16).float())


def test_missing_files_are_listed_together(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError) as err:
        load_models(tmp_path)
    message = str(err.value)
    for name in ("model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors", "tokenizer_spm_32k_3.model",
                 "notes.txt"):
        assert name in message
    # names from config.json are what is looked for
    (tmp_path / "config.json").write_text(json.dumps({"moshi_name": "lm.safetensors", "mimi_name": "codec.sft"}))
    with pytest.raises(CheckpointError, match=r"(?s)lm\.safetensors.*codec\.sft.*tokenizer_spm_32k_3\.model"):
        load_models(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_models(tmp_path / "absent")


class _Boom:
    """Unpickling this creates a folder: proof that a pickle was opened."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pickled_checkpoints_are_refused_unopened(tmp_path):
    marker = tmp_path / "unpickled"
    bomb = pickle.dumps(_Boom(marker))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("model.pt", "tokenizer-e351c8d8-checkpoint125.ckpt"):
        (folder / name).write_bytes(bomb)
    (folder / "tokenizer_spm_32k_3.model").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"(?s)refused LM weights: model\.pt.*refused Mimi weights"):
        load_models(folder)
    with pytest.raises(CheckpointError, match="refused: .pt files are pickles"):
        MoshiAgent(folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({"moshi_name": "model.pt"}))
    with pytest.raises(CheckpointError, match="model.pt .moshi_name in config.json. is a pickle"):
        load_models(folder)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Boom(tmp_path / "control")))  # the bomb is live: unpickling would have shown
    assert (tmp_path / "control").is_dir()


def test_tiny_source_needs_a_tokenizer(monkeypatch, tmp_path):
    found = checkpoint.find_text_tokenizer()
    assert found.name == "tokenizer.model.v1" and checkpoint.find_text_tokenizer(found) == found
    monkeypatch.setattr(checkpoint.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"(?s)text_tokenizer=PATH.*pip install mistral-common"):
        load_models("tiny")
    with pytest.raises(CheckpointError, match="not found"):
        load_models("tiny", text_tokenizer=tmp_path / "none.model")
    assert load_models("tiny", text_tokenizer=found).text_tokenizer == found


def test_alignment_of_user_frames_and_returned_frames():
    """Env frame t's action is model frame t - 1: its text and codebook 0 were sampled at step t - 1,
    its codebooks 1..7 at step t, after user codebook 0 of frame t (user codebooks 1..7 of frame t
    are read one step later); user frame 0 is never read."""
    obs, t = user_codes(20), 8
    with MoshiAgent("tiny", seed=1) as agent:
        base = play(agent, obs, seed=5)
        other = obs.copy()
        other[0] = (other[0] + 1000) % 2048
        assert np.array_equal(play(agent, other, seed=5), base)
        semantic = obs.copy()
        semantic[t, 0] = (semantic[t, 0] + 1000) % 2048
        got = play(agent, semantic, seed=5)
        assert np.array_equal(got[:t], base[:t]) and np.array_equal(got[t, :2], base[t, :2])
        assert not np.array_equal(got[t, 2:], base[t, 2:])
        acoustic = obs.copy()
        acoustic[t, 1:] = (acoustic[t, 1:] + 1000) % 2048
        got = play(agent, acoustic, seed=5)
        assert np.array_equal(got[: t + 1], base[: t + 1]) and not np.array_equal(got[t + 1, 2:], base[t + 1, 2:])


@pytest.mark.parametrize("k", [1, 2, 12])
def test_forced_prefix_is_returned_and_becomes_the_model_state(k):
    """Frames < k come back exactly as forced, and the LM's state after them does not depend on the
    seed (the model's own streams hold the forced tokens); afterwards the seeds differ."""
    obs, forced = user_codes(k + 20), forced_prefix(k)
    info = prefix_info(forced)
    logits = {}
    for seed in (1, 2):
        with MoshiAgent("tiny", seed=seed) as agent:
            hook = agent.lm_gen.on_text_logits_hook
            seen = []
            agent.lm_gen.on_text_logits_hook = lambda x: (seen.append(x.clone()), hook(x))
            actions = play(agent, obs, info)
        assert np.array_equal(actions[:k], forced)
        assert actions[k:].min() >= 0
        logits[seed] = torch.cat(seen)  # [steps, 1, 1, text_card], step t predicts env frame t + 1
    # text logits of steps 0..k-1 are computed from the forced past only
    assert torch.equal(logits[1][:k], logits[2][:k])
    assert not torch.equal(logits[1][k + 2:], logits[2][k + 2:])


def test_seeded_and_deterministic_without_touching_the_global_rng():
    obs = user_codes(40)
    rng_before = torch.random.get_rng_state()
    with MoshiAgent("tiny", seed=7) as a, MoshiAgent("tiny", seed=7) as b, MoshiAgent("tiny", seed=8) as c:
        first = play(a, obs)
        assert np.array_equal(first, play(b, obs))
        assert not np.array_equal(first, play(c, obs))
        assert not np.array_equal(first, play(a, obs))  # the next episode draws a new seed
        assert np.array_equal(play(a, obs, seed=123), play(c, obs, seed=123))  # explicit episode seeds
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert first[0].tolist() == a.silence_action.tolist() and first[0, 0] == 3  # frame 0: padding + silence


def test_row_reset_in_a_batch_matches_a_fresh_single_agent():
    """Row 1 restarts (with a forced prefix) while row 0 runs on: from then on row 1 acts exactly as a
    fresh one-row agent fed the same frames (exact here at B=2 vs B=1; the contract is per batch size)."""
    n, restart, k = 40, 7, 5
    streams = user_codes(n, seed=3), user_codes(n, seed=4)
    info = {"forced_frames": k, "forced_action": forced_prefix(k)}  # the bare-array form is read too
    with MoshiAgent("tiny", batch_size=2, seed=3) as batch:
        batch.reset_batch([{}, {}])
        rows = []
        for t in range(n):
            if t == restart:
                batch.reset_batch([None, info], mask=[False, True], seeds=[None, 99])
            u = t - restart if t >= restart else t
            rows.append(batch.act_batch(np.stack([streams[0][t], streams[1][u]])))
        rows = np.stack(rows)
    with MoshiAgent("tiny", seed=0) as single:
        alone = play(single, streams[1][: n - restart], info, seed=99)
    assert np.array_equal(rows[restart:, 1], alone)
    with MoshiAgent("tiny", batch_size=2, seed=3) as fresh:  # row 0 was not disturbed by row 1's reset
        fresh.reset_batch([{}, {}], seeds=[int(np.random.SeedSequence([3, 0]).generate_state(1, np.uint64)[0]), 5])
        again = np.stack([fresh.act_batch(np.stack([streams[0][t], streams[1][t]])) for t in range(n)])
    assert np.array_equal(again[:, 0], rows[:, 0])


def test_waveform_observations_are_encoded_like_the_corpus_codes():
    t = np.arange(24 * 1920) / 24_000
    audio = (0.2 * np.sin(2 * np.pi * 220 * t) * (t % 0.6 < 0.4)).astype(np.float32)
    codes = encode(load_mimi("tiny"), audio).T.astype(np.int64)  # [F, 8]
    with MoshiAgent("tiny", seed=2) as a, MoshiAgent("tiny", seed=2) as b:
        assert np.array_equal(play(a, audio.reshape(-1, 1920)), play(b, codes))
        with pytest.raises(ValueError, match=r"\[1, 8\] integer Mimi codes or \[1, 1920\] float samples"):
            a.act(np.zeros(7))
    with MoshiAgent("tiny", batch_size=2) as batch:
        with pytest.raises(RuntimeError, match="were never reset"):
            batch.act_batch(codes[:2])
        with pytest.raises(RuntimeError, match="batch_size=2: use reset_batch"):
            batch.reset({})


def test_episodes_in_the_real_env(small_corpus):
    corpus_codec = json.loads((small_corpus / "corpus.json").read_text())["codec"]
    env = gym.make("duplexgym/TurnTaking-v0", corpus=str(small_corpus))
    agent = make_agent("moshi", env)
    assert isinstance(agent, MoshiAgent) and agent.codec_id == corpus_codec
    obs, info = env.reset(seed=0)
    agent.reset(info)
    done, n = False, 0
    while not done:
        action = agent.act(obs)
        assert action.dtype == np.int64 and env.action_space.contains(action)
        obs, _, done, _, info = env.step(action)
        n += 1
    assert "reward_terms" in info and "turn" in info["reward_terms"]["terms"]
    record = env.unwrapped.episode_record()
    assert record.n_frames == n
    # the agent's text is its non-padding tokens through its own SentencePiece model; the env's
    # record decodes the same stream with the tokenizer the agent gave it
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=agent.text_tokenizer_path)
    spoken = [int(t) for t in record.text_tokens if int(t) not in (0, 3)]
    assert spoken and agent.decode_text(record.text_tokens) == sp.decode(spoken)
    assert " ".join(record.agent_text.split()) == " ".join(sp.decode(spoken).split())
    hello = sp.encode("hello world, how are you")
    stream = np.full(3 * len(hello) + 2, 3)
    stream[1::3][: len(hello)] = hello
    stream[0] = 0
    assert agent.decode_text(stream) == "hello world, how are you"
    agent.close()

    env = gym.make("duplexgym/Interruption-v0", corpus=str(small_corpus), obs_mode="waveform")
    with MoshiAgent.for_env(env, seed=1) as agent:
        obs, reset_info = env.reset(seed=1)
        k = reset_info["forced_frames"]
        forced = reset_info["forced_prefix"].action
        assert k > 1 and forced.shape == (k, 9)
        agent.reset(reset_info)
        actions, done = [], False
        while not done:
            actions.append(agent.act(obs))
            obs, _, done, _, info = env.step(actions[-1])
        assert np.array_equal(np.stack(actions[:k]), forced)
        assert "interruption" in info["reward_terms"]["terms"]


def test_batched_agent_drives_a_vector_env(small_corpus):
    """Two envs in a gymnasium vector env (next-step autoreset): the agent resets the rows whose
    episode ended, from the vector env's info dict; forced prefixes come back exactly per row."""
    def make():
        return gym.make("duplexgym/Interactivity-v0", corpus=str(small_corpus),
                        axis_weights={"interruption": 3.0, "turn": 1.0, "pause": 0.0, "backchannel": 0.0})

    envs = gym.vector.SyncVectorEnv([make, make])
    with MoshiAgent.for_env(envs.envs[0], batch_size=2, seed=0) as agent:
        obs, infos = envs.reset(seed=[3, 4])
        agent.reset_batch(infos)
        prefixes = [p.action for p in infos["forced_prefix"]]
        assert any(len(p) for p in prefixes)
        first_episode, ended, restart = [[], []], np.zeros(2, bool), np.zeros(2, bool)
        while not ended.all():
            act = agent.act_batch(obs)
            assert all(envs.single_action_space.contains(a) for a in act)
            for r in np.flatnonzero(~ended):
                first_episode[r].append(act[r])
            obs, _, term, trunc, infos = envs.step(act)
            if restart.any():  # next-step autoreset: this step reset those rows (their actions were ignored)
                agent.reset_batch(infos, mask=restart)
            restart = term | trunc
            ended |= restart
        for r in range(2):
            k = len(prefixes[r])
            assert np.array_equal(np.array(first_episode[r][:k], dtype=np.int64).reshape(k, 9), prefixes[r])
    envs.close()


def test_a_corpus_of_another_codec_is_refused():
    with MoshiAgent("tiny") as agent:
        with pytest.raises(ValueError, match=r"codec mismatch: the corpus codes come from mimi-sha256:0+, the agent"):
            agent.check_codec("mimi-sha256:0000000000000000")
        with pytest.raises(ValueError, match="records no codec"):
            agent.check_codec(None)
        agent.check_codec(codec_id("tiny"))


def test_rollout_cli_with_the_tiny_moshi_records_its_text(small_corpus, tmp_path):
    """``duplexgym rollout --agent moshi``: records carry the agent's decoded text, and replay."""
    import json
    import subprocess
    import sys

    from duplexgym.agents.evaluation.replay import replay_check
    from duplexgym.rewards.record import EpisodeRecord

    proc = subprocess.run([sys.executable, "-m", "duplexgym.cli", "rollout", "--env", "duplexgym/TurnTaking-v0",
                           "--corpus", str(small_corpus), "--agent", "moshi", "--episodes", "2", "--seed", "1",
                           "--out", str(tmp_path), "--json", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["episodes"] == 2
    record_path = sorted((tmp_path / "episodes").glob("*.json"))[0]
    record = EpisodeRecord.load(record_path)
    assert record.env["text_tokenizer"] and record.agent_text is not None
    assert (record.agent_text == "") == (record.agent_words == ())
    assert replay_check(record_path)["ok"]
