"""Reading a built algorithm's weights and optimizer state: what tests and benchmarks check updates,
weight syncs and restores with."""

from __future__ import annotations

import numpy as np
from duplexgym.agents.training.checkpoints import (
    MODULE_ID,
    on_learners,
    sampling_runners,
)


def text_weights(module) -> dict[str, np.ndarray]:
    """Copies of an RLModule's (or LM's) text weights, to check that updates and syncs happened."""
    lm = getattr(module, "lm", module)
    return {n: p.detach().cpu().numpy().copy() for n, p in lm.named_parameters()
            if n in ("text_emb.weight", "text_linear.weight")}


def runner_text_weights(algo) -> list[dict[str, np.ndarray]]:
    """:func:`text_weights` of the LM each env runner's MoshiAgent samples with (remote runners,
    else the local one); asserts the agent streams with the runner's RLModule LM."""

    def read(runner):
        module = runner._module()
        if runner._agent is not None:
            assert runner._agent.lm is module.lm, "the sampler must stream with the RLModule's LM"
        return text_weights(module)

    return sampling_runners(algo, read)


def learner_text_weights(algo) -> dict[str, np.ndarray]:
    """:func:`text_weights` of the (first) learner's LM."""
    return on_learners(algo, lambda learner: text_weights(learner.module[MODULE_ID].unwrapped()))[0]


def learner_lm(algo):
    """The local learner's trained LM (the object itself)."""
    return algo.learner_group._learner.module[MODULE_ID].unwrapped().lm


def learner_optimizer_state(algo) -> dict:
    """The (first) learner's optimizer state (numpy), as RLlib checkpoints it."""
    return on_learners(algo, lambda learner: learner._get_optimizer_state())[0]


def learner_lm_state(learner) -> dict:
    """Run on every learner (sharded tensors are gathered, a collective): ``{"state": the whole LM
    state on CPU, "sharded": the names of the tensors this learner holds sharded}``."""
    from duplexgym.agents.training.sharding import full_tensor, is_sharded

    state = learner.module[MODULE_ID].unwrapped().lm.state_dict()
    return {"sharded": sorted(k for k, v in state.items() if is_sharded(v)),
            "state": {k: full_tensor(v).detach().cpu().clone() for k, v in state.items()}}
