"""The `metafew runs` table: one row per run folder, from its config, metrics and latest eval."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from metafew.errors import RunError
from metafew.runs import age, load_run_config, read_metrics


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


def _latest_eval(run: Path) -> str | None:
    files = sorted((run / "eval").glob("*.json"), key=age) if (run / "eval").is_dir() else []
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
    for run in sorted((p for p in runs_dir.iterdir() if (p / "config.yaml").is_file()), key=age):
        try:
            rows.append(summarize_run(run))
        except RunError:
            continue
    return rows
