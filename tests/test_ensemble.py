"""covidlib.ensemble: the mean of the members' probabilities, and an ensemble rebuilt from checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from covidlib.ensemble import Ensemble, load_ensemble
from covidlib.errors import InvalidInputError
from covidlib.inference import predict_stack
from covidlib.models import get_model
from covidlib.train import predict_proba, save_checkpoint

OPTIONS = {"in_channels": 1, "num_classes": 2, "base_width": 4, "depth": 2}


class ConstantLogits(nn.Module):
    """Logits (B, 2, H, W) equal to ``logits`` at every pixel, whatever the image."""

    def __init__(self, *logits: float) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        return self.logits[None, :, None, None].expand(batch, -1, height, width)


def test_an_ensemble_predicts_the_mean_of_its_members_probabilities():
    # logits (0, 0) give foreground 1/2, (0, ln 3) give 3/4: the mean is 5/8
    ensemble = Ensemble([ConstantLogits(0.0, 0.0), ConstantLogits(0.0, math.log(3.0))])
    probabilities = predict_proba(ensemble, np.zeros((2, 4, 4), np.float32), "cpu")
    assert probabilities.shape == (2, 4, 4)
    np.testing.assert_allclose(probabilities, 5 / 8, rtol=1e-6)


def test_an_ensemble_of_one_is_its_member_and_of_networks_agrees_with_averaging_their_predictions():
    torch.manual_seed(0)
    members = [get_model("unet", **OPTIONS).eval() for _ in range(3)]
    images = np.random.default_rng(0).normal(size=(2, 20, 24)).astype(np.float32)
    alone = predict_stack(members[0], images, 16, "cpu", tta=True)
    np.testing.assert_allclose(predict_stack(Ensemble(members[:1]), images, 16, "cpu", tta=True), alone, atol=1e-6)
    # TTA and resizing are linear: averaging inside the network or after prediction agree
    averaged = np.mean([predict_stack(member, images, 16, "cpu", tta=True) for member in members], axis=0)
    np.testing.assert_allclose(predict_stack(Ensemble(members), images, 16, "cpu", tta=True), averaged, atol=1e-6)


def test_an_ensemble_needs_a_member():
    with pytest.raises(InvalidInputError, match="at least one member"):
        Ensemble([])


def _checkpoint(path, seed: int, **metadata):
    torch.manual_seed(seed)
    network = get_model("unet", **OPTIONS)
    save_checkpoint({"model": network.state_dict(), "metadata": {"model": "unet", "model_options": OPTIONS,
                                                                  "image_size": 16, "tta": True, **metadata}}, path)
    return network.eval()


def test_load_ensemble_rebuilds_the_members_and_merges_what_they_saw(tmp_path):
    first = _checkpoint(tmp_path / "a.pt", 0, dataset="d", train_cases=["1", "2", "3"], val_cases=["4", "5"])
    second = _checkpoint(tmp_path / "b.pt", 1, dataset="d", train_cases=["1", "2", "4"], val_cases=["3", "6"])
    single, metadata = load_ensemble([tmp_path / "a.pt"])
    assert not isinstance(single, Ensemble) and metadata["val_cases"] == ["4", "5"]
    ensemble, metadata = load_ensemble([tmp_path / "a.pt", tmp_path / "b.pt"])
    images = np.random.default_rng(1).normal(size=(1, 16, 16)).astype(np.float32)
    expected = np.mean([predict_proba(network, images, "cpu") for network in (first, second)], axis=0)
    np.testing.assert_allclose(predict_proba(ensemble, images, "cpu"), expected, atol=1e-6)
    assert metadata["train_cases"] == ["1", "2", "3", "4"]
    assert metadata["val_cases"] == ["5", "6"]  # "4" and "3" trained the other member
    assert metadata["dataset"] == "d" and metadata["image_size"] == 16 and metadata["tta"] is True
    assert metadata["members"] == [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    assert metadata["model"] == "ensemble of unet" and metadata["model_options"] == [OPTIONS, OPTIONS]


@pytest.mark.parametrize(("other", "named"), [({"image_size": 32}, "image_size, got 16"),
                                              ({"tta": False}, "tta, got True"),
                                              ({"preprocess": {"spacing_mm": 1.0}}, "preprocess, got None"),
                                              ({"probability_threshold": 0.4}, "probability_threshold, got 0.5")])
def test_load_ensemble_refuses_members_that_would_predict_differently_naming_each(tmp_path, other, named):
    _checkpoint(tmp_path / "a.pt", 0)
    _checkpoint(tmp_path / "b.pt", 1, **other)
    with pytest.raises(InvalidInputError, match=f"{named} .*a.pt.*b.pt"):
        load_ensemble([tmp_path / "a.pt", tmp_path / "b.pt"])


def test_load_ensemble_of_members_of_other_datasets_names_none(tmp_path):
    _checkpoint(tmp_path / "a.pt", 0, dataset="d")
    _checkpoint(tmp_path / "b.pt", 1, dataset="e")
    assert load_ensemble([tmp_path / "a.pt", tmp_path / "b.pt"])[1]["dataset"] is None
