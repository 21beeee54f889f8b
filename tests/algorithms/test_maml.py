"""MAML against a hand-written autograd reference and finite differences (float64), on the real
Conv-4 path, for every batching mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import random_episodes, tiny_model
from reference import constant, fresh_leaves, reference_meta_gradient

from metafew.algorithms import MAML
from metafew.algorithms.base import mean_task_gradients
from metafew.config import AlgorithmConfig
from metafew.functional import Params
from metafew.models import Conv4, make_forward
from metafew.tasks import Episode


def _maml(
    model: Conv4, first_order: bool = False, batching: str = "loop", chunk: int = 0, steps: int = 2
) -> MAML:
    cfg = AlgorithmConfig(inner_lr=0.3, inner_steps=steps, first_order=first_order)
    return MAML(cfg, make_forward(model), batching, chunk)


def _meta_loss(model: Conv4, params: Params, episodes: list[Episode], steps: int) -> float:
    maml = _maml(model, steps=steps)
    with torch.no_grad():
        return float(sum(maml.task_loss(params, *ep.as_tuple())[0] for ep in episodes) / len(episodes))


def test_adapt_equals_a_manual_sgd_step() -> None:
    model = tiny_model()
    ep = random_episodes(1)[0]
    params = dict(model.named_parameters())
    adapted = _maml(model).adapt(params, ep.support_x, ep.support_y, steps=1, lr=0.3)
    manual = copy.deepcopy(model)
    loss = F.cross_entropy(manual(ep.support_x), ep.support_y)
    loss.backward()
    with torch.no_grad():
        for name, p in manual.named_parameters():
            torch.testing.assert_close(adapted[name], p - 0.3 * p.grad)


@pytest.mark.parametrize(
    ("batching", "chunk"), [("loop", 0), ("vmap", 0), ("vmap", 2), ("fused", 0), ("fused", 2)]
)
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_equals_hand_written_reference(batching: str, chunk: int, first_order: bool) -> None:
    model, episodes = tiny_model(), random_episodes(3)
    step = _maml(model, first_order, batching, chunk).meta_gradients(dict(model.named_parameters()), episodes)
    leaves = fresh_leaves(model)
    expected = reference_meta_gradient(model, leaves, episodes, 2, list(leaves), constant(0.3), first_order)
    for name, g in expected.items():
        torch.testing.assert_close(step.grads[name], g, rtol=1e-9, atol=1e-11)
    assert step.losses.shape == (3,) and step.accuracies.shape == (3,)


@pytest.mark.parametrize("pool", ["max", "stride"])
@pytest.mark.parametrize("batching", ["loop", "vmap", "fused"])
def test_second_order_meta_gradient_matches_finite_differences(batching: str, pool: str) -> None:
    # the issue-5 pitfall: BatchNorm under vmap (or batched over tasks) must stay exact in second
    # order; nn.BatchNorm2d's functional kernel under vmap was 17% off in float64
    model, episodes = tiny_model(pool=pool), random_episodes(2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = _maml(model, batching=batching).meta_gradients(dict(model.named_parameters()), episodes).grads
    g = torch.Generator().manual_seed(7)
    eps = 1e-6
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        plus = _meta_loss(model, {k: v + eps * direction[k] for k, v in params.items()}, episodes, 2)
        minus = _meta_loss(model, {k: v - eps * direction[k] for k, v in params.items()}, episodes, 2)
        numeric = (plus - minus) / (2 * eps)
        analytic = float(sum((grads[k] * direction[k]).sum() for k in params))
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_first_order_differs_from_second_order_and_from_finite_differences() -> None:
    model, episodes = tiny_model(), random_episodes(2)
    params = dict(model.named_parameters())
    second = _maml(model).meta_gradients(params, episodes).grads
    first = _maml(model, first_order=True).meta_gradients(params, episodes).grads
    flat = lambda g: torch.cat([v.flatten() for v in g.values()])  # noqa: E731
    relative = float((flat(first) - flat(second)).norm() / flat(second).norm())
    assert relative > 1e-3  # the dropped Hessian terms are not negligible
    # and first order is not the true derivative of the meta-loss
    params_d = {k: v.detach() for k, v in params.items()}
    direction = {k: torch.ones_like(v) for k, v in params_d.items()}
    eps = 1e-6
    numeric = (
        _meta_loss(model, {k: v + eps * direction[k] for k, v in params_d.items()}, episodes, 2)
        - _meta_loss(model, {k: v - eps * direction[k] for k, v in params_d.items()}, episodes, 2)
    ) / (2 * eps)
    first_dir = float(sum(first[k].sum() for k in params))
    second_dir = float(sum(second[k].sum() for k in params))
    assert second_dir == pytest.approx(numeric, rel=1e-5)
    assert abs(first_dir - numeric) > 1e-3 * abs(numeric)


def test_vanishing_inner_lr_reduces_maml_to_the_query_loss_gradient() -> None:
    # with α -> 0 the adapted weights are θ itself, so the meta-gradient is ∇θ of the query loss
    model, episodes = tiny_model(), random_episodes(2)
    params = dict(model.named_parameters())
    maml = MAML(AlgorithmConfig(inner_lr=1e-12, inner_steps=1), make_forward(model))
    step = maml.meta_gradients(params, episodes)
    loss = sum(F.cross_entropy(model(ep.query_x), ep.query_y) for ep in episodes) / 2
    expected = torch.autograd.grad(loss, list(params.values()))
    for g, e in zip(step.grads.values(), expected):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)


def test_mean_task_gradients_weights_every_task_equally_across_chunks() -> None:
    model, episodes = tiny_model(), random_episodes(5)
    maml = _maml(model)
    params = dict(model.named_parameters())
    whole = mean_task_gradients(maml.task_loss, params, episodes, "vmap", 0)
    chunked = mean_task_gradients(maml.task_loss, params, episodes, "vmap", 2)  # chunks of 2, 2, 1
    looped = mean_task_gradients(maml.task_loss, params, episodes, "loop", 0)
    for k in params:
        torch.testing.assert_close(chunked.grads[k], whole.grads[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(looped.grads[k], whole.grads[k], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chunked.losses, looped.losses)
