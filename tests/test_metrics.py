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
    dice,
    hd95,
    iou,
    segmentation_metrics,
    sensitivity,
    specificity,
    summarise,
    surface_dice,
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
