# python examples/python_api.py [RUN [PICTURES]]
"""metafew from Python: meta-train (or take RUN), fine-tune, load the fine-tuned model as one
torch module, classify pictures with it and check that `metafew predict` agrees.

Without arguments it meta-trains a tiny version of the embedded glyph experiment for a few
iterations in a temporary folder (about ten seconds on one CPU core) and classifies the glyph
dataset's unlabeled pictures, written out as PNGs to stand in for a folder of your own. With RUN
(a run folder of the glyph experiment or any other) it fine-tunes that run, and with PICTURES it
classifies the pictures directly in that folder.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import metafew

TINY = [
    "data.image_size=16",
    "data.glyphs.train_classes=5",
    "data.glyphs.val_classes=3",
    "data.glyphs.novel_classes=3",
    "data.glyphs.train_samples=8",
    "task.ways=3",
    "task.shots=2",
    "task.queries=3",
    "model.hidden=8",
    "train.iterations=5",
    "train.meta_batch_size=2",
    "train.val_every=5",
    "train.val_episodes=3",
    "runtime.device=cpu",
    "runtime.threads=1",
]
"""The embedded glyph experiment, shrunk to train in seconds (3-way 2-shot, 16x16, 8 filters)."""


def write_unlabeled_pictures(run: Path, folder: Path) -> Path:
    """The run's dataset's unlabeled pictures as PNGs in `folder` (a stand-in for your own)."""
    from metafew.launch import load_run_data

    pictures = load_run_data(metafew.load_meta(run).cfg, run).unlabeled
    if pictures is None:
        raise SystemExit("this dataset has no unlabeled pictures: pass a PICTURES folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(pictures.names[:8], pictures.images[:8]):
        mode = "L" if image.shape[0] == 1 else "RGB"
        Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy(), mode).save(folder / name)
    return folder


def main(args: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="metafew-example-"))
    if args:
        run = Path(args[0])
    else:
        run = metafew.train(overrides=[*TINY, f"train.runs_dir={work / 'runs'}"])
        print(f"meta-trained: {run}")
    meta = metafew.load_meta(run)
    print(
        f"M_meta: iteration {meta.iteration}, {meta.cfg.task.ways}-way, algorithm {meta.cfg.algorithm.name}"
    )

    model_dir = metafew.finetune(run, overrides=["finetune.steps=5", "runtime.threads=1"])
    print(f"fine-tuned: {model_dir}")

    model = metafew.load_finetuned(model_dir)  # pictures [N, C, H, W] -> probabilities [N, ways]
    folder = Path(args[1]) if len(args) > 1 else write_unlabeled_pictures(run, work / "pictures")
    pictures = metafew.read_pictures(folder, model)  # decoded and resized as `metafew predict` does
    probs = model(pictures.images)  # uint8 in, or floats in [0, 1]
    print(f"{'file':<24} {'label':<12} " + " ".join(f"{c:>10}" for c in model.classes))
    for name, row in zip(pictures.names, probs.tolist()):
        label = model.classes[int(np.argmax(row))]
        print(f"{name:<24} {label:<12} " + " ".join(f"{p:>10.4f}" for p in row))

    result = metafew.predict(model_dir, folder, ["runtime.threads=1"])
    with result.csv.open(newline="") as handle:
        written = np.array([[float(p) for p in r[3:]] for r in list(csv.reader(handle))[1:]])
    gap = float(np.abs(written - probs.numpy()).max())
    print(f"metafew predict wrote {result.csv}; largest difference from the module: {gap:.1e}")

    exported = metafew.export_model(model_dir, "torchscript")
    print(f"exported: {exported.path} (load with torch.jit.load; classes in {exported.spec_path.name})")


if __name__ == "__main__":
    main(sys.argv[1:])
