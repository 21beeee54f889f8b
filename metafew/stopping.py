"""Stopping on a signal. Commands check a flag at safe points (after an outer step, between
phases and chunks); inside work that can be thrown away (a validation, test episodes, a
prediction: nothing of it is written until it ends) a signal stops at once instead, so that a
slow chunk on a loaded machine does not hold the exit back.

Library functions take `stop_requested: Callable[[], bool]`; a `StopSignal` is one such callable
that also knows the `abandonable` regions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from metafew.errors import Interrupted


class StopSignal:
    """The flag a signal sets (`receive` is the handler); remembers which signal. Within
    `abandonable()`, receiving raises Interrupted in the main thread at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._abandonable = 0

    def __call__(self) -> bool:
        return self.signal is not None

    def receive(self, signum: int, frame: Any = None) -> None:
        """The signal handler: set the flag; raise Interrupted inside an abandonable region."""
        self.signal = signum
        if self._abandonable:
            raise Interrupted("stopped")

    @contextmanager
    def abandonable(self) -> Iterator[None]:
        """A region whose work is thrown away if a signal comes: it raises Interrupted at once.

        The Interrupted can land anywhere, also inside torch's own bookkeeping (torch.func's
        transform stack, seen as "INTERNAL ASSERT FAILED ... DynamicLayer.cpp" under load): any
        error that leaves the region after a signal came is that interruption, reported as such.
        The region's work is dropped, and the command only writes and exits after it."""
        self._abandonable += 1
        try:
            if self.signal is not None:
                raise Interrupted("stopped")
            yield
        except Interrupted:
            raise
        except Exception:
            if self.signal is None:
                raise
            raise Interrupted("stopped") from None
        finally:
            self._abandonable -= 1


@contextmanager
def abandonable(stop_requested: Callable[[], bool]) -> Iterator[None]:
    """`stop_requested.abandonable()` where it is a StopSignal; otherwise nothing (a plain
    callable is only checked at the caller's safe points)."""
    if isinstance(stop_requested, StopSignal):
        with stop_requested.abandonable():
            yield
    else:
        yield
