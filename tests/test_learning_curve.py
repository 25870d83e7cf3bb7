"""benchmarks/learning_curve.py: nested training subsets, equal optimizer steps, and the summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidlib.errors import InvalidInputError
from covidlib.recipe import Recipe


@pytest.fixture(scope="module")
def curve(load_benchmark):
    return load_benchmark("learning_curve")


def test_subsets_are_nested_seeded_and_drawn_from_the_training_slices(curve):
    train = [f"train/{i}" for i in range(32)]
    subsets = {n: curve.training_subset(train, n, seed=0, fold=1) for n in (8, 16, 24, 32)}
    assert all(len(subsets[n]) == n and set(subsets[n]) <= set(train) for n in subsets)
    assert set(subsets[8]) < set(subsets[16]) < set(subsets[24]) < set(subsets[32]) == set(train)
    assert subsets[8] == curve.training_subset(list(reversed(train)), 8, seed=0, fold=1)
    assert subsets[8] != curve.training_subset(train, 8, seed=0, fold=2)
    with pytest.raises(InvalidInputError, match="n must lie"):
        curve.training_subset(train, 33, seed=0, fold=0)


@pytest.mark.parametrize("n", [8, 16, 24])
def test_a_smaller_set_takes_as_many_optimizer_steps(curve, n):
    recipe = Recipe(epochs=80, step_size=25, patience=30)
    scaled = curve.scaled_recipe(recipe, n, 32)
    steps = lambda r, slices: r.epochs * math.ceil(slices / r.batch_size)  # noqa: E731
    assert abs(steps(scaled, n) - steps(recipe, 32)) <= math.ceil(n / recipe.batch_size)  # within an epoch
    assert (scaled.epochs, scaled.step_size, scaled.patience) == {8: (320, 100, 120), 16: (160, 50, 60),
                                                                  24: (107, 33, 40)}[n]
    assert (scaled.image_size, scaled.lr, scaled.loss) == (recipe.image_size, recipe.lr, recipe.loss)


def test_summary_means_and_paired_differences_to_all_slices(curve):
    # unit (seed 0, fold f) of size n scores 0.5 + n / 100 + f / 1000 on its test slices
    def unit(n, fold):
        value = 0.5 + n / 100 + fold / 1000
        return {"seed": 0, "fold": fold, "n": n, "scores": {"tta_dice": value, "tta_infnet_mean_dice": value - 0.1}}

    summary = curve.summarise([unit(n, f) for n in (8, 32) for f in range(3)])
    small, full = summary["rows"]
    assert (small["n"], full["n"], summary["all_slices"]) == (8, 32, 32)
    assert np.isclose(small["tta_dice_mean"], 0.58 + 0.001) and np.isclose(full["tta_infnet_mean_dice_mean"], 0.721)
    assert np.isclose(small["tta_dice_sd_over_units"], 0.001)
    change = small["tta_dice_change_vs_all"]
    assert change["n"] == 3 and np.isclose(change["mean_difference"], -0.24)
    assert "tta_dice_change_vs_all" not in full


def test_per_doubling_is_the_mean_slope_on_log2_n(curve):
    # unit f gains 0.02 * (f + 1) Dice per doubling from an offset of its own: slopes 0.02, 0.04, 0.06
    def unit(n, fold):
        value = 0.4 + fold / 100 + 0.02 * (fold + 1) * math.log2(n)
        return {"seed": 0, "fold": fold, "n": n, "scores": {"tta_dice": value, "tta_infnet_mean_dice": value}}

    units = [unit(n, f) for n in (8, 16, 32) for f in range(3)]
    doubling = curve.summarise([*units, unit(8, 3)])["per_doubling"]  # a unit missing from the other sizes takes no part
    assert np.allclose(doubling["slopes"], [0.02, 0.04, 0.06]) and doubling["units"] == [[0, 0], [0, 1], [0, 2]]
    assert np.isclose(doubling["mean_difference"], 0.04) and doubling["low"] <= 0.04 <= doubling["high"]
    assert 0.02 - 1e-12 <= doubling["low"] and doubling["high"] <= 0.06 + 1e-12
    assert curve.summarise([u for u in units if u["n"] == 32])["per_doubling"] is None


def test_an_all_slices_unit_is_the_nested_cv_result_averaged_over_its_test_slices(curve):
    result = {"seed": 1, "fold": 3, "train": [f"t{i}" for i in range(32)], "best_epoch": 60, "epochs_run": 80,
              "wall_seconds": 50.0, "per_case": {"a": {"tta_dice": 0.6, "tta_infnet_mean_dice": 0.5, "dice": 0.0},
                                                 "b": {"tta_dice": 0.8, "tta_infnet_mean_dice": 0.7, "dice": 0.0}}}
    unit = curve.all_slices_unit(result)
    assert (unit["seed"], unit["fold"], unit["n"], unit["best_epoch"]) == (1, 3, 32, 60)
    assert unit["scores"] == pytest.approx({"tta_dice": 0.7, "tta_infnet_mean_dice": 0.6})
