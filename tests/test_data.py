"""Tests for covidlib.data: slice datasets, volume-level splits and reproducible loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidlib import datasets, phantom, preprocess
from covidlib.augment import RandomRotation, default_augmentation
from covidlib.data import (
    SliceDataset,
    fit_slice,
    kfold_volumes,
    report_split,
    seeded_loader,
    split_volumes,
)
from covidlib.errors import InvalidInputError


def make_volumes(n: int = 3, depth: int = 8, lesion_slices: tuple[int, ...] = (2, 3, 4), seed: int = 0):
    """Tiny (image, lesion mask) volumes: lesions only on ``lesion_slices`` of each volume."""
    rng = np.random.default_rng(seed)
    volumes = []
    for _ in range(n):
        image = rng.standard_normal((depth, 12, 14)).astype(np.float32)
        mask = np.zeros((depth, 12, 14), dtype=np.uint8)
        for z in lesion_slices:
            mask[z, 3:7, 4:9] = 1
        volumes.append((image, mask))
    return volumes


IDS = [f"vol{i:02d}" for i in range(23)]


# --- splits -----------------------------------------------------------------------------

def test_split_volumes_is_disjoint_complete_and_seeded():
    trainval, test = split_volumes(IDS, n_test=6, seed=3)
    assert len(test) == 6 and not set(trainval) & set(test)
    assert sorted(trainval + test) == sorted(IDS)
    assert (trainval, test) == split_volumes(IDS, n_test=6, seed=3)
    assert test != split_volumes(IDS, n_test=6, seed=4)[1]
    assert trainval == [c for c in IDS if c in trainval]  # input order kept


def test_kfold_validation_sets_partition_the_cases():
    folds = kfold_volumes(IDS, k=5, seed=1)
    assert len(folds) == 5
    validation = [val for _, val in folds]
    assert sorted(c for val in validation for c in val) == sorted(IDS)  # each case validated exactly once
    assert {len(val) for val in validation} <= {4, 5}
    for train, val in folds:
        assert not set(train) & set(val) and sorted(train + val) == sorted(IDS)
    assert folds == kfold_volumes(IDS, k=5, seed=1)
    assert folds != kfold_volumes(IDS, k=5, seed=2)


def test_report_splits_follow_section_5_2_1():
    ids = [f"c{i}" for i in range(70)]  # 20 COVID-19-CT-Seg + 50 MosMedData in the report
    small = report_split(ids, "10-40", seed=0)
    normal = report_split(ids, "40-10", seed=0)
    assert (len(small.train), len(small.val), len(small.test)) == (10, 40, 20)
    assert (len(normal.train), len(normal.val), len(normal.test)) == (40, 10, 20)
    assert small.test == normal.test
    assert small.train == normal.val and sorted(small.val) == sorted(normal.train)
    for split in (small, normal):
        assert not set(split.train) & set(split.val) and not set(split.test) & set(split.train + split.val)
        assert sorted(split.train + split.val + split.test) == sorted(ids)
    # Over the five folds, the single fold of "10-40" covers the 50 non-test volumes once each.
    singles = [c for fold in range(5) for c in report_split(ids, "10-40", seed=0, fold=fold).train]
    assert sorted(singles) == sorted(set(ids) - set(small.test))


def test_report_split_scales_to_a_small_cohort():
    split = report_split([f"p{i}" for i in range(14)], "10-40", seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (2, 8, 4)  # 14 * 20/70 = 4 test


def test_split_bad_input():
    with pytest.raises(InvalidInputError, match="unique"):
        split_volumes(["a", "a", "b"], 1, 0)
    with pytest.raises(InvalidInputError, match="n_test"):
        split_volumes(IDS, len(IDS), 0)
    with pytest.raises(InvalidInputError, match="k must be"):
        kfold_volumes(IDS, 1, 0)
    with pytest.raises(InvalidInputError, match="split name"):
        report_split(IDS, "10-10", 0)


def test_no_volume_on_both_sides_of_a_slice_split():
    volumes = make_volumes(n=6)
    ids = [f"v{i}" for i in range(6)]
    trainval, test = split_volumes(ids, 2, seed=0)
    by_id = dict(zip(ids, volumes))
    train_ds = SliceDataset([by_id[c] for c in trainval], case_ids=trainval)
    test_ds = SliceDataset([by_id[c] for c in test], case_ids=test)
    train_cases = {train_ds[i]["case_id"] for i in range(len(train_ds))}
    test_cases = {test_ds[i]["case_id"] for i in range(len(test_ds))}
    assert train_cases == set(trainval) and test_cases == set(test)
    assert not train_cases & test_cases


# --- SliceDataset -----------------------------------------------------------------------

def test_items_are_the_source_slices():
    volumes = make_volumes(n=2)
    ds = SliceDataset(volumes)
    assert len(ds) == 2 * 8
    item = ds[10]
    assert item["case_id"] == "case001" and item["slice_index"] == 2
    assert item["image"].shape == (1, 12, 14) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (12, 14) and item["mask"].dtype == torch.int64
    np.testing.assert_array_equal(item["image"][0].numpy(), volumes[1][0][2])
    np.testing.assert_array_equal(item["mask"].numpy(), volumes[1][1][2])


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_empty_fraction_is_honoured(fraction):
    volumes = make_volumes(n=3)  # 3 x 3 lesion slices, 3 x 5 empty slices
    ds = SliceDataset(volumes, empty_fraction=fraction, seed=2)
    flags = [bool(ds[i]["mask"].any()) for i in range(len(ds))]
    assert sum(flags) == 9  # every slice with infection is kept
    assert len(flags) - sum(flags) == int(np.floor(fraction * 15 + 0.5))
    assert ds.num_empty_available == 15 and ds.num_lesion_slices == 9


def test_empty_slice_choice_is_seeded():
    volumes = make_volumes(n=4)
    picks = [SliceDataset(volumes, empty_fraction=0.5, seed=s).slices for s in (1, 1, 2)]
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_pad_crop_centres_and_resize_keeps_masks_binary():
    image = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:4] = 1
    padded, padded_mask = fit_slice(image, mask, (6, 4))
    expected = np.zeros((6, 4), np.float32)
    expected[1:5] = image[:, 1:5]  # pad 1 row above and below, crop 1 column each side
    np.testing.assert_array_equal(padded, expected)
    assert padded_mask.sum() == mask.sum()
    resized, resized_mask = fit_slice(image, mask, (8, 12), mode="resize")
    assert resized.shape == (8, 12) and set(np.unique(resized_mask).tolist()) == {0, 1}
    assert resized_mask.sum() == 4 * mask.sum()  # an exact 2x upscale repeats each mask pixel 2 x 2
    ds = SliceDataset(make_volumes(n=1), output_size=16)
    assert ds[0]["image"].shape == (1, 16, 16)


def test_augmentation_is_seeded_per_item_and_epoch():
    volumes = make_volumes(n=2)
    ds = SliceDataset(volumes, transform=default_augmentation(p=1.0), seed=5)
    first, again = ds[3], ds[3]
    assert torch.equal(first["image"], again["image"])
    raw_image, raw_mask = ds.raw_slice(3)
    expected_image, expected_mask = ds.augmentation_for(3)(raw_image, raw_mask)
    np.testing.assert_array_equal(first["image"][0].numpy(), expected_image)
    np.testing.assert_array_equal(first["mask"].numpy(), expected_mask)
    assert not torch.equal(ds[4]["image"][0], torch.from_numpy(ds.augmentation_for(3)(*ds.raw_slice(4))[0]))
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["image"], first["image"])
    ds.set_epoch(0)
    assert torch.equal(ds[3]["image"], first["image"])
    assert set(np.unique(ds[3]["mask"].numpy()).tolist()) <= {0, 1}


def test_dataset_accepts_case_objects_and_volumes():
    class FakeVolume:
        def __init__(self, array):
            self.array = array

    class FakeCase:
        def __init__(self, case_id, image, lesion_mask):
            self.case_id, self.image, self.lesion_mask = case_id, image, lesion_mask

    image, mask = make_volumes(n=1)[0]
    ds = SliceDataset([FakeCase("slice7", FakeVolume(image[:1]), mask[0])])
    assert len(ds) == 1 and ds[0]["case_id"] == "slice7" and ds[0]["slice_index"] == 0


def test_dataset_bad_input():
    image, mask = make_volumes(n=1)[0]
    with pytest.raises(InvalidInputError, match="lesion mask shape"):
        SliceDataset([(image, mask[:, :-1])])
    with pytest.raises(InvalidInputError, match="binary"):
        SliceDataset([(image, mask * 255)])
    with pytest.raises(InvalidInputError, match="dtype"):
        SliceDataset([((image * 100).astype(np.int16), mask)])
    with pytest.raises(InvalidInputError, match="NaN"):
        SliceDataset([(np.full_like(image, np.nan), mask)])
    with pytest.raises(InvalidInputError, match="twice"):
        SliceDataset([(image, mask), (image, mask)], case_ids=["a", "a"])
    with pytest.raises(InvalidInputError, match="empty_fraction"):
        SliceDataset([(image, mask)], empty_fraction=1.5)

    class Unlabelled:
        case_id, lesion_mask = "u1", None

    unlabelled = Unlabelled()
    unlabelled.image = image
    with pytest.raises(InvalidInputError, match="u1"):
        SliceDataset([unlabelled])


# --- loaders ----------------------------------------------------------------------------

def _epochs(loader, dataset, epochs=2):
    seen = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for batch in loader:
            seen.append((list(batch["case_id"]), batch["slice_index"].tolist(), batch["image"].clone()))
    return seen


def test_loader_is_reproducible_across_runs():
    def run(seed):
        ds = SliceDataset(make_volumes(n=3), empty_fraction=0.5, transform=RandomRotation(), seed=0)
        return _epochs(seeded_loader(ds, batch_size=4, shuffle=True, seed=seed), ds)

    first, second, other = run(11), run(11), run(12)
    assert [(c, s) for c, s, _ in first] == [(c, s) for c, s, _ in second]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(first, second))
    assert [(c, s) for c, s, _ in first] != [(c, s) for c, s, _ in other]
    # The two epochs are shuffled differently.
    half = len(first) // 2
    assert [s for _, s, _ in first[:half]] != [s for _, s, _ in first[half:]]


def test_worker_processes_do_not_change_the_batches():
    ds = SliceDataset(make_volumes(n=2), transform=default_augmentation(p=1.0), seed=0)
    in_process = _epochs(seeded_loader(ds, 4, shuffle=True, seed=3), ds, epochs=1)
    with_workers = _epochs(seeded_loader(ds, 4, shuffle=True, seed=3, num_workers=2), ds, epochs=1)
    assert [(c, s) for c, s, _ in in_process] == [(c, s) for c, s, _ in with_workers]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(in_process, with_workers))


# --- with the library's own cases ---------------------------------------------------------

def test_slices_of_a_preprocessed_phantom():
    generated = phantom.make_phantom(3, (12, 64, 64))
    case = datasets.Case("ph3", generated.image, generated.lung_mask, generated.lesion_mask, {"intensity": "hu"})
    prepared = preprocess.preprocess_case(case, lung_method="given")
    ds = SliceDataset([prepared], empty_fraction=1.0, output_size=(96, 128))
    lesion_per_slice = prepared.lesion_mask.reshape(len(prepared.lesion_mask), -1).any(axis=1)
    assert len(ds) == len(prepared.image) and ds.num_lesion_slices == int(lesion_per_slice.sum())
    item = ds[int(np.argmax(lesion_per_slice))]
    assert item["case_id"] == "ph3" and item["image"].shape == (1, 96, 128) and item["mask"].any()


@pytest.mark.realdata
def test_covid_semiseg_five_fold_by_slice():
    from test_datasets import REAL_SEMISEG as root

    if not root.is_dir():
        pytest.skip(f"COVID-SemiSeg not found at {root}")
    from covidlib.datasets import get_dataset
    from covidlib.preprocess import normalise_image
    import dataclasses

    source = get_dataset("covid-semiseg", root)
    ids = source.case_ids("train")
    folds = kfold_volumes(ids, k=5, seed=0)
    assert len(ids) == 50 and [len(val) for _, val in folds] == [10] * 5

    def prepare(case):
        return dataclasses.replace(case, image=case.image.with_array(normalise_image(case.image.array, case.case_id)))

    ds = SliceDataset.from_dataset(source, folds[0][1][:3], prepare=prepare, output_size=256, resize_mode="resize")
    batch = next(iter(seeded_loader(ds, batch_size=3, shuffle=False, seed=0)))
    assert batch["image"].shape == (3, 1, 256, 256) and set(batch["mask"].unique().tolist()) <= {0, 1}
    assert abs(float(batch["image"].mean())) < 0.2  # per-image z-score survives the resize
