"""Run folders: collision-safe creation, environment record, metrics log, atomic checkpoints.

runs/<YYYYmmdd-HHMMSS>-<name>-<id>/
    config.yaml          resolved config (what every later command reads)
    env.json             versions, git sha, command line, device, host
    metrics.jsonl        one JSON object per logged step or validation
    learning_curve.png   loss / accuracy against iteration
    checkpoints/last.pt  checkpoints/best.pt
    eval/<stamp>-<id>.json
    finetune/<stamp>-<id>/{model.pt, finetune.json, predict/<stamp>-<id>/predictions.csv}
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import metafew
from metafew.config import Config, dump_yaml, from_dict, parse_yaml
from metafew.errors import ConfigError, RunError

CHECKPOINT_FORMAT = 1
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def new_folder(parent: Path, name: str = "") -> Path:
    """Create and return `parent/<stamp>[-name]-<6 hex>`; never reuses an existing folder, so
    many jobs starting in the same second each get their own (mkdir is atomic)."""
    label = _SAFE_NAME.sub("_", name).strip("._") if name else ""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(
            f"cannot create {str(parent)!r}: {exc.strerror}; choose another train.runs_dir"
        ) from None
    for _ in range(100):
        folder = parent / "-".join(p for p in (_stamp(), label, secrets.token_hex(3)) if p)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunError(f"cannot create a folder in {str(parent)!r}: {exc.strerror}") from None
    raise RunError(f"could not find a free folder name in {str(parent)!r}")


def new_file(parent: Path, suffix: str) -> Path:
    """Create and return an empty `parent/<stamp>-<6 hex><suffix>` that did not exist before."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = parent / f"{_stamp()}-{secrets.token_hex(3)}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            continue


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: str) -> dict[str, Any]:
    """What produced a run: versions, git sha, command line, device, host."""
    import numpy

    return {
        "metafew": metafew.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "git_sha": _git_sha(),
        "command": sys.argv,
        "device": device,
        "cuda": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, payload: Any) -> None:
    """Pretty JSON, written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def create_run(cfg: Config, device: str) -> Path:
    """A new run folder holding the resolved config and environment."""
    run = new_folder(Path(cfg.train.runs_dir), cfg.train.name)
    (run / "checkpoints").mkdir()
    write_text_atomic(run / "config.yaml", dump_yaml(cfg))
    write_json(run / "env.json", environment(device))
    return run


def resolve_run(path: Path | str) -> Path:
    """A run folder given by the user; RunError if it is not one."""
    run = Path(path)
    if not (run / "config.yaml").is_file():
        raise RunError(f"{str(run)!r} is not a run folder (no config.yaml); list runs with `metafew runs`")
    return run


def load_run_config(run: Path) -> Config:
    """The resolved config saved in a run folder."""
    try:
        return from_dict(
            parse_yaml((run / "config.yaml").read_text(encoding="utf-8"), str(run / "config.yaml"))
        )
    except ConfigError as exc:
        raise RunError(f"run {str(run)!r} has an unusable config.yaml: {exc}") from None


# ---------------------------------------------------------------------------------------------
# metrics


def append_metrics(run: Path, record: dict[str, Any]) -> None:
    """Append one JSON object to metrics.jsonl and flush it to disk."""
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """All records of metrics.jsonl (a torn last line from a crash is ignored)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(run: Path, iteration: int) -> None:
    """Drop records after `iteration` (those a resumed run will write again)."""
    kept = [r for r in read_metrics(run) if r.get("iteration", 0) <= iteration]
    write_text_atomic(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename, fsync the folder:
    a reader sees the old file or the new one, never half of one."""
    state = {"format": CHECKPOINT_FORMAT, "metafew": metafew.__version__, **state}
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(
            f"cannot write checkpoint {str(path)!r}: {exc.strerror}; free disk space and resume"
        ) from None


def _check_zip(path: Path) -> None:
    """torch.load does not verify the zip CRCs: a flipped bit in the data would load silently."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise RunError(f"checkpoint {str(path)!r} is corrupt or unsafe ({exc})") from None
    if bad is not None:
        raise RunError(f"checkpoint {str(path)!r} is corrupt or unsafe (CRC mismatch in {bad!r})")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (a file that would run code is refused)."""
    if not path.is_file():
        raise RunError(f"checkpoint {str(path)!r} not found")
    _check_zip(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"checkpoint {str(path)!r} is corrupt or unsafe ({reason[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"checkpoint {str(path)!r} is not a metafew checkpoint of format {CHECKPOINT_FORMAT}")
    return state


# ---------------------------------------------------------------------------------------------
# listing


@dataclass(frozen=True)
class RunSummary:
    """One row of `metafew runs`."""

    path: Path
    dataset: str
    algorithm: str
    setting: str
    iteration: int
    iterations: int
    best_val: float | None
    test: str | None


def _age(path: Path) -> tuple[str, int]:
    """Sort key, oldest first: the name's second-resolution stamp, then the creation time."""
    probe = path / "config.yaml" if path.is_dir() else path
    return path.name[:15], probe.stat().st_mtime_ns


def _latest_eval(run: Path) -> str | None:
    files = sorted((run / "eval").glob("*.json"), key=_age) if (run / "eval").is_dir() else []
    if not files:
        return None
    try:
        result = json.loads(files[-1].read_text(encoding="utf-8"))
        return f"{100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f}%"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarize_run(run: Path) -> RunSummary:
    """Key facts of a run folder from its config, metrics and latest evaluation."""
    cfg = load_run_config(run)
    metrics = read_metrics(run)
    vals = [r["val_accuracy"] for r in metrics if "val_accuracy" in r]
    return RunSummary(
        path=run,
        dataset=cfg.data.dataset,
        algorithm=cfg.algorithm.name + (" (1st order)" if cfg.algorithm.first_order else ""),
        setting=f"{cfg.task.ways}-way {cfg.task.shots}-shot",
        iteration=max((r.get("iteration", 0) for r in metrics), default=0),
        iterations=cfg.train.iterations,
        best_val=max(vals) if vals else None,
        test=_latest_eval(run),
    )


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every readable run folder directly under `runs_dir`, oldest first."""
    if not runs_dir.is_dir():
        return []
    rows = []
    for run in sorted((p for p in runs_dir.iterdir() if (p / "config.yaml").is_file()), key=_age):
        try:
            rows.append(summarize_run(run))
        except RunError:
            continue
    return rows
