"""`metafew data list | prepare | check`: the datasets metafew reads, filling the cache, and
checking a folder of pictures before training on it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from metafew.cli.common import ConfigFiles, DownloadBar, Overrides, console, err, user_errors
from metafew.errors import DataError

MIN_SIDE = 8
"""metafew.data.folder.MIN_SIDE, repeated so that `--help` does not import torch (a test keeps them equal)."""

data_app = typer.Typer(help="List, download and check datasets.", no_args_is_help=True)


@data_app.command("list")
def data_list() -> None:
    """The datasets metafew reads, where their files come from, and which it can download."""
    from metafew.data import DATASETS
    from metafew.data.cache import cache_root

    table = Table("data.dataset", "what", "files", "download")
    for name, dataset in DATASETS.items():
        table.add_row(name, dataset.summary, dataset.files, "yes" if dataset.remotes else "no")
    console.print(table)
    console.print(f"decoded-tensor cache: {cache_root()} (METAFEW_CACHE moves it)", highlight=False)


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="dataset name (metafew data list)")],
    root: Annotated[Path | None, typer.Option(help="folder for the dataset's files (data.root)")] = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Download (when needed) and check a dataset's files, decode them and fill the cache."""
    from metafew.config_load import load_config
    from metafew.data.cache import cache_root
    from metafew.launch import load_run_data

    with user_errors():
        extra = [f"data.dataset={name}", "data.download=true", *([f"data.root={root}"] if root else [])]
        cfg = load_config(config, [*(overrides or []), *extra])
        started = time.perf_counter()
        err.print(f"preparing {cfg.data.dataset}: download if needed, check, decode, cache", highlight=False)
        with DownloadBar() as download:
            data = load_run_data(cfg, None, download)
        seconds = time.perf_counter() - started
        splits = {"meta_train": data.meta_train, "meta_val": data.meta_val, "novel": data.novel}
        for split, images in splits.items():
            if images is not None:
                console.print(
                    f"{split}: {len(images.classes)} classes, {len(images.labels)} pictures "
                    f"{tuple(images.images.shape[1:])}",
                    highlight=False,
                )
        if data.unlabeled is not None:
            console.print(f"unlabeled: {len(data.unlabeled.names)} pictures", highlight=False)
        console.print(f"ready in {seconds:.2f}s (cache: {cache_root()})", highlight=False)


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="folder of pictures (any depth) or a .zip")],
    min_side: Annotated[int, typer.Option(help="pictures with a shorter side are reported tiny")] = MIN_SIDE,
) -> None:
    """Open every picture fully; report corrupt, truncated, tiny, huge and unreadable files and
    the pictures per class. Exit code 0 when all are fine, 3 when any is not."""
    from metafew.data.check import check_pictures

    with user_errors():
        report = check_pictures(path, min_side)
        table = Table("class (folder)", "pictures")
        for group, count in sorted(report.counts.items()):
            table.add_row(escape(group or "."), str(count))
        console.print(table)
        for problem in report.problems:
            err.print(
                f"[red]{problem.kind}[/] {escape(problem.where)}: {escape(problem.detail)}", highlight=False
            )
        total = sum(report.counts.values()) + len(report.problems)
        console.print(
            f"{total} pictures, {len(report.problems)} with problems, {report.skipped} other files skipped",
            highlight=False,
        )
        if report.problems:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(Counter(p.kind for p in report.problems).items()))
            raise DataError(f"{len(report.problems)} of {total} pictures cannot be used ({kinds}); see above")
