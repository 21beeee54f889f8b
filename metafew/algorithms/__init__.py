"""Algorithms: name -> constructor registry. Adding one = one file + one line here."""

from __future__ import annotations

from collections.abc import Callable

from metafew.algorithms.base import Algorithm, MetaStep, mean_task_gradients
from metafew.algorithms.maml import MAML
from metafew.config import Config
from metafew.functional import Forward

Builder = Callable[[Config, Forward, int], Algorithm]
"""builder(config, forward, number of meta-train classes) -> algorithm."""


def _maml(head_only: bool = False, per_parameter_lr: bool = False) -> Builder:
    def build(cfg: Config, forward: Forward, train_classes: int) -> Algorithm:
        t = cfg.train
        return MAML(cfg.algorithm, forward, t.batching, t.chunk_size, head_only, per_parameter_lr)

    return build


ALGORITHMS: dict[str, Builder] = {
    "maml": _maml(),
    "anil": _maml(head_only=True),
    "metasgd": _maml(per_parameter_lr=True),
}
"""Every algorithm, by the name used in `algorithm.name`."""


def build_algorithm(cfg: Config, forward: Forward, train_classes: int) -> Algorithm:
    """The algorithm `cfg.algorithm.name` on the model `forward`."""
    return ALGORITHMS[cfg.algorithm.name](cfg, forward, train_classes)


__all__ = ["ALGORITHMS", "MAML", "Algorithm", "MetaStep", "build_algorithm", "mean_task_gradients"]
