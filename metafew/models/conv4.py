"""The Conv-4 backbone. Every layer is written with plain tensor ops so that it works under torch.func
(functional_call, grad, vmap) and gives exact higher-order gradients.

BatchNorm uses batch statistics, as in the MAML paper (Finn et al. 2017, code release): there are
no running statistics, so evaluation on a query batch is transductive. Statistics can instead be
passed in (`norm_stats`), which makes a prediction independent of the other pictures in its batch.
Why not `nn.BatchNorm2d`: under vmap its functional kernel gave a second-order meta-gradient 17%
off finite differences in float64, while `var_mean` + arithmetic is exact (tests check this).
"""

from __future__ import annotations

import contextlib
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from metafew.functional import TaskForward
from metafew.models.fused import task_batched_forward

NormStats = list[tuple[torch.Tensor, torch.Tensor]]
"""Per normalisation layer: (mean [1, C, 1, 1], var [1, C, 1, 1])."""


class BatchStatNorm(nn.Module):
    """Affine BatchNorm over (N, H, W) of [N, C, H, W] input using batch statistics or given ones."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: [N, C, H, W] -> (normalised x, the (mean, var) used)."""
        if stats is None:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0, keepdim=True)
        else:
            mean, var = stats
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        # x·scale + shift is one fused pass in the forward and fewer passes in the (double)
        # backward than (x − mean)·scale + bias; the same function
        return torch.addcmul(self.bias.view(1, -1, 1, 1) - mean * scale, x, scale), (mean, var)


class ConvBlock(nn.Module):
    """3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool (or stride-2 conv without pooling)."""

    def __init__(self, in_channels: int, out_channels: int, pool: str):
        super().__init__()
        self.stride = 2 if pool == "stride" else 1
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=self.stride, padding=1)
        self.norm = BatchStatNorm(out_channels)

    def forward(
        self, x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x, used = self.norm(self.conv(x), stats)
        x = F.relu(x)
        if self.stride == 1:
            x = F.max_pool2d(x, 2)
        return x, used


class CosineHead(nn.Module):
    """Baseline++'s classifier (Chen et al. 2019): logits = scale · cos(feature, class weight)."""

    def __init__(self, features: int, ways: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(ways, features) / features**0.5)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, F] -> logits [N, ways]."""
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


class Conv4(nn.Module):
    """The few-shot Conv-4 (Vinyals et al. 2016; Finn et al. 2017): `layers` conv blocks of
    `hidden` filters and a linear head with one output per way."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        ways: int,
        hidden: int = 64,
        layers: int = 4,
        pool: str = "max",
        head: str = "linear",
        cosine_scale: float = 10.0,
    ):
        super().__init__()
        self.image_size = image_size
        channels = [in_channels] + [hidden] * layers
        self.blocks = nn.ModuleList(ConvBlock(a, b, pool) for a, b in itertools.pairwise(channels))
        with torch.no_grad():
            features = self.features(torch.zeros(2, in_channels, image_size, image_size))[0].shape[1]
        self.head: nn.Module = (
            CosineHead(features, ways, cosine_scale) if head == "cosine" else nn.Linear(features, ways)
        )

    def features(
        self, x: torch.Tensor, norm_stats: NormStats | None = None
    ) -> tuple[torch.Tensor, NormStats]:
        """x: [N, C, H, W] -> (flattened features [N, F], the statistics each norm layer used)."""
        used: NormStats = []
        for k, block in enumerate(self.blocks):
            x, stats = block(x, None if norm_stats is None else norm_stats[k])
            used.append(stats)
        return x.flatten(1), used

    def forward(
        self,
        x: torch.Tensor,
        norm_stats: NormStats | None = None,
        return_stats: bool = False,
        embed: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, NormStats]:
        """x: [N, C, H, W] -> logits [N, ways], or the features [N, F] if `embed` (and the norm
        statistics used, if `return_stats`); batch statistics unless `norm_stats` is given."""
        features, used = self.features(x, norm_stats)
        out = features if embed else self.head(features)
        return (out, used) if return_stats else out

    # -- capabilities the learner and the memory budget ask every backbone for ----------------

    def activation_elements(self, pictures: int) -> int:
        """Elements of the input and of every convolution's output for `pictures` pictures of
        image_size² (one copy; before max-pooling, the larger)."""
        blocks: list[ConvBlock] = list(self.blocks)  # type: ignore[arg-type]
        size = self.image_size
        total = blocks[0].conv.in_channels * size**2
        for block in blocks:
            conv_size = (size + 1) // 2 if block.stride == 2 else size
            total += block.conv.out_channels * conv_size**2
            size = conv_size if block.stride == 2 else conv_size // 2
        return total * pictures

    def meta_training(self, seed: int, iteration: int) -> contextlib.AbstractContextManager[None]:
        """Meta-training's forward passes of meta-batch `iteration`: Conv-4 has no regulariser that
        acts only while training, so nothing changes."""
        return contextlib.nullcontext()

    def task_forward(self) -> TaskForward | None:
        """The task-batched form (metafew.models.fused), which exists for the linear head only."""
        if not isinstance(self.head, nn.Linear):
            return None
        blocks: list[ConvBlock] = list(self.blocks)  # type: ignore[arg-type]
        layout = [(block.stride, block.norm.eps) for block in blocks]
        return lambda params, x: task_batched_forward(layout, params, x)
