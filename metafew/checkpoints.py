"""The on-disk checkpoint formats, in one place: typed records, atomic save, checked load.

A run folder holds meta-training checkpoints (`checkpoints/{last,last.prev,best}.pt`, a
`MetaCheckpoint`) and fine-tuned models (`finetune/<id>/model.pt`, a `FinetunedCheckpoint`).
Both are `torch.save` zips of plain values, loaded with `weights_only=True` (a file that would run
code is refused) after their zip CRCs are verified (torch.load does not check them).

Format history (the `format` field):
  1  metafew 0.1.0 until the architecture step: as 2, plus `schedule` and `sampler`, which were
     written and never read; the oldest also kept `torch_rng` instead of `rng`. Still read.
  2  today: the fields of the dataclasses below, `kind`, `format` and `metafew` (version).
"""

from __future__ import annotations

import random
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import torch

import metafew
from metafew.errors import RunError
from metafew.files import reason, write_atomic, write_error

FORMAT = 2
"""The format this version writes."""

READABLE_FORMATS = (1, 2)
"""The formats this version reads."""

Tensors = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# random streams


def rng_states() -> dict[str, Any]:
    """Every global random stream (python, numpy, torch CPU and CUDA) as weights-only-loadable
    values. Training draws nothing from them today (episodes and Reptile's mini-batches are
    functions of (seed, iteration)), but a resumed run restores them so that nothing can drift."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            **numpy_state,
            "state": {
                **numpy_state["state"],
                "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            },
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(saved: dict[str, Any]) -> None:
    """The inverse of `rng_states`; streams a (format 1) checkpoint did not record stay as they are."""
    if "python" in saved:
        version, internal, gauss = saved["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in saved:
        numpy_state = saved["numpy"]
        key = numpy_state["state"]["key"].numpy().astype(np.uint32)
        np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(saved["torch"])
    if saved.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


# ---------------------------------------------------------------------------------------------
# the records


def _field(state: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str) -> Any:
    """state[key], which must be of `kind`; RunError naming the file otherwise."""
    if key not in state:
        raise RunError(f"checkpoint {source!r} has no {key!r} field: it is damaged or not metafew's")
    value = state[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RunError(
            f"checkpoint {source!r}: field {key!r} holds {type(value).__name__}, not a valid value"
        )
    return value


def _finite(params: Tensors, source: str) -> Tensors:
    """`params`, each a tensor of finite values; RunError naming the first that is not."""
    for key, value in params.items():
        if not isinstance(value, torch.Tensor):
            raise RunError(f"checkpoint {source!r}: parameter {key!r} is not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise RunError(
                f"checkpoint {source!r} holds non-finite weights (NaN or Inf in {key!r}): it is from a "
                "diverged run; use another checkpoint (last.prev.pt, best.pt) or retrain"
            )
    return params


@dataclass(frozen=True)
class MetaCheckpoint:
    """Everything a bit-identical continuation of meta-training needs. MAML++'s annealing and the
    outer-lr schedule are functions of `iteration`, the episode streams of (seed, episode index),
    so weights, optimizer state, iteration and random streams restore them all."""

    KIND: ClassVar[str] = "meta"

    iteration: int
    best_accuracy: float | None
    best_iteration: int
    params: Tensors
    train_classes: int
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    config: dict[str, Any]

    def to_state(self) -> dict[str, Any]:
        """What torch.save writes (CPU tensors, weights-only loadable)."""
        return {"kind": self.KIND, **asdict(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str) -> MetaCheckpoint:
        """The record in a loaded file (format 1 or 2); RunError if a field is missing or wrong."""
        if state.get("kind", cls.KIND) != cls.KIND:
            raise RunError(f"checkpoint {source!r} holds a {state['kind']} model, not meta-training weights")
        rng = state.get("rng")
        if rng is None and "torch_rng" in state:  # the oldest format-1 files
            rng = {"torch": state["torch_rng"]}
        best = state.get("best_accuracy")
        return cls(
            iteration=_field(state, "iteration", int, source),
            best_accuracy=None
            if best is None
            else float(_field(state, "best_accuracy", (int, float), source)),
            best_iteration=_field(state, "best_iteration", int, source),
            params=_finite(_field(state, "params", dict, source), source),
            train_classes=_field(state, "train_classes", int, source),
            optimizer=_field(state, "optimizer", dict, source),
            rng=_field({"rng": rng}, "rng", dict, source),
            config=_field(state, "config", dict, source),
        )


@dataclass(frozen=True)
class FinetunedCheckpoint:
    """M_finetune: adapted parameters, the BatchNorm statistics of the labeled pictures under them
    (frozen, so that each prediction depends on its own picture only), class names, the run's
    config and the number of meta-train classes (the model's shape depends on it). `others`: the
    further members of a seed ensemble (finetune.members), each (params, stats); files written
    before ensembles have none."""

    KIND: ClassVar[str] = "finetuned"

    params: Tensors
    stats: list[tuple[torch.Tensor, torch.Tensor]]
    classes: list[str]
    config: dict[str, Any]
    train_classes: int
    others: list[tuple[Tensors, list[tuple[torch.Tensor, torch.Tensor]]]] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        """What torch.save writes (CPU tensors, weights-only loadable)."""
        return {
            "kind": self.KIND,
            **_member_state(self.params, self.stats),
            "classes": list(self.classes),
            "config": self.config,
            "train_classes": self.train_classes,
            "others": [_member_state(p, s) for p, s in self.others],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str) -> FinetunedCheckpoint:
        """The record in a loaded file; RunError if a field is missing or wrong."""
        others = _field({"others": state.get("others", [])}, "others", list, source)
        return cls(
            *_member(state, source),
            classes=[str(c) for c in _field(state, "classes", list, source)],
            config=_field(state, "config", dict, source),
            train_classes=_field(state, "train_classes", int, source),
            others=[_member(_field({"member": m}, "member", dict, source), source) for m in others],
        )


def _member_state(params: Tensors, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """One ensemble member as saved: CPU tensors."""
    return {
        "params": {k: v.cpu() for k, v in params.items()},
        "stats": [[m.cpu(), v.cpu()] for m, v in stats],
    }


def _member(state: dict[str, Any], source: str) -> tuple[Tensors, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(params, stats) of one saved member; RunError if missing or wrong."""
    stats = _field(state, "stats", list, source)
    return _finite(_field(state, "params", dict, source), source), [(m, v) for m, v in stats]


# ---------------------------------------------------------------------------------------------
# files


def previous_checkpoint(path: Path) -> Path:
    """Where `save_checkpoint(path, keep_previous=True)` moves the file it replaces:
    checkpoints/last.pt -> checkpoints/last.prev.pt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """torch.save `state` (stamped with FORMAT and the version) atomically and durably. With
    `keep_previous` the old file becomes `previous_checkpoint(path)`, the fallback when `path` is
    later found corrupt."""
    state = {"format": FORMAT, "metafew": metafew.__version__, **state}

    def write(handle: IO[bytes]) -> None:
        torch.save(state, handle)

    def keep() -> None:
        if keep_previous and path.is_file():
            path.replace(previous_checkpoint(path))

    try:
        write_atomic(path, write, keep)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
        raise write_error(path, exc, "checkpoint ") from None


def save(path: Path, record: MetaCheckpoint | FinetunedCheckpoint, keep_previous: bool = False) -> None:
    """Write a checkpoint record (see save_checkpoint)."""
    save_checkpoint(path, record.to_state(), keep_previous)


def _check_zip(path: Path) -> None:
    """torch.load does not verify the zip CRCs: a flipped bit in the data would load silently."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise RunError(f"checkpoint {str(path)!r} is corrupt or unsafe ({exc})") from None
    if bad is not None:
        raise RunError(f"checkpoint {str(path)!r} is corrupt or unsafe (CRC mismatch in {bad!r})")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checked contents of a checkpoint file of a readable format, as a dict."""
    if not path.is_file():
        raise RunError(f"checkpoint {str(path)!r} not found")
    _check_zip(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise RunError(f"checkpoint {str(path)!r} is corrupt or unsafe ({reason(exc)})") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        found = state.get("format") if isinstance(state, dict) else None
        hint = f" (format {found!r}; this metafew reads {READABLE_FORMATS})" if found is not None else ""
        raise RunError(f"checkpoint {str(path)!r} is not a metafew checkpoint{hint}")
    return state


def load_meta(path: Path) -> MetaCheckpoint:
    """A meta-training checkpoint (checkpoints/*.pt)."""
    return MetaCheckpoint.from_state(load_checkpoint(path), str(path))


def load_finetuned(folder: Path) -> FinetunedCheckpoint:
    """The fine-tuned model in `folder` (<run>/finetune/<id>/model.pt)."""
    state = load_checkpoint(folder / "model.pt")
    if state.get("kind") != FinetunedCheckpoint.KIND:
        raise RunError(f"{str(folder)!r} holds no fine-tuned model; run `metafew finetune` first")
    return FinetunedCheckpoint.from_state(state, str(folder / "model.pt"))


def load_resume_checkpoint(run: Path) -> tuple[MetaCheckpoint | None, str | None]:
    """The checkpoint `--resume` continues from, and a one-line note when it is not last.pt.

    last.pt; if it is missing, truncated or corrupt, the previous one (last.prev.pt). A run
    whose checkpoints/ holds no checkpoint at all (stopped before its first one) gives None:
    it starts over from iteration 0 in its own folder.
    """
    last = run / "checkpoints" / "last.pt"
    previous = previous_checkpoint(last)
    if not any((run / "checkpoints").glob("*.pt")):
        return None, f"{str(run)!r} has no checkpoint yet: starting it over from iteration 0"
    try:
        return load_meta(last), None
    except RunError as exc:
        if not previous.is_file():
            raise
        problem = exc
    try:
        state = load_meta(previous)
    except RunError:
        raise problem from None
    return state, (
        f"{problem}; falling back to the previous checkpoint {previous.name} (iteration {state.iteration})"
    )
