"""Derive the phantom's calibration tables from COVID-SemiSeg's 50 labelled slices (numbers only).

Writes ``covidlib/phantom_calibration.json`` (atomically), which :mod:`covidlib.phantom` reads:
grey-level histograms (32 bins over 0..255) of lung parenchyma, body and lesions, the display
window that maps the phantom's nominal HU onto those grey levels, lesion count, size, position
and shape statistics, the density and calibre of bright structures (vessels) in the lungs, the
field of view (how tightly the slices are cropped) and the orientation the slices come in.
No pixel data is stored: every entry is a histogram, a quantile or a share.

How regions are found on the 8-bit slices (no lung masks ship with COVID-SemiSeg):

- **lungs**: pixels darker than a fixed grey level (``LUNG_THRESHOLD`` = 90, between the
  aerated lung's and the soft tissue's peaks), the connected components (8-neighbourhood) that
  cover at least 2 % of the image, united with the doctors' lesion mask (lesions are bright but
  lie in the lungs), closed with a disk of 2 % of the image's side and hole-filled (vessels);
- **parenchyma**: lungs minus lesions, eroded by 2 pixels (no partial volume with vessels at the
  border); **body**: pixels neither lung nor darker than the threshold, eroded by 2 pixels
  (soft tissue, fat, bone); **lesions**: the doctors' mask (GT > 127).

Run: ``.venv/bin/python benchmarks/calibrate_phantom.py [--data-root DIR] [--out PATH]``; without
the data it says so and exits 0 (the committed tables stay). ``--compare-phantom N`` (no data
needed) instead measures N phantom slices in their real-like view with the same code and prints
them beside the committed tables: the check that the phantom follows its calibration.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from covidlib.errors import InvalidInputError
from covidlib.phantom import GREY_BINS, LUNG_GREY_THRESHOLD, grey_histogram, grey_regions
from covidlib.results import atomic_write_text, git_commit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "covid-semiseg"
DEFAULT_OUT = ROOT / "covidlib" / "phantom_calibration.json"
BINS = GREY_BINS
LUNG_THRESHOLD = LUNG_GREY_THRESHOLD
#: Nominal HU the window is solved for (covidlib.phantom.TISSUE_HU: lung, soft tissue).
LUNG_HU, SOFT_TISSUE_HU = -850.0, 40.0
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def lung_region(grey: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Boolean lung mask of an 8-bit slice (H, W): dark large components + lesions, closed, filled."""
    dark = grey < LUNG_THRESHOLD
    labels, n = ndimage.label(dark, structure=np.ones((3, 3)))
    areas = ndimage.sum_labels(dark, labels, np.arange(1, n + 1))
    large = np.isin(labels, 1 + np.flatnonzero(areas >= 0.02 * grey.size))
    radius = max(2, int(round(0.02 * min(grey.shape))))
    disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
    lungs = ndimage.binary_closing(np.pad(large | lesion, radius), disk)[radius:-radius, radius:-radius]
    return ndimage.binary_fill_holes(lungs)


def histogram(values: np.ndarray) -> list[float]:
    """Share of ``values`` in each of :data:`BINS` equal bins over 0..256 (sums to 1), rounded for the file."""
    return grey_histogram(values).round(5).tolist()


def quantiles(values: list[float] | np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    return {f"q{int(q * 100):02d}": round(float(np.quantile(values, q)), 4) for q in QUANTILES} | {
        "mean": round(float(values.mean()), 4), "n": int(values.size)}


def two_lungs(lungs: np.ndarray) -> list[np.ndarray]:
    """The lung mask's two largest components, or the mask split along its longer axis when joined."""
    labels, n = ndimage.label(lungs)
    if n >= 2:
        areas = ndimage.sum_labels(lungs, labels, np.arange(1, n + 1))
        first, second = 1 + np.argsort(areas)[::-1][:2]
        if areas[second - 1] >= 0.15 * areas[first - 1]:
            return [labels == first, labels == second]
    ys, xs = np.nonzero(lungs)
    vertical = np.ptp(ys) > np.ptp(xs)
    coords = np.mgrid[:lungs.shape[0], :lungs.shape[1]][0 if vertical else 1]
    middle = np.median(ys if vertical else xs)
    return [lungs & (coords < middle), lungs & (coords >= middle)]


def measure(grey: np.ndarray, lesion: np.ndarray) -> dict[str, Any]:
    """All per-slice numbers of one slice (H, W) uint8 with its lesion mask (H, W) bool."""
    lungs = lung_region(grey, lesion)
    regions = grey_regions(grey, lungs, lesion)
    parenchyma, body = regions["lung"], regions["body"]
    pair = two_lungs(lungs)
    centres = [np.array(ndimage.center_of_mass(p)) for p in pair]
    delta = np.abs(centres[0] - centres[1])
    # Between the lungs: heart in front, spine behind; the heart is the bigger bright mass, so
    # the side of the image holding more mediastinal tissue is taken as anterior.
    vertical = bool(delta[0] > delta[1])
    between = body.copy()
    span = sorted((centres[0][0], centres[1][0]) if vertical else (centres[0][1], centres[1][1]))
    axis_coords = np.mgrid[:grey.shape[0], :grey.shape[1]][0 if vertical else 1]
    between &= (axis_coords > span[0]) & (axis_coords < span[1])
    across = np.nonzero(between)[1 if vertical else 0]
    length = grey.shape[1 if vertical else 0]
    mediastinum_offset = float(across.mean() / length - 0.5) if across.size else 0.0

    # Bright structures in the parenchyma: vessels, bronchial walls, fissures.
    lung_level = float(np.median(grey[parenchyma])) if parenchyma.any() else float(LUNG_THRESHOLD)
    body_peak = float(np.argmax(np.bincount(grey[body], minlength=256)[LUNG_THRESHOLD:]) + LUNG_THRESHOLD) if body.any() else 200.0
    bright = parenchyma & (grey > (lung_level + body_peak) / 2)
    distance = ndimage.distance_transform_edt(bright)
    ridge = bright & (distance == ndimage.maximum_filter(distance, size=3))
    calibre_px = 2 * distance[ridge] - 1 if ridge.any() else np.array([])

    result: dict[str, Any] = {
        "shape": grey.shape, "lung_share": float(lungs.mean()), "body_share": float((grey >= LUNG_THRESHOLD).mean()),
        "vertical": vertical, "mediastinum_offset": mediastinum_offset,
        "lung_grey": lung_level, "body_peak_grey": body_peak,
        "bright_share": float(bright.sum() / max(1, parenchyma.sum())),
        "calibre_px": calibre_px.tolist(), "grey": {name: grey[mask] for name, mask in regions.items()},
    }
    if not lesion.any():
        return result
    labels, n = ndimage.label(lesion, structure=np.ones((3, 3)))
    areas = ndimage.sum_labels(lesion, labels, np.arange(1, n + 1))
    keep = 1 + np.flatnonzero(areas >= 10)  # specks of a few pixels are drawing noise
    depth = ndimage.distance_transform_edt(lungs)
    per_lung_max = [float(depth[p].max()) for p in pair]
    side_of = np.zeros(grey.shape, dtype=np.uint8)
    for k, p in enumerate(pair):
        side_of[p] = k + 1
    relative_depth = np.zeros(grey.shape)
    for k, p in enumerate(pair):
        relative_depth[p] = depth[p] / max(per_lung_max[k], 1.0)
    in_lungs = lesion & lungs
    solidity = []
    for label in keep:
        component = labels == label
        ys, xs = np.nonzero(component)
        hull = convex_hull_image(component[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
        solidity.append(float(component.sum() / hull.sum()))
    result.update({
        "n_lesions": int(keep.size), "lesion_lung_share": float(lesion.sum() / max(1, lungs.sum())),
        "component_lung_share": (areas[keep - 1] / max(1, lungs.sum())).tolist(), "solidity": solidity,
        "lesion_depth": float(relative_depth[in_lungs].mean()) if in_lungs.any() else float("nan"),
        "lung_depth": float(relative_depth[lungs].mean()),
        "outer_third_share": float((relative_depth[in_lungs] < 1 / 3).mean()) if in_lungs.any() else float("nan"),
        "bilateral": bool(len(set(np.unique(side_of[lesion]).tolist()) - {0}) == 2),
    })
    return result


def labelled(case_id: str, mask: np.ndarray | None) -> np.ndarray:
    """The lesion mask of a training slice: COVID-SemiSeg's doctors labelled every one (``None`` marks an unlabelled case)."""
    if mask is None:
        raise InvalidInputError(f"{case_id}: a COVID-SemiSeg training slice without its lesion mask")
    return mask


def calibrate(data_root: Path) -> dict[str, Any]:
    from covidlib.datasets import get_dataset

    dataset = get_dataset("covid-semiseg", data_root)
    ids = dataset.case_ids("train")
    rows = []
    for case_id in ids:
        case = dataset.load(case_id)
        grey = np.clip(np.rint(case.image.array[0]), 0, 255).astype(np.uint8)
        rows.append(measure(grey, labelled(case_id, case.lesion_mask)[0] > 0))
    # Ground glass vs consolidation: the same slices' multi-class masks (1 GGO, 2 consolidation).
    classes = [labelled(case_id, get_dataset("covid-semiseg", data_root, multiclass=True).load(case_id).lesion_mask) for case_id in ids]
    consolidation = sum(int((c == 2).sum()) for c in classes) / max(1, sum(int((c > 0).sum()) for c in classes))
    grey = {name: np.concatenate([r["grey"][name] for r in rows]) for name in ("lung", "body", "lesion")}
    lesioned = [r for r in rows if "n_lesions" in r]
    # The window that puts the phantom's nominal lung and soft-tissue HU on each slice's grey levels.
    scale = [(r["body_peak_grey"] - r["lung_grey"]) / (SOFT_TISSUE_HU - LUNG_HU) for r in rows]
    low = [LUNG_HU - r["lung_grey"] / s for r, s in zip(rows, scale)]
    high = [lo + 255.0 / s for lo, s in zip(low, scale)]
    vertical = np.array([r["vertical"] for r in rows])
    offsets = np.array([r["mediastinum_offset"] for r in rows])
    heights = np.array([r["shape"][0] for r in rows], dtype=float)
    widths = np.array([r["shape"][1] for r in rows], dtype=float)
    return {
        "provenance": {
            "dataset": "COVID-SemiSeg (Fan et al. 2020, Inf-Net), TrainingSet/LungInfection-Train/Doctor-label",
            "n_slices": len(rows), "n_slices_with_lesions": len(lesioned),
            "created": _dt.date.today().isoformat(), "script": "benchmarks/calibrate_phantom.py",
            "commit": git_commit(ROOT), "lung_threshold_grey": LUNG_THRESHOLD,
            "note": "numbers only (histograms, quantiles, shares); no pixels of the dataset are stored",
        },
        "grey_histograms": {"bin_edges": np.linspace(0, 256, BINS + 1).tolist(),
                            **{name: histogram(values) for name, values in grey.items()},
                            "medians": {name: float(np.median(values)) for name, values in grey.items()}},
        "window": {"solved_for_hu": {"lung": LUNG_HU, "soft_tissue": SOFT_TISSUE_HU},
                   "low_hu": quantiles(low), "high_hu": quantiles(high),
                   "lung_grey": quantiles([r["lung_grey"] for r in rows]),
                   "soft_tissue_grey": quantiles([r["body_peak_grey"] for r in rows]),
                   "lesion_grey": quantiles([float(np.median(r["grey"]["lesion"])) for r in lesioned])},
        "lesions": {
            "share_of_slices_with_lesions": len(lesioned) / len(rows),
            "count_per_slice": quantiles([r["n_lesions"] for r in lesioned]),
            "count_histogram": np.bincount(np.minimum([r["n_lesions"] for r in lesioned], 20), minlength=21).tolist(),
            "lesion_share_of_lung": quantiles([r["lesion_lung_share"] for r in lesioned]),
            "component_share_of_lung": quantiles(np.concatenate([r["component_lung_share"] for r in lesioned])),
            "solidity": quantiles(np.concatenate([r["solidity"] for r in lesioned])),
            "relative_depth_lesion_over_lung": float(np.nanmean([r["lesion_depth"] for r in lesioned])
                                                     / np.mean([r["lung_depth"] for r in lesioned])),
            "share_in_outer_third_of_depth": float(np.nanmean([r["outer_third_share"] for r in lesioned])),
            "bilateral_share": float(np.mean([r["bilateral"] for r in lesioned])),
            "consolidation_share_of_lesion_pixels": consolidation,
            "share_of_slices_with_consolidation": float(np.mean([(c == 2).any() for c in classes])),
        },
        "vessels": {"bright_share_of_parenchyma": quantiles([r["bright_share"] for r in rows]),
                    "calibre_over_image_width": quantiles(np.concatenate([np.asarray(r["calibre_px"]) / r["shape"][1]
                                                                          for r in rows]))},
        "field_of_view": {"lung_share_of_image": quantiles([r["lung_share"] for r in rows]),
                          "body_share_of_image": quantiles([r["body_share"] for r in rows]),
                          "height_px": quantiles(heights), "width_px": quantiles(widths),
                          "height_over_width": quantiles(heights / widths)},
        "orientation": {
            "lungs_above_and_below_share": float(vertical.mean()),
            "mediastinum_left_share": float((offsets[vertical] < 0).mean()) if vertical.any() else 0.5,
            "note": "vertical: the two lungs' centres differ more in row than in column; mediastinum side: "
                    "which side of the image holds more non-lung tissue between the lungs (the heart: anterior)",
        },
    }


def compare_phantom(n: int, tables: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """(statistic, real, phantom) for ``n`` phantom views measured exactly as the real slices were."""
    from covidlib.phantom import make_phantom, semiseg_view

    rows = []
    for seed in range(n):
        case = make_phantom(seed, (12, 160, 160))
        z = int(np.argmax(case.lesion_mask.sum(axis=(1, 2))))
        view = semiseg_view(case, z, seed)
        rows.append(measure(view.image, view.lesion_mask > 0))
    lesioned = [r for r in rows if "n_lesions" in r]
    lesions, window, fov = tables["lesions"], tables["window"], tables["field_of_view"]
    return [
        ("lung grey (median)", window["lung_grey"]["q50"], float(np.median([r["lung_grey"] for r in rows]))),
        ("lesion grey (median)", window["lesion_grey"]["q50"],
         float(np.median([np.median(r["grey"]["lesion"]) for r in lesioned]))),
        ("lung share of image (median)", fov["lung_share_of_image"]["q50"], float(np.median([r["lung_share"] for r in rows]))),
        ("lesion share of lung (median)", lesions["lesion_share_of_lung"]["q50"],
         float(np.median([r["lesion_lung_share"] for r in lesioned]))),
        ("lesions per slice (median)", lesions["count_per_slice"]["q50"], float(np.median([r["n_lesions"] for r in lesioned]))),
        ("lesion depth / lung depth", lesions["relative_depth_lesion_over_lung"],
         float(np.nanmean([r["lesion_depth"] for r in lesioned]) / np.mean([r["lung_depth"] for r in lesioned]))),
        ("lesion pixels in outer third", lesions["share_in_outer_third_of_depth"],
         float(np.nanmean([r["outer_third_share"] for r in lesioned]))),
        ("bilateral share", lesions["bilateral_share"], float(np.mean([r["bilateral"] for r in lesioned]))),
        ("bright share of parenchyma (median)", tables["vessels"]["bright_share_of_parenchyma"]["q50"],
         float(np.median([r["bright_share"] for r in rows]))),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--compare-phantom", type=int, default=0, metavar="N",
                        help="measure N phantom views beside the committed tables instead of calibrating")
    args = parser.parse_args(argv)
    if args.compare_phantom > 0:
        from covidlib.phantom import load_calibration

        print(f"{'statistic':<38} {'real':>8} {'phantom':>8}")
        for name, real, phantom in compare_phantom(args.compare_phantom, load_calibration()):
            print(f"{name:<38} {real:8.3f} {phantom:8.3f}")
        return 0
    if not (args.data_root / "TrainingSet" / "LungInfection-Train" / "Doctor-label" / "GT").is_dir():
        print(f"COVID-SemiSeg not found under {args.data_root}: nothing to calibrate (the committed tables stay).")
        return 0
    tables = calibrate(args.data_root)
    atomic_write_text(args.out, json.dumps(tables, indent=1) + "\n")
    print(f"wrote {args.out} from {tables['provenance']['n_slices']} slices")
    print(json.dumps({k: tables[k] for k in ("window", "lesions", "field_of_view", "orientation", "vessels")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
