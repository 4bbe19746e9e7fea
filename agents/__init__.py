"""duplexgym.agents: policies that act inside the envs, how they are trained, and how they are evaluated.

- :mod:`.policies`: the agent protocol, the baselines (``silent``, ``talk``, ``oracle``, ``vad``), the
  streaming Moshi, checkpoint loading, :func:`~.policies.make_agent`;
- :mod:`.training`: the losses, teacher-forced log-probs, the RLlib pieces (module, env runner,
  learner connector, learners, algorithm), the driver, checkpoints, the train config;
- :mod:`.evaluation`: ``duplexgym eval`` (the Full-Duplex-Bench table) and its export, rollouts,
  replay and rescoring, scoring a policy on fixed segments.

``training`` and ``evaluation`` both build on ``policies`` and never on each other.
"""
