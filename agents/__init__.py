"""duplexgym.agents: policies that act inside the envs, and the loops that run them.

Baselines (:mod:`.baselines`: ``silent``, ``talk``, ``oracle``; :mod:`.vad_agent`: ``vad``, a
rule-based turn-taker), the streaming Moshi policy (:mod:`.moshi_agent`, :mod:`.checkpoint`),
rollouts (:mod:`.rollout`), replay and rescoring (:mod:`.replay`), evaluation with the
Full-Duplex-Bench table (:mod:`.evaluate`) and its export (:mod:`.export`).
"""
