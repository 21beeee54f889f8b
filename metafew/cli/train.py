"""`metafew train`: meta-train into a new run folder, or resume one."""

from __future__ import annotations

import signal
import time
from contextlib import nullcontext
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
from metafew.errors import DivergedError, Interrupted

if TYPE_CHECKING:  # imported inside the command: `--help` stays free of torch
    from metafew import engine


def _format_record(done: int, total: int, record: dict[str, float], short: bool = False) -> str:
    text = f"loss {record['loss']:.3f} acc {100 * record['accuracy']:.1f}%"
    if "val_accuracy" in record:
        text += f" val {100 * record['val_accuracy']:.1f}±{100 * record['val_ci95']:.1f}%"
    return text if short else f"iter {done}/{total} {text} ({record['tasks_per_s']:.1f} tasks/s)"


def _progress_reporter(total: int, start: int) -> tuple[Progress | None, engine.Progress]:
    """A rich progress bar on a terminal; plain log lines elsewhere (cluster job logs)."""
    if not console.is_terminal:

        def log(done: int, total: int, record: dict[str, float]) -> None:
            if "val_accuracy" in record or done == total or done % 50 == 0:
                console.print(_format_record(done, total, record), highlight=False)

        return None, log
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

    return bar, update


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
) -> None:
    """Meta-train M_meta into a new run folder under train.runs_dir, or continue one (--resume)."""
    stop = stop_on_signals()  # first: a signal during start-up or data loading stops before step 1
    from metafew import distributed, engine
    from metafew.launch import ReportedByRankZero, TrainRequest, discard_if_unsaved, prepare
    from metafew.runs import RunClaim

    group = distributed.join()
    say = console.print if group.is_main else _silent
    with user_errors("" if group.is_main else f"rank {group.rank}: "), group, RunClaim() as claim:
        request = TrainRequest(config, overrides or [], resume, frozenset(allow_change or []))
        with DownloadBar() as download:
            launch = prepare(group, request, claim, note, download)
        cfg, run = launch.cfg, launch.run
        say(f"run folder: {run}", highlight=False)
        bar, report = _progress_reporter(
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
        say(
            f"done: {result.iteration} iterations in {time.perf_counter() - started:.0f}s; "
            f"best validation {best}",
            highlight=False,
        )
        say(f"next: metafew finetune {run}", highlight=False)
