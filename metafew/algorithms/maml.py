"""MAML and first-order MAML.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017 (arXiv:1703.03400).

Inner loop, for each task i with support set S_i and query set Q_i (α = `inner_lr`):
    φ_i⁰ = θ,   φ_iᵏ⁺¹ = φ_iᵏ − α ∇_φ L_{S_i}(φ_iᵏ)          (k < `inner_steps`)
Outer objective (β = `train.outer_lr`, applied by the engine's Adam):
    θ ← θ − β ∇_θ (1/T) Σ_i L_{Q_i}(φ_i)
The meta-gradient back-propagates through the inner steps (Hessian-vector products). With
`first_order: true` the inner gradients are treated as constants, which drops those terms
(first-order MAML, section 5.2 of the paper); the code path is otherwise the same.
"""

from __future__ import annotations

import torch
from torch.func import grad

from metafew.algorithms.base import MetaStep, mean_task_gradients
from metafew.config import AlgorithmConfig
from metafew.functional import Forward, Params, detach, loss_and_accuracy, sgd_step
from metafew.tasks import Episode


class MAML:
    """MAML on a pure `forward(params, x)`; see the module docstring for the update rule."""

    def __init__(self, cfg: AlgorithmConfig, forward: Forward, batching: str = "loop", chunk_size: int = 0):
        self.cfg, self.forward = cfg, forward
        self.batching, self.chunk_size = batching, chunk_size

    def support_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the support set: x [S, C, H, W], y [S]."""
        return loss_and_accuracy(self.forward(params, x), y)[0]

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int,
        lr: float,
        first_order: bool = False,
    ) -> Params:
        """`steps` plain SGD steps of size `lr` on the support loss; differentiable w.r.t.
        `params` (second order) unless `first_order`. support_x: [S, C, H, W], support_y: [S]."""
        inner_grad = grad(self.support_loss)
        for _ in range(steps):
            grads = inner_grad(params, support_x, support_y)
            params = sgd_step(params, detach(grads) if first_order else grads, lr)
        return params

    def task_loss(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One task, as a pure function of θ: adapt on the support, score the query.
        Returns (query loss, query accuracy), scalars."""
        cfg = self.cfg
        adapted = self.adapt(params, support_x, support_y, cfg.inner_steps, cfg.inner_lr, cfg.first_order)
        return loss_and_accuracy(self.forward(adapted, query_x), query_y)

    def meta_gradients(self, params: Params, episodes: list[Episode]) -> MetaStep:
        """∇_θ of the mean query loss over `episodes` (second order unless cfg.first_order)."""
        return mean_task_gradients(self.task_loss, params, episodes, self.batching, self.chunk_size)
