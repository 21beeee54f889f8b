"""The ResNet-12 backbone of MetaOptNet (Lee, Maji, Ravichandran & Soatto, "Meta-Learning with
Differentiable Convex Optimization", CVPR 2019, arXiv:1904.03758), also the backbone of the best
tables of LibFewShot (Li et al. 2021, arXiv:2109.04898).

Four residual blocks; block i (width w_i) maps x -> maxpool₂(σ(BN(conv₃(σ(BN(conv₂(σ(BN(conv₁(x))))))))
+ BN(conv₁ₓ₁(x)))), with 3x3 convolutions without bias, σ = LeakyReLU(0.1) and a 1x1 convolution
+ BatchNorm on the shortcut (the width changes in every block). Global average pooling then gives
the features [N, w_4], and the head is Conv-4's: linear, or cosine for Baseline++.

BatchNorm follows Conv-4's policy (`conv4.BatchStatNorm`): batch statistics, or the frozen
`norm_stats` (one (mean, var) per norm layer, in block order: conv₁, conv₂, conv₃, shortcut),
so the forward works under torch.func's grad and vmap with exact higher-order gradients. Every
norm layer's parameters are named `...norm.weight` / `...norm.bias`, which is what MAML++'s
per-step BatchNorm (BNWB) keys on.

DropBlock (Ghiasi, Lin & Le, NeurIPS 2018, arXiv:1810.12890) with drop rate `dropblock` and
block side `dropblock_size` follows the pooling of the last two blocks, as in MetaOptNet. It
is the identity unless the backbone is inside `meta_training(seed, iteration)`, which meta-training
enters around one meta-batch: adaptation at validation, evaluation, fine-tuning and prediction
never drop. Its masks come from no random generator: they are an integer hash of (seed,
iteration, the how-many-th DropBlock call of that meta-batch, position), so that they do not
disturb (or depend on) the global random streams, work under vmap, and an exactly resumed run
draws exactly the masks the uninterrupted one did. Under vmap the tasks of one call share their
masks (the mask has the shape of one task's feature map), so with dropblock > 0 the loop and
vmap batchings give different, equally valid, meta-gradients. Deviations from MetaOptNet: no
plain dropout in the first two blocks and no linear ramp of the drop rate over training.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from metafew.errors import ConfigError
from metafew.functional import TaskForward
from metafew.models.conv4 import BatchStatNorm, CosineHead, NormStats

Stats = tuple[torch.Tensor, torch.Tensor]

DEFAULT_WIDTHS = "64,160,320,640"
"""MetaOptNet's widths (`model.widths`' default)."""

DROPBLOCK_BLOCKS = (2, 3)
"""Blocks (0-based) followed by DropBlock, as in MetaOptNet."""

_MASK31 = 2**31 - 1


def parse_widths(text: str) -> list[int]:
    """`"64,160,320,640"` -> [64, 160, 320, 640]; ConfigError naming model.widths unless the value is
    four positive integers."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(
            f"model.widths = {text!r}: must be four positive integers, one per residual block, "
            f"e.g. {DEFAULT_WIDTHS}"
        )
    return [int(p) for p in parts]


def hashed_uniform(shape: torch.Size, key: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Numbers in [0, 1) of `shape`, a fixed function of `key` and the position (an integer hash on
    31-bit values in int64, so no product overflows): the same on every device and under vmap."""
    h = torch.arange(shape.numel(), device=device, dtype=torch.int64)
    h = (h * 0x2C1B3C6D + key) & _MASK31
    for _ in range(3):
        h = ((h ^ (h >> 15)) * 0x45D9F3B) & _MASK31
    h = h ^ (h >> 16)
    return (h.to(dtype) / 2**31).view(shape)


def dropblock(x: torch.Tensor, rate: float, size: int, key: int) -> torch.Tensor:
    """DropBlock of x [N, C, H, W]: zero size x size squares (clamped to the map) around seeds drawn
    at rate γ = rate/size² · HW/((H−size+1)(W−size+1)) per channel, and rescale by the kept fraction."""
    h, w = x.shape[-2:]
    size = min(size, h, w)
    gamma = rate / size**2 * (h * w) / ((h - size + 1) * (w - size + 1))
    seeds_shape = torch.Size([*x.shape[:-2], h - size + 1, w - size + 1])
    seeds = (hashed_uniform(seeds_shape, key, x.device, x.dtype) < gamma).to(x.dtype)
    # a seed at (i, j) covers [i, i+size) x [j, j+size): pad by size−1 and take the window max
    blocks = F.max_pool2d(F.pad(seeds, [size - 1] * 4), size, stride=1)
    keep = 1 - blocks
    return x * keep * (keep.numel() / keep.sum().clamp(min=1))


class ConvNorm(nn.Module):
    """k x k convolution (no bias) -> BatchStatNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
        self.norm = BatchStatNorm(out_channels)

    def forward(self, x: torch.Tensor, stats: Stats | None = None) -> tuple[torch.Tensor, Stats]:
        """x: [N, C_in, H, W] -> ([N, C_out, H, W], the (mean, var) used)."""
        return self.norm(self.conv(x), stats)


class ResidualBlock(nn.Module):
    """Three 3x3 ConvNorms with LeakyReLU(0.1), a 1x1 ConvNorm shortcut, 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.ModuleList(
            ConvNorm(c, out_channels, 3) for c in (in_channels, out_channels, out_channels)
        )
        self.shortcut = ConvNorm(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, stats: list[Stats] | None = None) -> tuple[torch.Tensor, list[Stats]]:
        """x: [N, C_in, H, W] -> ([N, C_out, H // 2, W // 2], the 4 (mean, var) used)."""
        used: list[Stats] = []
        out = x
        for k, layer in enumerate(self.convs):
            out, s = layer(out, None if stats is None else stats[k])
            used.append(s)
            if k < 2:
                out = F.leaky_relu(out, 0.1)
        short, s = self.shortcut(x, None if stats is None else stats[3])
        used.append(s)
        return F.max_pool2d(F.leaky_relu(out + short, 0.1), 2), used


class ResNet12(nn.Module):
    """ResNet-12 (see the module docstring) with one output per way."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        ways: int,
        widths: tuple[int, ...] = (64, 160, 320, 640),
        head: str = "linear",
        cosine_scale: float = 10.0,
        drop_rate: float = 0.0,
        drop_size: int = 5,
    ):
        super().__init__()
        self.image_size, self.in_channels = image_size, in_channels
        self.drop_rate, self.drop_size = drop_rate, drop_size
        channels = [in_channels, *widths]
        self.blocks = nn.ModuleList(ResidualBlock(a, b) for a, b in itertools.pairwise(channels))
        self.head: nn.Module = (
            CosineHead(widths[-1], ways, cosine_scale) if head == "cosine" else nn.Linear(widths[-1], ways)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He init for the leaky ReLU, as MetaOptNet
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
        self._training_key: tuple[int, int] | None = None
        self._drop_calls = 0

    def features(
        self, x: torch.Tensor, norm_stats: NormStats | None = None
    ) -> tuple[torch.Tensor, NormStats]:
        """x: [N, C, H, W] -> (globally average-pooled features [N, widths[-1]], the statistics of
        every norm layer, 4 per block)."""
        used: NormStats = []
        for i, block in enumerate(self.blocks):
            x, stats = block(x, None if norm_stats is None else norm_stats[4 * i : 4 * i + 4])
            used += stats
            if i in DROPBLOCK_BLOCKS:
                x = self._maybe_drop(x)
        return x.mean(dim=(2, 3)), used

    def _maybe_drop(self, x: torch.Tensor) -> torch.Tensor:
        if self._training_key is None or self.drop_rate == 0:
            return x
        seed, iteration = self._training_key
        key = zlib.crc32(f"{seed}/{iteration}/{self._drop_calls}".encode()) & _MASK31
        self._drop_calls += 1
        return dropblock(x, self.drop_rate, self.drop_size, key)

    def forward(
        self,
        x: torch.Tensor,
        norm_stats: NormStats | None = None,
        return_stats: bool = False,
        embed: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, NormStats]:
        """x: [N, C, H, W] -> logits [N, ways], or the features [N, widths[-1]] if `embed` (and the
        norm statistics used, if `return_stats`); batch statistics unless `norm_stats` is given."""
        features, used = self.features(x, norm_stats)
        out = features if embed else self.head(features)
        return (out, used) if return_stats else out

    # -- capabilities the learner and the memory budget ask every backbone for ----------------

    @contextmanager
    def meta_training(self, seed: int, iteration: int) -> Iterator[None]:
        """Meta-training's forward passes of meta-batch `iteration`: DropBlock is active inside,
        its masks a function of (seed, iteration, call order) only."""
        saved = self._training_key, self._drop_calls
        self._training_key, self._drop_calls = (seed, iteration), 0
        try:
            yield
        finally:
            self._training_key, self._drop_calls = saved

    def activation_elements(self, pictures: int) -> int:
        """Elements of the input and of every convolution's output (three and the shortcut's per
        block, before pooling) for `pictures` pictures of image_size²."""
        size, total = self.image_size, self.in_channels * self.image_size**2
        blocks: list[ResidualBlock] = list(self.blocks)  # type: ignore[arg-type]
        for block in blocks:
            total += 4 * block.shortcut.conv.out_channels * size**2
            size //= 2
        return total * pictures

    def task_forward(self) -> TaskForward | None:
        """None: the fused task-batched kernels are Conv-4's only (MAML runs under vmap)."""
        return None
