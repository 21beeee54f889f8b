"""Experiment trackers: copies of the metrics lines a run writes to metrics.jsonl, for tools that
watch runs live. `logging.tensorboard: true` writes TensorBoard event files to <run>/tensorboard
through torch.utils.tensorboard (the `tensorboard` package's event writer): every metrics line
as scalars (train/loss, train/accuracy, train/lr, train/tasks_per_s, val/accuracy, val/ci95),
and, once the run is done, its hyper-parameters beside the best validation accuracy (the HPARAMS
tab compares runs). metrics.jsonl stays the record; a tracker only mirrors it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from metafew.config import Config
from metafew.config_load import to_dict

TAGS = {
    "loss": "train/loss",
    "accuracy": "train/accuracy",
    "lr": "train/lr",
    "tasks_per_s": "train/tasks_per_s",
    "val_accuracy": "val/accuracy",
    "val_ci95": "val/ci95",
}
"""metrics.jsonl field -> TensorBoard tag (fields not listed, such as elapsed_s, are not copied:
TensorBoard keeps its own wall time)."""


class Tracker(Protocol):
    """Receives the run's metrics lines as they are written, and the end of the run."""

    def log(self, record: dict[str, Any]) -> None: ...

    def finish(self, best_accuracy: float | None, iteration: int, completed: bool) -> None: ...


class NoTracker:
    """logging.* all off."""

    def log(self, record: dict[str, Any]) -> None:
        """Nothing to copy to."""

    def finish(self, best_accuracy: float | None, iteration: int, completed: bool) -> None:
        """Nothing to close."""


def flat_hparams(cfg: Config) -> dict[str, bool | int | float | str]:
    """The config's values as TensorBoard hyper-parameters: dotted keys, None as "null", lists as
    text (the HPARAMS plugin takes scalars and strings only)."""
    out: dict[str, bool | int | float | str] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float, str)):
                out[prefix + key] = value
            else:
                out[prefix + key] = "null" if value is None else str(value)

    walk(to_dict(cfg), "")
    return out


class TensorBoard:
    """Event files in <run>/tensorboard. On resume from iteration k, TensorBoard is told to drop
    the events after k that the stopped process wrote past its last checkpoint (purge_step), so
    the curves continue exactly as metrics.jsonl does."""

    def __init__(self, cfg: Config, run: Path, start_iteration: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        self.writer = SummaryWriter(
            log_dir=str(run / "tensorboard"), purge_step=start_iteration + 1 if start_iteration else None
        )

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["iteration"])
        for key, value in record.items():
            if key in TAGS:
                self.writer.add_scalar(TAGS[key], float(value), step)
        self.writer.flush()

    def finish(self, best_accuracy: float | None, iteration: int, completed: bool) -> None:
        if completed:
            metrics = {"hparam/iterations": float(iteration)}
            if best_accuracy is not None:
                metrics["hparam/best_val_accuracy"] = best_accuracy
            self.writer.add_hparams(flat_hparams(self.cfg), metrics, run_name=".")
        self.writer.close()


def open_tracker(cfg: Config, run: Path, start_iteration: int) -> Tracker:
    """The trackers cfg.logging asks for (one today: TensorBoard)."""
    if cfg.logging.tensorboard:
        return TensorBoard(cfg, run, start_iteration)
    return NoTracker()
