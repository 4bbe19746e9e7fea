"""Experiment tracking of a training run (agents/training/tracking.py): TensorBoard event files read back
with tensorboardX's protobufs and the TFRecord framing (and TensorBoard's own reader when installed),
resume purging, MLflow (a local file store) and W&B (offline) with the real packages when installed,
and the clear errors when they are not."""

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from duplexgym.agents.training.tracking import (
    TRAIN_KEYS,
    RunLogger,
    global_step,
    scalars,
    validate_tracking,
)
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

CONFIG = {"algorithm": "grpo", "axes": ["pause", "turn"], "lr": 1.0e-3, "group_size": 2, "axis_weights": {"pause": 1.0}}
NAN = float("nan")


def _row(i: int, base: float = 0.0, **kw) -> dict:
    """A metrics.jsonl row of iteration ``i`` (values ``base + ...``)."""
    return {"iteration": i, "reward_mean": {"pause": base + i, "turn": base - i},
            "score_mean": {"pause": base + 0.5 * i},
            "kl": base + 0.01 * i, "loss": base - 0.1 * i, "policy_loss": base + 0.2, "value_loss": NAN,
            "clip_fraction": 0.0, "frames_per_s": 100.0 + i, "learner_share": 0.25, "lr": 1.0e-3, "grad_norm": None,
            "failed_episodes": 0, "wall_s": 1.5, "episodes": 4, **kw}


# three rows with gaps: a failed axis (NaN), a missing metric (None), a non-finite one
ROWS = [_row(0), _row(1, reward_mean={"pause": 1.0, "turn": NAN}, kl=None), _row(2, loss=float("inf"))]


# --- reading event files back ------------------------------------------------------------------------

def read_events(path: Path) -> list[Event]:
    """The events of one file: TFRecord framing (length, masked CRC32C of the length, data, masked CRC32C of
    the data), each record an ``Event`` protobuf. Every CRC is checked, so a torn file fails here."""
    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert header_crc == masked_crc32c(header) and body_crc == masked_crc32c(body), f"corrupt record in {path}"
        event = Event()
        event.ParseFromString(body)
        events.append(event)
        pos += 16 + length
    assert pos == len(data)
    return events


def event_files(logdir: Path) -> list[Path]:
    """TensorBoard's event files of a folder, in the order TensorBoard reads them (by name)."""
    return sorted(p for p in logdir.iterdir() if "tfevents" in p.name)


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a folder, ``{tag: [(step, value), ...]}`` in reading order, with TensorBoard's purge
    semantics applied: a ``SessionLog.START`` event at step ``s`` drops the events read before it whose step
    is ``>= s``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in event_files(logdir):
        for event in read_events(path):
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                out = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in out.items()}
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def expected_scalars(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the rows should give, from the rows themselves: finite numbers only, at step iteration + 1."""
    out: dict[str, list[tuple[int, float]]] = {}

    def add(tag, step, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.setdefault(tag, []).append((step, float(value)))

    for row in rows:
        step = row["iteration"] + 1
        for axis, value in row["reward_mean"].items():
            add(f"reward/{axis}", step, value)
        for axis, value in row["score_mean"].items():
            add(f"score/{axis}", step, value)
        for key in TRAIN_KEYS:
            add(f"train/{key}", step, row.get(key))
    return out


def assert_scalars_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag  # float32 on disk


# --- validate_tracking ----------------------------------------------------------------------------------

def test_validate_tracking_normalises_a_tracking_mapping():
    assert validate_tracking(None) == {"tensorboard": True}
    assert validate_tracking({}) == {"tensorboard": True}
    assert validate_tracking({"tensorboard": False, "wandb": True, "mlflow": None}) == {"tensorboard": False,
                                                                                         "wandb": {}}
    raw = {"wandb": {"project": "p", "mode": "offline", "tags": ["grpo", "tiny"], "settings": {"x_disable_stats": True},
                     "resume": "allow", "api_key_file": "~/.wandb-key"},
           "mlflow": {"tracking_uri": "file:///tmp/mlruns", "experiment_id": 7, "tags": {"team": "duplex", "n": 2},
                      "create_experiment_if_not_exists": False}}
    got = validate_tracking(raw)
    assert got["tensorboard"] is True and got["wandb"] == raw["wandb"]
    assert got["mlflow"] == {"tracking_uri": "file:///tmp/mlruns", "experiment_id": "7",
                             "tags": {"team": "duplex", "n": "2"}, "create_experiment_if_not_exists": False}


@pytest.mark.parametrize("raw, message", [
    ([1], "tracking: expected a mapping, got [1]"),
    ({"wandb": 3}, "tracking.wandb: expected a mapping, got 3"),
    ({"mlfow": {}}, "tracking.mlfow: unknown field; known: tensorboard, wandb, mlflow"),
    ({"tensorboard": "yes"}, "tracking.tensorboard: expected true or false, got 'yes'"),
    ({"mlflow": {"experiment": "e"}}, ("tracking.mlflow.experiment: unknown field; known: tracking_uri, registry_uri, "
                                       "experiment_id, experiment_name, tracking_token, artifact_location, run_name, "
                                       "create_experiment_if_not_exists, tags, rank_zero_only")),
    ({"mlflow": {"tracking_uri": ""}}, "tracking.mlflow.tracking_uri: expected a non-empty string, got ''"),
    ({"mlflow": {"create_experiment_if_not_exists": "yes"}},
     "tracking.mlflow.create_experiment_if_not_exists: expected true or false, got 'yes'"),
    ({"mlflow": {"tags": {"a": [1]}}}, "tracking.mlflow.tags.a: expected a string or a number, got [1]"),
    ({"wandb": {"mode": "cloud"}},
     "tracking.wandb.mode: expected one of online, offline, disabled, shared, got 'cloud'"),
    ({"wandb": {"tags": "grpo"}}, "tracking.wandb.tags: expected a list of strings, got 'grpo'"),
    ({"wandb": {"config": {}}}, "tracking.wandb.config: unknown field; known: api_key, "),
    ({"wandb": {1: "x"}}, "tracking.wandb: field names must be strings, got 1"),
    ({"wandb": {"api_key": "secret"}}, "tracking.wandb.api_key: a secret does not belong in the config"),
    ({"mlflow": {"tracking_token": "secret"}},
     "tracking.mlflow.tracking_token: a secret does not belong in the config"),
])
def test_validate_tracking_names_the_field_in_errors(raw, message):
    with pytest.raises(ValueError) as e:
        validate_tracking(raw)
    assert str(e.value).startswith(message)
    assert "secret'" not in str(e.value)  # a refused secret is not echoed


def test_validate_tracking_imports_neither_ray_nor_wandb_nor_mlflow():
    code = textwrap.dedent("""
        import sys
        from duplexgym.agents.training.tracking import validate_tracking
        validate_tracking({"wandb": {"project": "p"}, "mlflow": {"experiment_name": "e"}})
        print(sorted({"ray", "wandb", "mlflow"} & {m.split(".")[0] for m in sys.modules}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- rows to scalars ------------------------------------------------------------------------------------

def test_scalars_of_a_row_are_the_finite_numbers_at_iteration_plus_one():
    got = scalars(ROWS[1])
    # no turn (NaN), kl (None), value_loss (NaN), grad_norm (None); wall_s and episodes are not logged
    assert got == {"reward/pause": 1.0, "score/pause": 0.5, "train/loss": -0.1, "train/policy_loss": 0.2,
                   "train/clip_fraction": 0.0, "train/frames_per_s": 101.0, "train/learner_share": 0.25,
                   "train/lr": 1.0e-3, "train/failed_episodes": 0.0}
    assert scalars({"iteration": 0, "reward_mean": None, "kl": "0.1", "loss": True}) == {}
    assert [global_step(r) for r in ROWS] == [1, 2, 3]
    for bad in ({}, {"iteration": -1}, {"iteration": 1.5}, {"iteration": True}):
        with pytest.raises(ValueError, match=r"row\['iteration'\]"):
            global_step(bad)


def test_locations_never_show_a_password_of_a_tracking_uri():
    from duplexgym.agents.training.tracking import _redacted

    assert _redacted("https://me:hunter2@mlflow.example:5000/api") == "https://me:***@mlflow.example:5000/api"
    assert _redacted("file:///tmp/mlruns") == "file:///tmp/mlruns"
    assert _redacted("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


# --- TensorBoard ------------------------------------------------------------------------------------------

def test_tensorboard_events_of_three_rows_read_back(tmp_path):
    with RunLogger(tmp_path / "run", CONFIG) as logger:
        for row in ROWS:
            logger.log(row)
        assert logger.locations() == [f"TensorBoard: tensorboard --logdir {tmp_path / 'run' / 'tensorboard'}"]
    logdir = tmp_path / "run" / "tensorboard"
    [path] = event_files(logdir)
    got = read_scalars(logdir)
    assert_scalars_equal(got, expected_scalars(ROWS))
    assert [s for s, _ in got["reward/turn"]] == [1, 3]  # iteration 1's NaN left out
    assert [s for s, _ in got["train/kl"]] == [1, 3] and [s for s, _ in got["train/loss"]] == [1, 2]  # None, inf
    assert "train/value_loss" not in got and "train/grad_norm" not in got
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    assert not any(e.HasField("session_log") for e in events)  # a fresh start purges nothing
    [text] = [v for e in events for v in e.summary.value if v.tag == "config/text_summary"]
    assert text.metadata.plugin_data.plugin_name == "text"
    assert json.loads(text.tensor.string_val[0].decode()) == CONFIG  # the config, once, as a Markdown code block
    assert [e.step for e in events if e.summary.value and e.summary.value[0].tag == "config/text_summary"] == [0]
    assert [e.step for e in events if e.summary.value and e.summary.value[0].HasField("simple_value")] == [1, 2, 3]


def test_tensorboard_off_and_closing(tmp_path):
    logger = RunLogger(tmp_path / "run", CONFIG, tracking={"tensorboard": False})
    logger.log(ROWS[0])
    assert logger.locations() == [] and not (tmp_path / "run" / "tensorboard").exists()
    logger.close()
    logger.close()  # a second close does nothing
    with pytest.raises(RuntimeError, match="closed"):
        logger.log(ROWS[1])
    with pytest.raises(ValueError, match="start_iteration"):
        RunLogger(tmp_path / "run", CONFIG, start_iteration=-1)


def test_a_fresh_start_replaces_the_event_files_of_an_earlier_run(tmp_path):
    for base in (0.0, 50.0):
        with RunLogger(tmp_path, CONFIG) as logger:
            for row in ROWS:
                logger.log({**row, "reward_mean": {"pause": base + row["iteration"]}})
    (tmp_path / "tensorboard" / "notes.txt").write_text("mine")
    assert len(event_files(tmp_path / "tensorboard")) == 1
    assert read_scalars(tmp_path / "tensorboard")["reward/pause"] == [(1, 50.0), (2, 51.0), (3, 52.0)]
    with RunLogger(tmp_path, CONFIG):
        pass
    assert (tmp_path / "tensorboard" / "notes.txt").read_text() == "mine"  # only event files are replaced


# iterations 0..3 logged, then the process dies without closing anything (as a SIGKILL would leave it)
_INTERRUPTED = """
import json, os, sys
from duplexgym.agents.training.tracking import RunLogger
logger = RunLogger(sys.argv[1], {"algorithm": "grpo"})
for row in json.loads(sys.argv[2]):
    logger.log(row)
os._exit(3)
"""


def _interrupted_then_resumed(out: Path) -> tuple[list[dict], list[dict]]:
    """An interrupted run that logged iterations 0..3 (values 10 + i), then a resume from the checkpoint of
    k = 2 iterations that logs iterations 2..4 (values 20 + i)."""
    old = [_row(i, base=10.0) for i in range(4)]
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED, str(out), json.dumps(old)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stderr
    killed = read_scalars(out / "tensorboard")
    assert_scalars_equal(killed, expected_scalars(old))  # the killed run lost nothing it had logged
    new = [_row(i, base=20.0) for i in range(2, 5)]
    with RunLogger(out, {"algorithm": "grpo"}, start_iteration=2) as logger:
        for row in new:
            logger.log(row)
    return old, new


def test_resume_purges_the_iterations_an_interrupted_run_logged_after_its_checkpoint(tmp_path):
    from tensorboardX import SummaryWriter

    old, new = _interrupted_then_resumed(tmp_path)
    logdir = tmp_path / "tensorboard"
    first, second = event_files(logdir)  # the resumed run's file sorts after the interrupted run's
    # the new file starts as tensorboardX's SummaryWriter(purge_step=k + 1) starts one: a file-version event,
    # then a file-version event and a SessionLog.START at the purge step
    with SummaryWriter(str(tmp_path / "reference"), purge_step=3) as reference:
        reference.flush()
    [reference_file] = event_files(tmp_path / "reference")

    def head(path):
        events = read_events(path)[:3]
        for event in events:
            event.ClearField("wall_time")
        return events

    ours = head(second)
    assert ours == head(reference_file)
    assert [(e.step, e.file_version) for e in ours[:2]] == [(0, "brain.Event:2"), (3, "brain.Event:2")]
    assert ours[2].step == 3 and ours[2].session_log.status == SessionLog.START
    # with the purge applied: iterations 0, 1 of the interrupted run, then 2, 3, 4 of the resumed one, once each
    got = read_scalars(logdir)
    assert_scalars_equal(got, expected_scalars(old[:2] + new))
    assert got["reward/pause"] == [(1, 10.0), (2, 11.0), (3, 22.0), (4, 23.0), (5, 24.0)]
    # the resumed run writes no second config
    texts = [e.step for p in (first, second) for e in read_events(p) for v in e.summary.value
             if v.tag.startswith("config")]
    assert texts == [0]


def test_resume_as_tensorboard_itself_reads_it(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    old, new = _interrupted_then_resumed(tmp_path)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    want = expected_scalars(old[:2] + new)
    assert sorted(acc.Tags()["scalars"]) == sorted(want)
    for tag, points in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert [e.step for e in acc.Tensors("config/text_summary")] == [0]


# --- MLflow and W&B: a clear error without the package ------------------------------------------------------

@pytest.mark.parametrize("module, install", [("mlflow", "pip install mlflow"), ("wandb", "pip install wandb")])
def test_asking_for_a_tracker_that_is_not_installed_is_a_clear_error(tmp_path, monkeypatch, module, install):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` fails, as without the package
    with pytest.raises(ValueError) as e:
        RunLogger(tmp_path / "run", CONFIG, tracking={module: {}})
    assert f"tracking.{module}" in str(e.value) and install in str(e.value) and "not installed" in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing written


# --- MLflow (a local file store) ------------------------------------------------------------------------------

@pytest.fixture
def mlflow_env(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
                 "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    yield mlflow, (tmp_path / "mlruns").as_uri()
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def test_mlflow_metrics_and_params_read_back_with_the_mlflow_client(tmp_path, monkeypatch, mlflow_env):
    mlflow, uri = mlflow_env
    from mlflow.telemetry.client import get_telemetry_client
    from mlflow.tracking import MlflowClient

    tracking = {"mlflow": {"tracking_uri": uri, "experiment_name": "duplex-e"}}
    # MLflow 3 refuses a file store unless told: the error says what MLflow said, and leaves no run open
    with pytest.raises(ValueError, match=r"tracking\.mlflow: MLflow could not start a run at file://.*"
                                         r"MLFLOW_ALLOW_FILE_STORE"):
        RunLogger(tmp_path / "run", CONFIG, tracking=tracking)
    assert mlflow.active_run() is None
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and get_telemetry_client() is None  # nothing sent home

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with RunLogger(tmp_path / "run", CONFIG, tracking=tracking) as logger:
        for row in ROWS:
            logger.log(row)
        [tb, line] = logger.locations()
        run_id = mlflow.active_run().info.run_id
    assert tb.startswith("TensorBoard: ") and line.startswith(f"MLflow: experiment 'duplex-e' at {uri} (run {run_id}")
    assert mlflow.active_run() is None  # ended on close
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "duplex-e"  # made, as it did not exist
    assert run.data.params == {"algorithm": "grpo", "axes": "['pause', 'turn']", "lr": "0.001", "group_size": "2",
                               "axis_weights/pause": "1.0"}
    assert run.data.tags["duplexgym.start_iteration"] == "0"
    want = expected_scalars(ROWS)
    assert set(run.data.metrics) == set(want)
    for tag, points in want.items():
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, tag)] == points, tag

    # a resume is a new MLflow run, from step k + 1; a failure inside the block marks it FAILED
    with pytest.raises(KeyError), RunLogger(tmp_path / "run", CONFIG, tracking=tracking, start_iteration=2) as logger:
        logger.log(_row(2, base=20.0))
        resumed = mlflow.active_run().info.run_id
        raise KeyError("boom")
    run = client.get_run(resumed)
    assert resumed != run_id and run.info.status == "FAILED" and run.data.tags["duplexgym.start_iteration"] == "2"
    assert [(m.step, m.value) for m in client.get_metric_history(resumed, "reward/pause")] == [(3, 22.0)]


def test_an_mlflow_failure_mid_run_is_a_warning_and_tensorboard_keeps_every_iteration(tmp_path, monkeypatch,
                                                                                        mlflow_env):
    import shutil

    mlflow, uri = mlflow_env
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with RunLogger(tmp_path / "run", CONFIG, tracking={"mlflow": {"tracking_uri": uri}}) as logger:
        logger.log(ROWS[0])
        shutil.rmtree(tmp_path / "mlruns")  # the tracking store is gone
        with pytest.warns(RuntimeWarning, match=r"tracking\.mlflow: logging iteration 1 failed"):
            logger.log(ROWS[1])
        with pytest.warns(RuntimeWarning, match="closing the run's trackers failed: tracking.mlflow"):
            logger.close()
    assert_scalars_equal(read_scalars(tmp_path / "run" / "tensorboard"), expected_scalars(ROWS[:2]))


# --- W&B (offline) ---------------------------------------------------------------------------------------------

def read_wandb_records(run_dir: Path) -> list:
    """The records of an offline W&B run's transaction log (``run-<id>.wandb``): a 7-byte header
    (``:W&B``, magic, version), then LevelDB-log chunks (CRC32, uint16 length, type: full, first, middle, last)
    in 32 KiB blocks, each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _child_commands() -> list[list[str]]:
    """The command lines of this process's child processes (Linux /proc)."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                out.append([a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a])
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
    return out


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_START_METHOD", "WANDB_ERROR_REPORTING", "WANDB_DIR",
                 "WANDB_PROJECT_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing in the home folder
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    out = tmp_path / "run"
    # no mode given: offline (no API key needed, nothing leaves the machine)
    with RunLogger(out, CONFIG, tracking={"wandb": {"project": "duplex-p"}}) as logger:
        for row in ROWS:
            logger.log(row)
        [_, line] = logger.locations()
        if Path("/proc/self/stat").exists():  # W&B's service (wandb-core, a child process) sends no error reports
            [core] = [args for args in _child_commands() if args[0].endswith("wandb-core")]
            assert "--no-observability" in core
    wandb.teardown()  # stop W&B's service process
    [run_dir] = (out / "wandb").glob("offline-run-*")
    assert line == f"W&B: project duplex-p (offline run in {run_dir}; upload it with `wandb sync {run_dir}`)"
    # setup_wandb's process-wide environment changes did not outlive it; the error reports stay off
    assert "WANDB_MODE" not in os.environ and "WANDB_START_METHOD" not in os.environ
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"
    records = read_wandb_records(run_dir)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "duplex-p" and run.display_name == "run"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert {k: config[k] for k in CONFIG} == CONFIG
    got: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                tag = item.key or "/".join(item.nested_key)
                if not tag.startswith("_"):
                    got.setdefault(tag, []).append((record.history.step.num, float(json.loads(item.value_json))))
    assert got == expected_scalars(ROWS)


# --- nothing leaves the machine -------------------------------------------------------------------------------

# A process whose every non-loopback name lookup and connection is refused and recorded; MLflow (a file store)
# and W&B (no mode: offline) log three iterations. MLflow's telemetry is on by default outside tests and CI.
_NO_NETWORK = """
import json, os, socket, sys
attempts = []
LOCAL = ("localhost", "127.0.0.1", "::1", None)
real_getaddrinfo = socket.getaddrinfo

def getaddrinfo(host, *args, **kwargs):
    if host not in LOCAL:
        attempts.append(str(host))
        raise OSError("network blocked by the test")
    return real_getaddrinfo(host, *args, **kwargs)

class GuardedSocket(socket.socket):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            attempts.append(str(address))
            raise OSError("network blocked by the test")
        return super().connect(address)

socket.getaddrinfo, socket.socket = getaddrinfo, GuardedSocket
import mlflow
from mlflow.telemetry.client import get_telemetry_client
telemetry_before = get_telemetry_client() is not None
from duplexgym.agents.training.tracking import RunLogger
out = sys.argv[1]
tracking = {"mlflow": {"tracking_uri": "file://" + out + "/mlruns"}, "wandb": {"project": "p"}}
with RunLogger(out, {"algorithm": "grpo"}, tracking) as logger:
    for i in range(3):
        logger.log({"iteration": i, "reward_mean": {"pause": float(i)}, "kl": 0.01 * i})
import wandb
wandb.teardown()
print(json.dumps({"telemetry_before": telemetry_before, "telemetry_after": get_telemetry_client() is not None,
                  "attempts": attempts}))
"""
#: Variables under which MLflow switches its telemetry off by itself (tests, CI), or the user did.
_TELEMETRY_OFF = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
                  "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
                  "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID",
                  "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "WANDB_MODE", "WANDB_ERROR_REPORTING", "WANDB_API_KEY",
                  "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")


@pytest.mark.slow  # a fresh process importing Ray, MLflow and W&B
def test_mlflow_and_wandb_by_default_send_nothing_over_the_network(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if k not in _TELEMETRY_OFF}
    env.update(MLFLOW_ALLOW_FILE_STORE="true", **{name: str(tmp_path / name.lower()) for name in
                                                  ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")})
    proc = subprocess.run([sys.executable, "-c", _NO_NETWORK, str(tmp_path / "run")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"telemetry_before": True, "telemetry_after": False, "attempts": []}
