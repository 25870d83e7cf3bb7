"""Safe downloads and archive extraction for the dataset registry.

A download streams to a temporary file next to its destination, is checked against its
published checksum and only then renamed into place, so an interrupted or corrupted transfer
never leaves a file that looks complete. Archives (zip, tar, tar.gz) are unpacked into a
temporary folder first, and any member whose path would land outside the target (``../``,
absolute paths, links pointing out, device files) is refused before anything is written.

Introduced in chapter 02.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from covidlib.errors import InvalidInputError
from covidlib.io import atomic_path, atomic_write_text

CHUNK_BYTES = 1 << 20


class DownloadError(OSError):
    """A download failed (network, truncated transfer or checksum mismatch); nothing was kept."""


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks (``algorithm``: any :mod:`hashlib` name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    expected = {name: value.strip().lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if not expected:
        raise InvalidInputError(
            "download needs a checksum: pass sha256= (preferred) or md5= so a corrupted or "
            "tampered file is never used"
        )
    lengths = {"sha256": 64, "md5": 32}
    for name, value in expected.items():
        if len(value) != lengths[name] or any(c not in "0123456789abcdef" for c in value):
            raise InvalidInputError(f"{name}={value!r} is not a {lengths[name]}-digit hex digest")
    return expected


def download(url: str, dest: str | Path, sha256: str | None, *, md5: str | None = None,
             progress: bool = True, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` and verify its checksum; return ``dest``.

    The bytes stream to a temporary file in ``dest``'s folder (with a tqdm progress bar), the
    length is checked against ``Content-Length`` when the server sends one, the sha256 (and/or
    md5, for archives whose publishers give only that) is compared, and only then is the file
    renamed to ``dest``. On any failure the temporary file is removed and :class:`DownloadError`
    names the URL. An existing ``dest`` with the right checksum is reused without downloading.

    Introduced in chapter 02.
    """
    expected = _expected_digests(sha256, md5)
    dest = Path(dest)
    if dest.is_file() and all(file_digest(dest, name) == value for name, value in expected.items()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidInputError(f"url={url!r}: only http:// and https:// downloads are supported")
    hashers = {name: hashlib.new(name) for name in expected}
    try:
        with atomic_path(dest, suffix=".part") as tmp, open(tmp, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310 (scheme checked above)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise DownloadError(f"could not download {url}: {exc}") from exc
            with response:
                length_header = response.headers.get("Content-Length")
                expected_bytes = int(length_header) if length_header and length_header.isdigit() else None
                received = 0
                with tqdm(total=expected_bytes, unit="B", unit_scale=True, desc=dest.name,
                          disable=not progress) as bar:
                    while True:
                        try:
                            chunk = response.read(CHUNK_BYTES)
                        except (OSError, ValueError, http.client.HTTPException) as exc:
                            raise DownloadError(f"download of {url} was interrupted after {received} bytes: {exc}") from exc
                        if not chunk:
                            break
                        out.write(chunk)
                        for hasher in hashers.values():
                            hasher.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            out.flush()
            if expected_bytes is not None and received != expected_bytes:
                raise DownloadError(
                    f"download of {url} is truncated: received {received} of {expected_bytes} bytes; "
                    "nothing was kept, try again"
                )
            for name, value in expected.items():
                actual = hashers[name].hexdigest()
                if actual != value:
                    raise DownloadError(
                        f"checksum mismatch for {url}: expected {name} {value}, got {actual}; "
                        "the file was deleted (corrupted transfer, or the publisher changed the file: "
                        "check the source and pass the new checksum if you trust it)"
                    )
    except Exception as exc:
        if not isinstance(exc, (DownloadError, InvalidInputError)):
            raise DownloadError(f"could not download {url}: {exc}") from exc
        raise
    return dest


def _safe_relative(name: str, archive: Path) -> PurePosixPath:
    """The member path as a relative path that stays inside the target, or an error naming it."""
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if path.is_absolute() or (len(normalised) > 1 and normalised[1] == ":"):
        raise InvalidInputError(f"{archive}: refusing member {name!r} with an absolute path")
    if any(part == ".." for part in path.parts):
        raise InvalidInputError(f"{archive}: refusing member {name!r}: its path escapes the target folder")
    return path


def _link_stays_inside(member_path: PurePosixPath, link_target: str) -> bool:
    """Whether a symlink at ``member_path`` pointing to ``link_target`` resolves inside the root."""
    if link_target.startswith("/") or PurePosixPath(link_target).is_absolute():
        return False
    depth = 0
    for part in (member_path.parent / link_target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def _check_tar(tar: tarfile.TarFile, archive: Path) -> None:
    for member in tar.getmembers():
        path = _safe_relative(member.name, archive)
        if member.issym() or member.islnk():
            target = member.linkname
            inside = _link_stays_inside(path, target) if member.issym() else (
                not PurePosixPath(target).is_absolute() and ".." not in PurePosixPath(target).parts)
            if not inside:
                raise InvalidInputError(
                    f"{archive}: refusing link {member.name!r} -> {target!r}: it points outside the target folder")
        elif not (member.isfile() or member.isdir()):
            raise InvalidInputError(f"{archive}: refusing member {member.name!r}: not a regular file or folder")


def _check_zip(archive_zip: zipfile.ZipFile, archive: Path) -> None:
    for info in archive_zip.infolist():
        path = _safe_relative(info.filename, archive)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = archive_zip.read(info).decode("utf-8", "replace")
            if not _link_stays_inside(path, target):
                raise InvalidInputError(
                    f"{archive}: refusing link {info.filename!r} -> {target!r}: it points outside the target folder")


def extract_archive(archive: str | Path, target: str | Path) -> list[Path]:
    """Unpack a zip, tar or tar.gz ``archive`` into ``target``; return the extracted files.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    links pointing outside ``target`` and special files raise :class:`InvalidInputError`
    naming the archive and the member. Members go to a temporary folder inside ``target``'s
    parent and are moved in only once none of them would land on a folder or below a file of
    ``target``, so a failed extraction leaves ``target`` as it was (files of the same name are
    replaced).

    Introduced in chapter 02.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise InvalidInputError(f"{archive}: archive not found")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.extract."))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, archive)
                zf.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                _check_tar(tf, archive)
                tf.extractall(staging, filter="data")
        else:
            raise InvalidInputError(f"{archive}: not a zip or tar archive")
        moves = [(source, target / source.relative_to(staging)) for source in sorted(staging.rglob("*"))
                 if source.is_symlink() or not source.is_dir()]
        for _, destination in moves:
            blocking = [destination] if destination.is_dir() and not destination.is_symlink() else []
            blocking += [parent for parent in destination.parents if parent.is_file() and target in parent.parents]
            if blocking:
                raise InvalidInputError(f"{archive}: member {destination.relative_to(target)} cannot be unpacked: "
                                        f"{blocking[0]} is in the way (a {'folder' if blocking[0].is_dir() else 'file'})")
        target.mkdir(parents=True, exist_ok=True)
        for source, destination in moves:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, destination)
        return [destination for _, destination in moves]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class RemoteFile:
    """A published archive: where it is, its name, and its checksum (with where that came from)."""

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    checksum_source: str = ""


def fetch(remote: RemoteFile, folder: Path, *, sha256: str | None = None, progress: bool = True) -> list[Path]:
    """Download ``remote`` into ``folder`` (checksum-verified) and unpack it there.

    ``sha256`` overrides the registry's checksum (for a re-published file you have checked).
    The archive is removed after a successful unpack; a marker file records what was unpacked.

    Introduced in chapter 02.
    """
    marker = folder / f".{remote.filename}.unpacked"
    if marker.is_file():
        return [folder / line for line in marker.read_text(encoding="utf-8").splitlines() if line]
    checksum = sha256 or remote.sha256
    md5 = None if sha256 else remote.md5
    if not checksum and not md5:
        raise InvalidInputError(f"{remote.url}: no checksum is known for this file; pass sha256= after checking it")
    archive = download(remote.url, folder / remote.filename, checksum, md5=md5, progress=progress)
    files = extract_archive(archive, folder)
    atomic_write_text(marker, "\n".join(f.relative_to(folder).as_posix() for f in files) + "\n")
    archive.unlink()
    return files
