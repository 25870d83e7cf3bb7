"""Pseudo-labels: sampling stays in the image, cosine top-k against a brute-force loop, both
assignment rules on hand-built similarities, the feature encoder and the pipeline end to end."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from covidlib.coarse import Box
from covidlib.errors import InvalidInputError
from covidlib.models import UNet2d
from covidlib.pseudo import (PseudoLabelConfig, PseudoPatchDataset, assign, build_dictionary, cosine_topk, crop_patches,
                             encode_patches, pseudo_label, sample_patch_locations, soft_masks, spread_counts)


# --- sampling ---

@pytest.mark.parametrize("box", [Box(0, 1, 0, 3, 0, 3), Box(0, 1, 47, 50, 77, 80), Box(0, 1, 20, 30, 30, 40),
                                 Box(0, 1, 0, 50, 0, 80)])
def test_patches_and_margins_never_leave_the_image(box):
    rng = np.random.default_rng(0)
    shape = (1, 50, 80)
    locations = sample_patch_locations([shape], [box], [500], patch_size=20, max_margin=15, rng=rng)
    assert locations.shape == (500, 4)
    source, z, y, x = locations.T
    assert (source == 0).all() and (z == 0).all()
    assert (y >= 0).all() and (x >= 0).all() and (y + 20 <= 50).all() and (x + 20 <= 80).all()
    # every patch overlaps the box enlarged by the largest margin (clipped to the image)
    big = box.enlarge(15, 15, 15, 15, shape)
    assert big.fits(shape)
    assert ((y < big.y1) & (y + 20 > big.y0) & (x < big.x1) & (x + 20 > big.x0)).all()
    crops = crop_patches([np.zeros(shape)], locations, 20)
    assert crops.shape == (500, 20, 20)


def test_enlarge_clips_to_the_image():
    box = Box(0, 2, 2, 5, 90, 98)
    assert box.enlarge(10, 10, 10, 10, (2, 12, 100)) == Box(0, 2, 0, 12, 80, 100)
    with pytest.raises(InvalidInputError):
        box.enlarge(-1, 0, 0, 0, (2, 12, 100))


def test_margin_zero_keeps_patch_centres_inside_the_box():
    rng = np.random.default_rng(1)
    box = Box(2, 4, 30, 34, 40, 45)
    locations = sample_patch_locations([(6, 100, 100)], [box], [300], patch_size=10, max_margin=0, rng=rng)
    _, z, y, x = locations.T
    assert ((z >= 2) & (z < 4)).all()
    assert ((y + 5 >= 30) & (y + 5 < 34) & (x + 5 >= 40) & (x + 5 < 45)).all()


def test_sampling_rejects_small_images_and_missing_boxes():
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError, match="smaller than patch_size"):
        sample_patch_locations([(1, 30, 30)], [Box(0, 1, 0, 5, 0, 5)], [2], patch_size=68, max_margin=0, rng=rng)
    with pytest.raises(InvalidInputError, match="no box"):
        sample_patch_locations([(1, 80, 80)], [None], [2], patch_size=68, max_margin=0, rng=rng)


def test_spread_counts_is_even_and_skips_ineligible_images():
    counts = spread_counts(120, [True, False, True, True, True, True, True], np.random.default_rng(0))
    assert counts.sum() == 120 and counts[1] == 0
    assert set(counts[[0, 2, 3, 4, 5, 6]].tolist()) == {20}
    counts = spread_counts(7, [True, True, True], np.random.default_rng(0))
    assert sorted(counts.tolist()) == [2, 2, 3]


# --- cosine top-k ---

def _brute_force_topk(queries, keys, k):
    scores, indices = [], []
    for q in queries:
        sims = []
        for j, key in enumerate(keys):
            nq, nk = math.sqrt(sum(v * v for v in q)), math.sqrt(sum(v * v for v in key))
            sims.append((sum(a * b for a, b in zip(q, key)) / (nq * nk), j))
        sims.sort(key=lambda item: (-item[0], item[1]))
        scores.append([s for s, _ in sims[:k]])
        indices.append([j for _, j in sims[:k]])
    return np.array(scores), np.array(indices)


@pytest.mark.parametrize("query_chunk, key_chunk", [(4096, 65536), (3, 4), (1, 1)])
def test_cosine_topk_matches_a_brute_force_loop(query_chunk, key_chunk):
    rng = np.random.default_rng(0)
    queries, keys = rng.normal(size=(11, 5)), rng.normal(size=(9, 5))
    scores, indices = cosine_topk(queries, keys, 3, query_chunk=query_chunk, key_chunk=key_chunk)
    expected_scores, expected_indices = _brute_force_topk(queries.tolist(), keys.tolist(), 3)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_array_equal(indices, expected_indices)


def test_cosine_topk_ignores_scale_and_handles_exact_duplicates():
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scores, indices = cosine_topk(np.array([[5.0, 5.0], [0.0, 3.0]]), keys, 2, key_chunk=1)
    np.testing.assert_allclose(scores, [[1.0, 1 / math.sqrt(2)], [1.0, 1 / math.sqrt(2)]], atol=1e-6)
    assert indices[0, 0] == 2 and indices[1, 0] == 1
    assert indices[0, 1] == 0  # tie between keys 0 and 1: the lower index wins
    with pytest.raises(InvalidInputError):
        cosine_topk(np.ones((2, 2)), keys, 4)


# --- assignment rules ---

def test_top2_rule_on_hand_built_similarities():
    scores = np.array([[0.95, 0.92], [0.95, 0.90], [0.89, 0.88], [0.99, 0.97]])
    indices = np.array([[3, 1], [0, 2], [1, 0], [2, 3]])
    result = assign(scores, indices, "top2", threshold=0.90)
    assert result.accepted.tolist() == [True, False, False, True]  # 0.90 is not *larger* than 0.90
    np.testing.assert_allclose(result.coefficients[0], [0.95 / 1.87, 0.92 / 1.87], rtol=1e-6)
    np.testing.assert_array_equal(result.labels[0], [3, 1])
    np.testing.assert_allclose(result.weights, [0.95, 0.0, 0.0, 0.99], rtol=1e-6)
    masks = np.zeros((4, 2, 2), dtype=np.uint8)
    masks[3, 0, 0] = 1
    masks[1, :, :] = 1
    soft = soft_masks(masks, result.labels[:1], result.coefficients[:1])[0]
    np.testing.assert_allclose(soft, [[1.0, 0.92 / 1.87], [0.92 / 1.87, 0.92 / 1.87]], rtol=1e-6)


def test_top1_band_rule_on_hand_built_similarities():
    scores = np.array([[0.97, 0.5], [0.96, 0.1], [0.87, 0.86], [0.869, 0.2], [0.90, 0.89]])
    indices = np.array([[0, 1], [1, 0], [2, 1], [3, 1], [4, 0]])
    result = assign(scores, indices, "top1_band", band=(0.87, 0.96))
    assert result.accepted.tolist() == [False, True, True, False, True]
    np.testing.assert_array_equal(result.coefficients[result.accepted], [[1, 0]] * 3)
    np.testing.assert_array_equal(result.labels[result.accepted, 0], [1, 2, 4])
    np.testing.assert_allclose(result.weights, [0.0, 0.96, 0.87, 0.0, 0.90], rtol=1e-6)


def test_assign_rejects_unknown_rules_and_top2_without_two_scores():
    with pytest.raises(InvalidInputError, match="rule"):
        assign(np.ones((1, 2)), np.zeros((1, 2), dtype=int), "top3")
    with pytest.raises(InvalidInputError, match="k >= 2"):
        assign(np.ones((1, 1)), np.zeros((1, 1), dtype=int), "top2")


# --- encoder features and the pipeline ---

def test_encode_patches_is_global_average_pooling_of_the_bottleneck():
    torch.manual_seed(0)
    model = UNet2d(base_width=2, depth=2).train()
    patches = np.random.default_rng(0).normal(size=(5, 16, 16)).astype(np.float32)
    features = encode_patches(model, patches, batch_size=2, device="cpu")
    assert features.shape == (5, 8) and model.training  # mode restored
    model.eval()
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(patches)[:, None])[-1].mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_pipeline_streams_like_a_direct_computation():
    """The chunked pipeline agrees with encoding and matching all patches at once, images without
    a box give no patch, and the training items carry the dictionary label they were assigned."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 40, 40)).astype(np.float32)
    mask = np.zeros((1, 40, 40), dtype=np.uint8)
    mask[0, 10:20, 12:25] = 1
    image[mask == 1] += 3.0
    model = UNet2d(base_width=2, depth=2)
    config = PseudoLabelConfig(patch_size=16, labelled_patches=6, patches_per_unlabelled=5, rule="top1_band",
                               band=(-1.0, 1.0), chunk_size=2, batch_size=3)
    dictionary = build_dictionary(model, [image], [mask], config, rng, device="cpu")
    assert dictionary.images.shape == (6, 16, 16) and dictionary.features.shape == (6, 8)
    np.testing.assert_array_equal(dictionary.masks, crop_patches([mask], dictionary.locations, 16, dtype=np.uint8))
    labels = pseudo_label(model, dictionary, [image, image], [Box(0, 1, 10, 20, 12, 25), None], config, rng,
                          device="cpu", progress=False)
    assert len(labels.locations) == 5 and (labels.locations[:, 0] == 0).all()
    assert labels.num_accepted == 5
    features = encode_patches(model, crop_patches([image], labels.locations, 16), device="cpu")
    np.testing.assert_allclose(dictionary.center, dictionary.features.mean(axis=0), rtol=1e-5)
    direct_scores, direct_indices = cosine_topk(features - dictionary.center, dictionary.features - dictionary.center, 2)
    np.testing.assert_allclose(labels.scores, direct_scores, atol=1e-5)
    np.testing.assert_array_equal(labels.indices, direct_indices)
    dataset = PseudoPatchDataset([image, image], labels, dictionary)
    item = dataset[0]
    assert item["image"].shape == (1, 16, 16) and item["mask"].shape == (2, 16, 16)
    torch.testing.assert_close(item["mask"].sum(0), torch.ones(16, 16))
    expected_mask = dictionary.masks[labels.assignment.labels[0, 0]].astype(np.float32)
    np.testing.assert_allclose(item["mask"][1].numpy(), expected_mask)
    np.testing.assert_allclose(labels.accepted_masks(dictionary)[0], expected_mask)


def test_config_validation():
    with pytest.raises(InvalidInputError, match="rule"):
        PseudoLabelConfig(rule="nearest")
    with pytest.raises(InvalidInputError, match="band"):
        PseudoLabelConfig(band=(0.96, 0.87))
    with pytest.raises(InvalidInputError, match="labelled_margin"):
        PseudoLabelConfig(labelled_margin=-1)


# --- the threshold chosen on labelled patches treated as unlabelled -----------------------------

def test_calibrate_threshold_finds_the_known_threshold_of_a_step():
    """Pseudo masks are right (Dice 1) exactly when the weaker of the two best similarities exceeds
    0.4 and wrong (Dice 0) below: any quality bar in (0, 1) must choose 0.4."""
    from covidlib.pseudo import calibrate_threshold

    rng = np.random.default_rng(0)
    second = rng.uniform(-1.0, 1.0, 4000)
    scores = np.stack([np.minimum(second + rng.uniform(0, 0.2, second.size), 1.0), second], axis=1)
    values = (second > 0.4).astype(float)
    grid = np.round(np.arange(-1.0, 1.0001, 0.01), 2)
    for bar in (0.2, 0.5, 0.9):
        result = calibrate_threshold(scores, values, thresholds=grid, quality_bar=bar)
        assert result.chosen == pytest.approx(0.4)
        at = int(np.flatnonzero(np.isclose(grid, 0.4))[0])
        assert result.accepted_share[at] == pytest.approx(np.mean(second > 0.4))
        assert result.pseudo_dice[at] == 1.0
        assert result.pseudo_dice[at - 20] < 1.0  # below 0.4 wrong masks come in
    # the top-2 rule needs both similarities above t: a high first score alone does not pass
    assert calibrate_threshold(np.array([[0.99, -0.5], [0.99, 0.99]]), np.array([1.0, 1.0]),
                               thresholds=[0.0, 0.5], quality_bar=0.5).accepted_share.tolist() == [0.5, 0.5]


def test_calibrate_threshold_where_mask_quality_rises_smoothly():
    """Dice ~ Bernoulli(p(s)) with p(s) = (s + 1) / 2: patches beat the bar 0.5 on average exactly
    above s = 0, so the gain sum_accepted (Dice - 0.5) peaks there (up to sampling noise)."""
    from covidlib.pseudo import calibrate_threshold

    rng = np.random.default_rng(1)
    second = rng.uniform(-1.0, 1.0, 200_000)
    values = (rng.random(second.size) < (second + 1) / 2).astype(float)
    result = calibrate_threshold(np.stack([second, second], axis=1), values, quality_bar=0.5)
    assert abs(result.chosen) <= 0.03
    # the gain is zero when nothing is accepted and the same as by hand at one threshold
    assert result.gain[-1] == 0.0 and result.thresholds[-1] == 1.0
    index = int(np.argmin(np.abs(result.thresholds - 0.5)))
    passed = second > result.thresholds[index]
    assert result.gain[index] == pytest.approx(np.sum(values[passed] - 0.5) / second.size)


def test_calibrate_threshold_accepts_nothing_when_no_mask_is_good_enough_and_rejects_bad_input():
    from covidlib.pseudo import calibrate_threshold

    scores = np.tile(np.linspace(-0.9, 0.9, 50)[:, None], (1, 2))
    result = calibrate_threshold(scores, np.full(50, 0.1), quality_bar=0.5)
    assert result.chosen == 1.0 and result.accepted_share[-1] == 0.0
    with pytest.raises(InvalidInputError, match="no patch"):
        calibrate_threshold(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(InvalidInputError, match="scores"):
        calibrate_threshold(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(InvalidInputError, match="increasing"):
        calibrate_threshold(scores, np.zeros(50), thresholds=[0.5, 0.2])


def test_patch_dice_by_hand():
    from covidlib.pseudo import patch_dice

    predicted = np.zeros((3, 4, 4), np.float32)
    truth = np.zeros((3, 4, 4), np.uint8)
    predicted[0, :2, :2] = 0.9  # 4 pixels, 2 of them true
    truth[0, :1, :] = 1  # 4 pixels
    truth[1, 0, 0] = 1  # nothing predicted
    np.testing.assert_allclose(patch_dice(predicted, truth), [2 * 2 / 8, 0.0, 1.0])  # both empty: 1


def test_compare_rules_grades_each_rule_on_its_own_scores_by_hand():
    """Shares and accepted-mask Dice of the report's four rules on hand-built matches, where the
    centred and the plain (uncentred) matches accept different patches with different masks, so a
    rule that read the other kind of score would give other numbers in every row."""
    from covidlib.pseudo import PatchDictionary, PseudoLabels, RuleSpec, compare_rules, report_rules

    ones, zeros, top = np.ones((2, 2)), np.zeros((2, 2)), np.array([[1, 1], [0, 0]])
    dictionary = PatchDictionary(images=np.zeros((6, 2, 2), np.float32),
                                 masks=np.stack([ones, ones, zeros, top, top, zeros]).astype(np.uint8),
                                 features=np.zeros((6, 1), np.float32), locations=np.zeros((6, 4), np.int64),
                                 center=np.zeros(1, np.float32))
    truth = np.stack([top] * 4).astype(np.uint8)  # against it a mask of ones has Dice 2/3, zeros 0, top 1

    def labels(scores, indices, plain_scores, plain_indices):
        scores, plain_scores = np.array(scores, np.float32), np.array(plain_scores, np.float32)
        return PseudoLabels(locations=np.zeros((len(scores), 4), np.int64), scores=scores, indices=np.array(indices),
                            assignment=assign(scores, np.array(indices)), plain_scores=plain_scores,
                            plain_indices=np.array(plain_indices))

    # centred: masks ones, top, ones (top-1 and top-2 alike), zeros|top; plain: zeros, ones, top, zeros
    calibration = labels([[0.95, 0.93], [0.92, 0.91], [0.955, 0.60], [0.50, 0.40]], [[0, 1], [3, 4], [0, 1], [2, 3]],
                         [[0.99, 0.98], [0.99, 0.97], [0.98, 0.95], [0.93, 0.91]], [[2, 5], [0, 1], [3, 4], [2, 5]])
    unlabelled = labels([[0.95, 0.94], [0.50, 0.40], [0.20, 0.10], [0.91, 0.30]], [[0, 1]] * 4,
                        [[0.99, 0.99], [0.92, 0.91], [0.95, 0.80], [0.94, 0.935]], [[0, 1]] * 4)
    rows = compare_rules(report_rules(0.55), dictionary, calibration, truth, unlabelled)
    expected = [  # (rule, calibration share, Dice of the accepted masks, unlabelled share)
        ("report top-2 > 0.90, plain cosine", 4 / 4, (0 + 2 / 3 + 1 + 0) / 4, 3 / 4),
        ("report top-1 in [0.87, 0.96], plain cosine", 1 / 4, 0.0, 3 / 4),  # calibration: the 4th only, mask zeros
        ("top-2 > 0.90, centred", 2 / 4, (2 / 3 + 1) / 2, 1 / 4),
        ("top-2 > 0.55, centred (calibrated)", 3 / 4, (2 / 3 + 1 + 2 / 3) / 3, 1 / 4),
    ]
    assert [row["rule"] for row in rows] == [rule for rule, *_ in expected]
    for row, (_, share, dice, unlabelled_share) in zip(rows, expected):
        assert row["calibration_share"] == pytest.approx(share), row["rule"]
        assert row["calibration_dice"] == pytest.approx(dice), row["rule"]
        assert row["unlabelled_share"] == pytest.approx(unlabelled_share), row["rule"]
    # centred top-1 in the band accepts 0.95, 0.92 and 0.955 (masks ones, top, ones); nothing passes 0.99;
    # without unlabelled patches their share is nan
    (band, strict) = compare_rules([RuleSpec("band", "top1_band", True), RuleSpec("strict", "top2", True, 0.99)],
                                   dictionary, calibration, truth)
    assert (band["calibration_share"], band["calibration_dice"]) == (pytest.approx(3 / 4), pytest.approx(7 / 9))
    assert strict["calibration_share"] == 0.0 and math.isnan(strict["calibration_dice"])
    assert math.isnan(band["unlabelled_share"])
    with pytest.raises(InvalidInputError, match="plain-cosine"):
        compare_rules(report_rules(0.55), dictionary, dataclasses.replace(calibration, plain_scores=None), truth)
