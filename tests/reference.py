"""Tiny float64 models and random episodes shared by the algorithm tests (hand-written
references need exact arithmetic, not realistic data)."""

from __future__ import annotations

import torch

from metafew.models import Conv4
from metafew.tasks import Episode

WAYS, SHOTS, QUERIES, SIZE = 3, 2, 2, 8


def tiny_model(head: str = "linear", pool: str = "max") -> Conv4:
    """A seeded 2-block Conv-4 with 4 filters on 8x8 pictures, in float64."""
    torch.manual_seed(0)
    return Conv4(in_channels=1, image_size=SIZE, ways=WAYS, hidden=4, layers=2, head=head, pool=pool).double()


def random_episodes(
    count: int, seed: int = 1, interleave_support: bool = False, classes: int | None = None
) -> list[Episode]:
    """`count` episodes of uniform noise pictures; support labels grouped by class (0,0,1,1,..)
    or, with `interleave_support`, interleaved (0,1,2,0,1,2) so no code may assume the order.
    Episode i's dataset classes are 0..WAYS-1, or WAYS random ones of `classes` if given."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        sx = torch.rand(WAYS * SHOTS, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        qx = torch.rand(WAYS * QUERIES, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        labels = torch.arange(WAYS)
        sy = labels.repeat(SHOTS) if interleave_support else labels.repeat_interleave(SHOTS)
        qy = labels.repeat_interleave(QUERIES)
        drawn = labels if classes is None else torch.randperm(classes, generator=g)[:WAYS]
        out.append(Episode(sx, sy, qx, qy, drawn))
    return out
