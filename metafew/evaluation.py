"""Scoring a meta-learned model: seeded test episodes with a 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.func import vmap

from metafew.config import Config
from metafew.data import LabeledImages
from metafew.errors import DataError, Interrupted
from metafew.functional import Params
from metafew.learner import Learner, norm_stats
from metafew.progress import Advance, silent
from metafew.stopping import abandonable
from metafew.tasks import EpisodeSampler, stack_episodes


def confidence_interval(accuracies: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval (1.96·s/√n)."""
    n = len(accuracies)
    std = float(np.std(accuracies, ddof=1)) if n > 1 else 0.0
    return float(np.mean(accuracies)), 1.96 * std / math.sqrt(n)


def paired_difference(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """Mean of second − first over the same test episodes (accuracies [n] each, episode i of one
    beside episode i of the other) and the half-width of its 95% confidence interval. Pairing
    removes what the episodes share (some are harder for every model), so this interval is much
    narrower than the two accuracies' own: it is the one to read when asking whether one result is
    better than the other."""
    if first.shape != second.shape:
        raise ValueError(f"paired accuracies differ in shape: {first.shape} against {second.shape}")
    return confidence_interval(second - first)


def evaluate(
    learner: Learner,
    sampler: EpisodeSampler,
    episodes: int,
    steps: int,
    lr: float | None,
    norm: str,
    chunk: int | None = None,
    *,
    stop_requested: Callable[[], bool] = lambda: False,
    advance: Advance = silent,
) -> np.ndarray:
    """Query accuracy of episodes 0..episodes-1 of `sampler`: [episodes] float64; `lr` None
    means the algorithm's own inner step size. `stop_requested()` is checked before each chunk, and
    a StopSignal's signal stops a chunk at once (metafew.stopping): Interrupted naming how many
    episodes were done. `advance("test episodes", done, episodes)` after each chunk.

    Each episode adapts on its support set and classifies its queries; `chunk` episodes run at
    once (None or 0: the learner's chunks, task-batched or under vmap); no outer
    graph is kept. `norm` transductive: BatchNorm uses the query batch's statistics, as in MAML;
    support: the support set's.
    """

    def accuracy(
        params: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> torch.Tensor:
        adapted = learner.algorithm.adapt(params, sx, sy, steps, lr)
        stats = norm_stats(learner, adapted, sx) if norm == "support" else None
        return (learner.forward(adapted, qx, stats).argmax(-1) == qy).float().mean()

    # MAML on Conv-4 adapts a chunk in one task-batched pass (no vmap), with batch statistics
    batched = learner.batched_eval if norm == "transductive" else None
    chunk = chunk or (learner.chunks.eval_vmap if batched is None else learner.chunks.eval)

    def run_chunk(indices: range) -> torch.Tensor:
        stacked = stack_episodes([sampler.episode(i).to(learner.device) for i in indices])
        acc = None if batched is None else batched.task_accuracies(learner.params, stacked, steps, lr)
        return vmap(accuracy, in_dims=(None, 0, 0, 0, 0))(learner.params, *stacked) if acc is None else acc

    out = []
    with torch.no_grad():  # torch.func.grad still differentiates the inner loop
        for start in range(0, episodes, chunk):
            if stop_requested():
                raise Interrupted(f"stopped after {start} of {episodes} episodes")
            try:
                with abandonable(stop_requested):  # nothing of a chunk is kept if it is cut
                    out.append(run_chunk(range(start, min(start + chunk, episodes))))
            except Interrupted:
                raise Interrupted(f"stopped after {start} of {episodes} episodes") from None
            advance("test episodes", min(start + chunk, episodes), episodes)
    return torch.cat(out).double().cpu().numpy()


def queries_per_class(cfg: Config, novel: LabeledImages) -> int:
    """Queries per class for test episodes: eval.queries, else as many as the smallest novel
    class allows after the shots, at most task.queries."""
    if cfg.eval.queries is not None:
        return cfg.eval.queries
    available = min(novel.counts()) - cfg.task.shots
    if available < 1:
        raise DataError(
            f"novel classes need more than task.shots = {cfg.task.shots} labeled pictures each for test "
            f"episodes; the smallest has {min(novel.counts())}"
        )
    return min(cfg.task.queries, available)
