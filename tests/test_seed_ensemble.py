"""benchmarks/seed_ensemble.py: its units and rows from hand-made nested-CV results (the real-data path
is run in tests/test_nested_cv_benchmarks.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def seed_ensemble(load_benchmark):
    return load_benchmark("seed_ensemble")


def _result(seed: int, fold: int, dice: dict[str, float]) -> dict:
    return {"seed": seed, "fold": fold, "test": list(dice),
            "per_case": {case: {"tta_dice": value, "tta_infnet_mean_dice": value / 2} for case, value in dice.items()}}


def test_units_pair_the_ensemble_with_its_members_on_the_first_seeds_folds(seed_ensemble):
    # seed 0 tests a, b in fold 0 and c, d in fold 1; seed 1 draws other folds
    results = {0: [_result(0, 0, {"a": 0.6, "b": 0.8}), _result(0, 1, {"c": 0.5, "d": 0.7})],
               1: [_result(1, 0, {"a": 0.8, "c": 0.7}), _result(1, 1, {"b": 0.6, "d": 0.5})]}
    ensemble = {case: {"tta_dice": value, "tta_infnet_mean_dice": 0.3} for case, value in
                {"a": 0.75, "b": 0.75, "c": 0.7, "d": 0.7}.items()}
    numbers = seed_ensemble.summarise(results, {(0, 1): ensemble})
    first, second = numbers["units"]
    assert (first["members"], first["fold"], second["fold"]) == ([0, 1], 0, 1)
    # fold 0 of seed 0 (a, b): members (0.6 + 0.8 + 0.8 + 0.6) / 4 = 0.7, ensemble (0.75 + 0.75) / 2
    assert first["members_tta_dice"] == pytest.approx(0.7) and first["ensemble_tta_dice"] == pytest.approx(0.75)
    # fold 1 (c, d): members (0.5 + 0.7 + 0.7 + 0.5) / 4 = 0.6, ensemble 0.7
    assert second["members_tta_dice"] == pytest.approx(0.6) and second["ensemble_tta_dice"] == pytest.approx(0.7)
    alone, averaged = numbers["rows"]
    assert alone["tta_dice_mean"] == pytest.approx(0.65) and alone["units"] == 4  # (seed, fold) means 0.7 0.6 0.75 0.55
    assert alone["tta_dice_by_unit"] == pytest.approx([0.7, 0.6, 0.75, 0.55])
    assert averaged["tta_dice_mean"] == pytest.approx(0.725) and averaged["units"] == 2
    change = averaged["tta_dice_change_vs_control"]
    # two units, differences 0.05 and 0.1: every resample lies between them
    assert change["mean_difference"] == pytest.approx(0.075)
    assert (change["low"], change["high"]) == pytest.approx((0.05, 0.1))
    assert numbers["per_case"]["0-1"]["a"] == {"tta_dice": 0.75, "tta_infnet_mean_dice": 0.3}
    assert "slices" not in numbers  # no infected shares given


def test_each_slice_keeps_its_infected_share_beside_its_mean_dice_by_network_and_by_ensemble(seed_ensemble):
    results = {0: [_result(0, 0, {"a": 0.6, "b": 0.8})], 1: [_result(1, 0, {"a": 0.8, "b": 0.4})],
               2: [_result(2, 0, {"a": 0.7, "b": 0.9})]}
    ensembles = {(0, 1): {"a": {"tta_dice": 0.9, "tta_infnet_mean_dice": 0.3}, "b": {"tta_dice": 0.5, "tta_infnet_mean_dice": 0.3}},
                 (0, 2): {"a": {"tta_dice": 0.7, "tta_infnet_mean_dice": 0.3}, "b": {"tta_dice": 0.9, "tta_infnet_mean_dice": 0.3}}}
    slices = seed_ensemble.summarise(results, ensembles, infected_share={"b": 0.2, "a": 0.01})["slices"]
    assert list(slices) == ["a", "b"]
    # a: networks (0.6 + 0.8 + 0.7) / 3, ensembles (0.9 + 0.7) / 2; b: (0.8 + 0.4 + 0.9) / 3, (0.5 + 0.9) / 2
    assert slices["a"] == pytest.approx({"infected_share": 0.01, "network_tta_dice": 0.7, "ensemble_tta_dice": 0.8})
    assert slices["b"] == pytest.approx({"infected_share": 0.2, "network_tta_dice": 0.7, "ensemble_tta_dice": 0.7})


def test_the_budget_control_pairs_with_the_networks_alone_and_with_the_ensembles_on_its_folds(seed_ensemble):
    results = {0: [_result(0, 0, {"a": 0.6, "b": 0.8}), _result(0, 1, {"c": 0.5, "d": 0.7})],
               1: [_result(1, 0, {"a": 0.8, "c": 0.7}), _result(1, 1, {"b": 0.6, "d": 0.5})]}
    # seed 0's network trained twice as long: 0.8 on fold 0 (a, b), 0.5 on fold 1 (c, d)
    controls = {0: [_result(0, 0, {"a": 0.7, "b": 0.9}), _result(0, 1, {"c": 0.4, "d": 0.6})]}
    ensemble = {case: {"tta_dice": value, "tta_infnet_mean_dice": 0.3} for case, value in
                {"a": 0.75, "b": 0.75, "c": 0.7, "d": 0.7}.items()}
    alone, budget, averaged = seed_ensemble.summarise(results, {(0, 1): ensemble}, controls)["rows"]
    assert [row["arm"] for row in (alone, budget, averaged)] == ["network", "budget", "ensemble"]
    assert budget["tta_dice_by_unit"] == pytest.approx([0.8, 0.5]) and budget["units"] == 2
    assert budget["tta_infnet_mean_dice_mean"] == pytest.approx(0.325)
    # against seed 0's network at the defaults on the same folds (0.7, 0.6): +0.1 and -0.1
    change = budget["tta_dice_change_vs_control"]
    assert change["mean_difference"] == pytest.approx(0.0) and (change["low"], change["high"]) == pytest.approx((-0.1, 0.1))
    # the ensemble on the control's folds: 0.75 on (a, b), 0.7 on (c, d); differences -0.05 and +0.2
    change = averaged["tta_dice_change_vs_budget"]
    assert change["mean_difference"] == pytest.approx(0.075) and (change["low"], change["high"]) == pytest.approx((-0.05, 0.2))
    assert change["against"] == "one network trained as long"


def test_without_controls_there_is_no_budget_row(seed_ensemble):
    results = {0: [_result(0, 0, {"a": 0.6, "b": 0.8})], 1: [_result(1, 0, {"a": 0.8, "b": 0.7})]}
    ensemble = {case: {"tta_dice": 0.7, "tta_infnet_mean_dice": 0.3} for case in "ab"}
    rows = seed_ensemble.summarise(results, {(0, 1): ensemble})["rows"]
    assert [row["arm"] for row in rows] == ["network", "ensemble"] and "tta_dice_change_vs_budget" not in rows[-1]
    assert rows[-1]["tta_dice_change_vs_control"] is None  # one unit: no interval


def test_the_budget_control_is_the_ablations_row_so_both_share_its_networks(seed_ensemble, load_benchmark):
    import dataclasses

    from covidlib.crossval import run_key
    from covidlib.recipe import Recipe

    ablation = load_benchmark("ablation")
    recipes = ablation.build_recipes(ablation.REPORT, quick=False)
    row = recipes[ablation.row_index("+ 1200 epochs (× 0.8 every 300): two networks' budget")]
    assert recipes[ablation.row_index("+ 160 px input")] == seed_ensemble.RECIPE == Recipe()
    budget = dataclasses.replace(seed_ensemble.RECIPE, **seed_ensemble.budget_changes(seed_ensemble.RECIPE, 2))
    assert (budget.epochs, budget.step_size, budget.patience) == (1200, 300, 1200)
    assert run_key(ablation.training_recipe(row), "covid-semiseg", 5) == run_key(budget, "covid-semiseg", 5)


def test_checkpoint_rows_pair_each_networks_other_epochs_with_its_chosen_one(seed_ensemble):
    results = {0: [_result(0, 0, {"a": 0.6, "b": 0.8}), _result(0, 1, {"c": 0.5, "d": 0.7})],
               1: [_result(1, 0, {"a": 0.8, "c": 0.7}), _result(1, 1, {"b": 0.6, "d": 0.5})]}
    ensemble = {case: {"tta_dice": 0.7, "tta_infnet_mean_dice": 0.3} for case in "abcd"}

    def scores(dice: dict[str, float]) -> dict:
        return {case: {"tta_dice": value, "tta_infnet_mean_dice": 0.2} for case, value in dice.items()}

    # the last epochs: seed 0 scores 0.6 on fold 0 (a, b) and 0.8 on fold 1 (c, d); seed 1 0.7 and 0.6
    last = {0: scores({"a": 0.5, "b": 0.7, "c": 0.9, "d": 0.7}), 1: scores({"a": 0.8, "c": 0.6, "b": 0.7, "d": 0.5})}
    snapshots = {seed: scores({case: 0.75 for case in "abcd"}) for seed in (0, 1)}
    rows = seed_ensemble.summarise(results, {(0, 1): ensemble}, checkpoints={"last": last, "snapshots": snapshots})["rows"]
    assert [row["arm"] for row in rows] == ["network", "last", "snapshots", "ensemble"]
    # the chosen epochs by (seed, fold): 0.7, 0.6, 0.75, 0.55; the last: 0.6, 0.8, 0.7, 0.6
    assert rows[1]["tta_dice_by_unit"] == pytest.approx([0.6, 0.8, 0.7, 0.6])
    assert rows[1]["tta_infnet_mean_dice_mean"] == pytest.approx(0.2)
    change = rows[1]["tta_dice_change_vs_control"]
    # differences -0.1, +0.2, -0.05, +0.05
    assert change["mean_difference"] == pytest.approx(0.025) and change["n"] == 4
    assert -0.1 <= change["low"] < 0.025 < change["high"] <= 0.2  # a mean of resampled differences
    assert change["against"] == "its chosen epoch alone"
    assert rows[2]["tta_dice_change_vs_control"]["mean_difference"] == pytest.approx(0.75 - 0.65)
