"""The dataset registry: one entry per dataset, one way to list cases and read them.

Every dataset answers the same questions: which splits it has, which case ids are in a split,
and what a case holds (:class:`Case`: the image as a :class:`covidlib.io.Volume`, the lung mask
and the lesion mask as ``uint8`` arrays, and a ``meta`` dict). Cases are read lazily, one at a
time, so listing the 1600 unlabelled COVID-SemiSeg slices costs a directory scan, not 1600 reads.

Entries (see :func:`list_datasets` for the table the book prints):

- ``phantom``: the built-in synthetic chest CT cohort (:mod:`covidlib.phantom`), from seeds.
- ``covid19-ct-seg``: Ma et al. 2020, 20 CT volumes with lung and infection masks (Zenodo
  record 3757476), downloadable.
- ``msd-lung``: Medical Segmentation Decathlon Task06 (63 labelled CT, lung tumours), downloadable.
- ``mosmed``, ``nsclc``: folders the user points to, in their published layouts.
- ``covid-semiseg``: Inf-Net's COVID-SemiSeg 2D 8-bit slices (Fan et al. 2020).
- ``folder``: any image/mask NIfTI pairs found by path patterns.

Introduced in chapter 02.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from covidlib.download import RemoteFile, fetch
from covidlib.errors import InvalidInputError
from covidlib.io import IDENTITY_DIRECTION, Volume, read_mask, read_volume

ENV_DATA_ROOT = "COVIDLIB_DATA"


def data_root(root: str | Path | None = None) -> Path:
    """The folder that holds datasets: ``root``, else ``$COVIDLIB_DATA``, else ``~/.cache/covidlib``.

    Introduced in chapter 02.
    """
    if root is not None:
        return Path(root).expanduser()
    from_env = os.environ.get(ENV_DATA_ROOT)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "covidlib"


@dataclass
class Case:
    """One scan (or one 2D slice) with its masks.

    ``image``: a :class:`~covidlib.io.Volume` (z, y, x): float32 HU for CT; for 2D 8-bit slice
    datasets a (1, H, W) volume with values 0..255 and ``meta["intensity"] == "8bit"``.
    ``lung_mask``: uint8 (z, y, x), right lung 1, left lung 2 (lungmask's convention), or None.
    ``lesion_mask``: uint8 (z, y, x), 0/1 (or class ids when a dataset is asked for several
    classes), or None for unlabelled cases. ``meta``: dataset, split, source files, intensity
    ("hu" or "8bit") and whatever else the dataset knows.

    Introduced in chapter 02.
    """

    case_id: str
    image: Volume
    lung_mask: np.ndarray | None
    lesion_mask: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInfo:
    """One row of the dataset table: what a dataset is and how it is obtained.

    Introduced in chapter 02.
    """

    name: str
    description: str
    size: str
    modality: str
    slice_thickness: str
    labels: str
    licence: str
    url: str
    obtained: str


class Dataset(ABC):
    """A dataset: named splits of case ids, and a lazy :meth:`load` of one case.

    Introduced in chapter 02.
    """

    name: str = ""
    splits: tuple[str, ...] = ()

    @abstractmethod
    def _ids_by_split(self) -> dict[str, list[str]]:
        """Case ids of every split (computed once; cheap: no image is read)."""

    @abstractmethod
    def load(self, case_id: str) -> Case:
        """Read one case from disk (or generate it)."""

    @cached_property
    def _index(self) -> dict[str, list[str]]:
        return self._ids_by_split()

    def case_ids(self, split: str | None = None) -> list[str]:
        """Case ids of ``split`` (all splits, in order, when None)."""
        if split is None:
            return [cid for name in self.splits for cid in self._index.get(name, [])]
        if split not in self.splits:
            raise InvalidInputError(f"split={split!r} is not a split of dataset {self.name!r}; choose from {self.splits}")
        return list(self._index.get(split, []))

    @property
    def default_split(self) -> str:
        """The split to train on when none is named: ``"train"`` if the dataset has one, else its first."""
        if not self.splits:
            raise InvalidInputError(f"dataset {self.name!r} has no splits")
        return "train" if "train" in self.splits else self.splits[0]

    def split_of(self, case_id: str) -> str:
        """The split that holds ``case_id``."""
        for name in self.splits:
            if case_id in self._index.get(name, ()):
                return name
        raise InvalidInputError(f"case_id={case_id!r} is not in dataset {self.name!r}")

    def spacing(self, case_id: str) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm of one case (file datasets read only the header)."""
        return self.load(case_id).image.spacing

    def cases(self, split: str | None = None) -> Iterator[Case]:
        """Load the cases of ``split`` one at a time."""
        for case_id in self.case_ids(split):
            yield self.load(case_id)

    def __len__(self) -> int:
        return len(self.case_ids())

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(self._index.get(s, []))}" for s in self.splits)
        return f"<{type(self).__name__} {self.name!r}: {counts}>"


# --------------------------------------------------------------------------------------------
# Reading helpers shared by the file-based datasets


def _check_mask_matches(mask: Volume, image: Volume, mask_path: Path, image_path: Path | str | None) -> None:
    """Raise when a mask file does not lie on the image's voxel grid."""
    if mask.array.shape != image.array.shape:
        raise InvalidInputError(
            f"{mask_path}: mask shape {mask.array.shape} (z, y, x) differs from image {image_path} shape "
            f"{image.array.shape}; the mask does not belong to this image or was saved in another orientation"
        )
    for what, a, b, tol in (("spacing", mask.spacing, image.spacing, 1e-3), ("origin", mask.origin, image.origin, 1e-2),
                            ("direction", mask.direction, image.direction, 1e-3)):
        if not np.allclose(np.asarray(a, float), np.asarray(b, float), atol=tol):
            raise InvalidInputError(
                f"{mask_path}: mask {what} {tuple(np.round(np.asarray(a, float), 4))} differs from image "
                f"{image_path} {what} {tuple(np.round(np.asarray(b, float), 4))}; resample the mask onto the image first"
            )


def read_label(path: str | Path, image: Volume) -> np.ndarray:
    """Read a label file that must lie on ``image``'s grid; return uint8 (z, y, x).

    Introduced in chapter 02.
    """
    path = Path(path)
    mask = read_mask(path)
    _check_mask_matches(mask, image, path, image.source)
    return mask.array


def binarise_lesion(labels: np.ndarray) -> np.ndarray:
    """Any non-zero label becomes lesion (1); uint8 0/1."""
    return (labels > 0).astype(np.uint8)


def lungs_by_side(labels: np.ndarray, image: Volume) -> np.ndarray:
    """Relabel a lung mask to lungmask's convention (right lung 1, left lung 2) by position.

    Datasets disagree on which lung is 1 and which is 2, so each labelled lung region is
    assigned by the physical x of its centroid (patient's right = smaller LPS x, the physical
    frame SimpleITK uses). A mask with a single label (both lungs together) is split into its
    two largest 3D components first. Returns uint8 (z, y, x).

    Introduced in chapter 02.
    """
    from scipy import ndimage

    present = [int(v) for v in np.unique(labels) if v != 0]
    if len(present) == 1:
        components, count = ndimage.label(labels > 0)
        if count < 2:
            raise InvalidInputError(f"{image.source}: lung mask has one connected region; cannot tell right from left")
        sizes = ndimage.sum_labels(np.ones_like(components), components, index=np.arange(1, count + 1))
        keep = np.argsort(sizes)[::-1][:2] + 1
        labels = np.where(components == keep[0], 1, np.where(components == keep[1], 2, 0)).astype(np.uint8)
        present = [1, 2]
    if len(present) != 2:
        raise InvalidInputError(
            f"{image.source}: expected two lung labels (right and left), found labels {present}")
    direction = np.asarray(image.direction, float).reshape(3, 3)
    spacing_xyz = np.asarray(image.spacing, float)[::-1]
    centres_x = []
    for value in present:
        region = labels == value
        plane = region.sum(axis=0, dtype=np.int64)  # (y, x) projection: cheaper than argwhere on big scans
        count = plane.sum()
        zyx = (region.sum(axis=(1, 2), dtype=np.int64) @ np.arange(labels.shape[0]) / count,
               plane.sum(axis=1) @ np.arange(labels.shape[1]) / count, plane.sum(axis=0) @ np.arange(labels.shape[2]) / count)
        centres_x.append((np.asarray(image.origin, float) + direction @ (spacing_xyz * np.asarray(zyx)[::-1]))[0])
    right_value, left_value = (present[0], present[1]) if centres_x[0] < centres_x[1] else (present[1], present[0])
    lookup = np.zeros(256, np.uint8)
    lookup[right_value], lookup[left_value] = 1, 2
    return lookup[labels]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a path pattern with one ``{id}`` placeholder and ``*`` wildcards (no ``/``)."""
    if pattern.count("{id}") != 1:
        raise InvalidInputError(f"pattern {pattern!r} must contain '{{id}}' exactly once")
    escaped = re.escape(pattern).replace(re.escape("{id}"), "(?P<id>[^/]+?)").replace(re.escape("*"), "[^/]*")
    return re.compile(f"^{escaped}$")


def _find_by_pattern(root: Path, pattern: str) -> dict[str, Path]:
    """Map case id -> file for every file under ``root`` matching ``pattern`` (``._*`` skipped)."""
    regex = _pattern_regex(pattern)
    found: dict[str, Path] = {}
    for path in sorted(root.glob(pattern.replace("{id}", "*"))):
        if path.name.startswith("._"):  # macOS resource forks, shipped inside the MSD tars
            continue
        match = regex.match(path.relative_to(root).as_posix())
        if match:
            case_id = match.group("id")
            if case_id in found:
                raise InvalidInputError(f"{root}: two files match case {case_id!r} of pattern {pattern!r}: "
                                        f"{found[case_id]} and {path}; pass a narrower pattern")
            found[case_id] = path
    return found


def _require_folder(root: Path, name: str, hint: str) -> Path:
    if not root.is_dir():
        raise InvalidInputError(f"{root}: dataset {name!r} not found there. {hint}")
    return root


# --------------------------------------------------------------------------------------------
# The datasets


class PhantomDataset(Dataset):
    """A cohort of synthetic chest CTs (:func:`covidlib.phantom.make_phantom`), one per seed.

    Case ``phantom_007`` is the phantom of seed ``seed + 7``; nothing is stored on disk.
    Options: ``n`` cases, ``shape`` (z, y, x), ``disease`` ("covid", "nodule", "effusion",
    "healthy"), ``seed``, ``view``; other keyword options go to ``make_phantom`` (spacing, noise_hu).
    ``view="semiseg"`` makes each case one 2D slice shown like COVID-SemiSeg's
    (:func:`covidlib.phantom.semiseg_view`: 8-bit, cropped to the chest, rotated): the slice with
    the most lesion (the middle one when there is none), a (1, H, W) image of values 0..255 with
    ``meta["intensity"] == "8bit"``; the default ``view="volume"`` is the HU volume.

    Introduced in chapter 02.
    """

    name = "phantom"
    splits = ("all",)

    def __init__(self, n: int = 8, shape: tuple[int, int, int] = (64, 128, 128), disease: str = "covid",
                 seed: int = 0, view: str = "volume", **phantom_options: Any) -> None:
        if n < 1:
            raise InvalidInputError(f"n={n}: a phantom cohort needs at least one case")
        if view not in ("volume", "semiseg"):
            raise InvalidInputError(f"view={view!r}: a phantom cohort's view is 'volume' or 'semiseg'")
        self.n, self.shape, self.disease, self.seed = int(n), tuple(shape), disease, int(seed)
        self.view = view
        self.phantom_options = phantom_options

    def _ids_by_split(self) -> dict[str, list[str]]:
        return {"all": [f"phantom_{i:03d}" for i in range(self.n)]}

    def load(self, case_id: str) -> Case:
        from covidlib.phantom import make_phantom, semiseg_view

        self.split_of(case_id)
        index = int(case_id.rsplit("_", 1)[1])
        phantom = make_phantom(self.seed + index, self.shape, disease=self.disease, **self.phantom_options)  # type: ignore[arg-type]  # self.shape is tuple() of the (z, y, x) given to __init__
        if self.view == "semiseg":
            per_slice = phantom.lesion_mask.reshape(phantom.lesion_mask.shape[0], -1).sum(axis=1)
            z = int(np.argmax(per_slice)) if per_slice.any() else phantom.lesion_mask.shape[0] // 2
            shown = semiseg_view(phantom, z, self.seed + index)
            image = Volume(shown.image[None].astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY_DIRECTION,
                           source=f"{phantom.image.source}, semiseg view of slice {z}")
            meta = {"dataset": self.name, "split": "all", "intensity": "8bit", "spacing_known": False,
                    "seed": self.seed + index, "disease": phantom.disease, "slice": z, "window": shown.window}
            return Case(case_id, image, shown.lung_mask[None], shown.lesion_mask[None], meta)
        meta = {"dataset": self.name, "split": "all", "intensity": "hu", "seed": self.seed + index,
                "disease": phantom.disease, "tissue_labels": phantom.tissue_labels}
        return Case(case_id, phantom.image, phantom.lung_mask, phantom.lesion_mask, meta)


class PatternDataset(Dataset):
    """CT volumes and masks found under ``root`` by path patterns with an ``{id}`` placeholder.

    ``image_pattern`` finds the images (e.g. ``"images/{id}.nii.gz"``); ``lesion_pattern`` and
    ``lung_pattern`` (optional) find the masks of the same id. Cases with a lesion mask form the
    split ``"labelled"``, the others ``"unlabelled"``. Images are read with
    :func:`covidlib.io.read_volume` (NIfTI, NRRD, MHA, or a DICOM series folder); every mask is
    checked to lie on its image's grid.

    Introduced in chapter 02.
    """

    splits = ("labelled", "unlabelled")
    intensity = "hu"

    def __init__(self, root: str | Path, image_pattern: str = "images/{id}.nii.gz",
                 lesion_pattern: str | None = "masks/{id}.nii.gz", lung_pattern: str | None = None,
                 *, name: str = "folder", hint: str = "Pass root= the folder that holds the files.") -> None:
        self.name = name
        self.root = _require_folder(Path(root).expanduser(), name, hint)
        self.image_pattern, self.lesion_pattern, self.lung_pattern = image_pattern, lesion_pattern, lung_pattern
        self.hint = hint

    @cached_property
    def _files(self) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
        images = _find_by_pattern(self.root, self.image_pattern)
        if not images:
            raise InvalidInputError(f"{self.root}: no image matches {self.image_pattern!r} for dataset {self.name!r}. {self.hint}")
        lesions = _find_by_pattern(self.root, self.lesion_pattern) if self.lesion_pattern else {}
        lungs = _find_by_pattern(self.root, self.lung_pattern) if self.lung_pattern else {}
        orphans = sorted((set(lesions) | set(lungs)) - set(images))
        if orphans:
            path = lesions.get(orphans[0]) or lungs[orphans[0]]
            raise InvalidInputError(f"{path}: mask of case {orphans[0]!r} has no image matching {self.image_pattern!r}")
        return images, lesions, lungs

    def _ids_by_split(self) -> dict[str, list[str]]:
        images, lesions, _ = self._files
        return {"labelled": [c for c in images if c in lesions], "unlabelled": [c for c in images if c not in lesions]}

    def _image_intensity(self, case_id: str) -> str:
        return self.intensity

    def spacing(self, case_id: str) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm from the image header, without reading the voxels."""
        import SimpleITK as sitk

        self.split_of(case_id)
        path = self._files[0][case_id]
        if path.is_dir():
            return super().spacing(case_id)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InvalidInputError(f"{path}: cannot read the image header ({exc})") from exc
        x, y, z = reader.GetSpacing()[:3]
        return (float(z), float(y), float(x))

    def load(self, case_id: str) -> Case:
        split = self.split_of(case_id)
        images, lesions, lungs = self._files
        image = read_volume(images[case_id])
        lesion = binarise_lesion(read_label(lesions[case_id], image)) if case_id in lesions else None
        lung = lungs_by_side(read_label(lungs[case_id], image), image) if case_id in lungs else None
        meta = {"dataset": self.name, "split": split, "intensity": self._image_intensity(case_id),
                "image_file": str(images[case_id]),
                "lesion_file": str(lesions[case_id]) if case_id in lesions else None,
                "lung_file": str(lungs[case_id]) if case_id in lungs else None}
        return Case(case_id, image, lung, lesion, meta)


# Zenodo record 3757476 (Ma et al. 2020). The sha256 values are the ones torch-em's loader
# (github.com/constantinpape/torch-em, torch_em/data/datasets/medical/covid19_seg.py) pins; this
# project could not download the files to recompute them. Zenodo itself publishes md5 only.
COVID19_CT_SEG_FILES = {
    "images": RemoteFile("https://zenodo.org/records/3757476/files/COVID-19-CT-Seg_20cases.zip",
                         "COVID-19-CT-Seg_20cases.zip",
                         sha256="a5060480eff9315b069b086312dac4872777901fb80d268a5a83edd9f4e7b440",
                         checksum_source="torch-em (third party), not recomputed here"),
    "lung": RemoteFile("https://zenodo.org/records/3757476/files/Lung_Mask.zip", "Lung_Mask.zip",
                       sha256="f060b0d0299939a6d95ddefdbfa281de1a779c4d230a5adbd32414711d6d8187",
                       checksum_source="torch-em (third party), not recomputed here"),
    "infection": RemoteFile("https://zenodo.org/records/3757476/files/Infection_Mask.zip", "Infection_Mask.zip",
                            sha256="87901c73fdd2230260e61d2dbc57bf56026efc28264006b8ea2bf411453c1694",
                            checksum_source="torch-em (third party), not recomputed here"),
}

# The Decathlon's public bucket. MONAI's DecathlonDataset pins this md5; no sha256 is published.
MSD_LUNG_FILE = RemoteFile("https://msd-for-monai.s3-us-west-2.amazonaws.com/Task06_Lung.tar", "Task06_Lung.tar",
                           md5="8afd997733c7fc0432f71255ba4e52dc",
                           checksum_source="MONAI DecathlonDataset (md5), not recomputed here")


class Covid19CtSegDataset(PatternDataset):
    """COVID-19-CT-Seg (Ma et al. 2020): 20 CT volumes, lung and infection masks.

    Layout after unpacking the Zenodo zips into ``root`` (the zips' own folder names are kept;
    files are found recursively): images ``*/coronacases_org_001.nii.gz`` and
    ``*/radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii.gz``; masks under ``Lung_Mask/``
    and ``Infection_Mask/`` named ``coronacases_001.nii.gz`` and ``radiopaedia_4_85506_1.nii.gz``.
    The ten coronacases volumes are in HU; the ten Radiopaedia volumes were published already
    windowed to 0..255 (not HU), and their cases say so in ``meta["intensity"] == "8bit"``.
    ``download=True`` fetches the three zips (images, lung masks, infection masks; about 1 GB).

    Introduced in chapter 02.
    """

    def __init__(self, root: str | Path, *, download: bool = False, progress: bool = True) -> None:
        root = Path(root).expanduser()
        if download:
            for remote in COVID19_CT_SEG_FILES.values():
                fetch(remote, root, progress=progress)
        hint = ("Download it with get_dataset('covid19-ct-seg', download=True) or unpack the Zenodo record 3757476 "
                "zips (COVID-19-CT-Seg_20cases.zip, Lung_Mask.zip, Infection_Mask.zip) into this folder.")
        super().__init__(root, name="covid19-ct-seg", hint=hint)

    @cached_property
    def _files(self) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
        def mask_key(name: str) -> str:
            return name.removesuffix(".nii.gz").removesuffix(".nii")

        images: dict[str, Path] = {}
        lesions: dict[str, Path] = {}
        lungs: dict[str, Path] = {}
        for path in sorted(self.root.rglob("*.nii*")):
            if path.name.startswith("._"):
                continue
            key = mask_key(path.name)
            folder = path.parent.name.lower()
            if key.startswith(("coronacases_org_", "radiopaedia_org_")):
                images[self._mask_name_for(key)] = path
            elif "infection" in folder and "lung" not in folder:
                lesions[key] = path
            elif "lung" in folder and "infection" not in folder:
                lungs[key] = path
        if not images:
            raise InvalidInputError(f"{self.root}: no COVID-19-CT-Seg images (coronacases_org_*.nii.gz) found. {self.hint}")
        return images, lesions, lungs

    @staticmethod
    def _mask_name_for(image_key: str) -> str:
        """Image file stem -> the stem its masks use (the case id)."""
        if image_key.startswith("coronacases_org_"):
            return "coronacases_" + image_key.removeprefix("coronacases_org_")
        match = re.match(r"radiopaedia_org_covid-19-pneumonia-(.+)-dcm$", image_key)
        if not match:
            raise InvalidInputError(f"unexpected COVID-19-CT-Seg image name {image_key!r}")
        return "radiopaedia_" + match.group(1)

    def _image_intensity(self, case_id: str) -> str:
        return "8bit" if case_id.startswith("radiopaedia_") else "hu"


class MsdLungDataset(PatternDataset):
    """Medical Segmentation Decathlon Task06 Lung (Simpson et al. 2019): 63 labelled CT + 32 test.

    Layout: ``Task06_Lung/imagesTr/lung_001.nii.gz`` with ``labelsTr/lung_001.nii.gz`` (tumour 1),
    ``imagesTs/`` unlabelled. ``download=True`` fetches ``Task06_Lung.tar`` (about 8.5 GB) and
    verifies the md5 MONAI publishes (or the ``sha256`` you pass).

    Introduced in chapter 02.
    """

    def __init__(self, root: str | Path, *, download: bool = False, sha256: str | None = None,
                 progress: bool = True) -> None:
        root = Path(root).expanduser()
        if download:
            fetch(MSD_LUNG_FILE, root, sha256=sha256, progress=progress)
        task = root / "Task06_Lung" if (root / "Task06_Lung").is_dir() else root
        hint = "Download it with get_dataset('msd-lung', download=True) or unpack Task06_Lung.tar here."
        super().__init__(task, "images*/{id}.nii.gz", "labelsTr/{id}.nii.gz", name="msd-lung", hint=hint)


class CovidSemiSegDataset(Dataset):
    """COVID-SemiSeg (Fan et al. 2020, Inf-Net): 2D axial slices, 8-bit JPG, infection masks.

    Splits: ``train`` = ``TrainingSet/LungInfection-Train/Doctor-label/{Imgs,GT}`` (50 labelled),
    ``unlabelled`` = ``TrainingSet/LungInfection-Train/Pseudo-label/Imgs`` (1600 slices from the
    20 COVID-19-CT-Seg volumes), ``test`` = ``TestingSet/LungInfection-Test/{Imgs,GT}`` (48).
    Binary GT {0, 255} becomes 0/1; ``multiclass=True`` reads the training masks from
    ``TrainingSet/MultiClassInfection-Train/GT`` instead (0 background, 1 ground-glass opacity,
    2 consolidation). Images become (1, H, W) float32 volumes with values 0..255 and unknown
    spacing (1 mm assumed, ``meta["spacing_known"] = False``): they are windowed screenshots, not HU.
    Case ids carry their split: ``"train/0"``, ``"unlabelled/Data-1_coronacases_org_001_1"``.

    Introduced in chapter 02.
    """

    name = "covid-semiseg"
    splits = ("train", "unlabelled", "test")
    _folders = {
        "train": ("TrainingSet/LungInfection-Train/Doctor-label/Imgs", "TrainingSet/LungInfection-Train/Doctor-label/GT"),
        "unlabelled": ("TrainingSet/LungInfection-Train/Pseudo-label/Imgs", None),
        "test": ("TestingSet/LungInfection-Test/Imgs", "TestingSet/LungInfection-Test/GT"),
    }
    _multiclass_gt = "TrainingSet/MultiClassInfection-Train/GT"

    def __init__(self, root: str | Path, *, multiclass: bool = False) -> None:
        self.root = _require_folder(Path(root).expanduser(), self.name,
                                    "Point root= at the COVID-SemiSeg 'Dataset' folder (with TrainingSet/ and TestingSet/).")
        self.multiclass = bool(multiclass)
        if not any((self.root / images).is_dir() for images, _ in self._folders.values()):
            raise InvalidInputError(f"{self.root}: none of the COVID-SemiSeg folders exist "
                                    f"({', '.join(f for f, _ in self._folders.values())})")

    def _ids_by_split(self) -> dict[str, list[str]]:
        index = {}
        for split, (images, _) in self._folders.items():
            folder = self.root / images
            names = sorted((e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("._")
                            and e.name.lower().endswith((".jpg", ".jpeg", ".png"))),
                           key=_natural_key) if folder.is_dir() else []
            index[split] = [f"{split}/{Path(n).stem}" for n in names]
        return index

    def _image_file(self, split: str, stem: str) -> Path:
        folder = self.root / self._folders[split][0]
        for suffix in (".jpg", ".jpeg", ".png"):
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
        raise InvalidInputError(f"{folder}: no image named {stem!r}")

    def load(self, case_id: str) -> Case:
        split = self.split_of(case_id)
        stem = case_id.split("/", 1)[1]
        image_path = self._image_file(split, stem)
        pixels = read_8bit(image_path)
        lesion = None
        if self._folders[split][1] is not None:
            if self.multiclass and split == "train":
                gt_path = self.root / self._multiclass_gt / f"{stem}.png"
                lesion = _read_png_labels(gt_path, pixels.shape, image_path, allowed=(0, 1, 2))
            else:
                gt_path = self.root / self._folders[split][1] / f"{stem}.png"  # type: ignore[operator]  # not None: checked on the if above
                lesion = (_read_png_labels(gt_path, pixels.shape, image_path, allowed=(0, 255)) > 0).astype(np.uint8)
            lesion = lesion[None]
        image = Volume(array=pixels.astype(np.float32)[None], spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                       direction=IDENTITY_DIRECTION, source=str(image_path))
        meta: dict[str, Any] = {"dataset": self.name, "split": split, "intensity": "8bit", "spacing_known": False,
                                "image_file": str(image_path)}
        match = re.match(r"Data-\d+_(.+)_(\d+)$", stem)
        if match:  # unlabelled slices name their source volume and slice number
            meta["source_volume"], meta["slice_index"] = match.group(1), int(match.group(2))
        return Case(case_id, image, None, lesion, meta)


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_8bit(path: str | Path) -> np.ndarray:
    """An image file (PNG, JPEG, ...) as 8-bit grey levels (H, W) ``uint8``; colour images are
    converted to grey. Raises :class:`InvalidInputError` naming an unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except OSError as exc:  # PIL's UnidentifiedImageError is one
        raise InvalidInputError(f"{path}: cannot be read as an image ({exc})") from exc


def _read_png_labels(path: Path, shape: tuple[int, ...], image_path: Path, allowed: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise InvalidInputError(f"{path}: ground-truth mask of {image_path} is missing")
    try:
        with Image.open(path) as img:
            # Palette PNGs (the multi-class GT) store class ids as palette indices: keep them as they are.
            labels = np.asarray(img if img.mode in ("P", "L") else img.convert("L"), dtype=np.uint8)
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the ground-truth mask of {image_path} ({exc})") from exc
    if labels.shape != tuple(shape):
        raise InvalidInputError(f"{path}: mask shape {labels.shape} differs from image {image_path} shape {tuple(shape)}")
    unexpected = sorted(set(np.unique(labels).tolist()) - set(allowed))
    if unexpected:
        raise InvalidInputError(f"{path}: unexpected mask values {unexpected[:5]} (expected {list(allowed)})")
    return labels


# --------------------------------------------------------------------------------------------
# The registry


def _folder_dataset(root: Path, **options: Any) -> Dataset:
    return PatternDataset(root, **options)


def _mosmed(root: Path, **options: Any) -> Dataset:
    hint = ("MosMedData (COVID19_1110) must be requested from its publisher; unpack it so that root holds "
            "studies/CT-*/study_NNNN.nii.gz and masks/study_NNNN_mask.nii.gz.")
    return PatternDataset(root, options.pop("image_pattern", "studies/*/{id}.nii.gz"),
                          options.pop("lesion_pattern", "masks/{id}_mask.nii.gz"), options.pop("lung_pattern", None),
                          name="mosmed", hint=hint, **options)


def _nsclc(root: Path, **options: Any) -> Dataset:
    hint = ("NSCLC-Radiomics CTs (TCIA) with the PleThora masks: put each CT (NIfTI, or its DICOM series folder) "
            "at images/LUNG1-NNN.nii.gz, and unpack PleThora so that Thoracic_Cavities/LUNG1-NNN/*.nii.gz and "
            "Effusions/LUNG1-NNN/*.nii.gz exist. Check that the masks lie on the CT grid (read_label raises otherwise).")
    return PatternDataset(root, options.pop("image_pattern", "images/{id}.nii.gz"),
                          options.pop("lesion_pattern", "Effusions/{id}/*.nii.gz"),
                          options.pop("lung_pattern", "Thoracic_Cavities/{id}/*.nii.gz"),
                          name="nsclc", hint=hint, **options)


_REGISTRY: dict[str, tuple[DatasetInfo, Callable[..., Dataset]]] = {
    "phantom": (
        DatasetInfo("phantom", "Synthetic chest CT: lungs, vessels, airways, ribs, COVID-like lesions (or nodules, "
                    "effusion)", "any number (seeded)", "CT (synthetic, HU)", "1-8 mm (chosen per case)",
                    "lungs (right/left), lesions", "MIT (part of this book)", "covidlib.phantom", "generated"),
        lambda root, **opts: PhantomDataset(**opts),
    ),
    "covid19-ct-seg": (
        DatasetInfo("covid19-ct-seg", "COVID-19 CT Lung and Infection Segmentation (Ma et al. 2020); the report's "
                    "'Covid Segmentation Benchmark'", "20 volumes", "CT (10 HU, 10 windowed 0-255)",
                    "10 thin, 10 thick (per the report)", "lungs (right/left), infection", "see the Zenodo record (listed as CC BY 4.0)",
                    "https://zenodo.org/records/3757476", "download (checksum)"),
        lambda root, **opts: Covid19CtSegDataset(root, **opts),
    ),
    "msd-lung": (
        DatasetInfo("msd-lung", "Medical Segmentation Decathlon Task06: non-small-cell lung cancer",
                    "63 labelled + 32 test volumes", "CT (HU)", "thin (per the report)", "tumour",
                    "CC BY-SA 4.0", "http://medicaldecathlon.com/", "download (checksum)"),
        lambda root, **opts: MsdLungDataset(root, **opts),
    ),
    "mosmed": (
        DatasetInfo("mosmed", "MosMedData: COVID-19 chest CT from Moscow hospitals (Morozov et al. 2020)",
                    "50 labelled + about 1060 unlabelled volumes", "CT (HU)", "thick (per the report)",
                    "ground-glass and consolidation (one mask)", "see the publisher's terms", "https://mosmed.ai/datasets/",
                    "folder you point to"),
        _mosmed,
    ),
    "nsclc": (
        DatasetInfo("nsclc", "NSCLC-Radiomics CT with PleThora lung and pleural-effusion masks (Kiser et al. 2020)",
                    "402 volumes, 78 with effusion masks", "CT (HU)", "thin (per the report)",
                    "lungs (right/left), pleural effusion", "see the TCIA collection pages",
                    "https://doi.org/10.7937/tcia.2020.6c7y-gq39", "folder you point to"),
        _nsclc,
    ),
    "covid-semiseg": (
        DatasetInfo("covid-semiseg", "COVID-SemiSeg (Fan et al. 2020, Inf-Net): axial slices, 8-bit JPG",
                    "50 labelled + 1600 unlabelled + 48 test slices", "CT slices (windowed 8-bit, not HU)",
                    "n/a (2D)", "infection (binary; or ground-glass/consolidation)", "non-commercial use only",
                    "https://github.com/DengPingFan/Inf-Net", "folder you point to"),
        lambda root, **opts: CovidSemiSegDataset(root, **opts),
    ),
    "folder": (
        DatasetInfo("folder", "Your own image/mask NIfTI pairs, found by path patterns with {id}", "any",
                    "CT (HU)", "any", "lesion mask, optional lung mask", "yours", "", "folder you point to"),
        _folder_dataset,
    ),
}


def list_datasets() -> list[DatasetInfo]:
    """The registry's datasets, in the order the book's table shows them.

    Introduced in chapter 02.
    """
    return [info for info, _ in _REGISTRY.values()]


def get_dataset(name: str, root: str | Path | None = None, **options: Any) -> Dataset:
    """The dataset ``name``, read from ``root`` (default: ``data_root() / name``).

    ``options`` go to the dataset: ``phantom``: n, shape, disease, seed, view (+ make_phantom options);
    ``covid19-ct-seg``: download, progress; ``msd-lung``: download, sha256, progress; ``covid-semiseg``: multiclass;
    ``folder``/``mosmed``/``nsclc``: image_pattern, lesion_pattern, lung_pattern.

    Introduced in chapter 02.
    """
    if name not in _REGISTRY:
        raise InvalidInputError(f"dataset={name!r} is unknown; choose from {sorted(_REGISTRY)}")
    _, factory = _REGISTRY[name]
    folder = Path(root).expanduser() if root is not None else data_root() / name
    try:
        return factory(folder, **options)
    except TypeError as exc:
        raise InvalidInputError(f"dataset {name!r}: bad option ({exc})") from exc
