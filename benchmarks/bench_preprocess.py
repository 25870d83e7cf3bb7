"""Preprocessing a 512 x 512 x 300 chest CT: classical lung mask vs lungmask, then crop/resample/normalise.

Goal (issue 3): the classical route (lung mask + crop + 1 mm in-plane resampling + z-score in the
lungs) in at most 15 s on the book's 2-core CPU. The lungmask route runs the same steps with
lungmask's R231 U-Net (randomly initialised, full size: 31 M parameters) on the same volume,
for comparison. Wall time and this process's CPU time are both printed: the machine is shared,
so CPU time is the steadier number.

Usage: .venv/bin/python benchmarks/bench_preprocess.py [--shape 300 512 512] [--lungmask-slices N]
``--lungmask-slices N`` runs lungmask on the central N slices only and also prints the time
scaled to the whole volume (marked as extrapolated); by default it runs on all slices.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidlib.io import Volume
from covidlib.phantom import make_phantom
from covidlib.preprocess import (
    crop_to_mask,
    lung_mask,
    normalise_in_lungs,
    resample_in_plane,
)


def timed(function: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run_route(volume: Volume, method: str, modelpath: Path | None) -> dict[str, Any]:
    """Lung mask, crop (10 mm margin), resample image and mask to 1 mm, z-score: each step timed."""
    # each step's [wall, CPU] seconds: the starred targets below store a list
    steps: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask, *steps["lung mask"] = timed(lambda: lung_mask(volume, method, modelpath, device="cpu"))

    def crop_resample() -> tuple[np.ndarray, np.ndarray]:
        cropped, box = crop_to_mask(volume, mask, 10.0)
        image = resample_in_plane(cropped, 1.0).array
        lungs = resample_in_plane(cropped.with_array(mask[box]), 1.0, is_mask=True).array
        return image, lungs

    if mask.any():
        (image, lungs), *steps["crop + resample"] = timed(crop_resample)
        _, *steps["z-score"] = timed(lambda: normalise_in_lungs(image, lungs))
    return {"mask": mask, "steps": steps}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.sum(a & b) / total) if total else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 0.7, 0.7), metavar=("Z", "Y", "X"))
    parser.add_argument("--lungmask-slices", type=int, default=0, help="central slices for lungmask (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"torch threads: {torch.get_num_threads()}")
    phantom, wall, _ = timed(lambda: make_phantom(args.seed, tuple(args.shape), spacing=tuple(args.spacing)))
    volume = phantom.image
    print(f"phantom {volume.shape} (z, y, x) at {volume.spacing} mm generated in {wall:.1f} s (not counted)")

    rows = []
    classical = run_route(volume, "classical", None)
    rows.append(("classical", classical, 1.0, dice(classical["mask"] > 0, phantom.lung_mask > 0)))

    with tempfile.TemporaryDirectory() as folder:
        from lungmask.resunet import UNet

        torch.manual_seed(0)
        weights = Path(folder) / "random_r231.pth"
        model = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
        torch.save(model.state_dict(), weights)
        lm_volume, scale = volume, 1.0
        if 0 < args.lungmask_slices < volume.shape[0]:
            start = (volume.shape[0] - args.lungmask_slices) // 2
            sub = volume.array[start:start + args.lungmask_slices]
            lm_volume = Volume(sub, volume.spacing, volume.origin, volume.direction, volume.source)
            scale = volume.shape[0] / args.lungmask_slices
        rows.append(("lungmask (random R231)", run_route(lm_volume, "lungmask", weights), scale, float("nan")))

    print()
    print(f"{'route':<24} {'step':<16} {'wall s':>8} {'CPU s':>8}")
    for name, result, scale, _ in rows:
        total_wall = total_cpu = 0.0
        for step, (wall, cpu) in result["steps"].items():
            print(f"{name:<24} {step:<16} {wall:8.2f} {cpu:8.2f}")
            total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        print(f"{name:<24} {'TOTAL':<16} {total_wall:8.2f} {total_cpu:8.2f}")
        if scale != 1.0:
            mask_wall, mask_cpu = result["steps"]["lung mask"]
            print(f"{name:<24} {'mask x%.1f (extr.)' % scale:<16} {mask_wall * scale:8.2f} {mask_cpu * scale:8.2f}")
    print()
    print(f"classical lung mask Dice vs the phantom's exact mask: {rows[0][3]:.4f} "
          f"(right {dice(classical['mask'] == 1, phantom.lung_mask == 1):.4f}, "
          f"left {dice(classical['mask'] == 2, phantom.lung_mask == 2):.4f})")
    print("lungmask with random weights: its time is the real cost of the route; its mask is meaningless "
          "(trained R231 weights were not available offline)")
    wall = sum(w for w, _ in rows[0][1]["steps"].values())
    cpu = sum(c for _, c in rows[0][1]["steps"].values())
    print(f"goal: classical route <= 15 s -> wall {wall:.1f} s ({'met' if wall <= 15 else 'not met'}), "
          f"CPU {cpu:.1f} s ({'met' if cpu <= 15 else 'not met'}); wall >> CPU means the cores were shared")


if __name__ == "__main__":
    main()
