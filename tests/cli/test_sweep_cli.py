"""`metafew sweep`: a real local sweep of the tiny experiment, grid errors, the SLURM script and
its submission through a fake sbatch."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import assert_user_error, invoke, ok, only_child, tiny

TINY = ("train.iterations=2", "runtime.threads=1")


def test_a_local_sweep_trains_every_point_into_one_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["sweep", "--grid", "algorithm.inner_lr=0.1,0.4", "--jobs", "2", "--name", "lr"]
    result = ok(*args, *tiny(runs, *TINY))
    folder = only_child(runs)
    assert folder.name.split("-")[2:4] == ["sweep", "lr"]
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["name"] == "lr" and sweep["grid"] == {"algorithm.inner_lr": [0.1, 0.4]}
    assert [p["overrides"] for p in sweep["points"]] == [
        ["algorithm.inner_lr=0.1"],
        ["algorithm.inner_lr=0.4"],
    ]
    for point in sweep["points"]:
        assert point["exit_code"] == 0 and (folder / point["log"]).is_file()
        run = folder / point["run"]
        assert (run / "checkpoints" / "last.pt").is_file()
        assert f"inner_lr: {point['values']['algorithm.inner_lr']}" in (run / "config.yaml").read_text()
        assert 0 <= point["best_val"] <= 1
    assert len({p["run"] for p in sweep["points"]}) == 2
    lines = result.stdout.splitlines()
    assert sum(line.startswith("point ") and ": done (exit 0), run " in line for line in lines) == 2
    assert "2 of 2 points trained, 0 failed" in result.stdout
    assert f"next: metafew runs --root {folder}" in lines and f"next: metafew plot {folder}" in lines
    again = ok("sweep", "--resume", folder)  # nothing left to train
    assert "training 0 of 2 points" in again.stdout and len(list(folder.iterdir())) == 5


def test_a_bad_grid_is_one_line_and_exit_2_before_any_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for grid, word in (
        ("algorithm.inner_lr", "'algorithm.inner_lr'"),
        ("algorithm.inner_lr=0.1,", "value 2 is empty"),
        ("algorithm.inner_l=0.1,0.4", "algorithm.inner_lr"),
        ("task.shots=1,many", "task.shots=many"),
    ):
        assert_user_error(invoke("sweep", "--grid", grid, *tiny(runs, *TINY)), 2, "--grid", word)
    result = invoke("sweep", "--grid", "task.shots=1,2", "--name", "my sweep", *tiny(runs, *TINY))
    assert_user_error(result, 2, "--name 'my sweep'")
    assert not runs.exists()


def test_slurm_writes_a_job_array_over_the_points(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    grid = [
        "--grid",
        "algorithm.inner_lr=0.1,0.4",
        "--grid",
        "train.name=lr,'lr,wide'",
    ]
    slurm = ["--slurm", "--jobs", "3", "--sbatch-arg", "--partition=gpu", "--sbatch-arg=--time=2:00:00"]
    result = ok("sweep", *grid, *slurm, *tiny(runs, *TINY))
    folder = only_child(runs)
    script = (folder / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-3%3" in script and script.index("--partition=gpu") < script.index(
        "--time=2:00:00"
    )
    assert " -m metafew train --resume auto " in script and ' --requeue "${point[@]}" &' in script
    assert os.access(folder / "sweep.sbatch", os.X_OK)
    assert (folder / "points.tsv").read_text().splitlines() == [
        "algorithm.inner_lr=0.1\ttrain.name=lr",
        "algorithm.inner_lr=0.1\ttrain.name='lr,wide'",
        "algorithm.inner_lr=0.4\ttrain.name=lr",
        "algorithm.inner_lr=0.4\ttrain.name='lr,wide'",
    ]
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["slurm"]["job_id"] is None and sweep["slurm"]["sbatch_args"] == [
        "--partition=gpu",
        "--time=2:00:00",
    ]
    assert all(p["exit_code"] is None for p in sweep["points"])
    assert sweep["grid"]["train.name"] == ["lr", "lr,wide"]
    assert f"next: sbatch {folder.resolve() / 'sweep.sbatch'}" in result.stdout


def test_submit_calls_sbatch_and_records_the_job_id(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch.args\necho "4242;cluster"\n')
    sbatch.chmod(0o755)
    runs = tmp_path / "runs"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = ok("sweep", "--grid", "task.shots=1,2", "--submit", *tiny(runs, *TINY), env=env)
    folder = only_child(runs)
    assert "submitted: SLURM job 4242" in result.stdout
    assert json.loads((folder / "sweep.json").read_text())["slurm"]["job_id"] == "4242"
    assert (tmp_path / "sbatch.args").read_text().split() == [
        "--parsable",
        str(folder.resolve() / "sweep.sbatch"),
    ]
    assert "#SBATCH --array=0-1%2" in (folder / "sweep.sbatch").read_text()


def test_submit_without_sbatch_is_one_line(tmp_path: Path) -> None:
    result = invoke(
        "sweep", "--grid", "task.shots=1,2", "--submit", *tiny(tmp_path / "runs"), env={"PATH": ""}
    )
    assert_user_error(result, 2, "sbatch not found on PATH")
    assert not (tmp_path / "runs").exists()
