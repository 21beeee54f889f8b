"""`metafew finetune`, `predict` and `eval`: the stages after meta-training (metafew.stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from metafew import stages
from metafew.cli.common import DownloadBar, StopFlag, err, say, user_errors

FinetuneOverrides = Annotated[
    list[str] | None, typer.Argument(help="finetune.* and runtime.* overrides, e.g. finetune.steps=50")
]
EvalOverrides = Annotated[
    list[str] | None, typer.Argument(help="eval.* and runtime.* overrides, e.g. eval.episodes=100")
]


def finetune(
    run: Annotated[Path, typer.Argument(help="meta-training run folder")],
    labeled: Annotated[
        Path | None,
        typer.Option(help="folder of <class>/*.png (default: the dataset's novel classes)"),
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
    overrides: FinetuneOverrides = None,
) -> None:
    """Adapt M_meta to the labeled novel pictures; writes M_finetune under <run>/finetune/."""
    stop = StopFlag()  # SIGINT/SIGTERM/SIGUSR1: exit 130 at the next check, nothing written
    with user_errors(), DownloadBar() as download:
        result = stages.finetune_run(run, labeled, checkpoint, overrides or [], download, stop_requested=stop)
    say(
        f"M_finetune: {result.folder} ({result.images} labeled pictures, "
        f"{', '.join(result.classes)}; accuracy on them {100 * result.labeled_accuracy:.1f}%)"
    )
    say(f"next: metafew predict {result.folder} <folder of unlabeled pictures>")


def predict(
    model_dir: Annotated[Path, typer.Argument(help="fine-tuned model folder (<run>/finetune/<id>)")],
    folder: Annotated[Path | None, typer.Argument(help="unlabeled pictures (default: the dataset's)")] = None,
) -> None:
    """Label unlabeled pictures with M_finetune; writes predictions.csv (one probability per class)."""
    stop = StopFlag()
    with user_errors(), DownloadBar() as download:
        result = stages.predict_run(model_dir, folder, download, stop_requested=stop)
    for name, reason in result.unreadable:
        err.print(f"[yellow]skipped[/] {escape(name)}: {escape(reason)}", highlight=False)
    scored = "" if result.accuracy is None else f"; accuracy against answers {100 * result.accuracy:.1f}%"
    say(f"predictions: {result.csv} ({result.pictures} pictures{scored})")


def evaluate(
    run: Annotated[Path, typer.Argument(help="meta-training run folder")],
    checkpoint: Annotated[str | None, typer.Option(help="best or last (default eval.checkpoint)")] = None,
    overrides: EvalOverrides = None,
) -> None:
    """Accuracy on seeded test episodes of the novel classes: mean ± 95% CI, also as JSON."""
    stop = StopFlag()
    with user_errors(), DownloadBar() as download:
        result = stages.evaluate_run(run, checkpoint, overrides or [], download, stop_requested=stop)
    s = result.summary
    say(
        f"accuracy {100 * s['accuracy']:.2f} ± {100 * s['ci95']:.2f}% (95% CI; {s['episodes']} episodes, "
        f"{s['ways']}-way {s['shots']}-shot, {s['queries']} queries/class, {s['norm']} BatchNorm) "
        f"-> {result.path}"
    )
