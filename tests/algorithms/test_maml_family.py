"""ANIL, Meta-SGD and the MAML++ options (LSLR, BNWB, MSL, DA) against hand-written autograd
references and finite differences (float64, tiny Conv-4), plus the registry and the engine's view
of the `algo.*` tensors."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import random_episodes, tiny_model
from reference import (
    BnOf,
    LrOf,
    constant,
    fresh_leaves,
    query_loss,
    reference_meta_gradient,
    reference_trajectory,
)

from metafew import engine
from metafew.algorithms import MAML, build_algorithm
from metafew.algorithms.maml import msl_weights
from metafew.checkpoints import load_checkpoint
from metafew.config import AlgorithmConfig, Config, MAMLConfig
from metafew.data import load_data
from metafew.evaluation import evaluate
from metafew.finetuning import finetune
from metafew.functional import Params, model_params
from metafew.learner import Learner, build_learner
from metafew.models import Conv4, build_model, make_forward
from metafew.runs import create_run
from metafew.tasks import Episode

LR = 0.3
RTOL, ATOL = 1e-9, 1e-11


# ---------------------------------------------------------------------------------------------
# fixtures (the hand-written reference is in reference.py)


def _algo(
    model: Conv4,
    steps: int = 2,
    first_order: bool = False,
    batching: str = "loop",
    head_only: bool = False,
    per_parameter_lr: bool = False,
    **maml: object,
) -> MAML:
    cfg = AlgorithmConfig(inner_lr=LR, inner_steps=steps, first_order=first_order, maml=MAMLConfig(**maml))
    return MAML(cfg, make_forward(model), batching, 0, head_only, per_parameter_lr)


def _leaves(model: Conv4, algo: MAML | None = None) -> Params:
    """Fresh float64 leaf tensors: the model's parameters and the algorithm's `algo.*` ones."""
    params = fresh_leaves(model)
    if algo is not None:
        extra = algo.init_meta_params(params)
        params |= {k: v.detach().double().clone().requires_grad_() for k, v in extra.items()}
    return params


def _set(params: Params, key: str, value: torch.Tensor | float) -> None:
    with torch.no_grad():
        params[key].copy_(torch.as_tensor(value, dtype=torch.float64).expand_as(params[key]))


def _assert_same(actual: Params, expected: Params, keys: list[str] | None = None) -> None:
    for k in keys if keys is not None else list(expected):
        torch.testing.assert_close(actual[k], expected[k], rtol=RTOL, atol=ATOL, msg=k)


def _head(params: Params) -> list[str]:
    return [k for k in model_params(params) if k.startswith("head.")]


def _body(params: Params) -> list[str]:
    return [k for k in model_params(params) if not k.startswith("head.")]


# ---------------------------------------------------------------------------------------------
# ANIL


def test_anil_adapts_only_the_head_and_leaves_the_body_at_theta() -> None:
    model, ep = tiny_model(), random_episodes(1)[0]
    params = _leaves(model)
    anil = _algo(model, head_only=True)
    assert anil.inner_keys(params) == _head(params)
    adapted = anil.adapt(params, ep.support_x, ep.support_y, steps=2)
    for k in _body(params):
        assert torch.equal(adapted[k], params[k]), k
    expected = reference_trajectory(model, params, ep.support_x, ep.support_y, 2, _head(params), constant(LR))
    _assert_same(adapted, expected[-1], _head(params))
    assert not torch.allclose(adapted["head.weight"], params["head.weight"])


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("first_order", [False, True])
def test_anil_meta_gradient_equals_a_head_only_reference(batching: str, first_order: bool) -> None:
    model, episodes = tiny_model(), random_episodes(2)
    params = _leaves(model)
    step = _algo(model, first_order=first_order, batching=batching, head_only=True).meta_gradients(
        params, episodes
    )
    expected = reference_meta_gradient(
        model, params, episodes, 2, _head(params), constant(LR), first_order=first_order
    )
    _assert_same(step.grads, expected, _head(params))  # the head: MAML restricted to the head
    _assert_same(step.grads, expected, _body(params))  # the body: through the forwards only
    assert all(float(step.grads[k].abs().sum()) > 0 for k in _body(params))


def test_anil_equals_maml_with_a_frozen_body() -> None:
    # Meta-SGD with α = 0 on the body and α = inner_lr on the head is MAML with a frozen body
    model, episodes = tiny_model(), random_episodes(2)
    params = _leaves(model)
    anil = _algo(model, head_only=True).meta_gradients(params, episodes).grads
    frozen_algo = _algo(model, per_parameter_lr=True)
    frozen = _leaves(model, frozen_algo)
    for k in _body(params):
        _set(frozen, f"algo.lr.{k}", 0.0)
    frozen_grads = frozen_algo.meta_gradients(frozen, episodes).grads
    _assert_same(anil, frozen_grads, list(params))
    maml = _algo(model).meta_gradients(params, episodes).grads
    assert not torch.allclose(anil["blocks.0.conv.weight"], maml["blocks.0.conv.weight"], rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# Meta-SGD


def _metasgd_leaves(model: Conv4, algo: MAML, seed: int = 3) -> Params:
    """Meta-SGD leaves with distinct per-element learning rates in [0.1, 0.4)."""
    params = _leaves(model, algo)
    g = torch.Generator().manual_seed(seed)
    for k in model_params(params):
        _set(
            params, f"algo.lr.{k}", 0.1 + 0.3 * torch.rand(params[k].shape, generator=g, dtype=torch.float64)
        )
    return params


def test_metasgd_creates_one_learning_rate_per_element_filled_with_inner_lr() -> None:
    model = tiny_model()
    params = dict(model.named_parameters())
    meta = _algo(model, per_parameter_lr=True).init_meta_params(params)
    assert set(meta) == {f"algo.lr.{k}" for k in params}
    for k, p in params.items():
        lr = meta[f"algo.lr.{k}"]
        assert lr.shape == p.shape and lr.dtype == p.dtype and not lr.requires_grad
        assert torch.equal(lr, torch.full_like(p, LR))


@pytest.mark.parametrize("steps", [1, 2])
def test_metasgd_adapts_elementwise(steps: int) -> None:
    model, ep = tiny_model(), random_episodes(1)[0]
    algo = _algo(model, per_parameter_lr=True)
    params = _metasgd_leaves(model, algo)
    adapted = algo.adapt(params, ep.support_x, ep.support_y, steps)
    weights = model_params(params)
    if steps == 1:  # θ − lr ∘ ∇L_S(θ), spelled out
        loss = F.cross_entropy(model(ep.support_x), ep.support_y)
        grads = dict(zip(weights, torch.autograd.grad(loss, list(model.parameters()))))
        expected = {k: weights[k] - params[f"algo.lr.{k}"] * grads[k] for k in weights}
    else:
        lr_of: LrOf = lambda key, step: params[f"algo.lr.{key}"]  # noqa: E731
        expected = reference_trajectory(
            model, weights, ep.support_x, ep.support_y, steps, list(weights), lr_of
        )[-1]
    _assert_same(adapted, expected)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_metasgd_meta_gradient_equals_the_reference_including_the_learning_rates(batching: str) -> None:
    model, episodes = tiny_model(), random_episodes(2)
    algo = _algo(model, batching=batching, per_parameter_lr=True)
    params = _metasgd_leaves(model, algo)
    lr_of: LrOf = lambda key, step: params[f"algo.lr.{key}"]  # noqa: E731
    expected = reference_meta_gradient(model, params, episodes, 2, list(model_params(params)), lr_of)
    _assert_same(algo.meta_gradients(params, episodes).grads, expected)


def test_metasgd_learning_rate_gradient_matches_finite_differences() -> None:
    model, episodes = tiny_model(), random_episodes(2)
    algo = _algo(model, per_parameter_lr=True)
    params = _metasgd_leaves(model, algo)
    grads = algo.meta_gradients(params, episodes).grads

    def meta_loss(p: Params) -> float:
        with torch.no_grad():
            return float(sum(algo.task_loss(p, *ep.as_tuple())[0] for ep in episodes) / len(episodes))

    eps = 1e-6
    entries = [("algo.lr.blocks.0.conv.weight", (1, 0, 2, 1)), ("algo.lr.blocks.1.norm.bias", (2,))]
    entries += [("algo.lr.head.weight", (0, 5)), ("algo.lr.head.bias", (1,))]
    for key, index in entries:
        shifted = []
        for sign in (1.0, -1.0):
            p = {k: v.detach().clone() for k, v in params.items()}
            p[key][index] += sign * eps
            shifted.append(meta_loss(p))
        numeric = (shifted[0] - shifted[1]) / (2 * eps)
        assert float(grads[key][index]) == pytest.approx(numeric, rel=1e-5, abs=1e-9), key


def test_metasgd_with_equal_learning_rates_is_maml() -> None:
    model, episodes = tiny_model(), random_episodes(2)
    algo = _algo(model, per_parameter_lr=True)
    params = _leaves(model, algo)  # every lr = inner_lr = α
    metasgd = algo.meta_gradients(params, episodes).grads
    maml = _algo(model).meta_gradients(_leaves(model), episodes).grads
    _assert_same(metasgd, maml)


# ---------------------------------------------------------------------------------------------
# LSLR: one learned α per parameter tensor and inner step


def _lslr_leaves(model: Conv4, algo: MAML) -> Params:
    """LSLR leaves with a different α for every (tensor, step)."""
    params = _leaves(model, algo)
    for i, k in enumerate(model_params(params)):
        for step in range(algo.cfg.inner_steps):
            _set(params, f"algo.lr.{k}.{step}", 0.1 + 0.03 * i + 0.1 * step)
    return params


def _lslr_lr_of(params: Params, trained_steps: int) -> LrOf:
    return lambda key, step: params[f"algo.lr.{key}.{min(step, trained_steps - 1)}"]


def test_lslr_creates_one_scalar_per_tensor_and_step() -> None:
    model = tiny_model()
    params = dict(model.named_parameters())
    meta = _algo(model, steps=2, learn_inner_lr=True).init_meta_params(params)
    assert set(meta) == {f"algo.lr.{k}.{s}" for k in params for s in (0, 1)}
    assert all(v.shape == () and float(v) == pytest.approx(LR) for v in meta.values())


def test_lslr_learning_rates_have_their_parameters_dtype() -> None:
    model = tiny_model()
    params = dict(model.named_parameters())
    meta = _algo(model, steps=2, learn_inner_lr=True).init_meta_params(params)
    assert all(meta[f"algo.lr.{k}.{s}"].dtype == p.dtype for k, p in params.items() for s in (0, 1))


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_lslr_adapted_weights_and_meta_gradient_equal_the_reference(batching: str) -> None:
    model, episodes = tiny_model(), random_episodes(2)
    algo = _algo(model, steps=2, batching=batching, learn_inner_lr=True)
    params = _lslr_leaves(model, algo)
    lr_of = _lslr_lr_of(params, 2)
    ep, weights = episodes[0], model_params(params)
    expected = reference_trajectory(model, weights, ep.support_x, ep.support_y, 2, list(weights), lr_of)[-1]
    _assert_same(algo.adapt(params, ep.support_x, ep.support_y, 2), expected)
    grads = algo.meta_gradients(params, episodes).grads
    _assert_same(grads, reference_meta_gradient(model, params, episodes, 2, list(weights), lr_of))
    assert all(float(grads[f"algo.lr.{k}.{s}"]) != 0.0 for k in weights for s in (0, 1))


def test_lslr_reuses_the_last_learning_rate_beyond_the_trained_steps() -> None:
    model, ep = tiny_model(), random_episodes(1)[0]
    algo = _algo(model, steps=2, learn_inner_lr=True)
    params = _lslr_leaves(model, algo)
    weights = model_params(params)
    expected = reference_trajectory(
        model, weights, ep.support_x, ep.support_y, 4, list(weights), _lslr_lr_of(params, 2)
    )[-1]
    _assert_same(algo.adapt(params, ep.support_x, ep.support_y, 4), expected)
    # and it is not the step-0 rate that is reused
    first = reference_trajectory(
        model,
        weights,
        ep.support_x,
        ep.support_y,
        4,
        list(weights),
        lambda k, s: params[f"algo.lr.{k}.{s % 2}"],
    )[-1]
    assert not torch.allclose(expected["head.weight"], first["head.weight"])


# ---------------------------------------------------------------------------------------------
# BNWB: per-step BatchNorm weights and biases


def _norm(params: Params) -> list[str]:
    return [k for k in model_params(params) if ".norm." in k]


def _bnwb_leaves(model: Conv4, algo: MAML, seed: int = 5) -> Params:
    """BNWB leaves whose per-step BatchNorm sets all differ from each other and from the model's."""
    params = _leaves(model, algo)
    g = torch.Generator().manual_seed(seed)
    for k in (k for k in params if k.startswith("algo.bn.")):
        noise = torch.randn(params[k].shape, generator=g, dtype=torch.float64)
        _set(params, k, params[k].detach() + 0.3 * noise)
    return params


def _bn_of(params: Params, steps: int) -> BnOf:
    return lambda step: {k: params[f"algo.bn.{min(step, steps)}.{k}"] for k in _norm(params)}


def _bnwb_reference_loss(model: Conv4, params: Params, ep: Episode, steps: int, bn_of: BnOf) -> torch.Tensor:
    keys = [k for k in model_params(params) if ".norm." not in k]
    phi = reference_trajectory(
        model, model_params(params), ep.support_x, ep.support_y, steps, keys, constant(LR), bn_of
    )
    return query_loss(model, phi[-1], ep)


def test_bnwb_creates_a_batchnorm_set_for_every_step_and_does_not_adapt_it() -> None:
    model, ep = tiny_model(), random_episodes(1)[0]
    algo = _algo(model, steps=2, per_step_bn=True)
    params = _bnwb_leaves(model, algo)
    meta = algo.init_meta_params(dict(model.named_parameters()))
    assert set(meta) == {f"algo.bn.{s}.{k}" for s in (0, 1, 2) for k in _norm(params)}
    for s in (0, 1, 2):
        for k in _norm(params):
            assert torch.equal(meta[f"algo.bn.{s}.{k}"], dict(model.named_parameters())[k])
    assert not set(_norm(params)) & set(algo.inner_keys(params))
    adapted = algo.adapt(params, ep.support_x, ep.support_y, 2)
    for k in _norm(params):  # the final weights carry set K, unchanged by the inner loop
        assert torch.equal(adapted[k], params[f"algo.bn.2.{k}"]), k


@pytest.mark.parametrize("steps", [1, 2])
def test_bnwb_uses_set_k_at_step_k_and_set_big_k_for_the_query(steps: int) -> None:
    model, ep = tiny_model(), random_episodes(1)[0]
    algo = _algo(model, steps=steps, per_step_bn=True)
    params = _bnwb_leaves(model, algo)
    loss = algo.task_loss(params, *ep.as_tuple())[0]
    expected = _bnwb_reference_loss(model, params, ep, steps, _bn_of(params, steps))
    torch.testing.assert_close(loss, expected, rtol=RTOL, atol=ATOL)
    # the sets really differ: the model's own BatchNorm everywhere gives another loss
    plain = _bnwb_reference_loss(model, params, ep, steps, lambda s: {k: params[k] for k in _norm(params)})
    assert abs(float(loss.detach()) - float(plain.detach())) > 1e-6
    # gradients: equal to the reference's, non-zero for every set, none for the unused model BN
    used = [k for k in params if k not in _norm(params)]
    grads = torch.autograd.grad(loss, [params[k] for k in used])
    ref = torch.autograd.grad(expected, [params[k] for k in used])
    for k, g, r in zip(used, grads, ref):
        torch.testing.assert_close(g, r, rtol=RTOL, atol=ATOL, msg=k)
    assert all(float(g.abs().sum()) > 0 for k, g in zip(used, grads) if k.startswith("algo.bn."))


def test_bnwb_reuses_the_last_set_beyond_the_trained_steps() -> None:
    model, ep = tiny_model(), random_episodes(1)[0]
    algo = _algo(model, steps=1, per_step_bn=True)
    params = _bnwb_leaves(model, algo)
    keys = [k for k in model_params(params) if ".norm." not in k]
    expected = reference_trajectory(
        model, model_params(params), ep.support_x, ep.support_y, 3, keys, constant(LR), _bn_of(params, 1)
    )[-1]
    _assert_same(algo.adapt(params, ep.support_x, ep.support_y, 3), expected)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_bnwb_meta_gradients_match_the_reference(batching: str) -> None:
    # the model's own BatchNorm tensors go unused under BNWB: their gradient is zero, not an error
    model, episodes = tiny_model(), random_episodes(2)
    algo = _algo(model, steps=2, batching=batching, per_step_bn=True)
    params = _bnwb_leaves(model, algo)
    grads = algo.meta_gradients(params, episodes).grads
    bn_of = _bn_of(params, 2)
    total = sum(_bnwb_reference_loss(model, params, ep, 2, bn_of) for ep in episodes) / 2
    used = [k for k in params if k not in _norm(params)]
    for k, r in zip(used, torch.autograd.grad(total, [params[k] for k in used])):
        torch.testing.assert_close(grads[k], r, rtol=RTOL, atol=ATOL, msg=k)
    assert all(float(grads[k].abs().sum()) == 0 for k in _norm(params))


# ---------------------------------------------------------------------------------------------
# MSL: the multi-step loss


@pytest.mark.parametrize("steps", [2, 3, 5])
def test_msl_weights_schedule(steps: int) -> None:
    anneal, low = 100, 0.03 / steps
    history = [msl_weights(steps, it, anneal) for it in range(0, 2 * anneal)]
    assert history[0] == pytest.approx([1.0 / steps] * steps)
    for it, w in enumerate(history):
        assert len(w) == steps and sum(w) == pytest.approx(1.0)
        assert w[:-1] == pytest.approx([w[0]] * (steps - 1))
        assert w[0] == pytest.approx(max(1.0 / steps - it / (steps * anneal), low))  # linear, floored
    assert all(a[0] >= b[0] and a[-1] <= b[-1] for a, b in itertools.pairwise(history))
    assert history[-1] == pytest.approx([low] * (steps - 1) + [1.0 - (steps - 1) * low])
    assert history[anneal][0] == pytest.approx(low)
    assert [msl_weights(1, it, anneal) for it in (0, 50, 500)] == [[1.0]] * 3


def _msl_reference_loss(model: Conv4, params: Params, ep: Episode, weights: list[float]) -> torch.Tensor:
    steps = len(weights)
    phis = reference_trajectory(
        model,
        model_params(params),
        ep.support_x,
        ep.support_y,
        steps,
        list(model_params(params)),
        constant(LR),
    )
    return sum(w * query_loss(model, phi, ep) for w, phi in zip(weights, phis[1:]))


@pytest.mark.parametrize("iteration", [0, 30, 500])
def test_msl_loss_and_gradient_equal_the_weighted_sum_by_hand(iteration: int) -> None:
    model, episodes = tiny_model(), random_episodes(2)
    algo = _algo(model, steps=3, multi_step_loss=True, msl_iterations=100)
    params = _leaves(model)
    weights = msl_weights(3, iteration, 100)
    loss = algo.task_loss(params, *episodes[0].as_tuple(), iteration=iteration)[0]
    torch.testing.assert_close(loss, _msl_reference_loss(model, params, episodes[0], weights))
    grads = algo.meta_gradients(params, episodes, iteration).grads
    total = sum(_msl_reference_loss(model, params, ep, weights) for ep in episodes) / 2
    _assert_same(grads, dict(zip(params, torch.autograd.grad(total, list(params.values())))))


def test_msl_depends_on_the_iteration_and_is_off_by_default() -> None:
    model, ep = tiny_model(), random_episodes(1)[0]
    params = _leaves(model)
    msl = _algo(model, steps=3, multi_step_loss=True, msl_iterations=100)
    early = float(msl.task_loss(params, *ep.as_tuple(), iteration=0)[0].detach())
    late = float(msl.task_loss(params, *ep.as_tuple(), iteration=100)[0].detach())
    assert abs(early - late) > 1e-6
    final = _msl_reference_loss(model, params, ep, [0.0, 0.0, 1.0])
    plain = _algo(model, steps=3).task_loss(params, *ep.as_tuple(), iteration=0)[0]
    torch.testing.assert_close(plain, final, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# DA: derivative-order annealing


@pytest.mark.parametrize(("iteration", "first_order"), [(0, True), (2, True), (3, False), (10, False)])
def test_da_is_first_order_before_n_iterations_and_second_order_after(
    iteration: int, first_order: bool
) -> None:
    model, episodes = tiny_model(), random_episodes(2)
    params = _leaves(model)
    algo = _algo(model, first_order_iterations=3)
    grads = algo.meta_gradients(params, episodes, iteration).grads
    keys = list(params)
    expected = reference_meta_gradient(
        model, params, episodes, 2, keys, constant(LR), first_order=first_order
    )
    other = reference_meta_gradient(
        model, params, episodes, 2, keys, constant(LR), first_order=not first_order
    )
    _assert_same(grads, expected)
    assert not torch.allclose(grads["blocks.0.conv.weight"], other["blocks.0.conv.weight"], rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# the registry and the engine


def _lr_steps(keys: list[str]) -> set[str]:
    return {f"algo.lr.{k}.{s}" for k in keys for s in (0, 1)}


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("maml", {}, lambda p: set()),
        ("anil", {}, lambda p: set()),
        ("maml", {"learn_inner_lr": True}, lambda p: _lr_steps(list(p))),
        ("anil", {"learn_inner_lr": True}, lambda p: _lr_steps(_head(p))),
        ("metasgd", {}, lambda p: {f"algo.lr.{k}" for k in p}),
        ("anil", {"per_step_bn": True}, lambda p: {f"algo.bn.{s}.{k}" for s in (0, 1, 2) for k in _norm(p)}),
    ],
)
def test_registry_builds_the_family_with_matching_meta_params(
    tiny_cfg: Config, name: str, options: dict, expected: Callable[[Params], set[str]]
) -> None:
    tiny_cfg.algorithm.name, tiny_cfg.algorithm.inner_steps = name, 2
    for option, value in options.items():
        setattr(tiny_cfg.algorithm.maml, option, value)
    model = build_model(tiny_cfg.model, 1, tiny_cfg.data.image_size, tiny_cfg.task.ways)
    algo = build_algorithm(tiny_cfg, make_forward(model), 5)
    assert isinstance(algo, MAML)
    assert (algo.head_only, algo.per_parameter_lr) == (name == "anil", name == "metasgd")
    params = dict(model.named_parameters())
    assert set(algo.init_meta_params(params)) == expected(params)


@pytest.mark.parametrize(("name", "options"), [("metasgd", {}), ("maml", {"learn_inner_lr": True})])
def test_learner_and_optimizer_hold_the_algo_tensors_and_training_moves_them(
    tiny_cfg: Config, name: str, options: dict
) -> None:
    tiny_cfg.algorithm.name = name
    for option, value in options.items():
        setattr(tiny_cfg.algorithm.maml, option, value)
    tiny_cfg.train.iterations, tiny_cfg.train.val_every = 1, 0
    learner = build_learner(tiny_cfg, torch.device("cpu"), 5)
    algo_keys = [k for k in learner.params if k.startswith("algo.lr.")]
    assert algo_keys and len(learner.params) > len(algo_keys)
    assert all(learner.params[k].is_leaf and learner.params[k].requires_grad for k in algo_keys)
    opt = engine.build_optimizer(tiny_cfg, learner.params)
    covered = {id(p) for group in opt.param_groups for p in group["params"]}
    assert covered == {id(p) for p in learner.params.values()}
    run = create_run(tiny_cfg, "cpu")
    engine.train(tiny_cfg, load_data(tiny_cfg.data), run)
    trained = load_checkpoint(run / "checkpoints" / "last.pt")["params"]
    # a conv bias feeding BatchNorm has zero gradient, and so has its step size; all others move
    for k in (k for k in algo_keys if ".conv.bias" not in k):
        assert not torch.allclose(trained[k], learner.params[k].detach()), k


# ---------------------------------------------------------------------------------------------
# learned step sizes at validation and fine-tuning


def _metasgd_learner_with_zero_lrs(cfg: Config) -> Learner:
    cfg.algorithm.name = "metasgd"
    learner = build_learner(cfg, torch.device("cpu"), 5)
    with torch.no_grad():
        for k, v in learner.params.items():
            if k.startswith("algo.lr."):
                v.zero_()  # the learned adaptation is now the identity
    return learner


def test_metasgd_finetune_adapts_with_the_learned_learning_rates(tiny_cfg: Config) -> None:
    learner = _metasgd_learner_with_zero_lrs(tiny_cfg)
    tiny_cfg.finetune.steps = 0  # the algorithm's own adaptation only
    tuned, _ = finetune(tiny_cfg, learner, load_data(tiny_cfg.data).novel)
    for k, v in model_params(learner.params).items():
        torch.testing.assert_close(tuned.params[k], v.detach(), msg=k)
    tiny_cfg.finetune.adapt_lr = 0.4  # an explicit step size still overrides the learned ones
    tuned, _ = finetune(tiny_cfg, learner, load_data(tiny_cfg.data).novel)
    assert not torch.allclose(tuned.params["head.weight"], learner.params["head.weight"].detach())


def test_metasgd_validation_adapts_with_the_learned_learning_rates(tiny_cfg: Config) -> None:
    tiny_cfg.train.val_episodes = 12
    learner = _metasgd_learner_with_zero_lrs(tiny_cfg)
    _, val = engine.training_samplers(tiny_cfg, load_data(tiny_cfg.data))
    assert val is not None
    steps, norm = tiny_cfg.algorithm.eval_inner_steps, tiny_cfg.eval.norm
    learned = evaluate(learner, val, 12, steps, None, norm)
    fixed = evaluate(learner, val, 12, steps, tiny_cfg.algorithm.inner_lr, norm)
    assert learned.mean() != pytest.approx(fixed.mean())  # the two really differ here
    assert engine._validate(tiny_cfg, learner, val)[0] == pytest.approx(learned.mean())
