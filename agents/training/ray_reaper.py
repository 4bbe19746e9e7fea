"""Cleans up after a local Ray whose driver died without shutting it down.

``ray.init()`` starts Ray's processes for the run; ``ray.shutdown()`` stops them. A driver killed with
SIGKILL (or by the kernel's out-of-memory killer) never calls it: Ray's raylet and GCS follow the
driver, but its dashboard and runtime-env agents stay alive, and the session's temporary folder stays
on disk. :class:`~duplexgym.agents.training.driver.RaySession` therefore starts this watcher
(``python -m duplexgym.agents.training.ray_reaper TEMP_DIR NODE_ID DRIVER_PID``) with a pipe on its
standard input. The watcher waits for the pipe to close, which happens when the driver exits in any
way, then stops every process of that Ray node (SIGTERM, SIGKILL after a grace period): those whose
environment names the node (``RAY_NODE_ID``) or whose command line names the session folder. Then it
removes the session folder, which the driver created for this run. It ignores SIGINT, so the Ctrl-C
that stops a training run does not stop the clean-up. Linux (``/proc``) only; elsewhere it only
removes the folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

#: Seconds between SIGTERM and SIGKILL.
GRACE_S = 3.0


def _holds_open(entry: Path, temp_dir: str) -> bool:
    """Does the process keep a file of ``temp_dir`` open (Ray's processes keep their logs there)?"""
    try:
        return any(os.readlink(fd).startswith(temp_dir) for fd in (entry / "fd").iterdir())
    except OSError:
        return False


def ray_processes(temp_dir: str, node_id: str, spare: set[int]) -> list[int]:
    """Pids of this user's processes of the Ray node ``node_id``, but ``spare``: those whose
    environment names the node, whose command line names ``temp_dir``, or that keep a file in it open
    (Ray renames its agents' processes, which overwrites their command line and environment)."""
    mark = f"RAY_NODE_ID={node_id}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) in spare:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if mark in environ.split(b"\0") or temp_dir.encode() in cmdline or _holds_open(entry, temp_dir):
            found.append(int(entry.name))
    return found


def reap(temp_dir: str, node_id: str, driver_pid: int) -> int:
    """Stop the node's processes and remove ``temp_dir``; returns how many processes were signalled."""
    spare = {os.getpid(), driver_pid}
    pids = ray_processes(temp_dir, node_id, spare)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and ray_processes(temp_dir, node_id, spare):
        time.sleep(0.1)
    for pid in ray_processes(temp_dir, node_id, spare):
        _signal(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return len(pids)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    temp_dir, node_id, driver_pid = argv[0], argv[1], int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when the driver closes its end: it exited, one way or another
    reap(temp_dir, node_id, driver_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
