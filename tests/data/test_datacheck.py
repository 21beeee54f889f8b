"""metafew.data.check and the `metafew data list|prepare|check` commands: every kind of bad
picture in folders and zips, the per-class counts, exit codes and one-line errors; listing the
datasets; preparing Omniglot in place, through a METAFEW_MIRROR folder, and refusing a corrupt copy."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import OMNIGLOT_MINIMAL, count_builds, write_image
from PIL import Image
from typer.testing import CliRunner, Result

from metafew.cli import app
from metafew.data import DATASETS
from metafew.data import omniglot as omni
from metafew.data.check import Problem, check_pictures, inspect_picture
from metafew.data.download import MIRROR_ENV
from metafew.errors import DataError

SMALL_ZIPS = OMNIGLOT_MINIMAL


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No mirror from the caller's environment, and a cache folder of the test's own."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setenv("METAFEW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    """Run `metafew ARGS...` in-process; a crash (not a user error) fails the test at once."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"metafew {args} crashed:\n{result.output}") from result.exception
    assert "Traceback" not in result.output
    return result


def png_bytes(size: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(out, "PNG")
    return out.getvalue()


def flipped(data: bytes) -> bytes:
    """`data` with one byte in the middle (a PNG's compressed image data) inverted."""
    raw = bytearray(data)
    raw[len(raw) // 2] ^= 0xFF
    return bytes(raw)


BAD = {
    "A/text.png": "unreadable",
    "A/half.png": "truncated",
    "B/tiny.png": "tiny",
    "B/flipped.png": "corrupt",
}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """Two classes of readable pictures: A (2 PNG, 1 JPEG), B (1 PNG, 1 JPEG), and 2 other files."""
    root = tmp_path / "good"
    write_image(root / "A" / "a.png", seed=1)
    write_image(root / "A" / "b.png", seed=2, mode="RGB")
    write_image(root / "A" / "c.jpg", seed=3, mode="RGB")
    write_image(root / "B" / "d.PNG", seed=4)
    write_image(root / "B" / "e.jpeg", seed=5)
    (root / "notes.txt").write_text("collected in 2024")
    (root / "B" / "labels.csv").write_text("d.PNG,B\n")
    write_image(root / ".thumbnails" / "x.png", seed=6)  # hidden: neither checked nor counted
    (root / "A" / ".a.png.swp").write_bytes(b"junk")
    return root


@pytest.fixture
def bad(good: Path) -> Path:
    """`good` plus one picture of every kind of problem (see BAD)."""
    (good / "A" / "text.png").write_text("this is a text file renamed .png\n")
    data = png_bytes(seed=7)
    (good / "A" / "half.png").write_bytes(data[: len(data) // 2])
    write_image(good / "B" / "tiny.png", size=1)
    (good / "B" / "flipped.png").write_bytes(flipped(png_bytes(seed=8)))
    return good


def kinds(problems: list[Problem], root: Path) -> dict[str, str]:
    return {Path(p.where).relative_to(root).as_posix(): p.kind for p in problems}


# ---------------------------------------------------------------------------------------------
# check_pictures


def test_good_pictures_are_counted_per_class(good: Path) -> None:
    report = check_pictures(good)
    assert dict(report.counts) == {"A": 3, "B": 2}
    assert report.problems == []
    assert report.skipped == 2


def test_every_kind_of_problem_is_reported_per_file(bad: Path) -> None:
    report = check_pictures(bad)
    assert kinds(report.problems, bad) == BAD
    assert dict(report.counts) == {"A": 3, "B": 2}  # the bad ones are not counted
    assert report.skipped == 2
    details = {Path(p.where).name: p.detail for p in report.problems}
    assert details["tiny.png"] == "1x1 pixels (fewer than 8 on a side)"
    assert details["text.png"] == "not an image format Pillow can read"
    assert "truncated" in details["half.png"]


def test_min_side_decides_what_is_tiny(good: Path) -> None:
    report = check_pictures(good, min_side=21)  # the pictures are 20x20
    assert {p.kind for p in report.problems} == {"tiny"}
    assert len(report.problems) == 5
    assert not report.counts
    assert dict(check_pictures(good, min_side=20).counts) == {"A": 3, "B": 2}


def test_truncated_jpeg(tmp_path: Path) -> None:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, "JPEG")
    assert inspect_picture(out.getvalue(), 8) is None
    kind, detail = inspect_picture(out.getvalue()[: len(out.getvalue()) // 2], 8)  # type: ignore[misc]
    assert kind == "truncated"
    assert "truncated" in detail


@pytest.mark.parametrize("limit", [3000, 1000], ids=["warning zone", "error zone"])
def test_decompression_bombs_are_huge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """64x64 = 4096 pixels: over the limit (Pillow warns) and over twice the limit (it refuses)."""
    root = tmp_path / "pics"
    write_image(root / "C" / "big.png", size=64)
    write_image(root / "C" / "small.png", size=20)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    report = check_pictures(root)
    (problem,) = report.problems
    assert (Path(problem.where).name, problem.kind) == ("big.png", "huge")
    assert "4096 pixels" in problem.detail
    assert dict(report.counts) == {"C": 1}
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    assert check_pictures(root).problems == []


def test_pictures_at_the_top_count_as_one_class(tmp_path: Path) -> None:
    write_image(tmp_path / "p" / "a.png")
    write_image(tmp_path / "p" / "deep" / "er" / "b.png")
    assert dict(check_pictures(tmp_path / "p").counts) == {".": 1, "deep/er": 1}


def make_zip(path: Path, bad_member: bool = True) -> Path:
    """A/a.png, A/b.png, B/c.png, B/bad.png (stored, then one byte flipped: a CRC error), a text
    file, folder entries and macOS junk."""
    pictures = {name: png_bytes(size=16, seed=i) for i, name in enumerate(["A/a.png", "A/b.png", "B/c.png"])}
    damaged = png_bytes(size=16, seed=9)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("A/", "")
        for name, data in pictures.items():
            archive.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("B/bad.png", damaged, compress_type=zipfile.ZIP_STORED)
        archive.writestr("README.txt", "pictures by class")
        archive.writestr("__MACOSX/A/._a.png", b"\x00\x05\x16\x07junk")
        archive.writestr("A/.hidden.png", b"junk")
    if bad_member:
        raw = path.read_bytes()
        at = raw.index(damaged) + len(damaged) // 2
        path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
    return path


def test_zip_members_are_checked(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "pics.zip")
    report = check_pictures(archive)
    assert dict(report.counts) == {"A": 2, "B": 1}
    assert report.skipped == 1
    (problem,) = report.problems
    assert problem.where == f"{archive}:B/bad.png"
    assert problem.kind == "corrupt"
    assert "CRC" in problem.detail
    clean = check_pictures(make_zip(tmp_path / "clean.zip", bad_member=False))
    assert (dict(clean.counts), clean.problems) == ({"A": 2, "B": 2}, [])


def test_what_cannot_be_checked_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"neither a folder nor a \.zip"):
        check_pictures(tmp_path / "absent")
    write_image(tmp_path / "one.png")
    with pytest.raises(DataError, match=r"one\.png.*neither a folder nor a \.zip"):
        check_pictures(tmp_path / "one.png")
    (tmp_path / "fake.zip").write_text("<html>not a zip</html>")
    with pytest.raises(DataError, match=r"fake\.zip' is not a readable zip"):
        check_pictures(tmp_path / "fake.zip")


# ---------------------------------------------------------------------------------------------
# metafew data check


def test_cli_check_all_fine(good: Path) -> None:
    result = invoke("data", "check", good, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {tuple(line.replace("│", " ").split()) for line in result.stdout.splitlines()}
    assert ("A", "3") in rows and ("B", "2") in rows
    assert "5 pictures, 0 with problems, 2 other files skipped" in result.stdout
    assert result.stderr == ""


def test_cli_check_reports_problems_and_exits_3(bad: Path) -> None:
    result = invoke("data", "check", bad, env={"COLUMNS": "200"})
    assert result.exit_code == 3
    assert "9 pictures, 4 with problems, 2 other files skipped" in result.stdout
    problem_lines = [line for line in result.stderr.splitlines() if not line.startswith("error:")]
    assert len(problem_lines) == 4
    for rel, kind in BAD.items():
        assert any(line.startswith(f"{kind} {bad / rel}: ") for line in problem_lines), (rel, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: 4 of 9 pictures cannot be used (corrupt 1, tiny 1, truncated 1, unreadable 1); see above"
    ]


def test_cli_check_min_side(good: Path) -> None:
    result = invoke("data", "check", good, "--min-side", "32")
    assert result.exit_code == 3
    assert "(tiny 5)" in result.stderr


def test_cli_check_huge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "p" / "C" / "big.png", size=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    result = invoke("data", "check", tmp_path / "p")
    assert result.exit_code == 3
    assert f"huge {tmp_path / 'p' / 'C' / 'big.png'}: " in result.stderr
    assert "(huge 1)" in result.stderr


def test_cli_check_zip(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "pics.zip")
    result = invoke("data", "check", archive)
    assert result.exit_code == 3
    assert f"corrupt {archive}:B/bad.png: " in result.stderr
    assert "4 pictures, 1 with problems, 1 other files skipped" in result.stdout
    assert "error: 1 of 4 pictures cannot be used (corrupt 1)" in result.stderr
    clean = invoke("data", "check", make_zip(tmp_path / "clean.zip", bad_member=False))
    assert clean.exit_code == 0


def test_cli_check_missing_path(tmp_path: Path) -> None:
    result = invoke("data", "check", tmp_path / "absent")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: ")
    assert "neither a folder nor a .zip" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# metafew data list / prepare


def test_cli_list_names_every_dataset_and_the_cache(environment: Path) -> None:
    result = invoke("data", "list", env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    first_cells = {line.replace("│", " ").split()[0] for line in result.stdout.splitlines() if "│" in line}
    assert set(DATASETS) <= first_cells
    assert f"decoded-tensor cache: {environment} (METAFEW_CACHE moves it)" in result.stdout


SPLIT_LINES = [
    "meta_train: 544 classes, 10880 pictures (1, 28, 28)",
    "novel: 106 classes, 2120 pictures (1, 28, 28)",
]


def prepared_lines(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if not line.startswith("ready in")]


def test_cli_prepare_omniglot_in_place_then_from_the_cache(
    omniglot_root: Path, environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(p.name for p in omniglot_root.iterdir())
    builds = count_builds(monkeypatch, "omniglot")
    args = ("data", "prepare", "omniglot", "--root", omniglot_root, "data.omniglot.split=alphabets")
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert prepared_lines(first) == SPLIT_LINES
    assert f"(cache: {environment})" in first.stdout
    assert [p.parent.name for p in environment.rglob("*.pt")] == ["omniglot"]
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert prepared_lines(second) == SPLIT_LINES
    assert builds == ["omniglot"]  # the second run decoded nothing
    assert sorted(p.name for p in omniglot_root.iterdir()) == before


def test_cli_prepare_downloads_through_a_mirror_folder(
    omniglot_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(omniglot_root))
    root = tmp_path / "omniglot"
    result = invoke("data", "prepare", "omniglot", "--root", root, "data.omniglot.split=alphabets")
    assert result.exit_code == 0, result.output
    assert prepared_lines(result) == SPLIT_LINES
    assert sorted(p.name for p in root.iterdir()) == sorted(SMALL_ZIPS.values())  # no .part-* left
    for part, name in SMALL_ZIPS.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == omni._DIGESTS[part][1]


def test_cli_prepare_refuses_a_corrupt_mirror_copy(
    omniglot_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in SMALL_ZIPS.values():
        shutil.copy(omniglot_root / name, mirror / name)
    path = mirror / SMALL_ZIPS["small1"]
    path.write_bytes(flipped(path.read_bytes()))
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    # the official mirror stays out of reach (no network in tests): only the mirror folder is tried
    monkeypatch.setattr(
        omni, "REMOTES", {k: dataclasses.replace(r, mirrors=()) for k, r in omni.REMOTES.items()}
    )
    root = tmp_path / "omniglot"
    result = invoke("data", "prepare", "omniglot", "--root", root, "data.omniglot.split=alphabets")
    assert result.exit_code == 3
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: could not download images_background_small1.zip (")
    assert "does not match the published" in error
    assert omni._DIGESTS["small1"][1] in error
    assert repr(str(root / SMALL_ZIPS["small1"])) in error
    assert list(root.iterdir()) == []  # no zip, no temporary file


def test_cli_prepare_unknown_dataset(tmp_path: Path) -> None:
    result = invoke("data", "prepare", "nosuch", "--root", tmp_path)
    assert result.exit_code == 2
    assert "data.dataset" in result.stderr
    assert "nosuch" in result.stderr
