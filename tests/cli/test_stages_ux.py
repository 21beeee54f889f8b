"""What the later stages show and accept (issue 14): progress lines in job logs, `predict FILE`,
`predict --out`, `train --fast-dev-run`, train.final_val_episodes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, ok, only_child, read_metrics, tiny


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny glyph run's fine-tuned model folder."""
    runs_dir = tmp_path_factory.mktemp("ux") / "runs"
    ok("train", *tiny(runs_dir))
    run = only_child(runs_dir)
    ok("finetune", run, "finetune.steps=2")
    return only_child(run / "finetune")


def rows(csv_path: Path) -> list[list[str]]:
    with csv_path.open(newline="") as handle:
        return list(csv.reader(handle))[1:]


def test_eval_and_predict_log_their_progress(tuned: Path) -> None:
    run = tuned.parent.parent
    evaluated = ok("eval", run, "eval.episodes=20")
    lines = [line for line in evaluated.stderr.splitlines() if line.startswith("eval: test episodes")]
    assert lines[-1].startswith("eval: test episodes 20/20 (") and len(lines) <= 10
    predicted = ok("predict", tuned, "--out", tuned.parent / "all")
    assert "predict: pictures " in predicted.stderr


def test_predict_one_picture_file_and_out_folder(tuned: Path, tmp_path: Path) -> None:
    everything = tmp_path / "everything"
    ok("predict", tuned, "--out", everything)
    table = rows(everything / "predictions.csv")
    # the same picture alone: its own row, the same label and probabilities as in the folder
    picture = tmp_path / "one.png"
    from PIL import Image

    from metafew.data import load_data
    from metafew.runs import load_run_config

    cfg = load_run_config(tuned.parent.parent)
    data = load_data(cfg.data)
    assert data.unlabeled is not None
    first = data.unlabeled.names.index(table[0][0])
    Image.fromarray(data.unlabeled.images[first, 0].numpy()).save(picture)
    alone = tmp_path / "alone"
    result = ok("predict", tuned, picture, "--out", alone)
    (row,) = rows(alone / "predictions.csv")
    assert row[0] == "one.png" and row[1] == table[0][1]
    assert [float(p) for p in row[3:]] == pytest.approx([float(p) for p in table[0][3:]], abs=1e-5)
    assert "1 pictures" in result.stdout and json.loads((alone / "summary.json").read_text())["pictures"] == 1


def test_predict_out_refuses_a_folder_with_files(tuned: Path, tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("earlier results")
    assert_user_error(invoke("predict", tuned, "--out", tmp_path), 4, "--out", "not empty")
    assert (tmp_path / "kept.txt").read_text() == "earlier results"
    (tmp_path / "file").write_text("x")
    assert_user_error(invoke("predict", tuned, "--out", tmp_path / "file"), 4, "is a file")


def test_predict_a_file_that_is_not_a_picture(tuned: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert_user_error(invoke("predict", tuned, tmp_path / "notes.txt"), 3, "not a picture")


def test_final_validation_has_its_own_episode_count(tmp_path: Path) -> None:
    ok("train", *tiny(tmp_path, "train.val_episodes=1", "train.final_val_episodes=6", "train.val_every=1"))
    val = [r for r in read_metrics(only_child(tmp_path)) if "val_accuracy" in r]
    assert [r["val_ci95"] for r in val[:-1]] == [0.0] * (len(val) - 1)  # one episode: no spread
    assert val[-1]["val_ci95"] > 0  # six episodes of a barely trained model disagree


def test_fast_dev_run_runs_every_stage_and_keeps_nothing(tmp_path: Path) -> None:
    result = ok("train", "--fast-dev-run", *tiny(tmp_path / "runs"))
    out = result.stdout
    for stage in ("finetune: ", "predict: ", "eval: ", "fast-dev-run: train, finetune, predict and eval"):
        assert stage in out, out
    assert "next:" not in out
    folder = Path(out.split("run folder: ")[1].split()[0])
    assert not folder.exists() and not (tmp_path / "runs").exists()


def test_fast_dev_run_refuses_resume(tmp_path: Path) -> None:
    result = invoke("train", "--fast-dev-run", "--resume", "auto", *tiny(tmp_path))
    assert_user_error(result, 2, "--fast-dev-run", "--resume")


def test_eval_refuses_finetune_keys_it_would_ignore(tuned: Path) -> None:
    run = tuned.parent.parent
    result = invoke("eval", run, "eval.episodes=2", "finetune.steps=5")
    assert_user_error(result, 2, "finetune.steps", "eval.finetune=true")
    assert_user_error(invoke("eval", run, "augment.rotate=3"), 2, "augment.rotate")
