"""What a run trains of the Moshi LM, and in which precision: ``trainable: all | temporal | lora``
and ``dtype: fp32 | bf16``. Pure torch + moshi (no Ray): the RLModule calls these, tests call them
on the tiny LM.

``trainable``:

- ``all``: every parameter of the LM.
- ``temporal``: the temporal transformer and what feeds and reads it (the embeddings, the text
  head, the output norm); the depformer (``DEPFORMER_CHILDREN``) stays frozen unless the loss covers
  audio streams (``update_streams: audio | all``), which the depformer generates.
- ``lora``: low-rank adapters through moshi's own ``moshi.modules.lora.LoRALinear`` on the linears
  of the children named in ``lora.modules`` (default: the temporal transformer, plus the depformer
  when audio streams are updated); everything else frozen. ``lora_B`` starts at zero (as
  moshi-finetune initialises it), so the adapted LM starts equal to the base LM. The reference
  policy of the KL is the same network with its adapters switched off (:func:`adapters_off`: each
  ``LoRALinear`` runs its frozen linear alone, bit for bit the base LM), so no second copy of the
  weights exists.

Export (:func:`lora_file_tensors`): moshi's loader (``loaders.get_moshi_lm(..., lora_weights=)``,
with ``lora: true`` in the LM kwargs) replaces every linear of the LM with a ``LoRALinear`` of one
rank and loads the file into it; the file therefore holds ``lora_A`` / ``lora_B`` for every linear,
zeros for the linears this run did not adapt (their output is unchanged, exactly).

``dtype: bf16``: rollouts (the env runners' LM) and the reference in bfloat16; the learner keeps
float32 master weights and runs its forward passes under ``torch.autocast(bfloat16)`` (mixed
precision: gradients and Adam moments in float32, no loss scaling needed with bf16's exponent
range). Chosen over bf16 AdamW with stochastic rounding because it needs nothing beyond torch and
keeps the optimizer's numbers exact; it costs 4 bytes per trained parameter more (small with LoRA).
"""

from __future__ import annotations

import contextlib

import torch
from moshi.modules.lora import LoRALinear, replace_all_linear_with_lora
from torch import nn

TRAINABLE = ("all", "temporal", "lora")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: Top-level children of moshi's ``LMModel`` that make up the depformer (audio codebooks 1..8).
DEPFORMER_CHILDREN = ("depformer_in", "depformer_emb", "depformer_text_emb", "depformer_norms", "depformer",
                      "linears")
#: Children of ``LMModel`` whose linears can carry adapters (``lora.modules``).
LORA_CHILDREN = ("transformer", "text_linear", "depformer_in", "depformer", "linears")


def default_lora_modules(update_streams: str) -> tuple[str, ...]:
    """The temporal transformer's linears; with audio streams in the loss, the depformer's too."""
    return ("transformer",) if update_streams == "text" else ("transformer", "depformer_in", "depformer", "linears")


def add_lora(lm: nn.Module, modules: tuple[str, ...], rank: int, scaling: float) -> int:
    """Wrap every ``nn.Linear`` under the children ``modules`` of ``lm`` in moshi's ``LoRALinear``
    (``rank``, ``scaling``; the adapters in the linear's dtype and device), ``lora_B`` zeroed;
    returns how many linears were wrapped."""
    for name in modules:
        if name not in LORA_CHILDREN:
            raise ValueError(f"lora.modules: unknown {name!r}; known: {', '.join(LORA_CHILDREN)}")
        child = getattr(lm, name)
        if isinstance(child, nn.Linear):  # replace_all_linear_with_lora wraps children, not the module itself
            holder = nn.Module()
            holder.add_module("only", child)
            replace_all_linear_with_lora(holder, rank, scaling)
            setattr(lm, name, holder.only)
        else:
            replace_all_linear_with_lora(child, rank, scaling)
    wrapped = lora_layers(lm)
    with torch.no_grad():
        for m in wrapped:
            nn.init.kaiming_uniform_(m.lora_A.weight, a=5 ** 0.5)
            m.lora_B.weight.zero_()
    return len(wrapped)


def freeze_for(lm: nn.Module, trainable: str, update_streams: str) -> None:
    """Set ``requires_grad`` of every parameter of ``lm`` for ``trainable`` (module docstring)."""
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable: expected one of {TRAINABLE}, got {trainable!r}")
    for name, p in lm.named_parameters():
        if trainable == "all":
            p.requires_grad_(True)
        elif trainable == "lora":
            p.requires_grad_(is_adapter(name))
        else:
            in_depformer = name.split(".", 1)[0] in DEPFORMER_CHILDREN
            p.requires_grad_(not in_depformer or update_streams != "text")


def is_adapter(name: str) -> bool:
    """Whether the parameter or state key ``name`` is one of a LoRALinear's adapter weights."""
    return ".lora_A." in name or ".lora_B." in name


def lora_layers(lm: nn.Module) -> list[LoRALinear]:
    return [m for m in lm.modules() if isinstance(m, LoRALinear)]


def prepare(lm: nn.Module, trainable: str, update_streams: str, lora: dict | None, dtype: str,
            learner: bool, checkpointing: bool = False) -> nn.Module:
    """``lm`` as a run trains it (in place, returned): adapters added (``trainable: lora``, with
    ``lora`` = the config's ``{rank, scaling, modules}``), ``requires_grad`` set (:func:`freeze_for`)
    and the precision of ``dtype``: with bf16 a runner's LM is all bf16, a learner's trained
    parameters are fp32 master weights and its frozen ones bf16. ``checkpointing`` (learners only):
    moshi's activation checkpointing of every layer of the temporal transformer and the depformer
    (``StreamingTransformer.checkpointing``: each layer's activations are recomputed in the backward
    pass instead of kept; the same gradients)."""
    if learner and checkpointing:
        set_checkpointing(lm, True)
    if trainable == "lora":
        add_lora(lm, tuple(lora["modules"] or default_lora_modules(update_streams)), int(lora["rank"]),
                 float(lora["scaling"]))
    freeze_for(lm, trainable, update_streams)
    if dtype == "bf16" and not learner:
        return lm.to(DTYPES["bf16"])
    if dtype == "bf16":
        with torch.no_grad():
            for p in lm.parameters():
                p.data = p.data.to(torch.float32 if p.requires_grad else DTYPES["bf16"])
    return lm


def set_checkpointing(lm: nn.Module, on: bool) -> None:
    """moshi's per-layer activation checkpointing on (or off) in both transformers of ``lm``."""
    for transformer in (lm.transformer, getattr(lm, "depformer", None)):
        if transformer is not None:
            transformer.checkpointing = bool(on)


@contextlib.contextmanager
def adapters_off(lm: nn.Module):
    """Inside: every ``LoRALinear`` of ``lm`` computes its frozen linear only (the base LM, bit for
    bit); restored on exit."""
    layers = lora_layers(lm)
    for m in layers:
        m.forward = m.frozen_W.forward  # an instance attribute: nn.Module.__call__ finds it first
    try:
        yield lm
    finally:
        for m in layers:
            del m.forward


def trainable_state(lm: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors a run changes: the parameters with ``requires_grad``, under ``prefix``."""
    return {prefix + n: p for n, p in lm.named_parameters() if p.requires_grad}


def base_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The LM without its adapters, under the base LM's names (``x.frozen_W.weight`` -> ``x.weight``)."""
    return {k.replace(".frozen_W.", "."): v for k, v in lm.state_dict().items() if not is_adapter(k)}


def lora_file_tensors(lm: nn.Module, empty_lm: nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """moshi's LoRA file of ``lm``: ``{linear}.lora_A.weight [rank, in]`` and ``{linear}.lora_B.weight
    [out, rank]`` for every ``nn.Linear`` of the base LM ``empty_lm`` (meta tensors suffice): the
    trained adapters where ``lm`` has them, zeros elsewhere (module docstring)."""
    state = lm.state_dict()
    out = {}
    for name, m in empty_lm.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        a, b = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
        if a in state:
            if state[a].shape[0] != rank:
                raise ValueError(f"{a}: rank {state[a].shape[0]}, expected {rank}")
            out[a], out[b] = state[a], state[b]
        else:
            out[a] = torch.zeros(rank, m.in_features)
            out[b] = torch.zeros(m.out_features, rank)
    return out


def merged_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The base LM's state with each adapter merged in (``W + scaling * B @ A``, moshi's
    ``LoRALinear.merge_weight``): a plain checkpoint of the adapted LM."""
    merged = base_state(lm)
    for name, m in lm.named_modules():
        if isinstance(m, LoRALinear):
            merged[f"{name}.weight"] = m.merge_weight()
    return merged


def autocast(device: torch.device, dtype: str):
    """The learner's forward context: bf16 autocast for ``dtype: bf16``, nothing for fp32."""
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
