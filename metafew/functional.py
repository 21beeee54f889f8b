"""Pure maths on parameter dicts (`dict[str, Tensor]`); nothing here mutates its inputs."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]

TaskForward = Callable[[Params, torch.Tensor], torch.Tensor]
"""tasks(params, x [N, T, C, H, W]) -> logits [N, T, ways]: T tasks in one pass, each with its own
BatchNorm statistics; a tensor of `params` is shared (the parameter's shape) or per task [T, ...]."""


class Forward(Protocol):
    """A model as a pure function of its parameters (metafew.models.ModelFunction is one):
    forward(params, x [N, C, H, W], norm_stats=None, return_stats=False, embed=False) -> logits
    [N, ways] (features [N, F] when embed; with the NormStats used when return_stats). `params`
    holds model parameters only (see `model_params`). `tasks` is its task-batched form, or None."""

    tasks: TaskForward | None

    def __call__(
        self,
        params: Params,
        x: torch.Tensor,
        norm_stats: Any = None,
        return_stats: bool = False,
        embed: bool = False,
    ) -> Any: ...

    def meta_training(self, seed: int, iteration: int) -> AbstractContextManager[None]:
        """The scope of meta-training's forward passes of outer step `iteration` (DropBlock on,
        its masks a function of (seed, iteration)); every other forward is deterministic."""
        ...


META_PREFIX = "algo."
"""Keys of meta-learned tensors an algorithm owns (learning rates, per-step BatchNorm, ...)."""


def model_params(params: Params) -> Params:
    """The model's own parameters, without the algorithm's `algo.*` tensors."""
    return {k: v for k, v in params.items() if not k.startswith(META_PREFIX)}


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    """θ' = θ − lr·g, key by key."""
    return {k: p - lr * grads[k] for k, p in params.items()}


def detach(params: Params) -> Params:
    """The same values cut from the autograd graph (first-order MAML's inner gradients)."""
    return {k: p.detach() for k, p in params.items()}


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, ways], labels [N] -> (mean cross-entropy, fraction correct), both scalars."""
    accuracy = (logits.argmax(dim=-1) == labels).float().mean()
    return F.cross_entropy(logits, labels), accuracy


def pictures_first(*stacked: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Stacked tasks [T, N, ...] -> [N, T, ...] (contiguous), the layout of a TaskForward."""
    return tuple(t.transpose(0, 1).contiguous() for t in stacked)


def task_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, T, ways], labels [N, T] -> (mean cross-entropy [T], fraction correct [T]) per task."""
    accuracy = (logits.argmax(dim=-1) == labels).float().mean(0)
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(0), accuracy


def tree_sub(a: Params, b: Params) -> Params:
    """a − b, key by key."""
    return {k: a[k] - b[k] for k in a}


AdamState = tuple[Params, Params, int]
"""(first moments m, second moments v, steps taken t) of a functional Adam."""


def adam_init(params: Params) -> AdamState:
    """Adam's state before its first step: zero moments, t = 0."""
    zeros = {k: torch.zeros_like(p) for k, p in params.items()}
    return zeros, dict(zeros), 0


def adam_step(
    params: Params,
    grads: Params,
    state: AdamState,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[Params, AdamState]:
    """One Adam step (Kingma & Ba 2015, Algorithm 1; the update torch.optim.Adam makes):
    m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²,  θ ← θ − lr·m̂ / (√v̂ + eps)
    with the bias-corrected m̂ = m / (1−β1ᵗ), v̂ = v / (1−β2ᵗ). Returns (θ', new state)."""
    m, v, t = state
    t += 1
    b1, b2 = betas
    m = {k: b1 * m[k] + (1 - b1) * g for k, g in grads.items()}
    v = {k: b2 * v[k] + (1 - b2) * g * g for k, g in grads.items()}
    c1, c2 = 1 - b1**t, 1 - b2**t
    new = {k: p - lr * (m[k] / c1) / (torch.sqrt(v[k] / c2) + eps) for k, p in params.items()}
    return new, (m, v, t)
