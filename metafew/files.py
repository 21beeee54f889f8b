"""Atomic, durable file writes and the one-line errors for failed ones (a full disk, a read-only
file system, a missing folder). A reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from metafew.errors import RunError


def reason(exc: BaseException) -> str:
    """The first line of an OS or torch error: 'No space left on device', ... torch.save reports
    a failed write as a cryptic RuntimeError whose context is the OSError, so that is preferred."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def write_error(path: Path, exc: BaseException, what: str = "") -> RunError:
    """A failed write of `path` as a one-line RunError."""
    return RunError(
        f"cannot write {what}{str(path)!r}: {reason(exc)}; free disk space or fix the folder, then resume"
    )


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the new directory entry reaches the disk)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(
    path: Path, write: Callable[[IO[bytes]], None], before_rename: Callable[[], None] | None = None
) -> None:
    """`write(handle)` into a temporary file beside `path`, fsync, rename over `path`, fsync the
    folder. `before_rename` runs just before the rename (e.g. to keep the old file). Raises the
    caller's failure as OSError or RuntimeError (torch.save's) after removing the temporary file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_writable(folder: Path) -> None:
    """Create `folder` if needed and prove a file can be written in it, before long work whose
    result would go there; RunError (one line) otherwise."""
    probe = folder / f".probe.{secrets.token_hex(4)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(
            f"cannot write in {str(folder)!r}: {exc.strerror}; make it writable first (nothing was computed)"
        ) from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None


def write_json(path: Path, payload: Any) -> None:
    """Pretty JSON, written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def remove_temporaries(*folders: Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process left half done in `folders`;
    returns them."""
    partial = [p for folder in folders for p in folder.glob(".*.tmp") if p.is_file()]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial
