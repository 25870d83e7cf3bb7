"""benchmarks/ablation.py: which recipe each row trains, and which row each change is measured against."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest

from covidlib.recipe import Recipe


@pytest.fixture(scope="module")
def ablation(load_benchmark):
    return load_benchmark("ablation")


def test_path_rows_accumulate_and_alternatives_change_their_base(ablation):
    recipes = ablation.build_recipes(ablation.REPORT, quick=False)
    tta = recipes[ablation.row_index(ablation.TTA_ROW)]
    assert tta == dataclasses.replace(ablation.REPORT, lr=1e-3, dihedral=True, tta=True)
    alternatives = [(step, recipe) for step, recipe in zip(ablation.STEPS, recipes) if step.base]
    assert alternatives
    for step, recipe in alternatives:
        assert recipe == dataclasses.replace(recipes[ablation.row_index(step.base)], **step.change)
    assert ablation.path_recipes(recipes)[-1] == Recipe()


def test_a_path_row_below_an_alternative_builds_on_the_path(ablation, monkeypatch):
    steps = [ablation.Step("start", {}), ablation.Step("wide", {"base_width": 32}),
             ablation.Step("narrow instead", {"base_width": 8}, base="start"), ablation.Step("+ lr", {"lr": 5e-3})]
    monkeypatch.setattr(ablation, "STEPS", steps)
    start, wide, narrow, faster = ablation.build_recipes(Recipe(), quick=False)
    assert (wide.base_width, narrow.base_width, faster.base_width, faster.lr) == (32, 8, 32, 5e-3)


def test_quick_rows_shrink_every_size_and_schedule_change(ablation):
    recipes = ablation.build_recipes(ablation.REPORT, quick=True)
    sized = [recipe for step, recipe in zip(ablation.STEPS, recipes) if "image_size" in step.change]
    assert sized and all(recipe.image_size == 80 for recipe in sized)
    longer = [recipe for step, recipe in zip(ablation.STEPS, recipes) if "epochs" in step.change]
    assert longer and all(recipe.epochs == 3 for recipe in longer)


def _runs(ablation, score, present: dict[int, set]) -> tuple[dict, list[str]]:
    """Runs of the quick recipes: row ``r`` holds the (seed, fold) units ``present[r]``, each scoring
    ``score(r, seed, fold)`` on every metric, each taking one second."""
    recipes = ablation.build_recipes(ablation.REPORT, quick=True)
    keys = [f"run{index}" for index in range(len(recipes))]
    runs = {}
    for index, units in present.items():
        run = runs.setdefault(keys[index], ablation.new_run())
        for seed, fold in sorted(units):
            ablation.add_result(run, {"seed": seed, "fold": fold, "code": {},
                                      "per_case": {"case": {metric: score(index, seed, fold)
                                                            for metric in ablation.UNIT_SCORES}},
                                      "val_threshold": 0.4, "epochs_run": 3, "best_epoch": 2, "wall_seconds": 1.0,
                                      "cpu_seconds": 2.0})
    return runs, keys


def _write(ablation, tmp_path, runs: dict, keys: list[str]) -> dict:
    args = argparse.Namespace(out=str(tmp_path), record="ablation", data_root=str(tmp_path), folds=2, quick=True)
    ablation.write_rows(args, {}, runs, keys, ablation.build_recipes(ablation.REPORT, quick=True))
    return json.loads((tmp_path / "ablation.json").read_text())


def test_each_change_is_measured_against_its_base_or_the_path_row_above(ablation, tmp_path):
    # fold f of row r scores 0.5 + 0.01 r + 0.001 f on its single test slice; row 2 is left out
    present = {index: {(0, 0), (0, 1)} for index in range(len(ablation.STEPS)) if index != 2}
    runs, keys = _runs(ablation, lambda index, seed, fold: 0.5 + 0.01 * index + 0.001 * fold, present)
    rows = {row["name"]: row for row in _write(ablation, tmp_path, runs, keys)["numbers"]["rows"]}
    names = [step.name for step in ablation.STEPS]
    assert names[2] not in rows and len(rows) == len(names) - 1
    assert "dice_change_vs_previous" not in rows[names[0]]
    # the path skips the missing row: row 3 is measured against row 1
    change = rows[names[3]]["dice_change_vs_previous"]
    assert change["previous"] == names[1] and np.isclose(change["mean_difference"], 0.02)
    for index, step in enumerate(ablation.STEPS):
        if step.base is not None:
            change = rows[step.name]["dice_change_vs_previous"]
            base = ablation.row_index(step.base)
            assert change["previous"] == step.base
            assert np.isclose(change["mean_difference"], 0.01 * (index - base))


def test_rows_hold_their_complete_seeds_and_changes_use_the_runs_both_rows_have(ablation, tmp_path):
    # row 0: seeds 0 and 1 complete, seed 2 has one fold of two; row 1: seed 0 only; other rows: none.
    # (seed, fold) scores 0.5 + 0.1 row + 0.01 seed + 0.001 fold, so row 1 - row 0 is 0.1 on seed 0's runs.
    present = {0: {(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)}, 1: {(0, 0), (0, 1)}}
    runs, keys = _runs(ablation, lambda index, seed, fold: 0.5 + 0.1 * index + 0.01 * seed + 0.001 * fold, present)
    record = _write(ablation, tmp_path, runs, keys)
    first, second = record["numbers"]["rows"]
    assert (first["seeds"], second["seeds"], record["parameters"]["seeds"]) == ([0, 1], [0], [0, 1])
    assert len(first["dice_by_unit"]) == 4 and np.isclose(first["dice_mean"], 0.5 + 0.005 + 0.0005)
    # the seconds of the incomplete seed's run are not the row's, but its unit is kept for the next machine
    assert (first["train_wall_seconds"], first["train_cpu_seconds"]) == (4.0, 8.0)
    assert len(record["numbers"]["runs"]["run0"]["units"]) == 5
    change = second["dice_change_vs_previous"]
    assert change["n"] == 2 and np.isclose(change["mean_difference"], 0.1)


def test_a_unit_averages_each_score_over_the_test_slices(ablation):
    run = ablation.new_run()
    per_case = {"a": {metric: 0.2 for metric in ablation.UNIT_SCORES}, "b": {metric: 0.6 for metric in ablation.UNIT_SCORES}}
    ablation.add_result(run, {"seed": 1, "fold": 3, "code": {"covidlib/train.py": "abc"}, "per_case": per_case,
                              "val_threshold": 0.35, "epochs_run": 9, "best_epoch": 4, "wall_seconds": 5.0,
                              "cpu_seconds": 9.0})
    assert run["code"] == {"covidlib/train.py": "abc"}
    (unit,) = run["units"]
    assert (unit["seed"], unit["fold"], unit["epochs_run"], unit["best_epoch"], unit["val_threshold"]) == (1, 3, 9, 4, 0.35)
    assert unit["scores"] == pytest.approx({metric: 0.4 for metric in ablation.UNIT_SCORES})
    assert run["seconds"] == [{"units": [[1, 3]], "wall_seconds": 5.0, "cpu_seconds": 9.0}]


def test_a_record_resumes_its_runs_shows_only_those_of_unchanged_code_and_refuses_other_numerics(ablation, tmp_path):
    from covidlib.fingerprint import code_fingerprint

    numerics = {"threads": 2, "cpu_bf16": True, "device_name": "Intel(R) Xeon(R) Processor", "cpu_family": 6}
    runs, keys = _runs(ablation, lambda index, seed, fold: 0.6, {0: {(0, 0), (0, 1)}, 1: {(0, 0), (0, 1)}})
    runs["run0"]["code"] = code_fingerprint(["covidlib.recipe"])
    runs["run1"]["code"] = {"covidlib/recipe.py": "0" * 16}  # trained by code that has changed since
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"x")
    args = argparse.Namespace(out=str(tmp_path), record="ablation", data_root=str(data), folds=2, quick=True)
    ablation.write_rows(args, numerics, runs, keys, ablation.build_recipes(ablation.REPORT, quick=True))
    record = tmp_path / "ablation.json"
    parameters = {"data_root": str(data), "folds": 2, "quick": True}
    # the stale run is kept for a recheck, but is no row
    assert [row["name"] for row in json.loads(record.read_text())["numbers"]["rows"]] == [ablation.STEPS[0].name]
    stored = ablation.stored_runs(record, parameters, numerics)
    assert list(stored) == ["run0", "run1"] and stored["run0"]["units"] == runs["run0"]["units"]
    assert stored["run1"]["units"] == runs["run1"]["units"]
    with pytest.raises(SystemExit, match=r"other folds: 2 -> 5\..*--restart"):
        ablation.stored_runs(record, {**parameters, "folds": 5}, numerics)
    assert ablation.stored_runs(record, {**parameters, "folds": 5}, numerics, restart=True) == {}
    assert ablation.stored_runs(tmp_path / "missing.json", parameters, numerics) == {}
    written = record.read_text()
    with pytest.raises(SystemExit, match="cpu_bf16=True.*cpu_bf16=False.*--record ablation-<machine>"):
        ablation.stored_runs(record, parameters, {**numerics, "cpu_bf16": False})
    # both compute in bfloat16, but their kernels round differently
    with pytest.raises(SystemExit, match="device_name=Intel.*device_name=AMD EPYC.*--out DIR"):
        ablation.stored_runs(record, parameters, {**numerics, "device_name": "AMD EPYC"})
    # one name, another generation: in bfloat16 the family decides
    with pytest.raises(SystemExit, match="cpu_family=6.*cpu_family=7.*--out DIR"):
        ablation.stored_runs(record, parameters, {**numerics, "cpu_family": 7})
    assert record.read_text() == written
    # a record of other parameters is no machine's to continue: --restart replaces it at any numerics
    with pytest.raises(SystemExit, match="cpu_family=6.*cpu_family=7"):
        ablation.stored_runs(record, {**parameters, "folds": 5}, {**numerics, "cpu_family": 7})
    assert ablation.stored_runs(record, {**parameters, "folds": 5}, {**numerics, "cpu_family": 7}, restart=True) == {}
    with pytest.raises(SystemExit, match="cpu_family=6.*cpu_family=7"):  # one of these parameters it is not
        ablation.stored_runs(record, parameters, {**numerics, "cpu_family": 7}, restart=True)
    # another kind of machine keeps its own record beside it, which this one's numerics do not touch
    zen4 = {**numerics, "device_name": "AMD EPYC", "cpu_family": 25}
    own = argparse.Namespace(**{**vars(args), "record": "ablation-zen4"})
    ablation.write_rows(own, zen4, runs, keys, ablation.build_recipes(ablation.REPORT, quick=True))
    assert ablation.record_path(own) == tmp_path / "ablation-zen4.json"
    assert json.loads(ablation.record_path(own).read_text())["chapter"] == "ablation-zen4"
    assert list(ablation.stored_runs(ablation.record_path(own), parameters, zen4)) == ["run0", "run1"]
    assert record.read_text() == written


def test_merging_keeps_the_units_another_process_added_and_counts_each_second_once(ablation):
    mine, keys = _runs(ablation, lambda index, seed, fold: 0.6, {0: {(0, 0)}, 1: {(0, 0)}})
    theirs, _ = _runs(ablation, lambda index, seed, fold: 0.7, {0: {(0, 0), (0, 1)}, 2: {(1, 0)}})
    ablation.merge_runs(mine, theirs)
    assert [(unit["seed"], unit["fold"], unit["scores"]["dice"]) for unit in mine["run0"]["units"]] == [
        (0, 0, pytest.approx(0.6)), (0, 1, pytest.approx(0.7))]
    assert [entry["units"] for entry in mine["run0"]["seconds"]] == [[[0, 0]], [[0, 1]]]
    assert len(mine["run1"]["units"]) == 1 and len(mine["run2"]["units"]) == 1
    ablation.merge_runs(mine, theirs)  # merging again adds nothing
    assert len(mine["run0"]["units"]) == 2 and len(mine["run0"]["seconds"]) == 2


def _result(seed: int, fold: int, score: float, code: dict) -> dict:
    return {"seed": seed, "fold": fold, "code": code, "per_case": {"case": {m: score for m in ("dice", "infnet_mean_dice",
                                                                                            "tta_dice", "tta_infnet_mean_dice",
                                                                                            "tta_dice_at_val_threshold")}},
            "val_threshold": 0.4, "epochs_run": 3, "best_epoch": 2, "wall_seconds": 1.0, "cpu_seconds": 2.0}


def test_a_run_of_changed_code_is_kept_only_when_the_current_code_reproduces_a_unit_exactly(ablation):
    from covidlib.fingerprint import code_fingerprint

    current, old = code_fingerprint(["covidlib.recipe"]), {"covidlib/recipe.py": "0" * 16}
    runs, _ = _runs(ablation, lambda index, seed, fold: 0.6 + 0.01 * fold, {0: {(0, 1), (0, 0), (1, 0)}})
    run = {**runs["run0"], "code": old}
    # units carried over from an older record hold only the scores their rows show
    run["units"] = [{**unit, "scores": {"tta_dice": unit["scores"]["tta_dice"]}} for unit in run["units"]]
    asked = []

    def same(seed, fold):
        asked.append((seed, fold))
        return _result(seed, fold, 0.6 + 0.01 * fold, current)

    kept = ablation.recheck(run, ["covidlib/recipe.py"], same)
    assert asked == [(0, 0)]  # one unit, the first
    assert kept["code"] == current and kept["seconds"] == run["seconds"]
    # the retrained unit, with every score, stands in for the stored one; the others stay as they were
    first, *others = sorted(kept["units"], key=lambda unit: (unit["seed"], unit["fold"]))
    assert set(first["scores"]) == set(ablation.UNIT_SCORES) and first["scores"]["tta_dice"] == pytest.approx(0.6)
    assert sorted(others, key=lambda unit: (unit["seed"], unit["fold"])) == [
        unit for unit in run["units"] if (unit["seed"], unit["fold"]) != (0, 0)]
    assert kept["checks"] == [{"unit": [0, 0], "changed": ["covidlib/recipe.py"]}]
    # the last bit differs: every unit is computed afresh, starting from the one just retrained
    fresh = ablation.recheck(run, ["covidlib/recipe.py"], lambda seed, fold: _result(seed, fold, 0.6 + 1e-12, current))
    assert [(u["seed"], u["fold"]) for u in fresh["units"]] == [(0, 0)] and "checks" not in fresh
    assert fresh["units"][0]["scores"]["dice"] == 0.6 + 1e-12
    later_epoch = {**_result(0, 0, 0.6, current), "best_epoch": 3}
    assert "checks" not in ablation.recheck(run, ["covidlib/recipe.py"], lambda seed, fold: later_epoch)


def test_merging_keeps_the_run_of_the_current_code_whole(ablation):
    from covidlib.fingerprint import code_fingerprint

    current, old = code_fingerprint(["covidlib.recipe"]), {"covidlib/recipe.py": "0" * 16}
    stale, _ = _runs(ablation, lambda index, seed, fold: 0.6, {0: {(0, 0), (0, 1)}})
    rechecked, _ = _runs(ablation, lambda index, seed, fold: 0.6, {0: {(0, 0)}})
    stale["run0"]["code"], rechecked["run0"]["code"] = old, current
    mine = {key: dict(run) for key, run in stale.items()}
    ablation.merge_runs(mine, rechecked)
    assert mine["run0"] == rechecked["run0"]
    ablation.merge_runs(mine, stale)  # a stale run of another process does not undo the check
    assert mine["run0"] == rechecked["run0"]


def test_a_threshold_row_shows_only_units_holding_its_score_and_a_recomputed_unit_replaces_the_old(ablation, tmp_path):
    threshold_row = next(index for index, step in enumerate(ablation.STEPS) if "select_threshold" in step.change)
    base = ablation.row_index(ablation.STEPS[threshold_row].base)
    recipes = ablation.build_recipes(ablation.REPORT, quick=False)
    assert ablation.training_recipe(recipes[threshold_row]) == ablation.training_recipe(recipes[base])
    assert ablation.row_scores(recipes[threshold_row])["dice"] == "tta_dice_at_val_threshold"
    # rows before the TTA row are scored without it, as the record's scored_with_tta says
    assert [ablation.row_scores(recipe)["dice"] for recipe in recipes[:ablation.row_index(ablation.TTA_ROW) + 1]] == [
        "dice", "dice", "dice", "tta_dice"]
    # both rows share one run (as run_key of the training recipe makes them); seed 0's fold 1 predates the score
    runs, keys = _runs(ablation, lambda index, seed, fold: 0.6 + 0.01 * fold, {base: {(0, 0), (0, 1)}})
    keys[threshold_row] = keys[base]
    old = runs[keys[base]]["units"][1]
    old["scores"] = {name: value for name, value in old["scores"].items() if name != "tta_dice_at_val_threshold"}
    names = [row["name"] for row in _write(ablation, tmp_path, runs, keys)["numbers"]["rows"]]
    assert names == [ablation.STEPS[base].name]
    result = _result(0, 1, 0.61, {})
    result["per_case"]["case"]["tta_dice_at_val_threshold"] = 0.65
    ablation.add_result(runs[keys[base]], result)
    run = runs[keys[base]]
    assert sorted((unit["seed"], unit["fold"]) for unit in run["units"]) == [(0, 0), (0, 1)]
    assert [entry["units"] for entry in run["seconds"]] == [[[0, 0]], [[0, 1]]]
    rows = {row["name"]: row for row in _write(ablation, tmp_path, runs, keys)["numbers"]["rows"]}
    change = rows[ablation.STEPS[threshold_row].name]["dice_change_vs_previous"]
    assert change["previous"] == ablation.STEPS[base].name and np.isclose(change["mean_difference"], 0.02)


def test_summarising_only_rewrites_the_rows_on_any_processor_and_keeps_the_numerics_that_trained_them(
        ablation, tmp_path, monkeypatch):
    from covidlib.fingerprint import code_fingerprint

    trained_on = {"threads": 2, "cpu_bf16": True, "device_name": "AMD EPYC", "started_unix": 1.0}
    here = {"threads": 2, "cpu_bf16": True, "device_name": "Intel(R) Xeon(R) Processor", "started_unix": 2.0}
    runs, keys = _runs(ablation, lambda index, seed, fold: 0.5 + 0.01 * index, {0: {(0, 0), (0, 1)}, 1: {(0, 0), (0, 1)}})
    for run in runs.values():
        run["code"] = code_fingerprint(["covidlib.recipe"])
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"x")
    args = argparse.Namespace(out=str(tmp_path), record="ablation", data_root=str(data), folds=2, quick=True)
    recipes = ablation.build_recipes(ablation.REPORT, quick=True)
    ablation.write_rows(args, trained_on, runs, keys, recipes)
    parameters = {"data_root": str(data), "folds": 2, "quick": True}
    renamed = [dataclasses.replace(ablation.STEPS[0], name="the report, renamed"), *ablation.STEPS[1:]]
    monkeypatch.setattr(ablation, "STEPS", renamed)
    ablation.summarise_only(args, parameters, here, keys, recipes)
    record = json.loads((tmp_path / "ablation.json").read_text())
    first, second = record["numbers"]["rows"]
    assert first["name"] == "the report, renamed" and second["dice_change_vs_previous"]["previous"] == first["name"]
    assert np.isclose(second["dice_change_vs_previous"]["mean_difference"], 0.01)
    assert record["runtime"] == {**trained_on, "started_unix": 2.0}
    assert record["numbers"]["runs"] == json.loads(json.dumps(runs))
    written = (tmp_path / "ablation.json").read_text()
    with pytest.raises(SystemExit, match="other folds"):
        ablation.summarise_only(args, {**parameters, "folds": 5}, here, keys, recipes)
    (data / "b.png").write_bytes(b"y")  # the data fingerprint is of names and sizes
    with pytest.raises(SystemExit, match="other data"):
        ablation.summarise_only(args, parameters, here, keys, recipes)
    (data / "b.png").unlink()
    stale = json.loads(written)
    stale["numbers"]["runs"]["run1"]["code"] = {"covidlib/recipe.py": "0" * 16}
    (tmp_path / "ablation.json").write_text(json.dumps(stale))
    with pytest.raises(SystemExit, match="runs run1 were trained by code changed since.*AMD EPYC"):
        ablation.summarise_only(args, parameters, here, keys, recipes)
    with pytest.raises(SystemExit, match="no record"):
        ablation.summarise_only(argparse.Namespace(**{**vars(args), "out": str(data)}), parameters, here, keys, recipes)
