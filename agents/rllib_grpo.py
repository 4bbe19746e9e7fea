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

:class:`GrpoAlgorithm` drives it: sample on the runners, one learner update, weight sync.
:func:`train_policy` runs it on a local Ray (or a cluster) and returns per-iteration metrics;
:mod:`duplexgym.agents.rllib_ppo` reuses these pieces for PPO with a value head.

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
import time
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gymnasium import spaces  # noqa: E402

import duplexgym  # noqa: E402,F401  (registers the envs)
from duplexgym.agents.base import row_infos  # noqa: E402
from duplexgym.agents.checkpoint import TINY_SPEC, load_policy_lm, with_lm  # noqa: E402
from duplexgym.agents.grpo_math import (  # noqa: E402
    GrpoConfig, grpo_loss, group_advantages, group_step_advantages, stream_mask)
from duplexgym.agents.logprobs import sampled_logprob, token_logprobs  # noqa: E402

from ray.rllib.algorithms.algorithm import Algorithm  # noqa: E402
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig  # noqa: E402
from ray.rllib.connectors.connector_v2 import ConnectorV2  # noqa: E402
from ray.rllib.connectors.learner import NumpyToTensor  # noqa: E402
from ray.rllib.core import DEFAULT_MODULE_ID  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402
from ray.rllib.core.learner.torch.torch_learner import TorchLearner  # noqa: E402
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI  # noqa: E402
from ray.rllib.core.rl_module.rl_module import RLModuleSpec  # noqa: E402
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


def _sampler_kwargs(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("temp", "temp_text", "top_k", "top_k_text")}


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
        return {**DEFAULT_SAMPLER, **{k: v for k, v in (self.model_config or {}).items() if k in DEFAULT_SAMPLER}}

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
            self._agent = MoshiAgent(models, batch_size=self.num_envs, seed=seed, **_sampler_kwargs(grpo))
            self._text_logp = None  # [B] sampler log-prob of the text token drawn at the last step
            hook = self._agent.lm_gen.on_text_logits_hook
            temp_text = float(grpo["temp_text"])

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

    @staticmethod
    def settings(rl_module) -> dict:
        module = rl_module[DEFAULT_MODULE_ID] if hasattr(rl_module, "keys") else rl_module
        return dict((module.model_config or {}).get("train", {}))

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
        settings = self.settings(rl_module)
        cols = build_grpo_batch([_episode_record(e) for e in eps], advantage=settings.get("advantage", "episode"))
        with torch.no_grad():
            t = {k: torch.from_numpy(cols[k]) for k in (AGENT_TOKENS, USER_CODES)}
            old = self.policy_pass(module, t, cols)
            ref = module.logprobs(module.ref_lm, t)
        # Frames with a non-finite log-prob in a stream the loss covers leave the loss, counted. The
        # last frame's codebooks 1..7 are undefined (NaN: agents.logprobs), so with audio streams
        # each episode's last frame is left out; nothing else is expected.
        streams = stream_mask(settings.get("update_streams", "text"))
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
        train = self.module[module_id].model_config["train"]
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


# ------------------------------------------------------------------------------------ algorithm


class GrpoAlgoConfig(AlgorithmConfig):
    """``AlgorithmConfig`` of :class:`GrpoAlgorithm`: its RLModule and Learner by default."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GrpoAlgorithm)

    def get_default_rl_module_spec(self):
        return RLModuleSpec(module_class=GrpoRLModule)

    def get_default_learner_class(self):
        return GrpoLearner


#: How long a training iteration waits for Ray to bring a dead env runner back (seconds).
RUNNER_RESTORE_TIMEOUT_S = 180.0


class GrpoAlgorithm(Algorithm):
    """Samples groups on the env runners, one learner update, weight sync (GRPO and PPO alike).

    Fault tolerance: with remote env runners (``restart_failed_env_runners``), a runner that dies
    loses only its share of the current iteration's rollouts: Ray restarts the actor, the
    iteration waits for it, gives it the learner's weights and the segment schedule the dead one
    had when the iteration began, and samples that share again. No finished iteration is lost,
    and the restarted runner replays the segments the dead one would have."""

    @classmethod
    def get_default_config(cls):
        return GrpoAlgoConfig()

    last_episodes: list = []
    last_grpo: dict = {}

    def _sampling_remote(self) -> bool:
        return self.env_runner_group.num_remote_env_runners() > 0

    def _sample(self) -> tuple[list, int]:
        """Every sampling runner's episodes and metrics (``[(worker_index, episodes, metrics, state)]``,
        sorted by runner) and the number of runners restored on the way."""
        def work(runner):
            episodes = runner.sample()
            return int(runner.worker_index), episodes, runner.get_metrics(), runner.grpo_state()

        if not self._sampling_remote():
            return [work(self.env_runner)], 0
        group = self.env_runner_group
        expected = set(range(1, group.num_remote_env_runners() + 1))
        results = group.foreach_env_runner(work, local_env_runner=False)
        restored_total = 0
        deadline = time.monotonic() + RUNNER_RESTORE_TIMEOUT_S
        while missing := sorted(expected - {r[0] for r in results}):
            if time.monotonic() > deadline:
                raise RuntimeError(f"env runner(s) {missing} died and did not come back within "
                                   f"{RUNNER_RESTORE_TIMEOUT_S:.0f} s; the finished iterations are kept "
                                   "(resume from the last checkpoint)")
            restored = self.restore_env_runners(group)
            back = sorted(set(restored) & set(missing))
            if not back:
                time.sleep(1.0)
                continue
            restored_total += len(back)
            group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
            for idx in back:
                state = self.runner_states.get(idx)
                if state is not None:  # a runner that died in its first iteration starts fresh, as it did
                    group.foreach_env_runner(lambda r, state=state: r.set_grpo_state(state),
                                             remote_worker_ids=[idx], local_env_runner=False)
            results += group.foreach_env_runner(work, remote_worker_ids=back, local_env_runner=False)
        return sorted(results, key=lambda r: r[0]), restored_total

    @property
    def runner_states(self) -> dict:
        """``{worker_index: GrpoEnvRunner.grpo_state()}`` after the last finished sampling."""
        if "_runner_states" not in self.__dict__:
            self._runner_states = {}
        return self._runner_states

    def training_step(self):
        t0 = time.perf_counter()
        results, restored = self._sample()
        sample_s = time.perf_counter() - t0
        self.runner_states.update({idx: state for idx, _, _, state in results})
        episodes = [e for _, eps, _, _ in results for e in eps]
        self.metrics.aggregate([m for _, _, m, _ in results], key="env_runners")
        frames = sum(len(e) for e in episodes)
        epochs = int(self.config.rl_module_spec.model_config["train"]["epochs"])
        t1 = time.perf_counter()
        learner_results = self.learner_group.update(episodes=episodes, num_epochs=epochs, minibatch_size=None,
                                                    timesteps={"num_env_steps_sampled_lifetime": frames})
        update_s = time.perf_counter() - t1
        self.metrics.aggregate(learner_results, key="learners")
        t2 = time.perf_counter()
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        sync_s = time.perf_counter() - t2
        by_axis: dict[str, list] = {}
        scores: dict[str, list] = {}
        for e in episodes:
            by_axis.setdefault(e.custom_data["axis"], []).append(e.custom_data["reward"])
            if e.custom_data.get("score") is not None:
                scores.setdefault(e.custom_data["axis"], []).append(e.custom_data["score"])
        self.last_episodes = episodes
        total = sample_s + update_s + sync_s
        self.last_grpo = {"episodes": len(episodes), "frames": frames, "sample_s": sample_s, "update_s": update_s,
                          "sync_s": sync_s, "learner_share": update_s / total if total > 0 else float("nan"),
                          "frames_per_s": frames / sample_s if sample_s > 0 else float("nan"),
                          "iteration_frames_per_s": frames / total if total > 0 else float("nan"),
                          "reward_mean": {a: float(np.mean(v)) for a, v in by_axis.items()},
                          "score_mean": {a: float(np.mean(v)) for a, v in scores.items()},
                          "failed_episodes": sum(1 for e in episodes if e.custom_data.get("failed")),
                          "runners_restored": restored,
                          "groups": sorted({e.custom_data["group"] for e in episodes}),
                          "segments": sorted({e.custom_data["segment"] for e in episodes})}
        return None


def algorithm_config(cfg, segments=None) -> AlgorithmConfig:
    """The ``AlgorithmConfig`` of a validated :class:`~duplexgym.agents.train_config.TrainConfig`:
    GRPO (:class:`GrpoRLModule`, :class:`GrpoLearner`) or PPO (:mod:`duplexgym.agents.rllib_ppo`).
    ``segments``: sample only these segment ids (default: ``cfg.segments``)."""
    from ray.tune.registry import register_env

    from duplexgym.envs.replay import AUDIO_CARD, N_CODEBOOKS, TEXT_CARD

    register_env(ENV_NAME, _make_env)
    n_runners = max(1, int(cfg.env_runners))
    if cfg.segments_per_iteration % n_runners:
        raise ValueError(f"segments_per_iteration={cfg.segments_per_iteration} must split evenly over "
                         f"{n_runners} env runners")
    sampler = dict(DEFAULT_SAMPLER)
    grpo = {"seed": int(cfg.seed), "groups_per_runner": cfg.segments_per_iteration // n_runners, **sampler}
    segments = segments if segments is not None else cfg.segments
    env_config = {"corpus": str(cfg.corpus), "axes": list(cfg.axes), "segments": list(segments) if segments else None,
                  "axis_weights": cfg.axis_weights, "rewards": cfg.rewards, "grpo": grpo}
    train = {k: getattr(cfg, k) for k in ("algorithm", "clip_eps", "kl_coef", "update_streams", "advantage", "epochs",
                                          "gamma", "lam", "vf_coef")}
    if cfg.algorithm == "ppo":
        from duplexgym.agents.rllib_ppo import PpoAlgoConfig, PpoConnector, PpoLearner, PpoRLModule

        config_cls, module_cls, learner_cls, connector_cls = PpoAlgoConfig, PpoRLModule, PpoLearner, PpoConnector
    else:
        config_cls, module_cls, learner_cls, connector_cls = GrpoAlgoConfig, GrpoRLModule, GrpoLearner, GrpoConnector
    obs_space = spaces.MultiDiscrete([AUDIO_CARD] * N_CODEBOOKS)
    act_space = spaces.MultiDiscrete([TEXT_CARD] + [AUDIO_CARD] * N_CODEBOOKS)
    return (
        config_cls()
        .environment(ENV_NAME, env_config=env_config)
        .framework("torch")
        .env_runners(env_runner_cls=GrpoEnvRunner, num_env_runners=int(cfg.env_runners),
                     num_envs_per_env_runner=int(cfg.group_size), sample_timeout_s=None,
                     gym_env_vectorize_mode="sync")
        .learners(num_learners=0, learner_class=learner_cls,
                  learner_connector=lambda obs, act: [connector_cls(), NumpyToTensor()],
                  add_default_connectors_to_learner_pipeline=False)
        .training(lr=cfg.lr)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module_cls, observation_space=obs_space,
                                               action_space=act_space,
                                               model_config={**sampler, "model": cfg.model, "train": train}))
        .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=100,
                         delay_between_env_runner_restarts_s=1.0)
        .debugging(seed=int(cfg.seed))
    )


def start_ray(address: str | None = None, temp_dir: str | os.PathLike | None = None) -> bool:
    """Start a local Ray (``address`` None) or join the cluster at ``address``; False if Ray was
    already running in this process (then nothing is started)."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"NO_TORCH_COMPILE": "1", "OMP_WAIT_POLICY": "PASSIVE", "RAY_AUTH_MODE": "disabled"}}
    if address is not None:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        return True
    temp = Path(temp_dir or Path("/tmp") / f"duplexgym-ray-{os.getpid()}")
    temp.mkdir(parents=True, exist_ok=True)
    ray.init(_temp_dir=str(temp), include_dashboard=False, num_cpus=max(2, os.cpu_count() or 1), log_to_driver=False,
             runtime_env=runtime_env)
    return True


def train_policy(cfg, on_iteration=None, resume: str | os.PathLike | None = None, on_start=None,
                 ray_temp_dir: str | os.PathLike | None = None, segments=None) -> list[dict]:
    """Run ``cfg`` (a validated :class:`~duplexgym.agents.train_config.TrainConfig`) on Ray: a local
    one, or the cluster at ``cfg.ray_address``. Returns per-iteration metrics (reward and axis-score
    means per axis, loss, kl, frames/s, ...); ``on_iteration(algo, metrics)`` is called after each.

    ``cfg.iterations`` counts from the start of training: with ``resume`` (a folder written by
    :func:`save_training_checkpoint`) the algorithm (weights, Adam state, the runners' segment
    schedule) is restored and iterations ``k .. iterations - 1`` run, ``k`` the checkpoint's
    finished iterations. ``on_start(algo, k)`` is called once the algorithm is built (and restored)."""
    import ray

    started = start_ray(cfg.ray_address, ray_temp_dir)
    algo = None
    out = []
    try:
        algo = algorithm_config(cfg, segments).build_algo()
        start = restore_training_checkpoint(algo, resume) if resume is not None else 0
        if on_start is not None:
            on_start(algo, start)
        for i in range(start, cfg.iterations):
            t0 = time.perf_counter()
            result = algo.train()
            learner = result.get("learners", {}).get(DEFAULT_MODULE_ID, {})
            m = dict(algo.last_grpo)
            m.update(iteration=i, wall_s=time.perf_counter() - t0,
                     **{k: _num(learner.get(k)) for k in LEARNER_METRICS})
            out.append(m)
            if on_iteration is not None:
                on_iteration(algo, m)
    finally:
        if algo is not None:
            algo.stop()
        if started:
            ray.shutdown()
    return out


#: Learner metrics copied into each iteration's row (NaN when the algorithm has none, e.g. value_loss for GRPO).
LEARNER_METRICS = ("loss", "kl", "policy_loss", "value_loss", "clip_fraction", "ratio_mean", "approx_kl", "tokens",
                   "nonfinite_frames", "adv_abs_mean", "sampler_logp_gap", "value_mean",
                   "return_mean")


def _num(x) -> float:
    if x is None:
        return float("nan")
    if hasattr(x, "peek"):
        x = x.peek()
    return float(x)


def text_weights(module) -> dict[str, np.ndarray]:
    """Copies of an RLModule's (or LM's) text weights, to check that updates and syncs happened."""
    lm = getattr(module, "lm", module)
    return {n: p.detach().cpu().numpy().copy() for n, p in lm.named_parameters()
            if n in ("text_emb.weight", "text_linear.weight")}


def runner_text_weights(algo) -> list[dict[str, np.ndarray]]:
    """:func:`text_weights` of the LM each env runner's MoshiAgent samples with (remote runners,
    else the local one); asserts the agent streams with the runner's RLModule LM."""

    def read(runner):
        module = runner._module()
        if runner._agent is not None:
            assert runner._agent.lm is module.lm, "the sampler must stream with the RLModule's LM"
        return text_weights(module)

    remote = algo.env_runner_group.num_remote_env_runners() > 0
    return algo.env_runner_group.foreach_env_runner(read, local_env_runner=not remote)


def learner_text_weights(algo) -> dict[str, np.ndarray]:
    """:func:`text_weights` of the (local) learner's LM."""
    return text_weights(algo.learner_group._learner.module[DEFAULT_MODULE_ID])


# ------------------------------------------------------------------------------------ checkpoints


def _sampling_runners(algo, fn):
    remote = algo.env_runner_group.num_remote_env_runners() > 0
    return algo.env_runner_group.foreach_env_runner(fn, local_env_runner=not remote)


def save_training_checkpoint(algo, path: str | os.PathLike, iterations_done: int, extra: dict | None = None) -> Path:
    """``algo.save_to_path(path)`` (learner weights, reference LM, Adam state, runner states) plus
    ``grpo_runners.json``: ``iterations_done`` and every sampling runner's segment schedule
    (:meth:`GrpoEnvRunner.grpo_state`; remote runners' states are not in RLlib's checkpoint)."""
    import json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    algo.save_to_path(str(path))
    runners = _sampling_runners(algo, lambda r: r.grpo_state())
    (path / RUNNER_STATE_NAME).write_text(json.dumps(
        {"iterations_done": int(iterations_done), "runners": runners, **(extra or {})}, indent=1) + "\n")
    return path


def read_training_checkpoint(path: str | os.PathLike) -> dict:
    """The ``grpo_runners.json`` of a checkpoint folder; ``ValueError`` if it is not one."""
    import json

    path = Path(path)
    meta = path / RUNNER_STATE_NAME
    if not path.is_dir() or not meta.is_file():
        raise ValueError(f"resume: {path} is not a training checkpoint (no {RUNNER_STATE_NAME}; "
                         "checkpoints are written to OUT/checkpoints/iter_XXXX)")
    return json.loads(meta.read_text())


def restore_training_checkpoint(algo, path: str | os.PathLike) -> int:
    """Restore ``algo`` from :func:`save_training_checkpoint`'s folder; returns the iterations done."""
    meta = read_training_checkpoint(path)
    states = {int(st["worker_index"]): st for st in meta["runners"]}
    algo.restore_from_path(str(Path(path).resolve()))
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)

    def apply(runner, states=states):
        state = states.get(int(runner.worker_index))
        if state is None:
            raise ValueError(f"resume: the checkpoint holds no segment schedule for env runner {runner.worker_index} "
                             f"(it has {sorted(states)}); resume with the same env_runners")
        runner.set_grpo_state(state)
        return True

    if len(states) != len(_sampling_runners(algo, lambda r: r.worker_index)):
        raise ValueError(f"resume: the checkpoint has {len(states)} env runner state(s); this run samples on "
                         f"{max(1, algo.env_runner_group.num_remote_env_runners())}; resume with the same env_runners")
    _sampling_runners(algo, apply)
    algo.runner_states.update(states)
    return int(meta["iterations_done"])


def learner_lm(algo):
    """The (local) learner's trained LM."""
    return algo.learner_group._learner.module[DEFAULT_MODULE_ID].lm


def export_policy(algo, out_dir: str | os.PathLike) -> Path:
    """The learner's LM as a moshi-loadable checkpoint folder (Kyutai layout, with the trained model's
    Mimi and text tokenizer): ``make_agent("moshi:" + out_dir, env)`` and ``duplexgym eval --agent
    moshi:DIR`` load it."""
    from duplexgym.agents.checkpoint import save_checkpoint

    module = algo.learner_group._learner.module[DEFAULT_MODULE_ID]
    models = with_lm(module.model_source(), module.lm)
    return save_checkpoint(models.lm, models.mimi, models.text_tokenizer, out_dir, models.lm_kwargs)


def learner_optimizer_state(algo) -> dict:
    """The learner's optimizer state (numpy), as RLlib checkpoints it."""
    return algo.learner_group._learner._get_optimizer_state()
