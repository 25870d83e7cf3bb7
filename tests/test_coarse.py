"""Coarse segmentation: bounding boxes of masks and predictions, and the low-resolution 3D segmenter."""

import numpy as np
import pytest
import torch
from torch import nn

from covidlib.coarse import (Box, boxes_from_probabilities, mask_bounding_box, predict_boxes_2d, predict_boxes_3d,
                             resize_volume, train_coarse_segmenter)
from covidlib.errors import InvalidInputError


def test_mask_bounding_box_is_half_open_and_tight():
    mask = np.zeros((4, 10, 12), dtype=np.uint8)
    mask[1, 2, 3] = 1
    mask[2, 6, 9] = 1
    assert mask_bounding_box(mask) == Box(1, 3, 2, 7, 3, 10)
    assert mask_bounding_box(np.zeros((5, 5))) is None
    assert mask_bounding_box(mask[2]) == Box(0, 1, 6, 7, 9, 10)


def test_box_rejects_empty_or_negative_extent():
    with pytest.raises(InvalidInputError):
        Box(0, 1, 5, 5, 0, 1)
    with pytest.raises(InvalidInputError):
        Box(0, 1, -1, 5, 0, 1)


def test_boxes_from_probabilities_thresholds_strictly():
    probability = np.zeros((8, 8), dtype=np.float32)
    probability[2:4, 3:6] = 0.7
    probability[7, 7] = 0.5
    assert boxes_from_probabilities([probability, np.zeros((8, 8))], 0.5) == [Box(0, 1, 2, 4, 3, 6), None]


class _Brightness(nn.Module):
    """A fake segmenter: infection where the input exceeds 1 (logits +-10)."""

    num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = (x > 1).float() * 20 - 10
        return torch.cat([-foreground, foreground], dim=1)


def test_predict_boxes_2d_handles_several_sizes():
    a = np.zeros((20, 30), dtype=np.float32)
    a[5:8, 10:12] = 5
    b = np.zeros((1, 16, 16), dtype=np.float32)
    c = np.zeros((20, 30), dtype=np.float32)
    c[0, 0] = 5
    assert predict_boxes_2d(_Brightness(), [a, b, c], device="cpu") == [Box(0, 1, 5, 8, 10, 12), None, Box(0, 1, 0, 1, 0, 1)]
    volume = np.zeros((3, 20, 30), dtype=np.float32)
    volume[1, 2:4, 5:9] = 5
    volume[2, 10, 20] = 5
    assert predict_boxes_2d(_Brightness(), [volume, a], device="cpu") == [Box(1, 3, 2, 11, 5, 21), Box(0, 1, 5, 8, 10, 12)]


def test_resize_volume_keeps_a_constant_and_nearest_keeps_labels():
    np.testing.assert_allclose(resize_volume(np.full((5, 7, 9), 3.0), (8, 16, 16)), 3.0, rtol=1e-6)
    labels = (np.random.default_rng(0).random((10, 12, 14)) > 0.5).astype(np.uint8)
    assert set(np.unique(resize_volume(labels, (8, 8, 8), mode="nearest-exact"))) <= {0.0, 1.0}


def test_coarse_segmenter_finds_a_bright_block():
    rng = np.random.default_rng(0)
    images, masks = [], []
    for _ in range(3):
        image = rng.normal(scale=0.1, size=(16, 32, 32)).astype(np.float32)
        mask = np.zeros_like(image, dtype=np.uint8)
        z, y, x = rng.integers(2, 8), rng.integers(4, 16), rng.integers(4, 16)
        mask[z:z + 6, y:y + 10, x:x + 10] = 1
        image[mask == 1] += 2.0
        images.append(image)
        masks.append(mask)
    model = train_coarse_segmenter(images, masks, shape=(8, 16, 16), base_width=2, epochs=20, lr=1e-2, device="cpu",
                                   progress=False)
    boxes = predict_boxes_3d(model, images, shape=(8, 16, 16), device="cpu")
    truth = [mask_bounding_box(m) for m in masks]
    for box, true in zip(boxes, truth):
        assert box is not None
        # the coarse box overlaps the true lesion box well (low resolution: a few voxels off)
        overlap = [max(0, min(getattr(box, f"{a}1"), getattr(true, f"{a}1")) - max(getattr(box, f"{a}0"), getattr(true, f"{a}0")))
                   for a in "zyx"]
        assert np.prod(overlap) >= 0.5 * np.prod(true.shape)


def test_coarse_shape_must_be_multiples_of_eight_and_inputs_valid():
    with pytest.raises(InvalidInputError, match="multiples of 8"):
        train_coarse_segmenter([np.zeros((8, 8, 8))], [np.zeros((8, 8, 8))], shape=(8, 12, 16), epochs=1, progress=False)
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(InvalidInputError, match="image 1 holds NaN"):
        train_coarse_segmenter([np.zeros((8, 8, 8)), nan], [np.zeros((8, 8, 8))] * 2, shape=(8, 8, 8), progress=False)
    with pytest.raises(InvalidInputError, match=r"mask 0 must be 0/1.*values \[255\]"):
        train_coarse_segmenter([np.zeros((8, 8, 8))], [np.full((8, 8, 8), 255)], shape=(8, 8, 8), progress=False)
    with pytest.raises(InvalidInputError, match=r"mask 0 must be 0/1 and of its image's shape"):
        train_coarse_segmenter([np.zeros((8, 8, 8))], [np.zeros((8, 8, 4))], shape=(8, 8, 8), progress=False)
