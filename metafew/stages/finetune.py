"""`metafew finetune`: M_meta -> M_finetune on the labeled novel pictures (and, where the recipe
uses them, the unlabeled ones) -> <run>/finetune/<stamp>-<id>/{model.pt, finetune.json}."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from metafew.augment import augment_spec
from metafew.checkpoints import MetaCheckpoint, save
from metafew.config import Config
from metafew.config_load import to_dict
from metafew.data import LabeledImages, UnlabeledImages, load_class_folders
from metafew.data.download import Progress as DownloadProgress
from metafew.files import ensure_writable, write_json
from metafew.finetuning import Fitted, finetune, predict_proba, unlabeled_weight
from metafew.launch import load_run_data
from metafew.learner import Learner
from metafew.progress import Advance, silent
from metafew.runs import new_folder, resolve_run
from metafew.stages.common import (
    StopRequested,
    check_stop,
    checkpoint_name,
    nothing_written,
    novel_learner,
    run_config,
    unlabeled_pictures,
)

SECTIONS = ("finetune", "augment", "runtime")
"""The config sections `finetune` (and `select`) accept overrides for."""


@dataclass(frozen=True)
class FinetuneResult:
    """M_finetune's folder, what it was fitted on, and the record written to finetune.json."""

    folder: Path
    images: int
    classes: list[str]
    labeled_accuracy: float
    record: dict[str, Any]


def labeled_pictures(
    cfg: Config, labeled: Path | None, run: Path, progress: DownloadProgress | None
) -> LabeledImages:
    """The labeled novel pictures: a folder of <class>/*.png, or the dataset's novel classes."""
    if labeled:
        return load_class_folders(labeled, cfg.data.image_size, cfg.data.channels)
    return load_run_data(cfg, run, progress).novel


def recipe_record(cfg: Config, fits: list[Fitted]) -> dict[str, Any]:
    """The values the fine-tuning really used: finetune.* and augment.* (with the resolved flip),
    the step count early stopping chose and the held-out curve that chose it (the first member's;
    `member_steps`: every member's step count)."""
    fitted = fits[0]
    return {
        "finetune": {**asdict(cfg.finetune), "unlabeled_weight": unlabeled_weight(cfg.finetune)},
        "augment": asdict(augment_spec(cfg)),
        "adapt_steps": cfg.algorithm.eval_inner_steps
        if cfg.finetune.adapt_steps is None
        else cfg.finetune.adapt_steps,
        "steps": fitted.steps,
        "member_steps": [f.steps for f in fits],
        "holdout_curve": [{"step": s, "loss": loss, "accuracy": acc} for s, loss, acc in fitted.curve],
    }


def finetune_run(
    run: Path,
    labeled: Path | None,
    checkpoint: str,
    overrides: list[str],
    progress: DownloadProgress | None = None,
    *,
    unlabeled: Path | None = None,
    stop_requested: StopRequested = lambda: False,
    advance: Advance = silent,
) -> FinetuneResult:
    """Fine-tune <run>'s checkpoint on the labeled novel pictures (a folder of <class>/*.png, or
    the dataset's) with the finetune.* recipe; the unlabeled pictures (`unlabeled`, else the
    dataset's own) are read only when finetune.unlabeled uses them. `stop_requested()` is
    checked between phases, steps and batches: Interrupted, no model folder made. `advance`
    hears the fine-tuning steps and the scoring of the labeled pictures."""
    run = resolve_run(run)
    ensure_writable(run / "finetune")
    cfg = run_config(run, overrides, SECTIONS)
    which = checkpoint_name(checkpoint)
    novel = labeled_pictures(cfg, labeled, run, progress)
    pictures = None
    if cfg.finetune.unlabeled != "none":
        pictures, _ = unlabeled_pictures(cfg, unlabeled, run, progress)
    check_stop(stop_requested, "finetune", "after loading the pictures")
    cfg, learner, saved = novel_learner(run, cfg, which, len(novel.classes))
    check_stop(stop_requested, "finetune", "after loading the checkpoint")
    source = Sources(labeled, unlabeled)
    return fit_and_save(cfg, run, which, learner, saved, novel, pictures, source, {}, stop_requested, advance)


@dataclass(frozen=True)
class Sources:
    """Where the labeled and unlabeled pictures came from (None: the dataset's own)."""

    labeled: Path | None
    unlabeled: Path | None

    def describe(self, cfg: Config, unlabeled_used: bool) -> dict[str, Any]:
        dataset = f"dataset:{cfg.data.dataset}"
        return {
            "labeled": str(self.labeled) if self.labeled else dataset,
            "unlabeled": None if not unlabeled_used else (str(self.unlabeled) if self.unlabeled else dataset),
        }


def fit_and_save(
    cfg: Config,
    run: Path,
    which: str,
    learner: Learner,
    saved: MetaCheckpoint,
    novel: LabeledImages,
    pictures: UnlabeledImages | None,
    sources: Sources,
    extra: dict[str, Any],
    stop_requested: StopRequested,
    advance: Advance = silent,
) -> FinetuneResult:
    """Fine-tune `learner` with cfg's recipe (on `pictures` too where finetune.unlabeled uses
    them), score it on its labeled pictures, and write <run>/finetune/<id>/{model.pt,
    finetune.json} (with `extra` added to the record)."""
    images = None if cfg.finetune.unlabeled == "none" or pictures is None else pictures.images
    with nothing_written("finetune"):
        model, fits = finetune(cfg, learner, novel, images, stop_requested=stop_requested, advance=advance)
        probs = predict_proba(learner, model, novel.images, stop_requested=stop_requested, advance=advance)
    train_acc = float((probs.argmax(-1) == novel.labels).float().mean())
    out = new_folder(run / "finetune")
    save(out / "model.pt", model.record(to_dict(cfg), learner.train_classes))
    record = {
        "run": str(run),
        "checkpoint": which,
        "meta_iteration": saved.iteration,
        **sources.describe(cfg, images is not None),
        "unlabeled_pictures": 0 if images is None else len(images),
        "classes": model.classes,
        "images": len(novel.labels),
        "labeled_accuracy": train_acc,
        **recipe_record(cfg, fits),
        **extra,
    }
    write_json(out / "finetune.json", record)
    return FinetuneResult(out, len(novel.labels), model.classes, train_acc, record)
