"""The meta-training loop: outer optimizer, learning-rate schedule, validation, checkpoints.
No algorithm names appear here: algorithms come from the registry and only produce gradients."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from metafew.augment import Augment, augment, augment_spec, view_generator
from metafew.checkpoints import MetaCheckpoint, restore_rng_states, rng_states, save
from metafew.config import Config
from metafew.config_load import dump_yaml, to_dict
from metafew.data import FewShotData
from metafew.distributed import Group, Solo
from metafew.errors import DivergedError, Interrupted, RunError
from metafew.evaluation import confidence_interval, evaluate
from metafew.files import write_json, write_text_atomic
from metafew.functional import Params
from metafew.learner import Learner, build_learner, load_params
from metafew.plots import plot_learning_curve
from metafew.progress import Advance, silent
from metafew.runs import DIVERGED_FILE, DONE_FILE, append_metrics, read_metrics, truncate_metrics
from metafew.system import resolve_device
from metafew.tasks import Episode, EpisodeSampler
from metafew.tracking import NoTracker, Tracker, open_tracker

Progress = Callable[[int, int, dict[str, float]], None]
"""progress(iterations done, iterations in all, latest metrics)."""


@dataclass
class TrainState:
    """Where a run stands: iterations completed and the best validation result so far."""

    iteration: int = 0
    best_accuracy: float | None = None
    best_iteration: int = 0
    finished: str | None = None
    """Why training ended by itself (iterations, time_limit, early_stopping); not checkpointed."""


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


def _checkpoint(
    run: Path, name: str, learner: Learner, opt: torch.optim.Optimizer, state: TrainState, cfg: Config
) -> None:
    """checkpoints/<name>.pt: everything a bit-identical continuation needs (MetaCheckpoint).
    config.yaml follows the checkpoints: a resumed run whose config changed (--allow-change, a new
    train.iterations) rewrites it only once a checkpoint of the changed config exists, so a
    continuation that diverges at once leaves the run as it was."""
    record = MetaCheckpoint(
        iteration=state.iteration,
        best_accuracy=state.best_accuracy,
        best_iteration=state.best_iteration,
        params={k: v.detach().cpu() for k, v in learner.params.items()},
        train_classes=learner.train_classes,
        optimizer=opt.state_dict(),
        rng=rng_states(),
        config=to_dict(cfg),
    )
    save(run / "checkpoints" / f"{name}.pt", record, keep_previous=name == "last")
    text = dump_yaml(cfg)
    config = run / "config.yaml"
    if not config.is_file() or config.read_text(encoding="utf-8") != text:
        write_text_atomic(config, text)


def _restore(learner: Learner, opt: torch.optim.Optimizer, cfg: Config, saved: MetaCheckpoint) -> TrainState:
    """Weights, optimizer and random streams from a checkpoint; where training stands."""
    seed = saved.config.get("train", {}).get("seed", cfg.train.seed)
    if seed != cfg.train.seed:
        raise RunError(f"checkpoint was written with train.seed = {seed}, the config says {cfg.train.seed}")
    load_params(learner, saved.params)
    opt.load_state_dict(saved.optimizer)
    restore_rng_states(saved.rng)
    return TrainState(saved.iteration, saved.best_accuracy, saved.best_iteration)


def _check_finite(iteration: int, loss: float, grads: Params) -> None:
    if not math.isfinite(loss) or not all(bool(torch.isfinite(g).all()) for g in grads.values()):
        raise DivergedError(
            f"iteration {iteration + 1}: meta-loss is {loss} (non-finite); lower algorithm.inner_lr or "
            "train.outer_lr; checkpoints were not overwritten"
        )


def augmented(episode: Episode, spec: Augment | None, seed: int = 0) -> Episode:
    """`episode` with its support and query pictures augmented (None: unchanged), drawn from
    view_generator(seed, episode.index) so that a task's transforms depend on the task only (exact
    resume, any number of processes)."""
    if spec is None:
        return episode
    generator = view_generator(seed, episode.index)
    support_x, query_x = (
        augment(episode.support_x, spec, generator),
        augment(episode.query_x, spec, generator),
    )
    return Episode(support_x, episode.support_y, query_x, episode.query_y, episode.classes, episode.index)


def _validate(
    cfg: Config,
    learner: Learner,
    sampler: EpisodeSampler,
    stop_requested: Callable[[], bool] = lambda: False,
    final: bool = False,
    advance: Advance = silent,
) -> tuple[float, float]:
    """Mean validation accuracy and its 95% half-width (the `final` one, after the last
    iteration, on train.final_val_episodes when set); Interrupted when `stop_requested()` turns
    true between chunks of episodes."""
    episodes = cfg.train.val_episodes
    if final and cfg.train.final_val_episodes is not None:
        episodes = cfg.train.final_val_episodes
    accs = evaluate(
        learner,
        sampler,
        episodes,
        cfg.algorithm.eval_inner_steps,
        None,  # the algorithm's own step size (learned for Meta-SGD and MAML++ LSLR)
        cfg.eval.norm,
        stop_requested=stop_requested,
        advance=lambda what, done, total: advance("validation episodes", done, total),
    )
    return confidence_interval(accs)


def train(
    cfg: Config,
    data: FewShotData,
    run: Path,
    resume: MetaCheckpoint | None = None,
    progress: Progress | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    group: Group | None = None,
    learner: Learner | None = None,
    advance: Advance = silent,
) -> TrainState:
    """Meta-train `cfg.train.iterations` outer steps, writing metrics and checkpoints into `run`.

    With `resume` (a checkpoint) the run continues exactly where it stopped: the episode
    streams are functions of (seed, index), and weights, Adam state and random streams are
    restored. When `stop_requested()` turns true (a signal), the current step finishes (its
    validation, if one is running, is cut short between chunks and left out: the resumed run
    does it first), `last.pt` is written and Interrupted is raised; a request that came before
    the first step (while the run was being prepared, e.g. during data loading) raises at once,
    nothing written. With a process `group` (torchrun) each process computes its share of every
    meta-batch and only the main process writes into `run`.
    `learner`: this process's, as metafew.launch built it (None: built here on runtime.device).
    `advance("validation episodes", done, total)` as validations go (main process).
    """
    a, group = cfg.train, group or Solo()
    if learner is None:
        device = group.place(resolve_device(cfg.runtime.device))
        learner = build_learner(cfg, device, len(data.meta_train.classes))
    opt = build_optimizer(cfg, learner.params)
    state = TrainState()
    if resume is not None:
        state = _restore(learner, opt, cfg, resume)
    tracker: Tracker = NoTracker()
    if group.is_main:
        truncate_metrics(run, state.iteration)
        tracker = open_tracker(cfg, run, state.iteration)
    sampler, val_sampler = training_samplers(cfg, data)
    spec = augment_spec(cfg) if cfg.train.augment else None
    validated = True
    if group.is_main and resume is not None and val_sampler is not None:
        validated = _redo_cut_validation(
            cfg, run, learner, opt, state, val_sampler, stop_requested, advance, tracker
        )
    if group.any(stop_requested() or not validated):  # every process, whatever it did before
        again = (
            "run the same command again to start"  # a new run's folder goes (launch.discard_if_unsaved)
            if resume is None
            else f"continue with `metafew train --resume {run}`"
        )
        raise Interrupted(f"stopped before iteration {state.iteration + 1}, nothing trained yet; {again}")
    started, done_at_start = time.perf_counter(), state.iteration
    # wall time continues across resumes from the last line kept (learning curves against time)
    before = read_metrics(run) if group.is_main else []
    offset = float((before or [{}])[-1].get("elapsed_s", 0.0))
    validations = [r["iteration"] for r in before if "val_accuracy" in r]  # for train.patience
    if group.is_main:
        (run / DONE_FILE).unlink(missing_ok=True)  # training again: done.json comes back at the end
    state.finished = _budget_spent(cfg, group, offset, validations, state)
    if state.finished is not None:  # resumed at or past its time limit or patience: nothing to do
        _finish(run, group, state, offset)
        return state
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
            episodes = [augmented(sampler.episode(i), spec, cfg.train.seed).to(learner.device) for i in share]
            with learner.forward.meta_training(cfg.train.seed, it):  # DropBlock on, seeded by (seed, it)
                step = learner.algorithm.meta_gradients(learner.params, episodes, it)
            grads, loss, accuracy = group.mean_over_tasks(step.grads, step.losses, step.accuracies)
            _check_finite(it, loss, grads)
            for key, param in learner.params.items():
                param.grad = grads.get(key)
            lr = outer_lr(cfg, it)
            for param_group in opt.param_groups:
                param_group["lr"] = lr
            opt.step()
            state.iteration = it + 1
            record = {"iteration": state.iteration, "loss": loss, "accuracy": accuracy, "lr": lr}
            elapsed = time.perf_counter() - started
            record["tasks_per_s"] = (state.iteration - done_at_start) * a.meta_batch_size / max(elapsed, 1e-9)
            record["elapsed_s"] = offset + elapsed
            if state.iteration == a.iterations:
                state.finished = "iterations"
            elif a.time_limit is not None and group.any(offset + elapsed >= 60 * a.time_limit):
                state.finished = "time_limit"  # this step is the last: validated and checkpointed
            last, validated = state.finished is not None, True
            if group.is_main:  # the others wait in group.any below while rank 0 validates
                validated = _log_and_validate(
                    cfg, run, learner, opt, state, record, val_sampler, stop_requested, advance, tracker, last
                )
                if "val_accuracy" in record:
                    validations.append(state.iteration)
            patient = not last and a.patience is not None and val_sampler is not None
            if patient and group.any(_patience_spent(a.patience or 0, validations, state.best_iteration)):
                state.finished, last = "early_stopping", True
            if state.iteration % a.checkpoint_every == 0 or last:
                save_last()
            if progress is not None:
                progress(state.iteration, a.iterations, record)
            # the same collectives on every process: a stop anywhere, then (at the last step, which
            # otherwise ends normally) whether rank 0's final validation was cut short
            stop = group.any(stop_requested() or not validated)
            if stop and last:
                stop = group.any(not validated)
            if stop:  # the step is complete; a validation cut short is redone on resume
                save_last()
                raise Interrupted(
                    f"stopped after iteration {state.iteration} (checkpointed); continue with "
                    f"`metafew train --resume {run}`"
                )
            if last:
                save_last()
                break
    except BaseException as exc:
        tracker.finish(state.best_accuracy, state.iteration, completed=False)
        if isinstance(exc, DivergedError) and group.is_main:  # for `metafew runs`: diverged, not stopped
            with contextlib.suppress(OSError):
                write_json(run / DIVERGED_FILE, {"iteration": state.iteration + 1, "message": str(exc)})
        raise
    finally:
        if group.is_main:
            _plot(run)
    tracker.finish(state.best_accuracy, state.iteration, completed=True)
    _finish(run, group, state, offset + time.perf_counter() - started)
    return state


def _budget_spent(
    cfg: Config, group: Group, elapsed: float, validations: list[int], state: TrainState
) -> str | None:
    """Why a resumed run has nothing left to train (its time limit or patience already spent;
    train.iterations is the loop's own bound), or None."""
    a = cfg.train
    if state.iteration >= a.iterations:
        return "iterations"
    if state.iteration == 0:
        return None
    if a.time_limit is not None and group.any(elapsed >= 60 * a.time_limit):
        return "time_limit"
    if a.patience is not None and group.any(_patience_spent(a.patience, validations, state.best_iteration)):
        return "early_stopping"
    return None


def _patience_spent(patience: int, validations: list[int], best_iteration: int) -> bool:
    """Early stopping: `patience` validations in a row came after the best one without beating it."""
    return sum(1 for it in validations if it > best_iteration) >= patience


def _finish(run: Path, group: Group, state: TrainState, elapsed: float) -> None:
    """done.json: the run ended by itself (train.iterations, train.time_limit or train.patience)."""
    if group.is_main and state.finished is not None:
        write_json(
            run / DONE_FILE,
            {"iteration": state.iteration, "reason": state.finished, "elapsed_s": elapsed},
        )


def _log_and_validate(
    cfg: Config,
    run: Path,
    learner: Learner,
    opt: torch.optim.Optimizer,
    state: TrainState,
    record: dict[str, float],
    val_sampler: EpisodeSampler | None,
    stop_requested: Callable[[], bool],
    advance: Advance = silent,
    tracker: Tracker | None = None,
    last: bool = False,
) -> bool:
    """Metrics line, validation and best.pt after an outer step (main process only); adds the
    validation result to `record`. False when `stop_requested()` cut the validation short
    (`_keep_validation`)."""
    a, last = cfg.train, last or state.iteration == cfg.train.iterations
    if state.iteration % a.log_every == 0 or last:
        append_metrics(run, dict(record))
        if tracker is not None:
            tracker.log(record)
    if val_sampler is None or not (last or _validation_due(cfg, state.iteration)):
        return True
    return _keep_validation(
        cfg, run, learner, opt, state, record, val_sampler, stop_requested, advance, tracker, last
    )


def _validation_due(cfg: Config, iteration: int) -> bool:
    """Whether the step that completed `iteration` is followed by a validation."""
    return iteration > 0 and (iteration % cfg.train.val_every == 0 or iteration == cfg.train.iterations)


def _keep_validation(
    cfg: Config,
    run: Path,
    learner: Learner,
    opt: torch.optim.Optimizer,
    state: TrainState,
    record: dict[str, float],
    val_sampler: EpisodeSampler,
    stop_requested: Callable[[], bool],
    advance: Advance = silent,
    tracker: Tracker | None = None,
    final: bool = False,
) -> bool:
    """Validate after iteration `state.iteration`: its metrics line, best.pt if it is the best so
    far, the result added to `record`. False when `stop_requested()` cut it short: then nothing
    is written and best.pt is left as it was."""
    validated_from = time.perf_counter()
    try:
        final = final or state.iteration == cfg.train.iterations
        mean, ci = _validate(cfg, learner, val_sampler, stop_requested, final, advance)
    except Interrupted:
        return False
    record |= {"val_accuracy": mean, "val_ci95": ci}
    line = {"iteration": state.iteration, "val_accuracy": mean, "val_ci95": ci}
    if "elapsed_s" in record:  # when validation ended; a validation redone on resume has no time
        line["elapsed_s"] = record["elapsed_s"] + (time.perf_counter() - validated_from)
    append_metrics(run, line)
    if tracker is not None:
        tracker.log(line)
    if state.best_accuracy is None or mean > state.best_accuracy:
        state.best_accuracy, state.best_iteration = mean, state.iteration
        _checkpoint(run, "best", learner, opt, state, cfg)
    return True


def _redo_cut_validation(
    cfg: Config,
    run: Path,
    learner: Learner,
    opt: torch.optim.Optimizer,
    state: TrainState,
    val_sampler: EpisodeSampler,
    stop_requested: Callable[[], bool],
    advance: Advance = silent,
    tracker: Tracker | None = None,
) -> bool:
    """On resume (main process): the validation after the checkpointed step, if a stop cut it
    short (metrics.jsonl has no line for it), so that the continuation equals a run that was
    never stopped; last.pt is then written again when it gave a new best (its best_accuracy
    must count it). False when a stop cut it short again."""
    it = state.iteration
    if not _validation_due(cfg, it) or any(
        r.get("iteration") == it and "val_accuracy" in r for r in read_metrics(run)
    ):
        return True
    if not _keep_validation(cfg, run, learner, opt, state, {}, val_sampler, stop_requested, advance, tracker):
        return False
    if state.best_iteration == it:
        _checkpoint(run, "last", learner, opt, state, cfg)
    return True


def _plot(run: Path) -> None:
    """The learning curve; a full disk must not hide the error that ended training."""
    with contextlib.suppress(OSError):
        plot_learning_curve(read_metrics(run), run / "learning_curve.png")
