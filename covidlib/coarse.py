"""Coarse segmentation and bounding boxes: where might infection be in an unlabelled scan?

The report (section 5.3.2) trains a low-resolution 3D segmentation network only to find
*where* to crop patches in unlabelled volumes: its "rough mask" gives a bounding box, and the
pseudo-labelling of chapter 07 samples patches inside that box. For 2D slice datasets
(COVID-SemiSeg) a 2D network's prediction plays the same role.

Boxes are half-open index ranges ``[z0, z1) x [y0, y1) x [x0, x1)`` of a ``(z, y, x)`` array;
a 2D slice is a one-slice volume ``(1, H, W)``.

Introduced in chapter 07.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from covidlib.config import get_device
from covidlib.errors import InvalidInputError
from covidlib.losses import get_loss
from covidlib.models.unet3d import GENESIS_POOLINGS, UNet3d
from covidlib.train import predict_proba


@dataclass(frozen=True)
class Box:
    """A half-open box ``[z0, z1) x [y0, y1) x [x0, x1)`` in array indices of a (z, y, x) array."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        if not (self.z0 < self.z1 and self.y0 < self.y1 and self.x0 < self.x1):
            raise InvalidInputError(f"Box must have positive extent on every axis, got {self}")
        if min(self.z0, self.y0, self.x0) < 0:
            raise InvalidInputError(f"Box starts must be non-negative, got {self}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Extent (z, y, x) in voxels."""
        return (self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0)

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether the box lies inside an array of ``shape`` (z, y, x)."""
        return self.z1 <= shape[0] and self.y1 <= shape[1] and self.x1 <= shape[2]

    def enlarge(self, top: int, bottom: int, left: int, right: int, shape: Sequence[int]) -> "Box":
        """The box grown in-plane by the given margins (pixels) and clipped to ``shape`` (z, y, x).

        The margins enlarge ``y0``/``y1``/``x0``/``x1``; the slice range is kept (the report's
        margins are in-plane pixels).
        """
        if min(top, bottom, left, right) < 0:
            raise InvalidInputError(f"margins must be non-negative, got {(top, bottom, left, right)}")
        if not self.fits(shape):
            raise InvalidInputError(f"{self} does not fit in an array of shape {tuple(shape)}")
        return Box(self.z0, self.z1, max(0, self.y0 - top), min(int(shape[1]), self.y1 + bottom),
                   max(0, self.x0 - left), min(int(shape[2]), self.x1 + right))


def mask_bounding_box(mask: np.ndarray) -> Box | None:
    """The tightest :class:`Box` around the non-zero voxels of ``mask`` (z, y, x) or (H, W).

    A 2D mask counts as one slice. ``None`` when the mask is empty.
    """
    array = np.asarray(mask)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise InvalidInputError(f"mask must be (z, y, x) or (H, W), got shape {array.shape}")
    nonzero = array != 0
    if not nonzero.any():
        return None
    ranges: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(nonzero.any(axis=other))
        ranges.extend((int(hits[0]), int(hits[-1]) + 1))
    return Box(*ranges)


def boxes_from_probabilities(probabilities: Sequence[np.ndarray], threshold: float = 0.5) -> list[Box | None]:
    """Bounding boxes of ``probability > threshold`` for each map (z, y, x) or (H, W); ``None`` when empty."""
    if not 0.0 <= threshold < 1.0:
        raise InvalidInputError(f"threshold must be in [0, 1), got {threshold!r}")
    return [mask_bounding_box(np.asarray(p) > threshold) for p in probabilities]


def predict_boxes_2d(model: nn.Module, images: Sequence[np.ndarray], *, threshold: float = 0.5,
                     device: str | torch.device = "auto", batch_size: int = 16) -> list[Box | None]:
    """Boxes from a 2D network's slice-by-slice prediction on slices (H, W) or volumes (z, H, W).

    Images of equal in-plane shape are predicted together; a volume's box spans all its slices'
    predictions. Used where no coarse 3D network is trained: for 2D datasets (COVID-SemiSeg) the
    fine-tuned 2D model A' stands in for it. Introduced in chapter 07.
    """
    stacks = []
    for i, image in enumerate(images):
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise InvalidInputError(f"images[{i}]: expected (H, W) or (z, H, W), got shape {array.shape}")
        stacks.append(array)
    boxes: list[Box | None] = [None] * len(stacks)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, stack in enumerate(stacks):
        by_shape.setdefault(stack.shape[1:], []).append(index)
    for indices in by_shape.values():
        probabilities = predict_proba(model, np.concatenate([stacks[i] for i in indices]), device, batch_size)
        start = 0
        for index in indices:
            depth = len(stacks[index])
            boxes[index] = mask_bounding_box(probabilities[start:start + depth] > threshold)
            start += depth
    return boxes


# --- the coarse 3D segmenter -----------------------------------------------------------------

def resize_volume(volume: np.ndarray, shape: Sequence[int], *, mode: str = "trilinear") -> np.ndarray:
    """``volume`` (z, y, x) resampled to ``shape`` (z, y, x): trilinear for images and
    probabilities, ``"nearest-exact"`` for masks."""
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim != 3:
        raise InvalidInputError(f"volume must be (z, y, x), got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(tensor, size=tuple(int(s) for s in shape), mode=mode, **kwargs)[0, 0].numpy()


def _check_coarse_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    multiple = 2**GENESIS_POOLINGS
    if len(shape) != 3 or any(int(s) < multiple or int(s) % multiple for s in shape):
        raise InvalidInputError(f"coarse shape must be three multiples of {multiple}, got {tuple(shape)}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def train_coarse_segmenter(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                           shape: Sequence[int] = (32, 64, 64), base_width: int = 4, epochs: int = 50,
                           lr: float = 1e-3, loss: str = "ce+dice", seed: int = 0,
                           device: str | torch.device = "auto", progress: bool = True) -> UNet3d:
    """Train a small :class:`~covidlib.models.unet3d.UNet3d` on volumes downsampled to ``shape``.

    ``images``: preprocessed float volumes (z, y, x); ``masks``: their 0/1 lesion masks. One
    volume per batch, Adam. The network only has to say roughly where infection is, so a low
    resolution and a few epochs are enough (report section 5.3.2). Introduced in chapter 07.
    """
    if len(images) != len(masks) or not images:
        raise InvalidInputError(f"images and masks must be non-empty and of equal length, got {len(images)} and {len(masks)}")
    shape = _check_coarse_shape(shape)
    for index, (image, mask) in enumerate(zip(images, masks)):
        if not np.isfinite(image).all():
            raise InvalidInputError(f"image {index} holds NaN or infinite values")
        if np.shape(image) != np.shape(mask) or not np.isin(mask, (0, 1)).all():
            raise InvalidInputError(f"mask {index} must be 0/1 and of its image's shape {np.shape(image)}, "
                                    f"got shape {np.shape(mask)} with values {np.unique(mask)[:5].tolist()}")
    resolved = get_device(device)
    small_images = torch.stack([torch.from_numpy(resize_volume(im, shape)) for im in images])[:, None]
    small_masks = torch.stack([torch.from_numpy(resize_volume(m, shape, mode="nearest-exact")) for m in masks]).long()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = UNet3d(in_channels=1, num_classes=2, base_width=base_width).to(resolved)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = get_loss(loss)
    model.train()
    for _ in tqdm(range(epochs), desc="coarse 3D", disable=not progress):
        for index in torch.randperm(len(small_images), generator=generator).tolist():
            optimizer.zero_grad(set_to_none=True)
            logits = model(small_images[index:index + 1].to(resolved))
            loss = loss_fn(logits, small_masks[index:index + 1].to(resolved))
            if not torch.isfinite(loss):
                raise InvalidInputError(f"the coarse network's loss became {float(loss)}: lower lr={lr}")
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def predict_coarse(model: nn.Module, volume: np.ndarray, shape: Sequence[int] = (32, 64, 64), *,
                   device: str | torch.device = "auto") -> np.ndarray:
    """Foreground probability (z, y, x) at ``volume``'s resolution from the coarse network run at ``shape``."""
    shape = _check_coarse_shape(shape)
    resolved = get_device(device)
    small = torch.from_numpy(resize_volume(volume, shape))[None, None].to(resolved)
    model = model.to(resolved).eval()
    probability = torch.softmax(model(small).float(), dim=1)[0, 1].cpu().numpy()
    return resize_volume(probability, np.asarray(volume).shape)


def predict_boxes_3d(model: nn.Module, volumes: Sequence[np.ndarray], shape: Sequence[int] = (32, 64, 64), *,
                     threshold: float = 0.5, device: str | torch.device = "auto") -> list[Box | None]:
    """Bounding boxes of the coarse 3D prediction for each volume (z, y, x); ``None`` when empty."""
    return [mask_bounding_box(predict_coarse(model, v, shape, device=device) > threshold) for v in volumes]
