"""`metafew runs`, `compare`, `config` and `exit-codes`: looking at runs, configs and codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from metafew.cli.common import ConfigFiles, Overrides, WorkBar, console, note, user_errors
from metafew.errors import EXIT_CODES, ConfigError

if TYPE_CHECKING:
    from metafew.runs_table import RunSummary


def runs(
    config: ConfigFiles = None,
    overrides: Overrides = None,
    root: Annotated[
        Path | None,
        typer.Option(
            help="folder holding run and sweep folders (default: the config's train.runs_dir, runs)"
        ),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            help="order by a row key (name, started, status, best_val, test, finetune, select, "
            "predict, iteration, ...) or a dotted config key; results best first"
        ),
    ] = None,
    reverse: Annotated[bool, typer.Option(help="turn the --sort order round")] = False,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="keep rows where key=value (wildcards: name=*maml*); repeat to AND"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as a JSON list")] = False,
) -> None:
    """Table of runs (and sweeps' runs): status, checkpointed iteration, validation, test, fine-tune."""
    from metafew.runs_table import filter_runs, list_runs, sort_runs

    with user_errors():
        folder = _runs_root(root, config, overrides)
        rows = filter_runs(list_runs(folder), filters or [])
        if sort is not None:
            rows = sort_runs(rows, sort, reverse)
    if as_json:
        typer.echo(json.dumps([r.row() for r in rows], indent=2))
        return
    for r in rows:
        if r.status == "unreadable":
            note(f"warning: {r.path}: {r.note}")
    if not rows:
        matching = " matching " + " ".join(filters) if filters else ""
        console.print(f"no runs under {folder}{matching}", highlight=False)
        return
    _print_runs(rows)


def _runs_root(root: Path | None, config: list[str] | None, overrides: list[str] | None) -> Path:
    """--root, else train.runs_dir of the config (files and overrides), else its default."""
    if root is None:
        from metafew.config_load import load_config

        return Path(load_config(config, overrides or []).train.runs_dir)
    if config or overrides:
        raise ConfigError("--root and a config (-c / overrides) both name the runs folder: give one of them")
    return root


def _print_runs(rows: list[RunSummary]) -> None:
    """The rows as a table (a terminal) or tab-separated lines (pipes and job logs); columns no row
    has a value for are left out."""

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    columns: list[tuple[str, Callable[[RunSummary], str]]] = [
        ("run", lambda r: r.name),
        ("sweep", lambda r: r.sweep or "-"),
        ("status", lambda r: r.status),
        ("dataset", lambda r: r.dataset or "-"),
        ("algorithm", lambda r: r.algorithm + (" (1st order)" if r.first_order else "") or "-"),
        ("setting", lambda r: r.setting or "-"),
        ("iterations", lambda r: f"{r.iteration}/{r.iterations}" if r.iterations else "-"),
        ("best val", lambda r: percent(r.best_val)),
        ("test (95% CI)", lambda r: r.test_text or "-"),
        ("finetune (labeled)", lambda r: percent(r.finetune)),
        ("select estimate", lambda r: percent(r.select)),
        ("predict", lambda r: percent(r.predict)),
    ]
    optional = {"sweep", "finetune (labeled)", "select estimate", "predict"}
    cells = [[show(r) for r in rows] for _, show in columns]
    keep = [
        k for k, (name, _) in enumerate(columns) if name not in optional or any(c != "-" for c in cells[k])
    ]
    header = [columns[k][0] for k in keep]
    lines = [[cells[k][i] for k in keep] for i in range(len(rows))]
    if not console.is_terminal:  # pipes and job logs: full names, tab-separated (rich would expand tabs)
        for line in (header, *lines):
            typer.echo("\t".join(line))
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
        with WorkBar("compare") as bar:
            folder, entries = compare(
                configs, overrides or [], out, episodes, seed, predict, console.print, advance=bar
            )
        console.print(format_table(entries, episodes), end="")
        console.print(f"saved: {folder / 'comparison.md'} and comparison.json (logs beside them)")


def diff(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="eval/*.json files of the same test episodes; each is compared with the first",
            show_default=False,
        ),
    ],
) -> None:
    """Paired differences of eval results on the same seeded episodes: which is better, and how sure.

    Each result's accuracy minus the first's, episode by episode, with a 95% CI of that mean:
    narrower than the accuracies' own intervals, because what makes an episode hard for one model
    makes it hard for the others."""
    from metafew.stages import paired_results

    with user_errors():
        if len(results) < 2:
            raise ConfigError("give two or more eval/*.json files: the others are compared with the first")
        rows, warnings = paired_results(results)
    for warning in warnings:
        note(f"warning: {warning}")
    first = rows[0]
    console.print(
        f"{first.episodes} episodes; first: {first.path}, "
        f"{100 * first.accuracy:.2f} ± {100 * first.ci95:.2f}%",
        highlight=False,
    )
    for row in rows[1:]:
        console.print(
            f"{row.path}: {100 * row.accuracy:.2f} ± {100 * row.ci95:.2f}%, "
            f"{100 * row.difference:+.2f} ± {100 * row.difference_ci95:.2f} points paired ({row.verdict}; "
            f"above the first on {row.better} episodes, below on {row.worse}); "
            f"{' '.join(row.changed) or 'same settings'}",
            highlight=False,
            soft_wrap=True,
        )


def show_config(
    config: ConfigFiles = None,
    overrides: Overrides = None,
    keys: Annotated[bool, typer.Option(help="list every key with its default and meaning")] = False,
    markdown: Annotated[bool, typer.Option(help="with --keys: as the README's markdown table")] = False,
) -> None:
    """Print the resolved config (defaults <- file <- overrides) after a comment line with the model's
    parameter count, or all keys."""
    from metafew.config_load import describe_keys, dump_yaml, format_default, keys_markdown, load_config

    with user_errors():
        if keys and markdown:
            console.print(keys_markdown(), highlight=False, end="")
            return
        if keys:
            for key, default, help_text in describe_keys():
                console.print(
                    f"{key} = {format_default(default)}  # {help_text}", highlight=False, soft_wrap=True
                )
            return
        cfg = load_config(config, overrides or [])
        from metafew.models import parameter_count

        # a YAML comment, so that the output still reads back as the config
        console.print(f"# model: {cfg.model.name}, {parameter_count(cfg):,} parameters", highlight=False)
        console.print(dump_yaml(cfg), highlight=False, end="")


def exit_codes() -> None:
    """The exit codes metafew uses."""
    for code, meaning in EXIT_CODES.items():
        console.print(f"{code:>3}  {meaning}", highlight=False)
