"""What the stages share: which checkpoint, the run's config with the stage's overrides, the
meta-learned learner, the unlabeled pictures, and stopping before any output exists."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from metafew.algorithms import ANY_TEST_WAYS
from metafew.checkpoints import MetaCheckpoint, load_meta
from metafew.config import Config
from metafew.config_load import from_dict, merge, parse_overrides, to_dict
from metafew.data import UnlabeledImages, load_unlabeled
from metafew.data.download import Progress as DownloadProgress
from metafew.errors import ConfigError, Interrupted
from metafew.launch import load_run_data
from metafew.learner import Learner, build_learner, load_params
from metafew.runs import load_run_config
from metafew.system import resolve_device, set_threads

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


def learner_for(cfg: Config, train_classes: int, episodes: Config | None = None) -> Learner:
    """A learner on runtime.device (resolved once, here), CPU threads set; `episodes` as in
    build_learner."""
    set_threads(cfg.runtime.threads)
    return build_learner(cfg, resolve_device(cfg.runtime.device), train_classes, episodes)


def meta_learner(
    run: Path, cfg: Config, checkpoint: str, episodes: Config | None = None
) -> tuple[Learner, MetaCheckpoint]:
    """The learner with the weights of <run>/checkpoints/<checkpoint>.pt (`episodes` as in
    build_learner)."""
    path = run / "checkpoints" / f"{checkpoint}.pt"
    saved = load_meta(path)
    learner = learner_for(cfg, saved.train_classes, episodes)
    load_params(learner, saved.params, f"checkpoint {str(path)!r}")
    return learner, saved


def novel_learner(
    run: Path, cfg: Config, checkpoint: str, classes: int
) -> tuple[Config, Learner, MetaCheckpoint]:
    """The learner of `meta_learner` set up for `classes` labeled novel classes, and the config
    to fine-tune and save it with: for algorithms that meta-learn no N-way head (protonet,
    pretrain: their adaptation writes a fresh head) task.ways becomes `classes`, so a ProtoNet
    trained on 20-way episodes fine-tunes on 5 classes; other algorithms keep their config
    (finetuning.check_ways then names a mismatch)."""
    fit_cfg = cfg
    if cfg.algorithm.name in ANY_TEST_WAYS and classes != cfg.task.ways:
        fit_cfg = replace(cfg, task=replace(cfg.task, ways=classes), eval=replace(cfg.eval, ways=None))
    learner, saved = meta_learner(run, cfg, checkpoint, fit_cfg)
    return fit_cfg, learner, saved


StopRequested = Callable[[], bool]
"""True once a signal asked the command to stop (a metafew.stopping.StopSignal, or any callable)."""


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


def unlabeled_pictures(
    cfg: Config, folder: Path | None, run: Path, progress: DownloadProgress | None
) -> tuple[UnlabeledImages, list[tuple[str, str]]]:
    """Unlabeled pictures: a folder (unreadable files listed, not fatal) or the dataset's own."""
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
