"""Fingerprints: hashes that change exactly when the code or data behind a result change."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from covidlib import fingerprint
from covidlib.errors import InvalidInputError


def test_file_hash_is_the_sha256_prefix(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"covid")
    assert fingerprint.file_hash(path) == hashlib.sha256(b"covid").hexdigest()[:16]


def test_code_fingerprint_names_modules_relative_to_the_repository():
    prints = fingerprint.code_fingerprint(["covidlib.metrics", "covidlib.errors"])
    assert set(prints) == {"covidlib/metrics.py", "covidlib/errors.py"}
    assert fingerprint.changed_sources(prints) == []


def test_an_edited_file_is_named_as_changed(tmp_path):
    path = tmp_path / "chapter.py"
    path.write_text("x = 1\n")
    prints = fingerprint.code_fingerprint(files=[path])
    assert fingerprint.changed_sources(prints) == []
    path.write_text("x = 2\n")
    assert fingerprint.changed_sources(prints) == [path.resolve().as_posix()]
    path.unlink()
    assert fingerprint.changed_sources(prints) == [path.resolve().as_posix()]


def test_loaded_modules_include_what_this_process_imported():
    import covidlib.svcca  # noqa: F401

    assert "covidlib.svcca" in fingerprint.loaded_covidlib_modules()
    import covidlib.viz  # noqa: F401

    assert "covidlib.__main__" not in fingerprint.loaded_covidlib_modules()
    assert "covidlib.viz" not in fingerprint.loaded_covidlib_modules()  # figures only: numbers unchanged


def test_data_fingerprint_sees_added_and_resized_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(b"12")
    first = fingerprint.data_fingerprint(tmp_path)
    assert first["files"] == 1
    assert fingerprint.data_fingerprint(tmp_path) == first
    (tmp_path / "a" / "1.png").write_bytes(b"123")
    second = fingerprint.data_fingerprint(tmp_path)
    assert second["hash"] != first["hash"]
    (tmp_path / "b.png").write_bytes(b"1")
    assert fingerprint.data_fingerprint(tmp_path)["files"] == 2
    assert fingerprint.data_fingerprint(None) is None
    with pytest.raises(InvalidInputError, match="does not exist"):
        fingerprint.data_fingerprint(tmp_path / "missing")


def test_settings_key_ignores_key_order_but_not_values():
    assert fingerprint.settings_key({"a": 1, "b": 2}) == fingerprint.settings_key({"b": 2, "a": 1})
    assert fingerprint.settings_key({"a": 1}) != fingerprint.settings_key({"a": 2})


def test_content_key_hashes_array_contents_and_kinds():
    import numpy as np
    import torch

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert fingerprint.content_key({"x": a}) == fingerprint.content_key({"x": np.asfortranarray(a)})  # layout-free
    changed = a.copy()
    changed[1, 2] = np.nextafter(changed[1, 2], np.float32(10))  # one ulp in one element
    assert fingerprint.content_key({"x": a}) != fingerprint.content_key({"x": changed})
    assert fingerprint.content_key(a) != fingerprint.content_key(a.reshape(3, 2))  # shape counts
    assert fingerprint.content_key(a) != fingerprint.content_key(a.astype(np.float64))  # dtype counts
    assert fingerprint.content_key(torch.from_numpy(a)) == fingerprint.content_key(torch.from_numpy(a).t().t())
    assert len({fingerprint.content_key(v) for v in (1, "1", 1.0, True, None)}) == 5
    assert fingerprint.content_key({"b": 1, "a": 2}) == fingerprint.content_key({"a": 2, "b": 1})
    with pytest.raises(InvalidInputError, match="cannot hash"):
        fingerprint.content_key(object())


def test_imported_modules_follow_imports_transitively():
    closure = fingerprint.imported_modules(["covidlib.experiments"])
    # experiments -> transfer -> train -> losses: found through two modules in between
    assert {"covidlib", "covidlib.experiments", "covidlib.transfer", "covidlib.train", "covidlib.losses",
            "covidlib.models", "covidlib.errors"} <= set(closure)
    assert "covidlib.svcca" not in closure and "covidlib.__main__" not in closure
    assert fingerprint.imported_modules(["covidlib.errors"]) == ["covidlib", "covidlib.errors"]
    with pytest.raises(InvalidInputError, match="not a covidlib module"):
        fingerprint.imported_modules(["numpy"])


RUNS = '''"""A module."""
from dataclasses import dataclass


@dataclass
class Settings:
    """Fields."""
    size: int = 160


def scale(values: list[float], factor: float = 2.0) -> list[float]:
    """Each value times ``factor``."""
    out: list[float] = []
    for value in values:
        out.append(value * factor)
    return out
'''

# The same code: other docstrings, comments, layout, function and local annotations.
SAME = '''"""Another docstring."""
from dataclasses import dataclass


@dataclass
class Settings:
    size: int = 160  # pixels
    """The slice size."""


def scale(values, factor=2.0):
    # no docstring now
    out = []
    for value in values: out.append(
        value * factor)
    return out
'''


def _hash_of(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return fingerprint.source_hash(path)


def test_source_hash_ignores_what_cannot_change_a_number(tmp_path):
    first = _hash_of(tmp_path, "a.py", RUNS)
    assert first.startswith("ast:") and len(first) == len("ast:") + 16
    assert _hash_of(tmp_path, "b.py", SAME) == first


@pytest.mark.parametrize("edit", [
    ("value * factor", "value * factor + 0"),        # arithmetic
    ("factor: float = 2.0", "factor: float = 3.0"),  # a default
    ("size: int = 160", "size = 160"),                # no longer a dataclass field
    ("size: int = 160", "size: float = 160"),        # class annotations are kept
    ("return out", "return out[:1]"),
])
def test_source_hash_sees_every_edit_that_runs(tmp_path, edit):
    old, new = edit
    assert old in RUNS
    assert _hash_of(tmp_path, "b.py", RUNS.replace(old, new)) != _hash_of(tmp_path, "a.py", RUNS)


def test_a_bare_local_annotation_still_counts_because_it_makes_the_name_local(tmp_path):
    with_annotation = "def f():\n    x: int\n    return 1\n"
    without = "def f():\n    return 1\n"
    assert _hash_of(tmp_path, "a.py", with_annotation) != _hash_of(tmp_path, "b.py", without)
    assert _hash_of(tmp_path, "c.py", with_annotation.replace("int", "float")) == _hash_of(tmp_path, "a.py", with_annotation)


def test_files_that_are_not_parsed_python_are_hashed_by_their_bytes(tmp_path):
    assert _hash_of(tmp_path, "a.txt", "x = 1\n") == hashlib.sha256(b"x = 1\n").hexdigest()[:16]
    assert _hash_of(tmp_path, "b.py", "x = = 1\n") == hashlib.sha256(b"x = = 1\n").hexdigest()[:16]


def test_the_canonical_tree_has_no_positions_and_no_empty_fields():
    import ast

    # written out by hand: Module's empty type_ignores and Assign's type_comment None are left out,
    # so a Python version that adds an empty field hashes the same code the same way
    assert fingerprint._canonical(ast.parse("x = 1")) == [
        "Module", [["body", [["Assign", [
            ["targets", [["Name", [["id", ["str", "'x'"]], ["ctx", ["Store", []]]]]]],
            ["value", ["Constant", [["value", ["int", "1"]]]]]]]]]]]


def test_a_comment_leaves_a_tree_fingerprint_fresh_but_not_a_bytes_fingerprint(tmp_path):
    path = tmp_path / "module.py"
    path.write_text("VALUE = 1\n")
    tree_print = fingerprint.code_fingerprint(files=[path])
    bytes_print = {key: fingerprint.file_hash(path) for key in tree_print}  # as records made before tree hashes
    path.write_text("VALUE = 1  # a comment\n")
    assert fingerprint.changed_sources(tree_print) == []
    assert fingerprint.changed_sources(bytes_print) == [path.resolve().as_posix()]
    path.write_text("VALUE = 2\n")
    assert fingerprint.changed_sources(tree_print) == [path.resolve().as_posix()]


def test_an_empty_string_part_of_an_f_string_does_not_count():
    import ast

    # Python 3.12.1 parses f"{k:<{width}}" with an empty string part closing the format spec; 3.11 and 3.13 do not
    tree = ast.parse('f"{k:<{width}}"')
    spec = tree.body[0].value.values[0].format_spec
    with_empty = ast.parse('f"{k:<{width}}"')
    with_empty.body[0].value.values[0].format_spec.values.append(ast.Constant(value=""))
    assert len(with_empty.body[0].value.values[0].format_spec.values) == len(spec.values) + 1

    def canonical(node):
        return fingerprint._canonical(fingerprint._WhatRuns().visit(node))

    assert canonical(with_empty) == canonical(tree)
    assert canonical(ast.parse('f"{k:<{width}}x"')) != canonical(tree)


def test_bookkeeping_modules_are_left_out_of_fingerprints():
    prints = fingerprint.code_fingerprint(["covidlib.metrics", "covidlib.fingerprint", "covidlib.viz"])
    assert set(prints) == {"covidlib/metrics.py"}
    assert "covidlib.fingerprint" not in fingerprint.loaded_covidlib_modules()
    # an older fingerprint that holds one is not stale because of it
    assert fingerprint.changed_sources({**prints, "covidlib/fingerprint.py": "0" * 16}) == []
    assert fingerprint.changed_sources({**prints, "covidlib/metrics.py": "0" * 16}) == ["covidlib/metrics.py"]


OTHER_PYTHONS = ["3.10", "3.12", "3.13"]  # requires-python >= 3.10; CI runs 3.11


def _python(version: str) -> str | None:
    """An interpreter of ``version`` that runs: pyenv's install, else one on the PATH."""
    import glob
    import shutil
    import subprocess

    candidates = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / f"{version}.*" / "bin" / f"python{version}")))
    candidates.append(shutil.which(f"python{version}") or "")
    for candidate in filter(None, candidates):
        check = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, check=False)
        if check.returncode == 0 and check.stdout.strip() == version:
            return candidate
    return None


@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_every_source_hashes_alike_under_another_python(tmp_path, version):
    import json
    import shutil
    import subprocess

    executable = _python(version)
    if executable is None:
        pytest.skip(f"no Python {version} here")
    # fingerprint.py needs only errors.py: copied into a bare package, it runs without numpy or torch
    package = tmp_path / "covidlib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("errors.py", "fingerprint.py"):
        shutil.copy(fingerprint.PACKAGE_PARENT / "covidlib" / name, package / name)
    sources = sorted(str(path) for folder in ("covidlib", "chapters", "benchmarks", "tests")
                     for path in (fingerprint.PACKAGE_PARENT / folder).rglob("*.py"))
    script = ("import json, sys\nfrom covidlib.fingerprint import source_hash\n"
              "print(json.dumps({path: source_hash(path) for path in json.load(sys.stdin)}))")
    result = subprocess.run([executable, "-c", script], input=json.dumps(sources), capture_output=True, text=True,
                            cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)
    assert len(theirs) == len(sources) > 100
    assert [path for path in sources if theirs[path] != fingerprint.source_hash(path)] == []
