"""Datasets as decoded uint8 tensors: labeled classes, unlabeled pictures, and the four splits."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from metafew.config.schema import DataConfig
    from metafew.data.download import Progress, RemoteFile


@dataclass(frozen=True)
class LabeledImages:
    """Images grouped by class.

    images: [n, C, H, W] uint8; labels: [n] int64 in 0..len(classes)-1; classes: class names.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [n, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be [n] matching images")

    def counts(self) -> list[int]:
        """Images per class, in class order."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def indices_by_class(self) -> list[torch.Tensor]:
        """For each class, the [n_c] int64 indices of its images (stable order)."""
        order = torch.argsort(self.labels, stable=True)
        return list(torch.split(order, self.counts()))

    def fingerprint(self) -> str:
        """16 hex digits of a SHA-256 over the pictures, labels and class names: two sets with the
        same fingerprint give the same seeded episodes."""
        digest = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.numpy().tobytes())
        digest.update("\n".join(self.classes).encode("utf-8"))
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class UnlabeledImages:
    """Pictures to label. images: [n, C, H, W] uint8; names: file names; answers: true class
    names when known (embedded data, or an answers.csv beside the folder), else None."""

    images: torch.Tensor
    names: list[str]
    answers: list[str] | None = None


@dataclass(frozen=True)
class FewShotData:
    """The splits of a few-shot dataset.

    meta_train: classes for meta-training; meta_val: held-out classes for validation (or None);
    novel: labeled pictures of the novel classes (fine-tune and test episodes); unlabeled: the
    novel classes' unlabeled pictures (predict), or None. provenance: where the pictures came
    from (dataset, split, source files and their digests), JSON-ready, recorded in run folders.
    """

    meta_train: LabeledImages
    meta_val: LabeledImages | None
    novel: LabeledImages
    unlabeled: UnlabeledImages | None
    provenance: dict[str, Any] = field(default_factory=dict)

    def class_lists(self) -> dict[str, list[str]]:
        """Class names per split (the part of the provenance that identifies a split)."""
        return {
            "meta_train": self.meta_train.classes,
            "meta_val": self.meta_val.classes if self.meta_val is not None else [],
            "novel": self.novel.classes,
        }


UNLABELED_SEED = 0x0A1
"""Fixed seed of the order of held-back unlabeled pictures: their order says nothing of class."""


def split_novel(novel: LabeledImages, labeled: int) -> tuple[LabeledImages, UnlabeledImages | None]:
    """Keep the first `labeled` pictures of each novel class (stable order) labeled; the others
    become unlabeled pictures, shuffled with a fixed seed, with their classes as answers.
    `labeled` 0 (or at least a class's count) keeps all of a class labeled."""
    ranks = torch.empty_like(novel.labels)
    for indices in novel.indices_by_class():
        ranks[indices] = torch.arange(len(indices))
    keep = ranks < labeled if labeled > 0 else torch.ones_like(ranks, dtype=torch.bool)
    held = torch.nonzero(~keep).flatten()
    kept = LabeledImages(novel.images[keep], novel.labels[keep], novel.classes)
    if len(held) == 0:
        return kept, None
    held = held[torch.from_numpy(np.random.default_rng(UNLABELED_SEED).permutation(len(held)))]
    answers = [novel.classes[i] for i in novel.labels[held].tolist()]
    files = [f"unlabeled_{i:05d}.png" for i in range(len(held))]
    return kept, UnlabeledImages(novel.images[held].contiguous(), files, answers)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float32 in [0, 1] (the network's input scale)."""
    return images.float().div_(255.0)


Splits = dict[str, list[str]]
"""Class names per split: {"meta_train": [...], "meta_val": [...], "novel": [...]}."""


@dataclass(frozen=True)
class Dataset:
    """How one dataset is found, checked and decoded (an entry of `metafew.data.DATASETS`).

    sources(cfg, progress): the dataset's files, verified (and downloaded when cfg.download);
    raises DataError naming a missing or wrong file. build(cfg, sources, recorded): the decoded
    splits; `recorded` is a run's class lists when a split must be reproduced (the folder
    dataset's automatic split), else None. summary/files: one line each for `metafew data list`
    and the README. remotes: the files `metafew data prepare` may download. needs_root: whether
    data.root must be set. flips_keep_labels: whether a mirrored picture keeps its class (clothes,
    objects: yes; characters: no), the default of augment.flip. check(cfg): validates the
    dataset's own config section at load time (raises ConfigError); every dataset's section is
    checked, whichever dataset is chosen.
    """

    sources: Callable[[DataConfig, Progress | None], list[Path]]
    build: Callable[[DataConfig, list[Path], Splits | None], FewShotData]
    summary: str
    files: str
    remotes: tuple[RemoteFile, ...] = ()
    cacheable: bool = True
    needs_root: bool = True
    flips_keep_labels: bool = False
    check: Callable[[DataConfig], None] | None = None
