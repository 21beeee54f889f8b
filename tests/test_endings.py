"""How a run ends by itself (issue 13): train.time_limit, early stopping on train.patience, and
done.json / diverged.json, which `metafew runs` and `--resume auto` read."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import invoke, load_pt, ok, only_child, read_metrics, tiny

from metafew.runs_table import summarize_run


def done(run: Path) -> dict:
    return json.loads((run / "done.json").read_text())


def expected_stop(vals: list[tuple[int, float]], patience: int) -> int | None:
    """The iteration where `patience` validations in a row have not beaten the best before them."""
    best, since = None, 0
    for iteration, accuracy in vals:
        if best is None or accuracy > best:
            best, since = accuracy, 0
        else:
            since += 1
            if since >= patience:
                return iteration
    return None


def test_patience_ends_where_the_validations_stop_improving(tmp_path: Path) -> None:
    common = ["train.val_every=1", "train.val_episodes=1", "train.iterations=16"]
    ok("train", *tiny(tmp_path / "free", *common))
    vals = [
        (r["iteration"], r["val_accuracy"])
        for r in read_metrics(only_child(tmp_path / "free"))
        if "val_accuracy" in r
    ]
    stop = expected_stop(vals, 2)
    assert stop is not None and stop < 16, vals  # one episode per validation: ties are frequent
    result = ok("train", *tiny(tmp_path / "patient", *common, "train.patience=2"))
    run = only_child(tmp_path / "patient")
    assert done(run)["reason"] == "early_stopping" and done(run)["iteration"] == stop
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == stop
    best = max(vals[: [i for i, _ in vals].index(stop) + 1], key=lambda v: v[1])
    assert load_pt(run / "checkpoints" / "best.pt")["iteration"] == next(i for i, a in vals if a == best[1])
    assert "train.patience ran out" in result.stdout
    row = summarize_run(run)
    assert row.status == "done" and row.note == "ended by train.patience" and row.iteration == stop


def test_time_limit_validates_checkpoints_and_ends(tmp_path: Path) -> None:
    result = ok("train", *tiny(tmp_path, "train.time_limit=1e-6", "train.val_every=100"))
    run = only_child(tmp_path)
    assert done(run)["reason"] == "time_limit" and done(run)["iteration"] == 1
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == 1
    assert [r["iteration"] for r in read_metrics(run) if "val_accuracy" in r] == [1]  # the final one
    assert "train.time_limit reached" in result.stdout
    assert summarize_run(run).status == "done"
    # --resume auto leaves it alone: a new run starts
    ok("train", "--resume", "auto", *tiny(tmp_path, "train.time_limit=1e-6", "train.val_every=100"))
    assert len(list(tmp_path.iterdir())) == 2
    # the same limit again: nothing to train; a larger one continues to train.iterations
    ok("train", "--resume", run)
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == 1 and done(run)["reason"] == "time_limit"
    ok("train", "--resume", run, "train.time_limit=60")
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == 4
    assert done(run) == {**done(run), "reason": "iterations", "iteration": 4}


def test_a_run_that_reaches_its_iterations_says_so(tmp_path: Path) -> None:
    ok("train", *tiny(tmp_path))
    run = only_child(tmp_path)
    assert done(run)["reason"] == "iterations" and done(run)["elapsed_s"] > 0


def test_an_interrupted_resume_is_not_done(tmp_path: Path) -> None:
    """A resume removes done.json first: only the end of its own training writes it again."""
    ok("train", *tiny(tmp_path, "train.iterations=2"))
    run = only_child(tmp_path)
    result = invoke(
        "train",
        "--resume",
        run,
        "train.iterations=4",
        "algorithm.inner_lr=1e30",
        "--allow-change",
        "algorithm.inner_lr",
    )
    assert result.exit_code == 5
    assert not (run / "done.json").exists() and (run / "diverged.json").exists()
    assert summarize_run(run).status == "diverged"
