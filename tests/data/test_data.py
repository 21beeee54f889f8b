"""metafew.data: the embedded glyph generator and the image-folder loader."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_class_folder, write_image
from PIL import Image

from metafew.config import DataConfig, GlyphsConfig
from metafew.config_load import load_config
from metafew.data import load_data, to_float
from metafew.data.folder import (
    IMAGE_SUFFIXES,
    decode_image,
    load_class_folders,
    load_folder_dataset,
    load_unlabeled,
    read_answers,
)
from metafew.data.glyphs import glyph_images, load_glyphs
from metafew.errors import ConfigError, DataError

SMALL = GlyphsConfig(
    seed=0,
    train_classes=3,
    val_classes=2,
    novel_classes=2,
    train_samples=3,
    novel_labeled=2,
    novel_unlabeled=3,
)


def glyphs(size: int = 12, channels: int = 1, **changes: int):
    cfg = GlyphsConfig(**{**SMALL.__dict__, **changes})
    return load_glyphs(cfg, size, channels)


# ---------------------------------------------------------------------------------------------
# glyphs


def test_same_seed_gives_identical_tensors() -> None:
    a, b = glyphs(), glyphs()
    for split in ("meta_train", "meta_val", "novel"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)
        assert getattr(a, split).classes == getattr(b, split).classes
    assert torch.equal(a.unlabeled.images, b.unlabeled.images)
    assert a.unlabeled.answers == b.unlabeled.answers
    assert a.unlabeled.names == b.unlabeled.names


def test_different_seed_gives_different_images() -> None:
    a, b = glyphs(seed=0), glyphs(seed=1)
    assert not torch.equal(a.meta_train.images, b.meta_train.images)
    assert not torch.equal(a.novel.images, b.novel.images)
    assert not torch.equal(glyph_images(0, 0, range(2), 12, 1), glyph_images(1, 0, range(2), 12, 1))


def test_class_images_do_not_depend_on_how_many_were_requested() -> None:
    three = glyphs(train_classes=3, train_samples=3)
    five = glyphs(train_classes=5, train_samples=6)
    for c in range(3):
        a = three.meta_train.images[three.meta_train.labels == c]
        b = five.meta_train.images[five.meta_train.labels == c]
        assert three.meta_train.classes[c] == five.meta_train.classes[c]
        assert torch.equal(a, b[:3])
    assert torch.equal(glyph_images(0, 4, range(2, 5), 12, 1), glyph_images(0, 4, range(6), 12, 1)[2:5])


def test_shapes_and_dtypes() -> None:
    data = glyphs(size=12)
    assert data.meta_train.images.shape == (3 * 3, 1, 12, 12)
    assert data.meta_val.images.shape == (2 * 3, 1, 12, 12)
    assert data.novel.images.shape == (2 * 2, 1, 12, 12)
    assert data.unlabeled.images.shape == (2 * 3, 1, 12, 12)
    for t in (data.meta_train.images, data.meta_val.images, data.novel.images, data.unlabeled.images):
        assert t.dtype == torch.uint8
    assert data.meta_train.labels.dtype == torch.int64
    assert data.meta_train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.meta_train.counts() == [3, 3, 3]
    assert len(data.unlabeled.names) == 6 and len(set(data.unlabeled.names)) == 6


@pytest.mark.parametrize("size", [4, 12, 40])
def test_any_image_size(size: int) -> None:
    images = glyph_images(3, 1, range(2), size, 1)
    assert images.shape == (2, 1, size, size) and images.dtype == torch.uint8
    assert images.max() > 0


def test_three_channels_replicate_the_grayscale_channel() -> None:
    gray = glyph_images(0, 2, range(3), 12, 1)
    rgb = glyph_images(0, 2, range(3), 12, 3)
    assert rgb.shape == (3, 3, 12, 12)
    for ch in range(3):
        assert torch.equal(rgb[:, ch : ch + 1], gray)
    data = glyphs(size=12, channels=3)
    assert data.meta_train.images.shape == (9, 3, 12, 12)
    assert data.meta_train.images.is_contiguous()


def test_val_zero_and_unlabeled_zero() -> None:
    data = glyphs(val_classes=0, novel_unlabeled=0)
    assert data.meta_val is None and data.unlabeled is None
    # without validation classes, the novel classes follow the meta-train ones
    assert data.novel.classes == ["glyph003", "glyph004"]


def test_splits_are_disjoint_by_class_name() -> None:
    data = glyphs()
    train, val, novel = (set(s.classes) for s in (data.meta_train, data.meta_val, data.novel))
    assert len(train) == 3 and len(val) == 2 and len(novel) == 2
    assert not train & val and not train & novel and not val & novel
    assert not torch.equal(data.meta_train.images[:2], data.novel.images[:2])


def test_unlabeled_answers_are_the_true_classes() -> None:
    cfg = GlyphsConfig(**{**SMALL.__dict__, "novel_unlabeled": 4})
    data = load_glyphs(cfg, 12, 1)
    unl = data.unlabeled
    assert unl.answers is not None and len(unl.answers) == len(unl.names) == 2 * 4
    assert sorted(unl.answers) == sorted(c for c in data.novel.classes for _ in range(4))
    first = cfg.train_classes + cfg.val_classes
    held = range(cfg.novel_labeled, cfg.novel_labeled + cfg.novel_unlabeled)
    renders = {
        name: glyph_images(cfg.seed, first + k, held, 12, 1) for k, name in enumerate(data.novel.classes)
    }
    used: set[tuple[str, int]] = set()
    for image, answer in zip(unl.images, unl.answers):
        matches = [
            (name, j)
            for name, imgs in renders.items()
            for j in range(len(held))
            if torch.equal(imgs[j], image)
        ]
        assert matches, f"unlabeled image is not a render of any novel class ({answer})"
        assert {name for name, _ in matches} == {answer}
        used.update(matches)
    assert len(used) == 8  # every held-out sample appears exactly once
    # unlabeled pictures are not among the labeled ones
    for image in unl.images:
        assert not any(torch.equal(image, labeled) for labeled in data.novel.images)


def test_unlabeled_order_is_shuffled() -> None:
    data = glyphs(novel_classes=3, novel_unlabeled=5)
    blocks = [data.unlabeled.answers[i : i + 5] for i in range(0, 15, 5)]
    assert not all(len(set(b)) == 1 for b in blocks)


def test_images_are_not_blank_and_samples_differ() -> None:
    images = glyph_images(0, 5, range(4), 16, 1)
    for image in images:
        inked = (image > 128).float().mean().item()
        assert 0.02 < inked < 0.8
        assert image.min() == 0 and image.max() > 200
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(images[i], images[j])
    other = glyph_images(0, 6, range(1), 16, 1)
    assert not torch.equal(images[0], other[0])


def test_glyph_classes_differ_more_between_than_within() -> None:
    a = to_float(glyph_images(0, 0, range(6), 16, 1))
    b = to_float(glyph_images(0, 1, range(6), 16, 1))
    within = (a[:3] - a[3:]).abs().mean()
    between = (a[:3] - b[:3]).abs().mean()
    assert between > within


def test_load_data_dispatches_glyphs() -> None:
    cfg = DataConfig(image_size=8, glyphs=SMALL)
    data = load_data(cfg)
    assert data.meta_train.images.shape == (9, 1, 8, 8)
    assert torch.equal(data.meta_train.images, load_glyphs(SMALL, 8, 1).meta_train.images)


def test_to_float_range() -> None:
    x = to_float(torch.tensor([0, 128, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32
    assert x.tolist() == pytest.approx([0.0, 128 / 255, 1.0])


def test_every_glyph_seed_the_config_accepts_works() -> None:
    try:
        cfg = load_config(None, ["data.glyphs.seed=-1"])
    except ConfigError:
        return
    load_glyphs(cfg.data.glyphs, 8, 1)


# ---------------------------------------------------------------------------------------------
# folders


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_image_suffix_loads(tmp_path: Path, suffix: str) -> None:
    root = make_class_folder(tmp_path / "d", {"a": 2, "b": 3}, size=10, suffix=suffix)
    data = load_class_folders(root, 8, 1)
    assert data.images.shape == (5, 1, 8, 8)
    assert data.classes == ["a", "b"]
    assert data.labels.tolist() == [0, 0, 1, 1, 1]


def test_upper_case_suffix_loads(tmp_path: Path) -> None:
    write_image(tmp_path / "d" / "a" / "x.PNG", 8)
    assert load_class_folders(tmp_path / "d", 8, 1).images.shape == (1, 1, 8, 8)


def test_grayscale_png_pixels_are_preserved(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a" / "x.png", size=8, seed=3)
    expected = np.asarray(Image.open(path))
    array = decode_image(path, 8, 1)
    assert array.shape == (1, 8, 8) and array.dtype == np.uint8
    assert np.array_equal(array[0], expected)


def test_rgb_output_and_channel_order(tmp_path: Path) -> None:
    path = write_image(tmp_path / "x.png", size=8, seed=4, mode="RGB")
    expected = np.asarray(Image.open(path))
    array = decode_image(path, 8, 3)
    assert array.shape == (3, 8, 8)
    for ch in range(3):
        assert np.array_equal(array[ch], expected[:, :, ch])


def test_rgb_file_to_grayscale_and_grayscale_file_to_rgb(tmp_path: Path) -> None:
    rgb = write_image(tmp_path / "rgb.png", size=8, seed=5, mode="RGB")
    gray = write_image(tmp_path / "gray.png", size=8, seed=6, mode="L")
    assert np.array_equal(decode_image(rgb, 8, 1)[0], np.asarray(Image.open(rgb).convert("L")))
    three = decode_image(gray, 8, 3)
    assert three.shape == (3, 8, 8)
    assert np.array_equal(three[0], three[1]) and np.array_equal(three[1], three[2])
    assert np.array_equal(three[0], np.asarray(Image.open(gray)))


def test_resizes_to_image_size(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((10, 30), 200, dtype=np.uint8)).save(path)
    array = decode_image(path, 6, 1)
    assert array.shape == (1, 6, 6)
    assert (array == 200).all()
    root = make_class_folder(tmp_path / "d", {"a": 2}, size=20)
    assert load_class_folders(root, 7, 3).images.shape == (2, 3, 7, 7)


def test_class_order_is_sorted_folder_names_and_labels_match(tmp_path: Path) -> None:
    root = tmp_path / "d"
    # each class gets a constant brightness so that labels can be checked against pixels
    brightness = {"zebra": 10, "Apple": 60, "mango": 110, "banana": 160}
    counts = {"zebra": 2, "Apple": 3, "mango": 1, "banana": 2}
    for name, value in brightness.items():
        for i in range(counts[name]):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(root / name / f"{i}.png")
    data = load_class_folders(root, 8, 1)
    assert data.classes == sorted(brightness)  # "Apple" < "banana" < "mango" < "zebra"
    assert data.counts() == [counts[c] for c in data.classes]
    for image, label in zip(data.images, data.labels):
        assert int(image[0, 0, 0]) == brightness[data.classes[int(label)]]


def test_hidden_and_non_image_files_are_ignored(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    write_image(root / "a" / ".hidden.png", 8)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "Thumbs.db").write_bytes(b"\x00\x01")
    (root / "b" / "sub").mkdir()
    write_image(root / "b" / "sub" / "nested.png", 8)
    write_image(root / ".git" / "x.png", 8)
    (root / "README.md").write_text("readme")
    data = load_class_folders(root, 8, 1)
    assert data.classes == ["a", "b"]
    assert data.counts() == [2, 2]


def test_empty_class_folders_are_listed(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "d", {"a": 2}, size=8)
    (root / "empty1").mkdir()
    (root / "only_text").mkdir()
    (root / "only_text" / "x.txt").write_text("x")
    with pytest.raises(DataError) as info:
        load_class_folders(root, 8, 1)
    assert info.value.exit_code == 3
    assert "class folders without images: empty1, only_text (" in str(info.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_class_folders(tmp_path / "absent", 8, 1)
    assert "absent" in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        load_unlabeled(tmp_path / "absent", 8, 1)
    with pytest.raises(DataError, match=r"data\.root"):
        load_folder_dataset(tmp_path / "absent", 8, 1)


def test_folder_without_class_subfolders(tmp_path: Path) -> None:
    write_image(tmp_path / "flat" / "x.png", 8)
    with pytest.raises(DataError, match="no class sub-folders"):
        load_class_folders(tmp_path / "flat", 8, 1)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_image_names_the_file(tmp_path: Path, damage: str) -> None:
    root = make_class_folder(tmp_path / "d", {"a": 3, "b": 2}, size=32)
    bad = root / "b" / "001.png"
    data = bad.read_bytes()
    content = {"truncated": data[: len(data) // 2], "garbage": b"not a png at all", "empty": b""}[damage]
    bad.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_class_folders(root, 8, 1)
    assert str(bad) in str(info.value)
    assert info.value.exit_code == 3


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "d", {"a": 2}, size=64, suffix=".jpg")
    bad = root / "a" / "000.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=r"000\.jpg"):
        load_class_folders(root, 8, 1)


def test_load_unlabeled_skips_unreadable_files(tmp_path: Path) -> None:
    folder = tmp_path / "novel" / "unlabeled"
    for i in range(4):
        write_image(folder / f"u{i}.png", 12, seed=i)
    good = folder / "u1.png"
    (folder / "u2.png").write_bytes(good.read_bytes()[:40])
    (folder / "u3.png").write_bytes(b"junk")
    (folder / "notes.txt").write_text("ignored")
    images, failed = load_unlabeled(folder, 12, 1)
    assert images.names == ["u0.png", "u1.png"]
    assert images.images.shape == (2, 1, 12, 12)
    assert np.array_equal(images.images[1, 0].numpy(), np.asarray(Image.open(good)))
    assert [name for name, _ in failed] == ["u2.png", "u3.png"]
    assert all(name in reason for name, reason in failed)
    assert images.answers is None


def test_load_unlabeled_all_unreadable(tmp_path: Path) -> None:
    folder = tmp_path / "u"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="could be read"):
        load_unlabeled(folder, 8, 1)


def test_load_unlabeled_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no pictures"):
        load_unlabeled(tmp_path / "u", 8, 1)


def write_answers(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label"])
        writer.writerows(rows)


def test_answers_csv_beside_the_unlabeled_folder_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "novel" / "unlabeled"
    for i in range(3):
        write_image(folder / f"u{i}.png", 8, seed=i)
    write_answers(
        tmp_path / "novel" / "answers.csv", [("u2.png", "cat"), ("u0.png", "dog"), ("u1.png", "cat")]
    )
    images, failed = load_unlabeled(folder, 8, 1)
    assert failed == []
    assert images.names == ["u0.png", "u1.png", "u2.png"]
    assert images.answers == ["dog", "cat", "cat"]


def test_incomplete_answers_are_ignored(tmp_path: Path) -> None:
    write_answers(tmp_path / "answers.csv", [("a.png", "x")])
    assert read_answers(tmp_path / "answers.csv", ["a.png", "b.png"]) is None
    assert read_answers(tmp_path / "answers.csv", ["a.png"]) == ["x"]
    assert read_answers(tmp_path / "missing.csv", ["a.png"]) is None


def test_load_folder_dataset(folder_dataset: Path) -> None:
    data = load_folder_dataset(folder_dataset, 12, 1)
    assert data.meta_train.classes == ["C1", "C2", "C3", "C4"]
    assert data.meta_train.images.shape == (32, 1, 12, 12)
    assert data.meta_val is None
    assert data.novel.classes == ["P1", "P2", "P3"]
    assert data.novel.counts() == [6, 6, 6]
    assert data.unlabeled is not None
    assert data.unlabeled.names == [f"u{i}.png" for i in range(6)]
    assert data.unlabeled.images.shape == (6, 1, 12, 12)
    assert data.unlabeled.answers is None


def test_load_folder_dataset_with_meta_val_and_answers(folder_dataset: Path) -> None:
    make_class_folder(folder_dataset / "meta_val", {"V1": 3, "V2": 4}, size=10)
    write_answers(
        folder_dataset / "novel" / "answers.csv", [(f"u{i}.png", f"P{i % 3 + 1}") for i in range(6)]
    )
    data = load_folder_dataset(folder_dataset, 10, 3)
    assert data.meta_val is not None
    assert data.meta_val.classes == ["V1", "V2"] and data.meta_val.counts() == [3, 4]
    assert data.meta_val.images.shape == (7, 3, 10, 10)
    assert data.unlabeled.answers == ["P1", "P2", "P3", "P1", "P2", "P3"]


def test_load_folder_dataset_without_unlabeled(tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_class_folder(root / "meta_train", {"a": 2, "b": 2}, size=8)
    make_class_folder(root / "novel" / "labeled", {"c": 2, "d": 2}, size=8)
    data = load_folder_dataset(root, 8, 1)
    assert data.unlabeled is None and data.meta_val is None
    assert data.novel.classes == ["c", "d"]


def test_load_folder_dataset_without_novel(tmp_path: Path) -> None:
    make_class_folder(tmp_path / "d" / "meta_train", {"a": 2}, size=8)
    with pytest.raises(DataError, match="labeled"):
        load_folder_dataset(tmp_path / "d", 8, 1)


def test_load_data_dispatches_folder(folder_dataset: Path) -> None:
    cfg = load_config(
        None, ["data.dataset=folder", f"data.root={folder_dataset}", "data.image_size=8", "model.layers=3"]
    )
    data = load_data(cfg.data)
    assert data.meta_train.images.shape == (32, 1, 8, 8)


# ---------------------------------------------------------------------------------------------
# shared data


def test_fashion_seed(fashion_seed: Path) -> None:
    data = load_folder_dataset(fashion_seed, 28, 1)
    assert len(data.meta_train.classes) == 5
    assert data.meta_train.counts() == [30] * 5
    assert set(data.meta_train.classes) == {"tshirt_top", "trouser", "pullover", "dress", "coat"}
    assert len(data.novel.classes) == 5
    assert data.novel.counts() == [15] * 5
    assert set(data.novel.classes) == {"sandal", "shirt", "sneaker", "bag", "ankle_boot"}
    assert data.meta_val is None
    unl = data.unlabeled
    assert unl is not None and len(unl.names) == 75
    assert unl.images.shape == (75, 1, 28, 28)
    assert unl.answers is not None and len(unl.answers) == 75
    assert set(unl.answers) == set(data.novel.classes)
    assert sorted(unl.answers.count(c) for c in data.novel.classes) == [15] * 5
    assert data.meta_train.images.float().mean() > 10


def test_answers_csv_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "answers.csv"
    path.write_bytes(b"\xef\xbb\xbffile,label\r\na.png,x\r\nb.png,y\r\n")
    assert read_answers(path, ["b.png", "a.png"]) == ["y", "x"]
