"""Embedded glyph dataset: procedurally generated handwriting-like characters, no download.

Each class is a random stroke program: 2-4 cubic Bézier strokes, some starting where the
previous one ended, as a pen would. Each image redraws the same program with per-sample jitter:
every control point moves a little, the whole glyph is rotated, scaled, sheared and shifted, the
stroke width changes, and one or two short stray strokes land anywhere (class-independent
clutter: pixel matching and networks trained from scratch on five examples suffer from it,
meta-training learns to ignore it). Images are rendered as an anti-aliased distance field, so any size
works. Class `c` and sample `s` depend only on (seed, c, s): any number of classes and samples,
always the same pictures for the same seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from metafew.config.schema import DataConfig, GlyphsConfig
from metafew.data.base import Dataset, FewShotData, LabeledImages, Splits, UnlabeledImages

_CURVE_POINTS = 20  # points sampled along each Bézier stroke
_T = np.linspace(0.0, 1.0, _CURVE_POINTS)
_BERNSTEIN = np.stack([(1 - _T) ** 3, 3 * _T * (1 - _T) ** 2, 3 * _T**2 * (1 - _T), _T**3], axis=1)
"""Cubic Bernstein basis at the sampled curve parameters: [_CURVE_POINTS, 4]."""


def stroke_program(seed: int, cls: int) -> np.ndarray:
    """The control points of class `cls`: [strokes, 4, 2] in the unit square."""
    rng = np.random.default_rng([seed, 0x61C, cls])
    strokes: list[np.ndarray] = []
    pen = rng.uniform(0.2, 0.8, size=2)
    for _ in range(int(rng.integers(2, 5))):
        start = pen if strokes and rng.random() < 0.5 else rng.uniform(0.15, 0.85, size=2)
        points = [start]
        for _ in range(3):
            points.append(np.clip(points[-1] + rng.normal(0.0, 0.22, size=2), 0.1, 0.9))
        strokes.append(np.stack(points))
        pen = points[-1]
    return np.stack(strokes)


def _jitter(program: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Per-sample variation: control-point noise, then a random affine map about the centre."""
    points = program + rng.normal(0.0, 0.035, size=program.shape)
    angle = rng.normal(0.0, np.deg2rad(20.0))
    scale = rng.uniform(0.8, 1.1, size=2)
    shear = rng.normal(0.0, 0.12)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    shift = rng.normal(0.0, 0.09, size=2)
    points = (points - 0.5) @ affine.T + 0.5 + shift
    width = rng.uniform(0.03, 0.065)
    return np.concatenate([points, _distractors(rng)]), width


def _distractors(rng: np.random.Generator) -> np.ndarray:
    """One or two short stray strokes anywhere in the picture, unrelated to the class: nuisance
    that meta-training can learn to ignore across classes but five examples cannot teach."""
    starts = rng.uniform(0.05, 0.95, size=(int(rng.integers(1, 3)), 1, 2))
    return starts + np.cumsum(rng.normal(0.0, 0.07, size=(len(starts), 4, 2)), axis=1)


def render(points: np.ndarray, width: float, size: int) -> np.ndarray:
    """Rasterize strokes ([strokes, 4, 2] control points) with half-width `width` (unit square)
    into a [size, size] uint8 image, anti-aliased by the distance to the nearest segment."""
    curve = np.einsum("pk,skd->spd", _BERNSTEIN, points)  # [strokes, P, 2]
    a = curve[:, :-1].reshape(-1, 2)
    b = curve[:, 1:].reshape(-1, 2)  # segments a->b, [S, 2]
    centres = (np.arange(size) + 0.5) / size
    grid = np.stack(np.meshgrid(centres, centres, indexing="xy"), axis=-1).reshape(-1, 1, 2)
    ab = b - a
    t = np.clip(((grid - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    nearest = a + t[..., None] * ab
    dist = np.sqrt(((grid - nearest) ** 2).sum(-1)).min(axis=1)  # [size*size]
    ink = np.clip((width - dist) * size + 0.5, 0.0, 1.0)
    return (ink.reshape(size, size) * 255.0 + 0.5).astype(np.uint8)


def glyph_images(seed: int, cls: int, samples: range, size: int, channels: int) -> torch.Tensor:
    """Images `samples` of class `cls`: [len(samples), channels, size, size] uint8."""
    program = stroke_program(seed, cls)
    out = np.empty((len(samples), size, size), dtype=np.uint8)
    for row, sample in enumerate(samples):
        rng = np.random.default_rng([seed, 0x61C, cls, sample])
        out[row] = render(*_jitter(program, rng), size)
    images = torch.from_numpy(out)[:, None]
    return images.expand(-1, channels, -1, -1).contiguous()


def _labeled(seed: int, first: int, count: int, samples: range, size: int, channels: int) -> LabeledImages:
    classes = list(range(first, first + count))
    images = torch.cat([glyph_images(seed, c, samples, size, channels) for c in classes])
    labels = torch.arange(count).repeat_interleave(len(samples))
    return LabeledImages(images, labels, [f"glyph{c:03d}" for c in classes])


def load_glyphs(cfg: GlyphsConfig, image_size: int, channels: int) -> FewShotData:
    """Meta-train, validation and novel glyph classes (disjoint class ids), novel classes split
    into labeled pictures and unlabeled pictures whose answers are known."""
    seed, size = cfg.seed, image_size
    train = _labeled(seed, 0, cfg.train_classes, range(cfg.train_samples), size, channels)
    val_first = cfg.train_classes
    val = (
        _labeled(seed, val_first, cfg.val_classes, range(cfg.train_samples), size, channels)
        if cfg.val_classes
        else None
    )
    novel_first = val_first + cfg.val_classes
    novel = _labeled(seed, novel_first, cfg.novel_classes, range(cfg.novel_labeled), size, channels)
    unlabeled = None
    if cfg.novel_unlabeled:
        held = range(cfg.novel_labeled, cfg.novel_labeled + cfg.novel_unlabeled)
        parts = [glyph_images(seed, novel_first + i, held, size, channels) for i in range(cfg.novel_classes)]
        answers = [name for name in novel.classes for _ in held]
        # shuffle so that file order says nothing about the class, like a real unlabeled folder
        order = np.random.default_rng([seed, 0x5F1]).permutation(len(answers))
        images = torch.cat(parts)[torch.from_numpy(order)]
        names = [f"unlabeled_{i:04d}.png" for i in range(len(answers))]
        unlabeled = UnlabeledImages(images, names, [answers[i] for i in order])
    return FewShotData(train, val, novel, unlabeled)


_DRAWN: dict[tuple[object, ...], FewShotData] = {}
"""The last glyph set drawn in this process, by its settings: a process that runs several stages
(`train --fast-dev-run`, the Python API) draws it once (2400 renders, seconds on a busy CPU)."""


def _build(cfg: DataConfig, sources: list[Path], recorded: Splits | None) -> FewShotData:
    key = (*dataclasses.astuple(cfg.glyphs), cfg.image_size, cfg.channels)
    if key not in _DRAWN:
        _DRAWN.clear()
        _DRAWN[key] = load_glyphs(cfg.glyphs, cfg.image_size, cfg.channels)
    return _copy(_DRAWN[key])


def _copy(data: FewShotData) -> FewShotData:
    """The same splits in new tensors, so that no caller can change the drawn set."""

    def labeled(images: LabeledImages) -> LabeledImages:
        return LabeledImages(images.images.clone(), images.labels.clone(), list(images.classes))

    unlabeled = data.unlabeled
    if unlabeled is not None:
        answers = None if unlabeled.answers is None else list(unlabeled.answers)
        unlabeled = UnlabeledImages(unlabeled.images.clone(), list(unlabeled.names), answers)
    val = None if data.meta_val is None else labeled(data.meta_val)
    return FewShotData(labeled(data.meta_train), val, labeled(data.novel), unlabeled)


GLYPHS = Dataset(
    sources=lambda cfg, progress: [],
    build=_build,
    summary="procedurally drawn stroke characters, embedded (no files, no download)",
    files="none: generated from data.glyphs.seed",
    needs_root=False,
    cacheable=False,  # generated in about a second; a cache would only go stale with the code
)
