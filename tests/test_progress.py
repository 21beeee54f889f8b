"""Progress of long work: what the library reports (metafew.progress) and how the CLI shows it
in a job log (a line per tenth of a phase)."""

from __future__ import annotations

import io

import torch
from helpers import TINY_ARGS
from rich.console import Console

from metafew.cli import common
from metafew.cli.common import WorkBar
from metafew.config_load import load_config
from metafew.data import load_data
from metafew.evaluation import evaluate
from metafew.finetuning import fit, predict_proba
from metafew.learner import build_learner
from metafew.selection import cross_validate


def _learner(*overrides: str):
    cfg = load_config(None, [*TINY_ARGS, "finetune.steps=4", "finetune.eval_every=2", *overrides])
    data = load_data(cfg.data)
    return cfg, data, build_learner(cfg, torch.device("cpu"), len(data.meta_train.classes))


def test_evaluate_reports_every_chunk_up_to_the_total() -> None:
    from metafew.tasks import EpisodeSampler

    cfg, data, learner = _learner()
    sampler = EpisodeSampler(data.novel, cfg.task.ways, cfg.task.shots, 2, 0, "novel")
    heard: list[tuple[str, int, int]] = []
    evaluate(learner, sampler, 5, 1, None, "transductive", chunk=2, advance=lambda *a: heard.append(a))
    assert heard == [("test episodes", 2, 5), ("test episodes", 4, 5), ("test episodes", 5, 5)]


def test_fit_reports_both_phases_step_by_step() -> None:
    cfg, data, learner = _learner("finetune.holdout=0.2")
    heard: list[tuple[str, int, int]] = []
    fitted = fit(cfg, learner, data.novel.images, data.novel.labels, advance=lambda *a: heard.append(a))
    search = [h for h in heard if "held-out" in h[0]]
    refit = [h for h in heard if "held-out" not in h[0]]
    assert [h[1] for h in search] == [1, 2, 3, 4] and {h[2] for h in search} == {4}
    assert [h[1] for h in refit] == list(range(1, fitted.steps + 1))


def test_fit_without_a_holdout_reports_one_phase_of_all_steps() -> None:
    cfg, data, learner = _learner()
    assert cfg.finetune.holdout == 0
    heard: list[tuple[str, int, int]] = []
    fit(cfg, learner, data.novel.images, data.novel.labels, advance=lambda *a: heard.append(a))
    assert not [h for h in heard if "held-out" in h[0]]
    assert [h[1] for h in heard] == [1, 2, 3, 4] and {h[2] for h in heard} == {4}


def test_cross_validation_and_prediction_report_their_units() -> None:
    cfg, data, learner = _learner()
    folds: list[tuple[str, int, int]] = []
    cross_validate(cfg, learner, data.novel, None, 2, advance=lambda *a: folds.append(a))
    assert folds == [("folds", 1, 2), ("folds", 2, 2)]
    from metafew.finetuning import finetune

    model, _ = finetune(cfg, learner, data.novel)
    pictures: list[tuple[str, int, int]] = []
    predict_proba(learner, model, data.novel.images, batch_size=4, advance=lambda *a: pictures.append(a))
    n = len(data.novel.images)
    assert [p[1] for p in pictures] == [*range(4, n, 4), n] and {p[2] for p in pictures} == {n}


def test_work_bar_in_a_log_writes_a_line_per_tenth(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=out, width=200))
    bar = WorkBar("eval", terminal=False)
    for done in range(1, 601):
        bar("test episodes", done, 600)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("eval: test episodes 60/600 (") and "eta" in lines[0]
    assert lines[-1].startswith("eval: test episodes 600/600 (")


def test_work_bar_in_a_log_ends_a_short_phase_once(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=out, width=200))
    bar = WorkBar("predict", terminal=False)
    for done in (3, 5):
        bar("pictures", done, 5)
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == [
        "predict: pictures 3/5",
        "predict: pictures 5/5",
    ]
