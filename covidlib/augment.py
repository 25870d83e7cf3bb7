"""Data augmentation for 2D CT slices: small rotation, elastic deformation, gamma, noise, mixup.

The design follows TorchIO: a *random* transform (``RandomRotation``, ...) only draws its
parameters from a seeded :class:`numpy.random.Generator` and returns a *deterministic*
transform (``Rotation(angle_deg=1.7)``) that does the work. Every augmentation can therefore be
printed, logged (:meth:`Transform.describe`), replayed and shown in a figure
(:func:`covidlib.viz.show_augmentations`).

The choice of transforms follows the report (section 3.3), each one matched to something that
really varies between CT scans: a rotation in [-3, 3] degrees (how the patient lies on the
table), a small smooth elastic deformation (breathing and posture), random gamma and Gaussian
noise (scanner and protocol differences); and mixup (Zhang et al. 2018), which mixes two
slices and their labels into a soft label. The report leaves flips and large rotations out
because patients lie face up; COVID-SemiSeg, though, stores its slices turned by 90 degrees with
the spine on either side, so for such data :class:`RandomDihedral` adds the 8 turns and mirrors
of the square. :class:`RandomZoom` (not the report's) scales the slice about its centre, and
:class:`RandomCrop` (not the report's either) cuts a random square window out of it, so that a
fully convolutional network can train on windows of larger slices and predict whole ones.

Array conventions. Images are ``numpy`` arrays or ``torch`` tensors whose last two axes are
the slice ``(H, W)`` in pixels: ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``. All leading axes
share one set of parameters (augment a batch item by item to give each its own). A mask has the
same last two axes: integer or bool masks (class indices) are resampled with nearest neighbour
and stay exactly binary; floating-point masks (soft labels, probabilities) are resampled
linearly. Spatial transforms work in pixel units and assume square pixels, which the
preprocessing guarantees (1 x 1 mm in-plane). Points that come from outside the slice are
filled with ``fill`` for images (0 = background after z-scoring) and 0 for masks.

Introduced in chapter 03.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence  # noqa: F401  (unused: goes with the next regeneration of the records, whose fingerprints an import changes)
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from covidlib.errors import InvalidInputError

__all__ = [
    "Array",
    "Transform",
    "RandomTransform",
    "Identity",
    "Chain",
    "Rotation",
    "RandomRotation",
    "Zoom",
    "RandomZoom",
    "Crop",
    "RandomCrop",
    "ElasticDeformation",
    "RandomElasticDeformation",
    "GammaCorrection",
    "RandomGamma",
    "GaussianNoise",
    "RandomNoise",
    "Compose",
    "Mixup",
    "sample_mixup",
    "mixup",
    "Dihedral",
    "DIHEDRAL_GROUP",
    "RandomDihedral",
    "as_generator",
    "default_augmentation",
]

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def as_generator(rng: np.random.Generator | int) -> np.random.Generator:
    """A NumPy generator from a generator (returned as is) or an integer seed.

    ``None`` is refused: nothing in ``covidlib`` draws from hidden global random state.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise InvalidInputError(f"rng must be a numpy.random.Generator or a non-negative integer seed, got {rng!r}")


def _check_pair(image: Array, mask: Array | None) -> None:
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise InvalidInputError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")
    if image.ndim < 2:
        raise InvalidInputError(f"image must have at least 2 axes (..., H, W), got shape {tuple(image.shape)}")
    if not (image.dtype.is_floating_point if isinstance(image, torch.Tensor) else np.issubdtype(image.dtype, np.floating)):
        raise InvalidInputError(f"image must be floating point (normalised intensities or HU), got dtype {image.dtype}")
    finite = torch.isfinite(image).all() if isinstance(image, torch.Tensor) else np.isfinite(image).all()
    if not bool(finite):
        raise InvalidInputError("image contains NaN or infinite values; fix the preprocessing before augmenting")
    if mask is not None:
        if type(mask) is not type(image) and not (isinstance(mask, np.ndarray) and isinstance(image, np.ndarray)):
            raise InvalidInputError(f"image and mask must both be numpy arrays or both torch tensors, "
                                    f"got {type(image).__name__} and {type(mask).__name__}")
        if mask.ndim < 2 or tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
            raise InvalidInputError(f"mask shape {tuple(mask.shape)} does not match the image slice shape "
                                    f"{tuple(image.shape)} in its last two axes (H, W)")


class Transform(ABC):
    """A deterministic transform of an image and (optionally) its mask; parameters are fixed."""

    def __call__(self, image: Array, mask: Array | None = None) -> tuple[Array, Array | None]:
        """Transform ``image`` (..., H, W) and ``mask`` (..., H, W) together; returns both."""
        _check_pair(image, mask)
        return self.apply(image, mask)

    @abstractmethod
    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        """The transform itself, on inputs already checked."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The transform's name and parameters as a JSON-ready dict (to log or replay)."""

    @abstractmethod
    def label(self) -> str:
        """A short human-readable summary for figure titles, e.g. ``"rotate +1.7°"``."""


class RandomTransform(ABC):
    """Draws the parameters of a deterministic :class:`Transform` from a seeded generator.

    ``p`` is the probability that the transform is applied at all (used by :meth:`draw`,
    :class:`Compose` and ``__call__``); :meth:`sample` always returns the transform.
    """

    p: float

    def _check_p(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise InvalidInputError(f"{type(self).__name__}: p must be a probability in [0, 1], got {self.p!r}")

    @abstractmethod
    def sample(self, rng: np.random.Generator | int) -> Transform:
        """Draw the parameters and return the deterministic transform that uses them."""

    def draw(self, rng: np.random.Generator | int) -> Transform:
        """With probability ``p`` the sampled transform, otherwise :class:`Identity`."""
        rng = as_generator(rng)
        if rng.random() >= self.p:
            return Identity()
        return self.sample(rng)

    def __call__(self, image: Array, mask: Array | None = None, *,
                 rng: np.random.Generator | int) -> tuple[Array, Array | None]:
        """Draw a transform with :meth:`draw` and apply it to ``image`` and ``mask``."""
        return self.draw(rng)(image, mask)


@dataclass(frozen=True)
class Identity(Transform):
    """Leaves image and mask unchanged (what a transform drawn with probability 1 - p becomes)."""

    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        return image, mask

    def describe(self) -> dict[str, Any]:
        return {"name": "Identity"}

    def label(self) -> str:
        return "identity"


@dataclass(frozen=True)
class Chain(Transform):
    """Deterministic transforms applied one after another (what :class:`Compose` samples)."""

    transforms: tuple[Transform, ...] = ()

    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        for transform in self.transforms:
            image, mask = transform.apply(image, mask)
        return image, mask

    def describe(self) -> dict[str, Any]:
        return {"name": "Chain", "transforms": [t.describe() for t in self.transforms]}

    def label(self) -> str:
        return ", ".join(t.label() for t in self.transforms) or "identity"


# --- spatial transforms -----------------------------------------------------------------

def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index of every pixel, float64 (H, W) each."""
    return np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")


def _warp(array: Array, source_y: np.ndarray, source_x: np.ndarray, *, soft: bool, fill: float) -> Array:
    """Resample ``array`` (..., H, W) at the source positions (H, W) given in pixels.

    ``soft`` picks bilinear interpolation (images, soft masks), otherwise nearest neighbour
    (label masks keep their values exactly). Outside the slice the value is ``fill``.
    """
    is_numpy = isinstance(array, np.ndarray)
    tensor: torch.Tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array  # type: ignore[assignment]  # array is an ndarray only when is_numpy
    height, width = tensor.shape[-2:]
    if height < 2 or width < 2:
        raise InvalidInputError(f"spatial transforms need slices of at least 2 x 2 pixels, got {height} x {width}")
    work_dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    flat = tensor.to(work_dtype).reshape(1, -1, height, width)
    # grid_sample reads normalised (x, y) in [-1, 1]; align_corners=True puts -1 and 1 on the
    # centres of the first and last pixels, so pixel index p maps to 2 p / (n - 1) - 1.
    grid = np.stack((source_x * (2.0 / (width - 1)) - 1.0, source_y * (2.0 / (height - 1)) - 1.0), axis=-1)
    grid = torch.from_numpy(grid[None]).to(device=flat.device, dtype=work_dtype)
    # grid_sample pads with zeros; shifting by ``fill`` makes the padding equal ``fill``.
    warped = F.grid_sample(flat - fill, grid, mode="bilinear" if soft else "nearest",
                           padding_mode="zeros", align_corners=True) + fill
    warped = warped.reshape(tensor.shape)
    if not tensor.dtype.is_floating_point:
        warped = warped.round().to(tensor.dtype)
    elif warped.dtype != tensor.dtype:
        warped = warped.to(tensor.dtype)
    return warped.numpy() if is_numpy else warped  # type: ignore[return-value]  # the input's kind, by is_numpy


def _is_soft(mask: np.ndarray | torch.Tensor) -> bool:
    return mask.dtype.is_floating_point if isinstance(mask, torch.Tensor) else np.issubdtype(mask.dtype, np.floating)


def _warp_pair(image: Array, mask: Array | None, source_y: np.ndarray, source_x: np.ndarray,
               fill: float) -> tuple[Array, Array | None]:
    """``image`` and ``mask`` resampled at the same source positions (H, W): the image bilinearly
    (``fill`` outside), the mask nearest for labels and linearly for soft masks (0 outside)."""
    image = _warp(image, source_y, source_x, soft=True, fill=fill)
    if mask is not None:
        mask = _warp(mask, source_y, source_x, soft=_is_soft(mask), fill=0.0)
    return image, mask


@dataclass(frozen=True)
class Rotation(Transform):
    """Rotate the slice by ``angle_deg`` degrees about its centre, counter-clockwise as displayed.

    Same convention as ``scipy.ndimage.rotate(..., reshape=False)`` (and ``np.rot90`` for 90
    degrees); the centre is ((H - 1) / 2, (W - 1) / 2). Image bilinear, label mask nearest.
    """

    angle_deg: float
    fill: float = 0.0

    def source_positions(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Where each output pixel reads from: source rows and columns (H, W) in pixels."""
        theta = math.radians(self.angle_deg)
        rows, cols = _pixel_grid(height, width)
        dy, dx = rows - (height - 1) / 2.0, cols - (width - 1) / 2.0
        # Inverse rotation: output pixel -> input pixel (y points down, so signs differ from the
        # textbook x/y-up matrix).
        source_y = dx * math.sin(theta) + dy * math.cos(theta) + (height - 1) / 2.0
        source_x = dx * math.cos(theta) - dy * math.sin(theta) + (width - 1) / 2.0
        return source_y, source_x

    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        if self.angle_deg == 0:
            return image, mask
        return _warp_pair(image, mask, *self.source_positions(*image.shape[-2:]), fill=self.fill)

    def describe(self) -> dict[str, Any]:
        return {"name": "Rotation", "angle_deg": float(self.angle_deg), "fill": float(self.fill)}

    def label(self) -> str:
        return f"rotate {self.angle_deg:+.1f}°"


@dataclass(frozen=True)
class RandomRotation(RandomTransform):
    """Rotation by an angle drawn uniformly from [-degrees, degrees] (report: 3, patient pose)."""

    degrees: float = 3.0
    p: float = 1.0
    fill: float = 0.0

    def __post_init__(self) -> None:
        self._check_p()
        if not (math.isfinite(self.degrees) and self.degrees >= 0):
            raise InvalidInputError(f"RandomRotation: degrees must be a non-negative number, got {self.degrees!r}")

    def sample(self, rng: np.random.Generator | int) -> Rotation:
        angle = as_generator(rng).uniform(-self.degrees, self.degrees)
        return Rotation(angle_deg=float(angle), fill=self.fill)


@dataclass(frozen=True)
class Zoom(Transform):
    """Scale the slice by ``factor`` about its centre ((H - 1) / 2, (W - 1) / 2), keeping its size:
    above 1 enlarges (the border leaves the slice), below 1 shrinks (``fill`` comes in at the
    border). Output pixel p reads the input at ``centre + (p - centre) / factor``. Image
    bilinear, label mask nearest, as :class:`Rotation`.
    """

    factor: float
    fill: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise InvalidInputError(f"Zoom: factor must be a positive number, got {self.factor!r}")

    def source_positions(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Where each output pixel reads from: source rows and columns (H, W) in pixels."""
        rows, cols = _pixel_grid(height, width)
        centre_y, centre_x = (height - 1) / 2.0, (width - 1) / 2.0
        return centre_y + (rows - centre_y) / self.factor, centre_x + (cols - centre_x) / self.factor

    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        if self.factor == 1:
            return image, mask
        return _warp_pair(image, mask, *self.source_positions(*image.shape[-2:]), fill=self.fill)

    def describe(self) -> dict[str, Any]:
        return {"name": "Zoom", "factor": float(self.factor), "fill": float(self.fill)}

    def label(self) -> str:
        return f"zoom x{self.factor:.2f}"


@dataclass(frozen=True)
class RandomZoom(RandomTransform):
    """Zoom by ``exp(u)``, u uniform in [-log(max_factor), log(max_factor)]: enlarging and shrinking
    equally likely, at most by ``max_factor`` (nnU-Net draws a scale in [0.7, 1.4]; Isensee et al.,
    Nature Methods 18, 2021). A tightly cropped slice resized to the network's input varies in
    scale with the patient and the crop; this varies it further."""

    max_factor: float = 1.25
    p: float = 1.0
    fill: float = 0.0

    def __post_init__(self) -> None:
        self._check_p()
        if not (math.isfinite(self.max_factor) and self.max_factor >= 1):
            raise InvalidInputError(f"RandomZoom: max_factor must be a number of at least 1, got {self.max_factor!r}")

    def sample(self, rng: np.random.Generator | int) -> Zoom:
        reach = math.log(self.max_factor)
        return Zoom(factor=math.exp(as_generator(rng).uniform(-reach, reach)), fill=self.fill)


def _foreground_pixels(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """(n, 2) rows and columns, in row-major order, of the pixels where any leading slice of ``mask``
    (..., H, W) is foreground: a label other than 0, or above 0.5 in a soft mask."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    foreground = array > 0.5 if _is_soft(array) else array != 0
    return np.argwhere(foreground.reshape(-1, *foreground.shape[-2:]).any(axis=0))


def _place(fraction: float, first: int, last: int) -> int:
    """The position ``fraction`` in [0, 1] picks among ``first`` ... ``last``, each equally likely
    for a uniform ``fraction``."""
    return first + min(int(fraction * (last - first + 1)), last - first)


@dataclass(frozen=True)
class Crop(Transform):
    """Cut a ``size`` x ``size`` window out of the slice. ``top`` and ``left`` in [0, 1] place it
    from one border (0) to the other (1) whatever the slice's size: on an (H, W) slice the window
    starts at row ``min(floor(top * (H - size + 1)), H - size)``, and likewise for columns, so a
    uniform ``top`` gives every position the same chance. A slice smaller than the window is refused.

    ``around`` in [0, 1] keeps the window on the foreground: of the mask's ``n`` foreground pixels
    (row-major), the window holds number ``min(floor(around * n), n - 1)``, and ``top`` and ``left``
    place it among the windows that hold that pixel. Without a mask or foreground it places the
    window as without ``around``.
    """

    size: int
    top: float = 0.5
    left: float = 0.5
    around: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.size, (int, np.integer)) and not isinstance(self.size, bool) and self.size >= 1):
            raise InvalidInputError(f"Crop: size must be a positive integer, got {self.size!r}")
        for name in ("top", "left", "around"):
            value = getattr(self, name)
            if name == "around" and value is None:
                continue
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0):
                raise InvalidInputError(f"Crop: {name} must be a number in [0, 1], got {value!r}")

    def corner(self, height: int, width: int, mask: np.ndarray | torch.Tensor | None = None) -> tuple[int, int]:
        """The window's first row and column on a ``height`` x ``width`` slice whose mask is ``mask``."""
        if height < self.size or width < self.size:
            raise InvalidInputError(f"Crop: a {self.size} x {self.size} window does not fit a {height} x {width} slice")
        rows, cols = (0, height - self.size), (0, width - self.size)
        pixels = _foreground_pixels(mask) if self.around is not None and mask is not None else ()
        if len(pixels):
            row, col = pixels[min(int(self.around * len(pixels)), len(pixels) - 1)]  # type: ignore[operator]  # pixels is empty when around is None
            rows = (max(0, int(row) - self.size + 1), min(height - self.size, int(row)))
            cols = (max(0, int(col) - self.size + 1), min(width - self.size, int(col)))
        return _place(self.top, *rows), _place(self.left, *cols)

    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        row, col = self.corner(*image.shape[-2:], mask)  # type: ignore[call-arg]  # shape[-2:] is (H, W); mypy cannot count a starred tuple
        window = (..., slice(row, row + self.size), slice(col, col + self.size))
        # a copy, not a view: the caller's slice (e.g. a dataset's stored image) must never change
        return _copy(image[window]), None if mask is None else _copy(mask[window])

    def describe(self) -> dict[str, Any]:
        around = {} if self.around is None else {"around": float(self.around)}
        return {"name": "Crop", "size": int(self.size), "top": float(self.top), "left": float(self.left), **around}

    def label(self) -> str:
        around = "" if self.around is None else f" around foreground {self.around:.2f}"
        return f"crop {self.size} px at ({self.top:.2f}, {self.left:.2f}){around}"


@dataclass(frozen=True)
class RandomCrop(RandomTransform):
    """A ``size`` x ``size`` window at a uniformly random position (:class:`Crop`), on every call:
    ``p`` is fixed at 1, since the items of a batch must share one size. Training on windows of
    larger slices and predicting whole slices is nnU-Net's patch-based training (Isensee et al.,
    Nature Methods 18, 2021): the network sees finer detail at the cost of a window's pixels.

    With probability ``foreground`` the window holds a foreground pixel drawn uniformly (``around``),
    as nnU-Net draws a third of its patches around foreground; at 0 no draw is spent on it, so the
    windows are those drawn before the option existed.
    """

    size: int
    foreground: float = 0.0
    p: float = field(default=1.0, init=False)

    def __post_init__(self) -> None:
        Crop(self.size)  # the same checks of size
        if not (isinstance(self.foreground, (int, float)) and not isinstance(self.foreground, bool)
                and 0.0 <= self.foreground <= 1.0):
            raise InvalidInputError(f"RandomCrop: foreground must be a probability in [0, 1], got {self.foreground!r}")

    def sample(self, rng: np.random.Generator | int) -> Crop:
        rng = as_generator(rng)
        around = float(rng.random()) if self.foreground > 0 and rng.random() < self.foreground else None
        return Crop(self.size, top=float(rng.random()), left=float(rng.random()), around=around)


def _copy(array: Array) -> Array:
    return array.clone() if isinstance(array, torch.Tensor) else array.copy()


@dataclass(frozen=True)
class Dihedral(Transform):
    """Rotate by ``quarter_turns`` x 90 degrees (counter-clockwise, as ``np.rot90``), then mirror
    left-right when ``flip``: the 8 symmetries of a square, exact (no interpolation).

    COVID-SemiSeg stores its slices turned by 90 degrees, with the spine on either side, so on
    real slices the orientation is not a fixed property the network may rely on.
    """

    quarter_turns: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.quarter_turns, bool) or self.quarter_turns not in (0, 1, 2, 3):
            raise InvalidInputError(f"Dihedral: quarter_turns must be 0, 1, 2 or 3, got {self.quarter_turns!r}")

    @staticmethod
    def _turn(array: Array, quarter_turns: int, flip: bool) -> Array:
        if isinstance(array, torch.Tensor):
            array = torch.rot90(array, quarter_turns, dims=(-2, -1))
            return torch.flip(array, dims=(-1,)) if flip else array
        array = np.rot90(array, quarter_turns, axes=(-2, -1))
        return np.ascontiguousarray(array[..., ::-1] if flip else array)

    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        if self.quarter_turns == 0 and not self.flip:
            return image, mask
        turned = self._turn(image, self.quarter_turns, self.flip)
        return turned, None if mask is None else self._turn(mask, self.quarter_turns, self.flip)

    def inverse(self) -> Dihedral:
        """The symmetry that undoes this one: turn back, or (with a mirror) itself, as
        mirror-then-turn equals turn-back-then-mirror."""
        return self if self.flip else Dihedral((-self.quarter_turns) % 4, False)

    def describe(self) -> dict[str, Any]:
        return {"name": "Dihedral", "quarter_turns": int(self.quarter_turns), "flip": bool(self.flip)}

    def label(self) -> str:
        return f"turn {90 * self.quarter_turns}°" + (", mirror" if self.flip else "")


#: The 8 symmetries of the square (turns first, then the mirrored ones).
DIHEDRAL_GROUP = tuple(Dihedral(k, flip) for flip in (False, True) for k in range(4))


@dataclass(frozen=True)
class RandomDihedral(RandomTransform):
    """One of the 8 symmetries of the square, drawn uniformly (:class:`Dihedral`)."""

    p: float = 1.0

    def __post_init__(self) -> None:
        self._check_p()

    def sample(self, rng: np.random.Generator | int) -> Dihedral:
        index = int(as_generator(rng).integers(8))
        return Dihedral(quarter_turns=index % 4, flip=index >= 4)


@functools.lru_cache(maxsize=32)
def _cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of torch's bicubic (align_corners=True) interpolation weights along one axis."""
    identity = torch.eye(n_in, dtype=torch.float64)[None, :, :, None]  # channel k is the k-th unit vector
    weights = F.interpolate(identity, size=(n_out, 1), mode="bicubic", align_corners=True)[0, :, :, 0]
    weights = weights.T.numpy().copy()
    weights.flags.writeable = False
    return weights


@dataclass(frozen=True, eq=False)
class ElasticDeformation(Transform):
    """Smooth deformation from displacements on a coarse grid of control points.

    ``control_displacements`` (2, ny, nx) holds the (row, column) displacement in pixels at
    ``ny x nx`` control points spread evenly over the slice (corners included); bicubic
    interpolation turns them into a smooth dense field (H, W), and each output pixel reads the
    input at its own position plus the field. Small control grids give few, loggable
    parameters (the idea of TorchIO's RandomElasticDeformation; Simard et al. 2003 smooth a
    per-pixel random field instead). All-zero displacements are the identity.
    """

    control_displacements: np.ndarray
    fill: float = 0.0

    def __post_init__(self) -> None:
        grid = np.asarray(self.control_displacements, dtype=np.float64)
        if grid.ndim != 3 or grid.shape[0] != 2 or min(grid.shape[1:]) < 2:
            raise InvalidInputError("ElasticDeformation: control_displacements must have shape (2, ny, nx) "
                                    f"with ny, nx >= 2, got {grid.shape}")
        if not np.isfinite(grid).all():
            raise InvalidInputError("ElasticDeformation: control_displacements contain NaN or infinity")
        object.__setattr__(self, "control_displacements", grid)

    def dense_field(self, height: int, width: int) -> torch.Tensor:
        """The displacement field (2, H, W) in pixels: (row, column) shift per output pixel."""
        # Bicubic upsampling is separable: rows @ control @ columns^T gives what
        # F.interpolate(mode="bicubic", align_corners=True) gives, ~20x faster for 7 -> 256.
        _, ny, nx = self.control_displacements.shape
        rows, cols = _cubic_weights(ny, height), _cubic_weights(nx, width)
        return torch.from_numpy(rows @ self.control_displacements @ cols.T)

    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        if not self.control_displacements.any():
            return image, mask
        height, width = image.shape[-2:]
        rows, cols = _pixel_grid(height, width)
        displacement = self.dense_field(height, width)
        return _warp_pair(image, mask, rows + displacement[0].numpy(), cols + displacement[1].numpy(), fill=self.fill)

    def describe(self) -> dict[str, Any]:
        return {"name": "ElasticDeformation", "control_displacements": np.round(self.control_displacements, 4).tolist(),
                "fill": float(self.fill)}

    def label(self) -> str:
        return f"elastic ≤{np.abs(self.control_displacements).max():.1f} px"

    def __repr__(self) -> str:
        grid = self.control_displacements
        return (f"ElasticDeformation(control grid {grid.shape[1]}x{grid.shape[2]}, "
                f"max |displacement| {np.abs(grid).max():.2f} px, fill={self.fill})")


@dataclass(frozen=True)
class RandomElasticDeformation(RandomTransform):
    """Elastic deformation with control-point displacements uniform in [-max, max] pixels.

    The outer ring of control points is kept at zero so the slice border stays in place (as
    TorchIO does). Defaults (7 x 7 points, up to 4 px = 4 mm after resampling to 1 mm) give a
    gentle, breathing-sized deformation, not a rubber-sheet one. Bicubic interpolation may
    overshoot between control points, so the dense field can exceed ``max_displacement`` a little.
    """

    max_displacement: float = 4.0
    num_control_points: int = 7
    p: float = 1.0
    fill: float = 0.0

    def __post_init__(self) -> None:
        self._check_p()
        if not (math.isfinite(self.max_displacement) and self.max_displacement >= 0):
            raise InvalidInputError("RandomElasticDeformation: max_displacement must be a non-negative number "
                                    f"of pixels, got {self.max_displacement!r}")
        if int(self.num_control_points) != self.num_control_points or self.num_control_points < 3:
            raise InvalidInputError("RandomElasticDeformation: num_control_points must be an integer >= 3 "
                                    f"(the border ring is fixed), got {self.num_control_points!r}")

    def sample(self, rng: np.random.Generator | int) -> ElasticDeformation:
        n = int(self.num_control_points)
        control = np.zeros((2, n, n))
        control[:, 1:-1, 1:-1] = as_generator(rng).uniform(-self.max_displacement, self.max_displacement,
                                                           size=(2, n - 2, n - 2))
        return ElasticDeformation(control_displacements=control, fill=self.fill)


# --- intensity transforms ---------------------------------------------------------------

@dataclass(frozen=True)
class GammaCorrection(Transform):
    """Gamma correction ``lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma``; masks unchanged.

    ``intensity_range=(lo, hi)`` fixes the range (e.g. (0, 1) for 8-bit images scaled to
    [0, 1]); by default it is the image's own min and max (over all leading axes), so the
    darkest and brightest values stay where they are and the ones between bend. Values
    outside a fixed range are clipped to it first. gamma < 1 brightens, > 1 darkens.
    """

    gamma: float
    intensity_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise InvalidInputError(f"GammaCorrection: gamma must be a positive number, got {self.gamma!r}")
        if self.intensity_range is not None and not self.intensity_range[0] < self.intensity_range[1]:
            raise InvalidInputError(f"GammaCorrection: intensity_range must be (low, high) with low < high, "
                                    f"got {self.intensity_range!r}")

    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        if self.intensity_range is None:
            low, high = float(image.min()), float(image.max())
        else:
            low, high = (float(v) for v in self.intensity_range)
        if high <= low or self.gamma == 1:
            return image, mask
        scaled = (image.clip(low, high) - low) / (high - low)
        return low + (high - low) * scaled ** self.gamma, mask

    def describe(self) -> dict[str, Any]:
        return {"name": "GammaCorrection", "gamma": float(self.gamma),
                "intensity_range": None if self.intensity_range is None else [float(v) for v in self.intensity_range]}

    def label(self) -> str:
        return f"gamma {self.gamma:.2f}"


@dataclass(frozen=True)
class RandomGamma(RandomTransform):
    """Gamma = exp(u), u uniform in ``log_gamma`` (default (-0.3, 0.3): gamma in [0.74, 1.35], as TorchIO)."""

    log_gamma: tuple[float, float] = (-0.3, 0.3)
    intensity_range: tuple[float, float] | None = None
    p: float = 1.0

    def __post_init__(self) -> None:
        self._check_p()
        if not self.log_gamma[0] <= self.log_gamma[1]:
            raise InvalidInputError(f"RandomGamma: log_gamma must be (low, high) with low <= high, got {self.log_gamma!r}")

    def sample(self, rng: np.random.Generator | int) -> GammaCorrection:
        gamma = math.exp(as_generator(rng).uniform(*self.log_gamma))
        return GammaCorrection(gamma=gamma, intensity_range=self.intensity_range)


@dataclass(frozen=True)
class GaussianNoise(Transform):
    """Add zero-mean Gaussian noise of standard deviation ``std`` (image units); masks unchanged.

    The noise field is drawn from ``numpy.random.default_rng(noise_seed)``, so the transform
    is fully fixed by two numbers and replays exactly.
    """

    std: float
    noise_seed: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.std) and self.std >= 0):
            raise InvalidInputError(f"GaussianNoise: std must be a non-negative number, got {self.std!r}")

    def apply(self, image: Array, mask: Array | None) -> tuple[Array, Array | None]:
        if self.std == 0:
            return image, mask
        double = image.dtype in (torch.float64, np.float64)
        noise = np.random.default_rng(self.noise_seed).standard_normal(
            tuple(image.shape), dtype=np.float64 if double else np.float32)
        noise *= self.std
        if isinstance(image, torch.Tensor):
            return image + torch.from_numpy(noise).to(device=image.device, dtype=image.dtype), mask
        return (image + noise).astype(image.dtype, copy=False), mask

    def describe(self) -> dict[str, Any]:
        return {"name": "GaussianNoise", "std": float(self.std), "noise_seed": int(self.noise_seed)}

    def label(self) -> str:
        return f"noise σ {self.std:.3f}"


@dataclass(frozen=True)
class RandomNoise(RandomTransform):
    """Gaussian noise with a standard deviation uniform in ``std`` (image units).

    The default (0, 0.1) is in z-score units of lung intensity: up to a tenth of the
    parenchyma's spread, in the range of the 10-40 HU quantum noise between scanners.
    """

    std: tuple[float, float] = (0.0, 0.1)
    p: float = 1.0

    def __post_init__(self) -> None:
        self._check_p()
        if not 0 <= self.std[0] <= self.std[1]:
            raise InvalidInputError(f"RandomNoise: std must be (low, high) with 0 <= low <= high, got {self.std!r}")

    def sample(self, rng: np.random.Generator | int) -> GaussianNoise:
        rng = as_generator(rng)
        std = rng.uniform(*self.std)
        return GaussianNoise(std=float(std), noise_seed=int(rng.integers(2**32)))


# --- composition ------------------------------------------------------------------------

@dataclass(frozen=True)
class Compose(RandomTransform):
    """Random transforms in sequence, each applied with its own probability ``p``.

    ``shuffle=True`` draws a new order each time (TorchIO's ``OneOf``/``RandomOrder`` idea).
    :meth:`sample` returns a :class:`Chain` of the transforms that were drawn (skipped ones
    left out), which prints, logs and replays.
    """

    transforms: tuple[RandomTransform, ...] = field(default_factory=tuple)
    shuffle: bool = False
    p: float = 1.0

    def __post_init__(self) -> None:
        self._check_p()
        object.__setattr__(self, "transforms", tuple(self.transforms))
        for transform in self.transforms:
            if not isinstance(transform, RandomTransform):
                raise InvalidInputError(f"Compose: every item must be a RandomTransform, got {type(transform).__name__}")

    def sample(self, rng: np.random.Generator | int) -> Chain:
        rng = as_generator(rng)
        order = rng.permutation(len(self.transforms)) if self.shuffle else range(len(self.transforms))
        drawn = (self.transforms[i].draw(rng) for i in order)
        return Chain(tuple(t for t in drawn if not isinstance(t, Identity)))


def default_augmentation(*, p: float = 0.5, degrees: float = 3.0, max_displacement: float = 4.0,
                         log_gamma: tuple[float, float] = (-0.3, 0.3),
                         noise_std: tuple[float, float] = (0.0, 0.1), dihedral: bool = False,
                         zoom: float = 1.0, crop: int | None = None, crop_foreground: float = 0.0) -> Compose:
    """The report's augmentation (section 3.3): rotation, elastic, gamma, noise, each with probability ``p``.

    ``crop`` first cuts a random ``crop`` x ``crop`` window out of each slice (:class:`RandomCrop`),
    so the rest works on the window, with probability ``crop_foreground`` one that holds infection.
    ``dihedral=True`` then turns and mirrors it at random
    (:class:`RandomDihedral`), for data such as COVID-SemiSeg whose slices come in several
    orientations. ``zoom`` above 1 then scales it by a factor in [1 / zoom, zoom] with probability
    ``p`` (:class:`RandomZoom`). At ``crop=None`` and ``zoom=1`` nothing is drawn for them, so the
    other draws stay as they were without them.
    Mixup is batch-level and lives in :func:`mixup`, applied by the training loop.
    """
    return Compose((
        *((RandomCrop(crop, foreground=crop_foreground),) if crop is not None else ()),
        *((RandomDihedral(),) if dihedral else ()),
        *((RandomZoom(max_factor=zoom, p=p),) if zoom != 1 else ()),
        RandomRotation(degrees=degrees, p=p),
        RandomElasticDeformation(max_displacement=max_displacement, p=p),
        RandomGamma(log_gamma=log_gamma, p=p),
        RandomNoise(std=noise_std, p=p),
    ))


# --- mixup ------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Mixup:
    """Mix each batch item with item ``permutation[i]``: ``lam * x_i + (1 - lam) * x_perm(i)``.

    Zhang, Cisse, Dauphin and Lopez-Paz, "mixup: Beyond empirical risk minimization", ICLR 2018.
    The targets are mixed with the same ``lam``, so labels become soft probabilities.
    """

    lam: float
    permutation: np.ndarray

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise InvalidInputError(f"Mixup: lam must be in [0, 1], got {self.lam!r}")
        perm = np.asarray(self.permutation, dtype=np.int64)
        if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(len(perm))):
            raise InvalidInputError(f"Mixup: permutation must be a permutation of 0..B-1, got {perm.tolist()}")
        object.__setattr__(self, "permutation", perm)

    def __call__(self, images: Array, targets: Array, *, num_classes: int = 2) -> tuple[Array, Array]:
        """Mixed images (B, C, H, W) and soft targets (B, num_classes, H, W) float.

        ``targets`` are class indices (B, H, W) (one-hot encoded here) or probabilities
        (B, num_classes, H, W).
        """
        soft = _as_probabilities(images, targets, num_classes)
        if len(self.permutation) != images.shape[0]:
            raise InvalidInputError(f"Mixup: permutation has {len(self.permutation)} entries but the batch has "
                                    f"{images.shape[0]} images")
        index = torch.from_numpy(self.permutation).to(images.device) if isinstance(images, torch.Tensor) else self.permutation
        mixed_images = self.lam * images + (1.0 - self.lam) * images[index]
        mixed_targets = self.lam * soft + (1.0 - self.lam) * soft[index]
        return mixed_images, mixed_targets

    def describe(self) -> dict[str, Any]:
        return {"name": "Mixup", "lam": float(self.lam), "permutation": self.permutation.tolist()}


def _as_probabilities(images: Array, targets: Array, num_classes: int) -> Array:
    """Targets as float probabilities (B, num_classes, H, W), checked against the images."""
    if not isinstance(images, (np.ndarray, torch.Tensor)) or images.ndim != 4:
        raise InvalidInputError(f"mixup: images must be a batch (B, C, H, W), got shape {tuple(getattr(images, 'shape', ()))}")
    if type(targets) is not type(images) and not (isinstance(images, np.ndarray) and isinstance(targets, np.ndarray)):
        raise InvalidInputError("mixup: images and targets must both be numpy arrays or both torch tensors")
    batch, _, height, width = images.shape
    is_torch = isinstance(targets, torch.Tensor)
    floating = targets.dtype.is_floating_point if is_torch else np.issubdtype(targets.dtype, np.floating)  # type: ignore[attr-defined, arg-type]  # is_torch tells the kind; mypy does not narrow on it
    if floating:
        if tuple(targets.shape) != (batch, num_classes, height, width):
            raise InvalidInputError(f"mixup: soft targets must have shape (B, num_classes, H, W) = "
                                    f"{(batch, num_classes, height, width)}, got {tuple(targets.shape)}")
        return targets
    if tuple(targets.shape) != (batch, height, width):
        raise InvalidInputError(f"mixup: class-index targets must have shape (B, H, W) = {(batch, height, width)}, "
                                f"got {tuple(targets.shape)}")
    if targets.numel() if is_torch else targets.size:  # type: ignore[attr-defined]  # as above
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            raise InvalidInputError(f"mixup: class-index targets must lie in [0, {num_classes - 1}], "
                                    f"found values from {low} to {high}")
    if is_torch:
        dtype = images.dtype if images.dtype.is_floating_point else torch.float32  # type: ignore[attr-defined]  # as above
        return F.one_hot(targets.long(), num_classes).permute(0, 3, 1, 2).to(dtype)  # type: ignore[return-value, attr-defined, arg-type]  # as above
    dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float32  # type: ignore[arg-type]  # as above
    return np.moveaxis(np.eye(num_classes, dtype=dtype)[targets], -1, 1)  # type: ignore[arg-type]  # as above


def sample_mixup(batch_size: int, alpha: float, rng: np.random.Generator | int) -> Mixup:
    """Draw mixup's parameters: lam ~ Beta(alpha, alpha) and a random pairing of the batch."""
    if not (math.isfinite(alpha) and alpha > 0):
        raise InvalidInputError(f"mixup: alpha must be a positive number, got {alpha!r}")
    if batch_size < 1:
        raise InvalidInputError(f"mixup: batch_size must be at least 1, got {batch_size!r}")
    rng = as_generator(rng)
    lam = float(rng.beta(alpha, alpha))
    return Mixup(lam=lam, permutation=rng.permutation(batch_size))


def mixup(images: Array, targets: Array, alpha: float, rng: np.random.Generator | int, *,
          num_classes: int = 2) -> tuple[Array, Array, float]:
    """Batch-level mixup (Zhang et al. 2018): returns (mixed images, soft targets, lam).

    ``images`` (B, C, H, W) float; ``targets`` class indices (B, H, W) or probabilities
    (B, num_classes, H, W); the soft targets are (B, num_classes, H, W) and sum to 1 over
    classes. One lam ~ Beta(alpha, alpha) for the batch; each item is mixed with a randomly
    chosen partner (possibly itself). Losses in ``covidlib.losses`` accept the soft targets.
    """
    if not isinstance(images, (np.ndarray, torch.Tensor)) or images.ndim != 4:
        raise InvalidInputError(f"mixup: images must be a batch (B, C, H, W), got shape {tuple(getattr(images, 'shape', ()))}")
    transform = sample_mixup(int(images.shape[0]), alpha, rng)
    mixed_images, soft_targets = transform(images, targets, num_classes=num_classes)
    return mixed_images, soft_targets, transform.lam
