"""Tests for covidlib.augment: identities, references (scipy, np.rot90, hand values), seeding, mixup."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from covidlib.augment import (
    Chain,
    Compose,
    ElasticDeformation,
    GammaCorrection,
    GaussianNoise,
    Identity,
    Mixup,
    RandomElasticDeformation,
    RandomGamma,
    RandomNoise,
    RandomRotation,
    Rotation,
    as_generator,
    default_augmentation,
    mixup,
    sample_mixup,
)
from covidlib.errors import InvalidInputError


@pytest.fixture
def slice_and_mask() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((24, 30)).astype(np.float32)
    mask = np.zeros((24, 30), dtype=np.int64)
    mask[6:15, 8:20] = 1
    return image, mask


# --- identities -------------------------------------------------------------------------

def test_zero_rotation_and_zero_elastic_are_identity(slice_and_mask):
    image, mask = slice_and_mask
    for transform in (Rotation(0.0), ElasticDeformation(np.zeros((2, 5, 5))), Identity(), Chain()):
        out_image, out_mask = transform(image, mask)
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_mask, mask)


def test_resampling_path_with_vanishing_parameters_is_identity(slice_and_mask):
    # Goes through grid_sample (no shortcut): checks the pixel <-> grid coordinate mapping.
    image, mask = slice_and_mask
    for transform in (Rotation(1e-9), ElasticDeformation(np.full((2, 4, 4), 1e-9))):
        out_image, out_mask = transform(image, mask)
        np.testing.assert_allclose(out_image, image, rtol=1e-5, atol=1e-5)  # float32 grid arithmetic
        np.testing.assert_array_equal(out_mask, mask)


# --- rotation against independent references -------------------------------------------

@pytest.mark.parametrize("angle", [2.5, -3.0, 37.0])
def test_rotation_matches_scipy_bilinear(angle):
    image = np.random.default_rng(1).random((9, 11))
    ours, _ = Rotation(angle)(image)
    # grid_sample's zero padding interpolates towards 0 beyond the edge: scipy's 'grid-constant'.
    reference = ndi.rotate(image, angle, reshape=False, order=1, mode="grid-constant", cval=0.0)
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_rotation_by_90_degrees_is_rot90_for_image_and_mask():
    rng = np.random.default_rng(2)
    image = rng.random((7, 7))
    mask = (rng.random((7, 7)) > 0.5).astype(np.uint8)
    out_image, out_mask = Rotation(90.0)(image, mask)
    np.testing.assert_allclose(out_image, np.rot90(image), atol=1e-12)
    np.testing.assert_array_equal(out_mask, np.rot90(mask))


def test_rotation_fill_value_outside_the_slice():
    image = np.full((8, 8), 5.0)
    out, _ = Rotation(45.0, fill=-1.0)(image)
    assert out[0, 0] == pytest.approx(-1.0)  # a corner comes from outside the slice
    assert out[4, 4] == pytest.approx(5.0)


# --- masks ------------------------------------------------------------------------------

@pytest.mark.parametrize("transform", [Rotation(2.7), RandomElasticDeformation(max_displacement=2.0).sample(5)])
def test_label_masks_stay_binary_and_keep_dtype(slice_and_mask, transform):
    image, mask = slice_and_mask
    _, out_mask = transform(image, mask)
    assert out_mask.dtype == mask.dtype
    assert set(np.unique(out_mask).tolist()) <= {0, 1}
    assert 0.7 < out_mask.sum() / mask.sum() < 1.3  # a small transform moves the lesion, does not erase it


def test_soft_masks_are_interpolated_linearly(slice_and_mask):
    image, mask = slice_and_mask
    soft = mask.astype(np.float32)
    _, out = Rotation(2.7)(image, soft)
    assert out.dtype == np.float32
    assert ((out > 0.01) & (out < 0.99)).any()  # border pixels become fractional
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_elastic_constant_field_is_a_shift():
    # A uniform displacement of +1 row: output row y reads input row y + 1.
    image = np.arange(6 * 5, dtype=np.float64).reshape(6, 5)
    control = np.zeros((2, 3, 3))
    control[0] = 1.0
    out, _ = ElasticDeformation(control)(image)
    np.testing.assert_allclose(out[:-1], image[1:], atol=1e-12)
    np.testing.assert_allclose(out[-1], 0.0, atol=1e-12)  # read from outside: fill


def test_elastic_dense_field_passes_through_control_points():
    control = np.random.default_rng(3).uniform(-2, 2, size=(2, 4, 5))
    field = ElasticDeformation(control).dense_field(13, 17)  # nodes at every 4th pixel
    np.testing.assert_allclose(field.numpy()[:, ::4, ::4], control, atol=1e-12)


def test_elastic_separable_field_equals_torch_bicubic():
    control = np.random.default_rng(4).uniform(-3, 3, size=(2, 7, 6))
    reference = torch.nn.functional.interpolate(torch.from_numpy(control)[None], size=(40, 33), mode="bicubic",
                                                align_corners=True)[0]
    np.testing.assert_allclose(ElasticDeformation(control).dense_field(40, 33).numpy(), reference.numpy(), atol=1e-12)


def test_random_elastic_keeps_the_border_ring_fixed():
    control = RandomElasticDeformation(max_displacement=4.0, num_control_points=6).sample(0).control_displacements
    assert control.shape == (2, 6, 6)
    ring = np.ones((6, 6), bool)
    ring[1:-1, 1:-1] = False
    assert not control[:, ring].any()
    assert np.abs(control).max() <= 4.0 and control[:, 1:-1, 1:-1].std() > 1.0


# --- batches and tensors ----------------------------------------------------------------

def test_batch_shares_parameters_and_matches_per_item(slice_and_mask):
    image, mask = slice_and_mask
    batch = np.stack([image, image * 2 + 1])[:, None]  # (2, 1, H, W)
    masks = np.stack([mask, 1 - mask])                  # (2, H, W)
    spatial = Chain((Rotation(2.0), RandomElasticDeformation().sample(11)))
    out_batch, out_masks = spatial(batch, masks)
    for i in range(2):
        one_image, one_mask = spatial(batch[i, 0], masks[i])
        np.testing.assert_allclose(out_batch[i, 0], one_image, atol=1e-5)
        np.testing.assert_array_equal(out_masks[i], one_mask)


def test_torch_and_numpy_give_the_same_result(slice_and_mask):
    image, mask = slice_and_mask
    transform = default_augmentation(p=1.0).sample(4)
    np_image, np_mask = transform(image, mask)
    t_image, t_mask = transform(torch.from_numpy(image), torch.from_numpy(mask))
    assert isinstance(t_image, torch.Tensor) and t_mask.dtype == torch.int64
    np.testing.assert_allclose(t_image.numpy(), np_image, atol=1e-5)
    np.testing.assert_array_equal(t_mask.numpy(), np_mask)


# --- seeding and logging ----------------------------------------------------------------

def test_same_seed_gives_same_parameters_and_output(slice_and_mask):
    image, mask = slice_and_mask
    augmentation = default_augmentation(p=0.5)
    first, second = augmentation.sample(123), augmentation.sample(np.random.default_rng(123))
    assert first.describe() == second.describe()
    np.testing.assert_array_equal(first(image, mask)[0], second(image, mask)[0])
    out_a = augmentation(image, mask, rng=7)
    out_b = augmentation(image, mask, rng=7)
    np.testing.assert_array_equal(out_a[0], out_b[0])
    draws = {json.dumps(augmentation.sample(seed).describe()) for seed in range(10)}
    assert len(draws) == 10


def test_random_rotation_draws_within_range():
    angles = [RandomRotation(degrees=3.0).sample(seed).angle_deg for seed in range(200)]
    assert max(angles) <= 3.0 and min(angles) >= -3.0
    assert max(angles) > 2.5 and min(angles) < -2.5
    assert RandomRotation(degrees=3.0).sample(0).angle_deg == pytest.approx(np.random.default_rng(0).uniform(-3, 3))


def test_describe_is_json_and_replays(slice_and_mask):
    image, mask = slice_and_mask
    chain = default_augmentation(p=1.0).sample(9)
    described = json.loads(json.dumps(chain.describe()))
    rebuilt = []
    for params in described["transforms"]:
        name = params.pop("name")
        if name == "ElasticDeformation":
            params["control_displacements"] = np.array(params["control_displacements"])
        rebuilt.append({"Rotation": Rotation, "ElasticDeformation": ElasticDeformation,
                        "GammaCorrection": GammaCorrection, "GaussianNoise": GaussianNoise}[name](**params))
    np.testing.assert_allclose(Chain(tuple(rebuilt))(image, mask)[0], chain(image, mask)[0], atol=1e-3)


def test_compose_probability_and_shuffle():
    transforms = (RandomRotation(p=1.0), RandomGamma(p=1.0), RandomNoise(p=1.0))
    assert Compose(tuple(RandomRotation(p=0.0) for _ in range(3))).sample(0) == Chain(())
    names = [t.describe()["name"] for t in Compose(transforms).sample(0).transforms]
    assert names == ["Rotation", "GammaCorrection", "GaussianNoise"]
    orders = {tuple(type(t).__name__ for t in Compose(transforms, shuffle=True).sample(s).transforms) for s in range(30)}
    assert len(orders) > 1 and all(len(order) == 3 for order in orders)
    applied = [len(Compose((RandomRotation(p=0.3),)).sample(s).transforms) for s in range(2000)]
    assert 0.25 < np.mean(applied) < 0.35


# --- intensity --------------------------------------------------------------------------

def test_gamma_hand_computed_on_unit_range():
    image = np.array([[0.0, 0.25], [0.5, 1.0]])
    out, _ = GammaCorrection(2.0, intensity_range=(0.0, 1.0))(image)
    np.testing.assert_allclose(out, [[0.0, 0.0625], [0.25, 1.0]])
    out, _ = GammaCorrection(0.5, intensity_range=(0.0, 1.0))(image)
    np.testing.assert_allclose(out, [[0.0, 0.5], [np.sqrt(0.5), 1.0]])


def test_gamma_default_range_keeps_min_and_max():
    image = np.array([[2.0, 3.0, 4.0]])
    out, _ = GammaCorrection(2.0)(image)
    np.testing.assert_allclose(out, [[2.0, 2.5, 4.0]])  # 2 + 2 * 0.5**2
    gammas = [RandomGamma().sample(s).gamma for s in range(200)]
    assert np.exp(-0.3) <= min(gammas) and max(gammas) <= np.exp(0.3)


def test_noise_standard_deviation_is_measured(slice_and_mask):
    _, mask = slice_and_mask
    image = np.zeros((256, 256), dtype=np.float32)
    noisy, out_mask = GaussianNoise(std=0.1, noise_seed=5)(image, None)
    assert out_mask is None and noisy.dtype == np.float32
    assert noisy.std() == pytest.approx(0.1, abs=0.002)  # standard error ~ 0.1 / sqrt(2 * 65536)
    assert abs(noisy.mean()) < 0.002
    np.testing.assert_array_equal(GaussianNoise(0.1, 5)(image)[0], noisy)
    assert not np.array_equal(GaussianNoise(0.1, 6)(image)[0], noisy)
    double = GaussianNoise(0.1, 5)(np.zeros((256, 256)))[0]
    assert double.dtype == np.float64 and double.std() == pytest.approx(0.1, abs=0.002)
    on_tensor = GaussianNoise(0.1, 5)(torch.zeros(256, 256))[0]
    np.testing.assert_array_equal(on_tensor.numpy(), noisy)
    _, kept = GaussianNoise(0.1, 5)(np.zeros((24, 30), np.float32), mask)
    np.testing.assert_array_equal(kept, mask)


# --- mixup ------------------------------------------------------------------------------

def test_mixup_hand_computed_convex_combination():
    images = np.stack([np.full((1, 2, 2), 1.0), np.full((1, 2, 2), 3.0)])
    targets = np.stack([np.ones((2, 2), np.int64), np.zeros((2, 2), np.int64)])
    mixed, soft = Mixup(lam=0.3, permutation=np.array([1, 0]))(images, targets)
    np.testing.assert_allclose(mixed[0], 0.3 * 1 + 0.7 * 3)
    np.testing.assert_allclose(mixed[1], 0.3 * 3 + 0.7 * 1)
    np.testing.assert_allclose(soft[0, 1], 0.3)   # infection probability of item 0
    np.testing.assert_allclose(soft[0, 0], 0.7)
    np.testing.assert_allclose(soft[1, 1], 0.7)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_mixup_draws_beta_and_soft_labels_sum_to_one(backend):
    rng = np.random.default_rng(8)
    images = rng.standard_normal((4, 1, 6, 6)).astype(np.float32)
    targets = (rng.random((4, 6, 6)) > 0.6).astype(np.int64)
    expected_rng = np.random.default_rng(21)
    expected_lam, expected_perm = expected_rng.beta(0.4, 0.4), expected_rng.permutation(4)
    if backend == "torch":
        images, targets = torch.from_numpy(images), torch.from_numpy(targets)
    mixed, soft, lam = mixup(images, targets, alpha=0.4, rng=21)
    assert lam == pytest.approx(expected_lam)
    np.testing.assert_allclose(np.asarray(mixed), lam * np.asarray(images) + (1 - lam) * np.asarray(images)[expected_perm],
                               atol=1e-6)
    assert tuple(soft.shape) == (4, 2, 6, 6)
    np.testing.assert_allclose(np.asarray(soft).sum(axis=1), 1.0, atol=1e-6)
    assert np.asarray(soft).min() >= 0


def test_mixup_of_soft_targets_and_lambda_distribution():
    soft_in = np.random.default_rng(0).dirichlet([1, 1], size=(3, 4, 4)).transpose(0, 3, 1, 2)
    images = np.zeros((3, 1, 4, 4))
    _, soft, _ = mixup(images, soft_in, alpha=1.0, rng=2)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    lams = [sample_mixup(2, 0.2, s).lam for s in range(2000)]
    # Beta(0.2, 0.2) is U-shaped: most draws are near 0 or 1, the mean is 1/2.
    assert np.mean(lams) == pytest.approx(0.5, abs=0.03)
    assert np.mean((np.array(lams) < 0.1) | (np.array(lams) > 0.9)) > 0.5


# --- bad input --------------------------------------------------------------------------

def test_bad_input_raises_clear_errors(slice_and_mask):
    image, mask = slice_and_mask
    with pytest.raises(InvalidInputError, match="mask shape"):
        Rotation(1.0)(image, mask[:-1])
    with pytest.raises(InvalidInputError, match="NaN"):
        Rotation(1.0)(np.full((4, 4), np.nan))
    with pytest.raises(InvalidInputError, match="floating point"):
        Rotation(1.0)(mask)
    with pytest.raises(InvalidInputError, match="p must be"):
        RandomRotation(p=1.5)
    with pytest.raises(InvalidInputError, match="alpha"):
        mixup(image[None, None], mask[None], alpha=0.0, rng=0)
    with pytest.raises(InvalidInputError, match="class-index targets must lie"):
        mixup(image[None, None], mask[None] * 2, alpha=1.0, rng=0)
    with pytest.raises(InvalidInputError, match="rng"):
        as_generator(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="gamma"):
        GammaCorrection(-1.0)


def test_labels():
    assert Rotation(1.74).label() == "rotate +1.7°"
    assert GammaCorrection(0.9).label() == "gamma 0.90"
    assert Chain((Rotation(-2.0), GaussianNoise(0.05, 1))).label() == "rotate -2.0°, noise σ 0.050"


# --- the dihedral group (real slices come in several orientations) -----------------------------

def test_dihedral_matches_rot90_and_fliplr_by_hand():
    from covidlib.augment import Dihedral

    image = np.arange(6, dtype=np.float32).reshape(2, 3)
    mask = (image > 2).astype(np.uint8)
    turned, turned_mask = Dihedral(1, False)(image, mask)
    assert np.array_equal(turned, np.array([[2, 5], [1, 4], [0, 3]], dtype=np.float32))
    assert np.array_equal(turned_mask, (turned > 2).astype(np.uint8))
    mirrored, _ = Dihedral(0, True)(image)
    assert np.array_equal(mirrored, np.array([[2, 1, 0], [5, 4, 3]], dtype=np.float32))


def test_dihedral_same_on_numpy_and_torch_and_covers_the_eight_symmetries():
    from covidlib.augment import Dihedral, RandomDihedral

    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 5, 5)).astype(np.float32)
    results = set()
    for k in range(4):
        for flip in (False, True):
            as_numpy, _ = Dihedral(k, flip)(image)
            as_torch, _ = Dihedral(k, flip)(torch.from_numpy(image))
            assert np.array_equal(as_numpy, as_torch.numpy())
            results.add(as_numpy.tobytes())
    assert len(results) == 8
    drawn = {RandomDihedral().sample(np.random.default_rng(seed)).describe()["quarter_turns"] for seed in range(40)}
    assert drawn == {0, 1, 2, 3}
    with pytest.raises(InvalidInputError, match="quarter_turns"):
        Dihedral(4)


def test_default_augmentation_with_dihedral_puts_it_first():
    from covidlib.augment import RandomDihedral

    assert isinstance(default_augmentation(dihedral=True).transforms[0], RandomDihedral)
    assert not any(isinstance(t, RandomDihedral) for t in default_augmentation().transforms)


def test_slice_items_run_single_threaded_and_do_not_depend_on_the_thread_count(slice_and_mask, monkeypatch):
    from covidlib.config import torch_threads
    from covidlib.data import SliceDataset

    image, mask = slice_and_mask
    dataset = SliceDataset([(np.stack([image, image[::-1]]), np.stack([mask, mask[::-1]]))], output_size=40,
                           resize_mode="resize", transform=default_augmentation(p=1.0), seed=3)
    reference = [dataset[i] for i in range(len(dataset))]  # tests run with one thread
    seen = []
    original = RandomRotation.draw

    def spy(self, rng):  # the thread count while the augmentation is drawn and applied
        seen.append(torch.get_num_threads())
        return original(self, rng)

    monkeypatch.setattr(RandomRotation, "draw", spy)
    with torch_threads(2):
        items = [dataset[i] for i in range(len(dataset))]
        assert torch.get_num_threads() == 2  # restored after each item
    assert seen == [1, 1]
    for got, want in zip(items, reference):
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["mask"], want["mask"])
    with pytest.raises(InvalidInputError, match="positive integer"):
        with torch_threads(0):
            pass


def test_each_dihedral_inverse_undoes_it():
    from covidlib.augment import DIHEDRAL_GROUP

    image = np.random.default_rng(0).normal(size=(2, 5, 5)).astype(np.float32)
    assert len(set(DIHEDRAL_GROUP)) == 8
    for transform in DIHEDRAL_GROUP:
        turned, _ = transform(image)
        assert np.array_equal(transform.inverse()(turned)[0], image)


# --- zoom -------------------------------------------------------------------------------

def test_zoom_of_a_ramp_is_the_ramp_scaled_about_the_centre():
    # bilinear interpolation is exact on a linear ramp: output x reads centre + (x - centre) / factor
    from covidlib.augment import Zoom

    columns = np.tile(np.arange(21, dtype=np.float64), (17, 1))
    centre = 10.0
    enlarged, _ = Zoom(2.0)(columns)
    np.testing.assert_allclose(enlarged, centre + (columns - centre) / 2, atol=1e-12)
    shrunk, _ = Zoom(0.5, fill=-7.0)(columns)
    rows = np.arange(17)[:, None]  # centre row 8: rows 4 to 12 read from inside the slice
    inside = (np.abs(columns - centre) * 2 <= centre) & (np.abs(rows - 8) * 2 <= 8)
    np.testing.assert_allclose(shrunk[inside], (centre + (columns - centre) * 2)[inside], atol=1e-12)
    assert np.all(shrunk[~inside] == -7.0)
    image, mask = np.ones((5, 5), np.float32), np.ones((5, 5), np.int64)
    assert Zoom(1.0)(image, mask) == (image, mask)  # factor 1: the same objects, no resampling


def test_zoom_scales_a_centred_square_mask_and_keeps_it_binary():
    from covidlib.augment import Zoom

    mask = np.zeros((41, 41), np.int64)
    mask[16:25, 16:25] = 1  # 9 x 9 about the centre pixel 20
    _, enlarged = Zoom(3.0)(mask.astype(np.float32), mask)
    _, shrunk = Zoom(1 / 3)(mask.astype(np.float32), mask)
    assert enlarged.dtype == np.int64 and set(np.unique(enlarged)) == {0, 1}
    rows = np.flatnonzero(enlarged.any(axis=1))
    assert rows.min() == 20 - 13 and rows.max() == 20 + 13  # |p - 20| / 3 <= 4.5 rounds inside: 27 rows
    assert int(shrunk.sum()) == 3 * 3
    torch_mask = torch.from_numpy(mask)
    np.testing.assert_array_equal(Zoom(3.0)(torch_mask.float(), torch_mask)[1].numpy(), enlarged)


def test_random_zoom_draws_log_symmetric_factors_within_its_range():
    from covidlib.augment import RandomZoom, Zoom

    rng = np.random.default_rng(0)
    factors = np.array([RandomZoom(max_factor=1.25).sample(rng).factor for _ in range(4000)])
    assert factors.min() >= 1 / 1.25 and factors.max() <= 1.25
    assert abs(np.mean(np.log(factors))) < 0.01 and abs(np.mean(factors > 1) - 0.5) < 0.03
    assert RandomZoom(max_factor=1.0).sample(1) == Zoom(1.0)
    with pytest.raises(InvalidInputError, match="max_factor"):
        RandomZoom(max_factor=0.8)
    with pytest.raises(InvalidInputError, match="factor"):
        Zoom(0.0)
    assert json.loads(json.dumps(Zoom(1.5).describe())) == {"name": "Zoom", "factor": 1.5, "fill": 0.0}
    assert Zoom(1.5).label() == "zoom x1.50"


# --- crop -------------------------------------------------------------------------------

def test_crop_cuts_the_window_its_fractions_place_and_copies_it():
    from covidlib.augment import Crop

    image = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    mask = (image % 3 == 0).astype(np.uint8)
    # 6 x 8 slice, 4 x 4 window: rows start in 0..2, columns in 0..4; floor(f * (positions)) capped at the last
    cases = {(0.0, 0.0): (0, 0), (1.0, 1.0): (2, 4), (0.5, 0.5): (1, 2), (0.34, 0.79): (1, 3), (0.99, 0.2): (2, 1)}
    for (top, left), (row, col) in cases.items():
        assert Crop(4, top, left).corner(6, 8) == (row, col)
        cropped, cropped_mask = Crop(4, top, left)(image, mask)
        np.testing.assert_array_equal(cropped, image[row:row + 4, col:col + 4])
        np.testing.assert_array_equal(cropped_mask, mask[row:row + 4, col:col + 4])
    cropped, _ = Crop(4, 0.0, 0.0)(image)
    cropped[:] = -1  # the window is a copy: the slice it came from is untouched
    assert image[0, 0] == 0
    batch = torch.from_numpy(np.stack([image, image + 100]))[:, None]  # (B, C, H, W): one window for all
    out, _ = Crop(4, 1.0, 0.0)(batch)
    assert out.shape == (2, 1, 4, 4) and torch.equal(out[1, 0] - 100, torch.from_numpy(image[2:6, 0:4]))
    assert Crop(6, 0.7, 0.3)(image)[0].shape == (6, 6)  # a window as tall as the slice has one row position
    with pytest.raises(InvalidInputError, match="a 7 x 7 window does not fit a 6 x 8 slice"):
        Crop(7)(image)
    for bad in ({"size": 0}, {"size": 4, "top": 1.5}, {"size": 4, "left": -0.1}, {"size": 2.5}):
        with pytest.raises(InvalidInputError):
            Crop(**bad)
    assert json.loads(json.dumps(Crop(4, 0.25, 0.5).describe())) == {"name": "Crop", "size": 4, "top": 0.25, "left": 0.5}
    assert Crop(4, 0.25, 0.5).label() == "crop 4 px at (0.25, 0.50)"


def test_random_crop_always_crops_and_reaches_every_position_evenly():
    from covidlib.augment import RandomCrop

    crop = RandomCrop(4)
    assert crop.p == 1.0
    rng = np.random.default_rng(0)
    corners = np.array([crop.draw(rng).corner(6, 8) for _ in range(6000)])
    rows = np.bincount(corners[:, 0], minlength=3) / len(corners)
    cols = np.bincount(corners[:, 1], minlength=5) / len(corners)
    np.testing.assert_allclose(rows, 1 / 3, atol=0.03)  # 3 row positions, equally likely
    np.testing.assert_allclose(cols, 1 / 5, atol=0.03)  # 5 column positions, equally likely
    assert RandomCrop(4).sample(5) == RandomCrop(4).sample(5)
    with pytest.raises(InvalidInputError, match="size must be a positive integer"):
        RandomCrop(0)


def test_a_crop_around_foreground_holds_the_pixel_its_fraction_picks():
    from covidlib.augment import Crop

    image = np.arange(8 * 10, dtype=np.float32).reshape(8, 10)
    mask = np.zeros((8, 10), dtype=np.uint8)
    mask[1, 8] = mask[6, 2] = 1  # row-major: pixel 0 is (1, 8), pixel 1 is (6, 2)
    # around < 0.5 picks (1, 8). 4 x 4 windows holding it start in rows 0..1 and columns 5..6
    # (column 8 - 3 = 5 up to the last column start 10 - 4 = 6); top/left place it among them
    cases = {(0.2, 0.0, 0.0): (0, 5), (0.2, 1.0, 1.0): (1, 6), (0.49, 0.6, 0.4): (1, 5),
             # around >= 0.5 picks (6, 2): rows 3..4 (6 - 3 up to 8 - 4), columns 0..2
             (0.5, 0.0, 0.0): (3, 0), (1.0, 1.0, 1.0): (4, 2), (0.7, 0.5, 0.5): (4, 1)}
    for (around, top, left), (row, col) in cases.items():
        crop = Crop(4, top, left, around=around)
        assert crop.corner(8, 10, mask) == (row, col)
        cropped, cropped_mask = crop(image, mask)
        np.testing.assert_array_equal(cropped, image[row:row + 4, col:col + 4])
        assert cropped_mask.sum() >= 1
    # no mask, or no foreground: placed as a plain crop
    assert Crop(4, 0.3, 0.8, around=0.2).corner(8, 10) == Crop(4, 0.3, 0.8).corner(8, 10) == (1, 5)
    assert Crop(4, 0.3, 0.8, around=0.2).corner(8, 10, np.zeros_like(mask)) == (1, 5)
    # every leading slice counts, a soft mask counts above 0.5, and torch masks work as numpy ones
    stacked = np.stack([np.zeros_like(mask), mask])[:, None]  # (B, C, H, W)
    assert Crop(4, 0.0, 0.0, around=0.0).corner(8, 10, stacked) == (0, 5)
    soft = np.where(mask == 1, 0.6, 0.4).astype(np.float32)
    assert Crop(4, 0.0, 0.0, around=0.9).corner(8, 10, soft) == (3, 0)
    assert Crop(4, 0.0, 0.0, around=0.9).corner(8, 10, torch.from_numpy(mask)) == (3, 0)
    for bad in (-0.1, 1.5, True):
        with pytest.raises(InvalidInputError, match="around must be a number in"):
            Crop(4, around=bad)
    assert Crop(4, 0.25, 0.5, around=0.75).describe() == {"name": "Crop", "size": 4, "top": 0.25, "left": 0.5,
                                                           "around": 0.75}
    assert Crop(4, 0.25, 0.5, around=0.75).label() == "crop 4 px at (0.25, 0.50) around foreground 0.75"


def test_random_crop_holds_foreground_as_often_as_asked_and_keeps_its_old_draws_at_zero():
    from covidlib.augment import Crop, RandomCrop

    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[0, 0] = 1  # one pixel in a corner: a uniform 4 x 4 window holds it with probability 1 / 13 ** 2
    rng = np.random.default_rng(1)
    for foreground, expected in ((0.0, 1 / 169), (1 / 3, 1 / 3 + 2 / 3 / 169), (1.0, 1.0)):
        crop = RandomCrop(4, foreground=foreground)
        held = np.mean([crop.sample(rng)(mask.astype(np.float32), mask)[1].sum() == 1 for _ in range(3000)])
        assert abs(held - expected) < 0.03, (foreground, held)
    # at 0 the draws are the two of a plain uniform window, as before the option existed
    uniform = np.random.default_rng(7)
    assert RandomCrop(4).sample(7) == Crop(4, top=uniform.random(), left=uniform.random())
    with pytest.raises(InvalidInputError, match="foreground must be a probability in"):
        RandomCrop(4, foreground=1.2)


def test_default_augmentation_draws_a_zoom_only_when_asked_after_the_turns():
    from covidlib.augment import RandomCrop, RandomDihedral, RandomZoom

    report = (RandomRotation(degrees=3.0, p=0.5), RandomElasticDeformation(max_displacement=4.0, p=0.5),
              RandomGamma(p=0.5), RandomNoise(p=0.5))
    # zoom 1 is the augmentation as it was before zoom existed: the same transforms, so the same draws
    assert default_augmentation(dihedral=True) == Compose((RandomDihedral(), *report))
    assert default_augmentation(dihedral=True, zoom=1.25) == Compose((RandomDihedral(), RandomZoom(1.25, p=0.5), *report))
    assert default_augmentation(zoom=1.25).transforms[0] == RandomZoom(1.25, p=0.5)
    # a crop comes first, so that the turns, zoom and deformation work on the window
    assert default_augmentation(dihedral=True, crop=64) == Compose((RandomCrop(64), RandomDihedral(), *report))
    assert default_augmentation(crop=64, crop_foreground=0.33).transforms[0] == RandomCrop(64, foreground=0.33)
