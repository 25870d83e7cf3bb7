"""benchmarks/semi_recipe.py: each arm's mean over (seed, fold) units and its paired differences,
against hand-set per-slice scores."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def semi_recipe(load_benchmark):
    return load_benchmark("semi_recipe")


def _unit(seed: int, fold: int, offsets: dict[str, float]) -> dict:
    """Two test slices scoring 0.5 and 0.7 (Inf-Net's mean Dice 0.4 and 0.6), each arm shifted by its offset."""
    scores = {arm: {"tta_dice": 0.6 + shift, "tta_infnet_mean_dice": 0.5 + shift} for arm, shift in offsets.items()}
    return {"seed": seed, "fold": fold, "scores": scores, "threshold": 0.95,
            "pseudo": {"accepted": 10, "patches": 40}, "pseudo_slices": {"foreground_share": 0.05},
            "best_epoch": {arm: 3 for arm in offsets if arm != "supervised"}, "seconds": {"pseudo_labelling": 2.0},
            "a_prime_val_dice": 0.7}


def test_rows_hold_unit_means_and_paired_differences_to_control_and_a_prime(semi_recipe):
    arms = ["supervised", *semi_recipe.ARMS]
    first = _unit(0, 0, dict(zip(arms, [0.0, 0.01, 0.03, -0.05, 0.0, 0.02, 0.03], strict=True)))
    second = _unit(0, 1, dict(zip(arms, [0.1, 0.09, 0.13, 0.05, 0.1, 0.1, 0.08], strict=True)))
    summary = semi_recipe.summarise([first, second])
    rows = {row["arm"]: row for row in summary["rows"]}
    assert list(rows) == arms
    # unit 0 mean of (0.5, 0.7) is 0.6, unit 1 is 0.7 for A'
    np.testing.assert_allclose(rows["supervised"]["tta_dice_by_unit"], [0.6, 0.7])
    np.testing.assert_allclose(rows["pseudo_labels"]["tta_dice_mean"], np.mean([0.63, 0.73]))
    np.testing.assert_allclose(rows["supervised"]["tta_infnet_mean_dice_mean"], 0.55)
    # pseudo_labels - control: +0.02 and +0.04; pseudo_slices - control: -0.06, -0.04
    change = rows["pseudo_labels"]["tta_dice_change_vs_control"]
    assert change["against"] == "control"
    np.testing.assert_allclose(change["mean_difference"], 0.03)
    np.testing.assert_allclose(rows["pseudo_slices"]["tta_dice_change_vs_control"]["mean_difference"], -0.05)
    assert rows["mean_teacher"]["tta_dice_change_vs_control"]["against"] == "control_ema"
    np.testing.assert_allclose(rows["mean_teacher"]["tta_dice_change_vs_supervised"]["mean_difference"], 0.01)
    # consistency_slices - control_ema: +0.03 and -0.02
    assert rows["consistency_slices"]["tta_dice_change_vs_control"]["against"] == "control_ema"
    np.testing.assert_allclose(rows["consistency_slices"]["tta_dice_change_vs_control"]["mean_difference"], 0.005)
    assert "tta_dice_change_vs_control" not in rows["control"] and "tta_dice_change_vs_supervised" in rows["control"]
    assert "tta_dice_change_vs_supervised" not in rows["supervised"]
    assert summary["thresholds"] == [0.95, 0.95] and summary["seconds"] == {"pseudo_labelling": 4.0}


def test_one_unit_has_means_but_no_interval(semi_recipe):
    summary = semi_recipe.summarise([_unit(0, 0, {arm: 0.0 for arm in ["supervised", *semi_recipe.ARMS]})])
    assert all(not any(key.startswith("tta_dice_change") for key in row) for row in summary["rows"])
    assert all(row["tta_dice_sd_over_units"] == 0.0 for row in summary["rows"])


def test_every_semi_supervised_arm_has_a_control_that_sees_no_unlabelled_data(semi_recipe):
    for arm, control in semi_recipe.CONTROLS.items():
        assert semi_recipe.ARMS[arm][1] is not None and semi_recipe.ARMS[control][1] is None
