"""Speed of `metafew.augment.augment` on a batch against a per-picture loop (and torchvision).

    python benchmarks/augment_speed.py [--batch 100] [--repeats 7] [--threads 1]

Workloads: a batch of `--batch` uint8 pictures of 28x28x1 (Omniglot-sized) and of 84x84x3
(miniImageNet-sized), with every transform on (translate 0.1, rotate 10 degrees, scale 0.1, flip,
brightness 0.1, contrast 0.1, saturation 0.1 for RGB). Three ways are timed, each the median of
`--repeats` runs after one warm-up:
- `batched`: one `augment()` call for the whole batch (one affine_grid + grid_sample call);
- `loop`: the same torch ops picture by picture (`apply_transforms` on each row with that row's
  parameters), which gives the same result, checked (max abs difference printed);
- `torchvision`: transforms.v2 RandomAffine + ColorJitter on the batch tensor, only when
  torchvision is importable (it is not a dependency: it applies one set of parameters to the
  whole batch, so it is a speed reference, not the same transform).
Prints pictures per second and the batched / loop ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import time
from collections.abc import Callable

import torch

from metafew.augment import Augment, Transforms, apply_transforms, augment, draw_transforms, view_generator


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(transforms: Transforms, i: int) -> Transforms:
    """The parameters of picture i alone (each field [1])."""
    return Transforms(
        **{f.name: getattr(transforms, f.name)[i : i + 1] for f in dataclasses.fields(transforms)}
    )


def per_picture(images: torch.Tensor, spec: Augment, generator: torch.Generator) -> torch.Tensor:
    """[n, C, H, W] -> float [n, C, H, W]: the same draws as augment(), applied one picture at a time."""
    transforms = draw_transforms(len(images), spec, generator)
    return torch.cat(
        [apply_transforms(images[i : i + 1], spec, row(transforms, i)) for i in range(len(images))]
    )


def torchvision_fn(images: torch.Tensor, spec: Augment) -> Callable[[], object] | None:
    """A callable running torchvision's v2 RandomAffine + ColorJitter on the batch, or None."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(
                degrees=spec.rotate,
                translate=(spec.translate, spec.translate),
                scale=(1 - spec.scale, 1 + spec.scale),
            ),
            v2.ToDtype(torch.float32, scale=True),
            v2.ColorJitter(
                brightness=spec.brightness, contrast=spec.contrast, saturation=spec.saturation or None
            ),
        ]
    )
    return lambda: transform(images)


def measure(channels: int, size: int, batch: int, repeats: int) -> None:
    """Time the three ways on a batch of [batch, channels, size, size] uint8 noise; print one block."""
    spec = Augment(flip=True, saturation=0.1 if channels == 3 else 0.0)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8)
    batched_out, loop_out = (
        augment(images, spec, view_generator(0)),
        per_picture(images, spec, view_generator(0)),
    )
    difference = (batched_out - loop_out).abs().max().item()
    batched = median_seconds(lambda: augment(images, spec, view_generator(0)), repeats)
    loop = median_seconds(lambda: per_picture(images, spec, view_generator(0)), repeats)
    label = f"{size}x{size}x{channels}"
    print(f"{label:>9}  batched {batch / batched:10.0f} pictures/s")
    print(f"{label:>9}  loop    {batch / loop:10.0f} pictures/s  (max |batched - loop| {difference:.1e})")
    print(f"{label:>9}  batched / loop speed ratio {loop / batched:.1f}x")
    reference = torchvision_fn(images, spec)
    if reference is None:
        print(f"{label:>9}  torchvision not installed: not measured")
    else:
        seconds = median_seconds(reference, repeats)
        print(f"{label:>9}  torchvision {batch / seconds:6.0f} pictures/s (one draw for the whole batch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, median of {args.repeats}"
    )
    for channels, size in [(1, 28), (3, 84)]:
        measure(channels, size, args.batch, args.repeats)


if __name__ == "__main__":
    main()
