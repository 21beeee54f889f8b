"""Learning-curve PNGs drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

Series = tuple[str, list[tuple[float, float]], tuple[int, int, int]]
"""(legend label, [(x, y), ...], RGB colour)."""

_W, _H, _MARGIN = 640, 300, 48


def _panel(draw: ImageDraw.ImageDraw, top: int, title: str, series: list[Series]) -> None:
    """One plot of several series, with its own y range, in the band starting at `top`."""
    left, right, bottom = _MARGIN, _W - 16, top + _H - 28
    upper = top + 24
    points = [p for _, pts, _ in series for p in pts]
    draw.text((left, top + 4), title, fill=(0, 0, 0))
    draw.rectangle((left, upper, right, bottom), outline=(120, 120, 120))
    if not points:
        return
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (right - left),
            bottom - (y - y0) / (y1 - y0) * (bottom - upper),
        )

    draw.text((4, upper), f"{y1:.3g}", fill=(80, 80, 80))
    draw.text((4, bottom - 10), f"{y0:.3g}", fill=(80, 80, 80))
    draw.text((left, bottom + 4), f"{x0:g}", fill=(80, 80, 80))
    draw.text((right - 40, bottom + 4), f"{x1:g}", fill=(80, 80, 80))
    for k, (label, pts, colour) in enumerate(series):
        xy = [at(x, y) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy if len(xy) < 40 else []:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        draw.text((right - 150, upper + 4 + 12 * k), label, fill=colour)


def plot_learning_curve(records: list[dict], path: Path) -> None:
    """Training loss and train/validation accuracy against iteration, from metrics records."""
    loss = [(r["iteration"], r["loss"]) for r in records if "loss" in r]
    acc = [(r["iteration"], r["accuracy"]) for r in records if "accuracy" in r]
    val = [(r["iteration"], r["val_accuracy"]) for r in records if "val_accuracy" in r]
    image = Image.new("RGB", (_W, 2 * _H), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, 0, "meta-train query loss", [("train loss", loss, (200, 60, 40))])
    _panel(
        draw,
        _H,
        "accuracy",
        [("train query", acc, (40, 90, 200)), ("validation", val, (30, 150, 60))],
    )
    draw.text((_W // 2 - 20, 2 * _H - 14), "iteration", fill=(0, 0, 0))
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
