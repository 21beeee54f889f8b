"""Fetching dataset files: mirrors, retries, checksums, atomic placement, clear offline errors.

A dataset names its files as `RemoteFile`s (file name, digest, mirrors). `ensure_files` checks
the copies already in the dataset folder and, only when allowed (`data.download=true` or
`metafew data prepare`), downloads the missing ones:

- each URL of `mirrors` is tried in order, each up to `retries` times with a growing pause; the
  environment variable METAFEW_MIRROR (a base URL or folder, e.g. a cluster's shared copy) is
  tried before the official ones;
- the bytes go to a hidden temporary file in the same folder, are checked (not a web page, the
  published digest) and only then renamed into place, so an interrupted or wrong download never
  leaves a file that looks complete;
- when every source fails, the error says which file, why, and where to put it by hand.

Library code never prints: progress goes to an optional callback (the CLI draws a bar).
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metafew.errors import DataError

MIRROR_ENV = "METAFEW_MIRROR"
"""Environment variable: a base URL (or local folder) tried before a file's official mirrors."""

CHUNK = 1 << 20

Progress = Callable[[str, int, int | None], None]
"""progress(file name, bytes so far, total bytes or None)."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its `name` in the dataset folder, `algorithm`/`digest` of the
    published bytes (hashlib names, hex digest) and the base URLs it can be fetched from
    (`url = mirror + name`)."""

    name: str
    algorithm: str
    digest: str
    mirrors: tuple[str, ...]
    page: str

    def urls(self) -> list[str]:
        """Candidate URLs, METAFEW_MIRROR first."""
        bases = [os.environ[MIRROR_ENV]] if os.environ.get(MIRROR_ENV) else []
        return [_join(base, self.name) for base in (*bases, *self.mirrors)]


def _join(base: str, name: str) -> str:
    if "://" not in base:  # a plain folder: a file:// URL
        return Path(base, name).resolve().as_uri()
    return base.rstrip("/") + "/" + urllib.parse.quote(name)


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the file at `path` (read in 1 MiB chunks)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def looks_like_html(head: bytes) -> bool:
    """True for bytes that start like a web page (an error or login page saved as data)."""
    text = head.lstrip()[:64].lower()
    return text.startswith((b"<!doctype", b"<html", b"<head", b"<?xml"))


def verify(path: Path, remote: RemoteFile) -> None:
    """Refuse `path` unless it holds the published bytes of `remote`; the error names the file."""
    with path.open("rb") as handle:
        head = handle.read(512)
    if looks_like_html(head):
        raise DataError(
            f"{str(path)!r} is a web page, not {remote.name} (a failed download?): delete it and "
            f"fetch it again (metafew data prepare, or by hand from {remote.page})"
        )
    digest = file_digest(path, remote.algorithm)
    if digest != remote.digest:
        raise DataError(
            f"{str(path)!r}: {remote.algorithm} {digest} does not match the published "
            f"{remote.digest}; the file is corrupt or not the official one: delete it and fetch it "
            f"again (metafew data prepare, or by hand from {remote.page})"
        )


def _fetch_once(url: str, part: Path, name: str, progress: Progress | None, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "metafew"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        kind = response.headers.get("Content-Type", "") if hasattr(response, "headers") else ""
        if kind.startswith("text/html"):
            raise ValueError(f"the server sent a web page (Content-Type {kind})")
        length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        total = int(length) if length and length.isdigit() else None
        done = 0
        with part.open("wb") as out:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(name, done, total)
            out.flush()
            os.fsync(out.fileno())
    if total is not None and done != total:
        raise ValueError(f"connection closed after {done} of {total} bytes")


def download(
    remote: RemoteFile,
    folder: Path,
    *,
    retries: int = 3,
    pause: float = 1.0,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> Path:
    """Fetch `remote` into `folder` (created if needed), checked, atomically; returns its path.

    Every URL is tried up to `retries` times (pause, 2·pause, ... in between); a download that
    arrives but fails the checks is not retried from the same URL (the URL serves wrong data).
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.name
    part = folder / f".{remote.name}.part-{os.getpid()}"
    failures: dict[str, str] = {}  # the last reason of each URL: every source is named
    try:
        for url in remote.urls():
            for attempt in range(retries):
                try:
                    _fetch_once(url, part, remote.name, progress, timeout)
                    verify(part, remote)
                except DataError as exc:  # wrong bytes: another try from here would repeat them
                    why = str(exc).removeprefix(repr(str(part))).lstrip(": ")  # verify's words
                    failures[url] = why.split(";")[0].split(": delete")[0]
                    break
                except (OSError, ValueError, urllib.error.URLError) as exc:
                    failures[url] = str(getattr(exc, "reason", exc))
                    if attempt + 1 < retries:
                        time.sleep(pause * 2**attempt)
                    continue
                os.replace(part, target)
                _fsync_dir(folder)
                return target
    finally:
        part.unlink(missing_ok=True)
    reasons = "; ".join(f"{url}: {why}" for url, why in failures.items())
    raise DataError(
        f"could not download {remote.name} ({reasons}); without network, fetch it "
        f"from {remote.page} and put it at {str(target)!r}, or set {MIRROR_ENV} to a folder or "
        "URL that holds it"
    )


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_sources(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Provenance of a dataset's sources, one entry each: a file (an archive) by name, size and
    SHA-256; a folder by name, file count, total size and one SHA-256 over every file's relative
    path and SHA-256 (hidden files skipped), so that any changed, added or removed file shows."""
    described: list[dict[str, Any]] = []
    for path in paths:
        if path.is_file():
            described.append(
                {"name": path.name, "bytes": path.stat().st_size, "sha256": file_digest(path, "sha256")}
            )
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file())
        files = [p for p in files if not any(x.startswith(".") for x in p.relative_to(path).parts)]
        tree = hashlib.sha256()
        for file in files:
            tree.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file, 'sha256')}\n".encode())
        described.append(
            {
                "name": path.name,
                "files": len(files),
                "bytes": sum(p.stat().st_size for p in files),
                "tree_sha256": tree.hexdigest(),
            }
        )
    return described


def dataset_root(root: str | None, create: bool, holds: str, example: str) -> Path:
    """`data.root` as an existing folder (made when `create`, i.e. downloads are allowed); the
    errors say what it should hold (`holds`) and give `data.root=<example>`."""
    if not root:
        raise DataError(
            f"data.root is not set: point it at a folder holding {holds}, e.g. data.root={example}"
        )
    path = Path(root)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise DataError(f"data.root {str(path)!r} does not exist: make it a folder holding {holds}")
    return path


def ensure_files(
    remotes: Sequence[RemoteFile],
    folder: Path,
    *,
    allow_download: bool,
    progress: Progress | None = None,
) -> list[Path]:
    """The paths of `remotes` in `folder`, each verified; missing ones are downloaded when
    `allow_download`, else the error says how to get them."""
    paths = []
    for remote in remotes:
        path = folder / remote.name
        if path.is_file():
            verify(path, remote)
        elif allow_download:
            download(remote, folder, progress=progress)
        else:
            raise DataError(
                f"{str(path)!r} not found: run `metafew data prepare` for this dataset, set "
                f"data.download=true, or fetch {remote.name} from {remote.page} into {str(folder)!r}"
            )
        paths.append(path)
    return paths
