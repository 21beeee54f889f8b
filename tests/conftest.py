"""Shared fixtures: tiny configs that train in seconds, image folders, the shared datasets."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from metafew.config import Config
from metafew.config_load import from_dict

# Tiny models gain nothing from threads, and several torch processes with 2 threads each on a
# 2-core CI machine slow each other down many times over. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# Decoded datasets are cached under $METAFEW_CACHE: the tests use a fresh folder of their own,
# never the user's cache. Tests of the cache itself point the variable at their tmp_path.
os.environ["METAFEW_CACHE"] = tempfile.mkdtemp(prefix="metafew-test-cache-")

TINY_OVERRIDES: dict = {
    "data": {
        "image_size": 16,
        "glyphs": {
            "train_classes": 5,
            "val_classes": 3,
            "novel_classes": 3,
            "train_samples": 8,
            "novel_labeled": 6,
            "novel_unlabeled": 4,
        },
    },
    "task": {"ways": 3, "shots": 2, "queries": 3},
    "model": {"hidden": 8},
    "train": {
        "iterations": 4,
        "meta_batch_size": 2,
        "val_every": 2,
        "val_episodes": 3,
        "log_every": 1,
        "checkpoint_every": 2,
    },
    "eval": {"episodes": 5},
    "runtime": {"device": "cpu"},
}
"""A glyph experiment small enough for unit tests (3-way 2-shot on 16x16 images, 8 filters)."""

TINY_ARGS: list[str] = [
    "data.image_size=16",
    "data.glyphs.train_classes=5",
    "data.glyphs.val_classes=3",
    "data.glyphs.novel_classes=3",
    "data.glyphs.train_samples=8",
    "data.glyphs.novel_labeled=6",
    "data.glyphs.novel_unlabeled=4",
    "task.ways=3",
    "task.shots=2",
    "task.queries=3",
    "model.hidden=8",
    "train.iterations=4",
    "train.meta_batch_size=2",
    "train.val_every=2",
    "train.val_episodes=3",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "runtime.device=cpu",
    "eval.episodes=5",
]
"""The same tiny experiment as command-line overrides (add train.runs_dir=...)."""


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Config:
    """The tiny experiment with its runs under tmp_path."""
    raw = {**TINY_OVERRIDES, "train": {**TINY_OVERRIDES["train"], "runs_dir": str(tmp_path / "runs")}}
    return from_dict(raw)


def write_image(path: Path, size: int = 20, seed: int = 0, mode: str = "L") -> Path:
    """A random picture at `path` (parents created)."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def make_class_folder(root: Path, classes: dict[str, int], size: int = 20, suffix: str = ".png") -> Path:
    """root/<class>/<i>.png with the given number of random pictures per class."""
    for k, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / name / f"{i:03d}{suffix}", size, seed=1000 * k + i)
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """A small few-shot folder dataset: 4 meta-train classes x 8, 3 novel x 6 labeled, 6 unlabeled."""
    root = tmp_path / "my_data"
    make_class_folder(root / "meta_train", {f"C{i}": 8 for i in range(1, 5)})
    make_class_folder(root / "novel" / "labeled", {f"P{i}": 6 for i in range(1, 4)})
    for i in range(6):
        write_image(root / "novel" / "unlabeled" / f"u{i}.png", seed=5000 + i)
    return root


def shared_datasets() -> Path:
    """../shared/datasets beside the checkout, or $METAFEW_SHARED_DATA."""
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return Path(os.environ.get("METAFEW_SHARED_DATA", default))


@pytest.fixture
def fashion_seed() -> Path:
    """The Fashion-MNIST seed folders; skipped (with the reason) where ../shared is absent."""
    path = shared_datasets() / "fashion-seed"
    if not (path / "meta_train").is_dir():
        pytest.skip(f"shared dataset not found at {path} (set METAFEW_SHARED_DATA); CI always has it")
    return path


OMNIGLOT_MINIMAL = {"small1": "images_background_small1.zip", "small2": "images_background_small2.zip"}
"""The two minimal Omniglot zips in the shared datasets, by part name."""


@pytest.fixture
def omniglot_root() -> Path:
    """The shared folder holding the minimal Omniglot zips (skips where it is absent)."""
    root = shared_datasets() / "omniglot"
    if not all((root / name).is_file() for name in OMNIGLOT_MINIMAL.values()):
        pytest.skip(f"Omniglot minimal zips not found in {root} (set METAFEW_SHARED_DATA); CI has them")
    return root


def count_builds(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """Replace DATASETS[name].build with a wrapper that records each call (the decoding)."""
    from metafew.data import DATASETS  # the registry as the tests see it

    entry = DATASETS[name]
    calls: list[str] = []
    build = entry.build

    def counting(cfg: Any, sources: list[Path], recorded: dict | None) -> Any:
        calls.append(name)
        return build(cfg, sources, recorded)

    monkeypatch.setitem(DATASETS, name, dataclasses.replace(entry, build=counting))
    return calls
