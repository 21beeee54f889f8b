"""Backbones (a name -> builder registry) and the model as a pure function of its parameters.

A backbone declares its own capabilities instead of being recognised by type elsewhere:
`activation_elements(pictures)` sizes the memory budget, `task_forward()` gives its
task-batched form (T tasks in one pass) or None.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call

from metafew.config.schema import ModelConfig
from metafew.errors import ConfigError
from metafew.functional import Params, TaskForward
from metafew.models.conv4 import BatchStatNorm, Conv4, NormStats


class Backbone(Protocol):
    """What the learner, the memory budget and the algorithms need of a model: an `nn.Module`
    whose forward is `(x, norm_stats=None, return_stats=False, embed=False)`, and these."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The module's parameters (nn.Module's)."""
        ...

    def activation_elements(self, pictures: int) -> int:
        """Elements of one copy of the activations of `pictures` pictures."""
        ...

    def task_forward(self) -> TaskForward | None:
        """The task-batched form, where the backbone has one."""
        ...


def downsampled_size(image_size: int, layers: int, pool: str) -> int:
    """Side of the feature map after `layers` halving blocks (max-pool floors, stride-2 ceils)."""
    size = image_size
    for _ in range(layers):
        size = (size + 1) // 2 if pool == "stride" else size // 2
    return size


def build_model(cfg: ModelConfig, in_channels: int, image_size: int, ways: int) -> Conv4:
    """The backbone `cfg.name` for inputs [N, in_channels, image_size, image_size]."""
    if downsampled_size(image_size, cfg.layers, cfg.pool) < 1:  # also refused at config load
        raise ConfigError(
            f"model.layers = {cfg.layers}: data.image_size = {image_size} is too small for that many "
            "downsampling blocks; use fewer layers or larger images"
        )
    return Conv4(in_channels, image_size, ways, cfg.hidden, cfg.layers, cfg.pool, cfg.head, cfg.cosine_scale)


class ModelFunction:
    """The model as a pure function of its parameters (metafew.functional.Forward), with
    `tasks`, its task-batched form, or None where the backbone has none."""

    def __init__(self, model: Conv4):
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
        return functional_call(self.model, params, (x,), kwargs)


def make_forward(model: Conv4) -> ModelFunction:
    """The model as a pure function of its parameters (with `.tasks`, see ModelFunction)."""
    return ModelFunction(model)


__all__ = [
    "Backbone",
    "BatchStatNorm",
    "Conv4",
    "ModelFunction",
    "NormStats",
    "build_model",
    "downsampled_size",
    "make_forward",
]
