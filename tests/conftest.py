"""The test environment (one torch thread, a private dataset cache) and the shared fixtures:
tiny configs that train in seconds, image folders, the shared datasets. The helpers they are
built on, and that test modules import, are in helpers.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from metafew.config import Config
from metafew.config_load import from_dict

# Tiny models gain nothing from threads, and several torch processes with 2 threads each on a
# 2-core CI machine slow each other down many times over. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# Decoded datasets are cached under $METAFEW_CACHE: the tests use a fresh folder of their own,
# never the user's cache. Tests of the cache itself point the variable at their tmp_path.
os.environ["METAFEW_CACHE"] = tempfile.mkdtemp(prefix="metafew-test-cache-")

# helpers.py asserts on behalf of the tests: pytest rewrites its asserts as it does theirs
pytest.register_assert_rewrite("helpers")

from helpers import (  # noqa: E402
    OMNIGLOT_MINIMAL,
    TINY_OVERRIDES,
    make_class_folder,
    shared_datasets,
    write_image,
)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Config:
    """The tiny experiment with its runs under tmp_path."""
    raw = {**TINY_OVERRIDES, "train": {**TINY_OVERRIDES["train"], "runs_dir": str(tmp_path / "runs")}}
    return from_dict(raw)


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """A small few-shot folder dataset: 4 meta-train classes x 8, 3 novel x 6 labeled, 6 unlabeled."""
    root = tmp_path / "my_data"
    make_class_folder(root / "meta_train", {f"C{i}": 8 for i in range(1, 5)})
    make_class_folder(root / "novel" / "labeled", {f"P{i}": 6 for i in range(1, 4)})
    for i in range(6):
        write_image(root / "novel" / "unlabeled" / f"u{i}.png", seed=5000 + i)
    return root


@pytest.fixture
def fashion_seed() -> Path:
    """The Fashion-MNIST seed folders; skipped (with the reason) where ../shared is absent."""
    path = shared_datasets() / "fashion-seed"
    if not (path / "meta_train").is_dir():
        pytest.skip(f"shared dataset not found at {path} (set METAFEW_SHARED_DATA); CI always has it")
    return path


@pytest.fixture
def omniglot_root() -> Path:
    """The shared folder holding the minimal Omniglot zips (skips where it is absent)."""
    root = shared_datasets() / "omniglot"
    if not all((root / name).is_file() for name in OMNIGLOT_MINIMAL.values()):
        pytest.skip(f"Omniglot minimal zips not found in {root} (set METAFEW_SHARED_DATA); CI has them")
    return root
