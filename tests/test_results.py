import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import covidlib.results

from covidlib.errors import InvalidInputError
from covidlib.results import (atomic_write_text, format_change, format_interval, interval_side, read_build_timings,
                              read_records, write_record)


def test_record_round_trip_converts_numpy_and_non_finite(tmp_path):
    package = Path(covidlib.results.__file__).resolve().parent
    head_before = _head(package)
    path = write_record(tmp_path, "04_unet", parameters={"quick": True},
                        numbers={"dice": np.float32(0.5), "folds": np.array([0.25, 0.75]), "hd": float("inf")},
                        runtime={"device": "cpu"})
    head_after = _head(package)  # another commit may land meanwhile in a shared checkout
    assert path == tmp_path / "04_unet.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["numbers"] == {"dice": 0.5, "folds": [0.25, 0.75], "hd": None}
    assert record["parameters"] == {"quick": True} and record["runtime"] == {"device": "cpu"}
    assert record["commit"].removesuffix("-dirty") in {head_before, head_after}  # "unknown" outside a checkout
    assert read_records(tmp_path)["04_unet"]["numbers"]["dice"] == 0.5


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()


def _head(cwd):
    try:
        return _git(cwd, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def test_git_commit_is_the_head_sha_marked_dirty_or_unknown(tmp_path, monkeypatch):
    from covidlib.results import git_commit

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git never looks above tmp_path
    outside = tmp_path / "not_a_repo"
    outside.mkdir()
    assert git_commit(outside) == "unknown"
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("1")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    sha = _git(repo, "rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", sha)
    assert git_commit(repo) == sha
    (repo / "a.txt").write_text("2")
    assert git_commit(repo) == f"{sha}-dirty"


def test_read_records_skips_build_metadata_and_rejects_foreign_json(tmp_path):
    (tmp_path / "_timings.json").write_text(json.dumps({"seconds": {"01": 3.0}}))
    assert read_records(tmp_path) == {}
    assert read_build_timings(tmp_path)["seconds"] == {"01": 3.0}
    (tmp_path / "stray.json").write_text("{\"x\": 1}")
    with pytest.raises(InvalidInputError, match="stray.json: not a chapter record"):
        read_records(tmp_path)
    (tmp_path / "stray.json").write_text("[\"chapter\", \"numbers\"]")  # the keys' names, but no record
    with pytest.raises(InvalidInputError, match="stray.json: not a chapter record"):
        read_records(tmp_path)
    (tmp_path / "stray.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="stray.json: not valid JSON"):
        read_records(tmp_path)


def test_atomic_write_leaves_nothing_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.json"

    class Boom(Exception):
        pass

    def failing_replace(src, dst):
        raise Boom

    monkeypatch.setattr("covidlib.io.os.replace", failing_replace)
    with pytest.raises(Boom):
        atomic_write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []


def test_format_value_rounds_and_summarises_lists_by_hand():
    from covidlib.results import format_value

    assert format_value(0.12345) == "0.123"
    assert format_value([0.5, 0.7]) == "0.600 ± 0.141 (n=2)"  # sd = 0.2 / sqrt(2)
    assert format_value([0.25]) == "0.250 (n=1)"
    assert format_value(float("nan")) == "nan" and format_value(3) == "3" and format_value(True) == "True"
    assert format_value("x" * 80).endswith("...") and len(format_value("x" * 80)) == 60


def test_flatten_provenance_and_table():
    from covidlib.results import flatten_numbers, markdown_table, provenance

    rows = flatten_numbers({"dice": {"unet": 0.5, "att": {"10-40": 0.4}}, "n": 3})
    assert rows == [("dice.unet", 0.5), ("dice.att.10-40", 0.4), ("n", 3)]
    record = {"runtime": {"setting": "quick", "dataset": "phantom", "device": "cpu", "device_name": "x86_64", "seed": 0},
              "commit": "0123456789abcdef", "created": "2026-11-25T20:00:00+00:00"}
    line = provenance(record)
    assert "setting **quick**" in line and "commit `0123456789ab`" in line and "seed 0" in line
    assert markdown_table([("a", "1")]) == "| quantity | value |\n|---|---|\n| a | 1 |"
    with pytest.raises(InvalidInputError, match="2 cells"):
        markdown_table([("a",)])


@pytest.mark.parametrize(("value", "text"), [(0.0123, "+0.012"), (-0.0123, "-0.012"), (0.0, "0.000"), (-0.0, "0.000"),
                                             (-0.0004, "-0.0004"), (0.00004, "+0.00004"), (-1e-8, "-1.0e-08")])
def test_format_change_never_reads_minus_zero(value: float, text: str) -> None:
    assert format_change(value) == text


def test_format_interval_by_hand() -> None:
    interval = {"mean_difference": 0.0251, "low": -0.0003, "high": 0.0499, "n": 15}
    assert format_interval(interval) == "+0.025 [-0.0003, +0.050]"
    assert format_interval(interval, digits=2) == "+0.03 [-0.0003, +0.05]"


@pytest.mark.parametrize(("low", "high", "side"), [
    (0.013, 0.031, "lies above 0"), (-0.031, -0.013, "lies below 0"), (-0.013, 0.031, "includes 0"),
    (0.0, 0.031, "includes 0"), (-0.031, 0.0, "includes 0"), (-0.0, 0.0, "includes 0"),  # a bound on 0 is inside
    (0.0002, 0.031, "lies above 0"), (-0.031, -0.0002, "lies below 0"), (-0.0002, 0.031, "includes 0"),
])
def test_interval_side_by_hand(low: float, high: float, side: str) -> None:
    assert interval_side({"mean_difference": (low + high) / 2, "low": low, "high": high, "n": 5}) == side


def test_interval_side_agrees_with_the_printed_interval() -> None:
    # every number would read -0.000 at 3 digits; with the digits shown the words agree with them
    interval = {"mean_difference": -0.0003, "low": -0.0004, "high": -0.0002, "n": 15}
    assert format_interval(interval) == "-0.0003 [-0.0004, -0.0002]"
    assert interval_side(interval) == "lies below 0"
    touching = {"mean_difference": 0.01, "low": -0.0, "high": 0.02, "n": 15}
    assert format_interval(touching) == "+0.010 [0.000, +0.020]"
    assert interval_side(touching) == "includes 0"
