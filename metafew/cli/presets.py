"""`metafew configs list | cp`: the experiment configs shipped with metafew."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metafew.cli.common import console, say, user_errors
from metafew.presets import copy, describe, first_sentence, shipped

configs_app = typer.Typer(
    help="The experiment configs shipped with metafew: list them, copy one to edit.", no_args_is_help=True
)


@configs_app.command("list")
def configs_list() -> None:
    """Every shipped config by name (usable as `--config NAME`), with what it sets up."""
    rows = [(name, first_sentence(describe(path)[1])) for name, path in shipped().items()]
    if not console.is_terminal:  # pipes and job logs: tab-separated (typer.echo keeps the tabs)
        for name, text in rows:
            typer.echo(f"{name}\t{text}")
        return
    table = Table("name", "what", show_lines=False)
    table.columns[0].no_wrap = True
    for name, text in rows:
        table.add_row(name, text)
    console.print(table)
    say("use: metafew train --config NAME [-c more.yaml ...]; copy to edit: metafew configs cp NAME DEST")


@configs_app.command("cp")
def configs_cp(
    name: Annotated[str, typer.Argument(help="shipped config name (metafew configs list)")],
    dest: Annotated[Path, typer.Argument(help="file to write, or an existing folder for <name>.yaml")],
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Copy a shipped config to DEST, to edit and pass as --config."""
    with user_errors():
        target = copy(name, dest, force)
    say(f"wrote {target}; run it with: metafew train --config {target}")
