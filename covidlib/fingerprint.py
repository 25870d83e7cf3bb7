"""Fingerprints of what produced a result: the code that ran and the data it read.

A cached training, a grid cell or a committed reference record carries the hashes of the
source files behind it; when one of those files changes, :func:`changed_sources` names it and
the result is recomputed (caches) or shown as stale (committed records), never silently reused.

A Python file is hashed by what runs (:func:`source_hash`): its syntax tree without comments,
layout, docstrings and other bare strings, function annotations and the annotations of local
variables. An edit that cannot change a number (a docstring, a comment, a type hint, a
reformatted line) leaves its hash, and so every result behind it, as it was; any other edit
changes it. Modules that compute no reported number (:data:`BOOKKEEPING_MODULES`: the figures,
the records, the command line and this module) are left out of fingerprints altogether.
Fingerprints written before this (the plain hash of a file's bytes, without the ``ast:`` prefix)
are still checked byte for byte.

Introduced in chapter 05 (caches) and chapter 09 (reference records).
"""

from __future__ import annotations

import ast
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
#: Marks a :func:`source_hash` of a Python file's syntax tree (a bare hash is of its bytes).
TREE_PREFIX = "ast:"


def file_hash(path: str | Path) -> str:
    """The first 16 hex characters of the sha256 of a file's bytes."""
    path = Path(path)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:HASH_CHARS]
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the file to fingerprint it ({exc.strerror or exc})") from exc


class _WhatRuns(ast.NodeTransformer):
    """Drops from a syntax tree what cannot change what the code computes: bare strings
    (docstrings among them), function annotations, and the annotations of local variables,
    which Python never evaluates (PEP 526). Class and module annotations stay: a dataclass
    makes its fields from them."""

    def __init__(self) -> None:
        self.function_depth = 0

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        # Python 3.12.1 ends a nested format spec (f"{k:<{width}}") with an empty string part, 3.11 and 3.13 not
        node.values = [part for part in node.values if not (isinstance(part, ast.Constant) and part.value == "")]
        return self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        return self.generic_visit(node)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        arguments = node.args
        for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                         arguments.vararg, arguments.kwarg]:
            if argument is not None:
                argument.annotation = None
        node.returns = None
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1
        return node

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        depth, self.function_depth = self.function_depth, 0  # a class body's annotations are evaluated
        self.generic_visit(node)
        self.function_depth = depth
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        self.generic_visit(node)
        if not self.function_depth:
            return node
        if node.value is not None:
            return ast.Assign(targets=[node.target], value=node.value)
        node.annotation = ast.Constant(value=None)  # a bare `x: T` still makes x local
        return node


def _canonical(node: Any) -> Any:
    """A syntax tree as plain lists, without positions and without empty or ``None`` fields, so
    the same code gives the same text whichever Python version parsed it."""
    if isinstance(node, ast.AST):
        fields = [[name, _canonical(value)] for name, value in ast.iter_fields(node)
                  if value is not None and value != []]
        return [type(node).__name__, fields]
    if isinstance(node, list):
        return [_canonical(item) for item in node]
    return [type(node).__name__, repr(node)]


def source_hash(path: str | Path) -> str:
    """``ast:`` and 16 hex characters of the sha256 of what runs in a Python file (see the module
    docstring); :func:`file_hash` of any other file, or of Python that does not parse."""
    path = Path(path)
    if path.suffix == ".py":
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            return file_hash(path)
        except OSError as exc:
            raise InvalidInputError(f"{path}: cannot read the file to fingerprint it ({exc.strerror or exc})") from exc
        text = json.dumps(_canonical(_WhatRuns().visit(tree)), separators=(",", ":"))
        return TREE_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]
    return file_hash(path)


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


#: Modules that compute no number a result reports: they draw or display results, or fingerprint
#: them (this module). A change to them leaves every number as it was, so fingerprints leave them out.
BOOKKEEPING_MODULES = frozenset({"covidlib.__main__", "covidlib.viz", "covidlib.records", "covidlib.fingerprint"})
_BOOKKEEPING_PATHS = frozenset(name.replace(".", "/") + ".py" for name in BOOKKEEPING_MODULES)


def code_fingerprint(modules: Iterable[str | ModuleType] = (), files: Iterable[str | Path] = ()) -> dict[str, str]:
    """``{path: hash}`` of the source of ``modules`` (:data:`BOOKKEEPING_MODULES` left out) and of
    extra ``files`` (e.g. a chapter).

    Paths are relative to the folder holding ``covidlib`` (the repository in a checkout), so a
    fingerprint written on one machine checks on another.
    """
    names = [module if isinstance(module, str) else module.__name__ for module in modules]
    paths = [_module_file(name) for name in names if name not in BOOKKEEPING_MODULES] + [Path(file) for file in files]
    return {_relative(path): source_hash(path) for path in sorted(set(paths), key=_relative)}


def loaded_covidlib_modules() -> list[str]:
    """Names of the ``covidlib`` modules imported in this process that compute what a chapter
    reports (:data:`BOOKKEEPING_MODULES` left out)."""
    return sorted(name for name, module in sys.modules.items()
                  if (name == "covidlib" or name.startswith("covidlib.")) and getattr(module, "__file__", None)
                  and name not in BOOKKEEPING_MODULES)


def changed_sources(fingerprint: Mapping[str, str]) -> list[str]:
    """The paths of a :func:`code_fingerprint` whose file now differs or is gone (those of
    :data:`BOOKKEEPING_MODULES`, which fingerprints made before they were left out may hold, aside)."""
    changed = []
    for relative, expected in fingerprint.items():
        if relative in _BOOKKEEPING_PATHS:
            continue
        path = Path(relative) if Path(relative).is_absolute() else PACKAGE_PARENT / relative
        current = source_hash if expected.startswith(TREE_PREFIX) else file_hash
        if not path.exists() or current(path) != expected:
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


def content_key(*values: Any) -> str:
    """A short stable hash of ``values`` by content, arrays included: a cache key for inputs.

    Plain types (floats exactly, by ``repr``), paths, dataclasses (by field), mappings (by
    sorted key), lists and tuples, and NumPy arrays and torch tensors by dtype, shape and the
    bytes of their data (where :func:`settings_key` would hash a truncated printout). Each
    value is tagged with its kind, so ``1``, ``"1"`` and ``1.0`` differ.
    """
    import dataclasses

    import numpy as np
    import torch

    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if value is None or isinstance(value, (bool, int, float, str, Path)):
            digest.update(f"{type(value).__name__}:{value!r};".encode())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            digest.update(f"dataclass:{type(value).__name__};".encode())
            feed({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
        elif isinstance(value, Mapping):
            digest.update(f"mapping:{len(value)};".encode())
            for key in sorted(value, key=str):
                feed(str(key))
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"sequence:{len(value)};".encode())
            for item in value:
                feed(item)
        elif isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor:{flat.dtype}:{tuple(value.shape)};".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, np.ndarray):
            digest.update(f"array:{value.dtype.str}:{value.shape};".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, np.generic):
            feed(value.item())
        else:
            raise InvalidInputError(f"content_key cannot hash a {type(value).__name__}; pass plain types, "
                                    "dataclasses, mappings, sequences, arrays or tensors")

    feed(list(values))
    return digest.hexdigest()[:HASH_CHARS]


def imported_modules(modules: Iterable[str | ModuleType]) -> list[str]:
    """``modules`` and every ``covidlib`` module they import, directly or not, sorted: what
    :func:`code_fingerprint` should cover for a result those modules compute.

    Read from the source (imports inside functions count; nothing is imported), with each
    module's parent packages, whose ``__init__`` runs first.
    """
    import ast

    package_dir = PACKAGE_PARENT / "covidlib"

    def source(name: str) -> Path | None:
        base = package_dir.joinpath(*name.split(".")[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if name.split(".")[0] == "covidlib" and candidate.is_file():
                return candidate
        return None

    seen: set[str] = set()
    todo = [module.__name__ if isinstance(module, ModuleType) else module for module in modules]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = source(name)
        if path is None:
            raise InvalidInputError(f"{name!r} is not a covidlib module with a source file")
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:end]) for end in range(1, len(parts)))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                origin = node.module or ""
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                # `from covidlib.models import unet` imports a module, not only a name
                found = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
            else:
                continue
            todo.extend(item for item in found if item != "covidlib.__main__" and source(item) is not None)
    return sorted(seen)
