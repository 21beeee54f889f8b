"""Run folders: collision-safe creation, environment record, metrics log, atomic checkpoints.

runs/<YYYYmmdd-HHMMSS>-<name>-<id>/
    config.yaml          resolved config (what every later command reads)
    env.json             versions, git sha, command line, device, host
    metrics.jsonl        one JSON object per logged step or validation
    learning_curve.png   loss / accuracy against iteration
    checkpoints/last.pt  checkpoints/last.prev.pt (the one before)  checkpoints/best.pt
    .lock                held (flock) by the process that trains the run
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

try:
    import fcntl
except ImportError:  # Windows has no flock: runs are not claimed there
    fcntl = None  # type: ignore[assignment]
from metafew.config import Config, dump_yaml, from_dict, parse_yaml, to_dict
from metafew.errors import ConfigError, RunError

CHECKPOINT_FORMAT = 1
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
RESUMABLE_KEYS = frozenset(
    {
        "train.iterations",
        "train.device",
        "train.threads",
        "train.log_every",
        "train.checkpoint_every",
        "train.runs_dir",  # the folder may have been moved or named by another path
    }
)
"""Config keys that may differ between a run and its resumption (they do not change the maths)."""


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


def _reason(exc: BaseException) -> str:
    """The first line of an OS or torch error: 'No space left on device', ... torch.save reports
    a failed write as a cryptic RuntimeError whose context is the OSError, so that is preferred."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _write_error(path: Path, exc: BaseException, what: str = "") -> RunError:
    """A full disk, a read-only file system or a missing folder as a one-line RunError."""
    return RunError(
        f"cannot write {what}{str(path)!r}: {_reason(exc)}; free disk space or fix the folder, then resume"
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from None


def write_json(path: Path, payload: Any) -> None:
    """Pretty JSON, written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def create_run(cfg: Config, device: str, claim: RunClaim | None = None) -> Path:
    """A new run folder holding the resolved config and environment. With `claim`, the folder is
    claimed before its config.yaml exists, so `--resume auto` elsewhere never picks it up."""
    run = new_folder(Path(cfg.train.runs_dir), cfg.train.name)
    if claim is not None:
        claim.acquire(run)
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
    try:
        with (run / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _write_error(run / "metrics.jsonl", exc) from None


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
    if not (run / "metrics.jsonl").is_file():
        return
    kept = [r for r in read_metrics(run) if r.get("iteration", 0) <= iteration]
    write_text_atomic(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))


# ---------------------------------------------------------------------------------------------
# checkpoints


def previous_checkpoint(path: Path) -> Path:
    """Where `save_checkpoint(path, keep_previous=True)` moves the file it replaces:
    checkpoints/last.pt -> checkpoints/last.prev.pt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the new directory entry reaches the disk)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename, fsync the folder:
    a reader sees the old file or the new one, never half of one. With `keep_previous` the old
    file becomes `previous_checkpoint(path)`, the fallback when `path` is later found corrupt."""
    state = {"format": CHECKPOINT_FORMAT, "metafew": metafew.__version__, **state}
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file():
            os.replace(path, previous_checkpoint(path))
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc, "checkpoint ") from None


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
        raise RunError(f"checkpoint {str(path)!r} is corrupt or unsafe ({_reason(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"checkpoint {str(path)!r} is not a metafew checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def load_resume_checkpoint(run: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The checkpoint `--resume` continues from, and a one-line note when it is not last.pt.

    last.pt; if it is missing, truncated or corrupt, the previous one (last.prev.pt). A run
    whose checkpoints/ holds no checkpoint at all (stopped before its first one) gives None:
    it starts over from iteration 0 in its own folder.
    """
    last = run / "checkpoints" / "last.pt"
    previous = previous_checkpoint(last)
    if not any((run / "checkpoints").glob("*.pt")):
        return None, f"{str(run)!r} has no checkpoint yet: starting it over from iteration 0"
    try:
        return load_checkpoint(last), None
    except RunError as exc:
        if not previous.is_file():
            raise
        problem = exc
    try:
        state = load_checkpoint(previous)
    except RunError:
        raise problem from None
    return state, (
        f"{problem}; falling back to the previous checkpoint {previous.name} (iteration {state['iteration']})"
    )


def discard_partial_writes(run: Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process left half done (call it only
    while holding the run's claim); returns them."""
    partial = [p for folder in (run, run / "checkpoints") for p in folder.glob(".*.tmp") if p.is_file()]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two config dicts."""
    out = []
    for key in old:
        if isinstance(old[key], dict):
            out.extend(config_diff(old[key], new[key], f"{prefix}{key}."))
        elif old[key] != new[key]:
            out.append((prefix + key, old[key], new[key]))
    return out


class RunClaim:
    """An exclusive lock on `<run>/.lock` held while this process trains the run, so that two
    jobs never train the same folder. flock is released by the kernel when the process dies,
    even by kill -9, so a crash leaves no stale lock."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def acquire(self, run: Path) -> None:
        """Claim `run`; RunError if another process holds it."""
        if fcntl is None:
            return
        fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunError(
                f"run {str(run)!r} is being trained by another process; wait for it or stop it"
            ) from None
        self.release()
        self._fd = fd

    def release(self) -> None:
        """Give the claim up (also done by the kernel at exit)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _claimed_elsewhere(run: Path) -> bool:
    probe = RunClaim()
    try:
        probe.acquire(run)
    except RunError:
        return True
    probe.release()
    return False


def _unfinished(run: Path, iterations: int) -> bool:
    try:
        state, _ = load_resume_checkpoint(run)
    except RunError:
        return False  # nothing usable to continue from
    return state is None or int(state["iteration"]) < iterations


def find_resumable(cfg: Config, allowed: frozenset[str] = frozenset()) -> Path | None:
    """For `--resume auto`: the newest run under train.runs_dir with the same config (name
    included; RESUMABLE_KEYS and `allowed` may differ) that is unfinished and not being trained
    elsewhere."""
    runs_dir = Path(cfg.train.runs_dir)
    if not runs_dir.is_dir():
        return None
    wanted = to_dict(cfg)
    candidates = sorted((p for p in runs_dir.iterdir() if (p / "config.yaml").is_file()), key=_age)
    for run in reversed(candidates):
        try:
            saved = to_dict(load_run_config(run))
        except RunError:
            continue
        if any(key not in RESUMABLE_KEYS | allowed for key, _, _ in config_diff(saved, wanted)):
            continue
        if _unfinished(run, cfg.train.iterations) and not _claimed_elsewhere(run):
            return run
    return None


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
