"""MAML, first-order MAML, ANIL, Meta-SGD and the MAML++ options: one inner loop.

MAML — Finn, Abbeel & Levine, ICML 2017 (arXiv:1703.03400). For task i with support S_i and
query Q_i (α = `inner_lr`, K = `inner_steps`):
    φ_i⁰ = θ,   φ_iᵏ⁺¹ = φ_iᵏ − α ∇_φ L_{S_i}(φ_iᵏ)
    θ ← θ − β ∇_θ (1/T) Σ_i L_{Q_i}(φ_iᴷ)          (β: the engine's outer optimizer)
The meta-gradient back-propagates through the inner steps; `first_order: true` treats the inner
gradients as constants (section 5.2 of the paper).

ANIL — Raghu, Raghu, Bengio & Vinyals, ICLR 2020 (arXiv:1909.09157): the inner loop adapts only
the head; the body is learned by the outer loop alone.

Meta-SGD — Li, Zhou, Chen & Li 2017 (arXiv:1707.09835): α becomes a meta-learned tensor of the
parameters' shape, φ = θ − α ∘ ∇L_S(θ), initialised at `inner_lr`.

MAML++ — Antoniou, Edwards & Storkey, ICLR 2019 (arXiv:1810.09502), as options of
`algorithm.maml`:
  multi_step_loss (MSL): L = Σ_k w_k(t) L_Q(φᵏ), with w uniform at first; every non-final weight
      decays linearly to 0.03/K over `msl_iterations`, the final one takes up the rest;
  learn_inner_lr (LSLR): one learned α per parameter tensor and inner step;
  per_step_bn (BNWB): BatchNorm weights and biases per inner step (step k's forward uses set k,
      the query forward set K); they are meta-learned, not adapted in the inner loop. There are no
      running statistics to keep per step, since BatchNorm always uses batch statistics here;
  first_order_iterations (DA): first-order for the first N outer iterations, then second order.
Cosine annealing of β is the engine's `train.lr_schedule: cosine`.
Past the trained number of steps (e.g. more steps at test time) LSLR and BNWB reuse the last
step's values.
"""

from __future__ import annotations

import torch
from torch.func import grad

from metafew.algorithms.base import MetaStep, mean_task_gradients, resolve_batching
from metafew.config import AlgorithmConfig
from metafew.functional import (
    Forward,
    Params,
    detach,
    loss_and_accuracy,
    model_params,
    pictures_first,
    task_losses,
)
from metafew.tasks import Episode


def msl_weights(steps: int, iteration: int, anneal_iterations: int) -> list[float]:
    """MAML++ multi-step loss weights for steps 1..K at outer `iteration` (sum to 1)."""
    if steps == 1:
        return [1.0]
    decay = (1.0 / steps) / anneal_iterations
    low = 0.03 / steps
    others = max(1.0 / steps - iteration * decay, low)
    return [others] * (steps - 1) + [1.0 - others * (steps - 1)]


class MAML:
    """The MAML family on a pure `forward(params, x)`; see the module docstring."""

    def __init__(
        self,
        cfg: AlgorithmConfig,
        forward: Forward,
        batching: str = "loop",
        chunk_size: int = 0,
        head_only: bool = False,
        per_parameter_lr: bool = False,
    ):
        self.cfg, self.forward = cfg, forward
        self.batching, self.chunk_size = batching, chunk_size
        self.head_only, self.per_parameter_lr = head_only, per_parameter_lr

    # -- parameters ------------------------------------------------------------------------

    def inner_keys(self, params: Params) -> list[str]:
        """The model parameters the inner loop adapts."""
        keys = [k for k in model_params(params) if not (self.head_only and not k.startswith("head."))]
        return [k for k in keys if not (self.cfg.maml.per_step_bn and ".norm." in k)]

    def init_meta_params(self, params: Params) -> Params:
        """Meta-SGD's per-element α, LSLR's per-layer per-step α, BNWB's per-step BatchNorm."""
        cfg, meta = self.cfg, {}
        for key in self.inner_keys(params):
            if self.per_parameter_lr:
                meta[f"algo.lr.{key}"] = torch.full_like(params[key].detach(), cfg.inner_lr)
            elif cfg.maml.learn_inner_lr:
                for step in range(cfg.inner_steps):
                    meta[f"algo.lr.{key}.{step}"] = torch.tensor(
                        cfg.inner_lr, dtype=params[key].dtype, device=params[key].device
                    )
        if cfg.maml.per_step_bn:
            for step in range(cfg.inner_steps + 1):
                for key in (k for k in model_params(params) if ".norm." in k):
                    meta[f"algo.bn.{step}.{key}"] = params[key].detach().clone()
        return meta

    def _lr(self, params: Params, key: str, step: int, override: float | None) -> torch.Tensor | float:
        if override is not None:
            return override
        if self.per_parameter_lr:
            return params[f"algo.lr.{key}"]
        if self.cfg.maml.learn_inner_lr:
            return params[f"algo.lr.{key}.{min(step, self.cfg.inner_steps - 1)}"]
        return self.cfg.inner_lr

    def _at_step(self, params: Params, weights: Params, step: int) -> Params:
        """Model weights for a forward pass at inner step `step` (BNWB swaps in set `step`)."""
        if not self.cfg.maml.per_step_bn:
            return weights
        s = min(step, self.cfg.inner_steps)
        return {k: params[f"algo.bn.{s}.{k}"] if ".norm." in k else v for k, v in weights.items()}

    # -- the inner loop --------------------------------------------------------------------

    def _loss(
        self, weights: Params, x: torch.Tensor, y: torch.Tensor, tasks: int
    ) -> tuple[torch.Tensor, ...]:
        """(loss, accuracy) of one task (x [N, C, H, W], y [N]: scalars), or with `tasks` > 0 of
        that many at once (x [N, T, C, H, W], y [N, T]: [T] each)."""
        if not tasks:
            return loss_and_accuracy(self.forward(weights, x), y)
        batched = self.forward.tasks
        assert batched is not None  # `fused` resolves to vmap for models without a batched form
        return task_losses(batched(weights, x), y)

    def inner_loop(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int,
        lr: float | None = None,
        first_order: bool = False,
        tasks: int = 0,
    ) -> list[Params]:
        """[φ⁰, ..., φᴷ]: the model weights before and after each inner SGD step, each ready for
        `forward`. support_x: [S, C, H, W], support_y: [S]; or, with `tasks` = T > 0, T tasks at
        once (support_x [S, T, C, H, W], support_y [S, T]; adapted tensors get a leading [T])."""
        weights = model_params(params)
        keys = self.inner_keys(params)
        if tasks:  # one copy of θ per task, so that the gradients below are per task
            weights |= {k: weights[k].expand(tasks, *weights[k].shape) for k in keys}
        trajectory = [self._at_step(params, weights, 0)]
        for step in range(steps):

            def support_loss(adapted: Params, step: int = step, weights: Params = weights) -> torch.Tensor:
                full = self._at_step(params, {**weights, **adapted}, step)
                return self._loss(full, support_x, support_y, tasks)[0].sum()

            grads = grad(support_loss)({k: weights[k] for k in keys})
            if first_order:
                grads = detach(grads)
            weights = {**weights, **{k: weights[k] - self._lr(params, k, step, lr) * grads[k] for k in keys}}
            trajectory.append(self._at_step(params, weights, step + 1))
        return trajectory

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int,
        lr: float | None = None,
    ) -> Params:
        """φᴷ for `steps` inner steps (differentiable w.r.t. `params`)."""
        return self.inner_loop(params, support_x, support_y, steps, lr)[-1]

    def task_accuracies(
        self, params: Params, stacked: tuple[torch.Tensor, ...], steps: int, lr: float | None = None
    ) -> torch.Tensor | None:
        """Query accuracy [T] of T stacked tasks (`stack_episodes`' [T, N, ...] tensors) after
        `steps` inner steps, in one task-batched pass with batch statistics (transductive);
        None where the model has no task-batched form."""
        if self.forward.tasks is None:
            return None
        sx, sy, qx, qy = pictures_first(*stacked)
        adapted = self.inner_loop(params, sx, sy, steps, lr, first_order=True, tasks=sy.shape[1])[-1]
        return self._loss(adapted, qx, qy, sy.shape[1])[1]

    # -- the outer objective ---------------------------------------------------------------

    def task_loss(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        iteration: int = 0,
        tasks: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One task as a pure function of `params`: (query loss, final query accuracy); with
        `tasks` > 0 that many at once, laid out as in `inner_loop` ([T] losses and accuracies)."""
        cfg = self.cfg
        first_order = cfg.first_order or iteration < cfg.maml.first_order_iterations
        trajectory = self.inner_loop(params, support_x, support_y, cfg.inner_steps, None, first_order, tasks)
        loss, accuracy = self._loss(trajectory[-1], query_x, query_y, tasks)
        if cfg.maml.multi_step_loss and cfg.inner_steps > 1:
            weights = msl_weights(cfg.inner_steps, iteration, cfg.maml.msl_iterations)
            loss = weights[-1] * loss
            for w, phi in zip(weights[:-1], trajectory[1:-1]):
                loss = loss + w * self._loss(phi, query_x, query_y, tasks)[0]
        return loss, accuracy

    def meta_gradients(self, params: Params, episodes: list[Episode], iteration: int = 0) -> MetaStep:
        """∇ of the mean query loss over `episodes` w.r.t. the model and `algo.*` tensors."""
        batching = resolve_batching(self.batching, self.forward.tasks is not None)

        def task(p: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):
            if batching != "fused":
                return self.task_loss(p, sx, sy, qx, qy, iteration)
            sx, sy, qx, qy = pictures_first(sx, sy, qx, qy)
            return self.task_loss(p, sx, sy, qx, qy, iteration, tasks=sy.shape[1])

        return mean_task_gradients(task, params, episodes, batching, self.chunk_size)
