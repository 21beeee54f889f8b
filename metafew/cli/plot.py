"""`metafew plot`: several runs' curves overlaid in one PNG, or an evaluation's histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metafew.cli.common import note, say, user_errors
from metafew.errors import ConfigError, RunError


def plot(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="run folders, sweep folders (each stands for its runs), or one eval/*.json file "
            "(a histogram of its per-episode accuracy)",
            show_default=False,
        ),
    ],
    metric: Annotated[
        str, typer.Option(help="metrics.jsonl key: val_accuracy, accuracy, loss, lr, tasks_per_s")
    ] = "val_accuracy",
    x: Annotated[
        str, typer.Option("--x", help="x axis: iteration, or time (wall-clock minutes)")
    ] = "iteration",
    out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("plot.png"),
) -> None:
    """Overlay the learning curves of runs (and sweeps) in one PNG figure."""
    with user_errors():
        if out.suffix.lower() != ".png":
            raise ConfigError(
                f"--out {str(out)!r}: the figure is a PNG; name it e.g. {out.stem or 'plot'}.png"
            )
        if any(p.is_file() and p.suffix == ".json" for p in paths):
            say(_histogram(paths, out))
            return
        say(_curves(paths, metric, x, out))


def _curves(paths: list[Path], metric: str, x: str, out: Path) -> str:
    from metafew.plots import plot_runs
    from metafew.runs import read_metrics
    from metafew.runs_table import expand_runs

    runs = expand_runs(paths)
    try:
        left_out = plot_runs([(label, read_metrics(run)) for run, label in runs], metric, x, out)
    except OSError as exc:
        raise RunError(f"cannot write {str(out)!r}: {exc.strerror}; choose another --out") from None
    for label in left_out:
        note(f"warning: {label} has logged no {metric} yet: left out")
    return f"saved: {out} ({len(runs) - len(left_out)} runs, {metric} against {x})"


def _histogram(paths: list[Path], out: Path) -> str:
    from metafew.plots import plot_episode_histogram
    from metafew.stages.evaluate import read_result

    if len(paths) != 1:
        raise ConfigError("an eval .json file is plotted alone (a histogram); give one file, or run folders")
    result = read_result(paths[0])
    title = (
        f"{result.get('ways')}-way {result.get('shots')}-shot, {len(result['per_episode'])} test episodes "
        f"({result.get('checkpoint', '?')} checkpoint, iteration {result.get('meta_iteration', '?')})"
    )
    try:
        plot_episode_histogram(result["per_episode"], out, title)
    except OSError as exc:
        raise RunError(f"cannot write {str(out)!r}: {exc.strerror}; choose another --out") from None
    return f"saved: {out} (per-episode accuracy of {paths[0]})"
