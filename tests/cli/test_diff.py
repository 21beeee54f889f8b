"""`metafew diff`: eval results of the same seeded episodes compared episode by episode."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error, invoke, ok, only_child, tiny

from metafew.data import LabeledImages
from metafew.evaluation import confidence_interval, paired_difference


def test_paired_difference_is_the_interval_of_the_episode_differences() -> None:
    rng = np.random.default_rng(0)
    hardness = rng.uniform(0.3, 0.9, 200)  # what every model finds hard about episode i
    first = np.clip(hardness + rng.normal(0, 0.03, 200), 0, 1)
    second = np.clip(hardness + 0.02 + rng.normal(0, 0.03, 200), 0, 1)
    mean, ci = paired_difference(first, second)
    d = second - first
    assert mean == pytest.approx(d.mean(), abs=1e-12)
    assert ci == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(200), abs=1e-12)
    # the shared hardness cancels: the paired interval is far narrower than either accuracy's own
    assert ci < confidence_interval(first)[1] / 3 and ci < confidence_interval(second)[1] / 3
    with pytest.raises(ValueError, match="shape"):
        paired_difference(first, second[:-1])


def test_fingerprint_changes_with_any_picture_label_or_class_name() -> None:
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    base = LabeledImages(images, labels, ["a", "b", "c"])
    assert re.fullmatch(r"[0-9a-f]{16}", base.fingerprint())
    assert LabeledImages(images.clone(), labels.clone(), ["a", "b", "c"]).fingerprint() == base.fingerprint()
    one_pixel = images.clone()
    one_pixel[3, 0, 2, 1] ^= 1
    assert LabeledImages(one_pixel, labels, ["a", "b", "c"]).fingerprint() != base.fingerprint()
    assert LabeledImages(images, labels.flip(0), ["a", "b", "c"]).fingerprint() != base.fingerprint()
    assert LabeledImages(images, labels, ["a", "b", "d"]).fingerprint() != base.fingerprint()


@pytest.fixture(scope="module")
def evals(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny run evaluated three ways: its algorithm on 6 episodes, the finetune recipe on the same
    6, and the algorithm on 6 episodes of another seed."""
    root = tmp_path_factory.mktemp("diff")
    ok("train", *tiny(root / "runs", "train.iterations=2", "runtime.threads=1"))
    run = only_child(root / "runs")
    files = []
    for args in (
        [],
        ["eval.finetune=true", "finetune.steps=2", "finetune.members=1"],
        ["eval.seed=7"],
    ):
        before = set((run / "eval").glob("*.json"))
        ok("eval", run, "eval.episodes=6", "runtime.threads=1", *args)
        (new,) = set((run / "eval").glob("*.json")) - before
        files.append(new)
    return files[0], files[1], files[2]


def test_diff_prints_each_result_against_the_first_episode_by_episode(evals: tuple[Path, Path, Path]) -> None:
    first, tuned, _ = evals
    a, b = (json.loads(p.read_text()) for p in (first, tuned))
    assert a["novel"] == b["novel"] and re.fullmatch(r"[0-9a-f]{16}", a["novel"])
    result = ok("diff", first, tuned, env={"COLUMNS": "400"})
    d = np.array(b["per_episode"]) - np.array(a["per_episode"])
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert f"6 episodes; first: {first}, {100 * a['accuracy']:.2f} ± {100 * a['ci95']:.2f}%" in result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith(str(tuned)))
    assert f"{100 * d.mean():+.2f} ± {100 * half:.2f} points paired" in line
    assert f"above the first on {(d > 0).sum()} episodes, below on {(d < 0).sum()}" in line
    assert "adaptation=finetune recipe" in line and "finetune.steps" not in line  # a new section: one name
    assert result.stderr == ""


def test_diff_refuses_other_episodes_one_file_and_files_that_are_not_results(
    evals: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    first, _, other_seed = evals
    assert_user_error(invoke("diff", first, other_seed), 2, str(other_seed), "seed 7 against 1234")
    assert_user_error(invoke("diff", first), 2, "two or more")
    elsewhere = json.loads(first.read_text())
    elsewhere["novel"] = "0" * 16  # the same seed and counts on other test pictures
    other_pictures = tmp_path / "other_pictures.json"
    other_pictures.write_text(json.dumps(elsewhere))
    assert_user_error(invoke("diff", first, other_pictures), 2, "other_pictures.json", "novel")
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"accuracy": 0.5}')
    assert_user_error(invoke("diff", first, bogus), 4, "bogus.json", "per_episode")


def test_diff_warns_where_a_result_predates_the_fingerprint(
    evals: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    first, tuned, _ = evals
    old = json.loads(tuned.read_text())
    del old["novel"]
    older = tmp_path / "older.json"
    older.write_text(json.dumps(old))
    result = ok("diff", first, older)
    assert f"warning: {older} predates the test pictures' fingerprint" in result.stderr
    assert "points paired" in result.stdout
