"""Fashion-MNIST: 70,000 28x28 grayscale pictures of ten kinds of clothing, split by class.

Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", arXiv:1708.07747, 2017; files from https://github.com/zalandoresearch/fashion-mnist
(MIT licence).

Files: the four IDX files in `data.root`, each gzipped (`.gz`, as published) or raw (the `.gz`
wins when both are there):

    train-images-idx3-ubyte   60,000 pictures     t10k-images-idx3-ubyte   10,000 pictures
    train-labels-idx1-ubyte   their labels 0-9    t10k-labels-idx1-ubyte   their labels

Without `data.root`, Debian's package `dataset-fashion-mnist` is used when installed
(/usr/share/datasets/fashion-mnist). Debian recompresses the files, so the `.gz` bytes differ
from the published ones: every file is checked by the SHA-256 of its decompressed bytes
(`SHA256`, the same whichever way it was compressed). Missing files are downloaded with
`data.download=true`, as the official `.gz` (checked against the published MD5s, `GZ_MD5`).

IDX (http://yann.lecun.com/exdb/mnist/, "file formats"): a big-endian header, magic 0x00000803
for pictures ([n, rows, cols] unsigned bytes) or 0x00000801 for labels ([n] unsigned bytes),
one 32-bit size per dimension, then the values in row-major order.

Splits: train and test are pooled (7,000 pictures per class, training pictures first) and the
classes are split as `data.fashion_mnist` says (default: the first five meta-train, the last
five are the novel classes); classes are listed in label order (`FASHION_MNIST_CLASSES`).
Pictures show bright clothes on a black background (0), as published; Pillow resizes them
(BILINEAR) only when `data.image_size` is not 28, and they are copied into 3 channels when
`data.channels` is 3. `data.novel_labeled` keeps that many pictures (the first) of each novel
class labeled; the others become unlabeled pictures for predict.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metafew.config.schema import DataConfig, comma_list
from metafew.data.base import Dataset, FewShotData, LabeledImages, Splits, split_novel
from metafew.data.download import Progress, RemoteFile, dataset_root, download, looks_like_html
from metafew.errors import ConfigError, DataError

FASHION_MNIST_CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
"""Fashion-MNIST's ten classes, in label order (Xiao, Rasul & Vollgraf 2017)."""

PAGE = "https://github.com/zalandoresearch/fashion-mnist"
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` installs the files: the default without data.root."""

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
SIZE = 28

STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four files, without `.gz`: train pictures and labels, test pictures and labels."""

SHA256: dict[str, str] = {
    # of the decompressed bytes, measured on Debian's copy; equal to the raw files of the
    # official archives
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
"""SHA-256 of each file's decompressed bytes; a file whose stem is not listed is not checked."""

GZ_MD5: dict[str, str] = {
    # published in the README of PAGE
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}

REMOTES: dict[str, RemoteFile] = {
    stem: RemoteFile(f"{stem}.gz", "md5", digest, MIRRORS, PAGE) for stem, digest in GZ_MD5.items()
}
"""The official gzipped files by stem."""


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        if DEBIAN_ROOT.is_dir():
            return DEBIAN_ROOT
        raise DataError(
            f"data.root is not set and {str(DEBIAN_ROOT)!r} does not exist: install Debian's "
            "dataset-fashion-mnist, or point data.root at a folder for the four IDX files "
            f"(train-images-idx3-ubyte.gz, ... from {PAGE}) and add data.download=true to fetch them"
        )
    return dataset_root(cfg.root, cfg.download, "the Fashion-MNIST IDX files", "fashion-mnist")


def read_file(path: Path) -> bytes:
    """The (decompressed, for `.gz`) bytes of `path`; DataError naming it when it is a web
    page or a damaged gzip."""
    raw = path.read_bytes()
    if looks_like_html(raw[:512]):
        raise DataError(
            f"{str(path)!r} is a web page, not a Fashion-MNIST file (a failed download?): delete it and "
            f"fetch it again from {PAGE}"
        )
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(
            f"cannot decompress {str(path)!r} ({exc}); it is truncated or not gzip: delete it and fetch "
            f"it again from {PAGE}"
        ) from None


def check_bytes(data: bytes, path: Path, stem: str) -> None:
    """Refuse `data` (read from `path`) unless it has the known SHA-256 of `stem`."""
    expected = SHA256.get(stem)
    if expected is None:
        return
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise DataError(
            f"{str(path)!r}: the SHA-256 of its {'decompressed ' if path.suffix == '.gz' else ''}bytes, "
            f"{digest}, is not the official {expected}; the file is corrupt or not Fashion-MNIST's: "
            f"delete it and fetch it again from {PAGE}"
        )


def find_files(cfg: DataConfig, progress: Progress | None = None) -> list[Path]:
    """The four files (gzipped or raw, in `STEMS` order), each checked; missing ones are
    downloaded when `cfg.download` and data.root is set."""
    root = _root(cfg)
    paths = []
    for stem in STEMS:
        path = next((p for p in (root / f"{stem}.gz", root / stem) if p.is_file()), None)
        if path is None and cfg.download and cfg.root:
            path = download(REMOTES[stem], root, progress=progress)
        if path is None:
            raise DataError(
                f"{str(root / stem)!r}(.gz) not found: set data.download=true, run `metafew data "
                f"prepare`, or fetch {stem}.gz from {PAGE} into {str(root)!r}"
            )
        check_bytes(read_file(path), path, stem)
        paths.append(path)
    return paths


def parse_idx(data: bytes, where: str, magic: int) -> np.ndarray:
    """The array of an IDX file's bytes: [n, rows, cols] (pictures) or [n] (labels) uint8."""
    ndim = 3 if magic == IMAGES_MAGIC else 1
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        kind = "pictures" if magic == IMAGES_MAGIC else "labels"
        shown = "none (too short)" if found is None else f"0x{found:08x}"
        raise DataError(f"{where!r} is not an IDX file of {kind}: magic {shown}, expected 0x{magic:08x}")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise DataError(f"{where!r} is truncated: {len(data)} bytes, shorter than its header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != start + math.prod(dims):
        raise DataError(
            f"{where!r} is truncated or damaged: {len(data) - start} bytes of values, its header "
            f"says {'x'.join(map(str, dims))} = {math.prod(dims)}; fetch it again from {PAGE}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(dims)


def load_pool(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Train and test pooled: pictures [n, rows, cols] uint8 and labels [n] int64."""
    arrays = [
        parse_idx(read_file(path), str(path), IMAGES_MAGIC if "images" in stem else LABELS_MAGIC)
        for path, stem in zip(paths, STEMS)
    ]
    for images, labels, path in ((arrays[0], arrays[1], paths[1]), (arrays[2], arrays[3], paths[3])):
        if len(images) != len(labels):
            raise DataError(f"{str(path)!r} holds {len(labels)} labels for {len(images)} pictures")
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{str(path)!r} holds label {labels.max()}; Fashion-MNIST has labels 0-9")
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise DataError(f"train pictures are {arrays[0].shape[1:]}, test pictures {arrays[2].shape[1:]}")
    return np.concatenate([arrays[0], arrays[2]]), np.concatenate([arrays[1], arrays[3]]).astype(np.int64)


def convert_gray(images: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """Gray pictures [n, H, W] uint8 -> [n, channels, size, size] uint8 (Pillow BILINEAR
    resize only when the size differs; 3 channels are copies of the gray one)."""
    if images.shape[1:] != (size, size):
        out = np.empty((len(images), size, size), dtype=np.uint8)
        for i, picture in enumerate(images):
            out[i] = np.asarray(Image.fromarray(picture, "L").resize((size, size), Image.Resampling.BILINEAR))
        images = out
    gray = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    return gray if channels == 1 else gray.expand(-1, channels, -1, -1).contiguous()


def split_classes(cfg: DataConfig) -> Splits:
    """Class names per split from `cfg.fashion_mnist`, each in label order."""

    def ordered(text: str) -> list[str]:
        wanted = set(comma_list(text))
        return [name for name in FASHION_MNIST_CLASSES if name in wanted]

    fm = cfg.fashion_mnist
    return {
        "meta_train": ordered(fm.train_classes),
        "meta_val": ordered(fm.val_classes),
        "novel": ordered(fm.test_classes),
    }


def select(images: np.ndarray, labels: np.ndarray, names: list[str], cfg: DataConfig) -> LabeledImages:
    """The pictures of the classes `names` (label i = names[i]), in pooled order within a class."""
    label_of = np.full(len(FASHION_MNIST_CLASSES), -1, dtype=np.int64)
    label_of[[FASHION_MNIST_CLASSES.index(n) for n in names]] = np.arange(len(names))
    new = label_of[labels]
    rows = np.nonzero(new >= 0)[0]
    rows = rows[np.argsort(new[rows], kind="stable")]
    return LabeledImages(
        convert_gray(images[rows], cfg.image_size, cfg.channels), torch.from_numpy(new[rows]), names
    )


def build_fashion_mnist(cfg: DataConfig, sources: list[Path], recorded: Splits | None = None) -> FewShotData:
    """The class splits of `cfg.fashion_mnist` from the four files at `sources` (STEMS order)."""
    images, labels = load_pool(sources)
    classes = split_classes(cfg)
    novel, unlabeled = split_novel(select(images, labels, classes["novel"], cfg), cfg.novel_labeled)
    meta_val = select(images, labels, classes["meta_val"], cfg) if classes["meta_val"] else None
    return FewShotData(
        select(images, labels, classes["meta_train"], cfg), meta_val, novel, unlabeled, {"split": "classes"}
    )


def check_config(cfg: DataConfig) -> None:
    """data.fashion_mnist: known class names, each in one split, train and test not empty."""
    section = cfg.fashion_mnist
    groups = {
        key: comma_list(getattr(section, key)) for key in ("train_classes", "val_classes", "test_classes")
    }
    for key, names in groups.items():
        unknown = [n for n in names if n not in FASHION_MNIST_CLASSES]
        if unknown:
            raise ConfigError(
                f"data.fashion_mnist.{key}: unknown class(es) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(FASHION_MNIST_CLASSES)}"
            )
    seen = [n for names in groups.values() for n in names]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise ConfigError(f"data.fashion_mnist: classes in more than one split: {', '.join(twice)}")
    if not groups["train_classes"] or not groups["test_classes"]:
        raise ConfigError("data.fashion_mnist: train_classes and test_classes must not be empty")


FASHION_MNIST = Dataset(
    sources=find_files,
    build=build_fashion_mnist,
    summary="Fashion-MNIST: 10 kinds of clothing, 7000 28x28 gray pictures each (Xiao et al. 2017)",
    files="train-/t10k-images-idx3-ubyte, train-/t10k-labels-idx1-ubyte (.gz or raw; downloadable) in "
    "data.root, else Debian's /usr/share/datasets/fashion-mnist",
    remotes=tuple(REMOTES.values()),
    needs_root=False,  # Debian's package folder is the fallback
    flips_keep_labels=True,
    check=check_config,
)
