"""duplexgym: Gymnasium environments for RL post-training of full-duplex spoken dialogue models.

Data flows one way: ``duplexgym.corpora`` (conversation audio -> per-axis segments) ->
``duplexgym.envs`` (segments -> 80 ms frame-by-frame episodes) -> ``duplexgym.rewards``
(episode records -> rewards); ``duplexgym.agents`` act inside the envs; ``duplexgym.cli`` is the
command line on top. Importing ``duplexgym`` registers the env ids with Gymnasium and changes
nothing else in the process: call :func:`configure_runtime` first for the CPU settings the CLI
uses (see :mod:`duplexgym.runtime`).
"""

from importlib.metadata import PackageNotFoundError, version

from duplexgym.constants import AXES
from duplexgym.envs import register_envs
from duplexgym.runtime import configure_runtime

try:
    __version__ = version("duplexgym")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

register_envs()

__all__ = ["AXES", "configure_runtime", "register_envs", "__version__"]
