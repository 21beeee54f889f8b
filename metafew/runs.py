"""Run folders: collision-safe creation, environment record, metrics log, claims and lookup.
The checkpoint files' format lives in metafew.checkpoints.

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
from pathlib import Path
from typing import Any

import torch

import metafew
from metafew.checkpoints import load_resume_checkpoint
from metafew.config import Config
from metafew.config_load import dump_yaml, from_dict, parse_yaml, to_dict, upgrade_saved
from metafew.errors import ConfigError, RunError
from metafew.files import remove_temporaries, write_error, write_json, write_text_atomic

try:
    import fcntl
except ImportError:  # Windows has no flock: runs are not claimed there
    fcntl = None  # type: ignore[assignment]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
RESUMABLE_KEYS = frozenset(
    {
        "train.iterations",
        "runtime.device",
        "runtime.threads",
        "train.log_every",
        "train.checkpoint_every",
        "train.runs_dir",  # the folder may have been moved or named by another path
        "logging.tensorboard",  # where metrics are copied, not what is trained
        "train.time_limit",  # when a run ends, not what each step computes
        "train.patience",
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
    """Create and return an empty `parent/<stamp>-<6 hex><suffix>` that did not exist before;
    RunError (one line) where `parent` cannot be written."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            path = parent / f"{_stamp()}-{secrets.token_hex(3)}{suffix}"
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise RunError(f"cannot write in {str(parent)!r}: {exc.strerror}; make the folder writable") from None


def _git(*args: str) -> str | None:
    """`git ARGS` in metafew's own source folder: its output, or None outside a clone."""
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_dirty() -> bool | None:
    """Whether metafew's clone has uncommitted changes to tracked files (None: not a clone)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status.strip())


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version (what `pip freeze` lists), sorted by name."""
    from importlib.metadata import distributions

    found = {d.metadata["Name"]: d.version for d in distributions() if d.metadata["Name"]}
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def environment(device: str, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """What produced a run: versions, git sha, command line, device (as placed), host, and the
    `plan` decided at launch (the effective chunk sizes, the process count)."""
    import numpy

    return {
        "metafew": metafew.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "git_sha": (_git("rev-parse", "HEAD") or "").strip() or None,
        "git_dirty": _git_dirty(),
        "command": sys.argv,
        "device": device,
        "cuda": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(plan or {}),
        "packages": installed_packages(),
    }


def create_run(
    cfg: Config, device: str, claim: RunClaim | None = None, plan: dict[str, Any] | None = None
) -> Path:
    """A new run folder holding the resolved config and environment (with `plan`, see
    `environment`). With `claim`, the folder is claimed before its config.yaml exists, so
    `--resume auto` elsewhere never picks it up."""
    run = new_folder(Path(cfg.train.runs_dir), cfg.train.name)
    if claim is not None:
        claim.acquire(run)
    (run / "checkpoints").mkdir()
    write_text_atomic(run / "config.yaml", dump_yaml(cfg))
    write_json(run / "env.json", environment(device, plan))
    return run


def record_resume(run: Path, device: str, plan: dict[str, Any]) -> None:
    """Append this resumption (time, command line, device as placed, `plan`) to env.json's
    `resumed` list: the device and chunk sizes may differ from the first process's."""
    path = run / "env.json"
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        env = {}
    if not isinstance(env, dict):
        env = {}
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv, "device": device, **plan}
    env["resumed"] = [*env.get("resumed", []), entry]
    write_json(path, env)


def resolve_run(path: Path | str) -> Path:
    """A run folder given by the user; RunError if it is not one."""
    run = Path(path)
    if not (run / "config.yaml").is_file():
        raise RunError(f"{str(run)!r} is not a run folder (no config.yaml); list runs with `metafew runs`")
    return run


def load_run_config(run: Path) -> Config:
    """The resolved config saved in a run folder."""
    try:
        text = (run / "config.yaml").read_text(encoding="utf-8")
        return from_dict(upgrade_saved(parse_yaml(text, str(run / "config.yaml"))))
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
        raise write_error(run / "metrics.jsonl", exc) from None


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


def discard_partial_writes(run: Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process left half done in the run
    folder and its checkpoints/ (call it only while holding the run's claim); returns them."""
    return remove_temporaries(run, run / "checkpoints")


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
        try:
            fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunError(
                f"cannot claim run {str(run)!r} ({exc.strerror}): the folder must be writable to train it"
            ) from None
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


DONE_FILE = "done.json"
"""<run>/done.json: written when training ends by itself ({iteration, reason: iterations |
time_limit | early_stopping, elapsed_s}); a resume that trains further removes it."""


DIVERGED_FILE = "diverged.json"
"""Written by training that stopped on a non-finite loss (DivergedError): {"iteration": the step
that diverged, "message": the error}. Stale once a later checkpoint exists."""


def read_done(run: Path) -> dict[str, Any] | None:
    """The run's done.json, or None (still to train, stopped by a signal, or unreadable)."""
    try:
        done = json.loads((run / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


def _unfinished(run: Path, iterations: int) -> bool:
    done = read_done(run)
    if done is not None and done.get("reason") in ("time_limit", "early_stopping"):
        return False  # ended by its budget: a new `--resume RUN` with a larger one continues it
    try:
        state, _ = load_resume_checkpoint(run)
    except RunError:
        return False  # nothing usable to continue from
    return state is None or state.iteration < iterations


def find_resumable(cfg: Config, allowed: frozenset[str] = frozenset()) -> Path | None:
    """For `--resume auto`: the newest run under train.runs_dir with the same config (name
    included; RESUMABLE_KEYS and `allowed` may differ) that is unfinished and not being trained
    elsewhere."""
    runs_dir = Path(cfg.train.runs_dir)
    if not runs_dir.is_dir():
        return None
    wanted = to_dict(cfg)
    candidates = sorted((p for p in runs_dir.iterdir() if (p / "config.yaml").is_file()), key=age)
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


def age(path: Path) -> tuple[str, int]:
    """Sort key, oldest first: the name's second-resolution stamp, then the creation time."""
    probe = path / "config.yaml" if path.is_dir() else path
    return path.name[:15], probe.stat().st_mtime_ns
