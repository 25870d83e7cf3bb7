"""Segmentation losses: cross entropy, class-weighted cross entropy, soft Dice, CE + Dice and
the distance-transform Hausdorff loss.

Every loss takes ``logits`` ``(B, C, H, W)`` (a network's raw output) and a ``target`` that is
either class indices ``(B, H, W)`` int64 or class probabilities ``(B, C, H, W)`` float (soft
labels from mixup or pseudo-labelling), and returns a scalar tensor. A one-hot probability
target gives exactly the same value as the matching index target. The formulas follow the
report's section 2.4.1 and the survey it cites (Ma et al., "Loss odyssey in medical image
segmentation", MedIA 2021); each function names its paper.

Introduced in chapter 04.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from covidlib.errors import InvalidInputError

LossFunction = Callable[[Tensor, Tensor], Tensor]


def target_probabilities(logits: Tensor, target: Tensor) -> Tensor:
    """The target as probabilities ``(B, C, H, W)`` float, checked against ``logits``.

    Index targets ``(B, H, W)`` become one-hot; probability targets are returned as they are
    (in the logits' dtype).
    """
    if not isinstance(logits, Tensor) or logits.ndim < 3 or not logits.is_floating_point():
        raise InvalidInputError(f"logits must be a float tensor (B, C, H, W), got {getattr(logits, 'shape', type(logits))}")
    if not isinstance(target, Tensor):
        raise InvalidInputError(f"target must be a tensor, got {type(target).__name__}")
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise InvalidInputError(
            f"logits need at least 2 class channels (softmax over background and foreground), got {num_classes}"
        )
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise InvalidInputError(
                f"a probability target must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        return target.to(logits.dtype)
    expected = (logits.shape[0], *logits.shape[2:])
    if target.shape != expected:
        raise InvalidInputError(
            f"an index target must have shape {expected} for logits {tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.is_complex():
        raise InvalidInputError(f"an index target must hold integer class indices, got dtype {target.dtype}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise InvalidInputError(
            f"target class indices must lie in [0, {num_classes - 1}], got [{int(target.min())}, {int(target.max())}]"
        )
    one_hot = F.one_hot(target.long(), num_classes)  # (B, H, W, C)
    return one_hot.movedim(-1, 1).to(logits.dtype)


def cross_entropy(logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Mean pixel cross entropy ``-1/N sum_i sum_c w_c y_ic log p_ic`` (report eq. in 2.4.1).

    ``class_weights`` ``(C,)`` are the ``w_c`` (all 1 when ``None``). The sum is divided by the
    number of pixels ``N`` for index and soft targets alike; ``torch.nn.functional.cross_entropy``
    instead divides by ``sum_i w_{y_i}`` for index targets, which would make soft and hard
    targets disagree.
    """
    probabilities = target_probabilities(logits, target)
    log_p = F.log_softmax(logits, dim=1)
    if class_weights is not None:
        class_weights = torch.as_tensor(class_weights, dtype=log_p.dtype, device=log_p.device)
        if class_weights.shape != (logits.shape[1],):
            raise InvalidInputError(
                f"class_weights must have shape ({logits.shape[1]},), one per class, got {tuple(class_weights.shape)}"
            )
        log_p = log_p * class_weights.view(1, -1, *([1] * (logits.ndim - 2)))
    return -(probabilities * log_p).sum(dim=1).mean()


def inverse_frequency_weights(target: Tensor, num_classes: int) -> Tensor:
    """Class weights ``w_c = N / (C * max(n_c, 1))`` from a target's (soft) class counts ``n_c``.

    ``target``: indices ``(B, H, W)`` or probabilities ``(B, C, H, W)``; ``N`` is the pixel
    count. Balanced classes get weight 1; a class absent from ``target`` is counted as one
    pixel so its weight stays finite. Pass a whole training set's masks to get dataset
    weights once, or let :func:`weighted_cross_entropy` compute them per batch.
    """
    if target.is_floating_point():
        counts = target.detach().movedim(1, -1).reshape(-1, num_classes).sum(dim=0)
    else:
        counts = torch.bincount(target.detach().reshape(-1).long(), minlength=num_classes)[:num_classes]
    counts = counts.to(torch.float32)
    return counts.sum() / (num_classes * counts.clamp(min=1.0))


def weighted_cross_entropy(logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Cross entropy with inverse class-frequency weights (Ronneberger et al. 2015 weight ``w_c``).

    ``class_weights`` ``(C,)``: fixed weights, e.g. :func:`inverse_frequency_weights` of the
    training masks; ``None`` computes them from this batch's target.
    """
    if class_weights is None:
        class_weights = inverse_frequency_weights(target_probabilities(logits, target), logits.shape[1])
    return cross_entropy(logits, target, class_weights=class_weights)


def soft_dice_loss(logits: Tensor, target: Tensor, include_background: bool = False, smooth: float = 1e-5) -> Tensor:
    """``1 - mean_c D_c`` with the V-Net soft Dice ``D = 2 sum p g / (sum p^2 + sum g^2)``.

    Milletari et al., "V-Net", 3DV 2016 (the report's formula, section 2.4.1). ``p`` is the
    softmax probability and ``g`` the target probability of class ``c``; the sums run over
    the whole batch and all pixels (so slices without infection do not make the loss
    undefined), and ``smooth`` is added to numerator and denominator (both empty: ``D = 1``).
    The background class is left out of the mean unless ``include_background``.
    """
    probabilities = target_probabilities(logits, target)
    predicted = F.softmax(logits, dim=1)
    first = 0 if include_background else 1
    predicted, probabilities = predicted[:, first:], probabilities[:, first:]
    sum_dims = [0, *range(2, logits.ndim)]
    overlap = (predicted * probabilities).sum(dim=sum_dims)
    denominator = (predicted**2).sum(dim=sum_dims) + (probabilities**2).sum(dim=sum_dims)
    dice = (2.0 * overlap + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


def ce_dice_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0) -> Tensor:
    """Cross entropy plus ``dice_weight`` times the soft Dice loss (the compound loss the
    report recommends after Ma et al. 2021)."""
    return cross_entropy(logits, target) + dice_weight * soft_dice_loss(logits, target)


def boundary_distance_map(mask: np.ndarray) -> np.ndarray:
    """Unsigned distance (pixels) of each pixel to the boundary of a binary mask, any ndim.

    Inside the mask: Euclidean distance to the nearest background pixel; outside: to the
    nearest mask pixel (``scipy.ndimage.distance_transform_edt`` both ways). A mask that is
    empty or full has no boundary, and its map is all zeros.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, dtype=np.float32)
    return (ndimage.distance_transform_edt(mask) + ndimage.distance_transform_edt(~mask)).astype(np.float32)


def hausdorff_dt_loss(logits: Tensor, target: Tensor, alpha: float = 2.0) -> Tensor:
    """Distance-transform Hausdorff loss ``mean_i (s_i - g_i)^2 (d_G,i^alpha + d_S,i^alpha)``.

    Karimi and Salcudean, "Reducing the Hausdorff distance in medical image segmentation with
    convolutional neural networks", IEEE TMI 2019 (their ``HD_DT`` loss). ``s`` is the softmax
    probability and ``g`` the target probability of each foreground class; ``d_G`` and
    ``d_S`` are :func:`boundary_distance_map` s (in pixels) of the target thresholded at 0.5
    and of the prediction thresholded at 0.5, per image, computed without gradient. The mean
    runs over images, pixels and foreground classes. The report's formula writes
    ``(s - g)`` unsquared, which can be negative; the paper squares it, as done here.
    """
    if alpha <= 0:
        raise InvalidInputError(f"alpha must be positive, got {alpha}")
    probabilities = target_probabilities(logits, target)
    predicted = F.softmax(logits, dim=1)
    predicted, probabilities = predicted[:, 1:], probabilities[:, 1:]
    target_masks = (probabilities.detach() > 0.5).cpu().numpy()
    predicted_masks = (predicted.detach() > 0.5).cpu().numpy()
    distances = np.zeros(target_masks.shape, dtype=np.float32)
    for index in np.ndindex(*target_masks.shape[:2]):
        distances[index] = boundary_distance_map(target_masks[index]) ** alpha + boundary_distance_map(predicted_masks[index]) ** alpha
    weights = torch.from_numpy(distances).to(device=logits.device, dtype=predicted.dtype)
    return ((predicted - probabilities) ** 2 * weights).mean()


#: The losses by name; the command line lists them from :data:`covidlib.options.LOSS_NAMES`, which a test
#: keeps equal to these keys (so that ``--help`` needs no torch).
LOSSES: dict[str, LossFunction] = {
    "ce": cross_entropy,
    "wce": weighted_cross_entropy,
    "dice": soft_dice_loss,
    "ce+dice": ce_dice_loss,
    "hd": hausdorff_dt_loss,
}


def get_loss(name: str, **kwargs: object) -> LossFunction:
    """The loss called ``name`` (one of ``LOSSES``: ce, wce, dice, ce+dice, hd) as a function
    ``(logits, target) -> scalar``; ``kwargs`` are bound to it (e.g. ``class_weights``)."""
    if name not in LOSSES:
        raise InvalidInputError(f"loss name {name!r} is not known; choose one of {sorted(LOSSES)}")
    return partial(LOSSES[name], **kwargs) if kwargs else LOSSES[name]
