"""benchmarks/map_sharpness.py: sharpening against hand-computed Inf-Net scores, its rows from hand-made
units, its options (the real-data path is run in tests/test_nested_cv_benchmarks.py)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from covidlib.metrics import dice, infnet_metrics


@pytest.fixture(scope="module")
def map_sharpness(load_benchmark):
    return load_benchmark("map_sharpness")


def test_sharpening_keeps_each_pixel_on_its_side_of_one_half(map_sharpness):
    p = np.random.default_rng(0).uniform(size=(3, 16, 16))
    p[0, 0, :4] = [0.0, 1.0, 0.5, 0.5 + 1e-7]
    assert map_sharpness.sharpen(p, 1.0) == pytest.approx(p, abs=1e-12)  # T = 1: the map itself
    for temperature in (0.5, 0.1, 0.01):
        sharper = map_sharpness.sharpen(p, temperature)
        assert np.array_equal(sharper > 0.5, p > 0.5) and np.isfinite(sharper).all()
        assert sharper[0, 0, :3].tolist() == [0.0, 1.0, 0.5]
        assert (np.abs(sharper - 0.5) >= np.abs(p - 0.5) - 1e-12).all()  # further from 0.5, never nearer
    assert np.array_equal(map_sharpness.sharpen(p, 0), (p > 0.5).astype(float))


def test_inf_net_mean_dice_of_a_map_and_of_its_mask_by_hand(map_sharpness):
    # 4 x 4, infection the top-left 2 x 2; the map is right at 0.5 on 3 of its 4 pixels and wrong on one other
    target = np.zeros((4, 4), dtype=np.uint8)
    target[:2, :2] = 1
    p = np.full((4, 4), 0.1)
    p[:2, :2] = [[0.9, 0.8], [0.6, 0.3]]
    p[3, 3] = 0.7
    assert dice(map_sharpness.sharpen(p, 0.5) > 0.5, target) == dice(p > 0.5, target) == pytest.approx(0.75)
    # as predicted, rescaled by min 0.1 and max 0.9: infection 1, 0.875, 0.625, 0.25, the wrong pixel 0.75,
    # the rest 0; Dice at the thresholds k / 255 at or below 0 (k = 0), 0.25, 0.625, 0.75, 0.875, 1 (63, 96,
    # 32, 32, 32 of them): 8/20, 8/9, 6/8, 4/7, 4/6, 2/5
    as_predicted = (0.4 + 63 * 8 / 9 + 96 * 0.75 + 32 * 4 / 7 + 32 * 4 / 6 + 32 * 0.4) / 256
    assert infnet_metrics(map_sharpness.sharpen(p, 1.0), target)["mean_dice"] == pytest.approx(as_predicted)
    # binarised: Dice 0.75 at the 255 thresholds above 0, and every pixel called infected at 0: 8/20
    mask = infnet_metrics(map_sharpness.sharpen(p, 0), target)["mean_dice"]
    assert mask == pytest.approx((255 * 0.75 + 0.4) / 256)
    assert as_predicted < infnet_metrics(map_sharpness.sharpen(p, 0.1), target)["mean_dice"] <= mask


def _unit(seed: int, fold: int, dice_at_half: float, by_temperature: dict[str, float]) -> dict:
    return {"seed": seed, "fold": fold, "scores": {t: {"tta_dice": dice_at_half, "tta_infnet_mean_dice": value}
                                                   for t, value in by_temperature.items()}}


def test_rows_pair_each_temperature_with_the_map_as_predicted(map_sharpness):
    units = [_unit(0, 0, 0.8, {"1.0": 0.70, "0.0": 0.79}), _unit(0, 1, 0.6, {"1.0": 0.50, "0.0": 0.60})]
    predicted, binarised = map_sharpness.summarise(units, [1.0, 0.0])["rows"]
    assert (predicted["label"], binarised["label"]) == ("as predicted (T = 1)", "binarised at 0.5 (T = 0)")
    assert predicted["tta_dice_mean"] == binarised["tta_dice_mean"] == pytest.approx(0.7)
    assert predicted["tta_infnet_mean_dice_mean"] == pytest.approx(0.6)
    assert "tta_infnet_mean_dice_change_vs_control" not in predicted
    change = binarised["tta_infnet_mean_dice_change_vs_control"]
    # two units, differences 0.09 and 0.10: every resample lies between them
    assert change["mean_difference"] == pytest.approx(0.095) and change["n"] == 2
    assert (change["low"], change["high"]) == pytest.approx((0.09, 0.10))
    assert change["against"] == "as predicted (T = 1)"
    assert map_sharpness.label(0.25) == "log-odds / 0.25"


def test_temperatures_must_include_the_map_as_predicted(map_sharpness):
    assert map_sharpness.temperatures("1,0.5,0") == [1.0, 0.5, 0.0]
    for wrong in ("0.5,0", "1,-0.5", "1,1", "1,nan", "1,sharp"):
        with pytest.raises(argparse.ArgumentTypeError):
            map_sharpness.temperatures(wrong)
