"""The task-batched Conv-4: T tasks in one pass without vmap, with hand-written autograd for the
two places where the generic kernels were slow (BatchNorm statistics over strided dims, the
first inner step's convolution of weights shared by all tasks). Same values and derivatives,
to second order, as `vmap` over the plain forward (tests/models/test_fused.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight


class _TaskStats(torch.autograd.Function):
    """(biased variance, mean) of x [N, T, C, H, W] over (N, H, W): [1, T, C, 1, 1] each.

    The same values and derivatives as `torch.var_mean(x, (0, 3, 4), correction=0)`, but
    reduced in two contiguous stages ((H, W), then N), 4-13x faster on CPU than var_mean's
    reduction over strided dims (benchmarks/bn_stats.py). The backward,
    ∂x = (∂mean + 2 ∂var (x − mean)) / M, is made of differentiable ops, so second-order MAML
    differentiates through it."""

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=(3, 4), keepdim=True).mean(dim=0, keepdim=True)
        var = (x - mean).square_().mean(dim=(3, 4), keepdim=True).mean(dim=0, keepdim=True)
        return var, mean

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(
        ctx: Any, grad_var: torch.Tensor | None, grad_mean: torch.Tensor | None
    ) -> torch.Tensor | None:
        x, mean = ctx.saved_tensors
        size = x.shape[0] * x.shape[3] * x.shape[4]
        grad = None if grad_mean is None else (grad_mean / size).expand_as(x)
        if grad_var is not None:
            centred = (x - mean) * (grad_var * (2 / size))
            grad = centred if grad is None else centred + grad
        return grad


def _task_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """BatchNorm of x [N, T, C, H, W] with each task's own batch statistics (over N, H, W);
    weight, bias: [C] (shared) or [T, C] (per task). With autograd off, x (a fresh convolution
    output) is overwritten and returned."""
    var, mean = _TaskStats.apply(x)
    scale = weight.view(1, -1, x.shape[2], 1, 1) * torch.rsqrt(var + eps)
    shift = bias.view(1, -1, x.shape[2], 1, 1) - mean * scale
    if not torch.is_grad_enabled():  # evaluation's query pass: no new buffers (nor page faults)
        return x.mul_(scale).add_(shift)
    return torch.addcmul(shift, x, scale)


class _SharedWeightConv(torch.autograd.Function):
    """3x3 convolution of T tasks whose weights have equal values (θ expanded to [T, ...], as at
    the first inner step): the forward is one ordinary convolution of all pictures, the backward
    gives each task its own weight gradient (a grouped weight-gradient convolution). The backward
    is made of differentiable ops, so second-order MAML differentiates through it; derivatives
    that reach task 0's copy of the weight reach θ all the same, since the copies are one tensor."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
        """x [N, T, C, H, W], weight [T, C', C, 3, 3], bias [T, C'] -> [N, T, C', H', W']."""
        n, tasks = x.shape[:2]
        out = F.conv2d(x.flatten(0, 1), weight[0], bias[0], stride=stride, padding=1)
        return out.view(n, tasks, *out.shape[1:])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, _, ctx.stride = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        tasks = x.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flat = grad_out.flatten(0, 1)
            grad_x = conv2d_input(x.flatten(0, 1).shape, weight[0], flat, ctx.stride, 1)
            grad_x = grad_x.view(x.shape)
        if ctx.needs_input_grad[1]:
            grouped = weight.flatten(0, 1).shape
            grad_w = conv2d_weight(
                x.flatten(1, 2), grouped, grad_out.flatten(1, 2), ctx.stride, 1, groups=tasks
            ).view(weight.shape)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 3, 4))
        return grad_x, grad_w, grad_b, None


def _task_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
    """3x3 convolution of x [N, T, C, H, W] -> [N, T, C', H', W']; weight [C', C, 3, 3] shared by
    all tasks, or [T, C', C, 3, 3] one per task: a grouped convolution with the tasks folded into
    the channels (groups = T), or one ordinary convolution where the T copies are one expanded
    tensor."""
    n, tasks = x.shape[:2]
    if weight.dim() == 4:
        weight, bias = weight.expand(tasks, *weight.shape), bias.expand(tasks, *bias.shape)
    if tasks > 1 and weight.stride(0) == 0 and bias.stride(0) == 0:
        return _SharedWeightConv.apply(x, weight, bias, stride)
    out = F.conv2d(
        x.flatten(1, 2), weight.flatten(0, 1), bias.flatten(), stride=stride, padding=1, groups=tasks
    )
    return out.view(n, tasks, -1, *out.shape[2:])


def task_batched_forward(
    blocks: Sequence[tuple[int, float]], params: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Logits [N, T, ways] of T tasks at once, x: [N, T, C, H, W] (N pictures per task), each task
    with its own BatchNorm statistics, for a Conv-4 whose blocks have these (stride, BatchNorm eps)
    (`Conv4.task_forward` passes them). A tensor in `params` is either the model parameter's shape
    (shared by all tasks) or has a leading task dimension [T, ...]. Linear head only.

    The same function as `vmap(forward)` over tasks, written as ordinary batched ops so that no
    batching rule stands between the model and the convolution kernels."""
    for k, (stride, eps) in enumerate(blocks):
        p = f"blocks.{k}."
        x = _task_conv(x, params[p + "conv.weight"], params[p + "conv.bias"], stride)
        x = _task_norm(x, params[p + "norm.weight"], params[p + "norm.bias"], eps)
        x = F.relu(x, inplace=not torch.is_grad_enabled())
        if stride == 1:
            n, tasks = x.shape[:2]
            x = F.max_pool2d(x.flatten(1, 2), 2)
            x = x.view(n, tasks, -1, *x.shape[2:])
    features = x.flatten(2)
    weight, bias = params["head.weight"], params["head.bias"]
    if weight.dim() == 2:
        return F.linear(features, weight, bias)
    # broadcast-multiply and sum: small batched matmuls ([32, 5, 256] operands, einsum or bmm)
    # hit a slow path in their (double) backward on CPU, ~50 ms per call
    return (features.unsqueeze(2) * weight).sum(-1) + bias
