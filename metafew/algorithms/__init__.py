"""Algorithms: name -> constructor registry. Adding one = one file + one line here."""

from __future__ import annotations

from collections.abc import Callable

from metafew.algorithms.base import Algorithm, MetaStep, mean_task_gradients
from metafew.algorithms.maml import MAML
from metafew.config import Config
from metafew.functional import Forward

ALGORITHMS: dict[str, Callable[[Config, Forward], Algorithm]] = {
    "maml": lambda cfg, forward: MAML(cfg.algorithm, forward, cfg.train.batching, cfg.train.chunk_size),
}
"""Every algorithm, by the name used in `algorithm.name`."""


def build_algorithm(cfg: Config, forward: Forward) -> Algorithm:
    """The algorithm `cfg.algorithm.name` on the model `forward`."""
    return ALGORITHMS[cfg.algorithm.name](cfg, forward)


__all__ = ["ALGORITHMS", "MAML", "Algorithm", "MetaStep", "build_algorithm", "mean_task_gradients"]
