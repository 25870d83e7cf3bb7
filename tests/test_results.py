import json

import numpy as np
import pytest

from covidlib.errors import InvalidInputError
from covidlib.results import atomic_write_text, read_build_timings, read_records, write_record


def test_record_round_trip_converts_numpy_and_non_finite(tmp_path):
    path = write_record(tmp_path, "04_unet", parameters={"quick": True},
                        numbers={"dice": np.float32(0.5), "folds": np.array([0.25, 0.75]), "hd": float("inf")},
                        runtime={"device": "cpu"})
    assert path == tmp_path / "04_unet.json"
    record = json.loads(path.read_text())
    assert record["numbers"] == {"dice": 0.5, "folds": [0.25, 0.75], "hd": None}
    assert record["parameters"] == {"quick": True} and record["runtime"] == {"device": "cpu"}
    assert record["commit"]
    assert read_records(tmp_path)["04_unet"]["numbers"]["dice"] == 0.5


def test_read_records_skips_build_metadata_and_rejects_foreign_json(tmp_path):
    (tmp_path / "_timings.json").write_text(json.dumps({"seconds": {"01": 3.0}}))
    assert read_records(tmp_path) == {}
    assert read_build_timings(tmp_path)["seconds"] == {"01": 3.0}
    (tmp_path / "stray.json").write_text("{\"x\": 1}")
    with pytest.raises(InvalidInputError, match="stray.json"):
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
    record = {"runtime": {"mode": "quick", "dataset": "phantom", "device": "cpu", "device_name": "x86_64", "seed": 0},
              "commit": "0123456789abcdef", "created": "2026-11-25T20:00:00+00:00"}
    line = provenance(record)
    assert "mode **quick**" in line and "commit `0123456789ab`" in line and "seed 0" in line
    assert markdown_table([("a", "1")]) == "| quantity | value |\n|---|---|\n| a | 1 |"
    with pytest.raises(InvalidInputError, match="2 cells"):
        markdown_table([("a",)])
