"""Image folders: one sub-folder per class, decoded once into uint8 tensors.

Layout of a few-shot folder dataset (`data.root`):

    meta_train/<class>/*.png     meta-training classes
    meta_val/<class>/*.png       optional held-out validation classes
    novel/labeled/<class>/*.png  labeled pictures of the novel classes
    novel/unlabeled/*.png        optional unlabeled pictures to predict
    novel/answers.csv            optional `file,label` rows that score predictions

or simply one folder of classes, `<class>/*.png`, which is split automatically: classes (never
pictures) are ordered by the SHA-256 of `<data.folder.split_seed>/<class name>`, the first
`test_fraction` of them become the novel classes, the next `val_fraction` validate, the rest
meta-train. The run folder records the split (data.json) and finetune/eval/predict reuse it, so
adding classes to the folder later never moves a class between splits of an existing run.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from metafew.config.schema import DataConfig, FolderConfig
from metafew.data.base import Dataset, FewShotData, LabeledImages, Splits, UnlabeledImages, split_novel
from metafew.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (hidden files skipped)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


MIN_SIDE = 8
"""Pictures with a shorter side are refused (and reported `tiny` by `metafew data check`): a
picture of a few pixels is a broken or placeholder file, not an example of its class."""


TOOL_FOLDERS = frozenset({".git", ".ipynb_checkpoints", ".thumbnails", ".Trash", ".cache", ".DS_Store"})
"""Hidden folders that tools make, skipped quietly; any other hidden folder holding pictures is
refused by name (`..trouser` is a typo, not a folder to ignore)."""


def missing(path: Path, what: str) -> str:
    """Why `path` is not the folder it should be: it is a file, or it does not exist."""
    state = "is a file, not a folder" if path.exists() else "does not exist"
    return f"{what} {str(path)!r} {state}"


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
                if min(img.size) < MIN_SIDE:
                    width, height = img.size
                    raise DataError(
                        f"picture {where or str(source)!r} is {width}x{height} pixels, smaller than "
                        f"{MIN_SIDE} on a side: remove it (`metafew data check` lists such files)"
                    )
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


def class_folders(folder: Path) -> list[Path]:
    """The class sub-folders of `folder`, sorted by name (the hidden folders of tools skipped; any
    other hidden folder that holds pictures refused by name)."""
    if not folder.is_dir():
        raise DataError(f"{missing(folder, 'class folder')}: expected <class>/*.png inside")
    hidden = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(".") and p.name not in TOOL_FOLDERS and image_files(p)
    )
    if hidden:
        raise DataError(
            f"class folder {hidden[0]!r} in {str(folder)!r} holds pictures but its name starts with '.', "
            "which hides it: rename it, or move it out if it is not a class"
        )
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{str(folder)!r} holds no class sub-folders: put each class's pictures in its own folder"
        )
    return class_dirs


def load_classes(class_dirs: list[Path], size: int, channels: int) -> LabeledImages:
    """Each folder of `class_dirs` is a class (in the given order); its pictures are its images."""
    files = [image_files(d) for d in class_dirs]
    empty = [d for d, f in zip(class_dirs, files) if not f]
    if empty:
        raise DataError(
            f"{str(empty[0].parent)!r}: class folders without images: "
            f"{', '.join(d.name for d in empty)} (remove them or add pictures)"
        )
    paths = [p for group in files for p in group]
    labels = torch.arange(len(files)).repeat_interleave(torch.tensor([len(f) for f in files]))
    return LabeledImages(_decode_all(paths, size, channels), labels, [d.name for d in class_dirs])


def load_class_folders(folder: Path, size: int, channels: int) -> LabeledImages:
    """Every sub-folder of `folder` is a class (sorted by name); its pictures are its images."""
    return load_classes(class_folders(folder), size, channels)


def load_unlabeled(folder: Path, size: int, channels: int) -> tuple[UnlabeledImages, list[tuple[str, str]]]:
    """Pictures directly in `folder` (or the one picture file `folder` names); unreadable files are
    skipped and returned as (name, reason) so that one bad file does not stop the others from
    being predicted. Answers come from the folder's sibling answers.csv (none for one file)."""
    if folder.is_file():
        if folder.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{str(folder)!r} is not a picture ({', '.join(IMAGE_SUFFIXES)}): give a picture or a folder"
            )
        one = torch.from_numpy(np.stack([decode_image(folder, size, channels)]))
        return UnlabeledImages(one, [folder.name]), []
    if not folder.is_dir():
        raise DataError(missing(folder, "picture or folder of pictures"))
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


def auto_split(names: list[str], cfg: FolderConfig) -> Splits:
    """Class-disjoint split of `names` (see the module docstring): at least one novel class,
    validation only when val_fraction > 0, and always some meta-training classes."""
    order = sorted(names, key=lambda n: hashlib.sha256(f"{cfg.split_seed}/{n}".encode()).hexdigest())
    n_test = max(1, round(cfg.test_fraction * len(order)))
    n_val = round(cfg.val_fraction * len(order)) if cfg.val_fraction > 0 else 0
    if n_test + max(n_val, 1 if cfg.val_fraction > 0 else 0) >= len(order):
        raise DataError(
            f"{len(order)} classes are too few to split into meta-train, validation and novel "
            "classes: add classes or lower data.folder.test_fraction/val_fraction"
        )
    n_val = max(n_val, 1) if cfg.val_fraction > 0 else 0
    return {
        "novel": sorted(order[:n_test]),
        "meta_val": sorted(order[n_test : n_test + n_val]),
        "meta_train": sorted(order[n_test + n_val :]),
    }


def _auto_split_dataset(cfg: DataConfig, root: Path, recorded: Splits | None) -> FewShotData:
    by_name = {d.name: d for d in class_folders(root)}
    split = recorded if recorded is not None else auto_split(sorted(by_name), cfg.folder)
    missing = [n for names in split.values() for n in names if n not in by_name]
    if missing:
        raise DataError(
            f"class folders of the recorded split are missing from {str(root)!r}: "
            f"{', '.join(missing[:5])}; restore them or train a new run"
        )

    def load(split_name: str) -> LabeledImages:
        return load_classes([by_name[n] for n in split[split_name]], cfg.image_size, cfg.channels)

    novel, unlabeled = split_novel(load("novel"), cfg.novel_labeled)
    meta_val = load("meta_val") if split.get("meta_val") else None
    return FewShotData(load("meta_train"), meta_val, novel, unlabeled, {"split": "automatic"})


def load_folder_dataset(root: Path, size: int, channels: int) -> FewShotData:
    """The few-shot layout described in this module's docstring."""
    if not root.is_dir():
        raise DataError(f"{missing(root, 'data.root')}: point it at the folder holding meta_train/")
    train = load_class_folders(root / "meta_train", size, channels)
    val = load_class_folders(root / "meta_val", size, channels) if (root / "meta_val").is_dir() else None
    novel = load_class_folders(root / "novel" / "labeled", size, channels)
    unlabeled = None
    if (root / "novel" / "unlabeled").is_dir():
        unlabeled, _ = load_unlabeled(root / "novel" / "unlabeled", size, channels)
    return FewShotData(train, val, novel, unlabeled, {"split": "folders"})


def _root(cfg: DataConfig) -> Path:
    root = Path(cfg.root or ".")
    if not root.is_dir():
        raise DataError(
            f"{missing(root, 'data.root')}: point it at a folder holding meta_train/ "
            "and novel/, or a folder of class folders"
        )
    return root


def _build(cfg: DataConfig, sources: list[Path], recorded: Splits | None) -> FewShotData:
    root = _root(cfg)
    if (root / "meta_train").is_dir():
        return load_folder_dataset(root, cfg.image_size, cfg.channels)
    return _auto_split_dataset(cfg, root, recorded)


FOLDER = Dataset(
    sources=lambda cfg, progress: [_root(cfg)],
    build=_build,
    summary="your own pictures, one folder per class (split by you, or automatically)",
    files="data.root: meta_train/, [meta_val/], novel/labeled/, [novel/unlabeled/], or <class>/ folders",
)
