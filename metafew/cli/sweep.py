"""`metafew sweep`: one `metafew train` per point of a grid, here (bounded parallelism) or as a
SLURM job array; resumable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from metafew.cli.common import ConfigFiles, Overrides, say, stop_on_signals, user_errors
from metafew.errors import ConfigError, Interrupted

if TYPE_CHECKING:  # imported inside the command: `--help` stays free of torch
    from metafew.stopping import StopSignal
    from metafew.sweep import Sweep


def _check_resume_alone(config: list[str] | None, grid: list[str] | None, others: bool) -> None:
    if config or grid or others:
        raise ConfigError(
            "--resume takes the configs, grid and overrides from the sweep's sweep.json: "
            "drop --config, --grid, --name, --slurm and the overrides"
        )


def sweep(
    config: ConfigFiles = None,
    overrides: Overrides = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            "-g",
            metavar="KEY=V1,V2",
            help="config key and the values to sweep, YAML-typed like overrides and split at "
            "commas outside quotes and brackets ('a,b' and [1,2] stay one value); repeat for a "
            "Cartesian product",
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="points trained at once (default 1 here; with --slurm: all of them); "
            "runtime.threads is shared among them unless set",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="the sweep folder's name (default: the grid keys)")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(metavar="SWEEP_FOLDER", help="train the points of this sweep that did not finish"),
    ] = None,
    slurm: Annotated[
        bool,
        typer.Option("--slurm", help="write SWEEP_FOLDER/sweep.sbatch (a job array) instead of training"),
    ] = False,
    sbatch_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--sbatch-arg",
            metavar="OPTION",
            help="with --slurm: an #SBATCH line, e.g. --sbatch-arg=--partition=gpu (repeatable)",
        ),
    ] = None,
    submit: Annotated[
        bool, typer.Option("--submit", help="with --slurm (implied): sbatch the script, print the job id")
    ] = False,
) -> None:
    """Train every point of the --grid product into one sweep folder (or write a SLURM array)."""
    stop = stop_on_signals()  # first: a signal while the configs are checked starts nothing
    from metafew.sweep import check_sbatch_args, find_sbatch, load_sweep, plan_sweep

    with user_errors():
        slurm = slurm or submit
        if sbatch_arg and not slurm:
            raise ConfigError("--sbatch-arg only applies with --slurm; add --slurm or drop it")
        check_sbatch_args(sbatch_arg or [])
        if resume is not None:
            _check_resume_alone(config, grid, bool(overrides or name or slurm))
            folder, spec = resume, load_sweep(resume)
        else:
            sbatch = find_sbatch() if submit else None  # before any folder exists
            folder, spec = plan_sweep(config or [], overrides or [], grid or [], name)
            say(f"sweep folder: {folder} ({len(spec.points)} points)")
            if slurm:
                _write_slurm(folder, spec, jobs, sbatch_arg or [], sbatch)
                return
        _train_here(folder, spec, jobs or 1, stop)


def _write_slurm(folder: Path, spec: Sweep, jobs: int | None, args: list[str], sbatch: str | None) -> None:
    from metafew.sweep import submit, write_slurm

    script = write_slurm(folder, spec, jobs, args)
    say(f"wrote {script} (array of {len(spec.points)} tasks, {jobs or len(spec.points)} at once)")
    if sbatch is None:
        say(f"next: sbatch {script}")
        return
    say(f"submitted: SLURM job {submit(folder, spec, sbatch)}")
    say(f"next: squeue --me; afterwards metafew runs --root {folder} / metafew plot {folder}")


def _train_here(folder: Path, spec: Sweep, jobs: int, stop: StopSignal) -> None:
    from metafew.sweep import LocalRun, cpu_cores, outcome, pending, run_points, threads_per_job, user_threads

    todo = pending(folder, spec)
    threads = None if user_threads(spec) else threads_per_job(cpu_cores(), jobs, len(todo))
    each = "runtime.threads as configured" if threads is None else f"runtime.threads={threads} each"
    say(f"training {len(todo)} of {len(spec.points)} points, {min(jobs, len(todo))} at a time, {each}")
    started = time.perf_counter()
    stopped = run_points(folder, spec, todo, LocalRun(jobs, threads, lambda: stop.signal, say))
    line, failure = outcome(folder, spec, todo)
    say(f"{line} ({time.perf_counter() - started:.0f}s)")
    if stopped:
        raise Interrupted(
            f"sweep stopped (its running points checkpointed); continue it: metafew sweep --resume {folder}"
        )
    say(f"next: metafew runs --root {folder}")
    say(f"next: metafew plot {folder}")
    if failure is not None:
        raise failure
