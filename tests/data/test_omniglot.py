"""metafew.data.omniglot: the real minimal zips (../shared/datasets/omniglot) and tiny synthetic
parts built in tmp_path (extracted folders, and zips with the checksum table emptied)."""

from __future__ import annotations

import hashlib
import io
import shutil
import time
import zipfile
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import shared_datasets
from PIL import Image

from metafew.config import DataConfig, OmniglotConfig
from metafew.config_load import load_config
from metafew.data import DATASETS, FewShotData, LabeledImages, load_data
from metafew.data import omniglot as omni
from metafew.errors import ConfigError, DataError

SMALL_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
NOVEL = {"Japanese_(katakana)": 47, "Sanskrit": 42, "Tagalog": 17}
TRAIN = {"Balinese": 24, "Early_Aramaic": 22, "Greek": 24, "Korean": 40, "Latin": 26}


def data_cfg(
    root: Path | str | None,
    size: int = 28,
    channels: int = 1,
    novel_labeled: int = 0,
    download: bool = False,
    **omniglot: object,
) -> DataConfig:
    """Omniglot data config; the split defaults to `alphabets` (the one the minimal zips allow)."""
    omniglot.setdefault("split", "alphabets")
    return DataConfig(
        dataset="omniglot",
        root=None if root is None else str(root),
        download=download,
        image_size=size,
        channels=channels,
        novel_labeled=novel_labeled,
        omniglot=OmniglotConfig(**omniglot),  # type: ignore[arg-type]
    )


def base_names(data: LabeledImages) -> set[str]:
    return {name.split("@")[0] for name in data.classes}


def per_alphabet(names: list[str]) -> dict[str, int]:
    return dict(Counter(name.split("/")[0] for name in names))


# ---------------------------------------------------------------------------------------------
# the real minimal zips


@pytest.fixture(scope="module")
def real_root() -> Path:
    root = shared_datasets() / "omniglot"
    if not all((root / name).is_file() for name in SMALL_ZIPS):
        pytest.skip(f"Omniglot minimal zips not found in {root} (set METAFEW_SHARED_DATA); CI has them")
    return root


@pytest.fixture(scope="module")
def real(real_root: Path) -> FewShotData:
    """The default split of small1+small2 at 28x28: decoded once for the module."""
    return load_data(data_cfg(real_root))


def test_registered_and_selected_by_config(real_root: Path) -> None:
    assert DATASETS["omniglot"] is omni.OMNIGLOT
    cfg = load_config(None, ["data.dataset=omniglot", f"data.root={real_root}"])
    assert cfg.data.omniglot == OmniglotConfig()


def test_union_of_the_minimal_sets(real: FewShotData) -> None:
    names = sorted(base_names(real.meta_train) | set(real.novel.classes))
    assert len(names) == 242
    assert per_alphabet(names) == {**TRAIN, **NOVEL}


def test_default_split_counts(real: FewShotData) -> None:
    assert per_alphabet(real.novel.classes) == NOVEL
    assert len(real.novel.classes) == 106
    assert len(real.meta_train.classes) == 136 * 4
    assert per_alphabet(sorted(base_names(real.meta_train))) == TRAIN
    assert real.meta_val is None and real.unlabeled is None


def test_twenty_drawers_shapes_and_dtypes(real: FewShotData) -> None:
    for split in (real.meta_train, real.novel):
        assert set(split.counts()) == {20}
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape == (20 * len(split.classes), 1, 28, 28)


def test_ink_is_bright_on_dark(real: FewShotData) -> None:
    images = real.novel.images.float()
    assert images.mean() < 50  # strokes cover a small part of each picture
    assert (images > 127).float().mean() < 0.2
    assert images[:, :, 0, :].mean() < 5 and images[:, :, :, 0].mean() < 5  # blank borders are dark
    assert (images.amax(dim=(1, 2, 3)) > 200).all()  # every picture has ink


def test_rotations_only_in_meta_train_and_equal_rot90(real: FewShotData) -> None:
    train = real.meta_train
    n = 136
    assert not any("@" in name for name in train.classes[:n])
    by_class = train.indices_by_class()
    for k in (1, 2, 3):
        for c in range(n):
            assert train.classes[k * n + c] == f"{train.classes[c]}@rot{90 * k}"
            expected = torch.rot90(train.images[by_class[c]], k, dims=(2, 3))
            assert torch.equal(train.images[by_class[k * n + c]], expected)
    assert not any("@" in name for name in real.novel.classes)


def test_no_character_in_two_splits(real_root: Path) -> None:
    data = load_data(data_cfg(real_root, size=8, val_alphabets="Korean, Latin", rotations=False))
    assert data.meta_val is not None
    train, val, novel = base_names(data.meta_train), set(data.meta_val.classes), set(data.novel.classes)
    assert not (train & val or train & novel or val & novel)
    assert len(train | val | novel) == 242
    assert per_alphabet(data.meta_val.classes) == {"Korean": 40, "Latin": 26}
    assert len(train) == 136 - 66


def test_class_order_is_sorted_and_deterministic_and_loading_is_fast(
    real_root: Path, real: FewShotData
) -> None:
    started = time.perf_counter()
    plain = load_data(data_cfg(real_root, rotations=False))
    assert time.perf_counter() - started < 20  # 4840 pictures, about 1 s on one core
    n = len(plain.meta_train.classes)
    assert plain.meta_train.classes == sorted(plain.meta_train.classes) == real.meta_train.classes[:n]
    assert torch.equal(plain.meta_train.images, real.meta_train.images[: 20 * n])
    assert torch.equal(plain.meta_train.labels, real.meta_train.labels[: 20 * n])
    assert plain.novel.classes == sorted(plain.novel.classes) == real.novel.classes
    assert torch.equal(plain.novel.images, real.novel.images)


def test_novel_labeled_splits_drawers_into_unlabeled(real_root: Path, real: FewShotData) -> None:
    data = load_data(data_cfg(real_root, novel_labeled=5, channels=3))
    assert set(data.novel.counts()) == {5} and data.novel.classes == real.novel.classes
    assert data.novel.images.shape[1] == 3
    assert torch.equal(data.novel.images[:, 0], data.novel.images[:, 2])
    gray = real.novel.images[real.novel.indices_by_class()[0]]  # first class, 20 drawers
    assert torch.equal(data.novel.images[:5, :1], gray[:5])
    pictures = data.unlabeled
    assert pictures is not None and pictures.answers is not None
    assert len(pictures.names) == len(set(pictures.names)) == 15 * 106
    assert Counter(pictures.answers) == {name: 15 for name in real.novel.classes}
    assert pictures.answers[:20] != sorted(pictures.answers[:20])  # shuffled
    first = real.novel.classes[0]
    held = pictures.images[[i for i, a in enumerate(pictures.answers) if a == first], :1]
    assert sorted(map(bytes, held.numpy())) == sorted(map(bytes, gray[5:].numpy()))


# ---------------------------------------------------------------------------------------------
# errors with the real files


def test_corrupt_zip_is_refused_naming_the_file(real_root: Path, tmp_path: Path) -> None:
    for name in SMALL_ZIPS:
        shutil.copy(real_root / name, tmp_path / name)
    path = tmp_path / SMALL_ZIPS[0]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"images_background_small1\.zip.*sha256.*fetch it again"):
        load_data(data_cfg(tmp_path))


def test_web_page_saved_as_zip_is_refused(tmp_path: Path) -> None:
    (tmp_path / SMALL_ZIPS[0]).write_text("<!DOCTYPE html><html><body>Not found</body></html>")
    with pytest.raises(DataError, match=r"images_background_small1\.zip.*web page"):
        load_data(data_cfg(tmp_path))


def test_unknown_alphabet_lists_the_valid_ones(real_root: Path) -> None:
    with pytest.raises(ConfigError, match="test_alphabets") as info:
        load_data(data_cfg(real_root, test_alphabets="Sanskrit,Klingon"))
    assert "'Klingon'" in str(info.value)
    assert all(a in str(info.value) for a in [*TRAIN, *NOVEL])
    with pytest.raises(ConfigError, match="Japanese_\\(katakana\\)"):  # small2's alphabets
        load_data(data_cfg(real_root, sources="small1"))


# ---------------------------------------------------------------------------------------------
# missing data and config validation


def test_missing_root_says_where_to_put_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root is not set.*images_background\.zip"):
        load_data(data_cfg(None))
    with pytest.raises(DataError, match="does not exist"):
        load_data(data_cfg(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"'small1' not found.*images_background_small1\.zip.*github"):
        load_data(data_cfg(tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.omniglot.sources=small3", "data.omniglot.sources"),
        ("data.omniglot.sources=small1+small1", "distinct"),
        ("data.omniglot.test_alphabets=' , '", "test_alphabets is empty"),
        ("data.omniglot.val_alphabets=Tagalog", "both"),
        ("data.omniglot.split=vinyal", "data.omniglot.split"),
        ("data.omniglot.val_characters=1101", "<= 1100"),
        ("data.omniglot.rotations=maybe", "true or false"),
    ],
)
def test_config_is_validated_at_load_time(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.dataset=omniglot", override])


def test_config_source_names_match_the_parts() -> None:
    from metafew.data.omniglot import OMNIGLOT_SOURCES

    assert set(OMNIGLOT_SOURCES) == set(omni.PARTS)
    assert {f"{stem}.zip" for stem in omni.PARTS.values()} == {r.name for r in omni.REMOTES.values()}


# ---------------------------------------------------------------------------------------------
# synthetic parts: folders and zips with the same layout, a few tiny pictures


def png(pixels: np.ndarray) -> bytes:
    """A 1-bit PNG of a bool array (False = black ink, True = white paper), like Omniglot's."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def picture(seed: int, size: int = 12) -> bytes:
    """A black block at a random place on white."""
    rng = np.random.default_rng(seed)
    pixels = np.ones((size, size), dtype=bool)
    r, c = rng.integers(0, size - 4, size=2)
    pixels[r : r + 4, c : c + 3] = False
    return png(pixels)


def layout(stem: str, characters: dict[str, int]) -> dict[str, bytes]:
    """{member name: PNG} for `stem/<Alphabet>/<character>/<id>_<drawer>.png`; a character's
    pictures depend only on its name, so the same character in two parts is identical."""
    files = {}
    for char, drawers in characters.items():
        seed = sum(map(ord, char))
        for d in range(1, drawers + 1):
            files[f"{stem}/{char}/{seed:04d}_{d:02d}.png"] = picture(seed * 100 + d)
    return files


def write_folder(root: Path, files: dict[str, bytes], reverse: bool = False) -> None:
    for name in sorted(files, reverse=reverse):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(files[name])


def write_zip(path: Path, files: dict[str, bytes], reverse: bool = False) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(files, reverse=reverse):
            archive.writestr(name, files[name])


PART1 = {"Greek/character01": 3, "Greek/character02": 3, "Balinese/character01": 3}
PART2 = {"Greek/character01": 3, "Greek/character02": 3, "Tagalog/character01": 3, "Tagalog/character02": 3}


def synthetic(root: Path, **omniglot: object) -> FewShotData:
    options: dict[str, object] = {"test_alphabets": "Tagalog", **omniglot}
    return load_data(data_cfg(root, size=6, **options))


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    write_folder(tmp_path, layout("images_background_small1", PART1))
    write_folder(tmp_path, layout("images_background_small2", PART2), reverse=True)
    return tmp_path


def test_extracted_folders_and_duplicates_counted_once(folders: Path) -> None:
    data = synthetic(folders, rotations=False)
    assert data.meta_train.classes == ["Balinese/character01", "Greek/character01", "Greek/character02"]
    assert data.novel.classes == ["Tagalog/character01", "Tagalog/character02"]
    assert data.meta_train.counts() == [3, 3, 3] and data.novel.counts() == [3, 3]
    assert data.meta_train.images.shape == (9, 1, 6, 6)


def test_order_of_parts_and_files_does_not_matter(folders: Path) -> None:
    a = synthetic(folders)
    b = synthetic(folders, sources="small2+small1")
    assert a.meta_train.classes == b.meta_train.classes
    assert torch.equal(a.meta_train.images, b.meta_train.images)
    assert torch.equal(a.novel.images, b.novel.images)


def test_zip_and_folder_read_the_same(folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(omni, "REMOTES", {})  # synthetic zips have no official sums
    zips = tmp_path / "zips"
    zips.mkdir()
    write_zip(zips / "images_background_small1.zip", layout("images_background_small1", PART1), reverse=True)
    write_zip(zips / "images_background_small2.zip", layout("images_background_small2", PART2))
    from_folders, from_zips = synthetic(folders), synthetic(zips)
    assert from_zips.meta_train.classes == from_folders.meta_train.classes
    assert torch.equal(from_zips.meta_train.images, from_folders.meta_train.images)
    assert torch.equal(from_zips.novel.images, from_folders.novel.images)


def test_zip_is_preferred_to_its_folder(real_root: Path, tmp_path: Path) -> None:
    shutil.copy(real_root / SMALL_ZIPS[0], tmp_path / SMALL_ZIPS[0])
    write_folder(tmp_path, layout("images_background_small1", {"Fake/character01": 2}))
    paths = omni.find_parts(data_cfg(tmp_path, sources="small1"))
    assert paths == [tmp_path / SMALL_ZIPS[0]]
    with ExitStack() as stack:
        part = omni.open_part("small1", paths[0], stack)
        assert part.archive is not None
        assert {a for a, _, _ in part.members} == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}


def test_junk_entries_are_ignored(folders: Path) -> None:
    stem = folders / "images_background_small1"
    (stem / "Greek" / ".DS_Store").write_bytes(b"junk")
    (stem / "Greek" / "character01" / "notes.txt").write_text("junk")
    write_folder(folders, {"images_background_small1/__MACOSX/Greek/character09/._0001_01.png": b"junk"})
    assert synthetic(folders).meta_train.counts() == [3] * 12


def test_unreadable_picture_names_the_file(folders: Path) -> None:
    bad = folders / "images_background_small2" / "Tagalog" / "character02" / "9999_01.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"9999_01\.png"):
        synthetic(folders)


def test_empty_part_is_refused(folders: Path) -> None:
    (folders / "images_evaluation").mkdir()
    with pytest.raises(DataError, match=r"images_evaluation.*holds no"):
        synthetic(folders, sources="small1+evaluation")


def test_decode_inverts_and_resizes() -> None:
    pixels = np.ones((10, 10), dtype=bool)
    pixels[2:5, 2:5] = False  # a black block on white
    same = omni.decode_picture(png(pixels), "x.png", 10)
    assert same.dtype == np.uint8 and same[3, 3] == 255 and same[8, 8] == 0
    assert int(same.sum()) == 9 * 255
    small = omni.decode_picture(png(pixels), "x.png", 5)
    assert small.shape == (5, 5) and small[1, 1] > 128 and small[4, 4] == 0


def test_every_alphabet_held_out_is_refused(folders: Path) -> None:
    with pytest.raises(ConfigError, match="leave some for meta-training"):
        synthetic(folders, val_alphabets="Greek,Balinese")


# ---------------------------------------------------------------------------------------------
# named splits on a synthetic full Omniglot (1623 characters in 30 + 20 alphabets, one drawer)


def full_layout(stem: str, alphabets: range, characters: int) -> dict[str, bytes]:
    pngs = [picture(seed) for seed in range(7)]  # content does not matter here: reuse a few
    return {
        f"{stem}/Alphabet{a:02d}/character{c:02d}/{a:02d}{c:02d}_01.png": pngs[(a + c) % 7]
        for a in alphabets
        for c in range(1, characters + 1)
    }


@pytest.fixture(scope="module")
def full_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images_background/ with 964 characters (30 alphabets) and images_evaluation/ with 659 (20)."""
    root = tmp_path_factory.mktemp("omniglot_full")
    background = full_layout("images_background", range(30), 32)  # 960 ...
    background.update(full_layout("images_background", range(30, 31), 0))
    for c in range(1, 5):  # ... + 4 = 964
        background[f"images_background/Alphabet00/character{32 + c:02d}/00{32 + c:02d}_01.png"] = picture(c)
    evaluation = full_layout("images_evaluation", range(50, 70), 33)  # 660 ...
    del evaluation["images_evaluation/Alphabet69/character33/6933_01.png"]  # ... - 1 = 659
    write_folder(root, background, reverse=True)
    write_folder(root, evaluation)
    return root


def full(root: Path, **omniglot: object) -> FewShotData:
    return load_data(data_cfg(root, size=6, rotations=False, **omniglot))


def test_vinyals_split_is_1200_and_423_by_the_hash_rule(full_root: Path) -> None:
    data = full(full_root, split="vinyals")
    names = data.meta_train.classes + data.novel.classes
    assert len(data.meta_train.classes) == 1200 and len(data.novel.classes) == 423
    assert len(set(names)) == 1623 and data.meta_val is None
    # the documented rule, recomputed here: order by SHA-256 of "Alphabet/characterNN"
    order = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    assert set(data.meta_train.classes) == set(order[:1200])
    assert data.meta_train.classes == sorted(data.meta_train.classes)
    # both sides draw from background and evaluation alike
    assert {n.split("/")[0] for n in data.novel.classes} & {f"Alphabet{a:02d}" for a in range(30)}
    assert {n.split("/")[0] for n in data.novel.classes} & {f"Alphabet{a:02d}" for a in range(50, 70)}


def test_vinyals_validation_characters_come_from_the_1200(full_root: Path) -> None:
    plain = full(full_root, split="vinyals")
    data = full(full_root, split="vinyals", val_characters=172)
    assert data.meta_val is not None
    assert (len(data.meta_train.classes), len(data.meta_val.classes)) == (1028, 172)
    assert set(data.meta_train.classes) | set(data.meta_val.classes) == set(plain.meta_train.classes)
    assert data.novel.classes == plain.novel.classes


def test_vinyals_needs_the_complete_set(folders: Path) -> None:
    with pytest.raises(DataError, match=r"'background' not found"):
        full(folders, split="vinyals")
    (folders / "images_background").symlink_to(folders / "images_background_small1")
    (folders / "images_evaluation").symlink_to(folders / "images_background_small2")
    with pytest.raises(DataError, match=r"needs all 1623 characters.*found 5"):
        full(folders, split="vinyals")


def test_lake_split_is_background_against_evaluation(full_root: Path) -> None:
    data = full(full_root, split="lake", val_alphabets="Alphabet00,Alphabet01")
    alphabets = {name: {c.split("/")[0] for c in names} for name, names in data.class_lists().items()}
    assert {n.split("/")[0] for n in data.novel.classes} == {f"Alphabet{a:02d}" for a in range(50, 70)}
    assert len(data.novel.classes) == 659
    assert data.meta_val is not None and alphabets["meta_val"] == {"Alphabet00", "Alphabet01"}
    assert len(data.meta_train.classes) == 964 - 36 - 32
    with pytest.raises(ConfigError, match="belong to the test alphabets"):
        full(full_root, split="lake", val_alphabets="Alphabet50")


def test_small1_split_trains_on_the_minimal_set(real_root: Path, full_root: Path, tmp_path: Path) -> None:
    shutil.copy(real_root / SMALL_ZIPS[0], tmp_path / SMALL_ZIPS[0])
    (tmp_path / "images_evaluation").symlink_to(full_root / "images_evaluation")
    data = load_data(data_cfg(tmp_path, size=8, split="small1", rotations=False))
    assert per_alphabet(data.meta_train.classes) == TRAIN  # small1 holds exactly these five
    assert len(data.novel.classes) == 659
    assert data.provenance["split"] == "small1"
    zip_source, folder_source = data.provenance["sources"]
    assert zip_source["name"] == SMALL_ZIPS[0] and zip_source["sha256"] == omni.REMOTES["small1"].digest
    assert folder_source["name"] == "images_evaluation" and folder_source["files"] == 659


def test_download_through_a_mirror_folder(
    real_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAFEW_MIRROR", str(real_root))
    root = tmp_path / "fresh"
    root.mkdir()
    cfg = data_cfg(root)
    with pytest.raises(DataError, match=r"data\.download=true"):
        load_data(cfg)
    cfg.download = True
    data = load_data(cfg)
    assert sorted(p.name for p in root.iterdir()) == sorted(SMALL_ZIPS)
    assert len(data.novel.classes) == 106
    bad = tmp_path / "bad_mirror"
    bad.mkdir()
    for name in SMALL_ZIPS:
        raw = bytearray((real_root / name).read_bytes())
        raw[100] ^= 1
        (bad / name).write_bytes(bytes(raw))
    monkeypatch.setenv("METAFEW_MIRROR", str(bad))
    monkeypatch.setattr(omni, "REMOTES", {k: replace(r, mirrors=()) for k, r in omni.REMOTES.items()})
    empty = tmp_path / "empty"
    with pytest.raises(DataError, match=r"could not download images_background_small1\.zip.*does not match"):
        load_data(data_cfg(empty, download=True))
    assert list(empty.iterdir()) == []
