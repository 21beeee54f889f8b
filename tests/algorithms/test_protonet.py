"""Prototypical Networks against hand-written references (float64): prototypes, distances, the
prototype head and the meta-gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, WAYS, assert_gradient_of_hand_written_loss, random_episodes, tiny_model

from metafew import engine
from metafew.algorithms import ProtoNet, build_algorithm
from metafew.algorithms.protonet import prototype_head, prototypes, squared_distances
from metafew.config import Config
from metafew.config_load import load_config
from metafew.data import load_data
from metafew.errors import ConfigError
from metafew.models import Conv4, make_forward
from metafew.runs import create_run, read_metrics
from metafew.tasks import Episode

CONFIGS = REPO / "configs"


def _protonet(model: Conv4, batching: str = "loop", chunk: int = 0) -> ProtoNet:
    return ProtoNet(make_forward(model), WAYS, "linear", batching, chunk)


def test_prototypes_are_class_means() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(7, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 2, 0, 2, 1])
    centers = prototypes(features, labels, 3)
    for k in range(3):
        torch.testing.assert_close(centers[k], features[labels == k].mean(0))


def test_logits_are_negative_squared_distances_to_the_support_prototypes() -> None:
    model, ep = tiny_model(), random_episodes(1, interleave_support=True)[0]
    with torch.no_grad():
        params = dict(model.named_parameters())
        logits = _protonet(model).logits(params, ep.support_x, ep.support_y, ep.query_x)
        support, query = model(ep.support_x, embed=True), model(ep.query_x, embed=True)
    for n in range(len(ep.query_x)):
        for k in range(WAYS):
            center = support[ep.support_y == k].mean(0)
            distance = float(((query[n] - center) ** 2).sum())
            assert float(logits[n, k]) == pytest.approx(-distance, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(squared_distances(query, support[:2]), torch.cdist(query, support[:2]) ** 2)


def test_the_prototype_head_gives_the_softmax_of_negative_squared_distance() -> None:
    model, ep = tiny_model(), random_episodes(1, interleave_support=True)[0]
    protonet = _protonet(model)
    params = dict(model.named_parameters())
    adapted = protonet.adapt(params, ep.support_x, ep.support_y, steps=3)
    with torch.no_grad():
        via_head = torch.softmax(make_forward(model)(adapted, ep.query_x), -1)
        via_distance = torch.softmax(protonet.logits(params, ep.support_x, ep.support_y, ep.query_x), -1)
    torch.testing.assert_close(via_head, via_distance, rtol=1e-10, atol=1e-12)
    centers = torch.randn(4, 6, dtype=torch.float64)
    head = prototype_head(centers)
    assert head["head.weight"].shape == (4, 6) and head["head.bias"].shape == (4,)


def hand_written_loss(model: Conv4, episodes: list[Episode]) -> torch.Tensor:
    """The mean ProtoNet query loss written with plain module calls and loops."""
    total = torch.zeros((), dtype=torch.float64)
    for ep in episodes:
        support, query = model(ep.support_x, embed=True), model(ep.query_x, embed=True)
        centers = torch.stack([support[ep.support_y == k].mean(0) for k in range(WAYS)])
        logits = -torch.stack([((query - c) ** 2).sum(1) for c in centers], dim=1)
        total = total + F.cross_entropy(logits, ep.query_y)
    return total / len(episodes)


@pytest.mark.parametrize(("batching", "chunk"), [("loop", 0), ("vmap", 0), ("vmap", 2)])
def test_meta_gradient_equals_autograd_of_a_hand_written_loss(batching: str, chunk: int) -> None:
    model, episodes = tiny_model(), random_episodes(3, interleave_support=True)
    params = dict(model.named_parameters())
    step = _protonet(model, batching, chunk).meta_gradients(params, episodes, 0)
    assert_gradient_of_hand_written_loss(step, params, hand_written_loss(model, episodes))


def test_adapt_ignores_steps_and_lr() -> None:
    model, ep = tiny_model(), random_episodes(1, interleave_support=True)[0]
    protonet = _protonet(model)
    params = dict(model.named_parameters())
    a = protonet.adapt(params, ep.support_x, ep.support_y, steps=0)
    b = protonet.adapt(params, ep.support_x, ep.support_y, steps=50, lr=3.0)
    assert a.keys() == params.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert protonet.init_meta_params(params) == {}


def test_a_cosine_head_is_refused_with_a_fix(tiny_cfg: Config) -> None:
    tiny_cfg.algorithm.name, tiny_cfg.model.head = "protonet", "cosine"
    with pytest.raises(ConfigError, match=r"model\.head=linear"):
        build_algorithm(tiny_cfg, make_forward(tiny_model()), 5)


def test_trains_validates_and_evaluates_through_the_engine(tiny_cfg: Config) -> None:
    tiny_cfg.algorithm.name = "protonet"
    tiny_cfg.runtime.batching = "vmap"
    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run)
    records = read_metrics(run)
    assert [r["iteration"] for r in records if "val_accuracy" in r] == [2, 4]
    assert all(0 <= r["val_accuracy"] <= 1 for r in records if "val_accuracy" in r)


def test_the_shipped_config_is_protonet() -> None:
    cfg = load_config(CONFIGS / "protonet_5w5s.yaml")
    assert cfg.algorithm.name == "protonet" and cfg.model.head == "linear"
