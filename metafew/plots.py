"""Figures as PNG files, drawn with Pillow (no plotting dependency): a run's learning curve, several
runs' curves overlaid (`metafew plot`) and the histogram of per-episode test accuracy.

They are drawn at `_SS` times their size and downsampled (antialiased lines and text) and look like
a paper's figures: light gridlines, ticks on round values with the axes reaching just beyond the
data, percent on accuracy axes, the legend beside the data (never over it) and a shaded 95%
confidence band around validation accuracy (`val_ci95`, 1.96·s/√n over the validation episodes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from metafew.errors import ConfigError

RGB = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

COLOURS: tuple[RGB, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
"""Line colours, one per curve in order (matplotlib's tab10, readable in print and by most
colour-blind readers); the 11th curve takes the first colour again."""

_SS = 3  # supersampling factor
_PLOT_W, _PANEL_H = 600, 300  # plot area width, one panel's height (final pixels)
_LEFT, _BOTTOM, _GAP = 78, 52, 14  # room for y tick labels + y label; x ticks + x label; legend gap
_GRID, _FRAME, _TEXT, _MUTED = (228, 228, 228), (90, 90, 90), (20, 20, 20), (90, 90, 90)


@dataclass(frozen=True)
class Curve:
    """One line of a panel. `points`: [(x, y), ...]; `band`: [(x, low, high), ...] shaded under
    the line (a confidence interval), or None."""

    label: str
    points: list[tuple[float, float]]
    colour: RGB
    band: list[tuple[float, float, float]] | None = None


@dataclass(frozen=True)
class Panel:
    """One plot: its curves share the x axis of the figure and have their own y axis. `percent`:
    the values are fractions in [0, 1], shown as percent (accuracies)."""

    title: str
    ylabel: str
    curves: list[Curve]
    percent: bool = False
    bars: list[tuple[float, float, float]] = field(default_factory=list)
    """Histogram bars (x_left, x_right, height), drawn in the first curve's colour."""
    vline: tuple[float, float, float] | None = None
    """A vertical line at x with a shaded interval (x, low, high): a mean and its CI."""


@dataclass(frozen=True)
class TopAxis:
    """A second x axis along the top of the first panel: `ticks` [(x on the main axis, label)]."""

    label: str
    ticks: list[tuple[float, str]]


# ---------------------------------------------------------------------------------------------
# ticks


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About `count` round tick values (steps of 1, 2, 2.5 or 5 x 10^k) from the first at or below
    `lo` to the first at or above `hi`; the axis spans first to last tick."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _limits(values: Sequence[float], percent: bool, pad: float = 0.04) -> list[float]:
    """Ticks for data `values`, padded so no point sits on the frame; [0, 1] at most for percent."""
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = (hi - lo) or abs(hi) or 1.0
    lo, hi = lo - pad * span, hi + pad * span
    if percent:
        lo, hi = max(0.0, lo), min(1.0, hi)
    ticks = nice_ticks(lo, hi)
    return [t for t in ticks if 0.0 <= t <= 1.0] if percent else ticks


def from_zero(values: Sequence[float], integer: bool = False) -> list[float]:
    """Ticks of an axis from 0 (iteration, wall time) to just beyond the largest of `values`."""
    return nice_ticks(0.0, max(values, default=1.0) or 1.0, integer=integer)


def tick_label(value: float, step: float, percent: bool = False) -> str:
    """`value` written with as many decimals as the tick `step` needs (percent: x 100 and `%`)."""
    if percent:
        value, step = 100 * value, 100 * step
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-4):
        return f"{value:.2g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step > 0 and round(step / 10 ** math.floor(math.log10(step)), 6) == 2.5:
        decimals += 1
    text = f"{value:.{decimals}f}"
    return f"{text}%" if percent else text


# ---------------------------------------------------------------------------------------------
# drawing


@cache
def _font(size: int) -> Font:
    """Pillow's own scalable font (FreeType; Pillow >= 10.1), so no system font is needed."""
    try:
        return ImageFont.load_default(size=size * _SS)
    except TypeError:  # Pillow 10.0: a small bitmap font only
        return ImageFont.load_default()


class _Canvas:
    """A white image drawn at _SS x; coordinates and sizes are given in final pixels."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.image = Image.new("RGB", (width * _SS, height * _SS), "white")
        self.draw = ImageDraw.Draw(self.image)

    def text(
        self, xy: tuple[float, float], text: str, size: int = 12, fill: RGB = _TEXT, anchor: str = "la"
    ) -> None:
        self.draw.text((xy[0] * _SS, xy[1] * _SS), text, fill=fill, font=_font(size), anchor=anchor)

    def text_width(self, text: str, size: int = 12) -> float:
        return self.draw.textlength(text, font=_font(size)) / _SS

    def vertical_text(self, xy: tuple[float, float], text: str, size: int = 13) -> None:
        """`text` turned 90° (reading upwards), centred on `xy`."""
        font = _font(size)
        box = font.getbbox(text)
        label = Image.new("RGB", (int(box[2]) + 4, int(box[3]) + 4 * _SS), "white")
        ImageDraw.Draw(label).text((2, 0), text, fill=_TEXT, font=font)
        turned = label.rotate(90, expand=True)
        x, y = int(xy[0] * _SS - turned.width / 2), int(xy[1] * _SS - turned.height / 2)
        self.image.paste(turned, (x, y))

    def line(self, points: list[tuple[float, float]], colour: RGB, width: float = 1.0) -> None:
        if len(points) > 1:
            scaled = [(x * _SS, y * _SS) for x, y in points]
            self.draw.line(scaled, fill=colour, width=max(1, round(width * _SS)), joint="curve")

    def dot(self, xy: tuple[float, float], colour: RGB, radius: float = 2.6) -> None:
        x, y, r = xy[0] * _SS, xy[1] * _SS, radius * _SS
        self.draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)

    def rect(
        self, box: tuple[float, float, float, float], fill: RGB | None, outline: RGB | None = None
    ) -> None:
        self.draw.rectangle(tuple(v * _SS for v in box), fill=fill, outline=outline, width=_SS)

    def shade(self, polygons: list[tuple[list[tuple[float, float]], RGB]], alpha: int = 56) -> None:
        """Translucent filled polygons (confidence bands) over what is drawn so far."""
        if not polygons:
            return
        overlay = Image.new("RGBA", self.image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        for points, colour in polygons:
            draw.polygon([(x * _SS, y * _SS) for x, y in points], fill=(*colour, alpha))
        self.image = Image.alpha_composite(self.image.convert("RGBA"), overlay).convert("RGB")
        self.draw = ImageDraw.Draw(self.image)

    def save(self, path: Path) -> None:
        """Downsample (antialiasing) and write atomically."""
        final = self.image.resize((self.width, self.height), Image.Resampling.LANCZOS)
        tmp = path.with_name(f".{path.name}.tmp")
        final.save(tmp, format="PNG", optimize=True)
        tmp.replace(path)


@dataclass(frozen=True)
class _Axes:
    """The plot area (final pixels) and its data limits."""

    left: float
    top: float
    right: float
    bottom: float
    xticks: list[float]
    yticks: list[float]
    xlim: tuple[float, float]

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Pixel position of a data point; y is clipped to the axis (a band beyond 100%)."""
        (x0, x1), y0, y1 = self.xlim, self.yticks[0], self.yticks[-1]
        y = min(max(y, y0), y1)
        return (
            self.left + (x - x0) / ((x1 - x0) or 1) * (self.right - self.left),
            self.bottom - (y - y0) / ((y1 - y0) or 1) * (self.bottom - self.top),
        )


def _frame(canvas: _Canvas, axes: _Axes, panel: Panel, xlabel: str, xpercent: bool, top: bool) -> None:
    """Gridlines, ticks with their labels, the title (raised above a `top` axis) and the y label;
    the frame itself is drawn after the data (bars would cover it)."""
    xstep = axes.xticks[1] - axes.xticks[0] if len(axes.xticks) > 1 else 1.0
    ystep = axes.yticks[1] - axes.yticks[0] if len(axes.yticks) > 1 else 1.0
    for x in axes.xticks:
        px, _ = axes.at(x, axes.yticks[0])
        canvas.line([(px, axes.top), (px, axes.bottom)], _GRID)
        canvas.line([(px, axes.bottom), (px, axes.bottom + 4)], _FRAME)
        canvas.text((px, axes.bottom + 7), tick_label(x, xstep, xpercent), 11, _MUTED, "mt")
    for y in axes.yticks:
        _, py = axes.at(axes.xticks[0], y)
        canvas.line([(axes.left, py), (axes.right, py)], _GRID)
        canvas.line([(axes.left - 4, py), (axes.left, py)], _FRAME)
        canvas.text((axes.left - 7, py), tick_label(y, ystep, panel.percent), 11, _MUTED, "rm")
    canvas.text((axes.left, axes.top - (26 if top else 8)), panel.title, 13, _TEXT, "ld")
    canvas.vertical_text((16, (axes.top + axes.bottom) / 2), panel.ylabel, 12)
    if xlabel:
        canvas.text(((axes.left + axes.right) / 2, axes.bottom + 26), xlabel, 12, _TEXT, "mt")


def _data(canvas: _Canvas, axes: _Axes, panel: Panel) -> None:
    """Bands, bars, the vertical mean line, then the curves on top."""
    polygons = []
    for curve in panel.curves:
        if curve.band:
            upper = [axes.at(x, hi) for x, _, hi in curve.band]
            lower = [axes.at(x, lo) for x, lo, _ in reversed(curve.band)]
            polygons.append((upper + lower, curve.colour))
    if panel.vline is not None:
        _, low, high = panel.vline
        (l0, _), (l1, _) = axes.at(low, 0), axes.at(high, 0)
        polygons.append(([(l0, axes.top), (l1, axes.top), (l1, axes.bottom), (l0, axes.bottom)], _FRAME))
    canvas.shade(polygons, 40 if panel.vline is not None else 56)
    colour = panel.curves[0].colour if panel.curves else COLOURS[0]
    for x0, x1, height in panel.bars:
        (a, top), (b, base) = axes.at(x0, height), axes.at(x1, axes.yticks[0])
        canvas.rect((a, top, b, base), colour, (255, 255, 255))
    if panel.vline is not None:
        px, _ = axes.at(panel.vline[0], 0)
        canvas.line([(px, axes.top), (px, axes.bottom)], _TEXT, 1.5)
    for curve in panel.curves:
        xy = [axes.at(x, y) for x, y in curve.points]
        canvas.line(xy, curve.colour, 2.0)
        for point in xy if len(xy) <= 30 else []:
            canvas.dot(point, curve.colour)
        if len(xy) == 1:
            canvas.dot(xy[0], curve.colour, 3.2)


def _legend(canvas: _Canvas, x: float, top: float, entries: list[tuple[str, RGB, str]]) -> None:
    """Entries (label, colour, kind: line, band or bar) in a column starting at (x, top)."""
    for k, (label, colour, kind) in enumerate(entries):
        y = top + 8 + 19 * k
        if kind in ("band", "bar"):
            light = tuple(round(255 - (255 - c) * (0.35 if kind == "band" else 1.0)) for c in colour)
            canvas.rect((x, y - 6, x + 22, y + 6), light)  # type: ignore[arg-type]
        if kind != "bar":
            canvas.line([(x, y), (x + 22, y)], colour, 2.0)
        canvas.text((x + 30, y), label, 12, _TEXT, "lm")


def _entries(panel: Panel) -> list[tuple[str, RGB, str]]:
    return [
        (c.label, c.colour, "band" if c.band else ("bar" if panel.bars else "line")) for c in panel.curves
    ]


def _shorten(text: str, limit: int = 56) -> str:
    return text if len(text) <= limit else f"{text[: limit // 2 - 1]}…{text[-(limit // 2) :]}"


def draw_figure(
    panels: list[Panel],
    xlabel: str,
    path: Path,
    xpercent: bool = False,
    top_axis: TopAxis | None = None,
    integer_y: bool = False,
    xticks: list[float] | None = None,
) -> None:
    """Panels stacked on one shared x axis, each with its legend on its right, written to `path`.
    `xticks`: the x axis's ticks (its span), else round values around the data."""
    panels = [
        Panel(p.title, p.ylabel, [_short(c) for c in p.curves], p.percent, p.bars, p.vline) for p in panels
    ]
    probe = _Canvas(1, 1)
    labels = [label for p in panels for label, _, _ in _entries(p)]
    legend_w = max((probe.text_width(label) for label in labels), default=0) + 30 + 2 * _GAP
    xs = [x for p in panels for c in p.curves for x, _ in c.points]
    xs += [x for p in panels for b in p.bars for x in b[:2]]
    xticks = xticks or (_limits(xs, xpercent, pad=0.0) if xs else [0.0, 1.0])
    xlim = (min([xticks[0], *xs]), max([xticks[-1], *xs]))  # histogram bars may reach past 0 or 100%
    top_room = 58 if top_axis else 34
    heights = [top_room + (_PANEL_H - 34) if i == 0 else _PANEL_H for i in range(len(panels))]
    canvas = _Canvas(int(_LEFT + _PLOT_W + legend_w), sum(heights) + _BOTTOM - 22)
    offset = 0
    for i, panel in enumerate(panels):
        top = offset + (top_room if i == 0 else 34)
        values = [y for c in panel.curves for _, y in c.points]
        values += [v for c in panel.curves for _, lo, hi in c.band or [] for v in (lo, hi)]
        values += [b[2] for b in panel.bars] + ([0.0] if panel.bars else [])
        yticks = nice_ticks(0, max(values)) if panel.bars else _limits(values, panel.percent)
        if integer_y:
            yticks = nice_ticks(yticks[0], yticks[-1], integer=True)
        axes = _Axes(_LEFT, top, _LEFT + _PLOT_W, offset + heights[i] - 30, xticks, yticks, xlim)
        _frame(
            canvas, axes, panel, xlabel if i == len(panels) - 1 else "", xpercent, i == 0 and bool(top_axis)
        )
        _data(canvas, axes, panel)
        canvas.rect((axes.left, axes.top, axes.right, axes.bottom), None, _FRAME)
        _legend(canvas, axes.right + _GAP, axes.top, _entries(panel))
        if i == 0 and top_axis is not None:
            _top_axis(canvas, axes, top_axis)
        offset += heights[i]
    canvas.save(path)


def _short(curve: Curve) -> Curve:
    return Curve(_shorten(curve.label), curve.points, curve.colour, curve.band)


def _top_axis(canvas: _Canvas, axes: _Axes, top: TopAxis) -> None:
    for x, label in top.ticks:
        px, _ = axes.at(x, axes.yticks[0])
        canvas.line([(px, axes.top - 4), (px, axes.top)], _FRAME)
        canvas.text((px, axes.top - 6), label, 11, _MUTED, "md")
    canvas.text((axes.right, axes.top - 26), top.label, 11, _MUTED, "rd")


# ---------------------------------------------------------------------------------------------
# the figures


def _series(records: list[dict], key: str, x: str = "iteration") -> list[tuple[float, float]]:
    return [(float(r[x]), float(r[key])) for r in records if key in r and x in r and _finite(r[key])]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def validation_curve(records: list[dict], label: str, colour: RGB, x: str = "iteration") -> Curve:
    """val_accuracy against `x` with its val_ci95 band (records without val_ci95 give no band)."""
    rows = [r for r in records if _finite(r.get("val_accuracy")) and _finite(r.get(x))]
    band = [
        (float(r[x]), r["val_accuracy"] - r["val_ci95"], r["val_accuracy"] + r["val_ci95"])
        for r in rows
        if _finite(r.get("val_ci95"))
    ]
    return Curve(label, [(float(r[x]), float(r["val_accuracy"])) for r in rows], colour, band or None)


def wall_time_axis(records: list[dict], iterations: list[float]) -> TopAxis | None:
    """Minutes of wall time at round values along an iteration axis spanning `iterations` (its
    ticks), from the elapsed_s of training records; None where they carry none."""
    pairs = sorted(
        {(float(r["iteration"]), float(r["elapsed_s"])) for r in records if "loss" in r and "elapsed_s" in r}
    )
    if len(pairs) < 2 or pairs[-1][1] <= pairs[0][1]:
        return None
    its, mins = [p[0] for p in pairs], [p[1] / 60 for p in pairs]
    ticks = []
    for minute in nice_ticks(mins[0], mins[-1], 4):
        if mins[0] <= minute <= mins[-1] and iterations[0] <= _interp(minute, mins, its) <= iterations[-1]:
            ticks.append((_interp(minute, mins, its), tick_label(minute, _step(mins))))
    return TopAxis("wall time (min)", ticks) if ticks else None


def _step(values: list[float]) -> float:
    ticks = nice_ticks(values[0], values[-1], 4)
    return ticks[1] - ticks[0] if len(ticks) > 1 else 1.0


def _interp(value: float, xs: list[float], ys: list[float]) -> float:
    """ys at `value` on the increasing xs, linearly."""
    for k in range(1, len(xs)):
        if value <= xs[k]:
            share = (value - xs[k - 1]) / ((xs[k] - xs[k - 1]) or 1)
            return ys[k - 1] + share * (ys[k] - ys[k - 1])
    return ys[-1]


def plot_learning_curve(records: list[dict], path: Path, time_axis: bool = True) -> None:
    """A run's training query loss, and train query / validation accuracy (with its 95% CI band),
    against iteration, from its metrics.jsonl records. `time_axis`: minutes of wall time along the
    top as well, where the records carry elapsed_s."""
    loss = _series(records, "loss")
    accuracy = [Curve("train query", _series(records, "accuracy"), COLOURS[0])]
    val = validation_curve(records, "validation (95% CI)", COLOURS[1])
    if val.points:
        accuracy.append(val)
    panels = [
        Panel("meta-train query loss", "loss", [Curve("train loss", loss, COLOURS[3])]),
        Panel("accuracy", "accuracy", accuracy, percent=True),
    ]
    iterations = [x for p in panels for c in p.curves for x, _ in c.points]
    ticks = from_zero(iterations, integer=True)
    top = wall_time_axis(records, ticks) if time_axis and iterations else None
    draw_figure(panels, "iteration", path, top_axis=top, xticks=ticks)


def plot_episode_histogram(accuracies: Sequence[float], path: Path, title: str) -> None:
    """Histogram of per-episode test accuracy (fractions in [0, 1]) with the mean and its 95%
    confidence interval (1.96·s/√n) shaded, written to `path` as PNG."""
    values = [float(a) for a in accuracies if _finite(a)]
    n = len(values)
    mean = sum(values) / n if n else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    ci = 1.96 * std / math.sqrt(n) if n else 0.0
    bars = _histogram(values)
    label = f"mean {100 * mean:.1f} ± {100 * ci:.1f}% (95% CI)"
    panel = Panel(
        title,
        "episodes",
        [Curve(f"{n} episodes", [], COLOURS[0]), Curve(label, [], _TEXT, [(mean, mean - ci, mean + ci)])],
        bars=bars,
        vline=(mean, mean - ci, mean + ci) if n else None,
    )
    draw_figure([panel], "accuracy on the episode's queries", path, xpercent=True, integer_y=True)


def _histogram(values: list[float]) -> list[tuple[float, float, float]]:
    """Bars (left, right, count): one per distinct value where there are few (an episode's
    accuracy is a multiple of 1/queries), else 20 bins of 5 points."""
    if not values:
        return []
    distinct = sorted({round(v, 9) for v in values})
    if len(distinct) <= 25:
        gaps = [b - a for a, b in itertools.pairwise(distinct)]
        width = 0.8 * min(gaps) if gaps else 0.04
        return [
            (v - width / 2, v + width / 2, float(sum(round(x, 9) == v for x in values))) for v in distinct
        ]
    counts = [0] * 20
    for v in values:
        counts[min(19, max(0, int(v * 20)))] += 1
    return [(k / 20, (k + 1) / 20, float(c)) for k, c in enumerate(counts) if c]


METRIC_TITLES = {
    "val_accuracy": "validation accuracy (shaded: 95% CI)",
    "accuracy": "meta-train query accuracy",
    "loss": "meta-train query loss",
    "lr": "outer learning rate β",
    "tasks_per_s": "throughput (tasks per second)",
}
"""Figure titles of the metrics.jsonl keys engine writes; other keys are titled by their name."""

X_AXES = {"iteration": "iteration", "time": "wall time (min)"}
"""`--x` choices and the x label each gives."""


def logged_metrics(records: list[dict]) -> list[str]:
    """The numeric keys of metrics records that can be plotted (not the axes or the CI)."""
    keys = {k for r in records for k, v in r.items() if _finite(v) and not isinstance(v, bool)}
    return sorted(keys - {"iteration", "elapsed_s", "val_ci95"})


def run_curve(records: list[dict], metric: str, x: str, label: str, colour: RGB) -> Curve:
    """`metric` of one run against iteration or wall time (minutes), with the val_ci95 band for
    val_accuracy; ConfigError where x is time and the records carry no elapsed_s."""
    if x not in X_AXES:
        raise ConfigError(f"--x {x!r}: must be one of {', '.join(X_AXES)}")
    key = "elapsed_s" if x == "time" else "iteration"
    rows = [r for r in records if _finite(r.get(metric))]
    if x == "time" and rows and not any("elapsed_s" in r for r in rows):
        raise ConfigError(
            f"run {label!r} has no elapsed_s in metrics.jsonl (written before metafew recorded wall "
            "time); plot it with --x iteration"
        )
    if metric == "val_accuracy":
        curve = validation_curve(rows, label, colour, key)
    else:
        curve = Curve(label, _series(rows, metric, key), colour)
    if x == "time":  # seconds -> minutes
        band = [(t / 60, lo, hi) for t, lo, hi in curve.band] if curve.band else None
        curve = Curve(label, [(t / 60, y) for t, y in curve.points], colour, band)
    return curve


def plot_runs(runs: list[tuple[str, list[dict]]], metric: str, x: str, path: Path) -> list[str]:
    """Several runs' `metric` (a metrics.jsonl key) overlaid in one PNG at `path`, one colour per
    run (label, its metrics records), against iteration or wall time (`x`: iteration or time).
    Returns the labels of runs that never logged `metric` (left out); ConfigError where none did."""
    curves = [
        run_curve(records, metric, x, label, COLOURS[k % len(COLOURS)])
        for k, (label, records) in enumerate(runs)
    ]
    drawn = [c for c in curves if c.points]
    if not drawn:
        found = sorted({k for _, records in runs for k in logged_metrics(records)})
        raise ConfigError(
            f"--metric {metric!r}: none of these runs logged it; they log {', '.join(found) or 'nothing yet'}"
        )
    title = METRIC_TITLES.get(metric, metric)
    xs = [px for c in drawn for px, _ in c.points]
    percent = "accuracy" in metric
    panel = Panel(title, "accuracy" if percent else metric, drawn, percent=percent)
    draw_figure([panel], X_AXES[x], path, xticks=from_zero(xs, integer=x == "iteration"))
    return [c.label for c in curves if not c.points]
