"""mini-ImageNet: 100 ImageNet classes, 600 pictures each, in the split of Ravi & Larochelle.

Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 introduced the dataset;
Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017 fixed the class
split used since (and by MAML, Finn et al. 2017): 64 meta-train, 16 validation and 20 test
classes, listed in their train.csv, val.csv and test.csv
(https://github.com/twitter/meta-learning-lstm, data/miniImagenet). Pictures are usually
84x84 RGB.

There is nothing to download: the pictures are ImageNet's (https://image-net.org, whose terms
of access allow non-commercial research after registration). `data.root` holds one of two layouts:

(a) the CSVs and the pictures they name:
        train.csv, val.csv, test.csv      header `filename,label`, label = WordNet id (n01532829)
        images/<filename>                 the pictures (as Ravi & Larochelle's scripts make them)
    or  <label>/<filename>                ImageNet's own layout (one folder per WordNet id)
    Pictures are decoded with Pillow (`metafew.data.folder.decode_image`: its decompression-bomb
    limits stay on) and resized (BILINEAR) to data.image_size when their size differs.
(b) the pickled caches many few-shot repositories share:
        mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl, mini-imagenet-cache-test.pkl
    each a dict {"image_data": uint8 [N, 84, 84, 3], "class_dict": {wnid: [row indices]}},
    read with `metafew.data.safe_pickle` (unpickling an arbitrary file can run code). No digest
    of these files is published, so they are checked for structure only. The pickles win when
    both layouts are complete (they load in seconds; decoding 60,000 JPEGs takes tens of seconds).

Each split must hold exactly the 64/16/20 classes of the Ravi & Larochelle split, no class may
appear in two splits, and every named picture must exist: other class lists are a different
dataset, which `data.dataset=folder` loads. The number of pictures per class is not enforced
(600 in the published files). Classes are listed by WordNet id; a class's pictures keep the
order of their CSV rows (or row indices). The test classes are the novel classes;
`data.novel_labeled` keeps that many of each labeled, the others become unlabeled pictures.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metafew.config.schema import DataConfig
from metafew.data.base import Dataset, FewShotData, LabeledImages, Splits, split_novel
from metafew.data.cifar import convert_rgb
from metafew.data.download import Progress, looks_like_html
from metafew.data.folder import decode_image
from metafew.data.safe_pickle import load_pickle
from metafew.errors import DataError

SPLITS = {"train": "meta_train", "val": "meta_val", "test": "novel"}
"""Ravi & Larochelle's split names -> ours."""

CLASSES = {"train": 64, "val": 16, "test": 20}
"""Classes per split of the Ravi & Larochelle split."""

HOWTO = (
    "mini-ImageNet cannot be downloaded automatically (ImageNet's terms): put train.csv, val.csv "
    "and test.csv (github.com/twitter/meta-learning-lstm, data/miniImagenet) in data.root with the "
    "pictures in data.root/images/<filename> or data.root/<wnid>/<filename>, or put the pickles "
    "mini-imagenet-cache-train.pkl, -val.pkl and -test.pkl there"
)


def pickle_name(split: str) -> str:
    return f"mini-imagenet-cache-{split}.pkl"


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise DataError(f"data.root is not set: {HOWTO}")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} does not exist: {HOWTO}")
    return root


def _not_web_page(path: Path) -> None:
    with path.open("rb") as handle:
        head = handle.read(512)
    if looks_like_html(head):
        raise DataError(
            f"{str(path)!r} is a web page, not a mini-ImageNet file (a failed download?): {HOWTO}"
        )


def read_csv(path: Path) -> list[tuple[str, str]]:
    """The (filename, label) rows of one of Ravi & Larochelle's CSVs."""
    _not_web_page(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["filename", "label"]:
            raise DataError(f"{str(path)!r}: the first line must be `filename,label`, found {header}")
        rows = [(row[0].strip(), row[1].strip()) for row in reader if row]
    short = [i + 2 for i, (name, label) in enumerate(rows) if not name or not label]
    if short:
        raise DataError(f"{str(path)!r}: lines {short[:5]} lack a filename or a label")
    return rows


def find_sources(cfg: DataConfig, progress: Progress | None = None) -> list[Path]:
    """The three pickles, or the three CSVs followed by the picture folders they use."""
    root = _root(cfg)
    pickles = [root / pickle_name(split) for split in SPLITS]
    if all(p.is_file() for p in pickles):
        for path in pickles:
            _not_web_page(path)
        return pickles
    csvs = [root / f"{split}.csv" for split in SPLITS]
    if not all(p.is_file() for p in csvs):
        found = [p.name for p in (*pickles, *csvs) if p.is_file()]
        raise DataError(
            f"mini-ImageNet not found in {str(root)!r} (found: {', '.join(found) or 'nothing'}): {HOWTO}"
        )
    labels = sorted({label for path in csvs for _, label in read_csv(path)})
    folders = [root / "images"] if (root / "images").is_dir() else []
    return [*csvs, *folders, *(root / label for label in labels if (root / label).is_dir())]


def check_classes(by_split: dict[str, list[str]], where: str) -> None:
    """Refuse class lists that are not a 64/16/20 split with disjoint splits."""
    seen: dict[str, str] = {}
    for split, names in by_split.items():
        for name in names:
            if name in seen:
                raise DataError(
                    f"{where}: class {name!r} is in both {seen[name]} and {split} (splits share no class)"
                )
            seen[name] = split
    counts = {split: len(names) for split, names in by_split.items()}
    if counts != CLASSES:
        raise DataError(
            f"{where}: {counts} classes per split, not the {CLASSES} of Ravi & Larochelle's split "
            "(for other class lists use data.dataset=folder)"
        )


def _picture_paths(root: Path, rows: list[tuple[str, str]]) -> list[Path]:
    """Where each (filename, label) row's picture is: images/<filename>, else <label>/<filename>."""
    listings: dict[Path, set[str]] = {}

    def listing(folder: Path) -> set[str]:
        if folder not in listings:  # one directory read per folder, not one stat per picture
            listings[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        return listings[folder]

    paths, missing = [], []
    for name, label in rows:
        folder = root / "images" if name in listing(root / "images") else root / label
        if name not in listing(folder):
            missing.append(f"{name} ({label})")
        paths.append(folder / name)
    if missing:
        raise DataError(
            f"{len(missing)} pictures named in the CSVs are missing from {str(root / 'images')!r} and "
            f"{str(root)!r}/<label>/ (first: {', '.join(missing[:5])}): {HOWTO}"
        )
    return paths


def decode_pictures(paths: list[Path], size: int, channels: int) -> torch.Tensor:
    """[n, channels, size, size] uint8 pictures decoded into one preallocated array."""
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, size, channels)
    return torch.from_numpy(out)


def build_from_csv(cfg: DataConfig, csvs: list[Path]) -> dict[str, LabeledImages]:
    """Each split's pictures, decoded from the files the CSVs name."""
    tables = {split: read_csv(path) for split, path in zip(SPLITS, csvs)}
    classes = {split: sorted({label for _, label in rows}) for split, rows in tables.items()}
    check_classes(classes, f"the CSVs in {str(csvs[0].parent)!r}")
    position = {name: i for names in classes.values() for i, name in enumerate(names)}
    ordered = {  # stable sort: a class's pictures keep their CSV order
        split: sorted(rows, key=lambda row: position[row[1]]) for split, rows in tables.items()
    }
    paths = _picture_paths(csvs[0].parent, [row for rows in ordered.values() for row in rows])
    out, start = {}, 0
    for split, rows in ordered.items():  # every picture is found before the first is decoded
        images = decode_pictures(paths[start : start + len(rows)], cfg.image_size, cfg.channels)
        labels = torch.tensor([position[label] for _, label in rows], dtype=torch.int64)
        out[split], start = LabeledImages(images, labels, classes[split]), start + len(rows)
    return out


def _text(key: Any) -> Any:
    return key.decode("latin-1") if isinstance(key, bytes) else key


def read_cache(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(image_data [N, H, W, 3] uint8, {wnid: row indices [n] int64}) of one pickled cache."""
    with path.open("rb") as handle:
        raw = load_pickle(handle, str(path))
    cache = {_text(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}
    data, class_dict = cache.get("image_data"), cache.get("class_dict")
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and data.shape[3] == 3
    ):
        raise DataError(f"{str(path)!r}: no 'image_data' uint8 [N, H, W, 3] array; not a mini-ImageNet cache")
    if not isinstance(class_dict, dict):
        raise DataError(f"{str(path)!r}: no 'class_dict' {{wnid: row indices}}; not a mini-ImageNet cache")
    rows = {}
    for wnid, indices in class_dict.items():
        try:
            picked = np.asarray(indices, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{str(path)!r}: class_dict[{wnid!r}] is not a list of row indices") from None
        if picked.size and (picked.min() < 0 or picked.max() >= len(data)):
            raise DataError(
                f"{str(path)!r}: class_dict[{wnid!r}] names rows outside its {len(data)} pictures"
            )
        rows[str(_text(wnid))] = picked
    return data, rows


def build_from_pickles(cfg: DataConfig, pickles: list[Path]) -> dict[str, LabeledImages]:
    """Each split's pictures from the pickled caches."""
    caches = {split: read_cache(path) for split, path in zip(SPLITS, pickles)}
    classes = {split: sorted(rows) for split, (_, rows) in caches.items()}
    check_classes(classes, f"the pickles in {str(pickles[0].parent)!r}")
    out = {}
    for split, (data, rows) in caches.items():
        order = [rows[name] for name in classes[split]]
        picked = data[np.concatenate(order)] if order else data[:0]
        images = convert_rgb(picked.transpose(0, 3, 1, 2), cfg.image_size, cfg.channels)
        labels = torch.arange(len(order)).repeat_interleave(
            torch.tensor([len(r) for r in order], dtype=torch.int64)
        )
        out[split] = LabeledImages(torch.from_numpy(images), labels, classes[split])
    return out


def build_mini_imagenet(cfg: DataConfig, sources: list[Path], recorded: Splits | None = None) -> FewShotData:
    """The Ravi & Larochelle split from the pickles or CSVs at `sources` (see `find_sources`)."""
    pickled = sources[0].suffix == ".pkl"
    splits = build_from_pickles(cfg, sources[:3]) if pickled else build_from_csv(cfg, sources[:3])
    novel, unlabeled = split_novel(splits["test"], cfg.novel_labeled)
    provenance = {"split": "ravi-larochelle", "format": "pickle" if pickled else "csv"}
    return FewShotData(splits["train"], splits["val"], novel, unlabeled, provenance)


MINI_IMAGENET = Dataset(
    sources=find_sources,
    build=build_mini_imagenet,
    summary="mini-ImageNet: 100 ImageNet classes split 64/16/20, 600 pictures each (Ravi & Larochelle 2017)",
    files="train.csv, val.csv, test.csv with images/ (or <wnid>/ folders), or "
    "mini-imagenet-cache-{train,val,test}.pkl, in data.root (not downloadable: ImageNet's terms)",
    flips_keep_labels=True,
)
