"""Nested cross-validation: disjoint splits, exact test-time augmentation, resumable results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from covidlib import crossval
from covidlib.crossval import DIHEDRAL_GROUP, Recipe, nested_folds, predict_slices, run_nested_cv
from covidlib.datasets import get_dataset
from covidlib.errors import InvalidInputError
from covidlib.inference import prepare_slices

TINY = Recipe(image_size=32, base_width=4, depth=2, epochs=2, max_steps_per_epoch=1, batch_size=4, amp="off")


def test_nested_folds_test_each_case_once_and_never_select_on_it():
    ids = [f"c{i}" for i in range(23)]
    folds = nested_folds(ids, 5, seed=3)
    tested = [case for fold in folds for case in fold.test]
    assert sorted(tested) == sorted(ids)
    for fold in folds:
        assert not set(fold.train) & set(fold.val)
        assert not (set(fold.train) | set(fold.val)) & set(fold.test)
        assert sorted(fold.train + fold.val + fold.test) == sorted(ids)
        assert len(fold.val) == max(1, (len(ids) - len(fold.test)) // 5)
    assert nested_folds(ids, 5, seed=3) == folds
    assert nested_folds(ids, 5, seed=4) != folds
    with pytest.raises(InvalidInputError, match="validation count"):
        nested_folds(ids[:4], 2, seed=0, n_val=2)


def test_each_dihedral_inverse_undoes_its_transform():
    image = np.random.default_rng(0).normal(size=(2, 5, 5)).astype(np.float32)
    for transform in DIHEDRAL_GROUP:
        turned, _ = transform(image)
        assert np.array_equal(crossval._inverse(transform)(turned), image)


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


def test_tta_is_exact_for_an_equivariant_network_and_averages_a_non_equivariant_one():
    images = np.random.default_rng(1).normal(size=(2, 12, 12)).astype(np.float32)
    plain = predict_slices(PixelNet(), images, 12, "cpu")
    assert np.allclose(predict_slices(PixelNet(), images, 12, "cpu", tta=True), plain, atol=1e-6)
    # The ramp is averaged over all 8 orientations: the result is symmetric under every one of them.
    averaged = predict_slices(LeftEdgeNet(), np.zeros((1, 12, 12), np.float32), 12, "cpu", tta=True)
    for transform in DIHEDRAL_GROUP:
        assert np.allclose(transform(averaged)[0], averaged, atol=1e-6)
    assert not np.allclose(predict_slices(LeftEdgeNet(), np.zeros((1, 12, 12), np.float32), 12, "cpu"),
                           averaged, atol=1e-3)


def test_score_slices_of_a_perfect_map():
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, 2:5, 3:6] = 1
    scores = crossval.score_slices(mask.astype(np.float32), mask)
    assert scores["dice"] == 1.0 and scores["sensitivity"] == 1.0 and scores["specificity"] == 1.0
    assert scores["infnet_max_dice"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def phantom():
    dataset = get_dataset("phantom", n=6, seed=0, shape=(2, 32, 32))
    return dataset, prepare_slices(dataset, TINY.image_size)


def test_run_nested_cv_writes_one_result_per_fold_and_reads_them_back(phantom, tmp_path, monkeypatch):
    dataset, prepared = phantom
    results = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, seeds=(0,), progress=False)
    assert [r["fold"] for r in results] == [0, 1, 2]
    assert sorted(c for r in results for c in r["test"]) == sorted(prepared.labelled)
    for result in results:
        assert set(result["per_case"]) == set(result["test"])
        assert {"dice", "tta_dice", "infnet_mean_dice"} <= set(next(iter(result["per_case"].values())))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(crossval, "train_supervised", no_training)
    again = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, seeds=(0,), progress=False)
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)
    with pytest.raises(AssertionError, match="trained again"):  # another recipe is another run
        run_nested_cv(dataset, prepared, Recipe(**{**TINY.__dict__, "lr": 2e-3}), tmp_path, folds=3, progress=False)


def test_a_result_written_by_other_code_is_recomputed(phantom, tmp_path):
    dataset, prepared = phantom
    first = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, seeds=(0,), checkpoints=False, progress=False)
    path = tmp_path / crossval.run_key(TINY, dataset.name, 3) / "seed0_fold1.json"
    stored = json.loads(path.read_text())
    stored["code"] = {"covidlib/crossval.py": "0" * 16}
    stored["per_case"] = {}
    path.write_text(json.dumps(stored))
    second = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, seeds=(0,), checkpoints=False, progress=False)
    assert second[1]["per_case"] == first[1]["per_case"]  # recomputed (seeded: the same numbers)
