"""Tests for covidlib.inference: slice preparation, prediction at any size, the checkpoint loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_semi_cli import N_LABELLED, UNLABELLED_NAME, make_semiseg
from torch import nn

from covidlib.augment import DIHEDRAL_GROUP
from covidlib.datasets import Case, get_dataset
from covidlib.errors import InvalidInputError
from covidlib.inference import (
    Architecture,
    case_metrics,
    choose_threshold,
    decision_threshold,
    grey_levels,
    load_model,
    normalise_ct_slices,
    normalise_slices,
    predict_cases,
    predict_stack,
    prepare_case,
    prepare_slices,
    resize_stack,
    spread_evenly,
)
from covidlib.metrics import infnet_metrics
from covidlib.models import get_model
from covidlib.preprocess import preprocess_case
from covidlib.train import save_checkpoint

PHANTOM = {"n": 2, "shape": (6, 64, 64), "seed": 3}


class SigmoidOfInput(nn.Module):
    """Logits (0, x): the infection probability of each pixel is sigmoid(x), known in closed form."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(images), images], dim=1)


def test_normalisation_helpers() -> None:
    np.testing.assert_allclose(grey_levels(np.array([-1300.0, -1250.0, -500.0, 250.0, 400.0]), "hu"),
                               [0.0, 0.0, 127.5, 255.0, 255.0])
    stack = np.stack([np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(12, dtype=np.float32).reshape(3, 4) ** 2])
    normalised = normalise_slices(stack, "test")
    for plane, original in zip(normalised, stack):
        np.testing.assert_allclose(plane, (original - original.mean()) / original.std(), rtol=1e-5)
    with pytest.raises(InvalidInputError, match="constant"):
        normalise_slices(np.full((2, 3, 4), 7.0), "flat.png")
    with pytest.raises(InvalidInputError, match="intensity"):
        grey_levels(np.zeros(3), "raw")


def test_constant_ct_slices_become_zero_and_are_flagged() -> None:
    stack = np.stack([np.arange(12, dtype=np.float32).reshape(3, 4), np.full((3, 4), 38.4, np.float32),
                      np.arange(12, dtype=np.float32).reshape(3, 4) ** 2, np.zeros((3, 4), np.float32)])
    normalised, constant = normalise_ct_slices(stack, "scan.nii.gz")
    np.testing.assert_array_equal(constant, [False, True, False, True])
    np.testing.assert_array_equal(normalised[[1, 3]], 0.0)
    np.testing.assert_allclose(normalised[[0, 2]], normalise_slices(stack[[0, 2]], "scan.nii.gz"))
    with pytest.raises(InvalidInputError, match=r"blank\.nii\.gz: every slice is constant"):
        normalise_ct_slices(np.full((3, 3, 4), 38.4), "blank.nii.gz")


class PaddedPhantom:
    """The phantom dataset with slice 0 of every case replaced by padding at -3024 HU (a CT's
    outside of the field of view), its lesion mask there emptied."""

    def __init__(self) -> None:
        self.phantom = get_dataset("phantom", **PHANTOM)

    def load(self, case_id: str) -> Case:
        case = self.phantom.load(case_id)
        image, lesion = case.image.array.copy(), case.lesion_mask.copy()
        image[0], lesion[0] = -3024.0, 0
        return dataclasses.replace(case, image=dataclasses.replace(case.image, array=image), lesion_mask=lesion)


def test_a_ct_cases_padding_slices_become_zero_and_are_predicted_free_of_infection() -> None:
    padded = PaddedPhantom()
    image, mask = prepare_case(padded.load("phantom_001"))
    np.testing.assert_array_equal(image[0], 0.0)
    whole, _ = prepare_case(padded.phantom.load("phantom_001"))
    np.testing.assert_array_equal(image[1:], whole[1:])
    assert mask[0].sum() == 0 and mask[1:].sum() > 0
    # sigmoid of the input: 0.5 on a zero slice, were it not set to 0 as padding
    [(case_id, probabilities, _)] = predict_cases(SigmoidOfInput(), padded, ["phantom_001"], 64, "cpu")
    assert case_id == "phantom_001"
    np.testing.assert_array_equal(probabilities[0], 0.0)
    np.testing.assert_allclose(probabilities[1:], 1.0 / (1.0 + np.exp(-whole[1:])), rtol=1e-5)
    case = padded.load("phantom_001")
    blank = dataclasses.replace(case, case_id="flat", image=dataclasses.replace(
        case.image, array=np.full_like(case.image.array, -3024.0)))
    with pytest.raises(InvalidInputError, match=r"case 'flat': every slice is constant"):
        prepare_case(blank)


def test_resize_stack_halves_to_block_means_and_keeps_mask_labels() -> None:
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    # bilinear, align_corners=False, by 2: each output pixel samples the centre of a 2 x 2 block
    expected = image[0].reshape(2, 2, 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(resize_stack(image, (2, 2), "bilinear")[0], expected)
    mask = np.zeros((1, 5, 7), np.uint8)
    mask[0, 1:4, 2:5] = 1
    resized = resize_stack(mask, (11, 13), "nearest-exact")
    assert resized.shape == (1, 11, 13) and set(np.unique(resized)) == {0.0, 1.0}
    np.testing.assert_array_equal(resize_stack(image, (4, 4), "bilinear"), image)


def test_predict_stack_at_the_networks_size_and_back() -> None:
    model = SigmoidOfInput()
    images = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
    same = predict_stack(model, images, 16, torch.device("cpu"))
    np.testing.assert_allclose(same, 1 / (1 + np.exp(-images)), atol=1e-6)
    constant = np.full((1, 30, 20), 0.7, np.float32)  # resized twice, a constant stays constant
    other = predict_stack(model, constant, 16, torch.device("cpu"))
    assert other.shape == (1, 30, 20)
    np.testing.assert_allclose(other, 1 / (1 + np.exp(-0.7)), atol=1e-6)


def test_case_metrics_by_hand() -> None:
    probabilities = np.array([[0.9, 0.6, 0.4, 0.0]], np.float32)
    target = np.array([[1, 0, 0, 0]], np.uint8)
    metrics = case_metrics(probabilities, target)
    assert metrics["dice"] == pytest.approx(2 / 3) and metrics["iou"] == pytest.approx(1 / 2)
    assert metrics["sensitivity"] == pytest.approx(1.0) and metrics["specificity"] == pytest.approx(2 / 3)
    # Inf-Net rescales to [0, 1]: 1, 2/3, 4/9, 0; the best threshold keeps only the lesion pixel
    assert metrics["infnet_max_dice"] == pytest.approx(1.0)
    perfect = case_metrics(np.stack([target, target]).astype(np.float32), np.stack([target, target]))
    assert perfect["dice"] == 1.0 and perfect["infnet_s_measure"] == pytest.approx(1.0)


def test_case_metrics_threshold_over_the_case_inf_net_per_slice_by_hand() -> None:
    """Two slices that score differently: Dice, IoU, sensitivity and specificity at 0.5 pool the
    case's pixels, the Inf-Net numbers are each slice's, averaged; both differ from the other way."""
    probabilities = np.array([[[0.8125, 0.25, 0.25, 0.25]],
                              [[0.75, 0.5, 0.25, 0.25]]], np.float32)
    target = np.array([[[1, 0, 0, 0]],
                       [[0, 1, 1, 0]]], np.uint8)
    metrics = case_metrics(probabilities, target)
    # > 0.5 keeps pixel 0 of each slice: slice 0 TP 1; slice 1 FP 1, FN 2 (0.5 is not > 0.5); TN 4.
    # Pooled Dice 2 / (2 + 1 + 2) = 0.4; the mean of the slices' Dice (1 and 0) would be 0.5.
    assert metrics["dice"] == pytest.approx(0.4) and metrics["iou"] == pytest.approx(1 / 4)
    assert metrics["sensitivity"] == pytest.approx(1 / 3) and metrics["specificity"] == pytest.approx(4 / 5)
    # Inf-Net rescales each slice on its own, then thresholds at k / 255 with map >= t.
    # Slice 0 -> (1, 0, 0, 0): Dice 1 at the 255 thresholds t > 0, 2 / 5 at t = 0.
    # Slice 1 -> (1, 1/2, 0, 0): Dice 0 at the 128 t > 1/2, 2 / 4 at the 127 in (0, 1/2], 4 / 6 at t = 0.
    mean_0, mean_1 = (255 * 1.0 + 2 / 5) / 256, (127 * 0.5 + 4 / 6) / 256
    assert metrics["infnet_mean_dice"] == pytest.approx((mean_0 + mean_1) / 2)
    # Mean of each slice's best (1 and 2/3); the best of the slices' mean curve would be 3/4.
    assert metrics["infnet_max_dice"] == pytest.approx((1.0 + 2 / 3) / 2)
    # The case as one image, rescaled jointly to (1, 0, 0, 0, 8/9, 4/9, 0, 0): Dice 2/4 at the 29
    # t > 8/9, 2/5 at the 113 in (4/9, 8/9], 4/6 at the 113 in (0, 4/9], 6/11 at t = 0; not the above.
    one_image = (29 * 2 / 4 + 113 * 2 / 5 + 113 * 4 / 6 + 6 / 11) / 256
    assert infnet_metrics(probabilities.reshape(1, 8), target.reshape(1, 8))["mean_dice"] == pytest.approx(one_image)
    assert metrics["infnet_mean_dice"] - one_image > 0.09


def test_window_preparation_of_a_phantom_by_a_second_route() -> None:
    dataset = get_dataset("phantom", **PHANTOM)
    prepared = prepare_slices(dataset, 32)
    assert prepared.split == "all" and list(prepared.labelled) == dataset.case_ids("all")
    assert prepared.steps == ["lung window [-1250, 250] HU to grey levels 0..255", "z-score per slice",
                              "resize to 32 x 32 px (images bilinear, masks nearest)"]
    case = dataset.load("phantom_001")
    grey = np.clip((case.image.array + 1250.0) / 1500.0, 0, 1) * 255.0
    mean = grey.mean(axis=(1, 2), keepdims=True)
    z = (grey - mean) / grey.std(axis=(1, 2), keepdims=True)
    expected = torch.nn.functional.interpolate(torch.from_numpy(z.astype(np.float32))[:, None], size=(32, 32),
                                               mode="bilinear", align_corners=False)[:, 0].numpy()
    image, mask = prepared.labelled["phantom_001"]
    np.testing.assert_allclose(image, expected, atol=1e-4)
    assert image.dtype == np.float32 and mask.dtype == np.uint8 and mask.shape == (6, 32, 32)
    assert mask.sum() > 0 and set(np.unique(mask)) <= {0, 1}


def test_lung_crop_preparation_is_preprocess_case() -> None:
    dataset = get_dataset("phantom", **PHANTOM)
    prepared = prepare_slices(dataset, method="lung-crop", spacing_mm=2.0, case_ids=["phantom_000"])
    reference = preprocess_case(dataset.load("phantom_000"), lung_method="given", spacing_mm=2.0)
    image, mask = prepared.labelled["phantom_000"]
    np.testing.assert_array_equal(image, reference.image)
    np.testing.assert_array_equal(mask, reference.lesion_mask)
    assert prepared.steps == reference.meta["steps"] and any("lung mask" in step for step in prepared.steps)


def test_unlabelled_slices_are_spread_evenly(tmp_path: Path) -> None:
    dataset = get_dataset("covid-semiseg", make_semiseg(tmp_path))
    prepared = prepare_slices(dataset, 16, n_unlabelled=2)
    assert len(prepared.labelled) == N_LABELLED
    assert prepared.unlabelled_ids == [f"unlabelled/{UNLABELLED_NAME.format(i)}" for i in (0, 2)]
    assert all(image.shape == (1, 16, 16) for image in prepared.unlabelled)
    # more than half of them: still spread to the end, not the first three
    assert prepare_slices(dataset, 16, n_unlabelled=3).unlabelled_ids == [
        f"unlabelled/{UNLABELLED_NAME.format(i)}" for i in (0, 1, 3)]
    assert len(prepare_slices(dataset, 16, n_unlabelled=None).unlabelled) == 5


def test_spread_evenly_picks_by_hand_indices_and_refuses_a_bad_count() -> None:
    """The chosen ids are recorded and reused, so they must be exactly i * n // count, first included."""
    ids = [f"s{i}" for i in range(10)]
    assert spread_evenly(ids, 1) == ["s0"]
    assert spread_evenly(ids, 5) == ["s0", "s2", "s4", "s6", "s8"]  # fixed stride 2
    assert spread_evenly(ids, 3) == ["s0", "s3", "s6"]  # 0, 10 // 3, 20 // 3
    assert spread_evenly(ids, 4) == ["s0", "s2", "s5", "s7"]  # 0, 2.5, 5, 7.5 rounded down
    assert spread_evenly(ids, 10) == ids
    for bad in (0, 11, True, 2.0):
        with pytest.raises(InvalidInputError, match=rf"count must be in \[1, 10\], got {bad!r}"):
            spread_evenly(ids, bad)


def test_bad_arguments_are_named() -> None:
    dataset = get_dataset("phantom", **PHANTOM)
    with pytest.raises(InvalidInputError, match="method"):
        prepare_slices(dataset, method="crop")
    with pytest.raises(InvalidInputError, match="image_size"):
        prepare_slices(dataset, 0)
    with pytest.raises(InvalidInputError, match="no 'unlabelled' split"):
        prepare_slices(dataset, n_unlabelled=1)
    with pytest.raises(InvalidInputError, match="no cases to choose a threshold on"):
        choose_threshold(SigmoidOfInput(), dataset, [], 64, "cpu")


def test_load_model_rebuilds_the_network_and_names_bad_files(tmp_path: Path) -> None:
    options = {"base_width": 4, "depth": 2}
    torch.manual_seed(0)
    model = get_model("unet", **options)
    save_checkpoint({"model": model.state_dict(), "metadata": {"model": "unet", "model_options": options,
                                                               "image_size": 32}}, tmp_path / "best.pt")
    loaded, metadata = load_model(tmp_path / "best.pt")
    assert metadata["image_size"] == 32 and not loaded.training
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    save_checkpoint({"model": model.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(InvalidInputError, match="does not record its architecture"):
        load_model(tmp_path / "bare.pt")
    assert load_model(tmp_path / "bare.pt", Architecture("unet", options))[1]["model"] == "unet"
    with pytest.raises(InvalidInputError, match="do not fit"):
        load_model(tmp_path / "bare.pt", Architecture("unet", {"base_width": 8, "depth": 2}))
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


# --- test-time augmentation over the 8 turns and mirrors ------------------------------------------

class PixelNet(nn.Module):
    """A 1x1 convolution: equivariant to every turn and mirror, so TTA must change nothing."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 1)
        nn.init.normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class LeftEdgeNet(PixelNet):
    """Adds a left-to-right ramp to the logits: not equivariant, so TTA averages it away."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-3, 3, x.shape[-1], device=x.device)
        logits = self.conv(x)
        return torch.stack([logits[:, 0], logits[:, 1] + ramp], dim=1)


def test_predict_stack_tta_is_exact_for_an_equivariant_network_and_averages_a_non_equivariant_one():
    images = np.random.default_rng(1).normal(size=(2, 12, 12)).astype(np.float32)
    plain = predict_stack(PixelNet(), images, 12, "cpu")
    assert np.allclose(predict_stack(PixelNet(), images, 12, "cpu", tta=True), plain, atol=1e-6)
    # The ramp is averaged over all 8 orientations: the result is symmetric under every one of them.
    averaged = predict_stack(LeftEdgeNet(), np.zeros((1, 12, 12), np.float32), 12, "cpu", tta=True)
    for transform in DIHEDRAL_GROUP:
        assert np.allclose(transform(averaged)[0], averaged, atol=1e-6)
    assert not np.allclose(predict_stack(LeftEdgeNet(), np.zeros((1, 12, 12), np.float32), 12, "cpu"),
                           averaged, atol=1e-3)


def test_decision_threshold_is_the_checkpoints_or_one_half_and_a_bad_one_is_named():
    assert decision_threshold({}, "best.pt") == 0.5
    assert decision_threshold({"probability_threshold": 0.35}, "best.pt") == 0.35
    for bad in (1.5, 0.0, "high", True, None):
        with pytest.raises(InvalidInputError, match=r"checkpoint runs/best\.pt: metadata 'probability_threshold'"):
            decision_threshold({"probability_threshold": bad}, "runs/best.pt")
