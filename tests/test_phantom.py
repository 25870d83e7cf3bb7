"""covidlib.phantom: HU per tissue, exact masks, the documented lung sides, determinism and variety."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covidlib.ct import PADDING_VALUES, make_thick_slices
from covidlib.errors import InvalidInputError
from covidlib.phantom import (DISEASES, GREY_BINS, IN_PLANE_MM_AT_512, LESION_TISSUES, SLICE_THICKNESSES_MM, TISSUE_HU,
                              TISSUES, PhantomCase, draw_from_quantiles, grey_histogram, grey_regions, load_calibration,
                              make_cohort, make_phantom, reconstruction_noise, semiseg_view)

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


# ---------------------------------------------------------------------------------------------
# Calibration tables, CT-like noise, fissures and the real-like (COVID-SemiSeg) view


def test_calibration_tables_are_packaged_numbers_with_provenance() -> None:
    tables = load_calibration()
    assert tables["provenance"]["n_slices"] == 50 and tables["provenance"]["script"] == "benchmarks/calibrate_phantom.py"
    histograms = tables["grey_histograms"]
    assert len(histograms["bin_edges"]) == 33
    for name in ("lung", "body", "lesion"):
        assert len(histograms[name]) == 32 and abs(sum(histograms[name]) - 1.0) < 1e-3
    # Lungs are darker than lesions, lesions darker than the body: the order any chest CT window keeps.
    medians = histograms["medians"]
    assert medians["lung"] < medians["lesion"] < medians["body"]

    def longest_list(value: object) -> int:
        if isinstance(value, dict):
            return max((longest_list(v) for v in value.values()), default=0)
        return len(value) if isinstance(value, list) else 0

    assert longest_list(tables) <= 33  # histograms and quantiles only: nothing image-sized
    assert load_calibration() is not load_calibration()  # a fresh dict each time: callers may edit theirs


def test_draw_from_quantiles_inverts_the_table() -> None:
    table = {"q10": 1.0, "q25": 2.0, "q50": 4.0, "q75": 8.0, "q90": 9.0, "mean": 100.0, "n": 7}
    draws = draw_from_quantiles(np.random.default_rng(0), table, 200_000)
    assert draws.min() == 1.0 and draws.max() == 9.0  # tails collapse onto q10 and q90
    # Linear between the quantiles: P(x <= 3) = 0.25 + 0.25 * (3 - 2) / (4 - 2) = 0.375.
    assert abs((draws <= 3.0).mean() - 0.375) < 0.005
    assert abs(np.median(draws) - 4.0) < 0.02


def test_grey_regions_erode_two_pixels_and_split_body_at_the_grey_threshold() -> None:
    """Hand-drawn rectangles: eroding a rectangle twice by the cross takes 2 pixels off each side;
    body is the non-lung pixels at LUNG_GREY_THRESHOLD (90) or brighter, lungs never, however bright."""
    grey = np.full((9, 15), 89, np.uint8)  # just darker than the threshold: not body
    lungs = np.zeros((9, 15), bool)
    lungs[1:8, 1:8] = True
    grey[1:8, 1:8] = 120  # bright lungs are still not body
    lesion = np.zeros((9, 15), bool)
    lesion[1:8, 7] = True  # the lungs' last column
    grey[1:8, 7] = 200
    grey[1:8, 9:14] = 90  # exactly the threshold: body
    regions = grey_regions(grey, lungs, lesion)
    assert set(regions) == {"lung", "body", "lesion"}
    # lungs minus lesion: rows 1..7, columns 1..6 -> rows 3..5, columns 3..4
    expected_lung = np.zeros((9, 15), bool)
    expected_lung[3:6, 3:5] = True
    # body: rows 1..7, columns 9..13 -> rows 3..5, column 11
    expected_body = np.zeros((9, 15), bool)
    expected_body[3:6, 11] = True
    np.testing.assert_array_equal(regions["lung"], expected_lung)
    np.testing.assert_array_equal(regions["body"], expected_body)
    np.testing.assert_array_equal(regions["lesion"], lesion)
    nothing = grey_regions(np.zeros((9, 15), np.uint8), np.zeros((9, 15), bool), np.zeros((9, 15), bool))
    assert not any(mask.any() for mask in nothing.values())


def test_grey_histogram_shares_in_8_level_bins() -> None:
    """32 bins of 8 grey levels over 0..256, 255 in the last; shares, and zeros (not NaN) when empty."""
    shares = grey_histogram(np.array([[0, 7, 8], [100, 250, 255]], np.uint8))
    expected = np.zeros(GREY_BINS)
    expected[[0, 1, 12, 31]] = [2 / 6, 1 / 6, 1 / 6, 2 / 6]  # 0 and 7 | 8 | 100 // 8 = 12 | 250, 255
    assert GREY_BINS == 32
    np.testing.assert_allclose(shares, expected)
    np.testing.assert_array_equal(grey_histogram(np.array([], np.uint8)), np.zeros(32))


def test_reconstruction_noise_has_the_asked_sd_and_a_ramp_shaped_spectrum() -> None:
    noise = reconstruction_noise(np.random.default_rng(1), (16, 96, 96), (0.7, 0.7), 20.0, 0.5)
    assert noise.dtype == np.float32 and abs(noise.std() - 20.0) < 0.4 and abs(noise.mean()) < 0.2
    power = (np.abs(np.fft.fft2(noise)) ** 2).mean(axis=0)
    radial = np.hypot(*np.meshgrid(np.fft.fftfreq(96, 0.7), np.fft.fftfreq(96, 0.7), indexing="ij"))
    low, peak = power[(radial > 0) & (radial < 0.1)].mean(), power[(radial > 0.3) & (radial < 0.4)].mean()
    # Filtered back-projection: no power at zero frequency, little at low, most at mid frequencies
    # (f exp(-(f/0.5)^2) peaks at 0.35 cycles/mm), unlike white noise's flat spectrum.
    assert power[0, 0] < 1e-6 * power.mean() and low < 0.5 * peak


def test_fissures_are_thin_sheets_between_lung_and_soft_tissue(clean_cases: dict[str, list[PhantomCase]]) -> None:
    fissure = voxels(clean_cases["covid"], "fissure")
    assert fissure.size > 20
    assert voxels(clean_cases["covid"], "lung").mean() < fissure.min() and fissure.max() <= TISSUE_HU["soft_tissue"] + 1
    for case in clean_cases["covid"]:
        sheet = case.tissue_labels == T["fissure"]
        assert (case.lung_mask[sheet] > 0).all()
        assert sheet.sum() < 0.1 * (case.lung_mask > 0).sum()  # one voxel thick, even on this 5 x 4.5 mm grid


def test_semiseg_view_windows_crops_and_turns_with_exact_masks() -> None:
    case = make_phantom(2, (12, 96, 96))
    z = int(np.argmax(case.lesion_mask.sum(axis=(1, 2))))
    view = semiseg_view(case, z, 5)
    y0, y1, x0, x1 = view.crop
    assert view.image.dtype == np.uint8 and view.image.shape == view.lesion_mask.shape == view.lung_mask.shape
    np.testing.assert_array_equal(view.lesion_mask, np.rot90(case.lesion_mask[z, y0:y1, x0:x1], view.rotation))
    np.testing.assert_array_equal(view.lung_mask, np.rot90(case.lung_mask[z, y0:y1, x0:x1], view.rotation))
    low, high = view.window
    expected = np.clip(np.rint((case.image.array[z, y0:y1, x0:x1] - low) * 255.0 / (high - low)), 0, 255)
    np.testing.assert_array_equal(view.image, np.rot90(expected, view.rotation))
    # Tightly cropped: every lung pixel of the slice is in the view, and the lungs fill much of it.
    assert view.lung_mask.astype(bool).sum() == (case.lung_mask[z] > 0).sum()
    assert 0.3 < (view.lung_mask > 0).mean() < 0.8
    with pytest.raises(InvalidInputError, match="z=12"):
        semiseg_view(case, 12)


def test_semiseg_view_draws_turns_in_the_real_shares() -> None:
    case = make_phantom(0, (4, 48, 48))
    calibration = load_calibration()
    turns = [semiseg_view(case, 2, seed).rotation for seed in range(400)]
    assert set(turns) <= {0, 1, 3}
    turned = np.mean([t != 0 for t in turns])
    assert abs(turned - calibration["orientation"]["lungs_above_and_below_share"]) < 0.05


def test_covid_lesion_burden_in_the_view_matches_the_real_slices() -> None:
    """The slice with most lesion: its lesion share of the lung is on the real slices' scale."""
    shares = []
    for seed in range(16):
        case = make_phantom(seed, (12, 96, 96))
        z = int(np.argmax(case.lesion_mask.sum(axis=(1, 2))))
        shares.append(case.lesion_mask[z].sum() / max(1, (case.lung_mask[z] > 0).sum()))
    real = load_calibration()["lesions"]["lesion_share_of_lung"]
    assert real["q25"] < np.median(shares) < real["q75"], f"median lesion share {np.median(shares):.3f}, real {real}"


def test_phantom_dataset_semiseg_view_gives_8bit_slices() -> None:
    from covidlib.datasets import get_dataset

    dataset = get_dataset("phantom", n=2, shape=(8, 64, 64), seed=3, view="semiseg")
    case = dataset.load("phantom_001")
    assert case.image.shape[0] == 1 and case.meta["intensity"] == "8bit"
    assert case.image.array.min() >= 0 and case.image.array.max() <= 255
    assert case.lesion_mask.shape == case.image.shape and case.lesion_mask.any()
    again = dataset.load("phantom_001")
    np.testing.assert_array_equal(case.image.array, again.image.array)
    with pytest.raises(InvalidInputError, match="view"):
        get_dataset("phantom", view="sideways")
