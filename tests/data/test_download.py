"""metafew.data.download against a scripted HTTP server on 127.0.0.1: exact bytes, retries,
short reads, web pages, wrong bytes, mirrors (METAFEW_MIRROR first, as a URL or a folder), the
error that says where to put a file by hand, ensure_files, progress, and describe_sources."""

from __future__ import annotations

import hashlib
import itertools
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metafew.data import download as dl
from metafew.data.download import (
    MIRROR_ENV,
    RemoteFile,
    describe_sources,
    download,
    ensure_files,
    verify,
)
from metafew.errors import DataError

NAME = "data.bin"
GOOD = bytes(range(256)) * 40 + b"the end"
PAGE = "https://example.org/dataset"
HTML = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"


@dataclass
class Route:
    """What the server answers on one path: `fail_first` 500s, then `status` (200: `body` as
    `content_type`, declaring `length` bytes, default the body's length). `hits` counts requests."""

    body: bytes = GOOD
    content_type: str = "application/octet-stream"
    fail_first: int = 0
    status: int = 200
    length: int | None = None
    hits: int = 0


@dataclass
class Server:
    base: str
    routes: dict[str, Route] = field(default_factory=dict)

    def add(self, path: str, route: Route) -> Route:
        self.routes[path] = route
        return route


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        route = self.server.script.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        route.hits += 1
        if route.hits <= route.fail_first:
            self.send_error(500)
            return
        if route.status != 200:
            self.send_error(route.status)
            return
        self.send_response(200)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(route.body) if route.length is None else route.length))
        self.end_headers()
        self.wfile.write(route.body)  # HTTP/1.0: the connection closes after the response

    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
        pass


class _HTTPServer(ThreadingHTTPServer):
    script: Server


@pytest.fixture
def server() -> Iterator[Server]:
    """A scripted HTTP server on a free port of 127.0.0.1, shut down after the test."""
    httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
    httpd.script = Server(f"http://127.0.0.1:{httpd.server_address[1]}/")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.script
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def no_mirror_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def remote(*mirrors: str, data: bytes = GOOD, name: str = NAME) -> RemoteFile:
    return RemoteFile(name, "sha256", hashlib.sha256(data).hexdigest(), tuple(mirrors), PAGE)


def listing(folder: Path) -> list[str]:
    """Every entry of `folder`, hidden ones included ([] when it does not exist)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# download


def test_good_file_lands_with_exact_bytes(server: Server, tmp_path: Path) -> None:
    route = server.add("/a/data.bin", Route())
    folder = tmp_path / "new" / "folder"
    path = download(remote(server.base + "a/"), folder, pause=0)
    assert path == folder / NAME
    assert path.read_bytes() == GOOD
    assert listing(folder) == [NAME]  # no .part-* file left beside it
    assert route.hits == 1


def test_server_errors_are_retried(server: Server, tmp_path: Path) -> None:
    route = server.add("/a/data.bin", Route(fail_first=2))
    path = download(remote(server.base + "a/"), tmp_path, retries=3, pause=0)
    assert path.read_bytes() == GOOD
    assert route.hits == 3
    assert listing(tmp_path) == [NAME]


def test_a_mirror_that_keeps_failing_gives_way_to_the_next(server: Server, tmp_path: Path) -> None:
    bad = server.add("/a/data.bin", Route(fail_first=10))
    good = server.add("/b/data.bin", Route())
    path = download(remote(server.base + "a/", server.base + "b/"), tmp_path, retries=3, pause=0)
    assert path.read_bytes() == GOOD
    assert (bad.hits, good.hits) == (3, 1)


def test_every_source_failing_says_why_and_where_to_put_the_file(server: Server, tmp_path: Path) -> None:
    server.add("/a/data.bin", Route(fail_first=100))
    server.add("/b/data.bin", Route(status=404))
    folder = tmp_path / "d"
    with pytest.raises(DataError) as info:
        download(remote(server.base + "a/", server.base + "b/"), folder, retries=3, pause=0)
    message = str(info.value)
    assert f"could not download {NAME}" in message
    # each source's reason, the first mirror's too although the second one failed 3 times after it
    assert f"{server.base}a/{NAME}: Internal Server Error" in message
    assert f"{server.base}b/{NAME}: Not Found" in message
    assert PAGE in message
    assert repr(str(folder / NAME)) in message
    assert MIRROR_ENV in message
    assert listing(folder) == []


def test_short_read_is_an_error_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    route = server.add("/a/data.bin", Route(length=len(GOOD) + 1000))
    with pytest.raises(DataError) as info:
        download(remote(server.base + "a/"), tmp_path, retries=2, pause=0)
    assert f"connection closed after {len(GOOD)} of {len(GOOD) + 1000} bytes" in str(info.value)
    assert route.hits == 2  # a broken connection is worth another try
    assert listing(tmp_path) == []


def test_web_page_content_type_is_refused(server: Server, tmp_path: Path) -> None:
    server.add("/a/data.bin", Route(body=HTML, content_type="text/html; charset=utf-8"))
    with pytest.raises(DataError) as info:
        download(remote(server.base + "a/"), tmp_path, retries=1, pause=0)
    assert "web page" in str(info.value)
    assert "text/html" in str(info.value)
    assert listing(tmp_path) == []


def test_web_page_sent_as_data_is_refused_and_named(server: Server, tmp_path: Path) -> None:
    route = server.add("/a/data.bin", Route(body=HTML))  # application/octet-stream, yet a page
    with pytest.raises(DataError) as info:
        download(remote(server.base + "a/"), tmp_path, retries=3, pause=0)
    assert re.search(re.escape(f"{server.base}a/{NAME}: ") + "[^;]*web page", str(info.value))
    assert route.hits == 1
    assert listing(tmp_path) == []


def test_wrong_bytes_are_not_retried_but_the_next_mirror_is(server: Server, tmp_path: Path) -> None:
    wrong = server.add("/a/data.bin", Route(body=GOOD[:-1] + b"?"))
    good = server.add("/b/data.bin", Route())
    path = download(remote(server.base + "a/", server.base + "b/"), tmp_path, retries=3, pause=0)
    assert path.read_bytes() == GOOD
    assert (wrong.hits, good.hits) == (1, 1)
    assert listing(tmp_path) == [NAME]


def test_wrong_bytes_everywhere_fail_naming_the_digest(server: Server, tmp_path: Path) -> None:
    wrong = GOOD[::-1]
    server.add("/a/data.bin", Route(body=wrong))
    with pytest.raises(DataError) as info:
        download(remote(server.base + "a/"), tmp_path, retries=3, pause=0)
    message = str(info.value)
    assert f"sha256 {hashlib.sha256(wrong).hexdigest()} does not match the published" in message
    assert hashlib.sha256(GOOD).hexdigest() in message
    assert listing(tmp_path) == []


def test_an_existing_target_is_replaced_only_by_good_bytes(server: Server, tmp_path: Path) -> None:
    (tmp_path / NAME).write_bytes(b"old")
    server.add("/a/data.bin", Route(body=b"wrong"))
    with pytest.raises(DataError):
        download(remote(server.base + "a/"), tmp_path, retries=1, pause=0)
    assert (tmp_path / NAME).read_bytes() == b"old"
    server.add("/a/data.bin", Route())
    download(remote(server.base + "a/"), tmp_path, retries=1, pause=0)
    assert (tmp_path / NAME).read_bytes() == GOOD
    assert listing(tmp_path) == [NAME]


def test_unreachable_server_gives_the_offline_error(tmp_path: Path) -> None:
    url = closed_port_url()
    with pytest.raises(DataError) as info:
        download(remote(url), tmp_path / "d", retries=2, pause=0)
    message = str(info.value)
    assert f"could not download {NAME} ({url}{NAME}: " in message
    assert "refused" in message.lower()
    assert f"without network, fetch it from {PAGE} and put it at {str(tmp_path / 'd' / NAME)!r}" in message
    assert f"or set {MIRROR_ENV} to a folder or URL that holds it" in message
    assert listing(tmp_path / "d") == []


def test_progress_counts_up_to_the_size(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dl, "CHUNK", 1000)
    server.add("/a/data.bin", Route())
    calls: list[tuple[str, int, int | None]] = []
    download(remote(server.base + "a/"), tmp_path, pause=0, progress=lambda *a: calls.append(a))
    done = [d for _, d, _ in calls]
    assert len(done) >= len(GOOD) // 1000
    assert all(a < b for a, b in itertools.pairwise(done))
    assert done[-1] == len(GOOD)
    assert {(name, total) for name, _, total in calls} == {(NAME, len(GOOD))}


def test_names_are_quoted_in_urls() -> None:
    file = remote("https://example.org/files", name="a b#1.zip")
    assert file.urls() == ["https://example.org/files/a%20b%231.zip"]


# ---------------------------------------------------------------------------------------------
# METAFEW_MIRROR


def test_mirror_url_is_tried_before_the_official_ones(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = server.add("/mine/data.bin", Route())
    official = server.add("/a/data.bin", Route())
    monkeypatch.setenv(MIRROR_ENV, server.base + "mine")  # no trailing slash
    file = remote(server.base + "a/")
    assert file.urls() == [f"{server.base}mine/{NAME}", f"{server.base}a/{NAME}"]
    assert download(file, tmp_path, pause=0).read_bytes() == GOOD
    assert (mine.hits, official.hits) == (1, 0)


def test_a_mirror_without_the_file_falls_back_to_the_official_one(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    official = server.add("/a/data.bin", Route())
    monkeypatch.setenv(MIRROR_ENV, server.base + "empty/")
    assert download(remote(server.base + "a/"), tmp_path, retries=1, pause=0).read_bytes() == GOOD
    assert official.hits == 1


def test_mirror_can_be_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    share = tmp_path / "cluster share"
    share.mkdir()
    (share / NAME).write_bytes(GOOD)
    monkeypatch.setenv(MIRROR_ENV, str(share))
    file = remote(closed_port_url())  # the official mirror is unreachable
    assert file.urls()[0] == (share / NAME).as_uri()
    path = download(file, tmp_path / "data", retries=1, pause=0)
    assert path.read_bytes() == GOOD
    assert (share / NAME).read_bytes() == GOOD
    assert listing(tmp_path / "data") == [NAME]


def test_a_corrupt_copy_in_the_mirror_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / NAME).write_bytes(GOOD[:-1])
    monkeypatch.setenv(MIRROR_ENV, str(share))
    with pytest.raises(DataError, match="does not match the published"):
        download(remote(), tmp_path / "data", pause=0)
    assert listing(tmp_path / "data") == []


# ---------------------------------------------------------------------------------------------
# verify and ensure_files


def test_verify_accepts_the_published_bytes(tmp_path: Path) -> None:
    (tmp_path / NAME).write_bytes(GOOD)
    verify(tmp_path / NAME, remote())  # no error
    md5 = RemoteFile(NAME, "md5", hashlib.md5(GOOD).hexdigest(), (), PAGE)
    verify(tmp_path / NAME, md5)


def test_existing_good_copy_is_used_without_a_request(server: Server, tmp_path: Path) -> None:
    route = server.add("/a/data.bin", Route())
    (tmp_path / NAME).write_bytes(GOOD)
    assert ensure_files([remote(server.base + "a/")], tmp_path, allow_download=True) == [tmp_path / NAME]
    assert route.hits == 0


def test_existing_corrupt_copy_is_refused(server: Server, tmp_path: Path) -> None:
    route = server.add("/a/data.bin", Route())
    (tmp_path / NAME).write_bytes(GOOD[:100])
    with pytest.raises(DataError) as info:
        ensure_files([remote(server.base + "a/")], tmp_path, allow_download=True)
    message = str(info.value)
    assert repr(str(tmp_path / NAME)) in message
    assert "does not match the published" in message
    assert PAGE in message
    assert route.hits == 0  # an existing copy is never overwritten silently
    assert (tmp_path / NAME).read_bytes() == GOOD[:100]


def test_existing_web_page_copy_is_refused(tmp_path: Path) -> None:
    (tmp_path / NAME).write_bytes(b"\n  " + HTML)
    with pytest.raises(DataError, match=r"data\.bin.*web page") as info:
        ensure_files([remote()], tmp_path, allow_download=False)
    assert PAGE in str(info.value)


def test_missing_file_without_permission_to_download(server: Server, tmp_path: Path) -> None:
    route = server.add("/a/data.bin", Route())
    folder = tmp_path / "absent"
    with pytest.raises(DataError) as info:
        ensure_files([remote(server.base + "a/")], folder, allow_download=False)
    message = str(info.value)
    assert repr(str(folder / NAME)) in message
    assert "metafew data prepare" in message
    assert "data.download=true" in message
    assert PAGE in message
    assert route.hits == 0
    assert not folder.exists()


def test_missing_files_are_downloaded_when_allowed(server: Server, tmp_path: Path) -> None:
    other = b"second file"
    server.add("/a/data.bin", Route())
    server.add("/a/other.bin", Route(body=other))
    (tmp_path / NAME).write_bytes(GOOD)  # present: verified, not fetched again
    files = [remote(server.base + "a/"), remote(server.base + "a/", data=other, name="other.bin")]
    calls: list[tuple[str, int, int | None]] = []
    paths = ensure_files(files, tmp_path, allow_download=True, progress=lambda *a: calls.append(a))
    assert paths == [tmp_path / NAME, tmp_path / "other.bin"]
    assert (tmp_path / "other.bin").read_bytes() == other
    assert server.routes["/a/data.bin"].hits == 0
    assert calls[-1] == ("other.bin", len(other), len(other))
    assert listing(tmp_path) == [NAME, "other.bin"]


# ---------------------------------------------------------------------------------------------
# describe_sources


def test_a_file_is_described_by_its_digest(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"PK zip bytes")
    assert describe_sources([archive]) == [
        {"name": "a.zip", "bytes": 12, "sha256": hashlib.sha256(b"PK zip bytes").hexdigest()}
    ]


def tree(files: dict[str, bytes]) -> str:
    """The expected tree digest: sorted relative paths, each with its file's SHA-256."""
    lines = "".join(f"{rel}\0{hashlib.sha256(files[rel]).hexdigest()}\n" for rel in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def test_a_folder_gets_one_tree_digest_that_sees_one_byte(tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    files = {f"c{i % 3}/{i:02d}.png": bytes([i]) * (i + 1) for i in range(20)}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / ".c0.part-1").write_bytes(b"hidden")
    (folder / "c1" / ".DS_Store").write_bytes(b"hidden")
    archive = tmp_path / "x.zip"
    archive.write_bytes(b"zip")
    first = describe_sources([archive, folder])
    assert first[0]["name"] == "x.zip"
    assert first[1] == {"name": "pics", "files": 20, "bytes": sum(range(1, 21)), "tree_sha256": tree(files)}
    assert describe_sources([archive, folder]) == first
    path = folder / "c1" / "07.png"
    path.write_bytes(b"\xff" + path.read_bytes()[1:])  # one byte, same size
    changed = describe_sources([folder])[0]
    assert changed["tree_sha256"] != first[1]["tree_sha256"]
    assert (changed["files"], changed["bytes"]) == (20, first[1]["bytes"])
    path.rename(folder / "c2" / "07.png")  # a picture moved to another class
    moved = describe_sources([folder])[0]["tree_sha256"]
    assert moved not in (first[1]["tree_sha256"], changed["tree_sha256"])


def test_files_below_a_hidden_parent_folder_are_described(tmp_path: Path) -> None:
    folder = tmp_path / ".datasets" / "pics"
    folder.mkdir(parents=True)
    (folder / "x.png").write_bytes(b"x")
    assert describe_sources([folder]) == [
        {"name": "pics", "files": 1, "bytes": 1, "tree_sha256": tree({"x.png": b"x"})}
    ]
