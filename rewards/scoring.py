"""Scoring an episode record under a reward spec: the breakdown every env and CLI reports.

``reward_terms`` (``info["reward_terms"]`` at the last step, saved in records)::

    {"axis": "turn", "reward": 0.83,              # weighted sum of the terms that succeeded
     "terms": {"turn": {"value": 0.83, "weight": 1.0, "metrics": {...}}},
     "failed": {"quality": "TimeoutError: ..."},  # terms that raised: reported, never scored
     "dense": -0.02}                              # the episode's shaping total (0 when off)

A term that raises does not count as 0: it is left out of ``reward`` and listed in ``failed``.
"""

from __future__ import annotations

import math

import numpy as np
from duplexgym.rewards.activity import agent_speech
from duplexgym.rewards.record import EpisodeRecord
from duplexgym.rewards.spec import TERMS, RewardSpec


def applicable_terms(axis: str, spec: RewardSpec) -> dict:
    """The spec's terms that apply to an episode of ``axis``."""
    return {name: t for name, t in spec.terms.items() if TERMS[name].applies_to(axis)}


def score_episode(record: EpisodeRecord, spec: RewardSpec, dense_total: float = 0.0,
                  stored: dict | None = None, decoded=None) -> dict:
    """The ``reward_terms`` of ``record`` (module docstring). ``dense_total``: shaping already paid.

    ``stored``: ``{term name: {"value", "metrics"}}`` (a saved record's ``reward_terms["terms"]``
    entries; ``{"failed": message}`` for a term that failed there) to take as they are instead of
    computing them, with the spec's weight: how a replay reproduces a judge's rating without
    contacting the judge's server. ``decoded``: the agent's audio decoded from the record's codes
    elsewhere (:func:`~duplexgym.rewards.activity.agent_speech`)."""
    seg = record.segment
    terms = applicable_terms(seg.axis, spec)
    result = {"axis": seg.axis, "reward": 0.0, "terms": {}, "failed": {}, "dense": float(dense_total)}
    try:
        speech = agent_speech(record, spec.activity, spec.metrics, decoded=decoded)
    except Exception as exc:  # noqa: BLE001 - reported per term, never scored
        for name in terms:
            result["failed"][name] = f"reading agent speech: {type(exc).__name__}: {exc}"
        return result
    result["agent_speech_s"] = [[round(a, 4), round(b, 4)] for a, b in speech.spans_s]
    for name, term_spec in terms.items():
        if stored is not None and name in stored:
            if "failed" in stored[name]:
                result["failed"][name] = str(stored[name]["failed"])
                continue
            value = float(stored[name]["value"])
            result["terms"][name] = {"value": value, "weight": term_spec.weight,
                                     "metrics": dict(stored[name].get("metrics") or {})}
            result["reward"] += term_spec.weight * value
            continue
        try:
            kind = TERMS[name]
            term = kind.score(record if kind.uses_record else speech, seg, term_spec.params)
            value = float(term.value)
            if not math.isfinite(value):
                raise ValueError(f"term returned {value}")
        except Exception as exc:  # noqa: BLE001 - reported, never silently scored
            result["failed"][name] = f"{type(exc).__name__}: {exc}"
            continue
        result["terms"][name] = {"value": value, "weight": term_spec.weight, "metrics": plain_metrics(term.metrics)}
        result["reward"] += term_spec.weight * value
    return result


def plain_metrics(metrics: dict) -> dict:
    """``metrics`` with NumPy scalars turned into Python numbers (JSON-ready)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out
