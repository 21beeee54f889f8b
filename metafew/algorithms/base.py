"""The contract every algorithm fulfils, and how a meta-batch of tasks is run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch.func import vmap

from metafew.functional import Params
from metafew.tasks import Episode, stack_episodes

TaskFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""task_fn(params, support_x, support_y, query_x, query_y) -> (query loss, query accuracy)."""


@dataclass(frozen=True)
class MetaStep:
    """The result of one meta-batch: gradients of the mean task loss w.r.t. the parameters,
    and per-task query losses and accuracies ([tasks] each, detached)."""

    grads: Params
    losses: torch.Tensor
    accuracies: torch.Tensor


class Algorithm(Protocol):
    """A meta-learning algorithm. It produces meta-gradients; the engine owns the outer optimizer.

    `params` always holds the model's parameters plus the `algo.*` tensors the algorithm asked
    for in `init_meta_params` (learned learning rates, per-step BatchNorm, a pre-training head).
    """

    def init_meta_params(self, params: Params) -> Params:
        """Initial values of the algorithm's own meta-learned tensors (keys `algo.*`), or {}."""
        ...

    def meta_gradients(self, params: Params, episodes: list[Episode], iteration: int) -> MetaStep:
        """Gradients (or pseudo-gradients) of meta-batch `iteration` w.r.t. `params`."""
        ...

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int,
        lr: float | None = None,
    ) -> Params:
        """Model parameters for the task whose support set is given (`lr` None: the algorithm's
        own step size); the result goes straight into `forward`."""
        ...


@runtime_checkable
class BatchedEvaluator(Protocol):
    """An algorithm that can also adapt and score many test episodes in one task-batched pass
    (MAML's family on a backbone with a task-batched form); evaluation uses it when present."""

    def task_accuracies(
        self, params: Params, stacked: tuple[torch.Tensor, ...], steps: int, lr: float | None = None
    ) -> torch.Tensor | None:
        """Query accuracy [T] of T stacked episodes (`stack_episodes`' [T, N, ...] tensors) after
        `steps` inner steps, BatchNorm on batch statistics; None where the model has no
        task-batched form."""
        ...


def resolve_batching(batching: str, fusable: bool) -> str:
    """The batching a meta-batch really runs with: `auto` is `fused` where the algorithm and model
    have a task-batched form (`fusable`), else `loop`; `fused` without one falls back to `vmap`."""
    if batching in ("auto", "fused") and fusable:
        return "fused"
    return {"auto": "loop", "fused": "vmap"}.get(batching, batching)


def mean_task_gradients(
    task_fn: TaskFn, params: Params, episodes: list[Episode], batching: str, chunk_size: int
) -> MetaStep:
    """Run `task_fn` on every episode and differentiate the mean query loss.

    batching "loop" runs one task at a time and frees its graph before the next (least memory);
    "vmap" runs `chunk_size` tasks per vectorized call (0: all at once); "fused" hands each chunk
    of stacked tasks ([T, ...] tensors) to `task_fn` itself, which returns [T] losses and
    accuracies. The gradients are the same either way: each chunk contributes sum(its losses) / tasks.
    """
    leaves = list(params.values())
    step = 1 if batching == "loop" else (chunk_size or len(episodes))
    grads: list[torch.Tensor] | None = None
    losses, accuracies = [], []
    for start in range(0, len(episodes), step):
        chunk = episodes[start : start + step]
        if batching == "loop":
            loss, acc = task_fn(params, *chunk[0].as_tuple())
            loss, acc = loss[None], acc[None]
        elif batching == "fused":
            loss, acc = task_fn(params, *stack_episodes(chunk))
        else:
            loss, acc = vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(params, *stack_episodes(chunk))
        # some tensors may go unused (BNWB replaces the model's own BatchNorm): zero gradient
        part = torch.autograd.grad(
            loss.sum() / len(episodes), leaves, allow_unused=True, materialize_grads=True
        )
        grads = list(part) if grads is None else [g + p for g, p in zip(grads, part)]
        losses.append(loss.detach())
        accuracies.append(acc.detach())
    assert grads is not None  # episodes is never empty: meta_batch_size >= 1
    return MetaStep(dict(zip(params, grads)), torch.cat(losses), torch.cat(accuracies))
