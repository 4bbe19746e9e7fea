"""Running agents over corpora and judging them: :mod:`.evaluate` (``duplexgym eval``, the
Full-Duplex-Bench v1 table), :mod:`.export` (the benchmark's folder layout) and :mod:`.timeline`
(the episode picture), :mod:`.rollout` (``duplexgym rollout``), :mod:`.replay` (``replay --check``,
``rescore``), :mod:`.group_scoring` (a policy on fixed segments with fixed sampling seeds)."""
