"""metafew.tasks: the seeded N-way K-shot episode sampler and its count checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metafew.config_load import load_config
from metafew.data import LabeledImages, to_float
from metafew.errors import ConfigError, DataError
from metafew.tasks import Episode, EpisodeSampler, check_counts, stack_episodes


def labeled(counts: list[int], size: int = 3, channels: int = 1) -> LabeledImages:
    """Classes c0.. with `counts[c]` images; image i is filled with the value i (its own index),
    so every picture of an episode can be traced back to the dataset row it came from.
    Rows are interleaved between classes so that row order says nothing about the class."""
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    n = len(labels)
    assert n <= 256
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, channels, size, size)
    return LabeledImages(images.contiguous(), labels, [f"c{c}" for c in range(len(counts))])


def rows_of(x: torch.Tensor) -> list[int]:
    """Dataset rows of float images built by `labeled` (value i/255 everywhere)."""
    rows = torch.round(x[:, 0, 0, 0] * 255).long()
    assert torch.equal(x, (rows.float() / 255)[:, None, None, None].expand_as(x))
    return rows.tolist()


@pytest.fixture
def data() -> LabeledImages:
    return labeled([7, 6, 8, 6, 9, 7])


def test_episode_shapes_and_dtypes(data: LabeledImages) -> None:
    sampler = EpisodeSampler(data, ways=4, shots=2, queries=3, seed=0)
    ep = sampler.episode(0)
    assert ep.support_x.shape == (4 * 2, 1, 3, 3)
    assert ep.query_x.shape == (4 * 3, 1, 3, 3)
    assert ep.support_y.shape == (8,) and ep.query_y.shape == (12,)
    assert ep.classes.shape == (4,)
    assert ep.support_x.dtype == torch.float32 and ep.query_x.dtype == torch.float32
    assert ep.support_y.dtype == torch.int64 and ep.query_y.dtype == torch.int64
    assert ep.as_tuple() == (ep.support_x, ep.support_y, ep.query_x, ep.query_y)


def test_episode_rgb_shape() -> None:
    ep = EpisodeSampler(labeled([4, 4, 4], size=5, channels=3), 3, 1, 2, seed=0).episode(0)
    assert ep.support_x.shape == (3, 3, 5, 5) and ep.query_x.shape == (6, 3, 5, 5)


def test_labels_are_class_positions_repeated(data: LabeledImages) -> None:
    ep = EpisodeSampler(data, ways=3, shots=2, queries=4, seed=0).episode(5)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert ep.query_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_float_images_in_unit_range() -> None:
    images = torch.tensor([0, 255, 128, 7], dtype=torch.uint8)[:, None, None, None].expand(4, 1, 2, 2)
    data = LabeledImages(images.contiguous(), torch.tensor([0, 0, 1, 1]), ["a", "b"])
    ep = EpisodeSampler(data, ways=2, shots=1, queries=1, seed=0).episode(0)
    everything = torch.cat([ep.support_x, ep.query_x])
    assert everything.min() >= 0.0 and everything.max() <= 1.0
    assert sorted(everything[:, 0, 0, 0].tolist()) == pytest.approx([0.0, 7 / 255, 128 / 255, 1.0])


@pytest.mark.parametrize("i", range(20))
def test_indices_are_disjoint_and_from_the_drawn_classes(data: LabeledImages, i: int) -> None:
    sampler = EpisodeSampler(data, ways=4, shots=2, queries=3, seed=3)
    classes, support, query = sampler.indices(i)
    assert classes.shape == (4,) and support.shape == (4, 2) and query.shape == (4, 3)
    assert len(set(classes.tolist())) == 4
    assert all(0 <= c < len(data.classes) for c in classes)
    for k, c in enumerate(classes):
        picks = np.concatenate([support[k], query[k]])
        assert len(set(picks.tolist())) == 5  # no image twice, support and query disjoint
        assert (data.labels[torch.from_numpy(picks)] == int(c)).all()


@pytest.mark.parametrize("i", [0, 1, 7, 123])
def test_episode_images_belong_to_the_drawn_classes(data: LabeledImages, i: int) -> None:
    sampler = EpisodeSampler(data, ways=3, shots=2, queries=2, seed=1)
    ep = sampler.episode(i)
    classes, support, query = sampler.indices(i)
    assert ep.classes.tolist() == classes.tolist()
    assert rows_of(ep.support_x) == support.reshape(-1).tolist()
    assert rows_of(ep.query_x) == query.reshape(-1).tolist()
    for x, y in ((ep.support_x, ep.support_y), (ep.query_x, ep.query_y)):
        rows = torch.tensor(rows_of(x))
        # the dataset label of each picture is the drawn class at its episode label
        assert torch.equal(data.labels[rows], ep.classes[y])
        assert torch.equal(to_float(data.images[rows]), x)


def test_same_seed_and_index_give_the_same_episode(data: LabeledImages) -> None:
    a = EpisodeSampler(data, ways=3, shots=2, queries=2, seed=5)
    b = EpisodeSampler(data, ways=3, shots=2, queries=2, seed=5)
    for i in (0, 3, 3, 1000):
        ea, eb = a.episode(i), b.episode(i)
        for ta, tb in zip(ea.as_tuple(), eb.as_tuple()):
            assert torch.equal(ta, tb)
        assert torch.equal(ea.classes, eb.classes)
    # the order of calls does not matter: episode 3 after others is still episode 3
    first = a.episode(3).query_x
    a.episode(999)
    a.batch(0, 4)
    assert torch.equal(a.episode(3).query_x, first)


def test_different_index_or_seed_gives_different_episodes(data: LabeledImages) -> None:
    sampler = EpisodeSampler(data, ways=3, shots=2, queries=2, seed=5)
    keys = {tuple(np.concatenate([p.reshape(-1) for p in sampler.indices(i)]).tolist()) for i in range(10)}
    assert len(keys) == 10
    other = EpisodeSampler(data, ways=3, shots=2, queries=2, seed=6)
    assert not all(np.array_equal(sampler.indices(i)[1], other.indices(i)[1]) for i in range(5))
    assert not torch.equal(sampler.episode(0).support_x, sampler.episode(1).support_x)


def test_all_classes_and_images_are_used_over_many_episodes(data: LabeledImages) -> None:
    sampler = EpisodeSampler(data, ways=2, shots=1, queries=1, seed=0)
    seen_classes, seen_rows = set(), set()
    for i in range(300):
        classes, support, query = sampler.indices(i)
        seen_classes.update(classes.tolist())
        seen_rows.update(support.reshape(-1).tolist() + query.reshape(-1).tolist())
    assert seen_classes == set(range(6))
    assert seen_rows == set(range(len(data.labels)))


def test_batch_equals_consecutive_episodes(data: LabeledImages) -> None:
    sampler = EpisodeSampler(data, ways=3, shots=1, queries=2, seed=2)
    for it, size in ((0, 3), (2, 3), (5, 1)):
        batch = sampler.batch(it, size)
        assert len(batch) == size
        for k, ep in enumerate(batch):
            expected = sampler.episode(it * size + k)
            for a, b in zip(ep.as_tuple(), expected.as_tuple()):
                assert torch.equal(a, b)


def test_episode_to_device_keeps_values(data: LabeledImages) -> None:
    ep = EpisodeSampler(data, ways=2, shots=1, queries=1, seed=0).episode(0)
    moved = ep.to("cpu")
    assert isinstance(moved, Episode)
    for a, b in zip(ep.as_tuple(), moved.as_tuple()):
        assert torch.equal(a, b)


def test_stack_episodes_shapes(data: LabeledImages) -> None:
    sampler = EpisodeSampler(data, ways=3, shots=2, queries=4, seed=0)
    episodes = sampler.batch(0, 5)
    sx, sy, qx, qy = stack_episodes(episodes)
    assert sx.shape == (5, 6, 1, 3, 3) and sy.shape == (5, 6)
    assert qx.shape == (5, 12, 1, 3, 3) and qy.shape == (5, 12)
    for t, ep in enumerate(episodes):
        assert torch.equal(sx[t], ep.support_x) and torch.equal(qy[t], ep.query_y)


# ---------------------------------------------------------------------------------------------
# counts


def test_fewer_classes_than_ways() -> None:
    data = labeled([5, 5, 5])
    with pytest.raises(DataError) as info:
        EpisodeSampler(data, ways=5, shots=1, queries=1, seed=0, what="meta_train")
    message = str(info.value)
    assert info.value.exit_code == 3
    assert message.startswith("meta_train:")
    assert "5-way" in message and "at least 5 classes" in message and "found 3" in message
    assert "task.ways" in message


def test_every_short_class_is_listed() -> None:
    data = labeled([5, 2, 6, 3, 4])
    with pytest.raises(DataError) as info:
        check_counts(data, ways=3, per_class=4, what="novel")
    message = str(info.value)
    assert message.startswith("novel:")
    assert "c1 (have 2, need 4)" in message
    assert "c3 (have 3, need 4)" in message
    assert "c0" not in message and "c2" not in message and "c4" not in message
    assert "task.shots" in message and "task.queries" in message


def test_sampler_checks_shots_plus_queries() -> None:
    data = labeled([4, 4, 4])
    EpisodeSampler(data, ways=3, shots=1, queries=3, seed=0)  # exactly enough
    with pytest.raises(
        DataError, match=r"c0 \(have 4, need 5\).*c1 \(have 4, need 5\).*c2 \(have 4, need 5\)"
    ):
        EpisodeSampler(data, ways=3, shots=2, queries=3, seed=0)


def test_check_counts_passes_when_enough() -> None:
    check_counts(labeled([3, 3]), ways=2, per_class=3, what="x")


def test_episode_with_exactly_enough_images_uses_them_all() -> None:
    data = labeled([3, 3])
    sampler = EpisodeSampler(data, ways=2, shots=1, queries=2, seed=0)
    ep = sampler.episode(0)
    assert sorted(rows_of(ep.support_x) + rows_of(ep.query_x)) == list(range(6))


@pytest.mark.parametrize("key", ["train.seed", "eval.seed"])
def test_every_episode_seed_the_config_accepts_works(data: LabeledImages, key: str) -> None:
    try:
        cfg = load_config(None, [f"{key}=-1"])
    except ConfigError:
        return
    seed = cfg.train.seed if key == "train.seed" else cfg.eval.seed
    EpisodeSampler(data, ways=2, shots=1, queries=1, seed=seed).episode(0)
