"""The `metafew` command line: parse -> call one library function -> report. Typer lives here
only; user errors (metafew.errors) become one line on stderr and the documented exit code (see
`metafew exit-codes`). One module per command group: train, use (finetune, select, predict, eval),
info (runs, compare, config, exit-codes), plot, sweep, export, presets (configs list|cp), data.
Every module imports torch inside its commands only, so `--help` and `--version` stay fast."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from metafew import __version__
from metafew.cli import data, info, presets, use
from metafew.cli import train as train_command
from metafew.cli.export import export as export_command
from metafew.cli.plot import plot as plot_command
from metafew.cli.sweep import sweep as sweep_command
from metafew.errors import Interrupted

app = typer.Typer(
    help="Few-shot meta-learning on images: meta-train, fine-tune, predict, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"metafew {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """Few-shot meta-learning on images: meta-train, fine-tune, predict, evaluate."""


app.command()(train_command.train)
app.command()(use.finetune)
app.command()(use.select)
app.command()(use.predict)
app.command("eval")(use.evaluate)
app.command("export")(export_command)
app.command()(info.runs)
app.command("plot")(plot_command)
app.command("compare")(info.compare_configs)
app.command("diff")(info.diff)
app.command("sweep")(sweep_command)
app.command("config")(info.show_config)
app.command("exit-codes")(info.exit_codes)
app.add_typer(data.data_app, name="data")
app.add_typer(presets.configs_app, name="configs")


def main() -> None:
    """Console-script entry point. A command stopped by a signal (exit 130) has already written
    everything it keeps and said so: it leaves at once, without the interpreter's teardown of
    torch (1.5 s idle, several seconds on a loaded machine, out of a cluster's notice period)."""
    from metafew.allocator import tune_allocator

    tune_allocator()
    try:
        app()
    except SystemExit as exc:
        if exc.code == Interrupted.exit_code:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(Interrupted.exit_code)
        raise


__all__ = ["app", "main"]
