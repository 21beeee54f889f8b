"""`metafew predict`: labels with probabilities for unlabeled pictures from one M_finetune or the
mean of several (an ensemble) -> <model>/predict/<stamp>-<id>/{predictions.csv, summary.json,
and with known answers confusion.csv, confusion.png}."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metafew.augment import augment_spec
from metafew.checkpoints import FinetunedCheckpoint, load_finetuned
from metafew.config import Config
from metafew.config_load import from_dict, merge, parse_overrides, to_dict, upgrade_saved
from metafew.data.download import Progress as DownloadProgress
from metafew.errors import ConfigError, DataError, RunError
from metafew.files import ensure_writable, write_json
from metafew.finetuning import Finetuned, predict_proba
from metafew.progress import Advance, silent
from metafew.report import (
    class_counts,
    confusion_matrix,
    per_class_accuracy,
    render_confusion_png,
    write_confusion_csv,
)
from metafew.runs import new_folder
from metafew.stages.common import StopRequested, check_stop, learner_for, nothing_written, unlabeled_pictures


@dataclass(frozen=True)
class PredictResult:
    """Where the labels went, how many pictures, accuracy against known answers (or None), the
    files that could not be read (name, reason) and summary.json's content."""

    csv: Path
    pictures: int
    accuracy: float | None
    unreadable: list[tuple[str, str]]
    summary: dict[str, Any]


def run_of_model(model_dir: Path) -> Path:
    """The run folder a fine-tuned model folder belongs to (<run>/finetune/<id>)."""
    return model_dir.parent.parent


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP's CSV injection)."""


def spreadsheet_safe(text: str) -> str:
    """`text` with a leading `'` where a spreadsheet would run it as a formula (`=1+1` -> `'=1+1`);
    other text unchanged."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def write_predictions(
    path: Path, names: list[str], labels: list[str], probs: torch.Tensor, classes: list[str]
) -> None:
    """predictions.csv: file, label, confidence (the label's probability), one probability column
    per class; file and class names are made spreadsheet-safe (`spreadsheet_safe`), the
    probabilities are plain numbers."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "confidence", *(spreadsheet_safe(f"p_{c}") for c in classes)])
        for name, label, row in zip(names, labels, probs.tolist()):
            writer.writerow(
                [
                    spreadsheet_safe(name),
                    spreadsheet_safe(label),
                    f"{max(row):.6f}",
                    *(f"{p:.6f}" for p in row),
                ]
            )


def model_config(record: FinetunedCheckpoint, overrides: list[str]) -> Config:
    """The config M_finetune was made with, plus finetune.tta / runtime.* overrides."""
    extra = parse_overrides(overrides)
    allowed = {"finetune": {"tta"}, "runtime": None}
    for section, values in extra.items():
        keys = allowed.get(section, set())
        if section not in allowed or (keys is not None and not set(values) <= keys):
            raise ConfigError(
                f"override {section}.*: predict only accepts finetune.tta and runtime.* overrides"
            )
    return from_dict(merge(to_dict(from_dict(upgrade_saved(record.config))), extra))


def output_folder(out: Path) -> Path:
    """`--out`, checked before any work: made if absent (with its parents) and proven writable; an
    existing folder must be empty, so that no earlier predictions are overwritten."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {str(out)!r} is a file: give a folder for predictions.csv and summary.json")
    if out.is_dir() and any(out.iterdir()):
        raise RunError(
            f"--out {str(out)!r} is not empty: give a new or empty folder, so nothing is overwritten"
        )
    ensure_writable(out)
    return out


def predict_run(
    model_dir: Path,
    folder: Path | None,
    progress: DownloadProgress | None = None,
    *,
    ensemble: list[Path] | None = None,
    overrides: list[str] | None = None,
    out: Path | None = None,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> PredictResult:
    """Label pictures with the M_finetune in `model_dir`, or with the mean probabilities of it and
    the models in `ensemble` (same classes, same order), each with its own finetune.tta test-time
    views -> model_dir/predict/<id>/ (or `out`: a new folder, or an empty existing one). `folder`
    may also be one picture file. A picture's probabilities depend on that picture only.
    `stop_requested()` is checked between phases and batches: Interrupted, nothing written;
    `advance("pictures", done, n)` after each batch of each model."""
    records = [(model_dir, load_finetuned(model_dir))]
    records += [(other, load_finetuned(other)) for other in ensemble or []]
    if out is None:
        ensure_writable(model_dir / "predict")
    else:
        output_folder(out)
    classes = list(records[0][1].classes)
    for other, record in records[1:]:
        if list(record.classes) != classes:
            raise DataError(
                f"{other} was fine-tuned on classes {', '.join(record.classes)}, but {model_dir} on "
                f"{', '.join(classes)}: an ensemble needs the same classes in the same order"
            )
    configs = [model_config(record, overrides or []) for _, record in records]
    cfg = configs[0]
    pictures, failed = unlabeled_pictures(cfg, folder, run_of_model(model_dir), progress)
    check_stop(stop_requested, "predict", "after loading the pictures")
    total = torch.zeros(len(pictures.names), len(classes))
    with nothing_written("predict"):
        for (_, record), member_cfg in zip(records, configs):
            learner = learner_for(member_cfg, record.train_classes)
            model = Finetuned.from_record(record, learner.device, member_cfg.finetune.tta)
            total += predict_proba(
                learner,
                model,
                pictures.images,
                spec=augment_spec(member_cfg),
                seed=member_cfg.finetune.seed,
                stop_requested=stop_requested,
                advance=advance,
            )
    probs = total / len(records)
    out = new_folder(model_dir / "predict") if out is None else out
    labels = [classes[i] for i in probs.argmax(-1).tolist()]
    write_predictions(out / "predictions.csv", pictures.names, labels, probs, classes)
    summary: dict[str, Any] = {
        "source": str(folder) if folder else f"dataset:{cfg.data.dataset}",
        "models": [str(path) for path, _ in records],
        "tta": [c.finetune.tta for c in configs],
        "pictures": len(labels),
        "per_class": class_counts(labels, classes),
        "unreadable": [{"file": n, "error": e} for n, e in failed],
    }
    if pictures.answers is not None:
        summary |= _scored(out, pictures.answers, labels, classes)
    write_json(out / "summary.json", summary)
    return PredictResult(out / "predictions.csv", len(labels), summary.get("accuracy"), failed, summary)


def _scored(out: Path, answers: list[str], labels: list[str], classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix (confusion.csv and .png in `out`)
    against known answers; answers outside `classes` give the accuracy alone."""
    try:
        matrix = confusion_matrix(answers, labels, classes)
    except ValueError as exc:
        return {
            "accuracy": sum(a == b for a, b in zip(labels, answers)) / len(labels),
            "confusion_skipped": str(exc),
        }
    accuracy = float(matrix.trace() / max(1, matrix.sum()))
    write_confusion_csv(out / "confusion.csv", matrix, classes)
    render_confusion_png(
        out / "confusion.png",
        matrix,
        classes,
        f"accuracy {100 * accuracy:.1f}% on {int(matrix.sum())} pictures",
    )
    return {
        "accuracy": accuracy,
        "per_class_accuracy": per_class_accuracy(matrix, classes),
        "confusion": matrix.tolist(),
    }
