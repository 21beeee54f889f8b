"""The memory budget: how many tasks (training) and test episodes (evaluation) run in one
vmap / task-batched call, decided once per command from runtime.max_memory and the backbone's
own activation size, and recorded in the run's env.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metafew.config import Config
from metafew.errors import ConfigError
from metafew.models import Backbone, build_model
from metafew.system import available_memory

SAVED_COPIES = 10
"""Activation-sized tensors one task keeps alive for a second-order meta-gradient: measured about
8.5 for Conv-4 at 5-way 1-shot 15 queries (fused, 48 MB per task), rounded up."""

EVAL_COPIES = 4
"""Activation-sized tensors one test episode keeps alive in the task-batched evaluation (no outer
graph; the query pass runs in place): measured about 4 for Conv-4 at 5-way 1-shot 15 queries."""

VMAP_EVAL_CHUNK = 4
"""Test episodes per call where evaluation runs under vmap (eval.chunk_size 0): its memory per
episode is several times the task-batched one's."""

EVAL_CHUNK_MAX = 16
"""Most test episodes per task-batched call: 16 ran 1.4x faster than 4 on the Omniglot workload
(BENCHMARKS.md §6); beyond it the speed levels off while memory keeps growing."""


@dataclass(frozen=True)
class Chunks:
    """The budget's decisions: training tasks per vmap/fused call (0: the whole meta-batch), test
    episodes per task-batched evaluation call (where the algorithm and model have that form) and
    per evaluation call under vmap (support-set BatchNorm, or no task-batched form)."""

    train: int
    eval: int
    eval_vmap: int

    def record(self) -> dict[str, Any]:
        """The env.json entries."""
        return {
            "train_chunk_size": self.train,
            "eval_chunk_size": self.eval,
            "eval_vmap_chunk_size": self.eval_vmap,
        }


def episode_mb(cfg: Config, model: Backbone, copies: int) -> float:
    """Estimated MB of `copies` activation-sized tensors for one task of cfg's shape."""
    pictures = cfg.task.ways * (cfg.task.shots + cfg.task.queries)
    element = next(model.parameters()).element_size()
    return model.activation_elements(pictures) * element * copies / 2**20


def train_chunk_size(cfg: Config, model: Backbone) -> int:
    """Tasks per vmap/fused call: runtime.chunk_size, lowered so that one call's estimated
    activations (SAVED_COPIES per task) fit in runtime.max_memory MB; at least one task."""
    r = cfg.runtime
    if not r.max_memory:
        return r.chunk_size
    fit = max(1, int(r.max_memory // episode_mb(cfg, model, SAVED_COPIES)))
    return min(fit, r.chunk_size) if r.chunk_size else fit


def eval_chunk_size(cfg: Config, model: Backbone, batched: bool) -> int:
    """Test episodes per evaluation call: eval.chunk_size, or with 0 (auto) as many as fit in
    runtime.max_memory (EVAL_COPIES each), between VMAP_EVAL_CHUNK and EVAL_CHUNK_MAX;
    VMAP_EVAL_CHUNK where evaluation is not task-batched (`batched` False)."""
    if cfg.eval.chunk_size:
        return cfg.eval.chunk_size
    if not batched:
        return VMAP_EVAL_CHUNK
    if not cfg.runtime.max_memory:
        return EVAL_CHUNK_MAX
    fit = int(cfg.runtime.max_memory // episode_mb(cfg, model, EVAL_COPIES))
    return min(max(VMAP_EVAL_CHUNK, fit), EVAL_CHUNK_MAX)


PARAMETER_COPIES = 6
"""Parameter-sized tensors training keeps: the weights, their gradient, Adam's two moments, and
the inner loop's adapted copy with its gradient."""


def estimated_bytes(cfg: Config) -> tuple[int, int]:
    """(bytes of the parameter-sized tensors, bytes of one task's activations) for cfg's model and
    task, from a model built on the meta device (shapes only, nothing allocated)."""
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.data.channels, cfg.data.image_size, cfg.task.ways)
    params = sum(p.numel() for p in model.parameters()) * 4 * PARAMETER_COPIES
    pictures = cfg.task.ways * (cfg.task.shots + cfg.task.queries)
    return params, model.activation_elements(pictures) * 4 * SAVED_COPIES


def check_fits(cfg: Config, available: int | None = None) -> None:
    """ConfigError (before any folder or tensor exists) when one task of cfg's model cannot fit in
    the memory this machine has available (`available` bytes; default: MemAvailable)."""
    available = available_memory() if available is None else available
    if available is None:
        return
    params, task = estimated_bytes(cfg)
    if params + task <= available:
        return
    what = (
        f"model.hidden = {cfg.model.hidden}"
        if params >= task
        else f"data.image_size = {cfg.data.image_size} with {cfg.task.ways}-way "
        f"{cfg.task.shots}-shot {cfg.task.queries} queries"
    )
    raise ConfigError(
        f"{what}: one task needs about {(params + task) / 2**30:.1f} GiB, this machine has "
        f"{available / 2**30:.1f} GiB available; use a smaller model.hidden, data.image_size or task"
    )
