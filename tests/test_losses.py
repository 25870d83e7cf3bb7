"""Tests for covidlib.losses: hand-computed values, soft/hard agreement, perfect predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidlib.errors import InvalidInputError
from covidlib.losses import (
    LOSSES,
    boundary_distance_map,
    ce_dice_loss,
    cross_entropy,
    get_loss,
    hausdorff_dt_loss,
    inverse_frequency_weights,
    soft_dice_loss,
    weighted_cross_entropy,
)


def logits_for_foreground_probability(probability: list[float]) -> torch.Tensor:
    """Two-class logits (1, 2, 1, N) whose softmax puts ``probability`` on class 1."""
    p = torch.tensor(probability, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))]).view(1, 2, 1, -1)


def one_hot(target: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(target, classes).movedim(-1, 1).double()


def test_cross_entropy_by_hand() -> None:
    logits = logits_for_foreground_probability([0.75, 0.5])
    target = torch.tensor([[[1, 0]]])
    expected = (-math.log(0.75) - math.log(0.5)) / 2
    assert cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-12)
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 5, 4), torch.randint(0, 3, (2, 5, 4))
    torch.testing.assert_close(cross_entropy(logits, target), F.cross_entropy(logits, target))


def test_weighted_cross_entropy_uses_inverse_frequency() -> None:
    target = torch.tensor([[[0, 0, 0, 1]]])  # 3 background pixels, 1 foreground
    weights = inverse_frequency_weights(target, 2)
    torch.testing.assert_close(weights, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))
    logits = logits_for_foreground_probability([0.2, 0.4, 0.5, 0.9])
    expected = (-(2 / 3) * (math.log(0.8) + math.log(0.6) + math.log(0.5)) - 2 * math.log(0.9)) / 4
    assert weighted_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # balanced classes get weight 1, and a missing class a finite weight
    torch.testing.assert_close(inverse_frequency_weights(torch.tensor([0, 1, 0, 1]), 2), torch.ones(2))
    assert torch.isfinite(inverse_frequency_weights(torch.zeros(1, 4, dtype=torch.long), 3)).all()


def test_soft_dice_by_hand() -> None:
    logits = logits_for_foreground_probability([0.75, 0.5])
    target = torch.tensor([[[1, 0]]])
    dice = 2 * 0.75 / ((0.75**2 + 0.5**2) + 1.0)
    assert soft_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 - dice, rel=1e-12)
    background_dice = 2 * 0.5 / ((0.25**2 + 0.5**2) + 1.0)
    both = 1 - (dice + background_dice) / 2
    assert soft_dice_loss(logits, target, include_background=True, smooth=0.0).item() == pytest.approx(both, rel=1e-12)


def test_ce_dice_by_hand() -> None:
    # two pixels, foreground probabilities 0.75 and 0.5, target 1 and 0
    logits = logits_for_foreground_probability([0.75, 0.5])
    target = torch.tensor([[[1, 0]]])
    ce = (-math.log(0.75) - math.log(0.5)) / 2  # 0.490415
    smooth = 1e-5  # soft_dice_loss's default
    # foreground Dice: overlap 0.75 * 1 + 0.5 * 0 = 0.75, sum p^2 = 0.5625 + 0.25, sum g^2 = 1
    dice_loss = 1 - (2 * 0.75 + smooth) / (0.8125 + 1 + smooth)  # 1 - 1.5 / 1.8125 = 0.172414
    assert ce_dice_loss(logits, target).item() == pytest.approx(ce + dice_loss, rel=1e-12)  # 0.662829
    assert ce_dice_loss(logits, target, dice_weight=0.25).item() == pytest.approx(ce + 0.25 * dice_loss, rel=1e-12)
    assert ce_dice_loss(logits, target, dice_weight=0.0).item() == pytest.approx(ce, rel=1e-12)


def test_hausdorff_loss_by_hand() -> None:
    probability = [0.2, 0.9, 0.6, 0.7, 0.1]  # thresholded: 0 1 1 1 0
    target = torch.tensor([[[0, 1, 1, 0, 0]]])
    distance_target = np.array([1, 1, 1, 1, 2.0])  # to the boundary, inside and outside
    distance_prediction = np.array([1, 1, 2, 1, 1.0])
    error = (np.array(probability) - np.array([0, 1, 1, 0, 0])) ** 2
    expected = np.mean(error * (distance_target**2 + distance_prediction**2))
    loss = hausdorff_dt_loss(logits_for_foreground_probability(probability), target)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    np.testing.assert_array_equal(boundary_distance_map(np.array([[0, 1, 1, 0, 0]])), distance_target[None])


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_hausdorff_loss_by_hand_for_other_exponents(alpha: float) -> None:
    probability = [0.2, 0.9, 0.6, 0.7, 0.1]  # thresholded: 0 1 1 1 0
    target = torch.tensor([[[0, 1, 1, 0, 0]]])
    distance_target = np.array([1, 1, 1, 1, 2.0])
    distance_prediction = np.array([1, 1, 2, 1, 1.0])
    error = (np.array(probability) - np.array([0, 1, 1, 0, 0])) ** 2  # 0.04 0.01 0.16 0.49 0.01
    # only the pixels at distance 2 feel alpha: pixel 2 (prediction) and pixel 4 (target)
    expected = (0.04 * 2 + 0.01 * 2 + 0.16 * (1 + 2**alpha) + 0.49 * 2 + 0.01 * (2**alpha + 1)) / 5
    assert expected == pytest.approx(np.mean(error * (distance_target**alpha + distance_prediction**alpha)))
    loss = hausdorff_dt_loss(logits_for_foreground_probability(probability), target, alpha=alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # the distance maps are float32


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_hausdorff_loss_refuses_a_non_positive_exponent(alpha: float) -> None:
    with pytest.raises(InvalidInputError, match="alpha must be positive"):
        hausdorff_dt_loss(logits_for_foreground_probability([0.2, 0.9]), torch.tensor([[[0, 1]]]), alpha=alpha)


def test_boundary_distance_map_of_mask_without_boundary_is_zero() -> None:
    assert not boundary_distance_map(np.zeros((4, 4), bool)).any()
    assert not boundary_distance_map(np.ones((4, 4), bool)).any()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_hot_and_index_targets_agree(name: str) -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 6, 5, dtype=torch.float64), torch.randint(0, 3, (2, 6, 5))
    loss = get_loss(name)
    torch.testing.assert_close(loss(logits, target), loss(logits, one_hot(target, 3)))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_perfect_prediction_gives_minimal_loss(name: str) -> None:
    torch.manual_seed(2)
    target = torch.randint(0, 2, (2, 8, 8))
    perfect = 30.0 * (2 * one_hot(target, 2) - 1)
    loss = get_loss(name)
    assert loss(perfect, target).item() == pytest.approx(0.0, abs=1e-9)
    assert loss(perfect + torch.randn_like(perfect) * 30, target).item() > 1e-3


def test_cross_entropy_is_linear_in_mixup_targets() -> None:
    torch.manual_seed(3)
    logits = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    first, second = torch.randint(0, 2, (2, 4, 4)), torch.randint(0, 2, (2, 4, 4))
    lam = 0.3
    mixed = lam * one_hot(first, 2) + (1 - lam) * one_hot(second, 2)
    weights = torch.tensor([0.4, 2.5])
    for kwargs in ({}, {"class_weights": weights}):
        expected = lam * cross_entropy(logits, first, **kwargs) + (1 - lam) * cross_entropy(logits, second, **kwargs)
        torch.testing.assert_close(cross_entropy(logits, mixed, **kwargs), expected)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("empty_target", [False, True])
def test_gradients_are_finite_for_soft_targets(name: str, empty_target: bool) -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.zeros(2, 8, 8, dtype=torch.long) if empty_target else torch.randint(0, 2, (2, 8, 8))
    soft = 0.7 * one_hot(target, 2).float() + 0.3 * one_hot(torch.randint(0, 2, (2, 8, 8)), 2).float()
    loss = get_loss(name)(logits, soft)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_get_loss_binds_keyword_arguments() -> None:
    generator = torch.Generator().manual_seed(5)
    logits, target = torch.randn(1, 2, 4, 4, generator=generator), torch.randint(0, 2, (1, 4, 4), generator=generator)
    weights = torch.tensor([1.0, 5.0])
    torch.testing.assert_close(get_loss("wce", class_weights=weights)(logits, target),
                               cross_entropy(logits, target, class_weights=weights))
    with pytest.raises(InvalidInputError, match="ce\\+dice"):
        get_loss("focal")


def test_bad_targets_raise() -> None:
    logits = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    with pytest.raises(InvalidInputError, match="index target must have shape"):
        cross_entropy(logits, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="probability target"):
        soft_dice_loss(logits, torch.zeros(2, 3, 4, 4))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        cross_entropy(logits, torch.full((2, 4, 4), 2))
    with pytest.raises(InvalidInputError, match="class_weights"):
        cross_entropy(logits, torch.zeros(2, 4, 4, dtype=torch.long), class_weights=torch.ones(3))


def test_bool_index_target_and_single_channel_logits() -> None:
    generator = torch.Generator().manual_seed(7)
    logits, target = torch.randn(1, 2, 4, 4, generator=generator), torch.rand(1, 4, 4, generator=generator) > 0.5
    torch.testing.assert_close(cross_entropy(logits, target), cross_entropy(logits, target.long()))
    with pytest.raises(InvalidInputError, match="at least 2 class channels"):
        soft_dice_loss(torch.randn(1, 1, 4, 4, generator=generator), torch.zeros(1, 4, 4, dtype=torch.long))
