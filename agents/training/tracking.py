"""Experiment tracking of a training run: TensorBoard always, Weights & Biases and MLflow when asked.

:class:`RunLogger` gets each iteration's row (as written to ``metrics.jsonl``) and logs its scalars
at ``global_step = iteration + 1`` (the first iteration is step 1, as on the reward curve):

- ``reward/<axis>`` and ``score/<axis>``: the row's ``reward_mean`` and ``score_mean``;
- ``train/<key>`` for each key of :data:`TRAIN_KEYS` the row has.

Values that are None, NaN, infinite or not numbers are left out (an axis whose reward failed, a
learner metric the algorithm has not, e.g. ``value_loss`` for GRPO).

TensorBoard (``tracking.tensorboard``, default true): event files in ``OUT/tensorboard/``, read
with ``tensorboard --logdir OUT/tensorboard``. Each iteration is one event, written, flushed and
fsynced before :meth:`RunLogger.log` returns, so a killed run loses nothing it logged. (The events
are written with tensorboardX's synchronous ``EventsWriter``: its ``SummaryWriter`` queues events
for a background thread, and its ``flush()`` does not wait for that queue, so a run killed right
after a flush loses the last events.) A fresh start (``start_iteration`` 0) replaces the folder's
event files, as a rerun replaces ``metrics.jsonl``, and writes the run config as text (tag
``config``, step 0). A resume from a checkpoint of ``k`` finished iterations writes, first in its
new event file, what tensorboardX's ``SummaryWriter(purge_step=k + 1)`` writes: a file-version
event and a ``SessionLog.START`` event at step ``k + 1``, so TensorBoard drops the events of steps
``>= k + 1`` (iterations ``>= k``) that an interrupted earlier run wrote after that checkpoint: no
iteration is shown twice. Event files are named so that a later writer's file sorts after an
earlier one's, as TensorBoard reads them in name order.

MLflow (``tracking.mlflow``: the keyword arguments of Ray's
``ray.air.integrations.mlflow.setup_mlflow``) and Weights & Biases (``tracking.wandb``: those of
``ray.air.integrations.wandb.setup_wandb``, that is ``wandb.init``'s and ``api_key_file``,
``rank_zero_only``) get the same scalars at the same steps and the run config (MLflow: as the
run's parameters; W&B: as its config). Each needs its package installed (``pip install mlflow``
or ``mlflow-skinny``; ``pip install wandb``): asking for one that is not installed is a
``ValueError`` at construction. A resumed run is a new MLflow / W&B run, starting at step
``k + 1``. Failures to log an iteration to MLflow or W&B (a tracking server down) are warnings,
not errors: training goes on, and TensorBoard and ``metrics.jsonl`` still have every iteration.

Nothing is sent to a network address the configuration does not name:

- W&B runs ``offline`` (files in ``OUT/wandb/``, uploadable later with ``wandb sync``) unless
  ``tracking.wandb.mode`` or ``WANDB_MODE`` says otherwise (``online``: to the W&B server, or
  the one ``settings.base_url`` / ``WANDB_BASE_URL`` names);
- MLflow logs where ``tracking.mlflow.tracking_uri`` (or ``MLFLOW_TRACKING_URI``) says, else to
  MLflow's local default (``sqlite:///mlflow.db`` in the working folder for MLflow 3, which needs
  SQLAlchemy: the full ``mlflow`` package). MLflow 3 refuses a ``file://`` store unless
  ``MLFLOW_ALLOW_FILE_STORE=true``;
- the usage telemetry MLflow sends by default and W&B's error reports are switched off
  (``MLFLOW_DISABLE_TELEMETRY=true``, ``WANDB_ERROR_REPORTING=false``) unless the user set those
  variables.

Secrets stay out of configs (a run folder keeps its config): ``tracking.wandb.api_key`` and
``tracking.mlflow.tracking_token`` are refused; use ``WANDB_API_KEY`` / ``api_key_file`` and
``MLFLOW_TRACKING_TOKEN``.

:func:`validate_tracking` checks a ``tracking`` mapping without importing Ray, wandb or mlflow.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import shlex
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from duplexgym.runtime import telemetry_off, temporary_environ

#: The folder of the TensorBoard event files, under the run folder.
TENSORBOARD_DIR = "tensorboard"
#: Row keys logged as ``train/<key>`` (when present and finite).
TRAIN_KEYS = ("kl", "loss", "policy_loss", "value_loss", "clip_fraction", "approx_kl", "frames_per_s",
              "learner_share", "reward_share", "lr", "grad_norm", "sampler_logp_gap", "failed_episodes")
#: Per-axis row keys, and the prefix of their tags.
AXIS_KEYS = (("reward_mean", "reward"), ("score_mean", "score"))
#: The fields of ``tracking``.
TRACKING_FIELDS = ("tensorboard", "wandb", "mlflow")
#: The MLflow experiment used when neither the config nor the environment names one.
DEFAULT_MLFLOW_EXPERIMENT = "duplexgym"
#: W&B's mode when neither ``tracking.wandb.mode`` nor ``WANDB_MODE`` is set: nothing leaves the machine.
DEFAULT_WANDB_MODE = "offline"
#: TensorBoard's event-file name prefix (what TensorBoard looks for).
EVENT_FILE_PREFIX = "events.out.tfevents."

_INSTALL = {"mlflow": "`pip install mlflow` (or the smaller `pip install mlflow-skinny`)",
            "wandb": "`pip install wandb`"}
#: What each package would send home by default, switched off unless the user set the variable.
_PACKAGE_NAME = {"mlflow": "MLflow", "wandb": "wandb (Weights & Biases)"}


# --- validation (pure: no Ray, wandb or mlflow) ---------------------------------------------------

def _text(field: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field}: expected a non-empty string, got {value!r}")
    return value


def _flag(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field}: expected true or false, got {value!r}")
    return value


def _texts(field: str, value) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{field}: expected a list of strings, got {value!r}")
    return [_text(f"{field}[{i}]", v) for i, v in enumerate(value)]


def _choice(*options: str) -> Callable[[str, Any], str]:
    def check(field: str, value) -> str:
        if value not in options:
            raise ValueError(f"{field}: expected one of {', '.join(options)}, got {value!r}")
        return value
    return check


def _flag_or(*options: str) -> Callable[[str, Any], bool | str]:
    def check(field: str, value) -> bool | str:
        if isinstance(value, bool) or value in options:
            return value
        raise ValueError(f"{field}: expected true, false or one of {', '.join(options)}, got {value!r}")
    return check


def _mapping(field: str, value) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError(f"{field}: expected a mapping, got {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"{field}: field names must be strings, got {key!r}")
    return dict(value)


def _tags(field: str, value) -> dict[str, str]:
    tags = _mapping(field, value)
    for key, v in tags.items():
        if isinstance(v, (dict, list, tuple)) or v is None:
            raise ValueError(f"{field}.{key}: expected a string or a number, got {v!r}")
    return {key: str(v) for key, v in tags.items()}


def _experiment_id(field: str, value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(field, value)


def _secret(env: str, alternative: str = "") -> Callable[[str, Any], Any]:
    def check(field: str, value):
        raise ValueError(f"{field}: a secret does not belong in the config (the run folder keeps the config): "
                         f"set {env}{alternative} instead")
    return check


#: ``tracking.mlflow``: the keyword arguments of ``setup_mlflow`` (Ray 2.60), less ``config``.
MLFLOW_FIELDS: dict[str, Callable] = {
    "tracking_uri": _text, "registry_uri": _text, "experiment_id": _experiment_id, "experiment_name": _text,
    "tracking_token": _secret("MLFLOW_TRACKING_TOKEN"), "artifact_location": _text, "run_name": _text,
    "create_experiment_if_not_exists": _flag, "tags": _tags, "rank_zero_only": _flag,
}
#: ``tracking.wandb``: ``setup_wandb``'s own arguments (Ray 2.60) and ``wandb.init``'s (wandb 0.31), less ``config``.
WANDB_FIELDS: dict[str, Callable] = {
    "api_key": _secret("WANDB_API_KEY", " or tracking.wandb.api_key_file"), "api_key_file": _text,
    "rank_zero_only": _flag,
    "entity": _text, "project": _text, "dir": _text, "id": _text, "name": _text, "notes": _text, "tags": _texts,
    "config_exclude_keys": _texts, "config_include_keys": _texts, "allow_val_change": _flag, "group": _text,
    "job_type": _text, "mode": _choice("online", "offline", "disabled", "shared"), "force": _flag,
    "reinit": _flag_or("default", "return_previous", "finish_previous", "create_new"),
    "resume": _flag_or("allow", "must", "never", "auto"), "resume_from": _text, "fork_from": _text,
    "save_code": _flag, "tensorboard": _flag, "sync_tensorboard": _flag, "monitor_gym": _flag,
    "settings": _mapping, "anonymous": _choice("allow", "must", "never"),
}


def _section(field: str, value, fields: Mapping[str, Callable]) -> dict | None:
    """A ``tracking.wandb`` / ``tracking.mlflow`` value: None or false (off), true (on, defaults) or a mapping."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    section = _mapping(field, value)
    out = {}
    for key, v in section.items():
        if key not in fields:
            raise ValueError(f"{field}.{key}: unknown field; known: {', '.join(fields)}")
        out[key] = fields[key](f"{field}.{key}", v)
    return out


def validate_tracking(raw) -> dict:
    """The checked ``tracking`` mapping of a train config: ``{"tensorboard": bool}`` plus ``"wandb"``
    and ``"mlflow"`` (each a dict of keyword arguments for Ray's ``setup_wandb`` / ``setup_mlflow``)
    when they are on. ``raw`` None is ``{"tensorboard": True}``; ``wandb: true`` is ``wandb: {}``
    (on, with the defaults); ``wandb: null`` or ``false`` is off. Errors are ``ValueError``s naming
    the field (``tracking.wandb: expected a mapping, got 3``). Imports neither Ray nor wandb nor mlflow."""
    if raw is None:
        return {"tensorboard": True}
    if not isinstance(raw, Mapping):
        raise ValueError(f"tracking: expected a mapping, got {raw!r}")
    out: dict = {"tensorboard": True}
    for key, value in raw.items():
        if key not in TRACKING_FIELDS:
            raise ValueError(f"tracking.{key}: unknown field; known: {', '.join(TRACKING_FIELDS)}")
        if key == "tensorboard":
            out[key] = _flag("tracking.tensorboard", value)
            continue
        section = _section(f"tracking.{key}", value, WANDB_FIELDS if key == "wandb" else MLFLOW_FIELDS)
        if section is not None:
            out[key] = section
    return out


# --- rows to scalars -------------------------------------------------------------------------------

def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def scalars(row: Mapping) -> dict[str, float]:
    """The scalars of one iteration's row: ``{"reward/<axis>": .., "score/<axis>": .., "train/<key>": ..}``,
    finite numbers only."""
    out: dict[str, float] = {}
    for key, prefix in AXIS_KEYS:
        per_axis = row.get(key)
        if isinstance(per_axis, Mapping):
            for axis, value in per_axis.items():
                if (x := _finite(value)) is not None:
                    out[f"{prefix}/{axis}"] = x
    for key in TRAIN_KEYS:
        if (x := _finite(row.get(key))) is not None:
            out[f"train/{key}"] = x
    return out


def global_step(row: Mapping) -> int:
    """The step a row is logged at: its ``iteration`` (counted from 0) + 1."""
    iteration = row.get("iteration")
    if isinstance(iteration, bool) or not isinstance(iteration, numbers.Integral) or iteration < 0:
        raise ValueError(f"row['iteration']: expected an integer >= 0, got {iteration!r}")
    return int(iteration) + 1


# --- the backends ----------------------------------------------------------------------------------

def _config_text(run_config: Mapping) -> str:
    """The run config as a Markdown code block (TensorBoard's text plugin renders Markdown)."""
    body = json.dumps(run_config, indent=2, default=str)
    return "\n".join("    " + line for line in body.splitlines())


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, logdir: Path, run_config: Mapping, start_iteration: int):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.summary import text

        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        if start_iteration == 0:  # a fresh run replaces the event files of an earlier one
            for old in logdir.glob(EVENT_FILE_PREFIX + "*"):
                if old.is_file():
                    old.unlink()
        # tensorboardX names a file events.out.tfevents.<seconds>.<host><suffix> and opens it with "wb":
        # the suffix (nanoseconds) keeps two writers of one second apart, and in creation order.
        suffix = f".{time.time_ns()}"
        self._writer = EventsWriter(str(logdir / "events"), filename_suffix=suffix)
        self.path = next(logdir.glob(f"{EVENT_FILE_PREFIX}*{suffix}"))
        now = time.time()
        if start_iteration > 0:  # as SummaryWriter(purge_step=k + 1) does
            purge_step = start_iteration + 1
            self._writer.write_event(Event(step=purge_step, wall_time=now, file_version="brain.Event:2"))
            self._writer.write_event(Event(step=purge_step, wall_time=now,
                                           session_log=SessionLog(status=SessionLog.START)))
        else:
            self._writer.write_event(Event(step=0, wall_time=now, summary=text("config", _config_text(run_config))))
        self._writer.flush()
        self.location = f"TensorBoard: tensorboard --logdir {shlex.quote(str(logdir))}"

    def log(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import scalar

        summary = Summary()
        for tag, value in values.items():
            summary.value.extend(scalar(tag, value).value)
        self._writer.write_event(Event(step=step, wall_time=time.time(), summary=summary))
        self._writer.flush()  # flush + fsync: a killed run keeps this iteration

    def close(self, status: str) -> None:
        self._writer.close()


def _redacted(uri: str) -> str:
    """``uri`` without a password in it."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _disable_mlflow_telemetry() -> None:
    """MLflow 3 sends usage telemetry to its own servers unless told not to; set before mlflow is imported.
    An mlflow imported earlier made its telemetry client then: drop it (a no-op when the user enabled telemetry)."""
    telemetry_off()
    try:
        from mlflow.telemetry.client import set_telemetry_client
        from mlflow.telemetry.utils import is_telemetry_disabled
    except ImportError:  # an MLflow without telemetry
        return
    if is_telemetry_disabled():
        set_telemetry_client()  # re-reads the setting: no client


class _MLflow:
    name = "mlflow"

    def __init__(self, cfg: Mapping, out_dir: Path, run_config: Mapping, start_iteration: int):
        _disable_mlflow_telemetry()
        import mlflow
        from mlflow.tracking import MlflowClient
        from ray.air.integrations.mlflow import setup_mlflow

        kwargs = dict(cfg)
        if not (kwargs.get("experiment_id") or kwargs.get("experiment_name")
                or os.environ.get("MLFLOW_EXPERIMENT_ID") or os.environ.get("MLFLOW_EXPERIMENT_NAME")):
            kwargs["experiment_name"] = DEFAULT_MLFLOW_EXPERIMENT
        # setup_mlflow's default (False) refuses an experiment that does not exist yet
        kwargs.setdefault("create_experiment_if_not_exists", True)
        kwargs.setdefault("run_name", out_dir.name)  # setup_mlflow's default: the experiment's name
        kwargs["tags"] = {"duplexgym.run_dir": str(out_dir), "duplexgym.start_iteration": str(start_iteration),
                          **kwargs.get("tags", {})}
        self._mlflow = mlflow
        # setup_mlflow starts the run as MLflow's active run, or takes over one already active
        self._owns_run = mlflow.active_run() is None
        try:
            setup_mlflow(config=dict(run_config), **kwargs)
            run = mlflow.active_run()
            self.run_id = run.info.run_id
            self.tracking_uri = mlflow.get_tracking_uri()
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment = self._client.get_experiment(run.info.experiment_id)
        except Exception as e:
            if self._owns_run and mlflow.active_run() is not None:
                mlflow.end_run(status="FAILED")
            uri = kwargs.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
            raise ValueError(f"tracking.mlflow: MLflow could not start a run at {_redacted(str(uri))}: {e}") from e
        self.location = (f"MLflow: experiment {experiment.name!r} at {_redacted(self.tracking_uri)} "
                         f"(run {self.run_id}, {run.info.run_name!r})")

    def log(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(key=tag, value=value, timestamp=stamp, step=step)
                                                     for tag, value in values.items()])

    def close(self, status: str) -> None:
        if not self._owns_run:
            return
        active = self._mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self._mlflow.end_run(status=status)
        else:
            self._client.set_terminated(self.run_id, status=status)


class _WandB:
    name = "wandb"

    def __init__(self, cfg: Mapping, out_dir: Path, run_config: Mapping, start_iteration: int):
        telemetry_off()  # before wandb starts its service
        from ray.air.integrations.wandb import setup_wandb

        kwargs = dict(cfg)
        mode = kwargs.get("mode") or os.environ.get("WANDB_MODE") or DEFAULT_WANDB_MODE
        kwargs["mode"] = mode
        kwargs.setdefault("dir", str(out_dir))  # W&B's files in OUT/wandb/, not in the working folder
        kwargs.setdefault("name", out_dir.name)
        # setup_wandb passes reinit=True (deprecated by wandb 0.19+; the same as "finish_previous") and
        # resume=True ("auto": an online run would continue the W&B run that an interrupted earlier run
        # left, whose steps after the checkpoint W&B then refuses to take again): a new run unless asked.
        kwargs.setdefault("reinit", "finish_previous")
        kwargs.setdefault("resume", None)
        # setup_wandb asks for an API key unless the environment's WANDB_MODE (not the mode argument) is
        # offline or disabled, and sets WANDB_START_METHOD for the whole process: neither outlives the call.
        try:
            with temporary_environ(keep=("WANDB_START_METHOD",), WANDB_MODE=mode):
                self.run = setup_wandb(config=dict(run_config), **kwargs)
        except Exception as e:
            raise ValueError(f"tracking.wandb: W&B could not start a run (mode {mode}): {e}") from e
        if mode == "offline":
            sync_dir = getattr(self.run.settings, "sync_dir", None) or Path(self.run.dir).parent
            self.location = (f"W&B: project {self.run.project} (offline run in {sync_dir}; "
                             f"upload it with `wandb sync {shlex.quote(str(sync_dir))}`)")
        elif mode == "disabled":
            self.location = "W&B: disabled (tracking.wandb.mode: disabled): nothing is logged"
        else:
            self.location = f"W&B: project {self.run.project}, run {self.run.url}"

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def _require(module: str, field: str) -> None:
    """A ``ValueError`` naming the package to install when ``module`` cannot be imported."""
    telemetry_off()  # MLflow reads it when imported, W&B when its service starts
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{field} asks for {_PACKAGE_NAME[module]}, which is not installed ({e}): install it with "
                         f"{_INSTALL[module]}, or remove {field} from the config") from None


# --- the logger --------------------------------------------------------------------------------------

class RunLogger:
    """Experiment tracking for one training run in ``out_dir`` (the run folder); see the module docstring.

    ``run_config``: the resolved train config (a JSON-able mapping), logged once (TensorBoard text on a
    fresh start, MLflow parameters, W&B config). ``tracking``: a ``tracking`` mapping (checked with
    :func:`validate_tracking`). ``start_iteration``: the iterations already done (``k`` of a resumed
    checkpoint; 0 for a fresh start). Use as a context manager, or call :meth:`close`: the MLflow / W&B run
    ends as finished, or failed when the ``with`` block raised."""

    def __init__(self, out_dir, run_config: dict, tracking: dict | None = None, start_iteration: int = 0):
        if (isinstance(start_iteration, bool) or not isinstance(start_iteration, numbers.Integral)
                or start_iteration < 0):
            raise ValueError(f"start_iteration: expected an integer >= 0, got {start_iteration!r}")
        if not isinstance(run_config, Mapping):
            raise ValueError(f"run_config: expected a mapping, got {run_config!r}")
        self.out_dir = Path(out_dir).expanduser().absolute()
        self.tracking = validate_tracking(tracking)
        self.start_iteration = int(start_iteration)
        self.run_config = dict(run_config)
        self._backends: list = []
        self._closed = False
        for module in ("mlflow", "wandb"):  # before anything is written
            if module in self.tracking:
                _require(module, f"tracking.{module}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            if "mlflow" in self.tracking:
                self._backends.append(_MLflow(self.tracking["mlflow"], self.out_dir, self.run_config,
                                              self.start_iteration))
            if "wandb" in self.tracking:
                self._backends.append(_WandB(self.tracking["wandb"], self.out_dir, self.run_config,
                                             self.start_iteration))
            if self.tracking["tensorboard"]:
                self._backends.insert(0, _TensorBoard(self.out_dir / TENSORBOARD_DIR, self.run_config,
                                                      self.start_iteration))
        except BaseException:
            self._close("FAILED")
            raise

    @property
    def tensorboard_dir(self) -> Path | None:
        """``OUT/tensorboard`` when TensorBoard is on."""
        return self.out_dir / TENSORBOARD_DIR if self.tracking["tensorboard"] else None

    def log(self, row: dict) -> None:
        """Log one iteration's row (as in ``metrics.jsonl``) to every backend, at ``row["iteration"] + 1``.
        TensorBoard's event is on disk when this returns; an MLflow / W&B failure is a ``RuntimeWarning``."""
        if self._closed:
            raise RuntimeError("RunLogger.log: the logger is closed")
        step = global_step(row)
        values = scalars(row)
        if not values:
            return
        for backend in self._backends:
            if backend.name == "tensorboard":
                backend.log(step, values)  # a local disk error is an error
                continue
            try:
                backend.log(step, values)
            except Exception as e:  # a tracking server down must not end a training run
                warnings.warn(f"tracking.{backend.name}: logging iteration {step - 1} failed: {e!r}", RuntimeWarning,
                              stacklevel=2)

    def locations(self) -> list[str]:
        """Where the logs are, one line per backend (``TensorBoard: tensorboard --logdir OUT/tensorboard``, ...)."""
        return [backend.location for backend in self._backends]

    def close(self) -> None:
        """End the runs (finished) and close the event file; a second call does nothing."""
        self._close("FINISHED")

    def _close(self, status: str) -> None:
        if self._closed:
            return
        self._closed = True
        errors = []
        for backend in self._backends:
            try:
                backend.close(status)
            except Exception as e:  # close the others all the same
                errors.append(f"tracking.{backend.name}: {e!r}")
        if errors:
            warnings.warn("closing the run's trackers failed: " + "; ".join(errors), RuntimeWarning, stacklevel=3)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._close("FINISHED")
        else:
            self._close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
