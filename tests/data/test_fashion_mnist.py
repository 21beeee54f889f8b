"""metafew.data.fashion_mnist on tiny IDX files written here (gzipped and raw, 3 training and 1
test picture per class) and, when Debian's dataset-fashion-mnist is installed, the real files."""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metafew.config import DataConfig, FashionMNISTConfig
from metafew.data import DATASETS, FewShotData, load_data
from metafew.data import fashion_mnist as fm
from metafew.data.download import RemoteFile
from metafew.data.fashion_mnist import FASHION_MNIST_CLASSES
from metafew.errors import DataError

DEFAULT_TRAIN = ["tshirt_top", "trouser", "pullover", "dress", "coat"]
DEFAULT_NOVEL = ["sandal", "shirt", "sneaker", "bag", "ankle_boot"]
MARK = (3, 5, 200)  # row, column, value: set in every picture


def idx(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x00000803 ([n, rows, cols]) or 0x00000801 ([n])."""
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def part(ranks: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """len(ranks) pictures per class, classes shuffled; a picture's (0, 0) is 10*label + rank,
    where rank counts the class's pictures in file order starting at ranks[0]."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), len(ranks)))
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    seen: Counter[int] = Counter()
    for i, label in enumerate(labels.tolist()):
        images[i, 0, 0] = 10 * label + ranks[seen[label]]
        seen[label] += 1
    row, col, value = MARK
    images[:, row, col] = value
    return images, labels


TRAIN_IMAGES, TRAIN_LABELS = part([0, 1, 2], seed=1)
TEST_IMAGES, TEST_LABELS = part([3], seed=2)
RAW = {
    "train-images-idx3-ubyte": idx(TRAIN_IMAGES),
    "train-labels-idx1-ubyte": idx(TRAIN_LABELS),
    "t10k-images-idx3-ubyte": idx(TEST_IMAGES),
    "t10k-labels-idx1-ubyte": idx(TEST_LABELS),
}


def write(
    root: Path, gzipped: tuple[str, ...] = ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
) -> Path:
    """The four files in `root`; those in `gzipped` as .gz, the others raw."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, data in RAW.items():
        if stem in gzipped:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (root / stem).write_bytes(data)
    return root


@pytest.fixture(autouse=True)
def synthetic_digests(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The synthetic files are "official" here, and Debian's copy is out of sight."""
    monkeypatch.setattr(fm, "SHA256", {stem: hashlib.sha256(data).hexdigest() for stem, data in RAW.items()})
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "no-debian")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write(tmp_path / "fashion")


def cfg(root: Path | None, **options: object) -> DataConfig:
    classes = {k: options.pop(k) for k in ("train_classes", "val_classes", "test_classes") if k in options}
    return DataConfig(
        dataset="fashion-mnist",
        root=None if root is None else str(root),
        cache=bool(options.pop("cache", False)),
        fashion_mnist=FashionMNISTConfig(**classes),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


def load(root: Path | None, **options: object) -> FewShotData:
    return load_data(cfg(root, **options))


def test_registered() -> None:
    assert DATASETS["fashion-mnist"] is fm.FASHION_MNIST
    assert [r.name for r in fm.FASHION_MNIST.remotes] == [f"{stem}.gz" for stem in fm.STEMS]


def test_default_classes_pool_train_and_test(root: Path) -> None:
    data = load(root)
    assert data.meta_train.classes == DEFAULT_TRAIN and data.novel.classes == DEFAULT_NOVEL
    assert data.meta_val is None and data.unlabeled is None
    assert data.meta_train.counts() == [4] * 5 and data.novel.counts() == [4] * 5
    assert data.meta_train.images.shape == (20, 1, 28, 28) and data.meta_train.images.dtype == torch.uint8


def test_configured_split_in_label_order(root: Path) -> None:
    data = load(root, train_classes="coat, trouser", val_classes="bag", test_classes="sneaker,sandal")
    assert data.meta_train.classes == ["trouser", "coat"]
    assert data.meta_val is not None and data.meta_val.classes == ["bag"]
    assert data.novel.classes == ["sandal", "sneaker"]
    assert data.meta_val.images[:, 0, 0, 0].tolist() == [80, 81, 82, 83]


def test_pixels_round_trip(root: Path) -> None:
    novel = load(root).novel
    for c, name in enumerate(novel.classes):
        label = FASHION_MNIST_CLASSES.index(name)
        images = novel.images[novel.indices_by_class()[c]]
        assert images[:, 0, 0, 0].tolist() == [10 * label + r for r in range(4)]  # train first, file order
        assert images[:, 0, MARK[0], MARK[1]].tolist() == [MARK[2]] * 4
    bag = int(np.nonzero(TEST_LABELS == 8)[0][0])  # the only test picture of "bag"
    assert torch.equal(novel.images[novel.indices_by_class()[3][3], 0], torch.from_numpy(TEST_IMAGES[bag]))


def test_resize_and_rgb(root: Path) -> None:
    data = load(root, image_size=14, channels=3)
    images = data.meta_train.images
    assert images.shape == (20, 3, 14, 14)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    first = int(np.nonzero(TRAIN_LABELS == 0)[0][0])  # the first t-shirt in the file
    expected = Image.fromarray(TRAIN_IMAGES[first], "L").resize((14, 14), Image.Resampling.BILINEAR)
    assert np.array_equal(images[0, 0].numpy(), np.asarray(expected))
    assert load(root, channels=3).novel.images.shape == (20, 3, 28, 28)


def test_novel_labeled_makes_unlabeled_pictures_with_answers(root: Path) -> None:
    data = load(root, novel_labeled=1)
    assert data.novel.counts() == [1] * 5
    assert data.novel.images[:, 0, 0, 0].tolist() == [50, 60, 70, 80, 90]
    pictures = data.unlabeled
    assert pictures is not None and pictures.answers is not None
    assert Counter(pictures.answers) == {name: 3 for name in DEFAULT_NOVEL}
    for image, answer in zip(pictures.images, pictures.answers):
        assert (
            int(image[0, 0, 0]) // 10 == FASHION_MNIST_CLASSES.index(answer) and int(image[0, 0, 0]) % 10 > 0
        )


def test_gzipped_and_raw_files_read_the_same(root: Path, tmp_path: Path) -> None:
    other = write(tmp_path / "other", gzipped=tuple(fm.STEMS))
    assert [p.name for p in fm.find_files(cfg(other))] == [f"{s}.gz" for s in fm.STEMS]
    a, b = load(root), load(other)
    assert torch.equal(a.meta_train.images, b.meta_train.images) and torch.equal(
        a.novel.labels, b.novel.labels
    )


def test_wrong_bytes_fail_the_checksum(root: Path) -> None:
    path = root / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte': the SHA-256 of its bytes.*not the official"
    ):
        load(root)
    gz = root / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(RAW["t10k-labels-idx1-ubyte"][:-1] + b"\x09"))
    path.write_bytes(RAW["train-labels-idx1-ubyte"])
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte\.gz': the SHA-256 of its decompressed bytes"
    ):
        load(root)


def test_web_page_saved_as_a_file(root: Path) -> None:
    (root / "train-images-idx3-ubyte.gz").write_text("<html><head><title>404</title></head></html>")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz' is a web page"):
        load(root)


def test_truncated_and_mislabeled_files(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm, "SHA256", {})  # unknown contents: only the format is checked
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(RAW["t10k-images-idx3-ubyte"][:-28])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte' is truncated.*header says 10x28x28 = 7840"):
        load(root)
    path.write_bytes(RAW["t10k-labels-idx1-ubyte"])  # labels where pictures belong
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte' is not an IDX file of pictures: magic 0x00000801"
    ):
        load(root)
    path.write_bytes(RAW["t10k-images-idx3-ubyte"])
    gz = root / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:100])
    with pytest.raises(DataError, match=r"cannot decompress .*train-images-idx3-ubyte\.gz'.*truncated"):
        load(root)
    gz.write_bytes(gzip.compress(RAW["train-images-idx3-ubyte"]))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(TEST_LABELS[:-1])))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz' holds 9 labels for 10 pictures"):
        load(root)


def test_missing_files_say_where_to_get_them(tmp_path: Path, root: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root is not set.*no-debian.*dataset-fashion-mnist"):
        load(None)
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nowhere")
    (root / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte'\(\.gz\) not found.*data\.download=true.*zalando"
    ):
        load(root)


def test_debian_folder_is_the_default_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_ROOT", root)
    assert fm.find_files(cfg(None))[0] == root / "train-images-idx3-ubyte.gz"
    assert load(None).novel.classes == DEFAULT_NOVEL


def test_download_from_a_mirror_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = write(tmp_path / "mirror", gzipped=tuple(fm.STEMS))
    remotes = {
        stem: RemoteFile(
            f"{stem}.gz", "md5", hashlib.md5((mirror / f"{stem}.gz").read_bytes()).hexdigest(), (), "page"
        )
        for stem in fm.STEMS
    }
    monkeypatch.setattr(fm, "REMOTES", remotes)
    monkeypatch.setenv("METAFEW_MIRROR", str(mirror))
    root = tmp_path / "data"
    write(root, gzipped=())
    (root / "t10k-images-idx3-ubyte").unlink()
    (root / "train-labels-idx1-ubyte").unlink()
    data = load(root, download=True)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte",
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte.gz",
        ]
    )
    assert data.novel.counts() == [4] * 5
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    (mirror / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b wrong bytes")
    with pytest.raises(DataError, match=r"could not download t10k-images-idx3-ubyte\.gz.*md5"):
        load(root, download=True)
    assert not (root / "t10k-images-idx3-ubyte.gz").exists()


def test_load_data_end_to_end_and_from_the_cache(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAFEW_CACHE", str(tmp_path / "cache"))
    first = load(root, cache=True, novel_labeled=2, val_classes="bag", test_classes="sandal,shirt,sneaker")
    assert len(list((tmp_path / "cache" / "fashion-mnist").glob("*.pt"))) == 1
    assert first.provenance["dataset"] == "fashion-mnist"
    assert first.provenance["classes"]["meta_val"] == ["bag"]

    def fail(paths: list[Path]) -> None:
        raise AssertionError("decoded again instead of read from the cache")

    monkeypatch.setattr(fm, "load_pool", fail)
    second = load(root, cache=True, novel_labeled=2, val_classes="bag", test_classes="sandal,shirt,sneaker")
    assert second.class_lists() == first.class_lists() and second.provenance == first.provenance
    assert torch.equal(second.novel.images, first.novel.images)
    assert second.unlabeled is not None and first.unlabeled is not None
    assert torch.equal(second.unlabeled.images, first.unlabeled.images)


def test_real_debian_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real digests and the real Debian folder
    if not all((fm.DEBIAN_ROOT / f"{stem}.gz").is_file() for stem in fm.STEMS):
        pytest.skip(f"Fashion-MNIST not installed in {fm.DEBIAN_ROOT} (apt install dataset-fashion-mnist)")
    data = load(None)  # also checks the SHA-256 of every decompressed file
    assert data.meta_train.counts() == [7000] * 5 and data.novel.counts() == [7000] * 5
    assert data.meta_train.images.shape == (35000, 1, 28, 28)
    # the first training picture is an ankle boot (label 9): the first of its class
    ankle_boot = data.novel.images[data.novel.indices_by_class()[4][0], 0]
    assert int(ankle_boot.sum()) == 76247 and int(ankle_boot.max()) == 255
    assert (
        abs(float(torch.cat([data.meta_train.images, data.novel.images]).double().mean()) - 72.9698) < 1e-4
    )  # pooled
