"""`metafew select`: choose the fine-tuning recipe (and the meta-trained run) by k-fold
cross-validation on the labeled novel pictures, report the chosen one's estimated accuracy with a
95% interval (as fitted: a seed ensemble where finetune.members > 1), then fine-tune it on all of
them -> <run>/finetune/<stamp>-<id>/ with the table
of candidates in finetune.json["selection"]."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metafew.data.download import Progress as DownloadProgress
from metafew.errors import ConfigError, DataError
from metafew.files import ensure_writable
from metafew.progress import Advance, silent
from metafew.runs import resolve_run
from metafew.selection import cross_validate, wilson_interval
from metafew.stages.common import (
    StopRequested,
    check_stop,
    checkpoint_name,
    nothing_written,
    novel_learner,
    run_config,
    unlabeled_pictures,
)
from metafew.stages.finetune import SECTIONS, FinetuneResult, Sources, fit_and_save, labeled_pictures

SINGLE = "finetune.members=1"
"""Candidates are compared as single models (unless one sets finetune.members itself): on
fashion-swap a seed ensemble added 2-4 of 75 pictures to each of three recipes alike
(BENCHMARKS.md section 7f), so ranking them needs no ensemble; the chosen one is then estimated,
and fitted, with the configured finetune.members."""

CONFIRM_SEED = 1000
"""Added to finetune.seed for the chosen candidate's second estimate: folds and draws that took
no part in choosing it."""

DEFAULT_CANDIDATES = (
    "finetune.steps=0",
    "finetune.augment=false",
    "",
    "finetune.tta=8",
    "finetune.unlabeled=entropy",
    "finetune.unlabeled=fixmatch",
    "finetune.unlabeled=selftrain",
)
"""Recipes compared when none are given: the algorithm's own adaptation only, supervised
fine-tuning, + augmentation (the defaults), + test-time views, + entropy, + FixMatch,
+ self-training. Those that need unlabeled pictures are dropped when there are none."""


@dataclass(frozen=True)
class Estimate:
    """One candidate's cross-validated accuracy: `correct` of `pictures`, with its 95% interval,
    fitted as a seed ensemble of `members` in every fold."""

    run: Path
    overrides: str
    correct: int
    pictures: int
    seconds: float
    members: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.pictures

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.pictures)

    def record(self) -> dict[str, Any]:
        low, high = self.interval
        return {
            "run": str(self.run),
            "overrides": self.overrides,
            "accuracy": self.accuracy,
            "ci95": [low, high],
            "pictures": self.pictures,
            "members": self.members,
            "seconds": round(self.seconds, 1),
        }


def candidate_list(candidates: list[str] | None, has_unlabeled: bool) -> list[str]:
    """The candidates to compare (each a string of finetune.* / augment.* overrides)."""
    chosen = (
        list(candidates)
        if candidates
        else [c for c in DEFAULT_CANDIDATES if has_unlabeled or "unlabeled=" not in c]
    )
    if not chosen:
        raise ConfigError("select needs at least one --candidate")
    return chosen


def select_run(
    runs: list[Path],
    labeled: Path | None,
    checkpoint: str,
    overrides: list[str],
    progress: DownloadProgress | None = None,
    *,
    unlabeled: Path | None = None,
    candidates: list[str] | None = None,
    folds: int = 5,
    report: Callable[[Estimate], None] = lambda e: None,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> tuple[list[Estimate], Estimate, Estimate, FinetuneResult]:
    """Cross-validate every (run, candidate), `report` each estimate as it is done, estimate the
    best again on fresh folds (the third result; the best itself when there is one candidate),
    fine-tune it on all labeled pictures into its run's finetune/ folder. Labeled and unlabeled pictures
    come from the first run's dataset unless given. Ties go to the earlier candidate. `advance`
    hears the folds done over all estimates ("cross-validation folds"), then the final fine-tune."""
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds")
    runs = [resolve_run(r) for r in runs]
    which = checkpoint_name(checkpoint)
    for run in runs:
        ensure_writable(run / "finetune")
    base = run_config(runs[0], overrides, SECTIONS)
    novel = labeled_pictures(base, labeled, runs[0], progress)
    if folds > min(novel.counts()):
        raise ConfigError(
            f"--folds {folds}: the smallest labeled class has {min(novel.counts())} pictures; "
            "use at most that many folds"
        )
    try:
        pictures = unlabeled_pictures(base, unlabeled, runs[0], progress)[0]
    except (ConfigError, DataError):
        if unlabeled is not None:
            raise
        pictures = None  # the dataset has none (or no readable ones): the supervised candidates only
    chosen = candidate_list(candidates, pictures is not None)
    for candidate in chosen:
        cfg = run_config(runs[0], [*overrides, *shlex.split(candidate)], SECTIONS)
        if cfg.finetune.unlabeled != "none" and pictures is None:
            raise ConfigError(
                f"--candidate {candidate!r} uses unlabeled pictures (finetune.unlabeled = "
                f"{cfg.finetune.unlabeled}) but there are none: give --unlabeled DIR"
            )
    check_stop(stop_requested, "select", "after loading the pictures")
    pool = None if pictures is None else pictures.images

    def refitted(run: Path, candidate: str) -> bool:
        """Whether `candidate` is fitted as another ensemble than it is compared as."""
        fitted = run_config(run, [*overrides, *shlex.split(candidate)], SECTIONS)
        compared = run_config(run, [*overrides, SINGLE, *shlex.split(candidate)], SECTIONS)
        return fitted.finetune.members != compared.finetune.members

    pairs = len(runs) * len(chosen)
    total = folds * (pairs + (pairs > 1 or refitted(runs[0], chosen[0])))
    finished = [0]

    def fold_done(what: str, done: int, of: int) -> None:
        advance("cross-validation folds", finished[0] + done, total)
        if done == of:
            finished[0] += of

    def estimate(run: Path, candidate: str, extra: tuple[str, ...] = (), single: bool = True) -> Estimate:
        compared = (SINGLE,) if single else ()  # a candidate's own finetune.members comes after
        cfg = run_config(run, [*overrides, *compared, *shlex.split(candidate), *extra], SECTIONS)
        cfg, learner, _ = novel_learner(run, cfg, which, len(novel.classes))
        started = time.perf_counter()
        correct = cross_validate(
            cfg, learner, novel, pool, folds, stop_requested=stop_requested, advance=fold_done
        )
        seconds = time.perf_counter() - started
        return Estimate(run, candidate, int(correct.sum()), len(correct), seconds, cfg.finetune.members)

    estimates = []
    with nothing_written("select"):
        for run in runs:
            for candidate in chosen:
                estimates.append(estimate(run, candidate))
                report(estimates[-1])
        best = max(estimates, key=lambda e: e.correct)  # max keeps the first of equals
        cfg = run_config(best.run, [*overrides, *shlex.split(best.overrides)], SECTIONS)
        confirmed = best
        # the winner's own folds flatter it, and an ensemble is not the single model compared:
        # estimate what will be fitted once more, on fresh folds
        if len(estimates) > 1 or refitted(best.run, best.overrides):
            fresh = (f"finetune.seed={cfg.finetune.seed + CONFIRM_SEED}",)
            confirmed = estimate(best.run, best.overrides, fresh, single=False)
    cfg, learner, saved = novel_learner(best.run, cfg, which, len(novel.classes))
    selection = {
        "folds": folds,
        "chosen": best.record(),
        "estimate": confirmed.record(),
        "candidates": [e.record() for e in estimates],
        "note": "estimated accuracy on pictures of these classes: k-fold cross-validation on the "
        "labeled pictures, 95% Wilson interval; candidates are compared as single models; "
        "`estimate` repeats the chosen candidate's on fresh folds and draws (finetune.seed + "
        "1000), fitted as it is fitted at the end (finetune.members), since the folds that chose it "
        "flatter it",
    }
    source = Sources(labeled, unlabeled)
    result = fit_and_save(
        cfg,
        best.run,
        which,
        learner,
        saved,
        novel,
        pictures,
        source,
        {"selection": selection},
        stop_requested,
        advance,
    )
    return estimates, best, confirmed, result
