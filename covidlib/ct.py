"""Hounsfield units: rescaling stored values, display windows, and thick slabs from thin slices.

CT reconstructs each voxel's linear attenuation coefficient mu and reports it on the
Hounsfield scale, HU = 1000 * (mu - mu_water) / (mu_water - mu_air), so water is 0 HU and
air -1000 HU. Scanners store integers and a rescale slope/intercept (DICOM 0028,1053 and
0028,1052); voxels outside the reconstructed field of view carry a padding value such as
-2048 or -3024 that is not a tissue at all.

Introduced in chapter 01.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from covidlib.errors import InvalidInputError
from covidlib.io import Volume

#: HU of air and of water, the two fixed points of the Hounsfield scale.
AIR_HU = -1000.0
WATER_HU = 0.0

#: Padding values scanners write outside the field of view (e.g. Siemens/Philips -2048 or -3024 after rescale).
PADDING_VALUES = (-2048.0, -3024.0)

#: Display windows as (lowest, highest) HU. The lung window is the report's [-1250, 250]
#: (width 1500, level -500); mediastinal is width 400 / level 40; bone width 1500 / level 300.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-1250.0, 250.0),
    "mediastinal": (-160.0, 240.0),
    "bone": (-450.0, 1050.0),
    "full": (-1024.0, 3071.0),
}

Window = str | tuple[float, float]


def resolve_window(window: Window) -> tuple[float, float]:
    """The ``(lo, hi)`` HU of a named window (a key of :data:`WINDOWS`) or of a ``(lo, hi)`` pair."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise InvalidInputError(f"window={window!r} is not a known window; use one of {sorted(WINDOWS)} or a (lo, hi) pair in HU")
        return WINDOWS[window]
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"window must be a name or a (lo, hi) pair in HU, got {window!r}") from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise InvalidInputError(f"window (lo, hi) must be finite with hi > lo, got {window!r}")
    return lo, hi


def window_label(window: Window) -> str:
    """A human-readable window name for figure titles, e.g. ``"lung window [-1250, 250] HU"``."""
    lo, hi = resolve_window(window)
    name = window if isinstance(window, str) else "custom"
    return f"{name} window [{lo:g}, {hi:g}] HU"


def window_hu(image: np.ndarray | Volume, window: Window = "lung") -> np.ndarray:
    """Map HU to display grey levels: ``lo`` and below -> 0, ``hi`` and above -> 1, linear between.

    ``image`` is an array of any shape (or a :class:`Volume`, whose array is used); returns a
    float32 array of the same shape in [0, 1].

    Introduced in chapter 01.
    """
    array = image.array if isinstance(image, Volume) else np.asarray(image)
    lo, hi = resolve_window(window)
    out = (array.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def rescale_to_hu(raw: np.ndarray, slope: float = 1.0, intercept: float = 0.0,
                  padding_value: float | None = None, *, fill_hu: float | None = AIR_HU) -> np.ndarray:
    """Stored scanner values to HU: ``hu = raw * slope + intercept`` (float32).

    ``padding_value`` is the stored value the scanner writes outside the field of view (DICOM
    Pixel Padding Value, 0028,0120). Those voxels become ``fill_hu`` (air by default, the usual
    choice before windowing or normalising), or NaN with ``fill_hu=None`` to mark them as masked.

    Introduced in chapter 01.
    """
    raw = np.asarray(raw)
    if not (np.isfinite(slope) and slope > 0 and np.isfinite(intercept)):
        raise InvalidInputError(f"rescale slope must be positive and intercept finite, got slope={slope}, intercept={intercept}")
    hu = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if padding_value is not None:
        hu[raw == padding_value] = np.nan if fill_hu is None else fill_hu
    return hu


def fill_padding(hu: np.ndarray, fill_hu: float = AIR_HU, below: float = -1500.0) -> np.ndarray:
    """Replace out-of-field-of-view padding (any HU below ``below``, e.g. -2048/-3024) by ``fill_hu``.

    Real tissue never goes below air (-1000 HU, -1024 with noise and calibration), so values far
    under it can only be padding. Returns a new float32 array.
    """
    out = np.asarray(hu, dtype=np.float32).copy()
    out[out < below] = fill_hu
    return out


def check_hu(array: np.ndarray, source: str = "<array>") -> None:
    """Raise :class:`InvalidInputError` when ``array`` does not look like a CT in Hounsfield units.

    A chest CT holds air (about -1000 HU) and, outside the field of view, maybe padding.
    Rejected: non-finite voxels, constant images (all padding, say), 8-bit pictures (all values
    in 0..255, e.g. PNG/JPEG slices), already normalised images (all values in [-1, 1] or
    z-scored), and stored values without the rescale intercept (nothing below 0, e.g. 0..4095).

    Introduced in chapter 01.
    """
    values = np.asarray(array)
    if values.size == 0:
        raise InvalidInputError(f"{source}: empty image")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise InvalidInputError(f"{source}: image holds NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        raise InvalidInputError(f"{source}: every voxel is {lo:g}: a constant image holds no anatomy, not a CT in HU")
    if lo >= 0 and hi <= 255:
        raise InvalidInputError(f"{source}: values lie in [{lo:g}, {hi:g}]: this looks like an 8-bit picture, not a CT in HU")
    if lo >= -10 and hi <= 10:
        raise InvalidInputError(f"{source}: values lie in [{lo:g}, {hi:g}]: this looks already normalised, not in HU")
    if lo >= 0:
        raise InvalidInputError(f"{source}: no voxel below 0 HU (range [{lo:g}, {hi:g}]); a chest CT holds air at about -1000 HU. "
                                "Are these stored values without the rescale intercept? See rescale_to_hu")
    if float(np.percentile(values, 1)) > -500:
        raise InvalidInputError(f"{source}: fewer than 1% of voxels are below -500 HU; a chest CT (air, lungs) should have many. Not HU?")


def _slab_factor(volume: Volume, thickness_mm: float) -> int:
    slice_mm = volume.spacing[0]
    factor = thickness_mm / slice_mm
    if not np.isfinite(thickness_mm) or thickness_mm <= 0:
        raise InvalidInputError(f"thickness_mm must be positive, got {thickness_mm}")
    if abs(factor - round(factor)) > 1e-3 or round(factor) < 1:
        raise InvalidInputError(f"{volume.source or '<volume>'}: slab thickness {thickness_mm} mm is not a whole multiple of the slice spacing {slice_mm} mm")
    factor = int(round(factor))
    if factor > volume.shape[0]:
        raise InvalidInputError(f"{volume.source or '<volume>'}: slab of {factor} slices is thicker than the volume ({volume.shape[0]} slices)")
    return factor


def average_slabs(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each run of ``factor`` consecutive slices along axis 0 (float32; a trailing partial run is dropped)."""
    n = array.shape[0] // factor
    grouped = array[: n * factor].reshape(n, factor, *array.shape[1:])
    return grouped.mean(axis=1, dtype=np.float64).astype(np.float32)


def majority_slabs(labels: np.ndarray, factor: int) -> np.ndarray:
    """Most frequent label in each run of ``factor`` slices along axis 0 (ties: the smaller label).

    The label an annotator would draw on a thick slice made of these thin ones.
    """
    n = labels.shape[0] // factor
    grouped = labels[: n * factor].reshape(n, factor, *labels.shape[1:])
    out = grouped[:, 0].copy()
    if factor == 1:
        return out
    # Most voxels agree across the slab; count labels only where they do not.
    disagree = (grouped != grouped[:, :1]).any(axis=1)
    runs = np.moveaxis(grouped, 1, -1)[disagree]  # (m, factor)
    candidates = np.unique(runs)
    counts = np.stack([(runs == c).sum(axis=1) for c in candidates], axis=1)
    out[disagree] = candidates[counts.argmax(axis=1)]
    return out


def make_thick_slices(volume: Volume, thickness_mm: float) -> Volume:
    """Thick slabs from thin slices: each slab averages ``thickness_mm / spacing_z`` consecutive slices.

    Images (float) are averaged, which is what a scanner's thick reconstruction does to small
    structures (partial-volume effect); label masks (integer or boolean) take the majority label. The z
    spacing becomes ``thickness_mm`` and the origin moves to the centre of the first slab; a
    trailing group shorter than a slab is dropped.

    Introduced in chapter 01.
    """
    factor = _slab_factor(volume, thickness_mm)
    array = volume.array
    is_label = np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
    thick = majority_slabs(array, factor) if is_label else average_slabs(array, factor)
    direction = np.asarray(volume.direction).reshape(3, 3)
    # Index (x, y, z) -> physical: origin + D @ (index * spacing); the first slab's centre sits at z index (factor-1)/2.
    shift = direction @ np.array([0.0, 0.0, (factor - 1) / 2 * volume.spacing[0]])
    origin = tuple(float(o) for o in np.asarray(volume.origin) + shift)
    spacing = (volume.spacing[0] * factor, volume.spacing[1], volume.spacing[2])
    return Volume(thick, spacing, origin, volume.direction, volume.source)  # type: ignore[arg-type]


def hu_summary(image: np.ndarray, labels: np.ndarray, names: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Mean, sd and voxel count of ``image`` (HU) for each named label present in ``labels``."""
    summary = {}
    for name, label in names.items():
        values = image[labels == label]
        if values.size:
            summary[name] = {"mean": float(values.mean()), "sd": float(values.std()), "voxels": int(values.size)}
    return summary
