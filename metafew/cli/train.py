"""`metafew train`: meta-train into a new run folder, or resume one."""

from __future__ import annotations

import signal
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from metafew.cli.common import (
    ConfigFiles,
    DownloadBar,
    Overrides,
    console,
    note,
    stop_on_signals,
    user_errors,
)
from metafew.errors import ConfigError, DivergedError, Interrupted
from metafew.progress import Advance, silent
from metafew.stopping import StopSignal

if TYPE_CHECKING:  # imported inside the command: `--help` stays free of torch
    from metafew import engine
    from metafew.runs import RunClaim

FAST_DEV_RUN = [
    "train.iterations=2",
    "train.val_every=1",
    "train.val_episodes=2",
    "train.final_val_episodes=2",
    "train.log_every=1",
    "train.checkpoint_every=1",
]
"""--fast-dev-run: two outer steps, each validated on two episodes (the later stages: DEV_STAGES)."""

DEV_STAGES = {
    "finetune": [
        "finetune.adapt_steps=1",
        "finetune.steps=2",
        "finetune.holdout=0",
        "finetune.unlabeled=none",
    ],
    "eval": ["eval.episodes=2"],
}
"""--fast-dev-run: the overrides of the stages after training, each run once on tiny counts."""


def _format_record(done: int, total: int, record: dict[str, float], short: bool = False) -> str:
    text = f"loss {record['loss']:.3f} acc {100 * record['accuracy']:.1f}%"
    if "val_accuracy" in record:
        text += f" val {100 * record['val_accuracy']:.1f}±{100 * record['val_ci95']:.1f}%"
    return text if short else f"iter {done}/{total} {text} ({record['tasks_per_s']:.1f} tasks/s)"


def _progress_reporter(total: int, start: int) -> tuple[Progress | None, engine.Progress, Advance]:
    """A rich progress bar on a terminal, which also counts validation episodes as they go;
    plain log lines elsewhere (cluster job logs)."""
    if not console.is_terminal:

        def log(done: int, total: int, record: dict[str, float]) -> None:
            if "val_accuracy" in record or done == total or done % 50 == 0:
                console.print(_format_record(done, total, record), highlight=False)

        return None, log, silent
    bar = Progress(
        TextColumn("[bold]meta-train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task("train", total=total, completed=start, metrics="")

    def update(done: int, total: int, record: dict[str, float]) -> None:
        bar.update(task, completed=done, metrics=_format_record(done, total, record, short=True))

    def validating(what: str, done: int, of: int) -> None:
        bar.update(task, metrics=f"validating {done}/{of} episodes")

    return bar, update, validating


def _silent(*args: Any, **kwargs: Any) -> None:
    """console.print for processes other than rank 0: they stay quiet."""


def train(
    config: ConfigFiles = None,
    overrides: Overrides = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="continue this run folder exactly where it stopped; `auto`: the newest unfinished "
            "run with the same config under train.runs_dir, or a new run if there is none"
        ),
    ] = None,
    requeue: Annotated[
        bool,
        typer.Option(
            "--requeue/--no-requeue",
            help="on SIGTERM/SIGUSR1 in a SLURM job: checkpoint, then `scontrol requeue` it",
        ),
    ] = False,
    allow_change: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-change",
            metavar="KEY",
            help="with --resume: let this config key change too (the continuation is then not exact)",
        ),
    ] = None,
    fast_dev_run: Annotated[
        bool,
        typer.Option(
            "--fast-dev-run",
            help="check the whole story in seconds: train 2 iterations, fine-tune, predict and eval on "
            "tiny counts in a temporary folder, then delete it",
        ),
    ] = False,
) -> None:
    """Meta-train M_meta into a new run folder under train.runs_dir, or continue one (--resume)."""
    stop = stop_on_signals()  # first: a signal during start-up or data loading stops before step 1
    from metafew.runs import RunClaim

    if fast_dev_run:
        if resume is not None:
            with user_errors():
                raise ConfigError("--fast-dev-run makes a throwaway run: drop --resume")
        with tempfile.TemporaryDirectory(prefix="metafew-fast-dev-run-") as folder:
            started = time.perf_counter()
            extra = [*FAST_DEV_RUN, f"train.runs_dir={folder}"]
            with RunClaim() as claim:
                run = _train(config, [*(overrides or []), *extra], None, False, [], stop, claim, hint=False)
            _dev_stages(run, stop)
            console.print(
                f"fast-dev-run: train, finetune, predict and eval all ran in "
                f"{time.perf_counter() - started:.1f} s; nothing kept",
                highlight=False,
            )
        return
    with RunClaim() as claim:
        _train(config, overrides or [], resume, requeue, allow_change or [], stop, claim)


def _dev_stages(run: Path, stop: StopSignal) -> None:
    """--fast-dev-run after training: each later stage once, with its time."""
    from metafew import stages
    from metafew.errors import MetafewError

    with user_errors():
        started = time.perf_counter()
        tuned = stages.finetune_run(run, None, "best", DEV_STAGES["finetune"], stop_requested=stop)
        console.print(f"finetune: {time.perf_counter() - started:.1f} s", highlight=False)
        started = time.perf_counter()
        try:
            stages.predict_run(tuned.folder, None, stop_requested=stop)
            console.print(f"predict: {time.perf_counter() - started:.1f} s", highlight=False)
        except MetafewError as exc:  # e.g. a dataset without unlabeled pictures: nothing to label
            note(f"predict: skipped ({exc})")
        started = time.perf_counter()
        stages.evaluate_run(run, None, DEV_STAGES["eval"], stop_requested=stop)
        console.print(f"eval: {time.perf_counter() - started:.1f} s", highlight=False)


def _train(
    config: list[str] | None,
    overrides: list[str],
    resume: str | None,
    requeue: bool,
    allow_change: list[str],
    stop: StopSignal,
    claim: RunClaim,
    hint: bool = True,
) -> Path:
    """The training of `metafew train`: the run folder it trained (`hint`: say what comes next)."""
    from metafew import distributed, engine
    from metafew.launch import ReportedByRankZero, TrainRequest, discard_if_unsaved, prepare

    group = distributed.join()
    say = console.print if group.is_main else _silent
    with user_errors("" if group.is_main else f"rank {group.rank}: "), group:
        request = TrainRequest(config, overrides, resume, frozenset(allow_change))
        with DownloadBar() as download:
            launch = prepare(group, request, claim, note, download)
        cfg, run = launch.cfg, launch.run
        say(f"run folder: {run}", highlight=False)
        bar, report, validating = _progress_reporter(
            cfg.train.iterations, launch.resume.iteration if launch.resume else 0
        )
        started = time.perf_counter()
        try:  # engine.train raises Interrupted before step 1 if a signal came while preparing
            with (
                discard_if_unsaved(launch, group),
                bar if bar is not None and group.is_main else nullcontext(),
            ):
                result = engine.train(
                    cfg,
                    launch.data,
                    run,
                    launch.resume,
                    report if group.is_main else None,
                    stop,
                    group,
                    launch.learner,
                    validating if group.is_main else silent,
                )
        except (Interrupted, DivergedError) as exc:
            if not group.is_main:  # every process stops at the same step; rank 0 says why
                raise ReportedByRankZero(exc.exit_code) from None
            if isinstance(exc, Interrupted) and requeue and stop.signal != signal.SIGINT:
                raise Interrupted(f"{exc}; {distributed.requeue_slurm_job()}") from None
            raise
        best = (
            "n/a"
            if result.best_accuracy is None
            else f"{100 * result.best_accuracy:.2f}% at {result.best_iteration}"
        )
        why = {"time_limit": " (train.time_limit reached)", "early_stopping": " (train.patience ran out)"}
        say(
            f"done: {result.iteration} iterations{why.get(result.finished or '', '')} in "
            f"{time.perf_counter() - started:.0f}s; best validation {best}",
            highlight=False,
        )
        if hint:
            say(f"next: metafew finetune {run}", highlight=False)
    return run
