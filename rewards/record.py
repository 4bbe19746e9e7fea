"""The episode record: everything a reward needs, saved as ``NAME.npz`` + ``NAME.json``.

Rewards are pure functions of a record, which makes ablations (``duplexgym rescore``) and replay
(``duplexgym replay --check``) cheap. Arrays (``.npz``):

    text_tokens   int32 [F]         tokens mode: the agent's text token per frame (forced frames
                                    hold what was forced)
    audio_codes   int16 [8, F]      tokens mode: the agent's 8 Mimi codebooks per frame
    audio         float32 [F*1920]  waveform mode: the agent's 24 kHz audio
    rewards       float64 [F]       the reward returned at each step (dense terms + the episode
                                    reward at the last step)

Metadata (``.json``): the segment (manifest line), the seed, the env configuration (id, corpus,
modes, codec spec and id, text tokenizer, reward spec), ``forced_frames``, ``agent_text`` and
``agent_words`` (``[start_s, end_s, word]``, episode seconds; tokens mode with a text tokenizer),
``prefix`` (episodes that began before the segment: ``{"lead_in_frames", "context_frames"}``; the
agent's frames there are the arrays ``prefix_text_tokens``, ``prefix_audio_codes`` or ``prefix_audio``,
kept for replay; rewards never read them),
the SHA-256 of the observation stream, the SHA-256 of every array in the ``.npz``
(``arrays_sha256``: an edited or corrupt array is caught when the record is loaded), and the final
``reward_terms``. ``F`` = ``segment.n_frames``.

Live dialogues (``duplexgym/Conversation-v0``) also carry ``live``: the simulated user's schedule
that happened (what it said, when and why) and its source; see :mod:`duplexgym.rewards.live`.
Records without it (every replay episode, and records written before it existed) load unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from duplexgym.corpora.manifest import Segment

RECORD_VERSION = 2
#: Versions :meth:`EpisodeRecord.load` reads (1: before ``arrays_sha256``).
READABLE_VERSIONS = (1, 2)
ARRAY_NAMES = ("text_tokens", "audio_codes", "audio", "rewards")
#: Arrays of the frames before the segment (``prefix``): ``prefix_`` + one of these.
PREFIX_ARRAYS = ("text_tokens", "audio_codes", "audio")


class RecordError(ValueError):
    """An episode record that cannot be read or does not match its own digests; names the file."""


def array_digest(array: np.ndarray) -> str:
    """``"dtype|shape|sha256"`` of an array: equal exactly when dtype, shape and bytes are equal."""
    a = np.ascontiguousarray(array)
    return f"{a.dtype.str}|{'x'.join(map(str, a.shape))}|{hashlib.sha256(a.tobytes()).hexdigest()}"


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished (or, for scoring, complete) episode. See the module docstring."""

    segment: Segment
    seed: int | None
    env: dict
    forced_frames: int = 0
    text_tokens: np.ndarray | None = None
    audio_codes: np.ndarray | None = None
    audio: np.ndarray | None = None
    agent_text: str | None = None
    agent_words: tuple[tuple[float, float, str], ...] | None = None
    obs_sha256: str = ""
    rewards: np.ndarray | None = None
    reward_terms: dict = field(default_factory=dict)
    live: dict | None = None
    prefix: dict | None = None

    @property
    def n_frames(self) -> int:
        return self.segment.n_frames

    @property
    def action_mode(self) -> str:
        return "tokens" if self.text_tokens is not None else "waveform"

    def save(self, path: str | Path) -> Path:
        """Write ``path.npz`` and ``path.json`` (atomically); returns the ``.json`` path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in ARRAY_NAMES if getattr(self, k) is not None}
        for k in PREFIX_ARRAYS:
            if self.prefix is not None and self.prefix.get(k) is not None:
                arrays[f"prefix_{k}"] = self.prefix[k]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npz")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path.with_suffix(".npz"))
        meta = {
            "version": RECORD_VERSION,
            "segment": json.loads(self.segment.to_json()),
            "seed": self.seed,
            "env": self.env,
            "forced_frames": self.forced_frames,
            "agent_text": self.agent_text,
            "agent_words": None if self.agent_words is None else [list(w) for w in self.agent_words],
            "obs_sha256": self.obs_sha256,
            "arrays_sha256": {k: array_digest(v) for k, v in arrays.items()},
            "reward_terms": self.reward_terms,
        }
        if self.live is not None:
            meta["live"] = self.live
        if self.prefix is not None:
            meta["prefix"] = {k: int(self.prefix[k]) for k in ("lead_in_frames", "context_frames")}
        jtmp = path.with_name(f".{path.name}.{os.getpid()}.json")
        jtmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=_json_default), encoding="utf-8")
        os.replace(jtmp, path.with_suffix(".json"))
        return path.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path) -> "EpisodeRecord":
        """Read a record from ``path`` (``.json``, ``.npz`` or the common stem)."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".npz") else path
        jpath, npath = stem.with_suffix(".json"), stem.with_suffix(".npz")
        try:
            meta = json.loads(jpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"{jpath}: not a readable episode record ({exc})") from None
        if not isinstance(meta, dict) or meta.get("version") not in READABLE_VERSIONS:
            version = meta.get("version") if isinstance(meta, dict) else None
            raise RecordError(f"{jpath}: episode record version {version!r}, expected one of {READABLE_VERSIONS}")
        try:
            with np.load(npath, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise RecordError(f"{npath}: not a readable episode record ({type(exc).__name__}: {exc})") from None
        digests = meta.get("arrays_sha256")
        if digests is not None:
            names = sorted(set(digests) | set(arrays))
            bad = [k for k in names if k not in arrays or k not in digests or array_digest(arrays[k]) != digests[k]]
            if bad:
                raise RecordError(f"{npath}: array(s) {', '.join(bad)} differ from the digests in {jpath.name} "
                                  "(the file was edited or is corrupt)")
        return cls(
            segment=Segment.from_dict(meta["segment"]),
            seed=meta["seed"],
            env=meta["env"],
            forced_frames=meta["forced_frames"],
            text_tokens=arrays.get("text_tokens"),
            audio_codes=arrays.get("audio_codes"),
            audio=arrays.get("audio"),
            agent_text=meta.get("agent_text"),
            agent_words=None if meta.get("agent_words") is None else tuple(tuple(w) for w in meta["agent_words"]),
            obs_sha256=meta.get("obs_sha256", ""),
            rewards=arrays.get("rewards"),
            reward_terms=meta.get("reward_terms", {}),
            live=meta.get("live"),
            prefix=None if meta.get("prefix") is None else {
                **meta["prefix"], **{k: arrays.get(f"prefix_{k}") for k in PREFIX_ARRAYS}},
        )


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
