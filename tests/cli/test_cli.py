"""The command line end to end: train -> finetune -> predict -> eval -> runs, on the embedded
glyphs and on a folder dataset; resume and interruption; every documented user error; the
README's set-up commands and the shipped configs.

Commands run in-process through Typer's CliRunner on the tiny experiment of tests/helpers.py (a
train takes about a second); one test checks both real entry points in subprocesses.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import (
    REPO,
    assert_user_error,
    invoke,
    load_pt,
    make_class_folder,
    ok,
    only_child,
    read_metrics,
    tiny,
)
from PIL import Image

from metafew.config_load import load_config, valid_keys
from metafew.data import load_data
from metafew.errors import EXIT_CODES
from metafew.runs import load_run_config

# ---------------------------------------------------------------------------------------------
# helpers


def train_run(runs_dir: Path, *extra: str) -> Path:
    """Train the tiny experiment; return its (only) new run folder."""
    before = set(runs_dir.iterdir()) if runs_dir.is_dir() else set()
    result = ok("train", *tiny(runs_dir, *extra))
    (run,) = set(runs_dir.iterdir()) - before
    assert f"run folder: {run}" in result.stdout
    return run


def only_json(folder: Path) -> Path:
    """The single evaluation result in `folder` (beside it: its histogram, the same name .png)."""
    (found,) = folder.glob("*.json")
    assert found.with_suffix(".png").is_file()
    return found


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if "loss" in r]


def read_predictions(folder: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the predictions.csv in `folder`."""
    with (folder / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


def probabilities(folder: Path) -> dict[str, np.ndarray]:
    """file -> its probability row, from the predictions.csv in `folder`."""
    _, rows = read_predictions(folder)
    return {row[0]: np.array([float(p) for p in row[3:]]) for row in rows}


def predict_folder(model_dir: Path, pictures: Path) -> Path:
    """`metafew predict MODEL_DIR PICTURES`; the new predict/<id> folder."""
    before = set((model_dir / "predict").iterdir()) if (model_dir / "predict").is_dir() else set()
    ok("predict", model_dir, pictures)
    (out,) = set((model_dir / "predict").iterdir()) - before
    return out


def check_predictions(out: Path, classes: list[str], names: list[str]) -> list[str]:
    """predictions.csv in `out`: header, one row per name, rows sum to 1, label = argmax,
    confidence = the label's probability. Returns the labels."""
    header, rows = read_predictions(out)
    assert header == ["file", "label", "confidence", *(f"p_{c}" for c in classes)]
    assert [row[0] for row in rows] == names
    for row in rows:
        probs = np.array([float(p) for p in row[3:]])
        assert float(row[2]) == pytest.approx(probs.max(), abs=1e-6)
        assert probs.shape == (len(classes),)
        assert (probs >= 0).all()
        assert abs(probs.sum() - 1.0) <= 1e-4, row
        assert row[1] == classes[int(probs.argmax())], row
    return [row[1] for row in rows]


# ---------------------------------------------------------------------------------------------
# 1. the full story on the embedded glyph data (one shared run)


@dataclass
class Story:
    runs_dir: Path
    run: Path
    train_out: str
    finetune_dir: Path
    finetune_out: str
    predict_dir: Path
    predict_out: str
    eval_file: Path
    eval_out: str


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    """train, finetune, predict and eval once on the tiny glyph experiment."""
    runs_dir = tmp_path_factory.mktemp("glyph") / "runs"
    result = ok("train", *tiny(runs_dir))
    run = only_child(runs_dir)
    finetuned = ok("finetune", run)
    finetune_dir = only_child(run / "finetune")
    predicted = ok("predict", finetune_dir)
    predict_dir = only_child(finetune_dir / "predict")
    evaluated = ok("eval", run)
    eval_file = only_json(run / "eval")
    return Story(
        runs_dir,
        run,
        result.stdout,
        finetune_dir,
        finetuned.stdout,
        predict_dir,
        predicted.stdout,
        eval_file,
        evaluated.stdout,
    )


def test_train_writes_a_complete_run_folder(story: Story) -> None:
    run = story.run
    assert run.parent == story.runs_dir
    for name in ("config.yaml", "env.json", "metrics.jsonl", "learning_curve.png"):
        assert (run / name).is_file(), name
    cfg = load_run_config(run)
    assert (cfg.task.ways, cfg.task.shots, cfg.model.hidden, cfg.train.iterations) == (3, 2, 8, 4)
    env = json.loads((run / "env.json").read_text())
    assert env["device"] == "cpu"
    assert env["torch"] == torch.__version__
    with Image.open(run / "learning_curve.png") as img:
        assert img.format == "PNG"
        img.verify()
    last = load_pt(run / "checkpoints" / "last.pt")
    best = load_pt(run / "checkpoints" / "best.pt")
    assert last["iteration"] == 4
    assert last["kind"] == best["kind"] == "meta"
    assert "done: 4 iterations" in story.train_out
    assert f"next: metafew finetune {run}" in story.train_out


def test_metrics_log_every_iteration_and_each_validation(story: Story) -> None:
    records = read_metrics(story.run)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_accuracy" in r]
    assert len(train) + len(val) == len(records)
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]
    for r in train:
        assert set(r) == {"iteration", "loss", "accuracy", "lr", "tasks_per_s", "elapsed_s"}
        assert r["lr"] == 1e-3  # constant schedule
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["tasks_per_s"] > 0
    times = [r["elapsed_s"] for r in records]  # wall seconds since the start, in log order
    assert times == sorted(times) and times[0] > 0
    assert [r["iteration"] for r in val] == [2, 4]  # train.val_every=2
    for r in val:
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["val_ci95"] >= 0
    # best.pt holds the iteration of the (first) best validation accuracy
    best = load_pt(story.run / "checkpoints" / "best.pt")
    top = max(r["val_accuracy"] for r in val)
    assert best["iteration"] == next(r["iteration"] for r in val if r["val_accuracy"] == top)
    assert best["best_accuracy"] == pytest.approx(top)


def test_finetune_saves_the_adapted_model_with_class_names(story: Story) -> None:
    cfg = load_run_config(story.run)
    novel = load_data(cfg.data).novel
    info = json.loads((story.finetune_dir / "finetune.json").read_text())
    assert info["classes"] == novel.classes == ["glyph008", "glyph009", "glyph010"]
    assert info["images"] == len(novel.labels) == 18
    assert info["meta_iteration"] == load_pt(story.run / "checkpoints" / "best.pt")["iteration"]
    assert 0.0 <= info["labeled_accuracy"] <= 1.0
    model = load_pt(story.finetune_dir / "model.pt")
    assert model["kind"] == "finetuned" and model["classes"] == novel.classes
    assert str(story.finetune_dir) in story.finetune_out


def test_predict_labels_the_dataset_pictures_and_scores_them(story: Story) -> None:
    cfg = load_run_config(story.run)
    data = load_data(cfg.data)
    unlabeled = data.unlabeled
    assert unlabeled is not None and unlabeled.answers is not None
    labels = check_predictions(story.predict_dir, data.novel.classes, unlabeled.names)
    assert len(labels) == 12
    summary = json.loads((story.predict_dir / "summary.json").read_text())
    expected = sum(a == b for a, b in zip(labels, unlabeled.answers)) / len(labels)
    assert summary["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert summary["pictures"] == 12 and summary["unreadable"] == []
    assert f"accuracy against answers {100 * expected:.1f}%" in story.predict_out


def test_eval_reports_mean_and_ci_of_its_episodes(story: Story) -> None:
    result = json.loads(story.eval_file.read_text())
    accs = np.array(result["per_episode"])
    assert result["episodes"] == len(accs) == 5  # eval.episodes
    assert ((accs >= 0) & (accs <= 1)).all()
    assert result["accuracy"] == pytest.approx(accs.mean(), abs=1e-12)
    assert result["ci95"] == pytest.approx(1.96 * accs.std(ddof=1) / math.sqrt(len(accs)), abs=1e-12)
    assert (result["ways"], result["shots"], result["queries"]) == (3, 2, 3)
    assert result["checkpoint"] == "best"
    assert f"accuracy {100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f}%" in story.eval_out
    assert str(story.eval_file) in story.eval_out


def test_eval_is_reproducible_and_takes_eval_overrides(story: Story, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(story.run, run)
    shutil.rmtree(run / "eval")
    ok("eval", run)
    again = json.loads(only_json(run / "eval").read_text())
    first = json.loads(story.eval_file.read_text())
    assert again["per_episode"] == first["per_episode"]  # seeded episodes
    shutil.rmtree(run / "eval")
    ok("eval", run, "--checkpoint", "last", "eval.episodes=3")
    third = json.loads(only_json(run / "eval").read_text())
    assert third["episodes"] == len(third["per_episode"]) == 3 and third["checkpoint"] == "last"
    shutil.rmtree(run / "eval")
    ok("eval", run, "eval.norm=support", "eval.episodes=2")
    assert json.loads(only_json(run / "eval").read_text())["norm"] == "support"


def test_runs_lists_the_run(story: Story) -> None:
    result = ok("runs", "--root", story.runs_dir, env={"COLUMNS": "200"})
    assert story.run.name in result.stdout
    assert "glyphs" in result.stdout and "3-way 2-shot" in result.stdout and "4/4" in result.stdout
    empty = ok("runs", "--root", story.runs_dir / "nothing")
    assert "no runs under" in empty.stdout


def test_runs_shows_full_run_names_on_80_columns(story: Story) -> None:
    result = ok("runs", "--root", story.runs_dir, env={"COLUMNS": "80"})
    assert story.run.name in result.stdout


# ---------------------------------------------------------------------------------------------
# 2. the same story on a folder dataset


def test_folder_dataset_story_with_unreadable_pictures(folder_dataset: Path, tmp_path: Path) -> None:
    root = folder_dataset
    unlabeled = root / "novel" / "unlabeled"
    (unlabeled / "notes.txt").write_text("not a picture\n")
    (unlabeled / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    good = sorted(p.name for p in unlabeled.glob("u*.png"))
    answers = {name: f"P{1 + i % 3}" for i, name in enumerate(good)}
    (root / "novel" / "answers.csv").write_text(
        "file,label\n" + "".join(f"{n},{c}\n" for n, c in answers.items())
    )
    runs_dir = tmp_path / "runs"
    run = train_run(runs_dir, "data.dataset=folder", f"data.root={root}")

    # no meta_val: no validation records, and best.pt is the last model
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3, 4]
    last, best = load_pt(run / "checkpoints" / "last.pt"), load_pt(run / "checkpoints" / "best.pt")
    assert best["iteration"] == last["iteration"] == 4
    assert last["params"].keys() == best["params"].keys()
    for key in last["params"]:
        assert torch.equal(last["params"][key], best["params"][key]), key

    ok("finetune", run, "--labeled", root / "novel" / "labeled")
    ft = only_child(run / "finetune")
    info = json.loads((ft / "finetune.json").read_text())
    assert info["classes"] == ["P1", "P2", "P3"] and info["images"] == 18

    result = invoke("predict", ft, unlabeled)
    assert result.exit_code == 0, result.output
    out = only_child(ft / "predict")
    labels = check_predictions(out, ["P1", "P2", "P3"], good)
    assert "broken.png" in result.stderr and "notes.txt" not in result.output
    assert "Traceback" not in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pictures"] == len(good) == 6
    assert [u["file"] for u in summary["unreadable"]] == ["broken.png"]
    assert summary["accuracy"] == pytest.approx(
        sum(label == answers[n] for n, label in zip(good, labels)) / len(good)
    )


def test_default_predict_reports_unreadable_dataset_pictures(folder_dataset: Path, tmp_path: Path) -> None:
    root = folder_dataset
    (root / "novel" / "unlabeled" / "broken.png").write_bytes(b"not a png")
    run = train_run(tmp_path / "runs", "data.dataset=folder", f"data.root={root}", "train.iterations=1")
    ok("finetune", run)
    ft = only_child(run / "finetune")
    result = ok("predict", ft)
    summary = json.loads((only_child(ft / "predict") / "summary.json").read_text())
    assert summary["pictures"] == 6
    assert [u["file"] for u in summary["unreadable"]] == ["broken.png"]
    assert "broken.png" in result.stderr


# ---------------------------------------------------------------------------------------------
# 3. a prediction does not depend on the other pictures in the folder


def test_prediction_is_independent_of_the_other_pictures(story: Story, tmp_path: Path) -> None:
    cfg = load_run_config(story.run)
    pictures = load_data(cfg.data).unlabeled
    assert pictures is not None
    everything, alone, renamed = tmp_path / "all", tmp_path / "alone", tmp_path / "renamed"
    for folder in (everything, alone, renamed):
        folder.mkdir()
    n = len(pictures.names)
    for i, (name, image) in enumerate(zip(pictures.names, pictures.images)):
        array = image[0].numpy()
        Image.fromarray(array, mode="L").save(everything / name)
        Image.fromarray(array, mode="L").save(renamed / f"{n - i:03d}_{name}")  # reversed order
    a = pictures.names[0]
    shutil.copy(everything / a, alone / a)

    together = probabilities(predict_folder(story.finetune_dir, everything))
    single = probabilities(predict_folder(story.finetune_dir, alone))
    shuffled = probabilities(predict_folder(story.finetune_dir, renamed))
    from_dataset = probabilities(story.predict_dir)

    assert list(single) == [a]
    np.testing.assert_allclose(single[a], together[a], atol=1e-5, rtol=0)
    assert list(shuffled)[-1] == f"{n:03d}_{a}"  # the order really changed
    for i, name in enumerate(pictures.names):
        np.testing.assert_allclose(shuffled[f"{n - i:03d}_{name}"], together[name], atol=1e-5, rtol=0)
        np.testing.assert_allclose(from_dataset[name], together[name], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# 4. resume


def test_resume_continues_exactly(tmp_path: Path) -> None:
    whole = train_run(tmp_path / "a", "train.iterations=4")
    part = train_run(tmp_path / "b", "train.iterations=2")
    assert load_pt(part / "checkpoints" / "last.pt")["iteration"] == 2
    ok("train", "--resume", part, "train.iterations=4")
    assert list((tmp_path / "b").iterdir()) == [part]  # no new run folder

    a, b = load_pt(whole / "checkpoints" / "last.pt"), load_pt(part / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 4
    assert a["params"].keys() == b["params"].keys()
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), key

    def essentials(run: Path) -> list[tuple]:
        return [
            (r["iteration"], r.get("loss"), r.get("accuracy"), r.get("val_accuracy"))
            for r in read_metrics(run)
        ]

    assert essentials(whole) == essentials(part)
    assert [r["iteration"] for r in train_records(part)] == [1, 2, 3, 4]
    assert load_run_config(part).train.iterations == 4


def test_resume_refuses_a_changed_setting(story: Story, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(story.run, run)
    before = snapshot(run)
    line = assert_user_error(invoke("train", "--resume", run, "task.shots=3"), 2, "task.shots")
    assert re.search(r"\b2\b.*\b3\b", line.split("task.shots", 1)[1]), line  # old, then new value
    assert snapshot(run) == before

    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert_user_error(invoke("train", "--resume", not_a_run), 4, str(not_a_run))
    assert_user_error(invoke("train", "--resume", tmp_path / "missing"), 4)


def test_resume_allows_a_named_change(tmp_path: Path) -> None:
    run = train_run(tmp_path / "runs", "train.iterations=2")
    line = assert_user_error(invoke("train", "--resume", run, "train.outer_lr=0.01"), 2, "train.outer_lr")
    assert "--allow-change train.outer_lr" in line
    ok(
        "train",
        "--resume",
        run,
        "--allow-change",
        "train.outer_lr",
        "train.outer_lr=0.01",
        "train.iterations=3",
    )
    assert load_run_config(run).train.outer_lr == 0.01
    assert [r["lr"] for r in train_records(run)] == [1e-3, 1e-3, 0.01]
    # --resume auto finds the run only when the same keys are allowed
    args = tiny(tmp_path / "runs", "train.outer_lr=0.02", "train.iterations=4")
    ok("train", "--resume", "auto", "--allow-change", "train.outer_lr", *args)
    assert only_child(tmp_path / "runs") == run and [r["lr"] for r in train_records(run)][-1] == 0.02
    ok("train", "--resume", "auto", *tiny(tmp_path / "runs", "train.outer_lr=0.03", "train.iterations=5"))
    assert len(list((tmp_path / "runs").iterdir())) == 2  # no match: a new run


# ---------------------------------------------------------------------------------------------
# 5. user errors: one line on stderr, the documented exit code, nothing damaged


def _folder_with_short_class(tmp_path: Path) -> Path:
    root = tmp_path / "short"
    make_class_folder(root / "meta_train", {"C1": 8, "C2": 3, "C3": 8, "C4": 8})
    make_class_folder(root / "novel" / "labeled", {f"P{i}": 6 for i in range(1, 4)})
    return root


def test_train_config_errors(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    line = assert_user_error(invoke("train", *tiny(runs_dir, "task.shot=3")), 2, "task.shot")
    assert "'task.shots'" in line  # the closest valid key
    assert_user_error(invoke("train", *tiny(runs_dir, "task.ways=abc")), 2, "task.ways", "abc")
    assert_user_error(invoke("train", *tiny(runs_dir, "train.outer_lr=-1")), 2, "train.outer_lr")
    assert_user_error(invoke("train", *tiny(runs_dir, "data.dataset=nope")), 2, "data.dataset", "nope")
    missing = tmp_path / "nope.yaml"
    assert_user_error(invoke("train", "--config", missing, *tiny(runs_dir)), 2, str(missing))
    assert_user_error(invoke("train", *tiny(runs_dir, "data.dataset=folder")), 2, "data.root")
    assert not runs_dir.exists()  # config errors are caught before any folder exists


def test_train_data_errors(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    missing = tmp_path / "no_such_root"
    assert_user_error(
        invoke("train", *tiny(runs_dir, "data.dataset=folder", f"data.root={missing}")),
        3,
        str(missing),
    )
    assert not runs_dir.exists()  # the dataset is loaded before the run folder is made
    short = _folder_with_short_class(tmp_path)
    line = assert_user_error(
        invoke("train", *tiny(runs_dir, "data.dataset=folder", f"data.root={short}")),
        3,
        "C2 (have 3, need 5)",  # shots 2 + queries 3
    )
    assert "C1" not in line
    line = assert_user_error(invoke("train", *tiny(runs_dir, "task.ways=6")), 3, "6-way", "found 5")
    assert "task.ways" in line  # how to fix it


def test_failed_train_leaves_no_run_folder(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    assert invoke("train", *tiny(runs_dir, "task.ways=6")).exit_code == 3
    assert not runs_dir.exists() or not list(runs_dir.iterdir())


def test_commands_on_a_run_fail_cleanly_and_change_nothing(story: Story, tmp_path: Path) -> None:
    run = story.run
    before = snapshot(run)
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()

    assert_user_error(invoke("finetune", not_a_run), 4, str(not_a_run))
    assert_user_error(invoke("eval", not_a_run), 4, str(not_a_run))
    assert_user_error(invoke("predict", not_a_run), 4, "model.pt")
    assert_user_error(invoke("predict", run), 4, "model.pt")  # a run folder is not a model folder
    assert_user_error(invoke("eval", run, "task.shots=1"), 2, "task.*")
    assert_user_error(invoke("finetune", run, "model.hidden=4"), 2, "model.*")
    assert_user_error(invoke("eval", run, "eval.episodes=0"), 2, "eval.episodes")
    assert_user_error(invoke("eval", run, "--checkpoint", "first"), 2, "first")

    two_classes = make_class_folder(tmp_path / "two", {"P1": 4, "P2": 4})
    assert_user_error(invoke("finetune", run, "--labeled", two_classes), 3, "task.ways", "P1, P2")
    assert_user_error(invoke("finetune", run, "--labeled", tmp_path / "nowhere"), 3, "nowhere")
    assert_user_error(
        invoke("predict", story.finetune_dir, tmp_path / "nowhere"), 3, str(tmp_path / "nowhere")
    )

    assert snapshot(run) == before


def test_corrupt_checkpoints_are_refused(story: Story, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(story.run, run)
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    before = snapshot(run)
    assert_user_error(invoke("eval", run), 4, "best.pt")
    assert_user_error(invoke("finetune", run), 4, "best.pt")
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / "last.prev.pt").unlink()  # no fallback either (see tests/reliability)
    assert_user_error(invoke("train", "--resume", run), 4, "last.pt")
    del before["checkpoints/last.pt"], before["checkpoints/last.prev.pt"]
    assert snapshot(run) == before


def test_incompatible_checkpoint_is_a_run_error(story: Story, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(story.run, run)
    best = run / "checkpoints" / "best.pt"
    state = load_pt(best)
    first = next(iter(state["params"]))
    state["params"][first] = torch.zeros(3, 3)  # a valid metafew checkpoint of another model
    torch.save(state, best)
    assert_user_error(invoke("eval", run), 4, "best.pt")


def test_divergence_at_once_exits_5_and_leaves_no_folder(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    # an inner step of 1e30 overflows the adapted weights: the first meta-loss is not finite
    result = invoke("train", *tiny(runs_dir, "algorithm.inner_lr=1e30"))
    assert_user_error(result, 5, "iteration 1", "non-finite", "algorithm.inner_lr")
    # no checkpoint was ever written, so the new run takes its folder with it (issue 15)
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 6. config and exit-codes


def test_config_keys_lists_every_key() -> None:
    result = ok("config", "--keys")
    listed = [line.split(" = ", 1)[0] for line in result.stdout.splitlines()]
    assert listed == valid_keys()


def test_config_prints_the_resolved_yaml(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("task:\n  ways: 3\n  shots: 5\ntrain:\n  outer_lr: 1e-2\n")
    resolved = yaml.safe_load(ok("config", "-c", path, "task.shots=1").stdout)
    assert resolved["task"] == {"ways": 3, "shots": 1, "queries": 15}
    assert resolved["train"]["outer_lr"] == 0.01
    assert resolved["algorithm"]["inner_lr"] == 0.4  # a default
    dup = tmp_path / "dup.yaml"
    dup.write_text("task:\n  ways: 3\n  ways: 4\n")
    assert_user_error(invoke("config", "-c", dup), 2, "duplicate", "ways")


def test_exit_codes_lists_every_code() -> None:
    lines = ok("exit-codes").stdout.splitlines()
    assert [int(line.split()[0]) for line in lines] == list(EXIT_CODES)
    for line, meaning in zip(lines, EXIT_CODES.values()):
        assert line.endswith(meaning)


def test_both_entry_points_run() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "metafew", "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0, help_text.stderr
    for command in ("train", "finetune", "predict", "eval", "runs", "config", "exit-codes"):
        assert command in help_text.stdout
    script = Path(sys.executable).with_name("metafew")
    assert script.is_file(), "the metafew console script is not installed beside python"
    codes = subprocess.run([str(script), "exit-codes"], capture_output=True, text=True, timeout=60)
    assert codes.returncode == 0, codes.stderr
    assert [int(line.split()[0]) for line in codes.stdout.splitlines()] == list(EXIT_CODES)


# ---------------------------------------------------------------------------------------------
# 7. interruption


@pytest.mark.slow  # a real subprocess and signal: 5-13 s on 2 shared cores
def test_sigterm_checkpoints_and_resume_finishes(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    args = tiny(runs_dir, "train.iterations=200", "runtime.threads=1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metafew", "train", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = list(runs_dir.glob("*/metrics.jsonl"))
            if metrics and len(metrics[0].read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert time.monotonic() - sent < 30
    assert "Traceback" not in stderr and "--resume" in stderr

    run = only_child(runs_dir)
    done = load_pt(run / "checkpoints" / "last.pt")["iteration"]
    assert 2 <= done < 200
    assert train_records(run)[-1]["iteration"] == done
    with Image.open(run / "learning_curve.png") as img:
        img.verify()

    ok("train", "--resume", run, f"train.iterations={done + 2}")
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == done + 2
    assert [r["iteration"] for r in train_records(run)] == list(range(1, done + 3))


# ---------------------------------------------------------------------------------------------
# 8. README set-up commands and shipped configs


def _fenced_blocks(text: str) -> list[list[str]]:
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_readme_setup_commands_and_ci() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme.split("\n## Set-up\n", 1)[1].split("\n## ", 1)[0]
    blocks = _fenced_blocks(setup)
    assert len(blocks) == 2 and all(len(b) == 1 for b in blocks), blocks
    run_cmd, test_cmd = blocks[0][0].strip(), blocks[1][0].strip()
    assert run_cmd.endswith("metafew train --config configs/maml_5w5s.yaml")
    assert test_cmd.endswith("python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd[test_cmd.index("pip install") :] in [line.strip() for line in ci.splitlines()]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# metafew ")
    assert f"configs/{path.name}" in first
    cfg = load_config(path, ["data.root=anything"] if "data.root" in first else [])
    assert cfg.task.ways >= 2


def test_configs_folder_is_not_empty() -> None:
    assert {p.name for p in (REPO / "configs").glob("*.yaml")} >= {"maml_5w5s.yaml", "fashion_seed.yaml"}


def test_unknown_command_is_a_usage_error() -> None:
    result = invoke("nope")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
