"""How long work reports how far it got, without knowing who listens: library code calls an
`Advance` as it goes; the CLI draws a bar with an ETA on a terminal, or writes a log line now and
then (cluster job logs). No output here."""

from __future__ import annotations

from collections.abc import Callable

Advance = Callable[[str, int, int], None]
"""advance(what, done, total): `done` of `total` units of the phase named `what` are finished."""


def silent(what: str, done: int, total: int) -> None:
    """The Advance of callers that show nothing."""
