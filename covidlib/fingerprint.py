"""Fingerprints of what produced a result: the code that ran and the data it read.

A cached training, a grid cell or a committed reference record carries the hashes of the
source files behind it; when one of those files changes, :func:`changed_sources` names it and
the result is recomputed (caches) or shown as stale (committed records), never silently reused.

Introduced in chapter 05 (caches) and chapter 09 (reference records).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from covidlib.errors import InvalidInputError

#: The repository (or site-packages) folder that holds the ``covidlib`` package.
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
HASH_CHARS = 16


def file_hash(path: str | Path) -> str:
    """The first 16 hex characters of the sha256 of a file's bytes."""
    path = Path(path)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:HASH_CHARS]
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the file to fingerprint it ({exc.strerror or exc})") from exc


def _relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(PACKAGE_PARENT).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _module_file(module: str | ModuleType) -> Path:
    if isinstance(module, str):
        if module not in sys.modules:
            __import__(module)
        module = sys.modules[module]
    file = getattr(module, "__file__", None)
    if file is None:
        raise InvalidInputError(f"module {module.__name__!r} has no source file to fingerprint")
    return Path(file)


def code_fingerprint(modules: Iterable[str | ModuleType] = (), files: Iterable[str | Path] = ()) -> dict[str, str]:
    """``{path: hash}`` of the source of ``modules`` and of extra ``files`` (e.g. a chapter).

    Paths are relative to the folder holding ``covidlib`` (the repository in a checkout), so a
    fingerprint written on one machine checks on another.
    """
    paths = [_module_file(module) for module in modules] + [Path(file) for file in files]
    return {_relative(path): file_hash(path) for path in sorted(set(paths), key=_relative)}


def loaded_covidlib_modules() -> list[str]:
    """Names of the ``covidlib`` modules imported in this process (what a chapter ran on)."""
    return sorted(name for name, module in sys.modules.items()
                  if (name == "covidlib" or name.startswith("covidlib.")) and getattr(module, "__file__", None)
                  and name != "covidlib.__main__")


def changed_sources(fingerprint: Mapping[str, str]) -> list[str]:
    """The paths of a :func:`code_fingerprint` whose file now differs or is gone."""
    changed = []
    for relative, expected in fingerprint.items():
        path = Path(relative) if Path(relative).is_absolute() else PACKAGE_PARENT / relative
        if not path.exists() or file_hash(path) != expected:
            changed.append(relative)
    return changed


def data_fingerprint(root: str | Path | None) -> dict[str, Any] | None:
    """Count and hash of the (relative path, size) of every file under ``root``; ``None`` without one.

    Sizes and names, not contents: fast on thousands of slices, and a re-export or a changed
    split still shows.
    """
    if not root:
        return None
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: the data folder to fingerprint does not exist")
    listing = sorted((path.relative_to(root).as_posix(), path.stat().st_size) for path in root.rglob("*") if path.is_file())
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:HASH_CHARS]
    return {"files": len(listing), "hash": digest}


def settings_key(settings: Any) -> str:
    """A short stable hash of JSON-able ``settings`` (dict keys sorted): a cache key."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]
