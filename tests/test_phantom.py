"""covidlib.phantom: HU per tissue, exact masks, the documented lung sides, determinism and variety."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covidlib.ct import PADDING_VALUES, make_thick_slices
from covidlib.errors import InvalidInputError
from covidlib.phantom import (DISEASES, IN_PLANE_MM_AT_512, LESION_TISSUES, SLICE_THICKNESSES_MM, TISSUES,
                              PhantomCase, make_cohort, make_phantom)

SHAPE = (24, 80, 80)
CLEAN = dict(spacing=(5.0, 4.5, 4.5), noise_hu=0.0, offset_hu=0.0)  # 5 mm / 4.5 mm: one sub-slice, no averaging
T = TISSUES

# Expected HU of each tissue without noise (design: ../shared/DESIGN.md, "The phantom").
HU_RANGES = {
    "air": (-1000.0, -1000.0), "fat": (-120.0, -80.0), "soft_tissue": (20.0, 60.0), "lung": (-900.0, -800.0),
    "vessel": (20.0, 60.0), "airway": (-1000.0, -950.0), "bone": (300.0, 1000.0),
    "ggo": (-700.0, -300.0), "consolidation": (-100.0, 50.0), "nodule": (0.0, 80.0), "effusion": (0.0, 20.0),
}


@pytest.fixture(scope="module")
def clean_cases() -> dict[str, list[PhantomCase]]:
    return {disease: [make_phantom(seed, SHAPE, disease=disease, **CLEAN) for seed in range(3 if disease == "covid" else 1)]
            for disease in DISEASES}


def voxels(cases: list[PhantomCase], name: str) -> np.ndarray:
    return np.concatenate([c.image.array[c.tissue_labels == T[name]] for c in cases])


def test_mean_hu_of_each_tissue(clean_cases: dict[str, list[PhantomCase]]) -> None:
    everything = [c for cases in clean_cases.values() for c in cases]
    for name, (lo, hi) in HU_RANGES.items():
        values = voxels(everything, name)
        assert values.size > 20, f"no {name} voxels"
        assert lo <= values.mean() <= hi, f"{name}: mean {values.mean():.1f} HU outside [{lo}, {hi}]"
    # Lesion tissues stay inside their ranges voxel by voxel, not only on average.
    for name in ("ggo", "consolidation", "effusion"):
        values = voxels(everything, name)
        assert HU_RANGES[name][0] <= values.min() and values.max() <= HU_RANGES[name][1], name
    padding = voxels(everything, "padding")
    assert set(np.unique(padding)) <= set(PADDING_VALUES)


def test_ggo_is_darker_than_vessels_and_brighter_than_lung(clean_cases: dict[str, list[PhantomCase]]) -> None:
    cases = clean_cases["covid"]
    assert voxels(cases, "lung").max() < np.median(voxels(cases, "ggo")) < voxels(cases, "vessel").min()


def test_noise_and_offset_are_what_was_asked() -> None:
    clean = make_phantom(4, SHAPE, **CLEAN)
    noisy = make_phantom(4, SHAPE, spacing=CLEAN["spacing"], noise_hu=25.0, offset_hu=-15.0)
    np.testing.assert_array_equal(clean.tissue_labels, noisy.tissue_labels)
    in_fov = clean.tissue_labels != T["padding"]
    difference = (noisy.image.array - clean.image.array)[in_fov]
    assert abs(difference.mean() - (-15.0)) < 0.5
    assert 25.0 * 0.9 < difference.std() < 25.0 * 1.1
    np.testing.assert_array_equal(noisy.image.array[~in_fov], clean.image.array[~in_fov])


@pytest.mark.parametrize("disease", DISEASES)
def test_masks_are_exact(clean_cases: dict[str, list[PhantomCase]], disease: str) -> None:
    lesion_ids = [T[name] for name in LESION_TISSUES[disease]]
    for case in clean_cases[disease]:
        for array in (case.lung_mask, case.lesion_mask, case.tissue_labels):
            assert array.dtype == np.uint8 and array.shape == case.image.shape
        np.testing.assert_array_equal(case.lesion_mask, np.isin(case.tissue_labels, lesion_ids))
        assert set(np.unique(case.lung_mask)) == {0, 1, 2}
        assert set(np.unique(case.lesion_mask)) <= {0, 1}
        # Parenchyma is always lung; effusion never is; lesions of the lung are inside the lung mask.
        assert (case.lung_mask[case.tissue_labels == T["lung"]] > 0).all()
        assert (case.lung_mask[case.tissue_labels == T["effusion"]] == 0).all()
        if disease in ("covid", "nodule"):
            assert case.lesion_mask.any() and (case.lung_mask[case.lesion_mask == 1] > 0).all()
        if disease == "healthy":
            assert not case.lesion_mask.any() and case.n_lesions == 0
        if disease == "effusion":
            assert case.lesion_mask.any()


def test_right_lung_is_label_1_on_the_image_left(clean_cases: dict[str, list[PhantomCase]]) -> None:
    for case in clean_cases["covid"]:
        x = np.arange(case.image.shape[2])
        right_x = x[np.nonzero(case.lung_mask == 1)[2]].mean()
        left_x = x[np.nonzero(case.lung_mask == 2)[2]].mean()
        middle = (case.image.shape[2] - 1) / 2
        assert right_x < middle < left_x


def test_covid_lesions_are_bilateral_and_peripheral() -> None:
    lesion_depths, lung_depths = [], []
    for seed in range(6):
        case = make_phantom(seed, SHAPE, **CLEAN)
        lungs_hit = set(np.unique(case.lung_mask[case.lesion_mask == 1]).tolist())
        assert lungs_hit == {1, 2}, f"seed {seed}: lesions only in lung(s) {lungs_hit}"
        depth = ndimage.distance_transform_edt(case.lung_mask > 0, sampling=case.image.spacing)
        lesion_depths.append(depth[case.lesion_mask == 1])
        lung_depths.append(depth[case.lung_mask > 0])
    # Lesions placed uniformly in the lungs would sit as deep as the lung on average (ratio 1).
    ratio = np.concatenate(lesion_depths).mean() / np.concatenate(lung_depths).mean()
    assert ratio < 0.75, f"lesions are {ratio:.2f} times as deep as the lung on average: not peripheral"


def test_same_seed_same_case_and_other_seed_other_case() -> None:
    a, b, c = make_phantom(7, SHAPE), make_phantom(7, SHAPE), make_phantom(8, SHAPE)
    for name in ("lung_mask", "lesion_mask", "tissue_labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.image.array, b.image.array)
    assert a.image.spacing == b.image.spacing and a.acquisition == b.acquisition
    assert not np.array_equal(a.lesion_mask, c.lesion_mask)


def test_acquisition_and_lesions_vary_across_seeds() -> None:
    cases = [make_phantom(seed, (8, 48, 48)) for seed in range(12)]
    thickness = {c.image.spacing[0] for c in cases}
    pixels = [c.image.spacing[2] for c in cases]
    assert len(thickness) >= 4 and thickness <= set(SLICE_THICKNESSES_MM)
    lo, hi = (v * 512 / 48 for v in IN_PLANE_MM_AT_512)
    assert len(set(pixels)) == 12 and lo <= min(pixels) and max(pixels) <= hi
    assert len({c.n_lesions for c in cases}) >= 4
    assert len({int(c.lesion_mask.sum()) for c in cases}) >= 10
    noise = [c.acquisition["noise_hu"] for c in cases]
    assert 10.0 <= min(noise) and max(noise) <= 40.0 and len(set(noise)) == 12
    assert {c.acquisition["padding_hu"] for c in cases} == set(PADDING_VALUES)
    assert any(c.acquisition["offset_hu"] != 0 for c in cases) and any(c.acquisition["offset_hu"] == 0 for c in cases)


def test_thick_case_is_the_average_of_thin_sub_slices() -> None:
    """The same seed at 8 mm equals the same patient at 4 mm averaged two by two."""
    thin = make_phantom(3, (16, 64, 64), spacing=(4.0, 5.0, 5.0), noise_hu=0.0, offset_hu=0.0)
    thick = make_phantom(3, (8, 64, 64), spacing=(8.0, 5.0, 5.0), noise_hu=0.0, offset_hu=0.0)
    assert thick.acquisition["sub_slices"] == 2 and thin.acquisition["sub_slices"] == 1
    averaged = make_thick_slices(thin.image, 8.0)
    np.testing.assert_allclose(thick.image.array, averaged.array, atol=1e-3)
    assert thick.image.origin == pytest.approx(averaged.origin)
    # Partial volume: some thick voxels hold values no thin voxel of a single tissue has.
    assert not np.isin(thick.image.array, thin.image.array).all()


def test_make_cohort_healthy_fraction_and_determinism() -> None:
    cohort = make_cohort(5, seed=2, shape=(8, 40, 40), healthy_fraction=0.4)
    again = make_cohort(5, seed=2, shape=(8, 40, 40), healthy_fraction=0.4)
    assert [c.disease for c in cohort].count("healthy") == 2
    assert all(not c.lesion_mask.any() for c in cohort if c.disease == "healthy")
    assert [c.seed for c in cohort] == [c.seed for c in again] and len({c.seed for c in cohort}) == 5
    np.testing.assert_array_equal(cohort[3].image.array, again[3].image.array)


@pytest.mark.parametrize("kwargs, message", [
    (dict(disease="flu"), "disease"),
    (dict(shape=(8, 8, 8)), "shape"),
    (dict(seed=-1), "seed"),
    (dict(spacing=(1.0, 0.0, 1.0)), "spacing"),
    (dict(noise_hu=-5.0), "noise_hu"),
])
def test_bad_arguments(kwargs: dict, message: str) -> None:
    options = dict(seed=0, shape=(4, 32, 32)) | kwargs
    with pytest.raises(InvalidInputError, match=message):
        make_phantom(**options)
