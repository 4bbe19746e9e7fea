"""What a training config will do, computed from the config and its corpus without Ray or a model:
``duplexgym train --config CONFIG --dry-run``.

The plan: the segments the run draws from (per axis, with the mix of ``axis_weights``), groups and
rollouts per iteration, optimizer steps (the learning-rate schedule's length), the frames the model
generates (segment, lead-in and expected context frames; 80 ms each), the reward terms each axis is
scored with and the judge calls they make, and the context curriculum. Expected values are exact
expectations under the config's sampling (axis mix, then a uniform segment; context ``p`` and the
uniform length up to the iteration's limit, cut to what the corpus stores), not a simulation.
"""

from __future__ import annotations

import numpy as np

from duplexgym.agents.training.config import TrainConfig, make_live_env
from duplexgym.agents.training.schedule import context_limit_s
from duplexgym.constants import AXES, FRAME_S

#: Terms that ask a judge per rollout (an LLM server with ``backend: openai``).
JUDGE_TERMS = ("quality", "paper_judge")


def _expected_context_frames(stored_frames: np.ndarray, p: float, limit_s: float) -> float:
    """E[context frames] of one rollout: with probability ``p`` a length uniform in ``[0, limit_s]``,
    cut to each segment's stored context (``stored_frames``, one value per segment, drawn uniformly)."""
    if p <= 0 or limit_s <= 0 or not len(stored_frames):
        return 0.0
    limit = limit_s / FRAME_S
    # E[min(U * limit, s)] for U uniform in [0, 1]: s - s^2 / (2 limit) when s < limit, else limit / 2
    s = np.minimum(stored_frames.astype(np.float64), limit)
    return float(p * np.mean(s - s * s / (2 * limit)))


def training_plan(cfg: TrainConfig) -> dict:
    """The plan of ``cfg`` (module docstring) as a JSON-able dict."""
    from duplexgym.envs.corpus import ReplayCorpus, SegmentSampler
    from duplexgym.rewards.scoring import applicable_terms
    from duplexgym.rewards.spec import default_spec, load_spec

    corpus = ReplayCorpus(cfg.corpus)
    spec = load_spec(cfg.rewards) if cfg.rewards is not None else default_spec("text")
    if cfg.env == "conversation":
        return _with_common(cfg, corpus, spec, *_live_plan(cfg, corpus, spec))
    sampler = SegmentSampler(corpus, cfg.axes, cfg.axis_weights, cfg.segments)
    share = dict(zip(sampler.axes, (float(p) for p in sampler.axis_p)))
    groups, episodes = cfg.segments_per_iteration, cfg.episodes_per_iteration
    lead_frames = int(round(cfg.lead_in_silence_s / FRAME_S))
    axes, frames_per_iter, judge_per_iter = {}, [], 0.0
    for axis in sampler.axes:
        segs = sampler.by_axis[axis]
        n_frames = np.array([s.n_frames for s in segs], np.int64)
        stored = np.array([int(round((s.context_s or 0.0) / FRAME_S)) for s in segs], np.int64)
        terms = applicable_terms(axis, spec)
        weighted = {name: t.weight for name, t in terms.items()}
        judged = [name for name in terms if name in JUDGE_TERMS and getattr(terms[name].params, "backend", "") == "openai"]
        axes[axis] = {"segments": len(segs), "share": share[axis], "groups_per_iteration": share[axis] * groups,
                      "segment_s": {"min": float(n_frames.min() * FRAME_S), "mean": float(n_frames.mean() * FRAME_S),
                                    "max": float(n_frames.max() * FRAME_S)},
                      "context_stored_s": {"min": float(stored.min() * FRAME_S), "max": float(stored.max() * FRAME_S)},
                      "terms": weighted, "judge_terms": judged}
        judge_per_iter += share[axis] * episodes * len(judged)
    iterations, per_iter_ctx = cfg.iterations, []
    for it in range(iterations):
        limit = context_limit_s(it, iterations, cfg.context.max_s, cfg.context.schedule) if cfg.context.p > 0 else 0.0
        seg_f = ctx_f = 0.0
        for axis in sampler.axes:
            segs = sampler.by_axis[axis]
            stored = np.array([int(round((s.context_s or 0.0) / FRAME_S)) for s in segs], np.int64)
            seg_f += share[axis] * float(np.mean([s.n_frames for s in segs]))
            ctx_f += share[axis] * _expected_context_frames(stored, cfg.context.p, limit)
        per_iter_ctx.append(ctx_f)
        frames_per_iter.append(episodes * (seg_f + lead_frames + ctx_f))
    return _with_common(cfg, corpus, spec, axes, frames_per_iter, per_iter_ctx, judge_per_iter)


def _live_plan(cfg: TrainConfig, corpus, spec) -> tuple:
    """``env: conversation``: one entry (``conversation``) for the live dialogues; each rollout
    generates at most ``max_s`` (a dialogue ends earlier when the user has nothing more to say), so
    the frames are upper bounds. Judge calls: the transcript judge, once per rollout."""
    live = cfg.conversation
    env = make_live_env(corpus, cfg.rewards, live.env_kwargs())
    terms = {name: t.weight for name, t in spec.terms.items() if name in AXES}  # what live scoring applies
    judged = 1 if live.judge is not None else 0
    entry = {"segments": len(env.dialogue_ids), "share": 1.0, "groups_per_iteration": float(cfg.segments_per_iteration),
             "segment_s": {"min": 0.0, "mean": float(env.max_s), "max": float(env.max_s)}, "terms": terms,
             "judge_terms": ["judge"] if judged else [], "user": live.user, "max_s": float(env.max_s),
             "max_turns": live.max_turns}
    env.close()
    frames = [float(cfg.episodes_per_iteration * env.max_frames)] * cfg.iterations
    return {"conversation": entry}, frames, [0.0] * cfg.iterations, float(cfg.episodes_per_iteration * judged)


def _with_common(cfg: TrainConfig, corpus, spec, axes: dict, frames_per_iter: list, per_iter_ctx: list,
                 judge_per_iter: float) -> dict:
    """The plan's dict: the per-axis entries and frame counts, with everything the config fixes."""
    iterations, episodes, groups = cfg.iterations, cfg.episodes_per_iteration, cfg.segments_per_iteration
    lead_frames = int(round(cfg.lead_in_silence_s / FRAME_S))
    steps = cfg.gradient_steps_per_iteration
    total_frames = float(sum(frames_per_iter))
    return {
        "algorithm": cfg.algorithm, "model": cfg.model, "corpus": str(corpus.path), "out": cfg.out, "env": cfg.env,
        "rules": corpus.info.get("rules", None if corpus.info.get("format") == "fdb1" else "duplexgym"),
        "axes": axes,
        "iterations": iterations,
        "groups_per_iteration": groups, "group_size": cfg.group_size, "rollouts_per_iteration": episodes,
        "rollouts_total": episodes * iterations,
        "gradient_steps_per_iteration": steps, "gradient_steps_total": steps * iterations,
        "minibatch_size": cfg.minibatch_size, "epochs": cfg.epochs,
        "optimizer": {**cfg.optimizer.model_dump(), "lr": cfg.lr},
        "loss": {"advantage": getattr(cfg, "advantage", None), "kl": cfg.kl, "kl_coef": cfg.kl_coef,
                 "clip_eps": cfg.clip_eps, "normalization": cfg.normalization, "update_streams": cfg.update_streams},
        "reader": spec.activity.reader,
        "trainable": cfg.trainable, "lora": None if cfg.lora is None else cfg.lora.model_dump(mode="json"),
        "dtype": cfg.dtype, "activation_checkpointing": cfg.activation_checkpointing,
        "prompt": _prompt_plan(cfg, axes),
        "devices": {"env_runners": cfg.env_runners, "gpus_per_env_runner": cfg.gpus_per_env_runner,
                    "num_learners": cfg.num_learners, "gpus_per_learner": cfg.gpus_per_learner,
                    "sharding": cfg.sharding, "weight_sync": cfg.weight_sync_path() if cfg.env_runners else None,
                    "weight_backend": cfg.weight_backend() if cfg.weight_sync_path() == "broadcast" else None},
        "lead_in_frames": lead_frames,
        "context": {**cfg.context.model_dump(), "expected_frames_first": per_iter_ctx[0],
                    "expected_frames_last": per_iter_ctx[-1]},
        "frames_per_iteration": {"first": frames_per_iter[0], "last": frames_per_iter[-1]},
        "frames_are_bounds": cfg.env == "conversation",
        "frames_total": total_frames, "generated_s_total": total_frames * FRAME_S,
        "judge_calls_per_iteration": judge_per_iter, "judge_calls_total": judge_per_iter * iterations,
    }


def _prompt_plan(cfg: TrainConfig, axes: dict) -> dict | None:
    """PersonaPlex: the LM steps of its prompt phases before each rollout, per axis (forced, out of the loss)."""
    from duplexgym.agents.policies.checkpoint import is_personaplex, resolve_source

    if not is_personaplex(cfg.model):
        return None
    from duplexgym.agents.policies.personaplex import PersonaPlexPrompt, prompt_lengths

    info = resolve_source(cfg.model)
    given = cfg.prompt.model_dump() if cfg.prompt is not None else {}
    return prompt_lengths(PersonaPlexPrompt(given.get("text"), given.get("voice")), info.tokenizer, list(axes))


def format_plan(plan: dict) -> str:
    """The plan as the lines ``train --dry-run`` prints."""
    lines = [f"plan of a {plan['algorithm']} run: model {plan['model']}, corpus {plan['corpus']}"
             + (f" (rules {plan['rules']})" if plan.get("rules") else "") + f", out {plan['out']}",
             f"  {plan['iterations']} iterations x {plan['groups_per_iteration']} groups of {plan['group_size']} = "
             f"{plan['rollouts_per_iteration']} rollouts per iteration ({plan['rollouts_total']} in all)",
             f"  {plan['gradient_steps_per_iteration']} gradient steps per iteration "
             f"({plan['epochs']} epoch(s), minibatch {plan['minibatch_size'] or 'whole batch'}): "
             f"{plan['gradient_steps_total']} in all"]
    opt = plan["optimizer"]
    lines.append(f"  optimizer {opt['name']} lr {opt['lr']:g} ({opt['schedule']}, warmup {opt['warmup_steps']}, "
                 f"min {opt['min_lr']:g}), betas {tuple(opt['betas'])}, weight decay {opt['weight_decay']:g}, "
                 f"grad clip {opt['grad_clip'] if opt['grad_clip'] is not None else 'none'}")
    loss = plan["loss"]
    lora, dev = plan["lora"], plan["devices"]
    trained = (f"lora r {lora['rank']} x {lora['scaling']:g} on {', '.join(lora['modules'] or ['the default linears'])}"
               if lora else plan["trainable"])
    def on(gpus: float) -> str:
        return f"{gpus:g} GPU each" if gpus else "on CPU"

    sharded = "FSDP: weights, gradients and Adam moments sharded" if dev.get("sharding") == "fsdp" else "DDP"
    learners = f"{dev['num_learners']} learners ({sharded})" if dev["num_learners"] > 1 else (
        "1 remote learner" if dev["num_learners"] else "the driver's learner")
    runners = f"{dev['env_runners']} env runner(s)" if dev["env_runners"] else "sampling in the driver"
    runners += f" {on(dev['gpus_per_env_runner'])}"
    if dev.get("weight_sync"):
        how = f"{dev['weight_backend']} broadcast" if dev["weight_sync"] == "broadcast" else "Ray's object store"
        runners += f" (weights by {how})"
    lines.append(f"  trains {trained} in {plan['dtype']}"
                 + (" with activation checkpointing" if plan.get("activation_checkpointing") else "")
                 + f"; {learners} {on(dev['gpus_per_learner'])}, {runners}")
    if plan.get("prompt"):
        p = plan["prompt"]
        texts = ", ".join(f"{axis} {n}" for axis, n in p["text"].items())
        lines.append(f"  PersonaPlex prompt before each rollout (forced, out of the loss): voice {p['voice']} + "
                     f"silence {p['silence']} + text ({texts}) LM steps")
    lines.append(f"  loss: advantage {loss['advantage']}, kl {loss['kl']} x {loss['kl_coef']:g}, clip "
                 f"{loss['clip_eps']:g}, {loss['normalization']} normalisation, streams {loss['update_streams']}; "
                 f"reader {plan['reader']}")
    def named(terms: dict) -> str:
        return ", ".join(f"{k} x{w:g}" for k, w in terms.items()) or "none"

    if plan.get("env") == "conversation":
        a = plan["axes"]["conversation"]
        lines.append(f"  live dialogues (Conversation-v0, user {a['user']}): {a['segments']} dialogues, up to "
                     f"{a['max_s']:g} s" + (f" or {a['max_turns']} user turns" if a["max_turns"] else "")
                     + f" each; event terms: {named(a['terms'])}" + ("; transcript judge" if a["judge_terms"] else ""))
    else:
        lines.append("  segments per axis (share of groups; segment length mean s; terms):")
        for axis, a in plan["axes"].items():
            lines.append(f"    {axis:<13} {a['segments']:>5} segments, {100 * a['share']:5.1f}% "
                         f"({a['groups_per_iteration']:.2f} groups/iter), {a['segment_s']['mean']:.1f} s; "
                         f"{named(a['terms'])}")
    ctx = plan["context"]
    if ctx["p"] > 0:
        lines.append(f"  context: p {ctx['p']:g}, up to {ctx['max_s']:g} s ({ctx['schedule']}); expected "
                     f"{ctx['expected_frames_first'] * FRAME_S:.2f} s per rollout at the first iteration, "
                     f"{ctx['expected_frames_last'] * FRAME_S:.2f} s at the last")
    if plan["lead_in_frames"]:
        lines.append(f"  lead-in: {plan['lead_in_frames']} frames of user silence per rollout")
    f = plan["frames_per_iteration"]
    bound = "at most " if plan.get("frames_are_bounds") else ""
    lines.append(f"  frames to generate (80 ms): {bound}{f['first']:.0f} at the first iteration, {f['last']:.0f} at the "
                 f"last, {plan['frames_total']:.0f} in all ({plan['generated_s_total'] / 3600:.2f} h of audio)")
    if plan["judge_calls_total"]:
        lines.append(f"  judge calls: {plan['judge_calls_per_iteration']:.1f} per iteration, "
                     f"{plan['judge_calls_total']:.0f} in all (before the cache)")
    return "\n".join(lines)
