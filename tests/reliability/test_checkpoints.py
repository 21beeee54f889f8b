"""Damaged and hostile checkpoint files, one table of damages applied two ways:

- loading the damaged file is refused with RunError (exit 4) naming it: never a crash, never a
  silently wrong tensor (torch.load does not check zip CRCs; metafew does);
- a resumed run whose last.pt has that damage falls back to last.prev.pt, says so in one line,
  and still ends bit-identical to an uninterrupted run.

A pickle that would run code is refused by every command that reads a checkpoint (resume, eval,
finetune, predict), also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the environment, and the
code does not run.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_user_error, invoke, load_pt, ok, only_child, signal_after, tiny
from survival import ARGS, fingerprint, reference_run, resume_auto

from metafew.checkpoints import FORMAT as CHECKPOINT_FORMAT
from metafew.checkpoints import load_checkpoint, save_checkpoint
from metafew.errors import RunError


def first_tensor(tree: Any) -> torch.Tensor:
    """The first float tensor of 8+ values in a (nested) checkpoint."""
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list | tuple) else []
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() >= 8:
            return value
        if isinstance(value, dict | list | tuple):
            try:
                return first_tensor(value)
            except LookupError:
                continue
    raise LookupError("no tensor")


def flip_bit(path: Path, offset_of: Callable[[bytes], int]) -> None:
    data = bytearray(path.read_bytes())
    offset = offset_of(bytes(data))
    assert offset >= 0
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def keep(fraction_or_count: float) -> Callable[[Path], None]:
    def cut(path: Path) -> None:
        data = path.read_bytes()
        n = fraction_or_count
        end = int(len(data) * n) if isinstance(n, float) else n if n > 0 else len(data) + n
        path.write_bytes(data[:end])

    return cut


def flip_tensor(path: Path) -> None:
    tensor = first_tensor(torch.load(path, weights_only=True)).numpy().tobytes()
    flip_bit(path, lambda data: data.find(tensor) + 2)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated to 1 byte": keep(1),
    "truncated to 100 bytes": keep(100),
    "truncated to half": keep(0.5),
    "last byte missing": keep(-1),
    "zero bytes": lambda path: path.write_bytes(b""),
    "text instead of a checkpoint": lambda path: path.write_text("this is not a checkpoint\n"),
    "bit flip in the zip magic": lambda path: flip_bit(path, lambda data: 0),
    "bit flip in the end-of-archive record": lambda path: flip_bit(path, lambda data: len(data) - 22),
    "bit flip in tensor data": flip_tensor,
    "bit flip in a pickled key": lambda path: flip_bit(path, lambda data: data.find(b"iteration") + 2),
    "deleted": lambda path: path.unlink(),
}


def sample_state() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    return {"iteration": 7, "params": {"w": torch.randn(4, 1, 3, 3, generator=gen)}, "best_val": 0.75}


@pytest.mark.bad_input
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoint_is_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, sample_state())
    original = path.read_bytes()
    DAMAGES[damage](path)
    assert not path.exists() or path.read_bytes() != original
    with pytest.raises(RunError, match="not found" if damage == "deleted" else "corrupt or unsafe") as info:
        load_checkpoint(path)
    assert info.value.exit_code == 4
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return reference_run(tmp_path_factory)


@pytest.fixture(scope="module")
def stopped_at_4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run preempted (SIGTERM) after iteration 4: last.pt at 4, last.prev.pt at 2."""
    runs_dir = tmp_path_factory.mktemp("stopped") / "runs"
    with pytest.MonkeyPatch.context() as patch:
        signal_after(patch, signal.SIGTERM, 4)
        assert invoke("train", *tiny(runs_dir, *ARGS)).exit_code == 130
    run = only_child(runs_dir)
    assert load_pt(run / "checkpoints" / "last.pt")["iteration"] == 4
    assert load_pt(run / "checkpoints" / "last.prev.pt")["iteration"] == 2
    return runs_dir


@pytest.mark.fault
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_falls_back_to_the_previous_checkpoint(
    tmp_path: Path, stopped_at_4: Path, reference: dict[str, Any], damage: str
) -> None:
    runs_dir = tmp_path / "runs"
    shutil.copytree(stopped_at_4, runs_dir)
    run = only_child(runs_dir)
    DAMAGES[damage](run / "checkpoints" / "last.pt")
    stderr = resume_auto(runs_dir)
    warnings = [line for line in stderr.splitlines() if "falling back" in line]
    assert len(warnings) == 1, stderr
    assert str(run / "checkpoints" / "last.pt") in warnings[0]
    assert "last.prev.pt (iteration 2)" in warnings[0]
    assert fingerprint(run) == reference


@pytest.mark.bad_input
def test_resume_with_both_checkpoints_damaged_is_refused(tmp_path: Path, stopped_at_4: Path) -> None:
    runs_dir = tmp_path / "runs"
    shutil.copytree(stopped_at_4, runs_dir)
    run = only_child(runs_dir)
    DAMAGES["truncated to half"](run / "checkpoints" / "last.pt")
    DAMAGES["zero bytes"](run / "checkpoints" / "last.prev.pt")
    assert_user_error(invoke("train", "--resume", run), 4, "last.pt", "corrupt")


# ---------------------------------------------------------------------------------------------
# malicious pickles


class Exploit:
    """Runs a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def write_exploit(path: Path, marker: Path, writer: str) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "kind": "meta", "params": Exploit(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)


FORCE = {"default": None, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1": "1"}


@pytest.mark.bad_input
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
@pytest.mark.parametrize("force", list(FORCE))
def test_malicious_pickle_is_refused_and_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str, force: str
) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    write_exploit(path, marker, writer)
    if FORCE[force]:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    else:
        monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    with pytest.raises(RunError, match="corrupt or unsafe") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-iteration run with one fine-tuned model."""
    runs_dir = tmp_path_factory.mktemp("finetuned") / "runs"
    ok("train", *tiny(runs_dir, "train.iterations=2"))
    ok("finetune", only_child(runs_dir))
    return only_child(runs_dir)


COMMANDS = {
    "train --resume": ("checkpoints/last.pt", lambda run: ["train", "--resume", run]),
    "eval": ("checkpoints/best.pt", lambda run: ["eval", run]),
    "finetune": ("checkpoints/best.pt", lambda run: ["finetune", run]),
    "predict": ("model.pt", lambda run: ["predict", only_child(run / "finetune")]),
}


@pytest.mark.bad_input
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("force", list(FORCE))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_malicious_checkpoint(
    tmp_path: Path, finetuned: Path, command: str, force: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finetuned, run)
    target, args = COMMANDS[command]
    path = only_child(run / "finetune") / target if target == "model.pt" else run / target
    marker = tmp_path / "pwned"
    write_exploit(path, marker, "torch.save")
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": FORCE[force]} if FORCE[force] else None
    assert_user_error(invoke(*args(run), env=env), 4, str(path), "corrupt or unsafe")
    assert not marker.exists()
