"""A synthetic chest CT with COVID-19-like lesions and exact masks: the book's built-in dataset.

Real scans cannot ship with the book, so every chapter can run on this phantom instead. It is
built in physical millimetres, so the same patient looks the same at any voxel spacing:

- body: air (-1000 HU) inside a circular reconstruction field of view, scanner padding (-2048
  or -3024) outside it, a table under the patient, subcutaneous fat (about -100), muscle and
  mediastinum (soft tissue, about 40), ribs, sternum and spine (bone, 250-900);
- lungs: parenchyma about -850 HU, denser towards the back (gravity), a branching vessel tree
  (about 40 HU) and airways (air lumen, soft-tissue wall) from the trachea down to small bronchi;
- disease (``disease=``): ``"covid"`` adds bilateral, mostly peripheral/subpleural, multifocal
  ground-glass opacities (GGO, -700 to -300 HU; vessels stay visible through them) some with
  consolidation (-100 to 50 HU; air bronchograms stay); ``"nodule"`` adds solid lobulated
  nodules or masses (MSD lung-tumour-like); ``"effusion"`` fills the dependent (posterior,
  basal) pleural space with fluid (0 to 20 HU, NSCLC-effusion-like); ``"healthy"`` adds none;
- acquisition: in-plane spacing and slice thickness, noise and an intensity offset drawn
  from the seed. A thick slice is the mean of thin sub-slices (the partial-volume effect), and
  its labels are the sub-slices' majority label.

Orientation follows :class:`covidlib.io.Volume` with the identity direction (LPS): x grows to
the patient's left, so the **right lung (label 1) has the smaller x indices and is drawn on the
image's left** in radiological display; y grows to posterior (the table is at large y); z grows
to superior (lung bases at small z). Masks are exact by construction: ``lesion_mask`` is 1
exactly where ``tissue_labels`` holds a lesion tissue of the case's disease.

Everything is vectorised NumPy (fields from separable Gaussian-kernel interpolation of coarse
noise, tubes rasterised in their bounding boxes), so a 64 x 128 x 128 case takes a fraction of
a second. Introduced in chapter 01.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from scipy import ndimage

from covidlib.ct import PADDING_VALUES, average_slabs, majority_slabs
from covidlib.errors import InvalidInputError
from covidlib.io import IDENTITY_DIRECTION, Volume

#: Tissue label ids of :attr:`PhantomCase.tissue_labels`.
TISSUES: dict[str, int] = {
    "padding": 0,  # outside the reconstructed field of view
    "air": 1,  # outside the body
    "table": 2,
    "fat": 3,
    "soft_tissue": 4,  # muscle, mediastinum, heart, discs, airway walls
    "bone": 5,
    "lung": 6,  # aerated parenchyma
    "vessel": 7,
    "airway": 8,  # air inside trachea and bronchi
    "ggo": 9,  # ground-glass opacity
    "consolidation": 10,
    "nodule": 11,
    "effusion": 12,
    "fissure": 13,  # interlobar pleura: a thin sheet, its HU the partial volume of ~1 mm of tissue
}

#: Which tissues form ``lesion_mask`` for each disease.
LESION_TISSUES: dict[str, tuple[str, ...]] = {
    "covid": ("ggo", "consolidation"),
    "nodule": ("nodule",),
    "effusion": ("effusion",),
    "healthy": (),
}
DISEASES = tuple(LESION_TISSUES)

#: Nominal HU of each tissue before texture, noise and offset (lesions draw theirs per lesion).
TISSUE_HU: dict[str, float] = {
    "air": -1000.0, "table": 200.0, "fat": -100.0, "soft_tissue": 40.0, "bone": 250.0,
    "lung": -850.0, "vessel": 40.0, "airway": -1000.0, "ggo": -550.0, "consolidation": -20.0,
    "nodule": 40.0, "effusion": 10.0,
}

#: Slice thicknesses (mm) drawn when ``spacing`` is None: thin (<3 mm) and thick scans, as in the report's 1-8 mm.
SLICE_THICKNESSES_MM = (1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 6.0, 8.0)
#: In-plane spacing (mm) on a 512 x 512 matrix; smaller matrices keep the field of view (larger voxels).
IN_PLANE_MM_AT_512 = (0.6, 0.95)
REFERENCE_MATRIX = 512
#: Cut-off frequencies (cycles/mm) of the reconstruction kernel's apodisation: soft to sharp.
KERNEL_CUTOFF_PER_MM = (0.3, 0.7)
#: At most this many COVID lesions a case (the real slices' count, capped for speed).
MAX_COVID_LESIONS = 12
#: Lesion area drawn per unit of real burden (blobs cover less than their radius' disk); see
#: ``benchmarks/calibrate_phantom.py`` and the view's measured burden in tests/test_phantom.py.
BURDEN_GAIN = 2.0
#: Share of GGO lesions with crazy paving.
CRAZY_PAVING_SHARE = 0.3
#: Upper bound on voxels of the thin volume a thick case is averaged from (memory and time).
MAX_THIN_VOXELS = 48_000_000

_LUNG_HALF_HEIGHT_FRACTION = 0.5
#: Thickness (mm) of the interlobar pleura that a fissure voxel holds.
FISSURE_MM = 1.0
#: Package file with the tables that ``benchmarks/calibrate_phantom.py`` derives from real slices.
CALIBRATION_FILE = "phantom_calibration.json"


@functools.lru_cache(maxsize=1)
def _calibration_text() -> str:
    return resources.files("covidlib").joinpath(CALIBRATION_FILE).read_text(encoding="utf-8")


def load_calibration() -> dict[str, Any]:
    """The phantom's calibration tables (``covidlib/phantom_calibration.json``), a fresh dict.

    Derived from COVID-SemiSeg's 50 labelled slices by ``benchmarks/calibrate_phantom.py``
    (numbers only: grey-level histograms, the display window, lesion burden, count and position,
    field of view, orientation); shipped with the package, so no real data is needed to use it.
    Introduced in chapter 01.
    """
    return json.loads(_calibration_text())


#: Grey-level histograms: bins over 0..256, and the grey level below which a pixel counts as aerated.
GREY_BINS = 32
LUNG_GREY_THRESHOLD = 90


def grey_regions(grey: np.ndarray, lungs: np.ndarray, lesion: np.ndarray) -> dict[str, np.ndarray]:
    """Masks (H, W) bool of an 8-bit slice's parenchyma, body and lesions, as the tables count them.

    ``grey`` (H, W) uint8; ``lungs`` and ``lesion`` (H, W) bool. Parenchyma: lungs minus lesions,
    eroded by 2 pixels (no partial volume with what borders them); body: neither lung nor darker
    than :data:`LUNG_GREY_THRESHOLD`, eroded by 2 pixels (soft tissue, fat, bone); lesion: the mask.
    ``benchmarks/calibrate_phantom.py`` applies it to real slices, chapter 01 to phantom views.
    """
    parenchyma = ndimage.binary_erosion(lungs & ~lesion, iterations=2)
    body = ndimage.binary_erosion(~lungs & (grey >= LUNG_GREY_THRESHOLD), iterations=2)
    return {"lung": parenchyma, "body": body, "lesion": lesion}


def grey_histogram(values: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each of :data:`GREY_BINS` equal bins over 0..256 (sums to 1; zeros when empty)."""
    counts, _ = np.histogram(values, bins=GREY_BINS, range=(0, 256))
    return counts / max(1, counts.sum())


def draw_from_quantiles(rng: np.random.Generator, table: Mapping[str, float], size: int | None = None) -> Any:
    """Draw from the distribution a calibration table describes by its q10..q90 quantiles.

    Inverse-CDF sampling with linear interpolation between the quantiles; the tails below q10
    and above q90 collapse onto them (the tables keep no extremes).
    """
    levels = sorted(k for k in table if k.startswith("q"))
    probabilities = [int(k[1:]) / 100 for k in levels]
    return np.interp(rng.random(size), probabilities, [float(table[k]) for k in levels])


@dataclass
class PhantomCase:
    """One synthetic chest CT with its masks (all arrays ``(z, y, x)``, same shape).

    ``image``: float32 HU volume. ``lung_mask``: uint8, 0 background, 1 right lung (small x,
    image left), 2 left lung; lesions inside the lungs belong to the lung, effusion does not.
    ``lesion_mask``: uint8 0/1 (infection for ``"covid"``, nodules for ``"nodule"``, effusion
    for ``"effusion"``, empty for ``"healthy"``). ``tissue_labels``: uint8 ids of
    :data:`TISSUES`. ``n_lesions``: lesions drawn (for effusion, the number of sides).
    ``acquisition``: the drawn thickness, sub-slices averaged, noise, offset and padding value.

    Introduced in chapter 01.
    """

    image: Volume
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    tissue_labels: np.ndarray
    disease: str
    seed: int
    n_lesions: int = 0
    acquisition: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Smooth random fields and tubes


def _smooth_field(rng: np.random.Generator, z: np.ndarray, y: np.ndarray, x: np.ndarray, correlation_mm: float,
                  bounds: Sequence[tuple[float, float]]) -> np.ndarray:
    """A smooth random field of unit-order amplitude on the grid ``z x y x x`` (1D mm coordinates).

    Gaussian noise on a lattice of nodes ``correlation_mm`` apart spanning the physical
    ``bounds`` ((lo, hi) mm for z, y, x), interpolated with row-normalised Gaussian kernels one
    axis at a time (three small matrix products instead of a 3D filter). The lattice depends on
    the bounds only, not on the grid, so the same seed gives the same field at any spacing.
    """
    def weights(coords: np.ndarray, lo: float, hi: float) -> np.ndarray:
        nodes = np.arange(lo, hi + correlation_mm, correlation_mm)
        inside = np.clip(coords, nodes[0], nodes[-1])  # constant beyond the lattice
        w = np.exp(-0.5 * ((inside[:, None] - nodes[None, :]) / (0.6 * correlation_mm)) ** 2)
        return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)

    wz, wy, wx = (weights(c, lo, hi) for c, (lo, hi) in zip((z, y, x), bounds))
    coarse = rng.standard_normal((wz.shape[1], wy.shape[1], wx.shape[1]), dtype=np.float32)
    # Interpolation averages nodes and shrinks the variance; about 2.2 restores unit order.
    fine = np.einsum("ijk,xk->ijx", coarse, wx)
    fine = np.einsum("ijx,yj->iyx", fine, wy)
    fine = (wz @ fine.reshape(fine.shape[0], -1)).reshape(len(z), len(y), len(x))
    fine *= np.float32(2.2)
    return fine


#: Physical extent (mm) of whole-body random fields: z from below the diaphragm to above the apex.
_BODY_BOUNDS = ((-150.0, 450.0), (-330.0, 330.0), (-330.0, 330.0))


@dataclass
class _Grid:
    """Physical coordinates (mm) of the thin grid: z along the patient axis, y, x centred on the FOV."""

    z: np.ndarray  # (nz,) mm, 0 = lung base level
    y: np.ndarray  # (ny,)
    x: np.ndarray  # (nx,)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the grid points within the physical box ``[lo, hi]`` (z, y, x), or None."""
        slices = []
        for coords, a, b in zip((self.z, self.y, self.x), lo, hi):
            start, stop = np.searchsorted(coords, a, "left"), np.searchsorted(coords, b, "right")
            if stop <= start:
                return None
            slices.append(slice(int(start), int(stop)))
        return tuple(slices)  # type: ignore[return-value]


def _segment_distance2(grid: _Grid, box: tuple[slice, slice, slice], p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Squared distance (mm^2) from each grid point in ``box`` to the segment ``p0 -> p1`` (z, y, x mm)."""
    z = grid.z[box[0]][:, None, None] - p0[0]
    y = grid.y[box[1]][None, :, None] - p0[1]
    x = grid.x[box[2]][None, None, :] - p0[2]
    d = p1 - p0
    t = np.clip((z * d[0] + y * d[1] + x * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return (z - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (x - t * d[2]) ** 2


def _branching_tree(rng: np.random.Generator, root: np.ndarray, directions: list[np.ndarray], length: float,
                    radius: float, min_radius: float, inside: Callable[[np.ndarray], np.ndarray]
                    ) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Segments ``(start, end, radius)`` of a binary tree: each branch forks in two, shorter and thinner.

    Grown one generation at a time. Each fork tries eight random directions around its parent's
    and keeps the first two whose ends stay in the organ (``inside(points)`` on ``(n, 3)`` mm
    points), so the tree fills the organ instead of escaping it.
    """
    starts = np.repeat(root[None, :], len(directions), axis=0)
    heads = np.stack([d / np.linalg.norm(d) for d in directions])
    lengths = np.full(len(directions), float(length))
    radii = np.full(len(directions), float(radius))
    segments = []
    while len(starts) and radii.max() >= min_radius:
        keep = radii >= min_radius
        starts, heads, lengths, radii = starts[keep], heads[keep], lengths[keep], radii[keep]
        ends = starts + heads * lengths[:, None]
        segments += list(zip(starts, ends, radii.tolist()))
        n = len(starts)
        child_len = lengths * rng.uniform(0.7, 0.85, n)
        child_r = radii * rng.uniform(0.72, 0.85, n)
        tries = heads[:, None, :] + rng.normal(0.0, 0.6, (n, 8, 3))
        tries /= np.linalg.norm(tries, axis=2, keepdims=True)
        ok = inside((ends[:, None, :] + tries * child_len[:, None, None]).reshape(-1, 3)).reshape(n, 8)
        ok &= np.cumsum(ok, axis=1) <= 2
        parent, k = np.nonzero(ok)
        starts, heads, lengths, radii = ends[parent], tries[parent, k], child_len[parent], child_r[parent]
    return segments


# ---------------------------------------------------------------------------------------------
# Anatomy


@dataclass
class _Anatomy:
    """Patient shape parameters in mm (x: right -> left, y: anterior -> posterior, z: base -> apex)."""

    cx: float
    cy: float
    body_a: float  # half-width of the body ellipse
    body_b: float  # half-depth
    fat: float  # subcutaneous fat thickness
    lung_height: float
    dome: tuple[float, float]  # diaphragm dome height under (right, left) lung
    lung_field_amp: float

    @property
    def inner_a(self) -> float:
        return self.body_a - self.fat - 8.0

    @property
    def inner_b(self) -> float:
        return self.body_b - self.fat - 8.0

    def lung_centre(self, side: int) -> tuple[float, float]:
        """(y, x) centre of the right (1, smaller x) or left (2) lung ellipse."""
        return self.cy + 0.05 * self.inner_b, self.cx + (-1 if side == 1 else 1) * 0.47 * self.inner_a

    def body_rho(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Normalised radius of (y, x) within the inner (rib-cage) ellipse."""
        return np.sqrt(((x - self.cx) / self.inner_a) ** 2 + ((y - self.cy) / self.inner_b) ** 2)

    def lung_side(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, perturbation: np.ndarray | float = 0.0) -> np.ndarray:
        """0 outside the lungs, 1 right lung, 2 left lung, at broadcastable mm coordinates."""
        h = self.lung_height
        t = np.clip((h - z) / (0.55 * h), 0.0, 1.0)
        scale2 = t * (2.0 - t)  # a dome over the upper half: 0 at the apex, 1 from mid-height down
        ai, bi = self.inner_a, self.inner_b
        heart = (((x - self.cx - 0.12 * ai) / (0.36 * ai)) ** 2 + ((y - self.cy + 0.2 * bi) / (0.42 * bi)) ** 2
                 + ((z - 0.15 * h) / (0.4 * h)) ** 2) < 1.0
        spine = ((x - self.cx) ** 2 + (y - self.cy - 0.62 * bi) ** 2) < (0.22 * bi + 10.0) ** 2
        mediastinum = np.abs(x - self.cx) < 0.1 * ai + 4.0
        outside = heart | spine | mediastinum | (self.body_rho(y, x) > 0.86)
        side = np.zeros(np.broadcast_shapes(np.shape(z), np.shape(y), np.shape(x)), dtype=np.uint8)
        for s in (1, 2):
            yc, xc = self.lung_centre(s)
            r2 = ((x - xc) / (0.46 * ai)) ** 2 + ((y - yc) / (0.85 * bi)) ** 2
            inside = (r2 + perturbation < scale2) & (z > self.dome[s - 1] * (1.0 - r2)) & (z < h)
            side[inside & ~outside] = s
        return side

    def costal_depth(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, side: int) -> np.ndarray:
        """Approximate depth (mm) below the costal pleura (chest wall side) of lung ``side``; 0 at the wall."""
        t = np.clip((self.lung_height - z) / (0.55 * self.lung_height), 1e-3, 1.0)
        yc, xc = self.lung_centre(side)
        r2 = ((x - xc) / (0.46 * self.inner_a)) ** 2 + ((y - yc) / (0.85 * self.inner_b)) ** 2
        from_ellipse = (1.0 - np.sqrt(r2 / (t * (2.0 - t)))) * 0.46 * self.inner_a
        from_ribs = (0.86 - self.body_rho(y, x)) * min(self.inner_a, self.inner_b)
        return np.maximum(np.minimum(from_ellipse, from_ribs), 0.0)


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    dome_right = rng.uniform(25.0, 45.0)
    return _Anatomy(
        cx=rng.uniform(-12.0, 12.0), cy=rng.uniform(-12.0, 8.0),
        body_a=rng.uniform(140.0, 170.0), body_b=rng.uniform(100.0, 125.0), fat=rng.uniform(6.0, 25.0),
        lung_height=rng.uniform(210.0, 260.0), dome=(dome_right, dome_right - rng.uniform(5.0, 15.0)),
        lung_field_amp=0.05,
    )


def _paint_body(labels: np.ndarray, hu: np.ndarray, grid: _Grid, anat: _Anatomy, rng: np.random.Generator,
                fov_radius: float) -> None:
    """Air, table, fat, soft tissue, ribs, sternum and spine, written into ``labels``/``hu`` (thin grid)."""
    T = TISSUES
    y2, x2 = grid.y[:, None], grid.x[None, :]
    outer = ((x2 - anat.cx) / anat.body_a) ** 2 + ((y2 - anat.cy) / anat.body_b) ** 2 < 1.0
    inner = ((x2 - anat.cx) / (anat.body_a - anat.fat)) ** 2 + ((y2 - anat.cy) / (anat.body_b - anat.fat)) ** 2 < 1.0
    # Table: a curved carbon shell with a foam core, a few cm under the patient's back.
    top = anat.cy + anat.body_b + rng.uniform(3.0, 20.0) - 0.0008 * (x2 - anat.cx) ** 2
    depth = y2 - top
    on_table = (np.abs(x2 - anat.cx) < 0.95 * anat.body_a) & (depth >= 0) & (depth < 14.0)
    shell = on_table & ((depth < 2.5) | (depth >= 11.5))
    # Bones that run along z or repeat with it.
    rho = anat.body_rho(y2, x2)
    angle = np.arctan2(y2 - anat.cy, x2 - anat.cx)  # 0 at the patient's left, +pi/2 posterior
    rib_ring = (rho > 0.87) & (rho < 0.97) & (np.abs(x2 - anat.cx) > 0.2 * anat.inner_a)
    bi = anat.inner_b
    vertebra_y = anat.cy + 0.62 * bi
    body_r = 0.18 * bi
    vertebra_d2 = (x2 - anat.cx) ** 2 + (y2 - vertebra_y) ** 2
    vertebral_body = vertebra_d2 < body_r ** 2
    cortex = vertebral_body & (vertebra_d2 > (body_r - 2.5) ** 2)
    canal = ((x2 - anat.cx) ** 2 + (y2 - vertebra_y - body_r - 7.0) ** 2) < 7.0 ** 2
    posterior_arch = (np.abs(x2 - anat.cx) < 12.0) & (y2 > vertebra_y + body_r) & (y2 < vertebra_y + body_r + 35.0) & ~canal
    sternum = (np.abs(x2 - anat.cx) < 14.0) & (rho > 0.86) & (rho < 0.98) & (y2 < anat.cy)

    # Everything that does not change along z is painted once on a 2D slice and copied.
    slice_labels = np.where((x2 ** 2 + y2 ** 2) > fov_radius ** 2, T["padding"], T["air"]).astype(np.uint8)
    slice_labels[on_table & (slice_labels == T["air"])] = T["table"]
    slice_labels[outer] = T["fat"]
    slice_labels[inner] = T["soft_tissue"]
    slice_labels[posterior_arch | sternum | vertebral_body] = T["bone"]
    base = np.zeros(len(TISSUES), dtype=np.float32)
    for name, value in TISSUE_HU.items():
        base[T[name]] = value
    slice_hu = base[slice_labels]
    # Cortical bone is denser than marrow; the table's foam core is nearly air.
    slice_hu[on_table & ~shell & (slice_labels == T["table"])] = -950.0
    slice_hu[cortex | posterior_arch] = 800.0
    slice_hu[sternum] = 450.0
    labels[:] = slice_labels[None]
    hu[:] = slice_hu[None]

    # Ribs slope downwards from back to front, ~25 mm apart and ~9 mm high, with a dense cortex.
    ry, rx = np.nonzero(rib_ring)
    phase = (grid.z[:, None] - 14.0 * np.sin(angle[ry, rx])[None, :]) % 25.0
    rib = (phase < 9.0) & (grid.z < anat.lung_height + 10.0)[:, None]
    labels[:, ry, rx] = np.where(rib, T["bone"], labels[:, ry, rx])
    hu[:, ry, rx] = np.where(rib, np.where((phase < 2.0) | (phase > 7.0), 800.0, TISSUE_HU["bone"]), hu[:, ry, rx])
    # Intervertebral discs (soft tissue) every 28 mm.
    discs = np.flatnonzero((grid.z % 28.0) < 6.0)
    vy, vx = np.nonzero(vertebral_body)
    labels[discs[:, None], vy[None, :], vx[None, :]] = T["soft_tissue"]
    hu[discs[:, None], vy[None, :], vx[None, :]] = TISSUE_HU["soft_tissue"]


def _paint_fissures(labels: np.ndarray, hu: np.ndarray, side: np.ndarray, grid: _Grid, anat: _Anatomy,
                    rng: np.random.Generator, texture: np.ndarray) -> None:
    """Interlobar fissures: an oblique one in each lung, a horizontal one in the right lung's front.

    Each is a gently waving plane; a voxel it crosses gets the partial volume of
    :data:`FISSURE_MM` of pleura (about 40 HU) in lung, so the line fades on coarse grids.
    """
    T = TISSUES
    z = grid.z.astype(np.float32)[:, None, None]
    y = grid.y.astype(np.float32)[None, :, None]
    dz, dy = float(grid.z[1] - grid.z[0]) if len(grid.z) > 1 else 1.0, float(abs(grid.y[1] - grid.y[0]))
    h = anat.lung_height
    for s in (1, 2):
        yc, _ = anat.lung_centre(s)
        # The oblique fissure climbs from the front of the diaphragm to high at the back (about 45-55 deg).
        slope = rng.uniform(0.9, 1.4)
        z0 = rng.uniform(0.45, 0.6) * h
        normal = np.array([1.0, -slope]) / np.hypot(1.0, slope)
        oblique = (z - z0) * normal[0] + (y - yc) * normal[1] + np.float32(3.0) * texture
        sheets = [(oblique, abs(normal[0]) * dz + abs(normal[1]) * dy)]
        if s == 1:
            # The horizontal fissure: front of the right lung, above the oblique fissure.
            level = rng.uniform(0.55, 0.7) * h
            horizontal = np.where(oblique > 0, (z - level) + np.float32(3.0) * texture, np.float32(np.inf))
            sheets.append((horizontal, dz))
        for distance, extent in sheets:
            crossed = (np.abs(distance) < extent / 2) & (side == s)
            labels[crossed] = T["fissure"]
            share = min(1.0, FISSURE_MM / max(extent, 1e-6))
            hu[crossed] += np.float32(share) * (np.float32(TISSUE_HU["soft_tissue"]) - hu[crossed])


def _paint_lungs(labels: np.ndarray, hu: np.ndarray, side: np.ndarray, grid: _Grid, anat: _Anatomy,
                 rng: np.random.Generator, texture: np.ndarray, visible_radius: float) -> None:
    """Lung parenchyma, vessel tree and airway tree (labels, HU); ``side`` holds 1/2 inside the lungs.

    Trees are grown to a fixed physical size (the same patient at every spacing); branches
    thinner than ``visible_radius`` mm (about half a pixel) are not drawn.
    """
    T = TISSUES
    in_lung = side > 0
    labels[in_lung] = T["lung"]
    # Dependent (posterior) lung is denser: about -890 HU at the front to -810 at the back.
    y_rel = ((grid.y - anat.cy) / anat.inner_b).astype(np.float32)[None, :, None]
    _, lung_y, _ = np.nonzero(in_lung)
    hu[in_lung] = np.float32(-850.0) + np.float32(40.0) * y_rel.ravel()[lung_y] + np.float32(12.0) * texture[in_lung]
    _paint_fissures(labels, hu, side, grid, anat, rng, texture)

    h = anat.lung_height
    vessel = np.zeros(labels.shape, dtype=bool)
    wall = {name: np.zeros(labels.shape, dtype=bool) for name in ("central", "peripheral")}
    lumen = {name: np.zeros(labels.shape, dtype=bool) for name in ("central", "peripheral")}

    def draw(segments: list[tuple[np.ndarray, np.ndarray, float]], tube: np.ndarray,
             sheath: np.ndarray | None = None) -> None:
        for p0, p1, r in segments:
            if r < visible_radius:
                continue
            # Airway walls are about a fifth of the lumen radius plus half a millimetre.
            reach = r if sheath is None else 1.2 * r + 0.6
            box = grid.box(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
            if box is None:
                continue
            d2 = _segment_distance2(grid, box, p0, p1)
            tube[box] |= d2 <= r ** 2
            if sheath is not None:
                sheath[box] |= d2 <= reach ** 2

    carina = np.array([0.62 * h, anat.cy - 0.05 * anat.inner_b, anat.cx])
    draw([(np.array([h + 60.0, carina[1], carina[2]]), carina, 8.0)], lumen["central"], wall["central"])
    for s in (1, 2):
        yc, xc = anat.lung_centre(s)
        lateral = np.array([0.0, 0.0, -1.0 if s == 1 else 1.0])
        hilum = np.array([0.55 * h, yc - 0.05 * anat.inner_b, xc - lateral[2] * 0.2 * anat.inner_a])
        trunks = [np.array([1.0, 0.0, 0.0]) + 0.3 * lateral, np.array([-1.0, 0.2, 0.0]) + 0.3 * lateral,
                  lateral + np.array([0.0, -0.6, 0.0]), lateral + np.array([-0.3, 0.7, 0.0]),
                  lateral + np.array([0.5, 0.0, 0.0]), lateral + np.array([-0.5, 0.0, 0.0])]
        def inside(points: np.ndarray, side: int = s) -> np.ndarray:
            return anat.lung_side(points[:, 0], points[:, 1], points[:, 2]) == side

        draw(_branching_tree(rng, hilum, trunks, 40.0, 5.0, 0.7, inside), vessel)
        bronchus_root = hilum + np.array([8.0, -6.0, 0.0])
        draw([(carina, bronchus_root, 5.5)], lumen["central"], wall["central"])
        # Bronchi thinner than 2 mm have walls below a pixel on real scans and are barely seen: not drawn.
        draw(_branching_tree(rng, bronchus_root, trunks, 30.0, 3.5, 2.0, inside),
             lumen["peripheral"], wall["peripheral"])

    vessel &= in_lung
    labels[vessel] = T["vessel"]
    hu[vessel] = TISSUE_HU["vessel"] + 8.0 * texture[vessel]
    # The trachea and main bronchi run through the mediastinum; smaller bronchi stay in the lungs.
    mediastinum = labels == T["soft_tissue"]
    for name, allowed in (("central", in_lung | mediastinum), ("peripheral", in_lung)):
        airway_wall = wall[name] & ~lumen[name] & allowed
        labels[airway_wall] = T["soft_tissue"]
        hu[airway_wall] = TISSUE_HU["soft_tissue"]
        airway = lumen[name] & allowed
        labels[airway] = T["airway"]
        hu[airway] = TISSUE_HU["airway"]


# ---------------------------------------------------------------------------------------------
# Disease


def _random_lung_point(rng: np.random.Generator, anat: _Anatomy, z_range: tuple[float, float],
                       side: int, peripheral: bool) -> np.ndarray | None:
    """A point (z, y, x mm) inside lung ``side`` within ``z_range``; near the pleura when ``peripheral``."""
    yc, xc = anat.lung_centre(side)
    n = 256
    pts = np.stack([rng.uniform(*z_range, n), rng.uniform(yc - 0.8 * anat.inner_b, yc + 0.8 * anat.inner_b, n),
                    rng.uniform(xc - 0.45 * anat.inner_a, xc + 0.45 * anat.inner_a, n)], axis=1)
    ok = anat.lung_side(pts[:, 0], pts[:, 1], pts[:, 2]) == side
    if peripheral:
        # Subpleural against the chest wall: 8 mm further out laterally, forwards or backwards
        # (not towards the mediastinum) already leaves the lung.
        lateral = -1.0 if side == 1 else 1.0
        near_edge = np.zeros(n, dtype=bool)
        for step in ((0.0, 0.0, 8.0 * lateral), (0.0, 8.0, 0.0), (0.0, -8.0, 0.0), (0.0, 5.7, 5.7 * lateral)):
            moved = pts + np.array(step)
            leaves = anat.lung_side(moved[:, 0], moved[:, 1], moved[:, 2]) != side
            near_edge |= leaves & (anat.body_rho(moved[:, 1], moved[:, 2]) > 0.7)  # into the chest wall, not the heart
        ok &= near_edge
    hits = np.flatnonzero(ok)
    return pts[hits[0]] if hits.size else None


def _blob(rng: np.random.Generator, grid: _Grid, centre: np.ndarray, radius: float, lobes: int,
          roughness: float) -> tuple[tuple[slice, slice, slice], np.ndarray, list[tuple[float, float]]] | None:
    """An irregular blob: ``(box, q, bounds)``; ``q < 1`` inside, about 0 at its core; ``bounds`` its extent in mm."""
    reach = 1.8 * radius
    box = grid.box(centre - reach, centre + reach)
    if box is None:
        return None
    z, y, x = grid.z[box[0]], grid.y[box[1]], grid.x[box[2]]
    q = np.full((len(z), len(y), len(x)), np.inf, dtype=np.float32)
    for _ in range(lobes):
        c = centre + rng.normal(0.0, 0.35 * radius, 3)
        r = radius * rng.uniform(0.5, 1.0) * rng.uniform(0.7, 1.3, 3)
        d = (((z[:, None, None] - c[0]) / r[0]) ** 2 + ((y[None, :, None] - c[1]) / r[1]) ** 2
             + ((x[None, None, :] - c[2]) / r[2]) ** 2)
        np.minimum(q, d.astype(np.float32), out=q)
    bounds = [(c - reach, c + reach) for c in centre]
    q += np.float32(roughness) * _smooth_field(rng, z, y, x, max(3.0, radius / 2.5), bounds)
    return box, q, bounds


def _covid_lesion_radii(rng: np.random.Generator, anat: _Anatomy, calibration: Mapping[str, Any]) -> np.ndarray:
    """Radii (mm) of one case's COVID lesions, calibrated on real slices.

    The burden (lesion share of the lung's cross-section) and the count are drawn from the real
    slices' tables; the burden is split between the lesions by log-normal weights (a few large,
    many small, as in the real masks). ``BURDEN_GAIN`` makes up for the blobs' irregular, thinned
    outline, which covers less than the disk of their radius.
    """
    tables = calibration["lesions"]
    burden = float(draw_from_quantiles(rng, tables["lesion_share_of_lung"]))
    counts = np.asarray(tables["count_histogram"], dtype=float)
    count = int(np.clip(rng.choice(counts.size, p=counts / counts.sum()), 2, MAX_COVID_LESIONS))
    lung_area = 2 * np.pi * (0.46 * anat.inner_a) * (0.85 * anat.inner_b)
    weights = rng.lognormal(0.0, 1.0, count)
    areas = BURDEN_GAIN * burden * lung_area * weights / weights.sum()
    return np.clip(np.sqrt(areas / np.pi), 4.0, 70.0)


def _paint_lesions(labels: np.ndarray, hu: np.ndarray, side: np.ndarray, grid: _Grid, anat: _Anatomy,
                   rng: np.random.Generator, disease: str, calibration: Mapping[str, Any]) -> int:
    """Add the disease's lesions in place; returns how many were drawn."""
    T = TISSUES
    covered = (max(float(grid.z[0]), 5.0), min(float(grid.z[-1]), anat.lung_height - 5.0))
    if covered[1] <= covered[0]:
        return 0
    if disease == "effusion":
        sides = (1, 2) if rng.random() < 0.4 else (int(rng.integers(1, 3)),)
        z = grid.z[:, None, None]
        for s in sides:
            yc, _ = anat.lung_centre(s)
            depth_fraction = rng.uniform(0.2, 0.5) * np.clip(1.0 - (z - anat.dome[s - 1]) / (0.55 * anat.lung_height), 0.0, 1.0) ** 0.7
            level = yc + 0.78 * anat.inner_b * (1.0 - 2.0 * depth_fraction)
            fluid = (side == s) & (grid.y[None, :, None] > level) & (depth_fraction > 0.02)
            labels[fluid] = T["effusion"]
            hu[fluid] = rng.uniform(0.0, 20.0)
            side[fluid] = 0
        return len(sides)

    if disease == "covid":
        radii = _covid_lesion_radii(rng, anat, calibration)
        window = calibration["window"]
        scale = 255.0 / (window["high_hu"]["q50"] - window["low_hu"]["q50"])
    else:
        radii = np.exp(rng.uniform(np.log(3.0), np.log(22.0), int(rng.integers(1, 4))))
    count = len(radii)
    drawn = 0
    for i in range(count):
        lung = 1 + i % 2 if i < 2 else int(rng.integers(1, 3))  # covid is bilateral
        peripheral = disease == "covid" and rng.random() < 0.85
        centre = _random_lung_point(rng, anat, covered, lung, peripheral)
        if centre is None:
            continue
        radius = float(radii[i])
        if disease == "covid":
            blob = _blob(rng, grid, centre, radius, lobes=int(rng.integers(1, 4)), roughness=0.45)
        else:
            blob = _blob(rng, grid, centre, radius, lobes=int(rng.integers(1, 3)), roughness=0.2)
        if blob is None:
            continue
        box, q, bounds = blob
        if peripheral:
            # Hug the chest wall: the blob thins out with depth below the pleura (subpleural GGO).
            depth = anat.costal_depth(grid.z[box[0]][:, None, None], grid.y[box[1]][None, :, None],
                                      grid.x[box[2]][None, None, :], lung)
            q += (0.9 / radius) * depth.astype(np.float32)
        lab, vals, s = labels[box], hu[box], side[box]
        inside = (q < 1.0) & (s > 0)
        texture = _smooth_field(rng, grid.z[box[0]], grid.y[box[1]], grid.x[box[2]], 4.0, bounds)
        if disease == "covid":
            # GGO replaces parenchyma only: vessels, airways and fissures stay visible through it.
            # Its level: the real lesions' median grey through the real median window.
            grey = float(draw_from_quantiles(rng, window["lesion_grey"]))
            level = float(np.clip(window["low_hu"]["q50"] + grey / scale, -650.0, -350.0))
            ramp = np.clip((1.0 - q) / 0.5, 0.0, 1.0)
            ggo_hu = -850.0 + (level + 850.0) * (0.45 + 0.55 * ramp) + 60.0 * texture
            if rng.random() < CRAZY_PAVING_SHARE:
                # Crazy paving: thickened interlobular septa, a polygonal net of lines over the
                # haze; the zero set of a smooth field is such a net, cells about 1-2 cm wide.
                septa = _smooth_field(rng, grid.z[box[0]], grid.y[box[1]], grid.x[box[2]], 7.0, bounds)
                ggo_hu = ggo_hu + 160.0 * (np.abs(septa) < 0.25)
            ggo = inside & (lab == T["lung"])
            lab[ggo] = T["ggo"]
            vals[ggo] = np.clip(ggo_hu[ggo], -700.0, -300.0)
            if rng.random() < 0.45:
                # Consolidation at the core hides vessels but keeps air bronchograms.
                core = inside & (q < rng.uniform(0.2, 0.5)) & np.isin(lab, (T["ggo"], T["vessel"], T["lung"]))
                lab[core] = T["consolidation"]
                vals[core] = np.clip(rng.uniform(-70.0, 30.0) + 20.0 * texture[core], -100.0, 50.0)
        else:
            solid = inside & np.isin(lab, (T["lung"], T["vessel"]))
            lab[solid] = T["nodule"]
            vals[solid] = rng.uniform(20.0, 60.0) + 10.0 * texture[solid]
        drawn += 1
    return drawn


# ---------------------------------------------------------------------------------------------
# Public API


def reconstruction_noise(rng: np.random.Generator, shape: tuple[int, ...], pixel_mm: tuple[float, float],
                         sd: float, cutoff_per_mm: float) -> np.ndarray:
    """Noise as filtered back-projection leaves it: float32 ``shape`` (z, y, x), sd ``sd`` HU.

    White noise shaped in-plane by the noise power spectrum of filtered back-projection, the
    ramp filter times a Gaussian apodisation window: NPS(f) ~ f exp(-(f/f_c)^2) (Hanson 1979;
    Boedeker et al., Phys. Med. Biol. 2007). It has no power at zero frequency and a peak at
    mid frequencies, so its grain is a few pixels wide, not the single-pixel speckle of white
    noise; ``cutoff_per_mm`` (f_c, cycles/mm) is soft (0.3) to sharp (0.7) kernels. Slices are
    independent. Scaled exactly: the filter is normalised to unit mean power.
    """
    fy = np.fft.fftfreq(shape[-2], d=pixel_mm[0])[:, None]
    fx = np.fft.rfftfreq(shape[-1], d=pixel_mm[1])[None, :]
    radial = np.hypot(fy, fx)
    gain = np.sqrt(radial * np.exp(-((radial / cutoff_per_mm) ** 2)))
    # Mean power over the full (two-sided) spectrum: rfft columns 1..n/2-1 stand for two columns.
    weights = np.full(fx.shape[1], 2.0)
    weights[0] = 1.0
    if shape[-1] % 2 == 0:
        weights[-1] = 1.0
    power = float((gain ** 2 * weights).sum() / (shape[-2] * shape[-1]))
    if power <= 0:
        return np.zeros(shape, dtype=np.float32)
    white = rng.standard_normal(shape, dtype=np.float32)
    shaped = np.fft.irfft2(np.fft.rfft2(white) * (gain / np.sqrt(power)).astype(np.complex64), s=shape[-2:])
    return (shaped * np.float32(sd)).astype(np.float32, copy=False)


def _check_spacing(spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"spacing must be three positive mm values (z, y, x), got {spacing!r}") from exc
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise InvalidInputError(f"spacing must be three positive mm values (z, y, x), got {spacing!r}")
    return values


def make_phantom(seed: int = 0, shape: tuple[int, int, int] = (64, 128, 128), *, disease: str = "covid",
                 spacing: tuple[float, float, float] | None = None, noise_hu: float | None = None,
                 offset_hu: float | None = None) -> PhantomCase:
    """Generate one synthetic chest CT ``(z, y, x)`` of ``shape`` with exact masks.

    ``spacing`` (z, y, x) mm: when None, slice thickness is drawn from
    :data:`SLICE_THICKNESSES_MM` (1-8 mm) and in-plane spacing from 0.6-0.95 mm on a 512 matrix,
    scaled by ``512 / max(ny, nx)`` so that a smaller matrix still holds the whole chest (a
    128 x 128 case has 2.4-3.8 mm pixels). With an explicit spacing the patient keeps its physical
    size, so a small matrix at fine spacing shows part of the chest. The volume covers
    ``nz * spacing_z`` mm along the patient; when that is shorter than the lungs it is a slab at
    a random height. ``noise_hu`` (default: drawn in 10-40) is the standard deviation of
    in-plane-correlated Gaussian noise; ``offset_hu`` (default: 0 or, one case in three, drawn in
    +-25) shifts every tissue (calibration drift). Thick slices are means of thin sub-slices.
    ``disease`` is one of :data:`DISEASES`. Same arguments, same arrays.

    Introduced in chapter 01.
    """
    if disease not in DISEASES:
        raise InvalidInputError(f"disease={disease!r} is not one of {DISEASES}")
    if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < 16:
        raise InvalidInputError(f"shape must be (z, y, x) with y, x >= 16, got {shape}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    # One stream per component: the patient stays the same whatever the spacing or noise.
    streams = ("acquisition", "anatomy", "trees", "lesions", "noise")
    rngs = dict(zip(streams, (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(len(streams)))))
    rng = rngs["acquisition"]
    nz, ny, nx = (int(s) for s in shape)
    # Draw every acquisition setting, given or not, so an override changes nothing else.
    pixel = rng.uniform(*IN_PLANE_MM_AT_512) * REFERENCE_MATRIX / max(ny, nx)
    drawn = (float(rng.choice(SLICE_THICKNESSES_MM)), pixel, pixel)
    drawn_noise = float(rng.uniform(10.0, 40.0))
    drawn_offset = float(rng.uniform(-25.0, 25.0)) if rng.random() < 1 / 3 else 0.0
    padding_value = float(rng.choice(PADDING_VALUES))
    kernel_cutoff = float(rng.uniform(*KERNEL_CUTOFF_PER_MM))
    sz, sy, sx = drawn if spacing is None else _check_spacing(spacing)
    noise = drawn_noise if noise_hu is None else float(noise_hu)
    offset = drawn_offset if offset_hu is None else float(offset_hu)
    if not (np.isfinite(noise) and noise >= 0 and np.isfinite(offset)):
        raise InvalidInputError(f"noise_hu must be >= 0 and offset_hu finite, got {noise_hu!r}, {offset_hu!r}")
    anat = _sample_anatomy(rngs["anatomy"])

    # Sub-slices about as thick as a pixel is wide, within the thin-volume budget.
    sub = int(np.clip(round(sz / max(1.0, sy)), 1, 8))
    sub = max(1, min(sub, MAX_THIN_VOXELS // (nz * ny * nx)))
    coverage = nz * sz
    lung_mid = _LUNG_HALF_HEIGHT_FRACTION * anat.lung_height
    slack = abs(anat.lung_height + 40.0 - coverage) / 2
    z_first_edge = lung_mid - coverage / 2 + rng.uniform(-slack, slack) * (0.25 if coverage > anat.lung_height else 0.9)
    thin_z = z_first_edge + (np.arange(nz * sub) + 0.5) * (sz / sub)
    grid = _Grid(z=thin_z.astype(np.float64), y=(np.arange(ny) - (ny - 1) / 2) * sy, x=(np.arange(nx) - (nx - 1) / 2) * sx)
    fov_radius = 0.5 * min(ny * sy, nx * sx)

    labels = np.empty((nz * sub, ny, nx), dtype=np.uint8)
    hu = np.empty(labels.shape, dtype=np.float32)
    _paint_body(labels, hu, grid, anat, rngs["anatomy"], fov_radius)
    # Lungs, vessels and airways all lie in the chest's central box (full height): work there only.
    side = np.zeros(labels.shape, dtype=np.uint8)
    chest = grid.box(np.array([-np.inf, anat.cy - 0.95 * anat.inner_b, anat.cx - anat.inner_a]),
                     np.array([np.inf, anat.cy + 0.95 * anat.inner_b, anat.cx + anat.inner_a]))
    if chest is not None:
        inner = _Grid(z=grid.z[chest[0]], y=grid.y[chest[1]], x=grid.x[chest[2]])
        texture = _smooth_field(rngs["anatomy"], inner.z, inner.y, inner.x, 12.0, _BODY_BOUNDS)
        z32, y32, x32 = (c.astype(np.float32) for c in (inner.z, inner.y, inner.x))
        side[chest] = anat.lung_side(z32[:, None, None], y32[None, :, None], x32[None, None, :],
                                     perturbation=np.float32(anat.lung_field_amp) * texture)
        _paint_lungs(labels[chest], hu[chest], side[chest], inner, anat, rngs["trees"], texture,
                     visible_radius=0.5 * min(sy, sx))
    n_lesions = 0 if disease == "healthy" else _paint_lesions(labels, hu, side, grid, anat, rngs["lesions"], disease,
                                                              load_calibration())

    # Thick slices: mean HU of the sub-slices; labels and lung side by majority, reduced together.
    if sub > 1:
        image = average_slabs(hu, sub)
        codes = majority_slabs(labels * np.uint8(3) + side, sub)
        tissue_labels, lung_mask = codes // np.uint8(3), codes % np.uint8(3)
    else:
        image, tissue_labels, lung_mask = hu, labels, side
    is_lesion = np.zeros(256, dtype=np.uint8)
    is_lesion[[TISSUES[name] for name in LESION_TISSUES[disease]]] = 1
    lesion_mask = is_lesion[tissue_labels]

    if noise > 0:
        image += reconstruction_noise(rngs["noise"], image.shape, (sy, sx), noise, kernel_cutoff)
    if offset:
        image += np.float32(offset)
    image[tissue_labels == TISSUES["padding"]] = padding_value

    origin = (float(grid.x[0]), float(grid.y[0]), float(z_first_edge + sz / 2))
    volume = Volume(image.astype(np.float32, copy=False), (sz, sy, sx), origin, IDENTITY_DIRECTION,
                    source=f"phantom(seed={seed}, disease={disease})")
    acquisition = {"slice_thickness_mm": sz, "pixel_mm": sy, "sub_slices": sub, "noise_hu": noise,
                   "offset_hu": offset, "padding_hu": padding_value, "kernel_cutoff_per_mm": kernel_cutoff}
    return PhantomCase(volume, lung_mask, lesion_mask, tissue_labels, disease, int(seed), n_lesions, acquisition)


def make_cohort(n: int, seed: int = 0, shape: tuple[int, int, int] = (64, 128, 128), *, disease: str = "covid",
                healthy_fraction: float = 0.1, spacing: tuple[float, float, float] | None = None,
                noise_hu: float | None = None) -> list[PhantomCase]:
    """``n`` phantom cases with seeds derived from ``seed``; ``round(n * healthy_fraction)`` of them healthy.

    Which cases are healthy is drawn from ``seed`` too, so the cohort is deterministic.
    Introduced in chapter 01.
    """
    if n < 1:
        raise InvalidInputError(f"n must be >= 1, got {n}")
    if not 0.0 <= healthy_fraction <= 1.0:
        raise InvalidInputError(f"healthy_fraction must be in [0, 1], got {healthy_fraction}")
    sequence = np.random.SeedSequence(int(seed))
    seeds = sequence.generate_state(n, dtype=np.uint32)
    healthy = set(np.random.default_rng(sequence.spawn(1)[0]).permutation(n)[: int(round(n * healthy_fraction))].tolist())
    return [make_phantom(int(s), shape, disease="healthy" if i in healthy else disease, spacing=spacing, noise_hu=noise_hu)
            for i, s in enumerate(seeds)]


# ---------------------------------------------------------------------------------------------
# The real-like view: a phantom slice as COVID-SemiSeg shows its slices


@dataclass
class SliceView:
    """One phantom slice shown like a COVID-SemiSeg slice (all arrays ``(H, W)``, same shape).

    ``image``: uint8 grey levels (8-bit windowed); ``lesion_mask``: uint8 0/1; ``lung_mask``:
    uint8 (1 right, 2 left lung); ``window``: the (low, high) HU mapped to 0 and 255;
    ``crop``: (y0, y1, x0, x1) on the phantom's slice; ``rotation``: quarter turns
    counter-clockwise (1: anterior on the left, lungs above and below). Introduced in chapter 01.
    """

    image: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    window: tuple[float, float]
    crop: tuple[int, int, int, int]
    rotation: int


def semiseg_view(case: PhantomCase, z: int, seed: int | np.random.Generator = 0,
                 calibration: Mapping[str, Any] | None = None) -> SliceView:
    """Slice ``z`` of ``case`` as COVID-SemiSeg stores its slices: 8 bits, cropped to the chest, rotated.

    Real slices (Fan et al. 2020, Inf-Net) are windowed screenshots: lung about grey 45, soft
    tissue about 220; cropped so tightly that the lungs fill about half the image; and mostly
    turned a quarter so that the lungs lie above and below the heart. Each step draws from the
    calibration tables (:func:`load_calibration`): the grey levels of lung and soft tissue (which
    fix the window), the lungs' share of the crop, and the rotation (a quarter turn either way, or none, in the real
    shares). Masks follow the image exactly (same crop and rotation, no resampling).
    """
    if not 0 <= z < case.image.shape[0]:
        raise InvalidInputError(f"z={z} is outside the case's {case.image.shape[0]} slices")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    tables = calibration if calibration is not None else load_calibration()
    # The window puts nominal lung and soft tissue on grey levels drawn from the real slices' own
    # (a soft tissue at 255 is a window that saturates it, as in a quarter of the real slices).
    window = tables["window"]
    lung_grey = float(draw_from_quantiles(rng, window["lung_grey"]))
    soft_grey = max(float(draw_from_quantiles(rng, window["soft_tissue_grey"])), lung_grey + 100.0)
    scale = (soft_grey - lung_grey) / (TISSUE_HU["soft_tissue"] - TISSUE_HU["lung"])
    low = TISSUE_HU["lung"] - lung_grey / scale
    high = low + 255.0 / scale
    hu = case.image.array[z]
    grey = np.clip(np.rint((hu - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)

    # Crop around the lungs (or the body on a slice without lungs) so that they fill the drawn share.
    lungs = case.lung_mask[z]
    target = lungs > 0 if lungs.any() else case.tissue_labels[z] > TISSUES["air"]
    if not target.any():
        target = np.ones_like(lungs, dtype=bool)
    ys, xs = np.nonzero(target)
    share = float(draw_from_quantiles(rng, tables["field_of_view"]["lung_share_of_image"]))
    box_h, box_w = np.ptp(ys) + 1, np.ptp(xs) + 1
    grow = max(1.0, np.sqrt(target.sum() / share / (box_h * box_w)))
    half_h, half_w = box_h * grow / 2, box_w * grow / 2
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    height, width = lungs.shape
    y0, y1 = max(0, int(round(cy - half_h))), min(height, int(round(cy + half_h)))
    x0, x1 = max(0, int(round(cx - half_w))), min(width, int(round(cx + half_w)))

    orientation = tables["orientation"]
    if rng.random() < orientation["lungs_above_and_below_share"]:
        turns = 1 if rng.random() < orientation["mediastinum_left_share"] else 3
    else:
        turns = 0

    def view(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(array[y0:y1, x0:x1], turns))

    return SliceView(view(grey), view(case.lesion_mask[z]), view(lungs), (low, high), (y0, y1, x0, x1), turns)
