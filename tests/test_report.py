"""metafew.report: counts, confusion matrix, per-class recall, the CSV and the PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from metafew import report
from metafew.report import (
    class_counts,
    confusion_layout,
    confusion_matrix,
    per_class_accuracy,
    render_confusion_png,
    write_confusion_csv,
)

CLASSES = ["cat", "dog", "fox"]
# true class of each picture, and what the model said
ANSWERS = ["cat", "cat", "cat", "dog", "dog", "fox", "fox", "fox", "fox"]
LABELS = ["cat", "dog", "cat", "dog", "dog", "cat", "fox", "fox", "dog"]
EXPECTED = np.array([[2, 1, 0], [0, 2, 0], [1, 1, 2]], dtype=np.int64)


def test_class_counts_in_class_order_with_zero_classes() -> None:
    counts = class_counts(["dog", "cat", "dog"], ["cat", "dog", "fox", "owl"])
    assert counts == {"cat": 1, "dog": 2, "fox": 0, "owl": 0}
    assert list(counts) == ["cat", "dog", "fox", "owl"]


def test_class_counts_of_nothing_are_all_zero() -> None:
    assert class_counts([], CLASSES) == {"cat": 0, "dog": 0, "fox": 0}


def test_class_counts_reject_a_label_outside_the_classes() -> None:
    with pytest.raises(ValueError, match="'owl'"):
        class_counts(["cat", "owl"], CLASSES)


def test_confusion_matrix_on_a_hand_example() -> None:
    matrix = confusion_matrix(ANSWERS, LABELS, CLASSES)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, EXPECTED)


def test_confusion_matrix_rows_sum_to_the_answers_per_class() -> None:
    matrix = confusion_matrix(ANSWERS, LABELS, CLASSES)
    assert matrix.sum(axis=1).tolist() == [ANSWERS.count(c) for c in CLASSES]
    assert matrix.sum(axis=0).tolist() == [LABELS.count(c) for c in CLASSES]
    assert int(matrix.sum()) == len(ANSWERS)


def test_confusion_matrix_of_nothing_is_zeros() -> None:
    matrix = confusion_matrix([], [], CLASSES)
    assert matrix.shape == (3, 3)
    assert not matrix.any()


def test_an_unknown_answer_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="'wolf'") as caught:
        confusion_matrix(["cat", "wolf", "owl"], ["cat", "dog", "fox"], CLASSES)
    assert "owl" not in str(caught.value).split("classes")[0]  # the first unknown answer only


def test_a_label_outside_the_classes_and_a_length_mismatch_are_rejected() -> None:
    with pytest.raises(ValueError, match="'owl'"):
        confusion_matrix(["cat"], ["owl"], CLASSES)
    with pytest.raises(ValueError, match="2 answers for 1"):
        confusion_matrix(["cat", "dog"], ["cat"], CLASSES)


def test_per_class_accuracy_is_recall_and_none_without_answers() -> None:
    classes = [*CLASSES, "owl"]
    matrix = confusion_matrix(ANSWERS, LABELS, classes)
    accuracy = per_class_accuracy(matrix, classes)
    assert list(accuracy) == classes
    assert accuracy["cat"] == pytest.approx(2 / 3)
    assert accuracy["dog"] == 1.0
    assert accuracy["fox"] == pytest.approx(2 / 4)
    assert accuracy["owl"] is None


def test_a_matrix_of_the_wrong_shape_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        per_class_accuracy(EXPECTED, ["cat", "dog"])
    with pytest.raises(ValueError, match="shape"):
        write_confusion_csv(tmp_path / "c.csv", EXPECTED, ["cat"])


def test_csv_round_trip_with_a_formula_like_class(tmp_path: Path) -> None:
    classes = ["cat", "=cmd", "-1", "dog, the good"]
    matrix = np.array([[3, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 5]], dtype=np.int64)
    path = tmp_path / "confusion.csv"
    write_confusion_csv(path, matrix, classes)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    safe = ["cat", "'=cmd", "'-1", "dog, the good"]
    assert rows[0] == ["true \\ predicted", *safe]
    assert [row[0] for row in rows[1:]] == safe
    np.testing.assert_array_equal(np.array([[int(n) for n in row[1:]] for row in rows[1:]]), matrix)
    assert b"\r\r" not in path.read_bytes()  # newline="": the csv module's own line ends only


def _render(tmp_path: Path, matrix: np.ndarray, classes: list[str], title: str = "t") -> Image.Image:
    path = tmp_path / "confusion.png"
    render_confusion_png(path, matrix, classes, title)
    with Image.open(path) as image:
        image.load()
        return image


def test_png_opens_as_rgb_of_the_layout_size(tmp_path: Path) -> None:
    title = "accuracy 66.7% on 9 pictures"
    image = _render(tmp_path, EXPECTED, CLASSES, title)
    assert image.format == "PNG"
    assert image.mode == "RGB"
    assert image.size == confusion_layout(EXPECTED, CLASSES, title).size


def test_png_grows_with_the_class_count(tmp_path: Path) -> None:
    sizes = []
    for n in (2, 5, 20):
        classes = [f"class_{i}" for i in range(n)]
        sizes.append(_render(tmp_path, np.eye(n, dtype=np.int64) * 3, classes).size)
    assert sizes[0][0] < sizes[1][0] < sizes[2][0]
    assert sizes[0][1] < sizes[1][1] < sizes[2][1]


def test_png_cells_lie_inside_the_image_and_do_not_overlap() -> None:
    classes = [f"a_rather_long_class_name_{i}" for i in range(20)]
    layout = confusion_layout(np.ones((20, 20), dtype=np.int64), classes, "t")
    x0, y0, _, _ = layout.cell_box(0, 0)
    _, _, x1, y1 = layout.cell_box(19, 19)
    assert x0 > 0 and y0 > 0 and x1 < layout.size[0] and y1 < layout.size[1]
    assert layout.cell_box(0, 1)[0] == layout.cell_box(0, 0)[2]
    assert layout.cell >= 40  # room for the count at a readable size


def test_a_full_cell_is_darker_than_an_empty_one(tmp_path: Path) -> None:
    matrix = np.array([[4, 0], [0, 0]], dtype=np.int64)  # row 0: all its pictures in cell (0, 0)
    image = _render(tmp_path, matrix, ["cat", "dog"])
    layout = confusion_layout(matrix, ["cat", "dog"], "t")

    def brightness(row: int, col: int) -> float:
        x0, y0, x1, y1 = layout.cell_box(row, col)
        inner = image.crop((x0 + 2, y0 + 2, x1 - 2, y1 - 2))  # inside the grid lines
        return float(np.asarray(inner, dtype=np.float64).mean())

    def corner(row: int, col: int) -> tuple[int, ...]:
        x0, y0, _, _ = layout.cell_box(row, col)
        return tuple(int(v) for v in np.asarray(image)[y0 + 3, x0 + 3])

    assert brightness(0, 0) < 100 < 240 < brightness(0, 1)
    assert sum(corner(0, 0)) < sum(corner(0, 1)) == 3 * 255
    assert corner(1, 1) == (255, 255, 255)  # a row without answers stays white
    x0, y0, x1, y1 = layout.cell_box(0, 0)
    centre = image.crop((x0 + layout.cell // 4, y0 + layout.cell // 4, x1 - layout.cell // 4, y1 - 4))
    assert (
        max(sum(p) for p in np.asarray(centre).reshape(-1, 3).tolist()) > 600
    )  # the count is drawn in white on the dark cell


def test_png_with_long_and_odd_names_renders(tmp_path: Path) -> None:
    classes = [f"class_number_{i:02d}_with_a_long_name" for i in range(20)] + ["=cmd", "ünïcødé"]
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 50, size=(22, 22))
    image = _render(tmp_path, matrix, classes, "accuracy 4.5% on 27000 pictures")
    assert image.width < 1400 and image.height < 1400


def test_png_with_the_bitmap_fallback_font(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow without FreeType (or < 10.1) only has the Latin-1 bitmap font: names must not crash it
    bitmap = ImageFont.load_default_imagefont()
    monkeypatch.setattr(report, "_fonts", lambda: (bitmap, bitmap))
    classes = ["sandal", "ünïcødé_名前", "a_very_long_class_name"]
    image = _render(tmp_path, EXPECTED, classes)
    assert image.size == confusion_layout(EXPECTED, classes, "t").size


def test_png_without_classes_shows_the_title_only(tmp_path: Path) -> None:
    image = _render(tmp_path, np.zeros((0, 0), dtype=np.int64), [], "no pictures")
    assert image.mode == "RGB" and image.width > 0
