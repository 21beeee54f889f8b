"""What `metafew predict` shows about its answers: pictures per class, recall per class and a
confusion matrix, written as CSV and drawn as a PNG with Pillow (no plotting dependency).

Pure functions: they return values or write the file they are given; they never print.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_RGB = tuple[int, int, int]

# A cell that starts with one of these is run as a formula by spreadsheets (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_BODY_SIZE, _TITLE_SIZE = 14, 18
_MARGIN, _PAD, _MIN_CELL, _MAX_NAME = 16, 6, 40, 12
_WHITE: _RGB = (255, 255, 255)
_DARK_BLUE: _RGB = (8, 48, 107)  # the dark end of matplotlib's "Blues"
_BLACK: _RGB = (0, 0, 0)
_ZERO_TEXT: _RGB = (170, 170, 170)  # zeros stay readable but do not compete with the counts
_GRID_LINE: _RGB = (210, 210, 210)


def class_counts(labels: list[str], classes: list[str]) -> dict[str, int]:
    """Predicted pictures per class, in class order (classes with 0 included).

    labels: one predicted class per picture. A label outside `classes` -> ValueError.
    """
    counts = dict.fromkeys(classes, 0)
    for label in labels:
        if label not in counts:
            raise ValueError(f"label {label!r} is not one of the classes {classes}")
        counts[label] += 1
    return counts


def confusion_matrix(answers: list[str], labels: list[str], classes: list[str]) -> npt.NDArray[np.int64]:
    """[len(classes), len(classes)] int64: row = true class, column = predicted class.

    answers: the true class of each picture; labels: the predicted class, in the same order.
    An answer naming a class that is not in `classes` -> ValueError naming the first such answer
    (the caller turns it into a user error); so does a label outside `classes` or a length mismatch.
    """
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers for {len(labels)} predicted labels")
    index = {name: i for i, name in enumerate(classes)}
    unknown = next((a for a in answers if a not in index), None)
    if unknown is not None:
        raise ValueError(f"answer {unknown!r} is not one of the classes {classes}")
    stray = next((label for label in labels if label not in index), None)
    if stray is not None:
        raise ValueError(f"label {stray!r} is not one of the classes {classes}")
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for answer, label in zip(answers, labels):
        matrix[index[answer], index[label]] += 1
    return matrix


def per_class_accuracy(matrix: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    """Recall per true class (diagonal / row sum), in class order; None for a class with no answers.

    matrix: [len(classes), len(classes)] from `confusion_matrix`.
    """
    _check_shape(matrix, classes)
    rows = matrix.sum(axis=1)
    return {
        name: (float(matrix[i, i]) / float(rows[i]) if rows[i] > 0 else None)
        for i, name in enumerate(classes)
    }


def _spreadsheet_safe(text: str) -> str:
    """`text` with a leading `'` where a spreadsheet would run it as a formula (`=1+1` -> `'=1+1`);
    the rule of `metafew.stages.spreadsheet_safe`, repeated here so this module imports no stage."""
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def write_confusion_csv(path: Path, matrix: np.ndarray, classes: list[str]) -> None:
    """CSV (utf-8): header `true \\ predicted,<class>...`, then one row per true class: its name and
    the counts. Class names are made spreadsheet-safe with the same rule as predictions.csv (a `'`
    before a name that starts with = + - @ tab or carriage return); counts are plain integers."""
    _check_shape(matrix, classes)
    safe = [_spreadsheet_safe(name) for name in classes]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *safe])
        for name, row in zip(safe, matrix.tolist()):
            writer.writerow([name, *(int(n) for n in row)])


def _check_shape(matrix: np.ndarray, classes: list[str]) -> None:
    """ValueError unless `matrix` is [len(classes), len(classes)]."""
    if matrix.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix of shape {matrix.shape} for {len(classes)} classes")


@dataclass(frozen=True)
class ConfusionLayout:
    """Where `render_confusion_png` draws, in pixels; x grows rightwards, y downwards."""

    size: tuple[int, int]
    """(width, height) of the image."""
    origin: tuple[int, int]
    """(x, y) of the top-left corner of cell (0, 0)."""
    cell: int
    """Side of one square cell."""
    name_width: int
    """Width of the widest (shortened) class name."""
    line: int
    """Height of one line of body text."""
    rotate_predicted: bool
    """Whether the predicted-class names under the grid are written upwards (too wide for a cell)."""

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the cell for true class `row`, predicted class `col`; x1, y1 exclusive."""
        x0, y0 = self.origin[0] + col * self.cell, self.origin[1] + row * self.cell
        return x0, y0, x0 + self.cell, y0 + self.cell


def _fonts() -> tuple[_Font, _Font]:
    """(body, title) fonts: Pillow's own font at two sizes (`size=` needs Pillow >= 10.1; older
    versions and builds without FreeType get the fixed bitmap font for both)."""
    try:
        return ImageFont.load_default(size=_BODY_SIZE), ImageFont.load_default(size=_TITLE_SIZE)
    except TypeError:
        font = ImageFont.load_default()
        return font, font


def _drawable(text: str, font: _Font) -> str:
    """`text` as `font` can draw it: the bitmap fallback font only knows Latin-1."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.replace("…", "...").encode("latin-1", "replace").decode("latin-1")


def _shorten(name: str, limit: int = _MAX_NAME) -> str:
    """`name` cut to `limit` characters, the middle replaced by an ellipsis (`golden_retriever`
    -> `golden_r…ver`): the end often tells similar names apart (`..._1`, `..._2`)."""
    if len(name) <= limit:
        return name
    tail = (limit - 1) // 3
    return name[: limit - 1 - tail] + "…" + name[len(name) - tail :]


def _short_names(classes: list[str]) -> list[str]:
    """Axis labels for `classes`: each shortened to `_MAX_NAME` characters so 20 fit along an axis;
    when two would read the same, every label starts with its class number instead (`3:golden…ver`)."""
    names = [_shorten(c) for c in classes]
    if len(set(names)) == len(names):
        return names
    return [f"{i + 1}:{_shorten(c, _MAX_NAME - len(str(i + 1)) - 1)}" for i, c in enumerate(classes)]


def _size(text: str, font: _Font) -> tuple[int, int]:
    """(width, height) of the ink of `text` in `font`."""
    left, top, right, bottom = font.getbbox(_drawable(text, font))
    return int(right - left), int(bottom - top)


def confusion_layout(matrix: np.ndarray, classes: list[str], title: str) -> ConfusionLayout:
    """The layout `render_confusion_png` uses for these arguments; cells are sized to hold the
    largest count, the margins to hold the shortened class names, the image to hold the title."""
    _check_shape(matrix, classes)
    body, title_font = _fonts()
    line = _size("Ayg", body)[1]
    count_width = _size(str(int(matrix.max(initial=0))), body)[0]
    cell = max(_MIN_CELL, count_width + 2 * _PAD, line + 2 * _PAD)
    name_width = max((_size(name, body)[0] for name in _short_names(classes)), default=0)
    rotate = name_width > cell - _PAD
    below = name_width if rotate else line
    grid = len(classes) * cell
    left = _MARGIN + line + 2 * _PAD + name_width + _PAD
    top = _MARGIN + _size(title, title_font)[1] + 3 * _PAD
    width = left + grid + _MARGIN
    title_width = _size(title, title_font)[0] + 2 * _MARGIN
    if title_width > width:  # centre the matrix under a long title
        left += (title_width - width) // 2
        width = title_width
    height = top + grid + 2 * _PAD + below + _PAD + line + _MARGIN
    return ConfusionLayout((width, height), (left, top), cell, name_width, line, rotate)


def _fill(fraction: float) -> _RGB:
    """White at 0 to dark blue at 1."""
    r, g, b = (round(w + (d - w) * fraction) for w, d in zip(_WHITE, _DARK_BLUE))
    return r, g, b


def _text(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, font: _Font, fill: _RGB) -> None:
    """`text` with its ink centred on `centre` (anchors other than the default need FreeType)."""
    text = _drawable(text, font)
    left, top, right, bottom = font.getbbox(text)
    draw.text((centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2), text, font=font, fill=fill)


def _upright_text(image: Image.Image, corner: tuple[int, int], text: str, font: _Font) -> None:
    """Black `text` written upwards (rotated 90° anticlockwise), its box's top-left at `corner`."""
    text = _drawable(text, font)
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (int(right - left) + 1, int(bottom - top) + 1), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255)
    mask = mask.rotate(90, expand=True)
    box = (corner[0], corner[1], corner[0] + mask.width, corner[1] + mask.height)
    image.paste(_BLACK, box, mask)


def _draw_cells(draw: ImageDraw.ImageDraw, layout: ConfusionLayout, matrix: np.ndarray, font: _Font) -> None:
    """The heat-map cells (colour = count / row total) with their counts, and the grid lines."""
    rows = matrix.sum(axis=1)
    for (r, c), count in np.ndenumerate(matrix):
        fraction = float(count) / float(rows[r]) if rows[r] > 0 else 0.0
        x0, y0, x1, y1 = layout.cell_box(r, c)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=_fill(fraction), outline=_GRID_LINE)
        ink = _ZERO_TEXT if count == 0 else (_WHITE if fraction > 0.5 else _BLACK)
        _text(draw, ((x0 + x1) / 2, (y0 + y1) / 2), str(int(count)), font, ink)
    n = len(matrix)
    x0, y0, x1, y1 = layout.cell_box(0, 0)[:2] + layout.cell_box(n - 1, n - 1)[2:]
    draw.rectangle((x0 - 1, y0 - 1, x1, y1), outline=(90, 90, 90))


def _draw_names(image: Image.Image, layout: ConfusionLayout, classes: list[str], font: _Font) -> None:
    """True-class names right-aligned left of the rows, predicted-class names under the columns."""
    draw = ImageDraw.Draw(image)
    n, (gx, gy), cell = len(classes), layout.origin, layout.cell
    below = gy + n * cell + 2 * _PAD
    for i, name in enumerate(_short_names(classes)):
        width = _size(name, font)[0]
        _text(draw, (gx - _PAD - width / 2, gy + (i + 0.5) * cell), name, font, _BLACK)
        if layout.rotate_predicted:  # upwards, ending just under the grid, as matplotlib's rotation=90
            _upright_text(image, (gx + i * cell + (cell - layout.line) // 2, below), name, font)
        else:
            _text(draw, (gx + (i + 0.5) * cell, below + layout.line / 2), name, font, _BLACK)


def _draw_title(draw: ImageDraw.ImageDraw, layout: ConfusionLayout, title: str) -> None:
    """`title` centred along the top."""
    title_font = _fonts()[1]
    _text(draw, (layout.size[0] / 2, _MARGIN + _size(title, title_font)[1] / 2), title, title_font, _BLACK)


def _draw_captions(image: Image.Image, layout: ConfusionLayout, n: int) -> None:
    """'predicted class' under the column names, 'true class' left of the row names."""
    body = _fonts()[0]
    draw = ImageDraw.Draw(image)
    (gx, gy), grid = layout.origin, n * layout.cell
    band = layout.name_width if layout.rotate_predicted else layout.line
    caption_y = gy + grid + 2 * _PAD + band + _PAD + layout.line / 2
    _text(draw, (gx + grid / 2, caption_y), "predicted class", body, _BLACK)
    caption_width = _size("true class", body)[0]
    caption_x = gx - _PAD - layout.name_width - 2 * _PAD - layout.line
    _upright_text(image, (caption_x, gy + (grid - caption_width) // 2), "true class", body)


def render_confusion_png(path: Path, matrix: np.ndarray, classes: list[str], title: str) -> None:
    """A PNG (RGB) of the confusion matrix: a heat-map grid, white -> dark blue by the fraction of
    its row, with the count in each cell; true classes down the left, predicted classes along the
    bottom (names over 12 characters shortened by an ellipsis in the middle, numbered if two would
    then read the same, written upwards when wider than a cell); the captions 'true class' and
    'predicted class', and `title` on top (e.g. 'accuracy 88.0% on 75 pictures'). Sizes come from
    the text: see `confusion_layout`.

    matrix: [len(classes), len(classes)] from `confusion_matrix`; zero classes draw only the title.
    """
    layout = confusion_layout(matrix, classes, title)
    body, _ = _fonts()
    image = Image.new("RGB", layout.size, _WHITE)
    _draw_title(ImageDraw.Draw(image), layout, title)
    if classes:
        _draw_cells(ImageDraw.Draw(image), layout, matrix, body)
        _draw_names(image, layout, classes, body)
        _draw_captions(image, layout, len(classes))
    image.save(path, format="PNG")
