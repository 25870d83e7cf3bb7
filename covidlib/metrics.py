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
never silently hides cases where the model found nothing.

Introduced in chapter 04.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

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
    values = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)  # type: ignore[arg-type]
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
