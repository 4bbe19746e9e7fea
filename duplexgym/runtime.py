"""Process settings that make torch, moshi, librosa and Ray behave on these machines: one function.

Nothing in duplexgym sets an environment variable when it is imported. The CLI, the test suite,
the benchmarks and Ray's worker processes (through :func:`ray_runtime_env`) call
:func:`configure_runtime` before torch or moshi are imported; a program that imports duplexgym as
a library calls it itself if it wants these settings (it is optional: without it everything
works, only slower on CPU). A variable the user already set is never overridden.

=======================  ===========  ==========================================================
variable                 value        why
=======================  ===========  ==========================================================
``NO_TORCH_COMPILE``     ``1``        moshi compiles its first streaming step for 8-19 s on CPU;
                                      moshi reads it when ``moshi`` is imported
``OMP_WAIT_POLICY``      ``PASSIVE``  with 2 cores and any other load, busy-waiting OpenMP threads
                                      make torch ops 10-40x slower
``NUMBA_CACHE_DIR``      a folder     librosa's numba kernels compile once, not in every process
``HF_HUB_OFFLINE``,      ``1``        nothing is ever downloaded from a hub (the embedding judge
``TRANSFORMERS_OFFLINE``              loads its model from a local folder)
``RAY_AUTH_MODE``        ``disabled`` a local Ray needs no token
``RAY_USAGE_STATS_``     ``0``,       no usage reports to Ray's, MLflow's or W&B's servers (MLflow
``ENABLED``,             ``true``,    3 sends telemetry unless told not to; W&B's service reports
``MLFLOW_DISABLE_``      ``false``    its own errors); :func:`telemetry_off` applies just these
``TELEMETRY``,
``WANDB_ERROR_REPORTING``
``OMP_NUM_THREADS``,     ``threads``  only when ``threads`` is given (the one-core benchmarks);
``MKL_NUM_THREADS``,                  the thread pools of libraries already loaded (numpy's BLAS,
``OPENBLAS_NUM_THREADS``              OpenMP; torch) are limited too, with threadpoolctl
=======================  ===========  ==========================================================
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: The defaults :func:`configure_runtime` applies (values the user set win).
DEFAULTS = {
    "NO_TORCH_COMPILE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "NUMBA_CACHE_DIR": str(Path.home() / ".cache" / "duplexgym" / "numba"),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_AUTH_MODE": "disabled",
}
#: Usage reports of the libraries training may load, off unless the user turned them on.
TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "WANDB_ERROR_REPORTING": "false"}
DEFAULTS.update(TELEMETRY_OFF)
#: The thread-count variables set by ``configure_runtime(threads=n)``.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def configure_runtime(threads: int | None = None) -> dict[str, str]:
    """Apply :data:`DEFAULTS` (and ``threads`` to :data:`THREAD_VARIABLES`) to ``os.environ``
    where a variable is not set yet. Idempotent. Returns the values now in effect."""
    wanted = dict(DEFAULTS)
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        wanted.update({name: str(int(threads)) for name in THREAD_VARIABLES})
    for name, value in wanted.items():
        os.environ.setdefault(name, value)
    if threads is not None:
        _limit_loaded_thread_pools(int(os.environ["OMP_NUM_THREADS"]))
    return {name: os.environ[name] for name in wanted}


def _limit_loaded_thread_pools(threads: int) -> None:
    """Thread pools that were created before the variables were set (numpy's BLAS when numpy was
    imported first, torch's intra-op pool) follow the same count."""
    import sys

    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def ray_runtime_env() -> dict:
    """Ray's ``runtime_env`` for duplexgym's workers: the variables of :func:`configure_runtime`
    as this process has them (the user's own values included), so every actor starts alike."""
    return {"env_vars": configure_runtime()}


def telemetry_off() -> None:
    """Apply :data:`TELEMETRY_OFF` where the user set nothing (the tracking integrations call it
    before they import MLflow or start W&B's service)."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def temporary_environ(keep: tuple[str, ...] = (), **values: str):
    """Set ``values`` in ``os.environ`` for the block; afterwards those and the ``keep`` variables are
    as before (for libraries that read settings only from the environment, or leave some behind)."""
    names = set(keep) | set(values)
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
