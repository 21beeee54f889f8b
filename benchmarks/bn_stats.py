"""BatchNorm statistics of the task-batched pass: torch.var_mean over the strided dims (0, 3, 4)
of [N, T, C, H, W] against metafew's two contiguous stages (models.fused._TaskStats), forward only and
forward + double backward, on the Omniglot workload's activation shapes.

    python benchmarks/bn_stats.py [--repeats 15]

Prints medians (ms) and the ratio var_mean / two-stage; values agree to float32 rounding."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from metafew.allocator import tune_allocator
from metafew.models.fused import _TaskStats

SHAPES = {
    "1 query, 32 tasks, layer 1": (5, 32, 64, 14, 14),
    "15 queries, 4 tasks, layer 1": (75, 4, 64, 14, 14),
    "15 queries, 16 tasks, layer 1": (75, 16, 64, 14, 14),
    "15 queries, 32 tasks, layer 2": (75, 32, 64, 7, 7),
}


def var_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.var_mean(x, dim=(0, 3, 4), correction=0, keepdim=True)


def two_stage(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _TaskStats.apply(x)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def second_order(stats: Callable, x: torch.Tensor) -> Callable[[], object]:
    """Forward, a create_graph backward and a backward through that: what second-order MAML does."""

    def run() -> object:
        var, mean = stats(x)
        (g,) = torch.autograd.grad((var * mean).sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), x)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    tune_allocator()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} (ms)")
    print(
        f"{'shape':32s} {'forward: var_mean':>18s} {'two-stage':>10s} {'ratio':>6s}   "
        f"{'2nd order: var_mean':>20s} {'two-stage':>10s} {'ratio':>6s}"
    )
    for name, shape in SHAPES.items():
        x = torch.randn(shape)
        torch.testing.assert_close(two_stage(x), var_mean(x), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            fa = median_ms(lambda x=x: var_mean(x), args.repeats)
            fb = median_ms(lambda x=x: two_stage(x), args.repeats)
        xg = x.clone().requires_grad_()
        sa = median_ms(second_order(var_mean, xg), args.repeats)
        sb = median_ms(second_order(two_stage, xg), args.repeats)
        print(f"{name:32s} {fa:18.2f} {fb:10.2f} {fa / fb:5.1f}x   {sa:20.2f} {sb:10.2f} {sa / sb:5.1f}x")


if __name__ == "__main__":
    main()
