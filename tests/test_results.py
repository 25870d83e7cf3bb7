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

    monkeypatch.setattr("covidlib.results.os.replace", failing_replace)
    with pytest.raises(Boom):
        atomic_write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []
