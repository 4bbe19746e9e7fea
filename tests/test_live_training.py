"""Training on the live env (``env: conversation``): the config's checks and plan, and GRPO on a
real local Ray where each group's G rollouts play one dialogue seed of Conversation-v0 and its
simulated user reacts to each rollout."""

import numpy as np
import pytest
from duplexgym.agents.training.config import TrainConfigError, load_train_config
from duplexgym.agents.training.plan import format_plan, training_plan
from duplexgym.envs.conversation import ConversationEnv

from duplexgym.constants import FRAME_S


def _live(corpus, tmp_path, **kw):
    raw = {"corpus": str(corpus), "out": str(tmp_path / "run"), "env": "conversation", "group_size": 3,
           "segments_per_iteration": 2, "iterations": 2, "seed": 3, "lr": 1e-3,
           "conversation": {"user": "replay", "max_s": 6.0}, "rewards": {"dense": {"weight": 0.5}}}
    raw.update(kw)
    return load_train_config(raw)


def test_live_config_refuses_replay_fields_and_checks_the_env(small_corpus, tmp_path):
    cfg = _live(small_corpus, tmp_path, conversation=None)
    assert cfg.conversation.user == "replay" and cfg.conversation.max_s == 60.0  # the env's defaults, written out
    assert cfg.to_dict()["conversation"]["max_s"] == 60.0 and cfg.reward_axes == ("conversation",)
    for field, value in (("axes", ["turn"]), ("segments", ["x"]), ("axis_weights", {"turn": 1.0}),
                         ("context", {"p": 0.5, "max_s": 2.0}), ("lead_in_silence_s", 1.0)):
        with pytest.raises(TrainConfigError, match=f"^{field}: only used with env: replay"):
            _live(small_corpus, tmp_path, **{field: value})
    with pytest.raises(TrainConfigError, match="^conversation: only used with env: conversation"):
        _live(small_corpus, tmp_path, env="replay")
    with pytest.raises(TrainConfigError, match="conversation.user: unknown value 'tts'"):
        _live(small_corpus, tmp_path, conversation={"user": "tts"})
    with pytest.raises(TrainConfigError, match="conversation: dialogues: no replay dialogue 'nope'"):
        _live(small_corpus, tmp_path, conversation={"dialogues": ["nope"]})
    with pytest.raises(TrainConfigError, match="conversation: user_params.yield_p"):
        _live(small_corpus, tmp_path, conversation={"user_params": {"yield_p": 2}})
    with pytest.raises(TrainConfigError, match="conversation.max_turns"):
        _live(small_corpus, tmp_path, conversation={"max_turns": 0})
    with pytest.raises(TrainConfigError, match="conversation: user=.llm. needs a server"):
        _live(small_corpus, tmp_path, conversation={"user": "llm"})  # no server given


def test_live_dry_run_plan_bounds_the_frames(small_corpus, tmp_path):
    cfg = _live(small_corpus, tmp_path)
    plan = training_plan(cfg)
    n_dialogues = len(ConversationEnv(small_corpus, user="replay").dialogue_ids)
    entry = plan["axes"]["conversation"]
    assert plan["env"] == "conversation" and plan["frames_are_bounds"]
    assert entry["segments"] == n_dialogues and entry["user"] == "replay" and entry["max_s"] == 6.0
    assert plan["frames_per_iteration"]["first"] == 6 * round(6.0 / FRAME_S)  # 2 groups x 3 rollouts x 75 frames
    assert set(entry["terms"]) == {"pause", "turn", "backchannel", "interruption"}
    text = format_plan(plan)
    assert f"{n_dialogues} dialogues, up to 6 s each" in text and "at most 450 at the first" in text


@pytest.mark.slow
def test_grpo_on_live_dialogues_groups_share_a_seed_and_replay_exactly(small_corpus, tmp_path):
    from duplexgym.agents.training import driver

    cfg = _live(small_corpus, tmp_path, conversation={"user": "replay", "max_s": 8.0})
    seen = []
    driver.train_policy(cfg, on_iteration=lambda algo, m: seen.append((m, list(algo.last_episodes))))
    assert len(seen) == 2
    env = ConversationEnv(small_corpus, user="replay", obs_mode="codes", action_mode="tokens",
                          rewards=cfg.rewards, max_s=8.0)
    reacted = 0
    for m, episodes in seen:
        assert np.isfinite(m["loss"]) and m["episodes"] == 6 and m["failed_episodes"] == 0
        assert set(m["reward_mean"]) == {"conversation"}
        groups: dict = {}
        for e in episodes:
            groups.setdefault(e.custom_data["group"], []).append(e)
        assert len(groups) == 2 and all(len(g) == 3 for g in groups.values())
        for group in groups.values():
            # one dialogue seed per group: the same dialogue, the same user draws
            assert len({(e.custom_data["dialogue"], e.custom_data["user_seed"], e.custom_data["segment"])
                        for e in group}) == 1
            streams = {np.asarray(e.get_observations()).tobytes() for e in group}
            reacted += len(streams) > 1  # the user heard different agents and reacted differently
            for e in group:
                # the runner's stepping is the env's: the same dialogue replayed with the rollout's
                # actions gives the same user frames and rewards, bit for bit
                obs, _ = env.reset(options={"dialogue": e.custom_data["dialogue"],
                                            "user_seed": e.custom_data["user_seed"]})
                frames, rewards = [obs], []
                for a in e.get_actions():
                    obs, r, done, _, info = env.step(a)
                    frames.append(obs)
                    rewards.append(r)
                assert done and len(rewards) == len(e)
                np.testing.assert_array_equal(np.asarray(frames), np.asarray(e.get_observations()))
                np.testing.assert_allclose(rewards, e.get_rewards(), rtol=0, atol=1e-12)
                assert e.custom_data["score"] == pytest.approx(info["reward_terms"]["reward"])
                assert len(e) <= round(8.0 / FRAME_S)
    assert reacted >= 1


def test_shipped_conversation_config_and_its_progress_line(small_corpus, tmp_path):
    from pathlib import Path

    import yaml
    from duplexgym.agents.training.run import format_iteration

    raw = yaml.safe_load((Path(__file__).parent.parent / "configs" / "conversation_tiny.yaml").read_text())
    assert raw["corpus"] == "runs/default-corpus" and raw["env"] == "conversation"
    cfg = load_train_config({**raw, "corpus": str(small_corpus), "out": str(tmp_path / "run")})
    assert cfg.conversation.user == "replay" and cfg.conversation.max_s == 10.0 and cfg.group_size == 4
    line = format_iteration({"iteration": 0, "reward_mean": {"conversation": 0.25}, "kl": 0.0, "loss": 0.0,
                             "frames_per_s": 10.0, "wall_s": 1.0}, 4)
    assert line.startswith("iter 1/4  reward conversation +0.250")
