"""Issue 12: what a seed ensemble (finetune.members) adds to one fine-tuned model, on a
validation set. For seeds 0..S-1 the recipe is fitted as one model (finetune.members=1,
finetune.seed=s); every single model is scored, and so is the mean of the first k models'
probabilities for k = 1..S, which is what finetune.members=k fits (tests/test_finetuning.py checks
that equality), so both come from the same fits.

    python benchmarks/seed_ensembles.py RUN [--recipe "finetune.unlabeled=entropy"] [--seeds 5]
        [--folds 5] [--scratch]

Scored on the unlabeled pictures against their answers (a validation set such as fashion-swap,
benchmarks/swap_roles.py), or with --folds K on the labeled pictures only: each is labeled by
models fitted without it (K stratified folds, seeded 0), the unlabeled pictures and the held-out
fold the recipe's unlabeled pool, as `metafew select` does. --scratch starts from the run's
initial weights (build_learner) instead of its meta-trained ones: the same recipe without
meta-learning. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch

from metafew.augment import augment_spec
from metafew.data import LabeledImages
from metafew.finetuning import finetune, predict_proba
from metafew.learner import build_learner
from metafew.selection import stratified_folds
from metafew.stages.common import meta_learner, run_config, unlabeled_pictures
from metafew.stages.finetune import SECTIONS, labeled_pictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--recipe", default="", help="finetune.* / augment.* overrides")
    parser.add_argument("--seeds", type=int, default=5, help="single models fitted (seeds 0..S-1)")
    parser.add_argument("--folds", type=int, default=0, help="score on the labeled pictures by K folds")
    parser.add_argument("--scratch", action="store_true", help="from the initial weights, not M_meta")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = run_config(args.run, shlex.split(args.recipe), SECTIONS)
    novel = labeled_pictures(base, None, args.run, None)
    pictures, _ = unlabeled_pictures(base, None, args.run, None)

    def probabilities(
        seed: int, kept: torch.Tensor, pool: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """One model (seed `seed`) fitted on the labeled pictures `kept`: probabilities [n, ways]."""
        overrides = [*shlex.split(args.recipe), "finetune.members=1", f"finetune.seed={seed}"]
        cfg = run_config(args.run, overrides, SECTIONS)
        learner, _ = meta_learner(args.run, cfg, "best")
        if args.scratch:
            learner = build_learner(cfg, learner.device, learner.train_classes)
        labeled = LabeledImages(novel.images[kept], novel.labels[kept], novel.classes)
        model, _ = finetune(cfg, learner, labeled, None if cfg.finetune.unlabeled == "none" else pool)
        return predict_proba(learner, model, targets, spec=augment_spec(cfg), seed=seed)

    started = time.perf_counter()
    everyone = torch.arange(len(novel.labels))
    if args.folds:
        truth = novel.labels
        probs = [torch.zeros(len(truth), len(novel.classes)) for _ in range(args.seeds)]
        for held in stratified_folds(truth, args.folds, 0):
            kept = everyone[~torch.isin(everyone, held)]
            pool = torch.cat([pictures.images, novel.images[held]])
            for seed in range(args.seeds):
                probs[seed][held] = probabilities(seed, kept, pool, novel.images[held])
    else:
        assert pictures.answers is not None, "the unlabeled pictures need answers (or give --folds)"
        truth = torch.tensor([novel.classes.index(a) for a in pictures.answers])
        probs = [probabilities(s, everyone, pictures.images, pictures.images) for s in range(args.seeds)]
    right = [int((p.argmax(-1) == truth).sum()) for p in probs]
    ensembles = [
        int((torch.stack(probs[:k]).mean(0).argmax(-1) == truth).sum()) for k in range(1, args.seeds + 1)
    ]
    print(
        json.dumps(
            {
                "run": str(args.run),
                "recipe": args.recipe,
                "scored_on": f"labeled, {args.folds} folds" if args.folds else "unlabeled answers",
                "scratch": args.scratch,
                "pictures": len(truth),
                "single_models_right": right,
                "ensemble_of_first_k_right": ensembles,
                "seconds": round(time.perf_counter() - started),
            }
        )
    )


if __name__ == "__main__":
    main()
