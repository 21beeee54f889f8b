"""Several processes training one run (torchrun / torch.distributed), and SLURM requeueing.

The engine sees a `Group` (a Protocol) with five operations; `Solo` (one process) makes them identities, so
a single-process run does exactly what it did before this module existed. Under torchrun
(`WORLD_SIZE` > 1 in the environment) `ProcessGroup` wraps torch.distributed:

- meta-batch `t` has episodes t·B .. t·B+B-1; rank r computes the meta-gradient of its
  contiguous share of them, and one all-reduce turns the per-rank means into the mean over all
  B tasks (each rank's mean weighted by its task count), so every rank takes the same outer step;
- rank 0 alone creates the run folder and writes metrics and checkpoints; it broadcasts the run
  folder, its config and the checkpoint to resume from as one JSON text.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol

import torch
import torch.distributed as dist

from metafew.errors import ConfigError

Grads = dict[str, torch.Tensor]


class Group(Protocol):
    """The processes that train one run together; used as a context manager around the run."""

    rank: int
    world_size: int
    is_main: bool

    def place(self, device: torch.device) -> torch.device:
        """The device this process trains on, given runtime.device resolved."""
        ...

    def share(self, first: int, count: int) -> range:
        """Episode indices this process computes out of first .. first+count-1."""
        ...

    def mean_over_tasks(
        self, grads: Grads, losses: torch.Tensor, accuracies: torch.Tensor
    ) -> tuple[Grads, float, float]:
        """(mean gradient, mean loss, mean accuracy) over every task of the meta-batch, given this
        process's mean gradient and its per-task losses and accuracies ([tasks] each)."""
        ...

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any process (every process gets the same answer)."""
        ...

    def broadcast_text(self, text: str) -> str:
        """Rank 0's `text` on every process."""
        ...

    def __enter__(self) -> Group: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Solo:
    """One process: the whole meta-batch, nothing to exchange."""

    def __init__(self) -> None:
        self.rank, self.world_size, self.is_main = 0, 1, True

    def place(self, device: torch.device) -> torch.device:
        return device

    def share(self, first: int, count: int) -> range:
        return range(first, first + count)

    def mean_over_tasks(
        self, grads: Grads, losses: torch.Tensor, accuracies: torch.Tensor
    ) -> tuple[Grads, float, float]:
        return grads, float(losses.mean()), float(accuracies.mean())

    def any(self, flag: bool) -> bool:
        return flag

    def broadcast_text(self, text: str) -> str:
        return text

    def __enter__(self) -> Solo:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class ProcessGroup:
    """One of WORLD_SIZE processes started by torchrun (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, backend: str) -> None:
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        if device.type != "cuda":
            return device
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process
        torch.cuda.set_device(local)
        return local

    def share(self, first: int, count: int) -> range:
        check_meta_batch(count, self.world_size)
        return range(
            first + self.rank * count // self.world_size, first + (self.rank + 1) * count // self.world_size
        )

    def mean_over_tasks(
        self, grads: Grads, losses: torch.Tensor, accuracies: torch.Tensor
    ) -> tuple[Grads, float, float]:
        tasks = len(losses)
        # one all-reduce for everything: [Σ tasks·grad..., Σ losses, Σ accuracies, Σ tasks]
        flat = [g.reshape(-1).double() * tasks for g in grads.values()]
        sums = torch.stack([losses.double().sum(), accuracies.double().sum(), torch.tensor(float(tasks))])
        packed = torch.cat([*flat, sums.to(flat[0].device)])
        dist.all_reduce(packed)  # gloo on CPU tensors, NCCL on CUDA ones
        total = packed[-1]
        out, start = {}, 0
        for key, g in grads.items():
            out[key] = (packed[start : start + g.numel()] / total).to(g.dtype).reshape(g.shape).to(g.device)
            start += g.numel()
        return out, float(packed[-3] / total), float(packed[-2] / total)

    def any(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def broadcast_text(self, text: str) -> str:
        payload = text.encode("utf-8") if self.is_main else b""
        size = torch.tensor([len(payload)], dtype=torch.int64)
        dist.broadcast(size, 0)
        buffer = torch.zeros(int(size.item()), dtype=torch.uint8)
        if self.is_main and payload:
            buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        dist.broadcast(buffer, 0)
        return bytes(buffer.numpy()).decode("utf-8")

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not dist.is_initialized():
            return
        if kind is None:  # leave together: a process tearing down early can abort its peer
            dist.barrier()
        dist.destroy_process_group()
        # free gloo's objects now, while the interpreter is whole: left to the collector, they can
        # be destroyed during interpreter teardown with their worker threads still joinable, and
        # the process aborts ("terminate called without an active exception", seen under load;
        # compare pytorch/pytorch#179291)
        gc.collect()


def check_meta_batch(tasks: int, processes: int) -> None:
    """ConfigError unless every process gets at least one task of each meta-batch."""
    if tasks < processes:
        raise ConfigError(
            f"train.meta_batch_size = {tasks} is smaller than the {processes} processes; "
            f"use at least {processes} tasks per meta-batch or fewer processes"
        )


def join() -> Group:
    """The process group this process belongs to: `Solo` unless torchrun started several
    processes (WORLD_SIZE > 1). CPU tensors are exchanged with gloo, CUDA ones with NCCL."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Solo()
    nccl = torch.cuda.is_available() and dist.is_nccl_available()
    return ProcessGroup("cpu:gloo,cuda:nccl" if nccl else "gloo")


def send_plan(group: Group, plan: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's plan (run folder, config YAML, checkpoint, or an error) on every process."""
    return dict(json.loads(group.broadcast_text(json.dumps(plan) if group.is_main else "")))


def requeue_slurm_job() -> str:
    """Ask SLURM to requeue this job (`scontrol requeue $SLURM_JOB_ID`); a one-line outcome.
    Never raises: a failed requeue must not hide the checkpoint that was just written."""
    job_id = os.environ.get("SLURM_JOB_ID")  # an array task has its own job id too
    if not job_id:
        return "not requeued: SLURM_JOB_ID is not set (not a SLURM job)"
    try:
        done = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"requeue of SLURM job {job_id} failed: {exc}"
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        return f"requeue of SLURM job {job_id} failed: {detail[0] if detail else f'exit {done.returncode}'}"
    return f"requeued SLURM job {job_id}"
