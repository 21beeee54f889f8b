"""Reptile — Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms" 2018
(arXiv:1803.02999), Algorithm 2 (batched; serial = meta_batch_size 1).

For each task i of a meta-batch of T, starting from φ_i = θ, take k = `inner_steps` steps of SGD
or Adam with step size α = `inner_lr` on mini-batches of `reptile.inner_batch_size` pictures of the
task (support + query when `reptile.use_query`, as the paper trains on the whole task):
    φ_i ← U_τi^k(θ)
    θ  ← θ + ε · (1/T) Σ_i (φ_i − θ)
The algorithm returns the pseudo-gradient g = θ − (1/T) Σ_i φ_i, so the engine's plain SGD step
θ − ε·g is exactly that interpolation (`train.optimizer: sgd`, ε = `train.outer_lr`; the paper's
linear annealing of ε is `train.lr_schedule: linear`). Another outer optimizer (Adam) treats g
as a gradient, an option the paper mentions after Algorithm 1.

Mini-batches cycle through shuffled copies of the task's pictures (a fresh permutation each pass,
batches may span two passes), as `_mini_batches` in the authors' code (openai/supervised-reptile).
The order of task i of iteration t is a function of (train.seed, t, i) only, i being the task's
index in the episode stream, so a resumed run is identical and a torchrun job, whose processes
each take a share of the meta-batch, draws the same orders as one process. The inner Adam uses
β1 = 0, β2 = 0.999, eps = 1e-8 as the authors' code (eps placed as torch.optim.Adam places it).
Unlike that code, whose Adam moments persist across tasks, every
task starts from fresh Adam state, so that adaptation stays a pure function of θ and the task.

At test time `adapt` runs the same inner loop on the support set (all of it each step when it is
no larger than a mini-batch) with a fixed mini-batch order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.func import grad, vmap

from metafew.algorithms.base import MetaStep, resolve_batching
from metafew.config import AlgorithmConfig
from metafew.functional import (
    Forward,
    Params,
    adam_init,
    adam_step,
    detach,
    loss_and_accuracy,
    model_params,
    sgd_step,
    tree_sub,
)
from metafew.tasks import Episode, stack_episodes

ADAM_BETAS = (0.0, 0.999)
"""The inner Adam's (β1, β2), as in the authors' code (β1 = 0)."""

_TRAIN_STREAM, _ADAPT_STREAM = 1, 2
"""Tags that keep the mini-batch orders of meta-training and adaptation apart. (NumPy's seed
sequences treat trailing zero words as absent, so [seed] and [seed, 0, 0] would collide.)"""


def minibatch_indices(pictures: int, batch_size: int, steps: int, rng: np.random.Generator) -> torch.Tensor:
    """Indices of the pictures each inner step trains on: [steps, b] int64.

    batch_size 0 or >= pictures: every step uses all pictures (b = pictures, in order). Otherwise
    b = batch_size and the rows cycle through fresh permutations of range(pictures)."""
    if batch_size == 0 or batch_size >= pictures:
        return torch.arange(pictures).repeat(steps, 1)
    passes = max(1, -(-steps * batch_size // pictures))  # at least one, so that steps = 0 works
    order = np.concatenate([rng.permutation(pictures) for _ in range(passes)])
    return torch.from_numpy(order[: steps * batch_size].reshape(steps, batch_size))


def train_rng(seed: int, iteration: int, task: int) -> np.random.Generator:
    """The mini-batch order generator of task `task` (0-based, in its meta-batch) of `iteration`."""
    return np.random.default_rng([seed, _TRAIN_STREAM, iteration, task])


class Reptile:
    """Reptile on a pure `forward(params, x)`; see the module docstring."""

    def __init__(
        self,
        cfg: AlgorithmConfig,
        forward: Forward,
        batching: str = "loop",
        chunk_size: int = 0,
        seed: int = 0,
    ):
        self.cfg, self.forward = cfg, forward
        self.batching, self.chunk_size, self.seed = resolve_batching(batching, False), chunk_size, seed

    def init_meta_params(self, params: Params) -> Params:
        """Reptile meta-learns only the model's initialisation: no `algo.*` tensors."""
        return {}

    def inner_loop(
        self, weights: Params, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor, lr: float
    ) -> Params:
        """φ after one SGD or Adam step per row of `batches` [steps, b] (indices into x [N, C, H, W]
        and y [N]), starting from `weights` with fresh optimizer state."""

        def loss(w: Params, bx: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
            return loss_and_accuracy(self.forward(w, bx), by)[0]

        adam = self.cfg.reptile.inner_optimizer == "adam"
        state = adam_init(weights) if adam else None
        for step in range(batches.shape[0]):
            idx = batches[step]
            grads = grad(loss)(weights, x[idx], y[idx])
            if state is not None:
                weights, state = adam_step(weights, grads, state, lr, ADAM_BETAS)
            else:
                weights = sgd_step(weights, grads, lr)
        return weights

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int,
        lr: float | None = None,
    ) -> Params:
        """φ after `steps` inner steps on the support set (support_x [S, C, H, W], support_y [S])."""
        rng = np.random.default_rng([self.seed, _ADAPT_STREAM])
        batches = minibatch_indices(support_x.shape[0], self.cfg.reptile.inner_batch_size, steps, rng)
        lr = self.cfg.inner_lr if lr is None else lr
        return self.inner_loop(model_params(params), support_x, support_y, batches.to(support_x.device), lr)

    def task_batches(self, episode: Episode, iteration: int, task: int) -> torch.Tensor:
        """The inner mini-batch indices [inner_steps, b] of one meta-training task."""
        pictures = episode.support_x.shape[0]
        if self.cfg.reptile.use_query:
            pictures += episode.query_x.shape[0]
        rng = train_rng(self.seed, iteration, task)
        batches = minibatch_indices(pictures, self.cfg.reptile.inner_batch_size, self.cfg.inner_steps, rng)
        return batches.to(episode.support_x.device)

    def adapt_task(
        self,
        theta: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        batches: torch.Tensor,
    ) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """One meta-training task: (φ_i, query loss and query accuracy of φ_i). With `use_query`
        the query pictures are part of the inner loop's data, so these are training figures."""
        x, y = support_x, support_y
        if self.cfg.reptile.use_query:
            x, y = torch.cat([support_x, query_x]), torch.cat([support_y, query_y])
        phi = self.inner_loop(theta, x, y, batches, self.cfg.inner_lr)
        loss, accuracy = loss_and_accuracy(self.forward(phi, query_x), query_y)
        return phi, loss, accuracy

    def _adapt_chunk(
        self, theta: Params, episodes: list[Episode], batches: list[torch.Tensor]
    ) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """(φ stacked [t, ...], query losses [t], accuracies [t]) of a few tasks under vmap, or of
        one task without it (batching loop)."""
        if self.batching == "loop":
            phi, loss, acc = self.adapt_task(theta, *episodes[0].as_tuple(), batches[0])
            return {k: v[None] for k, v in phi.items()}, loss[None], acc[None]
        task_fn: Callable[..., Any] = vmap(self.adapt_task, in_dims=(None, 0, 0, 0, 0, 0))
        return task_fn(theta, *stack_episodes(episodes), torch.stack(batches))

    def adapt_tasks(
        self, theta: Params, episodes: list[Episode], batches: list[torch.Tensor]
    ) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """(Σ_i φ_i, query losses [T], accuracies [T]) over `episodes`: one task at a time
        (batching loop) or `chunk_size` tasks per vmap call (batching vmap)."""
        step = 1 if self.batching == "loop" else (self.chunk_size or len(episodes))
        parts = [
            self._adapt_chunk(theta, episodes[s : s + step], batches[s : s + step])
            for s in range(0, len(episodes), step)
        ]
        total = {k: torch.cat([phi[k] for phi, _, _ in parts]).sum(0) for k in theta}
        return total, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])

    def meta_gradients(self, params: Params, episodes: list[Episode], iteration: int = 0) -> MetaStep:
        """Pseudo-gradient θ − (1/T) Σ_i φ_i over the T `episodes`, with each task's query loss and
        accuracy after adaptation ([T] each)."""
        theta = detach(model_params(params))
        # a sampled task is known by its stream index, so every process of a torchrun job draws
        # the orders a single process would; hand-made episodes (index -1) by their position
        batches = [
            self.task_batches(ep, iteration, ep.index if ep.index >= 0 else i)
            for i, ep in enumerate(episodes)
        ]
        with torch.no_grad():  # no outer graph: nothing differentiates through the inner loop
            total, losses, accuracies = self.adapt_tasks(theta, episodes, batches)
        mean_phi = {k: v / len(episodes) for k, v in total.items()}
        return MetaStep(tree_sub(theta, mean_phi), losses, accuracies)
