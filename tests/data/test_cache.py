"""metafew.data.cache and the caching in load_data: hits, misses when a source file or a setting
changes, damaged entries rebuilt, an unwritable cache, data.cache=false, glyphs never cached,
pack/unpack, recorded class lists, and the provenance stamped on every dataset."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import OMNIGLOT_MINIMAL, TINY_OVERRIDES, count_builds, write_image

from metafew.config import DataConfig, OmniglotConfig
from metafew.config_load import from_dict
from metafew.data import FewShotData, LabeledImages, UnlabeledImages, load_data
from metafew.data import cache as cache_module
from metafew.data.cache import FORMAT, entry_path, load_entry, pack, store_entry, unpack
from metafew.data.omniglot import _DIGESTS
from metafew.errors import DataError

SMALL_ZIPS = OMNIGLOT_MINIMAL


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of the test's own (created by the first store)."""
    path = tmp_path / "c"
    monkeypatch.setenv("METAFEW_CACHE", str(path))
    return path


def folder_cfg(root: Path, **changes: object) -> DataConfig:
    return dataclasses.replace(DataConfig(dataset="folder", root=str(root), image_size=16), **changes)  # type: ignore[arg-type]


def entries(cache_dir: Path) -> list[Path]:
    """Every file in the cache, hidden ones included."""
    return sorted(p for p in cache_dir.rglob("*") if p.is_file()) if cache_dir.exists() else []


def assert_same_labeled(a: LabeledImages | None, b: LabeledImages | None) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels)
        assert a.classes == b.classes


def assert_same(a: FewShotData, b: FewShotData) -> None:
    """Equal tensors, classes, unlabeled pictures and provenance."""
    for split in ("meta_train", "meta_val", "novel"):
        assert_same_labeled(getattr(a, split), getattr(b, split))
    assert (a.unlabeled is None) == (b.unlabeled is None)
    if a.unlabeled is not None and b.unlabeled is not None:
        assert torch.equal(a.unlabeled.images, b.unlabeled.images)
        assert (a.unlabeled.names, a.unlabeled.answers) == (b.unlabeled.names, b.unlabeled.answers)
    assert a.provenance == b.provenance


# ---------------------------------------------------------------------------------------------
# hits and misses


def test_second_load_is_a_cache_hit(
    folder_dataset: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = count_builds(monkeypatch, "folder")
    first = load_data(folder_cfg(folder_dataset))
    stored = entries(cache_dir)
    assert len(stored) == 1
    assert stored[0].parent == cache_dir / "folder"
    assert stored[0].suffix == ".pt"  # no hidden .part-* file left beside it
    second = load_data(folder_cfg(folder_dataset))
    assert builds == ["folder"]
    assert_same(first, second)
    assert second.unlabeled is not None and len(second.unlabeled.names) == 6
    assert entries(cache_dir) == stored


def test_touching_a_source_file_misses(folder_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = count_builds(monkeypatch, "folder")
    first = load_data(folder_cfg(folder_dataset))
    picture = folder_dataset / "meta_train" / "C2" / "003.png"
    stat = picture.stat()
    os.utime(picture, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    touched = load_data(folder_cfg(folder_dataset))
    assert len(builds) == 2
    assert_same(first, touched)  # same bytes, decoded afresh


def test_new_bytes_in_a_source_file_miss(folder_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = count_builds(monkeypatch, "folder")
    first = load_data(folder_cfg(folder_dataset))
    picture = folder_dataset / "meta_train" / "C2" / "003.png"
    write_image(picture, seed=999)
    changed = load_data(folder_cfg(folder_dataset))
    assert len(builds) == 2
    row = 8 + 3  # C2 is the second class of 8 pictures
    assert not torch.equal(first.meta_train.images[row], changed.meta_train.images[row])
    assert torch.equal(first.meta_train.images[:row], changed.meta_train.images[:row])
    assert first.provenance["sources"] != changed.provenance["sources"]


def test_adding_or_moving_files_misses(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = count_builds(monkeypatch, "folder")
    load_data(folder_cfg(folder_dataset))
    write_image(folder_dataset / "meta_train" / "C1" / "100.png", seed=77)
    assert load_data(folder_cfg(folder_dataset)).meta_train.counts() == [9, 8, 8, 8]
    moved = tmp_path / "moved"
    shutil.copytree(folder_dataset, moved)  # copy2: same bytes and time stamps, another path
    load_data(folder_cfg(moved))
    assert len(builds) == 3


def test_changing_a_decoding_setting_misses(folder_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = count_builds(monkeypatch, "folder")
    assert load_data(folder_cfg(folder_dataset)).meta_train.images.shape[1:] == (1, 16, 16)
    assert load_data(folder_cfg(folder_dataset, image_size=12)).meta_train.images.shape[1:] == (1, 12, 12)
    assert load_data(folder_cfg(folder_dataset, channels=3)).meta_train.images.shape[1:] == (3, 16, 16)
    assert len(builds) == 3
    load_data(folder_cfg(folder_dataset, image_size=12))  # both entries are kept
    load_data(folder_cfg(folder_dataset))
    assert len(builds) == 3


def test_files_below_a_hidden_parent_folder_count(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset under e.g. ~/.datasets: its files must still key the cache (no stale hit)."""
    root = tmp_path / ".datasets" / "mine"
    shutil.copytree(folder_dataset, root)
    builds = count_builds(monkeypatch, "folder")
    first = load_data(folder_cfg(root))
    write_image(root / "meta_train" / "C1" / "000.png", seed=1234)
    second = load_data(folder_cfg(root))
    assert len(builds) == 2
    assert not torch.equal(first.meta_train.images[0], second.meta_train.images[0])


# ---------------------------------------------------------------------------------------------
# damaged entries, an unwritable cache, data.cache=false, glyphs


def damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "garbage":
        path.write_bytes(b"not a torch file, nor a zip" * 10)
    elif how == "missing keys":
        torch.save({"format": FORMAT, "meta_train": None}, path)
    elif how == "other format":
        packed = torch.load(path, weights_only=True)
        torch.save({**packed, "format": FORMAT + 1}, path)
    elif how == "a list":
        torch.save([1, 2, 3], path)


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage", "missing keys", "other format", "a list"])
def test_damaged_entry_is_ignored_and_rebuilt(
    folder_dataset: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    builds = count_builds(monkeypatch, "folder")
    first = load_data(folder_cfg(folder_dataset))
    (entry,) = entries(cache_dir)
    damage(entry, how)
    assert load_entry(entry) is None
    assert_same(first, load_data(folder_cfg(folder_dataset)))
    assert len(builds) == 2
    assert entries(cache_dir) == [entry]
    rebuilt = load_entry(entry)  # written again, whole
    assert rebuilt is not None
    assert_same(first, rebuilt)
    assert_same(first, load_data(folder_cfg(folder_dataset)))
    assert len(builds) == 2


def test_cache_that_cannot_be_created_still_loads(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a file"
    blocker.write_bytes(b"not a folder")
    monkeypatch.setenv("METAFEW_CACHE", str(blocker / "cache"))  # mkdir fails, even as root
    builds = count_builds(monkeypatch, "folder")
    first = load_data(folder_cfg(folder_dataset))
    assert_same(first, load_data(folder_cfg(folder_dataset)))
    assert len(builds) == 2
    assert blocker.read_bytes() == b"not a folder"


def test_failed_store_leaves_nothing_behind(folder_dataset: Path, tmp_path: Path) -> None:
    data = load_data(folder_cfg(folder_dataset, cache=False))
    target = tmp_path / "entries" / "x.pt"
    target.mkdir(parents=True)  # a folder where the entry should go: the rename fails
    assert store_entry(target, data) is False
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.pt"]
    assert store_entry(tmp_path / "entries" / "y.pt", data) is True
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.pt", "y.pt"]


def test_cache_false_never_writes_nor_reads(
    folder_dataset: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = count_builds(monkeypatch, "folder")
    load_data(folder_cfg(folder_dataset, cache=False))
    load_data(folder_cfg(folder_dataset, cache=False))
    assert entries(cache_dir) == []
    assert len(builds) == 2
    load_data(folder_cfg(folder_dataset))  # fills the cache
    load_data(folder_cfg(folder_dataset, cache=False))  # still decodes
    assert len(builds) == 4
    assert len(entries(cache_dir)) == 1


def test_glyphs_are_never_cached(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = count_builds(monkeypatch, "glyphs")
    cfg = from_dict(TINY_OVERRIDES).data
    assert cfg.dataset == "glyphs" and cfg.cache
    first = load_data(cfg)
    assert_same(first, load_data(cfg))
    assert len(builds) == 2
    assert not cache_dir.exists()


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFEW_CACHE", str(tmp_path / "here"))
    assert cache_module.cache_root() == tmp_path / "here"
    assert entry_path("folder", "ab" * 32) == tmp_path / "here" / "folder" / f"{'ab' * 20}.pt"
    monkeypatch.delenv("METAFEW_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_module.cache_root() == tmp_path / "xdg" / "metafew"


# ---------------------------------------------------------------------------------------------
# pack / unpack


def labeled(n_classes: int, per_class: int, seed: int, prefix: str) -> LabeledImages:
    generator = torch.Generator().manual_seed(seed)
    n = n_classes * per_class
    images = torch.randint(0, 256, (n, 1, 5, 5), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return LabeledImages(images, labels, [f"{prefix}{i}" for i in range(n_classes)])


@pytest.mark.parametrize("full", [False, True])
def test_pack_unpack_round_trip(tmp_path: Path, full: bool) -> None:
    unlabeled = UnlabeledImages(torch.full((2, 1, 5, 5), 7, dtype=torch.uint8), ["a.png", "b.png"], None)
    data = FewShotData(
        labeled(3, 2, 0, "train"),
        labeled(2, 2, 1, "val") if full else None,
        labeled(2, 3, 2, "novel"),
        dataclasses.replace(unlabeled, answers=["novel0", "novel1"]) if full else None,
        {"dataset": "x", "sources": [{"name": "a.zip", "bytes": 3}], "classes": {"novel": ["novel0"]}},
    )
    assert_same(unpack(pack(data)), data)
    assert store_entry(tmp_path / "e.pt", data)
    loaded = load_entry(tmp_path / "e.pt")  # through torch.save / torch.load(weights_only=True)
    assert loaded is not None
    assert_same(loaded, data)
    with_unlabeled = dataclasses.replace(data, unlabeled=unlabeled)  # answers unknown
    assert_same(unpack(pack(with_unlabeled)), with_unlabeled)
    assert unpack(pack(with_unlabeled)).unlabeled.answers is None  # type: ignore[union-attr]


def test_missing_entry_is_a_miss(tmp_path: Path) -> None:
    assert load_entry(tmp_path / "absent.pt") is None
    assert load_entry(tmp_path) is None


# ---------------------------------------------------------------------------------------------
# recorded class lists


@pytest.mark.parametrize("split", ["meta_train", "meta_val", "novel"])
def test_class_lists_that_differ_from_the_run_are_refused(
    folder_dataset: Path, monkeypatch: pytest.MonkeyPatch, split: str
) -> None:
    data = load_data(folder_cfg(folder_dataset))
    recorded = data.class_lists()
    assert recorded["meta_val"] == []
    recorded[split] = [*recorded[split], "Gone"]
    for _ in range(2):  # the decoded data and the cached entry alike
        with pytest.raises(DataError) as info:
            load_data(folder_cfg(folder_dataset), recorded=recorded)
        message = str(info.value)
        assert f"the dataset's {split} classes differ from those the run was trained with" in message
        assert "missing ['Gone']" in message
        assert "new none" in message


def test_recorded_class_lists_that_match_are_served_from_the_cache(
    folder_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = count_builds(monkeypatch, "folder")
    data = load_data(folder_cfg(folder_dataset))
    again = load_data(folder_cfg(folder_dataset), recorded=data.class_lists())
    assert_same(data, again)
    assert len(builds) == 1


# ---------------------------------------------------------------------------------------------
# provenance


def test_folder_provenance(folder_dataset: Path) -> None:
    cfg = folder_cfg(folder_dataset)
    data = load_data(cfg)
    prov = data.provenance
    assert prov["dataset"] == "folder"
    assert prov["root"] == str(folder_dataset)
    assert prov["split"] == "folders"
    assert prov["settings"]["image_size"] == 16
    assert not {"root", "download", "cache"} & set(prov["settings"])
    assert prov["classes"] == data.class_lists()
    (source,) = prov["sources"]
    assert (source["name"], source["files"]) == (folder_dataset.name, 4 * 8 + 3 * 6 + 6)
    files = sorted(p for p in folder_dataset.rglob("*") if p.is_file())
    assert source["bytes"] == sum(p.stat().st_size for p in files)


def test_omniglot_is_cached_with_its_published_digests(
    omniglot_root: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = count_builds(monkeypatch, "omniglot")
    cfg = DataConfig(
        dataset="omniglot", root=str(omniglot_root), image_size=8, omniglot=OmniglotConfig(split="alphabets")
    )
    first = load_data(cfg)
    prov = first.provenance
    assert prov["dataset"] == "omniglot"
    assert prov["split"] == "alphabets"
    assert prov["settings"]["image_size"] == 8
    assert prov["settings"]["omniglot"]["split"] == "alphabets"
    assert prov["sources"] == [
        {
            "name": SMALL_ZIPS[part],
            "bytes": (omniglot_root / SMALL_ZIPS[part]).stat().st_size,
            "sha256": _DIGESTS[part][1],
        }
        for part in ("small1", "small2")
    ]
    assert all(_DIGESTS[part][0] == "sha256" for part in SMALL_ZIPS)
    assert (
        hashlib.sha256((omniglot_root / SMALL_ZIPS["small1"]).read_bytes()).hexdigest()
        == _DIGESTS["small1"][1]
    )
    assert prov["classes"] == first.class_lists()
    assert len(prov["classes"]["meta_train"]) == 4 * 136 and len(prov["classes"]["novel"]) == 106
    second = load_data(cfg)
    assert builds == ["omniglot"]
    assert_same(first, second)
    assert [p.parent.name for p in entries(cache_dir)] == ["omniglot"]
