"""duplexgym.rewards: episode records in -> reward values + metric breakdowns (pure functions).

One module per axis (:mod:`.pause`, :mod:`.turn`, :mod:`.backchannel`, :mod:`.interruption`),
each ``score(speech, segment, params) -> RewardTerm``; :mod:`.fdb` holds the Full-Duplex-Bench v1
metrics they report; :mod:`.activity` reads the agent's speech (silero VAD or Moshi's text stream);
:mod:`.spec` parses reward specs; :mod:`.scoring` scores a record; :mod:`.dense` the optional
per-frame shaping. Nothing here imports ``duplexgym.envs`` or ``duplexgym.agents``.
"""
