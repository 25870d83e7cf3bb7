"""Tests for covidlib.svcca against analytic cases and an independent numpy CCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidlib.errors import InvalidInputError
from covidlib.svcca import cca, chance_mean_correlation, flatten_conv, svcca


def numpy_whitening_cca(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations by inverse-square-root covariance whitening (full-rank inputs)."""
    x = x - x.mean(0)
    y = y - y.mean(0)

    def inv_sqrt(cov: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh(cov)
        return (vectors / np.sqrt(values)) @ vectors.T

    cross = inv_sqrt(x.T @ x) @ (x.T @ y) @ inv_sqrt(y.T @ y)
    return np.linalg.svd(cross, compute_uv=False)


def numpy_svd_reduce(x: np.ndarray, variance: float) -> np.ndarray:
    """Keep the leading singular directions of centred ``x`` explaining ``variance``."""
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    explained = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(explained, variance) + 1)
    return u[:, :k] * s[:k]


def qr_mean_cca(x: np.ndarray, y: np.ndarray) -> float:
    q1, _ = np.linalg.qr(x - x.mean(0))
    q2, _ = np.linalg.qr(y - y.mean(0))
    return float(np.linalg.svd(q1.T @ q2, compute_uv=False).mean())


def correlated_pair(rng: np.random.Generator, n: int = 800, p: int = 12, q: int = 9) -> tuple[np.ndarray, np.ndarray]:
    shared = rng.standard_normal((n, 5))
    x = shared @ rng.standard_normal((5, p)) + rng.standard_normal((n, p)) * np.linspace(0.2, 2.0, p)
    y = np.tanh(shared @ rng.standard_normal((5, q))) + 0.5 * rng.standard_normal((n, q)) + 3.0
    return x, y


def test_layer_with_itself_is_one() -> None:
    x, _ = correlated_pair(np.random.default_rng(0))
    result = svcca(x, x)
    np.testing.assert_allclose(result.correlations, 1.0, atol=1e-9)
    assert result.mean == pytest.approx(1.0, abs=1e-9)


def test_invertible_linear_map_is_one() -> None:
    rng = np.random.default_rng(1)
    x, _ = correlated_pair(rng)
    mixing = rng.standard_normal((x.shape[1], x.shape[1])) + 3 * np.eye(x.shape[1])
    assert np.linalg.cond(mixing) < 1e3
    assert cca(x, x @ mixing + 7.0).mean == pytest.approx(1.0, abs=1e-9)
    assert svcca(x, x @ mixing, variance=1.0).mean == pytest.approx(1.0, abs=1e-9)
    # an orthogonal map times a scale keeps the singular spectrum, so even the 99% cut agrees
    orthogonal, _ = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))
    result = svcca(x, 0.01 * x @ orthogonal)
    assert result.kept_dims[0] == result.kept_dims[1] < x.shape[1]
    assert result.mean == pytest.approx(1.0, abs=1e-9)


def test_agrees_with_independent_numpy_cca() -> None:
    x, y = correlated_pair(np.random.default_rng(2))
    expected = numpy_whitening_cca(x, y)
    result = cca(x, y)
    assert result.kept_dims == (x.shape[1], y.shape[1])
    np.testing.assert_allclose(result.correlations, expected, atol=1e-10)
    assert 0.2 < result.mean < 0.9  # a non-trivial case


def test_svcca_agrees_with_numpy_svd_then_cca() -> None:
    x, y = correlated_pair(np.random.default_rng(3), p=30, q=25)
    reduced_x, reduced_y = numpy_svd_reduce(x, 0.99), numpy_svd_reduce(y, 0.99)
    expected = numpy_whitening_cca(reduced_x, reduced_y)
    result = svcca(x, y, variance=0.99)
    assert result.kept_dims == (reduced_x.shape[1], reduced_y.shape[1])
    assert result.kept_dims[0] < 30 and result.kept_dims[1] < 25  # the cut really removed directions
    assert all(0.99 <= e <= 1.0 for e in result.explained_variance)
    np.testing.assert_allclose(result.correlations, expected, atol=1e-9)
    assert result.mean == pytest.approx(float(expected.mean()), abs=1e-9)


def test_planted_shared_subspace_gives_its_correlation() -> None:
    rng = np.random.default_rng(4)
    n, k, rho = 20000, 3, 0.6
    shared = rng.standard_normal((n, k))
    partner = rho * shared + np.sqrt(1 - rho**2) * rng.standard_normal((n, k))
    # the signal lives in k directions of 20 and 15 neurons; tiny noise fills the rest
    x = shared @ rng.standard_normal((k, 20)) + 1e-3 * rng.standard_normal((n, 20))
    y = partner @ rng.standard_normal((k, 15)) + 1e-3 * rng.standard_normal((n, 15))
    result = svcca(x, y)
    assert result.kept_dims == (k, k)
    # sample correlations scatter by about (1 - rho^2) / sqrt(n) = 0.005 around rho
    np.testing.assert_allclose(result.correlations, rho, atol=0.02)
    assert result.mean == pytest.approx(rho, abs=0.01)


def test_independent_layers_score_near_chance() -> None:
    rng = np.random.default_rng(5)
    n, p, q = 2000, 20, 30
    ours = [cca(rng.standard_normal((n, p)), rng.standard_normal((n, q))).mean for _ in range(8)]
    monte_carlo = [qr_mean_cca(rng.standard_normal((n, p)), rng.standard_normal((n, q))) for _ in range(8)]
    analytic = chance_mean_correlation(n - 1, p, q)
    # Monte-Carlo standard error of an 8-run mean is about 0.001 here
    assert np.mean(ours) == pytest.approx(np.mean(monte_carlo), abs=0.006)
    assert np.mean(ours) == pytest.approx(analytic, abs=0.006)
    assert 0.08 < analytic < 0.15  # far from both 0 and 1: chance is not zero


@pytest.mark.parametrize(("n", "p", "q"), [(1000, 50, 50), (500, 40, 100), (300, 100, 120)])
def test_chance_level_matches_monte_carlo(n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(n + p + q)
    simulated = np.mean([qr_mean_cca(rng.standard_normal((n, p)), rng.standard_normal((n, q))) for _ in range(6)])
    assert chance_mean_correlation(n - 1, p, q) == pytest.approx(simulated, abs=0.01)
    assert chance_mean_correlation(n, p, q) == chance_mean_correlation(n, q, p)


def test_result_is_symmetric_and_row_order_free() -> None:
    rng = np.random.default_rng(6)
    x, y = correlated_pair(rng)
    order = rng.permutation(x.shape[0])
    reference = svcca(x, y)
    np.testing.assert_allclose(svcca(y, x).correlations, reference.correlations, atol=1e-10)
    np.testing.assert_allclose(svcca(x[order], y[order]).correlations, reference.correlations, atol=1e-10)


def test_torch_float32_input_matches_numpy() -> None:
    x, y = correlated_pair(np.random.default_rng(7))
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    from_torch = svcca(torch.from_numpy(x32), torch.from_numpy(y32))
    from_numpy = svcca(x32, y32)
    np.testing.assert_allclose(from_torch.correlations, from_numpy.correlations, atol=1e-12)
    assert from_torch.mean == pytest.approx(svcca(x, y).mean, abs=1e-5)  # only float32 rounding of the input


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_give_the_cpu_answer() -> None:
    x, y = correlated_pair(np.random.default_rng(8))
    on_gpu = svcca(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda())
    assert on_gpu.mean == pytest.approx(svcca(x, y).mean, abs=1e-10)


def test_rank_deficiency_and_constant_neurons_reduce_to_the_rank() -> None:
    rng = np.random.default_rng(9)
    x, y = correlated_pair(rng)
    padded = np.column_stack([x, x[:, :3] @ rng.standard_normal((3, 4)), np.full(x.shape[0], 5.0)])
    np.testing.assert_allclose(cca(padded, y).correlations, cca(x, y).correlations, atol=1e-8)
    assert cca(padded, y).kept_dims == (x.shape[1], y.shape[1])


def test_more_features_than_datapoints_needs_the_svd_cut() -> None:
    rng = np.random.default_rng(10)
    n = 60
    with pytest.raises(InvalidInputError, match="too few datapoints"):
        cca(rng.standard_normal((n, 100)), rng.standard_normal((n, 100)))
    # low-rank activations with many neurons are fine once SVD keeps their few directions
    x = rng.standard_normal((n, 4)) @ rng.standard_normal((4, 100))
    result = svcca(x, x @ rng.standard_normal((100, 100)), variance=1.0)
    assert result.kept_dims == (4, 4)
    assert result.mean == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize(
    ("acts1", "acts2", "message"),
    [
        (np.zeros((10, 3)), np.ones((10, 3)), "constant"),
        (np.ones((10, 3)), np.ones((11, 3)), "same datapoints"),
        (np.full((10, 3), np.nan), np.ones((10, 3)), "NaN"),
        (np.ones((10, 3, 2)), np.ones((10, 3)), "flatten_conv"),
        ([[1.0, 2.0]], np.ones((1, 2)), "numpy array or torch tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(acts1: object, acts2: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        svcca(acts1, acts2)  # type: ignore[arg-type]


def test_bad_parameters_raise() -> None:
    x = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(InvalidInputError, match="variance"):
        svcca(x, x, variance=0.0)
    with pytest.raises(InvalidInputError, match="epsilon"):
        svcca(x, x, epsilon=0.0)
    with pytest.raises(InvalidInputError, match="p \\+ q >= n"):
        chance_mean_correlation(10, 5, 5)


def test_flatten_conv_positions_and_pool() -> None:
    acts = np.random.default_rng(11).standard_normal((2, 3, 4, 5)).astype(np.float32)
    positions = flatten_conv(acts, "positions")
    assert positions.shape == (2 * 4 * 5, 3)
    np.testing.assert_array_equal(positions[1 * 20 + 2 * 5 + 3], acts[1, :, 2, 3])  # image 1, row 2, column 3
    pooled = flatten_conv(torch.from_numpy(acts), "pool")
    assert isinstance(pooled, torch.Tensor) and pooled.shape == (2, 3)
    np.testing.assert_allclose(pooled.numpy(), acts.mean(axis=(2, 3)), atol=1e-6)
    flat = np.ones((7, 4))
    assert flatten_conv(flat) is flat


def test_flatten_conv_subsampling_pairs_rows_across_inputs() -> None:
    acts = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    first = flatten_conv(acts, max_positions=50, seed=3)
    again = flatten_conv(acts + 1.0, max_positions=50, seed=3)
    assert first.shape == (50, 3)
    torch.testing.assert_close(again, first + 1.0)  # same rows for the same seed and shape
    full = flatten_conv(acts)
    assert all(bool((full == row).all(dim=1).any()) for row in first)  # every kept row is a real position
    assert not torch.equal(flatten_conv(acts, max_positions=50, seed=4), first)
    with pytest.raises(InvalidInputError, match="mode"):
        flatten_conv(acts, mode="max")
