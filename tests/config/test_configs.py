"""Every shipped config trains, evaluates and fine-tunes end to end (on tiny embedded data)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, TINY_OVERRIDES

from metafew import engine
from metafew.checkpoints import load_checkpoint
from metafew.config_load import from_dict, merge, read_yaml_file, to_dict
from metafew.data import load_data
from metafew.evaluation import evaluate
from metafew.finetuning import finetune, predict_proba
from metafew.learner import build_learner, load_params
from metafew.runs import create_run
from metafew.tasks import EpisodeSampler

CONFIGS = sorted(REPO.glob("configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains_evaluates_and_finetunes_on_tiny_data(path: Path, tmp_path: Path) -> None:
    raw = read_yaml_file(path)
    raw.pop("data", None)  # every config runs here on the tiny embedded glyphs
    tiny = merge(
        TINY_OVERRIDES,
        {
            "train": {"runs_dir": str(tmp_path), "iterations": 2, "checkpoint_every": 1},
            "finetune": {"steps": 3},  # the recipe runs; its 100 default steps cost minutes on ResNet-12
        },
    )
    keep = {k: v for k, v in raw.get("algorithm", {}).items() if k != "inner_steps"}
    cfg = from_dict(
        merge(merge(to_dict(from_dict(raw)), tiny), {"algorithm": keep, "data": TINY_OVERRIDES["data"]})
    )
    cfg.algorithm.eval_inner_steps = min(cfg.algorithm.eval_inner_steps, 3)
    data = load_data(cfg.data)
    run = create_run(cfg, "cpu")
    engine.train(cfg, data, run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["params"].values())
    learner = build_learner(cfg, torch.device("cpu"), state["train_classes"])
    load_params(learner, state["params"])
    sampler = EpisodeSampler(data.novel, cfg.task.ways, cfg.task.shots, 3, seed=1)
    accs = evaluate(learner, sampler, 4, cfg.algorithm.eval_inner_steps, None, cfg.eval.norm)
    assert accs.shape == (4,) and np.isfinite(accs).all()
    model, _ = finetune(cfg, learner, data.novel)
    probs = predict_proba(learner, model, data.novel.images)
    assert all(math.isclose(float(s), 1.0, abs_tol=1e-4) for s in probs.sum(-1))
