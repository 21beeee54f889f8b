"""Loading dataset pickles without letting them run code.

CIFAR-100's `train`/`test`/`meta` files and the mini-ImageNet `*.pkl` caches are pickles, and
unpickling calls whatever callable a file names: a file that names `os.system` runs a shell
command (https://docs.python.org/3/library/pickle.html, "Restricting Globals"). `load_pickle`
resolves only the globals that plain containers and numpy arrays need, each to a fixed object
(never by importing the name), and refuses any other with a DataError that names the file.

Allowed: numpy's array rebuilders as numpy 1.x (`numpy.core.*`) and 2.x (`numpy._core.*`) write
them (`_reconstruct` with `numpy.ndarray` for protocols 0-4, `_frombuffer` for protocol 5,
`scalar` for numpy numbers), `numpy.dtype`, and the builtins that protocols 0-2 use for sets,
bytes and bytearrays (`_codecs.encode` only for latin-1, the one codec pickle itself writes).
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
import struct
from typing import IO, Any

import numpy as np

from metafew.errors import DataError

_multiarray = importlib.import_module(
    "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
)


def _frombuffer(buffer: Any, dtype: Any, shape: tuple[int, ...], order: Any) -> np.ndarray:
    """What numpy's own `_frombuffer` does for protocol-5 pickles, with a copy (the pickle's
    bytes are read-only)."""
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol 2 uses it for bytes (latin-1); other codecs are refused."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise RefusedGlobal(f"it calls _codecs.encode with codec {encoding!r}")
    return text.encode("latin-1")


ALLOWED: dict[tuple[str, str], Any] = {
    **{
        (f"numpy.{core}.multiarray", name): getattr(_multiarray, name)
        for core in ("core", "_core")
        for name in ("_reconstruct", "scalar")
    },
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "set"): set,  # Python 2's name for builtins
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "bytearray"): bytearray,
}
"""(module, name) a pickle may refer to -> the object it gets."""


DAMAGED = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    struct.error,
    OverflowError,
    MemoryError,
    RecursionError,
)
"""What unpickling a truncated or garbled file raises."""


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside `ALLOWED`."""


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in `ALLOWED`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"it refers to {module}.{name}, which is not allowed") from None


def load_pickle(source: bytes | IO[bytes], where: str, encoding: str = "bytes") -> Any:
    """Unpickle `source` (bytes or a binary file, named `where` in errors) with only the
    `ALLOWED` globals. `encoding` decodes Python 2 strings ("bytes" keeps them bytes, as the
    CIFAR pages ask). A refused global or a damaged pickle raises DataError naming `where`."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return RestrictedUnpickler(handle, encoding=encoding).load()
    except RefusedGlobal as exc:
        raise DataError(
            f"refusing to unpickle {where!r}: {exc} (a pickle can run code; this is not a plain "
            "data file of the dataset): delete it and fetch the official file"
        ) from None
    except DAMAGED as exc:
        raise DataError(
            f"cannot read the pickle {where!r} ({type(exc).__name__}: {exc}); the file is truncated "
            "or damaged: delete it and fetch it again"
        ) from None
