"""`metafew runs` and `metafew plot` on real tiny runs: a finished run with an evaluation, one
stopped with Ctrl-C, a sweep of two, a damaged folder."""

from __future__ import annotations

import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, ok, signal_after, tiny
from PIL import Image
from test_runs_table import make_sweep, train


@dataclass(frozen=True)
class Root:
    """A runs folder: `done` (2 of 2, evaluated), `stopped` (Ctrl-C after 3 of 4), a sweep of two
    runs (train.outer_lr 0.02 and 0.03) and `broken` (config.yaml unreadable)."""

    path: Path
    done: Path
    stopped: Path
    sweep: Path
    swept: list[Path]
    broken: Path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    path = tmp_path_factory.mktemp("runs_plot") / "runs"
    done = train(path)
    ok("eval", done, "eval.episodes=4")
    with pytest.MonkeyPatch.context() as monkeypatch:
        signal_after(monkeypatch, signal.SIGINT, 3)
        assert invoke("train", *tiny(path, "train.iterations=4")).exit_code == 130
    stopped = max((p for p in path.iterdir() if p != done), key=lambda p: p.name)
    sweep, swept = make_sweep(path, "train.outer_lr", [0.02, 0.03])
    broken = train(path)
    (broken / "config.yaml").write_text("task: [", encoding="utf-8")
    return Root(path, done, stopped, sweep, swept, broken)


def tsv(output: str) -> list[dict[str, str]]:
    """The tab-separated table (what a pipe gets) as one dict per row."""
    header, *lines = [line.split("\t") for line in output.strip().splitlines()]
    return [dict(zip(header, line)) for line in lines]


def test_runs_shows_status_checkpointed_iteration_results_and_sweeps(root: Root) -> None:
    result = ok("runs", "--root", root.path)
    rows = {r["run"]: r for r in tsv(result.stdout)}
    assert list(rows) == [root.done.name, root.stopped.name, *(r.name for r in root.swept), root.broken.name]
    assert (rows[root.done.name]["status"], rows[root.done.name]["iterations"]) == ("done", "2/2")
    assert (
        rows[root.done.name]["test (95% CI)"].endswith("%") and " ± " in rows[root.done.name]["test (95% CI)"]
    )
    assert (rows[root.stopped.name]["status"], rows[root.stopped.name]["iterations"]) == (
        "interrupted",
        "3/4",
    )
    assert [rows[r.name]["sweep"] for r in root.swept] == [root.sweep.name] * 2
    assert rows[root.done.name]["sweep"] == "-" and rows[root.broken.name]["status"] == "unreadable"
    assert "finetune (labeled)" not in rows[root.done.name]  # no run has one: no column
    assert result.stderr.count("warning:") == 1 and str(root.broken) in result.stderr


def test_runs_json_sort_and_filter(root: Root) -> None:
    rows = json.loads(ok("runs", "--root", root.path, "--json").stdout)
    assert len(rows) == 5 and {r["status"] for r in rows} == {"done", "interrupted", "unreadable"}
    assert next(r for r in rows if r["name"] == root.stopped.name)["iteration"] == 3
    ranked = json.loads(ok("runs", "--root", root.path, "--json", "--sort", "best_val").stdout)
    vals = [r["best_val"] for r in ranked]
    assert vals[-1] is None and vals[:-1] == sorted(vals[:-1], reverse=True)
    kept = json.loads(
        ok("runs", "--root", root.path, "--json", "--filter", "status=done", "--filter", "sweep=").stdout
    )
    assert [r["name"] for r in kept] == [root.done.name]
    swept = ok("runs", "--root", root.path, "--filter", "train.outer_lr=0.03").stdout
    assert [r["run"] for r in tsv(swept)] == [root.swept[1].name]
    none = ok("runs", "--root", root.path, "--filter", "status=running")
    assert "no runs under" in none.stdout and "status=running" in none.stdout


def test_runs_rejects_unknown_keys_in_one_line(root: Root) -> None:
    assert_user_error(invoke("runs", "--root", root.path, "--filter", "colour=red"), 2, "'colour'", "status")
    assert_user_error(invoke("runs", "--root", root.path, "--sort", "bestval"), 2, "--sort", "best_val")
    assert_user_error(invoke("runs", "--root", root.path, "task.shots=1"), 2, "--root", "give one")


def test_runs_root_from_a_config_or_the_default(
    root: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(f"train:\n  runs_dir: {root.sweep}\n", encoding="utf-8")
    rows = tsv(ok("runs", "-c", config).stdout)
    assert [r["run"] for r in rows] == [r.name for r in root.swept]
    assert [r["sweep"] for r in rows] == [root.sweep.name] * 2  # a sweep folder as the root
    assert [r["run"] for r in tsv(ok("runs", f"train.runs_dir={root.sweep}").stdout)] == [
        r.name for r in root.swept
    ]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(root.done, tmp_path / "runs" / root.done.name)
    assert [r["run"] for r in tsv(ok("runs").stdout)] == [root.done.name]  # train.runs_dir's default


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_plot_overlays_runs_and_a_sweep(root: Root, tmp_path: Path) -> None:
    out = tmp_path / "val.png"
    result = ok("plot", root.done, root.stopped, root.sweep, "--out", out)
    assert f"saved: {out} (4 runs, val_accuracy against iteration)" in result.stdout
    width, height = png_size(out)
    assert height == 330 and 800 < width < 1100
    ok("plot", root.sweep, "--metric", "loss", "--x", "time", "--out", tmp_path / "loss.png")
    assert png_size(tmp_path / "loss.png")[1] == 330


def test_plot_default_out_and_errors(root: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ok("plot", root.done, "--metric", "accuracy")
    assert png_size(tmp_path / "plot.png")[1] == 330
    assert_user_error(invoke("plot", root.done, "--metric", "speed"), 2, "'speed'", "loss", "val_accuracy")
    assert_user_error(invoke("plot", root.done, "--x", "epoch"), 2, "--x 'epoch'", "iteration")
    assert_user_error(invoke("plot", tmp_path), 4, "neither a run folder", "metafew runs")
    assert_user_error(invoke("plot", root.done, "--out", "plot.pdf"), 2, "PNG", "plot.png")
    old = tmp_path / "old"
    shutil.copytree(root.done, old)
    lines = (old / "metrics.jsonl").read_text().splitlines()
    stripped = [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    assert_user_error(invoke("plot", old, "--x", "time"), 2, "no elapsed_s", "--x iteration")
    ok("plot", old, "--x", "iteration")


def test_plot_of_an_eval_file_is_its_episode_histogram(root: Root, tmp_path: Path) -> None:
    (result,) = (root.done / "eval").glob("*.json")
    assert png_size(result.with_suffix(".png"))[1] == 330  # `metafew eval` draws it beside the JSON
    out = tmp_path / "episodes.png"
    assert "per-episode accuracy" in ok("plot", result, "--out", out).stdout
    assert png_size(out)[1] == 330
    (tmp_path / "old.json").write_text(json.dumps({"accuracy": 0.5, "ci95": 0.1}))
    assert_user_error(
        invoke("plot", tmp_path / "old.json", "--out", out), 4, "no per_episode", "metafew eval"
    )


def test_the_learning_curve_png_of_a_run(root: Root) -> None:
    width, height = png_size(root.stopped / "learning_curve.png")
    assert height == 2 * 300 + 24 + 30 and width > 800  # two panels, the wall-time axis on top
