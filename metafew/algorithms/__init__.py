"""Algorithms: name -> constructor registry. Adding one = one file + one line here (the name
becomes a valid `algorithm.name` through the registry; metafew.config_load reads its keys)."""

from __future__ import annotations

from collections.abc import Callable

from metafew.algorithms.base import Algorithm, BatchedEvaluator, MetaStep, mean_task_gradients
from metafew.algorithms.maml import MAML
from metafew.algorithms.pretrain import Pretrain
from metafew.algorithms.protonet import ProtoNet
from metafew.algorithms.reptile import Reptile
from metafew.config.schema import Config
from metafew.functional import Forward

Builder = Callable[[Config, Forward, int, int], Algorithm]
"""builder(config, forward, number of meta-train classes, tasks per vmap/fused call) -> algorithm;
the last is the memory budget's decision (metafew.budget), not necessarily runtime.chunk_size."""


def _maml(head_only: bool = False, per_parameter_lr: bool = False) -> Builder:
    def build(cfg: Config, forward: Forward, train_classes: int, chunk_size: int) -> Algorithm:
        return MAML(cfg.algorithm, forward, cfg.runtime.batching, chunk_size, head_only, per_parameter_lr)

    return build


def _reptile(cfg: Config, forward: Forward, train_classes: int, chunk_size: int) -> Algorithm:
    return Reptile(cfg.algorithm, forward, cfg.runtime.batching, chunk_size, cfg.train.seed)


def _protonet(cfg: Config, forward: Forward, train_classes: int, chunk_size: int) -> Algorithm:
    return ProtoNet(forward, cfg.task.ways, cfg.model.head, cfg.runtime.batching, chunk_size)


def _pretrain(cfg: Config, forward: Forward, train_classes: int, chunk_size: int) -> Algorithm:
    scale = cfg.model.cosine_scale if cfg.model.head == "cosine" else None
    return Pretrain(forward, train_classes, cfg.task.ways, cfg.algorithm.inner_lr, scale, cfg.train.seed)


ALGORITHMS: dict[str, Builder] = {
    "maml": _maml(),
    "anil": _maml(head_only=True),
    "metasgd": _maml(per_parameter_lr=True),
    "reptile": _reptile,
    "protonet": _protonet,
    "pretrain": _pretrain,  # Baseline; Baseline++ with model.head=cosine
}
"""Every algorithm, by the name used in `algorithm.name`."""

ANY_TEST_WAYS = frozenset({"protonet", "pretrain"})
"""Algorithms whose test episodes may have another N than their training episodes: they classify
by class means or by a head fitted to each episode, never by a meta-learned N-way head."""


def build_algorithm(cfg: Config, forward: Forward, train_classes: int, chunk_size: int = 0) -> Algorithm:
    """The algorithm `cfg.algorithm.name` on the model `forward`, running `chunk_size` tasks per
    vmap/fused call (0: the whole meta-batch)."""
    return ALGORITHMS[cfg.algorithm.name](cfg, forward, train_classes, chunk_size)


__all__ = [
    "ALGORITHMS",
    "ANY_TEST_WAYS",
    "MAML",
    "Algorithm",
    "BatchedEvaluator",
    "MetaStep",
    "Pretrain",
    "ProtoNet",
    "Reptile",
    "build_algorithm",
    "mean_task_gradients",
]
