"""Optional dense per-frame shaping.

Each axis names, per frame, whether the agent should be speaking (``want``) and whether that
frame is judged at all (``care``); frames the env forced are never judged. The shaping reward of
frame t is ``-weight * care[t] * (speaking[t] != want[t]) / sum(care)``, so a whole episode's
shaping lies in [-weight, 0]. ``speaking[t]`` is a cheap per-frame reading, the same at step time
and on rescoring: tokens mode -> the text token is not padding; waveform mode -> the frame's RMS
is at least :data:`SPEAKING_RMS`.
"""

from __future__ import annotations

import numpy as np
from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.record import EpisodeRecord
from duplexgym.rewards.spec import TERMS, RewardSpec

from duplexgym.constants import FRAME_SAMPLES, TEXT_PAD_IDS

#: RMS (full scale 1.0) from which a waveform frame counts as speech for shaping (-40 dBFS).
SPEAKING_RMS = 0.01


def penalties(segment: Segment, spec: RewardSpec, forced_frames: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``[F]`` pairs: the shaping reward of each frame if the agent speaks there, and if it
    is silent there. All zeros when dense shaping is off or the axis has no term in the spec.

    The targets are those of the spec's term for the axis (``pause``; else another recipe's, such
    as ``paper_pause``), with its params. A term that defines none (the seed paper's turn,
    backchannel and interruption terms) is shaped with the axis term's targets at their defaults."""
    n = segment.n_frames
    if_speaking, if_silent = np.zeros(n), np.zeros(n)
    if spec.dense_weight == 0.0:
        return if_speaking, if_silent
    name = segment.axis if segment.axis in spec.terms else next(
        (k for k in spec.terms if k in TERMS and TERMS[k].axis == segment.axis), None)
    if name is None:
        return if_speaking, if_silent
    if TERMS[name].dense_targets is not None:
        want, care = TERMS[name].dense_targets(segment, spec.terms[name].params)
    else:
        want, care = TERMS[segment.axis].dense_targets(segment, TERMS[segment.axis].params())
    care = care.copy()
    care[:forced_frames] = False
    if care.any():
        unit = -spec.dense_weight / care.sum()
        if_speaking[care & ~want] = unit
        if_silent[care & want] = unit
    return if_speaking, if_silent


#: Sum of squares of a float32 frame at :data:`SPEAKING_RMS`.
_SPEAKING_ENERGY = SPEAKING_RMS**2 * FRAME_SAMPLES


def frame_is_speech(frame: np.ndarray) -> bool:
    """The waveform reading for one float32 ``[1920]`` frame; the env calls exactly this at step
    time, so shaping on rescoring is bit-identical."""
    return float(np.dot(frame, frame)) >= _SPEAKING_ENERGY


def speaking_frames(record: EpisodeRecord) -> np.ndarray:
    """bool ``[F]``: the per-frame speaking reading of the module docstring."""
    if record.text_tokens is not None:
        return ~np.isin(record.text_tokens, TEXT_PAD_IDS)
    return np.array([frame_is_speech(f) for f in record.audio.reshape(-1, FRAME_SAMPLES)], dtype=bool)


def dense_rewards(record: EpisodeRecord, spec: RewardSpec) -> np.ndarray:
    """float64 ``[F]`` shaping rewards of a whole record."""
    if_speaking, if_silent = penalties(record.segment, spec, record.forced_frames)
    return np.where(speaking_frames(record), if_speaking, if_silent)
