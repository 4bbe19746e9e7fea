"""PersonaPlex (NVIDIA/personaplex) on the stock ``moshi`` package: its weights, its prompts, its prompt phases.

Everything here was read from NVIDIA/personaplex at ``3428dfd`` (``moshi/moshi/models/lm.py``,
``loaders.py``, ``offline.py``, ``server.py``; line numbers in ``personaplex_notes.md`` beside this file)
and checked against that code run on a tiny random model (``benchmarks/personaplex_parity.py``).

## Weights (``personaplex:PATH``)
A PersonaPlex checkpoint is a Moshi 7B fine-tune whose depformer has 16 steps (``dep_q=16``): steps
0..7 sample the agent's 8 Mimi codebooks, steps 8..15 predict the *user's* codebooks, which the
official code always teacher-forces and never uses. Stock moshi 0.2.13 builds that LM
(``LMModel(**_lm_kwargs, dep_q=16)`` loads the 475 tensors strictly), but its ``LMGen`` cannot run it
(it would take the user stream for 0 codebooks and sample 16). The depformer is causal over its
steps and has no positional embedding, so the first 8 steps of the 16-step depformer are exactly an
8-step depformer: :func:`slice_depformer` keeps ``depformer_in.0-7``, ``depformer_emb.0-6``,
``linears.0-7``, ``gating.0-7`` and the first 8 blocks of each depformer attention projection, and the
result loads strictly into a stock ``LMModel(dep_q=8)``. The text and agent-audio distributions are
those of the 16-step model (tested to float rounding), so the stock ``LMGen``, the teacher-forced
log-probs and training all work unchanged. Attention weights in either naming load (the fork's fused
``in_proj_weight`` / ``out_proj.weight`` of moshi 0.1.0, or 0.2.x's ``in_projs.{i}``). The fork's
``config.json`` is never read by the official code; here a config.json is read only if it holds LM
kwargs (one this project wrote), else Moshi 7B's kwargs are used.

The package: PersonaPlex ships its own ``moshi`` (distribution ``moshi-personaplex`` 0.1.0, a fork of
moshi 0.1.0 that installs the same ``moshi/`` directory). duplexgym needs stock moshi 0.2.x (LoRA,
batched streaming with per-row reset and exec masks, ``_lm_kwargs``); :func:`check_moshi_package`
refuses the fork with the command that puts stock moshi back. PersonaPlex weights need nothing from
the fork.

## Prompt phases (``LMGen.step_system_prompts``), before the conversation
Each phase is one LM step per 80 ms frame, every stream teacher-forced (nothing sampled is kept):

| phase | frames | text | agent audio (streams 1..8) | user audio (9..16) |
| --- | --- | --- | --- | --- |
| voice prompt | N = ceil(samples / 1920) | PAD (3) | Mimi codes of the voice | :data:`SINE_TOKENS` |
| silence | 6 (``int(0.5 * 12.5)``) | PAD | :data:`SILENCE_TOKENS` | SINE |
| text prompt | one per token | the tokens of ``<system> TEXT <system>`` | SILENCE | SINE |
| silence | 6 | PAD | SILENCE | SINE |

Then the conversation: the user's real codes, text and agent audio sampled. The voice prompt is
a wav (any rate: resampled to 24 kHz with soxr, channel 0, loudness-normalised to -24 LUFS with
pyloudnorm as the official code does, last frame zero-padded, encoded frame by frame by the agent's
streaming Mimi) or the official precomputed ``.pt``: ``{"embeddings": [N-1, 1, 1, D], "cache":
[1, 17, 4]}``, read with ``torch.load(weights_only=True, map_location="cpu")`` from a zip archive
only (anything else, a ``.pkl``, a legacy pickle, is refused unopened: :func:`load_voice_embeddings`).
The embeddings are the summed input embeddings the transformer read at LM steps 0..N-2 (the fork's
``embed_codes``; the first voice frame never reaches the model: its place holds the initial tokens),
replayed by replacing the transformer's input at those steps; the cache holds the last voice
frame's tokens, which the next steps read through the delays. The text is wrapped as the official
code wraps it (:func:`wrap_with_system_tags`: the same ``<system>`` tag at both ends) and encoded with
plain SentencePiece ``encode`` (no BOS/EOS). Official text prompts for Full-Duplex-Bench
(README): interruption :data:`TEACHER_PROMPT`, the other axes :data:`CONVERSATION_PROMPT`
(:data:`FDB_TEXT_PROMPTS`, the default per episode axis).

## Alignment with the official code
The fork's step reads cache column ``offset - 1``, stock moshi's column ``offset``: the same
computation one call earlier (greedy outputs equal, shifted by one call: measured). Prompt frame
``j`` here is the fork's call ``j``; the conversation's env frame 0 is LM step ``P`` (``P`` prompt
frames), whose text and codebook 0 were sampled at the last prompt step. The official server plays
each frame one call (80 ms) later than this agent does; this agent keeps stock moshi's alignment
(:mod:`.moshi_agent`), so latencies read here are 80 ms shorter than the official server's.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from duplexgym.constants import FRAME_SAMPLES, MIMI_CARDINALITY, MIMI_CODEBOOKS, N_STREAMS, TEXT_PAD

#: Mimi codes the official LMGen feeds as the agent's silence (``_encode_zero_frame``), codebooks 0..7.
SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
#: Mimi codes the official LMGen feeds on the user stream during every prompt phase (``_encode_sine_frame``).
SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
#: Frames of each silence phase (``audio_silence_frame_cnt = int(0.5 * mimi.frame_rate)``).
PROMPT_SILENCE_FRAMES = 6
#: Loudness the official code normalises a wav voice prompt to (LUFS).
VOICE_LUFS = -24.0
#: Depformer steps of a PersonaPlex checkpoint (the agent's 8 codebooks, then the user's 8).
PERSONAPLEX_DEP_Q = 16
#: Columns of the official LMGen's token cache (``max_delay + 3``), the ``cache`` of a voice ``.pt``.
VOICE_CACHE_COLUMNS = 4
#: Official text prompts (README): user interruption, and the other Full-Duplex-Bench axes.
TEACHER_PROMPT = "You are a wise and friendly teacher. Answer questions or provide advice in a clear and engaging way."
CONVERSATION_PROMPT = "You enjoy having a good conversation."
FDB_TEXT_PROMPTS = {"pause": CONVERSATION_PROMPT, "turn": CONVERSATION_PROMPT,
                    "backchannel": CONVERSATION_PROMPT, "interruption": TEACHER_PROMPT}
#: Suffixes of voice prompts read as audio; ``.pt`` is the official embeddings file.
VOICE_AUDIO_SUFFIXES = (".wav", ".flac")
VOICE_EMBEDDINGS_SUFFIX = ".pt"
#: Pickle suffixes refused for a voice prompt without opening the file.
PICKLED_VOICE_SUFFIXES = (".pkl", ".pickle", ".pth", ".bin", ".ckpt")


class PromptError(ValueError):
    """A PersonaPlex prompt is unusable (voice file, text, config), named in the message."""


# ----------------------------------------------------------------------------------------------
# The package and the weights


def check_moshi_package(moshi_module=None) -> None:
    """Raise ``RuntimeError`` if the installed ``moshi`` is NVIDIA's PersonaPlex fork (0.1.0 layout:
    no ``moshi.modules.lora``, ``LMGen.step_system_prompts``) instead of stock moshi 0.2.x."""
    import importlib

    moshi = moshi_module or importlib.import_module("moshi")
    lm = importlib.import_module(f"{moshi.__name__}.models.lm")
    fork = hasattr(getattr(lm, "LMGen", object), "step_system_prompts") or importlib.util.find_spec(
        f"{moshi.__name__}.modules.lora") is None
    if fork:
        raise RuntimeError(
            f"the installed `moshi` ({getattr(moshi, '__version__', '?')}, {Path(moshi.__file__).parent}) is NVIDIA's "
            "PersonaPlex fork (moshi-personaplex), which replaces stock moshi; duplexgym runs PersonaPlex weights on "
            "stock moshi: `pip uninstall -y moshi-personaplex && pip install --no-deps moshi==0.2.13`")


def dep_q_of(state: dict[str, torch.Tensor]) -> int:
    """Depformer steps of a Moshi/PersonaPlex state dict (its ``depformer_in.{i}`` count)."""
    return sum(1 for k in state if k.startswith("depformer_in.") and k.endswith(".weight"))


def slice_depformer(state: dict[str, torch.Tensor], steps: int = MIMI_CODEBOOKS) -> dict[str, torch.Tensor]:
    """A ``dep_q``-step LM state dict cut to its first ``steps`` depformer steps (module docstring):
    per-step tensors of later steps dropped, fused attention projections cut to ``steps`` blocks."""
    dep_q = dep_q_of(state)
    if dep_q < steps:
        raise ValueError(f"the state has {dep_q} depformer steps, fewer than {steps}")
    out = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if parts[0] in ("depformer_in", "linears") and int(parts[1]) >= steps:
            continue
        if parts[0] == "depformer_emb" and int(parts[1]) >= steps - 1:
            continue
        if parts[0] == "depformer" and len(parts) > 4 and parts[3] in ("gating", "in_projs", "out_projs") \
                and parts[4].isdigit() and int(parts[4]) >= steps:
            continue
        if parts[0] == "depformer" and name.endswith(("self_attn.in_proj_weight", "self_attn.out_proj.weight")):
            tensor = tensor[: tensor.shape[0] // dep_q * steps].clone()  # not a view holding all 16 steps
        out[name] = tensor
    return out


def load_personaplex_lm(weights: Path, lm_kwargs: dict, device, dtype):
    """The LM of a PersonaPlex ``model.safetensors`` (16 or 8 depformer steps) as a stock moshi
    ``LMModel`` with 8 (eval mode, ``dtype`` on ``device``)."""
    from duplexgym.agents.policies.checkpoint import CheckpointError, _empty_lm
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    steps = dep_q_of(state)
    if steps not in (MIMI_CODEBOOKS, PERSONAPLEX_DEP_Q):
        raise CheckpointError(f"{weights}: {steps} depformer steps; a PersonaPlex LM has {PERSONAPLEX_DEP_Q} "
                              f"(or {MIMI_CODEBOOKS} once cut for stock moshi)")
    kwargs = {**lm_kwargs, "dep_q": MIMI_CODEBOOKS}
    lm = _empty_lm(kwargs)
    try:
        lm.load_state_dict({k: v.to(dtype) for k, v in slice_depformer(state).items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: the weights do not fit the PersonaPlex LM config "
                              f"({' '.join(str(exc).splitlines()[:3])[:600]})") from None
    return lm.to(device=device, dtype=dtype).eval()  # loaded in dtype already: no second copy


def save_personaplex_layout(lm16_state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a 16-step LM state dict (stock 0.2.x names) as PersonaPlex ships it: the fork's fused
    attention names (``in_proj_weight``, ``out_proj.weight``), bf16 (the official file's dtype).
    What tests use to build a tiny model in PersonaPlex's layout."""
    from duplexgym.agents.policies.checkpoint import save_safetensors

    fused: dict[str, list] = {}
    out = {}
    for name, tensor in lm16_state.items():
        parts = name.split(".")
        if "self_attn" in parts and parts[-3] in ("in_projs", "out_projs"):
            prefix = ".".join(parts[:-3])
            target = f"{prefix}.in_proj_weight" if parts[-3] == "in_projs" else f"{prefix}.out_proj.weight"
            fused.setdefault(target, []).append((int(parts[-2]), tensor))
            continue
        out[name] = tensor
    for target, blocks in fused.items():
        out[target] = torch.cat([t for _, t in sorted(blocks, key=lambda b: b[0])], dim=0)
    return save_safetensors({k: v.to(torch.bfloat16) for k, v in out.items()}, path)


# ----------------------------------------------------------------------------------------------
# Prompts


def wrap_with_system_tags(text: str) -> str:
    """The official wrapping: ``<system> TEXT <system>`` (the same tag at both ends), unless already wrapped."""
    cleaned = text.strip()
    if cleaned.startswith("<system>") and cleaned.endswith("<system>"):
        return cleaned
    return f"<system> {cleaned} <system>"


def text_prompt_ids(text: str, tokenizer_path: str | Path) -> list[int]:
    """The text prompt's token ids, one per prompt frame: SentencePiece ``encode`` of the wrapped text."""
    import sentencepiece

    if not isinstance(text, str) or not text.strip():
        raise PromptError("the PersonaPlex text prompt is empty (the official code needs one)")
    return [int(t) for t in sentencepiece.SentencePieceProcessor(str(tokenizer_path)).encode(wrap_with_system_tags(text))]


def read_voice_wav(path: str | Path) -> np.ndarray:
    """A wav/flac voice prompt as the official code prepares it: float32 ``[F * 1920]`` at 24 kHz,
    channel 0, loudness-normalised to -24 LUFS (pyloudnorm), the last frame zero-padded."""
    import pyloudnorm
    from duplexgym.corpora.audio import read_audio, resample
    from duplexgym.corpora.errors import InputFileError

    path = Path(path)
    try:
        audio, rate = read_audio(path)
    except InputFileError as exc:
        raise PromptError(f"voice prompt: {exc}") from None
    wav = resample(audio[0], rate)
    if len(wav) < FRAME_SAMPLES or not np.any(wav):
        raise PromptError(f"{path}: the voice prompt is {'silent' if len(wav) else 'empty'}; give a recording of the voice")
    with np.errstate(divide="ignore"):
        loudness = pyloudnorm.Meter(24_000).integrated_loudness(wav.astype(np.float64))
    if not np.isfinite(loudness):
        raise PromptError(f"{path}: the voice prompt is too quiet to measure its loudness (pyloudnorm: {loudness})")
    wav = (wav * 10.0 ** ((VOICE_LUFS - loudness) / 20.0)).astype(np.float32)  # pyloudnorm.normalize.loudness
    frames = -(-len(wav) // FRAME_SAMPLES)
    return np.pad(wav, (0, frames * FRAME_SAMPLES - len(wav)))


@dataclass
class VoiceEmbeddings:
    """An official precomputed voice prompt: ``embeddings`` float ``[N-1, D]`` (the transformer inputs of
    LM steps 0..N-2), ``cache`` long ``[17, 4]`` (the fork's token cache after the N voice frames)."""

    embeddings: torch.Tensor
    cache: torch.Tensor

    @property
    def frames(self) -> int:
        return int(self.embeddings.shape[0]) + 1


def load_voice_embeddings(path: str | Path, dim: int | None = None) -> VoiceEmbeddings:
    """Read an official voice ``.pt`` with ``torch.load(weights_only=True, map_location="cpu")``.

    Refused unopened: a missing file, a pickle suffix, anything that is not a torch zip archive
    (a legacy or raw pickle). Refused after the restricted load: anything but a dict of the two
    tensors with the official shapes (``dim``: the LM's width, checked when given)."""
    path = Path(path)
    if path.suffix.lower() in PICKLED_VOICE_SUFFIXES:
        raise PromptError(f"{path}: refused unopened: a {path.suffix} voice prompt is a pickle, and unpickling can "
                          "run code; give a wav or the official voice .pt (a torch zip archive of two tensors)")
    if not path.is_file():
        raise PromptError(f"{path}: voice prompt not found")
    if path.suffix.lower() != VOICE_EMBEDDINGS_SUFFIX:
        raise PromptError(f"{path}: a voice prompt is a {'/'.join(VOICE_AUDIO_SUFFIXES)} recording or an official "
                          f"{VOICE_EMBEDDINGS_SUFFIX} embeddings file")
    if not zipfile.is_zipfile(path):
        raise PromptError(f"{path}: refused unopened: not a torch zip archive (a legacy or raw pickle, which "
                          "unpickling could run code from); re-save it with torch.save on torch >= 1.6")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # weights_only refuses any global that is not a tensor type
        raise PromptError(f"{path}: not an official voice prompt file (torch.load weights_only refused it: "
                          f"{str(exc).splitlines()[0][:300]})") from None
    if not isinstance(state, dict) or set(state) != {"embeddings", "cache"} \
            or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PromptError(f"{path}: expected a dict of two tensors 'embeddings' and 'cache', got "
                          f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
    emb, cache = state["embeddings"], state["cache"]
    if emb.dim() == 4 and emb.shape[1:3] == (1, 1):
        emb = emb[:, 0, 0]
    if emb.dim() != 2 or emb.shape[0] < 1 or not emb.is_floating_point() or (dim is not None and emb.shape[1] != dim):
        raise PromptError(f"{path}: 'embeddings' must be [N-1, 1, 1, {dim or 'D'}] floats, got {tuple(state['embeddings'].shape)}")
    if tuple(cache.shape) != (1, 1 + 2 * MIMI_CODEBOOKS, VOICE_CACHE_COLUMNS) or cache.is_floating_point():
        raise PromptError(f"{path}: 'cache' must be [1, 17, {VOICE_CACHE_COLUMNS}] integers, got {tuple(cache.shape)}")
    if not torch.isfinite(emb).all():
        raise PromptError(f"{path}: 'embeddings' holds NaN or infinite values")
    return VoiceEmbeddings(emb.float().contiguous(), cache[0].long().contiguous())


def input_embeddings(lm, columns: torch.Tensor) -> torch.Tensor:
    """``[B, T, D]``: the summed input embedding ``LMModel.forward_text`` gives the transformer for
    ``columns`` ``[B, 17, T]`` (the fork's ``embed_codes``)."""
    x = lm.text_emb(columns[:, 0])
    for cb in range(lm.num_audio_codebooks):
        x = x + lm.emb[cb](columns[:, cb + lm.audio_offset])
    return x


def voice_embeddings_of(lm, voice_codes: np.ndarray) -> VoiceEmbeddings:
    """What the official code saves for a voice of ``voice_codes`` ``[N, 8]`` (``save_voice_prompt_embeddings``):
    the transformer inputs of steps 0..N-2 and the fork's 4-column token cache after the N frames.
    Lets a wav voice be stored in the official ``.pt`` format (:func:`save_voice_embeddings`)."""
    frames = voice_frames(np.asarray(voice_codes, np.int64))
    N = len(frames)
    if N < 2:
        raise PromptError("a voice prompt needs at least 2 frames (160 ms) to be stored as embeddings")
    from moshi.models.lm_utils import _delay_sequence

    # the LM's input columns 0..N (as LMModel.forward lays frames out; column N: the delayed tail):
    # column c of stream k is frame c - delay_k, or the initial token while c <= delay_k
    initial = lm._get_initial_token().cpu()  # [1, 17, 1]
    tail = torch.from_numpy(np.concatenate([frames[1:], frames[-1:]]).T.copy())[None]  # frames 1..N-1, N-1 again
    cols = torch.cat([initial, _delay_sequence(list(lm.delays), tail, initial)], dim=2)[0].numpy()  # [17, N + 1]
    delays = list(lm.delays)
    with torch.no_grad():
        emb = input_embeddings(lm, torch.from_numpy(cols[:, : N - 1])[None].to(lm.device))[0]
    cache = np.full((len(delays), VOICE_CACHE_COLUMNS), -2, np.int64)  # ungenerated_token_id
    for k, d in enumerate(delays):
        for c in range(N - 1 + d + 1):  # every column stream k was written at, in order
            cache[k, c % VOICE_CACHE_COLUMNS] = cols[k, c]
    return VoiceEmbeddings(emb.float().cpu(), torch.from_numpy(cache))


def save_voice_embeddings(voice: VoiceEmbeddings, path: str | Path) -> Path:
    """Write ``voice`` as the official ``.pt`` (``{"embeddings": [N-1, 1, 1, D], "cache": [1, 17, 4]}``)."""
    path = Path(path)
    torch.save({"embeddings": voice.embeddings[:, None, None].contiguous(), "cache": voice.cache[None].contiguous()},
               path)
    return path


def voice_frames(codes: np.ndarray) -> np.ndarray:
    """Prompt frames ``[N, 17]`` of voice codes ``[N, 8]``: text PAD, the codes on the agent stream, SINE on the user's."""
    n = len(codes)
    return np.concatenate([np.full((n, 1), TEXT_PAD), codes, np.tile(SINE_TOKENS, (n, 1))], axis=1).astype(np.int64)


def _silence_frames(n: int, text=None) -> np.ndarray:
    text = np.full(n, TEXT_PAD) if text is None else np.asarray(text)
    return np.concatenate([text[:, None], np.tile(SILENCE_TOKENS, (n, 1)), np.tile(SINE_TOKENS, (n, 1))],
                          axis=1).astype(np.int64)


def _frames_of_embeddings(voice: VoiceEmbeddings) -> np.ndarray:
    """The voice phase's frames ``[N, 17]`` for an embeddings file: frames 0..N-3 never reach the
    model as tokens (their columns are replaced by the embeddings: SILENCE/PAD stand in), frame
    N-2's acoustic codebooks and frame N-1 come from the cache (read by the steps after the voice)."""
    N, cache = voice.frames, voice.cache.numpy()
    frames = _silence_frames(N)
    C = VOICE_CACHE_COLUMNS

    def code(value, fallback):  # initial/ungenerated tokens never read as codes: keep the stand-in
        return int(value) if 0 <= int(value) < MIMI_CARDINALITY else int(fallback)

    last, before = frames[N - 1], frames[N - 2]  # N >= 2: a file holds at least one embedding
    last[0] = int(cache[0, (N - 1) % C])
    last[1] = code(cache[1, (N - 1) % C], last[1])
    before[1] = code(cache[1, (N - 2) % C], before[1])
    for q in range(1, MIMI_CODEBOOKS):
        last[1 + q] = code(cache[1 + q, N % C], last[1 + q])
        before[1 + q] = code(cache[1 + q, (N - 1) % C], before[1 + q])
    return frames


@dataclass
class PromptFrames:
    """The prompt phases of one episode, in LM steps before the conversation.

    ``actions`` int64 ``[P, 9]`` (text, agent 8 codes: forced), ``user`` int64 ``[P, 8]`` (SINE),
    ``embeddings`` float ``[E, D]`` or None: the transformer inputs of steps 0..E-1 (an embeddings
    voice prompt), ``phases``: ``((name, frames), ...)`` in order, ``text``: the prompt text."""

    actions: np.ndarray
    user: np.ndarray
    embeddings: torch.Tensor | None = None
    phases: tuple = ()
    text: str = ""

    @property
    def frames(self) -> int:
        return int(len(self.actions))

    @property
    def embedded(self) -> int:
        return 0 if self.embeddings is None else int(self.embeddings.shape[0])


def build_prompt_frames(text_ids: list[int], voice: np.ndarray | VoiceEmbeddings | None = None,
                        text: str = "") -> PromptFrames:
    """The official phase order (module docstring) for text prompt ids and a voice (codes ``[N, 8]``,
    an embeddings file, or none: no voice phase)."""
    if isinstance(voice, VoiceEmbeddings):
        voice_part, embeddings = _frames_of_embeddings(voice), voice.embeddings
    elif voice is not None:
        voice_part, embeddings = voice_frames(np.asarray(voice, np.int64)), None
    else:
        voice_part, embeddings = np.zeros((0, 1 + 2 * MIMI_CODEBOOKS), np.int64), None
    parts = [("voice", voice_part), ("silence", _silence_frames(PROMPT_SILENCE_FRAMES)),
             ("text", _silence_frames(len(text_ids), text_ids)), ("silence", _silence_frames(PROMPT_SILENCE_FRAMES))]
    frames = np.concatenate([p for _, p in parts])
    return PromptFrames(frames[:, :N_STREAMS].copy(), frames[:, N_STREAMS:].copy(), embeddings,
                        tuple((name, len(p)) for name, p in parts if len(p)), text)


@dataclass
class PersonaPlexPrompt:
    """What a PersonaPlex is prompted with: ``text`` (one prompt, or ``{axis: prompt}``; missing axes
    and None take :data:`FDB_TEXT_PROMPTS`) and ``voice`` (a wav/flac or an official ``.pt``; None: no
    voice phase). :meth:`frames_for` builds (and caches) an episode's :class:`PromptFrames`."""

    text: str | dict | None = None
    voice: str | Path | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _voice: object = field(default=None, repr=False, compare=False)

    def text_for(self, axis: str | None) -> str:
        if isinstance(self.text, str):
            return self.text
        chosen = (self.text or {}).get(axis) if axis is not None else None
        return chosen or FDB_TEXT_PROMPTS.get(axis or "", CONVERSATION_PROMPT)

    def to_config(self) -> dict:
        return {"text": self.text, "voice": None if self.voice is None else str(self.voice)}

    def voice_of(self, mimi, lm) -> np.ndarray | VoiceEmbeddings | None:
        """The voice as codes ``[N, 8]`` of ``mimi`` (wav) or as embeddings (``.pt``), read once."""
        if self.voice is None:
            return None
        if self._voice is None:
            if voice_is_embeddings(self.voice):
                self._voice = load_voice_embeddings(self.voice, dim=lm.dim)
            else:
                from duplexgym.corpora.codec import encode

                self._voice = encode(mimi, read_voice_wav(self.voice)).T.astype(np.int64)  # [N, 8]
        return self._voice

    def embeddings(self, lm) -> torch.Tensor | None:
        """``[E, D]``: the stored input embeddings of an official ``.pt`` voice, else None."""
        voice = self.voice_of(None, lm) if voice_is_embeddings(self.voice) else None
        return None if voice is None else voice.embeddings

    def frames_for(self, axis: str | None, tokenizer_path, mimi, lm) -> PromptFrames:
        text = self.text_for(axis)
        if text not in self._cache:
            voice = self.voice_of(mimi, lm)
            self._cache[text] = build_prompt_frames(text_prompt_ids(text, tokenizer_path), voice, text)
        return self._cache[text]


def personaplex_prompt(models, text: str | dict | None = None, voice: str | Path | None = None) -> PersonaPlexPrompt:
    """The prompt of a PersonaPlex agent: ``text`` / ``voice`` when given, else the checkpoint's
    saved prompt (``personaplex_prompt.json`` of an exported policy; its voice path is relative to
    the folder), else the official Full-Duplex-Bench text prompts and no voice."""
    from duplexgym.agents.policies.checkpoint import source_folder

    saved = dict(getattr(models, "prompt_config", None) or {})
    if voice is None and saved.get("voice"):
        voice = Path(source_folder(models.source)) / saved["voice"]  # relative to the folder (absolute stays)
    prompt = PersonaPlexPrompt(text if text is not None else saved.get("text"), voice)
    prompt.text_for("interruption")  # a dict of the wrong shape fails here, not at the first reset
    prompt.voice_of(models.mimi, models.lm)  # read once now: refusals and bad files before any episode runs
    return prompt


#: Seed of the extra (user-codebook) depformer steps of the tiny PersonaPlex.
TINY_PERSONAPLEX_SEED = 20_261_201


def tiny_personaplex_state() -> dict[str, torch.Tensor]:
    """A 16-step LM state dict of the tiny Moshi's config (stock 0.2.x names): the tiny Moshi's
    weights for the text, the temporal transformer and depformer steps 0..7, seeded random ones
    for steps 8..15 (the user's codebooks)."""
    import math

    from duplexgym.agents.policies.checkpoint import _empty_lm, _grid_uniform, _tiny_lm_state, tiny_lm_kwargs

    base = _tiny_lm_state()
    generator = torch.Generator().manual_seed(TINY_PERSONAPLEX_SEED)
    state = {}
    for name, meta in _empty_lm({**tiny_lm_kwargs(), "dep_q": PERSONAPLEX_DEP_Q}).state_dict().items():
        if name in base:
            state[name] = base[name].clone()
        elif name.endswith(".alpha"):
            state[name] = torch.ones(meta.shape)
        else:
            state[name] = _grid_uniform(meta.shape, math.sqrt(3.0 / meta.shape[1]), generator)
    return state


def save_tiny_personaplex(folder: str | Path) -> Path:
    """A tiny random PersonaPlex checkpoint folder in PersonaPlex's layout (16 depformer steps, the
    fork's fused attention names, bf16 ``model.safetensors``), with the tiny Mimi under Kyutai's
    file name, a 32000-piece SentencePiece model and a config.json of the tiny LM kwargs (the
    official folder's config.json holds no LM kwargs: Moshi 7B's are implied). For tests."""
    import json
    import shutil

    from duplexgym.agents.policies.checkpoint import (MIMI_WEIGHTS_NAME, TEXT_TOKENIZER_NAME, find_text_tokenizer,
                                                      save_safetensors, tiny_lm_kwargs)
    from duplexgym.corpora.codec import load_mimi

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_personaplex_layout(tiny_personaplex_state(), folder / "model.safetensors")
    save_safetensors({k: v.contiguous() for k, v in load_mimi("tiny").state_dict().items()}, folder / MIMI_WEIGHTS_NAME)
    shutil.copyfile(find_text_tokenizer(), folder / TEXT_TOKENIZER_NAME)
    (folder / "config.json").write_text(json.dumps({**tiny_lm_kwargs(), "dep_q": PERSONAPLEX_DEP_Q}, indent=1) + "\n")
    return folder


def voice_is_embeddings(voice: str | Path | None) -> bool:
    """Whether a voice prompt path names an embeddings file (anything not a wav/flac is read as one,
    and refused unless it is the official ``.pt``)."""
    return voice is not None and Path(voice).suffix.lower() not in VOICE_AUDIO_SUFFIXES


def voice_prompt_frames(voice: str | Path) -> int:
    """The voice phase's frames of a voice prompt file, read and checked without a model (a wav's from
    its duration, a ``.pt``'s from its embeddings); :class:`PromptError` for an unusable file."""
    if voice_is_embeddings(voice):
        return load_voice_embeddings(voice).frames
    return len(read_voice_wav(voice)) // FRAME_SAMPLES


def prompt_lengths(prompt: PersonaPlexPrompt, tokenizer_path, axes) -> dict:
    """LM steps of the prompt phases per axis, without loading the LM: ``{"voice": N, "silence": 12,
    "text": {axis: n}}``."""
    voice = 0 if prompt.voice is None else voice_prompt_frames(prompt.voice)
    return {"voice": voice, "silence": 2 * PROMPT_SILENCE_FRAMES,
            "text": {axis: len(text_prompt_ids(prompt.text_for(axis), tokenizer_path)) for axis in axes}}
