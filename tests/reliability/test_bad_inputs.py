"""Bad inputs, one table: each is rejected cleanly (the documented exit code, exactly one line on
stderr that names the problem, no traceback, no run folder left behind), or, where the README
says it is handled, handled: unreadable pictures in a predict folder are skipped one by one, a
run name with `..` or `/` stays inside train.runs_dir, odd class names round-trip through
predictions.csv, a 1-pixel picture is refused by name.

Finer-grained unit tests of the same checks live in tests/config/test_config.py and
tests/data/test_data.py.
"""

from __future__ import annotations

import csv
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, make_class_folder, ok, only_child, tiny, write_image

pytestmark = pytest.mark.bad_input


def png_header(path: Path, width: int, height: int) -> None:
    """A tiny file that claims to be a width x height PNG (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def dataset(tmp: Path, damage: Callable[[Path], None] = lambda root: None) -> list[str]:
    """`train` on a small folder dataset (4 meta-train classes x 8 pictures) after `damage`."""
    root = tmp / "data"
    make_class_folder(root / "meta_train", {f"C{i}": 8 for i in range(1, 5)}, size=12)
    make_class_folder(root / "novel" / "labeled", {f"P{i}": 6 for i in range(1, 4)}, size=12)
    damage(root)
    return ["train", *tiny(tmp / "runs", "data.dataset=folder", f"data.root={root}", "train.iterations=1")]


def config_file(tmp: Path, text: str) -> list[str]:
    path = tmp / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return ["train", "--config", str(path), *tiny(tmp / "runs")]


def trained(tmp: Path) -> Path:
    ok("train", *tiny(tmp / "old", "train.iterations=1"))
    return only_child(tmp / "old")


def damaged_picture(content: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / "meta_train" / "C2" / "003.png"
        path.write_bytes(content(path.read_bytes()))

    return damage


@dataclass(frozen=True)
class Bad:
    """A bad input: `build(tmp_path)` writes what it needs and returns metafew's arguments."""

    build: Callable[[Path], list[str]]
    code: int
    words: tuple[str, ...]


REJECTED: dict[str, Bad] = {
    "unknown key": Bad(
        lambda t: ["train", *tiny(t / "runs", "task.shot=3")], 2, ("task.shot", "'task.shots'")
    ),
    "mistyped value": Bad(lambda t: ["train", *tiny(t / "runs", "task.ways=abc")], 2, ("task.ways", "abc")),
    "bool for a number": Bad(
        lambda t: ["train", *tiny(t / "runs", "train.iterations=yes")], 2, ("train.iterations",)
    ),
    "out of range": Bad(
        lambda t: ["train", *tiny(t / "runs", "train.outer_lr=-1")], 2, ("train.outer_lr", "-1")
    ),
    "unknown choice": Bad(
        lambda t: ["train", *tiny(t / "runs", "data.dataset=imagenet")], 2, ("data.dataset",)
    ),
    "override without =": Bad(lambda t: ["train", *tiny(t / "runs", "task.ways")], 2, ("task.ways",)),
    "duplicate YAML key": Bad(
        lambda t: config_file(t, "task:\n  ways: 3\n  ways: 4\n"), 2, ("duplicate", "ways")
    ),
    "python tag in YAML": Bad(
        lambda t: config_file(t, f"task: !!python/object/apply:os.system ['touch {t}/pwned']\n"),
        2,
        ("exp.yaml",),
    ),
    "missing config file": Bad(lambda t: ["train", "--config", str(t / "nope.yaml")], 2, ("nope.yaml",)),
    "resume with a changed setting": Bad(
        lambda t: ["train", "--resume", str(trained(t)), "task.shots=1"], 2, ("task.shots", "start a new run")
    ),
    "resume of a folder that is not a run": Bad(
        lambda t: ["train", "--resume", str(t)], 4, ("not a run folder",)
    ),
    "missing data.root": Bad(
        lambda t: ["train", *tiny(t / "runs", "data.dataset=folder", f"data.root={t / 'none'}")], 3, ("none",)
    ),
    "empty class folder": Bad(
        lambda t: dataset(t, lambda root: (root / "meta_train" / "C9").mkdir()), 3, ("without images", "C9")
    ),
    "text file named .png": Bad(
        lambda t: dataset(t, damaged_picture(lambda data: b"hello\n")), 3, ("003.png", "cannot read image")
    ),
    "truncated image": Bad(
        lambda t: dataset(t, damaged_picture(lambda data: data[: len(data) // 2])), 3, ("003.png",)
    ),
    "zero-byte image": Bad(lambda t: dataset(t, damaged_picture(lambda data: b"")), 3, ("003.png",)),
    "decompression bomb (20000x20000)": Bad(
        lambda t: dataset(t, lambda root: png_header(root / "meta_train" / "C1" / "big.png", 20000, 20000)),
        3,
        ("big.png", "decompression bomb"),
    ),
    "decompression bomb warning (10000x10000)": Bad(
        lambda t: dataset(t, lambda root: png_header(root / "meta_train" / "C1" / "big.png", 10000, 10000)),
        3,
        ("big.png",),
    ),
    "more ways than classes": Bad(
        lambda t: [*dataset(t), "task.ways=5"], 3, ("5-way", "found 4", "task.ways")
    ),
    "fewer images than shots + queries": Bad(
        lambda t: [*dataset(t), "task.shots=3", "task.queries=6"], 3, ("have 8, need 9", "task.queries")
    ),
    "no pictures in the meta-train classes": Bad(
        lambda t: dataset(t, lambda root: [p.unlink() for p in (root / "meta_train").rglob("*.png")]),
        3,
        ("without images",),
    ),
    # issue 15: inputs that used to end in a traceback or a folder without a checkpoint
    "YAML nested 20,000 deep": Bad(
        lambda t: config_file(t, "".join("  " * i + f"k{i}:\n" for i in range(20_000))),
        2,
        ("nested too deeply",),
    ),
    "seed 1e23": Bad(lambda t: ["train", *tiny(t / "runs", "train.seed=1e23")], 2, ("train.seed",)),
    "seed beyond 2^31": Bad(
        lambda t: ["train", *tiny(t / "runs", f"train.seed={10**23}")], 2, ("train.seed", "<= 2147483647")
    ),
    "infinite inner_lr": Bad(
        lambda t: ["train", *tiny(t / "runs", "algorithm.inner_lr=.inf")], 2, ("algorithm.inner_lr", "finite")
    ),
    "a model larger than memory": Bad(
        lambda t: ["train", *tiny(t / "runs", "model.hidden=100000")], 2, ("model.hidden", "GiB available")
    ),
    "pictures larger than memory": Bad(
        lambda t: ["train", *tiny(t / "runs", "data.image_size=100000")], 2, ("data.image_size", "GiB")
    ),
    "--allow-change without --resume": Bad(
        lambda t: ["train", *tiny(t / "runs"), "--allow-change", "algorithm.inner_lr"], 2, ("--resume",)
    ),
    "--allow-change with a misspelled key": Bad(
        lambda t: ["train", "--resume", str(trained(t)), "--allow-change", "algorithm.iner_lr"],
        2,
        ("algorithm.iner_lr", "did you mean 'algorithm.inner_lr'"),
    ),
    "data.root is a file": Bad(
        lambda t: [
            "train",
            *tiny(t / "runs", "data.dataset=folder", f"data.root={write_image(t / 'a.png')}"),
        ],
        3,
        ("a.png", "is a file, not a folder"),
    ),
    "hidden class folder with pictures": Bad(
        lambda t: dataset(t, lambda root: make_class_folder(root / "meta_train", {"..trouser": 8}, size=12)),
        3,
        ("..trouser", "rename it"),
    ),
    "1-pixel picture": Bad(
        lambda t: dataset(t, lambda root: write_image(root / "meta_train" / "C3" / "tiny.png", size=1)),
        3,
        ("tiny.png", "1x1 pixels"),
    ),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_bad_input_is_rejected_cleanly(tmp_path: Path, case: str) -> None:
    bad = REJECTED[case]
    args = bad.build(tmp_path)
    assert_user_error(invoke(*args), bad.code, *bad.words)
    runs_dir = tmp_path / "runs"
    assert not runs_dir.exists() or not list(runs_dir.iterdir())  # no folder for a refused run
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# handled


def test_files_that_are_not_pictures_and_tool_folders_are_ignored(tmp_path: Path) -> None:
    def add(root: Path) -> None:
        (root / "meta_train" / "C1" / "notes.txt").write_text("not a picture")
        (root / "meta_train" / "C1" / "Thumbs.db").write_bytes(b"\0\1\2")
        write_image(root / "meta_train" / ".ipynb_checkpoints" / "copy.png", size=12)

    result = ok(*dataset(tmp_path, add))
    assert "done: 1 iterations" in result.stdout


@pytest.mark.parametrize("name", ["../../escape", "/etc/passwd", "a/../../b", "..", "~root"])
def test_run_names_cannot_leave_the_runs_folder(tmp_path: Path, name: str) -> None:
    runs_dir = tmp_path / "box" / "runs"
    ok("train", *tiny(runs_dir, f"train.name={name}", "train.iterations=1"))
    run = only_child(runs_dir)
    assert run.parent == runs_dir and run.resolve().parent == runs_dir.resolve()
    assert re.fullmatch(r"\d{8}-\d{6}-[A-Za-z0-9_.-]*-?[0-9a-f]{6}", run.name), run.name
    assert sorted(p.name for p in tmp_path.rglob("*") if runs_dir not in p.parents and p != runs_dir) == [
        "box"
    ]


ODD_CLASSES = ["=HYPERLINK(1)", "a,b", 'quo"te']


def test_predict_skips_unreadable_files_and_writes_odd_class_names_safely(tmp_path: Path) -> None:
    labeled = make_class_folder(tmp_path / "labeled", {c: 4 for c in ODD_CLASSES}, size=12)
    run = trained(tmp_path)
    ok("finetune", run, "--labeled", labeled)
    model = only_child(run / "finetune")
    pictures = tmp_path / "pictures"
    for i in range(3):
        write_image(pictures / f"good{i}.png", size=12, seed=i)
    (pictures / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    png_header(pictures / "bomb.png", 20000, 20000)
    (pictures / "readme.txt").write_text("ignored: not a picture suffix")
    result = ok("predict", model, pictures)
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert sorted(line.split()[1].rstrip(":") for line in skipped) == ["bomb.png", "broken.png"]
    with (only_child(model / "predict") / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["file", "label", "confidence", *(f"p_{c}" for c in sorted(ODD_CLASSES))]
    assert [row[0] for row in rows] == ["good0.png", "good1.png", "good2.png"]
    assert all(row[1] in {"'=HYPERLINK(1)", "a,b", 'quo"te'} for row in rows)  # a formula is quoted


def test_predict_on_a_folder_of_only_unreadable_files_is_rejected(tmp_path: Path) -> None:
    run = trained(tmp_path)
    ok("finetune", run)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "a.png").write_bytes(b"")
    png_header(pictures / "b.png", 20000, 20000)
    assert_user_error(invoke("predict", only_child(run / "finetune"), pictures), 3, "could be read")
