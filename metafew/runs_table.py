"""The `metafew runs` table and the run folders `metafew plot` draws: one row per run folder, from
its config, its last checkpoint, its lock and what eval / finetune / select / predict wrote.

A root holds run folders and sweep folders (a folder with a `sweep.json` whose run folders lie
inside it); both are listed, sweeps' runs named in the `sweep` column.

Status of a run:
  running      its .lock is held by a live process (flock: a dead process holds nothing)
  done         training ended by itself: done.json (train.iterations reached, train.time_limit
               spent or train.patience run out; `note` says which), or for runs from before
               done.json existed, a last checkpoint at train.iterations
  interrupted  a checkpoint below train.iterations, no process on it: `metafew train --resume RUN`
  diverged     the last training of it ended in a non-finite loss: a `diverged.json` written after
               its last checkpoint, or (runs without the marker) a non-finite loss in metrics.jsonl
               after it
  new          no checkpoint yet (stopped before its first one, or not started)
  unreadable   its config or checkpoints cannot be read (`note` says why)
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metafew.errors import ConfigError, RunError
from metafew.runs import DIVERGED_FILE, read_done

STATUSES = ("running", "interrupted", "diverged", "new", "done", "unreadable")
"""Every status, in the order `--sort status` lists them (what needs attention first)."""

ENDED = {"time_limit": "ended by train.time_limit", "early_stopping": "ended by train.patience"}
"""done.json reasons other than train.iterations, as the row's note."""

SWEEP_FILE = "sweep.json"
"""Marks a sweep folder: {"name": ..., "grid": {dotted key: [values]}, "runs": [...]}."""


@dataclass(frozen=True)
class RunSummary:
    """One row of `metafew runs`. Accuracies are fractions in [0, 1]; None where not measured.
    `iteration`: the last checkpointed iteration (what `--resume` continues from)."""

    path: Path
    name: str
    sweep: str = ""
    status: str = "unreadable"
    started: str = ""
    dataset: str = ""
    algorithm: str = ""
    first_order: bool = False
    setting: str = ""
    iteration: int = 0
    iterations: int = 0
    best_val: float | None = None
    test: float | None = None
    test_ci95: float | None = None
    finetune: float | None = None
    select: float | None = None
    predict: float | None = None
    note: str = ""
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The row as JSON values (`--json`; the keys `--sort` and `--filter` take)."""
        out = asdict(self)
        del out["config"]
        out["path"] = str(self.path)
        return out

    @property
    def test_text(self) -> str | None:
        """`61.23 ± 4.56%`, the latest eval with its 95% CI."""
        if self.test is None:
            return None
        return f"{100 * self.test:.2f} ± {100 * (self.test_ci95 or 0.0):.2f}%"


ROW_KEYS = tuple(k for k in RunSummary.__dataclass_fields__ if k != "config")
"""The keys of a row, in column order."""


# ---------------------------------------------------------------------------------------------
# reading one run


def _read_json(path: Path) -> Any:
    """The JSON in `path`, or None where it is missing or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _newest(paths: list[Path]) -> list[Path]:
    """`paths` newest first: by the stamp that starts the file's name (eval/<stamp>-<id>.json) or
    its folder's (finetune/<stamp>-<id>/finetune.json), then by mtime."""

    def key(path: Path) -> tuple[str, int]:
        stamp = path.name if path.name[:8].isdigit() else path.parent.name
        try:
            return stamp, path.stat().st_mtime_ns
        except OSError:
            return stamp, 0

    return sorted(paths, key=key, reverse=True)


def _number(value: Any) -> float | None:
    """`value` as a float where it is a finite number (JSON has no NaN), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def latest_eval(run: Path) -> tuple[float, float] | None:
    """(accuracy, ci95) of the newest readable eval/*.json, None where there is none."""
    for path in _newest(list((run / "eval").glob("*.json"))):
        result = _read_json(path)
        if isinstance(result, dict) and _number(result.get("accuracy")) is not None:
            return float(result["accuracy"]), _number(result.get("ci95")) or 0.0
    return None


def _finetune_results(run: Path) -> tuple[float | None, float | None, float | None]:
    """(labeled accuracy, select estimate, predict accuracy against answers) of the newest
    fine-tuned model / selection / scored prediction that has one."""
    records = [_read_json(p) for p in _newest(list((run / "finetune").glob("*/finetune.json")))]
    records = [r for r in records if isinstance(r, dict)]
    labeled = next((_number(r.get("labeled_accuracy")) for r in records if "labeled_accuracy" in r), None)
    estimates = [
        r.get("selection", {}).get("estimate", {}) for r in records if isinstance(r.get("selection"), dict)
    ]
    select = next(
        (_number(e.get("accuracy")) for e in estimates if isinstance(e, dict) and "accuracy" in e), None
    )
    predict = None
    for path in _newest(list((run / "finetune").glob("*/predict/*/summary.json"))):
        summary = _read_json(path)
        if isinstance(summary, dict) and _number(summary.get("accuracy")) is not None:
            predict = float(summary["accuracy"])
            break
    return labeled, select, predict


def checkpointed_iteration(run: Path) -> tuple[int | None, float]:
    """(iteration, mtime) of the checkpoint `--resume` continues from: last.pt, or last.prev.pt
    where last.pt is damaged; (None, 0) where checkpoints/ holds none. Only the record's small
    pickle is read (mmap: the weights stay on disk); RunError where no checkpoint is readable."""
    import torch

    folder = run / "checkpoints"
    if not any(folder.glob("*.pt")):
        return None, 0.0
    problems = []
    for path in (folder / "last.pt", folder / "last.prev.pt"):
        if not path.is_file():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            iteration = state["iteration"] if isinstance(state, dict) else None
            if isinstance(iteration, int) and not isinstance(iteration, bool):
                return iteration, path.stat().st_mtime
            problems.append(f"{path.name} has no iteration")
        except Exception as exc:  # torch raises many types for damaged files
            problems.append(f"{path.name}: {type(exc).__name__}")
    raise RunError(f"no readable checkpoint ({'; '.join(problems) or 'no last.pt'})")


def _locked(run: Path) -> bool:
    """Whether a live process holds the run's flock (metafew.runs.RunClaim). Probed with a shared,
    non-blocking lock on a read-only descriptor: nothing is created, a read-only folder works."""
    try:
        import fcntl
    except ImportError:  # Windows: runs are not claimed there
        return False
    try:
        fd = os.open(run / ".lock", os.O_RDONLY)
    except OSError:
        return False  # no lock file: never claimed (or not on this file system)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


def _diverged(run: Path, checkpoint: int | None, saved_at: float, metrics: list[dict[str, Any]]) -> bool:
    """A diverged.json newer than the checkpoint, or a non-finite loss after the checkpoint."""
    marker = run / DIVERGED_FILE
    if marker.is_file() and marker.stat().st_mtime >= saved_at:
        return True
    after = [r for r in metrics if isinstance(r.get("iteration"), int) and r["iteration"] > (checkpoint or 0)]
    return any(isinstance(r.get("loss"), float) and not math.isfinite(r["loss"]) for r in after)


def _status(run: Path, checkpoint: int | None, saved_at: float, iterations: int, metrics: list[dict]) -> str:
    if _locked(run):
        return "running"
    if _diverged(run, checkpoint, saved_at, metrics):
        return "diverged"
    if checkpoint is None:
        return "new"
    done = read_done(run)
    if done is not None and done.get("reason") in ENDED and done.get("iteration") == checkpoint:
        return "done"
    return "done" if checkpoint >= iterations else "interrupted"


def _started(run: Path) -> str:
    """When the run began: env.json's `started`, else the folder name's stamp (ISO-like text)."""
    env = _read_json(run / "env.json")
    if isinstance(env, dict) and isinstance(env.get("started"), str):
        return env["started"][:19]
    stamp = run.name[:15]
    if len(stamp) == 15 and stamp[8] == "-" and stamp.replace("-", "").isdigit():
        return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
    return ""


def summarize_run(run: Path, sweep: str = "") -> RunSummary:
    """The row of one run folder; RunError where its config.yaml or checkpoints are unreadable."""
    from metafew.config_load import to_dict
    from metafew.runs import load_run_config, read_metrics

    cfg = load_run_config(run)
    metrics = read_metrics(run)
    checkpoint, saved_at = checkpointed_iteration(run)
    vals = [r["val_accuracy"] for r in metrics if _number(r.get("val_accuracy")) is not None]
    test = latest_eval(run)
    labeled, select, predict = _finetune_results(run)
    return RunSummary(
        path=run,
        name=run.name,
        sweep=sweep,
        status=_status(run, checkpoint, saved_at, cfg.train.iterations, metrics),
        started=_started(run),
        dataset=cfg.data.dataset,
        algorithm=cfg.algorithm.name,
        first_order=cfg.algorithm.first_order,
        setting=f"{cfg.task.ways}-way {cfg.task.shots}-shot",
        iteration=checkpoint or 0,
        iterations=cfg.train.iterations,
        best_val=max(vals) if vals else None,
        test=None if test is None else test[0],
        test_ci95=None if test is None else test[1],
        finetune=labeled,
        select=select,
        predict=predict,
        config=to_dict(cfg),
        note=ENDED.get(str((read_done(run) or {}).get("reason")), ""),
    )


def _unreadable(run: Path, sweep: str, why: str) -> RunSummary:
    return RunSummary(path=run, name=run.name, sweep=sweep, started=_started(run), note=why)


# ---------------------------------------------------------------------------------------------
# the folders under a root


def _age(path: Path) -> tuple[str, int]:
    """Oldest first: the name's second-resolution stamp, then when its config.yaml (a run) or
    sweep.json (a sweep) was written (metafew.runs.age, for sweeps too)."""
    probe = next((p for p in (path / "config.yaml", path / SWEEP_FILE) if p.is_file()), path)
    try:
        return path.name[:15], probe.stat().st_mtime_ns
    except OSError:
        return path.name[:15], 0


def is_sweep(folder: Path) -> bool:
    """Whether `folder` is a sweep folder (holds a sweep.json)."""
    return (folder / SWEEP_FILE).is_file()


def run_folders(root: Path) -> list[tuple[Path, str]]:
    """(run folder, sweep name) for every run directly under `root` and inside its sweep folders,
    oldest first, a sweep's runs together; `root` may itself be a sweep folder."""
    if not root.is_dir():
        return []
    own = root.name if is_sweep(root) else ""
    out: list[tuple[Path, str]] = []
    for child in sorted((p for p in root.iterdir() if p.is_dir()), key=_age):
        if (child / "config.yaml").is_file():
            out.append((child, own))
        elif is_sweep(child):
            inner = sorted((p for p in child.iterdir() if (p / "config.yaml").is_file()), key=_age)
            out.extend((run, child.name) for run in inner)
    return out


def list_runs(root: Path) -> list[RunSummary]:
    """Every run folder under `root` (see run_folders); a folder whose config or checkpoints
    cannot be read is a row of status `unreadable`, its `note` saying why."""
    rows = []
    for run, sweep in run_folders(root):
        try:
            rows.append(summarize_run(run, sweep))
        except RunError as exc:
            rows.append(_unreadable(run, sweep, str(exc)))
        except OSError as exc:
            rows.append(_unreadable(run, sweep, f"cannot read {run}: {exc.strerror}"))
    return rows


# ---------------------------------------------------------------------------------------------
# sorting and filtering


_BEST_FIRST = frozenset({"best_val", "test", "finetune", "select", "predict", "iteration"})
"""Sort keys listed largest first (best results, most progress)."""


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict by dotted key: {"task": {"shots": 1}} -> {"task.shots": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return out


def _value(summary: RunSummary, key: str) -> Any:
    return _flat(summary.config).get(key) if "." in key else summary.row()[key]


def _check_key(key: str, option: str) -> None:
    """ConfigError naming the valid keys where `key` is neither a row key nor a config key."""
    from metafew.config import Config
    from metafew.config_load import to_dict

    if key in ROW_KEYS or ("." in key and key in _flat(to_dict(Config()))):
        return
    raise ConfigError(
        f"{option} {key!r}: unknown key; use one of {', '.join(ROW_KEYS)}, or a dotted config key "
        "(e.g. task.shots)"
    )


def sort_runs(rows: list[RunSummary], key: str, reverse: bool = False) -> list[RunSummary]:
    """`rows` ordered by `key` (a row key or dotted config key): results, progress and start
    time largest first, names and settings A-Z, statuses as STATUSES; missing values last.
    `reverse` turns the order round (missing values stay last)."""
    _check_key(key, "--sort")
    descending = (key in _BEST_FIRST) != reverse

    def rank(summary: RunSummary) -> Any:
        value = _value(summary, key)
        return STATUSES.index(value) if key == "status" and value in STATUSES else value

    present = [r for r in rows if rank(r) not in (None, "")]
    missing = [r for r in rows if rank(r) in (None, "")]
    try:
        return sorted(present, key=rank, reverse=descending) + missing
    except TypeError:  # a config key holding values of several types
        return sorted(present, key=lambda r: str(rank(r)), reverse=descending) + missing


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def parse_filter(expression: str) -> Callable[[RunSummary], bool]:
    """`key=value` (shell wildcards allowed: `name=*maml*`) as a test of a row; ConfigError for
    an expression without `=` or with an unknown key."""
    key, sep, wanted = expression.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--filter {expression!r}: write key=value, e.g. --filter status=done")
    _check_key(key, "--filter")

    def test(summary: RunSummary) -> bool:
        value = _value(summary, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(wanted) == float(value)
            except ValueError:
                pass
        return fnmatch.fnmatchcase(_text(value), wanted)

    return test


def filter_runs(rows: list[RunSummary], expressions: list[str]) -> list[RunSummary]:
    """The rows that pass every `key=value` expression (see parse_filter)."""
    tests = [parse_filter(e) for e in expressions]
    return [r for r in rows if all(test(r) for test in tests)]


# ---------------------------------------------------------------------------------------------
# what `metafew plot` draws


def expand_runs(paths: list[Path]) -> list[tuple[Path, str]]:
    """(run folder, legend label) for each path: a run folder as itself, a sweep folder as its
    runs, labelled by the values of the sweep's grid keys where sweep.json has a grid. RunError
    for a path that is neither."""
    out: list[tuple[Path, str]] = []
    for path in paths:
        if (path / "config.yaml").is_file():
            out.append((path, path.name))
        elif is_sweep(path):
            runs = [run for run, _ in run_folders(path)]
            if not runs:
                raise RunError(f"sweep {str(path)!r} holds no run folder yet")
            grid = _read_json(path / SWEEP_FILE)
            keys = (
                list(grid.get("grid", {}))
                if isinstance(grid, dict) and isinstance(grid.get("grid"), dict)
                else []
            )
            out.extend((run, _grid_label(run, keys)) for run in runs)
        else:
            raise RunError(
                f"{str(path)!r} is neither a run folder (config.yaml) nor a sweep folder (sweep.json); "
                "list runs with `metafew runs`"
            )
    return out


def _grid_label(run: Path, keys: list[str]) -> str:
    """`inner_lr=0.4, shots=1`: the run's values of the sweep's grid keys (dotted in full where
    two end alike); the folder's name where there are none or its config is unreadable."""
    from metafew.config_load import to_dict
    from metafew.runs import load_run_config

    try:
        values = _flat(to_dict(load_run_config(run)))
    except RunError:
        return run.name
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    names = leaves if len(set(leaves)) == len(leaves) else keys
    return ", ".join(f"{n}={values.get(k)}" for n, k in zip(names, keys)) or run.name
