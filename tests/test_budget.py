"""runtime.max_memory: the meta-batch split into chunks that fit, with the same gradients."""

from __future__ import annotations

import pytest
import torch

from metafew.budget import (
    EVAL_CHUNK_MAX,
    EVAL_COPIES,
    SAVED_COPIES,
    VMAP_EVAL_CHUNK,
    eval_chunk_size,
    train_chunk_size,
)
from metafew.config import Config
from metafew.learner import build_learner
from metafew.models import build_model
from metafew.tasks import Episode


def _config(batching: str, max_memory: int = 0, chunk_size: int = 0) -> Config:
    cfg = Config()
    cfg.model.hidden, cfg.model.pool = 16, "stride"
    cfg.task.shots, cfg.task.queries = 1, 3
    cfg.runtime.batching, cfg.train.meta_batch_size = batching, 5
    cfg.runtime.max_memory, cfg.runtime.chunk_size, cfg.runtime.device = max_memory, chunk_size, "cpu"
    return cfg


def _per_task_mb(cfg: Config, copies: int = SAVED_COPIES) -> float:
    model = build_model(cfg.model, cfg.data.channels, cfg.data.image_size, cfg.task.ways)
    pictures = cfg.task.ways * (cfg.task.shots + cfg.task.queries)
    return model.activation_elements(pictures) * 4 * copies / 2**20


def test_activation_elements_counts_every_convolution_output() -> None:
    cfg = _config("fused")
    model = build_model(cfg.model, 1, 28, 5)
    # 28 -> 14 -> 7 -> 4 -> 2 with 16 channels, plus the 1-channel input
    assert model.activation_elements(3) == 3 * (28 * 28 + 16 * (14 * 14 + 7 * 7 + 4 * 4 + 2 * 2))


def test_budget_sets_the_tasks_per_call_and_never_raises_chunk_size() -> None:
    per_task = _per_task_mb(_config("fused"))
    model = build_model(_config("fused").model, 1, 28, 5)
    assert train_chunk_size(_config("fused"), model) == 0  # no budget: the whole meta-batch
    assert train_chunk_size(_config("fused", max_memory=1), model) == max(1, int(1 // per_task))
    budget = int(3.5 * per_task) + 1
    assert train_chunk_size(_config("fused", max_memory=budget), model) == int(budget // per_task)
    assert train_chunk_size(_config("fused", max_memory=budget, chunk_size=2), model) == 2
    assert train_chunk_size(_config("fused", max_memory=10**6, chunk_size=2), model) == 2


def test_evaluation_chunk_follows_the_budget_between_its_bounds() -> None:
    cfg = _config("fused")
    cfg.task.queries = 200  # large episodes, so that small budgets bind
    model = build_model(cfg.model, 1, 28, 5)
    per_episode = _per_task_mb(cfg, EVAL_COPIES)
    assert eval_chunk_size(cfg, model, batched=True) == EVAL_CHUNK_MAX  # no budget
    for episodes in (VMAP_EVAL_CHUNK + 1, EVAL_CHUNK_MAX - 1):
        cfg.runtime.max_memory = int(episodes * per_episode) + 1
        assert eval_chunk_size(cfg, model, batched=True) == episodes
    cfg.runtime.max_memory = 1
    assert eval_chunk_size(cfg, model, batched=True) == VMAP_EVAL_CHUNK  # never below the old default
    cfg.runtime.max_memory = 10**6
    assert eval_chunk_size(cfg, model, batched=True) == EVAL_CHUNK_MAX
    assert eval_chunk_size(cfg, model, batched=False) == VMAP_EVAL_CHUNK
    cfg.eval.chunk_size = 3  # an explicit value wins
    assert eval_chunk_size(cfg, model, batched=True) == eval_chunk_size(cfg, model, batched=False) == 3


@pytest.mark.parametrize("batching", ["fused", "vmap"])
def test_meta_gradients_are_the_same_with_and_without_a_memory_budget(batching: str) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5)
    pictures = [torch.rand(n, 1, 28, 28, generator=g, dtype=torch.float64) for n in [5, 15] * 5]
    episodes = [
        Episode(s, labels, q, labels.repeat_interleave(3), labels) for s, q in zip(*[iter(pictures)] * 2)
    ]
    whole = build_learner(_config(batching), torch.device("cpu"), 10)
    budget = int(2 * _per_task_mb(_config(batching))) + 1  # two tasks per call: chunks 2, 2, 1
    split = build_learner(_config(batching, max_memory=budget), torch.device("cpu"), 10)
    assert split.algorithm.chunk_size == 2  # type: ignore[attr-defined]
    params = {k: v.detach().double().requires_grad_() for k, v in whole.params.items()}  # float64
    a = whole.algorithm.meta_gradients(params, episodes, 0)
    b = split.algorithm.meta_gradients(params, episodes, 0)
    for k, grad in a.grads.items():
        torch.testing.assert_close(b.grads[k], grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(b.losses, a.losses)
