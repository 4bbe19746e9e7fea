"""The RLModule of every algorithm here: a Moshi LM that the env runners sample with and the learner
trains, plus (learner only) the frozen reference LM of the KL term.

Log-probs in the loss: the policy is the temperature-scaled softmax over the WHOLE vocabulary
(``temp_text`` for text, ``temp`` for audio), without the sampler's top-k truncation, for old, new and
reference log-probs alike (as TRL and verl compute them): truncated log-probs are ``-inf`` for any
token outside the current top-k, which makes the k3 KL to the reference infinite as soon as the
policy drifts and the ratio undefined after the first epoch. The sampler still draws from its
top-k; the untruncated log-prob of a drawn token differs from the truncated one by the log of the
top-k mass, the same constant in numerator and denominator when the top-k set does not change.
"""

from __future__ import annotations

import contextlib

import torch
from duplexgym.agents.policies.checkpoint import load_policy_lm
from duplexgym.agents.training.adapters import DTYPES, adapters_off, autocast, prepare
from duplexgym.agents.training.batch import AGENT_TOKENS, USER_CODES
from duplexgym.agents.training.logprobs import token_logprobs
from duplexgym.agents.training.losses import exact_kl
from duplexgym.agents.training.sharding import full_tensor, is_sharded, shard_like
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from duplexgym.constants import SAMPLER_DEFAULTS, TINY_MODEL


class MoshiRLModule(TorchRLModule, InferenceOnlyAPI):
    """A Moshi LM (``model_config["model"]``: ``"tiny"`` or a checkpoint folder) as an RLModule; the
    learner's copy also holds the frozen reference LM (the same weights, never updated)."""

    def setup(self):
        train = (self.model_config or {}).get("train") or {}
        self.trainable, self.dtype = train.get("trainable", "all"), train.get("dtype", "fp32")
        lm = prepare(load_policy_lm(self.model_source()), self.trainable, train.get("update_streams", "text"),
                     train.get("lora"), self.dtype, learner=not self.inference_only,
                     checkpointing=bool(train.get("activation_checkpointing")))
        self.lm = lm
        if not self.inference_only and self.trainable != "lora":  # LoRA: the reference is the LM, adapters off
            self.ref_lm = load_policy_lm(self.model_source(), dtype=DTYPES[self.dtype])
            self.ref_lm.requires_grad_(False)

    def model_source(self) -> str:
        return (self.model_config or {}).get("model", TINY_MODEL)

    def prompt(self, models=None):
        """The PersonaPlex prompt of ``model: personaplex:...`` (``model_config["prompt"]``: text, voice),
        else None. ``models``: the loaded checkpoint (its saved prompt fills what the config leaves out)."""
        from duplexgym.agents.policies.checkpoint import is_personaplex

        if not is_personaplex(self.model_source()):
            return None
        from duplexgym.agents.policies.personaplex import PersonaPlexPrompt, personaplex_prompt

        given = (self.model_config or {}).get("prompt") or {}
        if models is None:
            return PersonaPlexPrompt(given.get("text"), given.get("voice"))
        return personaplex_prompt(models, given.get("text"), given.get("voice"))

    def prefix_embeddings(self) -> torch.Tensor | None:
        """``[E, D]``: the input embeddings every episode's first ``E`` LM steps read instead of their
        tokens (an official PersonaPlex voice ``.pt``), or None."""
        if not hasattr(self, "_prefix_embeddings"):
            prompt = self.prompt()
            self._prefix_embeddings = None if prompt is None else prompt.embeddings(self.lm)
        return self._prefix_embeddings

    def get_non_inference_attributes(self):
        return ["ref_lm"]  # absent with trainable: lora (no second copy)

    def sampler(self) -> dict:
        """The streaming sampler's temperatures and top-k (``model_config``, else :data:`SAMPLER_DEFAULTS`)."""
        return {**SAMPLER_DEFAULTS, **{k: v for k, v in (self.model_config or {}).items() if k in SAMPLER_DEFAULTS}}

    def train_settings(self) -> dict:
        """The loss settings of the training config (``model_config["train"]``: clip_eps, kl_coef,
        update_streams, advantage, epochs, gamma, lam, vf_coef), as ``algorithm_config`` puts them."""
        return self.model_config["train"]

    def logprobs(self, lm, batch, full: bool = False):
        """Teacher-forced ``[B, 9, T]`` log-probs of the batch's agent tokens under ``lm``: the
        sampler's temperatures, no top-k truncation (module docstring). ``full``: also the whole
        distributions (:func:`~duplexgym.agents.training.logprobs.token_logprobs`)."""
        lm.eval()  # dropout-free, as the streaming sampler
        s = self.sampler()
        with autocast(lm.device, self.dtype):
            return token_logprobs(lm, batch[AGENT_TOKENS].long(), batch[USER_CODES].long(), temp_text=s["temp_text"],
                                  top_k_text=0, temp=s["temp"], top_k=0, full=full,
                                  prefix_embeddings=self.prefix_embeddings())

    def ref_logprobs(self, batch, full: bool = False):
        """:meth:`logprobs` under the frozen reference (no grad): the separate reference LM, or with
        ``trainable: lora`` the policy LM with its adapters switched off."""
        with torch.no_grad():
            if self.trainable == "lora":
                with adapters_off(self.lm):
                    return self.logprobs(self.lm, batch, full=full)
            return self.logprobs(self.ref_lm, batch, full=full)

    def exact_kl(self, batch, text_full: torch.Tensor, audio_full: torch.Tensor) -> torch.Tensor:
        """``[B, 9, T]`` exact ``KL(policy || reference)`` at each stream and position: the policy's
        whole distributions (with grad) against the frozen reference's (computed here, no grad)."""
        _, ref_text, ref_audio = self.ref_logprobs(batch, full=True)
        text = exact_kl(text_full, ref_text)[:, None]  # [B, 1, T]
        audio = exact_kl(audio_full, ref_audio)  # [B, 8, T]
        return torch.cat([text, audio], dim=1)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """What a training checkpoint stores of this module: every tensor but the frozen reference
        (rebuilt from ``model`` when the module is built again); with ``trainable`` other than
        ``all``, only the parameters the run trains (the frozen rest is rebuilt from ``model`` too)."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("ref_lm.")}
        if self.trainable == "all":
            return state
        keep = self.trained_names()
        return {k: v for k, v in state.items() if k in keep}

    def trained_names(self) -> set[str]:
        """The state keys of the parameters the learner updates (``requires_grad``)."""
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def sync_names(self) -> set[str]:
        """The state keys a runners' weight sync carries: the trained tensors (the runners build the
        same frozen rest) or with ``trainable: all`` every tensor, without the learner-only attributes'."""
        names = self.trained_names() if self.trainable != "all" else set(self.state_dict())
        dropped = tuple(self.get_non_inference_attributes())
        return {k for k in names if k.split(".", 1)[0] not in dropped}

    def copy_weights_to(self, other: "MoshiRLModule") -> int:
        """The tensors of :meth:`sync_names` (those ``other`` has) copied into ``other``'s own tensors
        in place, each on its device and in its dtype: the in-process sync, without RLlib's numpy
        round trip. Returns the bytes copied."""
        own, theirs = self.state_dict(), other.state_dict()
        names = self.sync_names() & set(theirs)
        nbytes = 0
        with torch.no_grad():
            for name in sorted(names):
                theirs[name].copy_(own[name])
                nbytes += theirs[name].numel() * theirs[name].element_size()
        return nbytes

    def no_sync(self):
        """What RLlib's update enters on every module of several learners (DDP's ``no_sync``, around
        the gradient post-processing): with ``sharding: fsdp`` the module is not DDP-wrapped and its
        gradients were reduce-scattered in the backward pass already, so nothing is to be held back."""
        return contextlib.nullcontext()

    def gather_sync_state(self) -> None:
        """``sharding: fsdp``, on every learner (a collective, in the same order everywhere): the
        whole tensors of :meth:`sync_names`, on CPU; the first learner keeps them for the next
        :meth:`get_state` (the one RLlib's weight sync asks), the others drop them."""
        import torch.distributed as dist

        gathered = {k: full_tensor(v).detach().to("cpu") for k, v in self.sync_state().items()}
        self._gathered_sync = gathered if dist.get_rank() == 0 else None

    def sync_state(self) -> dict[str, torch.Tensor]:
        """The module's own tensors of :meth:`sync_names` (views of its parameters and buffers; a
        sharded learner's are its shards, their ``shape`` the whole one)."""
        keep = self.sync_names()
        return {k: v for k, v in self.state_dict().items() if k in keep}

    def sync_tensors(self) -> dict[str, torch.Tensor]:
        """The learner's tensors of :meth:`sync_names` for one weight sync: what
        :meth:`gather_sync_state` gathered (once), else the module's own (not copies)."""
        gathered = getattr(self, "_gathered_sync", None)
        if gathered is not None:
            self._gathered_sync = None
            return gathered
        state = self.sync_state()
        _check_unsharded(state)
        return state

    def get_state(self, components=None, *, not_components=None, inference_only: bool = False, **kwargs):
        """RLlib's state (numpy; bf16 tensors as float32, their values exactly). For the runners'
        weight sync (``inference_only``): :meth:`sync_tensors` (without the learner-only attributes,
        and with ``trainable`` other than ``all`` only the trained tensors: the runners build the
        same frozen rest; a sharded learner's gathered once)."""
        from ray.rllib.utils.numpy import convert_to_numpy

        if inference_only and not self.inference_only:
            state = self.sync_tensors()
        else:
            state = self.state_dict()
            _check_unsharded(state)
        return convert_to_numpy({k: v.float() if v.dtype == torch.bfloat16 else v for k, v in state.items()})

    def set_state(self, state) -> None:
        if not (self.inference_only and self.trainable != "all"):
            return super().set_state(state)
        from ray.rllib.utils.torch_utils import convert_to_torch_tensor

        own = self.state_dict()
        unexpected = sorted(set(state) - set(own))
        missing = sorted(self.trained_names() - set(state))
        if unexpected or missing:
            raise ValueError(f"weight sync: the state does not fit this module ({len(unexpected)} unexpected, e.g. "
                             f"{unexpected[:1]}; {len(missing)} trained tensors missing, e.g. {missing[:1]})")
        self.load_state_dict(convert_to_torch_tensor(state), strict=False)

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load :meth:`checkpoint_state`'s tensors; ``ValueError`` naming a missing or unexpected one."""
        want = set(self.checkpoint_state())
        missing, unexpected = sorted(want - set(tensors)), sorted(set(tensors) - want)
        if missing or unexpected:
            raise ValueError(f"the checkpoint's module tensors do not fit this model: {len(missing)} missing "
                             f"(e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})")
        own = self.state_dict()
        self.load_state_dict({k: shard_like(own[k], v) for k, v in tensors.items()}, strict=False)

    def _forward(self, batch, **kwargs):
        """Acting goes through GroupEnvRunner's streaming MoshiAgent, never through this module."""
        raise RuntimeError("MoshiRLModule does not act through RLlib's connectors: GroupEnvRunner "
                           "samples with a streaming MoshiAgent")

    def _forward_train(self, batch, **kwargs):
        if self.train_settings().get("kl") != "exact":
            return {"logp": self.logprobs(self.lm, batch)}
        logp, text_full, audio_full = self.logprobs(self.lm, batch, full=True)
        return {"logp": logp, "kl_exact": self.exact_kl(batch, text_full, audio_full)}


def _check_unsharded(state: dict[str, torch.Tensor]) -> None:
    """``RuntimeError`` if ``state`` holds a shard: a sharded learner's state is gathered first."""
    if any(is_sharded(v) for v in state.values()):
        raise RuntimeError("sharding: fsdp: a sharded learner's state is gathered on every learner first "
                           "(GroupLearner.gather_sync_state), not read from one")
