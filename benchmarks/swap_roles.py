"""A second seed-shaped folder set from fashion-seed's *labeled* pictures only, with the class
roles swapped, on which the label recipe's defaults are chosen (never on novel/unlabeled or
answers.csv, which stay for reporting):

    meta_train/<novel class>/     the 15 labeled pictures of each of fashion-seed's novel classes
    novel/labeled/<meta class>/   the first 15 (by file name) of each meta-train class
    novel/unlabeled/*.png         the other 15 of each, shuffled names (seeded)
    novel/answers.csv             file,label for those

    python benchmarks/swap_roles.py ../shared/datasets/fashion-seed /tmp/fashion-swap
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="fashion-seed (meta_train/, novel/labeled/)")
    parser.add_argument("target", type=Path, help="new folder (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the unlabeled file names")
    args = parser.parse_args()
    if args.target.exists():
        parser.error(f"{args.target} exists")
    for folder in sorted((args.source / "novel" / "labeled").iterdir()):
        shutil.copytree(folder, args.target / "meta_train" / folder.name)
    pending = []
    for folder in sorted((args.source / "meta_train").iterdir()):
        pictures = sorted(folder.glob("*.png"))
        half = len(pictures) // 2
        (args.target / "novel" / "labeled" / folder.name).mkdir(parents=True)
        for picture in pictures[:half]:
            shutil.copy(picture, args.target / "novel" / "labeled" / folder.name / picture.name)
        pending += [(picture, folder.name) for picture in pictures[half:]]
    random.Random(args.seed).shuffle(pending)
    unlabeled = args.target / "novel" / "unlabeled"
    unlabeled.mkdir(parents=True)
    with (args.target / "novel" / "answers.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label"])
        for i, (picture, label) in enumerate(pending):
            shutil.copy(picture, unlabeled / f"img_{i:03d}.png")
            writer.writerow([f"img_{i:03d}.png", label])
    print(
        f"{args.target}: meta_train {len(list((args.target / 'meta_train').iterdir()))} classes, "
        f"{len(pending)} unlabeled pictures"
    )


if __name__ == "__main__":
    main()
