"""A plain folder of class folders: the automatic class-disjoint split, recorded in the run folder
(data.json) and reused by finetune, eval and predict."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_class_folder, tiny
from typer.testing import CliRunner

from metafew.cli import app
from metafew.config import DataConfig, FolderConfig
from metafew.data import load_data
from metafew.data.folder import auto_split
from metafew.errors import DataError

NAMES = [f"class{i:02d}" for i in range(20)]


def test_split_is_class_disjoint_sized_and_follows_the_hash_rule() -> None:
    split = auto_split(NAMES, FolderConfig(val_fraction=0.15, test_fraction=0.25, split_seed=3))
    assert [len(split[k]) for k in ("meta_train", "meta_val", "novel")] == [12, 3, 5]
    assert sorted(split["meta_train"] + split["meta_val"] + split["novel"]) == NAMES
    order = sorted(NAMES, key=lambda n: hashlib.sha256(f"3/{n}".encode()).hexdigest())
    assert split["novel"] == sorted(order[:5]) and split["meta_val"] == sorted(order[5:8])


def test_split_depends_on_the_seed_not_on_the_listing_order() -> None:
    cfg = FolderConfig()
    assert auto_split(NAMES, cfg) == auto_split(list(reversed(NAMES)), cfg)
    assert auto_split(NAMES, cfg)["novel"] != auto_split(NAMES, FolderConfig(split_seed=1))["novel"]


def test_no_validation_when_its_fraction_is_zero_and_too_few_classes_refused() -> None:
    split = auto_split(NAMES[:4], FolderConfig(val_fraction=0.0, test_fraction=0.25))
    assert (len(split["meta_train"]), split["meta_val"], len(split["novel"])) == (3, [], 1)
    with pytest.raises(DataError, match="too few to split"):
        auto_split(NAMES[:2], FolderConfig(val_fraction=0.15, test_fraction=0.25))


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """12 classes of 10 pictures in one folder: 7 meta-train, 2 validation, 3 novel."""
    return make_class_folder(tmp_path / "pictures", {f"k{i:02d}": 10 for i in range(12)}, size=12)


def flat_cfg(root: Path, **data: object) -> DataConfig:
    return DataConfig(dataset="folder", root=str(root), image_size=8, **data)  # type: ignore[arg-type]


def test_load_splits_the_folder_and_holds_back_unlabeled_pictures(flat: Path) -> None:
    data = load_data(flat_cfg(flat, novel_labeled=4))
    split = auto_split(sorted(p.name for p in flat.iterdir()), FolderConfig())
    assert data.class_lists() == split
    assert data.provenance["split"] == "automatic" and data.provenance["classes"] == split
    assert data.novel.counts() == [4, 4, 4]
    assert data.unlabeled is not None and data.unlabeled.answers is not None
    assert sorted(set(data.unlabeled.answers)) == split["novel"] and len(data.unlabeled.names) == 18


def test_recorded_split_is_reproduced_after_classes_are_added(flat: Path) -> None:
    before = load_data(flat_cfg(flat))
    make_class_folder(flat, {f"new{i}": 10 for i in range(6)}, size=12)
    drawn_again = auto_split(sorted(p.name for p in flat.iterdir()), FolderConfig())
    assert drawn_again != before.class_lists()  # a fresh draw would move classes ...
    after = load_data(flat_cfg(flat), recorded=before.class_lists())  # ... the recorded one does not
    assert after.class_lists() == before.class_lists()
    assert torch.equal(after.novel.images, before.novel.images)


def test_recorded_class_that_disappeared_is_a_data_error(flat: Path) -> None:
    before = load_data(flat_cfg(flat))
    shutil.rmtree(flat / before.novel.classes[0])
    with pytest.raises(DataError, match=before.novel.classes[0]):
        load_data(flat_cfg(flat), recorded=before.class_lists())


# ---------------------------------------------------------------------------------------------
# the command line: train records data.json; finetune / eval / predict reuse it

runner = CliRunner()


def cli(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_cli_story_on_a_flat_folder(flat: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = tiny(runs, "data.dataset=folder", f"data.root={flat}")
    code, out = cli(
        "train", *args, "data.image_size=16", "data.novel_labeled=6", "data.folder.val_fraction=0.25"
    )
    assert code == 0, out
    (run,) = runs.iterdir()
    recorded = json.loads((run / "data.json").read_text())
    assert recorded["dataset"] == "folder" and recorded["split"] == "automatic"
    assert recorded["sources"][0]["files"] == 120 and len(recorded["sources"][0]["tree_sha256"]) == 64
    assert [len(recorded["classes"][k]) for k in ("meta_train", "meta_val", "novel")] == [6, 3, 3]

    make_class_folder(flat, {f"late{i}": 10 for i in range(5)}, size=12)  # the folder grows
    code, out = cli("eval", run, "eval.episodes=3")
    assert code == 0, out
    code, out = cli("finetune", run)
    assert code == 0, out
    assert ", ".join(recorded["classes"]["novel"]) in out
    (model,) = (run / "finetune").iterdir()
    code, out = cli("predict", model)
    assert code == 0, out
    summary = json.loads(next((model / "predict").iterdir()).joinpath("summary.json").read_text())
    assert summary["pictures"] == 12 and "accuracy" in summary  # 4 held-back pictures x 3 classes

    shutil.rmtree(flat / recorded["classes"]["meta_val"][0])  # a recorded class disappears
    code, out = cli("eval", run, "eval.episodes=3")
    assert code == 3 and "Traceback" not in out
    assert recorded["classes"]["meta_val"][0] in out
