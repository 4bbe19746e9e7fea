"""duplexgym.envs: segments in -> frame-by-frame episodes out.

Registered ids (``import duplexgym`` registers them)::

    duplexgym/PauseHandling-v0   duplexgym/TurnTaking-v0   duplexgym/Backchannel-v0
    duplexgym/Interruption-v0    duplexgym/Interactivity-v0 (all four axes, axis_weights=)
    duplexgym/Conversation-v0    (a live dialogue with a simulated user: envs/conversation.py)
"""

import gymnasium as gym

ENV_IDS = {
    "duplexgym/PauseHandling-v0": ("pause",),
    "duplexgym/TurnTaking-v0": ("turn",),
    "duplexgym/Backchannel-v0": ("backchannel",),
    "duplexgym/Interruption-v0": ("interruption",),
    "duplexgym/Interactivity-v0": ("pause", "turn", "backchannel", "interruption"),
}


#: The live dialogue env (not a replay of segments: no axes).
LIVE_ENV_ID = "duplexgym/Conversation-v0"


def register_envs() -> None:
    """Register the five replay ids and the live one with Gymnasium (idempotent)."""
    for env_id, axes in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="duplexgym.envs.replay:DuplexReplayEnv",
                         kwargs={"axes": axes, "env_id": env_id}, disable_env_checker=False)
    if LIVE_ENV_ID not in gym.registry:
        gym.register(id=LIVE_ENV_ID, entry_point="duplexgym.envs.conversation:ConversationEnv",
                     kwargs={"env_id": LIVE_ENV_ID}, disable_env_checker=False)
