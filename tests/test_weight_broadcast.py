"""weight_sync: broadcast: the bucket plan, the tensor contract, and real gloo groups (one thread per
member) carrying fp32 master weights into bf16 and fp32 runners; the training config's choice.
The whole path through Ray (remote runners, a runner killed and the group rebuilt) is in
tests/test_rllib_faults.py and tests/test_rllib_grpo.py."""

import threading

import pytest
import torch
from duplexgym.agents.policies.checkpoint import build_tiny_lm
from duplexgym.agents.training.config import TrainConfigError, load_train_config
from duplexgym.agents.training.weight_broadcast import WeightChannel, buckets, check_fits, manifest


def run_group(source: dict, targets: list[dict], bucket_bytes: int, backend: str = "gloo", devices=None) -> dict:
    """One sync over a real group, a thread per member: rank 0 sends ``source``, ranks 1.. receive
    into ``targets``; ``{rank: (bytes, broadcasts)}``. ``devices``: each rank's CUDA device (nccl)."""
    world = len(targets) + 1
    entries = manifest(targets[0])
    store, address = WeightChannel.open(world, host="127.0.0.1")
    out, errors = {}, []

    def member(rank):
        try:
            if devices is not None:
                torch.cuda.set_device(devices[rank])
            channel = WeightChannel(address, rank, world, backend, entries, 1,
                                    store=store if rank == 0 else None, bucket_bytes=bucket_bytes)
            out[rank] = (channel.send(source) if rank == 0 else channel.receive(targets[rank - 1]), len(channel.plan))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=member, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return out


def test_buckets_are_runs_of_one_dtype_within_the_limit():
    entries = [("a", (4,), "float32"), ("b", (4,), "float32"), ("c", (2, 4), "float32"), ("d", (3,), "bfloat16"),
               ("e", (100,), "float32"), ("f", (1,), "float32")]
    # 16 + 16 bytes fit 40; c's 32 starts a new bucket; the dtype changes at d; e alone exceeds the limit
    assert buckets(entries, limit=40) == [[0, 1], [2], [3], [4], [5]]
    assert buckets(entries, limit=10**9) == [[0, 1, 2], [3], [4, 5]]
    assert buckets([], limit=40) == []


def test_check_fits_names_the_tensor():
    entries = manifest({"lm.a": torch.zeros(2, 3), "lm.b": torch.zeros(4)})
    assert entries == [("lm.a", (2, 3), "float32"), ("lm.b", (4,), "float32")]
    check_fits(entries, {"lm.a": torch.ones(2, 3, dtype=torch.bfloat16), "lm.b": torch.ones(4)}, "x")  # dtype free
    with pytest.raises(ValueError, match=r"the learner's lm\.a is \(3, 2\), the runners' \(2, 3\)"):
        check_fits(entries, {"lm.a": torch.zeros(3, 2), "lm.b": torch.zeros(4)}, "the learner")
    with pytest.raises(ValueError, match=r"1 missing, e\.g\. \['lm\.b'\]; 1 unexpected, e\.g\. \['lm\.c'\]"):
        check_fits(entries, {"lm.a": torch.zeros(2, 3), "lm.c": torch.zeros(4)}, "env runner 2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_gloo_group_carries_the_learners_weights_into_every_runner(dtype):
    """The tiny LM's fp32 weights into two runners' LMs of ``dtype`` (in place: the tensors the
    sampler holds), in several buckets: equal to the learner's cast to the runners' dtype, bit for bit."""
    learner = build_tiny_lm()
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn_like(p))  # not the runners' weights
    runners = [build_tiny_lm(dtype=dtype) for _ in range(2)]
    source = learner.state_dict()
    targets = [r.state_dict() for r in runners]
    held = [dict(r.named_parameters())["text_emb.weight"] for r in runners]
    nbytes = sum(v.numel() * v.element_size() for v in targets[0].values())
    plan = buckets(manifest(targets[0]), 2**16)
    assert {len(b) == 1 for b in plan} == {True, False}  # tensors alone (sent without packing) and packed ones
    out = run_group(source, targets, bucket_bytes=2**16)
    assert {r: sent for r, (sent, _) in out.items()} == {0: nbytes, 1: nbytes, 2: nbytes}
    assert out[0][1] == len(plan)
    for runner, param in zip(runners, held, strict=True):
        state = runner.state_dict()
        assert all(torch.equal(state[k], source[k].to(dtype)) for k in source)
        assert param.data_ptr() == dict(runner.named_parameters())["text_emb.weight"].data_ptr()
        assert torch.equal(param, source["text_emb.weight"].to(dtype))


def test_only_rank_0_sends():
    entries = manifest({"a": torch.zeros(2)})
    store, address = WeightChannel.open(1, host="127.0.0.1")
    channel = WeightChannel(address, 0, 1, "gloo", entries, 1, store=store)
    channel.rank = 1
    with pytest.raises(RuntimeError, match="only rank 0 sends"):
        channel.send({"a": torch.ones(2)})
    with pytest.raises(ValueError, match="unknown backend 'mpi'"):
        WeightChannel(address, 0, 1, "mpi", entries, 2, store=store)


def test_weight_sync_config(small_corpus, tmp_path):
    base = {"corpus": str(small_corpus), "out": str(tmp_path / "run"), "group_size": 2, "segments_per_iteration": 2}
    assert load_train_config(base).weight_sync_path() == "object_store"  # no remote runners
    cfg = load_train_config({**base, "env_runners": 2})
    assert cfg.weight_sync == "auto" and cfg.weight_sync_path() == "broadcast" and cfg.weight_backend() == "gloo"
    assert load_train_config({**base, "env_runners": 2, "weight_sync": "object_store"}).weight_sync_path() == "object_store"
    gpus = load_train_config({**base, "env_runners": 2, "num_learners": 1, "gpus_per_learner": 1,
                              "gpus_per_env_runner": 1})
    assert gpus.weight_backend() == "nccl"
    shared = load_train_config({**base, "env_runners": 2, "num_learners": 1, "gpus_per_learner": 1,
                                "gpus_per_env_runner": 0.5})
    assert shared.weight_backend() == "gloo"  # runners sharing a GPU: nccl allows one rank per device
    from duplexgym.agents.training.plan import format_plan, training_plan

    assert "2 env runner(s) 1 GPU each (weights by nccl broadcast)" in format_plan(training_plan(gpus))
    assert "(weights by Ray's object store)" in format_plan(training_plan(
        load_train_config({**base, "env_runners": 2, "weight_sync": "object_store"})))
    with pytest.raises(TrainConfigError, match="^weight_sync: broadcast sends to remote env runners; env_runners is 0"):
        load_train_config({**base, "weight_sync": "broadcast"})
    with pytest.raises(TrainConfigError, match="^weight_sync: "):
        load_train_config({**base, "weight_sync": "ipc"})
