"""GRPO for the tiny streaming Moshi on Ray RLlib's new API stack.

Four pieces, as in ``shared/RLLIB.md``:

- :class:`GrpoEnvRunner` (a ``SingleAgentEnvRunner`` overriding only ``sample``): per group it picks
  ONE segment from its own seeded stream, resets its ``G`` sub-envs on it
  (``options={"segment": id}``), and rolls out the ``G`` episodes with ONE batched
  :class:`~duplexgym.agents.moshi_agent.MoshiAgent` (``batch_size=G``, LMGen + Mimi streaming) built on
  the runner's RLModule LM, so weight syncs land in the sampler in place. Each row becomes a
  ``SingleAgentEpisode``: observations = user codes, actions = agent tokens, the env's reward, the
  per-step ``forced`` flag in ``extra_model_outputs``, the group id in ``custom_data``.
- :class:`GrpoConnector` (the learner connector, the only piece): group-normalised advantages
  (:func:`~duplexgym.agents.grpo_math.group_advantages`), a zero-padded ``[B, ., T]`` batch of whole
  episodes in model-frame order (:func:`~duplexgym.agents.logprobs.episode_model_frames`), the loss
  mask (padding and forced frames out), and the old / reference log-probs under ``no_grad``.
- :class:`GrpoRLModule`: the LM (trained) and a frozen reference LM (never sent to the runners);
  ``_forward_train`` computes teacher-forced log-probs (:func:`~duplexgym.agents.logprobs.token_logprobs`).
- :class:`GrpoLearner` (``TorchLearner``): :func:`~duplexgym.agents.grpo_math.grpo_loss`, Adam.

:mod:`duplexgym.agents.rllib_train` drives them (sample on the runners, one learner update, weight
sync; local Ray or a cluster; checkpoints and policy export); :mod:`duplexgym.agents.rllib_ppo`
reuses them for PPO with a value head.

Log-probs in the loss: the policy is the temperature-scaled softmax over the WHOLE vocabulary
(``temp_text`` for text, ``temp`` for audio), without the sampler's top-k truncation, for old, new and
reference log-probs alike (as TRL and verl compute them): truncated log-probs are ``-inf`` for any
token outside the current top-k, which makes the k3 KL to the reference infinite as soon as the
policy drifts and the ratio undefined after the first epoch. The sampler still draws from its
top-k; the untruncated log-prob of a drawn token differs from the truncated one by the log of the
top-k mass, the same constant in numerator and denominator when the top-k set does not change.

Old log-probs: the text stream's are the sampler's own, recorded per step as ``ACTION_LOGP`` (the
runner wraps the agent's text-logits hook); the audio streams' are teacher-forced under the
learner's weights when the batch is built. The learner reports ``sampler_logp_gap``, the largest gap
between the sampler's text log-probs and the teacher-forced ones under the learner's weights: ~1e-6
when the runners sample with the synced weights. Frames with a non-finite log-prob in a stream the
loss covers (with audio streams: each episode's last frame, whose codebooks 1..7 are undefined)
are left out of the loss and counted (``nonfinite_frames``). Each iteration runs ``epochs`` passes of
one update over the whole batch (one minibatch).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import duplexgym  # noqa: E402,F401  (registers the envs)
from duplexgym.agents.base import row_infos  # noqa: E402
from duplexgym.agents.checkpoint import TINY_SPEC, load_policy_lm, with_lm  # noqa: E402
from duplexgym.agents.grpo_math import (  # noqa: E402
    GrpoConfig, grpo_loss, group_advantages, group_step_advantages, stream_mask)
from duplexgym.agents.logprobs import sampled_logprob, token_logprobs  # noqa: E402

from ray.rllib.connectors.connector_v2 import ConnectorV2  # noqa: E402
from ray.rllib.core import DEFAULT_MODULE_ID  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402
from ray.rllib.core.learner.torch.torch_learner import TorchLearner  # noqa: E402
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI  # noqa: E402
from ray.rllib.core.rl_module.torch import TorchRLModule  # noqa: E402
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner  # noqa: E402
from ray.rllib.env.single_agent_episode import SingleAgentEpisode  # noqa: E402

ENV_NAME = "duplexgym_grpo_replay"
#: Batch columns built by :class:`GrpoConnector`.
AGENT_TOKENS, USER_CODES, LOSS_MASK = "agent_tokens", "user_codes", "loss_mask"
ADVANTAGES, OLD_LOGP, REF_LOGP, GROUP = "advantages", "old_logp", "ref_logp", "group"
SAMPLER_GAP = "sampler_logp_gap"  # per row: max |sampler - teacher-forced| text log-prob
STEP_REWARDS = "step_rewards"  # [B, T] env reward of env frame f + 1 at model frame f
FAILED_EPISODES = "failed_episodes"  # per row: 1.0 when a reward term failed (left out of the loss)
NONFINITE = "nonfinite_frames"  # per row: frames left out for a non-finite old/ref log-prob
SAMPLER_TEXT_LOGP = "sampler_text_logp"  # [B, T] the sampler's text log-probs (ACTION_LOGP)
FORCED = "forced"  # per-step extra model output: the env forced this frame
GRPO_SAMPLER_STATE = "grpo_sampler"  # env-runner state key: segment RNG and counters
#: Beside an ``algo.save_to_path`` checkpoint: every sampling runner's :meth:`GrpoEnvRunner.grpo_state`
#: and the number of finished iterations (see :func:`save_training_checkpoint`).
RUNNER_STATE_NAME = "grpo_runners.json"


def _make_env(cfg: dict):
    from duplexgym.envs.replay import DuplexReplayEnv

    return DuplexReplayEnv(corpus=cfg["corpus"], axes=tuple(cfg["axes"]), segments=cfg.get("segments"),
                           axis_weights=cfg.get("axis_weights"), rewards=cfg.get("rewards"),
                           obs_mode="codes", action_mode="tokens")


DEFAULT_SAMPLER = {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25}


# ------------------------------------------------------------------------------------ RLModule


class GrpoRLModule(TorchRLModule, InferenceOnlyAPI):
    """A Moshi LM (``model_config["model"]``: ``"tiny"`` or a checkpoint folder) as an RLModule; the
    learner's copy also holds the frozen reference LM (the same weights, never updated)."""

    def setup(self):
        self.lm = load_policy_lm(self.model_source())
        if not self.inference_only:
            self.ref_lm = load_policy_lm(self.model_source())
            self.ref_lm.requires_grad_(False)

    def model_source(self) -> str:
        return (self.model_config or {}).get("model", TINY_SPEC)

    def get_non_inference_attributes(self):
        return ["ref_lm"]

    def sampler(self) -> dict:
        """The streaming sampler's temperatures and top-k (``model_config``, else :data:`DEFAULT_SAMPLER`)."""
        return {**DEFAULT_SAMPLER, **{k: v for k, v in (self.model_config or {}).items() if k in DEFAULT_SAMPLER}}

    def train_settings(self) -> dict:
        """The loss settings of the training config (``model_config["train"]``: clip_eps, kl_coef,
        update_streams, advantage, epochs, gamma, lam, vf_coef), as ``algorithm_config`` puts them."""
        return self.model_config["train"]

    def logprobs(self, lm, batch) -> torch.Tensor:
        """Teacher-forced ``[B, 9, T]`` log-probs of the batch's agent tokens under ``lm``: the
        sampler's temperatures, no top-k truncation (module docstring)."""
        lm.eval()  # dropout-free, as the streaming sampler
        s = self.sampler()
        return token_logprobs(lm, batch[AGENT_TOKENS].long(), batch[USER_CODES].long(), temp_text=s["temp_text"],
                              top_k_text=0, temp=s["temp"], top_k=0)

    def _forward(self, batch, **kwargs):
        """Acting goes through GrpoEnvRunner's streaming MoshiAgent, never through this module."""
        raise RuntimeError("GrpoRLModule does not act through RLlib's connectors: GrpoEnvRunner "
                           "samples with a streaming MoshiAgent")

    def _forward_train(self, batch, **kwargs):
        return {"logp": self.logprobs(self.lm, batch)}


# ------------------------------------------------------------------------------------ env runner


class GrpoEnvRunner(SingleAgentEnvRunner):
    """Group rollouts: one segment per group, its ``num_envs_per_env_runner`` sub-envs replay it,
    one batched streaming MoshiAgent acts for all rows. Only ``sample`` is overridden."""

    _agent = None
    _segment_rng = None
    _groups_sampled = 0

    def _grpo(self) -> dict:
        return dict(self.config.env_config["grpo"])

    def _module(self):
        module = self.module
        return module[DEFAULT_MODULE_ID] if hasattr(module, "keys") else module

    def _get_agent(self):
        if self._agent is None:
            from duplexgym.agents.moshi_agent import MoshiAgent

            grpo = self._grpo()
            # The agent streams with the RLModule's own LM: weight syncs (load_state_dict, in place)
            # reach the sampler without rebuilding it.
            module = self._module()
            models = with_lm(module.model_source(), module.lm.eval())
            seed = int(np.random.SeedSequence([grpo["seed"], 1, self.worker_index]).generate_state(1)[0])
            sampler = module.sampler()
            self._agent = MoshiAgent(models, batch_size=self.num_envs, seed=seed, **sampler)
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
            self._segment_rng = np.random.default_rng([grpo["seed"], 2, self.worker_index])
            from duplexgym.envs.corpus import ReplayCorpus, SegmentSampler

            env_config = self.config.env_config
            corpus = ReplayCorpus(env_config["corpus"])
            self._agent.check_codec(corpus.codec_id)  # the corpus codes must be the model's Mimi's
            self._sampler = SegmentSampler(corpus, tuple(env_config["axes"]), env_config.get("axis_weights"),
                                           env_config.get("segments"))
        return self._agent

    def grpo_state(self) -> dict:
        """The segment schedule's state: the segment RNG, the group counter, the agent's episode
        counter (its episode seeds derive from it). JSON-able; see :meth:`set_grpo_state`."""
        agent = self._get_agent()
        return {"worker_index": int(self.worker_index), "groups_sampled": int(self._groups_sampled),
                "segment_rng": self._segment_rng.bit_generator.state,
                "episodes_started": int(agent.episodes_started)}

    def set_grpo_state(self, state: dict) -> None:
        agent = self._get_agent()
        self._groups_sampled = int(state["groups_sampled"])
        self._segment_rng.bit_generator.state = state["segment_rng"]
        agent.episodes_started = int(state["episodes_started"])

    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._agent is not None and self._check_component(GRPO_SAMPLER_STATE, components, not_components):
            state[GRPO_SAMPLER_STATE] = self.grpo_state()
        return state

    def set_state(self, state) -> None:
        super().set_state({k: v for k, v in state.items() if k != GRPO_SAMPLER_STATE})
        if GRPO_SAMPLER_STATE in state:
            self.set_grpo_state(state[GRPO_SAMPLER_STATE])

    def next_segment(self) -> str:
        """The next group's segment, from this runner's seeded stream (axis by ``axis_weights``,
        then uniformly: :class:`~duplexgym.envs.corpus.SegmentSampler`, as the env draws)."""
        return self._sampler.draw(self._segment_rng).id

    def sample(self, *, num_groups: int | None = None, **kwargs) -> list[SingleAgentEpisode]:
        agent = self._get_agent()
        n_groups = int(num_groups or self._grpo()["groups_per_runner"])
        episodes: list[SingleAgentEpisode] = []
        steps = 0
        for _ in range(n_groups):
            group_eps, n = self._sample_group(agent)
            episodes.extend(group_eps)
            steps += n
        self._done_episodes_for_metrics.extend(episodes)
        self._increase_sampled_metrics(steps, len(episodes))
        return episodes

    def _sample_group(self, agent):
        G = self.num_envs
        segment = self.next_segment()
        group_id = f"w{self.worker_index}-g{self._groups_sampled}"
        self._groups_sampled += 1
        obs, infos = self._try_env_reset(options={"segment": segment})
        infos = list(infos) if isinstance(infos, (list, tuple)) else row_infos(infos, G)
        assert all(info["segment"] == segment for info in infos), "sub-envs must replay the group's segment"
        agent.reset_batch(infos)
        eps = []
        for r in range(G):
            e = SingleAgentEpisode(observation_space=self.env.single_observation_space,
                                   action_space=self.env.single_action_space)
            e.add_env_reset(observation=np.asarray(obs[r]), infos={k: v for k, v in infos[r].items() if k != "forced_prefix"})
            e.custom_data.update(group=group_id, segment=segment, axis=infos[r]["axis"],
                                 forced_frames=int(infos[r]["forced_frames"]), episode_seed=int(agent.episode_seeds[r]))
            eps.append(e)
        k = int(infos[0]["forced_frames"])
        t, done = 0, np.zeros(G, bool)
        while not done.all():
            previous = self._text_logp if t > 0 else None  # text of model frame t - 1 = env frame t
            self._text_logp = None
            actions = agent.act_batch(np.asarray(obs))
            obs, rewards, terms, truncs, step_infos = self._try_env_step(actions)
            step_infos = list(step_infos) if isinstance(step_infos, (list, tuple)) else row_infos(step_infos, G)
            for r in range(G):
                if done[r]:
                    continue
                ended = bool(terms[r] or truncs[r])
                info = {key: v for key, v in step_infos[r].items() if key in ("frame", "forced", "reward_terms")}
                eps[r].add_env_step(observation=np.asarray(obs[r]), action=actions[r], reward=float(rewards[r]),
                                    infos=info, terminated=bool(terms[r]), truncated=bool(truncs[r]),
                                    extra_model_outputs={FORCED: np.bool_(t < k), Columns.ACTION_LOGP: np.float32(
                                        previous[r] if previous is not None else 0.0)})
                done[r] = ended
            t += 1
        for e in eps:
            e.custom_data["reward"] = float(e.get_return())
            terms = e.get_infos(-1).get("reward_terms") or {}
            axis_term = (terms.get("terms") or {}).get(e.custom_data["axis"])
            e.custom_data["score"] = None if axis_term is None else float(axis_term["value"])
            e.custom_data["failed"] = sorted(terms.get("failed") or {})
        return [e.to_numpy() for e in eps], t * G

    def stop(self):
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        super().stop()


# ------------------------------------------------------------------------------------ learner connector


ADVANTAGE_MODES = ("episode", "reward_to_go")


def build_grpo_batch(episodes: list[dict], normalize_std: bool = True, advantage: str = "episode") -> dict[str, np.ndarray]:
    """The zero-padded learner batch of whole episodes, in model-frame order.

    ``episodes``: per episode ``{"actions": [N, 9], "observations": [N(+1), 8], "forced": [N] bool,
    "reward": float, "group": hashable}`` and optionally ``"rewards": [N]`` (per-step env rewards;
    needed by ``advantage="reward_to_go"``), ``"failed": [term names]`` (an episode with a reward
    term that failed is left out of its group's statistics and of the loss) and ``"text_logp"``.
    Env-frame indexed, ``N`` steps. Model frame ``f`` is env frame ``f + 1``
    (:func:`~duplexgym.agents.logprobs.episode_model_frames`), so ``T = N - 1``.

    ``advantage``: ``"episode"`` (one group-normalised advantage per episode from its return,
    :func:`~duplexgym.agents.grpo_math.group_advantages`; ``advantages [B]``) or ``"reward_to_go"``
    (per model frame, from the per-step rewards: :func:`~duplexgym.agents.grpo_math.group_step_advantages`;
    ``advantages [B, T]``; model frame ``f`` is credited with the env rewards of frames ``f + 1 ..``).

    Returns ``agent_tokens [B, 9, T]``, ``user_codes [B, 8, T]``, ``loss_mask [B, T]`` (False on
    padding, on forced frames and on failed episodes), ``advantages``, ``group [B]`` (int ids),
    ``seq_lens [B]``, ``sampler_text_logp [B, T]``, ``step_rewards [B, T]`` (model frame ``f``: the
    env reward of env frame ``f + 1``; zeros when episodes carry no ``"rewards"``).
    """
    if advantage not in ADVANTAGE_MODES:
        raise ValueError(f"advantage: expected one of {ADVANTAGE_MODES}, got {advantage!r}")
    B = len(episodes)
    lengths = [len(e["actions"]) - 1 for e in episodes]
    T = max(lengths)
    tokens = np.zeros((B, 9, T), np.int64)
    user = np.zeros((B, 8, T), np.int64)
    mask = np.zeros((B, T), bool)
    text_logp = np.zeros((B, T), np.float32)
    step_rewards = np.zeros((B, T), np.float64)
    usable = np.array([not e.get("failed") for e in episodes], bool)
    for b, e in enumerate(episodes):
        a = np.asarray(e["actions"], np.int64)  # [N, 9]
        o = np.asarray(e["observations"], np.int64)[: len(a)]  # [N, 8] user frames fed at steps 0..N-1
        n = lengths[b]
        tokens[b, :, :n] = a[1:].T  # model frames 0..N-2 = env frames 1..N-1
        user[b, :, :n] = o[:-1].T  # user frames fed at steps 0..N-2
        forced = np.asarray(e["forced"], bool)[1:]  # env frames 1..N-1
        mask[b, :n] = ~forced & usable[b]
        if e.get("text_logp") is not None:
            text_logp[b, :n] = np.asarray(e["text_logp"], np.float32)[1:]
        if e.get("rewards") is not None:
            step_rewards[b, :n] = np.asarray(e["rewards"], np.float64)[1:]  # env frame f + 1 -> model frame f
        elif advantage == "reward_to_go":
            raise ValueError("advantage='reward_to_go' needs each episode's per-step 'rewards'")
    keys = {g: i for i, g in enumerate(dict.fromkeys(e["group"] for e in episodes))}
    groups = np.array([keys[e["group"]] for e in episodes], np.int64)
    # Failed episodes sit in a group of their own (id -1 - b): they never shift their group's mean.
    stat_groups = torch.from_numpy(np.where(usable, groups, -1 - np.arange(B)))
    if advantage == "episode":
        rewards = torch.tensor([float(e["reward"]) for e in episodes], dtype=torch.float64)
        adv = group_advantages(rewards, stat_groups, normalize_std=normalize_std)
    else:
        valid = torch.from_numpy(np.arange(T)[None, :] < np.asarray(lengths)[:, None])
        adv = group_step_advantages(torch.from_numpy(step_rewards), valid, stat_groups, normalize_std=normalize_std)
    adv = torch.where(torch.from_numpy(usable).reshape((B,) + (1,) * (adv.dim() - 1)), adv, torch.zeros_like(adv))
    return {AGENT_TOKENS: tokens, USER_CODES: user, LOSS_MASK: mask, SAMPLER_TEXT_LOGP: text_logp,
            ADVANTAGES: adv.numpy().astype(np.float32), GROUP: groups, Columns.SEQ_LENS: np.asarray(lengths, np.int32),
            STEP_REWARDS: step_rewards,
            FAILED_EPISODES: (~usable).astype(np.float32)}


def _episode_record(e: SingleAgentEpisode) -> dict:
    return {"actions": e.get_actions(), "observations": e.get_observations(),
            "forced": e.get_extra_model_outputs(FORCED), "text_logp": e.get_extra_model_outputs(Columns.ACTION_LOGP),
            "reward": e.custom_data["reward"], "rewards": e.get_rewards(),
            "failed": e.custom_data.get("failed") or [], "group": e.custom_data["group"]}


class GrpoConnector(ConnectorV2):
    """Learner connector: whole episodes -> the padded GRPO batch, with old and reference log-probs."""

    def policy_pass(self, module, t: dict, cols: dict) -> torch.Tensor:
        """``[B, 9, T]`` teacher-forced log-probs under the learner's weights (no grad); a subclass
        may keep more of the same pass in ``cols`` (PPO: the values)."""
        return module.logprobs(module.lm, t)

    def add_columns(self, module, cols: dict) -> None:
        """Hook for subclasses (PPO adds GAE advantages and returns); GRPO adds nothing."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        eps = list(self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False))
        if not eps:
            return batch
        module = rl_module[DEFAULT_MODULE_ID] if hasattr(rl_module, "keys") else rl_module
        settings = module.train_settings()
        cols = build_grpo_batch([_episode_record(e) for e in eps], advantage=settings["advantage"])
        with torch.no_grad():
            t = {k: torch.from_numpy(cols[k]) for k in (AGENT_TOKENS, USER_CODES)}
            old = self.policy_pass(module, t, cols)
            ref = module.logprobs(module.ref_lm, t)
        # Frames with a non-finite log-prob in a stream the loss covers leave the loss, counted. The
        # last frame's codebooks 1..7 are undefined (NaN: agents.logprobs), so with audio streams
        # each episode's last frame is left out; nothing else is expected.
        streams = stream_mask(settings["update_streams"])
        finite = (torch.isfinite(old[:, streams]).all(dim=1) & torch.isfinite(ref[:, streams]).all(dim=1)).numpy()
        cols[NONFINITE] = (cols[LOSS_MASK] & ~finite).sum(axis=1).astype(np.float32)  # [B]
        cols[LOSS_MASK] = cols[LOSS_MASK] & finite
        # The old text log-probs are the sampler's own (ACTION_LOGP); their gap to the teacher-forced
        # pass under the learner's weights checks that the runners sample with the synced weights.
        sampler = torch.from_numpy(cols[SAMPLER_TEXT_LOGP])
        valid = torch.from_numpy(cols[LOSS_MASK]) & torch.isfinite(sampler)
        gap = torch.where(valid, (sampler - old[:, 0]).abs(), torch.zeros_like(sampler))
        cols[SAMPLER_GAP] = gap.amax(dim=1).numpy()  # [B]
        cols[LOSS_MASK] = cols[LOSS_MASK] & torch.isfinite(sampler).numpy()
        old[:, 0] = torch.where(torch.isfinite(sampler), sampler, old[:, 0])
        cols[OLD_LOGP] = old.numpy()
        cols[REF_LOGP] = ref.numpy()
        self.add_columns(module, cols)
        batch[DEFAULT_MODULE_ID] = cols
        if shared_data is not None:
            shared_data[f"_zero_padded_for_mid={DEFAULT_MODULE_ID}"] = True
        return batch


# ------------------------------------------------------------------------------------ learner


class GrpoLearner(TorchLearner):
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        train = self.module[module_id].train_settings()
        cfg = GrpoConfig(group_size=max(2, int(config.num_envs_per_env_runner)), clip_eps=train["clip_eps"],
                         kl_coef=train["kl_coef"], update_streams=train["update_streams"])
        loss, metrics = grpo_loss(fwd_out["logp"], batch[OLD_LOGP], batch[REF_LOGP], batch[ADVANTAGES],
                                  batch[LOSS_MASK].bool(), cfg)
        self.log_metrics(module_id, batch, loss, metrics, "grpo_loss")
        return loss

    def log_metrics(self, module_id, batch, loss, metrics: dict, loss_name: str) -> None:
        metrics["nonfinite_frames"] = batch[NONFINITE].sum()
        metrics["failed_episodes"] = batch[FAILED_EPISODES].sum()
        metrics["adv_abs_mean"] = batch[ADVANTAGES].abs().mean()
        metrics["sampler_logp_gap"] = batch[SAMPLER_GAP].max()
        self.metrics.log_dict({loss_name: loss.item(), "loss": loss.item(), **{k: float(v) for k, v in metrics.items()}},
                              key=module_id, window=1)
