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
    assert "covidlib.__main__" not in fingerprint.loaded_covidlib_modules()


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
