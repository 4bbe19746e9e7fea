"""Policies: what acts inside the envs.

- :mod:`.base`: the agent protocol (``reset(info)``, ``act(obs)``; batched ``reset_batch`` /
  ``act_batch``) and :class:`~.base.PerRowBatch`;
- :mod:`.baselines`: ``silent``, ``talk``, ``oracle``; :mod:`.vad_agent`: ``vad``, a rule-based
  turn-taker on streaming silero;
- :mod:`.moshi_agent`: the streaming Moshi (``LMGen`` + Mimi, batched, forced prefix, seeded);
  :mod:`.checkpoint`: where a Moshi comes from (the tiny random one, or a checkpoint folder);
  :mod:`.personaplex`: PersonaPlex weights on stock moshi, its text and voice prompts and their phases.

:func:`make_agent` builds any of them by name, as ``duplexgym rollout`` / ``eval --agent`` do.
"""

from __future__ import annotations

#: Agent names :func:`make_agent` knows (``moshi:PATH`` loads a checkpoint folder).
AGENT_NAMES = ("silent", "talk", "oracle", "vad", "moshi", "moshi:CHECKPOINT_DIR", "personaplex:CHECKPOINT_DIR")


def make_agent(name: str, env, text_prompt: str | None = None, voice_prompt: str | None = None) -> object:
    """The agent ``name`` for ``env`` (a DuplexReplayEnv or a wrapper of one). A Moshi agent also
    sets the env's text tokenizer to its own, so records carry its decoded text.
    ``personaplex:DIR`` is prompted (:mod:`.personaplex`) with ``text_prompt`` / ``voice_prompt``,
    else the folder's saved prompt, else the official Full-Duplex-Bench text prompt of each axis."""
    base = env.unwrapped
    personaplex = name.startswith("personaplex:")
    if (text_prompt is not None or voice_prompt is not None) and not personaplex:
        raise ValueError(f"text and voice prompts are for personaplex:DIR agents, not {name!r}")
    if name == "moshi" or name.startswith("moshi:") or personaplex:  # tiny, moshi:DIR, personaplex:DIR
        from duplexgym.agents.policies.moshi_agent import MoshiAgent

        prompt = None
        source = name if personaplex else name.partition(":")[2] or "tiny"
        if personaplex:
            from duplexgym.agents.policies.checkpoint import load_models
            from duplexgym.agents.policies.personaplex import personaplex_prompt

            source = load_models(name)
            prompt = personaplex_prompt(source, text_prompt, voice_prompt)
        agent = MoshiAgent.for_env(env, source, prompt=prompt)
        agent.name = "personaplex" if personaplex else agent.name
        base.set_text_tokenizer(agent.text_tokenizer_path)
        return agent
    if name == "vad":  # the rule-based turn-taker (agents/vad_agent.py) also needs the observation mode
        from duplexgym.agents.policies.vad_agent import VadAgent

        return VadAgent(base.corpus, base.action_mode, base.reward_spec.activity, obs_mode=base.obs_mode)
    from duplexgym.agents.policies.baselines import BASELINES

    if name not in BASELINES:
        raise ValueError(f"unknown agent {name!r}; available: {', '.join(BASELINES)}, vad, moshi, moshi:CHECKPOINT_DIR, "
                         "personaplex:CHECKPOINT_DIR")
    return BASELINES[name](base.corpus, base.action_mode, base.reward_spec.activity)
