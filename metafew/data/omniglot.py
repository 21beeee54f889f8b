"""Omniglot: 1623 handwritten characters from 50 alphabets, drawn once by each of 20 people.

Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
induction", Science 2015; files from https://github.com/brendenlake/omniglot (python/, MIT).

`data.root` holds the official zips, read in place (no extraction), or their extracted folders:

    images_background_small1.zip   or  images_background_small1/<Alphabet>/characterNN/*.png
    images_background_small2.zip       (5 alphabets each; Greek and Latin are in both)
    images_background.zip              (30 alphabets, 964 characters)
    images_evaluation.zip              (20 alphabets, 659 characters)

`data.omniglot.sources` picks the parts; a zip wins over a folder of the same name, because only
zips can be checked against known checksums. A character is the class `Alphabet/characterNN`,
keyed by (alphabet, folder) so that one found in two parts counts once (pictures merged by file
name, the first part listed wins). Splits are by alphabet, as in Lake et al.: the test alphabets
give the novel classes, the validation alphabets meta_val, every other alphabet meta_train.
Meta-train characters also appear rotated by 90, 180 and 270 degrees (counter-clockwise, as
`torch.rot90`) as new classes `Alphabet/characterNN@rot90` etc. (Santoro et al. 2016; Finn et al.
2017); held-out splits are never rotated.

Pictures are 105x105 1-bit PNGs of black strokes on white. They are converted to 8-bit gray,
resized with Pillow's LANCZOS filter (the filter of MAML's resize script; there Pillow silently
used nearest-neighbour because the images were still 1-bit, here they are anti-aliased) and
inverted, so that ink is bright on a dark background like the glyph data. Everything is sorted
by name: file-system and zip order never matter.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metafew.config import DataConfig, OmniglotConfig, comma_list
from metafew.data.base import FewShotData, LabeledImages, UnlabeledImages
from metafew.data.folder import decode_image
from metafew.errors import ConfigError, DataError

PARTS: dict[str, str] = {
    "small1": "images_background_small1",
    "small2": "images_background_small2",
    "background": "images_background",
    "evaluation": "images_evaluation",
}
"""`data.omniglot.sources` names -> zip file stem / folder name."""

CHECKSUMS: dict[str, tuple[str, str]] = {
    # sha256 of the published minimal sets, as listed in ../shared/datasets/README.md
    "images_background_small1.zip": (
        "sha256",
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    ),
    "images_background_small2.zip": (
        "sha256",
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    ),
    # md5 only: the sums torchvision checks (torchvision/datasets/omniglot.py, `zips_md5`)
    "images_background.zip": ("md5", "68d2efa1b9178cc56df9314c21c6e718"),
    "images_evaluation.zip": ("md5", "6b91aef0f799c5bb55b94e3f2daec811"),
}
"""Known digests of the official zips: (hashlib algorithm, hex digest)."""

DOWNLOAD_PAGE = "https://github.com/brendenlake/omniglot/tree/master/python"
_SHUFFLE_SEED = 0x0A1  # fixed order of the unlabeled pictures

Character = tuple[str, str]
"""(alphabet, character folder), e.g. ("Greek", "character01")."""


@dataclass
class _Part:
    """One opened part: a zip (`archive` set) or an extracted folder. `members` maps
    (alphabet, character, file name) to the zip member name or the path below `path`."""

    path: Path
    archive: zipfile.ZipFile | None
    members: dict[tuple[str, str, str], str]

    def where(self, key: tuple[str, str, str]) -> str:
        """`archive.zip:member` or the picture's path, for error messages."""
        return f"{self.path}:{self.members[key]}" if self.archive else str(self.path / self.members[key])

    def read(self, key: tuple[str, str, str]) -> bytes:
        try:
            if self.archive is not None:
                return self.archive.read(self.members[key])
            return (self.path / self.members[key]).read_bytes()
        except (OSError, zipfile.BadZipFile) as exc:  # BadZipFile: CRC error in a member
            raise DataError(f"cannot read {self.where(key)!r}: {exc}; replace the file") from None


Catalog = dict[Character, list[tuple[_Part, tuple[str, str, str]]]]
"""Each character's pictures as (part, member key), sorted by file name."""


def check_file(path: Path) -> None:
    """Refuse `path` if it is not a zip archive or does not match its known digest."""
    with path.open("rb") as handle:
        head = handle.read(64)
    if not head.startswith(b"PK"):
        text = head.lstrip().lower()
        looks = (
            " (it looks like a web page: a failed download?)" if text.startswith((b"<!doc", b"<html")) else ""
        )
        raise DataError(
            f"{str(path)!r} is not a zip archive{looks}: delete it and download it again from {DOWNLOAD_PAGE}"
        )
    known = CHECKSUMS.get(path.name)
    if known is None:
        return
    algorithm, expected = known
    digest = hashlib.new(algorithm, path.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != expected:
        raise DataError(
            f"{str(path)!r}: {algorithm} {digest} does not match the official {expected}; the file is "
            f"corrupt or not the published one: delete it and download it again from {DOWNLOAD_PAGE}"
        )


def _key(parts: list[str]) -> tuple[str, str, str] | None:
    """(alphabet, character, file) from a path's components ending `<Alphabet>/<character>/<f>.png`."""
    if len(parts) < 3 or not parts[-1].lower().endswith(".png"):
        return None
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return parts[-3], parts[-2], parts[-1]


def open_part(root: Path, name: str, stack: ExitStack) -> _Part:
    """Open part `name` (a `PARTS` key) under `root`: its zip (checked) or else its folder."""
    stem = PARTS[name]
    zip_path, folder = root / f"{stem}.zip", root / stem
    if zip_path.is_file():
        check_file(zip_path)
        try:
            archive = stack.enter_context(zipfile.ZipFile(zip_path))
        except zipfile.BadZipFile as exc:
            raise DataError(f"{str(zip_path)!r} is not a readable zip ({exc}): download it again") from None
        members = {}
        for info in archive.infolist():
            key = None if info.is_dir() else _key(info.filename.split("/"))
            if key is not None:
                members[key] = info.filename
        part = _Part(zip_path, archive, members)
    elif folder.is_dir():
        files = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
        keyed = ((_key(list(rel.parts)), rel.as_posix()) for rel in files)
        part = _Part(folder, None, {key: rel for key, rel in keyed if key is not None})
    else:
        raise DataError(
            f"Omniglot part {name!r} not found: neither {str(zip_path)!r} nor the folder {str(folder)!r} "
            f"exists; download {stem}.zip from {DOWNLOAD_PAGE} into {str(root)!r} "
            "or change data.omniglot.sources"
        )
    if not part.members:
        raise DataError(f"{str(part.path)!r} holds no <Alphabet>/<character>/*.png pictures")
    return part


def catalog(parts: list[_Part]) -> Catalog:
    """Every character's pictures, sorted by file name; a picture found in several parts (same
    alphabet, character and file name) is taken once, from the first part."""
    found: dict[Character, dict[str, tuple[_Part, tuple[str, str, str]]]] = {}
    for part in parts:
        for key in part.members:
            found.setdefault(key[:2], {}).setdefault(key[2], (part, key))
    return {char: [files[f] for f in sorted(files)] for char, files in sorted(found.items())}


def decode_picture(data: bytes, where: str, size: int) -> np.ndarray:
    """One Omniglot PNG -> [size, size] uint8, ink bright (255) on dark (0). The 1-bit picture
    becomes 0/255 gray before the LANCZOS resize, so that the resize anti-aliases."""
    return 255 - decode_image(io.BytesIO(data), size, 1, where, Image.Resampling.LANCZOS)[0]


def decode_characters(
    chars: list[Character], pictures: Catalog, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode the pictures of `chars`: images [n, 1, size, size] uint8, labels [n] (index into
    `chars`) and drawer rank [n] (position of the picture within its character, by file name)."""
    entries = [(label, rank, item) for label, c in enumerate(chars) for rank, item in enumerate(pictures[c])]
    out = np.empty((len(entries), 1, size, size), dtype=np.uint8)
    for row, (_, _, (part, key)) in enumerate(entries):
        out[row, 0] = decode_picture(part.read(key), part.where(key), size)
    labels = torch.tensor([label for label, _, _ in entries], dtype=torch.int64)
    ranks = torch.tensor([rank for _, rank, _ in entries], dtype=torch.int64)
    return torch.from_numpy(out), labels, ranks


def with_rotations(base: LabeledImages) -> LabeledImages:
    """`base` plus each class rotated by 90, 180 and 270 degrees (torch.rot90, counter-clockwise)
    as new classes `<name>@rot<deg>`; class k*len(base.classes)+c is class c rotated k times."""
    n = len(base.classes)
    images = torch.cat([torch.rot90(base.images, k, dims=(2, 3)) for k in range(4)])
    labels = torch.cat([base.labels + k * n for k in range(4)])
    names = base.classes + [f"{c}@rot{90 * k}" for k in (1, 2, 3) for c in base.classes]
    return LabeledImages(images, labels, names)


def _pick_alphabets(key: str, text: str, alphabets: list[str], sources: str) -> set[str]:
    wanted = comma_list(text)
    unknown = [a for a in wanted if a not in alphabets]
    if unknown:
        raise ConfigError(
            f"data.omniglot.{key}: unknown alphabet(s) {', '.join(map(repr, unknown))} in "
            f"sources {sources!r}; valid: {', '.join(alphabets)}"
        )
    return set(wanted)


def _name(char: Character) -> str:
    return f"{char[0]}/{char[1]}"


def _split_novel(
    chars: list[Character], pictures: Catalog, size: int, labeled: int
) -> tuple[LabeledImages, UnlabeledImages | None]:
    """Novel characters: the first `labeled` drawers (by file name) labeled, the rest unlabeled
    pictures in a fixed shuffled order with their answers."""
    images, labels, ranks = decode_characters(chars, pictures, size)
    names = [_name(c) for c in chars]
    keep = ranks < labeled
    novel = LabeledImages(images[keep], labels[keep], names)
    held = torch.nonzero(~keep).flatten()
    if len(held) == 0:
        return novel, None
    # shuffled so that the order of the pictures says nothing about their class
    order = torch.from_numpy(np.random.default_rng(_SHUFFLE_SEED).permutation(len(held)))
    held = held[order]
    answers = [names[i] for i in labels[held].tolist()]
    files = [f"unlabeled_{i:05d}.png" for i in range(len(held))]
    return novel, UnlabeledImages(images[held], files, answers)


def _channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    return images if channels == 1 else images.expand(-1, channels, -1, -1).contiguous()


def _with_channels(data: LabeledImages, channels: int) -> LabeledImages:
    return LabeledImages(_channels(data.images, channels), data.labels, data.classes)


def _root(cfg: DataConfig) -> Path:
    where = (
        "the Omniglot zips (images_background_small1.zip, images_background_small2.zip, ... "
        f"from {DOWNLOAD_PAGE})"
    )
    if not cfg.root:
        raise DataError(
            f"data.root is not set: point it at a folder holding {where}, e.g. data.root=omniglot"
        )
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} does not exist: make it a folder holding {where}")
    return root


def _labeled(chars: list[Character], pictures: Catalog, size: int) -> LabeledImages:
    images, labels, _ = decode_characters(chars, pictures, size)
    return LabeledImages(images, labels, [_name(c) for c in chars])


def load_omniglot(cfg: DataConfig) -> FewShotData:
    """The splits of `cfg.omniglot` read from `cfg.root` (see the module docstring)."""
    ocfg: OmniglotConfig = cfg.omniglot
    root = _root(cfg)
    with ExitStack() as stack:  # keeps the zips open while their pictures are decoded
        pictures = catalog([open_part(root, name.strip(), stack) for name in ocfg.sources.split("+")])
        alphabets = sorted({alphabet for alphabet, _ in pictures})
        test = _pick_alphabets("test_alphabets", ocfg.test_alphabets, alphabets, ocfg.sources)
        val = _pick_alphabets("val_alphabets", ocfg.val_alphabets, alphabets, ocfg.sources)
        train_chars = [c for c in pictures if c[0] not in test | val]
        if not train_chars:
            raise ConfigError(
                "data.omniglot: every alphabet is held out for test or validation; "
                "leave some for meta-training"
            )
        train = _labeled(train_chars, pictures, cfg.image_size)
        if ocfg.rotations:
            train = with_rotations(train)
        val_chars = [c for c in pictures if c[0] in val]
        meta_val = _labeled(val_chars, pictures, cfg.image_size) if val_chars else None
        novel_chars = [c for c in pictures if c[0] in test]
        novel, unlabeled = _split_novel(novel_chars, pictures, cfg.image_size, ocfg.novel_labeled)
    if unlabeled is not None and cfg.channels != 1:
        unlabeled = UnlabeledImages(
            _channels(unlabeled.images, cfg.channels), unlabeled.names, unlabeled.answers
        )
    return FewShotData(
        _with_channels(train, cfg.channels),
        None if meta_val is None else _with_channels(meta_val, cfg.channels),
        _with_channels(novel, cfg.channels),
        unlabeled,
    )
