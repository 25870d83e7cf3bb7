"""Reading and writing CT volumes (NIfTI, NRRD, MetaImage, DICOM series) through SimpleITK.

Every scan enters the library as a :class:`Volume`: a ``(z, y, x)`` array plus the geometry
SimpleITK keeps (spacing, origin, direction), so a mask predicted on the array can be written
back in the same physical space as the scan it came from. Bad files fail early with an
:class:`~covidlib.errors.InvalidInputError` that names the file and the problem.

Introduced in chapter 01.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from covidlib.errors import InvalidInputError

#: File endings :func:`read_volume` understands (a folder is read as a DICOM series).
READ_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: File endings :func:`write_volume` writes: single-file formats only, so a rename is atomic.
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _where(source: str | None) -> str:
    return str(source) if source is not None else "<array>"


@dataclass
class Volume:
    """A 3D image with its physical geometry.

    ``array`` is ``(z, y, x)``; ``spacing`` is in mm as ``(z, y, x)``; ``origin`` (mm) and
    ``direction`` (9 floats, row-major 3x3) follow SimpleITK's physical ``(x, y, z)`` LPS
    convention, so :meth:`to_sitk` and :meth:`from_sitk` are exact inverses. With the identity
    direction, x grows towards the patient's left (the right lung has the smaller x index and
    is drawn on the image's left, as radiologists view it), y towards posterior, z towards
    superior. ``source`` names the file the volume came from (used in error messages).

    Introduced in chapter 01.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default=IDENTITY_DIRECTION)
    source: str | None = None

    def __post_init__(self) -> None:
        where = _where(self.source)
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InvalidInputError(f"{where}: expected a 3D volume (z, y, x), got {array.ndim}D with shape {array.shape}")
        if 0 in array.shape:
            raise InvalidInputError(f"{where}: volume has an empty axis, shape {array.shape}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise InvalidInputError(f"{where}: {bad} voxel(s) are NaN or infinite; a CT volume must be finite")
        try:
            spacing = tuple(float(s) for s in self.spacing)
            origin = tuple(float(o) for o in self.origin)
            direction = tuple(float(d) for d in self.direction)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: spacing, origin and direction must be numbers ({exc})") from exc
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise InvalidInputError(f"{where}: spacing must be three positive finite mm values (z, y, x), got {self.spacing}")
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise InvalidInputError(f"{where}: origin must be three finite mm values (x, y, z), got {self.origin}")
        if len(direction) != 9 or not all(np.isfinite(direction)):
            raise InvalidInputError(f"{where}: direction must be 9 finite floats (row-major 3x3), got {self.direction}")
        self.array = array
        self.spacing = spacing
        self.origin = origin
        self.direction = direction

    @property
    def shape(self) -> tuple[int, int, int]:
        """The array shape ``(z, y, x)``."""
        return tuple(self.array.shape)

    def with_array(self, array: np.ndarray) -> Volume:
        """A new volume with the same geometry and source around ``array`` (same shape)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise InvalidInputError(f"{_where(self.source)}: new array shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction, self.source)

    def to_sitk(self) -> sitk.Image:
        """The volume as a SimpleITK image (size ``(x, y, z)``, spacing reversed to ``(x, y, z)``)."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(tuple(reversed(self.spacing)))
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, source: str | Path | None = None) -> Volume:
        """Wrap a 3D scalar SimpleITK image; the array is a copy in ``(z, y, x)`` order."""
        where = _where(None if source is None else str(source))
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidInputError(f"{where}: expected a scalar (grey-level) image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
        if image.GetDimension() != 3:
            raise InvalidInputError(f"{where}: unsupported dimensionality {image.GetDimension()}D (size {image.GetSize()}); expected a 3D volume")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(reversed(image.GetSpacing())),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
            source=None if source is None else str(source),
        )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _read_dicom_series(folder: Path, series_id: str | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InvalidInputError(f"{folder}: folder holds no DICOM series (and a folder is only read as a DICOM series)")
    if series_id is None:
        if len(series) > 1:
            raise InvalidInputError(f"{folder}: folder holds {len(series)} DICOM series {list(series)}; pass series_id= to pick one")
        series_id = series[0]
    elif series_id not in series:
        raise InvalidInputError(f"{folder}: no DICOM series {series_id!r}; found {list(series)}")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    if len(files) < 2:
        raise InvalidInputError(f"{folder}: DICOM series {series_id!r} has only {len(files)} slice; expected a 3D series")
    reader.SetFileNames(files)
    return reader.Execute()


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64
# Header field offsets: (dim, datatype, bitpix, pixdim, vox_offset) and their types, NIfTI-1 and NIfTI-2.
_NIFTI_LAYOUT = {348: (40, "i2", 70, 72, 76, "f4", 108, "f4"), 540: (16, "i8", 12, 14, 104, "f8", 168, "i8")}


def _check_nifti(path: Path) -> None:
    """Catch what ITK's NIfTI reader lets through, reading the header and data ourselves.

    ITK reads truncated data as zeros, NaN/inf voxels as 0 and a zero pixdim as 1 mm, silently.
    """
    try:
        with (gzip.open(path, "rb") if _suffix(path) == ".nii.gz" else open(path, "rb")) as stream:
            payload = stream.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise InvalidInputError(f"{path}: compressed data is truncated or corrupt ({exc})") from exc
    order = "<" if int.from_bytes(payload[:4], "little") in _NIFTI_LAYOUT else ">"
    layout = _NIFTI_LAYOUT.get(int.from_bytes(payload[:4], "little" if order == "<" else "big"))
    if layout is None:
        raise InvalidInputError(f"{path}: not a NIfTI-1 or NIfTI-2 header")
    dim_at, dim_type, datatype_at, bitpix_at, pixdim_at, pixdim_type, offset_at, offset_type = layout

    def field(at: int, kind: str, count: int = 1) -> np.ndarray:
        return np.frombuffer(payload, dtype=order + kind, count=count, offset=at)

    dims = field(dim_at, dim_type, 8)
    ndim = int(dims[0])
    voxels = int(np.prod(dims[1:ndim + 1], dtype=np.int64))
    pixdim = field(pixdim_at, pixdim_type, 8)[1:min(ndim, 3) + 1].tolist()
    if min(pixdim) <= 0 or not all(np.isfinite(pixdim)):
        raise InvalidInputError(f"{path}: voxel spacing (NIfTI pixdim) {pixdim} mm must be positive and finite")
    offset = int(field(offset_at, offset_type)[0])
    expected = offset + voxels * int(field(bitpix_at, "i2")[0]) // 8
    if len(payload) < expected:
        raise InvalidInputError(f"{path}: file is truncated: the header promises {expected} bytes, the file holds {len(payload)}")
    float_code = _NIFTI_FLOATS.get(int(field(datatype_at, "i2")[0]))
    if float_code is not None:
        values = np.frombuffer(payload, dtype=order + float_code, count=voxels, offset=offset)
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise InvalidInputError(f"{path}: {bad} voxel(s) are NaN or infinite; a CT volume must be finite")


def _itk_reason(exc: RuntimeError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    described = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Description:")]
    return (described or lines or [type(exc).__name__])[-1]


def _read_image(path: str | Path, pixel_type: int, series_id: str | None, allow_2d: bool) -> Volume:
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            image = _read_dicom_series(path, series_id)
        else:
            if _suffix(path) not in READ_SUFFIXES:
                raise InvalidInputError(f"{path}: unsupported file type {_suffix(path)!r}; expected one of {READ_SUFFIXES} or a DICOM folder")
            if path.stat().st_size == 0:
                raise InvalidInputError(f"{path}: file is empty")
            image = sitk.ReadImage(str(path))
            if _suffix(path) in (".nii", ".nii.gz"):
                _check_nifti(path)
    except RuntimeError as exc:
        raise InvalidInputError(f"{path}: cannot be read as an image (truncated or corrupt?): {_itk_reason(exc)}") from exc
    if image.GetDimension() == 2 and allow_2d:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InvalidInputError(f"{path}: unsupported dimensionality {image.GetDimension()}D (size {image.GetSize()}); expected a 3D volume"
                                + ("" if image.GetDimension() != 2 else " (pass allow_2d=True to read one slice as shape (1, H, W))"))
    spacing = image.GetSpacing()
    if min(spacing) <= 0 or not all(np.isfinite(spacing)):
        raise InvalidInputError(f"{path}: voxel spacing {spacing} (x, y, z) mm must be positive and finite")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(f"{path}: expected a scalar (grey-level) image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    return Volume.from_sitk(sitk.Cast(image, pixel_type), source=path)


def read_volume(path: str | Path, *, series_id: str | None = None, allow_2d: bool = False) -> Volume:
    """Read a CT image as a float32 :class:`Volume` (array ``(z, y, x)``, HU as stored).

    ``path`` is a NIfTI (``.nii``/``.nii.gz``), NRRD (``.nrrd``/``.nhdr``) or MetaImage
    (``.mha``/``.mhd``) file, or a folder holding one DICOM series (rescale slope/intercept
    are applied by GDCM, so DICOM comes back in HU). ``allow_2d=True`` reads a 2D image as one
    slice ``(1, H, W)``. Raises :class:`InvalidInputError` for a missing, empty, truncated or
    corrupt file, a 2D/4D image, non-finite voxels or non-positive spacing.

    Introduced in chapter 01.
    """
    return _read_image(path, sitk.sitkFloat32, series_id, allow_2d)


def read_mask(path: str | Path, *, series_id: str | None = None, allow_2d: bool = False) -> Volume:
    """Read a label mask as a uint8 :class:`Volume`; values must be whole numbers in 0..255."""
    volume = _read_image(path, sitk.sitkFloat64, series_id, allow_2d)
    values = volume.array
    if not np.isfinite(values).all():
        raise InvalidInputError(f"{path}: mask holds NaN or infinite values")
    if values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.round(values)):
        raise InvalidInputError(f"{path}: a mask must hold whole labels in 0..255, found values in [{values.min()}, {values.max()}]")
    return volume.with_array(values.astype(np.uint8))


def write_volume(volume: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha``) atomically.

    The image goes to a temporary file in the same folder with the same ending and is then
    renamed over ``path``, so a failed write leaves neither a partial file nor a temporary one.
    Returns ``path``.

    Introduced in chapter 01.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise InvalidInputError(f"{path}: cannot write {suffix!r}; use one of {WRITE_SUFFIXES}")
    if not isinstance(volume, Volume):
        raise InvalidInputError(f"{path}: write_volume expects a covidlib.io.Volume, got {type(volume).__name__}")
    image = volume.to_sitk()
    with atomic_path(path, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


# --------------------------------------------------------------------------------------------
# Atomic writes: every file the book writes goes through these


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a file name (torch.save, SimpleITK).

    The file is renamed over ``path`` when the ``with`` block ends normally, and removed when it
    raises, so ``path`` is never left partial. ``suffix`` is the temporary file's ending (writers
    that choose a format by it need the target's, e.g. ``".nii.gz"``). The folder is created. The
    file gets the permissions of the file it replaces, or those a new file gets under the umask
    (not the owner-only ones of a temporary file).

    Introduced in chapter 01.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a partial file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename: never a partial file."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _blocking_file(path: Path) -> Path | None:
    """``path`` or the nearest of its folders that exists, when that is a file: nothing can be written there."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing if existing.exists() and not existing.is_dir() else None


def check_output_folder(flag: str, path: Path) -> None:
    """Refuse an output folder that is an existing file or lies under one, naming the option ``flag``
    that gave it: checked before the work, not when the first file is written."""
    blocking = _blocking_file(path)
    if blocking is not None:
        where = "exists and is not a folder" if blocking == path else f"lies under {blocking}, which is not a folder"
        raise InvalidInputError(f"{flag} {path}: {where}; give an output folder")


def check_output_file(flag: str, path: Path) -> None:
    """Refuse an output file that lies under an existing file (it would fail after all the work)."""
    blocking = _blocking_file(path.parent)
    if blocking is not None:
        raise InvalidInputError(f"{flag} {path}: lies under {blocking}, which is not a folder")
