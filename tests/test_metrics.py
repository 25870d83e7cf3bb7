"""Tests for covidlib.metrics: hand-computed cases, empty-mask conventions, brute-force surfaces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist

from covidlib.errors import InvalidInputError
from covidlib.metrics import (
    THRESHOLD_GRID,
    best_threshold,
    INFNET_THRESHOLDS,
    dice,
    e_measure,
    hd95,
    infnet_dataset_metrics,
    infnet_metrics,
    iou,
    mae,
    rescale_min_max,
    s_measure,
    segmentation_metrics,
    sensitivity,
    specificity,
    summarise,
    surface_dice,
    threshold_curves,
)


def random_blob(shape: tuple[int, ...], seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=shape)
    return gaussian_filter(noise, 1.5) > 0.05


def brute_force_border(mask: np.ndarray) -> np.ndarray:
    """Coordinates of mask voxels with a face neighbour outside the mask or the array."""
    padded = np.pad(mask, 1)
    border = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            neighbour = np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
            border |= mask & ~neighbour
    return np.argwhere(border)


def brute_force_distances(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    pairwise = cdist(brute_force_border(pred) * spacing, brute_force_border(target) * spacing)
    return pairwise.min(axis=1), pairwise.min(axis=0)


def test_a_mask_agrees_perfectly_with_itself() -> None:
    mask = random_blob((24, 20), seed=0)
    assert dice(mask, mask) == iou(mask, mask) == surface_dice(mask, mask, 0.7) == 1.0
    assert hd95(mask, mask, (0.7, 0.7)) == 0.0
    assert sensitivity(mask, mask) == specificity(mask, mask) == 1.0


def test_overlap_metrics_by_hand() -> None:
    pred = np.array([[1, 1, 0, 0, 1]])
    target = np.array([[0, 1, 1, 0, 0]])  # TP 1, FP 2, FN 1, TN 1
    assert dice(pred, target) == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    assert iou(pred, target) == pytest.approx(1 / 4)
    assert sensitivity(pred, target) == pytest.approx(1 / 2)
    assert specificity(pred, target) == pytest.approx(1 / 3)


def test_empty_mask_conventions() -> None:
    empty, lesion = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    lesion[2:5, 3:6] = 1
    both = segmentation_metrics(empty, empty, (1.0, 1.0))
    assert both["dice"] == both["iou"] == both["nsd"] == both["specificity"] == 1.0
    assert both["hd95"] == 0.0 and math.isnan(both["sensitivity"])
    for pred, target in ((empty, lesion), (lesion, empty)):
        one = segmentation_metrics(pred, target, (1.0, 1.0))
        assert one["dice"] == one["iou"] == one["nsd"] == 0.0
        assert math.isnan(one["hd95"])
    assert sensitivity(empty, lesion) == 0.0
    assert math.isnan(specificity(lesion, np.ones((8, 8))))


@pytest.mark.parametrize("k", [1, 3])
def test_hd95_of_shifted_squares_is_the_shift_in_mm(k: int) -> None:
    square = np.zeros((30, 30), bool)
    square[8:18, 8:18] = True
    spacing = (2.0, 0.5)
    assert hd95(square, np.roll(square, k, axis=0), spacing) == pytest.approx(2.0 * k)
    assert hd95(square, np.roll(square, k, axis=1), spacing) == pytest.approx(0.5 * k)
    cube = np.zeros((12, 12, 12), bool)
    cube[3:8, 3:8, 3:8] = True
    assert hd95(np.roll(cube, k, axis=0), cube, (3.0, 0.8, 0.8)) == pytest.approx(3.0 * k)


@pytest.mark.parametrize("shape, spacing", [((26, 31), (0.8, 1.3)), ((9, 14, 12), (2.5, 0.7, 0.7))])
def test_surface_metrics_match_brute_force_point_distances(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    pred, target = random_blob(shape, seed=1), random_blob(shape, seed=2)
    forward, backward = brute_force_distances(pred, target, spacing)
    expected_hd95 = max(np.percentile(forward, 95), np.percentile(backward, 95))
    assert hd95(pred, target, spacing) == pytest.approx(expected_hd95)
    for tolerance in (0.0, 1.0, 3.0):
        expected_nsd = (np.sum(forward <= tolerance) + np.sum(backward <= tolerance)) / (forward.size + backward.size)
        assert surface_dice(pred, target, spacing, tolerance) == pytest.approx(expected_nsd)
    assert 0.0 < surface_dice(pred, target, spacing, 1.0) < surface_dice(pred, target, spacing, 3.0) < 1.0


def test_torch_masks_give_the_numpy_values() -> None:
    pred, target = random_blob((16, 16), 3), random_blob((16, 16), 4)
    expected = segmentation_metrics(pred, target, (1.0, 2.0))
    assert segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(target.astype(np.float32)), (1.0, 2.0)) == expected


def test_bad_input_raises() -> None:
    mask = np.zeros((4, 4), np.uint8)
    with pytest.raises(InvalidInputError, match="shape"):
        dice(mask, np.zeros((4, 5)))
    with pytest.raises(InvalidInputError, match="binary"):
        dice(np.full((4, 4), 0.5), mask)
    with pytest.raises(InvalidInputError, match="binary"):
        iou(mask, np.full((4, 4), 2))
    with pytest.raises(InvalidInputError, match="NaN"):
        hd95(np.full((4, 4), np.nan), mask)
    with pytest.raises(InvalidInputError, match="one value per mask axis"):
        hd95(mask, mask, (1.0, 1.0, 1.0))
    with pytest.raises(InvalidInputError, match="positive"):
        surface_dice(mask, mask, (1.0, 0.0))
    with pytest.raises(InvalidInputError, match="tolerance_mm"):
        surface_dice(mask, mask, 1.0, tolerance_mm=-1.0)


def test_summarise_skips_and_counts_undefined_values() -> None:
    summary = summarise([0.5, 0.7, float("nan"), 0.9])
    assert summary["mean"] == pytest.approx(0.7)
    assert summary["sd"] == pytest.approx(math.sqrt(((0.2) ** 2 + 0 + 0.2**2) / 2))
    assert (summary["n"], summary["n_undefined"]) == (3, 1)
    assert summarise([0.4]) == {"mean": 0.4, "sd": 0.0, "n": 1, "n_undefined": 0}


# --- Inf-Net's protocol ------------------------------------------------------------------------

# A 4x4 target with a 2x2 square in the middle: 4 of 16 pixels foreground, centroid (2.5, 2.5) in
# 1-based coordinates, which MATLAB's round (half away from zero) puts at (3, 3): quadrants of
# 3x3, 3x1, 1x3 and 1x1 pixels with weights 9/16, 3/16, 3/16, 1/16.
SQUARE = np.zeros((4, 4), dtype=np.uint8)
SQUARE[1:3, 1:3] = 1


def test_thresholds_are_infnets_256_levels_from_one_to_zero() -> None:
    assert INFNET_THRESHOLDS.shape == (256,)
    assert INFNET_THRESHOLDS[0] == 1.0 and INFNET_THRESHOLDS[-1] == 0.0
    np.testing.assert_allclose(INFNET_THRESHOLDS, np.arange(255, -1, -1) / 255, rtol=0, atol=1e-15)


def test_rescale_min_max_by_hand_and_for_a_constant_map() -> None:
    np.testing.assert_allclose(rescale_min_max(np.array([[0.2, 0.4], [0.6, 0.3]])), [[0.0, 0.5], [1.0, 0.25]])
    np.testing.assert_array_equal(rescale_min_max(np.full((3, 3), 0.7)), np.zeros((3, 3)))


def test_s_measure_of_a_constant_map_by_hand_uses_matlab_rounding() -> None:
    # Object part: foreground and background both score 2 * 0.5 / (0.25 + 1 + 0) = 0.8.
    # Region part: a constant map has no covariance, so the 3x3 quadrant (both classes) scores 0
    # and the three all-background quadrants score 1 (alpha = beta = 0): 3/16 + 3/16 + 1/16.
    # Rounding the centroid half to even (2, 2) instead would give four mixed quadrants and 0.4.
    assert s_measure(np.full((4, 4), 0.5), SQUARE) == pytest.approx(0.5 * 0.8 + 0.5 * 7 / 16, abs=1e-12)


def test_s_measure_of_a_soft_map_by_hand() -> None:
    target = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    prediction = np.array([[1.0, 0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # Foreground values 1, .5, .5: mean 2/3, sample sd sqrt(1/12); background 1 - 0 = 1 everywhere.
    object_fg = 2 * (2 / 3) / ((2 / 3) ** 2 + 1 + math.sqrt(1 / 12))
    s_object = (3 / 9) * object_fg + (6 / 9) * 1.0
    # Centroid (4/3, 4/3) rounds to (1, 1): quadrants 1x1 (map = target = 1: score 1), 1x2 and 2x1
    # (target [1, 0], map [.5, 0]: means .25, .5; variances .125, .5; covariance .25;
    # 4 * .25 * .5 * .25 / ((.0625 + .25) * .625) = 0.64) and 2x2 all zero (score 1).
    s_region = (1 / 9) * 1.0 + (2 / 9) * 0.64 + (2 / 9) * 0.64 + (4 / 9) * 1.0
    assert s_measure(prediction, target) == pytest.approx(0.5 * s_object + 0.5 * s_region, rel=1e-12)


def test_e_measure_by_hand() -> None:
    target = np.array([[1, 0], [0, 0]])
    prediction = np.array([[1, 1], [0, 0]])
    # Centred maps: prediction +-0.5, target 0.75 / -0.25. Alignment per pixel: 12/13, -0.8, 0.8, 0.8.
    expected = ((1 + 12 / 13) ** 2 / 4 + (1 - 0.8) ** 2 / 4 + 2 * (1 + 0.8) ** 2 / 4) / 4
    assert e_measure(prediction, target) == pytest.approx(expected, rel=1e-12)
    assert e_measure(SQUARE, SQUARE) == pytest.approx(1.0, abs=1e-12)
    assert e_measure(1 - SQUARE, SQUARE) == pytest.approx(0.0, abs=1e-12)


def test_empty_and_full_target_conventions_of_s_and_e_measure() -> None:
    prediction = np.array([[0.0, 0.3, 0.6], [0.9, 0.0, 0.0], [0.3, 0.6, 0.0]])  # mean 0.3
    binary = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 1]])  # mean 2/9
    empty, full = np.zeros((3, 3), dtype=np.uint8), np.ones((3, 3), dtype=np.uint8)
    assert s_measure(prediction, empty) == pytest.approx(0.7)
    assert s_measure(prediction, full) == pytest.approx(0.3)
    assert e_measure(binary, empty) == pytest.approx(7 / 9)
    assert e_measure(binary, full) == pytest.approx(2 / 9)
    # The vectorised E-measure curve follows the same conventions.
    for target in (empty, full):
        curve = threshold_curves(prediction, target)["e_measure"]
        np.testing.assert_allclose(curve, [e_measure(prediction > t, target) for t in INFNET_THRESHOLDS])


def test_mae_by_hand() -> None:
    assert mae(np.array([[0.25, 1.0], [0.5, 0.0]]), np.array([[0, 1], [1, 1]])) == pytest.approx((0.25 + 0 + 0.5 + 1) / 4)


@pytest.mark.parametrize("quantised", [True, False])
def test_threshold_curves_match_a_plain_loop_over_thresholds(quantised: bool) -> None:
    rng = np.random.default_rng(3)
    target = random_blob((24, 20), seed=4)
    prediction = np.clip(gaussian_filter(target.astype(float), 1.0) + rng.normal(0, 0.2, target.shape), 0, 1)
    if quantised:  # as a saved 8-bit map: ties, and values exactly on thresholds
        prediction = np.round(prediction * 255) / 255
    curves = threshold_curves(prediction, target)
    expected: dict[str, list[float]] = {"dice": [], "sensitivity": [], "specificity": [], "e_measure": []}
    for t in INFNET_THRESHOLDS:
        binary = prediction >= t
        found = np.count_nonzero(binary & target) > 0  # Inf-Net: no true positive -> all three 0
        expected["dice"].append(dice(binary, target) if found else 0.0)
        expected["sensitivity"].append(sensitivity(binary, target) if found else 0.0)
        expected["specificity"].append(specificity(binary, target) if found else 0.0)
        expected["e_measure"].append(e_measure(prediction > t, target))
    for key, values in expected.items():
        np.testing.assert_allclose(curves[key], values, rtol=1e-12, atol=1e-15, err_msg=key)


def test_a_perfect_map_by_hand() -> None:
    soft = np.where(SQUARE == 1, 0.9, 0.2)  # rescaled to exactly the target
    result = infnet_metrics(soft, SQUARE)
    # 255 thresholds in (0, 1] select the square; threshold 0 selects all 16 pixels:
    # Dice 2 * 4 / (4 + 16) = 0.4, sensitivity 1, specificity 0.
    assert result["mean_dice"] == pytest.approx((255 + 0.4) / 256)
    assert result["max_dice"] == 1.0
    assert result["mean_sensitivity"] == pytest.approx(1.0)
    assert result["mean_specificity"] == pytest.approx(255 / 256)
    # E-measure binarises with > t: at t = 1 nothing is selected (alignment 0, score 1/4 everywhere).
    assert result["mean_e_measure"] == pytest.approx((255 + 0.25) / 256)
    assert result["max_e_measure"] == pytest.approx(1.0)
    assert result["s_measure"] == pytest.approx(1.0)
    assert result["mae"] == 0.0


def test_an_inverted_map_by_hand() -> None:
    result = infnet_metrics(1.0 - SQUARE, SQUARE)
    assert result["mean_dice"] == pytest.approx(0.4 / 256)  # only threshold 0 finds a true positive
    assert result["max_dice"] == pytest.approx(0.4)
    assert result["mean_sensitivity"] == pytest.approx(1 / 256)
    assert result["mean_specificity"] == 0.0
    assert result["mean_e_measure"] == pytest.approx(0.25 / 256)  # alignment -1 except at t = 1
    # Object part 0; region part 9/16 * (-40/41) + 7/16 < 0 (the 3x3 quadrant anti-correlates,
    # the others hold one constant class each); the S-measure is clipped at 0.
    assert result["s_measure"] == 0.0
    assert result["mae"] == 1.0


def test_a_constant_map_becomes_zeros_by_hand() -> None:
    result = infnet_metrics(np.full((4, 4), 0.3), SQUARE)
    assert result["mean_dice"] == pytest.approx(0.4 / 256)
    # Object part: foreground 0, background 1 -> 12/16; region part 7/16 as for any constant map.
    assert result["s_measure"] == pytest.approx(0.5 * 12 / 16 + 0.5 * 7 / 16)
    assert result["mae"] == pytest.approx(4 / 16)


def test_dataset_metrics_average_curves_before_taking_the_max() -> None:
    perfect, inverted = SQUARE.astype(float), 1.0 - SQUARE
    result = infnet_dataset_metrics([perfect, inverted], [SQUARE, SQUARE])
    singles = [infnet_metrics(perfect, SQUARE), infnet_metrics(inverted, SQUARE)]
    for key in ("mean_dice", "mean_sensitivity", "mean_specificity", "mean_e_measure", "s_measure", "mae"):
        assert result[key] == pytest.approx(np.mean([single[key] for single in singles]))
    # The mean curve is 0.5 for thresholds in (0, 1] and 0.4 at 0; the per-image maxima average 0.7.
    assert result["max_dice"] == pytest.approx(0.5)
    assert result["n"] == 2


def test_infnet_metrics_take_torch_tensors() -> None:
    rng = np.random.default_rng(5)
    probability, target = rng.random((6, 7)), random_blob((6, 7), seed=6)
    assert infnet_metrics(torch.from_numpy(probability), torch.from_numpy(target)) == infnet_metrics(probability, target)


def test_infnet_bad_input_raises() -> None:
    with pytest.raises(InvalidInputError, match="NaN"):
        infnet_metrics(np.array([[0.1, np.nan], [0.2, 0.3]]), np.eye(2))
    with pytest.raises(InvalidInputError, match="2D"):
        infnet_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(InvalidInputError, match="differs"):
        infnet_metrics(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        s_measure(np.full((2, 2), 1.5), np.eye(2))
    with pytest.raises(InvalidInputError, match="binary"):
        e_measure(np.full((2, 2), 0.5), np.eye(2))
    with pytest.raises(InvalidInputError, match="targets"):
        infnet_dataset_metrics([np.eye(2)], [])


def test_best_threshold_by_hand_prefers_the_one_nearest_half_among_equals() -> None:
    # t = 0.20 and 0.25 both keep all three lesion pixels (Dice 1); from 0.30 the 0.3 pixel is lost
    probability = np.array([[0.3, 0.35, 0.6, 0.1]])
    target = np.array([[1, 1, 1, 0]])
    assert best_threshold([probability], [target]) == 0.25
    # a perfect map scores 1 at every threshold: 0.5 stays
    assert best_threshold([target.astype(float)], [target]) == 0.5


def test_best_threshold_maximises_the_mean_over_cases() -> None:
    # case A scores 1 up to t = 0.40, 0 above; case B scores 2/3 below 0.45, 1 on [0.45, 0.55), 0 above
    low, high = (np.array([[0.45]]), np.array([[1]])), (np.array([[0.55, 0.45]]), np.array([[1, 0]]))
    assert best_threshold([low[0], high[0]], [low[1], high[1]]) == 0.4
    assert best_threshold([high[0]], [high[1]]) == 0.5
    assert best_threshold([high[0]], [high[1]], grid=(0.3, 0.6)) == 0.3


def test_best_threshold_refuses_bad_input() -> None:
    probability, target = np.full((2, 2), 0.4), np.ones((2, 2), dtype=int)
    for probabilities, targets, grid, message in [
            ([probability], [], THRESHOLD_GRID, "1 probability maps but 0 targets"),
            ([], [], THRESHOLD_GRID, "no cases"),
            ([np.full((2, 2), np.nan)], [target], THRESHOLD_GRID, "NaN"),
            ([probability], [target], (0.5, 1.0), "thresholds must lie in")]:
        with pytest.raises(InvalidInputError, match=message):
            best_threshold(probabilities, targets, grid)
