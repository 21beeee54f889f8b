"""The label-making commands end to end (issue 12): `finetune` records its recipe, `select` picks
a recipe by cross-validation and says how well it will do, `predict` averages an ensemble and
writes per-class counts, a confidence column and a confusion matrix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, invoke, make_class_folder, ok, only_child, tiny
from PIL import Image

from metafew.data import load_data
from metafew.runs import load_run_config


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny meta-trained glyph run (3 novel classes x 6 labeled, 12 unlabeled with answers)."""
    runs_dir = tmp_path_factory.mktemp("labels") / "runs"
    ok("train", *tiny(runs_dir))
    return only_child(runs_dir)


def new_child(folder: Path, before: set[Path]) -> Path:
    (child,) = set(folder.iterdir()) - before
    return child


def only_new_json(folder: Path, before: set[Path]) -> Path:
    (found,) = set(folder.glob("*.json")) - before
    return found


def children(folder: Path) -> set[Path]:
    return set(folder.iterdir()) if folder.is_dir() else set()


def probabilities(predict_dir: Path) -> dict[str, np.ndarray]:
    with (predict_dir / "predictions.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return {r[0]: np.array([float(p) for p in r[3:]]) for r in rows}


def test_finetune_records_the_recipe_it_used(run: Path) -> None:
    before = children(run / "finetune")
    result = ok(
        "finetune",
        run,
        "finetune.steps=20",
        "finetune.holdout=0.2",
        "finetune.eval_every=5",
        "augment.rotate=5",
    )
    info = json.loads((new_child(run / "finetune", before) / "finetune.json").read_text())
    assert info["finetune"]["steps"] == 20 and info["finetune"]["optimizer"] == "adam"
    assert info["augment"]["rotate"] == 5.0 and info["augment"]["flip"] is False  # glyphs: no flips
    assert info["adapt_steps"] == load_run_config(run).algorithm.eval_inner_steps
    assert [c["step"] for c in info["holdout_curve"]] == [0, 5, 10, 15, 20]
    best = min(info["holdout_curve"], key=lambda c: (round(c["loss"], 6), c["step"]))
    assert info["steps"] == best["step"]
    assert info["unlabeled"] is None and info["unlabeled_pictures"] == 0
    assert f"{info['steps']} steps" in result.stdout


def test_finetune_with_the_unlabeled_pictures_counts_them(run: Path) -> None:
    before = children(run / "finetune")
    result = ok("finetune", run, "finetune.steps=5", "finetune.unlabeled=entropy")
    info = json.loads((new_child(run / "finetune", before) / "finetune.json").read_text())
    assert info["unlabeled"] == "dataset:glyphs" and info["unlabeled_pictures"] == 12
    assert "12 unlabeled (entropy)" in result.stdout


def test_finetune_rejects_a_bad_recipe_value_in_one_line(run: Path) -> None:
    assert_user_error(invoke("finetune", run, "finetune.optimizer=lbfgs"), 2, "finetune.optimizer", "adam")
    assert_user_error(invoke("finetune", run, "task.ways=4"), 2, "task.*")


def selected(run: Path, *args: str) -> tuple[dict, str]:
    """`metafew select RUN --folds 3 ARGS`: the new model's finetune.json and what was printed."""
    before = children(run / "finetune")
    result = ok("select", run, "--folds", "3", *args)
    return json.loads((new_child(run / "finetune", before) / "finetune.json").read_text()), result.stdout


def test_select_reports_every_candidate_and_fine_tunes_the_best(run: Path) -> None:
    info, stdout = selected(
        run, "--candidate", "finetune.steps=0", "--candidate", "finetune.steps=4 finetune.unlabeled=entropy"
    )
    selection = info["selection"]
    assert selection["folds"] == 3 and len(selection["candidates"]) == 2
    for c in selection["candidates"]:
        assert c["pictures"] == 18 and c["ci95"][0] <= c["accuracy"] <= c["ci95"][1]
        assert f"{100 * c['accuracy']:5.1f}%" in stdout
    best = max(selection["candidates"], key=lambda c: c["accuracy"])  # max keeps the first of equals
    assert selection["chosen"] == best
    again = selection["estimate"]  # the winner once more, on fresh folds
    assert again["overrides"] == best["overrides"] and again["pictures"] == 18
    assert f"these classes {100 * again['accuracy']:.1f}%" in stdout
    assert info["finetune"]["steps"] == (
        0 if best["overrides"] == "finetune.steps=0" else info["finetune"]["steps"]
    )
    assert "estimated accuracy on new pictures of these classes" in stdout


def test_select_compares_single_models_then_estimates_and_fits_the_ensemble(run: Path) -> None:
    recipe = "finetune.steps=2"  # the default runs every step: no held-out search
    info, stdout = selected(run, "--candidate", recipe, "--set", "finetune.members=2")
    selection = info["selection"]
    assert len(selection["candidates"]) == 1 and selection["chosen"] == selection["candidates"][0]
    assert selection["chosen"]["members"] == 1  # compared as one model ...
    again = selection["estimate"]  # ... then estimated once more as the ensemble that is fitted
    assert again["overrides"] == selection["chosen"]["overrides"] and again["members"] == 2
    assert info["finetune"]["members"] == 2 and info["member_steps"] == [2, 2]
    assert info["finetune"]["holdout"] == 0 and info["holdout_curve"] == []
    assert "as a seed ensemble of 2" in stdout and "2 members of 2/2 steps" in stdout


def test_select_refuses_more_folds_than_pictures(run: Path) -> None:
    assert_user_error(invoke("select", run, "--folds", "7"), 2, "--folds 7", "6 pictures")
    assert_user_error(invoke("select", run, "--folds", "1"), 2, "--folds 1")


def test_predict_writes_counts_confidence_and_a_confusion_matrix(run: Path) -> None:
    before = children(run / "finetune")
    ok("finetune", run, "finetune.steps=3")
    model = new_child(run / "finetune", before)
    result = ok("predict", model)
    out = only_child(model / "predict")
    summary = json.loads((out / "summary.json").read_text())
    data = load_data(load_run_config(run).data)
    classes = data.novel.classes
    assert sum(summary["per_class"].values()) == 12 and list(summary["per_class"]) == classes
    matrix = np.array(summary["confusion"])
    assert matrix.sum() == 12 and matrix.trace() / 12 == pytest.approx(summary["accuracy"])
    assert matrix.sum(0).tolist() == list(summary["per_class"].values())  # columns: predicted
    with (out / "confusion.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert [int(v) for v in rows[1][1:]] == matrix[0].tolist()
    with Image.open(out / "confusion.png") as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
    assert "labels per class:" in result.stdout


def test_an_ensemble_averages_its_members_probabilities(run: Path) -> None:
    models = []
    for seed in (1, 2):
        before = children(run / "finetune")
        ok("finetune", run, "finetune.steps=5", f"finetune.seed={seed}")
        models.append(new_child(run / "finetune", before))
    singles = []
    for model in models:
        before = children(model / "predict")
        ok("predict", model)
        singles.append(probabilities(new_child(model / "predict", before)))
    before = children(models[0] / "predict")
    ok("predict", models[0], "--ensemble", models[1])
    out = new_child(models[0] / "predict", before)
    mean = probabilities(out)
    for name, probs in mean.items():
        np.testing.assert_allclose(probs, (singles[0][name] + singles[1][name]) / 2, atol=2e-6)
    assert json.loads((out / "summary.json").read_text())["models"] == [str(m) for m in models]


def test_an_ensemble_of_models_with_other_classes_is_refused(run: Path, tmp_path: Path) -> None:
    labeled = make_class_folder(tmp_path / "other", {"x": 4, "y": 4, "z": 4}, size=16)
    before = children(run / "finetune")
    ok("finetune", run, "--labeled", labeled, "finetune.steps=0")
    other = new_child(run / "finetune", before)
    before = children(run / "finetune")
    ok("finetune", run, "finetune.steps=0")
    model = new_child(run / "finetune", before)
    assert_user_error(invoke("predict", model, "--ensemble", other), 3, "same classes")


def test_predict_with_test_time_views_changes_the_probabilities(run: Path) -> None:
    before = children(run / "finetune")
    ok("finetune", run, "finetune.steps=3")
    model = new_child(run / "finetune", before)
    ok("predict", model)
    plain = probabilities(only_child(model / "predict"))
    before = children(model / "predict")
    ok("predict", model, "--set", "finetune.tta=6")
    out = new_child(model / "predict", before)
    views = probabilities(out)
    assert any(not np.allclose(views[n], plain[n]) for n in plain)
    assert json.loads((out / "summary.json").read_text())["tta"] == [6]
    assert_user_error(invoke("predict", model, "--set", "finetune.lr=1"), 2, "finetune.tta")


def test_eval_with_the_recipe_fine_tunes_every_episode(run: Path) -> None:
    before = set((run / "eval").glob("*.json"))
    result = ok("eval", run, "eval.episodes=3", "eval.finetune=true", "finetune.steps=3")
    summary = json.loads(only_new_json(run / "eval", before).read_text())
    assert summary["adaptation"] == "finetune recipe" and summary["transductive"] is False
    assert summary["finetune"]["steps"] == 3 and len(summary["per_episode"]) == 3
    assert "fine-tuned with the finetune.* recipe)" in result.stdout
    before = set((run / "eval").glob("*.json"))
    result = ok(
        "eval", run, "eval.episodes=3", "eval.finetune=true", "finetune.steps=3", "finetune.unlabeled=entropy"
    )
    summary = json.loads(only_new_json(run / "eval", before).read_text())
    assert summary["transductive"] is True and "transductive" in result.stdout


def test_select_refuses_an_unlabeled_recipe_without_unlabeled_pictures(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_class_folder(root / "meta_train", {f"C{i}": 8 for i in range(5)}, size=16)
    make_class_folder(root / "novel" / "labeled", {f"P{i}": 6 for i in range(3)}, size=16)
    ok("train", *tiny(tmp_path / "runs", "data.dataset=folder", f"data.root={root}", "train.val_every=0"))
    run = only_child(tmp_path / "runs")
    result = invoke("select", run, "--candidate", "finetune.unlabeled=fixmatch")
    assert_user_error(result, 2, "fixmatch", "--unlabeled")
    assert not (run / "finetune").exists() or not any((run / "finetune").iterdir())
