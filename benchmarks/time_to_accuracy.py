"""Issue 13: test accuracy against minutes of training, one curve per recipe.

    python benchmarks/time_to_accuracy.py configs/omniglot_maml_5w1s.yaml configs/omniglot_anil_5w1s.yaml \
        --set data.root=../shared/datasets/omniglot --set runtime.threads=1 [--minutes 5,15,30,60] \
        [--episodes 600] [--seed 1234] [--scale 1] [--jobs 1] [--out DIR]

Each recipe (a config file) is one run, trained in stages: `metafew train -c X ...
train.time_limit=T1`, then `metafew train --resume RUN train.time_limit=T2`, and so on, so the
run at T2 is the run at T1 trained further (the same weights, optimizer state and episode
stream), never a fresh run with a larger budget. After each stage `metafew eval RUN
eval.episodes=E eval.seed=S` scores best.pt (chosen on the recipe's validation classes) on the
same seeded test episodes for every recipe. Each point records the accuracy ± 95% CI, the
minutes actually trained (elapsed_s of the run's last metrics line: the limit is checked after
each step, so a run overshoots it by up to one step) and the iterations done.

`--jobs J` trains J recipes at once (each its own processes, in command-line order as a job
frees up; with `--set runtime.threads=1`, `--jobs 2` keeps both cores of this CPU busy: each
recipe gets one core and its minutes are its own training's wall minutes, spent beside the other job).

`--scale S` multiplies every limit (S = 0.02 turns 5,15,30,60 minutes into 6 to 72 seconds, a
smoke run). `--set key=value` goes to every `train` (new or resumed: the same values, so the
resume check passes) and, for the `runtime.*` and `eval.*` keys, to every `eval`.

Everything goes into `--out` (default `runs/time-to-accuracy`): `runs/<recipe>/` the run folders,
`<recipe>.<minutes>.{train,eval}.log` the child processes' output (metafew.compare's helpers),
`results.json` (rewritten after every point), `results.md` (the table) and `results.png`
(accuracy against minutes trained, one panel per task setting, 95% CI shaded). Running the same
command again skips every point already in results.json and continues a stage that was cut
short (`--resume` of its run); a run that ended before a limit by itself (train.iterations or
train.patience) is evaluated once and that result stands for the larger limits too.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from metafew.compare import run_metafew
from metafew.files import write_json, write_text_atomic
from metafew.plots import COLOURS, Curve, Panel, draw_figure, from_zero
from metafew.runs import read_done, read_metrics

ENDED_BY_ITSELF = ("iterations", "early_stopping")
"""done.json reasons after which a larger time limit trains nothing more."""

ALGORITHM_NAMES = {
    "maml": "MAML",
    "fomaml": "first-order MAML",
    "anil": "ANIL",
    "protonet": "ProtoNet",
    "reptile": "Reptile",
    "mamlpp": "MAML++",
    "baselinepp": "Baseline++",
}
"""How the figure's legend names the `<algo>` of a recipe `omniglot_<algo>_<setting>`."""


@dataclass
class Point:
    """One measurement: a recipe's run after training up to `limit_minutes`."""

    limit_minutes: float
    trained_minutes: float
    iterations: int
    reason: str
    accuracy: float
    ci95: float
    eval_json: str


@dataclass
class Recipe:
    """One config's run and its measured points, in order of the limits."""

    label: str
    config: str
    run: str | None = None
    setting: str = ""
    points: list[Point] = field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# pure parts


def schedule(minutes: str, scale: float) -> list[float]:
    """The time limits in `minutes` ("5,15,30,60"), increasing, each × `scale`."""
    values = sorted({float(part) for part in minutes.split(",") if part.strip()})
    if not values or values[0] <= 0 or scale <= 0:
        raise ValueError(f"--minutes {minutes!r} --scale {scale}: need positive minutes and scale")
    return [round(v * scale, 6) for v in values]


def next_action(run_exists: bool, done: dict[str, Any] | None, limit_minutes: float) -> str:
    """What a point needs before it can be evaluated: "start" (no run yet), "resume" (train the
    run on to `limit_minutes`) or "eval" (the run has trained that long, or has ended by
    itself). `done`: the run's done.json, or None (a stage cut short, or never trained)."""
    if not run_exists:
        return "start"
    if done is None:
        return "resume"
    if done.get("reason") in ENDED_BY_ITSELF:
        return "eval"
    trained = float(done.get("elapsed_s", 0.0))
    return "eval" if trained >= 60 * limit_minutes * (1 - 1e-6) else "resume"


def format_minutes(value: float) -> str:
    """5.0 -> "5", 0.3 -> "0.3" (a limit as written on the command line and in labels)."""
    return f"{value:g}"


def legend_label(label: str) -> str:
    """A recipe's name in the legend: omniglot_mamlpp_5w1s -> MAML++ (the panel title gives the
    setting), omniglot_protonet_20way_5w1s -> ProtoNet (20-way training); other labels as they
    are."""
    parts = label.split("_")
    if len(parts) == 3 and parts[1] in ALGORITHM_NAMES:
        return ALGORITHM_NAMES[parts[1]]
    if len(parts) == 4 and parts[1] in ALGORITHM_NAMES:  # omniglot_protonet_20way_5w1s
        return f"{ALGORITHM_NAMES[parts[1]]} ({parts[2].replace('way', '-way')} training)"
    return label


def format_table(recipes: list[Recipe], limits: list[float], episodes: int, seed: int) -> str:
    """Markdown: one row per recipe, one column per limit: accuracy ± CI, then minutes trained
    and iterations; a point after the run ended by itself says so."""
    head = " | ".join(f"{format_minutes(t)} min" for t in limits)
    rows = [
        f"Test accuracy on {episodes} seeded test episodes (eval.seed {seed}, best.pt), mean ± 95% CI; "
        "below it, minutes actually trained and iterations.",
        "",
        f"| recipe | setting | {head} |",
        "|---|---|" + "---|" * len(limits),
    ]
    for recipe in recipes:
        by_limit = {p.limit_minutes: p for p in recipe.points}
        cells = []
        for t in limits:
            p = by_limit.get(t)
            if p is None:
                cells.append("failed" if recipe.error else "-")
                continue
            note = {"iterations": ", all iterations", "early_stopping": ", early stop"}.get(p.reason, "")
            cells.append(
                f"{100 * p.accuracy:.2f} ± {100 * p.ci95:.2f}%<br>"
                f"{p.trained_minutes:.{1 if p.trained_minutes >= 10 else 2}f} min, {p.iterations} it{note}"
            )
        rows.append(f"| {recipe.label} | {recipe.setting} | " + " | ".join(cells) + " |")
    failed = [f"- {r.label}: {r.error}" for r in recipes if r.error]
    return "\n".join(rows + (["", *failed] if failed else [])) + "\n"


def load_results(path: Path) -> dict[str, Recipe]:
    """results.json -> {label: Recipe}; {} where there is none yet."""
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text(encoding="utf-8"))
    recipes = {}
    for item in raw.get("recipes", []):
        points = [Point(**p) for p in item.pop("points", [])]
        recipes[item["label"]] = Recipe(**item, points=points)
    return recipes


# ---------------------------------------------------------------------------------------------
# the figure


def plot_time_to_accuracy(recipes: list[Recipe], path: Path, episodes: int) -> None:
    """Test accuracy against minutes trained, one line per recipe with its 95% CI shaded, one
    panel per task setting (5-way 1-shot, 20-way 1-shot: chance levels differ), to `path`."""
    settings = list(dict.fromkeys(r.setting for r in recipes if r.points))
    panels, xs = [], []
    for setting in settings:
        curves = []
        for k, recipe in enumerate(r for r in recipes if r.points):
            if recipe.setting != setting:
                continue
            pts = [(p.trained_minutes, p.accuracy) for p in recipe.points]
            band = [(p.trained_minutes, p.accuracy - p.ci95, p.accuracy + p.ci95) for p in recipe.points]
            curves.append(Curve(legend_label(recipe.label), pts, COLOURS[k % len(COLOURS)], band))
            xs += [x for x, _ in pts]
        title = f"{setting}: test accuracy ({episodes} episodes, shaded: 95% CI)"
        panels.append(Panel(title, "test accuracy", curves, percent=True))
    if panels:
        draw_figure(panels, "minutes trained", path, xticks=from_zero(xs))


# ---------------------------------------------------------------------------------------------
# running


def _setting(run: Path) -> str:
    """The run's test setting, e.g. "5-way 1-shot", from its config.yaml: eval.ways and
    eval.shots where set, else task.*."""
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    task, test = cfg.get("task", {}), cfg.get("eval", {})
    ways = test.get("ways") or task.get("ways")
    shots = test.get("shots") or task.get("shots")
    return f"{ways}-way {shots}-shot"


def _find_run(runs_dir: Path) -> Path | None:
    """The newest run folder under `runs_dir` (one per recipe; a second only after a crash)."""
    folders = [p for p in runs_dir.glob("*") if (p / "config.yaml").is_file()] if runs_dir.is_dir() else []
    return max(folders, key=lambda p: p.name) if folders else None


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _eval_path(stdout: str, run: Path) -> Path:
    """The JSON `metafew eval` reported writing (`... -> <path>`), else the newest one."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("accuracy ") and " -> " in line:
            return Path(line.rsplit(" -> ", 1)[1].strip())
    return max((run / "eval").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)


def train_stage(recipe: Recipe, limit: float, sets: list[str], out: Path) -> Path:
    """Train the recipe's run up to `limit` minutes (start it, or resume it); its run folder."""
    runs_dir = out / "runs" / recipe.label
    run = _find_run(runs_dir)
    budget = [f"train.time_limit={format_minutes(limit)}", f"train.runs_dir={runs_dir}"]
    if next_action(run is not None, read_done(run) if run else None, limit) == "eval":
        return run  # type: ignore[return-value]
    head = ["train", "--resume", str(run)] if run else ["train", "--config", recipe.config]
    log = out / f"{recipe.label}.{format_minutes(limit)}.train.log"
    step = run_metafew([*head, *sets, *budget], log)
    if step.code != 0:
        raise RuntimeError(f"train exited {step.code}: {_last_line(log)} (log {log})")
    found = _find_run(runs_dir)
    if found is None:
        raise RuntimeError(f"train left no run folder under {runs_dir} (log {log})")
    if next_action(True, read_done(found), limit) != "eval":  # done.json must say why it ended
        raise RuntimeError(f"train exited 0 without reaching {format_minutes(limit)} min (log {log})")
    return found


def measure(recipe: Recipe, limit: float, args: argparse.Namespace) -> Point:
    """One point: train to `limit` minutes, then evaluate best.pt on the seeded test episodes."""
    run = train_stage(recipe, limit, args.set, args.out)
    recipe.run, recipe.setting = str(run), _setting(run)
    eval_sets = [s for s in args.set if s.startswith(("runtime.", "eval."))]
    log = args.out / f"{recipe.label}.{format_minutes(limit)}.eval.log"
    step = run_metafew(
        ["eval", str(run), *eval_sets, f"eval.episodes={args.episodes}", f"eval.seed={args.seed}"], log
    )
    if step.code != 0:
        raise RuntimeError(f"eval exited {step.code}: {_last_line(log)} (log {log})")
    result = json.loads(_eval_path(step.stdout, run).read_text(encoding="utf-8"))
    training = [r for r in read_metrics(run) if "elapsed_s" in r]
    last = training[-1] if training else {}
    done = read_done(run) or {}
    return Point(
        limit_minutes=limit,
        trained_minutes=float(last.get("elapsed_s", 0.0)) / 60,
        iterations=int(last.get("iteration", 0)),
        reason=str(done.get("reason", "")),
        accuracy=float(result["accuracy"]),
        ci95=float(result["ci95"]),
        eval_json=str(_eval_path(step.stdout, run)),
    )


def save(recipes: list[Recipe], limits: list[float], args: argparse.Namespace) -> None:
    """results.json, results.md and results.png from what is measured so far."""
    summary = {
        "episodes": args.episodes,
        "seed": args.seed,
        "minutes": args.minutes,
        "scale": args.scale,
        "overrides": args.set,
        "recipes": [asdict(r) for r in recipes],
    }
    write_json(args.out / "results.json", summary)
    write_text_atomic(args.out / "results.md", format_table(recipes, limits, args.episodes, args.seed))
    plot_time_to_accuracy(recipes, args.out / "results.png", args.episodes)


SAVING = threading.Lock()
"""Held while a point is added and the results are written (--jobs: several recipes at once)."""


def say(line: str, stream: TextIO | None = None) -> None:
    """`line` to `stream` (None: standard output) in one write: print writes the text and its
    newline apart, so the lines of recipes trained at once (--jobs) could run together."""
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()


def run_recipe(recipe: Recipe, limits: list[float], recipes: list[Recipe], args: argparse.Namespace) -> None:
    """Every limit not measured yet, in order; a failure ends this recipe, not the others."""
    done_limits = {p.limit_minutes for p in recipe.points}
    for limit in limits:
        if limit in done_limits:
            continue
        last = recipe.points[-1] if recipe.points else None
        if last is not None and last.reason in ENDED_BY_ITSELF:
            p = Point(**{**asdict(last), "limit_minutes": limit})  # nothing more trains
        else:
            say(f"{recipe.label}: training to {format_minutes(limit)} min, then eval")
            try:
                p = measure(recipe, limit, args)
            except RuntimeError as exc:
                with SAVING:
                    recipe.error = str(exc)
                say(f"{recipe.label}: {exc}", sys.stderr)
                return
            say(
                f"{recipe.label} @ {format_minutes(limit)} min: {100 * p.accuracy:.2f} ± {100 * p.ci95:.2f}% "
                f"({p.trained_minutes:.2f} min, {p.iterations} it)"
            )
        with SAVING:
            recipe.points.append(p)
            recipe.error = None
            save(recipes, limits, args)


def run_recipes(
    recipes: list[Recipe], limits: list[float], everything: list[Recipe], args: argparse.Namespace
) -> None:
    """run_recipe for each of `recipes`, --jobs of them at a time (each its own train and eval
    processes, on the runtime.threads of --set), in order of the command line; `everything`: all
    recipes the results files list."""
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in [pool.submit(run_recipe, r, limits, everything, args) for r in recipes]:
            future.result()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", type=Path, nargs="+", help="recipe config files")
    parser.add_argument("--minutes", default="5,15,30,60", help="comma-separated time limits (minutes)")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes per evaluation")
    parser.add_argument("--seed", type=int, default=1234, help="eval.seed of the test episodes")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every limit (0.02: a smoke run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every recipe")
    parser.add_argument("--out", type=Path, default=Path("runs/time-to-accuracy"))
    parser.add_argument(
        "--jobs", type=int, default=1, help="recipes trained at once (2 with runtime.threads=1: one per core)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more recipes at a time")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    limits = schedule(args.minutes, args.scale)
    labels = [c.stem for c in args.configs]
    if len(set(labels)) != len(labels):
        raise SystemExit("two configs share a file name; the names label the recipes")
    args.out.mkdir(parents=True, exist_ok=True)
    known = load_results(args.out / "results.json")
    recipes = [known.pop(label, None) or Recipe(label, str(c)) for label, c in zip(labels, args.configs)]
    run_recipes(recipes, limits, recipes + list(known.values()), args)
    recipes += known.values()  # measured earlier in this folder, not named this time: kept
    save(recipes, limits, args)
    print((args.out / "results.md").read_text(encoding="utf-8"))
    if any(r.error for r in recipes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
