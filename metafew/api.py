"""metafew as a Python library: the commands as plain functions over run folders, and the
models as modules (issue 14). Everything here is also reachable as `metafew.<name>`, imported on
first use, so that `import metafew` (every CLI start) stays free of torch.

    import metafew

    run = metafew.train(overrides=["train.iterations=100"])       # the embedded glyph experiment
    model_dir = metafew.finetune(run, overrides=["finetune.steps=50"])
    model = metafew.load_finetuned(model_dir)                      # nn.Module, eval mode, CPU
    pictures = metafew.read_pictures("my_pictures", model)         # decoded as `metafew predict` does
    probs = model(pictures.images)                                 # [N, ways], columns model.classes
    result = metafew.predict(model_dir, "my_pictures")             # predictions.csv, summary.json

train/finetune/predict run the same library code as the commands (metafew.launch and
metafew.engine; metafew.stages) and write the same folders; user errors raise metafew.errors
types with the message the CLI would print. Nothing here prints: train's remarks (a fallback
checkpoint, the run `resume="auto"` found) go to the `metafew` logger unless `note` is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from metafew import engine
from metafew.config import Config
from metafew.config_load import from_dict, merge, parse_overrides, to_dict
from metafew.distributed import Solo
from metafew.errors import ConfigError
from metafew.export import Classifier, Exported, classifier, export, read_pictures
from metafew.launch import Note, TrainRequest, discard_if_unsaved, prepare, recorded_split
from metafew.learner import Learner
from metafew.models import ModelFunction
from metafew.runs import RunClaim, resolve_run
from metafew.stages import PredictResult, finetune_run, predict_run
from metafew.stages.common import checkpoint_name, meta_learner, run_config

log = logging.getLogger("metafew")

ConfigSource = str | Path | Sequence[str | Path] | Config | None
"""What `train` starts from: YAML file(s) or shipped preset name(s) (composed left to right, as
repeated --config), a Config, or None (the defaults: the embedded glyph experiment)."""


@dataclass(frozen=True)
class _ConfigRequest(TrainRequest):
    """A TrainRequest whose base is a Config object rather than YAML files."""

    base: Config | None = None

    def new_config(self) -> Config:
        if self.base is None:
            return super().new_config()
        return from_dict(merge(to_dict(self.base), parse_overrides(self.overrides)))


def _files(config: ConfigSource) -> list[str] | None:
    """The config files (or preset names) in `config`, as --config values; None for none."""
    if config is None or isinstance(config, Config):
        return None
    return [str(f) for f in ([config] if isinstance(config, (str, Path)) else config)]


def train(
    config: ConfigSource = None,
    overrides: Sequence[str] = (),
    *,
    resume: str | Path | None = None,
    progress: engine.Progress | None = None,
    note: Note | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> Path:
    """Meta-train M_meta as `metafew train --config CONFIG OVERRIDES [--resume RESUME]` does, in
    this process (no torchrun), and return the run folder.

    `progress(done, total, metrics)` after each logged iteration; `stop_requested()` is checked
    after each step: last.pt is written, then Interrupted. A new run that fails before its
    first checkpoint leaves no folder."""
    if isinstance(config, Config) and resume is not None:
        raise ConfigError(
            "train(resume=...) with a Config object: resuming compares against config files; pass "
            "the YAML path, or only overrides"
        )
    listed = _files(config)
    base = config if isinstance(config, Config) else None
    resumed = None if resume is None else str(resume)
    request = _ConfigRequest(listed, list(overrides), resumed, frozenset(), base)
    group = Solo()
    with RunClaim() as claim:
        launch = prepare(group, request, claim, note or log.info)
        with discard_if_unsaved(launch, group):
            engine.train(
                launch.cfg,
                launch.data,
                launch.run,
                launch.resume,
                progress,
                stop_requested,
                group,
                launch.learner,
            )
    return launch.run


def finetune(
    run: str | Path,
    labeled: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    unlabeled: str | Path | None = None,
    checkpoint: str = "best",
) -> Path:
    """Fine-tune <run>'s checkpoint as `metafew finetune RUN [--labeled DIR] OVERRIDES` does
    (finetune.*, augment.*, runtime.* overrides) and return the model folder <run>/finetune/<id>.
    `labeled`: a folder of <class>/*.png (None: the dataset's novel classes)."""
    result = finetune_run(
        Path(run),
        None if labeled is None else Path(labeled),
        checkpoint,
        list(overrides),
        unlabeled=None if unlabeled is None else Path(unlabeled),
    )
    return result.folder


def predict(
    model_dir: str | Path,
    pictures: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    ensemble: Sequence[str | Path] = (),
) -> PredictResult:
    """Label the pictures directly in `pictures` (None: the dataset's unlabeled ones) as
    `metafew predict MODEL_DIR PICTURES` does, into <model_dir>/predict/<id>/; the result holds
    the predictions.csv path, the count, the accuracy against known answers (or None), the
    unreadable files and summary.json's content. `overrides`: finetune.tta and runtime.*."""
    return predict_run(
        Path(model_dir),
        None if pictures is None else Path(pictures),
        ensemble=[Path(p) for p in ensemble],
        overrides=list(overrides),
    )


@dataclass(frozen=True)
class MetaModel:
    """M_meta, a meta-training checkpoint of a run, ready to use from Python.

    `model`: the backbone with the meta-learned weights (eval mode), x [N, C, H, W] floats in
    [0, 1] -> logits [N, ways]; its BatchNorm uses the statistics of the batch it is given (the
    MAML convention; transductive), so adapt and classify a task's pictures together, or
    fine-tune (`finetune`) for per-picture predictions. `learner`: the same weights as a pure
    function with every meta-learned tensor (`learner.params`, algo.* included) and the
    algorithm: `learner.algorithm.adapt(learner.params, support_x, support_y, steps, lr)`.
    `splits`: the class names per split the run was trained with (None for runs without
    data.json)."""

    model: nn.Module
    learner: Learner
    cfg: Config
    run: Path
    checkpoint: str
    iteration: int
    best_accuracy: float | None
    splits: dict[str, list[str]] | None


def load_meta(run: str | Path, checkpoint: str = "best", overrides: Sequence[str] = ()) -> MetaModel:
    """M_meta from <run>/checkpoints/<checkpoint>.pt (best or last), on runtime.device (a
    runtime.* override may change it; runtime.threads is applied). The global random streams are
    left as they were."""
    folder = resolve_run(run)
    cfg = run_config(folder, list(overrides), ("runtime",))
    which = checkpoint_name(checkpoint)
    with torch.random.fork_rng(devices=[]):  # build_learner seeds the initialisation
        learner, saved = meta_learner(folder, cfg, which)
    model = cast(ModelFunction, learner.forward).model  # its parameters are learner.params
    return MetaModel(
        model.eval(),
        learner,
        cfg,
        folder,
        which,
        saved.iteration,
        saved.best_accuracy,
        recorded_split(folder),
    )


def load_finetuned(folder: str | Path) -> Classifier:
    """The fine-tuned model in `folder` (<run>/finetune/<id>, e.g. from `finetune`) as one
    module on the CPU, in eval mode, without gradients (move it with `.to(device)`):

        pictures [N, C, H, W] -> class probabilities [N, ways], columns in the order of `.classes`

    pictures: float32 in [0, 1] (a PNG's pixels / 255) or uint8 0..255 (scaled inside), C =
    `.channels` (1 gray, 3 RGB), H = W = `.image_size`; any other shape is refused (DataError)
    rather than resized, because predict resizes with Pillow, which no torch resize matches: use
    `read_pictures` to decode and resize files as predict does. Inside: the /255 scaling, the
    backbone with the fine-tuned weights, the BatchNorm statistics of its training pictures
    frozen (a picture's row never depends on the rest of the batch) and the softmax. The result
    equals `metafew predict`'s probabilities with finetune.tta=1 (test-time views are drawn per
    position in a folder, so a module that sees one batch leaves them out)."""
    return classifier(Path(folder))


def export_model(folder: str | Path, fmt: str, out: str | Path | None = None) -> Exported:
    """`metafew export FOLDER --format FMT [--out OUT]`: the `load_finetuned` module written as
    torchscript (torch.jit.load) or exported-program (torch.export.load(...).module(), float32
    input), with its spec (classes, input, output) in `<out>.json`; default
    <folder>/export/classifier.ts.pt or .pt2."""
    return export(Path(folder), fmt, None if out is None else Path(out))


__all__ = [
    "Classifier",
    "ConfigSource",
    "Exported",
    "MetaModel",
    "PredictResult",
    "export_model",
    "finetune",
    "load_finetuned",
    "load_meta",
    "predict",
    "read_pictures",
    "train",
]
