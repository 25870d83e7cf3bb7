"""Tests for covidlib.statistics: hand-computed bootstrap cases, a normal approximation, run summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidlib.errors import InvalidInputError
from covidlib.statistics import paired_bootstrap_ci, summarise_runs


def test_a_constant_difference_gives_a_zero_width_interval_at_that_value() -> None:
    a = np.array([0.61, 0.70, 0.55, 0.68, 0.72, 0.64])
    interval = paired_bootstrap_ci(a, a + 0.25, n_resamples=2000)
    assert interval.mean_difference == pytest.approx(0.25)
    assert interval.low == pytest.approx(0.25) and interval.high == pytest.approx(0.25)
    assert interval.high - interval.low == pytest.approx(0.0, abs=1e-12)


def test_two_units_by_hand() -> None:
    # Differences {0, 1}: a resample of two has mean 0, 0.5 or 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5 % and 97.5 % quantiles are 0 and 1, and the 30 % and 70 % quantiles both 0.5.
    interval = paired_bootstrap_ci([0.0, 0.0], [0.0, 1.0], n_resamples=4000)
    assert (interval.mean_difference, interval.low, interval.high) == (0.5, 0.0, 1.0)
    narrow = paired_bootstrap_ci([0.0, 0.0], [0.0, 1.0], confidence=0.4, n_resamples=4000)
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_a_symmetric_sample_gives_an_interval_symmetric_about_its_mean() -> None:
    differences = np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])
    interval = paired_bootstrap_ci(np.zeros(6), differences, n_resamples=40_000, seed=1)
    assert interval.mean_difference == 0.0
    assert interval.low < 0 < interval.high
    assert interval.low == pytest.approx(-interval.high, abs=0.03)


def test_the_difference_is_b_minus_a() -> None:
    a, b = [0.5, 0.6, 0.7], [0.6, 0.8, 0.7]
    assert paired_bootstrap_ci(a, b).mean_difference == pytest.approx(0.1)
    assert paired_bootstrap_ci(b, a).mean_difference == pytest.approx(-0.1)


def test_the_same_seed_gives_the_same_interval_and_another_seed_another() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(15), rng.random(15)
    first = paired_bootstrap_ci(a, b, n_resamples=500, seed=7)
    assert paired_bootstrap_ci(a, b, n_resamples=500, seed=7) == first
    assert paired_bootstrap_ci(a, b, n_resamples=500, seed=8) != first


def test_a_large_sample_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(0.70, 0.05, size=400)
    b = a + rng.normal(0.02, 0.03, size=400)
    differences = b - a
    interval = paired_bootstrap_ci(a, b, n_resamples=20_000, seed=3)
    # The bootstrap sd of the mean is the plug-in (ddof=0) sd over sqrt(n); 1.96 for 95 %.
    half_width = 1.959964 * differences.std(ddof=0) / math.sqrt(differences.size)
    assert interval.low == pytest.approx(differences.mean() - half_width, abs=0.05 * half_width)
    assert interval.high == pytest.approx(differences.mean() + half_width, abs=0.05 * half_width)


def test_units_are_flattened_so_fold_by_seed_tables_pair() -> None:
    a = np.array([[0.6, 0.7, 0.8], [0.5, 0.6, 0.7]])  # 2 folds x 3 seeds
    interval = paired_bootstrap_ci(a, a + np.array([[0.1, 0.0, 0.1], [0.0, 0.1, 0.0]]), n_resamples=100)
    assert interval.n == 6
    assert interval.mean_difference == pytest.approx(0.05)
    assert interval.as_dict()["n_resamples"] == 100


def test_bootstrap_bad_input_raises() -> None:
    with pytest.raises(InvalidInputError, match="shapes"):
        paired_bootstrap_ci([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(InvalidInputError, match="NaN"):
        paired_bootstrap_ci([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(InvalidInputError, match="at least 2"):
        paired_bootstrap_ci([0.1], [0.2])
    with pytest.raises(InvalidInputError, match="empty"):
        paired_bootstrap_ci([], [])
    with pytest.raises(InvalidInputError, match="confidence"):
        paired_bootstrap_ci([0.1, 0.2], [0.2, 0.3], confidence=95)
    with pytest.raises(InvalidInputError, match="n_resamples"):
        paired_bootstrap_ci([0.1, 0.2], [0.2, 0.3], n_resamples=0)


def test_summarise_runs_by_hand() -> None:
    values = [[0.60, 0.62, 0.64],  # fold 0 over seeds 0, 1, 2: mean 0.62
              [0.70, 0.70, 0.76]]  # fold 1: mean 0.72
    summary = summarise_runs(values)
    assert summary["mean"] == pytest.approx(0.67)
    assert summary["sd_folds"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))  # means 0.62, 0.72
    # Seed means 0.65, 0.66, 0.70: deviations -0.02, -0.01, 0.03 around 0.67.
    assert summary["sd_seeds"] == pytest.approx(math.sqrt((0.02 ** 2 + 0.01 ** 2 + 0.03 ** 2) / 2))
    assert (summary["n"], summary["n_folds"], summary["n_seeds"]) == (6, 2, 3)


def test_summarise_runs_with_one_seed_has_no_seed_spread() -> None:
    summary = summarise_runs([[0.5], [0.7], [0.6]])
    assert summary["mean"] == pytest.approx(0.6)
    assert summary["sd_folds"] == pytest.approx(0.1)
    assert math.isnan(summary["sd_seeds"])


def test_summarise_runs_bad_input_raises() -> None:
    with pytest.raises(InvalidInputError, match="n_folds, n_seeds"):
        summarise_runs([0.1, 0.2, 0.3])
    with pytest.raises(InvalidInputError, match="NaN"):
        summarise_runs([[0.1, float("nan")], [0.2, 0.3]])
    with pytest.raises(InvalidInputError, match="empty"):
        summarise_runs(np.zeros((0, 3)))
