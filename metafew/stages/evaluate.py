"""`metafew eval`: accuracy of a checkpoint on seeded test episodes of the novel classes, with a
95% confidence interval -> <run>/eval/<stamp>-<id>.json."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metafew.augment import augment_spec
from metafew.config import Config
from metafew.config_load import episode_setting
from metafew.data.base import FewShotData, LabeledImages
from metafew.data.download import Progress as DownloadProgress
from metafew.errors import ConfigError, RunError
from metafew.evaluation import confidence_interval, evaluate, paired_difference, queries_per_class
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
    """Accuracy on eval.episodes seeded episodes of the novel classes (eval.split=meta_val: the
    validation ones) -> <run>/eval/*.json. `stop_requested()` is checked between phases and
    chunks of episodes: Interrupted, nothing written."""
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
    classes = episode_classes(cfg, load_run_data(cfg, run, progress))
    check_stop(stop_requested, "eval", "after loading the data")
    test = episode_setting(cfg)  # eval.ways / eval.shots where set
    queries = queries_per_class(test, classes)
    sampler = EpisodeSampler(classes, test.task.ways, test.task.shots, queries, cfg.eval.seed, cfg.eval.split)
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
        "split": cfg.eval.split,
        "seed": cfg.eval.seed,
        "novel": classes.fingerprint(),
        "seconds": time.perf_counter() - started,
        "per_episode": accs.tolist(),
    }
    path = new_file(run / "eval", ".json")
    write_json(path, summary)
    with contextlib.suppress(OSError):  # the figure is a view of the JSON: a full disk keeps the JSON
        plot_episode_histogram(
            accs.tolist(),
            path.with_suffix(".png"),
            f"{test.task.ways}-way {test.task.shots}-shot, {cfg.eval.episodes} "
            f"{'test' if cfg.eval.split == 'novel' else 'validation'} episodes "
            f"({which} checkpoint, iteration {saved.iteration})",
        )
    return EvalResult(path, summary)


def episode_classes(cfg: Config, data: FewShotData) -> LabeledImages:
    """The classes eval.split names: the novel ones, or the meta-validation ones (ConfigError
    where the run has none)."""
    if cfg.eval.split == "novel":
        return data.novel
    if data.meta_val is None:
        raise ConfigError(
            "eval.split = meta_val, but this run has no meta-validation classes (its data.* split holds "
            "none out); use eval.split=novel, or train with validation classes"
        )
    return data.meta_val


# What two eval results must share to have scored the same seeded episodes ("novel" is the
# fingerprint of the episodes' pictures; results written before it was recorded lack it).
_SAME_EPISODES = ("split", "novel", "seed", "episodes", "ways", "shots", "queries")
# Settings worth naming when they differ between two results of the same episodes.
_SETTINGS = ("checkpoint", "meta_iteration", "adaptation", "inner_steps", "norm", "finetune", "augment")


def read_result(path: Path) -> dict[str, Any]:
    """An eval/*.json that `metafew eval` wrote, with its per-episode accuracies; RunError if it
    cannot be read or is not one."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(
            f"cannot read {str(path)!r} ({exc}); give an eval/*.json file that metafew eval wrote"
        ) from None
    if not isinstance(result, dict) or not isinstance(result.get("per_episode"), list):
        raise RunError(
            f"{str(path)!r} has no per_episode accuracies (not an eval result, or one from before they "
            "were kept); run `metafew eval RUN` again"
        )
    return result


def _settings(result: dict[str, Any]) -> dict[str, Any]:
    """The result's settings as dotted keys: {"finetune.members": 5, "checkpoint": "best", ...}."""
    flat: dict[str, Any] = {}
    for key in _SETTINGS:
        value = result.get(key)
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif value is not None:
            flat[key] = value
    return flat


def _changed(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """now's settings that differ from was, as key=value; a section was lacks altogether (the
    finetune.* recipe of a result adapted by the algorithm) is named by `adaptation` alone."""
    sections = {k.partition(".")[0] for k in was}
    return [
        f"{k}={v}"
        for k, v in now.items()
        if (k in was and was[k] != v) or (k not in was and k.partition(".")[0] in sections)
    ]


@dataclass(frozen=True)
class Paired:
    """One eval result beside the first of a `paired_results` call, on the same test episodes."""

    path: Path
    episodes: int
    accuracy: float
    ci95: float
    difference: float  # its accuracy − the first's, episode by episode, averaged
    difference_ci95: float  # half-width of the 95% interval of that mean
    better: int  # episodes it scored above the first
    worse: int  # ... and below
    changed: list[str]  # its settings that differ from the first's, as key=value

    @property
    def verdict(self) -> str:
        """ "better" or "worse" than the first where the difference's 95% interval excludes 0."""
        if self.difference - self.difference_ci95 > 0:
            return "better"
        return "worse" if self.difference + self.difference_ci95 < 0 else "not told apart"


def paired_results(paths: list[Path]) -> tuple[list[Paired], list[str]]:
    """Every result of `paths` against the first, episode by episode (evaluation.paired_difference),
    and warnings for results whose test pictures cannot be checked (no "novel" fingerprint).
    ConfigError if a result scored other episodes than the first (another eval.seed, count,
    setting or test set): the difference would mean nothing."""
    results = [read_result(p) for p in paths]
    first, base = results[0], np.asarray(results[0]["per_episode"], dtype=np.float64)
    warnings = [
        f"{p} predates the test pictures' fingerprint: the same episodes are assumed from its seed and counts"
        for p, r in zip(paths, results)
        if "novel" not in r
    ]
    rows = []
    for path, result in zip(paths, results):
        for key in _SAME_EPISODES:
            if key in first and key in result and result[key] != first[key]:
                raise ConfigError(
                    f"{path} scored other test episodes than {paths[0]} ({key} {result[key]!r} against "
                    f"{first[key]!r}); a paired difference needs the same eval.split, eval.seed, "
                    "eval.episodes, ways, shots, queries and test pictures: rerun one with the other's"
                )
        accs = np.asarray(result["per_episode"], dtype=np.float64)
        if accs.shape != base.shape:
            raise ConfigError(
                f"{path} has {len(accs)} per-episode accuracies against {len(base)} in {paths[0]}; "
                "give results of the same eval.episodes"
            )
        mean, ci = confidence_interval(accs)
        difference, difference_ci = paired_difference(base, accs)
        rows.append(
            Paired(
                path,
                len(accs),
                mean,
                ci,
                difference,
                difference_ci,
                int((accs > base).sum()),
                int((accs < base).sum()),
                _changed(_settings(first), _settings(result)),
            )
        )
    return rows, warnings
