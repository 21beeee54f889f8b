"""Using a meta-learned model: seeded test episodes with a 95% confidence interval, fine-tuning
on the labeled novel pictures (M_finetune), and class probabilities for unlabeled pictures."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import vmap

from metafew.checkpoints import FinetunedCheckpoint
from metafew.config import Config
from metafew.data import LabeledImages, to_float
from metafew.errors import DataError, Interrupted
from metafew.functional import Params
from metafew.learner import Learner, norm_stats
from metafew.models import NormStats
from metafew.tasks import EpisodeSampler, stack_episodes


def confidence_interval(accuracies: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval (1.96·s/√n)."""
    n = len(accuracies)
    std = float(np.std(accuracies, ddof=1)) if n > 1 else 0.0
    return float(np.mean(accuracies)), 1.96 * std / math.sqrt(n)


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
) -> np.ndarray:
    """Query accuracy of episodes 0..episodes-1 of `sampler`: [episodes] float64; `lr` None
    means the algorithm's own inner step size. `stop_requested()` is checked before each chunk:
    true raises Interrupted naming how many episodes were done.

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
    out = []
    with torch.no_grad():  # torch.func.grad still differentiates the inner loop
        for start in range(0, episodes, chunk):
            if stop_requested():
                raise Interrupted(f"stopped after {start} of {episodes} episodes")
            batch = [
                sampler.episode(i).to(learner.device) for i in range(start, min(start + chunk, episodes))
            ]
            stacked = stack_episodes(batch)
            acc = None if batched is None else batched.task_accuracies(learner.params, stacked, steps, lr)
            out.append(
                vmap(accuracy, in_dims=(None, 0, 0, 0, 0))(learner.params, *stacked) if acc is None else acc
            )
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


@dataclass
class Finetuned:
    """M_finetune: adapted parameters, the BatchNorm statistics of the labeled pictures under
    them (frozen, so that each prediction depends on its own picture only) and class names."""

    params: Params
    stats: NormStats
    classes: list[str]

    def record(self, config: dict[str, Any], train_classes: int) -> FinetunedCheckpoint:
        """What goes into model.pt."""
        return FinetunedCheckpoint(self.params, self.stats, self.classes, config, train_classes)

    @classmethod
    def from_record(cls, record: FinetunedCheckpoint, device: torch.device) -> Finetuned:
        """The inverse of `record`, on `device`."""
        params = {k: v.to(device) for k, v in record.params.items()}
        return cls(params, [(m.to(device), v.to(device)) for m, v in record.stats], list(record.classes))


def finetune(cfg: Config, learner: Learner, labeled: LabeledImages) -> Finetuned:
    """Adapt the meta-learned parameters on all labeled novel pictures with the algorithm's own
    adaptation (finetune.steps SGD steps of finetune.lr on the whole labeled set)."""
    if len(labeled.classes) != cfg.task.ways:
        raise DataError(
            f"the model has {cfg.task.ways} outputs (task.ways) but {len(labeled.classes)} labeled novel "
            "classes "
            f"were given ({', '.join(labeled.classes)}); meta-train with task.ways={len(labeled.classes)}"
        )
    steps = cfg.algorithm.eval_inner_steps if cfg.finetune.steps is None else cfg.finetune.steps
    lr = cfg.finetune.lr  # None: the algorithm's own (α, or the learned step sizes)
    x = to_float(labeled.images).to(learner.device)
    y = labeled.labels.to(learner.device)
    with torch.no_grad():
        adapted = learner.algorithm.adapt(learner.params, x, y, steps, lr)
        stats = norm_stats(learner, adapted, x)
    return Finetuned({k: v.detach() for k, v in adapted.items()}, stats, list(labeled.classes))


def predict_proba(
    learner: Learner,
    model: Finetuned,
    images: torch.Tensor,
    batch_size: int = 256,
    *,
    stop_requested: Callable[[], bool] = lambda: False,
) -> torch.Tensor:
    """Class probabilities [n, ways] for uint8 images [n, C, H, W]. BatchNorm uses the frozen
    statistics of `model`, so a picture's result does not depend on the rest of the batch.
    `stop_requested()` is checked before each batch: true raises Interrupted naming how many
    pictures were done."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            if stop_requested():
                raise Interrupted(f"stopped after {start} of {len(images)} pictures")
            x = to_float(images[start : start + batch_size]).to(learner.device)
            out.append(torch.softmax(learner.forward(model.params, x, model.stats), dim=-1).cpu())
    return torch.cat(out)
