"""metafew.data.mini_imagenet on tiny copies of both layouts written here: Ravi & Larochelle's
CSVs with PNG pictures (images/ and <wnid>/ folders), and the pickled caches; 64/16/20 classes
with 2 pictures each, 84x84 RGB."""

from __future__ import annotations

import io
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metafew.config import DataConfig
from metafew.data import DATASETS, FewShotData, load_data
from metafew.data import mini_imagenet as mini
from metafew.errors import DataError

CLASSES = {"train": 64, "val": 16, "test": 20}
WNIDS = {
    split: sorted(f"n{9_000_000 - 1000 * i - offset:08d}" for i in range(n))  # not in label order
    for split, n, offset in (("train", 64, 1), ("val", 16, 2), ("test", 20, 3))
}
RANKS = 2
MARK = (2, 10, 20, 200)  # channel, row, column, value: set in every picture


def picture(split: str, c: int, rank: int) -> np.ndarray:
    """[84, 84, 3] uint8 noise; red (0, 0) = class index in its split, green (0, 0) = rank."""
    rng = np.random.default_rng([list(CLASSES).index(split), c, rank])
    pixels = rng.integers(0, 256, size=(84, 84, 3), dtype=np.uint8)
    pixels[0, 0, 0], pixels[0, 0, 1] = c, rank
    channel, row, col, value = MARK
    pixels[row, col, channel] = value
    return pixels


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def filename(wnid: str, rank: int) -> str:
    return f"{wnid}{rank + 1:08d}.png"  # Ravi & Larochelle's names: wnid + 8-digit number


@pytest.fixture(scope="module")
def pictures() -> dict[tuple[str, int, int], np.ndarray]:
    return {(s, c, r): picture(s, c, r) for s, n in CLASSES.items() for c in range(n) for r in range(RANKS)}


def csv_rows(split: str) -> list[tuple[str, str]]:
    """The split's rows, classes interleaved and each class's rank 1 before its rank 0."""
    return [(filename(w, r), w) for r in reversed(range(RANKS)) for w in WNIDS[split]]


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "filename,label") -> None:
    path.write_text("\n".join([header, *(f"{name},{label}" for name, label in rows)]) + "\n")


@pytest.fixture
def csv_root(tmp_path: Path, pictures: dict[tuple[str, int, int], np.ndarray]) -> Path:
    """train/val pictures in images/, test pictures in ImageNet-style <wnid>/ folders."""
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    for (split, c, rank), pixels in pictures.items():
        wnid = WNIDS[split][c]
        folder = root / wnid if split == "test" else root / "images"
        folder.mkdir(exist_ok=True)
        (folder / filename(wnid, rank)).write_bytes(png(pixels))
    for split in CLASSES:
        write_csv(root / f"{split}.csv", csv_rows(split))
    return root


def cache_dict(split: str, pictures: dict[tuple[str, int, int], np.ndarray]) -> dict[str, object]:
    """A pickled cache's dict: rows shuffled, class_dict in CSV order (rank 1 first)."""
    keys = [(split, c, r) for c in range(CLASSES[split]) for r in reversed(range(RANKS))]
    order = np.random.default_rng(7).permutation(len(keys))
    class_dict: dict[str, list[int]] = {w: [] for w in WNIDS[split]}
    for key in keys:
        class_dict[WNIDS[split][key[1]]].append(int(np.nonzero(order == keys.index(key))[0][0]))
    data = np.stack([pictures[keys[i]] for i in order])
    return {"image_data": data, "class_dict": class_dict}


@pytest.fixture
def pickle_root(tmp_path: Path, pictures: dict[tuple[str, int, int], np.ndarray]) -> Path:
    root = tmp_path / "pickles"
    root.mkdir()
    for split in CLASSES:
        (root / mini.pickle_name(split)).write_bytes(pickle.dumps(cache_dict(split, pictures), protocol=4))
    return root


def cfg(root: Path | None, **options: object) -> DataConfig:
    settings: dict[str, object] = {"image_size": 84, "channels": 3, "cache": False, **options}
    return DataConfig(dataset="mini-imagenet", root=None if root is None else str(root), **settings)  # type: ignore[arg-type]


def load(root: Path | None, **options: object) -> FewShotData:
    return load_data(cfg(root, **options))


def test_registered() -> None:
    assert DATASETS["mini-imagenet"] is mini.MINI_IMAGENET and mini.MINI_IMAGENET.remotes == ()


def check_splits(data: FewShotData) -> None:
    assert data.meta_val is not None
    assert data.meta_train.classes == WNIDS["train"]
    assert data.meta_val.classes == WNIDS["val"]
    assert data.novel.classes == WNIDS["test"]
    for images, n in ((data.meta_train, 64), (data.meta_val, 16), (data.novel, 20)):
        assert images.counts() == [RANKS] * n
        assert images.images.shape == (RANKS * n, 3, 84, 84) and images.images.dtype == torch.uint8


def check_pixels(data: FewShotData, pictures: dict[tuple[str, int, int], np.ndarray]) -> None:
    assert data.meta_val is not None
    for images in (data.meta_train, data.meta_val, data.novel):
        for c, rows in enumerate(images.indices_by_class()):
            got = images.images[rows]
            assert got[:, 0, 0, 0].tolist() == [c] * RANKS
            assert got[:, 1, 0, 0].tolist() == [1, 0]  # the CSV's order within a class
            channel, row, col, value = MARK
            assert got[:, channel, row, col].tolist() == [value] * RANKS
    expected = pictures[("test", 5, 1)].transpose(2, 0, 1)
    assert torch.equal(data.novel.images[10], torch.from_numpy(np.ascontiguousarray(expected)))


def test_csv_layout(csv_root: Path, pictures: dict[tuple[str, int, int], np.ndarray]) -> None:
    data = load(csv_root)
    check_splits(data)
    check_pixels(data, pictures)
    assert data.provenance["format"] == "csv" and data.unlabeled is None
    assert mini.find_sources(cfg(csv_root)) == [
        *(csv_root / f"{s}.csv" for s in CLASSES),
        csv_root / "images",
        *(csv_root / w for w in WNIDS["test"]),
    ]


def test_pickle_layout_reads_like_the_csvs(
    pickle_root: Path, csv_root: Path, pictures: dict[tuple[str, int, int], np.ndarray]
) -> None:
    data = load(pickle_root)
    check_splits(data)
    check_pixels(data, pictures)
    assert data.provenance["format"] == "pickle"
    from_csv = load(csv_root)
    assert torch.equal(data.meta_train.images, from_csv.meta_train.images)
    assert torch.equal(data.novel.labels, from_csv.novel.labels)
    small_csv, small_pickle = (
        load(csv_root, image_size=42, channels=1),
        load(pickle_root, image_size=42, channels=1),
    )
    assert small_csv.novel.images.shape == (40, 1, 42, 42)
    assert torch.equal(small_csv.novel.images, small_pickle.novel.images)  # the same Pillow steps


def test_pickles_win_over_csvs(pickle_root: Path, csv_root: Path) -> None:
    for split in CLASSES:
        (csv_root / mini.pickle_name(split)).write_bytes((pickle_root / mini.pickle_name(split)).read_bytes())
    assert mini.find_sources(cfg(csv_root)) == [csv_root / mini.pickle_name(s) for s in CLASSES]


def test_resize_and_gray_match_pillow(
    csv_root: Path, pictures: dict[tuple[str, int, int], np.ndarray]
) -> None:
    data = load(csv_root, image_size=28, channels=1)
    assert data.meta_train.images.shape == (128, 1, 28, 28)
    source = (
        Image.fromarray(pictures[("train", 0, 1)], "RGB")
        .convert("L")
        .resize((28, 28), Image.Resampling.BILINEAR)
    )
    assert np.array_equal(data.meta_train.images[0, 0].numpy(), np.asarray(source))


def test_novel_labeled_makes_unlabeled_pictures_with_answers(pickle_root: Path) -> None:
    data = load(pickle_root, novel_labeled=1)
    assert data.novel.counts() == [1] * 20 and data.novel.images[:, 1, 0, 0].tolist() == [1] * 20
    pictures = data.unlabeled
    assert pictures is not None and pictures.answers is not None
    assert Counter(pictures.answers) == {w: 1 for w in WNIDS["test"]}
    for image, answer in zip(pictures.images, pictures.answers):
        assert int(image[0, 0, 0]) == WNIDS["test"].index(answer) and int(image[1, 0, 0]) == 0


def test_missing_pictures_are_named(csv_root: Path) -> None:
    os.remove(csv_root / "images" / filename(WNIDS["val"][3], 0))
    os.remove(csv_root / WNIDS["test"][0] / filename(WNIDS["test"][0], 1))
    with pytest.raises(DataError, match=r"2 pictures named in the CSVs are missing") as info:
        load(csv_root)
    assert f"{filename(WNIDS['test'][0], 1)} ({WNIDS['test'][0]})" in str(info.value)
    assert filename(WNIDS["val"][3], 0) in str(info.value)


def test_unreadable_picture_is_named(csv_root: Path) -> None:
    (csv_root / "images" / filename(WNIDS["train"][7], 0)).write_bytes(b"not a picture")
    with pytest.raises(DataError, match=rf"cannot read image .*{filename(WNIDS['train'][7], 0)}"):
        load(csv_root)


def test_class_in_two_splits_is_refused(csv_root: Path) -> None:
    shared = WNIDS["train"][0]
    write_csv(csv_root / "val.csv", [*csv_rows("val")[1:], (filename(shared, 0), shared)])
    with pytest.raises(DataError, match=rf"class '{shared}' is in both train and val"):
        load(csv_root)


def test_other_class_counts_are_refused(csv_root: Path, pickle_root: Path) -> None:
    write_csv(csv_root / "val.csv", [row for row in csv_rows("val") if row[1] != WNIDS["val"][0]])
    with pytest.raises(DataError, match=r"'val': 15.*not the .*'val': 16.*data\.dataset=folder"):
        load(csv_root)
    cache = pickle.loads((pickle_root / mini.pickle_name("test")).read_bytes())
    del cache["class_dict"][WNIDS["test"][4]]
    (pickle_root / mini.pickle_name("test")).write_bytes(pickle.dumps(cache))
    with pytest.raises(DataError, match=r"pickles in .*'test': 19"):
        load(pickle_root)


def test_malformed_csvs(csv_root: Path) -> None:
    write_csv(csv_root / "test.csv", csv_rows("test"), header="file,class")
    with pytest.raises(DataError, match=r"test\.csv': the first line must be `filename,label`"):
        load(csv_root)
    write_csv(csv_root / "test.csv", [*csv_rows("test"), ("orphan.png", "")])
    with pytest.raises(DataError, match=r"test\.csv': lines \[42\] lack a filename or a label"):
        load(csv_root)
    (csv_root / "test.csv").write_text("<!DOCTYPE html><title>Sign in</title>")
    with pytest.raises(DataError, match=r"test\.csv' is a web page"):
        load(csv_root)


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("echo pwned",)


def test_pickle_that_runs_code_is_refused(pickle_root: Path) -> None:
    (pickle_root / mini.pickle_name("val")).write_bytes(pickle.dumps({"image_data": Exploit()}))
    with pytest.raises(DataError, match=r"refusing to unpickle .*mini-imagenet-cache-val\.pkl'.*system"):
        load(pickle_root)


def test_damaged_pickles(pickle_root: Path) -> None:
    path = pickle_root / mini.pickle_name("train")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cannot read the pickle .*cache-train\.pkl'.*truncated"):
        load(pickle_root)
    path.write_bytes(pickle.dumps({"images": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {}}))
    with pytest.raises(DataError, match=r"cache-train\.pkl': no 'image_data' uint8 \[N, H, W, 3\]"):
        load(pickle_root)
    path.write_bytes(
        pickle.dumps({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": [0, 2]}})
    )
    with pytest.raises(DataError, match=r"class_dict\['n1'\] names rows outside its 2 pictures"):
        load(pickle_root)
    path.write_text("<html><body>quota exceeded</body></html>")
    with pytest.raises(DataError, match=r"cache-train\.pkl' is a web page"):
        load(pickle_root)


def test_nothing_there_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"data\.root is not set.*ImageNet's terms.*train\.csv.*mini-imagenet-cache"
    ):
        load(None)
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "train.csv").write_text("filename,label\n")
    with pytest.raises(DataError, match=r"not found in .*\(found: train\.csv\).*images/<filename>"):
        load(tmp_path)


def test_load_data_end_to_end_and_from_the_cache(
    pickle_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAFEW_CACHE", str(tmp_path / "cache"))
    first = load(pickle_root, cache=True, novel_labeled=1)
    assert len(list((tmp_path / "cache" / "mini-imagenet").glob("*.pt"))) == 1
    assert (
        first.provenance["dataset"] == "mini-imagenet"
        and first.provenance["classes"]["novel"] == WNIDS["test"]
    )

    def fail(*args: object) -> None:
        raise AssertionError("decoded again instead of read from the cache")

    monkeypatch.setattr(mini, "build_from_pickles", fail)
    second = load(pickle_root, cache=True, novel_labeled=1)
    assert second.class_lists() == first.class_lists() and second.provenance == first.provenance
    assert torch.equal(second.meta_train.images, first.meta_train.images)
    assert second.unlabeled is not None and first.unlabeled is not None
    assert second.unlabeled.answers == first.unlabeled.answers
