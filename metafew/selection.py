"""How well will M_finetune label *these* classes? k-fold cross-validation over the labeled novel
pictures, the only labels a user has for them; and test episodes scored with the same recipe.

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

from metafew.augment import Augment, augment_spec
from metafew.config import Config
from metafew.data import LabeledImages
from metafew.errors import Interrupted
from metafew.finetuning import Fitted, check_ways, fit_members, fitted_model, predict_proba
from metafew.learner import Learner
from metafew.progress import Advance, silent
from metafew.tasks import EpisodeSampler

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
    advance: Advance = silent,
) -> np.ndarray:
    """[n] bool: whether each labeled picture was labeled right by the recipe fine-tuned without
    it (`folds`-fold, folds seeded by finetune.seed). unlabeled: uint8 [m, C, H, W] or None.
    `advance("folds", done, folds)` after each fold."""
    check_ways(cfg, labeled.classes)
    x, y = labeled.images, labeled.labels
    correct = np.zeros(len(y), dtype=bool)
    spec = augment_spec(cfg)
    for done, held in enumerate(stratified_folds(y, folds, cfg.finetune.seed), 1):
        kept = torch.tensor(sorted(set(range(len(y))) - set(held.tolist())), dtype=torch.int64)
        pool = None
        if cfg.finetune.unlabeled != "none":
            pool = x[held] if unlabeled is None else torch.cat([unlabeled, x[held]])
        fits = fit_members(cfg, learner, x[kept], y[kept], pool, stop_requested=stop_requested)
        probs = _predict_fitted(cfg, learner, fits, x[kept], pool, x[held], spec, cfg.finetune.seed)
        correct[held.numpy()] = (probs.argmax(-1) == y[held]).numpy()
        advance("folds", done, folds)
    return correct


def _predict_fitted(
    cfg: Config,
    learner: Learner,
    fits: list[Fitted],
    trained_on: torch.Tensor,
    pool: torch.Tensor | None,
    pictures: torch.Tensor,
    spec: Augment,
    seed: int,
) -> torch.Tensor:
    """Probabilities [n, ways] for `pictures` from the members' fits, with the BatchNorm
    statistics of what they were trained on (labeled `trained_on`, plus the unlabeled `pool`)
    frozen."""
    model = fitted_model(cfg, learner, fits, trained_on, pool, [])
    return predict_proba(learner, model, pictures, spec=spec, seed=seed)


def evaluate_recipe(
    cfg: Config,
    learner: Learner,
    sampler: EpisodeSampler,
    episodes: int,
    *,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> np.ndarray:
    """Query accuracy [episodes] float64 of test episodes 0..episodes-1, each fine-tuned with the
    finetune.* recipe on its support set. Where finetune.unlabeled uses them, the episode's query
    pictures are its unlabeled ones (transductive; the predictions still use frozen statistics).
    Test-time views are seeded by (finetune.seed + episode). Interrupted names the episodes done;
    `advance("test episodes", done, episodes)` after each."""
    spec = augment_spec(cfg)
    out = np.zeros(episodes)
    for i in range(episodes):
        if stop_requested():
            raise Interrupted(f"stopped after {i} of {episodes} episodes")
        ep = sampler.episode(i)
        pool = ep.query_x if cfg.finetune.unlabeled != "none" else None
        try:
            fits = fit_members(cfg, learner, ep.support_x, ep.support_y, pool, stop_requested=stop_requested)
        except Interrupted:
            raise Interrupted(f"stopped after {i} of {episodes} episodes") from None
        seed = cfg.finetune.seed + i
        probs = _predict_fitted(cfg, learner, fits, ep.support_x, pool, ep.query_x, spec, seed)
        out[i] = float((probs.argmax(-1) == ep.query_y).double().mean())
        advance("test episodes", i + 1, episodes)
    return out
