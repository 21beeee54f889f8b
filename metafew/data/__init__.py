"""Datasets: a name -> `Dataset` registry. Loaders return decoded uint8 tensors, never episodes.

`load_data` is the one entry point: it asks the dataset for its (verified, possibly downloaded)
source files, serves the decoded tensors from the cache when nothing changed, and stamps the
result with its provenance (dataset, settings, source digests, class lists).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from metafew.config import DataConfig
from metafew.data import cache
from metafew.data.base import (
    Dataset,
    FewShotData,
    LabeledImages,
    Splits,
    UnlabeledImages,
    split_novel,
    to_float,
)
from metafew.data.cifar import CIFAR_FS, FC100
from metafew.data.download import Progress, describe_sources
from metafew.data.fashion_mnist import FASHION_MNIST
from metafew.data.folder import FOLDER, load_class_folders, load_unlabeled
from metafew.data.glyphs import GLYPHS
from metafew.data.mini_imagenet import MINI_IMAGENET
from metafew.data.omniglot import OMNIGLOT
from metafew.errors import DataError

DATASETS: dict[str, Dataset] = {
    "glyphs": GLYPHS,
    "folder": FOLDER,
    "omniglot": OMNIGLOT,
    "mini-imagenet": MINI_IMAGENET,
    "cifar-fs": CIFAR_FS,
    "fc100": FC100,
    "fashion-mnist": FASHION_MNIST,
}
"""Every dataset metafew can load, by the name used in `data.dataset`."""


def _settings(cfg: DataConfig) -> dict[str, Any]:
    settings = asdict(cfg)
    for key in ("root", "download", "cache"):  # root enters through the files' resolved paths
        settings.pop(key)
    return settings


def load_data(
    cfg: DataConfig, recorded: Splits | None = None, progress: Progress | None = None
) -> FewShotData:
    """The dataset `cfg.dataset` names, from the cache when its files and settings are unchanged.

    recorded: the class lists a run was trained with (its data.json); the loaded splits must
    match them, and datasets whose split is drawn (folder) reproduce it from them.
    """
    dataset = DATASETS[cfg.dataset]
    sources = dataset.sources(cfg, progress)
    entry = None
    if cfg.cache and dataset.cacheable:
        entry = cache.entry_path(cfg.dataset, cache.cache_key(cfg.dataset, _settings(cfg), sources))
        hit = cache.load_entry(entry)
        if hit is not None and (recorded is None or hit.class_lists() == recorded):
            return _checked(hit, recorded)
    data = dataset.build(cfg, sources, recorded)
    data = FewShotData(
        data.meta_train,
        data.meta_val,
        data.novel,
        data.unlabeled,
        {
            "dataset": cfg.dataset,
            "root": cfg.root,
            "settings": _settings(cfg),
            "sources": describe_sources(sources),
            **data.provenance,
            "classes": data.class_lists(),
        },
    )
    if entry is not None:
        cache.store_entry(entry, data)
    return _checked(data, recorded)


def _checked(data: FewShotData, recorded: Splits | None) -> FewShotData:
    if recorded is None:
        return data
    for split, names in data.class_lists().items():
        expected = recorded.get(split, [])
        if names != expected:
            missing = sorted(set(expected) - set(names))[:3]
            extra = sorted(set(names) - set(expected))[:3]
            raise DataError(
                f"the dataset's {split} classes differ from those the run was trained with "
                f"(missing {missing or 'none'}, new {extra or 'none'}, in data.json): the files "
                "changed since training; restore them or train a new run"
            )
    return data


__all__ = [
    "DATASETS",
    "Dataset",
    "FewShotData",
    "LabeledImages",
    "Splits",
    "UnlabeledImages",
    "load_class_folders",
    "load_data",
    "load_unlabeled",
    "split_novel",
    "to_float",
]
