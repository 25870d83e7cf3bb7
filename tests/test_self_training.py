"""Whole-slice pseudo-labels: a pointwise network's probabilities by hand, aligned augmentation,
soft targets a trainer accepts, and clear errors."""

import numpy as np
import pytest
import torch
from torch import nn

from covidlib.augment import RandomDihedral
from covidlib.errors import InvalidInputError
from covidlib.mean_teacher import MeanTeacher, MeanTeacherConfig
from covidlib.self_training import PseudoSliceDataset, pseudo_label_slices
from covidlib.train import TrainConfig


def _pointwise_network() -> nn.Module:
    """Logits (0, x) at each pixel: the foreground probability is sigmoid(x)."""
    network = nn.Conv2d(1, 2, kernel_size=1)
    with torch.no_grad():
        network.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
        network.bias.zero_()
    return network


def _slices(n: int = 3, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 2, (n, size, size)).astype(np.float32)


@pytest.mark.parametrize("tta", [False, True])
def test_probabilities_of_a_pointwise_network_are_the_sigmoid_of_each_pixel(tta):
    images = _slices()
    expected = 1 / (1 + np.exp(-images.astype(np.float64)))
    # a pointwise network commutes with every turn and mirror, so TTA changes nothing
    probabilities = pseudo_label_slices(_pointwise_network(), images, 16, "cpu", tta=tta)
    assert probabilities.shape == images.shape and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_items_are_soft_targets_summing_to_one_and_hard_targets_are_thresholded():
    images = _slices()
    probabilities = 1 / (1 + np.exp(-images))
    item = PseudoSliceDataset(images, probabilities)[1]
    assert item["image"].shape == (1, 16, 16) and item["mask"].shape == (2, 16, 16)
    np.testing.assert_array_equal(item["image"][0].numpy(), images[1])
    np.testing.assert_allclose(item["mask"][1].numpy(), probabilities[1], atol=1e-6)
    np.testing.assert_allclose(item["mask"].sum(0).numpy(), 1.0, atol=1e-6)
    hard = PseudoSliceDataset(images, probabilities, hard=True)[1]["mask"][1].numpy()
    np.testing.assert_array_equal(hard, (probabilities[1] > 0.5).astype(np.float32))


def test_augmentation_moves_image_and_target_together_and_repeats_with_the_seed():
    images = _slices(n=1)
    probabilities = 1 / (1 + np.exp(-images))
    dataset = PseudoSliceDataset(images, probabilities, transform=RandomDihedral(), seed=3)
    again = PseudoSliceDataset(images, probabilities, transform=RandomDihedral(), seed=3)
    items = [dataset[0] for _ in range(8)]
    moved = 0
    for item in items:
        image, foreground = item["image"][0].numpy(), item["mask"][1].numpy()
        np.testing.assert_allclose(foreground, 1 / (1 + np.exp(-image)), atol=1e-6)  # still pixel-aligned
        moved += not np.array_equal(image, images[0])
    assert moved > 0
    for item, repeat in zip(items, (again[0] for _ in range(8))):
        assert torch.equal(item["image"], repeat["image"]) and torch.equal(item["mask"], repeat["mask"])


def test_a_mean_teacher_trains_on_whole_pseudo_labelled_slices():
    torch.manual_seed(0)
    images = _slices(n=4)
    labels = (images > 0).astype(np.int64)
    labelled = [{"image": torch.from_numpy(images[i:i + 1]), "mask": torch.from_numpy(labels[i])} for i in range(4)]
    pseudo = PseudoSliceDataset(images, 1 / (1 + np.exp(-images)), transform=RandomDihedral())
    trainer = MeanTeacher(_pointwise_network(), TrainConfig(epochs=2, lr=1e-2, device="cpu", amp="off"),
                          MeanTeacherConfig(consistency_weight=0.0, validate="student", pseudo_batch_size=2),
                          pseudo_patches=pseudo)
    trainer.fit(torch.utils.data.DataLoader(labelled, batch_size=2), torch.utils.data.DataLoader(labelled, batch_size=2))
    assert trainer.global_step == 4 and "pseudo" in trainer.last_terms and pseudo.draws == 8


@pytest.mark.parametrize("images, probabilities, message", [
    (np.zeros((2, 8, 8)), np.zeros((2, 8, 9)), "same shape"),
    (np.zeros((2, 8, 8)), np.full((2, 8, 8), 1.5), r"\[0, 1\]"),
    (np.full((2, 8, 8), np.nan), np.zeros((2, 8, 8)), "NaN"),
    (np.zeros((8, 8)), np.zeros((8, 8)), r"\(N, H, W\)"),
])
def test_bad_inputs_are_named(images, probabilities, message):
    with pytest.raises(InvalidInputError, match=message):
        PseudoSliceDataset(images, probabilities)
