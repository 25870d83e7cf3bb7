"""Downloads against a real HTTP server on 127.0.0.1, and safe archive extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from covidlib.download import DownloadError, RemoteFile, download, extract_archive, fetch, file_digest
from covidlib.errors import InvalidInputError


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_bytes(members: dict[str, bytes], *, gz: bool = False, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buffer.getvalue()


GOOD_MEMBERS = {"cases/case_001.txt": b"first case\n", "cases/sub/case_002.txt": b"second" * 1000}
GOOD_ZIP = _zip_bytes(GOOD_MEMBERS)
EVIL_ZIP = _zip_bytes({"ok.txt": b"fine", "../escaped.txt": b"should never be written"})


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, bytes] = {}

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path == "/truncated.zip":
            # Promise the whole archive, send half of it, then hang up.
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD_ZIP)))
            self.end_headers()
            self.wfile.write(GOOD_ZIP[: len(GOOD_ZIP) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    _Handler.routes = {"/good.zip": GOOD_ZIP, "/evil.zip": EVIL_ZIP}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_good_download_is_verified_renamed_and_extracts(server: str, tmp_path: Path) -> None:
    dest = download(f"{server}/good.zip", tmp_path / "dl" / "good.zip", _sha256(GOOD_ZIP), progress=False)
    assert dest.read_bytes() == GOOD_ZIP
    assert sorted(p.name for p in dest.parent.iterdir()) == ["good.zip"]  # no temp file left
    files = extract_archive(dest, tmp_path / "out")
    assert {f.relative_to(tmp_path / "out").as_posix() for f in files} == set(GOOD_MEMBERS)
    for name, data in GOOD_MEMBERS.items():
        assert (tmp_path / "out" / name).read_bytes() == data


def test_existing_verified_file_is_reused_without_network(tmp_path: Path) -> None:
    dest = tmp_path / "good.zip"
    dest.write_bytes(GOOD_ZIP)
    # Nothing listens on this port: a network attempt would fail.
    assert download("http://127.0.0.1:9/good.zip", dest, _sha256(GOOD_ZIP), progress=False) == dest


def test_md5_checksum_is_accepted(server: str, tmp_path: Path) -> None:
    dest = download(f"{server}/good.zip", tmp_path / "good.zip", None,
                    md5=hashlib.md5(GOOD_ZIP).hexdigest(), progress=False)
    assert file_digest(dest, "md5") == hashlib.md5(GOOD_ZIP).hexdigest()


def test_truncated_download_leaves_nothing(server: str, tmp_path: Path) -> None:
    url = f"{server}/truncated.zip"
    with pytest.raises(DownloadError, match="truncated.zip"):
        download(url, tmp_path / "t.zip", _sha256(GOOD_ZIP), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_wrong_checksum_leaves_nothing_and_names_url(server: str, tmp_path: Path) -> None:
    url = f"{server}/good.zip"
    with pytest.raises(DownloadError, match=r"checksum mismatch for http://127\.0\.0\.1:\d+/good\.zip"):
        download(url, tmp_path / "g.zip", "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_missing_checksum(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="missing.zip"):
        download(f"{server}/missing.zip", tmp_path / "m.zip", "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidInputError, match="checksum"):
        download(f"{server}/good.zip", tmp_path / "g.zip", None, progress=False)
    with pytest.raises(InvalidInputError, match="hex digest"):
        download(f"{server}/good.zip", tmp_path / "g.zip", "abc", progress=False)
    with pytest.raises(InvalidInputError, match="http"):
        download("file:///etc/passwd", tmp_path / "p", "0" * 64, progress=False)


def test_dotdot_member_is_refused_and_nothing_written(server: str, tmp_path: Path) -> None:
    archive = download(f"{server}/evil.zip", tmp_path / "evil.zip", _sha256(EVIL_ZIP), progress=False)
    target = tmp_path / "inner" / "target"
    with pytest.raises(InvalidInputError, match=r"evil\.zip.*\.\./escaped\.txt"):
        extract_archive(archive, target)
    assert not (tmp_path / "inner" / "escaped.txt").exists()
    assert not target.exists()  # checks run before anything is written
    assert sorted(p.name for p in (tmp_path / "inner").iterdir()) == []  # staging folder cleaned up


@pytest.mark.parametrize("gz", [False, True])
def test_tar_and_tar_gz_extract(tmp_path: Path, gz: bool) -> None:
    archive = tmp_path / ("a.tar.gz" if gz else "a.tar")
    archive.write_bytes(_tar_bytes(GOOD_MEMBERS, gz=gz, symlinks={"cases/link.txt": "case_001.txt"}))
    files = extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "cases" / "sub" / "case_002.txt").read_bytes() == GOOD_MEMBERS["cases/sub/case_002.txt"]
    assert (tmp_path / "out" / "cases" / "link.txt").read_bytes() == b"first case\n"  # link inside: allowed
    assert len(files) == 3


@pytest.mark.parametrize(
    ("members", "symlinks", "pattern"),
    [
        ({"/etc/evil": b"x"}, None, "absolute path"),
        ({"a/../../evil": b"x"}, None, "escapes"),
        ({"ok": b"x"}, {"a/link": "../../outside"}, "points outside"),
        ({"ok": b"x"}, {"link": "/etc/passwd"}, "points outside"),
    ],
)
def test_tar_escapes_are_refused(tmp_path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None,
                                 pattern: str) -> None:
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar_bytes(members, symlinks=symlinks))
    with pytest.raises(InvalidInputError, match=pattern):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("in_the_way", "kind"), [("cases/sub/case_002.txt", "folder"), ("cases/sub", "file")])
def test_a_member_blocked_by_the_target_leaves_it_as_it_was(tmp_path: Path, in_the_way: str, kind: str) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(GOOD_ZIP)
    target = tmp_path / "out"
    blocker = target / in_the_way
    blocker.parent.mkdir(parents=True)
    blocker.mkdir() if kind == "folder" else blocker.write_text("mine")
    (target / "cases" / "case_001.txt").write_text("older")
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    with pytest.raises(InvalidInputError, match=rf"a\.zip: member cases/sub/case_002\.txt .*in the way \(a {kind}\)"):
        extract_archive(archive, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before
    assert (target / "cases" / "case_001.txt").read_text() == "older"  # no member moved in
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging folder cleaned up


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "plain.zip"
    path.write_bytes(b"not an archive")
    with pytest.raises(InvalidInputError, match="plain.zip"):
        extract_archive(path, tmp_path / "out")


def test_fetch_downloads_unpacks_once(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("Infection_Mask/x.txt", b"hello")
    payload = buffer.getvalue()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        remote = RemoteFile(f"http://127.0.0.1:{httpd.server_address[1]}/m.zip", "m.zip",
                            sha256=hashlib.sha256(payload).hexdigest())
        files = fetch(remote, tmp_path, progress=False)
        assert files == [tmp_path / "Infection_Mask" / "x.txt"] and files[0].read_bytes() == b"hello"
        assert not (tmp_path / "m.zip").exists()  # archive removed after unpacking
        assert fetch(remote, tmp_path, progress=False) == files and len(hits) == 1  # no second download
        with pytest.raises(InvalidInputError, match="no checksum"):
            fetch(RemoteFile(remote.url, "n.zip"), tmp_path, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
