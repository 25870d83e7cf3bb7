"""Whole-slice pseudo-labels: a trained network's own predictions on unlabelled slices as targets.

Self-training (Lee, "Pseudo-Label", ICML workshop 2013; Xie et al., "Self-training with Noisy
Student improves ImageNet classification", CVPR 2020): a teacher labels the unlabelled images and
a student learns from them beside the labelled ones, under augmentation the teacher did not see.
The report's pseudo-labels (:mod:`covidlib.pseudo`) label small patches by their similarity to a
dictionary of labelled patches; these label whole slices with the teacher's test-time-augmented
probabilities, so the student trains on the same kind of input it is tested on.

:class:`PseudoSliceDataset` has the items :class:`covidlib.mean_teacher.MeanTeacher` draws its
pseudo-labelled batches from, so the book's continuations of A' take it in place of the patches
(``benchmarks/semi_recipe.py``). Introduced in chapter 08.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from covidlib.augment import RandomTransform
from covidlib.errors import InvalidInputError
from covidlib.inference import predict_stack

__all__ = ["PseudoSliceDataset", "pseudo_label_slices"]


def _check_stack(images: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 3 or len(array) == 0:
        raise InvalidInputError(f"{name}: expected a stack of slices (N, H, W), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{name}: contains NaN or infinite values")
    return array


def pseudo_label_slices(model: nn.Module, images: np.ndarray, image_size: int, device: str | torch.device = "auto", *,
                        tta: bool = True, batch_size: int = 8) -> np.ndarray:
    """Foreground probabilities (N, H, W) float32 of ``model`` on unlabelled slices (N, H, W),
    predicted at ``image_size`` and averaged over the 8 turns and mirrors when ``tta``
    (:func:`covidlib.inference.predict_stack`)."""
    stack = _check_stack(images, "images")
    return predict_stack(model, stack, image_size, device, batch_size, tta=tta).astype(np.float32)


class PseudoSliceDataset(Dataset):
    """Unlabelled slices with the teacher's probabilities as soft targets, augmented on each draw.

    ``images`` (N, H, W) and ``probabilities`` (N, H, W) in [0, 1]; ``hard``: targets thresholded
    at 0.5 instead. ``transform`` is applied to the image and the foreground map together (so they
    stay aligned), draw ``d`` of the dataset using the generator seeded by ``(seed, d)``.
    Items: ``image`` (1, H, W) float32, ``mask`` (2, H, W) float32 (background, infection,
    summing to 1), ``weight`` 1.0.
    """

    def __init__(self, images: np.ndarray, probabilities: np.ndarray, *, transform: RandomTransform | None = None,
                 hard: bool = False, seed: int = 0) -> None:
        self.images = _check_stack(images, "images")
        self.probabilities = _check_stack(probabilities, "probabilities")
        if self.images.shape != self.probabilities.shape:
            raise InvalidInputError(f"images {self.images.shape} and probabilities {self.probabilities.shape} "
                                    "must have the same shape")
        if self.probabilities.min() < 0 or self.probabilities.max() > 1:
            raise InvalidInputError("probabilities must lie in [0, 1]")
        if transform is not None and not isinstance(transform, RandomTransform):
            raise InvalidInputError(f"transform must be a covidlib.augment RandomTransform, got {type(transform).__name__}")
        self.transform, self.hard, self.seed = transform, hard, int(seed)
        self.draws = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        foreground = self.probabilities[index]
        if self.hard:
            foreground = (foreground > 0.5).astype(np.float32)
        image = self.images[index][None]
        if self.transform is not None:
            image, warped = self.transform(image, foreground[None], rng=np.random.default_rng([self.seed, self.draws]))
            foreground = np.clip(warped[0], 0.0, 1.0)  # type: ignore[index]  # a mask in gives a mask out
        self.draws += 1
        mask = np.stack([1.0 - foreground, foreground]).astype(np.float32)
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask)), "weight": torch.tensor(1.0)}
