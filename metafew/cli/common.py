"""What every command shares: the consoles, user errors as one line and an exit code, the
overrides argument, the download bar, the stop flag that signals set."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from metafew.errors import MetafewError
from metafew.stopping import StopSignal

console = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True)

ConfigFiles = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file or shipped preset name (metafew configs list); repeat to compose, "
        "later files win key by key",
    ),
]

Overrides = Annotated[
    list[str] | None, typer.Argument(help="dotted overrides, e.g. task.shots=1 train.outer_lr=1e-3")
]


@contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Turn a MetafewError into one line on stderr and its exit code (an error without a message
    was reported by another process: exit code only)."""
    try:
        yield
    except MetafewError as exc:
        if str(exc):
            err.print(f"[bold red]{prefix}error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


def stop_on_signals() -> StopSignal:
    """A StopSignal set by SIGINT/SIGTERM/SIGUSR1, so that a command stops at its next check
    (training after the current step, eval/finetune/predict between phases and steps) or at once
    inside work it can throw away (validation, test episodes, prediction), and exits 130; it
    remembers which signal (only SIGTERM/SIGUSR1, a cluster's preemption notice, may requeue the
    job). Installed when it is made: make it before any slow work."""
    stop = StopSignal()
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop.receive)
    return stop


def note(line: str) -> None:
    """A remark on stderr; a leading `warning:` is shown in yellow."""
    if line.startswith("warning: "):
        err.print(f"[yellow]warning:[/] {escape(line.removeprefix('warning: '))}", highlight=False)
    else:
        err.print(escape(line), highlight=False)


def say(line: str) -> None:
    """A result line on stdout."""
    console.print(line, highlight=False)


class DownloadBar:
    """Progress callback for dataset downloads: a bar on stderr, shown once bytes arrive."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.tasks: dict[str, Any] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[mb]}"), console=err
            )
            self.bar.start()
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(f"downloading {name}", total=total, mb="")
        self.bar.update(self.tasks[name], completed=done, mb=f"{done / 2**20:.1f} MB")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __enter__(self) -> DownloadBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkBar:
    """The `advance(what, done, total)` of long library work (metafew.progress): on a terminal a
    bar per phase on stderr with the elapsed time and an ETA; elsewhere (job logs, pipes) a line at
    every tenth of a phase, so a log shows progress without flooding."""

    def __init__(self, stage: str, terminal: bool | None = None) -> None:
        self.stage = stage
        self.terminal = err.is_terminal if terminal is None else terminal
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.logged: dict[str, int] = {}
        self.started: dict[str, float] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.terminal:
            self._draw(what, done, total)
            return
        tenth = 10 * done // max(total, 1)
        if what not in self.started:
            self.started[what] = time.perf_counter()
        if tenth > self.logged.get(what, 0) or (done == total and self.logged.get(what) != 10):
            self.logged[what] = tenth
            seconds = time.perf_counter() - self.started[what]
            eta = seconds / done * (total - done) if done else 0.0
            err.print(
                f"{self.stage}: {what} {done}/{total} ({seconds:.0f} s, eta {eta:.0f} s)", highlight=False
            )

    def _draw(self, what: str, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
        if what not in self.tasks:
            self.tasks[what] = self.bar.add_task(f"{self.stage}: {what}", total=total)
        self.bar.update(self.tasks[what], completed=done, total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __enter__(self) -> WorkBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
