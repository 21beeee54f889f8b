"""Episodes and the seeded N-way K-shot Q-query episode sampler."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metafew.data import LabeledImages, to_float
from metafew.errors import DataError


@dataclass(frozen=True)
class Episode:
    """One few-shot task; labels are 0..ways-1 in the order the classes were drawn.

    support_x: [ways*shots, C, H, W] float; support_y: [ways*shots] int64;
    query_x: [ways*queries, C, H, W] float; query_y: [ways*queries] int64;
    classes: [ways] indices of the drawn classes in the source dataset; index: the episode's
    position in its sampler's stream (-1 when it comes from elsewhere), so that what an algorithm
    draws for a task can depend on the task itself, not on where a process's share begins.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor
    index: int = -1

    def to(self, device: torch.device | str) -> Episode:
        """The same episode on `device`."""
        sx, sy, qx, qy = (t.to(device, non_blocking=True) for t in self.as_tuple())
        return Episode(sx, sy, qx, qy, self.classes, self.index)

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(support_x, support_y, query_x, query_y)."""
        return self.support_x, self.support_y, self.query_x, self.query_y


def stack_episodes(episodes: list[Episode]) -> tuple[torch.Tensor, ...]:
    """Stack same-shaped episodes along a new leading task dimension (for vmap):
    (support_x [T, ways*shots, C, H, W], support_y [T, ways*shots], query_x, query_y)."""
    return tuple(torch.stack(parts) for parts in zip(*(e.as_tuple() for e in episodes)))


def check_counts(data: LabeledImages, ways: int, per_class: int, what: str) -> None:
    """Raise DataError unless there are >= `ways` classes with >= `per_class` images each,
    listing every class that is short with its have/need counts."""
    if len(data.classes) < ways:
        raise DataError(
            f"{what}: {ways}-way episodes need at least {ways} classes, found {len(data.classes)}; "
            f"lower task.ways or add classes"
        )
    short = [
        f"{name} (have {n}, need {per_class})"
        for name, n in zip(data.classes, data.counts())
        if n < per_class
    ]
    if short:
        raise DataError(
            f"{what}: classes with fewer images than shots + queries: {', '.join(short)}; "
            "add pictures or lower task.shots / task.queries"
        )


class EpisodeSampler:
    """Draws episodes from `data`; episode `i` of stream `seed` is a pure function of
    (seed, i), so a resumed run or a second evaluation sees exactly the same tasks."""

    def __init__(
        self,
        data: LabeledImages,
        ways: int,
        shots: int,
        queries: int,
        seed: int,
        what: str = "dataset",
    ):
        check_counts(data, ways, shots + queries, what)
        self.data, self.ways, self.shots, self.queries, self.seed = data, ways, shots, queries, seed
        self._by_class = [idx.numpy() for idx in data.indices_by_class()]
        self._eligible = np.array([c for c, idx in enumerate(self._by_class) if len(idx) >= shots + queries])

    def indices(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dataset indices of episode `i`: (classes [ways], support [ways, shots], query [ways, queries])."""
        rng = np.random.default_rng([self.seed, i])
        classes = rng.choice(self._eligible, size=self.ways, replace=False)
        picks = np.stack(
            [rng.choice(self._by_class[c], size=self.shots + self.queries, replace=False) for c in classes]
        )
        return classes, picks[:, : self.shots], picks[:, self.shots :]

    def episode(self, i: int) -> Episode:
        """Episode `i` of this stream (float images in [0, 1] on the CPU)."""
        classes, support, query = self.indices(i)
        images = self.data.images
        return Episode(
            support_x=to_float(images[torch.from_numpy(support.reshape(-1))]),
            support_y=torch.arange(self.ways).repeat_interleave(self.shots),
            query_x=to_float(images[torch.from_numpy(query.reshape(-1))]),
            query_y=torch.arange(self.ways).repeat_interleave(self.queries),
            classes=torch.from_numpy(classes),
            index=i,
        )

    def batch(self, iteration: int, size: int) -> list[Episode]:
        """The `size` episodes of meta-batch `iteration` (episodes iteration*size ...)."""
        return [self.episode(iteration * size + k) for k in range(size)]
