"""Segmentation metrics on binary masks: Dice, IoU, sensitivity, specificity, HD95 and the
normalised surface Dice, per case, plus mean/sd aggregation.

Masks are numpy arrays or torch tensors, 2D ``(y, x)`` or 3D ``(z, y, x)``, holding only 0/1
(or bool); ``spacing`` is in mm in the same axis order. Conventions for empty masks
(each one tested in ``tests/test_metrics.py``):

=================  ======================  ====================================
metric             both empty              exactly one empty
=================  ======================  ====================================
dice, iou          1.0                     0.0
hd95 (mm)          0.0                     nan (no surface to measure from)
surface_dice       1.0                     0.0
sensitivity        nan (no positives)      0.0 if only pred is empty, else nan
specificity        1.0                     usual ratio; nan if target is all 1
=================  ======================  ====================================

``summarise`` skips nan values and says how many it skipped (``n_undefined``), so a mean HD95
never silently hides cases where the model found nothing. ``best_threshold`` picks the probability
threshold with the best mean Dice over a set of cases (on validation cases, never on those scored).

Inf-Net's evaluation protocol (Fan et al., IEEE TMI 2020), which every published number on
COVID-SemiSeg uses, works on probability maps instead: ``infnet_metrics`` (one image) and
``infnet_dataset_metrics`` (a set) rescale each map by its min and max, average Dice,
sensitivity, specificity and the E-measure over 256 thresholds (``threshold_curves``), and add
the S-measure (``s_measure``) and ``mae``.

Introduced in chapter 04.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from covidlib.errors import InvalidInputError

ArrayLike = np.ndarray | torch.Tensor


def as_binary_mask(mask: ArrayLike, name: str = "mask") -> np.ndarray:
    """A 0/1 (or bool) numpy array or torch tensor as a bool numpy array; anything else raises."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise InvalidInputError(f"{name} must be a numpy array or torch tensor, got {type(mask).__name__}")
    if mask.dtype == bool:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise InvalidInputError(f"{name} must be a binary mask of numbers or bools, got dtype {mask.dtype}")
    if np.issubdtype(mask.dtype, np.floating) and np.isnan(mask).any():
        raise InvalidInputError(f"{name} contains NaN; metrics need a binary mask")
    if not np.isin(mask, (0, 1)).all():
        values = np.unique(mask)[:6]
        raise InvalidInputError(
            f"{name} must be binary (only 0 and 1), found values {values.tolist()}; threshold probabilities first"
        )
    return mask.astype(bool)


def _pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred_mask = as_binary_mask(pred, "pred")
    target_mask = as_binary_mask(target, "target")
    if pred_mask.shape != target_mask.shape:
        raise InvalidInputError(f"pred shape {pred_mask.shape} differs from target shape {target_mask.shape}")
    if pred_mask.ndim == 0:
        raise InvalidInputError("pred and target must have at least one axis")
    return pred_mask, target_mask


def _check_spacing(spacing: Sequence[float] | float, ndim: int) -> tuple[float, ...]:
    values = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)  # type: ignore[arg-type, union-attr]  # np.isscalar picks the branch
    if len(values) != ndim:
        raise InvalidInputError(f"spacing must have one value per mask axis ({ndim}), got {len(values)}: {values}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise InvalidInputError(f"spacing must be positive finite mm, got {values}")
    return values


def _counts(pred: ArrayLike, target: ArrayLike) -> tuple[int, int, int, int]:
    """True positives, false positives, false negatives, true negatives."""
    pred_mask, target_mask = _pair(pred, target)
    tp = int(np.count_nonzero(pred_mask & target_mask))
    fp = int(np.count_nonzero(pred_mask & ~target_mask))
    fn = int(np.count_nonzero(~pred_mask & target_mask))
    return tp, fp, fn, pred_mask.size - tp - fp - fn


def dice(pred: ArrayLike, target: ArrayLike) -> float:
    """Dice similarity coefficient ``2|P and G| / (|P| + |G|)``; 1.0 when both are empty."""
    tp, fp, fn, _ = _counts(pred, target)
    return 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


#: The probability thresholds :func:`best_threshold` tries: 0.20 to 0.70 by 0.05.
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.2 + 0.05 * step, 2) for step in range(11))


def best_threshold(probabilities: Sequence[ArrayLike], targets: Sequence[ArrayLike],
                   grid: Sequence[float] = THRESHOLD_GRID) -> float:
    """The threshold of ``grid`` whose masks ``probability > t`` have the best Dice averaged over the
    cases (each probability map paired with its target, any shapes that match); among equals the
    one nearest 0.5. A model trained on few slices often under-segments at 0.5; choosing on the
    validation cases lets it say so (the F1-optimal threshold of a calibrated classifier is half
    the best F1, Lipton et al., ECML 2014, below 0.5 for any F1 < 1)."""
    if len(probabilities) != len(targets):
        raise InvalidInputError(f"got {len(probabilities)} probability maps but {len(targets)} targets")
    if not probabilities:
        raise InvalidInputError("no cases to choose a threshold on")
    if not grid or not all(0.0 < t < 1.0 for t in grid):
        raise InvalidInputError(f"thresholds must lie in (0, 1), got {list(grid)}")
    maps = [probability.detach().cpu().numpy() if isinstance(probability, torch.Tensor) else np.asarray(probability)
            for probability in probabilities]
    if not all(np.isfinite(probability).all() for probability in maps):
        raise InvalidInputError("a probability map contains NaN or infinite values")
    mean_dice = [float(np.mean([dice(probability > t, target) for probability, target in zip(maps, targets)]))
                 for t in grid]
    return float(max(zip(mean_dice, grid), key=lambda pair: (pair[0], -abs(pair[1] - 0.5)))[1])


def iou(pred: ArrayLike, target: ArrayLike) -> float:
    """Intersection over union (Jaccard) ``|P and G| / |P or G|``; 1.0 when both are empty."""
    tp, fp, fn, _ = _counts(pred, target)
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)


def sensitivity(pred: ArrayLike, target: ArrayLike) -> float:
    """Recall ``TP / (TP + FN)``; nan when the target has no positives."""
    tp, _, fn, _ = _counts(pred, target)
    return float("nan") if tp + fn == 0 else tp / (tp + fn)


def specificity(pred: ArrayLike, target: ArrayLike) -> float:
    """``TN / (TN + FP)``; nan when the target has no negatives."""
    _, fp, _, tn = _counts(pred, target)
    return float("nan") if tn + fp == 0 else tn / (tn + fp)


def surface(mask: np.ndarray) -> np.ndarray:
    """Border voxels of a bool mask: mask voxels with a face neighbour outside it (or outside the
    array), i.e. ``mask & ~binary_erosion(mask)`` with the cross-shaped structuring element."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _surface_distances(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each border voxel of ``pred`` to the border of ``target`` and back."""
    pred_surface, target_surface = surface(pred), surface(target)
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_target[pred_surface], to_pred[target_surface]


def hd95(pred: ArrayLike, target: ArrayLike, spacing: Sequence[float] | float = 1.0) -> float:
    """95th-percentile Hausdorff distance in mm between the borders of ``pred`` and ``target``.

    The larger of the two directed 95th percentiles (pred -> target and target -> pred) of the
    border-voxel distances, as MONAI's ``compute_hausdorff_distance(percentile=95)``. ``spacing``
    in mm per axis (a scalar for isotropic). Both empty: 0.0; one empty: nan.
    """
    pred_mask, target_mask = _pair(pred, target)
    spacing_mm = _check_spacing(spacing, pred_mask.ndim)
    if not pred_mask.any() and not target_mask.any():
        return 0.0
    if not pred_mask.any() or not target_mask.any():
        return float("nan")
    forward, backward = _surface_distances(pred_mask, target_mask, spacing_mm)
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


def surface_dice(pred: ArrayLike, target: ArrayLike, spacing: Sequence[float] | float = 1.0,
                 tolerance_mm: float = 3.0) -> float:
    """Normalised surface Dice (NSD): the share of both borders lying within ``tolerance_mm``
    of the other border, ``(|{p: d(p, dG) <= t}| + |{g: d(g, dP) <= t}|) / (|dP| + |dG|)``.

    Nikolov et al., "Clinically applicable segmentation of head and neck anatomy for
    radiotherapy", JMIR 2021; reported by the COVID-19-CT-Seg benchmark (Ma et al., Med. Phys.
    2021) with 3 mm for lesions. Border voxels are counted with equal weight (the DeepMind
    ``surface-distance`` code weights each by its surface area, so values differ slightly).
    Both empty: 1.0; one empty: 0.0.
    """
    pred_mask, target_mask = _pair(pred, target)
    spacing_mm = _check_spacing(spacing, pred_mask.ndim)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise InvalidInputError(f"tolerance_mm must be a non-negative number of mm, got {tolerance_mm}")
    if not pred_mask.any() and not target_mask.any():
        return 1.0
    if not pred_mask.any() or not target_mask.any():
        return 0.0
    forward, backward = _surface_distances(pred_mask, target_mask, spacing_mm)
    within = np.count_nonzero(forward <= tolerance_mm) + np.count_nonzero(backward <= tolerance_mm)
    return float(within / (forward.size + backward.size))


def segmentation_metrics(pred: ArrayLike, target: ArrayLike, spacing: Sequence[float] | float = 1.0,
                         tolerance_mm: float = 3.0) -> dict[str, float]:
    """All metrics of one case as a dict: dice, iou, sensitivity, specificity, hd95 (mm), nsd."""
    return {
        "dice": dice(pred, target),
        "iou": iou(pred, target),
        "sensitivity": sensitivity(pred, target),
        "specificity": specificity(pred, target),
        "hd95": hd95(pred, target, spacing),
        "nsd": surface_dice(pred, target, spacing, tolerance_mm),
    }


def summarise(values: Iterable[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (ddof=1; 0.0 for one value) and count of the defined
    (non-nan) values, plus ``n_undefined``, the number of nan values skipped."""
    array = np.asarray(list(values), dtype=np.float64)
    defined = array[~np.isnan(array)]
    n = int(defined.size)
    return {
        "mean": float(defined.mean()) if n else float("nan"),
        "sd": float(defined.std(ddof=1)) if n > 1 else (0.0 if n == 1 else float("nan")),
        "n": n,
        "n_undefined": int(array.size - n),
    }


# --- Inf-Net's evaluation protocol -------------------------------------------------------------
#
# Fan et al., "Inf-Net: Automatic COVID-19 lung infection segmentation from CT images", IEEE TMI
# 2020, evaluate COVID-SemiSeg with the MATLAB tool in their repository (EvaluationTool/main.m):
# per image, the probability map is min-max rescaled to [0, 1]; Dice, sensitivity and
# specificity are computed at the 256 thresholds ``1:-1/255:0`` (``np.linspace(1, 0, 256)``)
# with ``map >= t`` and averaged over thresholds; the E-measure is computed on ``map > t`` at the
# same thresholds and averaged; the S-measure and MAE are computed on the rescaled map itself.

INFNET_THRESHOLDS = np.linspace(1.0, 0.0, 256)
"""The 256 thresholds of Inf-Net's evaluation, 1 down to 0 in steps of 1/255 (MATLAB ``1:-1/255:0``)."""

_EPS = float(np.finfo(np.float64).eps)  # MATLAB's ``eps``, which the reference formulas add


def _probability_map(probability: ArrayLike, name: str = "probability") -> np.ndarray:
    """A finite 2D float map as float64 numpy; anything else raises."""
    if isinstance(probability, torch.Tensor):
        probability = probability.detach().cpu().numpy()
    if not isinstance(probability, np.ndarray):
        raise InvalidInputError(f"{name} must be a numpy array or torch tensor, got {type(probability).__name__}")
    if probability.dtype == bool or not (np.issubdtype(probability.dtype, np.integer)
                                         or np.issubdtype(probability.dtype, np.floating)):
        raise InvalidInputError(f"{name} must hold numbers, got dtype {probability.dtype}")
    if probability.ndim != 2:
        raise InvalidInputError(f"{name} must be one 2D map (y, x), got shape {probability.shape}")
    if probability.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {probability.shape})")
    array = probability.astype(np.float64)
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return array


def _map_and_target(prediction: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """A foreground map in [0, 1] and its binary target, both 2D and of one shape."""
    pred_map = _probability_map(prediction, "prediction")
    if pred_map.min() < 0.0 or pred_map.max() > 1.0:
        raise InvalidInputError(
            f"prediction must lie in [0, 1], found [{pred_map.min():.4g}, {pred_map.max():.4g}]; "
            "use rescale_min_max or infnet_metrics, which rescales"
        )
    target_mask = as_binary_mask(target, "target")
    if target_mask.shape != pred_map.shape:
        raise InvalidInputError(f"prediction shape {pred_map.shape} differs from target shape {target_mask.shape}")
    return pred_map, target_mask


def rescale_min_max(probability: ArrayLike) -> np.ndarray:
    """A 2D map linearly rescaled to [0, 1] by its own minimum and maximum, as float64.

    A constant map becomes all zeros: Inf-Net's test script saves ``(x - min) / (max - min + 1e-8)``,
    which is 0 for a constant map, and its MATLAB evaluation (``mapminmax``) leaves a constant map
    unchanged. A non-constant map is rescaled exactly (no ``1e-8``), as the MATLAB step re-rescales
    the saved map to exactly [0, 1].
    """
    array = _probability_map(probability)
    low, high = array.min(), array.max()
    if high == low:
        return np.zeros_like(array)
    return (array - low) / (high - low)


def mae(prediction: ArrayLike, target: ArrayLike) -> float:
    """Mean absolute error between a map in [0, 1] ``(y, x)`` and a binary target of that shape."""
    pred_map, target_mask = _map_and_target(prediction, target)
    return float(np.mean(np.abs(pred_map - target_mask)))


def _object_score(values: np.ndarray) -> float:
    """Fan et al.'s object similarity ``2 x / (x^2 + 1 + sigma + eps)`` of foreground values; sigma
    is the sample standard deviation (MATLAB ``std``; 0 for a single value)."""
    mean = values.mean()
    sigma = values.std(ddof=1) if values.size > 1 else 0.0
    return float(2.0 * mean / (mean * mean + 1.0 + sigma + _EPS))


def _region_ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """The S-measure's SSIM-like score of one quadrant ``4 x y s_xy / ((x^2 + y^2)(s_x^2 + s_y^2))``."""
    n = pred.size
    x, y = pred.mean(), target.mean()
    dx, dy = pred - x, target - y
    var_x = np.sum(dx * dx) / (n - 1 + _EPS)
    var_y = np.sum(dy * dy) / (n - 1 + _EPS)
    cov = np.sum(dx * dy) / (n - 1 + _EPS)
    alpha = 4.0 * x * y * cov
    beta = (x * x + y * y) * (var_x + var_y)
    if alpha != 0:
        return float(alpha / (beta + _EPS))
    return 1.0 if beta == 0 else 0.0


def _centroid(target: np.ndarray) -> tuple[int, int]:
    """1-based (column, row) of the target's centroid, rounded half away from zero (MATLAB ``round``)."""
    total = target.sum()
    rows, cols = target.shape
    if total == 0:
        return int(np.floor(cols / 2 + 0.5)), int(np.floor(rows / 2 + 0.5))
    x = np.sum(target.sum(axis=0) * np.arange(1, cols + 1)) / total
    y = np.sum(target.sum(axis=1) * np.arange(1, rows + 1)) / total
    return int(np.floor(x + 0.5)), int(np.floor(y + 0.5))


def _s_region(pred: np.ndarray, target: np.ndarray) -> float:
    """Region-aware part: SSIM-like scores of the four quadrants around the target's centroid,
    weighted by quadrant area. An empty quadrant (centroid on the last row or column) has weight 0
    and adds nothing (the MATLAB code would give NaN there)."""
    x, y = _centroid(target)
    rows, cols = target.shape
    score = 0.0
    for row_slice, col_slice, weight in (
        (slice(0, y), slice(0, x), x * y),
        (slice(0, y), slice(x, cols), (cols - x) * y),
        (slice(y, rows), slice(0, x), x * (rows - y)),
        (slice(y, rows), slice(x, cols), (cols - x) * (rows - y)),
    ):
        if weight:
            score += weight / (rows * cols) * _region_ssim(pred[row_slice, col_slice], target[row_slice, col_slice])
    return score


def s_measure(prediction: ArrayLike, target: ArrayLike, alpha: float = 0.5) -> float:
    """Structure measure of a foreground map in [0, 1] ``(y, x)`` against a binary target.

    ``S = alpha * S_object + (1 - alpha) * S_region``, clipped at 0 (Fan et al., "Structure-measure:
    a new way to evaluate foreground maps", ICCV 2017, alpha = 0.5 as in Inf-Net). ``S_object``
    weights the object scores of foreground (map values) and background (1 - map values) by the
    target's foreground share; ``S_region`` splits both maps at the target's centroid into four
    quadrants. Empty target: ``1 - mean(map)``; all-foreground target: ``mean(map)``.
    """
    pred_map, target_mask = _map_and_target(prediction, target)
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must lie in [0, 1], got {alpha}")
    share = target_mask.mean()
    if share == 0:
        return float(1.0 - pred_map.mean())
    if share == 1:
        return float(pred_map.mean())
    s_object = share * _object_score(pred_map[target_mask]) + (1 - share) * _object_score(1.0 - pred_map[~target_mask])
    score = alpha * s_object + (1 - alpha) * _s_region(pred_map, target_mask.astype(np.float64))
    return float(max(score, 0.0))


def _enhanced_alignment(pred: np.ndarray, target: np.ndarray | float) -> np.ndarray:
    """``((2 a b / (a^2 + b^2 + eps)) + 1)^2 / 4`` for the mean-removed maps a (prediction) and b (target)."""
    return ((2.0 * pred * target / (pred * pred + target * target + _EPS)) + 1.0) ** 2 / 4.0


def e_measure(prediction: ArrayLike, target: ArrayLike) -> float:
    """Enhanced-alignment measure of a binary prediction ``(y, x)`` against a binary target.

    The mean over pixels of ``(1 + xi)^2 / 4`` with the alignment ``xi = 2 a b / (a^2 + b^2)`` of
    the mean-removed prediction ``a`` and target ``b`` (Fan et al., "Enhanced-alignment measure
    for binary foreground map evaluation", IJCAI 2018). Empty target: ``1 - mean(prediction)``;
    all-foreground target: ``mean(prediction)``. Inf-Net's MATLAB code divides the sum by
    ``H W - 1`` rather than ``H W`` (so a perfect map scores slightly above 1); this follows the paper.
    """
    pred_mask = as_binary_mask(prediction, "prediction")
    target_mask = as_binary_mask(target, "target")
    if pred_mask.shape != target_mask.shape:
        raise InvalidInputError(f"prediction shape {pred_mask.shape} differs from target shape {target_mask.shape}")
    if pred_mask.size == 0:
        raise InvalidInputError("prediction and target are empty")
    share = target_mask.mean()
    if share == 0:
        return float(1.0 - pred_mask.mean())
    if share == 1:
        return float(pred_mask.mean())
    pred_centred = pred_mask - pred_mask.mean()
    target_centred = target_mask - share
    return float(_enhanced_alignment(pred_centred, target_centred).mean())


def _count_at_least(sorted_values: np.ndarray, thresholds: np.ndarray, strict: bool) -> np.ndarray:
    """How many of ``sorted_values`` are ``>= t`` (or ``> t`` when strict) for each threshold."""
    side = "right" if strict else "left"
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side=side)  # type: ignore[call-overload]  # side is 'left' or 'right'; the stubs want a Literal


def threshold_curves(prediction: ArrayLike, target: ArrayLike,
                     thresholds: np.ndarray = INFNET_THRESHOLDS) -> dict[str, np.ndarray]:
    """Dice, sensitivity, specificity and E-measure of a map in [0, 1] ``(y, x)`` at each threshold.

    Returns ``thresholds`` and one float64 array of the same length per metric. As Inf-Net's
    ``Fmeasure_calu.m``: Dice, sensitivity and specificity binarise with ``map >= t``, and where a
    threshold leaves no true positive all three are 0 (so specificity is 0 there, not about 1);
    specificity is nan when the target has no background. As its ``main.m``, the E-measure
    binarises with ``map > t``. All thresholds come from one sort and cumulative counts, not a
    pass over the map per threshold.
    """
    pred_map, target_mask = _map_and_target(prediction, target)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    values = np.sort(pred_map, axis=None)
    foreground = np.sort(pred_map[target_mask])
    n, n_fg = values.size, foreground.size
    with np.errstate(divide="ignore", invalid="ignore"):
        predicted = _count_at_least(values, thresholds, strict=False)
        tp = _count_at_least(foreground, thresholds, strict=False)
        fp = predicted - tp
        tn = (n - n_fg) - fp
        found = tp > 0
        dice_curve = np.where(found, 2.0 * tp / (n_fg + predicted), 0.0)
        sensitivity_curve = np.where(found, tp / n_fg, 0.0)
        specificity_curve = np.where(found, tn / (tn + fp), 0.0)

    predicted_e = _count_at_least(values, thresholds, strict=True)
    tp_e = _count_at_least(foreground, thresholds, strict=True)
    share = n_fg / n
    if n_fg == 0:
        e_curve = 1.0 - predicted_e / n
    elif n_fg == n:
        e_curve = predicted_e / n
    else:
        # A binary map and target take two centred values each, so the enhanced-alignment matrix
        # takes four: one per cell of the confusion matrix, weighted by its count.
        on = 1.0 - predicted_e / n
        off = -predicted_e / n
        counts_and_terms = (
            (tp_e, _enhanced_alignment(on, 1.0 - share)),
            (predicted_e - tp_e, _enhanced_alignment(on, -share)),
            (n_fg - tp_e, _enhanced_alignment(off, 1.0 - share)),
            (n - n_fg - (predicted_e - tp_e), _enhanced_alignment(off, -share)),
        )
        e_curve = sum(count * term for count, term in counts_and_terms) / n
    return {
        "thresholds": thresholds,
        "dice": dice_curve,
        "sensitivity": sensitivity_curve,
        "specificity": specificity_curve,
        "e_measure": np.asarray(e_curve, dtype=np.float64),
    }


def _infnet_summary(curves: Mapping[str, np.ndarray], s_value: float, mae_value: float) -> dict[str, float]:
    """The numbers Inf-Net reports from one set of ``threshold_curves`` (one image's, or the mean
    over a dataset's images): each curve's mean and, for Dice and E-measure, max over thresholds."""
    return {
        "mean_dice": float(curves["dice"].mean()),
        "max_dice": float(curves["dice"].max()),
        "mean_sensitivity": float(curves["sensitivity"].mean()),
        "mean_specificity": float(curves["specificity"].mean()),
        "mean_e_measure": float(curves["e_measure"].mean()),
        "max_e_measure": float(curves["e_measure"].max()),
        "s_measure": s_value,
        "mae": mae_value,
    }


def infnet_metrics(probability: ArrayLike, target: ArrayLike) -> dict[str, float]:
    """Inf-Net's evaluation of one image: its probability map ``(y, x)`` (any finite values; min-max
    rescaled first by ``rescale_min_max``) against a binary target of the same shape.

    Keys: ``mean_dice``, ``max_dice``, ``mean_sensitivity``, ``mean_specificity``,
    ``mean_e_measure``, ``max_e_measure`` (mean/max over ``INFNET_THRESHOLDS`` of
    ``threshold_curves``), ``s_measure`` and ``mae`` (on the rescaled map). The max here is over one
    image's curve; Inf-Net's published max is over the dataset's mean curve
    (``infnet_dataset_metrics``). Note that even a perfect binary map has mean Dice below 1: at
    threshold 0 every pixel counts as foreground.

    Fan et al., "Inf-Net: automatic COVID-19 lung infection segmentation from CT images", IEEE TMI
    2020. Introduced in chapter 04.
    """
    rescaled = rescale_min_max(probability)
    return _infnet_summary(threshold_curves(rescaled, target), s_measure(rescaled, target), mae(rescaled, target))


def infnet_dataset_metrics(probabilities: Iterable[ArrayLike],
                           targets: Iterable[ArrayLike]) -> dict[str, float | int]:
    """Inf-Net's numbers for a set of images, aggregated as its ``main.m``: each metric's curve is
    averaged over images, then its mean and max over thresholds are taken; S-measure and MAE are
    averaged over images. Same keys as ``infnet_metrics`` plus ``n`` (images)."""
    probability_list, target_list = list(probabilities), list(targets)
    if len(probability_list) != len(target_list):
        raise InvalidInputError(f"got {len(probability_list)} probability maps but {len(target_list)} targets")
    if not probability_list:
        raise InvalidInputError("probabilities is empty: need at least one image")
    curves: dict[str, list[np.ndarray]] = {"dice": [], "sensitivity": [], "specificity": [], "e_measure": []}
    s_values: list[float] = []
    mae_values: list[float] = []
    for probability, target in zip(probability_list, target_list):
        rescaled = rescale_min_max(probability)
        image_curves = threshold_curves(rescaled, target)
        for key in curves:
            curves[key].append(image_curves[key])
        s_values.append(s_measure(rescaled, target))
        mae_values.append(mae(rescaled, target))
    mean_curves = {key: np.mean(value, axis=0) for key, value in curves.items()}
    return {**_infnet_summary(mean_curves, float(np.mean(s_values)), float(np.mean(mae_values))),
            "n": len(probability_list)}
