"""Datasets: name -> loader registry. Loaders return decoded uint8 tensors, never episodes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from metafew.config import DataConfig
from metafew.data.base import FewShotData, LabeledImages, UnlabeledImages, to_float
from metafew.data.folder import load_class_folders, load_folder_dataset, load_unlabeled
from metafew.data.glyphs import load_glyphs
from metafew.data.omniglot import load_omniglot

DATASETS: dict[str, Callable[[DataConfig], FewShotData]] = {
    "glyphs": lambda cfg: load_glyphs(cfg.glyphs, cfg.image_size, cfg.channels),
    "folder": lambda cfg: load_folder_dataset(Path(cfg.root or "."), cfg.image_size, cfg.channels),
    "omniglot": load_omniglot,
}
"""Every dataset metafew can load, by the name used in `data.dataset`."""


def load_data(cfg: DataConfig) -> FewShotData:
    """Load the dataset `cfg.dataset` names."""
    return DATASETS[cfg.dataset](cfg)


__all__ = [
    "DATASETS",
    "FewShotData",
    "LabeledImages",
    "UnlabeledImages",
    "load_class_folders",
    "load_data",
    "load_unlabeled",
    "to_float",
]
