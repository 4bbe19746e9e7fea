"""``sharding: fsdp``: the learners shard the LM's parameters, gradients and Adam moments across
themselves with torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) instead of each holding a
whole copy under DDP. Pure torch (no Ray): the learner calls these after building its module.

What is sharded: every layer of the temporal transformer and of the depformer is its own FSDP unit
(its parameters gathered for its forward and backward, then freed); the rest of the LM
(embeddings, heads, norms) is the root unit. The frozen reference LM (``trainable: all |
temporal``) is sharded the same way. Each parameter becomes a ``DTensor`` holding
``1 / world`` of its rows (``Shard(0)``); the optimizer is built over those shards, so Adam's
moments are sharded too. Parameters keep their dtype (float32 master weights) and the forward
passes run under the same ``torch.autocast`` as with DDP, so both compute the same update
(tested within 1e-5 of one learner on CPU with gloo). Gradients are reduce-scattered as averages
over the learners, what DDP's all-reduce gives; the loss is scaled as under DDP
(:func:`~duplexgym.agents.training.learner.data_parallel_scale`).

Per learner, for a model of ``P`` parameters trained ``all`` in fp32 master weights with Adam over
``N`` learners: ``16 P / N`` bytes (weights, gradients, two moments) plus the bf16 reference
``2 P / N``, plus one gathered layer at a time and the activations; under DDP the same is
``16 P + 2 P``. Moshi 7B (7.69e9 parameters): 138 GB per learner under DDP, 17.3 GB each over 8
learners. The module is built whole on each learner first (RLlib builds it before this runs), so
each learner needs the whole fp32 model and the bf16 reference in memory once, briefly.

Collectives: a gathered state (:func:`full_tensor`) is a collective; every learner must call it in
the same order. The weight sync and the checkpoints therefore run on every learner
(:meth:`GroupLearner.gather_sync_state`, :func:`~duplexgym.agents.training.checkpoints.learner_state`).
"""

from __future__ import annotations

import torch
from torch import nn

SHARDING = ("ddp", "fsdp")


def is_sharded(tensor) -> bool:
    """True for a ``DTensor`` (a parameter or optimizer state of a sharded module)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a ``DTensor`` (a collective: all learners call it), else ``tensor``."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def shard_like(own: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """``whole`` (the same on every learner) as a ``DTensor`` placed as ``own`` is, each learner
    keeping its own part (no communication); ``whole`` itself when ``own`` is not sharded."""
    if not is_sharded(own):
        return whole
    from torch.distributed.tensor import distribute_tensor

    if tuple(whole.shape) != tuple(own.shape):
        raise ValueError(f"a tensor of shape {tuple(whole.shape)} for a parameter of shape {tuple(own.shape)}")
    return distribute_tensor(whole.to(device=own.device, dtype=own.dtype), own.device_mesh, own.placements,
                             src_data_rank=None)


def _units(lm: nn.Module) -> list[nn.Module]:
    """The FSDP units below the LM's root: each layer of both transformers."""
    units = []
    for name in ("transformer", "depformer"):
        transformer = getattr(lm, name, None)
        if transformer is not None:
            units.extend(transformer.layers)
    return units


def _refuse_move(self, *args, **kwargs):
    raise RuntimeError(f"{type(self).__name__}: a sharded LM is not moved or cast; move it before sharding")


def _register_fsdp_class(cls: type) -> None:
    """Have FSDP2 give units of class ``cls`` a class Python can assign to them.

    ``fully_shard`` turns a unit's class into ``type("FSDP" + name, (FSDPModule, cls), ...)``
    (cached per class) and assigns it to the module. Python refuses that for moshi's streaming
    modules (``StreamingModule(abc.ABC, nn.Module, Generic)``): "object layout differs", as their
    layout derives from ``abc.ABC``, the new class's from ``FSDPModule``. The same class with
    ``cls`` first has ``cls``'s layout and finds every FSDP method (none of which ``cls`` defines);
    of the two that ``nn.Module`` also has, ``__new__`` is FSDP's (it reads
    ``_orig_cls_mro_index``: 1 here) and ``_apply`` (``.to()``, ``.float()``) is refused: the
    learner moves the module to its device before sharding it. Registered in FSDP2's class cache
    (torch 2.13's ``get_cls_to_fsdp_cls``), which ``fully_shard`` reads first."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fully_shard import get_cls_to_fsdp_cls

    cache = get_cls_to_fsdp_cls()
    if cls not in cache:
        cache[cls] = type(f"FSDP{cls.__name__}", (cls, FSDPModule),
                          {"__new__": FSDPModule.__new__, "_orig_cls_mro_index": 1, "_apply": _refuse_move,
                           "__deepcopy__": _refuse_move})


def shard_lm(lm: nn.Module, mesh) -> nn.Module:
    """Shard ``lm`` (moshi's ``LMModel``) in place over ``mesh``: each transformer layer its own
    unit, the rest the root unit (module docstring). Returns ``lm``."""
    from torch.distributed.fsdp import fully_shard

    units = _units(lm)
    for module in (*units, lm):
        _register_fsdp_class(type(module))
    for layer in units:
        fully_shard(layer, mesh=mesh)
    fully_shard(lm, mesh=mesh)
    return lm


def shard_module(module: nn.Module) -> None:
    """Shard the RLModule's LM and its frozen reference (if any) over every learner of the process
    group (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sharding: fsdp needs the learners' process group (num_learners >= 2)")
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    shard_lm(module.lm, mesh)
    if getattr(module, "ref_lm", None) is not None:
        shard_lm(module.ref_lm, mesh)


def global_norm_clip(gradients: dict, grad_clip: float, grad_clip_by: str = "global_norm") -> torch.Tensor:
    """RLlib's ``clip_gradients(..., grad_clip_by="global_norm")`` for sharded gradients: the norm
    over every learner's shards (one all-reduce), each shard scaled in place by
    ``grad_clip / max(norm + 1e-6, grad_clip)``. Returns the global norm (a plain tensor)."""
    import torch.distributed as dist

    if grad_clip_by != "global_norm":
        raise ValueError(f"sharding: fsdp clips by global_norm only, not {grad_clip_by!r}")
    local = [g.to_local() if is_sharded(g) else g for g in gradients.values() if g is not None]
    squares = torch.zeros((), dtype=torch.float64, device=local[0].device if local else "cpu")
    for g in local:
        squares += g.detach().double().pow(2).sum()
    if any(is_sharded(g) for g in gradients.values() if g is not None):
        dist.all_reduce(squares)
    norm = squares.sqrt().float().nan_to_num(neginf=-10e8, posinf=10e8)
    if grad_clip is None:
        return norm
    coeff = torch.clamp(grad_clip / torch.clamp(norm + 1e-6, min=grad_clip), max=1.0)
    for g in local:
        g.detach().mul_(coeff.to(g.device))
    return norm
