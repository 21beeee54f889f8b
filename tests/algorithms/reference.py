"""The hand-written MAML reference of the algorithm tests: the inner loop and the meta-gradient
written out with torch.autograd and plain module calls (float64, exact). One general form serves
MAML and first order, ANIL (only `keys` adapted), Meta-SGD and LSLR (step sizes `lr_of`) and BNWB
(BatchNorm tensors `bn_of`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metafew.functional import Params, model_params
from metafew.models import Conv4
from metafew.tasks import Episode

LrOf = Callable[[str, int], torch.Tensor | float]
BnOf = Callable[[int], Params]


def constant(lr: float) -> LrOf:
    """The same step size for every tensor and step (plain MAML)."""
    return lambda key, step: lr


def fresh_leaves(model: Conv4) -> Params:
    """Fresh leaf tensors holding the model's parameters, to differentiate the reference by."""
    return {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}


def reference_trajectory(
    model: Conv4,
    weights: Params,
    sx: torch.Tensor,
    sy: torch.Tensor,
    steps: int,
    keys: list[str],
    lr_of: LrOf,
    bn_of: BnOf | None = None,
    first_order: bool = False,
) -> list[Params]:
    """[φ⁰, ..., φᴷ] written out with torch.autograd: only `keys` are adapted, with step size
    lr_of(key, step); bn_of(step) gives the BatchNorm tensors of the forward at `step` (BNWB)."""

    def at(fast: Params, step: int) -> Params:
        return fast if bn_of is None else {**fast, **bn_of(step)}

    fast = dict(weights)
    out = [at(fast, 0)]
    for step in range(steps):
        loss = F.cross_entropy(functional_call(model, at(fast, step), (sx,)), sy)
        grads = torch.autograd.grad(
            loss, [fast[k] for k in keys], create_graph=not first_order, retain_graph=True
        )
        fast = dict(fast)
        for k, g in zip(keys, grads):
            fast[k] = fast[k] - lr_of(k, step) * (g.detach() if first_order else g)
        out.append(at(fast, step + 1))
    return out


def query_loss(model: Conv4, weights: Params, ep: Episode) -> torch.Tensor:
    return F.cross_entropy(functional_call(model, weights, (ep.query_x,)), ep.query_y)


def reference_meta_gradient(
    model: Conv4,
    leaves: Params,
    episodes: list[Episode],
    steps: int,
    keys: list[str],
    lr_of: LrOf,
    first_order: bool = False,
) -> Params:
    """∇ of the mean final query loss w.r.t. every leaf, by hand."""
    weights = model_params(leaves)
    total = 0.0
    for ep in episodes:
        phi = reference_trajectory(
            model, weights, ep.support_x, ep.support_y, steps, keys, lr_of, first_order=first_order
        )[-1]
        total = total + query_loss(model, phi, ep)
    return dict(zip(leaves, torch.autograd.grad(total / len(episodes), list(leaves.values()))))
