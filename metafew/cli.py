"""The `metafew` command line: parse -> load config -> call the engine -> report.

User errors (metafew.errors) become one line on stderr and the documented exit code; see
`metafew exit-codes`.
"""

from __future__ import annotations

import csv
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from metafew import distributed, engine
from metafew.compare import compare
from metafew.config import (
    Config,
    describe_keys,
    dump_yaml,
    from_dict,
    load_config,
    merge,
    parse_overrides,
    parse_yaml,
    to_dict,
)
from metafew.data import (
    DATASETS,
    FewShotData,
    Splits,
    UnlabeledImages,
    load_class_folders,
    load_data,
    load_unlabeled,
)
from metafew.data.cache import cache_root
from metafew.data.check import check_pictures
from metafew.errors import (
    EXIT_CODES,
    ConfigError,
    DataError,
    DivergedError,
    Interrupted,
    MetafewError,
    RunError,
)
from metafew.runs import (
    RESUMABLE_KEYS,
    RunClaim,
    config_diff,
    create_run,
    discard_partial_writes,
    find_resumable,
    list_runs,
    load_checkpoint,
    load_resume_checkpoint,
    load_run_config,
    new_file,
    new_folder,
    resolve_run,
    save_checkpoint,
    write_json,
    write_text_atomic,
)
from metafew.tasks import EpisodeSampler

app = typer.Typer(
    help="Few-shot meta-learning on images: meta-train, fine-tune, predict, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True)

Overrides = Annotated[
    list[str] | None, typer.Argument(help="dotted overrides, e.g. task.shots=1 train.outer_lr=1e-3")
]


@contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Turn a MetafewError into one line on stderr and its exit code (an error without a message
    was reported by another process: exit code only)."""
    try:
        yield
    except MetafewError as exc:
        if str(exc):
            err.print(f"[bold red]{prefix}error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


class _ReportedByRankZero(MetafewError):
    """Rank 0 stopped (an error before training, a signal, divergence) and printed why; the other
    processes exit with the same code and say nothing."""

    def __init__(self, code: int) -> None:
        super().__init__("")
        self.exit_code = code


class _StopFlag:
    """Set by SIGINT/SIGTERM/SIGUSR1 so that training stops after the current step; remembers
    which signal (only SIGTERM/SIGUSR1, a cluster's preemption notice, may requeue the job)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._set)

    def _set(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None


def _progress_reporter(total: int, start: int) -> tuple[Progress | None, engine.Progress]:
    """A rich progress bar on a terminal; plain log lines elsewhere (cluster job logs)."""
    if not console.is_terminal:

        def log(done: int, total: int, record: dict[str, float]) -> None:
            if "val_accuracy" in record or done == total or done % 50 == 0:
                console.print(_format_record(done, total, record), highlight=False)

        return None, log
    bar = Progress(
        TextColumn("[bold]meta-train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task("train", total=total, completed=start, metrics="")

    def update(done: int, total: int, record: dict[str, float]) -> None:
        bar.update(task, completed=done, metrics=_format_record(done, total, record, short=True))

    return bar, update


def _format_record(done: int, total: int, record: dict[str, float], short: bool = False) -> str:
    text = f"loss {record['loss']:.3f} acc {100 * record['accuracy']:.1f}%"
    if "val_accuracy" in record:
        text += f" val {100 * record['val_accuracy']:.1f}±{100 * record['val_ci95']:.1f}%"
    return text if short else f"iter {done}/{total} {text} ({record['tasks_per_s']:.1f} tasks/s)"


def _setup_threads(cfg: Config) -> None:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)


@dataclass(frozen=True)
class _Request:
    """What `metafew train` was asked for: config file, overrides, --resume, --allow-change."""

    config: Path | None
    overrides: list[str]
    resume: str | None
    allowed: frozenset[str]

    def new_config(self) -> Config:
        return load_config(self.config, self.overrides)


def _resume_config(run: Path, request: _Request) -> Config:
    """The run's saved config, with only RESUMABLE_KEYS and --allow-change keys allowed to change."""
    saved = load_run_config(run)
    if request.config is None and not request.overrides:
        return saved
    base = to_dict(saved) if request.config is None else to_dict(load_config(request.config))
    wanted = from_dict(merge(base, parse_overrides(request.overrides)))
    diff = config_diff(to_dict(saved), to_dict(wanted))
    blocked = [d for d in diff if d[0] not in RESUMABLE_KEYS | request.allowed]
    if blocked:
        key, old, new = blocked[0]
        raise ConfigError(
            f"--resume with a changed config: {key} was {old!r}, now {new!r}; "
            f"only {', '.join(sorted(RESUMABLE_KEYS))} may change (start a new run instead, "
            f"or pass --allow-change {key} to continue with the new value, inexactly)"
        )
    return wanted


def _open_run(request: _Request, claim: RunClaim) -> tuple[Config, Path | None, dict[str, Any] | None]:
    """(config, run folder to continue or None for a new run, checkpoint to resume from)."""
    resume = request.resume
    if resume == "auto":
        found = find_resumable(request.new_config(), request.allowed)
        if found is None:
            return request.new_config(), None, None
        err.print(f"--resume auto: continuing {found}", highlight=False)
        resume = str(found)
    if resume is None:
        return request.new_config(), None, None
    run = resolve_run(resume)
    cfg = _resume_config(run, request)
    claim.acquire(run)
    discard_partial_writes(run)
    state, note = load_resume_checkpoint(run)
    if note:
        err.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    write_text_atomic(run / "config.yaml", dump_yaml(cfg))
    return cfg, run, state


def _prepare_main(
    request: _Request, claim: RunClaim, processes: int
) -> tuple[Config, Path, dict[str, Any] | None, FewShotData]:
    """Rank 0 (or the only process): the config, a claimed run folder, the checkpoint, the data.
    Config and data are checked before a new folder is made, so a refused run leaves no folder."""
    cfg, run, state = _open_run(request, claim)
    distributed.check_meta_batch(cfg.train.meta_batch_size, processes)
    _setup_threads(cfg)
    device = engine.resolve_device(cfg.train.device)
    data = _load_data(cfg, run)
    engine.training_samplers(cfg, data)
    if run is None:
        run = create_run(cfg, str(device), claim)
    if not (run / "data.json").is_file():
        write_json(run / "data.json", data.provenance)
    return cfg, run, state, data


def _prepare(
    group: distributed.Solo, request: _Request, claim: RunClaim
) -> tuple[Config, Path, dict[str, Any] | None, FewShotData]:
    """`_prepare_main` on rank 0, whose outcome (run folder, config, or its error) the other
    processes receive; they load the data and the same checkpoint themselves."""
    if group.is_main:
        try:
            cfg, run, state, data = _prepare_main(request, claim, group.world_size)
        except MetafewError as exc:
            distributed.send_plan(group, {"error": exc.exit_code})
            raise
        iteration = -1 if state is None else int(state["iteration"])
        distributed.send_plan(group, {"run": str(run), "config": dump_yaml(cfg), "iteration": iteration})
        return cfg, run, state, data
    plan = distributed.send_plan(group, {})
    if "error" in plan:
        raise _ReportedByRankZero(int(plan["error"]))
    cfg, run = from_dict(parse_yaml(plan["config"], "rank 0's config")), Path(plan["run"])
    _setup_threads(cfg)
    state = load_resume_checkpoint(run)[0] if plan["iteration"] >= 0 else None
    if plan["iteration"] != (-1 if state is None else state["iteration"]):
        raise RunError(
            f"rank {group.rank} does not see rank 0's checkpoint in {str(run)!r}: use a shared folder"
        )
    return cfg, run, state, load_data(cfg.data, _recorded_split(run))  # the split rank 0 recorded


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML experiment config")] = None,
    overrides: Overrides = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="continue this run folder exactly where it stopped; `auto`: the newest unfinished "
            "run with the same config under train.runs_dir, or a new run if there is none"
        ),
    ] = None,
    requeue: Annotated[
        bool,
        typer.Option(
            "--requeue/--no-requeue",
            help="on SIGTERM/SIGUSR1 in a SLURM job: checkpoint, then `scontrol requeue` it",
        ),
    ] = False,
    allow_change: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-change",
            metavar="KEY",
            help="with --resume: let this config key change too (the continuation is then not exact)",
        ),
    ] = None,
) -> None:
    """Meta-train M_meta into a new run folder under train.runs_dir, or continue one (--resume)."""
    group = distributed.join()
    say = console.print if group.is_main else _silent
    with user_errors("" if group.is_main else f"rank {group.rank}: "), group, RunClaim() as claim:
        request = _Request(config, overrides or [], resume, frozenset(allow_change or []))
        cfg, run, state, data = _prepare(group, request, claim)
        say(f"run folder: {run}", highlight=False)
        bar, report = _progress_reporter(cfg.train.iterations, state["iteration"] if state else 0)
        started, stop = time.perf_counter(), _StopFlag()
        try:
            with bar if bar is not None and group.is_main else nullcontext():
                result = engine.train(cfg, data, run, state, report if group.is_main else None, stop, group)
        except (Interrupted, DivergedError) as exc:
            if not group.is_main:  # every process stops at the same step; rank 0 says why
                raise _ReportedByRankZero(exc.exit_code) from None
            if isinstance(exc, Interrupted) and requeue and stop.signal != signal.SIGINT:
                raise Interrupted(f"{exc}; {distributed.requeue_slurm_job()}") from None
            raise
        best = (
            "n/a"
            if result.best_accuracy is None
            else f"{100 * result.best_accuracy:.2f}% at {result.best_iteration}"
        )
        say(
            f"done: {result.iteration} iterations in {time.perf_counter() - started:.0f}s; "
            f"best validation {best}",
            highlight=False,
        )
        say(f"next: metafew finetune {run}", highlight=False)


def _silent(*args: Any, **kwargs: Any) -> None:
    """console.print for processes other than rank 0: they stay quiet."""


def _meta_learner(run: Path, cfg: Config, checkpoint: str) -> tuple[engine.Learner, dict[str, Any]]:
    path = run / "checkpoints" / f"{checkpoint}.pt"
    state = load_checkpoint(path)
    learner = engine.build_learner(cfg, engine.resolve_device(cfg.train.device), int(state["train_classes"]))
    engine.load_params(learner, state["params"], f"checkpoint {str(path)!r}")
    return learner, state


def _run_config(run: Path, overrides: list[str], allowed: tuple[str, ...]) -> Config:
    """The run's config with overrides restricted to the sections in `allowed`."""
    extra = parse_overrides(overrides)
    for section in extra:
        if section not in allowed:
            raise ConfigError(
                f"override {section}.*: this command only accepts "
                f"{', '.join(s + '.*' for s in allowed)} overrides"
            )
    return from_dict(merge(to_dict(load_run_config(run)), extra))


@app.command()
def finetune(
    run: Annotated[Path, typer.Argument(help="meta-training run folder")],
    labeled: Annotated[
        Path | None,
        typer.Option(help="folder of <class>/*.png (default: the dataset's novel classes)"),
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
    overrides: Overrides = None,
) -> None:
    """Adapt M_meta to the labeled novel pictures; writes M_finetune under <run>/finetune/."""
    with user_errors():
        run = resolve_run(run)
        cfg = _run_config(run, overrides or [], ("finetune", "train"))
        _setup_threads(cfg)
        novel = (
            load_class_folders(labeled, cfg.data.image_size, cfg.data.channels)
            if labeled
            else _load_data(cfg, run).novel
        )
        learner, state = _meta_learner(run, cfg, _checkpoint_name(checkpoint))
        model = engine.finetune(cfg, learner, novel)
        probs = engine.predict_proba(learner, model, novel.images)
        train_acc = float((probs.argmax(-1) == novel.labels).float().mean())
        out = new_folder(run / "finetune")
        save_checkpoint(
            out / "model.pt", model.state(to_dict(cfg)) | {"train_classes": learner.train_classes}
        )
        write_json(
            out / "finetune.json",
            {
                "run": str(run),
                "checkpoint": checkpoint,
                "meta_iteration": state["iteration"],
                "labeled": str(labeled) if labeled else f"dataset:{cfg.data.dataset}",
                "classes": model.classes,
                "images": len(novel.labels),
                "labeled_accuracy": train_acc,
                "steps": cfg.finetune.steps,
                "lr": cfg.finetune.lr,
            },
        )
        console.print(
            f"M_finetune: {out} ({len(novel.labels)} labeled pictures, "
            f"{', '.join(model.classes)}; accuracy on them {100 * train_acc:.1f}%)",
            highlight=False,
        )
        console.print(f"next: metafew predict {out} <folder of unlabeled pictures>", highlight=False)


def _checkpoint_name(name: str) -> str:
    if name not in ("best", "last"):
        raise ConfigError(f"--checkpoint {name!r}: must be best or last")
    return name


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="fine-tuned model folder (<run>/finetune/<id>)")],
    folder: Annotated[Path | None, typer.Argument(help="unlabeled pictures (default: the dataset's)")] = None,
) -> None:
    """Label unlabeled pictures with M_finetune; writes predictions.csv (one probability per class)."""
    with user_errors():
        state = load_checkpoint(model_dir / "model.pt")
        if state.get("kind") != "finetuned":
            raise RunError(f"{str(model_dir)!r} holds no fine-tuned model; run `metafew finetune` first")
        cfg = from_dict(state["config"])
        pictures, failed = _unlabeled_pictures(cfg, folder, model_dir.parent.parent)
        learner = engine.build_learner(
            cfg, engine.resolve_device(cfg.train.device), int(state["train_classes"])
        )
        model = engine.Finetuned.from_state(state, learner.device)
        probs = engine.predict_proba(learner, model, pictures.images)
        out = new_folder(model_dir / "predict")
        labels = [model.classes[i] for i in probs.argmax(-1).tolist()]
        _write_predictions(out / "predictions.csv", pictures.names, labels, probs, model.classes)
        summary: dict[str, Any] = {
            "source": str(folder) if folder else f"dataset:{cfg.data.dataset}",
            "pictures": len(labels),
            "unreadable": [{"file": n, "error": e} for n, e in failed],
        }
        if pictures.answers is not None:
            summary["accuracy"] = sum(a == b for a, b in zip(labels, pictures.answers)) / len(labels)
        write_json(out / "summary.json", summary)
        for name, reason in failed:
            err.print(f"[yellow]skipped[/] {escape(name)}: {escape(reason)}", highlight=False)
        scored = (
            f"; accuracy against answers {100 * summary['accuracy']:.1f}%" if "accuracy" in summary else ""
        )
        console.print(
            f"predictions: {out / 'predictions.csv'} ({len(labels)} pictures{scored})",
            highlight=False,
        )


def _unlabeled_pictures(
    cfg: Config, folder: Path | None, run: Path
) -> tuple[UnlabeledImages, list[tuple[str, str]]]:
    """The pictures to label: a folder (unreadable files listed, not fatal) or the dataset's own."""
    if (
        folder is None
        and cfg.data.dataset == "folder"
        and (Path(cfg.data.root or ".") / "meta_train").is_dir()
    ):
        folder = Path(cfg.data.root or ".") / "novel" / "unlabeled"  # read with per-file errors
    if folder is not None:
        return load_unlabeled(folder, cfg.data.image_size, cfg.data.channels)
    pictures = _load_data(cfg, run).unlabeled
    if pictures is None:
        raise ConfigError(
            "this dataset has no unlabeled pictures: give a folder, "
            "e.g. metafew predict DIR my_data/novel/unlabeled"
        )
    return pictures, []


def _write_predictions(
    path: Path, names: list[str], labels: list[str], probs: torch.Tensor, classes: list[str]
) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", *(f"p_{c}" for c in classes)])
        for name, label, row in zip(names, labels, probs.tolist()):
            writer.writerow([name, label, *(f"{p:.6f}" for p in row)])


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="meta-training run folder")],
    checkpoint: Annotated[str | None, typer.Option(help="best or last (default eval.checkpoint)")] = None,
    overrides: Overrides = None,
) -> None:
    """Accuracy on seeded test episodes of the novel classes: mean ± 95% CI, also as JSON."""
    with user_errors():
        run = resolve_run(run)
        cfg = _run_config(run, overrides or [], ("eval", "train"))
        _setup_threads(cfg)
        which = _checkpoint_name(checkpoint or cfg.eval.checkpoint)
        novel = _load_data(cfg, run).novel
        queries = engine.test_queries(cfg, novel)
        sampler = EpisodeSampler(novel, cfg.task.ways, cfg.task.shots, queries, cfg.eval.seed, "novel")
        learner, state = _meta_learner(run, cfg, which)
        started = time.perf_counter()
        accs = engine.evaluate(
            learner,
            sampler,
            cfg.eval.episodes,
            cfg.algorithm.eval_inner_steps,
            None,
            cfg.eval.norm,
            cfg.eval.chunk_size,
        )
        mean, ci = engine.confidence_interval(accs)
        result = {
            "accuracy": mean,
            "ci95": ci,
            "episodes": cfg.eval.episodes,
            "ways": cfg.task.ways,
            "shots": cfg.task.shots,
            "queries": queries,
            "inner_steps": cfg.algorithm.eval_inner_steps,
            "norm": cfg.eval.norm,
            "checkpoint": which,
            "meta_iteration": state["iteration"],
            "seed": cfg.eval.seed,
            "seconds": time.perf_counter() - started,
            "per_episode": accs.tolist(),
        }
        path = new_file(run / "eval", ".json")
        write_json(path, result)
        console.print(
            f"accuracy {100 * mean:.2f} ± {100 * ci:.2f}% (95% CI; {cfg.eval.episodes} episodes, "
            f"{cfg.task.ways}-way "
            f"{cfg.task.shots}-shot, {queries} queries/class, {cfg.eval.norm} BatchNorm) -> {path}",
            highlight=False,
        )


@app.command()
def runs(
    root: Annotated[Path, typer.Option(help="folder holding run folders")] = Path("runs"),
) -> None:
    """Table of runs with their key metrics."""
    rows = list_runs(root)
    if not rows:
        console.print(f"no runs under {root}", highlight=False)
        return
    header = ("run", "dataset", "algorithm", "setting", "iterations", "best val", "test (95% CI)")
    lines = [
        (
            r.path.name,
            r.dataset,
            r.algorithm,
            r.setting,
            f"{r.iteration}/{r.iterations}",
            "-" if r.best_val is None else f"{100 * r.best_val:.1f}%",
            r.test or "-",
        )
        for r in rows
    ]
    if not console.is_terminal:  # pipes and job logs: full names, tab-separated
        for line in (header, *lines):
            console.print("\t".join(line))
        return
    table = Table(*header)
    table.columns[0].no_wrap = True
    for line in lines:
        table.add_row(*line)
    console.print(table)


@app.command("compare")
def compare_configs(
    configs: Annotated[list[Path], typer.Argument(help="one YAML config per algorithm")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override for every config, key=value")
    ] = None,
    episodes: Annotated[int, typer.Option(help="test episodes per algorithm (same seeded stream)")] = 600,
    seed: Annotated[int, typer.Option(help="seed of the shared test-episode stream")] = 1234,
    out: Annotated[Path, typer.Option(help="where the comparison folder goes")] = Path("runs"),
    predict: Annotated[bool, typer.Option(help="also fine-tune and score the unlabeled pictures")] = True,
) -> None:
    """Train each config, evaluate all on the same test episodes, print and save a table."""
    with user_errors():
        for config in configs:
            load_config(config, overrides or [])  # every config valid before anything trains
        folder, _ = compare(configs, overrides or [], out, episodes, seed, predict, console.print)
        console.print((folder / "comparison.md").read_text(encoding="utf-8"), end="")
        console.print(f"saved: {folder / 'comparison.md'} and comparison.json (logs beside them)")


@app.command("config")
def show_config(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML experiment config")] = None,
    overrides: Overrides = None,
    keys: Annotated[bool, typer.Option(help="list every key with its default and meaning")] = False,
) -> None:
    """Print the resolved config (defaults <- file <- overrides), or all keys."""
    with user_errors():
        if keys:
            for key, default, help_text in describe_keys():
                console.print(f"{key} = {default!r}  # {help_text}", highlight=False, soft_wrap=True)
            return
        console.print(dump_yaml(load_config(config, overrides or [])), highlight=False, end="")


@app.command("exit-codes")
def exit_codes() -> None:
    """The exit codes metafew uses."""
    for code, meaning in EXIT_CODES.items():
        console.print(f"{code:>3}  {meaning}", highlight=False)


class _DownloadBar:
    """Progress callback for dataset downloads: a bar on stderr, shown once bytes arrive."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.tasks: dict[str, Any] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[mb]}"), console=err
            )
            self.bar.start()
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(f"downloading {name}", total=total, mb="")
        self.bar.update(self.tasks[name], completed=done, mb=f"{done / 2**20:.1f} MB")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _recorded_split(run: Path | None) -> Splits | None:
    """The class lists a run was trained with (its data.json), if it recorded them."""
    path = None if run is None else run / "data.json"
    if path is None or not path.is_file():
        return None
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))["classes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{str(path)!r} is unreadable ({exc}); restore it from a backup") from None
    return {split: list(names) for split, names in classes.items()}


def _load_data(cfg: Config, run: Path | None = None) -> FewShotData:
    """The configured dataset (downloads shown as a bar); the run's recorded split when `run`."""
    bar = _DownloadBar()
    try:
        return load_data(cfg.data, _recorded_split(run), bar)
    finally:
        bar.close()


data_app = typer.Typer(help="List, download and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list() -> None:
    """The datasets metafew reads, where their files come from, and which it can download."""
    table = Table("data.dataset", "what", "files", "download")
    for name, dataset in DATASETS.items():
        table.add_row(name, dataset.summary, dataset.files, "yes" if dataset.remotes else "no")
    console.print(table)
    console.print(f"decoded-tensor cache: {cache_root()} (METAFEW_CACHE moves it)", highlight=False)


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="dataset name (metafew data list)")],
    root: Annotated[Path | None, typer.Option(help="folder for the dataset's files (data.root)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML experiment config")] = None,
    overrides: Overrides = None,
) -> None:
    """Download (when needed) and check a dataset's files, decode them and fill the cache."""
    with user_errors():
        extra = [f"data.dataset={name}", "data.download=true", *([f"data.root={root}"] if root else [])]
        cfg = load_config(config, [*(overrides or []), *extra])
        started = time.perf_counter()
        data = _load_data(cfg)
        seconds = time.perf_counter() - started
        splits = {"meta_train": data.meta_train, "meta_val": data.meta_val, "novel": data.novel}
        for split, images in splits.items():
            if images is not None:
                console.print(
                    f"{split}: {len(images.classes)} classes, {len(images.labels)} pictures "
                    f"{tuple(images.images.shape[1:])}",
                    highlight=False,
                )
        if data.unlabeled is not None:
            console.print(f"unlabeled: {len(data.unlabeled.names)} pictures", highlight=False)
        console.print(f"ready in {seconds:.2f}s (cache: {cache_root()})", highlight=False)


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="folder of pictures (any depth) or a .zip")],
    min_side: Annotated[int, typer.Option(help="pictures with a shorter side are reported tiny")] = 8,
) -> None:
    """Open every picture fully; report corrupt, truncated, tiny, huge and unreadable files and
    the pictures per class. Exit code 0 when all are fine, 3 when any is not."""
    with user_errors():
        report = check_pictures(path, min_side)
        table = Table("class (folder)", "pictures")
        for group, count in sorted(report.counts.items()):
            table.add_row(escape(group or "."), str(count))
        console.print(table)
        for problem in report.problems:
            err.print(
                f"[red]{problem.kind}[/] {escape(problem.where)}: {escape(problem.detail)}", highlight=False
            )
        total = sum(report.counts.values()) + len(report.problems)
        console.print(
            f"{total} pictures, {len(report.problems)} with problems, {report.skipped} other files skipped",
            highlight=False,
        )
        if report.problems:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(Counter(p.kind for p in report.problems).items()))
            raise DataError(f"{len(report.problems)} of {total} pictures cannot be used ({kinds}); see above")


def main() -> None:
    """Console-script entry point."""
    engine.tune_allocator()
    app()


if __name__ == "__main__":
    main()
