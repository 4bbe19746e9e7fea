"""What is trained and in which precision (agents/training/adapters.py): moshi's LoRA adapters, the
adapters-off reference, the exported LoRA file through moshi's own loader, ``trainable: temporal``,
the bf16 path; and a LoRA run on a real local Ray (only adapters move, runners get them, resume)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from duplexgym.agents.policies.checkpoint import build_tiny_lm, load_models, save_checkpoint, tiny_lm_kwargs
from duplexgym.agents.training import adapters
from duplexgym.agents.training.config import TrainConfigError, load_train_config
from duplexgym.agents.training.logprobs import token_logprobs

ALL_LINEARS = ("transformer", "text_linear", "depformer_in", "depformer", "linears")


def _batch(seed=0, B=2, T=16):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 2048, (B, 9, T), generator=g)
    tokens[:, 0] = torch.randint(0, 32000, (B, T), generator=g)
    return tokens, torch.randint(0, 2048, (B, 8, T), generator=g)


def _logp(lm, batch):
    return torch.nan_to_num(token_logprobs(lm, *batch, top_k_text=0, top_k=0).detach(), nan=0.0)


def _perturb(lm, seed=1, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in adapters.lora_layers(lm):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * std)


def test_lora_starts_as_the_base_and_its_reference_is_the_base_bit_for_bit():
    batch, base = _batch(), build_tiny_lm()
    lm = build_tiny_lm()
    n = adapters.add_lora(lm, ("transformer",), rank=4, scaling=2.0)
    assert n == 8 and all(type(m).__name__ == "LoRALinear" for m in adapters.lora_layers(lm))  # moshi's own class
    assert torch.equal(_logp(lm, batch), _logp(base, batch))  # lora_B = 0: the base LM
    _perturb(lm)
    moved = _logp(lm, batch)
    assert not torch.equal(moved, _logp(base, batch))
    with adapters.adapters_off(lm):
        assert torch.equal(_logp(lm, batch), _logp(base, batch))  # the reference, no second copy
    assert torch.equal(_logp(lm, batch), moved)  # adapters back on
    with pytest.raises(ValueError, match="lora.modules: unknown 'attention'"):
        adapters.add_lora(build_tiny_lm(), ("attention",), 4, 2.0)


def test_trainable_sets():
    lm = build_tiny_lm()
    adapters.add_lora(lm, adapters.default_lora_modules("text"), 4, 2.0)
    adapters.freeze_for(lm, "lora", "text")
    trained = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert all(n.startswith("transformer.") for n in trained)
    assert set(adapters.default_lora_modules("audio")) == {"transformer", "depformer_in", "depformer", "linears"}
    lm = build_tiny_lm()
    adapters.freeze_for(lm, "temporal", "text")
    frozen = {n.split(".")[0] for n, p in lm.named_parameters() if not p.requires_grad}
    assert frozen == {"depformer_in", "depformer_emb", "depformer_text_emb", "depformer", "linears"}
    adapters.freeze_for(lm, "temporal", "all")  # the depformer generates the audio streams
    assert all(p.requires_grad for p in lm.parameters())
    # one gradient step of a LoRA LM moves the adapters and nothing else
    lm = build_tiny_lm()
    adapters.add_lora(lm, ("transformer",), 4, 2.0)
    adapters.freeze_for(lm, "lora", "text")
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    opt = torch.optim.Adam([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    _perturb(lm)  # a nonzero B, so that A gets a gradient too
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    logp = token_logprobs(lm, *_batch(), top_k_text=0, top_k=0)[:, 0]
    (-logp.mean()).backward()
    opt.step()
    changed = {k for k, v in lm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_A." in k or ".lora_B." in k for k in changed)
    assert any(".lora_A." in k for k in changed) and any(".lora_B." in k for k in changed)


def test_exported_lora_loads_through_moshis_loader_and_reproduces_the_logits(tmp_path):
    from duplexgym.agents.policies.checkpoint import _empty_lm
    from moshi.models import loaders

    batch, models = _batch(2), load_models("tiny")
    lm = build_tiny_lm()
    adapters.add_lora(lm, ("transformer", "linears"), rank=4, scaling=2.0)
    _perturb(lm, std=0.1)
    trained = _logp(lm, batch)
    kwargs = tiny_lm_kwargs()
    tensors = adapters.lora_file_tensors(lm, _empty_lm(kwargs), rank=4)
    assert len(tensors) == 2 * 57  # every linear of the LM: moshi's loader adapts them all
    out = save_checkpoint(adapters.base_state(lm), models.mimi, models.text_tokenizer, tmp_path / "policy", kwargs,
                          lora={"tensors": tensors, "rank": 4, "scaling": 2.0})
    config = json.loads((out / "config.json").read_text())
    assert config["lora"] is True and config["lora_rank"] == 4 and config["lora_name"] == "lora.safetensors"
    lm_kwargs = {k: v for k, v in config.items() if k not in ("moshi_name", "mimi_name", "mimi_config_name",
                                                               "tokenizer_name", "lora_name", "model_type")}
    # moshi's own loader, adapters kept as LoRALinear: the trained log-probs exactly
    kept = loaders.get_moshi_lm(str(out / "model.safetensors"), lm_kwargs=lm_kwargs, device="cpu",
                                dtype=torch.float32, lora_weights=str(out / "lora.safetensors"), fuse_lora=False)
    assert torch.equal(_logp(kept, batch), trained)
    # fused into the weights (what load_models and eval --agent moshi:DIR do): equal within float rounding
    fused = load_models(out).lm
    assert not adapters.lora_layers(fused)
    torch.testing.assert_close(_logp(fused, batch), trained, rtol=0, atol=2e-4)
    # the merged export is a plain checkpoint of the same policy
    merged = save_checkpoint(adapters.merged_state(lm), models.mimi, models.text_tokenizer, tmp_path / "merged", kwargs)
    assert "lora" not in json.loads((merged / "config.json").read_text())
    torch.testing.assert_close(_logp(load_models(merged).lm, batch), trained, rtol=0, atol=2e-4)
    # lora: true without the adapters' file is refused (moshi would start them at random)
    config.pop("lora_name")
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lora is true but no lora_name"):
        load_models(out)


def test_bf16_teacher_forced_logprobs_are_close_to_fp32():
    """bf16 autocast over fp32 weights (the learner) and bf16 weights (runners, reference) on CPU:
    the tiny LM's log-probs (~-10 over 32000 tokens) move by < 0.1 (text) and < 0.25 (audio),
    0.03 on average; measured: 0.031 / 0.065 / 0.014 (autocast), 0.056 / 0.129 / 0.023 (bf16 weights)."""
    batch = _batch(3)
    fp32 = _logp(build_tiny_lm(), batch)
    with adapters.autocast(torch.device("cpu"), "bf16"):
        mixed = _logp(build_tiny_lm(), batch)
    weights = _logp(build_tiny_lm(dtype=torch.bfloat16), batch)
    for got in (mixed, weights):
        d = (got.float() - fp32).abs()
        assert 0 < d.mean() <= 0.03 and d[:, 0].max() <= 0.1 and d[:, 1:].max() <= 0.25


def test_lora_and_dtype_config_checks(small_corpus, tmp_path):
    base = {"corpus": str(small_corpus), "out": str(tmp_path / "run")}
    cfg = load_train_config({**base, "trainable": "lora"})
    assert cfg.lora.rank == 16 and cfg.lora.scaling == 2.0 and cfg.lora.modules is None
    assert cfg.to_dict()["lora"]["export_merged"] is False and cfg.dtype == "fp32"
    with pytest.raises(TrainConfigError, match="^lora: only used with trainable: lora"):
        load_train_config({**base, "lora": {"rank": 4}})
    with pytest.raises(TrainConfigError, match=r"lora.modules\[1\]: unknown module 'mlp'"):
        load_train_config({**base, "trainable": "lora", "lora": {"modules": ["transformer", "mlp"]}})
    with pytest.raises(TrainConfigError, match="lora.rank"):
        load_train_config({**base, "trainable": "lora", "lora": {"rank": 0}})
    with pytest.raises(TrainConfigError, match="dtype: unknown value 'fp16'"):
        load_train_config({**base, "dtype": "fp16"})
    with pytest.raises(TrainConfigError, match="trainable: unknown value 'adapters'"):
        load_train_config({**base, "trainable": "adapters"})
    import yaml

    raw = yaml.safe_load((Path(__file__).parent.parent / "configs" / "lora_tiny.yaml").read_text())
    shipped = load_train_config({**raw, **base})
    assert shipped.trainable == "lora" and shipped.lora.rank == 8 and shipped.lora.export_merged
    from duplexgym.agents.training.plan import format_plan, training_plan

    plan = training_plan(load_train_config({**raw, **base, "dtype": "bf16", "num_learners": 2,
                                            "gpus_per_learner": 1}))
    assert plan["trainable"] == "lora" and plan["lora"]["rank"] == 8 and plan["devices"]["num_learners"] == 2
    assert "trains lora r 8 x 2 on transformer in bf16; 2 learners (DDP) 1 GPU each" in format_plan(plan)


@pytest.mark.slow
def test_lora_bf16_run_with_the_vad_reader_moves_only_adapters_syncs_exports_and_resumes(small_corpus, tmp_path):
    """One run covers the real-size path on the tiny model: ``trainable: lora``, ``dtype: bf16``
    (runners in bf16; the learner's frozen base in bf16, its adapters fp32 master weights) and the
    paper's audio reward (``activity: {reader: vad}``: rollouts decoded with Mimi, read with silero),
    whose rewards equal a rescoring of the same rollouts' records."""
    from duplexgym.agents.training.checkpoints import MODULE_ID, on_learners, sampling_runners
    from duplexgym.agents.training.run import run_training
    from duplexgym.envs.replay import DuplexReplayEnv
    from duplexgym.rewards.scoring import score_episode
    from duplexgym.rewards.spec import load_spec
    from safetensors.torch import load_file

    rewards = {"activity": {"reader": "vad"}, "dense": {"weight": 1.0}}

    def cfg(out, **kw):
        return load_train_config({"corpus": str(small_corpus), "out": str(out), "group_size": 4,
                                  "segments_per_iteration": 1, "iterations": 2, "axes": ["turn"], "lr": 1e-2,
                                  "trainable": "lora", "lora": {"rank": 4, "export_merged": True}, "dtype": "bf16",
                                  "rewards": rewards, "checkpoint_interval": 1, "seed": 1, **kw})

    base = build_tiny_lm().state_dict()
    saved, synced, episodes = {}, {}, []

    def on_checkpoint(algo, path, done):
        episodes.extend(algo.last_episodes)
        saved[done] = {"path": path, **on_learners(algo, lambda learner: {
            "state": {k: v.detach().clone() for k, v in learner.module[MODULE_ID].lm.state_dict().items()},
            "has_ref": hasattr(learner.module[MODULE_ID], "ref_lm"),
            "sync_keys": sorted(learner.module[MODULE_ID].get_state(inference_only=True))})[0]}
        synced[done] = sampling_runners(algo, lambda r: {k: v.detach().clone()
                                                         for k, v in r._module().lm.state_dict().items()})

    full = run_training(cfg(tmp_path / "full"), on_checkpoint=on_checkpoint)
    assert all(np.isfinite(r["loss"]) for r in full["iterations"])
    assert all(r["sync"] == "direct" for r in full["iterations"])  # learner and runner in this process: in place
    # the vad reader's rewards are what rescoring the same rollouts gives
    env = DuplexReplayEnv(small_corpus, axes=("turn",), obs_mode="codes", action_mode="tokens", rewards=rewards)
    spec = load_spec(rewards)
    for e in episodes:
        env.reset(options={"segment": e.custom_data["segment"]})
        total = 0.0
        for a in e.get_actions():
            _, r, done, _, info = env.step(a)
            total += r
        assert done and total == pytest.approx(e.custom_data["reward"], abs=1e-9)
        assert score_episode(env.episode_record(), spec)["reward"] == pytest.approx(info["reward_terms"]["reward"],
                                                                                   abs=1e-12)
    assert len(episodes) == 8
    state = saved[2]["state"]
    assert not saved[2]["has_ref"]  # no second copy of the LM
    for k, v in state.items():  # fp32 master weights of the adapters, the frozen base in bf16
        assert v.dtype == (torch.float32 if ".lora_" in k else torch.bfloat16), k
    keys = saved[2]["sync_keys"]  # a weight sync carries the adapters only
    assert keys and all(k.startswith("lm.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    for k, v in state.items():
        plain = k.replace(".frozen_W.", ".")
        if ".lora_" in k:
            continue
        assert torch.equal(v, base[plain].to(torch.bfloat16)), f"{k}: a frozen weight moved"
    moved = [k for k, v in state.items() if ".lora_B." in k and v.abs().max() > 0]
    assert moved, "no adapter moved"
    for runner_state in synced[2]:  # the runners sample in bf16 with the learner's adapters
        for k, v in state.items():
            assert runner_state[k].dtype == torch.bfloat16 and torch.equal(runner_state[k], v.to(torch.bfloat16)), k
    ckpt = load_file(str(saved[1]["path"] / "module.safetensors"))
    assert ckpt and all(".lora_A." in k or ".lora_B." in k for k in ckpt)  # only what the run trains
    # the exported policy: base weights + moshi's LoRA file; the merged folder beside it
    policy, merged = Path(full["files"]["policy"]), Path(full["files"]["policy_merged"])
    assert (policy / "lora.safetensors").is_file() and json.loads((policy / "config.json").read_text())["lora"]
    batch = _batch(4)
    trained = build_tiny_lm()
    adapters.add_lora(trained, ("transformer",), 4, 2.0)
    trained.load_state_dict(state)  # float32 (the bf16 base's values exactly)
    want = _logp(trained, batch)
    for folder in (policy, merged):
        torch.testing.assert_close(_logp(load_models(folder).lm, batch), want, rtol=0, atol=2e-4)
    # resume from iteration 1: the adapters and Adam's moments come back; iteration 2 is the same
    started = {}

    def on_start(algo, done):
        learner = algo.learner_group._learner
        started["state"] = {k: v.detach().clone() for k, v in learner.module[MODULE_ID].lm.state_dict().items()}
        started["optim"] = learner._get_optimizer_state()

    ended = {}
    run_training(cfg(tmp_path / "resumed"), resume=saved[1]["path"], on_start=on_start,
                 on_checkpoint=lambda algo, path, done: ended.update(
                     {done: {k: v.detach().clone() for k, v in algo.learner_group._learner.module[MODULE_ID]
                             .lm.state_dict().items()}}))
    for k, v in saved[1]["state"].items():
        assert torch.equal(started["state"][k], v), k
    (opt,) = started["optim"].values()
    moments = opt["state"]["state"]
    assert moments and all(float(np.asarray(m["step"])) == 1.0 for m in moments.values())
    for k, v in saved[2]["state"].items():
        torch.testing.assert_close(ended[2][k], v, rtol=0, atol=1e-6)


def _saved_bytes_and_grads(lm, batch):
    """Bytes autograd keeps for the backward pass inside the temporal transformer's forward (one
    teacher-forced pass), and the gradients."""
    saved, inside = [], []
    pre = lm.transformer.register_forward_pre_hook(lambda *_: inside.append(True))
    post = lm.transformer.register_forward_hook(lambda *_: inside.clear())

    def pack(t):
        if inside:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp = token_logprobs(lm, *batch, top_k_text=0, top_k=0)
    pre.remove(), post.remove()
    torch.nan_to_num(logp, nan=0.0).sum().backward()
    return sum(saved), {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}


def test_activation_checkpointing_keeps_the_gradients_and_frees_the_activations():
    batch = _batch(T=48)
    plain, checkpointed = build_tiny_lm(), build_tiny_lm()
    adapters.prepare(checkpointed, "all", "text", None, "fp32", learner=True, checkpointing=True)
    assert checkpointed.transformer.checkpointing and checkpointed.depformer.checkpointing
    kept, grads = _saved_bytes_and_grads(plain, batch)
    kept_ckpt, grads_ckpt = _saved_bytes_and_grads(checkpointed, batch)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 50
    for name in grads:
        assert torch.equal(grads[name], grads_ckpt[name]), name  # the recomputation is the same arithmetic
    # the temporal transformer keeps only each layer's input: 1.67 MB -> 0.05 MB on the tiny LM at T=48
    assert kept_ckpt < 0.1 * kept
    runner = adapters.prepare(build_tiny_lm(), "all", "text", None, "fp32", learner=False, checkpointing=True)
    assert not runner.transformer.checkpointing  # runners stream without autograd: never checkpointed
