"""Sweeps: the Cartesian product of `--grid key=v1,v2` values, one `metafew train` per point.

Every point's config is validated before anything starts. All the runs go into one sweep folder,

    <train.runs_dir>/<stamp>-sweep-<name>-<id>/
        sweep.json        name, configs, overrides, grid, points (overrides, run, exit_code, log)
        point-<i>.log     point i's `metafew train` output (every attempt, appended)
        <run folders>     one per point (train.runs_dir=<sweep folder>)
        sweep.sbatch      with --slurm: a job array, task i trains line i+1 of points.tsv
        points.tsv        with --slurm: one point per line, its overrides tab-separated
        point-<i>.exit    with --slurm: the exit code of point i's last attempt

so that `metafew runs --root` and `metafew plot` can group them. Locally at most `jobs` points
train at once; a signal stops the launching, is passed on to the running points (they checkpoint
and exit 130) and is recorded; `--resume` trains the points that did not finish, continuing their
runs. Grid values are split at the commas outside quotes and brackets: `'dress,coat'` (a
comma-separated string field), `[1,2]` and `{a: 1, b: 2}` stay one value each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from metafew.compare import _run_folder, start_metafew
from metafew.config_load import load_config, merge, parse_overrides, parse_yaml, read_config_files
from metafew.errors import ConfigError, MetafewError, RunError
from metafew.files import write_json, write_text_atomic

SWEEP_FILE = "sweep.json"
SCRIPT_FILE = "sweep.sbatch"
POINTS_FILE = "points.tsv"
LOG_MARK = "== metafew sweep: "
"""Starts the line the sweep writes into a point's log before each attempt."""
POLL_S = 0.1
"""Seconds between two looks at the running points."""
RESERVED_SBATCH = ("--array", "-a", "--output", "-o", "--open-mode")
"""sbatch options the generated script sets itself (the array and the per-point logs)."""


@dataclass
class Point:
    """One combination of grid values and what became of it."""

    overrides: list[str]
    """the grid's `key=value` overrides for this point, in --grid order"""
    values: dict[str, Any]
    """the same values, YAML-typed (for tables and plots)"""
    log: str
    """its log file, relative to the sweep folder"""
    run: str | None = None
    """its run folder's name inside the sweep folder (None: not known yet)"""
    exit_code: int | None = None
    """the exit code of its last attempt (None: never finished; 130: interrupted)"""
    best_val: float | None = None
    """the best validation accuracy in its metrics.jsonl"""


@dataclass
class Sweep:
    """What sweep.json holds."""

    name: str
    configs: list[str]
    overrides: list[str]
    grid: dict[str, list[Any]]
    """key -> its YAML-typed values"""
    points: list[Point]
    slurm: dict[str, Any] | None = None
    """with --slurm: script, points_file, sbatch_args, job_id"""
    format: int = 1
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))


class PointsFailed(MetafewError):
    """Some points exited non-zero; the sweep exits with the first one's code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


# ---------------------------------------------------------------------------------------------
# the grid


def split_values(text: str) -> list[str] | None:
    """`0.1, 0.4` -> ['0.1', '0.4']; commas inside [...], {...} or quotes do not split:
    `[1,2],[3]` -> ['[1,2]', '[3]']. None when brackets or quotes are unbalanced."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth < 0:
                return None
        elif char == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return None if depth or quote else values


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["a.b=1,2", "c.d=x,y"]` -> {"a.b": ["1", "2"], "c.d": ["x", "y"]}; ConfigError naming a
    malformed item (no `=`, an empty value, a repeated key or value, unbalanced brackets)."""
    grid: dict[str, list[str]] = {}
    example = "e.g. --grid algorithm.inner_lr=0.1,0.4"
    for item in items:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key or not text:
            raise ConfigError(f"--grid {item!r} is not key=v1,v2,...: {example}")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice: list all its values in one --grid {key}=v1,v2")
        values = split_values(text)
        if values is None:
            raise ConfigError(f"--grid {item!r}: unbalanced brackets or quotes; close them")
        for n, value in enumerate(values, 1):
            if not value:
                raise ConfigError(
                    f"--grid {item!r}: value {n} is empty; drop the extra comma "
                    "(a value holding a comma goes in brackets or quotes: [1,2], 'a,b')"
                )
            if "\t" in value or "\n" in value:
                raise ConfigError(f"--grid {item!r}: value {n} holds a tab or newline; remove it")
            if values.count(value) > 1:
                raise ConfigError(f"--grid {item!r}: value {value!r} is repeated; list it once")
        grid[key] = values
    if not grid:
        raise ConfigError(f"a sweep needs at least one --grid key=v1,v2,...: {example}")
    return grid


def expand_grid(grid: dict[str, list[str]]) -> list[list[str]]:
    """The Cartesian product as override lists, the first key outermost, the last varying fastest:
    {"a": ["1", "2"], "b": ["x", "y"]} -> [[a=1, b=x], [a=1, b=y], [a=2, b=x], [a=2, b=y]]."""
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*grid.values())]


def _typed(key: str, text: str) -> Any:
    """A grid value as YAML reads it, kept JSON-serialisable (a YAML date becomes its text)."""
    return json.loads(json.dumps(parse_yaml(text, f"--grid {key}"), default=str))


def check_grid(configs: list[str], overrides: list[str], grid: dict[str, list[str]]) -> None:
    """Every value and every point must load (`load_config`) before anything starts; ConfigError
    naming the grid value or point otherwise. A grid key may not be one --resume ignores
    (points differing only there would continue each other's runs); it wins over the same key
    among the overrides, as over the config files."""
    from metafew.runs import RESUMABLE_KEYS

    load_config(configs, overrides)
    for key, values in grid.items():
        if key == "train.runs_dir":
            raise ConfigError(
                "--grid train.runs_dir: the sweep puts every run in its own folder under it; "
                "give train.runs_dir=PARENT as an override instead"
            )
        if key in RESUMABLE_KEYS:
            raise ConfigError(
                f"--grid {key}: a sweep cannot vary a key that --resume ignores (its points would "
                "continue each other's runs); run one sweep per value"
            )
        for value in values:
            try:
                load_config(configs, [*overrides, f"{key}={value}"])
            except ConfigError as exc:
                raise ConfigError(f"--grid {key}={value}: {exc}") from None
    points = expand_grid(grid)
    for i, point in enumerate(points):
        try:
            load_config(configs, [*overrides, *point])
        except ConfigError as exc:
            raise ConfigError(f"sweep point {i} ({' '.join(point)}): {exc}") from None


# ---------------------------------------------------------------------------------------------
# the sweep folder and sweep.json


def plan_sweep(
    configs: list[str], overrides: list[str], grid_items: list[str], name: str | None
) -> tuple[Path, Sweep]:
    """Validate everything, then create `<train.runs_dir>/<stamp>-sweep-<name>-<id>/` with its
    sweep.json (every point pending). `name` defaults to the grid keys' last parts."""
    from metafew.runs import new_folder

    if name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"--name {name!r}: use letters, digits and _ . - only (it names folders and jobs)")
    grid = parse_grid(grid_items)
    check_grid(configs, overrides, grid)
    runs_dir = Path(load_config(configs, overrides).train.runs_dir)
    name = name or "-".join(key.rsplit(".", 1)[-1] for key in grid)
    configs = [str(Path(c).resolve()) if Path(c).is_file() else c for c in configs]  # cwd may change
    points = [
        Point(
            point,
            {k: _typed(k, v) for k, v in zip(grid, (o.partition("=")[2] for o in point))},
            f"point-{i}.log",
        )
        for i, point in enumerate(expand_grid(grid))
    ]
    typed = {key: [_typed(key, v) for v in values] for key, values in grid.items()}
    sweep = Sweep(name, configs, overrides, typed, points)
    folder = new_folder(runs_dir, f"sweep-{name}")
    save_sweep(folder, sweep)
    return folder, sweep


def save_sweep(folder: Path, sweep: Sweep) -> None:
    """Write sweep.json atomically."""
    write_json(folder / SWEEP_FILE, dataclasses.asdict(sweep))


def load_sweep(folder: Path) -> Sweep:
    """The sweep recorded in `folder`; RunError (one line) if it is not a sweep folder."""
    path = folder / SWEEP_FILE
    if not path.is_file():
        raise RunError(
            f"{str(folder)!r} is not a sweep folder (no {SWEEP_FILE}); give the folder `sweep` made"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        points = [Point(**p) for p in raw.pop("points")]
        return Sweep(**raw, points=points)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise RunError(f"{str(path)!r} is unreadable ({exc}); restore it from a backup") from None


def run_in_log(log: Path) -> str | None:
    """The name of the run folder the last attempt in `log` reported (`run folder: ...`)."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace").rpartition(LOG_MARK)[2]
        return _run_folder(text).name
    except (OSError, RunError):
        return None


def best_validation(run: Path) -> float | None:
    """The best val_accuracy in the run's metrics.jsonl (None: no validation yet)."""
    from metafew.runs import read_metrics

    accuracies = [r["val_accuracy"] for r in read_metrics(run) if "val_accuracy" in r]
    return max(accuracies) if accuracies else None


def pending(folder: Path, sweep: Sweep) -> list[int]:
    """The points that did not finish (exit code other than 0), after reading the exit codes a
    SLURM array left in point-<i>.exit."""
    for i, point in enumerate(sweep.points):
        marker = folder / f"point-{i}.exit"
        if point.exit_code is None and marker.is_file():
            try:
                point.exit_code = int(marker.read_text(encoding="utf-8").strip())
            except (OSError, ValueError):
                continue
            point.run = run_in_log(folder / point.log)
            point.best_val = best_validation(folder / point.run) if point.run else None
    return [i for i, point in enumerate(sweep.points) if point.exit_code != 0]


def user_threads(sweep: Sweep) -> bool:
    """Whether the sweep's config files or overrides set runtime.threads themselves."""
    raw = merge(read_config_files(sweep.configs), parse_overrides(sweep.overrides))
    runtime = raw.get("runtime")
    return isinstance(runtime, dict) and "threads" in runtime


def threads_per_job(cores: int, jobs: int, points: int) -> int:
    """runtime.threads for each of `jobs` parallel points on `cores` cores: an equal share,
    at least 1 (fewer points than jobs share the cores among themselves)."""
    return max(1, cores // max(1, min(jobs, points)))


def cpu_cores() -> int:
    """The cores this process may use (its affinity mask: a cgroup, taskset, a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def train_args(sweep: Sweep, folder: Path, threads: int | None, resume: str | None) -> list[str]:
    """`train` arguments shared by every point: configs, --resume, overrides, the sweep folder as
    train.runs_dir (JSON-quoted: YAML reads any path back unchanged) and runtime.threads."""
    args = ["train", *(a for c in sweep.configs for a in ("--config", c))]
    args += ["--resume", resume] if resume else []
    args += [*sweep.overrides, f"train.runs_dir={json.dumps(str(folder))}"]
    return args + ([f"runtime.threads={threads}"] if threads else [])


# ---------------------------------------------------------------------------------------------
# training the points here


class Child(Protocol):
    """What the runner needs of a started point (a subprocess.Popen is one)."""

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...


Launcher = Callable[[list[str], Path], Child]
"""launch(args, log): start `metafew ARGS`, its output appended to `log`."""


def launch_metafew(args: list[str], log: Path) -> Child:
    """The real launcher: `python -m metafew ARGS` as a child process."""
    return start_metafew(args, log, append=True)


@dataclass
class LocalRun:
    """How to train a sweep's points on this machine."""

    jobs: int
    """at most this many points at once"""
    threads: int | None
    """runtime.threads for each point (None: the config's own)"""
    stop: Callable[[], int | None]
    """the signal that asked the sweep to stop, or None"""
    say: Callable[[str], None]
    """where the line of each finished point goes"""
    launch: Launcher = launch_metafew


def resume_target(folder: Path, point: Point) -> str | None:
    """`--resume` for a point's next attempt: None for a point never started, its own run folder
    once one is known and still there (exact, and a finished run is not trained twice), else
    `auto` (the newest unfinished run with its config, or a new one)."""
    log = folder / point.log
    if not log.is_file():
        return None
    run = point.run or run_in_log(log)
    return str(folder / run) if run and (folder / run / "config.yaml").is_file() else "auto"


def _start(folder: Path, sweep: Sweep, index: int, how: LocalRun) -> Child:
    point = sweep.points[index]
    args = [*train_args(sweep, folder, how.threads, resume_target(folder, point)), *point.overrides]
    log = folder / point.log
    with log.open("a", encoding="utf-8") as out:  # marks the attempt (run_in_log reads after it)
        out.write(f"{LOG_MARK}point {index}, {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {shlex.join(args)}\n")
    return how.launch(args, log)


def _finish(folder: Path, sweep: Sweep, index: int, code: int) -> None:
    point = sweep.points[index]
    point.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as a shell says
    run = run_in_log(folder / point.log)
    point.run = run if run and (folder / run).is_dir() else None  # a run stopped before step 1 is gone
    point.best_val = best_validation(folder / point.run) if point.run else None
    save_sweep(folder, sweep)


def point_line(sweep: Sweep, index: int) -> str:
    """One line on a finished point: grid values, outcome, run folder, best validation."""
    point = sweep.points[index]
    outcome = {0: "done", 130: "interrupted"}.get(point.exit_code or 0, "failed")
    best = "-" if point.best_val is None else f"{100 * point.best_val:.1f}%"
    return (
        f"point {index} {' '.join(point.overrides)}: {outcome} (exit {point.exit_code}), "
        f"run {point.run or '-'}, best val {best}"
    )


def run_points(folder: Path, sweep: Sweep, todo: list[int], how: LocalRun) -> bool:
    """Train the points `todo`, at most `how.jobs` at once, recording each in sweep.json as it
    ends. On a signal: start no more, pass it on to the running points (they checkpoint and exit
    130), wait for them, record them; returns whether that happened."""
    queue, running = list(todo), dict[int, Child]()
    forwarded = False
    while queue or running:
        sig = how.stop()
        if sig is not None and not forwarded:
            forwarded, queue = True, []
            for child in running.values():
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile: poll() says how
                    child.send_signal(sig)
        while queue and len(running) < how.jobs:
            index = queue.pop(0)
            running[index] = _start(folder, sweep, index, how)
        for index, child in list(running.items()):
            code = child.poll()
            if code is not None:
                del running[index]
                _finish(folder, sweep, index, code)
                how.say(point_line(sweep, index))
        if running:
            time.sleep(POLL_S)
    return forwarded


def outcome(folder: Path, sweep: Sweep, todo: list[int]) -> tuple[str, PointsFailed | None]:
    """The summary line of this pass over `todo`, and the error to exit with if points failed."""
    done = [i for i in todo if sweep.points[i].exit_code == 0]
    failed = [i for i in todo if sweep.points[i].exit_code not in (0, 130, None)]
    stopped = [i for i in todo if sweep.points[i].exit_code in (130, None)]
    total = len(sweep.points) - len(pending(folder, sweep))
    line = (
        f"sweep {sweep.name}: {len(done)} of {len(todo)} points trained, {len(failed)} failed, "
        f"{len(stopped)} stopped or not started; {total}/{len(sweep.points)} finished in all"
    )
    if not failed:
        return line, None
    first = sweep.points[failed[0]]
    error = PointsFailed(
        f"{len(failed)} sweep point(s) failed, first point {failed[0]} with exit {first.exit_code}: see "
        f"{folder / first.log}; fix it, then `metafew sweep --resume {folder}` trains the unfinished ones",
        first.exit_code or 1,
    )
    return line, error


# ---------------------------------------------------------------------------------------------
# SLURM


@dataclass(frozen=True)
class SlurmArray:
    """What sweep.sbatch is made of."""

    name: str
    folder: Path
    """the sweep folder (absolute: the job may start elsewhere)"""
    points: int
    jobs: int
    """at most this many array tasks at once (`%N`)"""
    command: list[str]
    """the argv every task runs, before its point's overrides"""
    cwd: Path
    """where relative paths in the overrides are meant from"""
    sbatch_args: tuple[str, ...] = ()


def check_sbatch_args(args: list[str]) -> None:
    """ConfigError for an --sbatch-arg that is no option or that the script sets itself."""
    for arg in args:
        option = arg.split("=", 1)[0].split(" ", 1)[0]
        if not arg.startswith("-") or "\n" in arg:
            raise ConfigError(
                f"--sbatch-arg {arg!r} is not an sbatch option: e.g. --sbatch-arg=--partition=gpu"
            )
        if option in RESERVED_SBATCH:
            raise ConfigError(
                f"--sbatch-arg {arg!r}: the sweep's script sets {option} itself "
                "(--jobs limits the array); drop it"
            )


def sbatch_script(array: SlurmArray) -> str:
    """A job array whose task i trains point i (line i+1 of points.tsv, overrides tab-separated)
    with `--resume auto --requeue`, signals as in examples/slurm_single_node.sbatch, and records
    its exit code in point-<i>.exit (a resubmitted array skips finished points)."""
    q = shlex.quote
    folder = str(array.folder)
    directives = [
        f"--job-name=metafew-sweep-{array.name}",
        f"--array=0-{array.points - 1}%{array.jobs}",
        "--signal=B:USR1@120",
        "--requeue",
        "--open-mode=append",
        f"--output={q(folder + '/point-%a.log')}",
        *array.sbatch_args,
    ]
    head = [
        "#!/bin/bash",
        f"# metafew sweep {array.name}: {array.points} points as a SLURM job array; task i trains line i+1",
        f"# of {POINTS_FILE} into this folder. Made by `metafew sweep --slurm`; submit it with",
        f"#   sbatch {q(folder + '/' + SCRIPT_FILE)}",
        "# Preemption or the time limit: SLURM signals the task 120 s ahead, the trap passes SIGTERM on,",
        "# train checkpoints and requeues the task, and `--resume auto` continues its run.",
        *(f"#SBATCH {d}" for d in directives),
    ]
    body = f"""set -uo pipefail
cd {q(str(array.cwd))} || exit 1
export OMP_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-1}}"
sweep={q(folder)}
i="${{SLURM_ARRAY_TASK_ID:?submit this script with sbatch: it is a job array}}"
if [ "$(cat "$sweep/point-$i.exit" 2>/dev/null)" = 0 ]; then
    echo "point $i finished already"
    exit 0
fi
IFS=$'\\t' read -r -a point < <(sed -n "$((i + 1))p" "$sweep/{POINTS_FILE}")
if [ "${{#point[@]}}" -eq 0 ]; then
    echo "no point $i in $sweep/{POINTS_FILE}"
    exit 2
fi
echo "{LOG_MARK}point $i, $(date +%Y-%m-%dT%H:%M:%S%z): SLURM job ${{SLURM_JOB_ID:-}}"
{shlex.join(array.command)} "${{point[@]}}" &
pid=$!
trap 'kill -TERM "$pid"' USR1 TERM
status=0
wait "$pid" || status=$?
while kill -0 "$pid" 2>/dev/null; do  # the trap interrupted `wait`: wait for the real exit
    status=0
    wait "$pid" || status=$?
done
echo "$status" > "$sweep/point-$i.exit"
exit "$status"
"""
    return "\n".join(head) + "\n" + body


def write_slurm(folder: Path, sweep: Sweep, jobs: int | None, sbatch_args: list[str]) -> Path:
    """Write points.tsv and sweep.sbatch into the sweep folder (array limit: `jobs`, default all
    points at once) and record them in sweep.json; returns the script."""
    folder = folder.resolve()
    command = [sys.executable, "-m", "metafew", *train_args(sweep, folder, None, "auto"), "--requeue"]
    write_text_atomic(folder / POINTS_FILE, "".join("\t".join(p.overrides) + "\n" for p in sweep.points))
    count = len(sweep.points)
    array = SlurmArray(sweep.name, folder, count, jobs or count, command, Path.cwd(), tuple(sbatch_args))
    script = folder / SCRIPT_FILE
    write_text_atomic(script, sbatch_script(array))
    script.chmod(0o755)
    sweep.slurm = {
        "script": SCRIPT_FILE,
        "points_file": POINTS_FILE,
        "sbatch_args": sbatch_args,
        "job_id": None,
    }
    save_sweep(folder, sweep)
    return script


def find_sbatch() -> str:
    """The sbatch executable on PATH; ConfigError saying so where there is none."""
    found = shutil.which("sbatch")
    if found is None:
        raise ConfigError(
            "--submit: sbatch not found on PATH; run this on a SLURM login node, or drop --submit "
            "and submit the written sweep.sbatch there"
        )
    return found


def submit(folder: Path, sweep: Sweep, sbatch: str) -> str:
    """`sbatch --parsable sweep.sbatch`; records and returns the job id."""
    script = folder / SCRIPT_FILE
    try:
        done = subprocess.run(
            [sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"sbatch {script} could not run ({exc}); submit it by hand") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        detail = (done.stderr or done.stdout).strip().splitlines()
        why = detail[0] if detail else f"exit {done.returncode}"
        raise ConfigError(
            f"sbatch refused {script}: {why}; fix the --sbatch-arg values, then: sbatch {script}"
        )
    job_id = lines[-1].split(";")[0].strip()  # --parsable: `id` or `id;cluster`
    sweep.slurm = {**(sweep.slurm or {}), "job_id": job_id}
    save_sweep(folder, sweep)
    return job_id
