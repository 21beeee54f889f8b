"""What each step of the label recipe adds (issue 12): for every method, the k-fold estimate on
the labeled novel pictures, then fine-tune on all of them and label the unlabeled pictures,
scored against their answers (reporting only: nothing here chooses a default).

    python benchmarks/labels.py RUN [RUN2 ...] [--folds 5] [--methods NAME ...] [--out FILE.json]

RUN is a meta-trained run folder of a dataset with unlabeled pictures and answers (a folder
dataset with novel/answers.csv, or the glyphs); the ensemble row averages the probabilities of
the --ensemble recipe's models of every RUN (or of three fine-tuning seeds when one RUN is given).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch

from metafew.augment import augment_spec
from metafew.finetuning import finetune, predict_proba
from metafew.selection import cross_validate, wilson_interval
from metafew.stages.common import meta_learner, run_config, unlabeled_pictures
from metafew.stages.finetune import SECTIONS, labeled_pictures

METHODS = {
    "algorithm's adaptation only": "finetune.steps=0",
    "supervised fine-tune": "finetune.augment=false",
    "+ augmentation": "",
    "+ entropy (transductive), λ = 1": "finetune.unlabeled=entropy finetune.unlabeled_weight=1",
    "+ entropy (transductive), λ = 0.1": "finetune.unlabeled=entropy finetune.unlabeled_weight=0.1",
    "+ pseudo-labels (FixMatch), λ = 1": "finetune.unlabeled=fixmatch finetune.unlabeled_weight=1",
    "+ TTA (8 views)": "finetune.tta=8",
}


def probabilities(run: Path, overrides: str, novel, pictures) -> tuple[torch.Tensor, float]:
    """Fine-tune `run` with `overrides` on all labeled pictures; probabilities of the unlabeled
    pictures [m, ways] and the seconds it took."""
    cfg = run_config(run, shlex.split(overrides), SECTIONS)
    learner, _ = meta_learner(run, cfg, "best")
    started = time.perf_counter()
    images = None if cfg.finetune.unlabeled == "none" else pictures.images
    model, _ = finetune(cfg, learner, novel, images)
    probs = predict_proba(learner, model, pictures.images, spec=augment_spec(cfg), seed=cfg.finetune.seed)
    return probs, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--folds", type=int, default=5, help="k of the k-fold estimate (0: skip it)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help="rows to run (names of METHODS)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="added to every method")
    parser.add_argument(
        "--ensemble",
        default="finetune.unlabeled=entropy finetune.unlabeled_weight=0.1",
        help="the recipe of the ensemble's members ('': no ensemble row)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = args.runs[0]
    base = run_config(run, args.overrides, SECTIONS)
    novel = labeled_pictures(base, None, run, None)
    pictures, _ = unlabeled_pictures(base, None, run, None)
    assert pictures.answers is not None, "the unlabeled pictures need answers to be scored"
    truth = torch.tensor([novel.classes.index(a) for a in pictures.answers])
    rows, kept = [], {}
    print("| method | k-fold estimate on the labeled pictures | unlabeled accuracy | seconds |")
    print("|---|---|---|---|")
    for name in args.methods:
        overrides = " ".join([*args.overrides, METHODS[name]])
        estimate = None
        if args.folds:
            cfg = run_config(run, shlex.split(overrides), SECTIONS)
            learner, _ = meta_learner(run, cfg, "best")
            correct = cross_validate(
                cfg, learner, novel, None if cfg.finetune.unlabeled == "none" else pictures.images, args.folds
            )
            estimate = (int(correct.sum()), len(correct))
        probs, seconds = probabilities(run, overrides, novel, pictures)
        kept[name] = probs
        right = int((probs.argmax(-1) == truth).sum())
        rows.append(
            {
                "method": name,
                "overrides": overrides,
                "estimate": estimate,
                "correct": right,
                "pictures": len(truth),
                "seconds": seconds,
            }
        )
        print(f"| {name} | {_cell(estimate)} | {_cell((right, len(truth)))} | {seconds:.0f} |", flush=True)
    if not args.ensemble:
        if args.out:
            args.out.write_text(json.dumps(rows, indent=2) + "\n")
        return
    recipe = " ".join([*args.overrides, args.ensemble])
    members = [probabilities(r, recipe, novel, pictures)[0] for r in args.runs]
    if len(args.runs) == 1:
        members = [probabilities(run, f"{recipe} finetune.seed={s}", novel, pictures)[0] for s in (1, 2, 3)]
    mean = torch.stack(members).mean(0)
    right = int((mean.argmax(-1) == truth).sum())
    print(f"| ensemble of {len(members)} | | {_cell((right, len(truth)))} | |")
    rows.append({"method": f"ensemble of {len(members)}", "correct": right, "pictures": len(truth)})
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


def _cell(counts: tuple[int, int] | None) -> str:
    if counts is None:
        return ""
    low, high = wilson_interval(*counts)
    return f"{100 * counts[0] / counts[1]:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


if __name__ == "__main__":
    main()
