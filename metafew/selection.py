"""How well will M_finetune label *these* classes? k-fold cross-validation over the labeled novel
pictures, the only labels a user has for them.

Every fold holds out about 1/k of each class, fine-tunes on the rest (the full recipe, its own
early stopping included), and labels the held-out pictures; every labeled picture is predicted
exactly once by a model that never saw its label. The estimate is the fraction right over all n
pictures, with a 95% Wilson score interval (n Bernoulli trials; Wilson 1927). Where the recipe uses
unlabeled pictures, a fold's held-out pictures join them, as they would at deployment.

Choosing the best of several candidates by the same folds makes the winner's estimate optimistic
by the selection (a winner's curse that grows with the number of candidates), and each fold trains
on (k−1)/k of the labels, which makes it pessimistic; both are small next to the interval at
n = 75, and BENCHMARKS.md §4c compares the estimate with the accuracy then measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from metafew.config import Config
from metafew.data import LabeledImages, to_float
from metafew.finetuning import Finetuned, augment_spec, check_ways, fit, frozen_stats, predict_proba
from metafew.learner import Learner

StopRequested = Callable[[], bool]


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """k disjoint index tensors covering 0..n-1: each class's pictures shuffled (seeded) and dealt
    round-robin, so every fold holds ⌊n_c/k⌋ or ⌈n_c/k⌉ of class c."""
    generator = torch.Generator().manual_seed(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    dealt = 0
    for c in labels.unique(sorted=True).tolist():
        members = torch.nonzero(labels == c).flatten()
        for i in members[torch.randperm(len(members), generator=generator)].tolist():
            folds[dealt % k].append(i)  # continuing the deal across classes balances fold sizes
            dealt += 1
    return [torch.tensor(sorted(f), dtype=torch.int64) for f in folds]


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion correct/n (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cross_validate(
    cfg: Config,
    learner: Learner,
    labeled: LabeledImages,
    unlabeled: torch.Tensor | None,
    folds: int,
    *,
    stop_requested: StopRequested = lambda: False,
) -> np.ndarray:
    """[n] bool: whether each labeled picture was labeled right by the recipe fine-tuned without
    it (`folds`-fold, folds seeded by finetune.seed). unlabeled: uint8 [m, C, H, W] or None."""
    check_ways(cfg, labeled.classes)
    x, y = labeled.images, labeled.labels
    correct = np.zeros(len(y), dtype=bool)
    spec = augment_spec(cfg)
    for held in stratified_folds(y, folds, cfg.finetune.seed):
        kept = torch.tensor(sorted(set(range(len(y))) - set(held.tolist())), dtype=torch.int64)
        pool = None
        if cfg.finetune.unlabeled != "none":
            pool = x[held] if unlabeled is None else torch.cat([unlabeled, x[held]])
        fitted = fit(cfg, learner, x[kept], y[kept], pool, stop_requested=stop_requested)
        used = None if pool is None else to_float(pool).to(learner.device)
        stats = frozen_stats(learner, fitted.params, to_float(x[kept]).to(learner.device), used)
        model = Finetuned(fitted.params, stats, list(labeled.classes), cfg.finetune.tta)
        probs = predict_proba(learner, model, x[held], spec=spec, seed=cfg.finetune.seed)
        correct[held.numpy()] = (probs.argmax(-1) == y[held]).numpy()
    return correct
