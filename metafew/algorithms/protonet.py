"""Prototypical Networks — Snell, Swersky & Zemel, NeurIPS 2017 (arXiv:1703.05175).

An embedding f_θ (the backbone without its head, `forward(..., embed=True)`) is trained so that
a query is nearest to the mean embedding of its class. For a task with support S and query Q:
    c_k = (1/|S_k|) Σ_{(x, y) ∈ S, y = k} f_θ(x)                       (prototypes)
    p(y = k | x) = softmax_k(−‖f_θ(x) − c_k‖²)
    θ ← θ − β ∇_θ (1/T) Σ_i L_{Q_i},   L_Q = mean cross-entropy over Q     (β: the engine's optimizer)
There is no inner loop and there are no `algo.*` tensors; the model's head is unused while
training (its gradient is zero).

`adapt` writes the prototypes into the model's linear head, W = 2C, b = −‖c_k‖², so that the
adapted parameters work with a plain `forward`: f·2c_k − ‖c_k‖² = −‖f − c_k‖² + ‖f‖², and ‖f‖²
is the same for every class of a row, so softmax and argmax equal those of −squared distance.
Support and query pictures are embedded as separate batches (each with its own BatchNorm
statistics), which is how evaluation embeds them.
"""

from __future__ import annotations

import torch

from metafew.algorithms.base import MetaStep, mean_task_gradients, resolve_batching
from metafew.errors import ConfigError
from metafew.functional import Forward, Params, loss_and_accuracy, model_params
from metafew.tasks import Episode


def prototypes(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means c_k: features [S, F], labels [S] in 0..ways-1 -> [ways, F]."""
    onehot = (labels[:, None] == torch.arange(ways, device=labels.device)).to(features.dtype)
    return (onehot.T @ features) / onehot.sum(0)[:, None]


def squared_distances(features: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """‖f_n − c_k‖²: features [N, F], centers [K, F] -> [N, K]."""
    return ((features[:, None, :] - centers[None, :, :]) ** 2).sum(-1)


def prototype_head(centers: torch.Tensor) -> Params:
    """The linear head whose logits rank classes as −‖f − c_k‖² does: W = 2C [K, F],
    b = −‖c_k‖² [K]."""
    return {"head.weight": 2 * centers, "head.bias": -(centers**2).sum(-1)}


class ProtoNet:
    """Prototypical Networks on a pure `forward(params, x, embed=True)`; see the module docstring."""

    def __init__(
        self, forward: Forward, ways: int, head: str = "linear", batching: str = "loop", chunk_size: int = 0
    ):
        if head != "linear":
            raise ConfigError(
                f"algorithm.name = protonet needs a linear head to hold the prototypes, but model.head = "
                f"{head}; use model.head=linear"
            )
        self.forward, self.ways = forward, ways
        self.batching, self.chunk_size = batching, chunk_size

    def init_meta_params(self, params: Params) -> Params:
        """ProtoNet learns the embedding only: no `algo.*` tensors."""
        return {}

    def logits(
        self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """−‖f(x) − c_k‖² [N, ways] for pictures x [N, C, H, W] and the prototypes of the support
        set (support_x [S, C, H, W], support_y [S])."""
        weights = model_params(params)
        centers = prototypes(self.forward(weights, support_x, embed=True), support_y, self.ways)
        return -squared_distances(self.forward(weights, x, embed=True), centers)

    def task_loss(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean query cross-entropy, query accuracy) of one task."""
        return loss_and_accuracy(self.logits(params, support_x, support_y, query_x), query_y)

    def meta_gradients(self, params: Params, episodes: list[Episode], iteration: int = 0) -> MetaStep:
        """∇θ of the mean query loss over `episodes`; zero for the unused head (and anything else
        outside the embedding)."""
        body = {k: v for k, v in model_params(params).items() if not k.startswith("head.")}
        rest = {k: v.detach() for k, v in params.items() if k not in body}

        def task(p: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):
            return self.task_loss({**rest, **p}, sx, sy, qx, qy)

        step = mean_task_gradients(
            task, body, episodes, resolve_batching(self.batching, False), self.chunk_size
        )
        grads = {k: step.grads[k] if k in body else torch.zeros_like(v) for k, v in params.items()}
        return MetaStep(grads, step.losses, step.accuracies)

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int,
        lr: float | None = None,
    ) -> Params:
        """The embedding with the prototype head of the support set (support_x [S, C, H, W],
        support_y [S]); `steps` and `lr` are ignored (there is nothing to optimise)."""
        weights = model_params(params)
        centers = prototypes(self.forward(weights, support_x, embed=True), support_y, self.ways)
        return {**weights, **prototype_head(centers)}
