"""Preprocessing a CT scan the report's way: lung mask -> crop -> 1x1 mm in-plane -> z-score in the lungs.

Multi-centre scans differ in field of view, in-plane spacing (0.6-0.95 mm), slice thickness
(1-8 mm) and intensity calibration. The report (section 3.2) first extracts the lungs, then
resamples every scan to 1 x 1 mm in the axial plane with z unchanged, and finally z-scores the
intensities of the lung voxels (everything outside the lungs set to 0).

Lung masks come from **lungmask** (Hofmanninger et al. 2020, the R231 U-Net) when its weights
are on disk, or from a **classical** threshold + watershed route otherwise: threshold, drop
the air outside the body and the padding outside the field of view, split the lungs from the
trachea and from each other by a marker-based watershed on the distance map, fill holes
(vessels, lesions), and label right lung 1 / left lung 2 as lungmask does.

2D 8-bit slice datasets (COVID-SemiSeg) are not in HU and have no lung mask or spacing, so
:func:`preprocess_case` gives them the 2D equivalents of those steps (:func:`preprocess_slices`):
the whole image stands for the lungs, the slice is resized as if it spanned
:data:`SLICE_EXTENT_MM`, and its grey levels are z-scored over the whole image. The returned
``meta["steps"]`` says, for every case, which steps ran.

Introduced in chapter 02.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from covidlib.ct import check_hu, fill_padding
from covidlib.data import fit_slice
from covidlib.datasets import Case, lungs_by_side
from covidlib.errors import InvalidInputError
from covidlib.io import Volume, atomic_path
from covidlib.options import LUNG_METHODS


#: lungmask's R231 weights as torch hub names them (``lungmask.mask.MODEL_URLS["R231"]``).
LUNGMASK_R231_FILE = "unet_r231-d5d2fc3d.pth"
#: Voxels below this HU inside the body are air-filled: lungs, airways (lung ~ -850, soft tissue ~ 40).
LUNG_THRESHOLD_HU = -350.0
#: Smallest lung core (air deeper than the erosion depth) accepted as a lung, in mL; the trachea
#: and main bronchi hold about 20 mL, a lung even in a 1 cm slab far more.
MIN_LUNG_CORE_ML = 30.0
#: Bumped whenever preprocessing changes its output, so cached results are never reused across versions.
PREPROCESS_VERSION = "2"
#: Physical extent assumed for the longer side of a 2D 8-bit slice, whose spacing is unknown:
#: such slices (COVID-SemiSeg) are cropped around the body, about as wide as a lung crop of a CT.
SLICE_EXTENT_MM = 300.0


def _where(volume: Volume) -> str:
    return volume.source or "<volume>"


def check_ct_volume(volume: Volume) -> None:
    """Raise unless ``volume`` is a 3D CT in HU (lung masking silently fails on anything else).

    lungmask returns an all-zero mask, without complaint, for 8-bit windowed images, already
    normalised images and single slices; this check turns those into an error naming the file.

    Introduced in chapter 02.
    """
    if not isinstance(volume, Volume):
        raise InvalidInputError(f"expected a covidlib.io.Volume, got {type(volume).__name__}")
    if volume.shape[0] < 2:
        raise InvalidInputError(
            f"{_where(volume)}: a single 2D slice {volume.shape[1:]} cannot be lung-masked as a volume; "
            "lung masking needs a 3D CT (2D 8-bit datasets use normalise_image instead)")
    check_hu(volume.array, _where(volume))


# --------------------------------------------------------------------------------------------
# Classical lung masking


def _largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """2D hole filling on every axial slice (vessels and dense lesions are holes in a lung slice)."""
    out = np.empty_like(mask)
    for z in range(mask.shape[0]):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def _body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient: the largest dense component, with the lungs filled in slice by slice."""
    dense = hu > -500.0
    body = _largest_component(dense)  # drops the table and any object beside the patient
    return _fill_holes_per_slice(body)


def _downsample_factors(spacing: tuple[float, float, float], target_mm: float = 4.0) -> tuple[int, int, int]:
    return tuple(max(1, int(target_mm // s)) for s in spacing)  # type: ignore[return-value]


def _split_lungs(air: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Label the two lungs (1, 2) inside ``air``; the trachea and anything else get 0.

    The lungs are the two thickest air regions. On a coarse grid (~4 mm) the distance map of
    the air is thresholded at increasing depths until its two largest cores are lungs (thin
    bronchi and the anterior junction break first); every other core (trachea, main bronchi,
    stray gas) is a marker of its own, and a watershed on the distance map gives each air voxel
    to the nearest core. Only the two lung basins are kept.
    """
    from skimage.segmentation import watershed

    factors = _downsample_factors(spacing)
    coarse = air[:: factors[0], :: factors[1], :: factors[2]]
    coarse_spacing = tuple(s * f for s, f in zip(spacing, factors))
    distance = ndimage.distance_transform_edt(coarse, sampling=coarse_spacing)
    total = coarse.sum()
    markers = None
    for depth_mm in (2.0, 4.0, 6.0, 9.0, 12.0, 16.0, 20.0, 25.0):
        cores, count = ndimage.label(distance > depth_mm)
        if count < 2:
            continue
        sizes = np.bincount(cores.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        # Two lungs of comparable size (the smaller at least a fifth of the larger), each big
        # enough to be a lung rather than a bronchus.
        voxel_ml = float(np.prod(coarse_spacing)) / 1000.0
        if sizes[order[1]] >= 0.2 * sizes[order[0]] and sizes[order[1]] * voxel_ml >= MIN_LUNG_CORE_ML:
            markers = cores
            lung_ids = order[:2] + 1
            break
    if markers is None:
        raise InvalidInputError(
            f"no two air-filled regions inside the body are large enough to be lungs (at least {MIN_LUNG_CORE_ML:g} mL "
            f"each; {int(total)} air voxels in all); the classical method needs both lungs in view "
            "(try method='lungmask')")
    basins = watershed(-distance, markers, mask=coarse)
    coarse_lungs = np.where(basins == lung_ids[0], 1, np.where(basins == lung_ids[1], 2, 0)).astype(np.uint8)
    # Back to the full grid (nearest), then keep the fine air voxels only.
    index = [np.minimum(np.arange(n) // f, c - 1) for n, f, c in zip(air.shape, factors, coarse.shape)]
    fine = coarse_lungs[np.ix_(*index)]
    return np.where(air, fine, 0).astype(np.uint8)


def _close_in_plane(mask: np.ndarray, spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Morphological closing of each axial slice with a disk of ``radius_mm`` (via distance maps).

    Distance maps make the cost independent of the radius; a huge z sampling keeps it in-plane.
    """
    if radius_mm <= 0:
        return mask
    sampling = (1e6, spacing[1], spacing[2])
    dilated = ndimage.distance_transform_edt(~mask, sampling=sampling) <= radius_mm
    return (ndimage.distance_transform_edt(dilated, sampling=sampling) > radius_mm) | mask


def _pool_in_plane(hu: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` in-plane blocks (edges padded by repetition)."""
    if factor == 1:
        return hu
    nz, ny, nx = hu.shape
    py, px = -ny % factor, -nx % factor
    padded = np.pad(hu, ((0, 0), (0, py), (0, px)), mode="edge") if (py or px) else hu
    blocks = padded.reshape(nz, (ny + py) // factor, factor, (nx + px) // factor, factor)
    return blocks.mean(axis=(2, 4), dtype=np.float32)


def classical_lung_mask(volume: Volume, *, threshold_hu: float = LUNG_THRESHOLD_HU,
                        closing_mm: float = 20.0, working_mm: float = 2.2) -> np.ndarray:
    """Lung mask by threshold + watershed (no learned weights); uint8 (z, y, x), right 1, left 2.

    Steps: padding outside the field of view -> air; air below ``threshold_hu`` inside the body
    (so the air around the patient and under the table is gone); the two lungs separated from the
    trachea/main bronchi and from each other by a marker watershed on the distance map
    (:func:`_split_lungs`); each lung closed in-plane with a ``closing_mm`` disk (pleural bites
    from subpleural lesions and hilar vessels) and its holes filled slice by slice (vessels,
    consolidation); the largest 3D component of each lung kept; sides from the physical x
    (right lung = patient's right). The report's watershed route (section 3.2.2), made explicit.

    Fine scans are masked on an in-plane grid of about ``working_mm`` (block means), and the
    mask is brought back to the input grid with its border re-decided voxel by voxel from the
    full-resolution threshold; this keeps a 512 x 512 x 300 scan within seconds.

    Introduced in chapter 02.
    """
    check_ct_volume(volume)
    factor = max(1, int(working_mm // min(volume.spacing[1:])))
    hu_fine = fill_padding(volume.array)
    # Tame noise before thresholding (block means already average factor**2 voxels).
    hu = _pool_in_plane(hu_fine, factor) if factor > 1 else ndimage.uniform_filter(hu_fine, size=(1, 3, 3))
    spacing = (volume.spacing[0], volume.spacing[1] * factor, volume.spacing[2] * factor)
    body = _body_mask(hu)
    air = (hu < threshold_hu) & body
    try:
        split = _split_lungs(air, spacing)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{_where(volume)}: no lungs found below {threshold_hu:g} HU: {exc}") from exc
    coarse = np.zeros(hu.shape, np.uint8)
    pad = (0,) + tuple(int(np.ceil(closing_mm / s)) + 1 for s in spacing[1:])
    for value in (v for v in (1, 2) if (split == v).any()):
        lung = split == value
        box = ndimage.find_objects(lung.astype(np.uint8))[0]
        box = tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(box, pad, lung.shape))
        part = _close_in_plane(lung[box], spacing, closing_mm)
        part = _fill_holes_per_slice(part) & body[box]
        part = _largest_component(part)
        region = coarse[box]
        region[part & (region == 0)] = value
    out = coarse if factor == 1 else _refine_to_fine(coarse, split > 0, hu_fine, factor, threshold_hu)
    return lungs_by_side(out, volume)


def _refine_to_fine(coarse: np.ndarray, coarse_air: np.ndarray, hu_fine: np.ndarray, factor: int,
                    threshold_hu: float) -> np.ndarray:
    """Bring a coarse lung label mask to the fine grid, re-deciding its border from fine HU.

    Away from the border the coarse label is copied. On a band one coarse pixel either side of
    the border, a fine voxel is lung when it is below the threshold (air-filled), or when the
    coarse mask holds it not for being air but because closing/hole filling added it (lesions,
    vessels at the pleura), so the lesion recovery is not undone.
    """
    square = np.ones((1, 3, 3), bool)
    inside = coarse > 0
    halo = ndimage.binary_dilation(inside, structure=square)
    # Work inside the halo's bounding box only: most of a scan is not lung.
    zs, ys, xs = ndimage.find_objects(halo.astype(np.uint8))[0]
    fine_box = (zs, slice(ys.start * factor, min(ys.stop * factor, hu_fine.shape[1])),
                slice(xs.start * factor, min(xs.stop * factor, hu_fine.shape[2])))
    ny, nx = fine_box[1].stop - fine_box[1].start, fine_box[2].stop - fine_box[2].start

    def up(mask: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(mask[zs, ys, xs], factor, axis=1), factor, axis=2)[:, :ny, :nx]

    band = up(halo & ~ndimage.binary_erosion(inside, structure=square, border_value=1))
    labels = up(coarse)
    # Halo voxels outside the coarse mask take the label of the neighbouring lung.
    nearest = up(ndimage.grey_dilation(coarse, footprint=square))
    added = up(inside & ~coarse_air)
    air_fine = hu_fine[fine_box] < threshold_hu
    in_band = np.where(air_fine, np.where(labels > 0, labels, nearest), np.where(added, labels, 0))
    out = np.zeros(hu_fine.shape, np.uint8)
    out[fine_box] = np.where(band, in_band, labels)
    return out


# --------------------------------------------------------------------------------------------
# lungmask


def lungmask_weights(modelpath: str | Path | None = None) -> Path | None:
    """The lungmask weights to use: ``modelpath`` if given, else R231 in the torch hub cache, else None.

    Never downloads. ``modelpath`` that does not exist raises.

    Introduced in chapter 02.
    """
    if modelpath is not None:
        path = Path(modelpath).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"modelpath={str(modelpath)!r}: lungmask weights file not found")
        return path
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / LUNGMASK_R231_FILE
    return cached if cached.is_file() else None


@lru_cache(maxsize=2)
def _inferer(weights: str, force_cpu: bool, batch_size: int) -> Any:
    from lungmask import LMInferer

    return LMInferer(modelpath=weights, force_cpu=force_cpu, batch_size=batch_size, tqdm_disable=True)


def lungmask_lung_mask(volume: Volume, modelpath: str | Path | None = None, *, device: str = "auto",
                       batch_size: int = 20) -> np.ndarray:
    """Lung mask from lungmask's ``LMInferer`` (R231 U-Net); uint8 (z, y, x), right 1, left 2.

    ``modelpath``: a local state_dict file (lungmask's own format); None uses R231 from the
    torch hub cache. The volume is handed over as a SimpleITK image, so lungmask reorients it to
    LPS itself and the mask comes back on the input grid. The input is checked first
    (:func:`check_ct_volume`) because lungmask returns empty masks for non-HU input silently.

    Introduced in chapter 02.
    """
    from covidlib.config import get_device

    check_ct_volume(volume)
    weights = lungmask_weights(modelpath)
    if weights is None:
        raise InvalidInputError(
            f"no lungmask weights: pass modelpath= or put {LUNGMASK_R231_FILE} in the torch hub cache "
            "(lungmask downloads it there on first use with internet); or use method='classical'")
    force_cpu = get_device(device).type == "cpu"
    mask = _inferer(str(weights), force_cpu, batch_size).apply(volume.to_sitk())
    return np.asarray(mask, dtype=np.uint8)


LUNGMASK_FALLBACK_WARNING = ("lungmask weights not found (no modelpath, none in the torch hub cache): using the "
                             "classical threshold/watershed lung mask instead")


class LungmaskFallbackWarning(UserWarning):
    """``"auto"`` lung masking fell back to the classical method because no lungmask weights were found.

    A category of its own so a command line can catch it and print one plain line, while library
    callers and notebooks see an ordinary ``UserWarning``.

    Introduced in chapter 02.
    """


def resolve_lung_method(method: str, modelpath: str | Path | None = None) -> str:
    """The lung-mask method that will run: ``"auto"`` becomes ``"lungmask"`` when its weights are
    available (``modelpath`` or the torch hub cache), else ``"classical"`` with a
    :class:`LungmaskFallbackWarning`; explicit methods pass through.

    The warning is attributed to the caller of the function that calls this one (``lung_mask``,
    ``preprocess_case``, ``segment_volume``), i.e. to the user's code.

    Introduced in chapter 02.
    """
    if method not in LUNG_METHODS:
        raise InvalidInputError(f"lung method {method!r} is not known; choose one of {LUNG_METHODS}")
    if method != "auto":
        return method
    if lungmask_weights(modelpath) is not None:
        return "lungmask"
    warnings.warn(LUNGMASK_FALLBACK_WARNING, LungmaskFallbackWarning, stacklevel=3)
    return "classical"


def lung_mask(volume: Volume, method: str = "auto", modelpath: str | Path | None = None, *,
              device: str = "auto") -> np.ndarray:
    """Lung mask of a CT volume; uint8 (z, y, x): 0 outside, 1 right lung, 2 left lung.

    ``method``: ``"lungmask"`` (:func:`lungmask_lung_mask`), ``"classical"``
    (:func:`classical_lung_mask`) or ``"auto"``: lungmask when weights are available
    (``modelpath`` or the torch hub cache), otherwise classical, with a
    :class:`LungmaskFallbackWarning` saying so (:func:`resolve_lung_method`).
    Bad input (2D, 8-bit, normalised, not HU) raises :class:`InvalidInputError` naming the file.

    Introduced in chapter 02.
    """
    check_ct_volume(volume)
    if resolve_lung_method(method, modelpath) == "lungmask":
        return lungmask_lung_mask(volume, modelpath, device=device)
    return classical_lung_mask(volume)


# --------------------------------------------------------------------------------------------
# Crop, resample, normalise


def _check_mask_on(volume: Volume, mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != volume.shape:
        raise InvalidInputError(f"{_where(volume)}: {what} shape {mask.shape} differs from the image shape {volume.shape}")
    return mask


def crop_to_mask(volume: Volume, mask: np.ndarray, margin_mm: float = 10.0) -> tuple[Volume, tuple[slice, slice, slice]]:
    """Crop ``volume`` to the bounding box of ``mask > 0`` plus ``margin_mm`` on every side.

    Returns the cropped volume (origin moved to its first voxel, so it stays in the same
    physical place) and the box as (z, y, x) slices, to crop the masks the same way.

    Introduced in chapter 02.
    """
    mask = _check_mask_on(volume, mask, "mask")
    if margin_mm < 0:
        raise InvalidInputError(f"margin_mm must be >= 0, got {margin_mm}")
    if not mask.any():
        raise InvalidInputError(f"{_where(volume)}: the lung mask is empty; nothing to crop to")
    found = ndimage.find_objects((mask > 0).astype(np.uint8))[0]
    pad = [int(np.ceil(margin_mm / s)) for s in volume.spacing]
    box = tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(found, pad, volume.shape))
    start_xyz = np.array([box[2].start, box[1].start, box[0].start], float)
    direction = np.asarray(volume.direction, float).reshape(3, 3)
    origin = np.asarray(volume.origin, float) + direction @ (start_xyz * np.asarray(volume.spacing[::-1], float))
    cropped = Volume(volume.array[box], volume.spacing, tuple(origin), volume.direction, volume.source)
    return cropped, box  # type: ignore[return-value]


def resample_in_plane(volume: Volume, spacing_mm: float = 1.0, is_mask: bool = False) -> Volume:
    """Resample to ``spacing_mm`` x ``spacing_mm`` in the axial plane, z unchanged (SimpleITK).

    Images use linear interpolation (float32 out), masks nearest neighbour (dtype kept). The
    first voxel stays where it was; the new size covers the old physical extent.

    Introduced in chapter 02.
    """
    if not spacing_mm > 0:
        raise InvalidInputError(f"spacing_mm must be positive, got {spacing_mm}")
    image = volume.to_sitk()
    old_spacing = np.asarray(image.GetSpacing(), float)
    new_spacing = np.array([spacing_mm, spacing_mm, old_spacing[2]])
    old_size = np.asarray(image.GetSize())
    new_size = [max(1, int(round(n * o / s))) for n, o, s in zip(old_size, old_spacing, new_spacing)]
    new_size[2] = int(old_size[2])
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(tuple(float(s) for s in new_spacing))
    resampler.SetSize([int(n) for n in new_size])
    resampler.SetOutputOrigin(image.GetOrigin())
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if is_mask else sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0 if is_mask else float(volume.array.min()))
    if not is_mask:
        image = sitk.Cast(image, sitk.sitkFloat32)
    out = Volume.from_sitk(resampler.Execute(image), source=volume.source)
    array = out.array.astype(volume.array.dtype if is_mask else np.float32, copy=False)
    return Volume(array, out.spacing, out.origin, out.direction, volume.source)


def normalise_in_lungs(image: np.ndarray, lung_mask: np.ndarray, source: str = "<image>") -> np.ndarray:
    """z-score with the lungs' mean and standard deviation; voxels outside the lungs become 0.

    ``z = (x - mu) / sigma`` over the voxels with ``lung_mask > 0`` (the report's "mean variance
    normalisation", section 3.2.4, where sigma is the standard deviation, not the variance as
    the report's text says). Returns float32, same shape.

    Introduced in chapter 02.
    """
    image = np.asarray(image)
    lung_mask = np.asarray(lung_mask)
    if image.shape != lung_mask.shape:
        raise InvalidInputError(f"{source}: lung mask shape {lung_mask.shape} differs from image shape {image.shape}")
    inside = lung_mask > 0
    if not inside.any():
        raise InvalidInputError(f"{source}: the lung mask is empty; cannot normalise inside the lungs")
    values = image[inside].astype(np.float64)
    mean, std = values.mean(), values.std()
    if not std > 0:
        raise InvalidInputError(f"{source}: all lung voxels have the same value; cannot z-score")
    out = np.zeros(image.shape, np.float32)
    out[inside] = ((values - mean) / std).astype(np.float32)
    return out


def equalise_histogram(image: np.ndarray, mask: np.ndarray | None = None, n_bins: int = 256) -> np.ndarray:
    """Histogram equalisation to [0, 1] (float32), computed on the ``mask > 0`` voxels when given.

    The report lists it among its preprocessing steps (section 3.2) without saying where; here it
    is optional and, when used, comes before the z-score so the lungs still end zero-mean.

    Introduced in chapter 02.
    """
    from skimage import exposure

    image = np.asarray(image, dtype=np.float32)
    selection = None if mask is None else (np.asarray(mask) > 0)
    if selection is not None and not selection.any():
        raise InvalidInputError("equalise_histogram: the mask is empty")
    return exposure.equalize_hist(image, nbins=n_bins, mask=selection).astype(np.float32)


def normalise_image(image: np.ndarray, source: str = "<image>") -> np.ndarray:
    """Per-image z-score (float32) for 2D 8-bit slices such as COVID-SemiSeg.

    Those slices are windowed screenshots, not HU, come without lung masks, and the labelled and
    unlabelled parts were windowed differently; so each image is standardised by its own mean
    and standard deviation, which removes the brightness/contrast offset between them.

    Introduced in chapter 02.
    """
    image = np.asarray(image, dtype=np.float32)
    if not has_contrast(image):
        raise InvalidInputError(f"{source}: the image is constant (or not finite); cannot normalise")
    return zscore(image)


def zscore(image: np.ndarray) -> np.ndarray:
    """``image`` less its mean, over its standard deviation, float32, unchecked: for callers that have
    tested :func:`has_contrast` already (:func:`normalise_image` checks, then calls this)."""
    image = np.asarray(image, dtype=np.float32)
    return ((image - image.mean()) / image.std()).astype(np.float32)


def has_contrast(image: np.ndarray) -> bool:
    """Whether ``image`` has finite values that vary enough to be z-scored (:func:`normalise_image`)."""
    image = np.asarray(image, dtype=np.float32)
    std, mean = float(image.std()), float(image.mean())
    # relative: resizing a constant image in float32 leaves rounding noise, not contrast
    return bool(np.isfinite(std) and std > 1e-6 * max(1.0, abs(mean)))


# --------------------------------------------------------------------------------------------
# The whole pipeline and its cache


@dataclass
class PreprocessedCase:
    """A case after preprocessing: (z, y, x) arrays on the resampled grid.

    ``image`` float32 z-scored in the lungs, 0 outside; ``lung_mask`` uint8 (1 right, 2 left);
    ``lesion_mask`` uint8 or None; ``spacing`` (z, y, x) mm; ``meta`` what was done (method,
    crop box, lesion fraction inside the lung mask, ...).

    Introduced in chapter 02.
    """

    case_id: str
    image: np.ndarray
    lung_mask: np.ndarray
    lesion_mask: np.ndarray | None
    spacing: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)


class PreprocessCache:
    """Preprocessed cases stored as ``.npz`` in ``folder``, keyed by content + parameters.

    The key is the sha256 of the image and mask bytes, the geometry and the preprocessing
    parameters, so the same scan preprocessed the same way is computed once, and any change to
    the scan or the settings misses. Writes are atomic (temporary file + rename).

    Introduced in chapter 02.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(case: Case, parameters: dict[str, Any]) -> str:
        """sha256 hex of the case content and the parameters."""
        digest = hashlib.sha256()
        digest.update(json.dumps({"version": PREPROCESS_VERSION, **parameters}, sort_keys=True, default=str).encode())
        image = case.image
        digest.update(json.dumps([image.spacing, image.origin, image.direction, image.shape, str(image.array.dtype)]).encode())
        digest.update(np.ascontiguousarray(image.array).tobytes())
        for mask in (case.lung_mask, case.lesion_mask):
            digest.update(b"none" if mask is None else np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def get(self, key: str) -> PreprocessedCase | None:
        """The cached case for ``key``, or None."""
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            lesion = data["lesion_mask"] if bool(data["has_lesion"]) else None
            case = PreprocessedCase(str(data["case_id"]), data["image"], data["lung_mask"], lesion,
                                    tuple(float(s) for s in data["spacing"]), meta)  # type: ignore[arg-type]
        self.hits += 1
        return case

    def put(self, key: str, case: PreprocessedCase) -> Path:
        """Store ``case`` under ``key`` atomically; returns the file."""
        path = self._path(key)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, case_id=np.array(case.case_id), image=case.image, lung_mask=case.lung_mask,
                     lesion_mask=case.lesion_mask if case.lesion_mask is not None else np.zeros(0, np.uint8),
                     has_lesion=np.array(case.lesion_mask is not None), spacing=np.asarray(case.spacing),
                     meta=np.array(json.dumps(case.meta, default=str)))
        return path


def preprocess_case(case: Case, *, lung_method: str = "auto", spacing_mm: float = 1.0, margin_mm: float = 10.0,
                    equalise: bool = False, modelpath: str | Path | None = None, device: str = "auto",
                    cache: PreprocessCache | None = None) -> PreprocessedCase:
    """The report's preprocessing of one CT case: lung mask -> crop -> resample -> z-score.

    ``lung_method``: ``"auto"``, ``"lungmask"``, ``"classical"`` (see :func:`lung_mask`) or
    ``"given"`` (the dataset's own lung mask). The image is cropped to the lungs plus
    ``margin_mm``, resampled to ``spacing_mm`` in-plane (z unchanged; masks nearest neighbour),
    optionally histogram-equalised inside the lungs, and z-scored inside the lungs with 0
    outside. ``cache`` returns a stored result for the same content and parameters.
    2D 8-bit cases (``meta["intensity"] == "8bit"``) get the 2D equivalents instead
    (:func:`preprocess_slices`; ``lung_method`` does not apply). ``meta["steps"]`` lists what ran.

    Introduced in chapter 02.
    """
    volume = case.image
    where = _where(volume)
    if case.meta.get("intensity") == "8bit":
        return preprocess_slices(case, spacing_mm=spacing_mm, equalise=equalise)
    if lung_method not in (*LUNG_METHODS, "given"):
        raise InvalidInputError(f"lung_method={lung_method!r}: choose one of {(*LUNG_METHODS, 'given')}")
    check_ct_volume(volume)
    lesion = None if case.lesion_mask is None else _check_mask_on(volume, case.lesion_mask, "lesion mask")
    if case.lung_mask is not None:
        _check_mask_on(volume, case.lung_mask, "lung mask")
    # "auto" is resolved before the cache lookup, and the key holds the method that will run: a
    # classical mask cached while no lungmask weights existed must miss once they appear.
    # Explicit methods keep the key they always had; "auto" shares the key of its resolution.
    used = lung_method if lung_method == "given" else resolve_lung_method(lung_method, modelpath)
    parameters = {"lung_method": used, "spacing_mm": spacing_mm, "margin_mm": margin_mm,
                  "equalise": equalise, "modelpath": str(modelpath) if modelpath else None}
    key = PreprocessCache.key(case, parameters) if cache is not None else ""
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit

    if lung_method == "given":
        if case.lung_mask is None:
            raise InvalidInputError(f"{where}: lung_method='given' but case {case.case_id!r} has no lung mask")
        lungs = np.asarray(case.lung_mask, np.uint8)
    else:
        lungs = lung_mask(volume, used, modelpath, device=device)
    if not lungs.any():
        raise InvalidInputError(f"{where}: the lung mask of case {case.case_id!r} is empty (method {used!r})")

    cropped, box = crop_to_mask(volume, lungs, margin_mm)
    resampled = resample_in_plane(cropped, spacing_mm)
    lungs_r = resample_in_plane(cropped.with_array(lungs[box]), spacing_mm, is_mask=True).array.astype(np.uint8)
    lesion_r = None if lesion is None else resample_in_plane(
        cropped.with_array(np.asarray(lesion, np.uint8)[box]), spacing_mm, is_mask=True).array.astype(np.uint8)
    image = resampled.array
    if equalise:
        image = equalise_histogram(image, lungs_r)
    image = normalise_in_lungs(image, lungs_r, where)

    lesion_voxels = int(np.count_nonzero(lesion)) if lesion is not None else 0
    steps = [f"lung mask ({used})", f"crop to the lungs + {margin_mm:g} mm", f"resample in-plane to {spacing_mm:g} mm (z kept)",
             *(["histogram equalisation inside the lungs"] if equalise else []), "z-score inside the lungs, 0 outside"]
    meta = {"steps": steps, "lung_method": used, "source": volume.source, "original_shape": list(volume.shape),
            "original_spacing": list(volume.spacing), "crop_box": [[s.start, s.stop] for s in box],
            "lesion_inside_lungs": (float(np.count_nonzero((lesion > 0) & (lungs > 0)) / lesion_voxels)  # type: ignore[operator]  # lesion_voxels > 0 only when lesion is not None
                                    if lesion_voxels else None)}
    result = PreprocessedCase(case.case_id, image, lungs_r, lesion_r, resampled.spacing, meta)
    if cache is not None:
        cache.put(key, result)
    return result


def preprocess_slices(case: Case, *, spacing_mm: float = 1.0, equalise: bool = False) -> PreprocessedCase:
    """The 2D equivalent of :func:`preprocess_case` for 8-bit slices (z, H, W) without HU, lungs or spacing.

    No lung mask: the whole image stands for the lungs (``lung_mask`` all 1). No spacing: the
    longer side is taken to span :data:`SLICE_EXTENT_MM` and the slice is resized (bilinear;
    masks nearest) to ``spacing_mm`` pixels on that scale. Then, optionally, histogram
    equalisation of the whole image, and a z-score of its grey levels over the whole image
    (:func:`normalise_image`; the windowing of such slices is unknown, so each is scaled on its own).
    Introduced in chapter 05.
    """
    volume = case.image
    where = _where(volume)
    if not spacing_mm > 0:
        raise InvalidInputError(f"spacing_mm must be positive, got {spacing_mm}")
    lesion = None if case.lesion_mask is None else np.asarray(_check_mask_on(volume, case.lesion_mask, "lesion mask"), np.uint8)
    height, width = volume.shape[1:]
    scale = SLICE_EXTENT_MM / spacing_mm / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    planes, masks = [], []
    for z, plane in enumerate(np.asarray(volume.array, np.float32)):
        empty = np.zeros(plane.shape, np.uint8)
        image, mask = fit_slice(plane, empty if lesion is None else lesion[z], size, "resize")
        if equalise:
            image = equalise_histogram(image)
        planes.append(normalise_image(image, f"{where} slice {z}"))
        masks.append(mask)
    steps = ["no lung mask (8-bit slice): the whole image stands for the lungs",
             f"resize to {spacing_mm:g} mm pixels, the longer side taken as {SLICE_EXTENT_MM:g} mm (no spacing known)",
             *(["histogram equalisation of the whole image"] if equalise else []),
             "z-score of the grey levels over the whole image"]
    meta = {"steps": steps, "lung_method": None, "source": volume.source, "original_shape": list(volume.shape),
            "original_spacing": None, "crop_box": None, "lesion_inside_lungs": None}
    image = np.stack(planes).astype(np.float32)
    return PreprocessedCase(case.case_id, image, np.ones(image.shape, np.uint8),
                            None if lesion is None else np.stack(masks).astype(np.uint8),
                            (volume.spacing[0], spacing_mm, spacing_mm), meta)


def preprocess_cohort(name: str, n: int, *, seed: int = 0, root: str | Path | None = None,
                      split: str | None = None, id_prefix: str = "", spacing_mm: float = 1.0,
                      lung_method: str = "auto", phantom_shape: tuple[int, int, int] = (64, 128, 128),
                      disease: str = "covid") -> list[PreprocessedCase]:
    """The first ``n`` cases of dataset ``name``, preprocessed with :func:`preprocess_case`.

    The phantom cohort is made from ``seed``, ``phantom_shape`` and ``disease`` and uses its
    exact lung masks (``lung_method="given"``); a real dataset is read from ``root`` (its
    ``split``, default :attr:`~covidlib.datasets.Dataset.default_split`), has its own disease,
    and is masked with ``lung_method`` (2D 8-bit slices: :func:`preprocess_slices`).
    ``id_prefix`` is put before every case id, so that cohorts can be pooled.
    Introduced in chapter 05.
    """
    from covidlib.datasets import get_dataset

    if n < 1:
        raise InvalidInputError(f"preprocess_cohort: n must be at least 1, got {n}")
    if name == "phantom":
        dataset = get_dataset("phantom", root, n=n, seed=seed, shape=phantom_shape, disease=disease)
        lung_method = "given"
    else:
        dataset = get_dataset(name, root)
    cases = [preprocess_case(dataset.load(case_id), lung_method=lung_method, spacing_mm=spacing_mm)
             for case_id in dataset.case_ids(split or dataset.default_split)[:n]]
    return [replace(case, case_id=f"{id_prefix}{case.case_id}") for case in cases]
