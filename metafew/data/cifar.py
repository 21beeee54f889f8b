"""CIFAR-FS and FC100: two class splits of CIFAR-100 for few-shot learning.

CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009;
https://www.cs.toronto.edu/~kriz/cifar.html): 100 classes ("fine labels") in 20 superclasses
("coarse labels"), 500 training and 100 test pictures each, 32x32 RGB.

Files: `data.root` holds the python archive `cifar-100-python.tar.gz` (read in place, checked
against its published MD5) or its extracted folder `cifar-100-python/` with the pickles `train`,
`test` and `meta` (each checked against the MD5s torchvision lists in
torchvision/datasets/cifar.py, class CIFAR100); `data.download=true` fetches the archive. An
archive wins over a folder, as for Omniglot. The pickles are read with `metafew.data.safe_pickle`
(unpickling an arbitrary file can run code). `train`/`test` hold b"data" (uint8 [N, 3072]: the
1024 red, then green, then blue values of a 32x32 picture in row-major order), b"fine_labels"
and b"coarse_labels"; `meta` holds b"fine_label_names" and b"coarse_label_names".

The few-shot splits pool train and test, 600 pictures per class (train pictures first, each in
file order), and split the classes:
- `cifar-fs` (Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable
  closed-form solvers", ICLR 2019, and the class lists released with its code): 64 meta-train,
  16 validation and 20 test classes, drawn at random from all 100 (`CIFAR_FS_VAL`/`_TEST`).
- `fc100` (Oreshkin, Rodríguez & Lacoste, "TADAM: Task dependent adaptive metric for improved
  few-shot learning", NeurIPS 2018): by superclass, so that test classes are less like the
  training classes: 12 superclasses (60 classes) meta-train, 4 (20) validate, 4 (20) test
  (`FC100_VAL`/`_TEST`).
Classes are listed in label order (CIFAR's alphabetical order). Pictures stay 32x32 RGB unless
`data.image_size`/`data.channels` differ: then Pillow converts each one (RGB -> L with ITU-R 601
luma weights; BILINEAR resize). `data.novel_labeled` keeps that many pictures (the first, in the
order above) of each test class labeled; the others become unlabeled pictures for predict.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from metafew.config.schema import DataConfig
from metafew.data.base import Dataset, FewShotData, LabeledImages, Splits, split_novel
from metafew.data.download import Progress, RemoteFile, dataset_root, download, verify
from metafew.data.safe_pickle import load_pickle
from metafew.errors import DataError

PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
FOLDER = "cifar-100-python"
MEMBERS = ("train", "test", "meta")

ARCHIVE = RemoteFile(
    "cifar-100-python.tar.gz",
    "md5",
    "eb9058c3a382ffc7106e4002c42a8d85",  # published on PAGE
    ("https://www.cs.toronto.edu/~kriz/",),
    PAGE,
)
"""The official archive."""

MEMBER_MD5: dict[str, str] = {
    # torchvision/datasets/cifar.py, CIFAR100.train_list / test_list / meta
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
"""MD5 of the extracted pickles, checked when the folder is used instead of the archive."""

SIZE = 32

CIFAR_FS_VAL = (
    *("beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly"),
    *("sea", "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor"),
)
"""The 16 validation classes of CIFAR-FS (Bertinetto et al. 2019)."""

CIFAR_FS_TEST = (
    *("whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard"),
    *("plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle"),
    *("pickup_truck", "rocket"),
)
"""The 20 test classes of CIFAR-FS (Bertinetto et al. 2019)."""

FC100_VAL = (
    "large_carnivores",
    "large_omnivores_and_herbivores",
    "non-insect_invertebrates",
    "small_mammals",
)
"""The 4 validation superclasses of FC100 (Oreshkin et al. 2018: superclasses 8, 11, 13, 16)."""

FC100_TEST = ("aquatic_mammals", "insects", "medium_mammals", "people")
"""The 4 test superclasses of FC100 (Oreshkin et al. 2018: superclasses 0, 7, 12, 14)."""


@dataclass(frozen=True)
class Cifar100:
    """CIFAR-100 train and test pooled: images [n, 3, 32, 32] uint8 (train first), fine and
    coarse labels [n] int64, and the label names."""

    images: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray
    fine_names: list[str]
    coarse_names: list[str]


def _root(cfg: DataConfig) -> Path:
    where = f"{ARCHIVE.name} (from {PAGE}) or its extracted folder {FOLDER}/"
    return dataset_root(cfg.root, cfg.download, where, "cifar")


def find_sources(cfg: DataConfig, progress: Progress | None = None) -> list[Path]:
    """[the archive] (verified) or [the extracted folder] (its pickles verified); the archive is
    downloaded when missing and `cfg.download`."""
    root = _root(cfg)
    archive, folder = root / ARCHIVE.name, root / FOLDER
    if archive.is_file():
        verify(archive, ARCHIVE)
        return [archive]
    if folder.is_dir():
        for name in MEMBERS:
            path = folder / name
            if not path.is_file():
                raise DataError(
                    f"{str(path)!r} not found: the extracted folder is incomplete; put {ARCHIVE.name} "
                    f"(from {PAGE}) in {str(root)!r} instead"
                )
            if name in MEMBER_MD5:
                verify(path, RemoteFile(name, "md5", MEMBER_MD5[name], (), PAGE))
        return [folder]
    if cfg.download:
        return [download(ARCHIVE, root, progress=progress)]
    raise DataError(
        f"CIFAR-100 not found: neither {str(archive)!r} nor the folder {str(folder)!r} exists; set "
        f"data.download=true, run `metafew data prepare`, or fetch {ARCHIVE.name} from {PAGE} "
        f"into {str(root)!r}"
    )


def read_members(path: Path) -> dict[str, Any]:
    """The unpickled `train`, `test` and `meta` of the archive or folder at `path`."""
    if path.is_dir():
        return {name: load_pickle((path / name).read_bytes(), str(path / name)) for name in MEMBERS}
    found: dict[str, Any] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:  # one pass: a .tar.gz cannot seek backwards cheaply
                folder, _, name = member.name.rpartition("/")
                if folder.endswith(FOLDER) and name in MEMBERS and member.isfile():
                    handle = archive.extractfile(member)
                    assert handle is not None  # a regular file
                    found[name] = load_pickle(handle.read(), f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"cannot read the archive {str(path)!r} ({exc}); it is truncated or damaged: delete it and "
            f"download it again from {PAGE}"
        ) from None
    missing = [f"{FOLDER}/{name}" for name in MEMBERS if name not in found]
    if missing:
        raise DataError(f"{str(path)!r} lacks {', '.join(missing)}: it is not the CIFAR-100 python archive")
    return found


def _names(meta: Any, key: bytes, where: str) -> list[str]:
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{where}: no list {key.decode()!r}; not the CIFAR-100 meta file")
    return [n.decode("latin-1") if isinstance(n, bytes) else n for n in names]


def _part(batch: Any, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [n, 3, 32, 32], fine [n], coarse [n]) of one unpickled train/test batch."""
    if not isinstance(batch, dict) or not {b"data", b"fine_labels", b"coarse_labels"} <= batch.keys():
        raise DataError(
            f"{where}: not a CIFAR-100 batch (expected b'data', b'fine_labels', b'coarse_labels')"
        )
    data = batch[b"data"]
    fine = np.asarray(batch[b"fine_labels"], dtype=np.int64)
    coarse = np.asarray(batch[b"coarse_labels"], dtype=np.int64)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DataError(f"{where}: b'data' is not a uint8 [N, 3072] array")
    if data.shape[1] != 3 * SIZE * SIZE or not fine.shape == coarse.shape == (len(data),):
        raise DataError(
            f"{where}: b'data' {data.shape} does not match {len(fine)} labels of 32x32 RGB pictures"
        )
    return data.reshape(-1, 3, SIZE, SIZE), fine, coarse


def load_cifar100(path: Path) -> Cifar100:
    """CIFAR-100 from the archive or extracted folder at `path`, train and test pooled."""
    members = read_members(path)
    where = {name: f"{path}:{name}" for name in MEMBERS}
    fine_names = _names(members["meta"], b"fine_label_names", where["meta"])
    coarse_names = _names(members["meta"], b"coarse_label_names", where["meta"])
    parts = [_part(members[name], where[name]) for name in ("train", "test")]
    fine = np.concatenate([p[1] for p in parts])
    coarse = np.concatenate([p[2] for p in parts])
    bad_fine = fine.size and (fine.min() < 0 or fine.max() >= len(fine_names))
    if bad_fine or (coarse.size and (coarse.min() < 0 or coarse.max() >= len(coarse_names))):
        raise DataError(f"{str(path)!r}: labels outside the {len(fine_names)} class names of meta")
    return Cifar100(np.concatenate([p[0] for p in parts]), fine, coarse, fine_names, coarse_names)


def _check_names(wanted: tuple[str, ...], known: list[str], what: str, path: Path) -> None:
    missing = [n for n in wanted if n not in known]
    if missing:
        raise DataError(
            f"{str(path)!r}: {what} {', '.join(missing[:5])} not in its meta file: it is not the "
            f"CIFAR-100 archive (fetch {ARCHIVE.name} from {PAGE})"
        )


def cifar_fs_split(data: Cifar100, path: Path) -> Splits:
    """The CIFAR-FS class lists (label order)."""
    _check_names(CIFAR_FS_VAL + CIFAR_FS_TEST, data.fine_names, "classes", path)
    held = set(CIFAR_FS_VAL) | set(CIFAR_FS_TEST)
    return {
        "meta_train": [n for n in data.fine_names if n not in held],
        "meta_val": [n for n in data.fine_names if n in CIFAR_FS_VAL],
        "novel": [n for n in data.fine_names if n in CIFAR_FS_TEST],
    }


def fc100_split(data: Cifar100, path: Path) -> Splits:
    """The FC100 class lists: the fine classes of each split's superclasses (label order)."""
    _check_names(FC100_VAL + FC100_TEST, data.coarse_names, "superclasses", path)
    superclass: dict[str, set[str]] = {}
    for f, c in set(zip(data.fine.tolist(), data.coarse.tolist())):
        superclass.setdefault(data.fine_names[f], set()).add(data.coarse_names[c])
    twice = sorted(name for name, parents in superclass.items() if len(parents) > 1)
    if twice:
        raise DataError(f"{str(path)!r}: classes {', '.join(twice[:5])} belong to several superclasses")
    parent = {name: parents.pop() for name, parents in superclass.items()}
    names = [n for n in data.fine_names if n in parent]

    def within(groups: tuple[str, ...]) -> list[str]:
        return [n for n in names if parent[n] in groups]

    return {
        "meta_train": [n for n in names if parent[n] not in FC100_VAL + FC100_TEST],
        "meta_val": within(FC100_VAL),
        "novel": within(FC100_TEST),
    }


def convert_rgb(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """RGB pictures [n, 3, H, W] uint8 -> [n, channels, size, size] uint8: unchanged when they
    already fit, else each converted by Pillow (RGB -> L, BILINEAR resize)."""
    n, _, height, width = images.shape
    if channels == 3 and (height, width) == (size, size):
        return np.ascontiguousarray(images)
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for i, picture in enumerate(images.transpose(0, 2, 3, 1)):
        img = Image.fromarray(picture, "RGB")
        if channels == 1:
            img = img.convert("L")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(img)
        out[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return out


def select(data: Cifar100, names: list[str], size: int, channels: int) -> LabeledImages:
    """The pictures of the classes `names` (label i = names[i]), in pooled order within a class."""
    label_of = np.full(len(data.fine_names), -1, dtype=np.int64)
    label_of[[data.fine_names.index(n) for n in names]] = np.arange(len(names))
    labels = label_of[data.fine]
    rows = np.nonzero(labels >= 0)[0]
    rows = rows[np.argsort(labels[rows], kind="stable")]
    images = convert_rgb(data.images[rows], size, channels)
    return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels[rows]), list(names))


def _builder(split: str) -> Callable[[DataConfig, list[Path], Splits | None], FewShotData]:
    assign = cifar_fs_split if split == "cifar-fs" else fc100_split

    def build(cfg: DataConfig, sources: list[Path], recorded: Splits | None = None) -> FewShotData:
        data = load_cifar100(sources[0])
        classes = assign(data, sources[0])
        size, channels = cfg.image_size, cfg.channels
        novel, unlabeled = split_novel(select(data, classes["novel"], size, channels), cfg.novel_labeled)
        return FewShotData(
            select(data, classes["meta_train"], size, channels),
            select(data, classes["meta_val"], size, channels),
            novel,
            unlabeled,
            {"split": split},
        )

    return build


FILES = f"{ARCHIVE.name} (downloadable) or its extracted folder {FOLDER}/ in data.root"

CIFAR_FS = Dataset(
    sources=find_sources,
    build=_builder("cifar-fs"),
    summary="CIFAR-FS: CIFAR-100 in 64/16/20 classes of 600 32x32 RGB images (Bertinetto et al. 2019)",
    files=FILES,
    remotes=(ARCHIVE,),
    flips_keep_labels=True,
)

FC100 = Dataset(
    sources=find_sources,
    build=_builder("fc100"),
    summary="FC100: CIFAR-100 by superclass, 60/20/20 classes of 600 32x32 RGB images (Oreshkin et al. 2018)",
    files=FILES,
    remotes=(ARCHIVE,),
    flips_keep_labels=True,
)
