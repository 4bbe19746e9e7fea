"""Process-wide settings that must be in place before torch or moshi are imported.

``NO_TORCH_COMPILE=1``: otherwise moshi compiles its first streaming step for 8-19 s on CPU.
``OMP_WAIT_POLICY=PASSIVE``: with 2 cores and any other load, busy-waiting OpenMP threads make
torch ops 10-40x slower. ``NUMBA_CACHE_DIR``: librosa's numba kernels compile once, not per run.
Values the user already set are kept.
"""

import os
from pathlib import Path


def configure_runtime() -> None:
    """Set the environment defaults above (idempotent; never overrides the user's values)."""
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "duplexgym" / "numba"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
