"""Run folders that are damaged, foreign or unwritable (issue 15): every command that reads them
refuses in one line with exit 4 before computing anything, and nothing of the run is lost.

- checkpoints with a missing field (`{'format': 1}`), a field of the wrong type, NaN weights, or
  another run's config, in `eval`, `finetune` and `train --resume`;
- a run folder that cannot be written: `eval`, `finetune`, `predict` and `--resume` stop before
  their work (injected: the process runs as root, for whom permissions do not apply);
- a `--resume --allow-change` that diverges leaves config.yaml as it was, so the run still resumes;
- a new run that fails before its first checkpoint leaves no folder;
- predictions.csv is safe to open in a spreadsheet.
"""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_user_error, invoke, load_pt, ok, only_child, tiny, write_image

from metafew.checkpoints import save_checkpoint
from metafew.stages import spreadsheet_safe

pytestmark = pytest.mark.bad_input


def trained(tmp: Path, *extra: str) -> Path:
    ok("train", *tiny(tmp / "runs", "train.iterations=2", *extra))
    return only_child(tmp / "runs")


def rewrite_last(run: Path, change: Any) -> None:
    """Replace checkpoints/last.pt (and best.pt) with `change(state)`; no .prev to fall back to."""
    for name in ("last", "best"):
        path = run / "checkpoints" / f"{name}.pt"
        save_checkpoint(path, change(load_pt(path)))
    (run / "checkpoints" / "last.prev.pt").unlink(missing_ok=True)


def nan_weights(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "params": {k: torch.full_like(v, float("nan")) for k, v in state["params"].items()}}


DAMAGES: dict[str, tuple[Any, str]] = {
    "only a format field": (lambda state: {}, "no 'iteration' field"),
    "iteration is a string": (lambda state: {**state, "iteration": "7"}, "field 'iteration' holds str"),
    "train_classes missing": (
        lambda state: {k: v for k, v in state.items() if k != "train_classes"},
        "no 'train_classes' field",
    ),
    "all-NaN weights": (
        lambda state: {
            **state,
            "params": {k: torch.full_like(v, float("nan")) for k, v in state["params"].items()},
        },
        "non-finite weights",
    ),
}


@pytest.mark.parametrize("command", ["eval", "finetune", "resume"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoints_are_refused_by_every_command(tmp_path: Path, command: str, damage: str) -> None:
    run = trained(tmp_path)
    change, words = DAMAGES[damage]
    rewrite_last(run, change)
    args = ["train", "--resume", run, "train.iterations=4"] if command == "resume" else [command, run]
    assert_user_error(invoke(*args), 4, words)
    assert not (run / "eval").exists() or not list((run / "eval").iterdir())
    assert not (run / "finetune").exists() or not list((run / "finetune").iterdir())


def test_another_runs_checkpoint_is_refused_on_resume(tmp_path: Path) -> None:
    run = trained(tmp_path / "a")
    other = trained(tmp_path / "b", "algorithm.eval_inner_steps=2", "train.val_every=1")
    for name in ("last.pt", "best.pt"):
        (run / "checkpoints" / name).write_bytes((other / "checkpoints" / name).read_bytes())
    before = (run / "metrics.jsonl").read_text(encoding="utf-8")
    assert_user_error(
        invoke("train", "--resume", run, "train.iterations=4"), 4, "algorithm.eval_inner_steps", "another run"
    )
    assert (run / "metrics.jsonl").read_text(encoding="utf-8") == before


def test_a_diverging_allow_change_leaves_the_run_resumable(tmp_path: Path) -> None:
    run = trained(tmp_path)
    config = (run / "config.yaml").read_text(encoding="utf-8")
    last = (run / "checkpoints" / "last.pt").read_bytes()
    change = ["--allow-change", "algorithm.inner_lr", "algorithm.inner_lr=1e30", "train.iterations=4"]
    assert_user_error(invoke("train", "--resume", run, *change), 5, "non-finite")
    assert (run / "config.yaml").read_text(encoding="utf-8") == config
    assert (run / "checkpoints" / "last.pt").read_bytes() == last
    ok("train", "--resume", run, "train.iterations=4")
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == 4
    assert "iterations: 4" in (run / "config.yaml").read_text(encoding="utf-8")


def test_a_new_run_that_diverges_at_once_leaves_no_folder(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    assert_user_error(invoke("train", *tiny(runs_dir, "algorithm.inner_lr=1e30")), 5, "iteration 1")
    assert not runs_dir.exists() or not list(runs_dir.iterdir())


def _refuse_writes_under(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """The file system under `folder` turns read-only (EROFS on every create there)."""
    real_open = os.open

    def read_only_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path).is_relative_to(folder) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    real_mkdir, real_write = Path.mkdir, Path.write_bytes

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.is_relative_to(folder) and not self.exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)

    def write_bytes(self: Path, data: Any) -> int:
        if self.is_relative_to(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_write(self, data)

    monkeypatch.setattr(os, "open", read_only_open)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("command", ["eval", "finetune", "predict", "resume"])
def test_a_read_only_run_folder_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    run = trained(tmp_path)
    ok("finetune", run)
    model = only_child(run / "finetune")
    args = {
        "eval": ["eval", run],
        "finetune": ["finetune", run],
        "predict": ["predict", model],
        "resume": ["train", "--resume", run, "train.iterations=4"],
    }[command]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    _refuse_writes_under(monkeypatch, run)
    assert_user_error(invoke(*args), 4, "Read-only file system")
    monkeypatch.undo()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


FORMULAS = ["=1+1", "@SUM(A1)", "+cmd", "-2", "\tx", "\rx"]


def test_predictions_csv_is_spreadsheet_safe(tmp_path: Path) -> None:
    assert [spreadsheet_safe(f) for f in FORMULAS] == [f"'{f}" for f in FORMULAS]
    assert spreadsheet_safe("plain.png") == "plain.png" and spreadsheet_safe("a=b") == "a=b"
    run = trained(tmp_path)
    ok("finetune", run)
    model = only_child(run / "finetune")
    pictures = tmp_path / "pictures"
    names = ["=1+1.png", "@SUM(A1).png", "+cmd.png", "-x.png", "=HYPERLINK(evil).png", "ok.png"]
    for i, name in enumerate(names):
        write_image(pictures / name, size=12, seed=i)
    ok("predict", model, pictures)
    with (only_child(model / "predict") / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    assert sorted(row[0] for row in rows) == sorted(spreadsheet_safe(n) for n in names)
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row[:2])
