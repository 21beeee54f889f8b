"""Baseline / Baseline++ pre-training: global labels, the gradient against a hand-written loss
(float64), and the head fitted at test time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    QUERIES,
    REPO,
    SHOTS,
    SIZE,
    WAYS,
    assert_gradient_of_hand_written_loss,
    random_episodes,
    tiny_model,
)

from metafew import engine
from metafew.algorithms import Pretrain, build_algorithm
from metafew.algorithms.pretrain import fit_head, global_batch, head_logits, init_head
from metafew.config import Config
from metafew.config_load import load_config
from metafew.data import load_data
from metafew.finetuning import finetune
from metafew.learner import build_learner
from metafew.models import Conv4, make_forward
from metafew.runs import create_run, read_metrics

CLASSES = 7
CONFIGS = REPO / "configs"


def _pretrain(model: Conv4, cosine: bool = False, lr: float = 0.5) -> Pretrain:
    return Pretrain(make_forward(model), CLASSES, WAYS, lr, 10.0 if cosine else None, seed=0)


def _separable(ways: int = 4, per_class: int = 5, features: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features (like post-ReLU ones) whose class k is large in feature k."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways).repeat_interleave(per_class)
    x = 0.3 * torch.rand(len(labels), features, generator=g, dtype=torch.float64)
    return x + F.one_hot(labels, features).double(), labels


def test_global_labels_are_the_episodes_class_indices() -> None:
    episodes = random_episodes(2, classes=CLASSES)
    x, y = global_batch(episodes)
    assert x.shape == (2 * WAYS * (SHOTS + QUERIES), 1, SIZE, SIZE)
    n = WAYS * (SHOTS + QUERIES)
    for t, ep in enumerate(episodes):
        torch.testing.assert_close(x[t * n : (t + 1) * n], torch.cat([ep.support_x, ep.query_x]))
        expected = [int(ep.classes[label]) for label in torch.cat([ep.support_y, ep.query_y])]
        assert y[t * n : (t + 1) * n].tolist() == expected


@pytest.mark.parametrize("cosine", [False, True])
def test_gradient_equals_autograd_of_a_hand_written_loss(cosine: bool) -> None:
    model = tiny_model("cosine" if cosine else "linear")
    pretrain, episodes = _pretrain(model, cosine), random_episodes(3, classes=CLASSES)
    params = dict(model.named_parameters())
    params |= {k: v.clone().requires_grad_() for k, v in pretrain.init_meta_params(params).items()}
    step = pretrain.meta_gradients(params, episodes, 0)
    pictures = torch.cat([torch.cat([ep.support_x, ep.query_x]) for ep in episodes])
    labels = torch.cat([ep.classes[torch.cat([ep.support_y, ep.query_y])] for ep in episodes])
    features, w = model(pictures, embed=True), params["algo.head.weight"]
    if cosine:
        logits = 10.0 * (features / features.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T
    else:
        logits = features @ w.T + params["algo.head.bias"]
    assert_gradient_of_hand_written_loss(step, params, F.cross_entropy(logits, labels))


def test_the_global_head_is_deterministic_and_sized_by_the_meta_train_classes() -> None:
    params = dict(tiny_model().named_parameters())
    first, again = (
        _pretrain(tiny_model()).init_meta_params(params),
        _pretrain(tiny_model()).init_meta_params(params),
    )
    assert first.keys() == {"algo.head.weight", "algo.head.bias"}
    assert first["algo.head.weight"].shape == (CLASSES, params["head.weight"].shape[1])
    assert all(torch.equal(first[k], again[k]) for k in first)
    cosine = _pretrain(tiny_model("cosine"), cosine=True).init_meta_params(
        dict(tiny_model("cosine").named_parameters())
    )
    assert cosine.keys() == {"algo.head.weight"}


@pytest.mark.parametrize("cosine", [None, 10.0])
def test_the_fitted_head_separates_a_linearly_separable_support(cosine: float | None) -> None:
    features, labels = _separable()
    head = fit_head(features, labels, ways=4, steps=100, lr=0.5, cosine_scale=cosine)
    assert head.keys() == ({"weight"} if cosine else {"weight", "bias"})
    accuracy = (head_logits(head, features, cosine).argmax(-1) == labels).double().mean()
    assert float(accuracy) == 1.0
    start = init_head(features, labels, 4, cosine is not None)
    losses = [F.cross_entropy(head_logits(h, features, cosine), labels) for h in (start, head)]
    assert float(losses[1]) < float(losses[0])


def test_the_initial_heads_are_zeros_and_imprinted_class_means() -> None:
    features, labels = _separable()
    linear = init_head(features, labels, 4, cosine=False)
    assert not linear["weight"].any() and not linear["bias"].any()
    imprinted = init_head(features, labels, 4, cosine=True)["weight"]
    normalised = F.normalize(features, dim=-1)
    for k in range(4):
        torch.testing.assert_close(imprinted[k], normalised[labels == k].mean(0))
    # imprinting alone already classifies this support (nearest normalised class mean)
    assert bool((head_logits({"weight": imprinted}, features, 10.0).argmax(-1) == labels).all())


@pytest.mark.parametrize("cosine", [False, True])
def test_adapt_fits_only_the_models_head_on_frozen_support_features(cosine: bool) -> None:
    model = tiny_model("cosine" if cosine else "linear")
    pretrain, ep = _pretrain(model, cosine), random_episodes(1, classes=CLASSES)[0]
    params = dict(model.named_parameters())
    params |= pretrain.init_meta_params(params)
    adapted = pretrain.adapt(params, ep.support_x, ep.support_y, steps=20)
    assert adapted.keys() == dict(model.named_parameters()).keys()
    for k in adapted:
        if not k.startswith("head."):
            assert adapted[k] is params[k]
    with torch.no_grad():
        features = model(ep.support_x, embed=True)
    expected = fit_head(features, ep.support_y, WAYS, 20, 0.5, 10.0 if cosine else None)
    for k, v in expected.items():
        torch.testing.assert_close(adapted[f"head.{k}"], v)
    logits = make_forward(model)(adapted, ep.support_x)  # the model's own head uses the fitted one
    torch.testing.assert_close(logits, head_logits(expected, features, 10.0 if cosine else None))


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_trains_validates_and_finetunes_through_the_engine(tiny_cfg: Config, head: str) -> None:
    tiny_cfg.algorithm.name, tiny_cfg.model.head = "pretrain", head
    tiny_cfg.algorithm.inner_lr, tiny_cfg.algorithm.eval_inner_steps = 0.1, 10
    data = load_data(tiny_cfg.data)
    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, data, run)
    assert [r["iteration"] for r in read_metrics(run) if "val_accuracy" in r] == [2, 4]
    learner = build_learner(tiny_cfg, torch.device("cpu"), len(data.meta_train.classes))
    assert learner.params["algo.head.weight"].shape[0] == len(data.meta_train.classes)
    tuned, _ = finetune(tiny_cfg, learner, data.novel)
    assert not any(k.startswith("algo.") for k in tuned.params)


def test_build_algorithm_picks_the_cosine_head_from_the_model_config(tiny_cfg: Config) -> None:
    tiny_cfg.algorithm.name, tiny_cfg.model.head = "pretrain", "cosine"
    algorithm = build_algorithm(tiny_cfg, make_forward(tiny_model("cosine")), 5)
    assert isinstance(algorithm, Pretrain) and algorithm.cosine_scale == tiny_cfg.model.cosine_scale


@pytest.mark.parametrize(
    ("name", "head"), [("pretrain_5w5s.yaml", "linear"), ("baselinepp_5w5s.yaml", "cosine")]
)
def test_the_shipped_configs(name: str, head: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.algorithm.name == "pretrain" and cfg.model.head == head
