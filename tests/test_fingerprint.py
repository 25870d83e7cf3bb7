"""Fingerprints: hashes that change exactly when the code or data behind a result change."""

from __future__ import annotations

import hashlib

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
