"""metafew.runs_table: statuses read from real run folders (stopped, finished, claimed, diverged,
damaged), the checkpointed iteration, results of eval/finetune/select/predict, sweep folders,
sorting and filtering."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_user_error, invoke, ok, only_child, signal_after, tiny

from metafew.errors import ConfigError, RunError
from metafew.files import write_json
from metafew.runs import DIVERGED_FILE, RunClaim, append_metrics, new_folder
from metafew.runs_table import (
    ROW_KEYS,
    expand_runs,
    filter_runs,
    list_runs,
    run_folders,
    sort_runs,
    summarize_run,
)


def train(runs_dir: Path, *extra: str) -> Path:
    """A finished tiny run (train.iterations=2 unless `extra` says otherwise); its folder."""
    before = set(runs_dir.iterdir()) if runs_dir.is_dir() else set()
    ok("train", *tiny(runs_dir, "train.iterations=2", *extra))
    (run,) = set(runs_dir.iterdir()) - before
    return run


def test_a_run_stopped_with_ctrl_c_is_interrupted_at_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signal_after(monkeypatch, signal.SIGINT, 3)
    assert_user_error(
        invoke("train", *tiny(tmp_path, "train.iterations=4")), 130, "stopped after iteration 3"
    )
    row = summarize_run(only_child(tmp_path))
    assert (row.status, row.iteration, row.iterations) == ("interrupted", 3, 4)


def test_the_iteration_is_the_checkpoints_not_the_last_metrics_line(tmp_path: Path) -> None:
    """kill -9 after iteration 3's metrics line: the checkpoint of 2 is what resumes."""
    run = train(tmp_path, "train.iterations=4", "train.checkpoint_every=2")
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("iterations: 4", "iterations: 40"))
    append_metrics(run, {"iteration": 41, "loss": 0.5, "accuracy": 0.5})
    row = summarize_run(run)
    assert (row.status, row.iteration, row.iterations) == ("interrupted", 4, 40)


def test_done_new_running_and_unreadable(tmp_path: Path) -> None:
    done = train(tmp_path)
    assert summarize_run(done).status == "done" and summarize_run(done).iteration == 2
    new = train(tmp_path)
    for pt in (new / "checkpoints").glob("*.pt"):
        pt.unlink()  # what a run stopped before its first checkpoint leaves
    assert (summarize_run(new).status, summarize_run(new).iteration) == ("new", 0)
    with RunClaim() as claim:
        claim.acquire(done)
        assert summarize_run(done).status == "running"
    assert summarize_run(done).status == "done"  # the claim went with its holder
    lockless = train(tmp_path)
    (lockless / ".lock").unlink(missing_ok=True)
    summarize_run(lockless)
    assert not (lockless / ".lock").exists()


def test_a_damaged_last_checkpoint_falls_back_or_is_unreadable(tmp_path: Path) -> None:
    run = train(tmp_path, "train.iterations=4", "train.checkpoint_every=2")
    (run / "checkpoints" / "last.pt").write_bytes(b"not a zip")
    assert summarize_run(run).iteration == 2  # last.prev.pt, as --resume would use it
    (run / "checkpoints" / "last.prev.pt").unlink()
    with pytest.raises(RunError, match="no readable checkpoint"):
        summarize_run(run)
    broken = train(tmp_path)
    (broken / "config.yaml").write_text("task: [", encoding="utf-8")
    rows = {r.path: r for r in list_runs(tmp_path)}
    assert rows[run].status == rows[broken].status == "unreadable"
    assert "last.pt" in rows[run].note and "config.yaml" in rows[broken].note
    assert rows[broken].started  # from env.json, still shown


def test_diverged_from_the_marker_or_a_non_finite_loss(tmp_path: Path) -> None:
    run = train(tmp_path, "train.iterations=4", "train.checkpoint_every=2")
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("iterations: 4", "iterations: 8"))
    write_json(run / DIVERGED_FILE, {"iteration": 5, "message": "meta-loss is nan"})
    assert summarize_run(run).status == "diverged"
    last = run / "checkpoints" / "last.pt"
    later = (run / DIVERGED_FILE).stat().st_mtime + 10
    os.utime(last, (later, later))  # resumed and checkpointed since: the marker is stale
    assert summarize_run(run).status == "interrupted"
    (run / DIVERGED_FILE).unlink()
    append_metrics(run, {"iteration": 5, "loss": float("nan"), "accuracy": 0.2})
    assert summarize_run(run).status == "diverged"


def test_results_of_eval_finetune_select_and_predict(tmp_path: Path) -> None:
    run = train(tmp_path)
    put(run / "eval" / "20240101-000000-aaaaaa.json", {"accuracy": 0.5, "ci95": 0.1})
    put(run / "eval" / "20240102-000000-bbbbbb.json", {"accuracy": 0.6123, "ci95": 0.0456})
    put(run / "eval" / "20240103-000000-cccccc.json", {"broken": True})
    old = run / "finetune" / "20240101-000000-aaaaaa"
    put(old / "finetune.json", {"labeled_accuracy": 0.9, "selection": {"estimate": {"accuracy": 0.7}}})
    put(old / "predict" / "20240101-000001-aaaaaa" / "summary.json", {"accuracy": 0.75, "pictures": 4})
    put(run / "finetune" / "20240102-000000-bbbbbb" / "finetune.json", {"labeled_accuracy": 1.0})
    row = summarize_run(run)
    assert (row.test, row.test_ci95, row.test_text) == (0.6123, 0.0456, "61.23 ± 4.56%")
    assert (row.finetune, row.select, row.predict) == (1.0, 0.7, 0.75)
    assert row.best_val is not None and 0 <= row.best_val <= 1
    assert list(row.row()) == list(ROW_KEYS) and json.dumps(row.row())


def put(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def make_sweep(root: Path, key: str, values: list[Any]) -> tuple[Path, list[Path]]:
    """A sweep folder as `metafew sweep` lays it out: `<stamp>-<name>-<id>/` holding sweep.json
    and one tiny run per value of `key`; the folder and its runs."""
    sweep = new_folder(root, "sweep")
    runs = [train(sweep, f"{key}={value}") for value in values]
    grid = {"name": "sweep", "grid": {key: values}, "runs": [r.name for r in runs]}
    write_json(sweep / "sweep.json", grid)
    return sweep, runs


def test_sweep_folders_are_listed_with_their_runs_grouped(tmp_path: Path) -> None:
    first = train(tmp_path, "train.outer_lr=0.01")
    sweep, swept = make_sweep(tmp_path, "train.outer_lr", [0.02, 0.03])
    last = train(tmp_path)
    (tmp_path / "not_a_run").mkdir()
    rows = list_runs(tmp_path)
    assert [(r.name, r.sweep) for r in rows] == [
        (first.name, ""),
        (swept[0].name, sweep.name),
        (swept[1].name, sweep.name),
        (last.name, ""),
    ]
    assert [(p.name, s) for p, s in run_folders(sweep)] == [(r.name, sweep.name) for r in swept]
    labels = [label for _, label in expand_runs([sweep, last])]
    assert labels == ["outer_lr=0.02", "outer_lr=0.03", last.name]
    with pytest.raises(RunError, match="neither a run folder"):
        expand_runs([tmp_path / "not_a_run"])


def test_sort_and_filter(tmp_path: Path) -> None:
    maml = train(tmp_path)
    first = train(tmp_path, "algorithm.first_order=true", "task.shots=1")
    reptile = train(tmp_path, "algorithm.name=reptile")
    rows = list_runs(tmp_path)
    for row in rows:
        object.__setattr__(row, "best_val", {maml: 0.5, first: 0.7, reptile: None}[row.path])
    assert [r.path for r in sort_runs(rows, "best_val")] == [first, maml, reptile]
    assert [r.path for r in sort_runs(rows, "best_val", reverse=True)] == [maml, first, reptile]
    assert [r.path for r in sort_runs(rows, "algorithm")] == [maml, first, reptile]
    assert [r.path for r in sort_runs(rows, "task.shots")] == [first, maml, reptile]
    assert [r.path for r in filter_runs(rows, ["algorithm=maml"])] == [maml, first]
    assert [r.path for r in filter_runs(rows, ["algorithm=maml", "first_order=true"])] == [first]
    assert [r.path for r in filter_runs(rows, ["status=done", "task.shots=2"])] == [maml, reptile]
    assert [r.path for r in filter_runs(rows, ["algorithm=rep*"])] == [reptile]
    assert [r.path for r in filter_runs(rows, ["iterations=2.0"])] == [maml, first, reptile]
    with pytest.raises(ConfigError, match="unknown key; use one of path, name, sweep, status"):
        filter_runs(rows, ["colour=red"])
    with pytest.raises(ConfigError, match="key=value"):
        filter_runs(rows, ["status"])
    with pytest.raises(ConfigError, match=r"--sort 'task\.shot'"):
        sort_runs(rows, "task.shot")
