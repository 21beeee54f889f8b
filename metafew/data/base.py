"""Datasets as decoded uint8 tensors: labeled classes, unlabeled pictures, and the four splits."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    novel classes' unlabeled pictures (predict), or None.
    """

    meta_train: LabeledImages
    meta_val: LabeledImages | None
    novel: LabeledImages
    unlabeled: UnlabeledImages | None


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float32 in [0, 1] (the network's input scale)."""
    return images.float().div_(255.0)
