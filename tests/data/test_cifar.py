"""metafew.data.cifar (CIFAR-FS, FC100) and metafew.data.safe_pickle, on a tiny CIFAR-100 archive
built here in the real format: Python-2 style pickles inside cifar-100-python.tar.gz, all 100
classes with their real names, 2 training and 1 test picture each."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metafew.config import DataConfig
from metafew.data import DATASETS, cifar, load_data
from metafew.data.safe_pickle import load_pickle
from metafew.errors import DataError

# CIFAR-100's superclasses and their classes, as listed on https://www.cs.toronto.edu/~kriz/cifar.html
# (names as in the archive's meta file). Coarse label ids follow this order, fine label ids the
# alphabetical order of the 100 class names.
SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
COARSE = list(SUPERCLASSES)
FINE = sorted(name for names in SUPERCLASSES.values() for name in names)
PARENT = {name: COARSE.index(group) for group, names in SUPERCLASSES.items() for name in names}

# Bertinetto et al. (ICLR 2019): the CIFAR-FS validation and test classes
CIFAR_FS_VAL = sorted(
    [
        *("beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly"),
        *("sea", "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor"),
    ]
)
CIFAR_FS_TEST = sorted(
    [
        *("whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard"),
        *("plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle"),
        *("pickup_truck", "rocket"),
    ]
)
MARK = (2, 5, 7, 123)  # channel, row, column, value: set in every picture


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles bytes as Python 2 `str` (BINSTRING), as the published CIFAR files hold them."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_str2(self, obj: bytes) -> None:
        head = (
            pickle.SHORT_BINSTRING + bytes([len(obj)])
            if len(obj) < 256
            else b"T" + struct.pack("<i", len(obj))
        )
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str2


def py2_pickle(obj: object) -> bytes:
    """Protocol 2 with numpy 1.x's module names (numpy.core.multiarray), like the real files."""
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.", b"numpy.core.")


def batch(occurrences: list[int], seed: int) -> dict[bytes, object]:
    """A train/test batch: `occurrences` pictures per class in shuffled class order. A picture's
    red (0, 0) is its fine label, green (0, 0) its rank (0, 1 train; 2 test), MARK is set."""
    rng = np.random.default_rng(seed)
    fine = rng.permutation(np.repeat(np.arange(100), len(occurrences))).tolist()
    seen: Counter[int] = Counter()
    ranks = []
    for label in fine:  # a class's k-th picture in the file gets rank occurrences[k]
        ranks.append(occurrences[seen[label]])
        seen[label] += 1
    data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
    data[:, 0] = fine
    data[:, 1024] = ranks
    channel, row, col, value = MARK
    data[:, channel * 1024 + row * 32 + col] = value
    return {
        b"filenames": [f"{FINE[label]}_s_{i:06d}.png".encode() for i, label in enumerate(fine)],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": fine,
        b"coarse_labels": [PARENT[FINE[label]] for label in fine],
        b"data": data,
    }


def members(fine_names: list[str] | None = None) -> dict[str, bytes]:
    meta = {
        b"fine_label_names": [n.encode() for n in fine_names or FINE],
        b"coarse_label_names": [n.encode() for n in COARSE],
    }
    return {
        "train": py2_pickle(batch([0, 1], seed=1)),
        "test": py2_pickle(batch([2], seed=2)),
        "meta": py2_pickle(meta),
    }


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make the synthetic archive at `path` the "published" one."""
    monkeypatch.setattr(cifar, "ARCHIVE", replace(cifar.ARCHIVE, digest=md5(path)))


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return members()


@pytest.fixture
def root(tmp_path: Path, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Path:
    trust(monkeypatch, write_archive(tmp_path / "cifar-100-python.tar.gz", files))
    return tmp_path


def cfg(root: Path | None, dataset: str = "cifar-fs", **options: object) -> DataConfig:
    settings: dict[str, object] = {"image_size": 32, "channels": 3, "cache": False, **options}
    return DataConfig(dataset=dataset, root=None if root is None else str(root), **settings)  # type: ignore[arg-type]


def load(root: Path | None, dataset: str = "cifar-fs", **options: object):  # type: ignore[no-untyped-def]
    return load_data(cfg(root, dataset, **options))


def test_the_facts_of_this_file() -> None:
    assert len(FINE) == len(set(FINE)) == 100 and len(COARSE) == 20
    assert FINE[:3] == ["apple", "aquarium_fish", "baby"] and FINE[-1] == "worm"
    assert len(CIFAR_FS_VAL) == 16 and len(CIFAR_FS_TEST) == 20


def test_registered() -> None:
    assert DATASETS["cifar-fs"] is cifar.CIFAR_FS and DATASETS["fc100"] is cifar.FC100
    assert cifar.CIFAR_FS.remotes == (cifar.ARCHIVE,)


def test_cifar_fs_classes_per_split(root: Path) -> None:
    data = load(root)
    assert data.meta_val is not None
    assert data.meta_val.classes == CIFAR_FS_VAL
    assert data.novel.classes == CIFAR_FS_TEST
    assert data.meta_train.classes == [n for n in FINE if n not in CIFAR_FS_VAL + CIFAR_FS_TEST]
    assert len(data.meta_train.classes) == 64
    for split, n in ((data.meta_train, 64), (data.meta_val, 16), (data.novel, 20)):
        assert split.counts() == [3] * n
        assert split.images.shape == (3 * n, 3, 32, 32) and split.images.dtype == torch.uint8
    assert data.unlabeled is None and data.provenance["split"] == "cifar-fs"


def test_fc100_classes_are_those_of_the_superclasses(root: Path) -> None:
    data = load(root, "fc100")
    assert data.meta_val is not None

    def classes(groups: list[str]) -> list[str]:
        return sorted(n for g in groups for n in SUPERCLASSES[g])

    val = ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"]
    test = ["aquatic_mammals", "insects", "medium_mammals", "people"]
    assert data.meta_val.classes == classes(val)
    assert data.novel.classes == classes(test)
    assert data.meta_train.classes == classes([g for g in COARSE if g not in val + test])
    assert (len(data.meta_train.classes), len(data.meta_val.classes), len(data.novel.classes)) == (60, 20, 20)
    assert "leopard" in data.meta_val.classes and "whale" in data.novel.classes
    assert data.novel.counts() == [3] * 20


def test_pixels_round_trip_in_pooled_order(root: Path, files: dict[str, bytes]) -> None:
    novel = load(root).novel
    train = pickle.loads(files["train"], encoding="bytes")
    for c, name in enumerate(novel.classes):
        images = novel.images[novel.indices_by_class()[c]]
        assert images[:, 0, 0, 0].tolist() == [FINE.index(name)] * 3  # red (0, 0): its label
        assert images[:, 1, 0, 0].tolist() == [0, 1, 2]  # train pictures first, in file order
        channel, row, col, value = MARK
        assert images[:, channel, row, col].tolist() == [value] * 3
    first = train[b"fine_labels"].index(FINE.index("whale"))  # whale's first training picture
    expected = train[b"data"][first].reshape(3, 32, 32)
    assert torch.equal(
        novel.images[novel.indices_by_class()[novel.classes.index("whale")][0]], torch.from_numpy(expected)
    )


def test_resize_and_gray_match_pillow(root: Path, files: dict[str, bytes]) -> None:
    data = load(root, image_size=16, channels=1)
    assert data.meta_train.images.shape == (64 * 3, 1, 16, 16)
    train = pickle.loads(files["train"], encoding="bytes")
    rgb = train[b"data"][train[b"fine_labels"].index(0)].reshape(3, 32, 32).transpose(1, 2, 0)  # apple
    expected = Image.fromarray(rgb, "RGB").convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    assert data.meta_train.classes[0] == "apple"
    assert np.array_equal(data.meta_train.images[0, 0].numpy(), np.asarray(expected))
    upscaled = load(root, image_size=40)
    assert upscaled.novel.images.shape == (60, 3, 40, 40)


def test_novel_labeled_makes_unlabeled_pictures_with_answers(root: Path) -> None:
    full = load(root).novel
    data = load(root, novel_labeled=1)
    assert data.novel.counts() == [1] * 20 and data.novel.classes == CIFAR_FS_TEST
    assert torch.equal(data.novel.images[:, 1, 0, 0], torch.zeros(20, dtype=torch.uint8))  # the first
    pictures = data.unlabeled
    assert pictures is not None and pictures.answers is not None
    assert Counter(pictures.answers) == {name: 2 for name in CIFAR_FS_TEST}
    for image, answer in zip(pictures.images, pictures.answers):
        assert int(image[0, 0, 0]) == FINE.index(answer) and int(image[1, 0, 0]) in (1, 2)
    held = {bytes(image.numpy()) for image in pictures.images}
    assert held == {bytes(image.numpy()) for image in full.images[full.images[:, 1, 0, 0] > 0]}


def test_extracted_folder_reads_like_the_archive(
    root: Path, files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "extracted"
    (other / "cifar-100-python").mkdir(parents=True)
    for name, data in files.items():
        (other / "cifar-100-python" / name).write_bytes(data)
    monkeypatch.setattr(cifar, "MEMBER_MD5", {n: hashlib.md5(d).hexdigest() for n, d in files.items()})
    assert cifar.find_sources(cfg(other)) == [other / "cifar-100-python"]
    a, b = load(root), load(other)
    assert a.meta_train.classes == b.meta_train.classes
    assert torch.equal(a.meta_train.images, b.meta_train.images) and torch.equal(
        a.novel.labels, b.novel.labels
    )
    (other / "cifar-100-python" / "test").write_bytes(files["test"][:-1] + b"\0")
    with pytest.raises(DataError, match=r"cifar-100-python/test'.*md5.*does not match"):
        load(other)
    (other / "cifar-100-python" / "test").write_bytes(files["test"])
    (other / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataError, match=r"cifar-100-python/meta' not found.*incomplete"):
        load(other)


def test_archive_checksum_is_checked(tmp_path: Path, files: dict[str, bytes]) -> None:
    write_archive(tmp_path / "cifar-100-python.tar.gz", files)  # not the published bytes
    with pytest.raises(
        DataError, match=r"cifar-100-python\.tar\.gz'.*md5 .* eb9058c3a382ffc7106e4002c42a8d85"
    ):
        load(tmp_path)


def test_web_page_saved_as_archive(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_text("<!DOCTYPE html><html><body>Forbidden</body></html>")
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz' is a web page"):
        load(tmp_path)


def test_truncated_archive(tmp_path: Path, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_archive(tmp_path / "cifar-100-python.tar.gz", files)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    trust(monkeypatch, path)
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz'.*truncated or damaged"):
        load(tmp_path)


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(
    tmp_path: Path, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"fine_label_names": Exploit(marker)}, protocol=2)
    trust(monkeypatch, write_archive(tmp_path / "cifar-100-python.tar.gz", {**files, "meta": evil}))
    with pytest.raises(DataError, match=r"refusing to unpickle .*cifar-100-python/meta'.*(posix|os)\.system"):
        load(tmp_path)
    assert not marker.exists()


def test_archive_without_cifar100_names_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [("hippo" if n == "otter" else n) for n in FINE]
    trust(monkeypatch, write_archive(tmp_path / "cifar-100-python.tar.gz", members(names)))
    with pytest.raises(DataError, match="otter not in its meta file: it is not the CIFAR-100 archive"):
        load(tmp_path)
    assert load(tmp_path, "fc100").meta_val is not None  # FC100 needs only the superclass names
    files = members()
    del files["test"]
    trust(monkeypatch, write_archive(tmp_path / "cifar-100-python.tar.gz", files))
    with pytest.raises(DataError, match="lacks cifar-100-python/test"):
        load(tmp_path)


def test_missing_files_say_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root is not set.*cifar-100-python\.tar\.gz"):
        load(None)
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"CIFAR-100 not found.*data\.download=true.*www\.cs\.toronto\.edu"):
        load(tmp_path)


def test_download_from_a_mirror_folder(
    tmp_path: Path, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    trust(monkeypatch, write_archive(mirror / "cifar-100-python.tar.gz", files))
    monkeypatch.setattr(cifar, "ARCHIVE", replace(cifar.ARCHIVE, mirrors=(mirror.as_uri() + "/missing/",)))
    monkeypatch.setenv("METAFEW_MIRROR", str(mirror))
    root = tmp_path / "data" / "cifar"
    data = load(root, download=True)
    assert (root / "cifar-100-python.tar.gz").read_bytes() == (
        mirror / "cifar-100-python.tar.gz"
    ).read_bytes()
    assert data.novel.classes == CIFAR_FS_TEST


def test_load_data_end_to_end_and_from_the_cache(
    root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("METAFEW_CACHE", str(tmp_path / "cache"))
    first = load(root, "fc100", cache=True, novel_labeled=2)
    entries = list((tmp_path / "cache" / "fc100").glob("*.pt"))
    assert len(entries) == 1
    assert first.provenance["dataset"] == "fc100" and first.provenance["classes"] == first.class_lists()
    assert "cifar-100-python.tar.gz" in json.dumps(first.provenance["sources"])

    def fail(path: Path) -> None:
        raise AssertionError("decoded again instead of read from the cache")

    monkeypatch.setattr(cifar, "load_cifar100", fail)
    second = load(root, "fc100", cache=True, novel_labeled=2)
    assert second.class_lists() == first.class_lists() and second.provenance == first.provenance
    assert torch.equal(second.meta_train.images, first.meta_train.images)
    assert second.unlabeled is not None and first.unlabeled is not None
    assert second.unlabeled.answers == first.unlabeled.answers


# ---------------------------------------------------------------------------------------------
# safe_pickle


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_pickle_loads_arrays_and_containers(protocol: int) -> None:
    value = {
        "image_data": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
        "class_dict": {"n01": [0, np.int64(1)]},
        "misc": ({1, 2}, frozenset({3}), b"raw", bytearray(b"ba"), 1.5, None),
    }
    loaded = load_pickle(pickle.dumps(value, protocol=protocol), "x.pkl", encoding="latin1")
    assert (
        np.array_equal(loaded["image_data"], value["image_data"]) and loaded["image_data"].dtype == np.uint8
    )
    assert loaded["class_dict"] == {"n01": [0, 1]} and loaded["misc"] == value["misc"]


def test_safe_pickle_reads_numpy1_python2_pickles() -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    raw = py2_pickle({b"data": array, b"labels": [1, 2]})
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw
    loaded = load_pickle(raw, "batch")
    assert np.array_equal(loaded[b"data"], array) and loaded[b"labels"] == [1, 2]


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
        (b"cos\nsystem\n(S'true'\ntR.", "os.system"),
        (b"c_codecs\nencode\n(X\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13tR.", "rot13"),
        (b"cnumpy\nload\n(S'x'\ntR.", "numpy.load"),
    ],
)
def test_safe_pickle_refuses_other_globals(payload: bytes, named: str) -> None:
    with pytest.raises(DataError, match=rf"refusing to unpickle 'evil\.pkl'.*{named}"):
        load_pickle(payload, "evil.pkl")


def test_safe_pickle_reports_truncation() -> None:
    raw = pickle.dumps({"a": np.zeros(100, dtype=np.uint8)}, protocol=4)
    with pytest.raises(DataError, match=r"cannot read the pickle 'cut\.pkl'.*truncated"):
        load_pickle(raw[:-30], "cut.pkl")
