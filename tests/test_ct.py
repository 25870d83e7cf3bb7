"""covidlib.ct: windows, HU rescaling, padding, the HU sanity check and thick slabs, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from covidlib.ct import (WINDOWS, check_hu, fill_padding, hu_summary, majority_slabs, make_thick_slices,
                         rescale_to_hu, resolve_window, window_hu, window_label)
from covidlib.errors import InvalidInputError
from covidlib.io import Volume


def test_lung_window_is_the_reports() -> None:
    assert WINDOWS["lung"] == (-1250.0, 250.0)
    assert window_label("lung") == "lung window [-1250, 250] HU"


def test_window_hu_hand_values() -> None:
    hu = np.array([-3024.0, -1250.0, -1000.0, -500.0, 0.0, 250.0, 1000.0])
    # Lung window: (hu + 1250) / 1500, clipped to [0, 1].
    expected = np.array([0.0, 0.0, 250 / 1500, 0.5, 1250 / 1500, 1.0, 1.0], np.float32)
    out = window_hu(hu, "lung")
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # Mediastinal [-160, 240]: 40 HU (soft tissue) sits mid-grey.
    np.testing.assert_allclose(window_hu(np.array([-160.0, 40.0, 140.0, 240.0]), "mediastinal"), [0.0, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(window_hu(np.array([[-100.0, 0.0, 50.0]]), (-100, 100)), [[0.0, 0.5, 0.75]])


def test_window_hu_accepts_volume_and_rejects_bad_windows() -> None:
    volume = Volume(np.full((1, 2, 2), -500.0, np.float32), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(window_hu(volume), 0.5)
    for bad in ("brain", (100, -100), (0, np.inf), "x"):
        with pytest.raises(InvalidInputError, match="window"):
            resolve_window(bad)


def test_rescale_to_hu_and_padding() -> None:
    raw = np.array([0, 1024, 2048, -2000], dtype=np.int16)
    np.testing.assert_allclose(rescale_to_hu(raw, 1.0, -1024.0), [-1024.0, 0.0, 1024.0, -3024.0])
    np.testing.assert_allclose(rescale_to_hu(raw, 0.5, -10.0)[:3], [-10.0, 502.0, 1014.0])
    filled = rescale_to_hu(raw, 1.0, -1024.0, padding_value=-2000)
    np.testing.assert_allclose(filled, [-1024.0, 0.0, 1024.0, -1000.0])
    masked = rescale_to_hu(raw, 1.0, -1024.0, padding_value=-2000, fill_hu=None)
    assert np.isnan(masked[3]) and np.isfinite(masked[:3]).all()
    with pytest.raises(InvalidInputError, match="slope"):
        rescale_to_hu(raw, 0.0, 0.0)


def test_fill_padding_replaces_only_out_of_fov_values() -> None:
    hu = np.array([-3024.0, -2048.0, -1024.0, -1000.0, 40.0])
    np.testing.assert_allclose(fill_padding(hu), [-1000.0, -1000.0, -1024.0, -1000.0, 40.0])


def test_check_hu_accepts_ct_and_rejects_pictures() -> None:
    ct = np.full((4, 8, 8), 40.0, np.float32)
    ct[:, :4] = -1000.0
    check_hu(ct, "ct")
    with pytest.raises(InvalidInputError, match="png: .*8-bit"):
        check_hu(np.random.default_rng(0).integers(0, 256, (4, 8, 8)).astype(np.uint8), "png")
    with pytest.raises(InvalidInputError, match="normalised"):
        check_hu((ct - ct.mean()) / ct.std() * 0.1, "z")
    with pytest.raises(InvalidInputError, match="rescale intercept"):
        check_hu(ct + 1024.0, "raw")
    with pytest.raises(InvalidInputError, match="NaN"):
        check_hu(np.where(ct > 0, np.nan, ct), "nan")
    with pytest.raises(InvalidInputError, match="below -500"):
        check_hu(np.concatenate([np.full(990, 40.0), np.full(10, -1000.0)]), "few-air")
    for padding in (-1024.0, -3024.0):  # a volume that is all padding is not a CT
        with pytest.raises(InvalidInputError, match=rf"blank\.nii: every voxel is {padding:g}: a constant image"):
            check_hu(np.full((4, 8, 8), padding, np.float32), "blank.nii")


def test_thick_slabs_average_consecutive_slices_by_hand() -> None:
    array = np.arange(6 * 2 * 2, dtype=np.float32).reshape(6, 2, 2)
    volume = Volume(array, (1.25, 0.7, 0.7), origin=(1.0, 2.0, 3.0), source="thin")
    thick = make_thick_slices(volume, 2.5)
    assert thick.shape == (3, 2, 2) and thick.spacing == (2.5, 0.7, 0.7)
    # Slab k averages slices 2k and 2k+1: voxel (k, y, x) = ((8k + 2y + x) + (8k + 4 + 2y + x)) / 2.
    k, y, x = np.meshgrid(np.arange(3), np.arange(2), np.arange(2), indexing="ij")
    np.testing.assert_allclose(thick.array, 8 * k + 2 + 2 * y + x)
    # The first slab is centred half a thin slice above the first thin slice.
    assert thick.origin == pytest.approx((1.0, 2.0, 3.0 + 0.625))
    # A trailing partial slab is dropped: 7 slices at 3 per slab make 2 slabs.
    seven = Volume(np.ones((7, 2, 2), np.float32), (1.0, 1.0, 1.0))
    assert make_thick_slices(seven, 3.0).shape == (2, 2, 2)


def test_thick_slabs_of_a_boolean_mask_take_the_majority() -> None:
    mask = np.zeros((8, 1, 2), bool)
    mask[:3, 0, 0] = True  # 3 of the first 4 slices: the first slab is lesion there
    mask[4, 0, 1] = True  # 1 of the next 4: the second slab is not
    thick = make_thick_slices(Volume(mask, (1.0, 1.0, 1.0)), 4.0)
    assert thick.array.dtype == np.bool_
    np.testing.assert_array_equal(thick.array, [[[True, False]], [[False, False]]])


def test_thick_slab_origin_follows_a_flipped_direction() -> None:
    flipped = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    volume = Volume(np.zeros((4, 2, 2), np.float32), (2.0, 1.0, 1.0), origin=(0.0, 0.0, 100.0), direction=flipped)
    assert make_thick_slices(volume, 8.0).origin == pytest.approx((0.0, 0.0, 97.0))


def test_thick_slabs_of_labels_take_the_majority() -> None:
    labels = np.array([1, 1, 2, 3, 3, 2, 0, 5], np.uint8).reshape(8, 1, 1)
    out = majority_slabs(labels, 4)
    assert out.dtype == np.uint8 and out.ravel().tolist() == [1, 0]  # [1,1,2,3] -> 1; [3,2,0,5] tie -> smallest
    volume = Volume(labels, (1.0, 1.0, 1.0))
    assert make_thick_slices(volume, 2.0).array.ravel().tolist() == [1, 2, 2, 0]


def test_thick_slices_reject_non_multiples() -> None:
    volume = Volume(np.zeros((6, 2, 2), np.float32), (1.25, 1.0, 1.0), source="scan.nii")
    with pytest.raises(InvalidInputError, match="scan.nii: .*whole multiple"):
        make_thick_slices(volume, 3.0)
    with pytest.raises(InvalidInputError, match="positive"):
        make_thick_slices(volume, -2.5)
    with pytest.raises(InvalidInputError, match="thicker than the volume"):
        make_thick_slices(volume, 10.0)


def test_hu_summary_by_label() -> None:
    image = np.array([[[-1000.0, -1000.0, 40.0, 50.0]]])
    labels = np.array([[[1, 1, 4, 4]]], np.uint8)
    summary = hu_summary(image, labels, {"air": 1, "soft": 4, "bone": 5})
    assert summary["air"] == {"mean": -1000.0, "sd": 0.0, "voxels": 2}
    assert summary["soft"]["mean"] == 45.0 and "bone" not in summary
