"""Training data: 2D slice datasets, volume-level splits and seeded data loaders.

The report trains 2D networks on axial slices cut from 3D volumes (section 5.2.1: "we sliced
the volume into 2D", because slice thickness varies too much between datasets for 3D). Two
rules keep the evaluation honest:

* Splits are made over *volumes* (case ids), never over slices: neighbouring slices of one
  scan look almost alike, so a slice-level split would leak the test set into training.
  For 2D datasets such as COVID-SemiSeg, where every image is its own case, splitting by case
  *is* splitting by slice, and the same functions apply.
* Everything random (which empty slices are kept, which augmentation an item gets, the order
  of batches) comes from explicit seeds, so a run repeats exactly.

Introduced in chapter 03.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from covidlib.augment import RandomTransform, Transform
from covidlib.config import torch_threads
from covidlib.errors import InvalidInputError

__all__ = [
    "SliceDataset",
    "SliceRef",
    "VolumeSplit",
    "split_volumes",
    "kfold_volumes",
    "report_split",
    "REPORT_SPLITS",
    "seeded_loader",
    "fit_slice",
]

ResizeMode = Literal["pad_crop", "resize"]


class SliceRef(NamedTuple):
    """One slice of the dataset: which case, which axial index, whether it shows infection."""

    case_id: str
    slice_index: int
    has_lesion: bool


def _as_array(value: Any) -> np.ndarray:
    """A numpy array from an array or a ``covidlib.io.Volume`` (its ``array``)."""
    return np.asarray(value.array if hasattr(value, "array") else value)


def _unpack_case(item: Any, position: int, case_id: str | None) -> tuple[str, np.ndarray, np.ndarray]:
    """(case_id, image (z, y, x) float, lesion mask (z, y, x) uint8) from one input item."""
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise InvalidInputError(f"volumes[{position}]: a tuple must be (image, lesion_mask), got {len(item)} items")
        image, lesion = item
        name = case_id if case_id is not None else f"case{position:03d}"
    elif hasattr(item, "image") and hasattr(item, "lesion_mask"):
        image, lesion = item.image, item.lesion_mask
        name = case_id if case_id is not None else str(getattr(item, "case_id", f"case{position:03d}"))
    else:
        raise InvalidInputError(f"volumes[{position}]: expected (image, lesion_mask) or a case with .image and "
                                f".lesion_mask (PreprocessedCase or datasets.Case), got {type(item).__name__}")
    if lesion is None:
        raise InvalidInputError(f"case {name!r}: has no lesion mask; SliceDataset needs labelled cases")
    image, lesion = _as_array(image), _as_array(lesion)
    if image.ndim == 2:
        image = image[None]
    if lesion.ndim == 2:
        lesion = lesion[None]
    if image.ndim != 3:
        raise InvalidInputError(f"case {name!r}: image must be (z, y, x) or a 2D slice (y, x), got shape {image.shape}")
    if lesion.shape != image.shape:
        raise InvalidInputError(f"case {name!r}: lesion mask shape {lesion.shape} differs from image shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise InvalidInputError(f"case {name!r}: image has dtype {image.dtype}; pass preprocessed float images "
                                "(covidlib.preprocess normalises HU volumes and 8-bit slices)")
    if not np.isfinite(image).all():
        raise InvalidInputError(f"case {name!r}: image contains NaN or infinite values")
    values = np.unique(lesion)
    if not np.isin(values, (0, 1)).all():
        raise InvalidInputError(f"case {name!r}: lesion mask must be binary 0/1, found values {values[:10].tolist()}")
    return name, image, lesion.astype(np.uint8, copy=False)


def fit_slice(image: np.ndarray, mask: np.ndarray, size: tuple[int, int],
              mode: ResizeMode = "pad_crop") -> tuple[np.ndarray, np.ndarray]:
    """Bring a slice (H, W) and its mask (H, W) to ``size`` = (height, width).

    ``"pad_crop"`` pads symmetrically with 0 (background after z-scoring) or crops the centre:
    pixels keep their 1 mm size, which preprocessed volumes rely on. ``"resize"`` rescales
    (bilinear for the image, nearest for the mask): for 2D datasets whose images come in many
    sizes and have no physical spacing, such as COVID-SemiSeg.
    """
    height, width = size
    if mode == "pad_crop":
        out_image = np.zeros((height, width), dtype=image.dtype)
        out_mask = np.zeros((height, width), dtype=mask.dtype)
        src_y, dst_y, len_y = _centre_window(image.shape[0], height)
        src_x, dst_x, len_x = _centre_window(image.shape[1], width)
        out_image[dst_y:dst_y + len_y, dst_x:dst_x + len_x] = image[src_y:src_y + len_y, src_x:src_x + len_x]
        out_mask[dst_y:dst_y + len_y, dst_x:dst_x + len_x] = mask[src_y:src_y + len_y, src_x:src_x + len_x]
        return out_image, out_mask
    if mode == "resize":
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        out_image = F.interpolate(image_t, size=(height, width), mode="bilinear", align_corners=False)
        out_mask = F.interpolate(mask_t, size=(height, width), mode="nearest-exact")
        return out_image[0, 0].numpy().astype(image.dtype), out_mask[0, 0].numpy().astype(mask.dtype)
    raise InvalidInputError(f"resize mode must be 'pad_crop' or 'resize', got {mode!r}")


def _centre_window(source: int, target: int) -> tuple[int, int, int]:
    """(start in source, start in target, length) of the centred overlap of two lengths."""
    length = min(source, target)
    return (source - length) // 2, (target - length) // 2, length


class SliceDataset(Dataset):
    """Axial 2D slices of labelled cases, for 2D segmentation networks.

    ``volumes``: a sequence of ``PreprocessedCase`` / ``datasets.Case`` objects (``.image``
    (z, y, x) float or a ``Volume``, ``.lesion_mask`` (z, y, x) 0/1, ``.case_id``) or of
    ``(image, lesion_mask)`` tuples (ids from ``case_ids`` or ``case000``, ``case001``, ...).
    A 2D slice (1, H, W) or (H, W) counts as a one-slice volume. Images must already be
    preprocessed floats (z-scored CT, or 8-bit slices scaled by ``covidlib.preprocess``).

    ``empty_fraction`` is the share of slices *without* infection that is kept (1.0 keeps all,
    0.0 keeps only slices with infection): floor(empty_fraction * n_empty + 0.5) of them, drawn
    once from ``seed``.
    Every slice with infection is always kept.

    ``output_size`` (int or (H, W)) makes every item that size with ``resize_mode`` (see
    :func:`fit_slice`); ``None`` keeps each slice's own size (batching then needs equal sizes).

    ``transform`` (an ``augment`` random transform) is applied after resizing, with a
    generator seeded by ``(seed, epoch, index)``: the same item in the same epoch always gets
    the same augmentation, whatever the worker or batch order. Call :meth:`set_epoch` at the
    start of each epoch (before the DataLoader creates its iterator) to get new draws.

    Items are dicts: ``image`` (1, H, W) float32 tensor, ``mask`` (H, W) int64 tensor,
    ``case_id`` str, ``slice_index`` int.
    """

    def __init__(self, volumes: Sequence[Any], *, case_ids: Sequence[str] | None = None,
                 empty_fraction: float = 1.0, output_size: int | tuple[int, int] | None = None,
                 resize_mode: ResizeMode = "pad_crop", transform: RandomTransform | None = None,
                 seed: int = 0) -> None:
        if case_ids is not None and len(case_ids) != len(volumes):
            raise InvalidInputError(f"case_ids has {len(case_ids)} entries but volumes has {len(volumes)}")
        if not (isinstance(empty_fraction, (int, float)) and 0.0 <= empty_fraction <= 1.0):
            raise InvalidInputError(f"empty_fraction must be a number in [0, 1], got {empty_fraction!r}")
        if resize_mode not in ("pad_crop", "resize"):
            raise InvalidInputError(f"resize_mode must be 'pad_crop' or 'resize', got {resize_mode!r}")
        if transform is not None and not isinstance(transform, RandomTransform):
            raise InvalidInputError(f"transform must be a covidlib.augment RandomTransform, got {type(transform).__name__}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(output_size, (int, np.integer)):
            output_size = (int(output_size), int(output_size))
        if output_size is not None and (len(output_size) != 2 or min(output_size) < 1):
            raise InvalidInputError(f"output_size must be a positive int or (height, width), got {output_size!r}")

        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        self.resize_mode: ResizeMode = resize_mode
        self.transform = transform
        self.seed = int(seed)
        self.empty_fraction = float(empty_fraction)
        self.epoch = 0

        self._images: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        lesion_slices: list[SliceRef] = []
        empty_slices: list[SliceRef] = []
        for position, item in enumerate(volumes):
            name, image, lesion = _unpack_case(item, position, None if case_ids is None else str(case_ids[position]))
            if name in self._images:
                raise InvalidInputError(f"case id {name!r} occurs twice; case ids must be unique")
            self._images[name], self._masks[name] = image, lesion
            has_lesion = lesion.reshape(lesion.shape[0], -1).any(axis=1)
            for z, flag in enumerate(has_lesion):  # type: ignore[arg-type]  # any(axis=1) of a 2D array is an array, not a scalar
                (lesion_slices if flag else empty_slices).append(SliceRef(name, z, bool(flag)))

        keep_empty = int(math.floor(self.empty_fraction * len(empty_slices) + 0.5))
        chosen = np.random.default_rng(self.seed).permutation(len(empty_slices))[:keep_empty]
        kept_empty = {empty_slices[i] for i in chosen}
        order = {name: i for i, name in enumerate(self._images)}
        self.slices: list[SliceRef] = sorted(
            lesion_slices + list(kept_empty), key=lambda ref: (order[ref.case_id], ref.slice_index))
        self.num_empty_available = len(empty_slices)

    @classmethod
    def from_dataset(cls, dataset: Any, case_ids: Sequence[str], *,
                     prepare: Callable[[Any], Any] | None = None, **options: Any) -> "SliceDataset":
        """Slices of ``dataset.load(case_id)`` for each id, through ``prepare`` (e.g. preprocessing).

        ``prepare`` maps a loaded ``Case`` to something :class:`SliceDataset` accepts (a
        ``PreprocessedCase``, or the case with a float image); ``options`` go to the constructor.
        """
        cases = [dataset.load(case_id) for case_id in case_ids]
        if prepare is not None:
            cases = [prepare(case) for case in cases]
        return cls(cases, case_ids=[str(c) for c in case_ids], **options)

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation draws of ``epoch`` from now on."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise InvalidInputError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    @property
    def case_ids(self) -> list[str]:
        """The cases in the dataset, in input order."""
        return list(self._images)

    @property
    def num_lesion_slices(self) -> int:
        """How many of the kept slices show infection."""
        return sum(ref.has_lesion for ref in self.slices)

    def __len__(self) -> int:
        return len(self.slices)

    def augmentation_for(self, index: int) -> Transform | None:
        """The deterministic augmentation item ``index`` gets in the current epoch (to log or show)."""
        if self.transform is None:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return self.transform.draw(rng)

    def raw_slice(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` resized but not augmented: image (H, W) float32, mask (H, W) uint8."""
        ref = self.slices[index]
        image = self._images[ref.case_id][ref.slice_index].astype(np.float32, copy=False)
        mask = self._masks[ref.case_id][ref.slice_index]
        if self.output_size is not None:
            image, mask = fit_slice(image, mask, self.output_size, self.resize_mode)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a SliceDataset of {len(self)} slices")
        index = index % len(self)
        with torch_threads(1):  # tiny operations: several threads only add synchronisation (issue 14)
            image, mask = self.raw_slice(index)
            augmentation = self.augmentation_for(index)
            if augmentation is not None:
                image, mask = augmentation(image, mask)
        ref = self.slices[index]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "case_id": ref.case_id,
            "slice_index": ref.slice_index,
        }


# --- splits -----------------------------------------------------------------------------

def _check_ids(case_ids: Sequence[str], argument: str = "case_ids") -> list[str]:
    ids = [str(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        duplicates = sorted({c for c in ids if ids.count(c) > 1})
        raise InvalidInputError(f"{argument} must be unique, found duplicates {duplicates[:5]}")
    return ids


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def split_volumes(case_ids: Sequence[str], n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``n_test`` whole volumes: returns (train+validation ids, test ids).

    The choice is a seeded permutation; both lists keep the input order.
    """
    ids = _check_ids(case_ids)
    if not isinstance(n_test, (int, np.integer)) or not 0 <= n_test < len(ids):
        raise InvalidInputError(f"n_test must be an integer in [0, {len(ids) - 1}] for {len(ids)} cases, got {n_test!r}")
    test_positions = set(np.random.default_rng(_check_seed(seed)).permutation(len(ids))[:n_test].tolist())
    trainval = [c for i, c in enumerate(ids) if i not in test_positions]
    test = [c for i, c in enumerate(ids) if i in test_positions]
    return trainval, test


def kfold_volumes(case_ids: Sequence[str], k: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``k`` folds over volumes: a list of (train ids, validation ids), one pair per fold.

    The validation sets partition ``case_ids`` (sizes differ by at most one); each fold's
    training set is everything else. The assignment is a seeded permutation; lists keep the
    input order. With one image per case (COVID-SemiSeg) this is k-fold by slice.
    """
    ids = _check_ids(case_ids)
    if not isinstance(k, (int, np.integer)) or not 2 <= k <= len(ids):
        raise InvalidInputError(f"k must be an integer in [2, {len(ids)}] for {len(ids)} cases, got {k!r}")
    permutation = np.random.default_rng(_check_seed(seed)).permutation(len(ids))
    folds = []
    for chunk in np.array_split(permutation, int(k)):
        held = set(chunk.tolist())
        folds.append(([c for i, c in enumerate(ids) if i not in held], [c for i, c in enumerate(ids) if i in held]))
    return folds


class VolumeSplit(NamedTuple):
    """Case ids of one train / validation / test split."""

    train: list[str]
    val: list[str]
    test: list[str]


REPORT_SPLITS = ("10-40", "40-10")


def report_split(case_ids: Sequence[str], name: str, seed: int, *, fold: int = 0,
                 n_test: int | None = None, n_folds: int = 5) -> VolumeSplit:
    """The report's "10-40" and "40-10" splits (section 5.2.1, Table 5.1).

    The report pools 70 volumes (20 of COVID-19-CT-Seg, 50 of MosMedData), holds out 20 for
    testing and cuts the other 50 into 5 folds of 10. The names give *training-validation*
    volume counts: "10-40" trains on one fold (10 volumes, the small-sample setting) and
    validates on the other four (40); "40-10" trains on four folds and validates on one (the
    usual 5-fold cross-validation). The 20 test volumes are the same for both. The report's
    "10-40" is not "10 train, 40 test".

    For other cohort sizes the proportions are kept: ``n_test`` defaults to round(2/7 of the
    cases) (20 of 70), and the rest is cut into ``n_folds`` folds. ``fold`` picks which fold
    is the single one (training fold of "10-40", validation fold of "40-10"), so for one
    ``fold`` the "10-40" training set is exactly the "40-10" validation set.
    """
    if name not in REPORT_SPLITS:
        raise InvalidInputError(f"split name must be one of {REPORT_SPLITS}, got {name!r}")
    ids = _check_ids(case_ids)
    if n_test is None:
        n_test = int(math.floor(len(ids) * 20 / 70 + 0.5))
    trainval, test = split_volumes(ids, n_test, seed)
    if not isinstance(n_folds, (int, np.integer)) or len(trainval) < n_folds or n_folds < 2:
        raise InvalidInputError(f"report_split needs at least n_folds={n_folds} (>= 2) volumes after holding out "
                                f"{n_test} for testing; got {len(trainval)}")
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < n_folds:
        raise InvalidInputError(f"fold must be an integer in [0, {n_folds - 1}], got {fold!r}")
    rest, single = kfold_volumes(trainval, n_folds, seed)[fold]
    if name == "10-40":
        return VolumeSplit(train=single, val=rest, test=test)
    return VolumeSplit(train=rest, val=single, test=test)


# --- loaders ----------------------------------------------------------------------------

def _seed_worker(worker_id: int) -> None:
    """Seed NumPy and Python in a DataLoader worker from the seed torch gave it."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def seeded_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, *,
                  drop_last: bool = False) -> DataLoader:
    """A DataLoader whose batch order depends only on ``seed`` (and the epoch count).

    The shuffling uses its own ``torch.Generator`` seeded with ``seed``; worker processes
    seed NumPy and ``random`` from torch's per-worker seed. Two loaders built with the same
    arguments yield the same batches epoch by epoch. (``SliceDataset`` augmentation is seeded
    per item and does not depend on workers at all.)
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise InvalidInputError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    generator = torch.Generator()
    generator.manual_seed(_check_seed(seed))
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, num_workers=int(num_workers),
                      generator=generator, worker_init_fn=_seed_worker, drop_last=drop_last)
