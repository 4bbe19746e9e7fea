"""Reward specs: which terms, their weights and parameters, the activity reader, dense shaping.

A spec is YAML (or the same as a dict)::

    activity: {reader: text}          # vad (default) | text, plus the reader's parameters
    metrics: {source: asr}            # where the fdb_* metrics read words: vad (default) | asr
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

from duplexgym.rewards import backchannel, interruption, paper, paper_judge, pause, quality, turn
from duplexgym.rewards.activity import ActivityParams, MetricsParams
from pydantic import BaseModel, Field, ValidationError, field_validator

from duplexgym.config import STRICT, Number, explain, validate


class RewardSpecError(ValueError):
    """A reward spec that cannot be used; the message names the field."""


@dataclass(frozen=True)
class TermKind:
    """What a term name stands for: its scoring function, parameter class and dense targets.
    ``axis``: the axis (or axes, a tuple) of the episodes it applies to (None: all).
    ``uses_record``: ``score(record, segment, params)`` instead of ``score(speech, segment, params)``."""

    score: Callable
    params: type
    dense_targets: Callable | None
    axis: str | tuple[str, ...] | None
    uses_record: bool = False

    def applies_to(self, axis: str) -> bool:
        """Whether the term scores episodes of ``axis``."""
        if self.axis is None:
            return True
        return axis in self.axis if isinstance(self.axis, tuple) else axis == self.axis


TERMS: dict[str, TermKind] = {
    "pause": TermKind(pause.score, pause.PauseParams, pause.dense_targets, "pause"),
    "turn": TermKind(turn.score, turn.TurnParams, turn.dense_targets, "turn"),
    "backchannel": TermKind(backchannel.score, backchannel.BackchannelParams, backchannel.dense_targets, "backchannel"),
    "interruption": TermKind(interruption.score, interruption.InterruptionParams, interruption.dense_targets,
                             "interruption"),
    "quality": TermKind(quality.score, quality.QualityParams, None, None, uses_record=True),
    # the seed paper's rewards, as it defines them (rewards/paper.py, rewards/paper_judge.py)
    "paper_pause": TermKind(paper.score_pause, paper.PaperPauseParams, paper.pause_dense_targets, "pause"),
    "paper_turn": TermKind(paper.score_turn, paper.PaperTurnParams, None, "turn"),
    "paper_backchannel": TermKind(paper.score_backchannel, paper.PaperBackchannelParams, None, "backchannel"),
    "paper_interruption": TermKind(paper.score_interruption, paper.PaperInterruptionParams, None, "interruption"),
    "paper_judge": TermKind(paper_judge.score, quality.QualityParams, None, paper_judge.JUDGED_AXES,
                            uses_record=True),
}


def axis_term(scored: dict, axis: str) -> dict | None:
    """The entry of an episode's axis term in ``scored`` (``reward_terms["terms"]``: ``{name: {"value",
    "weight", "metrics"}}``): the term named after the axis (``turn``), else the axis's own term of
    another recipe (``paper_turn``); None when neither was scored (failed, or not in the spec)."""
    if axis in scored:
        return scored[axis]
    return next((entry for name, entry in scored.items() if name in TERMS and TERMS[name].axis == axis), None)


#: Terms of the default spec (quality needs a judge or an embedding model: opt in).
DEFAULT_TERMS = ("pause", "turn", "backchannel", "interruption")


@dataclass(frozen=True)
class TermSpec:
    """One term of a spec: its weight (0 keeps it as a logged metric) and its parameters (an
    instance of the term's parameter class, ``TERMS[name].params``)."""

    weight: float
    params: Any


@dataclass(frozen=True)
class RewardSpec:
    """A validated reward spec (see the module docstring); :func:`spec_from_dict` builds one from
    its YAML form and :meth:`to_dict` writes that form back."""

    terms: dict[str, TermSpec]
    activity: ActivityParams = field(default_factory=ActivityParams)
    dense_weight: float = 0.0
    metrics: MetricsParams = field(default_factory=MetricsParams)

    def to_dict(self) -> dict:
        return {
            "activity": dataclasses.asdict(self.activity),
            "metrics": dataclasses.asdict(self.metrics),
            "dense": {"weight": self.dense_weight},
            "terms": {name: {"weight": t.weight, "params": dataclasses.asdict(t.params)} for name, t in self.terms.items()},
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


# --- the YAML form ----------------------------------------------------------------------------------


class _Dense(BaseModel):
    model_config = STRICT
    weight: Number = 0.0


class _Term(BaseModel):
    model_config = STRICT
    weight: Number = 1.0
    params: dict = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _none_is_defaults(cls, value):
        return {} if value is None else value


class SpecFile(BaseModel):
    """The YAML form of a reward spec (validated; each term's ``params`` then by its own class)."""

    model_config = STRICT
    activity: ActivityParams = Field(default_factory=ActivityParams)
    metrics: MetricsParams = Field(default_factory=MetricsParams)
    dense: _Dense = Field(default_factory=_Dense)
    terms: dict[str, _Term] | None = None

    @field_validator("terms", mode="before")
    @classmethod
    def _bare_term_is_defaults(cls, value):
        """``pause:`` with nothing after it is the term with its defaults."""
        return {k: ({} if v is None else v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("dense", mode="before")
    @classmethod
    def _no_dense(cls, value):
        return {} if value is None else value


def spec_from_dict(raw: Any) -> RewardSpec:
    """The :class:`RewardSpec` of a spec's YAML form; :class:`RewardSpecError` naming every bad field."""
    doc = validate(SpecFile, raw, RewardSpecError, "reward spec")
    if doc.terms is None:
        return dataclasses.replace(default_spec(doc.activity.reader), activity=doc.activity,
                                   dense_weight=doc.dense.weight, metrics=doc.metrics)
    if not doc.terms:
        raise RewardSpecError("terms: expected a non-empty mapping of term name -> {weight, params}")
    terms, problems = {}, []
    for name, term in doc.terms.items():
        kind = TERMS.get(name)
        if kind is None:
            problems.append(f"terms.{name}: unknown term; known terms: {', '.join(TERMS)}")
            continue
        try:
            terms[name] = TermSpec(term.weight, kind.params(**term.params))
        except ValidationError as exc:
            problems.append(explain(exc, kind.params, where=f"terms.{name}.params"))
        except (TypeError, ValueError) as exc:  # a parameter class that validates by hand
            problems.append(f"terms.{name}.params: {exc}")
    if problems:
        raise RewardSpecError("\n".join(problems))
    return RewardSpec(terms=terms, activity=doc.activity, dense_weight=doc.dense.weight, metrics=doc.metrics)
