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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from covidlib.errors import InvalidInputError
from covidlib.fingerprint import PACKAGE_PARENT, code_fingerprint, data_fingerprint, loaded_covidlib_modules
from covidlib.io import atomic_write_text
from covidlib.records import read_record


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit (with ``-dirty`` when the tree has changes), or ``"unknown"``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def to_json(value: Any, indent: int = 1) -> str:
    """``value`` as valid, indented JSON: numpy arrays and scalars become lists and numbers,
    tuples lists, keys strings, and nan or infinity (an undefined metric, e.g. the sensitivity
    of an empty mask) ``null``. Introduced in chapter 01."""
    def clean(item: Any) -> Any:
        if isinstance(item, dict):
            return {str(k): clean(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        if isinstance(item, np.ndarray):
            return clean(item.tolist())
        if isinstance(item, np.generic):
            return clean(item.item())
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if hasattr(item, "item") and callable(item.item) and getattr(item, "ndim", 1) == 0:
            return clean(item.item())
        return item

    return json.dumps(clean(value), indent=indent, allow_nan=False)


def write_record(output_dir: str | Path, chapter: str, *, parameters: dict[str, Any],
                 numbers: dict[str, Any], runtime: dict[str, Any] | None = None) -> Path:
    """Save a chapter's numbers with their provenance as ``output_dir/<chapter>.json``.

    ``parameters`` are the chapter's parameter-cell values, ``numbers`` its results (per-fold
    lists welcome), ``runtime`` the :func:`covidlib.config.runtime_summary`. The record also
    holds the wall and CPU time since that summary was made (CPU of this process and its
    workers) and the fingerprint of the code that ran (every ``covidlib`` module loaded, and
    the chapter's source when it is in the checkout) and of the data folder.
    """
    runtime = runtime or {}
    chapter_source = PACKAGE_PARENT / "chapters" / f"{chapter}.py"
    timing = {}
    if "started_unix" in runtime:
        timing = {"wall_seconds": time.time() - runtime["started_unix"],
                  "cpu_seconds": sum(os.times()[:4]) - runtime.get("started_cpu_seconds", 0.0)}
    record = {
        "chapter": chapter,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(Path(__file__).resolve().parent),
        "parameters": parameters,
        "runtime": runtime,
        "timing": timing,
        "fingerprint": {
            "code": code_fingerprint(loaded_covidlib_modules(), [chapter_source] if chapter_source.exists() else []),
            "data": data_fingerprint(parameters.get("data_root")),
        },
        "numbers": numbers,
    }
    return atomic_write_text(Path(output_dir) / f"{chapter}.json", to_json(record, indent=2) + "\n")


def read_records(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """All chapter records in ``results_dir``, keyed by chapter name."""
    paths = sorted(Path(results_dir).glob("[!_]*.json"))  # "_name.json" files are build metadata
    records = (read_record(path) for path in paths)
    return {record["chapter"]: record for record in records}


def read_build_timings(results_dir: str | Path) -> dict[str, Any] | None:
    """The per-chapter wall times that ``ci/book`` measured for this run (``_timings.json``), if any."""
    path = Path(results_dir) / "_timings.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from exc


def format_value(value: Any, digits: int = 3) -> str:
    """A record value as table text: floats rounded to ``digits``, a list of numbers as
    ``mean ± sd (n=...)`` (sample sd), long text shortened. Introduced in chapter 09."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        array = np.asarray(value, dtype=float)
        sd = f" ± {array.std(ddof=1):.{digits}f}" if len(array) > 1 else ""
        return f"{array.mean():.{digits}f}{sd} (n={len(array)})"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_change(value: float, digits: int = 3) -> str:
    """A signed change as text, ``+0.012``: one that rounds to zero at ``digits`` but is not zero
    gets more digits (``-0.0004``), so an interval bound just below zero never reads ``-0.000``."""
    if value == 0:
        return f"{0:.{digits}f}"
    for shown in range(digits, digits + 3):
        text = f"{value:+.{shown}f}"
        if text.strip("+-0.") or not math.isfinite(value):
            return text
    return f"{value:+.1e}"


def format_interval(interval: Mapping[str, Any], digits: int = 3) -> str:
    """A paired difference with its confidence interval (:func:`covidlib.statistics.paired_bootstrap_ci`'s
    ``mean_difference``, ``low``, ``high``) as ``+0.021 [+0.013, +0.031]``."""
    return (f"{format_change(interval['mean_difference'], digits)} "
            f"[{format_change(interval['low'], digits)}, {format_change(interval['high'], digits)}]")


#: Where a confidence interval lies against zero, worded to end a sentence about the interval.
IntervalSide = Literal["lies above 0", "lies below 0", "includes 0"]


def interval_side(interval: Mapping[str, Any]) -> IntervalSide:
    """Where the confidence interval of a paired difference (``low`` and ``high``, as in
    :func:`format_interval`) lies against zero: ``"lies above 0"``, ``"lies below 0"`` or
    ``"includes 0"``, so that "its interval lies above 0" reads as a sentence. A bound of exactly 0
    is inside the interval; one just off zero is not, and :func:`format_change` shows it as
    ``-0.0002``, never ``-0.000``, so the printed interval agrees with the words."""
    if interval["low"] > 0:
        return "lies above 0"
    if interval["high"] < 0:
        return "lies below 0"
    return "includes 0"


def flatten_numbers(numbers: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts of a record as ``(dotted.key, value)`` rows, in the record's order."""
    rows: list[tuple[str, Any]] = []
    for key, value in numbers.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten_numbers(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def provenance(record: dict[str, Any]) -> str:
    """One Markdown line saying how a record was made: setting, dataset, device, seed, commit, time."""
    run = record.get("runtime", {})
    params = record.get("parameters", {})
    return (f"setting **{run.get('setting', params.get('setting', '?'))}**, "
            f"dataset **{run.get('dataset', params.get('dataset', '?'))}**, device {run.get('device', '?')} "
            f"({run.get('device_name', '?')}), seed {run.get('seed', params.get('seed', '?'))}, "
            f"commit `{str(record.get('commit', 'unknown'))[:12]}`, written {record.get('created', '?')}")


def markdown_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = ("quantity", "value")) -> str:
    """A Markdown table of ``rows`` under ``header`` (every row as long as the header)."""
    if any(len(row) != len(header) for row in rows):
        raise InvalidInputError(f"markdown_table: every row needs {len(header)} cells like the header {header}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
