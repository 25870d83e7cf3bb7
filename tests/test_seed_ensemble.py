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
