"""ResNet-12: shapes, the functional forward, MAML's second-order meta-gradient against a plain
loop reference (float64), vmap = loop, DropBlock only while meta-training, the parameter count,
config validation, and every algorithm end to end on tiny widths; Conv-N (6 layers) likewise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import load_pt, ok, only_child, read_metrics, tiny
from torch.func import functional_call

from metafew.algorithms import MAML, ProtoNet
from metafew.config import AlgorithmConfig, ModelConfig
from metafew.config.schema import MAMLConfig
from metafew.config_load import choices_of, load_config
from metafew.errors import ConfigError
from metafew.functional import Params
from metafew.models import BACKBONES, ResNet12, build_model, make_forward, parameter_count
from metafew.models.resnet12 import dropblock, hashed_uniform
from metafew.tasks import Episode

WAYS, SHOTS, QUERIES, SIZE = 3, 2, 2, 16
TINY_WIDTHS = (4, 6, 8, 10)


def _model(drop: float = 0.0, head: str = "linear", drop_size: int = 2) -> ResNet12:
    torch.manual_seed(0)
    return ResNet12(1, SIZE, WAYS, TINY_WIDTHS, head, drop_rate=drop, drop_size=drop_size).double()


def _episodes(count: int, seed: int = 1) -> list[Episode]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    out = []
    for _ in range(count):
        sx = torch.rand(WAYS * SHOTS, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        qx = torch.rand(WAYS * QUERIES, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        out.append(Episode(sx, labels.repeat(SHOTS), qx, labels.repeat_interleave(QUERIES), labels))
    return out


def _maml(model: ResNet12, batching: str = "loop", first_order: bool = False, **maml: bool) -> MAML:
    cfg = AlgorithmConfig(inner_lr=0.3, inner_steps=2, first_order=first_order, maml=MAMLConfig(**maml))
    return MAML(cfg, make_forward(model), batching)


def _params(model: ResNet12) -> Params:
    return dict(model.named_parameters())


# ---------------------------------------------------------------------------------------------
# the module


@pytest.mark.parametrize(("channels", "size", "side"), [(1, 28, 1), (3, 84, 5)])
def test_output_shapes_for_gray_28_and_rgb_84(channels: int, size: int, side: int) -> None:
    model = ResNet12(channels, size, 5, TINY_WIDTHS)
    x = torch.randn(6, channels, size, size)
    assert model(x).shape == (6, 5)
    assert model(x, embed=True).shape == (6, TINY_WIDTHS[-1])
    _, stats = model(x, return_stats=True)
    assert len(stats) == 16 and stats[-1][0].shape == (1, TINY_WIDTHS[-1], 1, 1)
    feature_map = x
    for block in model.blocks:
        feature_map = block(feature_map)[0]
    assert feature_map.shape[-2:] == (side, side)


def test_parameter_names_fit_head_only_adaptation_and_per_step_batchnorm() -> None:
    names = list(_params(_model()))
    assert [k for k in names if k.startswith("head.")] == ["head.weight", "head.bias"]
    norms = [k for k in names if ".norm." in k]
    assert len(norms) == 2 * 16  # weight and bias of 4 norm layers in each of 4 blocks
    assert all(
        k.endswith((".conv.weight", ".norm.weight", ".norm.bias")) or k.startswith("head.") for k in names
    )


def test_functional_forward_equals_the_module_with_batch_and_frozen_statistics() -> None:
    model = _model()
    x = torch.rand(7, 1, SIZE, SIZE, dtype=torch.float64)
    forward, params = make_forward(model), _params(model)
    torch.testing.assert_close(forward(params, x), model(x), rtol=0, atol=0)
    _, stats = model(x, return_stats=True)
    alone = torch.cat([forward(params, x[i : i + 1], stats) for i in range(7)])
    torch.testing.assert_close(alone, model(x, norm_stats=stats), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x, norm_stats=stats), model(x), rtol=1e-12, atol=1e-12)


def test_no_task_batched_form_and_a_positive_activation_size() -> None:
    model = _model()
    assert model.task_forward() is None and make_forward(model).tasks is None
    one = model.activation_elements(1)
    assert one == SIZE**2 + 4 * sum(w * (SIZE // 2**i) ** 2 for i, w in enumerate(TINY_WIDTHS))
    assert model.activation_elements(5) == 5 * one


# ---------------------------------------------------------------------------------------------
# MAML through ResNet-12 against a plain loop (float64)


def _reference_meta_gradient(model: ResNet12, episodes: list[Episode], first_order: bool) -> Params:
    """MAML written out with torch.autograd: 2 inner steps of 0.3 on every tensor, per task."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    total = torch.zeros((), dtype=torch.float64)
    for ep in episodes:
        fast = dict(leaves)
        for _ in range(2):
            loss = F.cross_entropy(functional_call(model, fast, (ep.support_x,)), ep.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: v - 0.3 * g for (k, v), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, fast, (ep.query_x,)), ep.query_y)
    return dict(zip(leaves, torch.autograd.grad(total / len(episodes), list(leaves.values()))))


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_equals_a_plain_loop_reference(batching: str, first_order: bool) -> None:
    model, episodes = _model(), _episodes(3)
    step = _maml(model, batching, first_order).meta_gradients(_params(model), episodes)
    expected = _reference_meta_gradient(model, episodes, first_order)
    for name, g in expected.items():
        torch.testing.assert_close(step.grads[name], g, rtol=1e-9, atol=1e-11)


def test_second_order_differs_from_first_order_and_matches_finite_differences() -> None:
    model, episodes = _model(), _episodes(2)
    maml = _maml(model, "vmap")
    grads = maml.meta_gradients(_params(model), episodes).grads
    first = _maml(model, "vmap", first_order=True).meta_gradients(_params(model), episodes).grads
    assert not torch.allclose(grads["blocks.0.convs.0.conv.weight"], first["blocks.0.convs.0.conv.weight"])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def meta_loss(p: Params) -> float:
        with torch.no_grad():
            return float(sum(maml.task_loss(p, *ep.as_tuple())[0] for ep in episodes) / len(episodes))

    g = torch.Generator().manual_seed(7)
    for _ in range(2):
        direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        plus = meta_loss({k: v + 1e-6 * direction[k] for k, v in params.items()})
        minus = meta_loss({k: v - 1e-6 * direction[k] for k, v in params.items()})
        analytic = float(sum((grads[k] * direction[k]).sum() for k in params))
        assert analytic == pytest.approx((plus - minus) / 2e-6, rel=1e-5, abs=1e-8)


def test_protonet_vmap_equals_loop() -> None:
    model, episodes = _model(), _episodes(3)
    loop = ProtoNet(make_forward(model), WAYS, batching="loop").meta_gradients(_params(model), episodes)
    vmap = ProtoNet(make_forward(model), WAYS, batching="vmap").meta_gradients(_params(model), episodes)
    for name, g in loop.grads.items():
        torch.testing.assert_close(vmap.grads[name], g, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(vmap.losses, loop.losses, rtol=1e-12, atol=0)


def test_per_step_batchnorm_of_mamlpp_covers_every_norm_layer_of_resnet12() -> None:
    model, episodes = _model(), _episodes(2)
    maml = _maml(model, "vmap", per_step_bn=True, learn_inner_lr=True, multi_step_loss=True)
    params = _params(model)
    meta = {k: v.requires_grad_() for k, v in maml.init_meta_params(params).items()}
    bn = [k for k in meta if k.startswith("algo.bn.")]
    assert len(bn) == 3 * 32  # steps 0, 1, 2 for each norm weight and bias
    grads = maml.meta_gradients({**params, **meta}, episodes).grads
    assert all(grads[k].abs().sum() > 0 for k in bn if k.startswith("algo.bn.2."))
    assert all(torch.equal(grads[k], torch.zeros_like(grads[k])) for k in params if ".norm." in k)


# ---------------------------------------------------------------------------------------------
# DropBlock


def test_dropblock_drops_about_its_rate_in_squares_and_rescales() -> None:
    x = torch.ones(2, 16, 20, 20, dtype=torch.float64)
    out = dropblock(x, 0.2, 3, key=12345)
    dropped = float((out == 0).double().mean())
    assert 0.12 < dropped < 0.25
    assert float(out.sum()) == pytest.approx(float(x.sum()))  # the kept part rescaled
    torch.testing.assert_close(dropblock(x, 0.2, 3, key=12345), out, rtol=0, atol=0)
    assert not torch.equal(dropblock(x, 0.2, 3, key=54321), out)
    u = hashed_uniform(torch.Size([10000]), 7, torch.device("cpu"), torch.float64)
    assert float(u.min()) >= 0 and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02


def test_dropblock_is_off_by_default() -> None:
    cfg = ModelConfig(name="resnet12", widths="4,6,8,10")
    assert cfg.dropblock == 0
    model = build_model(cfg, 1, SIZE, WAYS).double()
    x = torch.rand(6, 1, SIZE, SIZE, dtype=torch.float64)
    with model.meta_training(0, 3):
        inside = model(x)
    torch.testing.assert_close(inside, model(x), rtol=0, atol=0)


def test_dropblock_acts_in_meta_training_only_and_is_a_function_of_seed_and_iteration() -> None:
    dropping, plain = _model(drop=0.5), _model()
    episodes, params = _episodes(2), _params(dropping)
    forward = make_forward(dropping)
    maml, reference = _maml(dropping, "vmap"), _maml(plain, "vmap")  # vmap: no random op inside

    def meta_gradients(seed: int, iteration: int) -> Params:
        with forward.meta_training(seed, iteration):
            return maml.meta_gradients(params, episodes, iteration).grads

    key = "blocks.1.convs.0.conv.weight"
    trained = meta_gradients(0, 5)
    assert torch.equal(trained[key], meta_gradients(0, 5)[key])  # what an exact resume redraws
    assert not torch.allclose(trained[key], meta_gradients(0, 6)[key])
    assert not torch.allclose(trained[key], meta_gradients(1, 5)[key])
    assert not torch.allclose(trained[key], reference.meta_gradients(params, episodes, 5).grads[key])
    # outside meta-training (validation, eval, fine-tuning, predict) the rate plays no part
    torch.testing.assert_close(
        maml.meta_gradients(params, episodes).grads[key],
        reference.meta_gradients(params, episodes).grads[key],
    )
    ep = episodes[0]
    adapted = maml.adapt(params, ep.support_x, ep.support_y, 3)
    expected = reference.adapt(params, ep.support_x, ep.support_y, 3)
    torch.testing.assert_close(forward(adapted, ep.query_x), make_forward(plain)(expected, ep.query_x))


# ---------------------------------------------------------------------------------------------
# parameter counts and config validation


def test_parameter_count_is_the_built_models_and_metaoptnets_for_the_default_widths() -> None:
    cfg = load_config(None, ["model.name=resnet12", "data.image_size=84", "data.channels=3"])
    assert parameter_count(cfg) == 12_427_525  # 12,424,320 in the body + a 640x5 head, ~12.4M
    for overrides in (
        ["model.name=resnet12", "model.widths=4,6,8,10"],
        ["model.layers=6", "data.image_size=64"],
    ):
        small = load_config(None, overrides)
        model = build_model(small.model, small.data.channels, small.data.image_size, small.task.ways)
        assert parameter_count(small) == sum(p.numel() for p in model.parameters())


def test_metafew_config_prints_the_parameter_count_as_a_yaml_comment() -> None:
    out = ok("config", "model.name=resnet12", "data.image_size=84", "data.channels=3").stdout
    assert out.splitlines()[0] == "# model: resnet12, 12,427,525 parameters"
    resolved = yaml.safe_load(out)
    assert resolved["model"]["name"] == "resnet12" and resolved["model"]["widths"] == "64,160,320,640"
    assert ok("config").stdout.startswith("# model: conv4, ")


def test_model_names_are_the_backbone_registry() -> None:
    field = next(f for f in dataclasses.fields(ModelConfig) if f.name == "name")
    assert choices_of(dict(field.metadata)) == tuple(BACKBONES)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["model.widths=4,6,8"], "model.widths = '4,6,8': must be four positive integers"),
        (["model.widths=4,0,8,10"], "model.widths"),
        (["model.widths=a,b,c,d"], "model.widths"),
        (["data.image_size=12"], "data.image_size = 12: model.name = resnet12"),
        (["model.dropblock=1.5"], "model.dropblock = 1.5: must be <= 0.9"),
    ],
)
def test_resnet12_configs_are_checked_at_load_time(overrides: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.name=resnet12", *overrides])
    assert words in str(info.value) and "\n" not in str(info.value)


def test_dropblock_with_conv4_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.dropblock = 0\.1: DropBlock is part of model\.name=resnet12"
    ):
        load_config(None, ["model.dropblock=0.1"])
    assert load_config(None, ["model.name=resnet12", "data.image_size=16"]).model.name == "resnet12"


# ---------------------------------------------------------------------------------------------
# every algorithm end to end

ALGORITHM_ARGS = {
    "maml": ["algorithm.name=maml"],
    "fomaml": ["algorithm.name=maml", "algorithm.first_order=true"],
    "anil": ["algorithm.name=anil"],
    "metasgd": ["algorithm.name=metasgd"],
    "mamlpp": [
        "algorithm.name=maml",
        "algorithm.inner_steps=2",
        "algorithm.maml.multi_step_loss=true",
        "algorithm.maml.learn_inner_lr=true",
        "algorithm.maml.per_step_bn=true",
    ],
    "reptile": ["algorithm.name=reptile"],
    "protonet": ["algorithm.name=protonet"],
    "pretrain": ["algorithm.name=pretrain"],
    "baselinepp": ["algorithm.name=pretrain", "model.head=cosine"],
}
FAST = ["train.iterations=1", "algorithm.eval_inner_steps=2", "finetune.steps=2", "runtime.threads=1"]
RESNET = ["model.name=resnet12", "model.widths=4,6,8,10"]


@pytest.mark.parametrize("algorithm", ALGORITHM_ARGS)
def test_every_algorithm_trains_finetunes_and_predicts_with_resnet12(algorithm: str, tmp_path: Path) -> None:
    extra = [*RESNET, "model.dropblock=0.2", "model.dropblock_size=2", *ALGORITHM_ARGS[algorithm], *FAST]
    ok("train", *tiny(tmp_path, *extra))
    run = only_child(tmp_path)
    assert all(torch.isfinite(v).all() for v in load_pt(run / "checkpoints" / "last.pt")["params"].values())
    ok("finetune", run)
    finetuned = only_child(run / "finetune")
    ok("predict", finetuned)
    assert only_child(finetuned / "predict").is_dir()


@pytest.mark.parametrize("algorithm", ALGORITHM_ARGS)
def test_every_algorithm_trains_a_conv6_of_32_filters(algorithm: str, tmp_path: Path) -> None:
    conv6 = ["model.layers=6", "model.hidden=32", "data.image_size=64"]
    ok("train", *tiny(tmp_path, *conv6, *ALGORITHM_ARGS[algorithm], *FAST, "train.val_every=0"))
    saved = load_pt(only_child(tmp_path) / "checkpoints" / "last.pt")["params"]
    assert saved["blocks.5.conv.weight"].shape == (32, 32, 3, 3) and "blocks.6.conv.weight" not in saved
    assert saved["head.weight"].shape[1] == 32  # 64 pixels halved 6 times: 1x1


@pytest.mark.parametrize("drop", ["0", "0.3"])
def test_resnet12_resumes_exactly(drop: str, tmp_path: Path) -> None:
    args = [*RESNET, f"model.dropblock={drop}", "model.dropblock_size=2", "runtime.threads=1"]
    ok("train", *tiny(tmp_path / "a", *args, "train.iterations=2"))
    ok("train", *tiny(tmp_path / "b", *args, "train.iterations=1"))
    part = only_child(tmp_path / "b")
    ok("train", "--resume", part, "train.iterations=2")
    whole = only_child(tmp_path / "a")
    a, b = load_pt(whole / "checkpoints" / "last.pt"), load_pt(part / "checkpoints" / "last.pt")
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), key

    def losses(run: Path) -> dict[int, float]:
        return {r["iteration"]: r["loss"] for r in read_metrics(run) if "loss" in r}

    assert losses(whole) == losses(part) and len(losses(whole)) == 2


def test_dropblock_changes_meta_training_through_the_engine(tmp_path: Path) -> None:
    losses = []
    for drop in ("0", "0.5"):
        ok(
            "train",
            *tiny(tmp_path / drop, *RESNET, f"model.dropblock={drop}", "model.dropblock_size=2", *FAST),
        )
        losses.append(read_metrics(only_child(tmp_path / drop))[0]["loss"])
    assert losses[0] != losses[1]
