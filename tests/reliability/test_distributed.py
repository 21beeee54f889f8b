"""Several processes (torchrun, gloo on CPU) and the SLURM scripts in examples/.

Two processes share every meta-batch (2 tasks each of 4) and all-reduce their gradients. SIGTERM
to torchrun stops both at the same iteration (rank 0 checkpoints and reports, rank 1 is silent),
`--resume auto` under torchrun continues, and the result must be bit-identical to the same two
processes run without a stop: same layout, so the same reductions in the same order (a sum of
two is commutative), as the one-process continuation is in test_faults.py. Two processes must
also match one process with the same meta-batch: the all-reduce sums per-process means
weighted by task count in float64, so the meta-gradient differs from the single process's
sequential float32 sum only by rounding (≈1e-7 relative). That is compared over a fixed, short
run (the weights to 1e-3 of how far they moved, the logged values to 1e-6, after 3 SGD steps of
β = 0.5: ROUNDING_OF_THE_UPDATE), never over the
stopped run, whose length depends on when the signal lands: over many steps the rounding
grows (1.3e-3 seen on a loaded machine), so no fixed tolerance would hold.
The tests use outer SGD because Adam's first steps are ≈ β·sign(g): a gradient component that
is zero up to rounding can take either sign, so with Adam weights may differ by up to 2β per
step in such components (measured: 1.6e-3 after 4 steps at β = 1e-3, losses still equal to 1e-7).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import typer
from helpers import REPO, TORCHRUN, load_pt, ok, only_child, read_metrics, tiny
from survival import fingerprint
from torch.distributed.run import get_args_parser

from metafew.cli import app
from metafew.config_load import load_config
from metafew.distributed import ProcessGroup, Solo, requeue_slurm_job
from metafew.errors import EXIT_CODES
from metafew.learner import build_learner
from metafew.runs import load_run_config

DDP_ARGS = ["train.meta_batch_size=4", "train.optimizer=sgd", "train.outer_lr=0.5", "train.val_every=3"]


def preempt(runs_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Start `torchrun ... -m metafew ARGS` and send torchrun SIGTERM (as SLURM does) once two
    iterations are logged; torchrun passes it on to both processes."""
    proc = subprocess.Popen(
        [*TORCHRUN, "-m", "metafew", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        while proc.poll() is None:
            logged = list(runs_dir.glob("*/metrics.jsonl"))
            if logged and sum('"loss"' in line for line in logged[0].read_text().splitlines()) >= 2:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """`torchrun ... -m metafew ARGS` to its end."""
    return subprocess.run([*TORCHRUN, "-m", "metafew", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.fault
def test_two_processes_stop_together_resume_and_match_one(tmp_path: Path) -> None:
    ddp_dir, straight_dir, single_dir = tmp_path / "ddp", tmp_path / "straight", tmp_path / "single"
    stopped = preempt(ddp_dir, "train", *tiny(ddp_dir, *DDP_ARGS, "train.iterations=5000"))
    assert stopped.stdout.count("run folder:") == 1  # rank 1 is silent
    said = [line for line in stopped.stderr.splitlines() if "stopped after iteration" in line]
    assert len(said) == 1 and said[0].startswith("error: stopped after iteration"), stopped.stderr
    run = only_child(ddp_dir)
    done = load_pt(run / "checkpoints" / "last.pt")["iteration"]
    assert f"stopped after iteration {done} " in said[0] and 2 <= done < 5000
    assert [r["iteration"] for r in read_metrics(run) if "loss" in r] == list(range(1, done + 1))

    # the requeued job runs the same command (with fewer iterations, to keep the test short)
    final = f"train.iterations={done + 2}"
    resumed = torchrun("train", "--resume", "auto", *tiny(ddp_dir, *DDP_ARGS, final))
    assert resumed.returncode == 0, resumed.stderr
    assert f"--resume auto: continuing {run}" in resumed.stderr and "error" not in resumed.stderr
    assert only_child(ddp_dir) == run

    straight = torchrun("train", *tiny(straight_dir, *DDP_ARGS, final))
    assert straight.returncode == 0, straight.stderr
    assert fingerprint(run) == fingerprint(only_child(straight_dir))  # bit for bit
    before = load_pt(run / "checkpoints" / "last.prev.pt")
    after = load_pt(run / "checkpoints" / "last.pt")
    moved = max(float((after["params"][k] - before["params"][k]).abs().max()) for k in after["params"])
    assert before["iteration"] < after["iteration"] and moved > 1e-3  # the resumed steps trained

    # one process, the same 3 steps: rounding-level differences only (the module docstring)
    ok("train", *tiny(single_dir, *DDP_ARGS, "train.iterations=3"))
    short = torchrun("train", *tiny(tmp_path / "short", *DDP_ARGS, "train.iterations=3"))
    assert short.returncode == 0, short.stderr
    one, two = only_child(single_dir), only_child(tmp_path / "short")
    assert_same_training(one, two)
    mine, theirs = read_metrics(one), read_metrics(two)
    assert [r["iteration"] for r in mine] == [r["iteration"] for r in theirs]
    for x, y in zip(mine, theirs):
        for key in ("loss", "accuracy", "val_accuracy"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-6, abs=1e-7), (key, x, y)


@pytest.mark.fault
def test_reptile_under_two_processes_matches_one(tmp_path: Path) -> None:
    """Reptile's inner mini-batch orders follow each task's stream index, not its position in a
    process's share, so two processes draw what one would (same tolerance as above; drawn by
    position the weights differed by 0.14). Inner SGD: an inner Adam, like the outer one above,
    turns rounding-level gradient differences into steps of ±α (measured 1.8e-5 here)."""
    args = [*DDP_ARGS, "algorithm.name=reptile", "algorithm.inner_steps=3", "train.iterations=3"]
    args += ["algorithm.reptile.inner_batch_size=4", "algorithm.reptile.inner_optimizer=sgd"]
    done = subprocess.run(
        [*TORCHRUN, "-m", "metafew", "train", *tiny(tmp_path / "ddp", *args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    ok("train", *tiny(tmp_path / "single", *args))
    assert_same_training(only_child(tmp_path / "single"), only_child(tmp_path / "ddp"))


ROUNDING_OF_THE_UPDATE = 1e-3
"""How far two process layouts' weights may differ after the same few steps, as a fraction of how
far the steps moved them (the largest |w_T − w_0| of any tensor). The layouts' meta-gradients
differ by float32 rounding (≈1e-7 relative per reduction), which the second-order inner loop and
three steps of SGD at β = 0.5 amplify to ~1e-5 of the update (1.45e-6 absolute seen on a loaded
machine, which an absolute 1e-6 refused); a wrong share or reduction (a task dropped, counted
twice, or mis-weighted) changes the update by a sizeable fraction of itself."""


def assert_same_training(one: Path, two: Path) -> None:
    """Runs `one` and `two` (same config, other process layouts) trained to the same weights, up to
    ROUNDING_OF_THE_UPDATE of how far they moved from their common initial weights."""
    record = load_pt(one / "checkpoints" / "last.pt")
    a, b = record["params"], load_pt(two / "checkpoints" / "last.pt")["params"]
    start = build_learner(load_run_config(one), torch.device("cpu"), record["train_classes"]).params
    moved = max(float((a[k] - start[k].detach()).abs().max()) for k in a)
    assert moved > 1e-3  # the steps trained
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=ROUNDING_OF_THE_UPDATE * moved, rtol=0)


class _Ranks(ProcessGroup):
    """ProcessGroup's arithmetic without a process group."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size, self.is_main = rank, world_size, rank == 0


@pytest.mark.parametrize(("tasks", "world"), [(4, 2), (5, 2), (7, 3), (3, 3), (16, 8)])
def test_every_task_of_a_meta_batch_has_exactly_one_process(tasks: int, world: int) -> None:
    shares = [list(_Ranks(r, world).share(10 * tasks, tasks)) for r in range(world)]
    assert [i for share in shares for i in share] == list(range(10 * tasks, 11 * tasks))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert list(Solo().share(10 * tasks, tasks)) == list(range(10 * tasks, 11 * tasks))


def test_fewer_tasks_than_processes_is_a_config_error() -> None:
    with pytest.raises(Exception, match=r"train.meta_batch_size = 2 .* 4 processes") as info:
        _Ranks(1, 4).share(0, 2)
    assert getattr(info.value, "exit_code", None) == 2


# ---------------------------------------------------------------------------------------------
# examples/*.sbatch


def launch_line(script: Path) -> str:
    """The torchrun command of a batch script, continuation lines joined, without `&`."""
    text = script.read_text(encoding="utf-8").replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if "torchrun" in ln and not ln.lstrip().startswith("#")]
    return line.strip().removesuffix("&").strip()


def expand(line: str) -> list[str]:
    """The words bash makes of `line`, with typical SLURM variables set."""
    env = {"SLURM_GPUS_ON_NODE": "4", "SLURM_NNODES": "2", "SLURM_JOB_ID": "77", "head_node": "node01"}
    out = subprocess.run(
        ["bash", "-c", f"set -- {line}; printf '%s\\0' \"$@\""],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return out.stdout.split("\0")[:-1]


@pytest.mark.parametrize("script", sorted((REPO / "examples").glob("*.sbatch")), ids=lambda p: p.name)
def test_sbatch_example_parses(script: Path) -> None:
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    words = expand(launch_line(script))
    words = words[words.index("torchrun") + 1 :]
    launcher = get_args_parser().parse_args(words)
    assert launcher.module and launcher.training_script == "metafew"
    assert launcher.standalone or launcher.rdzv_backend == "c10d"
    command = typer.main.get_command(app)
    name, train, rest = command.resolve_command(  # type: ignore[attr-defined]
        command.context_class(command, info_name="metafew"), list(launcher.training_script_args)
    )
    assert name == "train" and train is not None
    params = train.make_context("train", rest).params  # unknown or misspelled flags raise here
    assert params["resume"] == "auto" and params["requeue"] is True
    cfg = load_config([REPO / c for c in params["config"]], params["overrides"])
    assert cfg.train.meta_batch_size % int(launcher.nproc_per_node) == 0
    header = script.read_text(encoding="utf-8")
    assert re.search(r"^#SBATCH --requeue$", header, re.M) and re.search(r"^#SBATCH --signal=", header, re.M)


def test_sbatch_examples_exist() -> None:
    assert {p.name for p in (REPO / "examples").glob("*.sbatch")} == {
        "slurm_single_node.sbatch",
        "slurm_multi_node.sbatch",
    }


def test_torchrun_flags_reach_train_help() -> None:
    text = ok("train", "--help", env={"COLUMNS": "200"}).stdout
    for flag in ("--resume", "--requeue", "--no-requeue"):
        assert flag in text


def test_requeue_outside_slurm_or_without_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert requeue_slurm_job() == "not requeued: SLURM_JOB_ID is not set (not a SLURM job)"
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol anywhere
    outcome = requeue_slurm_job()
    assert outcome.startswith("requeue of SLURM job 7 failed:") and "scontrol" in outcome


def test_readme_documents_every_exit_code() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)
    assert {int(code): meaning for code, meaning in rows} == EXIT_CODES
