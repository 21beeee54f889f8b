"""The task-batched (`fused`) path: the batched Conv-4 against vmap, the shared-weight convolution's
hand-written backward against autograd (to second order), and every MAML variant against the
task-by-task loop, all in float64."""

from __future__ import annotations

import pytest
import torch
from helpers import random_episodes, tiny_model
from torch.autograd import gradcheck, gradgradcheck
from torch.func import vmap

from metafew.algorithms import MAML
from metafew.algorithms.base import resolve_batching
from metafew.config import AlgorithmConfig, MAMLConfig
from metafew.models import make_forward
from metafew.models.fused import _SharedWeightConv, _task_conv, _TaskStats
from metafew.tasks import stack_episodes

TASKS = 3


def _per_task(params: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.1 * torch.randn(TASKS, *v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


@pytest.mark.parametrize("pool", ["max", "stride"])
@pytest.mark.parametrize("params_kind", ["shared", "expanded", "per_task"])
def test_task_batched_forward_equals_vmap_of_the_model(pool: str, params_kind: str) -> None:
    model = tiny_model(pool=pool)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    params = {
        "shared": theta,
        "expanded": {k: v.expand(TASKS, *v.shape) for k, v in theta.items()},
        "per_task": _per_task(theta, 3),
    }[params_kind]
    x = stack_episodes(random_episodes(TASKS))[0]  # [T, N, C, H, W]
    dims = None if params_kind == "shared" else 0
    expected = vmap(make_forward(model), in_dims=(dims, 0))(params, x)  # [T, N, ways]
    out = model.task_forward()(params, x.transpose(0, 1).contiguous())
    torch.testing.assert_close(out.transpose(0, 1), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", ["max", "stride"])
def test_task_batched_forward_without_autograd_equals_the_differentiable_one(pool: str) -> None:
    model = tiny_model(pool=pool)
    params = _per_task({k: v.detach() for k, v in model.named_parameters()}, 4)
    x = stack_episodes(random_episodes(TASKS))[0].transpose(0, 1).contiguous()
    expected = model.task_forward()(params, x)
    with torch.no_grad():  # the in-place BatchNorm and ReLU of evaluation's query pass
        out = model.task_forward()(params, x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_shared_weight_convolution_backward_is_exact_to_second_order(stride: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, TASKS, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)

    def shared(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _SharedWeightConv.apply(x, w.expand(TASKS, *w.shape), b.expand(TASKS, *b.shape), stride)

    assert gradcheck(shared, (x, weight, bias))
    assert gradgradcheck(shared, (x, weight, bias))


@pytest.mark.parametrize("use", ["both", "var", "mean"])
def test_task_statistics_equal_var_mean_to_second_order(use: str) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, TASKS, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    var, mean = _TaskStats.apply(x)
    expected = torch.var_mean(x, dim=(0, 3, 4), correction=0, keepdim=True)
    torch.testing.assert_close((var, mean), expected, rtol=1e-14, atol=1e-15)

    def stats(x: torch.Tensor) -> torch.Tensor:
        var, mean = _TaskStats.apply(x)
        return {"both": var * mean.exp(), "var": var, "mean": mean}[use]

    assert gradcheck(stats, (x,))
    assert gradgradcheck(stats, (x,))


def test_shared_weight_convolution_gives_each_task_its_own_weight_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, TASKS, 2, 6, 6, generator=g, dtype=torch.float64)
    theta = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.zeros(3, dtype=torch.float64)
    weights = theta.expand(TASKS, *theta.shape).requires_grad_()
    biases = bias.expand(TASKS, 3).requires_grad_()
    target = torch.randn(2, TASKS, 3, 3, 3, generator=g, dtype=torch.float64)
    fused = torch.autograd.grad((_task_conv(x, weights, biases, 2) * target).sum(), weights)[0]
    for t in range(TASKS):
        w = theta.clone().requires_grad_()
        out = torch.nn.functional.conv2d(x[:, t], w, bias, stride=2, padding=1)
        torch.testing.assert_close(fused[t], torch.autograd.grad((out * target[:, t]).sum(), w)[0])


VARIANTS = {
    "maml": ({}, False, False),
    "anil": ({}, True, False),
    "metasgd": ({}, False, True),
    "maml++": (
        {"multi_step_loss": True, "learn_inner_lr": True, "per_step_bn": True, "msl_iterations": 5},
        False,
        False,
    ),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("first_order", [False, True])
def test_fused_meta_gradients_equal_the_loop_for_every_maml_variant(variant: str, first_order: bool) -> None:
    maml_options, head_only, per_parameter_lr = VARIANTS[variant]
    cfg = AlgorithmConfig(
        inner_lr=0.3, inner_steps=2, first_order=first_order, maml=MAMLConfig(**maml_options)
    )
    model, episodes = tiny_model(), random_episodes(TASKS)

    def run(batching: str):
        maml = MAML(cfg, make_forward(model), batching, 0, head_only, per_parameter_lr)
        params = dict(model.named_parameters())
        params |= {k: v.requires_grad_() for k, v in maml.init_meta_params(params).items()}
        # perturb the learned tensors so that the per-step ones differ
        params = {
            k: v + 0.01 * torch.sin(torch.arange(v.numel(), dtype=v.dtype)).view(v.shape)
            for k, v in params.items()
        }
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        return maml.meta_gradients(leaves, episodes, iteration=2)

    loop, fused = run("loop"), run("fused")
    for k, g in loop.grads.items():
        torch.testing.assert_close(fused.grads[k], g, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fused.losses, loop.losses)
    torch.testing.assert_close(fused.accuracies, loop.accuracies)


def test_fused_resolves_to_vmap_without_a_task_batched_model() -> None:
    cosine = tiny_model("cosine")
    assert make_forward(cosine).tasks is None
    assert make_forward(tiny_model()).tasks is not None
    assert resolve_batching("fused", False) == "vmap" and resolve_batching("auto", False) == "loop"
    assert resolve_batching("auto", True) == "fused" and resolve_batching("vmap", True) == "vmap"
    episodes = random_episodes(2)
    cfg = AlgorithmConfig(inner_lr=0.3, inner_steps=1)
    params = dict(cosine.named_parameters())
    fused = MAML(cfg, make_forward(cosine), "fused").meta_gradients(params, episodes)
    loop = MAML(cfg, make_forward(cosine), "loop").meta_gradients(params, episodes)
    for k, g in loop.grads.items():
        torch.testing.assert_close(fused.grads[k], g)


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_task_accuracies_equal_adapting_each_task_alone(steps: int) -> None:
    model, episodes = tiny_model(), random_episodes(4)
    params = dict(model.named_parameters())
    maml = MAML(AlgorithmConfig(inner_lr=0.5, inner_steps=1), make_forward(model), "fused")
    with torch.no_grad():
        fused = maml.task_accuracies(params, stack_episodes(episodes), steps, None)
        expected = []
        for ep in episodes:
            adapted = maml.adapt(params, ep.support_x, ep.support_y, steps)
            expected.append((maml.forward(adapted, ep.query_x).argmax(-1) == ep.query_y).float().mean())
    assert fused is not None
    torch.testing.assert_close(fused, torch.stack(expected))
