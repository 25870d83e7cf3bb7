"""Result records: each chapter's numbers saved as JSON with their provenance.

The book's tables are rebuilt from these records (chapter 09), never typed by hand.
Introduced in chapter 01.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from covidlib.errors import InvalidInputError


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit (with ``-dirty`` when the tree has changes), or ``"unknown"``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _to_jsonable(value.item())
    return value


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_record(output_dir: str | Path, chapter: str, *, parameters: dict[str, Any],
                 numbers: dict[str, Any], runtime: dict[str, Any] | None = None) -> Path:
    """Save a chapter's numbers with their provenance as ``output_dir/<chapter>.json``.

    ``parameters`` are the chapter's parameter-cell values, ``numbers`` its results (per-fold
    lists welcome), ``runtime`` the :func:`covidlib.config.runtime_summary`.
    """
    record = {
        "chapter": chapter,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(Path(__file__).resolve().parent),
        "parameters": parameters,
        "runtime": runtime or {},
        "numbers": numbers,
    }
    return atomic_write_text(Path(output_dir) / f"{chapter}.json", json.dumps(_to_jsonable(record), indent=2, sort_keys=False) + "\n")


def read_records(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """All chapter records in ``results_dir``, keyed by chapter name."""
    records = {}
    for path in sorted(Path(results_dir).glob("[!_]*.json")):  # "_name.json" files are build metadata
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}: not a valid JSON result record ({exc})") from exc
        if "chapter" not in record or "numbers" not in record:
            raise InvalidInputError(f"{path}: not a chapter record (no 'chapter'/'numbers' keys)")
        records[record["chapter"]] = record
    return records


def read_build_timings(results_dir: str | Path) -> dict[str, Any] | None:
    """The per-chapter wall times that ``ci/book`` measured for this run (``_timings.json``), if any."""
    path = Path(results_dir) / "_timings.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from exc
