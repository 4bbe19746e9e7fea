"""Teacher-forced log-probs of a recorded Moshi episode: one differentiable ``LMModel.forward`` pass.

The policy log-probs for GRPO/PPO: the log-probability of each token the agent emitted, under the
distribution the agent's sampler actually drew from (:mod:`duplexgym.agents.policies.moshi_agent`: top-k
with temperature, ``temp_text``/``top_k_text`` for text, ``temp``/``top_k`` for audio).

## Indexing (model frames vs LMGen steps vs env frames)
``LMGen`` step ``s`` is fed user frame ``s`` (the env observation of env frame ``s``) and returns
model frame ``s - 1`` (the agent's action for env frame ``s``; env frame 0 has no model frame).
Model frame ``f``'s text and codebook 0 are sampled at step ``f``, its codebooks 1..7 at step
``f + 1``. ``LMModel.forward(codes[B, 17, T])`` applies Moshi's delays itself and reproduces the
streaming logits exactly (to float rounding, checked in tests/test_logprobs.py) when

    codes[:, :9, f] = model frame f            (text, 8 agent codebooks) = out of step f + 1
    codes[:, 9:, f] = user frame fed at step f + 1                        (user stream one step ahead)

:func:`build_teacher_codes` takes ``agent_tokens[:, :, f]`` = model frame ``f`` and
``user_codes[:, :, s]`` = user frame fed at step ``s``, both ``T`` long, and does that shift. From an
env episode of ``N`` frames (``actions[B, 9, N]``, ``observations[B, 8, N]``, env-frame indexed):
``agent_tokens = actions[..., 1:]`` and ``user_codes = observations[..., :-1]``
(:func:`episode_model_frames`), ``T = N - 1``. The user frame fed at step 0 is never read by
Moshi, and the one of step ``T`` (the last observation) only conditions the acoustic codebooks of
the last model frame (see below), so neither is needed.

## What is comparable
- text and codebook 0 of every model frame ``0 .. T-1`` (env frames ``1 .. N-1``);
- codebooks 1..7 of model frames ``0 .. T-2`` only: those of frame ``T - 1`` are sampled by the
  depformer after the text and codebook 0 of model frame ``T`` (at step ``T``), which an episode
  of ``T`` returned frames does not contain. ``token_logprobs`` returns NaN there (``LMModel.forward``
  marks them invalid); mask them out (``logprob_mask``), or record one more frame.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

#: Moshi's ``zero_token_id``: an input position that contributes a zero embedding.
_ZERO_TOKEN = -1


def episode_model_frames(actions: Tensor, observations: Tensor) -> tuple[Tensor, Tensor]:
    """An env episode (``actions[B, 9, N]``, ``observations[B, 8, N]``, both indexed by env frame)
    -> (``agent_tokens[B, 9, N-1]`` model frames 0..N-2, ``user_codes[B, 8, N-1]`` user frames fed
    at steps 0..N-2), the inputs of :func:`build_teacher_codes` / :func:`token_logprobs`."""
    return actions[..., 1:], observations[..., :-1]


def build_teacher_codes(agent_tokens: Tensor, user_codes: Tensor) -> Tensor:
    """``LMModel.forward`` input ``[B, 17, T]`` that reproduces the streaming step's logits.

    ``agent_tokens`` ``[B, 9, T]``: model frame ``f`` at index ``f`` (text, then the agent's 8
    Mimi codebooks): what ``lm_gen.step`` returned at step ``f + 1``, i.e. the agent's action at
    env frame ``f + 1``. ``user_codes`` ``[B, 8, T]``: the user frame fed at step ``s`` at index
    ``s`` (the env observation of env frame ``s``).

    Returns ``codes`` with ``codes[:, :9, f] = agent_tokens[:, :, f]`` and
    ``codes[:, 9:, f] = user_codes[:, :, f + 1]`` (the user stream one step ahead) for
    ``f < T - 1``; ``codes[:, 9:, T - 1]`` (the user frame of step ``T``, not given) is Moshi's
    zero token (-1, a zero embedding): it is only read for the acoustic codebooks of model frame
    ``T - 1``, which are undefined anyway (module docstring).
    """
    if agent_tokens.dim() != 3 or agent_tokens.shape[1] != 9:
        raise ValueError(f"agent_tokens must be [B, 9, T], got {tuple(agent_tokens.shape)}")
    if user_codes.dim() != 3 or user_codes.shape[1] != 8:
        raise ValueError(f"user_codes must be [B, 8, T], got {tuple(user_codes.shape)}")
    if agent_tokens.shape[0] != user_codes.shape[0] or agent_tokens.shape[2] != user_codes.shape[2]:
        raise ValueError(f"agent_tokens {tuple(agent_tokens.shape)} and user_codes {tuple(user_codes.shape)} "
                         "must share B and T")
    user = user_codes.to(device=agent_tokens.device, dtype=torch.long)
    ahead = torch.cat([user[..., 1:], torch.full_like(user[..., :1], _ZERO_TOKEN)], dim=-1)
    return torch.cat([agent_tokens.long(), ahead], dim=1)


@contextlib.contextmanager
def _prefix_inputs(lm, embeddings: Tensor):
    """While active, ``lm.transformer``'s input at positions ``0..E-1`` is ``embeddings`` ``[E, D]``."""
    E = int(embeddings.shape[0])

    def hook(module, args, kwargs):
        x = args[0]
        if x.shape[1] < E:
            raise ValueError(f"an episode of {x.shape[1]} LM steps is shorter than its {E} prompt embeddings")
        head = embeddings.to(device=x.device, dtype=x.dtype)[None].expand(x.shape[0], -1, -1)
        return (torch.cat([head, x[:, E:]], dim=1), *args[1:]), kwargs

    handle = lm.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def logprob_mask(batch: int, frames: int, device=None) -> Tensor:
    """bool ``[B, 9, T]``: where :func:`token_logprobs` is defined (all but codebooks 1..7 of the last frame)."""
    mask = torch.ones(batch, 9, frames, dtype=torch.bool, device=device)
    mask[:, 2:, -1:] = False
    return mask


def sampled_logprob(logits: Tensor, tokens: Tensor, temp: float, top_k: int) -> Tensor:
    """Log-prob of ``tokens`` (``[...]``) under top-k sampling at temperature ``temp`` of ``logits`` ``[..., V]``.

    The sampler (``moshi_agent._gumbel_sample``, like moshi's ``sample_token``) keeps the ``top_k``
    largest logits as ``torch.topk`` picks them (``top_k <= 0`` or ``>= V``: all), and draws from
    ``softmax(values / temp)`` over them. So: ``log_softmax(topk values / temp)`` at the token, and
    ``-inf`` for a token outside the top-k set. Ties: ``torch.topk`` decides which of equal logits
    at the k-th place are kept; a token whose logit (nearly, within float rounding between the
    streaming and teacher-forced passes) ties the k-th largest may fall on either side. The
    Gumbel-max draw itself ties with probability 0. ``temp <= 0`` is greedy: 0 for the argmax,
    ``-inf`` elsewhere (no gradient). Differentiable in ``logits``.
    """
    logits = logits.float()
    V = logits.shape[-1]
    tokens = tokens.long()
    if temp <= 0.0:
        hit = logits.argmax(dim=-1) == tokens
        return torch.where(hit, 0.0, float("-inf")).to(logits.dtype)
    if not 0 < top_k < V:  # no truncation: a plain softmax (no sort of the vocabulary)
        logp = torch.log_softmax(logits / temp, dim=-1)
        return logp.gather(-1, tokens[..., None].clamp(0, V - 1)).squeeze(-1)
    k = top_k
    values, indices = logits.topk(k, dim=-1)  # [..., k]
    logp = torch.log_softmax(values / temp, dim=-1)
    match = indices == tokens[..., None]
    chosen = logp.masked_fill(~match, 0.0).sum(dim=-1)
    return torch.where(match.any(dim=-1), chosen, torch.full_like(chosen, float("-inf")))


def token_logprobs(lm, agent_tokens: Tensor, user_codes: Tensor, temp_text: float = 0.7,
                   top_k_text: int = 25, temp: float = 0.8, top_k: int = 250, full: bool = False,
                   prefix_embeddings: Tensor | None = None):
    """float ``[B, 9, T]``: log-prob of each agent token (text, 8 codebooks) under the sampler's
    temperature and top-k, teacher-forced through ONE ``lm.forward`` pass (called as ``lm(codes)``) (differentiable).

    ``lm``: the ``moshi`` ``LMModel`` (its mode is left as is: call ``lm.eval()`` for dropout-free
    log-probs that match the streaming ones). ``agent_tokens`` ``[B, 9, T]`` and ``user_codes``
    ``[B, 8, T]`` as in :func:`build_teacher_codes`. Tokens outside the top-k set get ``-inf``;
    codebooks 1..7 of the last frame ``T - 1`` are NaN (not defined by ``T`` frames: see the
    module docstring and :func:`logprob_mask`).

    ``full``: also return the whole distributions at the sampler's temperatures (no top-k), as
    ``(logp, text [B, T, text_card], audio [B, 8, T, card])`` log-probabilities (0 where undefined):
    what an exact KL needs.

    ``prefix_embeddings`` ``[E, D]``: the transformer reads these instead of the token embeddings
    at input positions ``0..E-1`` of every row (LM steps ``0..E-1``: a PersonaPlex voice prompt stored
    as embeddings, :mod:`duplexgym.agents.policies.personaplex`); those positions' tokens are unread.
    """
    codes = build_teacher_codes(agent_tokens, user_codes).to(lm.device)
    if prefix_embeddings is not None:
        with _prefix_inputs(lm, prefix_embeddings):
            out = lm(codes)
    else:
        out = lm(codes)  # through __call__: a sharded LM gathers its parameters in its forward hooks
    # LMModel.forward fills invalid positions with NaN logits: zero them before the softmax (no NaN
    # in the backward pass either), and mark them NaN in the result.
    text_logits = torch.where(out.text_mask[..., None], out.text_logits, 0.0)[:, 0]  # [B, T, text_card]
    audio_logits = torch.where(out.mask[..., None], out.logits, 0.0)  # [B, 8, T, card]
    text = sampled_logprob(text_logits, codes[:, 0], temp_text, top_k_text)  # [B, T]
    audio = sampled_logprob(audio_logits, codes[:, 1:9], temp, top_k)  # [B, 8, T]
    logp = torch.cat([text[:, None], audio], dim=1)
    valid = torch.cat([out.text_mask, out.mask], dim=1)
    logp = torch.where(valid, logp, torch.full_like(logp, float("nan")))
    if not full:
        return logp
    text_full = torch.log_softmax(text_logits.float() / max(temp_text, 1e-6), dim=-1)
    audio_full = torch.log_softmax(audio_logits.float() / max(temp, 1e-6), dim=-1)
    text_full = torch.where(out.text_mask[:, 0, :, None], text_full, torch.zeros_like(text_full))
    audio_full = torch.where(out.mask[..., None], audio_full, torch.zeros_like(audio_full))
    return logp, text_full, audio_full
