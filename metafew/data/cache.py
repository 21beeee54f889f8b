"""The decoded-tensor cache: a dataset decoded once loads in about a second the next time.

An entry is one file, `<cache>/<dataset>/<key>.pt`, holding the uint8 tensors, class names and
provenance of a `FewShotData`. Its key is the SHA-256 of everything the tensors depend on: the
cache format, metafew's version, the data config (sizes, splits, ...) and, for every source file,
its resolved path, size and modification time. Touching, replacing or moving a source file, or
changing any preprocessing setting, therefore misses the cache and decodes afresh; stale entries
are never read. Entries are written atomically and loaded with `weights_only=True`; an entry
that cannot be read is ignored (and rebuilt), and a cache that cannot be written (read-only or
full disk) only costs the next run its speed-up.

The cache lives in $METAFEW_CACHE, else $XDG_CACHE_HOME/metafew, else ~/.cache/metafew.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from metafew import __version__
from metafew.data.base import FewShotData, LabeledImages, UnlabeledImages

CACHE_ENV = "METAFEW_CACHE"
FORMAT = 1


def cache_root() -> Path:
    """Folder of the cache (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metafew"


def _files(paths: Iterable[Path]) -> list[Path]:
    """`paths` with folders replaced by every file below them (sorted, hidden ones skipped)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            below = (p for p in path.rglob("*") if p.is_file())  # hidden below `path`, not above it
            out.extend(
                sorted(p for p in below if not any(x.startswith(".") for x in p.relative_to(path).parts))
            )
        elif path.exists():
            out.append(path)
    return out


def fingerprint(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(resolved path, size, mtime in ns) of every source file: cheap to compute, and any
    change to a file's bytes that goes through the file system changes it."""
    stats = [(p.resolve(), p.stat()) for p in _files(paths)]
    return [(str(path), stat.st_size, stat.st_mtime_ns) for path, stat in stats]


def cache_key(dataset: str, settings: dict[str, Any], sources: Iterable[Path]) -> str:
    """SHA-256 of what a decoded dataset depends on."""
    payload = {
        "format": FORMAT,
        "metafew": __version__,
        "dataset": dataset,
        "settings": settings,
        "files": fingerprint(sources),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def entry_path(dataset: str, key: str) -> Path:
    return cache_root() / dataset / f"{key[:40]}.pt"


def _pack_labeled(images: LabeledImages | None) -> dict[str, Any] | None:
    if images is None:
        return None
    return {"images": images.images, "labels": images.labels, "classes": images.classes}


def _unpack_labeled(packed: dict[str, Any] | None) -> LabeledImages | None:
    if packed is None:
        return None
    return LabeledImages(packed["images"], packed["labels"], list(packed["classes"]))


def pack(data: FewShotData) -> dict[str, Any]:
    """`data` as plain containers of tensors and strings (loadable with weights_only=True)."""
    unlabeled = data.unlabeled
    return {
        "format": FORMAT,
        "meta_train": _pack_labeled(data.meta_train),
        "meta_val": _pack_labeled(data.meta_val),
        "novel": _pack_labeled(data.novel),
        "unlabeled": None
        if unlabeled is None
        else {"images": unlabeled.images, "names": unlabeled.names, "answers": unlabeled.answers},
        "provenance": json.dumps(data.provenance),
    }


def unpack(packed: dict[str, Any]) -> FewShotData:
    """Inverse of `pack`."""
    raw = packed["unlabeled"]
    unlabeled = (
        None
        if raw is None
        else UnlabeledImages(
            raw["images"], list(raw["names"]), None if raw["answers"] is None else list(raw["answers"])
        )
    )
    train, novel = _unpack_labeled(packed["meta_train"]), _unpack_labeled(packed["novel"])
    assert train is not None and novel is not None  # written by pack()
    return FewShotData(
        train, _unpack_labeled(packed["meta_val"]), novel, unlabeled, json.loads(packed["provenance"])
    )


def load_entry(path: Path) -> FewShotData | None:
    """The cached dataset at `path`, or None when absent or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        packed = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(packed, dict) or packed.get("format") != FORMAT:
            return None
        return unpack(packed)
    except Exception:  # any unreadable entry is a cache miss, never an error
        return None


def store_entry(path: Path, data: FewShotData) -> bool:
    """Write `data` to `path` atomically; False (and nothing left behind) when it cannot."""
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with part.open("wb") as handle:
            torch.save(pack(data), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):  # e.g. the cache's parent is a file: no part to remove
            part.unlink(missing_ok=True)
        return False
