"""`metafew runs`, `compare`, `config` and `exit-codes`: looking at runs, configs and codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metafew.cli.common import ConfigFiles, Overrides, console, user_errors
from metafew.errors import EXIT_CODES


def runs(
    root: Annotated[Path, typer.Option(help="folder holding run folders")] = Path("runs"),
) -> None:
    """Table of runs with their key metrics."""
    from metafew.runs_table import list_runs

    rows = list_runs(root)
    if not rows:
        console.print(f"no runs under {root}", highlight=False)
        return
    header = ("run", "dataset", "algorithm", "setting", "iterations", "best val", "test (95% CI)")
    lines = [
        (
            r.path.name,
            r.dataset,
            r.algorithm,
            r.setting,
            f"{r.iteration}/{r.iterations}",
            "-" if r.best_val is None else f"{100 * r.best_val:.1f}%",
            r.test or "-",
        )
        for r in rows
    ]
    if not console.is_terminal:  # pipes and job logs: full names, tab-separated
        for line in (header, *lines):
            console.print("\t".join(line))
        return
    table = Table(*header)
    table.columns[0].no_wrap = True
    for line in lines:
        table.add_row(*line)
    console.print(table)


def compare_configs(
    configs: Annotated[list[Path], typer.Argument(help="one YAML config per algorithm")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override for every config, key=value")
    ] = None,
    episodes: Annotated[int, typer.Option(help="test episodes per algorithm (same seeded stream)")] = 600,
    seed: Annotated[int, typer.Option(help="seed of the shared test-episode stream")] = 1234,
    out: Annotated[Path, typer.Option(help="where the comparison folder goes")] = Path("runs"),
    predict: Annotated[bool, typer.Option(help="also fine-tune and score the unlabeled pictures")] = True,
) -> None:
    """Train each config, evaluate all on the same test episodes, print and save a table."""
    from metafew.compare import compare, format_table
    from metafew.config_load import load_config

    with user_errors():
        for config in configs:
            load_config(config, overrides or [])  # every config valid before anything trains
        folder, entries = compare(configs, overrides or [], out, episodes, seed, predict, console.print)
        console.print(format_table(entries, episodes), end="")
        console.print(f"saved: {folder / 'comparison.md'} and comparison.json (logs beside them)")


def show_config(
    config: ConfigFiles = None,
    overrides: Overrides = None,
    keys: Annotated[bool, typer.Option(help="list every key with its default and meaning")] = False,
) -> None:
    """Print the resolved config (defaults <- file <- overrides), or all keys."""
    from metafew.config_load import describe_keys, dump_yaml, load_config

    with user_errors():
        if keys:
            for key, default, help_text in describe_keys():
                console.print(f"{key} = {default!r}  # {help_text}", highlight=False, soft_wrap=True)
            return
        console.print(dump_yaml(load_config(config, overrides or [])), highlight=False, end="")


def exit_codes() -> None:
    """The exit codes metafew uses."""
    for code, meaning in EXIT_CODES.items():
        console.print(f"{code:>3}  {meaning}", highlight=False)
