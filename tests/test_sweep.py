"""metafew.sweep: grid parsing and expansion, threads per job, the sbatch script, resuming, and
the local runner (bounded parallelism, signals) with a fake launcher."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from metafew import sweep as lib
from metafew.errors import ConfigError
from metafew.sweep import Point, Sweep


def test_expand_grid_varies_the_last_key_fastest() -> None:
    grid = {"a.x": ["1", "2"], "b.y": ["p", "q", "r"]}
    points = lib.expand_grid(grid)
    assert points[:4] == [["a.x=1", "b.y=p"], ["a.x=1", "b.y=q"], ["a.x=1", "b.y=r"], ["a.x=2", "b.y=p"]]
    assert len(points) == 6 and len({tuple(p) for p in points}) == 6


def test_grid_values_split_at_top_level_commas_only() -> None:
    assert lib.split_values("0.1, 0.4") == ["0.1", "0.4"]
    assert lib.split_values("[1,2],[3]") == ["[1,2]", "[3]"]
    assert lib.split_values("{a: 1, b: [2, 3]},x") == ["{a: 1, b: [2, 3]}", "x"]
    assert lib.split_values("'a,b',c") == ["'a,b'", "c"]
    assert lib.split_values("[1,2") is None and lib.split_values("'a,b") is None
    assert lib.parse_grid(["task.shots = 1,5", "model.hidden=[8,16]"]) == {
        "task.shots": ["1", "5"],
        "model.hidden": ["[8,16]"],
    }


@pytest.mark.parametrize(
    ("items", "words"),
    [
        (["task.shots"], ["'task.shots'", "key=v1,v2"]),
        (["task.shots="], ["'task.shots='", "key=v1,v2"]),
        (["=1,2"], ["'=1,2'"]),
        (["task.shots=1,,5"], ["value 2 is empty"]),
        (["task.shots=1,5", "task.shots=2"], ["task.shots is given twice"]),
        (["task.shots=1,1"], ["'1' is repeated"]),
        (["model.hidden=[8,16"], ["unbalanced"]),
        ([], ["at least one --grid"]),
    ],
)
def test_a_bad_grid_is_one_error_naming_it(items: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        lib.parse_grid(items)
    assert "\n" not in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_grid_values_are_validated_against_the_config() -> None:
    with pytest.raises(ConfigError, match=r"--grid algorithm.inner_l=0.1: unknown .*algorithm.inner_lr"):
        lib.check_grid([], [], {"algorithm.inner_l": ["0.1"]})
    with pytest.raises(
        ConfigError, match=r"--grid task.shots=many: task.shots = 'many': expected an integer"
    ):
        lib.check_grid([], [], {"task.shots": ["1", "many"]})
    with pytest.raises(ConfigError, match=r"--grid train\.iterations: a sweep cannot vary a key that"):
        lib.check_grid([], [], {"train.iterations": ["2", "4"]})
    with pytest.raises(ConfigError, match=r"--grid train\.runs_dir: the sweep puts every run"):
        lib.check_grid([], [], {"train.runs_dir": ["a", "b"]})


def test_threads_are_shared_among_the_parallel_jobs() -> None:
    assert lib.threads_per_job(16, 4, 10) == 4
    assert lib.threads_per_job(16, 3, 10) == 5
    assert lib.threads_per_job(2, 4, 10) == 1  # never zero
    assert lib.threads_per_job(16, 8, 2) == 8  # two points share all the cores


def test_user_threads_means_a_set_runtime_threads() -> None:
    sweep = Sweep("s", [], ["task.shots=1"], {}, [])
    assert not lib.user_threads(sweep)
    sweep.overrides.append("runtime.threads=0")
    assert lib.user_threads(sweep)


def test_sbatch_script_is_an_array_over_the_points_file(tmp_path: Path) -> None:
    command = ["/venv/bin/python", "-m", "metafew", "train", "--resume", "auto", "--requeue", "x=a b"]
    array = lib.SlurmArray(
        "lr", tmp_path, 6, 2, command, Path("/work dir"), ("--partition=gpu", "--time=1:00:00")
    )
    script = lib.sbatch_script(array)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [line for line in lines if line.startswith("#SBATCH ")]
    assert directives[:2] == ["#SBATCH --job-name=metafew-sweep-lr", "#SBATCH --array=0-5%2"]
    assert f"#SBATCH --output={tmp_path}/point-%a.log" in directives
    assert {"#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "#SBATCH --open-mode=append"} <= set(
        directives
    )
    assert directives[-2:] == ["#SBATCH --partition=gpu", "#SBATCH --time=1:00:00"]
    assert "cd '/work dir' || exit 1" in lines
    assert "/venv/bin/python -m metafew train --resume auto --requeue 'x=a b' \"${point[@]}\" &" in lines
    assert 'sed -n "$((i + 1))p" "$sweep/points.tsv"' in script and "SLURM_ARRAY_TASK_ID" in script
    assert (
        'echo "$status" > "$sweep/point-$i.exit"' in lines and "trap 'kill -TERM \"$pid\"' USR1 TERM" in lines
    )


@pytest.mark.parametrize("arg", ["partition=gpu", "--array=0-3", "-o x.log", "--output=x"])
def test_sbatch_args_must_be_options_the_script_leaves_free(arg: str) -> None:
    with pytest.raises(ConfigError, match="--sbatch-arg"):
        lib.check_sbatch_args([arg])
    lib.check_sbatch_args(["--partition=gpu", "--gres gpu:1"])


def _three_points(folder: Path) -> Sweep:
    """Point 0 finished, point 1 interrupted with its run folder, point 2 never started."""
    points = [
        Point([f"task.shots={k}"], {"task.shots": k}, f"point-{i}.log") for i, k in enumerate((1, 2, 3))
    ]
    for i, code in ((0, 0), (1, 130)):
        run = folder / f"run-{i}"
        run.mkdir()
        (run / "config.yaml").write_text("{}\n")
        (folder / f"point-{i}.log").write_text(f"{lib.LOG_MARK}point {i}\nrun folder: {run}\n")
        points[i].run, points[i].exit_code = run.name, code
    return Sweep("s", [], [], {"task.shots": [1, 2, 3]}, points)


def test_resume_picks_the_unfinished_points_and_their_runs(tmp_path: Path) -> None:
    sweep = _three_points(tmp_path)
    assert lib.pending(tmp_path, sweep) == [1, 2]
    assert lib.resume_target(tmp_path, sweep.points[1]) == str(tmp_path / "run-1")
    assert lib.resume_target(tmp_path, sweep.points[2]) is None  # never started: a plain train
    (tmp_path / "point-2.log").write_text(f"{lib.LOG_MARK}point 2\nerror: stopped before iteration 1\n")
    assert lib.resume_target(tmp_path, sweep.points[2]) == "auto"
    (tmp_path / "point-2.exit").write_text("0\n")  # a SLURM task finished it
    assert lib.pending(tmp_path, sweep) == [1] and sweep.points[2].exit_code == 0


def test_a_sweep_folder_round_trips_through_sweep_json(tmp_path: Path) -> None:
    sweep = _three_points(tmp_path)
    lib.save_sweep(tmp_path, sweep)
    raw = json.loads((tmp_path / "sweep.json").read_text())
    assert set(raw) >= {"name", "configs", "overrides", "grid", "points"}
    assert raw["points"][1] == {
        "overrides": ["task.shots=2"],
        "values": {"task.shots": 2},
        "log": "point-1.log",
        "run": "run-1",
        "exit_code": 130,
        "best_val": None,
    }
    assert lib.load_sweep(tmp_path) == sweep


class FakeChild:
    """A point that ends after `ticks` polls with `code`, or 130 soon after a signal."""

    def __init__(self, code: int, ticks: int) -> None:
        self.code, self.ticks, self.signals = code, ticks, list[int]()

    def poll(self) -> int | None:
        self.ticks -= 1
        return self.code if self.ticks <= 0 else None

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.code, self.ticks = 130, 1


class FakeLauncher:
    """Starts FakeChildren: writes the log a train would, makes its run folder with metrics."""

    def __init__(self, codes: dict[int, int]) -> None:
        self.codes, self.children, self.args, self.most_at_once = codes, list[FakeChild](), [], 0

    def __call__(self, args: list[str], log: Path) -> FakeChild:
        index = len(self.children)
        run = log.parent / f"run-{index}"
        run.mkdir(exist_ok=True)  # a resumed point continues its run
        (run / "config.yaml").write_text("{}\n")
        (run / "metrics.jsonl").write_text(
            json.dumps({"iteration": 2, "val_accuracy": 0.25 + index / 10}) + "\n"
        )
        with log.open("a") as out:
            out.write(f"run folder: {run}\n")
        self.args.append(args)
        self.children.append(FakeChild(self.codes.get(index, 0), ticks=3))
        alive = sum(c.ticks > 0 for c in self.children)
        self.most_at_once = max(self.most_at_once, alive)
        return self.children[-1]


def _sweep(folder: Path, count: int) -> Sweep:
    points = [Point([f"task.shots={k}"], {"task.shots": k}, f"point-{k}.log") for k in range(count)]
    return Sweep("s", ["c.yaml"], ["train.iterations=2"], {"task.shots": list(range(count))}, points)


def test_runner_trains_at_most_jobs_points_at_once_and_records_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lib, "POLL_S", 0.0)
    sweep, launch, lines = _sweep(tmp_path, 5), FakeLauncher({3: 5}), list[str]()
    how = lib.LocalRun(2, 3, lambda: None, lines.append, launch)
    assert not lib.run_points(tmp_path, sweep, [0, 1, 2, 3, 4], how)
    assert launch.most_at_once == 2 and len(launch.children) == 5
    assert launch.args[0][:3] == ["train", "--config", "c.yaml"]  # no --resume: a first attempt
    assert launch.args[0][-3:] == [
        f"train.runs_dir={json.dumps(str(tmp_path))}",
        "runtime.threads=3",
        "task.shots=0",
    ]
    saved = lib.load_sweep(tmp_path)
    assert [p.exit_code for p in saved.points] == [0, 0, 0, 5, 0]
    assert saved.points[1].run == "run-1" and saved.points[1].best_val == pytest.approx(0.35)
    assert len(lines) == 5 and "point 3 task.shots=3: failed (exit 5), run run-3, best val 55.0%" in lines
    line, failure = lib.outcome(tmp_path, saved, [0, 1, 2, 3, 4])
    assert "4 of 5 points trained, 1 failed" in line
    assert failure is not None and failure.exit_code == 5 and "point-3.log" in str(failure)


def test_a_signal_stops_launching_and_is_passed_to_the_running_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lib, "POLL_S", 0.0)
    sweep, launch = _sweep(tmp_path, 4), FakeLauncher({})
    stop = lambda: signal.SIGTERM if launch.children else None  # noqa: E731
    assert lib.run_points(tmp_path, sweep, [0, 1, 2, 3], lib.LocalRun(2, None, stop, lambda _: None, launch))
    assert len(launch.children) == 2 and all(c.signals == [signal.SIGTERM] for c in launch.children)
    saved = lib.load_sweep(tmp_path)
    assert [p.exit_code for p in saved.points] == [130, 130, None, None]
    assert [p.run for p in saved.points] == ["run-0", "run-1", None, None]  # their data are kept
    assert lib.pending(tmp_path, saved) == [0, 1, 2, 3]
    again = FakeLauncher({})
    lib.run_points(tmp_path, saved, [0], lib.LocalRun(1, None, lambda: None, lambda _: None, again))
    assert again.args[0][3:5] == ["--resume", str(tmp_path / "run-0")]
