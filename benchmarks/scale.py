"""Real-size cost of one GRPO iteration of Moshi (random weights, no download), part by part.

The full-size architecture with random weights, measured part by part on one device.

Sizes: ``full`` builds moshi's own ``loaders._lm_kwargs`` (Moshi 7B: dim 4096, 32 layers, depformer
1024 x 6) in bfloat16 and the full-size Mimi (``loaders.get_mimi(None)``), random weights, nothing
downloaded; ``smoke`` a ~100M-parameter Moshi of the same shape (dim 512, 8 layers, depformer
256 x 2) for a CPU run that checks the benchmark itself. Default: ``full`` on CUDA, ``smoke`` on CPU.

Parts (the paper's shape: G rollouts of a ``--frames``-frame segment, 125 = 10 s):

1. **rollout**: frames/s of G rollouts through the replay env (codes in, tokens out, its text-reader
   reward at the end) with the batched streaming ``MoshiAgent``, against ``LMGen`` stepping alone
   on the same codes (the model's own cost). ``outside_model_share`` = 1 - LMGen time / env time:
   the env, the agent wrapper and the reward. Target (H200, G = 16): < 5%.
2. **audio reward**: the ``vad`` reader's work for a group: Mimi decoding the G rollouts' audio codes
   in one batch on the device, then silero on each (CPU); its share of the rollout time.
3. **learner**: one gradient step over the group (teacher-forced old and reference passes without
   grad, the policy pass with grad, backward, AdamW) for ``trainable: lora`` (rank 16 on the
   temporal transformer, frozen base in bf16, adapters fp32, bf16 autocast; the reference = adapters
   off) and ``trainable: all`` (fp32 master weights, bf16 autocast, a bf16 reference copy): tokens/s
   and peak device memory (CUDA: ``max_memory_allocated``; CPU: the process' peak RSS). Target:
   LoRA under 40 GB. An out-of-memory is reported as such.
4. **sync**: the trained tensors from the learner to a runner's LM on the same device: a direct
   tensor copy against RLlib's numpy round trip.
5. **iteration**: sample + audio reward + update + sync at the largest G, and the model's share
   (sample + update). Target: >= 90%.

Usage: python benchmarks/scale.py [--size full|smoke] [--device cuda|cpu] [--groups 1 4 16]
[--frames 125] [--corpus DIR] [--out FILE]. The corpus only supplies user codes and segment
timing (any built corpus with codes: tests' small corpus, or ``DUPLEXGYM_SMALL_CORPUS``).
Writes benchmarks/results/scale_{size}_{device}.json.
"""

from __future__ import annotations

from duplexgym.runtime import configure_runtime

configure_runtime()

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SMOKE = {"dim": 512, "num_heads": 8, "num_layers": 8, "hidden_scale": 4.125, "depformer_dim": 256,
         "depformer_dim_feedforward": int(4.125 * 256), "depformer_num_heads": 8, "depformer_num_layers": 2}
LORA = {"rank": 16, "scaling": 2.0, "modules": ("transformer",)}


def lm_kwargs(size: str) -> dict:
    from moshi.models import loaders

    kwargs = copy.deepcopy(loaders._lm_kwargs)
    if size == "smoke":
        kwargs.update(SMOKE)
    return kwargs


def build_lm(size: str, device: torch.device, dtype: torch.dtype):
    """The LM of ``size`` with random weights (moshi's own initialisation), in eval mode."""
    from duplexgym.agents.policies.checkpoint import LORA_KWARGS
    from moshi.models.lm import LMModel

    torch.manual_seed(0)
    kwargs = {k: v for k, v in lm_kwargs(size).items() if k not in LORA_KWARGS}
    return LMModel(device=device, dtype=dtype, **kwargs).eval()


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, the process' peak


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# -- 1. rollouts ---------------------------------------------------------------------------------


def rollout(models, corpus, segment, G: int, frames: int, device: torch.device) -> dict:
    """G rollouts of ``segment`` (cut to ``frames``) through the env, then LMGen alone on its codes."""
    from duplexgym.agents.policies.moshi_agent import MoshiAgent
    from duplexgym.envs.replay import DuplexReplayEnv
    from moshi.models.lm import LMGen

    envs = [DuplexReplayEnv(corpus, axes=(segment.axis,), segments=[segment.id]) for _ in range(G)]
    agent = MoshiAgent(models, batch_size=G, seed=0)
    try:
        obs, infos = zip(*(env.reset(options={"segment": segment.id}) for env in envs))
        agent.reset_batch(list(infos))
        obs = np.stack(obs)
        n = min(frames, int(infos[0]["n_frames"]))
        user, actions = [], []
        sync(device)
        t0 = time.perf_counter()
        for t in range(n):
            user.append(obs)
            act = agent.act_batch(obs)
            actions.append(act)
            steps = [env.step(a) for env, a in zip(envs, act)]
            obs = np.stack([s[0] for s in steps])
            if steps[0][2]:
                break
        sync(device)
        env_s = time.perf_counter() - t0
    finally:
        agent.close()
    n = len(actions)
    codes = torch.from_numpy(np.stack(user, 2)).to(device)  # [G, 8, n]
    gen = LMGen(models.lm, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25)
    with torch.inference_mode(), gen.streaming(G):
        gen.step(codes[:, :, :1])  # warm-up of the streaming state
        gen.reset_streaming()
        sync(device)
        t0 = time.perf_counter()
        for t in range(n):
            gen.step(codes[:, :, t:t + 1])
        sync(device)
        model_s = time.perf_counter() - t0
    return {"G": G, "frames": n, "env_s": env_s, "lmgen_s": model_s, "env_frames_per_s": G * n / env_s,
            "lmgen_frames_per_s": G * n / model_s, "outside_model_share": max(0.0, 1.0 - model_s / env_s),
            "agent_codes": np.stack(actions, 2)[:, 1:]}  # [G, 8, n] the agents' audio codes


# -- 2. audio reward ----------------------------------------------------------------------------


def audio_reward(mimi, agent_codes: np.ndarray, device: torch.device) -> dict:
    """The vad reader's work for a group: one batched Mimi decode, then silero per rollout."""
    from duplexgym.corpora.vad import SEQUENTIAL, speech_spans

    warm = np.random.default_rng(0).standard_normal(24_000 * 2).astype(np.float32) * 0.1
    speech_spans([warm], blocking=SEQUENTIAL)  # creates the ONNX Runtime session
    with torch.inference_mode():
        mimi.decode(torch.from_numpy(agent_codes[..., :4]).to(device))  # kernels, allocator
    codes = torch.from_numpy(agent_codes).to(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        audio = mimi.decode(codes)  # [G, 1, n * 1920]
    sync(device)
    decode_s = time.perf_counter() - t0
    waves = [a for a in audio[:, 0].float().cpu().numpy()]
    t0 = time.perf_counter()
    speech_spans(waves, blocking=SEQUENTIAL)
    vad_s = time.perf_counter() - t0
    return {"decode_s": decode_s, "vad_s": vad_s, "total_s": decode_s + vad_s}


# -- 3. learner ----------------------------------------------------------------------------------


def learner_step(size: str, trainable: str, G: int, frames: int, device: torch.device,
                 checkpointing: bool = False) -> dict:
    """One gradient step over G episodes of ``frames`` frames: tokens/s and peak memory
    (``checkpointing``: moshi's per-layer activation checkpointing, ``activation_checkpointing: true``)."""
    from duplexgym.agents.training import adapters
    from duplexgym.agents.training.logprobs import token_logprobs

    reset_peak(device)
    out = {"trainable": trainable, "checkpointing": bool(checkpointing)}
    try:
        # as the RLModule prepares its learner's LM: fp32 master weights of what trains, bf16 the rest
        lm = adapters.prepare(build_lm(size, device, torch.bfloat16), trainable, "text", LORA, "bf16", learner=True,
                              checkpointing=checkpointing)
        ref = None
        if trainable != "lora":
            ref = build_lm(size, device, torch.bfloat16)
            ref.requires_grad_(False)
        params = [p for p in lm.parameters() if p.requires_grad]
        out["trained_params"] = sum(p.numel() for p in params)
        opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.95), weight_decay=0.1)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 2048, (G, 9, frames), generator=g)
        tokens[:, 0] = torch.randint(0, lm.text_card, (G, frames), generator=g)
        user = torch.randint(0, 2048, (G, 8, frames), generator=g)
        tokens, user = tokens.to(device), user.to(device)

        def logp(model):
            with adapters.autocast(device, "bf16"):
                return token_logprobs(model, tokens, user, top_k_text=0, top_k=0)[:, 0]

        times = []
        for _ in range(2):  # the first step warms up (allocator, kernels); the second is timed
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                old = logp(lm)
                if ref is None:
                    with adapters.adapters_off(lm):
                        base = logp(lm)
                else:
                    base = logp(ref)
            new = logp(lm)
            valid = torch.isfinite(old) & torch.isfinite(base)
            ratio = torch.exp(torch.where(valid, new - old, 0.0))
            loss = -(ratio * valid).sum() / valid.sum() + 0.01 * torch.where(valid, new - base, 0.0).pow(2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 2.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - t0)
        out.update(step_s=times[-1], tokens_per_s=G * frames / times[-1], peak_gb=peak_memory_gb(device), oom=False)
        out["trained"] = {k: v.detach() for k, v in adapters.trainable_state(lm).items()} if trainable == "lora" else None
        del lm, ref, opt
    except torch.cuda.OutOfMemoryError as exc:
        out.update(oom=True, error=str(exc).splitlines()[0][:300], peak_gb=peak_memory_gb(device))
    reset_peak(device)
    return out


# -- 4. sync -------------------------------------------------------------------------------------


def weight_sync(trained: dict, size: str, device: torch.device) -> dict:
    """The trained tensors into a runner's bf16 LM on the same device: direct copy vs numpy."""
    from duplexgym.agents.training import adapters

    runner = adapters.prepare(build_lm(size, device, torch.bfloat16), "lora", "text", LORA, "bf16", learner=False)
    nbytes = sum(v.numel() * v.element_size() for v in trained.values())
    sync(device)
    t0 = time.perf_counter()
    runner.load_state_dict(trained, strict=False)
    sync(device)
    direct = time.perf_counter() - t0
    t0 = time.perf_counter()
    host = {k: v.float().cpu().numpy() for k, v in trained.items()}  # RLlib's convert_to_numpy
    runner.load_state_dict({k: torch.from_numpy(v).to(device) for k, v in host.items()}, strict=False)
    sync(device)
    via_numpy = time.perf_counter() - t0
    del runner
    return {"tensors": len(trained), "mb": nbytes / 2**20, "direct_s": direct, "numpy_s": via_numpy}


# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "smoke"), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--groups", type=int, nargs="+", default=None)
    parser.add_argument("--frames", type=int, default=125)
    parser.add_argument("--corpus", default=os.environ.get("DUPLEXGYM_SMALL_CORPUS", "runs/default-corpus"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or ("full" if device.type == "cuda" else "smoke")
    groups = args.groups or ([1, 4, 16] if device.type == "cuda" else [1, 4])
    from duplexgym.agents.policies.checkpoint import MoshiModels, find_text_tokenizer
    from duplexgym.envs.corpus import ReplayCorpus
    from moshi.models import loaders

    corpus = ReplayCorpus(args.corpus)
    if not corpus.has_codes:
        parser.error(f"{corpus.path}: built without --codec; the env replays codes")
    segment = max(corpus.select(("turn",)), key=lambda s: (s.n_frames, s.id))
    t0 = time.perf_counter()
    lm = build_lm(size, device, torch.bfloat16 if device.type == "cuda" or size == "full" else torch.float32)
    mimi = loaders.get_mimi(None, device=device, num_codebooks=8)
    build_s = time.perf_counter() - t0
    models = MoshiModels(lm, mimi, find_text_tokenizer(), lm_kwargs(size), f"random-{size}")
    result = {"machine": f"{platform.machine()}, torch {torch.__version__}, "
                         f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}",
              "size": size, "device": str(device), "lm_params": n_params(lm), "mimi_params": n_params(mimi),
              "lm_dtype": str(lm.dtype), "build_s": build_s, "segment": segment.id, "frames": args.frames,
              "rollout": [], "audio_reward": None, "learner": [], "sync": None}
    print(f"{size} Moshi: {n_params(lm) / 1e9:.2f} B parameters ({lm.dtype}), Mimi {n_params(mimi) / 1e6:.0f} M, "
          f"on {device}; built in {build_s:.1f} s")
    codes = None
    for G in groups:
        r = rollout(models, corpus, segment, G, args.frames, device)
        codes = r.pop("agent_codes")
        result["rollout"].append(r)
        print(f"rollout G={G:>2}: env {r['env_frames_per_s']:8.1f} frames/s, LMGen alone "
              f"{r['lmgen_frames_per_s']:8.1f}: outside the model {100 * r['outside_model_share']:5.1f}%")
    reward = audio_reward(mimi, codes, device)
    reward["share_of_rollout"] = reward["total_s"] / (result["rollout"][-1]["env_s"] + reward["total_s"])
    result["audio_reward"] = reward
    print(f"audio reward, G={groups[-1]}: Mimi decode {reward['decode_s']:.2f} s + silero {reward['vad_s']:.2f} s "
          f"= {100 * reward['share_of_rollout']:.1f}% of rollout + reward")
    del models, lm, mimi
    reset_peak(device)
    trained = None
    for trainable, checkpointing in (("lora", False), ("all", False), ("lora", True)):
        r = learner_step(size, trainable, groups[-1], result["rollout"][-1]["frames"], device, checkpointing)
        if trainable == "lora" and not checkpointing:
            trained = r.pop("trained")
        else:
            r.pop("trained", None)
        result["learner"].append(r)
        name = trainable + (" + activation checkpointing" if checkpointing else "")
        if r["oom"]:
            print(f"learner {name}: out of memory ({r['error']})")
        else:
            print(f"learner {name}: {r['trained_params'] / 1e6:.1f} M trained, step {r['step_s']:.2f} s, "
                  f"{r['tokens_per_s']:.0f} tokens/s, peak {r['peak_gb']:.1f} GB")
    if trained is not None:
        result["sync"] = weight_sync(trained, size, device)
        s = result["sync"]
        print(f"sync of {s['mb']:.1f} MB: direct {s['direct_s'] * 1e3:.1f} ms, via numpy {s['numpy_s'] * 1e3:.1f} ms")
    lora = result["learner"][0]
    if not lora["oom"] and result["sync"] is not None:
        sample_s = result["rollout"][-1]["env_s"]
        parts = {"sample_s": sample_s, "reward_s": reward["total_s"], "update_s": lora["step_s"],
                 "sync_s": result["sync"]["direct_s"]}
        total = sum(parts.values())
        parts["model_share"] = (sample_s + lora["step_s"]) / total
        result["iteration"] = parts
        print(f"iteration (G={groups[-1]}, lora): sample {sample_s:.2f} s, reward {reward['total_s']:.2f} s, update "
              f"{lora['step_s']:.2f} s, sync {parts['sync_s']:.3f} s: model {100 * parts['model_share']:.1f}%")
    out = Path(args.out) if args.out else RESULTS / f"scale_{size}_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
