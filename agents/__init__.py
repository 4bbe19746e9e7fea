"""duplexgym.agents: policies that act inside the envs (baselines now; Moshi and training next)."""
