"""The outer learning-rate schedules and optimizer of the engine, and that training applies them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from metafew import engine
from metafew.config import Config
from metafew.data import load_data
from metafew.learner import build_learner
from metafew.runs import create_run, read_metrics

BETA, T = 0.01, 20


def _cfg(tiny_cfg: Config, schedule: str, low: float = 0.0) -> Config:
    tiny_cfg.train.lr_schedule, tiny_cfg.train.min_lr_fraction = schedule, low
    tiny_cfg.train.outer_lr, tiny_cfg.train.iterations = BETA, T
    return tiny_cfg


def _lrs(cfg: Config) -> list[float]:
    return [engine.outer_lr(cfg, t) for t in range(cfg.train.iterations)]


def test_constant_schedule_is_beta_throughout(tiny_cfg: Config) -> None:
    assert _lrs(_cfg(tiny_cfg, "constant", low=0.5)) == [BETA] * T


@pytest.mark.parametrize("low", [0.0, 0.1, 1.0])
def test_linear_schedule_goes_linearly_from_beta(tiny_cfg: Config, low: float) -> None:
    lrs = _lrs(_cfg(tiny_cfg, "linear", low))
    assert lrs[0] == pytest.approx(BETA, rel=1e-12)
    assert lrs[-1] == pytest.approx(low * BETA + (1 - low) * BETA / T, rel=1e-12)
    steps = [b - a for a, b in itertools.pairwise(lrs)]
    assert steps == pytest.approx([-(1 - low) * BETA / T] * (T - 1), abs=1e-15)
    assert all(b <= a for a, b in itertools.pairwise(lrs))


@pytest.mark.parametrize("low", [0.0, 0.1, 1.0])
def test_cosine_schedule_follows_the_formula(tiny_cfg: Config, low: float) -> None:
    lrs = _lrs(_cfg(tiny_cfg, "cosine", low))
    for t, lr in enumerate(lrs):
        expected = BETA * (low + (1 - low) * (1 + math.cos(math.pi * t / T)) / 2)
        assert lr == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert lrs[0] == pytest.approx(BETA, rel=1e-12)
    assert all(b <= a for a, b in itertools.pairwise(lrs))
    assert min(lrs) >= low * BETA


@pytest.mark.parametrize(("name", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_build_optimizer_covers_every_learner_tensor(tiny_cfg: Config, name: str, cls: type) -> None:
    tiny_cfg.train.optimizer, tiny_cfg.algorithm.name = name, "metasgd"
    learner = build_learner(tiny_cfg, torch.device("cpu"), 5)
    opt = engine.build_optimizer(tiny_cfg, learner.params)
    assert type(opt) is cls
    held = [p for group in opt.param_groups for p in group["params"]]
    assert len(held) == len(learner.params)
    assert {id(p) for p in held} == {id(p) for p in learner.params.values()}
    assert any(k.startswith("algo.lr.") for k in learner.params)
    assert all(group["lr"] == tiny_cfg.train.outer_lr for group in opt.param_groups)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_training_applies_the_schedule(
    tiny_cfg: Config, monkeypatch: pytest.MonkeyPatch, schedule: str
) -> None:
    tiny_cfg.train.lr_schedule, tiny_cfg.train.min_lr_fraction = schedule, 0.2
    tiny_cfg.train.iterations, tiny_cfg.train.val_every = 3, 0
    optimizers: list[torch.optim.Optimizer] = []
    original = engine.build_optimizer

    def build_optimizer(cfg: Config, params: dict) -> torch.optim.Optimizer:
        optimizers.append(original(cfg, params))
        return optimizers[-1]

    monkeypatch.setattr(engine, "build_optimizer", build_optimizer)
    used: list[float] = []  # the step size of the update each iteration made

    def progress(done: int, total: int, record: dict) -> None:
        used.append(optimizers[0].param_groups[0]["lr"])

    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run, progress=progress)
    records = [r for r in read_metrics(run) if "loss" in r]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    expected = [engine.outer_lr(tiny_cfg, r["iteration"] - 1) for r in records]
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12)
    assert used == pytest.approx(expected, rel=1e-12)
    assert expected[0] == tiny_cfg.train.outer_lr and expected[2] < expected[1] < expected[0]
