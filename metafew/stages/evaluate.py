"""`metafew eval`: accuracy of a checkpoint on seeded test episodes of the novel classes, with a
95% confidence interval -> <run>/eval/<stamp>-<id>.json."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from metafew.augment import augment_spec
from metafew.config_load import episode_setting
from metafew.data.download import Progress as DownloadProgress
from metafew.errors import ConfigError
from metafew.evaluation import confidence_interval, evaluate, queries_per_class
from metafew.files import ensure_writable, write_json
from metafew.launch import load_run_data
from metafew.plots import plot_episode_histogram
from metafew.progress import Advance, silent
from metafew.runs import new_file, resolve_run
from metafew.selection import evaluate_recipe
from metafew.stages.common import (
    StopRequested,
    check_stop,
    checkpoint_name,
    meta_learner,
    nothing_written,
    run_config,
)
from metafew.tasks import EpisodeSampler


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate_run` wrote to `path` (`summary` is that JSON's content)."""

    path: Path
    summary: dict[str, Any]


def evaluate_run(
    run: Path,
    checkpoint: str | None,
    overrides: list[str],
    progress: DownloadProgress | None = None,
    *,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> EvalResult:
    """Accuracy on eval.episodes seeded test episodes of the novel classes -> <run>/eval/*.json.
    `stop_requested()` is checked between phases and chunks of episodes: Interrupted, nothing
    written."""
    run = resolve_run(run)
    ensure_writable(run / "eval")
    cfg = run_config(run, overrides, ("eval", "finetune", "augment", "runtime"))
    if not cfg.eval.finetune:  # the algorithm's own adaptation reads neither section
        ignored = [o.partition("=")[0] for o in overrides if o.startswith(("finetune.", "augment."))]
        if ignored:
            raise ConfigError(
                f"{ignored[0]} has no effect on eval unless eval.finetune=true (episodes are adapted by "
                "the algorithm itself); add eval.finetune=true or drop it"
            )
    which = checkpoint_name(checkpoint or cfg.eval.checkpoint)
    novel = load_run_data(cfg, run, progress).novel
    check_stop(stop_requested, "eval", "after loading the data")
    test = episode_setting(cfg)  # eval.ways / eval.shots where set
    queries = queries_per_class(test, novel)
    sampler = EpisodeSampler(novel, test.task.ways, test.task.shots, queries, cfg.eval.seed, "novel")
    learner, saved = meta_learner(run, cfg, which, test)
    check_stop(stop_requested, "eval", "after loading the checkpoint")
    started = time.perf_counter()
    with nothing_written("eval"):
        if cfg.eval.finetune:
            accs = evaluate_recipe(
                test, learner, sampler, cfg.eval.episodes, stop_requested=stop_requested, advance=advance
            )
        else:
            accs = evaluate(
                learner,
                sampler,
                cfg.eval.episodes,
                cfg.algorithm.eval_inner_steps,
                None,
                cfg.eval.norm,
                stop_requested=stop_requested,
                advance=advance,
            )
    mean, ci = confidence_interval(accs)
    summary = {
        "accuracy": mean,
        "ci95": ci,
        "episodes": cfg.eval.episodes,
        "ways": test.task.ways,
        "shots": test.task.shots,
        "queries": queries,
        "inner_steps": cfg.algorithm.eval_inner_steps,
        "norm": cfg.eval.norm,
        "adaptation": "finetune recipe" if cfg.eval.finetune else "algorithm",
        "transductive": cfg.eval.finetune and cfg.finetune.unlabeled != "none",
        **(
            {"finetune": asdict(cfg.finetune), "augment": asdict(augment_spec(cfg))}
            if cfg.eval.finetune
            else {}
        ),
        "checkpoint": which,
        "meta_iteration": saved.iteration,
        "seed": cfg.eval.seed,
        "seconds": time.perf_counter() - started,
        "per_episode": accs.tolist(),
    }
    path = new_file(run / "eval", ".json")
    write_json(path, summary)
    with contextlib.suppress(OSError):  # the figure is a view of the JSON: a full disk keeps the JSON
        plot_episode_histogram(
            accs.tolist(),
            path.with_suffix(".png"),
            f"{test.task.ways}-way {test.task.shots}-shot, {cfg.eval.episodes} test episodes "
            f"({which} checkpoint, iteration {saved.iteration})",
        )
    return EvalResult(path, summary)
