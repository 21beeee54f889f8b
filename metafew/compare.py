"""Fair comparisons: train several configs, evaluate all on the same seeded test episodes.

Each step runs as its own `python -m metafew` process so that its wall time and peak resident
memory belong to that algorithm alone (`os.wait4` returns the child's own rusage); logs are kept
beside the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from metafew.errors import MetafewError, RunError
from metafew.files import write_json, write_text_atomic
from metafew.progress import Advance, silent
from metafew.runs import new_folder


@dataclass
class Step:
    """One finished child process."""

    code: int
    seconds: float
    peak_mb: float
    stdout: str


@dataclass
class Entry:
    """One row of the comparison table."""

    label: str
    config: str
    run: str | None = None
    accuracy: float | None = None
    ci95: float | None = None
    train_seconds: float | None = None
    peak_mb: float | None = None
    predict_accuracy: float | None = None
    error: str | None = None
    eval_file: str | None = None
    paired: float | None = None  # accuracy − the first evaluated row's, episode by episode
    paired_ci95: float | None = None


def start_metafew(args: list[str], log: Path, append: bool = False) -> subprocess.Popen[bytes]:
    """Start `python -m metafew ARGS` (this interpreter) with stdout and stderr going to `log`,
    truncated first unless `append`; shared by `compare` and `sweep`."""
    with log.open("a" if append else "w", encoding="utf-8") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "metafew", *args], stdout=out, stderr=subprocess.STDOUT
        )


def run_metafew(args: list[str], log: Path) -> Step:
    """Run `python -m metafew ARGS`, output to `log`; its own wall time and peak RSS."""
    started = time.perf_counter()
    proc = start_metafew(args, log)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    return Step(proc.returncode, seconds, usage.ru_maxrss / 1024, log.read_text(encoding="utf-8"))


def _run_folder(stdout: str) -> Path:
    for line in stdout.splitlines():
        if line.startswith("run folder: "):
            return Path(line.removeprefix("run folder: ").strip())
    raise RunError("train did not report its run folder")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _latest(folder: Path, pattern: str) -> Path:
    files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime_ns)
    if not files:
        raise RunError(f"no {pattern} under {folder}")
    return files[-1]


def _latest_json(folder: Path, pattern: str) -> dict:
    return json.loads(_latest(folder, pattern).read_text(encoding="utf-8"))


def compare_one(
    label: str,
    config: Path,
    overrides: list[str],
    out: Path,
    episodes: int,
    seed: int,
    predict: bool,
    stage: Callable[[str], None] = lambda name: None,
) -> Entry:
    """Train, evaluate and (when answers exist) fine-tune + predict one config; `stage(name)`
    before each of those stages."""
    entry = Entry(label, str(config))
    stage("train")
    train = run_metafew(["train", "--config", str(config), *overrides], out / f"{label}.train.log")
    if train.code != 0:
        entry.error = f"train exited {train.code}: {_last_line(train.stdout)}"
        return entry
    run = _run_folder(train.stdout)
    entry.run, entry.train_seconds, entry.peak_mb = str(run), train.seconds, train.peak_mb
    eval_args = ["eval", str(run), f"eval.episodes={episodes}", f"eval.seed={seed}"]
    stage("eval")
    evaluation = run_metafew(eval_args, out / f"{label}.eval.log")
    if evaluation.code != 0:
        entry.error = f"eval exited {evaluation.code}: {_last_line(evaluation.stdout)}"
        return entry
    path = _latest(run / "eval", "*.json")
    result = json.loads(path.read_text(encoding="utf-8"))
    entry.accuracy, entry.ci95, entry.eval_file = result["accuracy"], result["ci95"], str(path)
    if predict:
        stage("finetune + predict")
        tuned = run_metafew(["finetune", str(run)], out / f"{label}.finetune.log")
        folders = (
            sorted((run / "finetune").glob("*"), key=lambda p: p.stat().st_mtime_ns)
            if tuned.code == 0
            else []
        )
        if folders and run_metafew(["predict", str(folders[-1])], out / f"{label}.predict.log").code == 0:
            entry.predict_accuracy = _latest_json(folders[-1] / "predict", "*/summary.json").get("accuracy")
    return entry


def pair_with_first(entries: list[Entry]) -> None:
    """Set every evaluated entry's paired difference to the first evaluated one (the same seeded
    episodes: stages.paired_results); left None where the episodes differ (another N or K)."""
    from metafew.stages import paired_results

    evaluated = [e for e in entries if e.eval_file is not None]
    for e in evaluated:
        try:
            rows, _ = paired_results([Path(evaluated[0].eval_file or ""), Path(e.eval_file or "")])
        except MetafewError:
            continue
        e.paired, e.paired_ci95 = rows[1].difference, rows[1].difference_ci95


def format_table(entries: list[Entry], episodes: int) -> str:
    """The comparison as a Markdown table."""
    reference = next((e.label for e in entries if e.paired is not None), "the first")
    rows = [
        f"| algorithm | test accuracy ({episodes} episodes, 95% CI) | − {reference}, paired "
        "| unlabeled accuracy | train time | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        if e.error:
            rows.append(f"| {e.label} | failed: {e.error} | | | | |")
            continue
        acc = "-" if e.accuracy is None or e.ci95 is None else f"{100 * e.accuracy:.2f} ± {100 * e.ci95:.2f}%"
        paired = "-"
        if e.paired is not None and e.paired_ci95 is not None:
            paired = f"{100 * e.paired:+.2f} ± {100 * e.paired_ci95:.2f}"
        pred = f"{100 * e.predict_accuracy:.1f}%" if e.predict_accuracy is not None else "-"
        rows.append(
            f"| {e.label} | {acc} | {paired} | {pred} | {e.train_seconds:.0f} s | {e.peak_mb:.0f} MB |"
        )
    return "\n".join(rows) + "\n"


def compare(
    configs: list[Path],
    overrides: list[str],
    out_root: Path,
    episodes: int,
    seed: int,
    predict: bool,
    progress: Callable[[str], None] | None = None,
    advance: Advance = silent,
) -> tuple[Path, list[Entry]]:
    """Run every config (same overrides, same `episodes` test episodes of stream `seed`); write
    comparison.md and comparison.json into a new folder under `out_root`. `progress` hears
    "<config>: <stage>" as each stage starts, `advance("stages", done, total)` as each ends."""
    labels = [c.stem for c in configs]
    if len(set(labels)) != len(labels):
        raise MetafewError("two configs share a file name; the names label the table rows")
    out = new_folder(out_root, "compare")
    entries = []
    per_config = 3 if predict else 2
    total, finished = per_config * len(configs), 0
    for label, config in zip(labels, configs):
        first = finished

        def stage(name: str, label: str = label) -> None:
            nonlocal finished
            if name != "train":  # the config's previous stage is over
                finished += 1
                advance("stages", finished, total)
            if progress is not None:
                progress(f"{label}: {name}")

        entries.append(compare_one(label, config, overrides, out, episodes, seed, predict, stage))
        pair_with_first(entries)
        finished = first + per_config  # a failed stage skips the rest of its config
        advance("stages", finished, total)
        summary = {
            "episodes": episodes,
            "seed": seed,
            "overrides": overrides,
            "entries": [asdict(e) for e in entries],
        }
        write_json(out / "comparison.json", summary)
    write_text_atomic(out / "comparison.md", format_table(entries, episodes))
    return out, entries
