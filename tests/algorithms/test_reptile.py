"""Reptile against hand-written torch loops (float64, plain modules and torch.optim), its
mini-batch order, serial vs batched meta-batches, and the linear ε schedule."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, random_episodes, tiny_model

from metafew import engine
from metafew.algorithms import Reptile
from metafew.algorithms.reptile import minibatch_indices
from metafew.checkpoints import load_checkpoint, load_meta
from metafew.config import AlgorithmConfig, Config, ReptileConfig
from metafew.config_load import load_config
from metafew.data import load_data
from metafew.errors import Interrupted
from metafew.functional import Params, adam_init, adam_step
from metafew.models import Conv4, make_forward
from metafew.runs import create_run

CONFIGS = REPO / "configs"


def _reptile(
    model: Conv4,
    optimizer: str = "sgd",
    batch: int = 4,
    use_query: bool = True,
    batching: str = "loop",
    chunk: int = 0,
) -> Reptile:
    inner = ReptileConfig(inner_optimizer=optimizer, inner_batch_size=batch, use_query=use_query)
    lr = 0.1 if optimizer == "sgd" else 0.01
    cfg = AlgorithmConfig(inner_lr=lr, inner_steps=3, reptile=inner)
    return Reptile(cfg, make_forward(model), batching, chunk, seed=3)


def hand_adapted(
    model: Conv4, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor, cfg: AlgorithmConfig
) -> Params:
    """φ from a deep copy of the model trained with torch.optim on x[rows of batches]."""
    phi = copy.deepcopy(model)
    if cfg.reptile.inner_optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(phi.parameters(), lr=cfg.inner_lr)
    else:
        opt = torch.optim.Adam(phi.parameters(), lr=cfg.inner_lr, betas=(0.0, 0.999), eps=1e-8)
    for idx in batches:
        opt.zero_grad()
        F.cross_entropy(phi(x[idx]), y[idx]).backward()
        opt.step()
    return {k: v.detach() for k, v in phi.named_parameters()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("batch", "use_query"), [(4, True), (0, True), (4, False)])
def test_sgd_step_of_size_one_lands_on_the_mean_adapted_weights(
    optimizer: str, batch: int, use_query: bool
) -> None:
    model, episodes = tiny_model(), random_episodes(3)
    reptile = _reptile(model, optimizer, batch, use_query)
    params = {k: torch.nn.Parameter(v.detach().clone()) for k, v in model.named_parameters()}
    step = reptile.meta_gradients(params, episodes, iteration=7)
    phis = []
    for i, ep in enumerate(episodes):
        x = torch.cat([ep.support_x, ep.query_x]) if use_query else ep.support_x
        y = torch.cat([ep.support_y, ep.query_y]) if use_query else ep.support_y
        phis.append(hand_adapted(model, x, y, reptile.task_batches(ep, 7, i), reptile.cfg))
    outer = torch.optim.SGD(params.values(), lr=1.0)  # the engine's step: θ − 1·(θ − mean φ)
    for k, p in params.items():
        p.grad = step.grads[k]
    outer.step()
    # Adam divides by √v + 1e-8, so the rounding noise in the (mathematically zero) gradient of
    # a conv bias followed by BatchNorm moves that bias by up to ~lr·noise/1e-8 ≈ 1e-10
    atol = 1e-12 if optimizer == "sgd" else 1e-8
    for k, p in params.items():
        expected = sum(phi[k] for phi in phis) / len(phis)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=atol)


def test_reported_losses_are_the_query_losses_of_the_adapted_weights() -> None:
    model, episodes = tiny_model(), random_episodes(2)
    reptile = _reptile(model)
    step = reptile.meta_gradients(dict(model.named_parameters()), episodes, iteration=0)
    for i, ep in enumerate(episodes):
        x, y = torch.cat([ep.support_x, ep.query_x]), torch.cat([ep.support_y, ep.query_y])
        phi = hand_adapted(model, x, y, reptile.task_batches(ep, 0, i), reptile.cfg)
        logits = torch.func.functional_call(model, phi, (ep.query_x,))
        assert float(step.losses[i]) == pytest.approx(float(F.cross_entropy(logits, ep.query_y)), rel=1e-10)
        assert float(step.accuracies[i]) == pytest.approx(
            float((logits.argmax(-1) == ep.query_y).double().mean())
        )
    assert step.grads.keys() == dict(model.named_parameters()).keys()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("batching", "chunk"), [("vmap", 0), ("vmap", 2)])
def test_batched_tasks_give_the_same_pseudo_gradient_as_one_at_a_time(
    batching: str, chunk: int, optimizer: str
) -> None:
    model, episodes = tiny_model(), random_episodes(3)
    params = dict(model.named_parameters())
    looped = _reptile(model, optimizer).meta_gradients(params, episodes, 2)
    batched = _reptile(model, optimizer, batching=batching, chunk=chunk).meta_gradients(params, episodes, 2)
    atol = 1e-12 if optimizer == "sgd" else 1e-8  # see the Adam tolerance above
    for k in params:
        torch.testing.assert_close(batched.grads[k], looped.grads[k], rtol=1e-9, atol=atol)
    torch.testing.assert_close(batched.losses, looped.losses)


def test_batched_reptile_averages_the_serial_pseudo_gradients() -> None:
    # full-batch inner steps: the mini-batch order plays no part, so each task's φ is the same
    # whether it runs alone (serial Reptile, meta_batch_size 1) or in a meta-batch
    model, episodes = tiny_model(), random_episodes(3)
    reptile = _reptile(model, batch=0)
    params = dict(model.named_parameters())
    batched = reptile.meta_gradients(params, episodes, 0)
    serial = [reptile.meta_gradients(params, [ep], i) for i, ep in enumerate(episodes)]
    for k in params:
        expected = sum(s.grads[k] for s in serial) / len(serial)
        torch.testing.assert_close(batched.grads[k], expected, rtol=1e-10, atol=1e-12)


def test_sgd_adapt_equals_a_hand_written_sgd_loop() -> None:
    # the support (6 pictures) is smaller than the mini-batch (10): every step uses all of it
    model, ep = tiny_model(), random_episodes(1)[0]
    reptile = _reptile(model, "sgd", batch=10)
    adapted = reptile.adapt(dict(model.named_parameters()), ep.support_x, ep.support_y, steps=4, lr=0.2)
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    for _ in range(4):
        logits = torch.func.functional_call(model, dict(zip(names, theta)), (ep.support_x,))
        grads = torch.autograd.grad(F.cross_entropy(logits, ep.support_y), theta)
        theta = [(w - 0.2 * g).detach().requires_grad_() for w, g in zip(theta, grads)]
    for name, w in zip(names, theta):
        torch.testing.assert_close(adapted[name], w.detach(), rtol=1e-10, atol=1e-12)


def test_adapt_uses_the_algorithms_own_step_size_and_ignores_algo_tensors() -> None:
    model, ep = tiny_model(), random_episodes(1)[0]
    reptile = _reptile(model, "adam", batch=4)
    params = dict(model.named_parameters())
    own = reptile.adapt(params, ep.support_x, ep.support_y, steps=2)
    explicit = reptile.adapt({**params, "algo.x": torch.ones(1)}, ep.support_x, ep.support_y, 2, 0.01)
    assert own.keys() == params.keys()
    for k in params:
        torch.testing.assert_close(own[k], explicit[k])
    unchanged = reptile.adapt(params, ep.support_x, ep.support_y, steps=0)
    assert all(torch.equal(unchanged[k], params[k]) for k in params)


def test_functional_adam_equals_torch_adam() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    target = torch.randn(5, 3, generator=g, dtype=torch.float64)
    reference = w.clone().requires_grad_()
    opt = torch.optim.Adam([reference], lr=0.05, betas=(0.9, 0.99), eps=1e-6)
    params: Params = {"w": w}
    state = adam_init(params)
    for _ in range(5):
        opt.zero_grad()
        ((reference - target) ** 4).sum().backward()
        opt.step()
        grads = {"w": 4 * (params["w"] - target) ** 3}
        params, state = adam_step(params, grads, state, lr=0.05, betas=(0.9, 0.99), eps=1e-6)
    torch.testing.assert_close(params["w"], reference.detach(), rtol=1e-12, atol=1e-14)


def test_mini_batches_cycle_through_permutations_seeded_by_iteration_and_task() -> None:
    model, ep = tiny_model(), random_episodes(1)[0]
    reptile = _reptile(model, batch=4)  # 12 pictures (support + query), 3 steps of 4: one pass
    order = reptile.task_batches(ep, 5, 1)
    assert order.shape == (3, 4)
    assert sorted(order.flatten().tolist()) == list(range(12))
    assert torch.equal(order, _reptile(model, batch=4).task_batches(ep, 5, 1))
    assert not torch.equal(order, reptile.task_batches(ep, 6, 1))
    assert not torch.equal(order, reptile.task_batches(ep, 5, 0))
    params = dict(model.named_parameters())
    first, again = reptile.meta_gradients(params, [ep], 5), reptile.meta_gradients(params, [ep], 5)
    assert all(torch.equal(first.grads[k], again.grads[k]) for k in params)


def test_minibatch_indices_start_a_new_permutation_when_a_pass_ends() -> None:
    rows = minibatch_indices(5, 2, 6, np.random.default_rng(0))  # 12 indices: 2 passes + 2
    flat = rows.flatten().tolist()
    assert sorted(flat[:5]) == sorted(flat[5:10]) == list(range(5))
    assert torch.equal(minibatch_indices(5, 0, 3, np.random.default_rng(0)), torch.arange(5).repeat(3, 1))
    assert minibatch_indices(5, 8, 2, np.random.default_rng(0)).shape == (2, 5)


def test_linear_epsilon_schedule() -> None:
    cfg = load_config(None, ["train.optimizer=sgd", "train.lr_schedule=linear", "train.outer_lr=1.0"])
    cfg.train.iterations = 10
    assert [engine.outer_lr(cfg, i) for i in (0, 5, 9)] == pytest.approx([1.0, 0.5, 0.1])
    cfg.train.min_lr_fraction = 0.2
    assert engine.outer_lr(cfg, 5) == pytest.approx(0.6)
    assert isinstance(engine.build_optimizer(cfg, {"w": torch.nn.Parameter(torch.ones(1))}), torch.optim.SGD)


def test_a_resumed_run_is_identical_to_an_uninterrupted_one(tiny_cfg: Config) -> None:
    tiny_cfg.algorithm.name = "reptile"
    tiny_cfg.algorithm.inner_lr = 0.001
    tiny_cfg.algorithm.inner_steps = 3
    tiny_cfg.algorithm.reptile.inner_batch_size = 5
    tiny_cfg.train.optimizer, tiny_cfg.train.lr_schedule, tiny_cfg.train.outer_lr = "sgd", "linear", 1.0
    tiny_cfg.runtime.batching = "vmap"
    data = load_data(tiny_cfg.data)
    straight = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, data, straight)
    resumed = create_run(tiny_cfg, "cpu")
    done = [0]  # a stop that arrives once the second step is done

    def progress(iteration: int, total: int, record: dict[str, float]) -> None:
        done[0] = iteration

    with pytest.raises(Interrupted, match="after iteration 2"):
        engine.train(tiny_cfg, data, resumed, progress=progress, stop_requested=lambda: done[0] >= 2)
    engine.train(tiny_cfg, data, resumed, resume=load_meta(resumed / "checkpoints" / "last.pt"))
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["params"]
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")["params"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_shipped_config_is_batched_reptile_with_annealed_epsilon() -> None:
    cfg = load_config(CONFIGS / "reptile_5w5s.yaml")
    assert cfg.algorithm.name == "reptile" and cfg.train.meta_batch_size > 1
    assert (cfg.train.optimizer, cfg.train.lr_schedule) == ("sgd", "linear")
