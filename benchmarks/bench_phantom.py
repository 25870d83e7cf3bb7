"""Phantom generation speed: make_phantom at 64x128x128 and 300x512x512, and its smooth random
fields against the usual way of making them (scipy.ndimage.gaussian_filter on white noise).

Goal (issue 2): a 128x128x64 case "well under a second", a 512x512x300 one "in seconds".
Also times :func:`covidlib.phantom.semiseg_view` (one slice in COVID-SemiSeg's look) on the small case.
Run by hand: ``.venv/bin/python benchmarks/bench_phantom.py [--repeats 3] [--skip-alternative-big] [--small-only]``.
Prints wall and CPU seconds (CPU time is the fairer number on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from typing import TypedDict

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # one core, like the library's users on a laptop

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from covidlib.phantom import _BODY_BOUNDS, _smooth_field, make_phantom, semiseg_view  # noqa: E402

class Case(TypedDict):
    """A volume to time: its (z, y, x) shape and voxel spacing in mm (``None``: the phantom draws one)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None


CASES: dict[str, Case] = {
    "64 x 128 x 128, drawn spacing": dict(shape=(64, 128, 128), spacing=None),
    "300 x 512 x 512, 1 x 0.7 x 0.7 mm": dict(shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7)),
}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-alternative-big", action="store_true", help="skip gaussian_filter at 512x512x300 (slow)")
    parser.add_argument("--small-only", action="store_true", help="only the 64 x 128 x 128 case")
    args = parser.parse_args()
    make_phantom(0, (8, 32, 32))  # warm-up: imports, first-call allocations

    rows = []
    for name, case in CASES.items():
        big = case["shape"][1] >= 512
        if big and args.small_only:
            continue
        repeats = 1 if big else args.repeats
        seeds = iter(range(100))
        wall, cpu = timed(lambda: make_phantom(next(seeds), case["shape"], spacing=case["spacing"]), repeats)
        rows.append((name, "make_phantom (whole case)", wall, cpu))
        if not big:
            phantom = make_phantom(0, case["shape"])
            z = int(phantom.lesion_mask.sum(axis=(1, 2)).argmax())
            wall, cpu = timed(lambda: semiseg_view(phantom, z, next(seeds)), repeats)
            rows.append((name, "semiseg_view (one slice, real-like)", wall, cpu))

        # One step against its alternative: a 12 mm-correlated random field over the whole grid.
        spacing = case["spacing"] or (3.0, 2.8, 2.8)
        z_mm, y_mm, x_mm = (np.arange(n) * s for n, s in zip(case["shape"], spacing))
        rng = np.random.default_rng(0)
        wall, cpu = timed(lambda: _smooth_field(rng, z_mm, y_mm, x_mm, 12.0, _BODY_BOUNDS), repeats)
        rows.append((name, "smooth field: coarse lattice + separable kernels (ours)", wall, cpu))
        if big and args.skip_alternative_big:
            rows.append((name, "smooth field: gaussian_filter on white noise (skipped)", float("nan"), float("nan")))
        else:
            sigma = [0.6 * 12.0 / s for s in spacing]
            wall, cpu = timed(lambda: ndimage.gaussian_filter(rng.standard_normal(case["shape"], dtype=np.float32), sigma),
                              repeats)
            rows.append((name, "smooth field: gaussian_filter on white noise (scipy)", wall, cpu))
        print(f"done: {name}", flush=True)

    width = max(len(r[1]) for r in rows)
    print(f"\n{'volume':<34} {'step':<{width}} {'wall s':>8} {'CPU s':>8}")
    for name, step, wall, cpu in rows:
        print(f"{name:<34} {step:<{width}} {wall:8.2f} {cpu:8.2f}")
    print(f"\npeak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
