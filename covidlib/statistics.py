"""Statistics for fair comparisons of training runs: mean and spread over cross-validation folds
and seeds, and the paired bootstrap confidence interval of the difference between two arms.

A *unit* is one (fold, seed) run. Two arms compared on the same units (same outer fold, same
seed) are paired: the difference is taken unit by unit, which removes the fold-to-fold spread
that both arms share. Introduced in chapter 08.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from covidlib.errors import InvalidInputError

_CHUNK_ELEMENTS = 4_000_000  # resampled values drawn at once, to bound memory for many units


def _finite_array(values: ArrayLike, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{name} must be numbers, got {values!r}") from error
    if array.size == 0:
        raise InvalidInputError(f"{name} is empty")
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InvalidInputError(f"{name} contains {bad} NaN or infinite value(s); drop or fix those runs first")
    return array


@dataclass(frozen=True)
class BootstrapInterval:
    """The mean paired difference ``b - a`` and its percentile bootstrap interval [low, high]."""

    mean_difference: float
    low: float
    high: float
    confidence: float
    n: int
    n_resamples: int

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict (for JSON records)."""
        return asdict(self)


def paired_bootstrap_ci(a: ArrayLike, b: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 10_000,
                        seed: int = 0) -> BootstrapInterval:
    """Percentile bootstrap confidence interval of the mean of ``b - a`` over paired units.

    ``a`` and ``b`` hold one score per unit (e.g. Dice per fold x seed) in the same order and
    shape (any shape; flattened). Units are resampled with replacement ``n_resamples`` times; the
    interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    resampled means (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13).
    Deterministic for a given ``seed``. With few units the interval is too narrow (the bootstrap
    cannot see variation the sample lacks): report ``n`` beside it.
    """
    first, second = _finite_array(a, "a"), _finite_array(b, "b")
    if first.shape != second.shape:
        raise InvalidInputError(f"a and b must pair unit by unit, got shapes {first.shape} and {second.shape}")
    differences = (second - first).ravel()
    n = differences.size
    if n < 2:
        raise InvalidInputError(f"need at least 2 paired units for a bootstrap interval, got {n}")
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise InvalidInputError(f"n_resamples must be a positive integer, got {n_resamples!r}")

    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        means[start:stop] = differences[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return BootstrapInterval(
        mean_difference=float(differences.mean()),
        low=float(low),
        high=float(high),
        confidence=float(confidence),
        n=int(n),
        n_resamples=int(n_resamples),
    )


def summarise_runs(values: ArrayLike) -> dict[str, float | int]:
    """Mean and spread of one score over runs arranged ``(n_folds, n_seeds)``.

    Returns ``mean`` (over all runs), ``sd_folds`` (sample sd, ddof=1, of the per-fold means over
    seeds: how much the score moves from one held-out fold to another), ``sd_seeds`` (sample sd of
    the per-seed means over folds: how much the cross-validated score moves when only the seed
    changes), ``n`` (runs), ``n_folds`` and ``n_seeds``. An sd over a single fold or seed is nan.
    """
    array = _finite_array(values, "values")
    if array.ndim != 2:
        raise InvalidInputError(f"values must be arranged (n_folds, n_seeds), got shape {array.shape}")
    n_folds, n_seeds = array.shape
    fold_means, seed_means = array.mean(axis=1), array.mean(axis=0)
    return {
        "mean": float(array.mean()),
        "sd_folds": float(fold_means.std(ddof=1)) if n_folds > 1 else float("nan"),
        "sd_seeds": float(seed_means.std(ddof=1)) if n_seeds > 1 else float("nan"),
        "n": int(array.size),
        "n_folds": int(n_folds),
        "n_seeds": int(n_seeds),
    }
