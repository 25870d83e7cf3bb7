"""Committed reference records: provenance written, staleness detected from the code fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from covidlib import records
from covidlib.config import runtime_summary
from covidlib.errors import InvalidInputError
from covidlib.fingerprint import code_fingerprint
from covidlib.results import write_record


def test_write_record_holds_timing_and_the_fingerprint_of_loaded_code(tmp_path):
    import covidlib.svcca  # noqa: F401  (a module the "chapter" used)

    runtime = runtime_summary(setting="quick", device="cpu", seed=0, dataset="phantom")
    # as if the chapter had started 100 s (wall) and 500 CPU-seconds (several workers) ago; the
    # two offsets differ, so swapped or unanchored times fall outside the bounds below
    runtime["started_unix"] = time.time() - 100.0
    runtime["started_cpu_seconds"] = sum(os.times()[:4]) - 500.0
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.png").write_bytes(b"abc")
    path = write_record(tmp_path / "out", "99_test", parameters={"data_root": str(data)}, numbers={"a": 1},
                        runtime=runtime)
    record = json.loads(path.read_text(encoding="utf-8"))
    assert 100.0 <= record["timing"]["wall_seconds"] < 160.0
    assert 500.0 <= record["timing"]["cpu_seconds"] < 560.0
    assert record["runtime"]["started_unix"] == runtime["started_unix"]
    assert "covidlib/svcca.py" in record["fingerprint"]["code"]
    assert record["fingerprint"]["data"]["files"] == 1
    assert records.read_reference(path).stale == []


def test_write_record_without_a_start_has_no_timing(tmp_path):
    # no runtime_summary, or one without its clock's start: nothing to measure from
    for runtime in (None, {"setting": "quick", "seed": 0}):
        path = write_record(tmp_path / "out", "99_test", parameters={}, numbers={"a": 1}, runtime=runtime)
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record["timing"] == {} and record["numbers"] == {"a": 1}


def test_a_record_whose_code_changed_is_stale(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("VALUE = 1\n")
    folder = records.reference_dir("covid-semiseg", tmp_path)
    folder.mkdir(parents=True)
    record = {"chapter": "04_x", "numbers": {"dice": 0.7}, "runtime": {"dataset": "covid-semiseg", "setting": "reference"},
              "fingerprint": {"code": code_fingerprint(files=[source])}}
    (folder / "04_x.json").write_text(json.dumps(record))
    loaded = records.load_reference("04_x", records_dir=tmp_path)
    assert loaded.numbers == {"dice": 0.7} and loaded.stale == []
    assert records.stale_records(tmp_path) == []
    assert "warning" not in loaded.notice()

    source.write_text("VALUE = 2\n")
    loaded = records.load_reference("04_x", records_dir=tmp_path)
    assert loaded.stale == [source.resolve().as_posix()]
    assert [r.path.name for r in records.stale_records(tmp_path)] == ["04_x.json"]
    assert ":::{warning}" in loaded.notice() and "stale" in loaded.notice()
    assert "`ci/book --reference --dataset covid-semiseg --data-root DIR --chapters 04`" in loaded.notice()


def test_a_stale_benchmark_record_names_its_benchmark_not_ci_book(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("VALUE = 1\n")
    folder = records.reference_dir("covid-semiseg", tmp_path)
    folder.mkdir(parents=True)
    # no dataset in the runtime: the folder names it
    record = {"chapter": "ablation", "numbers": {}, "runtime": {}, "timing": {"wall_seconds": 3.0, "cpu_seconds": 6.0},
              "fingerprint": {"code": code_fingerprint(files=[source])}}
    (folder / "ablation.json").write_text(json.dumps(record))
    source.write_text("VALUE = 2\n")
    loaded = records.load_reference("ablation", records_dir=tmp_path)
    assert loaded.dataset == "covid-semiseg"
    assert "Regenerate it with `.venv/bin/python benchmarks/ablation.py --data-root DIR`." in loaded.notice()
    assert "ci/book" not in loaded.notice()
    assert "by a run of 0.1 min wall / 0.1 min CPU" in loaded.source_line()
    assert "machine like" not in loaded.notice()  # a runtime that names no machine
    # it ran on 3 threads of a Zen 3 EPYC in float32: the command asks for the threads, the notice for the machine
    (folder / "ablation.json").write_text(json.dumps(
        {**record, "runtime": {"threads": 3, "device_name": "AMD EPYC", "cpu_bf16": False}}))
    notice = records.load_reference("ablation", records_dir=tmp_path).notice()
    assert "`.venv/bin/python benchmarks/ablation.py --data-root DIR --threads 3`" in notice
    assert "kept only on a machine like the one that made it (AMD EPYC, float32, 3 threads)" in notice


def test_regenerate_command():
    assert records.regenerate_command("07_pseudo_labels", "mosmed") == \
        "ci/book --reference --dataset mosmed --data-root DIR --chapters 07"
    assert records.regenerate_command("learning_curve") == ".venv/bin/python benchmarks/learning_curve.py --data-root DIR"
    # a benchmark runs again on the threads its record ran on; a chapter sets its own
    assert records.regenerate_command("phantom_to_real", threads=2) == \
        ".venv/bin/python benchmarks/phantom_to_real.py --data-root DIR --threads 2"
    assert records.regenerate_command("04_unet_and_attention", threads=2).endswith("--chapters 04")
    # a second machine's record of a benchmark: the same script, told which record
    assert [records.benchmark_of(name) for name in ("ablation-zen4", "semi_recipe-zen-4", "learning_curve")] == \
        ["ablation", "semi_recipe", "learning_curve"]
    assert records.regenerate_command("ablation-zen4", threads=2) == \
        ".venv/bin/python benchmarks/ablation.py --data-root DIR --record ablation-zen4 --threads 2"


def test_machine_records(tmp_path):
    folder = records.reference_dir("covid-semiseg", tmp_path)
    folder.mkdir(parents=True)
    for name in ("ablation", "ablation-zen4", "semi_recipe-zen4", "semi_recipe-xeon", "04_unet_and_attention"):
        (folder / f"{name}.json").write_text("{}")
    assert records.machine_records(records_dir=tmp_path) == ["ablation-zen4", "semi_recipe-xeon", "semi_recipe-zen4"]
    assert records.machine_records("semi_recipe", records_dir=tmp_path) == ["semi_recipe-xeon", "semi_recipe-zen4"]
    assert records.machine_records("learning_curve", records_dir=tmp_path) == []
    assert records.machine_records(records_dir=tmp_path / "elsewhere") == []


def test_missing_and_broken_records(tmp_path):
    assert records.load_reference("01_none", records_dir=tmp_path) is None
    assert "`ci/book --reference --dataset covid-semiseg --data-root DIR --chapters 01` writes it" in \
        records.reference_notice(None, "01_none")
    assert "`.venv/bin/python benchmarks/semi_recipe.py --data-root DIR` writes it" in \
        records.reference_notice(None, "semi_recipe")
    folder = records.reference_dir("covid-semiseg", tmp_path)
    folder.mkdir(parents=True)
    (folder / "02_bad.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="02_bad.json: not valid JSON"):
        records.load_reference("02_bad", records_dir=tmp_path)
    (folder / "03_other.json").write_text(json.dumps({"chapter": "03"}))
    with pytest.raises(InvalidInputError, match="03_other.json: not a chapter record"):
        records.load_reference("03_other", records_dir=tmp_path)
    (folder / "03_other.json").write_text(json.dumps(["chapter", "numbers"]))
    with pytest.raises(InvalidInputError, match="03_other.json: not a chapter record"):
        records.load_reference("03_other", records_dir=tmp_path)


def test_records_imports_neither_torch_nor_numpy():
    # ci/chapters.py and the chapters' display cells read records without the training stack
    code = "import sys, covidlib.records; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_a_record_without_fingerprint_counts_as_stale(tmp_path):
    folder = records.reference_dir("covid-semiseg", tmp_path)
    folder.mkdir(parents=True)
    (folder / "05_old.json").write_text(json.dumps({"chapter": "05_old", "numbers": {}}))
    assert records.load_reference("05_old", records_dir=tmp_path).stale == ["(no code fingerprint)"]


def test_every_committed_record_names_a_command_that_exists():
    for path in sorted(records.RECORDS_DIR.glob("reference-*/[!_]*.json")):
        command = records.regenerate_command(path.stem)
        if command.startswith("ci/book"):
            assert (records.PACKAGE_PARENT / "chapters" / f"{path.stem}.py").exists(), path
        else:
            script = records.PACKAGE_PARENT / command.split()[1]
            assert script.exists(), path
            if "--record" in command:  # a second machine's record: the script must take the option
                usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                       check=True).stdout
                assert "--record RECORD" in usage, path


def test_describe_machine_names_processor_precision_and_threads_by_hand():
    xeon = {"cpu": "Intel(R) Xeon(R) Processor @ 2.10GHz", "cpu_bf16": True, "threads": 2}
    assert records.describe_machine(xeon) == "Intel Xeon @ 2.10GHz, bf16, 2 threads"
    amd = {"cpu": "AMD EPYC  7B13", "cpu_bf16": False, "threads": 1}
    assert records.describe_machine(amd) == "AMD EPYC 7B13, float32, 1 thread"
    assert records.describe_machine({"device_name": "x86_64"}) == "x86_64"  # an older record: the device only
    assert records.describe_machine(xeon, threads=False) == "Intel Xeon @ 2.10GHz, bf16"
    assert records.describe_machine({}) == "?"
    # in bfloat16 the family tells generations of one name apart; in float32 it is not shown
    assert records.describe_machine({"device_name": "AMD EPYC", "cpu_bf16": True, "cpu_family": 26, "threads": 2}) == (
        "AMD EPYC (family 26), bf16, 2 threads")
    assert records.describe_machine({**amd, "cpu_family": 25}) == "AMD EPYC 7B13, float32, 1 thread"


def test_other_numerics_names_each_setting_that_changes_the_last_bits():
    zen5 = {"threads": 2, "cpu_bf16": True, "device_name": "AMD EPYC", "python": "3.11.7", "seed": 0}
    assert records.other_numerics(zen5, {**zen5, "python": "3.12.1", "seed": 3}) == []  # neither changes a kernel
    assert records.other_numerics(zen5, {**zen5, "cpu_bf16": False}) == ["cpu_bf16"]  # a Zen 3: same name, float32
    assert records.other_numerics(zen5, {"threads": 1, "cpu_bf16": True, "device_name": "Intel Xeon"}) == [
        "threads", "device_name"]
    assert records.other_numerics({}, zen5) == ["threads", "cpu_bf16", "device_name"]  # an older record knows none


def test_in_bfloat16_the_processor_family_counts_and_in_float32_it_does_not():
    zen5 = {"threads": 2, "cpu_bf16": True, "device_name": "AMD EPYC", "cpu_family": 26}
    zen4 = {**zen5, "cpu_family": 25}
    assert records.other_numerics(zen5, zen4) == ["cpu_family"]
    assert records.other_numerics({k: v for k, v in zen5.items() if k != "cpu_family"}, zen4) == ["cpu_family"]
    zen1 = {"threads": 2, "cpu_bf16": False, "device_name": "AMD EPYC", "cpu_family": 23}
    assert records.other_numerics(zen1, {**zen1, "cpu_family": 25}) == []  # float32 agreed across these
    assert records.other_numerics(zen5, {**zen1, "cpu_family": 26}) == ["cpu_bf16"]


def test_processor_family_reads_the_first_cpu_and_is_none_where_cpuinfo_does_not_say(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\n"
                       "processor\t: 1\ncpu family\t: 26\n")
    assert records.processor_family(cpuinfo) == 25
    cpuinfo.write_text("processor\t: 0\nCPU implementer\t: 0x41\n")  # an Arm machine has no family line
    assert records.processor_family(cpuinfo) is None
    assert records.processor_family(tmp_path / "missing") is None
