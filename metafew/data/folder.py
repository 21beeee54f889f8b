"""Image folders: one sub-folder per class, decoded once into uint8 tensors.

Layout of a few-shot folder dataset (`data.root`):

    meta_train/<class>/*.png     meta-training classes
    meta_val/<class>/*.png       optional held-out validation classes
    novel/labeled/<class>/*.png  labeled pictures of the novel classes
    novel/unlabeled/*.png        optional unlabeled pictures to predict
    novel/answers.csv            optional `file,label` rows that score predictions
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from metafew.data.base import FewShotData, LabeledImages, UnlabeledImages
from metafew.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (hidden files skipped)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def decode_image(
    source: Path | BinaryIO,
    size: int,
    channels: int,
    where: str | None = None,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> np.ndarray:
    """Open, convert (L or RGB) and resize one picture (a path or an open binary file, named
    `where` in errors): [channels, size, size] uint8.

    Raises DataError for unreadable, truncated or decompression-bomb files (Pillow's limits
    stay on).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if img.size != (size, size):
                    img = img.resize((size, size), resample)
                array = np.asarray(img, dtype=np.uint8)
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        name = where or str(source)
        raise DataError(f"cannot read image {name!r}: {exc}; remove or replace the file") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _decode_all(paths: list[Path], size: int, channels: int) -> torch.Tensor:
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, size, channels)
    return torch.from_numpy(out)


def load_class_folders(folder: Path, size: int, channels: int) -> LabeledImages:
    """Every sub-folder of `folder` is a class (sorted by name); its pictures are its images."""
    if not folder.is_dir():
        raise DataError(f"class folder {str(folder)!r} does not exist: expected <class>/*.png inside")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{str(folder)!r} holds no class sub-folders: put each class's pictures in its own folder"
        )
    files = [image_files(d) for d in class_dirs]
    empty = [d.name for d, f in zip(class_dirs, files) if not f]
    if empty:
        raise DataError(
            f"{str(folder)!r}: class folders without images: {', '.join(empty)} (remove them or add pictures)"
        )
    paths = [p for group in files for p in group]
    labels = torch.arange(len(files)).repeat_interleave(torch.tensor([len(f) for f in files]))
    return LabeledImages(_decode_all(paths, size, channels), labels, [d.name for d in class_dirs])


def load_unlabeled(folder: Path, size: int, channels: int) -> tuple[UnlabeledImages, list[tuple[str, str]]]:
    """Pictures directly in `folder`; unreadable files are skipped and returned as (name, reason)
    so that one bad file does not stop the others from being predicted."""
    if not folder.is_dir():
        raise DataError(f"picture folder {str(folder)!r} does not exist")
    paths = image_files(folder)
    if not paths:
        raise DataError(f"{str(folder)!r} holds no pictures ({', '.join(IMAGE_SUFFIXES)})")
    arrays, names, failed = [], [], []
    for path in paths:
        try:
            arrays.append(decode_image(path, size, channels))
            names.append(path.name)
        except DataError as exc:
            failed.append((path.name, str(exc)))
    if not arrays:
        raise DataError(f"no picture in {str(folder)!r} could be read (first: {failed[0][1]})")
    images = torch.from_numpy(np.stack(arrays))
    return UnlabeledImages(images, names, read_answers(folder.parent / "answers.csv", names)), failed


def read_answers(path: Path, names: list[str]) -> list[str] | None:
    """True labels for `names` from a `file,label` CSV, or None if absent or incomplete."""
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's "CSV UTF-8" BOM
        table = {
            row["file"]: row["label"] for row in csv.DictReader(handle) if "file" in row and "label" in row
        }
    if not all(n in table for n in names):
        return None
    return [table[n] for n in names]


def load_folder_dataset(root: Path, size: int, channels: int) -> FewShotData:
    """The few-shot layout described in this module's docstring."""
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} does not exist: point it at the folder holding meta_train/")
    train = load_class_folders(root / "meta_train", size, channels)
    val = load_class_folders(root / "meta_val", size, channels) if (root / "meta_val").is_dir() else None
    novel = load_class_folders(root / "novel" / "labeled", size, channels)
    unlabeled = None
    if (root / "novel" / "unlabeled").is_dir():
        unlabeled, _ = load_unlabeled(root / "novel" / "unlabeled", size, channels)
    return FewShotData(train, val, novel, unlabeled)
