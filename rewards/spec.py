"""Reward specs: which terms, their weights and parameters, the activity reader, dense shaping.

A spec is YAML (or the same as a dict)::

    activity: {reader: text}          # vad (default) | text, plus the reader's parameters
    dense: {weight: 0.1}              # per-frame shaping, 0 = off (default)
    terms:
      pause:        {weight: 1.0, params: {speech_penalty: 0.5}}
      turn:         {weight: 1.0}
      backchannel:  {weight: 1.0}
      interruption: {weight: 0.0}     # weight 0: computed and logged, not rewarded
      quality:      {weight: 0.2, params: {backend: openai, base_url: "http://127.0.0.1:8000/v1",
                                           model: "qwen2.5-7b-instruct"}}   # every axis; see .quality

An axis term applies to episodes of its axis only. An ablation is another spec; ``duplexgym
rescore`` recomputes saved episodes under it. Mistakes raise :class:`RewardSpecError` naming the
field (``terms.pause.params.speech_penalty``) and what was expected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from duplexgym.corpora.vad import VadParams
from duplexgym.rewards import backchannel, interruption, pause, quality, turn
from duplexgym.rewards.activity import ActivityParams


class RewardSpecError(ValueError):
    """A reward spec that cannot be used; the message names the field."""


@dataclass(frozen=True)
class TermKind:
    """What a term name stands for: its scoring function, parameter class and dense targets.
    ``axis``: the episodes it applies to (None: all). ``uses_record``: ``score(record, segment,
    params)`` instead of ``score(speech, segment, params)``."""

    score: Callable
    params: type
    dense_targets: Callable | None
    axis: str | None
    uses_record: bool = False


TERMS: dict[str, TermKind] = {
    "pause": TermKind(pause.score, pause.PauseParams, pause.dense_targets, "pause"),
    "turn": TermKind(turn.score, turn.TurnParams, turn.dense_targets, "turn"),
    "backchannel": TermKind(backchannel.score, backchannel.BackchannelParams, backchannel.dense_targets, "backchannel"),
    "interruption": TermKind(interruption.score, interruption.InterruptionParams, interruption.dense_targets,
                             "interruption"),
    "quality": TermKind(quality.score, quality.QualityParams, None, None, uses_record=True),
}
#: Terms of the default spec (quality needs a judge or an embedding model: opt in).
DEFAULT_TERMS = ("pause", "turn", "backchannel", "interruption")


@dataclass(frozen=True)
class TermSpec:
    weight: float
    params: Any


@dataclass(frozen=True)
class RewardSpec:
    """Parsed reward spec; see the module docstring."""

    terms: dict[str, TermSpec]
    activity: ActivityParams = field(default_factory=ActivityParams)
    dense_weight: float = 0.0

    def to_dict(self) -> dict:
        return {
            "activity": _plain(self.activity),
            "dense": {"weight": self.dense_weight},
            "terms": {name: {"weight": t.weight, "params": _plain(t.params)} for name, t in self.terms.items()},
        }


def default_spec(reader: str = "vad") -> RewardSpec:
    """Every axis term with weight 1 and default parameters; no quality term, no dense shaping."""
    return RewardSpec(terms={name: TermSpec(1.0, TERMS[name].params()) for name in DEFAULT_TERMS},
                      activity=ActivityParams(reader=reader))


def load_spec(source: str | Path | dict | RewardSpec | None) -> RewardSpec:
    """A spec from a YAML path, a dict, a spec (returned as is) or None (the default spec)."""
    if source is None:
        return default_spec()
    if isinstance(source, RewardSpec):
        return source
    if isinstance(source, dict):
        return spec_from_dict(source)
    from duplexgym.config import load_yaml

    return load_yaml(source, spec_from_dict, RewardSpecError, "reward spec")


def spec_from_dict(raw: Any) -> RewardSpec:
    if not isinstance(raw, dict):
        raise RewardSpecError(f"a reward spec is a mapping with 'terms', 'activity', 'dense'; got {type(raw).__name__}")
    _only(raw, {"terms", "activity", "dense"}, "spec")
    activity = _activity(raw.get("activity", {}))
    dense = raw.get("dense", {}) or {}
    if not isinstance(dense, dict):
        raise RewardSpecError("dense: expected a mapping like {weight: 0.1}")
    _only(dense, {"weight"}, "dense")
    dense_weight = _number(dense.get("weight", 0.0), "dense.weight")
    terms_raw = raw.get("terms")
    if terms_raw is None:
        return dataclasses.replace(default_spec(activity.reader), activity=activity, dense_weight=dense_weight)
    if not isinstance(terms_raw, dict) or not terms_raw:
        raise RewardSpecError("terms: expected a non-empty mapping of term name -> {weight, params}")
    terms = {}
    for name, body in terms_raw.items():
        if name not in TERMS:
            raise RewardSpecError(f"terms.{name}: unknown term; known terms: {', '.join(TERMS)}")
        body = body or {}
        if not isinstance(body, dict):
            raise RewardSpecError(f"terms.{name}: expected a mapping with 'weight' and optional 'params'")
        _only(body, {"weight", "params"}, f"terms.{name}")
        weight = _number(body.get("weight", 1.0), f"terms.{name}.weight")
        params = _dataclass(TERMS[name].params, body.get("params") or {}, f"terms.{name}.params")
        terms[name] = TermSpec(weight, params)
    return RewardSpec(terms=terms, activity=activity, dense_weight=dense_weight)


def _activity(raw: Any) -> ActivityParams:
    if not isinstance(raw, dict):
        raise RewardSpecError("activity: expected a mapping like {reader: vad}")
    raw = dict(raw)
    vad = _dataclass(VadParams, raw.pop("vad", {}) or {}, "activity.vad")
    params = _dataclass(ActivityParams, raw, "activity", exclude={"vad"})
    return dataclasses.replace(params, vad=vad)


def _dataclass(cls: type, raw: Any, where: str, exclude: set[str] = frozenset()):
    if not isinstance(raw, dict):
        raise RewardSpecError(f"{where}: expected a mapping of parameters")
    known = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    _only(raw, set(known), where)
    values = {}
    for key, value in raw.items():
        default = getattr(cls(), key)
        if default is None or isinstance(default, tuple):
            values[key] = tuple(value) if isinstance(value, list) else value  # the class validates it
        elif isinstance(default, bool) or isinstance(default, str):
            if not isinstance(value, type(default)):
                raise RewardSpecError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
            values[key] = value
        elif isinstance(default, (int, float)):
            values[key] = _number(value, f"{where}.{key}")
            if isinstance(default, int) and not isinstance(default, bool) and float(values[key]).is_integer():
                values[key] = int(values[key])
        else:
            values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise RewardSpecError(f"{where}: {exc}") from None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RewardSpecError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _only(raw: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RewardSpecError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")


def _plain(obj) -> dict:
    return dataclasses.asdict(obj)
