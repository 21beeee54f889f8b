"""`python crash_driver.py FAULT AT metafew-args...`: run `metafew` and die by SIGKILL at a chosen
point, as a preempted or OOM-killed cluster job does. Nothing in metafew knows about this file:
it wraps library functions from the outside.

FAULT is one of
  iteration         after the metrics line of iteration AT is written (the next checkpoint is not)
  checkpoint-write  half-way through writing the AT-th checkpoint file (of any name)
  rotation          on the AT-th save of last.pt, after last.pt became last.prev.pt and before
                    the new last.pt is renamed into place (no last.pt on disk at that instant)
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from metafew import cli, engine, runs


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_iteration(at: int) -> None:
    real = engine.append_metrics

    def append(run: Path, record: dict[str, Any]) -> None:
        real(run, record)
        if record.get("iteration") == at and "loss" in record:
            die()

    engine.append_metrics = append


def kill_while_writing(at: int) -> None:
    real, calls = torch.save, [0]

    def save(state: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] != at:
            return real(state, handle, *args, **kwargs)
        buffer = io.BytesIO()
        real(state, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        die()

    runs.torch.save = save  # type: ignore[assignment]


def kill_between_renames(at: int) -> None:
    real, calls = os.replace, [0]

    def replace(src: Any, dst: Any) -> None:
        real(src, dst)
        if Path(dst).name == "last.prev.pt":
            calls[0] += 1
            if calls[0] == at:
                die()

    runs.os.replace = replace  # type: ignore[assignment]


if __name__ == "__main__":
    fault, at = sys.argv[1], int(sys.argv[2])
    {
        "iteration": kill_after_iteration,
        "checkpoint-write": kill_while_writing,
        "rotation": kill_between_renames,
    }[fault](at)
    sys.argv = ["metafew", *sys.argv[3:]]
    cli.main()
