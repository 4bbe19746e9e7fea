"""The Moshi agent and the teacher-forced log-probs on CUDA (skipped where there is no GPU, as on CI).

Last run on an NVIDIA H100 (torch 2.11.0+cu130, the corpus given by DUPLEXGYM_SMALL_CORPUS): both
passed. The same checks as a script there: CPU vs CUDA log-prob gap 7.2e-6 (turn) and 8.1e-6
(interruption); the tiny Moshi streamed at 362 / 3909 / 9059 frames/s at batch 1 / 16 / 64.
"""

import os

import numpy as np
import pytest
import torch
from duplexgym.agents.policies.checkpoint import build_tiny_lm
from duplexgym.agents.policies.moshi_agent import MoshiAgent
from duplexgym.agents.training.logprobs import episode_model_frames, token_logprobs
from duplexgym.envs.corpus import ReplayCorpus
from duplexgym.envs.replay import DuplexReplayEnv

#: The device these tests run on: CUDA; ``DUPLEXGYM_TEST_DEVICE=cpu`` dry-runs them on the CPU (what
#: benchmarks/gpu_check.sh will run, checked before GPU time is spent).
DEVICE = os.environ.get("DUPLEXGYM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")


def _play(corpus, segment, batch, device, dtype=torch.float32):
    """One group of ``batch`` rollouts of ``segment``: actions ``[B, 9, N]``, observations ``[B, 8, N]``."""
    envs = [DuplexReplayEnv(corpus, axes=(corpus.by_id[segment].axis,)) for _ in range(batch)]
    agent = MoshiAgent("tiny", batch_size=batch, seed=0, device=device, dtype=dtype)
    obs, infos = zip(*(env.reset(options={"segment": segment}) for env in envs))
    agent.reset_batch(list(infos))
    obs = np.stack(obs)
    actions, observations, done = [], [], False
    while not done:
        observations.append(obs)
        act = agent.act_batch(obs)
        actions.append(act)
        steps = [env.step(a) for env, a in zip(envs, act)]
        obs, done = np.stack([s[0] for s in steps]), steps[0][2]
    agent.close()
    return np.stack(actions, 2), np.stack(observations, 2), infos


@pytest.mark.parametrize("axis", ["turn", "interruption"])
def test_agent_streams_on_cuda_and_log_probs_match_the_cpu(small_corpus, axis):
    corpus = ReplayCorpus(small_corpus)
    segment = sorted(corpus.select((axis,)), key=lambda s: (s.n_frames, s.id))[0].id
    actions, observations, infos = _play(corpus, segment, 4, DEVICE)
    forced = int(infos[0]["forced_frames"])
    if forced:  # the forced interruption prefix is reproduced on CUDA too
        np.testing.assert_array_equal(actions[0, :, :forced], infos[0]["forced_prefix"].action[:forced].T)
    tokens, user = episode_model_frames(torch.from_numpy(actions), torch.from_numpy(observations))
    logp = {}
    for device in ("cpu", DEVICE):
        with torch.no_grad():
            logp[device] = token_logprobs(build_tiny_lm(device).eval(), tokens.to(device), user.to(device)).cpu()
    both = torch.isfinite(logp["cpu"]) & torch.isfinite(logp[DEVICE])
    assert (logp["cpu"] - logp[DEVICE])[both].abs().max() < 1e-4
    # every token the CUDA sampler drew (text and codebook 0, unforced frames) is inside its top-k
    assert torch.isfinite(logp[DEVICE][:, :2, max(forced - 1, 0):]).all()


def _random_batch(device, seed=0, B=4, T=24):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 2048, (B, 9, T), generator=g)
    tokens[:, 0] = torch.randint(0, 32000, (B, T), generator=g)
    return tokens.to(device), torch.randint(0, 2048, (B, 8, T), generator=g).to(device)


def test_lora_reference_and_update_on_cuda_in_bf16():
    """The learner's LoRA path on the GPU: adapters off is the base LM bit for bit; a bf16-autocast
    step over fp32 adapters and a bf16 frozen base moves the adapters only."""
    from duplexgym.agents.training import adapters

    tokens, user = _random_batch(DEVICE)
    base = build_tiny_lm(DEVICE, torch.bfloat16)
    lm = adapters.prepare(build_tiny_lm(DEVICE), "lora", "text", {"rank": 4, "scaling": 2.0, "modules": ["transformer"]},
                          "bf16", learner=True)

    def logp(model):
        with adapters.autocast(torch.device(DEVICE), "bf16"):
            return torch.nan_to_num(token_logprobs(model, tokens, user, top_k_text=0, top_k=0), nan=0.0)

    with torch.no_grad():
        want = logp(base)
        with adapters.adapters_off(lm):
            assert torch.equal(logp(lm), want)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # the first step moves lora_B off 0, the second lora_A too
        (-logp(lm)[:, 0].mean()).backward()
        opt.step()
        opt.zero_grad()
    changed = {k for k, v in lm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_A." in k or ".lora_B." in k for k in changed)
    assert any(".lora_A." in k for k in changed)


def test_bf16_agent_streams_on_cuda_and_matches_the_fp32_learner(small_corpus):
    """The bf16 runner on the GPU: rollouts stream, and the fp32 learner's teacher-forced pass under
    bf16 autocast is close to the bf16 LM's (the tolerance of tests/test_lora.py on CPU)."""
    from duplexgym.agents.training import adapters

    corpus = ReplayCorpus(small_corpus)
    segment = sorted(corpus.select(("turn",)), key=lambda s: (s.n_frames, s.id))[0].id
    actions, observations, _ = _play(corpus, segment, 4, DEVICE, torch.bfloat16)
    tokens, user = episode_model_frames(torch.from_numpy(actions), torch.from_numpy(observations))
    tokens, user = tokens.to(DEVICE), user.to(DEVICE)
    with torch.no_grad():
        bf16 = token_logprobs(build_tiny_lm(DEVICE, torch.bfloat16).eval(), tokens, user).float()
        with adapters.autocast(torch.device(DEVICE), "bf16"):
            mixed = token_logprobs(build_tiny_lm(DEVICE).eval(), tokens, user).float()
    both = torch.isfinite(bf16) & torch.isfinite(mixed)
    d = (bf16 - mixed)[both].abs()
    assert both[:, 0].any() and d.mean() <= 0.05 and d.max() <= 0.5


def test_personaplex_prompted_agent_on_cuda_matches_the_cpu(tmp_path):
    """The official prompt phases on the device (exec mask, CUDA graphs with the input-embedding
    replacement of a .pt voice): greedy actions equal the CPU's, and a row prompted alone equals
    the batch."""
    from duplexgym.agents.policies.checkpoint import load_models
    from duplexgym.agents.policies.personaplex import (PersonaPlexPrompt, save_tiny_personaplex,
                                                        save_voice_embeddings, voice_embeddings_of)

    folder = save_tiny_personaplex(tmp_path / "personaplex")
    rng = np.random.default_rng(0)
    voice = rng.integers(0, 2048, (12, 8))
    pt = save_voice_embeddings(voice_embeddings_of(load_models(f"personaplex:{folder}").lm, voice), tmp_path / "v.pt")
    user = rng.integers(0, 2048, (30, 8))
    out = {}
    for device in ("cpu", DEVICE):
        agent = MoshiAgent(load_models(f"personaplex:{folder}", device=device), batch_size=2, temp=0.0, temp_text=0.0,
                           prompt=PersonaPlexPrompt(voice=str(pt)))
        agent.reset_batch([{"axis": "interruption", "forced_frames": 0}] * 2)
        out[device] = np.stack([agent.act_batch(np.stack([u, u])) for u in user])  # [T, 2, 9]
        agent.close()
    assert np.array_equal(out["cpu"][:, 0], out["cpu"][:, 1])
    agree = (out["cpu"] == out[DEVICE]).all(axis=2).mean()
    assert agree >= 0.9, agree  # greedy: float rounding may flip a near-tie late in the stream
    np.testing.assert_array_equal(out["cpu"][:5], out[DEVICE][:5])


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_weight_broadcast_into_bf16_runner_lms_on_the_gpu(backend):
    """weight_sync: broadcast with GPU members: fp32 master weights on the GPU into bf16 runner LMs
    on the GPU, bit for bit the learner's cast, in place. gloo stages through host memory (any
    device mix); nccl (device to device) needs a GPU per member: two here."""
    from test_weight_broadcast import run_group

    if backend == "nccl" and (DEVICE != "cuda" or torch.cuda.device_count() < 2):
        pytest.skip("nccl needs a GPU per member (2)")
    devices = [0, 1] if backend == "nccl" else None
    learner = build_tiny_lm("cuda:0" if devices else DEVICE)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn_like(p))
    runners = [build_tiny_lm(f"cuda:{d}" if devices else DEVICE, torch.bfloat16) for d in (devices or [0])[-1:]]
    source, targets = learner.state_dict(), [r.state_dict() for r in runners]
    out = run_group(source, targets, bucket_bytes=2**16, backend=backend, devices=devices)
    assert len({sent for sent, _ in out.values()}) == 1
    for runner in runners:
        state = runner.state_dict()
        assert all(torch.equal(state[k].cpu(), source[k].to(torch.bfloat16).cpu()) for k in source)
