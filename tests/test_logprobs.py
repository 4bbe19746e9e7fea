"""Teacher-forced log-probs (agents/logprobs.py) equal the streaming sampler's, on a real tiny-Moshi episode.

The streaming log-probs are recorded by instrumenting one agent instance (its LMGen text-logits
hook and its LM's ``forward_depformer``, both wrapped to copy the logits they see); the agent's
code is unchanged. The log-prob of a sampled token is computed from those logits independently of
the module under test (full-vocabulary masking at the k-th largest logit).
"""

import numpy as np
import pytest
import torch
from duplexgym.agents.policies.moshi_agent import MoshiAgent
from duplexgym.agents.training.logprobs import (
    build_teacher_codes,
    episode_model_frames,
    logprob_mask,
    token_logprobs,
)
from duplexgym.envs.corpus import ReplayCorpus

N_FRAMES = 41  # env frames: model frames 0..39 are returned (T = 40)
B = 2
TOL = 1e-4


def _reference_logprob(logits: torch.Tensor, token: int, temp: float, top_k: int) -> float:
    """log p(token) under top-k sampling at ``temp``: every logit below the k-th largest masked out."""
    logits = logits.double()
    kth = logits.topk(min(top_k, logits.numel())).values[-1]
    masked = torch.where(logits >= kth, logits / temp, torch.tensor(float("-inf"), dtype=torch.float64))
    return float(torch.log_softmax(masked, dim=-1)[token])


@pytest.fixture(scope="module")
def episode(small_corpus):
    """A recorded 2-row episode of the tiny Moshi on real corpus user codes, with the streaming
    logits of every step. Returns (agent, actions [B, 9, N], observations [B, 8, N], streaming log-probs [B, 9, T])."""
    corpus = ReplayCorpus(small_corpus)
    segs = [s for s in corpus.segments if corpus.codes(s).shape[-1] >= N_FRAMES][:B]
    assert len(segs) == B
    obs = np.stack([corpus.codes(s)[0][:, :N_FRAMES] for s in segs]).astype(np.int64)  # [B, 8, N]

    agent = MoshiAgent("tiny", batch_size=B, seed=123)
    text_logits, audio_logits = [], []  # per step: [B, text_card], [B, 8, card]
    step_audio = []
    text_hook = agent.lm_gen.on_text_logits_hook
    forward_depformer = agent.lm.forward_depformer

    def recording_text_hook(logits):  # [B, 1, 1, text_card], before the agent's hook edits it
        text_logits.append(logits[:, 0, 0].float().clone())
        text_hook(logits)

    def recording_depformer(cb, sequence, transformer_out):
        out = forward_depformer(cb, sequence, transformer_out)  # [B, 1, 1, card]
        step_audio.append(out[:, 0, 0].float().clone())
        return out

    agent.lm_gen.on_text_logits_hook = recording_text_hook
    agent.lm.forward_depformer = recording_depformer
    try:
        agent.reset_batch([{}] * B)
        actions = []
        for j in range(N_FRAMES):
            step_audio.clear()
            actions.append(agent.act_batch(obs[:, :, j]))
            audio_logits.append(torch.stack(step_audio, dim=1))
    finally:
        agent.lm_gen.on_text_logits_hook = text_hook
        del agent.lm.forward_depformer
        agent.close()  # leave streaming mode: lm.forward must run without streaming state
    actions = np.stack(actions, axis=-1)  # [B, 9, N]
    assert len(text_logits) == len(audio_logits) == N_FRAMES

    # Streaming log-probs of model frame f (env frame f + 1): text and codebook 0 sampled at step f,
    # codebooks 1..7 at step f + 1. Acoustics of the last model frame are sampled at step N - 1 too,
    # but the teacher-forced pass cannot score them (they follow model frame N - 1's text/cb0).
    T = N_FRAMES - 1
    stream = torch.full((B, 9, T), float("nan"), dtype=torch.float64)
    for b in range(B):
        for f in range(T):
            act = actions[b, :, f + 1]
            stream[b, 0, f] = _reference_logprob(text_logits[f][b], act[0], agent.temp_text, agent.top_k_text)
            stream[b, 1, f] = _reference_logprob(audio_logits[f][b, 0], act[1], agent.temp, agent.top_k)
            for cb in range(1, 8):
                stream[b, 1 + cb, f] = _reference_logprob(audio_logits[f + 1][b, cb], act[1 + cb], agent.temp, agent.top_k)
    return agent, torch.from_numpy(actions), torch.from_numpy(obs), stream


def _logprobs(agent, actions, obs, **kw):
    tokens, user = episode_model_frames(actions, obs)
    return token_logprobs(agent.lm, tokens, user, temp_text=agent.temp_text, top_k_text=agent.top_k_text,
                          temp=agent.temp, top_k=agent.top_k, **kw)


def test_teacher_forced_logprobs_match_streaming(episode):
    agent, actions, obs, stream = episode
    assert not agent.lm.is_streaming
    T = N_FRAMES - 1
    # Sampled tokens lie in the top-k set, so every streaming log-prob is finite (no -inf hides a mismatch).
    assert torch.isfinite(stream[:, :, :-1]).all() and torch.isfinite(stream[:, :2]).all()
    # The agent did emit varied tokens (not one repeated token), so the check is not vacuous.
    assert len(set(actions[:, 0, 1:].flatten().tolist())) > 3

    logp = _logprobs(agent, actions, obs).detach().double()
    assert logp.shape == (B, 9, T)
    mask = logprob_mask(B, T)
    assert torch.isnan(logp[~mask]).all() and torch.isfinite(logp[mask]).all()

    diff = (logp - stream).abs()
    text_diff = diff[:, 0].max().item()
    cb0_diff = diff[:, 1].max().item()
    acoustic_diff = diff[:, 2:, :-1].max().item()
    print(f"\nmax |teacher-forced - streaming| log-prob over model frames 0..{T - 1}: text {text_diff:.2e}, "
          f"codebook 0 {cb0_diff:.2e}, codebooks 1-7 (frames 0..{T - 2}) {acoustic_diff:.2e}")
    assert text_diff < TOL and cb0_diff < TOL and acoustic_diff < TOL


def test_wrong_alignment_gives_different_text_logprobs(episode):
    """Without the one-step user shift the text log-probs are clearly off (the check above can fail)."""
    agent, actions, obs, stream = episode
    tokens, user = episode_model_frames(actions, obs)
    good = build_teacher_codes(tokens, user)
    bad = torch.cat([tokens, user], dim=1)  # user frame of step f paired with model frame f: no shift
    assert good.shape == bad.shape == (B, 17, N_FRAMES - 1)
    with torch.no_grad():
        text_logits = agent.lm.forward(bad).text_logits[:, 0].float()  # [B, T, V]
    k = agent.top_k_text
    values, indices = text_logits.topk(k, dim=-1)
    logp = torch.log_softmax(values / agent.temp_text, dim=-1)
    hit = indices == tokens[:, 0, :, None]
    wrong = torch.where(hit.any(-1), (logp * hit).sum(-1), torch.tensor(float("-inf"))).double()
    diff = (wrong - stream[:, 0]).abs()
    print(f"\nno-shift alignment: max |text log-prob diff| {diff.max().item():.3g}, "
          f"frames off by > 1e-2: {(diff > 1e-2).float().mean().item():.0%}")
    assert diff[:, 1:].max().item() > 0.1  # frame 0 reads no user frame in either alignment
    assert (diff > 1e-2).float().mean().item() > 0.3  # 61% with the tiny LM (its padding runs are confident)


def test_logprobs_are_differentiable(episode):
    agent, actions, obs, _ = episode
    lm = agent.lm
    lm.zero_grad(set_to_none=True)
    params = [p for p in lm.parameters()]
    assert all(p.requires_grad for p in params)
    logp = _logprobs(agent, actions, obs)
    assert logp.requires_grad and logp.grad_fn is not None
    mask = logprob_mask(*logp.shape[::2])
    logp[mask].sum().backward()
    grads = {name: p.grad for name, p in lm.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    for name in ("text_linear.weight", "linears.0.weight", "linears.7.weight", "text_emb.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("transformer."))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("depformer."))
    lm.zero_grad(set_to_none=True)


def test_untruncated_logprob_is_the_temperature_softmax_over_the_whole_vocabulary():
    """top_k <= 0 or >= V (what the trainers use): log_softmax(logits / temp) at the token, with
    the same values as keeping all V logits through the top-k path."""
    from duplexgym.agents.training.logprobs import sampled_logprob

    g = torch.Generator().manual_seed(0)
    logits, tokens = torch.randn(3, 5, 100, generator=g), torch.randint(0, 100, (3, 5), generator=g)
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    for k in (0, -1, 100, 1000):
        torch.testing.assert_close(sampled_logprob(logits, tokens, 0.7, k), expected)
    truncated = sampled_logprob(logits, tokens, 0.7, 99)  # one token is left out: -inf there, more mass elsewhere
    assert torch.isinf(truncated).sum() == (logits.argsort(-1)[..., 0] == tokens).sum()
    assert (truncated[torch.isfinite(truncated)] >= expected[torch.isfinite(truncated)]).all()
