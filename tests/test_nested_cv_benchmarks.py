"""benchmarks/_nested_cv.py, the options the nested-CV benchmarks share, and each benchmark's ``--quick``
path run as a reader runs it: ``python benchmarks/<name>.py``, on the real data."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covidlib import config
from covidlib.config import processor_name
from covidlib.recipe import Recipe
from covidlib.results import write_record
from test_datasets import REAL_SEMISEG

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def nested_cv(load_benchmark):
    load_benchmark("ablation")  # puts benchmarks/ on sys.path
    import _nested_cv

    return _nested_cv


def test_integers_parse_a_comma_list_and_name_what_is_wrong(nested_cv):
    assert nested_cv.integers("0,1,2") == [0, 1, 2]
    assert nested_cv.integers("7") == [7]
    parser = nested_cv.nested_cv_parser(None, runs="x")
    with pytest.raises(SystemExit):
        parser.parse_args(["--seeds", "0,one"])


def test_parser_defaults_and_optional_options(nested_cv, tmp_path):
    plain = nested_cv.nested_cv_parser(None, runs="cv_nested").parse_args([])
    assert plain.seeds == [0] and plain.folds == 5 and plain.threads is None and not plain.quick
    assert Path(plain.runs) == nested_cv.ROOT / "results" / "cv_nested"
    assert not hasattr(plain, "out") and not hasattr(plain, "supervised_runs")
    full = nested_cv.nested_cv_parser(None, seeds="0,1,2", record="semi",
                                      supervised_runs="A' is read").parse_args(["--out", str(tmp_path)])
    assert full.seeds == [0, 1, 2] and full.out == str(tmp_path) and not hasattr(full, "runs")
    assert full.record == "semi" and nested_cv.record_path(full) == tmp_path / "semi.json"
    own = nested_cv.nested_cv_parser(None, record="semi").parse_args(["--out", str(tmp_path), "--record", "semi-zen4"])
    assert nested_cv.record_path(own) == tmp_path / "semi-zen4.json"
    assert Path(full.supervised_runs) == nested_cv.ROOT / "results" / "ablation"


def test_a_record_name_is_the_benchmark_or_the_benchmark_and_a_label(nested_cv):
    assert nested_cv.record_name("ablation", "ablation") == "ablation"
    assert nested_cv.record_name("semi_recipe-zen4", "semi_recipe") == "semi_recipe-zen4"
    assert nested_cv.record_name("semi_student-zen4-share80", "semi_student") == "semi_student-zen4-share80"
    for bad in ("zen4", "ablation-", "ablation-../x", "ablation zen4", "ablations", "semi_recipe-zen4"):
        with pytest.raises(argparse.ArgumentTypeError, match="ablation-<label>"):
            nested_cv.record_name(bad, "ablation")
    parser = nested_cv.nested_cv_parser(None, record="ablation")
    with pytest.raises(SystemExit):  # argparse names the option and the value
        parser.parse_args(["--record", "../ablation"])


def test_begin_without_the_data_says_so_and_leaves_threads_alone(nested_cv, tmp_path, capsys):
    args = nested_cv.nested_cv_parser(None, runs="x").parse_args(["--data-root", str(tmp_path), "--threads", "2"])
    threads = torch.get_num_threads()
    assert nested_cv.begin(args) is None
    assert f"no COVID-SemiSeg at {tmp_path}: nothing to do" in capsys.readouterr().out
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("flag", ["--runs", "--out"])
def test_begin_refuses_an_output_folder_that_is_a_file_before_any_work(nested_cv, tmp_path, flag):
    (tmp_path / "TrainingSet").mkdir()
    blocking = tmp_path / "record.json"
    blocking.write_text("{}")
    parser = nested_cv.nested_cv_parser(None, runs="x", record="x")
    for path, where in ((blocking, "exists and is not a folder"),
                        (blocking / "sub", f"lies under {blocking}, which is not a folder")):
        args = parser.parse_args(["--data-root", str(tmp_path), flag, str(path)])
        with pytest.raises(SystemExit, match=f"error: {flag} {re.escape(str(path))}: {re.escape(where)}"):
            nested_cv.begin(args)
    assert blocking.read_text() == "{}"


@pytest.mark.parametrize("bf16", [True, False])
def test_begin_records_the_processor_and_its_bfloat16(nested_cv, tmp_path, monkeypatch, bf16):
    monkeypatch.setattr(config, "cpu_supports_bf16", lambda: bf16)  # whatever this CPU says
    (tmp_path / "TrainingSet").mkdir()
    args = nested_cv.nested_cv_parser(None).parse_args(["--data-root", str(tmp_path)])
    runtime = nested_cv.begin(args)
    assert runtime["setting"] == "reference" and runtime["cpu_bf16"] is bf16
    if runtime["device"] == "cpu":
        assert runtime["device_name"] == processor_name()


def test_quick_recipe_changes_only_the_sizes(nested_cv):
    start = Recipe(lr=2e-4, dihedral=False)
    quick = nested_cv.quick_recipe(start)
    assert (quick.image_size, quick.base_width, quick.depth, quick.epochs, quick.max_steps_per_epoch) == (64, 4, 2, 2, 2)
    assert (quick.lr, quick.dihedral, quick.tta) == (start.lr, start.dihedral, start.tta)


def test_mean_scores_average_each_metric_over_the_test_slices(nested_cv):
    per_case = {"s1": {"tta_dice": 0.5, "tta_infnet_mean_dice": 0.4, "dice": 0.1},
                "s2": {"tta_dice": 0.8, "tta_infnet_mean_dice": 0.2, "dice": 0.9}}
    assert nested_cv.mean_scores(per_case) == pytest.approx({"tta_dice": 0.65, "tta_infnet_mean_dice": 0.3})


NUMERICS = {"threads": 2, "cpu_bf16": True, "device_name": "Intel(R) Xeon(R) Processor"}


def _write_record(folder, parameters: dict, units: list[dict]):
    return write_record(folder, "some_benchmark", parameters=parameters, numbers={"units": units}, runtime=NUMERICS)


def test_stored_units_resume_only_what_the_same_settings_and_data_produced(nested_cv, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"x")
    parameters = {"data_root": str(data), "seeds": [0], "semi_epochs": 30, "quick": False}
    units = [{"seed": 0, "fold": fold, "scores": {"tta_dice": 0.6 + fold / 10}} for fold in (0, 1)]
    record = _write_record(tmp_path, parameters, units)
    assert nested_cv.stored_units(tmp_path / "missing.json", parameters, NUMERICS) == {}
    # more seeds, or the same data in another folder, still resume
    moved = tmp_path / "moved"
    data.rename(moved)
    resumed = nested_cv.stored_units(record, {**parameters, "seeds": [0, 1, 2], "data_root": str(moved)}, NUMERICS)
    assert sorted(resumed) == [(0, 0), (0, 1)]
    assert resumed[0, 1]["scores"]["tta_dice"] == pytest.approx(0.7)
    by_seed = nested_cv.stored_units(record, {**parameters, "data_root": str(moved)}, NUMERICS, key=("seed",))
    assert list(by_seed) == [(0,)]
    # other parameters would drop the units: refused, unless asked to start afresh
    other_setting = {**parameters, "data_root": str(moved), "semi_epochs": 10}
    with pytest.raises(SystemExit, match=r"other semi_epochs: 30 -> 10\. .*--record some_benchmark-<label>.*--restart"):
        nested_cv.stored_units(record, other_setting, NUMERICS)
    assert nested_cv.stored_units(record, other_setting, NUMERICS, restart=True) == {}
    # another processor's bfloat16 or another thread count gives other last bits: refused, record untouched
    written = record.read_text()
    for other in ({"cpu_bf16": False}, {"threads": 1}, {"device_name": "AMD EPYC"}):
        with pytest.raises(SystemExit, match=f"{next(iter(other))}=.*--record some_benchmark-<machine>"):
            nested_cv.stored_units(record, {**parameters, "data_root": str(moved)}, {**NUMERICS, **other})
    assert record.read_text() == written
    (moved / "b.png").write_bytes(b"y")
    with pytest.raises(SystemExit, match=r"other data \(its files differ from those at data_root\)\. "):
        nested_cv.stored_units(record, {**parameters, "data_root": str(moved)}, NUMERICS)
    assert nested_cv.stored_units(record, {**parameters, "data_root": str(moved)}, NUMERICS, restart=True) == {}
    assert record.read_text() == written


def test_parameter_changes_name_each_differing_field_of_a_recipe(nested_cv):
    earlier = {"seeds": [0], "data_root": "/a", "quick": False, "recipe": {"epochs": 600, "lr": 1e-3}}
    now = {"seeds": [0, 1], "data_root": "/b", "quick": True, "recipe": {"epochs": 900, "lr": 1e-3, "zoom": 1.25}}
    assert nested_cv.parameter_changes(earlier, now) == ["quick: False -> True", "recipe.epochs: 600 -> 900",
                                                         "recipe.zoom: 1.0 -> 1.25"]
    assert nested_cv.parameter_changes(earlier, earlier) == []


def test_a_recipe_field_added_since_at_its_neutral_value_is_no_change(nested_cv):
    """A record from before ``zoom`` existed continues when ``zoom`` is at the value that trains as
    before (1.0), and is refused at any other; a field outside the recipe gets no such default."""
    earlier = {"folds": 5, "recipe": {"epochs": 600}}
    assert nested_cv.parameter_changes(earlier, {"folds": 5, "recipe": {"epochs": 600, "zoom": 1.0}}) == []
    assert nested_cv.parameter_changes(earlier, {"folds": 5, "recipe": {"epochs": 600, "zoom": 1.25}}) == [
        "recipe.zoom: 1.0 -> 1.25"]
    assert nested_cv.parameter_changes(earlier, {"folds": 5, "zoom": 1.0, "recipe": {"epochs": 600}}) == [
        "zoom: None -> 1.0"]


def test_a_record_from_before_a_recipe_field_resumes_at_its_neutral_value(nested_cv, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"x")
    recipe = dataclasses.asdict(Recipe(epochs=600))
    before_zoom = {name: value for name, value in recipe.items() if name != "zoom"}
    parameters = {"data_root": str(data), "seeds": [0], "recipe": before_zoom}
    record = _write_record(tmp_path, parameters, [{"seed": 0, "fold": 0, "scores": {"tta_dice": 0.7}}])
    assert list(nested_cv.stored_units(record, {**parameters, "recipe": recipe}, NUMERICS)) == [(0, 0)]
    with pytest.raises(SystemExit, match=r"recipe\.zoom: 1\.0 -> 1\.25"):
        nested_cv.stored_units(record, {**parameters, "recipe": {**recipe, "zoom": 1.25}}, NUMERICS)


def test_units_of_changed_code_are_kept_only_when_the_first_is_reproduced_exactly(nested_cv, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"x")
    parameters = {"data_root": str(data), "seeds": [0], "quick": False}

    def unit(seed: int, fold: int, seconds: float, shift: float = 0.0) -> dict:
        return {"seed": seed, "fold": fold, "scores": {"tta_dice": 0.6 + fold / 10 + shift}, "best_epoch": {"control": 3},
                "seconds": {"control": seconds}}

    record = _write_record(tmp_path, parameters, [unit(0, 1, 5.0), unit(0, 0, 5.0)])
    stored = json.loads(record.read_text(encoding="utf-8"))
    stored["fingerprint"]["code"]["covidlib/recipe.py"] = "0" * 16  # computed by code that has changed since
    record.write_text(json.dumps(stored), encoding="utf-8")
    asked = []

    def again(key: tuple, shift: float = 0.0) -> dict:
        asked.append(key)
        return unit(*key, seconds=9.0, shift=shift)

    kept = nested_cv.stored_units(record, parameters, NUMERICS, recheck=again)
    # only the first unit is computed again; its new timing is kept, the other unit stands as stored
    assert asked == [(0, 0)] and sorted(kept) == [(0, 0), (0, 1)]
    assert kept[0, 0]["seconds"] == {"control": 9.0} and kept[0, 1]["seconds"] == {"control": 5.0}
    assert "reproduces unit (0, 0) exactly: keeping all 2 units" in capsys.readouterr().out
    # one bit off in one score: every unit is computed afresh, starting from the one just computed
    fresh = nested_cv.stored_units(record, parameters, NUMERICS, recheck=lambda key: again(key, shift=1e-12))
    assert list(fresh) == [(0, 0)] and fresh[0, 0]["scores"]["tta_dice"] == 0.6 + 1e-12
    assert "does not reproduce unit (0, 0)" in capsys.readouterr().out
    assert nested_cv.stored_units(record, parameters, NUMERICS) == {}


def test_a_complete_record_is_rewritten_only_when_the_code_summarises_its_units_differently(nested_cv, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"x")
    parameters = {"data_root": str(data), "seeds": [0], "quick": False}
    units = [{"seed": 0, "fold": fold, "scores": {"tta_dice": 0.6 + fold / 10}} for fold in (0, 1)]
    record = write_record(tmp_path, "some_benchmark", parameters=parameters,
                          numbers={"rows": [{"label": "old"}], "units": units, "units_planned": 2}, runtime=NUMERICS)
    args = argparse.Namespace(out=str(tmp_path), record="some_benchmark", seeds=[0], folds=2, restart=False)

    def nothing_to_compute(*_):
        raise AssertionError("every unit is stored: none is computed")

    def run(label: str) -> None:
        nested_cv.run_units(args, None, None, Recipe(), parameters, NUMERICS, nothing_to_compute,
                            lambda done: {"rows": [{"label": label, "n": len(done)}]})

    run("new")
    rewritten = json.loads(record.read_text(encoding="utf-8"))["numbers"]
    assert rewritten == {"rows": [{"label": "new", "n": 2}], "units": units, "units_planned": 2}
    assert "summarises its stored units differently now" in capsys.readouterr().out
    written = record.read_text(encoding="utf-8")
    run("new")  # the same summary: the record (its creation time too) stays as it is
    assert record.read_text(encoding="utf-8") == written
    assert "differently" not in capsys.readouterr().out


def _run(script: str, *options: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--data-root", str(REAL_SEMISEG),
                           *options], capture_output=True, encoding="utf-8", timeout=900,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})  # the tables print ± in any locale
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not REAL_SEMISEG.is_dir(), reason="real COVID-SemiSeg data not present")
def test_learning_curve_quick_writes_its_record_and_resumes_from_it(tmp_path):
    options = ["--seeds", "0", "--out", str(tmp_path), "--runs", str(tmp_path / "curve"),
               "--supervised-runs", str(tmp_path / "ablation"), "--threads", "1"]
    _run("learning_curve.py", *options)
    record_path = tmp_path / "learning_curve.json"
    record = json.loads(record_path.read_text())
    assert record["parameters"]["quick"] is True and record["parameters"]["seeds"] == [0]
    rows = record["numbers"]["rows"]
    assert [row["n"] for row in rows] == [8, 16, 24, 32]
    assert all(0.0 <= row["tta_dice_mean"] <= 1.0 for row in rows)
    assert len(record["numbers"]["units"]) == 4 * 5 and record["numbers"]["units_planned"] == 4 * 5
    # the record alone resumes the run: without the trainings' caches nothing is trained again
    shutil.rmtree(tmp_path / "curve")
    shutil.rmtree(tmp_path / "ablation")
    written = record_path.read_text()
    assert "every unit is stored" in _run("learning_curve.py", *options)
    assert record_path.read_text() == written and not (tmp_path / "ablation").exists()


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not REAL_SEMISEG.is_dir(), reason="real COVID-SemiSeg data not present")
def test_semi_recipe_semi_student_all_slices_and_ablation_quick_write_their_records(tmp_path):
    ablation_options = ["--seeds", "0", "--rows", "0", "--out", str(tmp_path), "--runs", str(tmp_path / "ablation"),
                        "--threads", "1"]
    _run("ablation.py", *ablation_options)
    ablation = json.loads((tmp_path / "ablation.json").read_text())["numbers"]
    assert [row["name"] for row in ablation["rows"]] == [ablation["planned"][0]]
    semi_options = ["--seeds", "0", "--folds", "5", "--out", str(tmp_path), "--supervised-runs",
                    str(tmp_path / "ablation"), "--threads", "1"]
    _run("semi_recipe.py", *semi_options)
    record_path = tmp_path / "semi_recipe.json"
    semi = json.loads(record_path.read_text())["numbers"]
    assert semi["units_planned"] == 5 and len(semi["thresholds"]) == 5 and len(semi["units"]) == 5
    assert [r["arm"] for r in semi["rows"]] == ["supervised", "control", "pseudo_labels", "pseudo_slices", "control_ema",
                                                "mean_teacher", "consistency_slices"]
    # the student reads the same A' runs: none is trained again, and each unit trains one student
    student_options = [*semi_options, "--runs", str(tmp_path / "students"), "--seeds", "0"]
    student_output = _run("semi_student.py", *student_options)
    student = json.loads((tmp_path / "semi_student.json").read_text())["numbers"]
    assert [r["arm"] for r in student["rows"]] == ["supervised", "student"] and len(student["units"]) == 5
    assert [r["scores"]["supervised"] for r in student["units"]] == [r["scores"]["supervised"] for r in semi["units"]]
    assert len(list((tmp_path / "students").glob("seed0_fold*/best.pt"))) == 5
    assert "every unit is stored" in student_output
    # all_slices reads the same A' runs too (and trains seed 1's), trains one network on the 40 outer-training
    # slices a unit, and for seed 1 averages each with seed 0's
    all_options = [*semi_options, "--runs", str(tmp_path / "all"), "--seeds", "0,1"]
    _run("all_slices.py", *all_options)
    every = json.loads((tmp_path / "all_slices.json").read_text())["numbers"]
    assert [r["arm"] for r in every["rows"]] == ["chosen", "last", "all_slices", "ensemble_chosen", "ensemble_all_slices"]
    assert len(every["units"]) == 10 and len(every["rows"][-1]["units"]) == 5
    assert [r["scores"]["chosen"] for r in every["units"][:5]] == [r["scores"]["supervised"] for r in semi["units"]]
    assert all(r["training_slices"] == {"chosen": 32, "all_slices": 40} for r in every["units"])
    assert all(("ensemble_all_slices" in r["scores"]) == (r["seed"] == 1) for r in every["units"])
    assert len(list((tmp_path / "all").glob("all-*/seed[01]_fold*/last.pt"))) == 10
    # asking for the ensemble's rival later completes the stored units of its seed, and only those
    _run("all_slices.py", *all_options, "--budget-seeds", "1")
    completed = json.loads((tmp_path / "all_slices.json").read_text())["numbers"]
    assert [r["arm"] for r in completed["rows"]][-1] == "budget_all_slices" and len(completed["units"]) == 10
    assert all(("budget_all_slices" in r["scores"]) == (r["seed"] == 1) for r in completed["units"])
    assert [{arm: score for arm, score in r["scores"].items() if arm != "budget_all_slices"} for r in completed["units"]] \
        == [r["scores"] for r in every["units"]]
    assert all(r["budget_epochs_run"] == 2 * r["epochs_run"] for r in completed["units"] if r["seed"] == 1)
    assert completed["rows"][-2]["tta_dice_change_vs_budget"]["n"] == 5
    assert len(list((tmp_path / "all").glob("all-*/seed*_fold*/last.pt"))) == 15
    # the record alone resumes the run: without A''s checkpoints nothing is trained again
    shutil.rmtree(tmp_path / "ablation")
    written = record_path.read_text()
    assert "5 of 5 units stored" in _run("semi_recipe.py", *semi_options)
    assert record_path.read_text() == written and not (tmp_path / "ablation").exists()
    assert "5 of 5 units stored" in _run("semi_student.py", *student_options)
    assert "10 of 10 units stored" in _run("all_slices.py", *all_options)
    # so does the ablation's: its record keeps every run
    assert "0 of 5 runs to compute" in _run("ablation.py", *ablation_options)
    assert json.loads((tmp_path / "ablation.json").read_text())["numbers"] == ablation
    assert not (tmp_path / "ablation").exists()


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_SEMISEG.is_dir(), reason="real COVID-SemiSeg data not present")
def test_seed_ensemble_and_map_sharpness_quick_score_each_slice_by_the_networks_that_never_saw_it(tmp_path, nested_cv):
    from covidlib.crossval import run_key
    from covidlib.datasets import get_dataset
    from covidlib.inference import case_metrics, load_model, predict_cases

    runs = tmp_path / "ablation"
    output = _run("seed_ensemble.py", "--seeds", "0,1", "--control-seeds", "1", "--out", str(tmp_path),
                  "--supervised-runs", str(runs), "--threads", "1")
    assert re.search(r"^ensemble +TTA Dice [0-9.]+ ± [0-9.]+, Inf-Net mean Dice [0-9.]+; Dice vs its members alone ", output, re.MULTILINE)
    assert re.search(r"^ensemble vs one network trained as long: [-+][0-9.]+ \[", output, re.MULTILINE)
    numbers = json.loads((tmp_path / "seed_ensemble.json").read_text())["numbers"]
    assert [row["arm"] for row in numbers["rows"]] == ["network", "last", "snapshots", "budget", "ensemble"]
    assert [(unit["members"], unit["fold"]) for unit in numbers["units"]] == [([0, 1], fold) for fold in range(5)]
    # the control: seed 1's network trained twice as long, in the cache beside the networks at the defaults
    recipe = nested_cv.quick_recipe(Recipe())
    budget = dataclasses.replace(recipe, **nested_cv.budget_changes(recipe, 2))
    assert budget.epochs == 2 * recipe.epochs and budget.step_size == 2 * recipe.step_size
    controls = [json.loads((runs / run_key(budget, "covid-semiseg", 5) / f"seed1_fold{fold}.json").read_text())
                for fold in range(5)]
    control_dice = [np.mean([c["per_case"][case]["tta_dice"] for case in c["test"]]) for c in controls]
    rows = {row["arm"]: row for row in numbers["rows"]}
    assert rows["budget"]["tta_dice_by_unit"] == pytest.approx(control_dice)
    # one slice by hand: the two networks whose test fold held it, their TTA probabilities averaged
    folder = runs / run_key(recipe, "covid-semiseg", 5)
    stored = {seed: [json.loads((folder / f"seed{seed}_fold{fold}.json").read_text()) for fold in range(5)]
              for seed in (0, 1)}
    case = stored[0][0]["test"][0]
    dataset = get_dataset("covid-semiseg", REAL_SEMISEG)
    probabilities = []
    for seed in (0, 1):
        [result] = [result for result in stored[seed] if case in result["test"]]
        model, metadata = load_model(folder / f"seed{seed}_fold{result['fold']}" / "best.pt")
        [(_, seed_probabilities, mask)] = predict_cases(model, dataset, [case], metadata["image_size"], "cpu", tta=True)
        probabilities.append(seed_probabilities)
    by_hand = case_metrics(np.mean(probabilities, axis=0), mask)["dice"]
    assert numbers["per_case"]["0-1"][case]["tta_dice"] == pytest.approx(by_hand, abs=1e-6)
    # beside it, its share of infected pixels and the mean Dice of the two networks alone
    assert len(numbers["slices"]) == 50 and numbers["slices"][case]["infected_share"] == pytest.approx(np.mean(mask > 0))
    alone_on_case = [r["per_case"][case]["tta_dice"] for s in (0, 1) for r in stored[s] if case in r["test"]]
    assert numbers["slices"][case]["network_tta_dice"] == pytest.approx(np.mean(alone_on_case))
    assert numbers["slices"][case]["ensemble_tta_dice"] == pytest.approx(by_hand, abs=1e-6)
    # the networks alone are the nested-CV results themselves
    alone = np.mean([np.mean([r["per_case"][c]["tta_dice"] for c in r["test"]]) for s in (0, 1) for r in stored[s]])
    assert rows["network"]["tta_dice_mean"] == pytest.approx(alone)
    # seed 0's first outer fold at its last epoch, by hand
    model, metadata = load_model(folder / "seed0_fold0" / "last.pt")
    last = [case_metrics(probabilities, mask)["dice"] for _, probabilities, mask in
            predict_cases(model, dataset, stored[0][0]["test"], metadata["image_size"], "cpu", tta=True)]
    assert rows["last"]["tta_dice_by_unit"][0] == pytest.approx(np.mean(last), abs=1e-6)
    # map_sharpness reads the same seed-0 networks: as predicted they score as nested CV scored them, and
    # no temperature moves a pixel across 0.5
    _run("map_sharpness.py", "--seeds", "0", "--temperatures", "1,0.5,0", "--out", str(tmp_path),
         "--supervised-runs", str(runs), "--threads", "1")
    sharpness = json.loads((tmp_path / "map_sharpness.json").read_text())["numbers"]
    assert [row["label"] for row in sharpness["rows"]] == ["as predicted (T = 1)", "log-odds / 0.5",
                                                           "binarised at 0.5 (T = 0)"]
    by_fold = [np.mean([r["per_case"][c][metric] for c in r["test"]]) for r in stored[0]
               for metric in ("tta_dice", "tta_infnet_mean_dice")]
    assert [unit["scores"]["1.0"][metric] for unit in sharpness["units"] for metric in ("tta_dice", "tta_infnet_mean_dice")
            ] == pytest.approx(by_fold)
    assert all(unit["scores"][t]["tta_dice"] == unit["scores"]["1.0"]["tta_dice"] for unit in sharpness["units"]
               for t in ("0.5", "0.0"))
