"""The env runner of group sampling: G rollouts of one segment (or of one live dialogue) with one
batched streaming Moshi.

``env: replay``: the G sub-envs replay the group's segment; every rollout has its length.
``env: conversation``: the G sub-envs play one live dialogue of Conversation-v0 (one dialogue seed:
the same dialogue and user draws), the simulated user reacting to each rollout's agent, so rollouts
end at different frames. A sub-env whose dialogue ended is not stepped again (the vector env would
reset it and open a dialogue nobody plays); the batched agent keeps acting for its row on silence
and the row's actions are dropped."""

from __future__ import annotations

import time

import numpy as np
from duplexgym.agents.policies.base import row_infos
from duplexgym.agents.policies.checkpoint import with_lm
from duplexgym.agents.training.batch import FORCED
from duplexgym.agents.training.logprobs import sampled_logprob
from duplexgym.agents.training.schedule import context_limit_s, draw_context_s
from duplexgym.rewards.spec import axis_term as spec_axis_term
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

#: The name the replay env is registered under with Ray Tune's registry.
ENV_NAME = "duplexgym_replay"
#: Env-runner state key (``get_state``/``set_state``): segment RNG and counters.
SAMPLER_STATE = "group_sampler"


def make_env(cfg: dict):
    """The env of an env runner (codes observations, token actions) from its ``env_config``: the
    replay env, or with ``env: conversation`` the live env of ``cfg["conversation"]``."""
    if cfg.get("env") == "conversation":
        from duplexgym.agents.training.config import make_live_env

        return make_live_env(cfg["corpus"], cfg.get("rewards"), cfg["conversation"])
    from duplexgym.envs.replay import DuplexReplayEnv

    return DuplexReplayEnv(corpus=cfg["corpus"], axes=tuple(cfg["axes"]), segments=cfg.get("segments"),
                           axis_weights=cfg.get("axis_weights"), rewards=cfg.get("rewards"),
                           obs_mode="codes", action_mode="tokens", lead_in_s=float(cfg.get("lead_in_s") or 0.0))


class GroupEnvRunner(SingleAgentEnvRunner):
    """Group rollouts: one segment per group, its ``num_envs_per_env_runner`` sub-envs replay it,
    one batched streaming MoshiAgent acts for all rows. Only ``sample`` is overridden."""

    _agent = None
    _segment_rng = None
    _groups_sampled = 0
    _live = False

    def _sampling(self) -> dict:
        return dict(self.config.env_config["sampling"])

    def _module(self):
        module = self.module
        return module[DEFAULT_MODULE_ID] if hasattr(module, "keys") else module

    def _get_agent(self):
        if self._agent is None:
            from duplexgym.agents.policies.moshi_agent import MoshiAgent

            sampling = self._sampling()
            # The agent streams with the RLModule's own LM: weight syncs (load_state_dict, in place)
            # reach the sampler without rebuilding it.
            module = self._module()
            models = with_lm(module.model_source(), module.lm.eval(), device=module.lm.device)  # Mimi beside the LM
            seed = int(np.random.SeedSequence([sampling["seed"], 1, self.worker_index]).generate_state(1)[0])
            sampler = module.sampler()
            self._agent = MoshiAgent(models, batch_size=self.num_envs, seed=seed, prompt=module.prompt(models), **sampler)
            self._text_logp = None  # [B] sampler log-prob of the text token drawn at the last step
            hook = self._agent.lm_gen.on_text_logits_hook
            temp_text = float(sampler["temp_text"])

            def capture(text_logits, hook=hook):
                logits = text_logits[:, 0, 0].clone()  # before the agent's sampler edits them
                hook(text_logits)
                token = text_logits[:, 0, 0].argmax(dim=-1)  # the only finite logit left
                # untruncated, as the learner computes them (module docstring)
                self._text_logp = sampled_logprob(logits, token, temp_text, 0).cpu().numpy()

            self._agent.lm_gen.on_text_logits_hook = capture
            self._segment_rng = np.random.default_rng([sampling["seed"], 2, self.worker_index])
            self._context_rng = np.random.default_rng([sampling["seed"], 4, self.worker_index])
            from duplexgym.envs.corpus import ReplayCorpus, SegmentSampler

            env_config = self.config.env_config
            corpus = ReplayCorpus(env_config["corpus"])
            self._agent.check_codec(corpus.codec_id)  # the corpus codes must be the model's Mimi's
            # records carry the agent's decoded words (the judges read them), as in evaluation
            self.env.unwrapped.call("set_text_tokenizer", self._agent.text_tokenizer_path)
            self._live = env_config.get("env") == "conversation"
            self._decoder = self._group_decoder(sampling.get("reward_decode", "auto"), module.lm.device)
            self._sampler = None if self._live else SegmentSampler(
                corpus, tuple(env_config["axes"]), env_config.get("axis_weights"), env_config.get("segments"))
        return self._agent

    def _group_decoder(self, mode: str, device):
        """The Mimi that decodes a whole group's codes for the ``vad`` reader on the runner's device
        (``reward_decode``: group, or auto on a GPU), or None: each env decodes its own rollout."""
        if self._live:  # the live env scores its own events
            return None
        base = self.env.unwrapped.envs[0].unwrapped  # a DuplexReplayEnv (codes in, tokens out)
        if base.reward_spec.activity.reader != "vad":
            return None
        if mode == "episode" or (mode == "auto" and device.type == "cpu"):
            return None
        from duplexgym.corpora.codec import load_mimi

        return load_mimi(base.codec, device)  # the env's codec: the corpus' (checked against the agent's)

    def _decode_group(self, history: list, infos: list) -> None:
        """Decode every row's segment frames (``history``: the group's ``[G, 9]`` actions per env
        frame, the last step's included) in one Mimi batch and hand each env its audio."""
        from duplexgym.corpora.codec import decode

        acts = np.stack(history, axis=1)  # [G, N, 9]
        p = int(infos[0]["prefix_frames"])
        codes = np.ascontiguousarray(acts[:, p:, 1:].transpose(0, 2, 1))  # [G, 8, F]
        audio = decode(self._decoder, codes)  # [G, F * 1920]
        for r, env in enumerate(self.env.unwrapped.envs):
            env.unwrapped.provide_decoded_audio(codes[r], audio[r])

    def sampler_state(self) -> dict:
        """The segment schedule's state: the segment RNG, the group counter, the agent's episode
        counter (its episode seeds derive from it). JSON-able; see :meth:`set_sampler_state`."""
        agent = self._get_agent()
        return {"worker_index": int(self.worker_index), "groups_sampled": int(self._groups_sampled),
                "segment_rng": self._segment_rng.bit_generator.state,
                "context_rng": self._context_rng.bit_generator.state,
                "episodes_started": int(agent.episodes_started)}

    def set_sampler_state(self, state: dict) -> None:
        agent = self._get_agent()
        self._groups_sampled = int(state["groups_sampled"])
        self._segment_rng.bit_generator.state = state["segment_rng"]
        if "context_rng" in state:
            self._context_rng.bit_generator.state = state["context_rng"]
        agent.episodes_started = int(state["episodes_started"])

    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._agent is not None and self._check_component(SAMPLER_STATE, components, not_components):
            state[SAMPLER_STATE] = self.sampler_state()
        return state

    def set_state(self, state) -> None:
        super().set_state({k: v for k, v in state.items() if k != SAMPLER_STATE})
        if SAMPLER_STATE in state:
            self.set_sampler_state(state[SAMPLER_STATE])

    def next_segment(self) -> str:
        """The next group's segment, from this runner's seeded stream (axis by ``axis_weights``,
        then uniformly: :class:`~duplexgym.envs.corpus.SegmentSampler`, as the env draws)."""
        return self._sampler.draw(self._segment_rng).id

    def next_dialogue_seed(self) -> int:
        """The next live group's dialogue seed, from the same seeded stream (``env: conversation``):
        it picks the dialogue and seeds the user (``reset(options={"dialogue": seed})``)."""
        return int(self._segment_rng.integers(2**62))

    def _group_reset_options(self) -> tuple[dict, str | None]:
        """The group's reset options and the segment every sub-env must report (None: live, where
        the dialogue seed decides the segment id)."""
        if self._live:
            return {"dialogue": self.next_dialogue_seed()}, None
        segment = self.next_segment()
        return {"segment": segment, "context_s": self.next_context_s()}, segment

    def sample(self, *, num_groups: int | None = None, **kwargs) -> list[SingleAgentEpisode]:
        agent = self._get_agent()
        n_groups = int(num_groups or self._sampling()["groups_per_runner"])
        episodes: list[SingleAgentEpisode] = []
        steps = 0
        for _ in range(n_groups):
            group_eps, n = self._sample_group(agent)
            episodes.extend(group_eps)
            steps += n
        self._done_episodes_for_metrics.extend(episodes)
        self._increase_sampled_metrics(steps, len(episodes))
        return episodes

    def next_context_s(self) -> float:
        """The next group's context length (s): the context curriculum of ``sampling["context"]``
        (``p``, ``max_s``, ``schedule``), its limit set by the iteration this group belongs to."""
        sampling = self._sampling()
        ctx = sampling.get("context") or {}
        if not ctx.get("p"):
            return 0.0
        iteration = self._groups_sampled // max(1, int(sampling["groups_per_runner"]))
        limit = context_limit_s(iteration, int(sampling["iterations"]), float(ctx["max_s"]), ctx["schedule"])
        return draw_context_s(self._context_rng, float(ctx["p"]), limit)

    def _sample_group(self, agent):
        G = self.num_envs
        options, segment = self._group_reset_options()
        group_id = f"w{self.worker_index}-g{self._groups_sampled}"
        self._groups_sampled += 1
        obs, infos = self._try_env_reset(options=options)
        infos = list(infos) if isinstance(infos, (list, tuple)) else row_infos(infos, G)
        segment = infos[0]["segment"] if segment is None else segment
        assert all(info["segment"] == segment for info in infos), "sub-envs must play the group's segment"
        agent.reset_batch(infos)
        prompted = agent.prompt_frames[0] is not None
        eps = []
        for r in range(G):
            e = SingleAgentEpisode(observation_space=self.env.single_observation_space,
                                   action_space=self.env.single_action_space)
            reset_infos = {k: v for k, v in infos[r].items() if k != "forced_prefix"}
            if prompted:  # the prompt phases lead the episode: forced, out of the loss, no reward
                self._add_prompt(e, agent.prompt_frames[r], np.asarray(obs[r]), reset_infos)
            else:
                e.add_env_reset(observation=np.asarray(obs[r]), infos=reset_infos)
            e.custom_data.update(group=group_id, segment=segment, axis=infos[r]["axis"],
                                 forced_frames=int(infos[r]["forced_frames"]), episode_seed=int(agent.episode_seeds[r]),
                                 prefix_frames=int(infos[r].get("prefix_frames", 0)),
                                 context_frames=int(infos[r].get("context_frames", 0)))
            if self._live:  # what replays the dialogue: reset(options={"dialogue": ..., "user_seed": ...})
                e.custom_data.update(dialogue=infos[r]["dialogue"], user_seed=int(infos[r]["user_seed"]))
            eps.append(e)
        t, done = 0, np.zeros(G, bool)
        history, reward_s = [], 0.0  # the group's actions per env frame; seconds of the reward's decode + scoring
        last = int(infos[0]["n_frames"]) - 1 if not self._live else -1
        while not done.all():
            # the text of env frame t was drawn at the step before (after a prompt, its last step)
            previous = self._text_logp if t > 0 or prompted else None
            self._text_logp = None
            actions = agent.act_batch(np.asarray(obs))
            if self._live:
                obs, rewards, terms, truncs, step_infos = self._step_live(actions, obs, done)
            else:
                if self._decoder is not None:
                    history.append(actions)
                t0 = time.perf_counter()
                if t == last and self._decoder is not None:  # every row ends here: decode the group at once
                    self._decode_group(history, infos)
                obs, rewards, terms, truncs, step_infos = self._try_env_step(actions)
                if t == last:  # the final step scores every rollout (its decode and silero, if not done above)
                    reward_s = time.perf_counter() - t0
                step_infos = list(step_infos) if isinstance(step_infos, (list, tuple)) else row_infos(step_infos, G)
            for r in range(G):
                if done[r]:
                    continue
                ended = bool(terms[r] or truncs[r])
                info = {key: v for key, v in step_infos[r].items() if key in ("frame", "forced", "reward_terms")}
                # out of the loss: frames the env forced, and those before the segment (lead-in, context)
                masked = bool(step_infos[r].get("forced")) or not bool(step_infos[r].get("in_segment", True))
                eps[r].add_env_step(observation=np.asarray(obs[r]), action=actions[r], reward=float(rewards[r]),
                                    infos=info, terminated=bool(terms[r]), truncated=bool(truncs[r]),
                                    extra_model_outputs={FORCED: np.bool_(masked), Columns.ACTION_LOGP: np.float32(
                                        previous[r] if previous is not None else 0.0)})
                done[r] = ended
            t += 1
        for e in eps:
            e.custom_data["reward"] = float(e.get_return())
            e.custom_data["reward_s"] = reward_s / G  # the group's scoring time, shared out
            e.custom_data["reward_decode"] = "group" if self._decoder is not None else "episode"
            terms = e.get_infos(-1).get("reward_terms") or {}
            axis_term = spec_axis_term(terms.get("terms") or {}, e.custom_data["axis"])
            if self._live:  # the dialogue's reward over its events, without the dense shaping
                axis_term = None if terms.get("failed") or "reward" not in terms else {"value": terms["reward"]}
            e.custom_data["score"] = None if axis_term is None else float(axis_term["value"])
            e.custom_data["failed"] = sorted(terms.get("failed") or {})
            # each weighted term of the reward, and the dense shaping: the components of GDPO
            e.custom_data["components"] = {**{name: float(t["weight"]) * float(t["value"])
                                              for name, t in (terms.get("terms") or {}).items() if t["weight"]},
                                           "dense": float(terms.get("dense") or 0.0)}
        return [e.to_numpy() for e in eps], t * G

    @staticmethod
    def _add_prompt(e: SingleAgentEpisode, frames, first_obs: np.ndarray, reset_infos: dict) -> None:
        """Start episode ``e`` with the prompt's ``P`` LM steps (:class:`~duplexgym.agents.policies.personaplex.PromptFrames`):
        observations the prompt's user frames, actions its forced frames, reward 0, all masked; the
        env's reset observation follows them. ``custom_data["prompt_frames"] = P`` (env frame ``j``
        is the episode's step ``P + j``)."""
        e.add_env_reset(observation=frames.user[0].astype(first_obs.dtype), infos={**reset_infos, "prompt": True})
        P = frames.frames
        for j in range(P):
            nxt = frames.user[j + 1].astype(first_obs.dtype) if j + 1 < P else first_obs
            e.add_env_step(observation=nxt, action=frames.actions[j], reward=0.0,
                           infos=reset_infos if j + 1 == P else {"prompt": True},
                           extra_model_outputs={FORCED: np.bool_(True), Columns.ACTION_LOGP: np.float32(0.0)})
        e.custom_data.update(prompt_frames=P, prompt_embedded=frames.embedded, prompt_text=frames.text)

    def _step_live(self, actions: np.ndarray, obs: np.ndarray, done: np.ndarray):
        """One step of the live sub-envs still playing (rows in ``done`` are left alone: their
        observation stays, reward 0, no infos); the vector env's ``step`` results."""
        envs = self.env.unwrapped.envs
        obs = np.array(obs, copy=True)
        G = len(envs)
        rewards, terms, truncs = np.zeros(G), np.zeros(G, bool), np.zeros(G, bool)
        infos = [{} for _ in range(G)]
        for r in np.flatnonzero(~done):
            obs[r], rewards[r], terms[r], truncs[r], infos[r] = envs[r].step(actions[r])
        return obs, rewards, terms, truncs, infos

    def stop(self):
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        super().stop()

