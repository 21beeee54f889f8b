"""Conv-4 and its BatchNorm: shapes, agreement with torch's batch_norm, vmap, frozen statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from metafew.config import ModelConfig
from metafew.errors import ConfigError
from metafew.models import BatchStatNorm, Conv4, build_model


def test_batch_stat_norm_matches_torch_batch_norm_in_training_mode() -> None:
    torch.manual_seed(0)
    norm = BatchStatNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(7, 6, 5, 5, dtype=torch.float64)
    expected = F.batch_norm(x, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    out, (mean, var) = norm(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(mean.flatten(), x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(var.flatten(), x.var(dim=(0, 2, 3), unbiased=False))


@pytest.mark.parametrize(
    ("pool", "size", "features"), [("max", 28, 64), ("max", 84, 64 * 5 * 5), ("stride", 28, 64 * 2 * 2)]
)
def test_conv4_output_shapes(pool: str, size: int, features: int) -> None:
    model = Conv4(in_channels=3, image_size=size, ways=5, pool=pool)
    x = torch.randn(10, 3, size, size)
    assert model.head.in_features == features
    assert model(x).shape == (10, 5)
    assert len(model.blocks) == 4 and all(b.conv.out_channels == 64 for b in model.blocks)


def test_build_model_rejects_images_too_small_for_the_depth() -> None:
    with pytest.raises(ConfigError, match=r"model\.layers = 4"):
        build_model(ModelConfig(), in_channels=1, image_size=8, ways=5)


def test_forward_under_vmap_equals_a_loop_over_tasks() -> None:
    torch.manual_seed(0)
    model = Conv4(1, 16, 3, hidden=8)
    params = dict(model.named_parameters())
    xs = torch.randn(4, 6, 1, 16, 16)

    def run(p: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x,))

    batched = vmap(run, in_dims=(None, 0))(params, xs)
    looped = torch.stack([run(params, x) for x in xs])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


def test_frozen_statistics_make_each_output_independent_of_the_batch() -> None:
    torch.manual_seed(0)
    model = Conv4(1, 16, 3, hidden=8).eval()
    reference = torch.randn(12, 1, 16, 16)
    _, stats = model(reference, return_stats=True)
    batch = torch.randn(9, 1, 16, 16)
    together = model(batch, norm_stats=stats)
    alone = torch.cat([model(batch[i : i + 1], norm_stats=stats) for i in range(9)])
    shuffled = model(batch.flip(0), norm_stats=stats).flip(0)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together, shuffled, rtol=1e-5, atol=1e-5)
    # with batch statistics the same picture gets a different output in a different batch
    assert not torch.allclose(model(batch)[:1], model(batch[:3])[:1], atol=1e-4)
