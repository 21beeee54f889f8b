"""metafew.augment: batched seeded transforms, their matrices, seeds and test-time views."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields, replace

import pytest
import torch

from metafew.augment import (
    KINDS,
    TTA_BLOCK,
    Augment,
    Transforms,
    affine_matrices,
    apply_transforms,
    augment,
    draw_transforms,
    tta_views,
    view_generator,
    view_seed,
)
from metafew.data import to_float

OFF = Augment(translate=0, rotate=0, scale=0, flip=False, brightness=0, contrast=0, saturation=0)
"""Every transform off; tests switch on the one they look at."""


def pictures(n: int, channels: int = 1, size: int = 12, seed: int = 0) -> torch.Tensor:
    """[n, channels, size, size] uint8 noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def still(n: int, **values: float | bool) -> Transforms:
    """Transforms of n pictures that change nothing, except the given parameters (same for all)."""
    neutral = {"shift_x": 0.0, "shift_y": 0.0, "angle": 0.0, "zoom": 1.0, "flip": False}
    neutral |= {"brightness": 0.0, "contrast": 1.0, "saturation": 1.0} | values
    return Transforms(
        **{
            k: torch.full((n,), v, dtype=torch.bool if k == "flip" else torch.float32)
            for k, v in neutral.items()
        }
    )


def dot(size: int, row: int, col: int) -> torch.Tensor:
    """[1, 1, size, size] float picture: zeros with a single pixel of 1 at (row, col)."""
    x = torch.zeros(1, 1, size, size)
    x[0, 0, row, col] = 1.0
    return x


# --- the spec -----------------------------------------------------------------------------------


def test_identity_and_scaled() -> None:
    assert OFF.identity
    assert not Augment().identity
    assert not replace(OFF, flip=True).identity
    strong = Augment(flip=True, saturation=0.1).scaled(2.0)
    assert strong == Augment(
        translate=0.2, rotate=20.0, scale=0.2, flip=True, brightness=0.2, contrast=0.2, saturation=0.2
    )
    assert Augment().scaled(0.0).identity
    capped = Augment(scale=0.6, contrast=0.8, translate=0.6, rotate=120, saturation=0.7).scaled(2.0)
    assert (capped.scale, capped.contrast, capped.translate, capped.rotate, capped.saturation) == (
        0.9,
        1.0,
        1.0,
        180.0,
        1.0,
    )  # a valid spec whatever the factor
    assert not Augment(flip=True).scaled(0.0).identity  # flip is not a magnitude


@pytest.mark.parametrize(
    "bad",
    [{"translate": -0.1}, {"rotate": float("nan")}, {"scale": 1.0}, {"contrast": 1.5}, {"saturation": 2.0}],
)
def test_spec_rejects_bad_magnitudes(bad: dict[str, float]) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"Augment.{name}"):
        Augment(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="factor"):
        Augment().scaled(-1.0)


# --- identity, dtype, shape -----------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_identity_spec_returns_to_float_exactly(channels: int) -> None:
    x = pictures(6, channels)
    out = augment(x, OFF, view_generator(0))
    assert out.dtype == torch.float32
    assert torch.equal(out, to_float(x))
    floats = to_float(x).double()
    out = augment(floats, OFF, view_generator(0))
    assert out.dtype == torch.float32 and torch.equal(out, floats.float())
    out.zero_()
    assert floats.abs().sum() > 0  # a new tensor, not a view of the input


@pytest.mark.parametrize("channels", [1, 3])
def test_dtype_shape_and_range(channels: int) -> None:
    x = pictures(9, channels, size=10)
    spec = Augment(translate=0.3, rotate=30, scale=0.3, flip=True, brightness=0.5, contrast=0.8, saturation=1)
    out = augment(x, spec, view_generator(1))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, to_float(x))


def test_uint8_and_float_inputs_agree() -> None:
    x = pictures(5, 3)
    a = augment(x, Augment(flip=True, saturation=0.2), view_generator(3))
    b = augment(to_float(x), Augment(flip=True, saturation=0.2), view_generator(3))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_rejects_wrong_inputs() -> None:
    with pytest.raises(ValueError, match=r"\[n, C, H, W\]"):
        augment(torch.zeros(3, 8, 8, dtype=torch.uint8), Augment(), view_generator(0))
    with pytest.raises(ValueError, match="uint8 or floating"):
        augment(torch.zeros(1, 1, 8, 8, dtype=torch.int64), Augment(), view_generator(0))


# --- the draws ----------------------------------------------------------------------------------


def test_draws_stay_in_their_ranges() -> None:
    spec = Augment(
        translate=0.2, rotate=15, scale=0.3, flip=True, brightness=0.1, contrast=0.4, saturation=0.5
    )
    t = draw_transforms(4000, spec, view_generator(5))
    for name, low, high in [
        ("shift_x", -0.2, 0.2),
        ("shift_y", -0.2, 0.2),
        ("angle", -15, 15),
        ("zoom", 0.7, 1.3),
        ("brightness", -0.1, 0.1),
        ("contrast", 0.6, 1.4),
        ("saturation", 0.5, 1.5),
    ]:
        values = getattr(t, name)
        assert values.shape == (4000,) and values.dtype == torch.float32
        assert low <= values.min() and values.max() <= high, name
        # uniform: the draws reach close to both ends
        assert values.min() < low + 0.02 * (high - low) and values.max() > high - 0.02 * (high - low), name
    assert 0.45 < t.flip.float().mean() < 0.55
    off = draw_transforms(100, OFF, view_generator(5))
    assert not off.flip.any() and (off.zoom == 1).all() and (off.shift_x == 0).all()


def test_same_generator_state_same_output_and_different_seeds_differ() -> None:
    x = pictures(8, 3)
    spec = Augment(flip=True, saturation=0.2)
    assert torch.equal(augment(x, spec, view_generator(7, 1)), augment(x, spec, view_generator(7, 1)))
    g = view_generator(7, 1)
    first, second = augment(x, spec, g), augment(x, spec, g)  # the generator moves on
    assert not torch.equal(first, second)
    assert not torch.equal(first, augment(x, spec, view_generator(7, 2)))
    assert not torch.equal(first, augment(x, spec, view_generator(8, 1)))


def test_turning_one_transform_off_keeps_the_others_draws() -> None:
    spec = Augment(flip=True)
    a = draw_transforms(16, spec, view_generator(2))
    b = draw_transforms(16, replace(spec, rotate=0, contrast=0), view_generator(2))
    assert torch.equal(a.shift_x, b.shift_x) and torch.equal(a.flip, b.flip)
    assert torch.equal(a.brightness, b.brightness)


def test_generator_must_be_on_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to build a non-CPU generator")
    with pytest.raises(ValueError, match="CPU"):
        draw_transforms(3, Augment(), torch.Generator(device="cuda"))


# --- geometry -----------------------------------------------------------------------------------


def test_affine_matrices_maths() -> None:
    identity = affine_matrices(still(2), 28, 28)
    assert identity.shape == (2, 2, 3) and identity.dtype == torch.float32
    torch.testing.assert_close(identity, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3))
    # a shift of 2 px right, 3 px up on 28 x 28 samples from 2 px left, 3 px below: 2 px = 4/28
    shifted = affine_matrices(still(1, shift_x=2 / 28, shift_y=-3 / 28), 28, 28)[0]
    torch.testing.assert_close(shifted, torch.tensor([[1.0, 0, -4 / 28], [0, 1, 6 / 28]]))
    # 90 degrees clockwise: the output point below the centre samples the input point to its right
    turned = affine_matrices(still(1, angle=90.0), 10, 20)[0]
    torch.testing.assert_close(turned, torch.tensor([[0.0, 0.5, 0], [-2.0, 0, 0]]), rtol=0, atol=1e-6)
    zoomed = affine_matrices(still(1, zoom=2.0, shift_x=0.25), 8, 8)[0]
    torch.testing.assert_close(zoomed, torch.tensor([[0.5, 0, -0.25], [0, 0.5, 0]]))


def test_translate_moves_a_pixel_by_whole_pixels() -> None:
    out = apply_transforms(dot(28, 10, 10), Augment(translate=0.2), still(1, shift_x=2 / 28, shift_y=-3 / 28))
    torch.testing.assert_close(out, dot(28, 7, 12), rtol=0, atol=1e-5)


def test_rotate_and_zoom_on_a_hand_made_picture() -> None:
    # 5 x 5, centre (2, 2): right of centre goes below the centre under +90 degrees
    out = apply_transforms(dot(5, 2, 4), Augment(rotate=90), still(1, angle=90.0))
    torch.testing.assert_close(out, dot(5, 4, 2), rtol=0, atol=1e-5)
    # zoom 2: one pixel right of the centre lands two pixels right, blurred onto its neighbours
    out = apply_transforms(dot(5, 2, 3), Augment(scale=0.5), still(1, zoom=2.0))
    assert out[0, 0, 2, 4] == pytest.approx(1.0, abs=1e-5)
    assert out[0, 0, 2, 3] == pytest.approx(0.5, abs=1e-5)
    assert out[0, 0, 1, 4] == pytest.approx(0.5, abs=1e-5)


def test_content_shifted_out_is_replaced_by_zeros() -> None:
    x = torch.ones(1, 1, 10, 10)
    out = apply_transforms(x, Augment(translate=0.5), still(1, shift_x=0.3))
    assert (out[..., :3] == 0).all() and (out[..., 3:] == 1).all()


def test_flip_mirrors_the_drawn_pictures_and_twice_is_the_identity() -> None:
    x = pictures(32, 3)
    spec = replace(OFF, flip=True)
    flips = draw_transforms(32, spec, view_generator(4)).flip
    assert flips.any() and not flips.all()
    once = augment(x, spec, view_generator(4))
    assert torch.equal(once[flips], to_float(x)[flips].flip(-1))
    assert torch.equal(once[~flips], to_float(x)[~flips])
    assert torch.equal(augment(once, spec, view_generator(4)), to_float(x))


def test_flip_folded_into_the_warp_equals_flip_then_warp() -> None:
    x = pictures(4, 3)
    moved = still(4, shift_x=0.1, angle=20.0, zoom=1.1, flip=True)
    both = apply_transforms(x, Augment(flip=True), moved)
    flipped = apply_transforms(x, replace(OFF, flip=True), still(4, flip=True))
    torch.testing.assert_close(both, apply_transforms(flipped, Augment(), moved), rtol=0, atol=1e-5)
    mirrored = affine_matrices(moved, 8, 8)
    assert torch.equal(mirrored[:, 0], -affine_matrices(replace(moved, flip=~moved.flip), 8, 8)[:, 0])
    # a spec without flip ignores drawn flips
    torch.testing.assert_close(
        apply_transforms(x, Augment(), moved),
        apply_transforms(x, Augment(), replace(moved, flip=~moved.flip)),
    )


# --- photometric --------------------------------------------------------------------------------


def test_brightness_range_and_clamp() -> None:
    grey = torch.full((200, 1, 4, 4), 0.5)
    out = augment(grey, replace(OFF, brightness=0.2), view_generator(0))
    shift = out[:, 0, 0, 0] - 0.5
    assert (out == out[:, :, :1, :1]).all()  # one shift per picture
    assert shift.abs().max() <= 0.2 + 1e-6 and shift.abs().max() > 0.19
    white = augment(torch.ones(200, 1, 4, 4), replace(OFF, brightness=0.2), view_generator(0))
    assert white.max() == 1.0 and (white < 1).any()


def test_contrast_range_and_clamp() -> None:
    x = torch.tensor([0.25, 0.75]).repeat(100, 1, 4, 2)  # mean 0.5, distance 0.25
    out = augment(x, replace(OFF, contrast=0.5), view_generator(1))
    factor = (out[:, 0, 0, 1] - 0.5) / 0.25
    assert factor.min() >= 0.5 - 1e-5 and factor.max() <= 1.5 + 1e-5
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.full((100,), 0.5))
    extreme = torch.tensor([0.0, 1.0]).repeat(100, 1, 4, 2)
    out = augment(extreme, replace(OFF, contrast=1.0), view_generator(1))
    assert out.min() == 0.0 and out.max() == 1.0


def test_saturation_is_ignored_for_grey_and_keeps_grey_rgb() -> None:
    x = pictures(10, 1)
    spec = Augment(flip=True)
    assert torch.equal(
        augment(x, spec, view_generator(6)), augment(x, replace(spec, saturation=1), view_generator(6))
    )
    grey_rgb = to_float(x).expand(10, 3, 12, 12)
    out = augment(grey_rgb, replace(OFF, saturation=0.9), view_generator(6))
    torch.testing.assert_close(out, grey_rgb, rtol=0, atol=1e-6)
    colour = pictures(10, 3)
    assert not torch.allclose(
        augment(colour, replace(OFF, saturation=0.9), view_generator(6)), to_float(colour)
    )


def test_photometric_equals_the_step_by_step_reference() -> None:
    x = to_float(pictures(6, 3)).double()
    spec = replace(OFF, brightness=0.3, contrast=0.5, saturation=0.8)
    t = draw_transforms(6, spec, view_generator(8))
    b, f, s = (v.double()[:, None, None, None] for v in (t.brightness, t.contrast, t.saturation))
    y = x + b
    y = (y - y.mean(dim=(1, 2, 3), keepdim=True)) * f + y.mean(dim=(1, 2, 3), keepdim=True)
    gray = 0.299 * y[:, :1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:]
    expected = (gray + s * (y - gray)).clamp(0, 1).float()
    torch.testing.assert_close(apply_transforms(x, spec, t), expected, rtol=0, atol=1e-5)


# --- seeds --------------------------------------------------------------------------------------


def test_view_generator_is_stable_and_index_sensitive() -> None:
    assert torch.equal(
        torch.rand(5, generator=view_generator(3, 4, 5)), torch.rand(5, generator=view_generator(3, 4, 5))
    )
    seeds = {view_seed(3), view_seed(3, 0), view_seed(3, 4, 5), view_seed(3, 5, 4), view_seed(4, 4, 5)}
    assert len(seeds) == 5
    assert all(0 <= s < 2**63 for s in seeds)
    assert view_seed(-1, -2) != view_seed(1, 2)
    assert view_generator(3, 4, 5).initial_seed() == view_seed(3, 4, 5)
    # splitmix64's first output from state 0 is 0xE220A8397B1DCDAF (Vigna's reference code)
    assert view_seed(0) == 0xE220A8397B1DCDAF >> 1
    # pinned: changing the mix would silently change every resumed run's transforms
    assert view_seed(1234, 7, 3) == 1777454783005573491


def test_view_seed_does_not_depend_on_the_process() -> None:
    code = "from metafew.augment import view_generator; print(view_generator(1234, 7, 3).initial_seed())"
    hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # differs from this process's
    env = os.environ | {"PYTHONHASHSEED": hash_seed}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(done.stdout) == view_generator(1234, 7, 3).initial_seed() == view_seed(1234, 7, 3)


# --- test-time views ----------------------------------------------------------------------------


def test_tta_views_shape_and_view_zero() -> None:
    x = pictures(7, 3)
    views = tta_views(x, Augment(flip=True), 4, seed=11)
    assert views.shape == (4, 7, 3, 12, 12) and views.dtype == torch.float32
    assert torch.equal(views[0], to_float(x))
    assert all(not torch.equal(views[v], views[0]) for v in range(1, 4))
    assert not torch.equal(views[1], views[2])
    assert tta_views(x, Augment(), 1, seed=11).shape == (1, 7, 3, 12, 12)
    with pytest.raises(ValueError, match="views"):
        tta_views(x, Augment(), 0, seed=11)
    with pytest.raises(ValueError, match="offset"):
        tta_views(x, Augment(), 2, seed=11, offset=-1)


def test_tta_chunks_equal_the_whole_set() -> None:
    x = pictures(2 * TTA_BLOCK + 22, 1, size=8)
    spec = Augment(flip=True)
    whole = tta_views(x, spec, 3, seed=5)
    close = {"rtol": 0, "atol": 32 * torch.finfo(torch.float32).eps}  # see the test above
    torch.testing.assert_close(whole[:, 5:9], tta_views(x[5:9], spec, 3, seed=5, offset=5), **close)
    chunks = [tta_views(x[i : i + 37], spec, 3, seed=5, offset=i) for i in range(0, len(x), 37)]
    # chunks of 37 straddle the block boundaries
    torch.testing.assert_close(torch.cat(chunks, 1), whole, **close)


def test_tta_picture_does_not_depend_on_its_batch() -> None:
    x = pictures(10, 3)
    spec = Augment(flip=True, saturation=0.3)
    others = pictures(10, 3, seed=1)
    others[4] = x[4]
    a, b = tta_views(x, spec, 3, seed=2), tta_views(others, spec, 3, seed=2)
    assert torch.equal(a[:, 4], b[:, 4])
    assert not torch.equal(a[:, 3], b[:, 3])
    # alone, the picture gets the same draws; its values agree up to float32 rounding: CPU kernels
    # (grid_sample's vectorised loop) round differently at a batch's edges. A view is ~20 float32
    # operations per pixel of values in [0, 1], so 32 ulps of 1 bound the difference.
    alone = tta_views(x[4:5], spec, 3, seed=2, offset=4)
    torch.testing.assert_close(a[:, 4:5], alone, rtol=0, atol=32 * torch.finfo(torch.float32).eps)
    assert not torch.allclose(a[:, 3:4], alone, rtol=0, atol=1e-2)  # another position: other draws


def test_kinds_order_is_the_transforms_fields() -> None:
    assert tuple(f.name for f in fields(Transforms)) == KINDS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result() -> None:
    x = pictures(16, 3)
    spec = Augment(flip=True, saturation=0.2)
    on_gpu = augment(x.cuda(), spec, view_generator(9))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), augment(x, spec, view_generator(9)), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        tta_views(x.cuda(), spec, 3, 9, 4).cpu(), tta_views(x, spec, 3, 9, 4), rtol=0, atol=1e-5
    )
