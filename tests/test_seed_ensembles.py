"""benchmarks/seed_ensembles.py on a tiny glyph run: single models and ensembles from the same
fits, scored on the unlabeled pictures' answers and by folds on the labeled ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, ok, only_child, tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ensembles")
    ok("train", *tiny(root / "runs", "train.iterations=2", "runtime.threads=1"))
    return only_child(root / "runs")


def measured(run: Path, *args: str) -> dict:
    recipe = "finetune.steps=2 finetune.holdout=0"
    command = [sys.executable, str(REPO / "benchmarks" / "seed_ensembles.py"), str(run), "--recipe", recipe]
    out = subprocess.run([*command, *args], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout)


def test_an_ensemble_of_one_is_its_first_model_and_every_count_is_in_range(run: Path) -> None:
    result = measured(run, "--seeds", "3")
    assert result["scored_on"] == "unlabeled answers" and result["pictures"] == 12
    assert len(result["single_models_right"]) == len(result["ensemble_of_first_k_right"]) == 3
    assert result["ensemble_of_first_k_right"][0] == result["single_models_right"][0]
    assert all(0 <= r <= 12 for r in result["single_models_right"] + result["ensemble_of_first_k_right"])


def test_folds_score_every_labeled_picture_once(run: Path) -> None:
    result = measured(run, "--seeds", "2", "--folds", "3", "--scratch")
    assert result["scored_on"] == "labeled, 3 folds" and result["pictures"] == 18 and result["scratch"]
    assert result["ensemble_of_first_k_right"][0] == result["single_models_right"][0]
