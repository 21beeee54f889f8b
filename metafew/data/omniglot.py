"""Omniglot: 1623 handwritten characters from 50 alphabets, drawn once by each of 20 people.

Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
induction", Science 2015; files from https://github.com/brendenlake/omniglot (python/, MIT).

`data.root` holds the official zips, read in place (no extraction), or their extracted folders;
missing zips are downloaded (and checked) with `data.download=true` or `metafew data prepare`:

    images_background_small1.zip   or  images_background_small1/<Alphabet>/characterNN/*.png
    images_background_small2.zip       (5 alphabets each; Greek and Latin are in both)
    images_background.zip              (30 alphabets, 964 characters)
    images_evaluation.zip              (20 alphabets, 659 characters)

A zip wins over a folder of the same name, because only zips can be checked against the
published digests. A character is the class `Alphabet/characterNN`, keyed by (alphabet, folder)
so that one found in two parts counts once (pictures merged by file name, the first part wins).

Splits (`data.omniglot.split`):
- `vinyals` (default): all 1623 characters of background + evaluation pooled, ordered by the
  SHA-256 of their name `Alphabet/characterNN`; the first 1200 meta-train, the other 423 are the
  novel (test) classes: the sizes of Vinyals et al. 2016 and MAML (Finn et al. 2017), whose own
  draws depended on file-system order. `val_characters` of the 1200 (the last ones) validate.
- `lake`: background (30 alphabets) meta-trains, evaluation (20 alphabets) tests (Lake et al.).
- `small1`, `small2`: one minimal background set (5 alphabets) meta-trains, evaluation tests.
- `alphabets`: the parts in `sources`; `test_alphabets` are the novel classes.
Except in `vinyals`, `val_alphabets` moves meta-training alphabets to validation. Meta-train
characters also appear rotated by 90, 180 and 270 degrees (counter-clockwise, as `torch.rot90`)
as new classes `Alphabet/characterNN@rot90` etc. (Santoro et al. 2016; Finn et al. 2017);
held-out splits are never rotated. `data.novel_labeled` keeps that many drawers (by file name)
of each novel character labeled; the others become unlabeled pictures for `metafew predict`.

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

from metafew.config.schema import DataConfig, OmniglotConfig, comma_list
from metafew.data.base import Dataset, FewShotData, LabeledImages, Splits, split_novel
from metafew.data.download import Progress, RemoteFile, dataset_root, download, verify
from metafew.data.folder import decode_image
from metafew.errors import ConfigError, DataError

PARTS: dict[str, str] = {
    "small1": "images_background_small1",
    "small2": "images_background_small2",
    "background": "images_background",
    "evaluation": "images_evaluation",
}
"""`data.omniglot.sources` names -> zip file stem / folder name."""

OMNIGLOT_SOURCES = ("small1", "small2", "background", "evaluation")
"""Omniglot parts by short name: images_background_small1/2 (the minimal background sets),
images_background (30 alphabets) and images_evaluation (20 alphabets)."""

DOWNLOAD_PAGE = "https://github.com/brendenlake/omniglot/tree/master/python"
MIRRORS = ("https://raw.githubusercontent.com/brendenlake/omniglot/master/python/",)

_DIGESTS: dict[str, tuple[str, str]] = {
    # sha256 of the published minimal sets, as listed in ../shared/datasets/README.md
    "small1": ("sha256", "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
    "small2": ("sha256", "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
    # md5 only: the sums torchvision checks (torchvision/datasets/omniglot.py, `zips_md5`)
    "background": ("md5", "68d2efa1b9178cc56df9314c21c6e718"),
    "evaluation": ("md5", "6b91aef0f799c5bb55b94e3f2daec811"),
}

REMOTES: dict[str, RemoteFile] = {
    name: RemoteFile(f"{PARTS[name]}.zip", algorithm, digest, MIRRORS, DOWNLOAD_PAGE)
    for name, (algorithm, digest) in _DIGESTS.items()
}
"""The official zips by part name, with their published digests."""

VINYALS_TRAIN = 1200
"""Characters of the meta-training side of the Vinyals et al. (2016) split; the other 423 of the
1623 are the test characters (also MAML's split, Finn et al. 2017)."""

Character = tuple[str, str]
"""(alphabet, character folder), e.g. ("Greek", "character01")."""


@dataclass
class _Part:
    """One opened part: a zip (`archive` set) or an extracted folder. `members` maps
    (alphabet, character, file name) to the zip member name or the path below `path`."""

    name: str
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
    """Refuse `path` if it is not a zip archive or, for an official file name, does not match
    its published digest."""
    remote = next((r for r in REMOTES.values() if r.name == path.name), None)
    if remote is not None:
        verify(path, remote)
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head.startswith(b"PK"):
        raise DataError(
            f"{str(path)!r} is not a zip archive: delete it and download it again from {DOWNLOAD_PAGE}"
        )


def _key(parts: list[str]) -> tuple[str, str, str] | None:
    """(alphabet, character, file) from a path's components ending `<Alphabet>/<character>/<f>.png`."""
    if len(parts) < 3 or not parts[-1].lower().endswith(".png"):
        return None
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return parts[-3], parts[-2], parts[-1]


def part_names(cfg: OmniglotConfig) -> list[str]:
    """The parts a split reads (`PARTS` keys), meta-training part first."""
    if cfg.split == "alphabets":
        return [name.strip() for name in cfg.sources.split("+")]
    if cfg.split in ("small1", "small2"):
        return [cfg.split, "evaluation"]
    return ["background", "evaluation"]  # lake and vinyals use the full set


def find_parts(cfg: DataConfig, progress: Progress | None = None) -> list[Path]:
    """The zip (verified) or extracted folder of every part the split needs, downloading missing
    zips when `cfg.download`."""
    root = _root(cfg)
    paths = []
    for name in part_names(cfg.omniglot):
        zip_path, folder = root / f"{PARTS[name]}.zip", root / PARTS[name]
        if zip_path.is_file():
            check_file(zip_path)
            paths.append(zip_path)
        elif folder.is_dir():
            paths.append(folder)
        elif cfg.download:
            paths.append(download(REMOTES[name], root, progress=progress))
        else:
            raise DataError(
                f"Omniglot part {name!r} not found: neither {str(zip_path)!r} nor the folder "
                f"{str(folder)!r} exists; run `metafew data prepare omniglot --root {root}`, set "
                f"data.download=true, or fetch {PARTS[name]}.zip from {DOWNLOAD_PAGE}"
            )
    return paths


def open_part(name: str, path: Path, stack: ExitStack) -> _Part:
    """Open the part at `path`: a zip (kept open by `stack`) or an extracted folder."""
    if path.suffix == ".zip":
        try:
            archive = stack.enter_context(zipfile.ZipFile(path))
        except zipfile.BadZipFile as exc:
            raise DataError(f"{str(path)!r} is not a readable zip ({exc}): download it again") from None
        members = {}
        for info in archive.infolist():
            key = None if info.is_dir() else _key(info.filename.split("/"))
            if key is not None:
                members[key] = info.filename
        part = _Part(name, path, archive, members)
    else:
        files = (p.relative_to(path) for p in path.rglob("*") if p.is_file())
        keyed = ((_key(list(rel.parts)), rel.as_posix()) for rel in files)
        part = _Part(name, path, None, {key: rel for key, rel in keyed if key is not None})
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


def _channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    return images if channels == 1 else images.expand(-1, channels, -1, -1).contiguous()


def _root(cfg: DataConfig) -> Path:
    where = f"the Omniglot zips (images_background.zip, images_evaluation.zip, ... from {DOWNLOAD_PAGE})"
    return dataset_root(cfg.root, cfg.download, where, "omniglot")


def _labeled(chars: list[Character], pictures: Catalog, size: int, channels: int) -> LabeledImages:
    images, labels, _ = decode_characters(chars, pictures, size)
    return LabeledImages(_channels(images, channels), labels, [_name(c) for c in chars])


def vinyals_order(chars: list[Character]) -> list[Character]:
    """The characters ordered by the SHA-256 of `Alphabet/characterNN`: a fixed pseudo-random
    order that depends on the names alone (not on file-system order or an RNG's version)."""
    return sorted(chars, key=lambda c: hashlib.sha256(_name(c).encode()).hexdigest())


def assign_splits(
    cfg: OmniglotConfig, pictures: Catalog
) -> tuple[list[Character], list[Character], list[Character]]:
    """(meta-train, validation, test) characters of the configured split."""
    chars = list(pictures)
    if cfg.split == "vinyals":
        if len(chars) != 1623:
            raise DataError(
                f"the vinyals split needs all 1623 characters (images_background + "
                f"images_evaluation), found {len(chars)}; use a complete set or another data.omniglot.split"
            )
        order = vinyals_order(chars)
        cut = VINYALS_TRAIN - cfg.val_characters
        return sorted(order[:cut]), sorted(order[cut:VINYALS_TRAIN]), sorted(order[VINYALS_TRAIN:])
    alphabets = sorted({alphabet for alphabet, _ in chars})
    val = _pick_alphabets("val_alphabets", cfg.val_alphabets, alphabets, cfg.split)
    test: set[str]
    if cfg.split == "alphabets":
        test = _pick_alphabets("test_alphabets", cfg.test_alphabets, alphabets, cfg.sources)
    else:  # lake, small1, small2: the evaluation part is the test set
        test = {alphabet for (alphabet, _), items in pictures.items() if items[0][0].name == "evaluation"}
        if val & test:
            raise ConfigError(
                f"data.omniglot.val_alphabets: {', '.join(sorted(val & test))} belong to the test "
                "alphabets of this split; name meta-training alphabets"
            )
    held = test | val
    train = [c for c in chars if c[0] not in held]
    if not train:
        raise ConfigError(
            "data.omniglot: every alphabet is held out for test or validation; leave some for meta-training"
        )
    return train, [c for c in chars if c[0] in val], [c for c in chars if c[0] in test]


def build_omniglot(cfg: DataConfig, sources: list[Path], recorded: Splits | None = None) -> FewShotData:
    """The splits of `cfg.omniglot` decoded from the parts at `sources` (see the module docstring)."""
    ocfg: OmniglotConfig = cfg.omniglot
    names = part_names(ocfg)
    with ExitStack() as stack:  # keeps the zips open while their pictures are decoded
        pictures = catalog([open_part(name, path, stack) for name, path in zip(names, sources)])
        train_chars, val_chars, test_chars = assign_splits(ocfg, pictures)
        train = _labeled(train_chars, pictures, cfg.image_size, 1)
        if ocfg.rotations:
            train = with_rotations(train)
        meta_val = _labeled(val_chars, pictures, cfg.image_size, cfg.channels) if val_chars else None
        novel = _labeled(test_chars, pictures, cfg.image_size, cfg.channels)
    novel, unlabeled = split_novel(novel, cfg.novel_labeled)
    train = LabeledImages(_channels(train.images, cfg.channels), train.labels, train.classes)
    return FewShotData(train, meta_val, novel, unlabeled, {"split": ocfg.split})


def check_config(cfg: DataConfig) -> None:
    """data.omniglot: the sources' names and the alphabet lists' syntax and overlaps (whether the
    alphabets exist depends on the files and is checked when they are read)."""
    section = cfg.omniglot
    parts = [part.strip() for part in section.sources.split("+")]
    bad = [part for part in parts if part not in OMNIGLOT_SOURCES]
    if bad or len(set(parts)) != len(parts):
        raise ConfigError(
            f"data.omniglot.sources = {section.sources!r}: must be distinct names from "
            f"{', '.join(OMNIGLOT_SOURCES)} joined by '+', e.g. small1+small2"
        )
    if not comma_list(section.test_alphabets):
        raise ConfigError("data.omniglot.test_alphabets is empty: name the alphabets of the novel classes")
    both = sorted(set(comma_list(section.test_alphabets)) & set(comma_list(section.val_alphabets)))
    if both:
        raise ConfigError(
            f"alphabets in both data.omniglot.test_alphabets and val_alphabets: {', '.join(both)}"
        )


OMNIGLOT = Dataset(
    sources=find_parts,
    build=build_omniglot,
    summary="1623 handwritten characters of 50 alphabets, 20 drawers each (Lake et al. 2015)",
    files="images_background.zip, images_evaluation.zip (or the minimal "
    "images_background_small1/2.zip), downloadable; zips or extracted folders in data.root",
    remotes=tuple(REMOTES.values()),
    check=check_config,
)
