"""`metafew compare`: every config trained, evaluated on the same episodes, tabulated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny
from typer.testing import CliRunner

from metafew.cli import app
from metafew.compare import Entry, format_table


def test_compare_trains_evaluates_and_tabulates_every_config(tmp_path: Path) -> None:
    (tmp_path / "maml.yaml").write_text("# metafew train\nalgorithm:\n  first_order: false\n")
    (tmp_path / "fomaml.yaml").write_text("# metafew train\nalgorithm:\n  first_order: true\n")
    sets = [a for arg in tiny(tmp_path / "runs") for a in ("--set", arg)]
    args = ["compare", str(tmp_path / "maml.yaml"), str(tmp_path / "fomaml.yaml"), *sets]
    result = CliRunner().invoke(app, [*args, "--episodes", "7", "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "cmp").iterdir())
    summary = json.loads((folder / "comparison.json").read_text())
    assert summary["episodes"] == 7 and [e["label"] for e in summary["entries"]] == ["maml", "fomaml"]
    for entry in summary["entries"]:
        assert entry["error"] is None
        evals = list((Path(entry["run"]) / "eval").glob("*.json"))
        result_json = json.loads(evals[0].read_text())
        assert result_json["episodes"] == 7 and result_json["seed"] == 1234
        assert entry["accuracy"] == result_json["accuracy"] and entry["eval_file"] == str(evals[0])
        assert 0 <= entry["predict_accuracy"] <= 1  # glyphs know their unlabeled answers
        assert entry["peak_mb"] > 50 and entry["train_seconds"] > 0
    maml, fomaml = (json.loads(Path(e["eval_file"]).read_text())["per_episode"] for e in summary["entries"])
    d = np.array(fomaml) - np.array(maml)  # the same 7 seeded episodes, row by row
    assert summary["entries"][0]["paired"] == 0.0
    assert summary["entries"][1]["paired"] == pytest.approx(d.mean(), abs=1e-12)
    assert summary["entries"][1]["paired_ci95"] == pytest.approx(1.96 * d.std(ddof=1) / 7**0.5, abs=1e-12)
    table = (folder / "comparison.md").read_text()
    assert "| − maml, paired |" in table
    assert table.count("\n| ") == 2 and "| maml |" in table and "| fomaml |" in table
    assert (folder / "maml.train.log").read_text().startswith("run folder: ")
    said = [line for line in result.output.splitlines() if line.startswith(("maml: ", "fomaml: "))]
    assert said == [f"{c}: {s}" for c in ("maml", "fomaml") for s in ("train", "eval", "finetune + predict")]
    stages = [line.split(" (")[0] for line in result.output.splitlines() if line.startswith("compare: ")]
    assert stages[-1] == "compare: stages 6/6" and "compare: stages 3/6" in stages


def test_compare_refuses_an_invalid_config_before_training(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("task:\n  shot: 1\n")
    result = CliRunner().invoke(app, ["compare", str(bad), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2 and "task.shots" in result.output
    assert not (tmp_path / "cmp").exists()


def test_failed_entries_are_shown_in_the_table() -> None:
    ok = Entry("a", "a.yaml", "r", 0.5, 0.01, 12.0, 300.0, None, paired=0.0, paired_ci95=0.0)
    other = Entry("c", "c.yaml", "r", 0.52, 0.01, 10.0, 300.0, None, paired=0.02, paired_ci95=0.004)
    failed = Entry("b", "b.yaml", error="train exited 3: not enough classes")
    table = format_table([ok, other, failed], 600)
    assert "| a | 50.00 ± 1.00% | +0.00 ± 0.00 | - | 12 s | 300 MB |" in table
    assert "| c | 52.00 ± 1.00% | +2.00 ± 0.40 | - | 10 s | 300 MB |" in table
    assert "| b | failed: train exited 3: not enough classes |" in table
