"""The seed paper's recipe as shipped configs: configs/paper_moshi.yaml and paper_personaplex.yaml hold
PAPER.md's values verbatim, and ``train --dry-run`` prints the plan of a run without Ray and without
writing anything; the plan's expectations agree with the samplers that will run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from duplexgym.agents.training.config import TrainConfigError, load_train_config
from duplexgym.agents.training.plan import _expected_context_frames, training_plan
from duplexgym.agents.training.schedule import context_limit_s, draw_context_s
from duplexgym.constants import FRAME_S

from tests.conftest import REPO

#: PAPER.md, "Objective and optimisation" and "Context", as config fields.
PAPER_VALUES = {
    "algorithm": "grpo", "group_size": 16, "segments_per_iteration": 32, "iterations": 100, "epochs": 1,
    "minibatch_size": 1, "lr": 2e-7, "kl": "exact", "kl_coef": 0.01, "clip_eps": 0.2, "update_streams": "text",
    "normalization": "sequence", "advantage": "decoupled", "axes": ("pause", "turn", "backchannel", "interruption"),
}
PAPER_OPTIMIZER = {"name": "adamw", "betas": (0.9, 0.95), "weight_decay": 0.1, "grad_clip": 2.0, "schedule": "cosine"}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny Moshi saved in Kyutai's layout: what a user's checkpoint folder looks like."""
    from duplexgym.agents.policies.checkpoint import load_models, save_checkpoint

    models = load_models("tiny")
    return save_checkpoint(models.lm, models.mimi, models.text_tokenizer, tmp_path_factory.mktemp("ckpt") / "moshi",
                           models.lm_kwargs)


def filled(name: str, corpus, checkpoint, tmp_path) -> tuple[dict, str]:
    """configs/NAME with the blanks filled: the checkpoint, a built corpus, an out folder in tmp."""
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    raw.update(model=str(checkpoint), corpus=str(corpus), out=str(tmp_path / "out"),
               rewards=str(REPO / raw["rewards"]))
    if raw.get("prompt") is not None:  # PersonaPlex: its layout and a voice recording
        from duplexgym.agents.policies.personaplex import save_tiny_personaplex

        import soundfile as sf

        raw["model"] = f"personaplex:{save_tiny_personaplex(tmp_path / 'personaplex')}"
        sf.write(tmp_path / "voice.wav", np.sin(np.arange(72_000) / 9.0).astype(np.float32) * 0.3, 24_000)
        raw["prompt"]["voice"] = str(tmp_path / "voice.wav")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return raw, str(path)


@pytest.mark.parametrize("name, lead_in", [("paper_moshi.yaml", 3.0), ("paper_personaplex.yaml", 0.0)])
def test_paper_configs_hold_the_papers_values(name, lead_in, small_corpus, tiny_checkpoint, tmp_path):
    _, path = filled(name, small_corpus, tiny_checkpoint, tmp_path)
    cfg = load_train_config(path)
    for field, value in PAPER_VALUES.items():
        assert getattr(cfg, field) == value, field
    for field, value in PAPER_OPTIMIZER.items():
        assert getattr(cfg.optimizer, field) == value, f"optimizer.{field}"
    assert (cfg.context.p, cfg.context.max_s, cfg.context.schedule) == (0.5, 30.0, "linear")
    assert (cfg.sampling.temp_text, cfg.sampling.temp, cfg.sampling.top_k) == (0.7, 0.8, 250)
    assert cfg.lead_in_silence_s == lead_in
    spec = cfg.rewards
    assert spec["activity"]["reader"] == "vad"
    assert set(spec["terms"]) == {"paper_pause", "paper_turn", "paper_backchannel", "paper_interruption", "paper_judge"}
    assert spec["terms"]["paper_judge"]["params"]["backend"] == "openai"
    assert cfg.gradient_steps_per_iteration == 16 * 32


def test_the_blank_is_named(small_corpus, tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "paper_moshi.yaml").read_text())
    raw.update(corpus=str(small_corpus), out=str(tmp_path / "out"), rewards=str(REPO / raw["rewards"]))
    path = tmp_path / "unfilled.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TrainConfigError, match=r"model: .*PATH/TO/YOUR/MOSHI/CHECKPOINT"):
        load_train_config(path)


def test_context_needs_a_corpus_that_stores_it(tmp_path):
    from duplexgym.corpora.build import BuildOptions, build_corpus

    corpus = tmp_path / "no-context"
    build_corpus("synthetic", corpus, BuildOptions(dialogues=2, codec="tiny", context_s=0.0))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"corpus": str(corpus), "out": str(tmp_path / "out"), "axes": ["turn"],
                                    "context": {"p": 0.5, "max_s": 30.0}}))
    with pytest.raises(TrainConfigError, match=r"context\.p: .*stores no context.*--context-s"):
        load_train_config(path)


def test_dry_run_prints_the_plan_without_ray_or_files(small_corpus, tiny_checkpoint, tmp_path):
    _, path = filled("paper_moshi.yaml", small_corpus, tiny_checkpoint, tmp_path)
    guard = ("import importlib.abc, sys\n"
             "class NoRay(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'ray' or name.startswith('ray.'):\n"
             "            raise ImportError('dry run imported Ray')\n"
             "sys.meta_path.insert(0, NoRay())\n"
             "from duplexgym import cli\n"
             "sys.exit(cli.main(sys.argv[1:]))\n")
    for extra in ([], ["--json"]):
        proc = subprocess.run([sys.executable, "-c", guard, "train", "--config", path, "--dry-run", *extra],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert not (tmp_path / "out").exists()
    plan = json.loads(proc.stdout)
    text = subprocess.run([sys.executable, "-c", guard, "train", "--config", path, "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300).stdout
    assert "100 iterations x 32 groups of 16 = 512 rollouts per iteration (51200 in all)" in text
    assert "512 gradient steps per iteration (1 epoch(s), minibatch 1): 51200 in all" in text
    assert "optimizer adamw lr 2e-07 (cosine" in text and "kl exact x 0.01" in text and "reader vad" in text
    assert plan["gradient_steps_total"] == 51200 and plan["rollouts_total"] == 51200
    assert plan["lead_in_frames"] == round(3.0 / FRAME_S)
    assert set(plan["axes"]) == {"pause", "turn", "backchannel", "interruption"}
    assert plan["axes"]["turn"]["terms"] == {"paper_turn": 1.0, "paper_judge": 1.0}
    assert plan["axes"]["pause"]["judge_terms"] == [] and plan["axes"]["turn"]["judge_terms"] == ["paper_judge"]
    # judge calls: every turn and interruption rollout, half the mix
    assert plan["judge_calls_per_iteration"] == pytest.approx(512 * 0.5)
    # context: none at the first iteration (l_max = 0), some at the last
    assert plan["context"]["expected_frames_first"] == 0.0 < plan["context"]["expected_frames_last"]


def test_plan_expectations_match_the_samplers(small_corpus, tmp_path):
    """The plan's expected context and frame counts against draws of the samplers the runners use."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"corpus": str(small_corpus), "out": str(tmp_path / "out"),
                                    "axes": ["turn", "pause"], "axis_weights": {"turn": 3.0, "pause": 1.0},
                                    "segments_per_iteration": 4, "group_size": 4, "iterations": 5,
                                    "context": {"p": 0.5, "max_s": 6.0}, "lead_in_silence_s": 1.0}))
    cfg = load_train_config(path)
    plan = training_plan(cfg)
    assert plan["axes"]["turn"]["share"] == pytest.approx(0.75)
    from duplexgym.envs.corpus import ReplayCorpus, SegmentSampler

    corpus = ReplayCorpus(small_corpus)
    sampler = SegmentSampler(corpus, cfg.axes, cfg.axis_weights)
    rng = np.random.default_rng(0)
    limit = context_limit_s(4, 5, 6.0)
    frames = []
    for _ in range(20000):
        seg = sampler.draw(rng)
        ctx = min(int(np.floor(draw_context_s(rng, 0.5, limit) / FRAME_S + 1e-9)), int(round(seg.context_s / FRAME_S)))
        frames.append(seg.n_frames + plan["lead_in_frames"] + ctx)
    per_rollout = plan["frames_per_iteration"]["last"] / plan["rollouts_per_iteration"]
    assert np.mean(frames) == pytest.approx(per_rollout, rel=0.02)
    # the closed form of E[min(U * limit, stored)]
    stored = np.array([10, 40, 200])
    draws = np.minimum(np.random.default_rng(1).random(200000)[:, None] * 75.0, stored[None, :])
    assert _expected_context_frames(stored, 1.0, 75.0 * FRAME_S) == pytest.approx(draws.mean(), rel=0.01)
