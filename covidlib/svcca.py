"""SVCCA: how similar are two sets of neuron activations, up to any linear map?

Raghu, Gilmer, Yosinski and Sohl-Dickstein, "SVCCA: Singular Vector Canonical Correlation
Analysis for Deep Learning Dynamics and Interpretability", NeurIPS 2017 (arXiv:1706.05806).

For activation matrices ``X1`` (n, p) and ``X2`` (n, q) over the same ``n`` datapoints:

1. centre every neuron (column);
2. SVD of each and keep the leading directions that explain ``variance`` (0.99) of its variance;
3. CCA between the two reduced subspaces: with orthonormal bases ``Q1``, ``Q2`` of the reduced
   activations, the canonical correlations are the singular values of ``Q1^T Q2``;
4. the similarity is their mean.

The canonical correlations are unchanged by any invertible linear map of either input, so a
layer compared with a rotated, rescaled copy of itself scores 1.

The computation runs in float64 with torch (on the GPU when given CUDA tensors) and never
forms ``Q1`` explicitly: with ``X = U S V^T``, ``Q = X V S^{-1}``, so
``Q1^T Q2 = S1^{-1} V1^T (X1^T X2) V2 S2^{-1}`` needs only the three Gram matrices
``X1^T X1``, ``X2^T X2``, ``X1^T X2`` (p x p, q x q, p x q) and their eigendecompositions.
The price is accuracy of about ``machine-epsilon x condition-number^2``; directions whose
variance is below ``epsilon`` times the largest are therefore dropped as numerically zero, which
also handles rank-deficient inputs and (near-)constant neurons.

Introduced in chapter 06.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from scipy import integrate

from covidlib.errors import InvalidInputError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

FLATTEN_MODES = ("positions", "pool")


@dataclass(frozen=True)
class SVCCAResult:
    """The outcome of :func:`svcca` or :func:`cca`.

    ``correlations``: the canonical correlations, descending, in [0, 1], ``min(kept_dims)`` of
    them. ``mean``: their mean (the SVCCA similarity). ``kept_dims``: directions kept per input
    after the variance cut (or the numerical rank for :func:`cca`). ``explained_variance``: the
    fraction of each input's variance those directions hold. ``chance``: the mean canonical
    correlation expected between *independent* Gaussian data of the same sizes
    (:func:`chance_mean_correlation`); a similarity near it means "no more alike than noise".
    """

    mean: float
    correlations: np.ndarray
    kept_dims: tuple[int, int]
    explained_variance: tuple[float, float]
    n_datapoints: int
    chance: float


def _as_float64(acts: np.ndarray | torch.Tensor, name: str, device: torch.device | None) -> torch.Tensor:
    if isinstance(acts, torch.Tensor):
        tensor = acts.detach()
    elif isinstance(acts, np.ndarray):
        if not (np.issubdtype(acts.dtype, np.number) or acts.dtype == np.bool_):
            raise InvalidInputError(f"{name}: expected a numeric array, got dtype {acts.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float64))
    else:
        raise InvalidInputError(f"{name}: expected a numpy array or torch tensor, got {type(acts).__name__}")
    if tensor.is_complex():
        raise InvalidInputError(f"{name}: complex activations are not supported")
    if tensor.ndim != 2:
        raise InvalidInputError(
            f"{name}: expected activations of shape (n_datapoints, n_features), got shape {tuple(tensor.shape)}; "
            "flatten convolutional maps with flatten_conv first"
        )
    if tensor.shape[0] < 2 or tensor.shape[1] < 1:
        raise InvalidInputError(f"{name}: need at least 2 datapoints and 1 feature, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(device=device if device is not None else tensor.device, dtype=torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise InvalidInputError(f"{name}: contains NaN or infinite values")
    return tensor


def _leading_directions(gram: torch.Tensor, variance: float | None, epsilon: float,
                        name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Scaled directions ``V_k / s_k`` (p, k) of a centred Gram matrix, and their variance fraction."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    eigenvalues = eigenvalues.flip(0).clamp(min=0.0)
    eigenvectors = eigenvectors.flip(1)
    total = float(eigenvalues.sum())
    if not total > 0.0:
        raise InvalidInputError(f"{name}: every neuron is constant over the datapoints; there is nothing to correlate")
    rank = int((eigenvalues > epsilon * eigenvalues[0]).sum())
    kept = rank
    if variance is not None:
        cumulative = torch.cumsum(eigenvalues, 0) / total
        # the tolerance keeps a direction from being added only because of rounding in the sum
        kept = min(rank, int((cumulative < variance - 1e-12).sum()) + 1)
    scaled = eigenvectors[:, :kept] / eigenvalues[:kept].sqrt()
    return scaled, eigenvalues[:kept], float(eigenvalues[:kept].sum()) / total


def _canonical_correlations(acts1: np.ndarray | torch.Tensor, acts2: np.ndarray | torch.Tensor,
                            variance: float | None, epsilon: float) -> SVCCAResult:
    if not 0.0 < epsilon < 1.0:
        raise InvalidInputError(f"epsilon must be in (0, 1) (a relative variance floor), got {epsilon!r}")
    x1 = _as_float64(acts1, "acts1", None)
    x2 = _as_float64(acts2, "acts2", x1.device)
    n = x1.shape[0]
    if x2.shape[0] != n:
        raise InvalidInputError(
            f"acts1 and acts2 must hold the same datapoints (rows): got {n} and {x2.shape[0]}"
        )
    x1 = x1 - x1.mean(dim=0, keepdim=True)
    x2 = x2 - x2.mean(dim=0, keepdim=True)
    scaled1, _, explained1 = _leading_directions(x1.T @ x1, variance, epsilon, "acts1")
    scaled2, _, explained2 = _leading_directions(x2.T @ x2, variance, epsilon, "acts2")
    k1, k2 = scaled1.shape[1], scaled2.shape[1]
    if k1 + k2 >= n - 1:
        # centred data live in n - 1 dimensions: subspaces that fill them must share
        # directions, and those canonical correlations are 1 whatever the activations are
        raise InvalidInputError(
            f"too few datapoints: {n} datapoints cannot compare subspaces of {k1} and {k2} directions "
            f"(need more than {k1 + k2 + 1}); use more probe inputs, flatten_conv(mode='positions'), or a lower variance"
        )
    whitened_cross = scaled1.T @ (x1.T @ x2) @ scaled2
    correlations = torch.linalg.svdvals(whitened_cross).clamp(0.0, 1.0).cpu().numpy()
    return SVCCAResult(
        mean=float(correlations.mean()),
        correlations=correlations,
        kept_dims=(k1, k2),
        explained_variance=(explained1, explained2),
        n_datapoints=n,
        chance=chance_mean_correlation(n - 1, k1, k2),
    )


def svcca(acts1: np.ndarray | torch.Tensor, acts2: np.ndarray | torch.Tensor, variance: float = 0.99,
          epsilon: float = 1e-10) -> SVCCAResult:
    """SVCCA similarity of two activation matrices over the same datapoints.

    ``acts1`` (n, p), ``acts2`` (n, q): numpy arrays or torch tensors (CUDA tensors are
    processed on their GPU). ``variance``: the fraction of each input's variance the kept
    singular directions must explain (0.99 in Raghu et al. 2017 and in the report).
    ``epsilon``: directions with variance below ``epsilon`` x the largest count as numerically
    zero (rank deficiency, constant neurons). Raises :class:`InvalidInputError` for mismatched
    rows, NaN/inf, an all-constant input, or too few datapoints for the kept dimensions
    (``kept1 + kept2 >= n - 1``: centred data span ``n - 1`` dimensions, so larger
    subspaces must overlap and correlations of 1 would be forced).

    Introduced in chapter 06.
    """
    if not 0.0 < variance <= 1.0:
        raise InvalidInputError(f"variance must be in (0, 1], got {variance!r}")
    return _canonical_correlations(acts1, acts2, variance, epsilon)


def cca(acts1: np.ndarray | torch.Tensor, acts2: np.ndarray | torch.Tensor, epsilon: float = 1e-10) -> SVCCAResult:
    """Plain CCA (no SVD truncation) of ``acts1`` (n, p) and ``acts2`` (n, q).

    Every direction above the numerical-rank floor ``epsilon`` is kept, so a rank-deficient
    input is reduced to its numerical rank rather than failing. Introduced in chapter 06.
    """
    return _canonical_correlations(acts1, acts2, None, epsilon)


def chance_mean_correlation(n: int, p: int, q: int) -> float:
    """Expected mean canonical correlation between independent Gaussian data (n, p) and (n, q).

    The large-sample (Wachter) limit: with ``y1 = min(p, q) / n`` and ``y2 = max(p, q) / n``
    (``y1 + y2 < 1``), the squared canonical correlations follow the density
    ``sqrt((x - a)(b - x)) / (2 pi y1 x (1 - x))`` on ``[a, b]``,
    ``a, b = (sqrt(y2 (1 - y1)) -+ sqrt(y1 (1 - y2)))^2``; the result is the mean of ``sqrt(x)``.
    Pass ``n - 1`` for centred data. Wachter, Ann. Statist. 8 (1980) 937-957.
    Introduced in chapter 06.
    """
    if min(n, p, q) < 1:
        raise InvalidInputError(f"n, p and q must be positive integers, got n={n}, p={p}, q={q}")
    y1, y2 = min(p, q) / n, max(p, q) / n
    if y1 + y2 >= 1.0:
        raise InvalidInputError(f"chance level undefined for p + q >= n (got n={n}, p={p}, q={q})")
    root_low, root_high = math.sqrt(y2 * (1 - y1)), math.sqrt(y1 * (1 - y2))
    low, high = (root_low - root_high) ** 2, (root_low + root_high) ** 2

    def density_times_root(x: float) -> float:
        return math.sqrt(max((x - low) * (high - x), 0.0)) / (2 * math.pi * y1 * (1 - x) * math.sqrt(x))

    value, _ = integrate.quad(density_times_root, low, high, limit=200)
    return float(value)


def flatten_conv(acts: ArrayT, mode: str = "positions", max_positions: int | None = None,
                 seed: int = 0) -> ArrayT:
    """Turn convolutional activations (N, C, H, W) into an SVCCA matrix.

    ``mode="positions"``: every (image, pixel) is a datapoint and the C channels are the
    neurons, giving (N*H*W, C) -- the choice of Raghu et al. for conv layers; ``max_positions``
    keeps a random subset of that many rows, drawn from ``seed`` (the same seed and shape give
    the same rows, so two checkpoints of a layer stay paired). ``mode="pool"``: average over
    space, giving (N, C) -- far fewer datapoints, so only for small C. A 2D input (N, F) is
    returned unchanged. Returns the input's type (numpy or torch). Introduced in chapter 06.
    """
    if mode not in FLATTEN_MODES:
        raise InvalidInputError(f"mode must be one of {FLATTEN_MODES}, got {mode!r}")
    if acts.ndim == 2:
        return acts
    if acts.ndim != 4:
        raise InvalidInputError(f"acts: expected (N, C, H, W) or (N, F) activations, got shape {tuple(acts.shape)}")
    is_numpy = isinstance(acts, np.ndarray)
    tensor: torch.Tensor = torch.from_numpy(acts) if is_numpy else acts  # type: ignore[assignment]  # acts is an ndarray only when is_numpy
    if mode == "pool":
        flat = tensor.mean(dim=(2, 3))
    else:
        flat = tensor.permute(0, 2, 3, 1).reshape(-1, tensor.shape[1])
        if max_positions is not None:
            if max_positions < 2:
                raise InvalidInputError(f"max_positions must be at least 2, got {max_positions}")
            if max_positions < flat.shape[0]:
                generator = torch.Generator().manual_seed(seed)
                rows = torch.randperm(flat.shape[0], generator=generator)[:max_positions].sort().values
                flat = flat[rows.to(flat.device)]
    return flat.numpy() if is_numpy else flat  # type: ignore[return-value]  # the input's kind, by is_numpy
