"""The stages after meta-training, on run folders: evaluate a checkpoint on seeded test episodes,
fine-tune it into M_finetune, label unlabeled pictures with M_finetune. Each stage loads what it
needs from the folder, computes, writes its outputs there and returns a result record.

    <run>/eval/<stamp>-<id>.json
    <run>/finetune/<stamp>-<id>/{model.pt, finetune.json}
    <run>/finetune/<id>/predict/<stamp>-<id>/{predictions.csv, summary.json}
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metafew.checkpoints import MetaCheckpoint, load_finetuned, load_meta, save
from metafew.config import Config
from metafew.config_load import from_dict, merge, parse_overrides, to_dict, upgrade_saved
from metafew.data import LabeledImages, UnlabeledImages, load_class_folders, load_unlabeled
from metafew.data.download import Progress as DownloadProgress
from metafew.errors import ConfigError, Interrupted
from metafew.evaluation import (
    Finetuned,
    confidence_interval,
    evaluate,
    finetune,
    predict_proba,
    queries_per_class,
)
from metafew.files import ensure_writable, write_json
from metafew.launch import load_run_data
from metafew.learner import Learner, build_learner, load_params
from metafew.runs import load_run_config, new_file, new_folder, resolve_run
from metafew.system import resolve_device, set_threads
from metafew.tasks import EpisodeSampler

CHECKPOINTS = ("best", "last")


def checkpoint_name(name: str) -> str:
    """A --checkpoint value, checked."""
    if name not in CHECKPOINTS:
        raise ConfigError(f"--checkpoint {name!r}: must be best or last")
    return name


def run_config(run: Path, overrides: list[str], allowed: tuple[str, ...]) -> Config:
    """The run's config with overrides restricted to the sections in `allowed`."""
    extra = parse_overrides(overrides)
    for section in extra:
        if section not in allowed:
            raise ConfigError(
                f"override {section}.*: this command only accepts "
                f"{', '.join(s + '.*' for s in allowed)} overrides"
            )
    return from_dict(merge(to_dict(load_run_config(run)), extra))


def _learner(cfg: Config, train_classes: int) -> Learner:
    """A learner on runtime.device (resolved once, here), CPU threads set."""
    set_threads(cfg.runtime.threads)
    return build_learner(cfg, resolve_device(cfg.runtime.device), train_classes)


def meta_learner(run: Path, cfg: Config, checkpoint: str) -> tuple[Learner, MetaCheckpoint]:
    """The learner with the weights of <run>/checkpoints/<checkpoint>.pt."""
    path = run / "checkpoints" / f"{checkpoint}.pt"
    saved = load_meta(path)
    learner = _learner(cfg, saved.train_classes)
    load_params(learner, saved.params, f"checkpoint {str(path)!r}")
    return learner, saved


StopRequested = Callable[[], bool]
"""True once a signal asked the command to stop (metafew.cli.common.StopFlag)."""


def check_stop(stop_requested: StopRequested, stage: str, where: str) -> None:
    """Interrupted if a stop was requested: `stage` stopped `where` (how far it got), before any
    of its outputs exist."""
    if stop_requested():
        raise Interrupted(f"stopped during {stage} {where}; nothing written")


@contextmanager
def nothing_written(stage: str) -> Iterator[None]:
    """Name `stage` in the Interrupted of evaluate/predict_proba (`stopped after K of N ...`),
    which come before any of its outputs exist."""
    try:
        yield
    except Interrupted as exc:
        far = str(exc).removeprefix("stopped ")
        raise Interrupted(f"stopped during {stage} {far}; nothing written") from None


# ---------------------------------------------------------------------------------------------
# eval


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate_run` wrote to `path` (`summary` is that JSON's content)."""

    path: Path
    summary: dict[str, Any]


def evaluate_run(
    run: Path,
    checkpoint: str | None,
    overrides: list[str],
    progress: DownloadProgress | None = None,
    *,
    stop_requested: StopRequested = lambda: False,
) -> EvalResult:
    """Accuracy on eval.episodes seeded test episodes of the novel classes -> <run>/eval/*.json.
    `stop_requested()` is checked between phases and chunks of episodes: Interrupted, nothing
    written."""
    run = resolve_run(run)
    ensure_writable(run / "eval")
    cfg = run_config(run, overrides, ("eval", "runtime"))
    which = checkpoint_name(checkpoint or cfg.eval.checkpoint)
    novel = load_run_data(cfg, run, progress).novel
    check_stop(stop_requested, "eval", "after loading the data")
    queries = queries_per_class(cfg, novel)
    sampler = EpisodeSampler(novel, cfg.task.ways, cfg.task.shots, queries, cfg.eval.seed, "novel")
    learner, saved = meta_learner(run, cfg, which)
    check_stop(stop_requested, "eval", "after loading the checkpoint")
    started = time.perf_counter()
    with nothing_written("eval"):
        accs = evaluate(
            learner,
            sampler,
            cfg.eval.episodes,
            cfg.algorithm.eval_inner_steps,
            None,
            cfg.eval.norm,
            stop_requested=stop_requested,
        )
    mean, ci = confidence_interval(accs)
    summary = {
        "accuracy": mean,
        "ci95": ci,
        "episodes": cfg.eval.episodes,
        "ways": cfg.task.ways,
        "shots": cfg.task.shots,
        "queries": queries,
        "inner_steps": cfg.algorithm.eval_inner_steps,
        "norm": cfg.eval.norm,
        "checkpoint": which,
        "meta_iteration": saved.iteration,
        "seed": cfg.eval.seed,
        "seconds": time.perf_counter() - started,
        "per_episode": accs.tolist(),
    }
    path = new_file(run / "eval", ".json")
    write_json(path, summary)
    return EvalResult(path, summary)


# ---------------------------------------------------------------------------------------------
# finetune


@dataclass(frozen=True)
class FinetuneResult:
    """M_finetune's folder and what it was fitted on."""

    folder: Path
    images: int
    classes: list[str]
    labeled_accuracy: float


def finetune_run(
    run: Path,
    labeled: Path | None,
    checkpoint: str,
    overrides: list[str],
    progress: DownloadProgress | None = None,
    *,
    stop_requested: StopRequested = lambda: False,
) -> FinetuneResult:
    """Adapt <run>'s checkpoint to the labeled novel pictures (a folder of <class>/*.png, or the
    dataset's) -> <run>/finetune/<id>/{model.pt, finetune.json}. `stop_requested()` is checked
    between phases and batches: Interrupted, no model folder made."""
    run = resolve_run(run)
    ensure_writable(run / "finetune")
    cfg = run_config(run, overrides, ("finetune", "runtime"))
    which = checkpoint_name(checkpoint)
    novel: LabeledImages = (
        load_class_folders(labeled, cfg.data.image_size, cfg.data.channels)
        if labeled
        else load_run_data(cfg, run, progress).novel
    )
    check_stop(stop_requested, "finetune", "after loading the labeled pictures")
    learner, saved = meta_learner(run, cfg, which)
    check_stop(stop_requested, "finetune", "after loading the checkpoint")
    model = finetune(cfg, learner, novel)
    with nothing_written("finetune (scoring the labeled pictures)"):
        probs = predict_proba(learner, model, novel.images, stop_requested=stop_requested)
    train_acc = float((probs.argmax(-1) == novel.labels).float().mean())
    out = new_folder(run / "finetune")
    save(out / "model.pt", model.record(to_dict(cfg), learner.train_classes))
    write_json(
        out / "finetune.json",
        {
            "run": str(run),
            "checkpoint": which,
            "meta_iteration": saved.iteration,
            "labeled": str(labeled) if labeled else f"dataset:{cfg.data.dataset}",
            "classes": model.classes,
            "images": len(novel.labels),
            "labeled_accuracy": train_acc,
            "steps": cfg.finetune.steps,
            "lr": cfg.finetune.lr,
        },
    )
    return FinetuneResult(out, len(novel.labels), model.classes, train_acc)


# ---------------------------------------------------------------------------------------------
# predict


@dataclass(frozen=True)
class PredictResult:
    """Where the labels went, how many pictures, accuracy against known answers (or None) and the
    files that could not be read (name, reason)."""

    csv: Path
    pictures: int
    accuracy: float | None
    unreadable: list[tuple[str, str]]


def run_of_model(model_dir: Path) -> Path:
    """The run folder a fine-tuned model folder belongs to (<run>/finetune/<id>)."""
    return model_dir.parent.parent


def _unlabeled_pictures(
    cfg: Config, folder: Path | None, run: Path, progress: DownloadProgress | None
) -> tuple[UnlabeledImages, list[tuple[str, str]]]:
    """The pictures to label: a folder (unreadable files listed, not fatal) or the dataset's own."""
    root = Path(cfg.data.root or ".")
    if folder is None and cfg.data.dataset == "folder" and (root / "meta_train").is_dir():
        folder = root / "novel" / "unlabeled"  # read with per-file errors
    if folder is not None:
        return load_unlabeled(folder, cfg.data.image_size, cfg.data.channels)
    pictures = load_run_data(cfg, run, progress).unlabeled
    if pictures is None:
        raise ConfigError(
            "this dataset has no unlabeled pictures: give a folder, "
            "e.g. metafew predict DIR my_data/novel/unlabeled"
        )
    return pictures, []


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP's CSV injection)."""


def spreadsheet_safe(text: str) -> str:
    """`text` with a leading `'` where a spreadsheet would run it as a formula (`=1+1` -> `'=1+1`);
    other text unchanged."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def write_predictions(
    path: Path, names: list[str], labels: list[str], probs: torch.Tensor, classes: list[str]
) -> None:
    """predictions.csv: file, label, one probability column per class; file and class names
    are made spreadsheet-safe (`spreadsheet_safe`), the probabilities are plain numbers."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", *(f"p_{c}" for c in classes)])
        for name, label, row in zip(names, labels, probs.tolist()):
            writer.writerow([spreadsheet_safe(name), spreadsheet_safe(label), *(f"{p:.6f}" for p in row)])


def predict_run(
    model_dir: Path,
    folder: Path | None,
    progress: DownloadProgress | None = None,
    *,
    stop_requested: StopRequested = lambda: False,
) -> PredictResult:
    """Label pictures with the M_finetune in `model_dir` -> model_dir/predict/<id>/{predictions.csv,
    summary.json}. A picture's probabilities depend on that picture only. `stop_requested()` is
    checked between phases and batches: Interrupted, no predictions folder made."""
    record = load_finetuned(model_dir)
    ensure_writable(model_dir / "predict")
    cfg = from_dict(upgrade_saved(record.config))
    pictures, failed = _unlabeled_pictures(cfg, folder, run_of_model(model_dir), progress)
    check_stop(stop_requested, "predict", "after loading the pictures")
    learner = _learner(cfg, record.train_classes)
    model = Finetuned.from_record(record, learner.device)
    with nothing_written("predict"):
        probs = predict_proba(learner, model, pictures.images, stop_requested=stop_requested)
    out = new_folder(model_dir / "predict")
    labels = [model.classes[i] for i in probs.argmax(-1).tolist()]
    write_predictions(out / "predictions.csv", pictures.names, labels, probs, model.classes)
    summary: dict[str, Any] = {
        "source": str(folder) if folder else f"dataset:{cfg.data.dataset}",
        "pictures": len(labels),
        "unreadable": [{"file": n, "error": e} for n, e in failed],
    }
    if pictures.answers is not None:
        summary["accuracy"] = sum(a == b for a, b in zip(labels, pictures.answers)) / len(labels)
    write_json(out / "summary.json", summary)
    return PredictResult(out / "predictions.csv", len(labels), summary.get("accuracy"), failed)
