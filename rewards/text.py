"""The agent's words from Moshi's text stream, decoded with its SentencePiece tokenizer.

Moshi emits one text token per 80 ms frame: padding (ids 0 and 3) while it has nothing to add,
a piece of a word otherwise. A piece starting with "▁" starts a new word. Word times are the
frames of its pieces: start = first piece's frame, end = last piece's frame + one frame (episode
seconds). Deterministic, so replays and rescoring give the same text.
"""

from __future__ import annotations

import functools

import numpy as np

from duplexgym.constants import FRAME_S, TEXT_BOS, TEXT_EOS, TEXT_PAD_IDS

#: Ids that are never text: padding (0, 3) and SentencePiece's unk/BOS/EOS (0, 1, 2).
NON_TEXT_IDS = frozenset(TEXT_PAD_IDS) | {TEXT_BOS, TEXT_EOS}


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """A SentencePiece processor from a ``.model`` file (cached per path)."""
    import sentencepiece

    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable SentencePiece model ({exc})") from None


def decode_words(tokens: np.ndarray, tokenizer_path: str) -> tuple[str, tuple[tuple[float, float, str], ...]]:
    """``(text, words)`` of an int ``[F]`` text stream; words are ``(start_s, end_s, text)``."""
    sp = load_tokenizer(str(tokenizer_path))
    vocab = sp.vocab_size()
    words: list[list] = []
    for frame, tok in enumerate(np.asarray(tokens).tolist()):
        if tok in NON_TEXT_IDS or not 0 <= tok < vocab:
            continue
        piece = sp.id_to_piece(tok)
        if piece.startswith("▁") or not words:
            words.append([frame * FRAME_S, (frame + 1) * FRAME_S, [tok]])
        else:
            words[-1][1] = (frame + 1) * FRAME_S
            words[-1][2].append(tok)
    decoded = tuple((a, b, sp.decode(ids).strip()) for a, b, ids in words)
    decoded = tuple(w for w in decoded if w[2])
    return " ".join(w[2] for w in decoded), decoded
