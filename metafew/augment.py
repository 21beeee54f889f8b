"""Batched, seeded image augmentation as pure tensor functions.

The transforms are the usual ones of image classification: a random affine warp (shift, rotation,
zoom), an optional horizontal flip, and photometric jitter (brightness, contrast, saturation), in
the spirit of torchvision's RandomAffine + ColorJitter. FixMatch (Sohn et al., "FixMatch:
Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020) pairs a
"weak" view (flip and translate) with a "strong" view of larger distortions; `Augment.scaled`
makes the strong view from the weak one by multiplying every magnitude.

How it is computed:
- All random numbers are drawn at once on the CPU, as a [KINDS, n] block of uniforms in [0, 1)
  from the caller's `torch.Generator` (`draw_transforms`), whatever device the pictures are on, so
  that a seed gives the same transforms on a CPU and on a GPU. Every kind is drawn even when its
  transform is off, so switching one transform off leaves the others' draws unchanged.
- The geometric part is one `affine_grid` + `grid_sample` call for the whole batch (bilinear,
  align_corners=False). Pixels brought in from outside the picture are zeros (padding_mode
  "zeros"): black, the background of the project's ink-on-dark data (Omniglot is inverted, glyphs
  are bright strokes), and the fill torchvision's RandomAffine uses by default. With the warp on,
  the flip is folded into its matrix (one resampling); with the warp off it is an exact
  `torch.flip`, so flipping twice gives the picture back bit for bit.
- Photometric jitter is batched too, applied after the warp in a fixed order (brightness, then
  contrast about each picture's mean over C, H, W, then saturation for RGB) and clamped to [0, 1]
  once at the end.
- Test-time augmentation (`tta_views`) must not let a picture's prediction depend on the other
  pictures of its batch, nor on how the set is cut into chunks. Picture number p of the whole set
  (p = offset + its row) takes its uniforms from a fixed-size block of `TTA_BLOCK` pictures, block
  p // TTA_BLOCK, drawn whole from `view_generator(seed, view, block)`. Since every block is always
  drawn at its full size, the draws depend on (seed, view, p) only, without relying on torch's
  generator giving a longer tensor with the same prefix (it does for torch.rand on CPU in torch
  2.13, but not for torch.randn, and nothing promises it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from metafew.config import Config
from metafew.data import DATASETS, to_float

KINDS = ("shift_x", "shift_y", "angle", "zoom", "flip", "brightness", "contrast", "saturation")
"""The random parameters of one picture, in the order of the rows of the uniforms drawn."""

TTA_BLOCK = 64
"""Pictures per block of test-time-augmentation draws (see the module docstring)."""

_GRAY = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B (the grayscale that saturation blends with)."""

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Augment:
    """Magnitudes of the random transforms (0 turns one off)."""

    translate: float = 0.1
    """Max shift as a fraction of the side, uniform in [-t, t] per axis."""
    rotate: float = 10.0
    """Max rotation in degrees, uniform in [-r, r] (positive turns clockwise as displayed)."""
    scale: float = 0.1
    """Zoom factor uniform in [1 - s, 1 + s] (> 1 enlarges the content); s < 1."""
    flip: bool = False
    """Horizontal flip with probability 1/2 (only for datasets whose labels survive a mirror)."""
    brightness: float = 0.1
    """Additive shift uniform in [-b, b] on [0, 1] pixels."""
    contrast: float = 0.1
    """Multiply (x - mean of the picture) by a factor uniform in [1 - c, 1 + c]; c <= 1."""
    saturation: float = 0.0
    """RGB only: blend with grayscale, factor uniform in [1 - s, 1 + s]; s <= 1; ignored for C = 1."""

    def __post_init__(self) -> None:
        for name in ("translate", "rotate", "scale", "brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Augment.{name} = {value!r}: must be a finite number >= 0 (0 turns it off)")
        if self.scale >= 1:
            raise ValueError(
                f"Augment.scale = {self.scale!r}: the zoom 1 - scale must stay > 0; use a value < 1"
            )
        for name in ("contrast", "saturation"):
            if getattr(self, name) > 1:
                raise ValueError(
                    f"Augment.{name} = {getattr(self, name)!r}: the factor 1 - {name} must stay >= 0 "
                    f"(no inverted pictures); use a value <= 1"
                )

    def scaled(self, factor: float) -> Augment:
        """Every magnitude times `factor` (flip unchanged), e.g. the "strong" FixMatch view; the
        bounded ones capped where more would be meaningless (scale 0.9, contrast and saturation 1,
        translate 1, rotate 180)."""
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"Augment.scaled: factor = {factor!r} must be a finite number >= 0")
        return replace(
            self,
            translate=min(1.0, self.translate * factor),
            rotate=min(180.0, self.rotate * factor),
            scale=min(0.9, self.scale * factor),
            brightness=self.brightness * factor,
            contrast=min(1.0, self.contrast * factor),
            saturation=min(1.0, self.saturation * factor),
        )

    @property
    def geometric(self) -> bool:
        """True when the affine warp (translate, rotate or scale) is on."""
        return self.translate > 0 or self.rotate > 0 or self.scale > 0

    @property
    def identity(self) -> bool:
        """True when every transform is off."""
        photometric = self.brightness > 0 or self.contrast > 0 or self.saturation > 0
        return not (self.geometric or self.flip or photometric)


@dataclass(frozen=True)
class Transforms:
    """The drawn parameters of n pictures, each a float32 [n] CPU tensor (flip: bool [n])."""

    shift_x: torch.Tensor
    """Shift to the right, as a fraction of the width."""
    shift_y: torch.Tensor
    """Shift downwards, as a fraction of the height."""
    angle: torch.Tensor
    """Rotation in degrees, clockwise as displayed."""
    zoom: torch.Tensor
    """Zoom factor about the centre (> 1 enlarges)."""
    flip: torch.Tensor
    """Mirror left-right first."""
    brightness: torch.Tensor
    """Added to every pixel."""
    contrast: torch.Tensor
    """Factor on the distance to the picture's mean."""
    saturation: torch.Tensor
    """Factor on the distance to the grayscale picture (RGB only)."""


def _transforms(uniforms: torch.Tensor, spec: Augment) -> Transforms:
    """uniforms: [len(KINDS), n] in [0, 1), rows in the order of KINDS -> the parameters of `spec`."""
    u = dict(zip(KINDS, uniforms))

    def sym(kind: str, magnitude: float) -> torch.Tensor:  # uniform in [-magnitude, magnitude]
        return (2 * u[kind] - 1) * magnitude

    return Transforms(
        shift_x=sym("shift_x", spec.translate),
        shift_y=sym("shift_y", spec.translate),
        angle=sym("angle", spec.rotate),
        zoom=1 + sym("zoom", spec.scale),
        flip=(u["flip"] < 0.5) & spec.flip,
        brightness=sym("brightness", spec.brightness),
        contrast=1 + sym("contrast", spec.contrast),
        saturation=1 + sym("saturation", spec.saturation),
    )


def draw_transforms(n: int, spec: Augment, generator: torch.Generator) -> Transforms:
    """Draw the parameters of n pictures at once from a CPU `generator` ([len(KINDS), n] uniforms)."""
    if generator.device.type != "cpu":
        raise ValueError(
            f"draw_transforms: the generator is on {generator.device}; pass a CPU torch.Generator "
            f"(the draws are made on the CPU so that they do not depend on the device)"
        )
    return _transforms(torch.rand(len(KINDS), n, generator=generator), spec)


def affine_matrices(transforms: Transforms, height: int, width: int) -> torch.Tensor:
    """The [n, 2, 3] float32 `theta` of `F.affine_grid` (align_corners=False) for pictures of
    height x width: it maps an output point to the input point it samples, in normalised
    coordinates ([-1, 1], x to the right, y down).

    The content is mirrored (M = diag(-1, 1) when flipped, else I), zoomed by z and turned by a
    about the centre, then shifted by (sx W, sy H) pixels: p_out = z R(a) M p_in + t in centred
    pixel coordinates. In normalised coordinates x = S^-1 p with S = diag(W/2, H/2), so
    x_in = M L (x_out - 2 (sx, sy)) with L = S^-1 R(-a) S / z: the flip negates the first row.
    """
    a = torch.deg2rad(transforms.angle)
    cos, sin = torch.cos(a) / transforms.zoom, torch.sin(a) / transforms.zoom
    linear = torch.stack(
        [torch.stack([cos, sin * (height / width)], -1), torch.stack([-sin * (width / height), cos], -1)],
        -2,
    )  # [n, 2, 2]
    shift = 2 * torch.stack([transforms.shift_x, transforms.shift_y], -1)  # [n, 2], normalised
    offset = -(linear @ shift[..., None])  # [n, 2, 1]
    mirror = torch.ones(len(shift), 2, 1)
    mirror[:, 0, 0] = 1 - 2 * transforms.flip.float()
    return (mirror * torch.cat([linear, offset], -1)).float()


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """[n, C, H, W] uint8 (0..255) or float ([0, 1]) -> a new float32 tensor in [0, 1]."""
    if images.dim() != 4:
        raise ValueError(f"augment: images must be [n, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return to_float(images)
    if images.is_floating_point():
        return images.to(torch.float32, copy=True)
    raise ValueError(f"augment: images must be uint8 or floating point, got {images.dtype}")


def apply_transforms(images: torch.Tensor, spec: Augment, transforms: Transforms) -> torch.Tensor:
    """images: [n, C, H, W] uint8 or float in [0, 1], transforms of n pictures -> float32
    [n, C, H, W] in [0, 1]. Deterministic; the stages that `spec` turns off are skipped."""
    x = _as_float(images)
    n, channels, height, width = x.shape
    if not spec.flip:
        transforms = replace(transforms, flip=torch.zeros_like(transforms.flip))
    if spec.geometric:  # the flip is folded into the matrices: one resampling in all
        theta = affine_matrices(transforms, height, width).to(x.device)
        grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    elif spec.flip:
        x = torch.where(transforms.flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    return _photometric(x, spec, transforms).clamp_(0.0, 1.0)


def _photometric(x: torch.Tensor, spec: Augment, transforms: Transforms) -> torch.Tensor:
    """x: [n, C, H, W] float -> brightness b, then contrast f about the picture's mean m, then
    saturation s (RGB): fused as f x + (m + b - f m), then lerp(gray, x, s); not clamped."""
    if spec.brightness > 0 or spec.contrast > 0:
        ones = torch.ones(len(x), device=x.device)
        factor = transforms.contrast.to(x.device) if spec.contrast > 0 else ones
        shift = transforms.brightness.to(x.device) if spec.brightness > 0 else 0 * ones
        if spec.contrast > 0:  # about the mean m + b after brightness: f (x + b - m - b) + m + b
            mean = x.mean(dim=(1, 2, 3))
            shift = shift + mean - factor * mean
        x = torch.addcmul(shift[:, None, None, None], x, factor[:, None, None, None])
    if spec.saturation > 0 and x.shape[1] == 3:
        weights = torch.tensor(_GRAY, device=x.device)
        gray = torch.einsum("nchw,c->nhw", x, weights)[:, None]
        x = torch.lerp(gray, x, transforms.saturation.to(x.device)[:, None, None, None])
    return x


def augment(images: torch.Tensor, spec: Augment, generator: torch.Generator) -> torch.Tensor:
    """images: [n, C, H, W] uint8 or float in [0, 1] -> float32 [n, C, H, W] in [0, 1], on the
    images' device, each picture transformed by its own parameters drawn from the CPU `generator`
    (the same generator state gives the same output). An identity `spec` gives to_float(images)."""
    return apply_transforms(images, spec, draw_transforms(len(images), spec, generator))


def _mix64(value: int) -> int:
    """One output step of splitmix64 (Vigna's splitmix64.c, after Steele, Lea & Flood, OOPSLA
    2014; the mixer is Stafford's "Mix13"): a bijection of 64-bit integers that spreads every
    input bit over the output."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def view_seed(seed: int, *index: int) -> int:
    """A 63-bit seed from (seed, *index), the same in every process and Python run (no hash())."""
    state = _mix64(seed & _MASK64)
    for i in index:
        state = _mix64(state ^ (i & _MASK64))
    return state >> 1


def view_generator(seed: int, *index: int) -> torch.Generator:
    """A CPU torch.Generator seeded from (seed, *index), e.g. (train seed, iteration, task) or
    (seed, step), so that a resumed run draws the same transforms (see `view_seed`)."""
    return torch.Generator(device="cpu").manual_seed(view_seed(seed, *index))


def _position_uniforms(seed: int, view: int, offset: int, n: int) -> torch.Tensor:
    """[len(KINDS), n] uniforms of the pictures at positions offset..offset+n-1 of the whole set,
    each depending only on (seed, view, position): whole TTA_BLOCK-sized blocks are drawn."""
    first, last = offset // TTA_BLOCK, (offset + n - 1) // TTA_BLOCK
    blocks = [
        torch.rand(len(KINDS), TTA_BLOCK, generator=view_generator(seed, view, block))
        for block in range(first, last + 1)
    ]
    start = offset - first * TTA_BLOCK
    return torch.cat(blocks, 1)[:, start : start + n]


def tta_views(images: torch.Tensor, spec: Augment, views: int, seed: int, offset: int = 0) -> torch.Tensor:
    """images: [n, C, H, W] uint8 or float in [0, 1], the pictures offset..offset+n-1 of a set ->
    [views, n, C, H, W] float32 in [0, 1] for test-time augmentation (average the softmax over
    views). View 0 is the un-augmented picture; view v >= 1 transforms the picture at position p
    of the set with draws that depend only on (seed, v, p), so predicting a set in chunks (with
    `offset` the first position of each chunk) gives the same views as predicting it whole."""
    if views < 1:
        raise ValueError(f"tta_views: views = {views} must be >= 1 (view 0 is the plain picture)")
    if offset < 0:
        raise ValueError(f"tta_views: offset = {offset} must be >= 0 (the position of the first picture)")
    out = [_as_float(images)]
    for view in range(1, views):
        if len(images) == 0:
            out.append(out[0].clone())
            continue
        transforms = _transforms(_position_uniforms(seed, view, offset, len(images)), spec)
        out.append(apply_transforms(images, spec, transforms))
    return torch.stack(out)


__all__ = [
    "KINDS",
    "TTA_BLOCK",
    "Augment",
    "Transforms",
    "affine_matrices",
    "apply_transforms",
    "augment",
    "draw_transforms",
    "tta_views",
    "view_generator",
    "view_seed",
]


def augment_spec(cfg: Config) -> Augment:
    """The transforms of `augment.*`; flips where augment.flip is on, or auto and the dataset
    says mirrored pictures keep their class."""
    a = cfg.augment
    flip = a.flip == "on" or (a.flip == "auto" and DATASETS[cfg.data.dataset].flips_keep_labels)
    return Augment(a.translate, a.rotate, a.scale, flip, a.brightness, a.contrast, a.saturation)
