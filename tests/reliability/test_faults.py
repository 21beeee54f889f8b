"""Faults a cluster job meets, each injected for real, and the documented outcome: kill -9 at
random iterations and in the middle of a checkpoint write, SIGTERM/SIGUSR1/SIGINT (with SLURM
requeue through a fake `scontrol`), a full disk, an unwritable run root, 16 runs started in the
same second. "Survived" means: the documented exit code and one-line message, nothing valid
overwritten, and `metafew train --resume auto` with the same command ends bit-identical to a run
that was never interrupted (metrics.jsonl and the last/best checkpoints, on CPU).

Checkpoint corruption and malicious files are in test_checkpoints.py; the 2-process torchrun
run in test_distributed.py.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_user_error, invoke, load_pt, ok, only_child, read_metrics, signal_after, tiny
from survival import ARGS, fingerprint, reference_run, resume_auto

from metafew import launch, runs
from metafew.algorithms.base import MetaStep
from metafew.config_load import load_config
from metafew.learner import Learner

pytestmark = pytest.mark.fault

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return reference_run(tmp_path_factory)


# ---------------------------------------------------------------------------------------------
# kill -9


KILLS = [("iteration", k) for k in sorted(random.Random(2026).sample(range(1, 6), 3))] + [
    ("checkpoint-write", 3),  # the third torch.save of the run, half written
    ("rotation", 1),  # last.pt already moved to last.prev.pt, the new one not yet renamed
]


@pytest.mark.parametrize(("fault", "at"), KILLS, ids=[f"{f}-{a}" for f, a in KILLS])
def test_kill_9_then_resume_auto_is_bit_identical(
    tmp_path: Path, reference: dict[str, Any], fault: str, at: int
) -> None:
    runs_dir = tmp_path / "runs"
    killed = subprocess.run(
        [sys.executable, str(HERE / "crash_driver.py"), fault, str(at), "train", *tiny(runs_dir, *ARGS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = only_child(runs_dir)
    assert (
        not (run / "checkpoints" / "last.pt").is_file()
        or load_pt(run / "checkpoints" / "last.pt")["iteration"] < 6
    )
    stderr = resume_auto(runs_dir)
    assert only_child(runs_dir) == run  # continued in place, no second folder
    assert f"--resume auto: continuing {run}" in stderr
    if fault == "rotation":
        assert "falling back to the previous checkpoint last.prev.pt (iteration 2)" in stderr
    assert fingerprint(run) == reference
    assert not [p for p in run.rglob("*.tmp")]


# ---------------------------------------------------------------------------------------------
# signals and SLURM requeue


def fake_scontrol(folder: Path, exit_code: int = 0) -> tuple[dict[str, str], Path]:
    """A `scontrol` on PATH that records its arguments (and fails with `exit_code` != 0)."""
    record = folder / "scontrol.args"
    script = folder / "bin" / "scontrol"
    script.parent.mkdir(parents=True)
    fail = f'echo "slurm_requeue error: Access/permission denied" >&2; exit {exit_code}' if exit_code else ""
    script.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\n{fail}\n')
    script.chmod(0o755)
    env = {"PATH": f"{script.parent}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    return env, record


SIGNALS = [
    ("SIGTERM", "--requeue", 0, "requeued SLURM job 4242"),
    ("SIGUSR1", "--requeue", 0, "requeued SLURM job 4242"),
    ("SIGTERM", "--no-requeue", 0, None),
    ("SIGINT", "--requeue", 0, None),  # Ctrl-C is the user, not the cluster: never requeue
    ("SIGUSR1", "--requeue", 1, "requeue of SLURM job 4242 failed: slurm_requeue error"),
]


@pytest.mark.parametrize(
    ("name", "flag", "fails", "said"), SIGNALS, ids=[f"{s[0]}{s[1]}-{s[2]}" for s in SIGNALS]
)
def test_signal_checkpoints_exits_130_and_requeues(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference: dict[str, Any],
    name: str,
    flag: str,
    fails: int,
    said: str | None,
) -> None:
    env, record = fake_scontrol(tmp_path, fails)
    runs_dir = tmp_path / "runs"
    signal_after(monkeypatch, getattr(signal, name), 3)
    line = assert_user_error(
        invoke("train", flag, *tiny(runs_dir, *ARGS), env=env), 130, "stopped after iteration 3"
    )
    run = only_child(runs_dir)
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == 3  # the finished step, saved
    assert f"--resume {run}" in line
    if said is None:
        assert not record.exists() and "requeue" not in line
    else:
        assert said in line
        assert record.read_text() == "requeue 4242\n"
    monkeypatch.undo()
    resume_auto(runs_dir)
    assert fingerprint(run) == reference


# ---------------------------------------------------------------------------------------------
# full disk, unwritable run root


def fsync_fails_for(monkeypatch: pytest.MonkeyPatch, matches: Callable[[str], bool]) -> None:
    """os.fsync raises ENOSPC (as a full disk reports delayed writes) for files whose path
    `matches`."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if matches(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(runs.os, "fsync", fsync)


def nth_write(n: int, kind: Callable[[str], bool]) -> Callable[[str], bool]:
    """True from the n-th fsync of a file of this kind on."""
    seen = [0]

    def matches(path: str) -> bool:
        seen[0] += kind(path)
        return kind(path) and seen[0] >= n

    return matches


DISK_FULL = {
    "checkpoint at iteration 4": lambda: nth_write(2, lambda path: "/.last.pt." in path),
    "metrics line of iteration 3": lambda: nth_write(4, lambda path: path.endswith("/metrics.jsonl")),
}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
@pytest.mark.parametrize("where", list(DISK_FULL))
def test_disk_full_is_a_clean_error_and_resume_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, Any], where: str
) -> None:
    runs_dir = tmp_path / "runs"
    fsync_fails_for(monkeypatch, DISK_FULL[where]())
    assert_user_error(invoke("train", *tiny(runs_dir, *ARGS)), 4, "No space left on device", "resume")
    run = only_child(runs_dir)
    assert not list(run.rglob("*.tmp"))  # the half-written file is gone
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == 2  # the valid one is kept
    monkeypatch.undo()  # space freed
    resume_auto(runs_dir)
    assert fingerprint(run) == reference


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 200 KiB tmpfs (room for about two checkpoints); skipped where mount is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk(tmp_path: Path, small_disk: Path, reference: dict[str, Any]) -> None:
    runs_dir = small_disk / "runs"
    assert_user_error(invoke("train", *tiny(runs_dir, *ARGS)), 4, "No space left on device", "resume")
    run = only_child(runs_dir)
    assert not list(run.rglob("*.tmp"))
    assert 2 <= load_pt(run / "checkpoints" / "last.pt")["iteration"] < 6
    moved = tmp_path / "runs"  # space freed: the run moved to a bigger disk
    shutil.copytree(runs_dir, moved)
    resume_auto(moved)
    assert fingerprint(only_child(moved)) == reference


def test_unwritable_run_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_user_error(invoke("train", *tiny(blocker / "runs")), 4, str(blocker / "runs"), "train.runs_dir")

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(runs.Path, "mkdir", refuse)
    assert_user_error(invoke("train", *tiny(tmp_path / "ro")), 4, "Read-only file system")
    assert not (tmp_path / "ro").exists()


# ---------------------------------------------------------------------------------------------
# many jobs at once


STAMP = "20240102-030405"


def _create_in_child(runs_dir: str) -> str:
    runs._stamp = lambda: STAMP  # every process in the same second
    cfg = load_config(None, [f"train.runs_dir={runs_dir}", "train.name=job"])
    with runs.RunClaim() as claim:
        return str(runs.create_run(cfg, "cpu", claim))


def test_16_runs_started_in_the_same_second_get_16_folders(tmp_path: Path) -> None:
    # spawn, not fork: a child forked from a process whose torch threads or locks are busy can
    # hang for ever in a futex (seen under load); a hang must fail the test, not stall the suite
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        made = pool.map_async(_create_in_child, [str(tmp_path / "runs")] * 16).get(timeout=300)
    assert len(set(made)) == 16
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(Path(p).name for p in made)
    for folder in map(Path, made):
        assert folder.name.startswith(f"{STAMP}-job-")
        assert (folder / "config.yaml").is_file() and (folder / "env.json").is_file()


def test_a_claimed_run_is_not_trained_twice(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    ok("train", *tiny(runs_dir, "train.iterations=2"))
    run = only_child(runs_dir)
    with runs.RunClaim() as claim:
        claim.acquire(run)  # another job holds it
        assert_user_error(invoke("train", "--resume", run, "train.iterations=4"), 4, "another process")
        # --resume auto passes it by and starts a new run
        ok("train", "--resume", "auto", *tiny(runs_dir, "train.iterations=4"))
    assert len(list(runs_dir.iterdir())) == 2
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == 2


def test_divergence_mid_run_exits_5_and_keeps_finite_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third outer step turns non-finite (an overflow after the checkpoint of iteration 2).
    Divergence at iteration 1 from a bad config: tests/cli/test_cli.py::
    test_divergence_at_once_exits_5_and_leaves_no_folder."""
    real_build = launch.build_learner

    def build(*args: Any, **kwargs: Any) -> Learner:
        learner = real_build(*args, **kwargs)
        real_step = learner.algorithm.meta_gradients

        def poisoned(params: Any, episodes: Any, iteration: int) -> MetaStep:
            step = real_step(params, episodes, iteration)
            if iteration != 2:
                return step
            return MetaStep(
                {k: g * float("inf") for k, g in step.grads.items()}, step.losses, step.accuracies
            )

        learner.algorithm.meta_gradients = poisoned  # type: ignore[method-assign]
        return learner

    monkeypatch.setattr(launch, "build_learner", build)
    runs_dir = tmp_path / "runs"
    assert_user_error(invoke("train", *tiny(runs_dir, *ARGS)), 5, "iteration 3", "non-finite")
    run = only_child(runs_dir)
    for name in ("last", "best"):
        state = load_pt(run / "checkpoints" / f"{name}.pt")
        assert state["iteration"] == 2
        assert all(bool(torch.isfinite(v).all()) for v in state["params"].values())
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 2]  # no line for iteration 3


# ---------------------------------------------------------------------------------------------
# schedules and algorithms with state of their own


VARIANTS = {
    "MAML++ (MSL annealing, first-order warm-up, LSLR, BNWB, cosine lr)": [
        "algorithm.inner_steps=2",
        "algorithm.maml.multi_step_loss=true",
        "algorithm.maml.msl_iterations=4",
        "algorithm.maml.learn_inner_lr=true",
        "algorithm.maml.per_step_bn=true",
        "algorithm.maml.first_order_iterations=3",
        "train.lr_schedule=cosine",
    ],
    "Reptile (per-task mini-batch streams, linear lr)": [
        "algorithm.name=reptile",
        "algorithm.inner_steps=3",
        "train.optimizer=sgd",
        "train.outer_lr=1.0",
        "train.lr_schedule=linear",
        "algorithm.reptile.inner_batch_size=4",
    ],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_preempted_variant_resumes_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    extra = [*ARGS, *VARIANTS[variant]]
    ok("train", *tiny(tmp_path / "straight", *extra))
    signal_after(monkeypatch, signal.SIGTERM, 3)  # between the checkpoints of 2 and 4
    assert invoke("train", *tiny(tmp_path / "stopped", *extra)).exit_code == 130
    monkeypatch.undo()
    ok("train", "--resume", "auto", *tiny(tmp_path / "stopped", *extra))
    assert fingerprint(only_child(tmp_path / "stopped")) == fingerprint(only_child(tmp_path / "straight"))
