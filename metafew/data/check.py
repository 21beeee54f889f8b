"""`metafew data check`: open every picture of a folder or zip fully and report what is wrong.

Each picture is decoded completely (not just its header) under Pillow's decompression-bomb
limits, so that the problems a training run would hit an hour in show up in seconds:

    unreadable  not an image Pillow knows (a text file renamed .png, an HTML page)
    truncated   the file ends before the image data does
    corrupt     the data is damaged (bad checksum, bad header, decoder error)
    huge        more pixels than Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
    tiny        a side shorter than `min_side` pixels (decodes, but carries almost nothing)

Pictures are counted per class, the class being the folder that holds them (relative to the
checked path). Files without an image suffix are counted as skipped, not opened.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from metafew.data.folder import IMAGE_SUFFIXES, MIN_SIDE
from metafew.errors import DataError


@dataclass(frozen=True)
class Problem:
    """One bad picture: where (path, or archive:member), what kind, and Pillow's words."""

    where: str
    kind: str
    detail: str


@dataclass
class Report:
    """Readable pictures per class, the problems found and the number of skipped files."""

    counts: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    skipped: int = 0


def inspect_picture(data: bytes, min_side: int) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with the encoded picture `data`, or None if it is fine."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return "huge", str(exc)
    except UnidentifiedImageError:
        return "unreadable", "not an image format Pillow can read"
    except OSError as exc:
        kind = "truncated" if "truncated" in str(exc) else "corrupt"
        return kind, str(exc)
    except (SyntaxError, ValueError, EOFError) as exc:
        return "corrupt", str(exc) or type(exc).__name__
    if min(width, height) < min_side:
        return "tiny", f"{width}x{height} pixels (fewer than {min_side} on a side)"
    return None


Entry = tuple[str, str, "bytes | Problem | None"]
"""(where, class, the picture's bytes; a Problem when it cannot even be read; None: not an image)."""


def _folder_entries(root: Path) -> Iterator[Entry]:
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        rel = path.relative_to(root)
        is_image = path.suffix.lower() in IMAGE_SUFFIXES
        yield str(path), rel.parent.as_posix(), path.read_bytes() if is_image else None


def _zip_entries(path: Path) -> Iterator[Entry]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{str(path)!r} is not a readable zip: {exc}") from None
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            name = PurePosixPath(info.filename)
            if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in name.parts):
                continue
            where = f"{path}:{info.filename}"
            if name.suffix.lower() not in IMAGE_SUFFIXES:
                yield where, name.parent.as_posix(), None
                continue
            try:
                data = archive.read(info)
            except (OSError, zipfile.BadZipFile) as exc:  # a damaged member (CRC) is corrupt
                yield where, name.parent.as_posix(), Problem(where, "corrupt", str(exc))
                continue
            yield where, name.parent.as_posix(), data


def check_pictures(path: Path, min_side: int = MIN_SIDE) -> Report:
    """Open every picture under folder `path` (or in zip `path`) and report per class."""
    if path.is_file() and path.suffix.lower() == ".zip":
        entries = _zip_entries(path)
    elif path.is_dir():
        entries = _folder_entries(path)
    else:
        raise DataError(f"{str(path)!r} is neither a folder nor a .zip: give a folder of pictures")
    report = Report()
    for where, group, data in entries:
        if data is None:
            report.skipped += 1
            continue
        if isinstance(data, Problem):
            report.problems.append(data)
            continue
        found = inspect_picture(data, min_side)
        if found is None:
            report.counts[group] += 1
        else:
            report.problems.append(Problem(where, *found))
    return report
