"""Pseudo-labels by cosine similarity in a fine-tuned encoder's feature space.

The report's recipe (sections 1.3 and 5.3.4): crop square patches (68 x 68) from labelled
slices inside the lesion mask's bounding box enlarged by up to 10 pixels a side, and from
unlabelled slices inside a coarse predicted box enlarged by up to 15 pixels; encode every
patch with the encoder of the fine-tuned model A' followed by global average pooling; for each
unlabelled patch find the most similar labelled patches by cosine similarity; and give it a
"soft" mask built from their labels. The report states two different assignment rules and
both are here:

* ``"top2"`` (section 1.3): the similarity-weighted mean of the two best labels, kept only
  when *both* similarities exceed 0.90;
* ``"top1_band"`` (section 5.3.4): the best label, kept when its similarity lies in
  [0.87, 0.96] (the upper bound drops near-duplicates of the dictionary).

Either way the patch's weight in the training loss is its best similarity (section 5.3.4).

Scale: the unlabelled set is sampled as patch *locations* (a few integers each); patches are
cropped, encoded and compared with the dictionary chunk by chunk, so memory is bounded by the
chunk size plus O(N k) results, whatever the number N of unlabelled patches.

Introduced in chapter 07.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from covidlib.coarse import Box, mask_bounding_box
from covidlib.config import get_device
from covidlib.errors import InvalidInputError
from covidlib.options import PSEUDO_LABEL_RULES
from covidlib.train import autocast_context

#: Columns of a patch-location array: source image index, slice z, top row y, left column x.
LOCATION_COLUMNS = ("source", "z", "y", "x")


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Settings of the pseudo-labelling; defaults are the report's (sections 1.3, 5.3.4).

    ``labelled_patches``: dictionary size (spread evenly over the labelled images with a
    lesion); ``patches_per_unlabelled``: patches per unlabelled volume/slice with a box;
    ``*_margin``: the largest enlargement (pixels a side) of the boxes; ``rule``: ``"top2"``
    or ``"top1_band"``; ``batch_size``: patches per encoder forward pass; ``chunk_size``:
    unlabelled patches cropped, encoded and compared at a time; ``center_features``: subtract
    the dictionary's mean feature from every feature before the cosine. GAP of post-ReLU
    features puts every vector in the positive orthant with a large shared component, so the
    report's plain cosine (``False``) scores nearly every pair above 0.99 and its thresholds
    select nothing in particular; centred (the default), the scores spread over [-1, 1].
    """

    patch_size: int = 68
    labelled_patches: int = 120
    patches_per_unlabelled: int = 32
    labelled_margin: int = 10
    unlabelled_margin: int = 15
    rule: str = "top2"
    top2_threshold: float = 0.90
    band: tuple[float, float] = (0.87, 0.96)
    batch_size: int = 64
    chunk_size: int = 4096
    center_features: bool = True

    def __post_init__(self) -> None:
        for name in ("patch_size", "labelled_patches", "patches_per_unlabelled", "batch_size", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"PseudoLabelConfig.{name} must be a positive integer, got {value!r}")
        for name in ("labelled_margin", "unlabelled_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(f"PseudoLabelConfig.{name} must be a non-negative integer, got {value!r}")
        if self.rule not in PSEUDO_LABEL_RULES:
            raise InvalidInputError(f"PseudoLabelConfig.rule must be one of {PSEUDO_LABEL_RULES}, got {self.rule!r}")
        low, high = self.band
        if not -1.0 <= low <= high <= 1.0:
            raise InvalidInputError(f"PseudoLabelConfig.band must satisfy -1 <= low <= high <= 1, got {self.band!r}")
        if not -1.0 <= self.top2_threshold <= 1.0:
            raise InvalidInputError(f"PseudoLabelConfig.top2_threshold must be in [-1, 1], got {self.top2_threshold!r}")


# --- sampling ---------------------------------------------------------------------------------

def _as_volume(image: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(getattr(image, "array", image))
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise InvalidInputError(f"{name}: expected a slice (H, W) or a volume (z, y, x), got shape {array.shape}")
    return array


def spread_counts(total: int, eligible: Sequence[bool] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``total`` patches shared as evenly as possible among the eligible images (counts per image).

    The remainder goes to randomly chosen eligible images; ineligible ones get 0.
    """
    eligible = np.asarray(eligible, dtype=bool)
    counts = np.zeros(len(eligible), dtype=np.int64)
    where = np.flatnonzero(eligible)
    if total < 0:
        raise InvalidInputError(f"total must be non-negative, got {total}")
    if len(where) == 0:
        if total:
            raise InvalidInputError("no eligible image (every box is None): nothing to sample patches from")
        return counts
    counts[where] = total // len(where)
    counts[rng.choice(where, size=total % len(where), replace=False)] += 1
    return counts


def sample_patch_locations(shapes: Sequence[Sequence[int]], boxes: Sequence[Box | None], counts: Sequence[int] | np.ndarray, *,
                           patch_size: int, max_margin: int, rng: np.random.Generator) -> np.ndarray:
    """Random patch positions inside randomly enlarged boxes; (N, 4) int64 ``(source, z, y, x)``.

    For each patch of image ``i`` (shape (z, y, x), box ``boxes[i]``): each side of the box is
    enlarged by its own margin drawn uniformly from ``0..max_margin`` (clipped to the image),
    a slice ``z`` and a centre ``(cy, cx)`` are drawn uniformly inside the enlarged box, and the
    ``patch_size`` square centred there is shifted, if needed, to lie inside the image. So every
    patch overlaps the enlarged box and never leaves the image. ``(y, x)`` is its top-left
    corner. Images without a box must get count 0.
    """
    if not (len(shapes) == len(boxes) == len(counts)):
        raise InvalidInputError(f"shapes, boxes and counts differ in length: {len(shapes)}, {len(boxes)}, {len(counts)}")
    if patch_size < 1 or max_margin < 0:
        raise InvalidInputError(f"patch_size must be >= 1 and max_margin >= 0, got {patch_size}, {max_margin}")
    rows = []
    for index, (shape, box, count) in enumerate(zip(shapes, boxes, counts)):
        count = int(count)
        if count == 0:
            continue
        if box is None:
            raise InvalidInputError(f"image {index}: {count} patches asked for but it has no box")
        depth, height, width = (int(s) for s in shape)
        if height < patch_size or width < patch_size:
            raise InvalidInputError(f"image {index}: in-plane size {(height, width)} is smaller than patch_size={patch_size}")
        if not box.fits((depth, height, width)):
            raise InvalidInputError(f"image {index}: {box} does not fit its shape {(depth, height, width)}")
        margins = rng.integers(0, max_margin + 1, size=(count, 4))
        y0 = np.maximum(0, box.y0 - margins[:, 0])
        y1 = np.minimum(height, box.y1 + margins[:, 1])
        x0 = np.maximum(0, box.x0 - margins[:, 2])
        x1 = np.minimum(width, box.x1 + margins[:, 3])
        z = rng.integers(box.z0, box.z1, size=count)
        centre_y = y0 + np.floor(rng.random(count) * (y1 - y0)).astype(np.int64)
        centre_x = x0 + np.floor(rng.random(count) * (x1 - x0)).astype(np.int64)
        top = np.clip(centre_y - patch_size // 2, 0, height - patch_size)
        left = np.clip(centre_x - patch_size // 2, 0, width - patch_size)
        rows.append(np.stack([np.full(count, index), z, top, left], axis=1))
    if not rows:
        return np.zeros((0, 4), dtype=np.int64)
    return np.concatenate(rows).astype(np.int64)


def crop_patches(arrays: Sequence[np.ndarray], locations: np.ndarray, patch_size: int,
                 dtype: type = np.float32) -> np.ndarray:
    """The ``patch_size`` squares at ``locations`` (N, 4) ``(source, z, y, x)``: (N, P, P) of ``dtype``."""
    locations = np.asarray(locations, dtype=np.int64)
    if locations.ndim != 2 or locations.shape[1] != 4:
        raise InvalidInputError(f"locations must be (N, 4) (source, z, y, x), got shape {locations.shape}")
    out: np.ndarray = np.empty((len(locations), patch_size, patch_size), dtype=dtype)
    volumes: dict[int, np.ndarray] = {}
    for row, (source, z, y, x) in enumerate(locations):
        if source not in volumes:
            if not 0 <= source < len(arrays):
                raise InvalidInputError(f"locations row {row}: source {source} is not an index into {len(arrays)} arrays")
            volumes[source] = _as_volume(arrays[source], f"arrays[{source}]")
        patch = volumes[source][z, y:y + patch_size, x:x + patch_size]
        if patch.shape != (patch_size, patch_size) or min(z, y, x) < 0:
            raise InvalidInputError(f"locations row {row}: patch at (z={z}, y={y}, x={x}) leaves image {source} "
                                    f"of shape {volumes[source].shape}")
        out[row] = patch
    return out


# --- features and similarity ------------------------------------------------------------------

@torch.no_grad()
def encode_patches(encoder_model: nn.Module, patches: np.ndarray | torch.Tensor, batch_size: int = 64,
                   device: str | torch.device = "auto", *, amp: torch.dtype | None = None) -> np.ndarray:
    """Encoder + global average pooling: features (N, F) float32 for patches (N, P, P) or (N, 1, P, P).

    ``encoder_model`` is a segmentation network with ``encode(x) -> list`` (bottleneck last),
    e.g. :class:`~covidlib.models.UNet2d`; its bottleneck (B, F, h, w) is averaged over
    ``h, w`` (report Fig. 5.6). The model runs in eval mode (BatchNorm running statistics) and
    is returned to its previous mode. ``amp``: autocast dtype (bfloat16 on a capable CPU).
    """
    tensor = torch.as_tensor(patches, dtype=torch.float32)
    if tensor.ndim == 3:
        tensor = tensor[:, None]
    if tensor.ndim != 4:
        raise InvalidInputError(f"patches must be (N, P, P) or (N, 1, P, P), got shape {tuple(tensor.shape)}")
    if not hasattr(encoder_model, "encode"):
        raise InvalidInputError(f"encoder_model ({type(encoder_model).__name__}) has no encode() method")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be positive, got {batch_size}")
    resolved = get_device(device)
    was_training = encoder_model.training
    encoder_model.to(resolved).eval()
    features = []
    try:
        for start in range(0, len(tensor), batch_size):
            with autocast_context(resolved, amp):
                bottleneck = encoder_model.encode(tensor[start:start + batch_size].to(resolved))[-1]  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; encode is a method of the U-Net
            features.append(bottleneck.float().mean(dim=(2, 3)).cpu())
    finally:
        encoder_model.train(was_training)
    if not features:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(features).numpy()


def cosine_topk(queries: np.ndarray | torch.Tensor, keys: np.ndarray | torch.Tensor, k: int, *,
                query_chunk: int = 4096, key_chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` keys most cosine-similar to each query: scores (N, k) float32 and indices (N, k) int64.

    ``queries`` (N, F), ``keys`` (M, F). Both are L2-normalised (a zero vector has similarity 0
    with everything) and compared as matrix products over blocks of ``query_chunk`` x
    ``key_chunk`` rows, keeping a running top-k, so memory is O(query_chunk * (key_chunk + k))
    at any N and M. Scores are sorted in decreasing order; ties go to the lower key index.
    """
    q = torch.as_tensor(queries, dtype=torch.float32)
    key = torch.as_tensor(keys, dtype=torch.float32)
    if q.ndim != 2 or key.ndim != 2 or q.shape[1] != key.shape[1]:
        raise InvalidInputError(f"queries (N, F) and keys (M, F) must share F, got {tuple(q.shape)} and {tuple(key.shape)}")
    if not 1 <= k <= key.shape[0]:
        raise InvalidInputError(f"k must be in [1, {key.shape[0]}] (the number of keys), got {k}")
    if query_chunk < 1 or key_chunk < 1:
        raise InvalidInputError(f"chunk sizes must be positive, got {query_chunk}, {key_chunk}")
    key = F.normalize(key, dim=1)
    scores = torch.empty((q.shape[0], k), dtype=torch.float32)
    indices = torch.empty((q.shape[0], k), dtype=torch.int64)
    for q_start in range(0, q.shape[0], query_chunk):
        block = F.normalize(q[q_start:q_start + query_chunk], dim=1)
        best_scores = torch.full((block.shape[0], 0), -float("inf"))
        best_indices = torch.zeros((block.shape[0], 0), dtype=torch.int64)
        for k_start in range(0, key.shape[0], key_chunk):
            similarity = block @ key[k_start:k_start + key_chunk].T
            chunk_scores, chunk_indices = torch.topk(similarity, min(k, similarity.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
            merged_indices = torch.cat([best_indices, chunk_indices + k_start], dim=1)
            # stable sort: on equal scores the earlier (lower) key index stays first
            order = torch.sort(merged_scores, dim=1, descending=True, stable=True).indices[:, :k]
            best_scores = torch.gather(merged_scores, 1, order)
            best_indices = torch.gather(merged_indices, 1, order)
        scores[q_start:q_start + block.shape[0]] = best_scores
        indices[q_start:q_start + block.shape[0]] = best_indices
    return scores.numpy(), indices.numpy()


# --- assignment -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Assignment:
    """Which patches get a pseudo mask, from which dictionary labels and with which weights.

    ``accepted`` (N,) bool; ``labels`` (N, 2) dictionary indices and ``coefficients`` (N, 2)
    their mixing weights (summing to 1; the second is 0 under ``top1_band``); ``weights`` (N,)
    the loss weight of each patch, its best similarity.
    """

    accepted: np.ndarray
    labels: np.ndarray
    coefficients: np.ndarray
    weights: np.ndarray


def assign(scores: np.ndarray, indices: np.ndarray, rule: str = "top2", *, threshold: float = 0.90,
           band: tuple[float, float] = (0.87, 0.96)) -> Assignment:
    """Apply an assignment rule to top-k similarities ``scores`` (N, k >= 2 for top2) and ``indices``.

    ``"top2"``: accept when both the first and second similarity are ``> threshold``; the mask
    is ``(s1 L1 + s2 L2) / (s1 + s2)`` (report section 1.3). ``"top1_band"``: accept when
    ``band[0] <= s1 <= band[1]``; the mask is ``L1`` (section 5.3.4). The weight is ``s1``.
    """
    scores = np.asarray(scores, dtype=np.float32)
    indices = np.asarray(indices, dtype=np.int64)
    if scores.ndim != 2 or scores.shape != indices.shape or scores.shape[1] < 1:
        raise InvalidInputError(f"scores and indices must be (N, k) of equal shape, got {scores.shape} and {indices.shape}")
    if rule not in PSEUDO_LABEL_RULES:
        raise InvalidInputError(f"rule must be one of {PSEUDO_LABEL_RULES}, got {rule!r}")
    n = scores.shape[0]
    labels = np.zeros((n, 2), dtype=np.int64)
    coefficients = np.zeros((n, 2), dtype=np.float32)
    labels[:, 0] = indices[:, 0]
    if rule == "top2":
        if scores.shape[1] < 2:
            raise InvalidInputError("rule 'top2' needs the two best similarities: compute cosine_topk with k >= 2")
        first, second = scores[:, 0], scores[:, 1]
        accepted = (first > threshold) & (second > threshold)
        labels[:, 1] = indices[:, 1]
        total = np.where(accepted, first + second, 1.0)
        coefficients[:, 0] = np.where(accepted, first / total, 0.0)
        coefficients[:, 1] = np.where(accepted, second / total, 0.0)
    else:
        low, high = band
        accepted = (scores[:, 0] >= low) & (scores[:, 0] <= high)
        labels[:, 1] = indices[:, 0]
        coefficients[:, 0] = accepted.astype(np.float32)
    return Assignment(accepted=accepted, labels=labels, coefficients=coefficients,
                      weights=np.where(accepted, scores[:, 0], 0.0).astype(np.float32))


def soft_masks(dictionary_masks: np.ndarray, labels: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Foreground probability (N, P, P) float32 = ``sum_j coefficients[:, j] * masks[labels[:, j]]``."""
    masks = np.asarray(dictionary_masks, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    coefficients = np.asarray(coefficients, dtype=np.float32)
    if masks.ndim != 3 or labels.shape != coefficients.shape or labels.ndim != 2:
        raise InvalidInputError(f"need masks (M, P, P) and labels/coefficients (N, j) of equal shape, got "
                                f"{masks.shape}, {labels.shape}, {coefficients.shape}")
    return np.einsum("nj,njyx->nyx", coefficients, masks[labels]).astype(np.float32)


# --- the pipeline -----------------------------------------------------------------------------

@dataclass
class PatchDictionary:
    """Labelled patches: ``images`` (M, P, P) float32, ``masks`` (M, P, P) uint8, ``features``
    (M, F) float32 (encoder + GAP), ``locations`` (M, 4) in the labelled images, ``center``
    (F,) the vector subtracted from every feature before cosine similarity (zeros when
    ``PseudoLabelConfig.center_features`` is off)."""

    images: np.ndarray
    masks: np.ndarray
    features: np.ndarray
    locations: np.ndarray
    center: np.ndarray

    def similarity(self, features: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine similarities of ``features`` (N, F) to the dictionary, after centring."""
        return cosine_topk(features - self.center, self.features - self.center, k)


def build_dictionary(encoder_model: nn.Module, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                     config: PseudoLabelConfig, rng: np.random.Generator, *, device: str | torch.device = "auto",
                     amp: torch.dtype | None = None) -> PatchDictionary:
    """Sample ``config.labelled_patches`` patches from labelled images near their lesions and encode them.

    ``images``/``masks``: (z, y, x) or (H, W) each; images without a lesion give no patch.
    """
    if len(images) != len(masks):
        raise InvalidInputError(f"images and masks differ in length: {len(images)} and {len(masks)}")
    volumes = [_as_volume(im, f"images[{i}]") for i, im in enumerate(images)]
    mask_volumes = [_as_volume(m, f"masks[{i}]") for i, m in enumerate(masks)]
    for i, (image, mask) in enumerate(zip(volumes, mask_volumes)):
        if image.shape != mask.shape:
            raise InvalidInputError(f"images[{i}] shape {image.shape} differs from masks[{i}] shape {mask.shape}")
    boxes = [mask_bounding_box(m) for m in mask_volumes]
    counts = spread_counts(config.labelled_patches, [b is not None for b in boxes], rng)
    locations = sample_patch_locations([v.shape for v in volumes], boxes, counts, patch_size=config.patch_size,
                                       max_margin=config.labelled_margin, rng=rng)
    patches = crop_patches(volumes, locations, config.patch_size)
    patch_masks = (crop_patches(mask_volumes, locations, config.patch_size, dtype=np.uint8) > 0).astype(np.uint8)
    features = encode_patches(encoder_model, patches, config.batch_size, device, amp=amp)
    center = features.mean(axis=0) if config.center_features else np.zeros(features.shape[1], dtype=np.float32)
    return PatchDictionary(images=patches, masks=patch_masks, features=features, locations=locations,
                           center=center.astype(np.float32))


@dataclass
class PseudoLabels:
    """The outcome for every sampled unlabelled patch.

    ``locations`` (N, 4) in the unlabelled images; ``scores``/``indices`` (N, 2) the two best
    dictionary matches; ``assignment`` the rule's decision; ``plain_scores``/``plain_indices``
    (N, 2) the same matches by the report's uncentred cosine. :meth:`accepted_masks` builds the
    soft masks of the accepted patches.
    """

    locations: np.ndarray
    scores: np.ndarray
    indices: np.ndarray
    assignment: Assignment
    plain_scores: np.ndarray | None = None
    plain_indices: np.ndarray | None = None

    @property
    def num_accepted(self) -> int:
        """How many patches the rule accepted."""
        return int(self.assignment.accepted.sum())

    def accepted_masks(self, dictionary: PatchDictionary) -> np.ndarray:
        """Soft masks (A, P, P) of the accepted patches, in the order of ``locations``."""
        keep = self.assignment.accepted
        return soft_masks(dictionary.masks, self.assignment.labels[keep], self.assignment.coefficients[keep])


def pseudo_label(encoder_model: nn.Module, dictionary: PatchDictionary, images: Sequence[np.ndarray],
                 boxes: Sequence[Box | None], config: PseudoLabelConfig, rng: np.random.Generator, *,
                 device: str | torch.device = "auto", amp: torch.dtype | None = None,
                 progress: bool = True) -> PseudoLabels:
    """Sample ``config.patches_per_unlabelled`` patches per unlabelled image inside its enlarged
    box, encode them chunk by chunk, match them to the dictionary and apply ``config.rule``.

    ``boxes[i]`` is the coarse box of ``images[i]`` (from :mod:`covidlib.coarse`); images whose
    box is ``None`` (nothing predicted) give no patch.
    """
    if len(images) != len(boxes):
        raise InvalidInputError(f"images and boxes differ in length: {len(images)} and {len(boxes)}")
    if len(dictionary.features) < 2:
        raise InvalidInputError(f"the dictionary needs at least 2 patches, has {len(dictionary.features)}")
    shapes = [_as_volume(im, f"images[{i}]").shape for i, im in enumerate(images)]
    counts = [config.patches_per_unlabelled if box is not None else 0 for box in boxes]
    locations = sample_patch_locations(shapes, boxes, counts, patch_size=config.patch_size,
                                       max_margin=config.unlabelled_margin, rng=rng)
    scores, plain_scores = (np.empty((len(locations), 2), dtype=np.float32) for _ in range(2))
    indices, plain_indices = (np.empty((len(locations), 2), dtype=np.int64) for _ in range(2))
    for start in tqdm(range(0, len(locations), config.chunk_size), desc="pseudo-labels", disable=not progress):
        rows = slice(start, start + config.chunk_size)
        features = encode_patches(encoder_model, crop_patches(images, locations[rows], config.patch_size),
                                  config.batch_size, device, amp=amp)
        scores[rows], indices[rows] = dictionary.similarity(features, 2)
        plain_scores[rows], plain_indices[rows] = cosine_topk(features, dictionary.features, 2)
    assignment = assign(scores, indices, config.rule, threshold=config.top2_threshold, band=config.band)
    return PseudoLabels(locations=locations, scores=scores, indices=indices, assignment=assignment,
                        plain_scores=plain_scores, plain_indices=plain_indices)


class PseudoPatchDataset(Dataset):
    """Accepted pseudo-labelled patches for training, cropped on demand.

    Items: ``image`` (1, P, P) float32, ``mask`` (2, P, P) float32 class probabilities
    (background, infection), ``weight`` float (the best similarity). Introduced in chapter 08.
    """

    def __init__(self, images: Sequence[np.ndarray], labels: PseudoLabels, dictionary: PatchDictionary) -> None:
        keep = labels.assignment.accepted
        self.images = [_as_volume(im, f"images[{i}]") for i, im in enumerate(images)]
        self.locations = labels.locations[keep]
        self.labels = labels.assignment.labels[keep]
        self.coefficients = labels.assignment.coefficients[keep]
        self.weights = labels.assignment.weights[keep]
        self.dictionary_masks = dictionary.masks
        self.patch_size = dictionary.masks.shape[-1]

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        patch = crop_patches(self.images, self.locations[index:index + 1], self.patch_size)[0]
        foreground = soft_masks(self.dictionary_masks, self.labels[index:index + 1], self.coefficients[index:index + 1])[0]
        return {"image": torch.from_numpy(patch)[None],
                "mask": torch.from_numpy(np.stack([1.0 - foreground, foreground]).astype(np.float32)),
                "weight": torch.tensor(float(self.weights[index]))}


# --- choosing the threshold on labelled slices treated as unlabelled ---------------------------

def patch_dice(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of each soft mask (N, P, P) thresholded at 0.5 against its true mask (N, P, P); 1 when both are empty."""
    predicted = np.asarray(predicted) > 0.5
    truth = np.asarray(truth) > 0
    if predicted.shape != truth.shape or predicted.ndim != 3:
        raise InvalidInputError(f"need predicted and true masks (N, P, P) of equal shape, got {predicted.shape} "
                                f"and {truth.shape}")
    overlap = (predicted & truth).sum(axis=(1, 2))
    total = predicted.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    return np.where(total == 0, 1.0, 2.0 * overlap / np.maximum(total, 1)).astype(np.float64)


def rule_masks(dictionary_masks: np.ndarray, scores: np.ndarray, indices: np.ndarray, rule: str) -> np.ndarray:
    """The soft mask (N, P, P) ``rule`` would give every patch, accepted or not (to grade it)."""
    everything = assign(scores, indices, rule, threshold=-np.inf, band=(-1.0, 1.0))
    return soft_masks(dictionary_masks, everything.labels, everything.coefficients)


@dataclass(frozen=True)
class ThresholdCalibration:
    """The top-2 threshold chosen on labelled patches treated as unlabelled.

    Per grid threshold ``t`` (``thresholds`` (T,)): ``accepted_share`` of the patches whose two
    best similarities exceed ``t``, ``pseudo_dice`` the mean Dice of their pseudo masks (nan when
    none is accepted) and ``gain`` = sum over accepted patches of (Dice - ``quality_bar``) / N.
    ``chosen`` maximises the gain (ties: the higher threshold), i.e. it accepts a patch when
    patches of its similarity have pseudo masks better than ``quality_bar`` on average.
    """

    thresholds: np.ndarray
    accepted_share: np.ndarray
    pseudo_dice: np.ndarray
    gain: np.ndarray
    chosen: float
    quality_bar: float
    n_patches: int

    def as_dict(self) -> dict[str, object]:
        """Plain lists and numbers, for a JSON record."""
        return {"thresholds": self.thresholds.tolist(), "accepted_share": self.accepted_share.tolist(),
                "pseudo_dice": self.pseudo_dice.tolist(), "gain": self.gain.tolist(), "chosen": self.chosen,
                "quality_bar": self.quality_bar, "n_patches": self.n_patches}


#: The default grid of top-2 thresholds (centred cosine lies in [-1, 1]).
THRESHOLD_GRID = tuple(np.round(np.linspace(-0.5, 1.0, 151), 3).tolist())


def calibrate_threshold(scores: np.ndarray, dice_values: np.ndarray, *, thresholds: Sequence[float] = THRESHOLD_GRID,
                        quality_bar: float = 0.5) -> ThresholdCalibration:
    """Choose the top-2 threshold from patches whose pseudo-mask Dice is known.

    ``scores`` (N, 2): each patch's two best similarities; ``dice_values`` (N,): the Dice of the
    pseudo mask it would get. A patch passes ``t`` when both similarities exceed ``t``. The
    threshold maximising ``sum_accepted (Dice - quality_bar)`` is kept (see
    :class:`ThresholdCalibration`). Introduced in chapter 07.
    """
    scores = np.asarray(scores, dtype=np.float64)
    dice_values = np.asarray(dice_values, dtype=np.float64)
    grid = np.asarray(thresholds, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2 or dice_values.shape != (len(scores),):
        raise InvalidInputError(f"need scores (N, 2) and Dice values (N,), got {scores.shape} and {dice_values.shape}")
    if len(scores) == 0:
        raise InvalidInputError("no patch to calibrate the threshold on (no labelled patch in a box?)")
    if grid.ndim != 1 or len(grid) == 0 or np.any(np.diff(grid) <= 0):
        raise InvalidInputError("thresholds must be a non-empty increasing sequence")
    if not 0.0 <= quality_bar <= 1.0:
        raise InvalidInputError(f"quality_bar must be in [0, 1], got {quality_bar!r}")
    weakest = scores[:, :2].min(axis=1)
    passed = weakest[None, :] > grid[:, None]  # (T, N)
    counts = passed.sum(axis=1)
    share = counts / len(scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_dice = np.where(counts > 0, (passed * dice_values).sum(axis=1) / counts, np.nan)
    gain = (passed * (dice_values - quality_bar)).sum(axis=1) / len(scores)
    best = np.flatnonzero(gain >= gain.max() - 1e-12)[-1]
    return ThresholdCalibration(thresholds=grid, accepted_share=share, pseudo_dice=mean_dice, gain=gain,
                                chosen=float(grid[best]), quality_bar=float(quality_bar), n_patches=len(scores))


@dataclass(frozen=True)
class RuleSpec:
    """One acceptance rule to compare: its name, rule, features (centred or plain) and threshold."""

    name: str
    rule: str
    centred: bool
    threshold: float = 0.90
    band: tuple[float, float] = (0.87, 0.96)


def report_rules(calibrated: float) -> list[RuleSpec]:
    """The report's rules on plain cosine, its top-2 rule on centred features, and the calibrated one."""
    return [RuleSpec("report top-2 > 0.90, plain cosine", "top2", False),
            RuleSpec("report top-1 in [0.87, 0.96], plain cosine", "top1_band", False),
            RuleSpec("top-2 > 0.90, centred", "top2", True),
            RuleSpec(f"top-2 > {calibrated:.2f}, centred (calibrated)", "top2", True, threshold=calibrated)]


def compare_rules(rules: Sequence[RuleSpec], dictionary: PatchDictionary, calibration: PseudoLabels,
                  truth: np.ndarray, unlabelled: PseudoLabels | None = None) -> list[dict[str, object]]:
    """For each rule: accepted share and mean pseudo-mask Dice on the calibration patches (whose
    true masks ``truth`` (N, P, P) are known), and accepted share on the ``unlabelled`` patches.

    Both :class:`PseudoLabels` must carry the plain (uncentred) matches. Introduced in chapter 07.
    """
    rows = []
    for spec in rules:
        shares = {}
        for name, labels in (("calibration", calibration), ("unlabelled", unlabelled)):
            if labels is None:
                continue
            scores, indices = (labels.scores, labels.indices) if spec.centred else (labels.plain_scores,
                                                                                    labels.plain_indices)
            if scores is None or indices is None:
                raise InvalidInputError(f"{name} pseudo-labels carry no plain-cosine matches (made by pseudo_label?)")
            accepted = assign(scores, indices, spec.rule, threshold=spec.threshold, band=spec.band).accepted
            shares[name] = float(accepted.mean()) if len(accepted) else float("nan")
            if name == "calibration":
                values = patch_dice(rule_masks(dictionary.masks, scores, indices, spec.rule), truth)
                dice_accepted = float(values[accepted].mean()) if accepted.any() else float("nan")
        rows.append({"rule": spec.name, "calibration_share": shares["calibration"], "calibration_dice": dice_accepted,
                     "unlabelled_share": shares.get("unlabelled", float("nan"))})
    return rows


def calibrate_on_labelled(encoder_model: nn.Module, dictionary: PatchDictionary, images: Sequence[np.ndarray],
                          masks: Sequence[np.ndarray], boxes: Sequence[Box | None], config: PseudoLabelConfig,
                          rng: np.random.Generator, *, quality_bar: float = 0.5,
                          thresholds: Sequence[float] = THRESHOLD_GRID, device: str | torch.device = "auto",
                          amp: torch.dtype | None = None) -> tuple[ThresholdCalibration, PseudoLabels, np.ndarray]:
    """Pseudo-label labelled ``images`` as if unlabelled (patches inside ``boxes``, e.g. A''s
    predicted boxes) and choose the top-2 threshold on their known ``masks``.

    Returns the calibration, the patches' :class:`PseudoLabels` and their true masks (N, P, P).
    Introduced in chapter 07.
    """
    labels = pseudo_label(encoder_model, dictionary, images, boxes, config, rng, device=device, amp=amp,
                          progress=False)
    truth = crop_patches([_as_volume(m, f"masks[{i}]") for i, m in enumerate(masks)], labels.locations,
                         config.patch_size, dtype=np.uint8)
    values = patch_dice(rule_masks(dictionary.masks, labels.scores, labels.indices, "top2"), truth)
    calibration = calibrate_threshold(labels.scores, values, thresholds=thresholds, quality_bar=quality_bar)
    return calibration, labels, truth
