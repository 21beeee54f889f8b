"""Shared by the reliability tests: the uninterrupted reference run and what must equal it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import load_pt, ok, only_child, read_metrics, tiny

ARGS = ["train.iterations=6"]
"""The tiny experiment of tests/helpers.py, 6 outer steps: checkpoints at 2, 4, 6, validation at
2, 4, 6."""


def essentials(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock fields (speed, elapsed time)."""
    return [{k: v for k, v in r.items() if k not in ("tasks_per_s", "elapsed_s")} for r in read_metrics(run)]


def fingerprint(run: Path) -> dict[str, Any]:
    """What must be bit-identical between an interrupted-and-resumed run and a straight one."""
    out: dict[str, Any] = {"metrics": essentials(run)}
    for name in ("last", "best"):
        state = load_pt(run / "checkpoints" / f"{name}.pt")
        out[name] = (state["iteration"], state["best_accuracy"])
        out[f"{name}.params"] = {k: v.numpy().tobytes() for k, v in state["params"].items()}
        out[f"{name}.adam"] = {
            (i, k): v.numpy().tobytes() for i, s in state["optimizer"]["state"].items() for k, v in s.items()
        }
    return out


def reference_run(factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run's fingerprint (each test module makes it once, in a fixture)."""
    runs_dir = factory.mktemp("reference") / "runs"
    ok("train", *tiny(runs_dir, *ARGS))
    return fingerprint(only_child(runs_dir))


def resume_auto(runs_dir: Path, *extra: str) -> str:
    """Re-run the same command with --resume auto (what a requeued job does); its stderr."""
    result = ok("train", "--resume", "auto", *extra, *tiny(runs_dir, *ARGS))
    return result.stderr
