"""The `metafew` command line: parse -> call one library function -> report. Typer lives here
only; user errors (metafew.errors) become one line on stderr and the documented exit code (see
`metafew exit-codes`). One module per command group: train, use (finetune, predict, eval), info
(runs, compare, config, exit-codes), data."""

from __future__ import annotations

import typer

from metafew.cli import data, info, use
from metafew.cli import train as train_command
from metafew.system import tune_allocator

app = typer.Typer(
    help="Few-shot meta-learning on images: meta-train, fine-tune, predict, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(train_command.train)
app.command()(use.finetune)
app.command()(use.predict)
app.command("eval")(use.evaluate)
app.command()(info.runs)
app.command("compare")(info.compare_configs)
app.command("config")(info.show_config)
app.command("exit-codes")(info.exit_codes)
app.add_typer(data.data_app, name="data")


def main() -> None:
    """Console-script entry point."""
    tune_allocator()
    app()


__all__ = ["app", "main"]
