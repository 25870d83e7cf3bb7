"""Nested cross-validation: disjoint splits, exact test-time augmentation, resumable results."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from covidlib import crossval
from covidlib.crossval import allowed_folds, largest_inner_val, nested_folds, run_nested_cv
from covidlib.datasets import get_dataset
from covidlib.errors import InvalidInputError
from covidlib.inference import prepare_case, predict_stack, prepare_slices
from covidlib.metrics import THRESHOLD_GRID, best_threshold, dice
from covidlib.recipe import Recipe

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


@pytest.mark.parametrize(("n_cases", "folds"), [(0, range(0)), (1, range(0)), (2, range(0)), (3, range(3, 4)),
                                                (4, range(2, 5)), (5, range(2, 6)), (50, range(2, 51))])
def test_allowed_folds_by_hand(n_cases: int, folds: range) -> None:
    # 3 cases in 2 folds: the test fold of 2 leaves 1 case, which cannot both select and train
    assert allowed_folds(n_cases) == folds


@pytest.mark.parametrize(("n_cases", "folds", "largest"), [
    (3, 3, 1),  # test 1 of 3, select 1, train 1
    (5, 2, 1), (5, 3, 2), (5, 5, 3),  # largest test folds of 3, 2 and 1 case(s)
    (50, 2, 24), (50, 3, 32), (50, 5, 39), (50, 50, 48),  # largest test folds of 25, 17, 10 and 1
])
def test_largest_inner_val_by_hand(n_cases: int, folds: int, largest: int) -> None:
    assert largest_inner_val(n_cases, folds) == largest


@pytest.mark.parametrize("n_cases", [3, 5, 50])
def test_nested_folds_accept_the_limits_and_refuse_one_beyond(n_cases: int) -> None:
    ids = [f"c{i}" for i in range(n_cases)]
    folds = allowed_folds(n_cases)
    for k in (folds[0], folds[-1]):
        largest = largest_inner_val(n_cases, k)
        for n_val in (None, 1, largest):
            assert len(nested_folds(ids, k, seed=0, n_val=n_val)) == k
        with pytest.raises(InvalidInputError, match=rf"must be in \[1, {largest}\] .* got {largest + 1}$"):
            nested_folds(ids, k, seed=0, n_val=largest + 1)
    for k in (folds[0] - 1, folds[-1] + 1):
        with pytest.raises(InvalidInputError):
            nested_folds(ids, k, seed=0)


def test_the_limits_are_those_of_the_folds_nested_folds_draws() -> None:
    for n_cases in range(1, 20):
        ids = [f"c{i}" for i in range(n_cases)]
        for k in range(2, n_cases + 1):
            if k in allowed_folds(n_cases):
                fewest = min(len(fold.train) + len(fold.val) for fold in nested_folds(ids, k, seed=1))
                assert largest_inner_val(n_cases, k) == fewest - 1
            else:
                with pytest.raises(InvalidInputError, match="validation count"):
                    nested_folds(ids, k, seed=1)


def test_fold_means_by_hand_group_by_seed_and_skip_nan_cases() -> None:
    """Each fold's mean over its test cases, a NaN case left out (not the whole fold NaN), listed per
    seed in the results' order even when the seeds interleave; ``metric`` picks the column."""
    nan = float("nan")
    results = [
        {"seed": 0, "fold": 0, "per_case": {"a": {"dice": 0.5, "iou": 0.25}, "b": {"dice": 0.75, "iou": 0.5}}},
        {"seed": 1, "fold": 0, "per_case": {"b": {"dice": 0.25, "iou": 0.0}, "c": {"dice": 0.5, "iou": 1.0}}},
        {"seed": 0, "fold": 1, "per_case": {"c": {"dice": 1.0, "iou": 1.0}, "d": {"dice": nan, "iou": 0.5}}},
        {"seed": 1, "fold": 1, "per_case": {"a": {"dice": 1.0, "iou": 0.5}, "d": {"dice": 0.0, "iou": 0.0}}},
    ]
    means = crossval.fold_means(results)
    # seed 0: (0.5 + 0.75) / 2, then 1.0 alone (d is NaN); seed 1: (0.25 + 0.5) / 2, (1 + 0) / 2
    assert means == {0: [pytest.approx(0.625), pytest.approx(1.0)], 1: [pytest.approx(0.375), pytest.approx(0.5)]}
    assert list(means) == [0, 1]
    assert crossval.fold_means(results, "iou") == {0: [pytest.approx(0.375), pytest.approx(0.75)],
                                                   1: [pytest.approx(0.5), pytest.approx(0.25)]}


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
    stored = json.loads(path.read_text(encoding="utf-8"))
    stored["code"] = {"covidlib/crossval.py": "0" * 16}
    stored["per_case"] = {}
    path.write_text(json.dumps(stored))
    second = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, seeds=(0,), checkpoints=False, progress=False)
    assert second[1]["per_case"] == first[1]["per_case"]  # recomputed (seeded: the same numbers)
    path.write_text(path.read_text(encoding="utf-8")[:50])  # cut short
    with pytest.warns(UserWarning, match=r"seed0_fold1\.json: not a readable nested-CV result"):
        third = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, seeds=(0,), checkpoints=False, progress=False)
    assert third[1]["per_case"] == first[1]["per_case"]
    assert json.loads(path.read_text(encoding="utf-8"))["per_case"] == first[1]["per_case"]  # rewritten whole


def test_fold_indices_run_only_those_folds_with_their_histories(phantom, tmp_path):
    dataset, prepared = phantom
    results = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, seeds=(0, 1), fold_indices=[2],
                            checkpoints=False, progress=False)
    assert [(r["seed"], r["fold"]) for r in results] == [(0, 2), (1, 2)]
    assert results[0]["test"] == nested_folds(sorted(prepared.labelled), 3, 0)[2].test
    for result in results:
        assert [row["epoch"] for row in result["history"]] == [1, 2]  # TINY trains 2 epochs
        assert result["best_val_dice"] == max(row["val_dice"] for row in result["history"])
    with pytest.raises(InvalidInputError, match="fold_indices"):
        run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, fold_indices=[3], progress=False)


def test_compute_false_reads_stored_folds_and_trains_nothing(phantom, tmp_path, monkeypatch):
    dataset, prepared = phantom
    assert run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, compute=False, progress=False) == []
    stored = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, fold_indices=[1], checkpoints=False,
                           progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("compute=False trained a fold")

    monkeypatch.setattr(crossval, "train_supervised", no_training)
    read = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, compute=False, progress=False)
    assert [(r["seed"], r["fold"]) for r in read] == [(0, 1)]
    assert read[0]["per_case"] == stored[0]["per_case"]


def test_every_recipe_field_is_in_the_run_key_so_its_defaults_are_not_code(phantom, tmp_path):
    dataset, prepared = phantom
    (result,) = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, fold_indices=[0], checkpoints=False,
                              progress=False)
    # the slices' windowing and normalisation (ct, preprocess) are code the numbers depend on too
    assert {"covidlib/crossval.py", "covidlib/ct.py", "covidlib/preprocess.py"} <= set(result["code"])
    assert "covidlib/recipe.py" not in result["code"]

    def another(value):
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value * 2 + 1
        return 1 if value is None else value + "-other"

    keys = {crossval.run_key(TINY, dataset.name, 3)}
    for field in dataclasses.fields(Recipe):
        keys.add(crossval.run_key(dataclasses.replace(TINY, **{field.name: another(getattr(TINY, field.name))}),
                                  dataset.name, 3))
    assert len(keys) == len(dataclasses.fields(Recipe)) + 1


def test_a_checkpoint_of_other_code_or_slices_is_not_continued(phantom, tmp_path, monkeypatch):
    dataset, prepared = phantom
    ids = sorted(prepared.labelled)
    train_ids, val_ids = ids[:4], ids[4:6]
    steps = []
    real_step = crossval.Trainer.train_step
    monkeypatch.setattr(crossval.Trainer, "train_step", lambda self, batch: steps.append(1) or real_step(self, batch))
    first = crossval.train_supervised(prepared, train_ids, val_ids, TINY, out_dir=tmp_path / "run")
    trained = len(steps)
    assert trained > 0
    again = crossval.train_supervised(prepared, train_ids, val_ids, TINY, out_dir=tmp_path / "run", resume=True)
    assert again.history == first.history and len(steps) == trained  # finished: read back, not trained again
    real = crossval.code_fingerprint
    monkeypatch.setattr(crossval, "code_fingerprint", lambda modules: {**real(modules), "covidlib/train.py": "0" * 16})
    crossval.train_supervised(prepared, train_ids, val_ids, TINY, out_dir=tmp_path / "run", resume=True)
    assert len(steps) == 2 * trained  # other code: trained afresh
    monkeypatch.setattr(crossval, "code_fingerprint", real)
    other_slices = crossval.train_supervised(prepared, ids[1:5], val_ids, TINY, out_dir=tmp_path / "run", resume=True)
    assert other_slices.metadata["fingerprint"] != first.metadata["fingerprint"]
    assert len(steps) == 3 * trained  # other slices: trained afresh


def test_the_threshold_is_chosen_on_the_validation_slices_and_scores_the_test_slices(phantom, tmp_path):
    dataset, prepared = phantom
    result, = run_nested_cv(dataset, prepared, TINY, tmp_path, folds=3, seeds=(0,), fold_indices=[1],
                            checkpoints=False, progress=False)
    assert result["val_threshold"] in THRESHOLD_GRID
    for scores in result["per_case"].values():
        assert "tta_dice_at_val_threshold" in scores and "dice_at_val_threshold" not in scores
    trainer = crossval.train_supervised(prepared, result["train"], result["val"], TINY, seed=0)
    val = [(predict_stack(trainer.model, image, TINY.image_size, tta=True), mask)
           for image, mask in (prepare_case(dataset.load(case)) for case in result["val"])]
    assert result["val_threshold"] == best_threshold([p for p, _ in val], [m for _, m in val])
    for case, scores in result["per_case"].items():
        image, mask = prepare_case(dataset.load(case))
        probabilities = predict_stack(trainer.model, image, TINY.image_size, tta=True)
        assert scores["tta_dice_at_val_threshold"] == dice(probabilities > result["val_threshold"], mask)


def test_score_cases_at_one_half_is_the_dice_at_one_half_and_follows_the_recipes_tta(phantom):
    dataset, prepared = phantom
    plain = dataclasses.replace(TINY, tta=False)
    trainer = crossval.train_supervised(prepared, sorted(prepared.labelled)[:4], sorted(prepared.labelled)[4:], plain)
    ids = sorted(prepared.labelled)[4:]
    without = crossval.score_cases(trainer.model, dataset, ids, plain, threshold=0.5)
    with_tta = crossval.score_cases(trainer.model, dataset, ids, TINY, threshold=0.5)
    for case in ids:
        assert without[case]["dice_at_val_threshold"] == without[case]["dice"]
        assert with_tta[case]["tta_dice_at_val_threshold"] == with_tta[case]["tta_dice"]
        assert "tta_dice" not in without[case]
    assert crossval.scored_metric(TINY) == "tta_dice"
    assert crossval.scored_metric(dataclasses.replace(plain, select_threshold=True)) == "dice_at_val_threshold"


def test_a_training_slice_dataset_zooms_only_when_its_recipe_asks(phantom):
    from covidlib.augment import RandomZoom, default_augmentation

    _, prepared = phantom
    ids = sorted(prepared.labelled)[:2]
    plain = crossval.slice_dataset(prepared, ids, TINY, training=True, seed=0)
    zoomed = crossval.slice_dataset(prepared, ids, dataclasses.replace(TINY, zoom=1.3), training=True, seed=0)
    assert plain.transform == default_augmentation(dihedral=TINY.dihedral)
    assert RandomZoom(1.3, p=0.5) in zoomed.transform.transforms
    assert crossval.slice_dataset(prepared, ids, dataclasses.replace(TINY, zoom=1.3), training=False, seed=0).transform is None


def test_a_cropping_recipe_trains_on_windows_and_validates_on_whole_slices(phantom):
    from covidlib.augment import RandomCrop

    _, prepared = phantom
    ids = sorted(prepared.labelled)[:2]
    cropping = dataclasses.replace(TINY, crop_size=16)
    training = crossval.slice_dataset(prepared, ids, cropping, training=True, seed=0)
    assert training.transform.transforms[0] == RandomCrop(16)  # first: the other transforms work on the window
    assert {tuple(training[i]["image"].shape) for i in range(len(training))} == {(1, 16, 16)}
    assert tuple(training[0]["mask"].shape) == (16, 16)
    whole = crossval.slice_dataset(prepared, ids, cropping, training=False, seed=0)
    assert whole.transform is None and tuple(whole[0]["image"].shape) == (1, TINY.image_size, TINY.image_size)
    # without augmentation the window is all a training slice goes through
    bare = crossval.slice_dataset(prepared, ids, dataclasses.replace(cropping, augment=False), training=True, seed=0)
    assert bare.transform == RandomCrop(16)
    # windows that hold infection half of the time, with or without the augmentation
    centred = dataclasses.replace(cropping, crop_foreground=0.5)
    assert crossval.slice_dataset(prepared, ids, centred, training=True, seed=0).transform.transforms[0] == \
        RandomCrop(16, foreground=0.5)
    assert crossval.slice_dataset(prepared, ids, dataclasses.replace(centred, augment=False), training=True,
                                  seed=0).transform == RandomCrop(16, foreground=0.5)
    assert crossval.slice_dataset(prepared, ids, dataclasses.replace(TINY, augment=False), training=True,
                                  seed=0).transform is None
    # a window of the whole slice is the slice: cropping to the input size changes no pixel
    window = crossval.slice_dataset(prepared, ids, dataclasses.replace(TINY, augment=False, crop_size=TINY.image_size),
                                    training=True, seed=0)
    plain = crossval.slice_dataset(prepared, ids, dataclasses.replace(TINY, augment=False), training=True, seed=0)
    assert all(torch.equal(window[i]["image"], plain[i]["image"]) for i in range(len(plain)))
