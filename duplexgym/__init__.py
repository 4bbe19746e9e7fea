"""duplexgym: Gymnasium environments for RL post-training of full-duplex spoken dialogue models.

Data flows one way: ``duplexgym.corpora`` (conversation audio -> per-axis segments) ->
``duplexgym.envs`` (segments -> 80 ms frame-by-frame episodes) -> ``duplexgym.rewards``
(episode records -> rewards); ``duplexgym.agents`` act inside the envs.
"""

from duplexgym._runtime import configure_runtime

configure_runtime()

__version__ = "0.1.0"

#: The four interactivity axes, in the order used everywhere (CLI, manifests, tables).
AXES = ("pause", "turn", "backchannel", "interruption")

from duplexgym.envs import register_envs  # noqa: E402

register_envs()
