"""Training checkpoints without pickles, ``--resume``, and the exported policy.

A checkpoint folder (``OUT/checkpoints/iter_XXXX``, ``XXXX`` = iterations done) holds::

    checkpoint.json        format and version, iterations done, the resolved train config, every
                           sampling env runner's segment schedule (numpy bit-generator state and
                           counters), each optimizer's hyper-parameters and parameter names
    module.safetensors     the learner's trained weights (the policy LM; PPO's value head); the
                           frozen reference LM is not stored: it is rebuilt from the config's
                           ``model`` as at the start of training
    optimizer.safetensors  each optimizer's per-parameter state (``{optimizer}/{parameter}/{key}``:
                           step, Adam's first and second moments)

Nothing in it is a pickle, and :func:`restore_training_checkpoint` reads only these three files:
the algorithm is rebuilt from the config and given that state. A checkpoint in RLlib's own format
(``algo.save_to_path``: ``*.pkl`` files, which can run code when loaded) is refused unless the
caller passes ``trust_pickled=True`` (``duplexgym train --resume DIR --trust-pickled-checkpoint``).
A checkpoint is written into a temporary folder and renamed into place once complete, so an
interrupted save never leaves a folder that looks like a checkpoint.

Ray-free here: reading and checking a checkpoint (:func:`read_checkpoint_meta`,
:func:`check_resume`), so ``duplexgym train`` validates ``--resume`` before Ray starts. The save and
restore functions take a built algorithm and run their learner part on the learner (local or remote).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CHECKPOINTS_NAME = "checkpoints"
META_NAME = "checkpoint.json"
MODULE_WEIGHTS_NAME = "module.safetensors"
OPTIMIZER_STATE_NAME = "optimizer.safetensors"
FORMAT = "duplexgym-training-checkpoint"
FORMAT_VERSION = 1
#: What RLlib's own checkpoints hold (refused without ``trust_pickled``).
RLLIB_MARKER = "rllib_checkpoint.json"
#: The runner schedules beside an RLlib-format checkpoint written by duplexgym before format 1.
LEGACY_RUNNER_STATE_NAME = "grpo_runners.json"
#: Config fields a resumed run must share with its checkpoint.
RESUME_KEYS = ("algorithm", "corpus", "axes", "axis_weights", "segments", "group_size", "segments_per_iteration",
               "env_runners", "seed", "env", "conversation", "trainable", "lora", "dtype", "model", "prompt")
#: RLlib's id of the single module every algorithm here trains.
MODULE_ID = "default_policy"


class CheckpointFormatError(ValueError):
    """A ``--resume`` folder that is not a usable training checkpoint; the message says why and what to do."""


def checkpoint_path(out: str | Path, iterations_done: int) -> Path:
    """``OUT/checkpoints/iter_XXXX``."""
    return Path(out) / CHECKPOINTS_NAME / f"iter_{iterations_done:04d}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint of a run folder with the most iterations done, or None."""
    found = []
    for folder in (Path(out) / CHECKPOINTS_NAME).glob("iter_*"):
        if (folder / META_NAME).is_file() or (folder / LEGACY_RUNNER_STATE_NAME).is_file():
            try:
                found.append((int(folder.name[len("iter_"):]), folder))
            except ValueError:
                continue
    return max(found)[1] if found else None


def is_rllib_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / RLLIB_MARKER).is_file() or any(path.glob("*.pkl"))


def read_checkpoint_meta(path: str | Path, trust_pickled: bool = False) -> dict:
    """The metadata of a training checkpoint folder: ``iterations_done``, ``runners``, ``config``.

    Raises :class:`CheckpointFormatError` naming the file for anything else: a folder that is no
    checkpoint, an RLlib-format (pickled) checkpoint without ``trust_pickled``, unreadable or
    incomplete metadata."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointFormatError(f"resume: {path} is not a folder; pass a checkpoint folder OUT/checkpoints/iter_XXXX")
    meta_file = path / META_NAME
    if meta_file.is_file():
        meta = _read_json(meta_file)
        if meta.get("format") != FORMAT:
            raise CheckpointFormatError(f"resume: {meta_file}: not a duplexgym training checkpoint (format "
                                        f"{meta.get('format')!r}, expected {FORMAT!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise CheckpointFormatError(f"resume: {meta_file}: checkpoint format version {meta.get('version')!r}, "
                                        f"this duplexgym reads version {FORMAT_VERSION}")
        for name in (MODULE_WEIGHTS_NAME, OPTIMIZER_STATE_NAME):
            if not (path / name).is_file():
                raise CheckpointFormatError(f"resume: {path}: {name} is missing (an incomplete checkpoint)")
        meta["rllib_format"] = False  # decided here, never by the file: a planted key cannot ask for unpickling
    elif is_rllib_checkpoint(path):
        if not trust_pickled:
            raise CheckpointFormatError(
                f"resume: {path} is a checkpoint in RLlib's own format, whose .pkl files can run arbitrary code "
                "when loaded; duplexgym does not open them unless you trust where the folder came from and pass "
                "--trust-pickled-checkpoint")
        legacy = path / LEGACY_RUNNER_STATE_NAME
        if not legacy.is_file():
            raise CheckpointFormatError(f"resume: {path}: an RLlib checkpoint without {LEGACY_RUNNER_STATE_NAME} "
                                        "(the env runners' segment schedules); it was not written by duplexgym")
        meta = _read_json(legacy)
        meta["rllib_format"] = True
    else:
        raise CheckpointFormatError(f"resume: {path} is not a training checkpoint (no {META_NAME}; checkpoints are "
                                    "written to OUT/checkpoints/iter_XXXX)")
    for key, kind in (("iterations_done", int), ("runners", list)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CheckpointFormatError(f"resume: {meta_file if meta_file.is_file() else legacy}: "
                                        f"{key!r} is missing or not a{'n integer' if kind is int else ' list'}")
    return meta


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"resume: {path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"resume: {path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_resume(cfg, resume: str | Path, trust_pickled: bool = False) -> int:
    """Checks a ``--resume`` folder against ``cfg`` (a TrainConfig) without Ray; returns its iterations done."""
    path = Path(resume).expanduser().resolve()
    meta = read_checkpoint_meta(path, trust_pickled)
    saved = meta.get("config") or {}
    mine = cfg.to_dict()
    for key in RESUME_KEYS:
        if key in saved and saved[key] != mine[key]:
            raise CheckpointFormatError(f"resume: {key}: the checkpoint was trained with {saved[key]!r}, the config "
                                        f"says {mine[key]!r}; they must be equal to resume")
    done = meta["iterations_done"]
    if done >= cfg.iterations:
        raise CheckpointFormatError(f"resume: the checkpoint {path} has {done} iteration(s) done; iterations: "
                                    f"{cfg.iterations} leaves nothing to train (iterations counts from the start of "
                                    "training)")
    return done


# ------------------------------------------------------------------------------------ saving


def sampling_runners(algo, fn):
    """``fn`` on every env runner that samples: the remote ones, else the local one."""
    return algo.env_runner_group.foreach_env_runner(fn, local_env_runner=not algo.sampling_remote())


def on_learners(algo, fn) -> list:
    """``fn(learner)`` on every learner of ``algo`` (the local one, or each remote one), its results
    in order; an error on a learner is raised here."""
    out = []
    for result in algo.learner_group.foreach_learner(fn):
        if not result.ok:
            raise result.get()
        out.append(result.get())
    return out


def learner_state(learner) -> tuple[dict, dict]:
    """``(tensors, meta)`` of a learner: its module's trained weights (``module/{name}``) and every
    optimizer's state (``optimizer/{optimizer}/{parameter}/{key}``), CPU tensors; ``meta`` the
    optimizers' hyper-parameters with parameter names. Runs on the learner."""
    import torch

    from duplexgym.agents.training.sharding import full_tensor, is_sharded

    module = learner.module[MODULE_ID].unwrapped()
    state = module.checkpoint_state()
    sharded = any(is_sharded(v) for v in state.values())
    keep = not sharded or torch.distributed.get_rank() == 0  # sharded: every learner gathers, the first keeps

    def whole(v):
        v = full_tensor(v).detach().to("cpu").contiguous()  # a collective when sharded: on every learner
        return v.clone() if keep else None

    tensors = {f"module/{k}": whole(v) for k, v in state.items()}
    names = {id(p): n for n, p in module.named_parameters()}
    optimizers = {}
    for opt_name, optim in learner._named_optimizers.items():
        params = [p for group in optim.param_groups for p in group["params"]]
        state = optim.state_dict()
        groups = []
        for group in state["param_groups"]:
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": [names[id(params[i])] for i in group["params"]]})
        for index, per_param in state["state"].items():
            for key, value in per_param.items():
                tensor = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optimizer/{opt_name}/{names[id(params[index])]}/{key}"] = whole(tensor)
        optimizers[opt_name] = {"param_groups": _json_ready(groups)}
    if not keep:
        tensors = {}
    return tensors, {"optimizers": optimizers, "steps": int(getattr(learner, "gradient_steps", 0))}


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def save_training_checkpoint(algo, path: str | os.PathLike, iterations_done: int, config: dict) -> Path:
    """Write the checkpoint folder ``path`` (module docstring) of ``algo`` after ``iterations_done``
    iterations of the run ``config`` (``TrainConfig.to_dict()``). Written beside ``path`` first and
    renamed into place; an existing folder of the same name is replaced only once the new one is
    complete."""
    from duplexgym.agents.policies.checkpoint import save_safetensors

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = on_learners(algo, learner_state)
    tensors, meta = next((r for r in results if r[0]), results[0])  # sharded learners: the first gathered it all
    runners = sampling_runners(algo, lambda r: r.sampler_state())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_safetensors({k[len("module/"):]: v for k, v in tensors.items() if k.startswith("module/")},
                         tmp / MODULE_WEIGHTS_NAME)
        save_safetensors({k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")},
                         tmp / OPTIMIZER_STATE_NAME)
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "iterations_done": int(iterations_done),
               "config": config, "runners": runners, **meta}
        (tmp / META_NAME).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ------------------------------------------------------------------------------------ restoring


def apply_learner_state(learner, tensors: dict, meta: dict) -> None:
    """Load :func:`learner_state`'s output into a freshly built learner (runs on the learner; a
    sharded learner keeps its own part of each tensor)."""
    from duplexgym.agents.training.sharding import shard_like

    module = learner.module[MODULE_ID].unwrapped()
    module.load_checkpoint_state({k[len("module/"):]: v for k, v in tensors.items() if k.startswith("module/")})
    names = {id(p): n for n, p in module.named_parameters()}
    saved = meta.get("optimizers", {})
    if set(saved) != set(learner._named_optimizers):
        raise CheckpointFormatError(f"resume: the checkpoint has optimizers {sorted(saved)}, this run builds "
                                    f"{sorted(learner._named_optimizers)}")
    for opt_name, optim in learner._named_optimizers.items():
        params = [p for group in optim.param_groups for p in group["params"]]
        index = {names[id(p)]: i for i, p in enumerate(params)}
        groups = saved[opt_name]["param_groups"]
        if [n for g in groups for n in g["params"]] != [names[id(p)] for p in params]:
            raise CheckpointFormatError(f"resume: optimizer {opt_name!r}: the checkpoint's parameters differ from "
                                        "this run's model (another model or trainable set?)")
        state: dict[int, dict] = {}
        prefix = f"optimizer/{opt_name}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                pname, _, field = key[len(prefix):].rpartition("/")
                param = params[index[pname]]
                state.setdefault(index[pname], {})[field] = (value if field == "step" or value.dim() == 0
                                                             else shard_like(param, value.to(param.device)))
        optim.load_state_dict({"state": state, "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in groups]})
        for group, want in zip(optim.param_groups, groups):  # keep python scalars python scalars
            for k, v in want.items():
                if k != "params" and isinstance(v, list):
                    group[k] = tuple(v)
    if hasattr(learner, "gradient_steps"):
        learner.gradient_steps = int(meta.get("steps", 0))


def restore_training_checkpoint(algo, path: str | os.PathLike, trust_pickled: bool = False) -> int:
    """Restore ``algo`` (built from the same config) from a checkpoint folder; returns the
    iterations done. Reads only :data:`META_NAME` and the two safetensors files, unless the folder
    is in RLlib's format and ``trust_pickled`` (then RLlib's ``restore_from_path`` unpickles it)."""
    path = Path(path).resolve()
    meta = read_checkpoint_meta(path, trust_pickled)
    states = {int(st["worker_index"]): st for st in meta["runners"]}
    n_sampling = len(sampling_runners(algo, lambda r: r.worker_index))
    if len(states) != n_sampling:
        raise CheckpointFormatError(f"resume: the checkpoint has {len(states)} env runner state(s); this run samples "
                                    f"on {n_sampling}; resume with the same env_runners")
    if meta["rllib_format"]:
        if not trust_pickled:  # read_checkpoint_meta refused already; kept next to the call that unpickles
            raise CheckpointFormatError(f"resume: {path}: RLlib's format needs --trust-pickled-checkpoint")
        algo.restore_from_path(str(path))  # trusted by the caller (--trust-pickled-checkpoint): unpickles
    else:
        from safetensors.torch import load_file

        tensors = {f"module/{k}": v for k, v in load_file(str(path / MODULE_WEIGHTS_NAME)).items()}
        tensors.update({f"optimizer/{k}": v for k, v in load_file(str(path / OPTIMIZER_STATE_NAME)).items()})
        on_learners(algo, lambda learner: apply_learner_state(learner, tensors, meta))
    algo.sync_weights()

    def apply(runner, states=states):
        state = states.get(int(runner.worker_index))
        if state is None:
            raise CheckpointFormatError(f"resume: the checkpoint holds no segment schedule for env runner "
                                        f"{runner.worker_index} (it has {sorted(states)}); resume with the same "
                                        "env_runners")
        runner.set_sampler_state(state)
        return True

    sampling_runners(algo, apply)
    algo.runner_states.update(states)
    algo._iteration = int(meta["iterations_done"])
    return int(meta["iterations_done"])


# ------------------------------------------------------------------------------------ the policy


def export_policy(algo, out_dir: str | os.PathLike, merged_dir: str | os.PathLike | None = None) -> Path:
    """The learner's LM as a moshi-loadable checkpoint folder (Kyutai layout, with the trained model's
    Mimi and text tokenizer): ``make_agent("moshi:" + out_dir, env)`` and ``duplexgym eval --agent
    moshi:DIR`` load it. With ``trainable: lora`` the folder holds the base weights and moshi's
    own LoRA file (``lora.safetensors``; ``lora: true`` in config.json: ``loaders.get_moshi_lm(...,
    lora_weights=)`` applies it); ``merged_dir`` also gets a plain checkpoint with the adapters merged."""
    import torch

    from duplexgym.agents.policies.checkpoint import _empty_lm, save_checkpoint, with_lm
    from duplexgym.agents.training import adapters
    from duplexgym.agents.training.sharding import full_tensor, is_sharded

    def export(learner):
        module = learner.module[MODULE_ID].unwrapped()
        models = with_lm(module.model_source(), module.lm)
        prompt = module.prompt(models)
        prompt = None if prompt is None else prompt.to_config()  # PersonaPlex: the prompts it was trained with
        if module.trainable != "lora":
            own = models.lm.state_dict()
            state = {k: full_tensor(v).detach().to("cpu") for k, v in own.items()}
            if any(is_sharded(v) for v in own.values()) and torch.distributed.get_rank() != 0:
                return None  # sharded: every learner gathered (a collective), the first writes
            return save_checkpoint(state, models.mimi, models.text_tokenizer, out_dir, models.lm_kwargs,
                                   prompt=prompt)
        lora = module.train_settings()["lora"]  # the validated LoraConfig, defaults filled in
        rank, scaling = int(lora["rank"]), float(lora["scaling"])
        tensors = adapters.lora_file_tensors(module.lm, _empty_lm(models.lm_kwargs), rank)
        folder = save_checkpoint(adapters.base_state(module.lm), models.mimi, models.text_tokenizer, out_dir,
                                 models.lm_kwargs, lora={"tensors": tensors, "rank": rank, "scaling": scaling},
                                 prompt=prompt)
        if merged_dir is not None:
            save_checkpoint(adapters.merged_state(module.lm), models.mimi, models.text_tokenizer, merged_dir,
                            models.lm_kwargs, prompt=prompt)
        return folder

    return next(folder for folder in on_learners(algo, export) if folder is not None)
