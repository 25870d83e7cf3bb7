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
    assert Recipe() in recipes


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


def test_each_change_is_measured_against_its_base_or_the_path_row_above(ablation, tmp_path):
    # fold f of row r scores 0.5 + 0.01 r + 0.001 f on its single test slice; row 2 is left incomplete
    def results_of(index: int, seeds, compute: bool) -> list[dict]:
        if index == 2:
            return []
        return [{"seed": 0, "fold": fold, "per_case": {"case": {"dice": 0.5 + 0.01 * index + 0.001 * fold,
                                                                "tta_dice": 0.5 + 0.01 * index + 0.001 * fold,
                                                                "infnet_mean_dice": 0.4, "tta_infnet_mean_dice": 0.4}},
                 "epochs_run": 3, "best_epoch": 2, "wall_seconds": 1.0, "cpu_seconds": 1.0} for fold in range(2)]

    args = argparse.Namespace(out=str(tmp_path), data_root=str(tmp_path), folds=2, quick=True)
    recipes = ablation.build_recipes(ablation.REPORT, quick=True)
    ablation.write_complete_rows(args, {}, results_of, recipes)
    rows = {row["name"]: row for row in json.loads((tmp_path / "ablation.json").read_text())["numbers"]["rows"]}
    names = [step.name for step in ablation.STEPS]
    assert names[2] not in rows and len(rows) == len(names) - 1
    assert "dice_change_vs_previous" not in rows[names[0]]
    # the path skips the incomplete row: row 3 is measured against row 1
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

    def results_of(index: int, seeds, compute: bool) -> list[dict]:
        score = lambda seed, fold: 0.5 + 0.1 * index + 0.01 * seed + 0.001 * fold  # noqa: E731
        return [{"seed": seed, "fold": fold,
                 "per_case": {"case": {metric: score(seed, fold) for metric in
                                       ("dice", "tta_dice", "infnet_mean_dice", "tta_infnet_mean_dice")}},
                 "epochs_run": 3, "best_epoch": 2, "wall_seconds": 1.0, "cpu_seconds": 1.0}
                for seed, fold in sorted(present.get(index, ())) if seed in seeds]

    args = argparse.Namespace(out=str(tmp_path), data_root=str(tmp_path), folds=2, quick=True)
    ablation.write_complete_rows(args, {}, results_of, ablation.build_recipes(ablation.REPORT, quick=True))
    record = json.loads((tmp_path / "ablation.json").read_text())
    first, second = record["numbers"]["rows"]
    assert (first["seeds"], second["seeds"], record["parameters"]["seeds"]) == ([0, 1], [0], [0, 1])
    assert len(first["dice_by_unit"]) == 4 and np.isclose(first["dice_mean"], 0.5 + 0.005 + 0.0005)
    change = second["dice_change_vs_previous"]
    assert change["n"] == 2 and np.isclose(change["mean_difference"], 0.1)
