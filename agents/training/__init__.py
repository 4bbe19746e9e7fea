"""Training a Moshi policy with GRPO or PPO on Ray RLlib's new API stack.

Pure pieces (no Ray): :mod:`.config` (the train config), :mod:`.losses` (advantages, the clipped
surrogate, KL estimators, GAE), :mod:`.logprobs` (teacher-forced log-probs), :mod:`.batch` (the
padded learner batch), :mod:`.checkpoints` (checkpoint format, resume checks), :mod:`.plots`.

The RLlib pieces, shared by both algorithms: :mod:`.module` (the RLModule: LM + frozen reference),
:mod:`.runner` (group sampling with one batched streaming Moshi), :mod:`.connector` (the learner
connector), :mod:`.learner` (GRPO's learner), :mod:`.ppo` (PPO's value head, GAE and learner),
:mod:`.algorithm` (the algorithm and its config). :mod:`.driver` runs a config on Ray;
:mod:`.run` is ``duplexgym train``'s run folder.
"""
