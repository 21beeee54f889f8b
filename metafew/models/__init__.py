"""Backbones (a name -> builder registry) and the model as a pure function of its parameters.

A backbone declares its own capabilities instead of being recognised by type elsewhere:
`activation_elements(pictures)` sizes the memory budget, `task_forward()` gives its
task-batched form (T tasks in one pass) or None, `meta_training(seed, iteration)` is the scope of
meta-training's forward passes (where DropBlock acts). `build_model` dispatches on `model.name`
through `BACKBONES`, whose entries also check their config at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn
from torch.func import functional_call

from metafew.config.schema import Config, ModelConfig
from metafew.errors import ConfigError
from metafew.functional import Params, TaskForward
from metafew.models.conv4 import BatchStatNorm, Conv4, NormStats
from metafew.models.resnet12 import ResNet12, parse_widths


class Backbone(Protocol):
    """What the learner, the memory budget and the algorithms need of a model: an `nn.Module`
    whose forward is `(x, norm_stats=None, return_stats=False, embed=False)`, with its head's
    parameters under `head.` and its norm layers' under `...norm.`, and these."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The forward pass (nn.Module's)."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The module's parameters (nn.Module's)."""
        ...

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Any:
        """(name, parameter) pairs (nn.Module's)."""
        ...

    def eval(self) -> Any:
        """The module in eval mode (nn.Module's; no backbone here behaves differently in it)."""
        ...

    def activation_elements(self, pictures: int) -> int:
        """Elements of one copy of the activations of `pictures` pictures."""
        ...

    def task_forward(self) -> TaskForward | None:
        """The task-batched form, where the backbone has one."""
        ...

    def meta_training(self, seed: int, iteration: int) -> AbstractContextManager[None]:
        """Inside: the forward passes of meta-training's meta-batch `iteration`, where regularisers
        that act only while training (DropBlock) are on, seeded by (seed, iteration)."""
        ...


if TYPE_CHECKING:

    class BackboneModule(nn.Module):
        """For the type checker only: what `build_model` returns, an nn.Module that is also a
        Backbone (the backbones do not inherit from it; they fulfil Backbone structurally)."""

        def activation_elements(self, pictures: int) -> int: ...

        def task_forward(self) -> TaskForward | None: ...

        def meta_training(self, seed: int, iteration: int) -> AbstractContextManager[None]: ...


def downsampled_size(image_size: int, layers: int, pool: str) -> int:
    """Side of the feature map after `layers` halving blocks (max-pool floors, stride-2 ceils)."""
    size = image_size
    for _ in range(layers):
        size = (size + 1) // 2 if pool == "stride" else size // 2
    return size


def _check_conv4(cfg: ModelConfig, image_size: int) -> None:
    if downsampled_size(image_size, cfg.layers, cfg.pool) < 1:
        raise ConfigError(
            f"model.layers = {cfg.layers}: data.image_size = {image_size} is too small for that many "
            "downsampling blocks; use fewer layers or larger images"
        )
    if cfg.dropblock:
        raise ConfigError(
            f"model.dropblock = {cfg.dropblock:g}: DropBlock is part of model.name=resnet12 only; "
            "use model.dropblock=0 with conv4"
        )


def _build_conv4(cfg: ModelConfig, in_channels: int, image_size: int, ways: int) -> nn.Module:
    return Conv4(in_channels, image_size, ways, cfg.hidden, cfg.layers, cfg.pool, cfg.head, cfg.cosine_scale)


def _check_resnet12(cfg: ModelConfig, image_size: int) -> None:
    parse_widths(cfg.widths)
    if image_size < 16:
        raise ConfigError(
            f"data.image_size = {image_size}: model.name = resnet12 halves the pictures 4 times and "
            "needs data.image_size >= 16"
        )


def _build_resnet12(cfg: ModelConfig, in_channels: int, image_size: int, ways: int) -> nn.Module:
    widths = tuple(parse_widths(cfg.widths))
    return ResNet12(
        in_channels, image_size, ways, widths, cfg.head, cfg.cosine_scale, cfg.dropblock, cfg.dropblock_size
    )


@dataclass(frozen=True)
class BackboneEntry:
    """How to build a backbone, and the checks of its config run at load time."""

    build: Callable[[ModelConfig, int, int, int], nn.Module]
    """build(model config, in_channels, image_size, ways) -> the module (a Backbone)."""
    check: Callable[[ModelConfig, int], None]
    """check(model config, image_size): ConfigError naming the key, before anything is built."""


BACKBONES: dict[str, BackboneEntry] = {
    "conv4": BackboneEntry(_build_conv4, _check_conv4),
    "resnet12": BackboneEntry(_build_resnet12, _check_resnet12),
}
"""Every backbone, by the name used in `model.name` (its choices in the schema)."""


def check_model(cfg: ModelConfig, image_size: int) -> None:
    """ConfigError naming the key where `cfg` does not fit its backbone or the image size."""
    BACKBONES[cfg.name].check(cfg, image_size)


def build_model(cfg: ModelConfig, in_channels: int, image_size: int, ways: int) -> BackboneModule:
    """The backbone `cfg.name` for inputs [N, in_channels, image_size, image_size]."""
    check_model(cfg, image_size)  # also done at config load
    return cast("BackboneModule", BACKBONES[cfg.name].build(cfg, in_channels, image_size, ways))


def parameter_count(cfg: Config) -> int:
    """Number of parameters of cfg's model (its head included, the algorithm's `algo.*` tensors
    not), from a model built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.data.channels, cfg.data.image_size, cfg.task.ways)
    return sum(p.numel() for p in model.parameters())


class ModelFunction:
    """The model as a pure function of its parameters (metafew.functional.Forward), with
    `tasks`, its task-batched form, or None where the backbone has none."""

    def __init__(self, model: Backbone):
        self.model = model
        self.tasks: TaskForward | None = model.task_forward()

    def __call__(
        self,
        params: Params,
        x: torch.Tensor,
        norm_stats: NormStats | None = None,
        return_stats: bool = False,
        embed: bool = False,
    ) -> Any:
        kwargs = {"norm_stats": norm_stats, "return_stats": return_stats, "embed": embed}
        return functional_call(cast(nn.Module, self.model), params, (x,), kwargs)

    def meta_training(self, seed: int, iteration: int) -> AbstractContextManager[None]:
        """Inside: meta-training's forward passes of meta-batch `iteration` (the backbone's
        `meta_training`: DropBlock on, seeded by (seed, iteration)); outside, every forward is
        the deterministic one that evaluation, fine-tuning and prediction use."""
        return self.model.meta_training(seed, iteration)


def make_forward(model: Backbone) -> ModelFunction:
    """The model as a pure function of its parameters (with `.tasks`, see ModelFunction)."""
    return ModelFunction(model)


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneEntry",
    "BatchStatNorm",
    "Conv4",
    "ModelFunction",
    "NormStats",
    "ResNet12",
    "build_model",
    "check_model",
    "downsampled_size",
    "make_forward",
    "parameter_count",
]
