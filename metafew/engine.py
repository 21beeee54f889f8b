"""Training, evaluation, fine-tuning and prediction loops. No algorithm names appear here:
algorithms come from the registry and only produce gradients and adapted parameters."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from metafew.algorithms import Algorithm, build_algorithm
from metafew.config import Config, to_dict
from metafew.data import FewShotData, LabeledImages, to_float
from metafew.distributed import Solo
from metafew.errors import ConfigError, DataError, DivergedError, Interrupted, RunError
from metafew.functional import Forward, Params, make_forward, task_forward
from metafew.models import Conv4, NormStats, activation_elements, build_model
from metafew.plots import plot_learning_curve
from metafew.runs import append_metrics, read_metrics, save_checkpoint, truncate_metrics
from metafew.tasks import EpisodeSampler, stack_episodes

Progress = Callable[[int, int, dict[str, float]], None]
"""progress(iterations done, iterations in all, latest metrics)."""


def tune_allocator() -> bool:
    """Keep freed activation buffers in glibc's heap instead of returning them to the OS.

    With glibc's defaults every meta-step mmaps, page-faults and unmaps ~100 MB of activations;
    this cost 25-30% of training speed on a 2-core CPU (measured: 5.3 -> 6.9 tasks/s, seed
    setting). Set METAFEW_MALLOC=default to keep glibc's settings. Returns whether it applied.
    """
    if os.environ.get("METAFEW_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameter numbers from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda if available else cpu; anything else must be available."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device = {spec!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {spec!r}: CUDA is not available here; use train.device=cpu")
    return device


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


def _episode_mb(cfg: Config, model: Conv4, copies: int) -> float:
    """Estimated MB of `copies` activation-sized tensors for one task of cfg's shape."""
    pictures = cfg.task.ways * (cfg.task.shots + cfg.task.queries)
    element = next(model.parameters()).element_size()
    return activation_elements(model, pictures, cfg.data.image_size) * element * copies / 2**20


def budget_chunk_size(cfg: Config, model: nn.Module) -> int:
    """Tasks per vmap/fused call: train.chunk_size, lowered so that one call's estimated
    activations (SAVED_COPIES per task) fit in train.max_memory MB; at least one task."""
    t = cfg.train
    if not t.max_memory or not isinstance(model, Conv4):
        return t.chunk_size
    fit = max(1, int(t.max_memory // _episode_mb(cfg, model, SAVED_COPIES)))
    return min(fit, t.chunk_size) if t.chunk_size else fit


def eval_chunk_size(cfg: Config, model: nn.Module, batched: bool) -> int:
    """Test episodes per task-batched evaluation call: eval.chunk_size, or with 0 (auto) as many
    as fit in train.max_memory (EVAL_COPIES each), between VMAP_EVAL_CHUNK and EVAL_CHUNK_MAX;
    VMAP_EVAL_CHUNK where the model has no task-batched form (`batched` False)."""
    if cfg.eval.chunk_size:
        return cfg.eval.chunk_size
    if not batched or not isinstance(model, Conv4):
        return VMAP_EVAL_CHUNK
    if not cfg.train.max_memory:
        return EVAL_CHUNK_MAX
    fit = int(cfg.train.max_memory // _episode_mb(cfg, model, EVAL_COPIES))
    return min(max(VMAP_EVAL_CHUNK, fit), EVAL_CHUNK_MAX)


@dataclass
class Learner:
    """A model as a pure function, its parameters and the algorithm that adapts it."""

    forward: Forward
    params: Params
    algorithm: Algorithm
    device: torch.device
    train_classes: int
    eval_chunk: int = VMAP_EVAL_CHUNK
    """Test episodes per task-batched call in `evaluate` (see eval_chunk_size)."""


def build_learner(cfg: Config, device: torch.device, train_classes: int) -> Learner:
    """Model (seeded init), algorithm, and every meta-learned tensor: the model's parameters plus
    the algorithm's own `algo.*` ones. `train_classes`: number of meta-train classes."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.data.channels, cfg.data.image_size, cfg.task.ways).to(device)
    forward = make_forward(model)
    chunk = budget_chunk_size(cfg, model)
    if chunk != cfg.train.chunk_size:  # gradients are the same; each chunk adds sum(losses) / tasks
        cfg = replace(cfg, train=replace(cfg.train, chunk_size=chunk))
    algorithm = build_algorithm(cfg, forward, train_classes)
    params: Params = dict(model.named_parameters())
    extra = algorithm.init_meta_params(params)
    params |= {k: nn.Parameter(v.detach().clone()) for k, v in extra.items()}
    eval_chunk = eval_chunk_size(cfg, model, task_forward(forward) is not None)
    return Learner(forward, params, algorithm, device, train_classes, eval_chunk)


def load_params(learner: Learner, saved: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy saved tensors into the learner's parameters (names and shapes must match)."""
    mismatch = [k for k, p in learner.params.items() if k not in saved or saved[k].shape != p.shape]
    mismatch += [k for k in saved if k not in learner.params]
    if mismatch:
        raise RunError(
            f"{source} does not fit the model in its config (parameter {mismatch[0]!r}); "
            "was the file copied from another run?"
        )
    with torch.no_grad():
        for key, param in learner.params.items():
            param.copy_(saved[key])


def norm_stats(learner: Learner, params: Params, x: torch.Tensor) -> NormStats:
    """The BatchNorm statistics the model computes on x [N, C, H, W] with `params`."""
    return learner.forward(params, x, None, True)[1]


# ---------------------------------------------------------------------------------------------
# evaluation


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
) -> np.ndarray:
    """Query accuracy of episodes 0..episodes-1 of `sampler`: [episodes] float64; `lr` None
    means the algorithm's own inner step size.

    Each episode adapts on its support set and classifies its queries; `chunk` episodes run at
    once (None or 0: the learner's eval_chunk task-batched, VMAP_EVAL_CHUNK under vmap); no outer
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
    batched = getattr(learner.algorithm, "task_accuracies", None) if norm == "transductive" else None
    chunk = chunk or (VMAP_EVAL_CHUNK if batched is None else learner.eval_chunk)
    out = []
    with torch.no_grad():  # torch.func.grad still differentiates the inner loop
        for start in range(0, episodes, chunk):
            batch = [
                sampler.episode(i).to(learner.device) for i in range(start, min(start + chunk, episodes))
            ]
            stacked = stack_episodes(batch)
            acc = None if batched is None else batched(learner.params, stacked, steps, lr)
            out.append(
                vmap(accuracy, in_dims=(None, 0, 0, 0, 0))(learner.params, *stacked) if acc is None else acc
            )
    return torch.cat(out).double().cpu().numpy()


def test_queries(cfg: Config, novel: LabeledImages) -> int:
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


# ---------------------------------------------------------------------------------------------
# meta-training


@dataclass
class TrainState:
    """Where a run stands: iterations completed and the best validation result so far."""

    iteration: int = 0
    best_accuracy: float | None = None
    best_iteration: int = 0


def build_optimizer(cfg: Config, params: Params) -> torch.optim.Optimizer:
    """The outer optimizer over every meta-learned tensor (Adam, or plain SGD for Reptile)."""
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(params.values(), lr=cfg.train.outer_lr)
    return torch.optim.Adam(params.values(), lr=cfg.train.outer_lr)


def outer_lr(cfg: Config, iteration: int) -> float:
    """β at outer step `iteration` (0-based): constant, or linearly / cosine-annealed from β to
    min_lr_fraction·β over train.iterations (Reptile anneals ε linearly; MAML++ uses cosine)."""
    a = cfg.train
    progress = iteration / a.iterations
    low = a.min_lr_fraction
    if a.lr_schedule == "linear":
        return a.outer_lr * (1.0 - (1.0 - low) * progress)
    if a.lr_schedule == "cosine":
        return a.outer_lr * (low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return a.outer_lr


def training_samplers(cfg: Config, data: FewShotData) -> tuple[EpisodeSampler, EpisodeSampler | None]:
    """Meta-train and validation episode streams; raises DataError (before any run folder
    exists, when called first) if the classes cannot fill the configured episodes."""
    t, seed = cfg.task, cfg.train.seed
    sampler = EpisodeSampler(data.meta_train, t.ways, t.shots, t.queries, seed, "meta_train")
    if data.meta_val is None or not cfg.train.val_every:
        return sampler, None
    return sampler, EpisodeSampler(data.meta_val, t.ways, t.shots, t.queries, seed + 1, "meta_val")


def rng_states() -> dict[str, Any]:
    """Every global random stream (python, numpy, torch CPU and CUDA) as weights-only-loadable
    values. Training draws nothing from them today (episodes and Reptile's mini-batches are
    functions of (seed, iteration)), but a resumed run restores them so that nothing can drift."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            **numpy_state,
            "state": {
                **numpy_state["state"],
                "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            },
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(saved: dict[str, Any]) -> None:
    """The inverse of `rng_states`."""
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = saved["numpy"]
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def _checkpoint(
    run: Path,
    name: str,
    learner: Learner,
    opt: torch.optim.Optimizer,
    state: TrainState,
    cfg: Config,
) -> None:
    """Everything a bit-identical continuation needs. MAML++'s annealing (multi-step loss
    weights, first-order warm-up) and the outer-lr schedule are functions of `iteration`, and the
    episode streams of (seed, episode index), so these restore them all."""
    save_checkpoint(
        run / "checkpoints" / f"{name}.pt",
        {
            "kind": "meta",
            "iteration": state.iteration,
            "best_accuracy": state.best_accuracy,
            "best_iteration": state.best_iteration,
            "params": {k: v.detach().cpu() for k, v in learner.params.items()},
            "train_classes": learner.train_classes,
            "optimizer": opt.state_dict(),
            "schedule": {"lr_schedule": cfg.train.lr_schedule, "next_lr": outer_lr(cfg, state.iteration)},
            "sampler": {
                "seed": cfg.train.seed,
                "next_episode": state.iteration * cfg.train.meta_batch_size,
                "val_seed": cfg.train.seed + 1,
            },
            "rng": rng_states(),
            "config": to_dict(cfg),
        },
        keep_previous=name == "last",
    )


def _restore(learner: Learner, opt: torch.optim.Optimizer, cfg: Config, saved: dict[str, Any]) -> TrainState:
    """Weights, optimizer and random streams from a checkpoint; where training stands."""
    load_params(learner, saved["params"])
    opt.load_state_dict(saved["optimizer"])
    if "rng" in saved:
        restore_rng_states(saved["rng"])
    else:  # checkpoints written before the full RNG record held only torch's
        torch.set_rng_state(saved["torch_rng"])
    sampler = saved.get("sampler", {"seed": cfg.train.seed})
    if sampler["seed"] != cfg.train.seed:
        raise RunError(
            f"checkpoint was written with train.seed = {sampler['seed']}, the config says {cfg.train.seed}"
        )
    return TrainState(saved["iteration"], saved["best_accuracy"], saved["best_iteration"])


def _check_finite(iteration: int, loss: float, grads: Params) -> None:
    if not math.isfinite(loss) or not all(bool(torch.isfinite(g).all()) for g in grads.values()):
        raise DivergedError(
            f"iteration {iteration + 1}: meta-loss is {loss} (non-finite); lower algorithm.inner_lr or "
            "train.outer_lr; checkpoints were not overwritten"
        )


def _validate(cfg: Config, learner: Learner, sampler: EpisodeSampler) -> tuple[float, float]:
    accs = evaluate(
        learner,
        sampler,
        cfg.train.val_episodes,
        cfg.algorithm.eval_inner_steps,
        None,  # the algorithm's own step size (learned for Meta-SGD and MAML++ LSLR)
        cfg.eval.norm,
        cfg.eval.chunk_size,
    )
    return confidence_interval(accs)


def train(
    cfg: Config,
    data: FewShotData,
    run: Path,
    resume: dict[str, Any] | None = None,
    progress: Progress | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    group: Solo | None = None,
) -> TrainState:
    """Meta-train `cfg.train.iterations` outer steps, writing metrics and checkpoints into `run`.

    With `resume` (a checkpoint dict) the run continues exactly where it stopped: the episode
    streams are functions of (seed, index), and weights, Adam state and random streams are
    restored. When `stop_requested()` turns true (a signal), the current step finishes, `last.pt`
    is written and Interrupted is raised. With a process `group` (torchrun) each process
    computes its share of every meta-batch and only the main process writes into `run`.
    """
    a, group = cfg.train, group or Solo()
    learner = build_learner(cfg, group.place(resolve_device(a.device)), len(data.meta_train.classes))
    opt = build_optimizer(cfg, learner.params)
    state = TrainState()
    if resume is not None:
        state = _restore(learner, opt, cfg, resume)
    if group.is_main:
        truncate_metrics(run, state.iteration)
    sampler, val_sampler = training_samplers(cfg, data)
    started, done_at_start = time.perf_counter(), state.iteration
    saved_at = [state.iteration]

    def save_last() -> None:
        # once per iteration: a second save would rotate the previous checkpoint away
        if not group.is_main or saved_at[0] == state.iteration:
            return
        saved_at[0] = state.iteration
        _checkpoint(run, "last", learner, opt, state, cfg)
        if val_sampler is None:  # no validation classes: the best model is the last one
            _checkpoint(run, "best", learner, opt, state, cfg)

    try:
        while state.iteration < a.iterations:
            it = state.iteration
            share = group.share(it * a.meta_batch_size, a.meta_batch_size)
            episodes = [sampler.episode(i).to(learner.device) for i in share]
            step = learner.algorithm.meta_gradients(learner.params, episodes, it)
            grads, loss, accuracy = group.mean_over_tasks(step.grads, step.losses, step.accuracies)
            _check_finite(it, loss, grads)
            for key, param in learner.params.items():
                param.grad = grads.get(key)
            for param_group in opt.param_groups:
                param_group["lr"] = outer_lr(cfg, it)
            opt.step()
            state.iteration = it + 1
            record = {
                "iteration": state.iteration,
                "loss": loss,
                "accuracy": accuracy,
                "lr": outer_lr(cfg, it),
            }
            elapsed = time.perf_counter() - started
            record["tasks_per_s"] = (state.iteration - done_at_start) * a.meta_batch_size / max(elapsed, 1e-9)
            last = state.iteration == a.iterations
            if group.is_main:
                _log_and_validate(cfg, run, learner, opt, state, record, val_sampler)
            if state.iteration % a.checkpoint_every == 0 or last:
                save_last()
            if progress is not None:
                progress(state.iteration, a.iterations, record)
            if group.any(stop_requested()) and not last:
                save_last()
                raise Interrupted(
                    f"stopped after iteration {state.iteration} (checkpointed); continue with "
                    f"`metafew train --resume {run}`"
                )
    finally:
        if group.is_main:
            _plot(run)
    return state


def _log_and_validate(
    cfg: Config,
    run: Path,
    learner: Learner,
    opt: torch.optim.Optimizer,
    state: TrainState,
    record: dict[str, float],
    val_sampler: EpisodeSampler | None,
) -> None:
    """Metrics line, validation and best.pt after an outer step (main process only); adds the
    validation result to `record`."""
    a, last = cfg.train, state.iteration == cfg.train.iterations
    if state.iteration % a.log_every == 0 or last:
        append_metrics(run, dict(record))
    if val_sampler is not None and (state.iteration % a.val_every == 0 or last):
        mean, ci = _validate(cfg, learner, val_sampler)
        record |= {"val_accuracy": mean, "val_ci95": ci}
        append_metrics(run, {"iteration": state.iteration, "val_accuracy": mean, "val_ci95": ci})
        if state.best_accuracy is None or mean > state.best_accuracy:
            state.best_accuracy, state.best_iteration = mean, state.iteration
            _checkpoint(run, "best", learner, opt, state, cfg)


def _plot(run: Path) -> None:
    """The learning curve; a full disk must not hide the error that ended training."""
    with contextlib.suppress(OSError):
        plot_learning_curve(read_metrics(run), run / "learning_curve.png")


# ---------------------------------------------------------------------------------------------
# fine-tune and predict


@dataclass
class Finetuned:
    """M_finetune: adapted parameters, the BatchNorm statistics of the labeled pictures under
    them (frozen, so that each prediction depends on its own picture only) and class names."""

    params: Params
    stats: NormStats
    classes: list[str]

    def state(self, config: dict[str, Any]) -> dict[str, Any]:
        """What goes into model.pt (CPU tensors, weights-only loadable)."""
        return {
            "kind": "finetuned",
            "params": {k: v.cpu() for k, v in self.params.items()},
            "stats": [[m.cpu(), v.cpu()] for m, v in self.stats],
            "classes": self.classes,
            "config": config,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Finetuned:
        """The inverse of `state`, on `device`."""
        params = {k: v.to(device) for k, v in state["params"].items()}
        return cls(params, [(m.to(device), v.to(device)) for m, v in state["stats"]], list(state["classes"]))


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
    learner: Learner, model: Finetuned, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Class probabilities [n, ways] for uint8 images [n, C, H, W]. BatchNorm uses the frozen
    statistics of `model`, so a picture's result does not depend on the rest of the batch."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_float(images[start : start + batch_size]).to(learner.device)
            out.append(torch.softmax(learner.forward(model.params, x, model.stats), dim=-1).cpu())
    return torch.cat(out)
