"""`metafew finetune`, `select`, `predict` and `eval`: the stages after meta-training
(metafew.stages)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

if TYPE_CHECKING:  # imported inside the commands: `--help` stays free of torch
    from metafew import stages

from metafew.cli.common import DownloadBar, WorkBar, err, say, stop_on_signals, user_errors

FinetuneOverrides = Annotated[
    list[str] | None,
    typer.Argument(help="finetune.*, augment.* and runtime.* overrides, e.g. finetune.steps=200"),
]
UnlabeledOption = Annotated[
    Path | None,
    typer.Option(help="unlabeled pictures for finetune.unlabeled (default: the dataset's own)"),
]
EvalOverrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="eval.*, finetune.*, augment.* and runtime.* overrides, e.g. eval.episodes=100 "
        "eval.finetune=true"
    ),
]


def finetune(
    run: Annotated[Path, typer.Argument(help="meta-training run folder")],
    labeled: Annotated[
        Path | None,
        typer.Option(help="folder of <class>/*.png (default: the dataset's novel classes)"),
    ] = None,
    unlabeled: UnlabeledOption = None,
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
    overrides: FinetuneOverrides = None,
) -> None:
    """Fine-tune M_meta on the labeled novel pictures (finetune.* recipe) into <run>/finetune/<id>."""
    stop = stop_on_signals()  # SIGINT/SIGTERM/SIGUSR1: exit 130 at the next check, nothing written
    from metafew import stages

    with user_errors(), DownloadBar() as download, WorkBar("finetune") as bar:
        result = stages.finetune_run(
            run,
            labeled,
            checkpoint,
            overrides or [],
            download,
            unlabeled=unlabeled,
            stop_requested=stop,
            advance=bar,
        )
    _report_finetune(result)


def _report_finetune(result: stages.FinetuneResult) -> None:
    r = result.record
    unlabeled = (
        f", {r['unlabeled_pictures']} unlabeled ({r['finetune']['unlabeled']})" if r["unlabeled"] else ""
    )
    steps = r["member_steps"]
    fitted = (
        f"{steps[0]} steps"
        if len(steps) == 1
        else f"{len(steps)} members of {'/'.join(map(str, steps))} steps"
    )
    say(
        f"M_finetune: {result.folder} ({result.images} labeled pictures{unlabeled}; "
        f"{', '.join(result.classes)}; {fitted}; accuracy on its own labeled pictures "
        f"{100 * result.labeled_accuracy:.1f}%)"
    )
    say(f"next: metafew predict {result.folder} <folder of unlabeled pictures>")


def select(
    runs: Annotated[list[Path], typer.Argument(help="meta-training run folders to choose among")],
    labeled: Annotated[
        Path | None,
        typer.Option(help="folder of <class>/*.png (default: the first run's novel classes)"),
    ] = None,
    unlabeled: UnlabeledOption = None,
    candidate: Annotated[
        list[str] | None,
        typer.Option(
            help='a recipe to compare, as overrides: "finetune.unlabeled=entropy finetune.lr=1e-3" '
            "(repeat; default: 7 recipes, see metafew.stages.select)"
        ),
    ] = None,
    folds: Annotated[int, typer.Option(help="k of the k-fold cross-validation")] = 5,
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="overrides for every candidate (repeat)")
    ] = None,
) -> None:
    """Choose the fine-tuning recipe by k-fold cross-validation, say how accurate it will be, fine-tune it.

    The winner is estimated again on fresh folds, then fine-tuned into <run>/finetune/<id>."""
    stop = stop_on_signals()
    from metafew import stages

    shown: list[stages.Estimate] = []

    def show(e: stages.Estimate) -> None:
        if not shown:
            say(f"cross-validating on the labeled pictures ({folds} folds): accuracy [95% interval]")
        shown.append(e)
        low, high = e.interval
        say(
            f"  {100 * e.accuracy:5.1f}%  [{100 * low:.1f}, {100 * high:.1f}]  {e.run.name}  "
            f"{e.overrides or '(defaults)'}  ({e.seconds:.0f} s)"
        )

    with user_errors(), DownloadBar() as download, WorkBar("select") as bar:
        _, best, confirmed, result = stages.select_run(
            runs,
            labeled,
            checkpoint,
            overrides or [],
            download,
            unlabeled=unlabeled,
            candidates=candidate,
            folds=folds,
            report=show,
            stop_requested=stop,
            advance=bar,
        )
    low, high = confirmed.interval
    again = ""
    members = result.record["finetune"]["members"]
    if confirmed is not best:
        fitted, alone = ("", "") if members == 1 else (f", as a seed ensemble of {members}", " as one model")
        again = f" (on fresh folds{fitted}; {100 * best.accuracy:.1f}%{alone} on the folds that chose it)"
    say(
        f"chosen: {best.overrides or '(defaults)'} on {best.run.name}: estimated accuracy on new pictures of "
        f"these classes {100 * confirmed.accuracy:.1f}% [{100 * low:.1f}, {100 * high:.1f}]{again}"
    )
    _report_finetune(result)


def predict(
    model_dir: Annotated[Path, typer.Argument(help="fine-tuned model folder (<run>/finetune/<id>)")],
    folder: Annotated[
        Path | None,
        typer.Argument(help="a folder of unlabeled pictures, or one picture (default: the dataset's)"),
    ] = None,
    ensemble: Annotated[
        list[Path] | None, typer.Option(help="another fine-tuned model folder to average with (repeat)")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="finetune.tta=N (test-time views) or runtime.* (repeat)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="write predictions.csv and summary.json here (a new or empty folder)"),
    ] = None,
) -> None:
    """Label unlabeled pictures with M_finetune (or an ensemble's mean): predictions.csv, summary.json.

    With known answers: per-class accuracy in summary.json, confusion.csv and confusion.png."""
    stop = stop_on_signals()
    from metafew import stages

    with user_errors(), DownloadBar() as download, WorkBar("predict") as bar:
        result = stages.predict_run(
            model_dir,
            folder,
            download,
            ensemble=ensemble,
            overrides=overrides or [],
            out=out,
            stop_requested=stop,
            advance=bar,
        )
    for name, reason in result.unreadable:
        err.print(f"[yellow]skipped[/] {escape(name)}: {escape(reason)}", highlight=False)
    counts = ", ".join(f"{escape(c)} {n}" for c, n in result.summary["per_class"].items())
    say(f"labels per class: {counts}")
    scored = "" if result.accuracy is None else f"; accuracy against answers {100 * result.accuracy:.1f}%"
    say(f"predictions: {result.csv} ({result.pictures} pictures{scored})")


def evaluate(
    run: Annotated[Path, typer.Argument(help="meta-training run folder")],
    checkpoint: Annotated[str | None, typer.Option(help="best or last (default eval.checkpoint)")] = None,
    overrides: EvalOverrides = None,
) -> None:
    """Accuracy on seeded test episodes of the novel classes: mean ± 95% CI, also as JSON."""
    stop = stop_on_signals()
    from metafew import stages

    with user_errors(), DownloadBar() as download, WorkBar("eval") as bar:
        result = stages.evaluate_run(
            run, checkpoint, overrides or [], download, stop_requested=stop, advance=bar
        )
    s = result.summary
    adapted = f"{s['norm']} BatchNorm"
    if s["adaptation"] != "algorithm":
        adapted = "fine-tuned with the finetune.* recipe" + (", transductive" if s["transductive"] else "")
    say(
        f"accuracy {100 * s['accuracy']:.2f} ± {100 * s['ci95']:.2f}% (95% CI; {s['episodes']} episodes, "
        f"{s['ways']}-way {s['shots']}-shot, {s['queries']} queries/class, {adapted}) "
        f"-> {result.path}"
    )
