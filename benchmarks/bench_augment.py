"""Benchmark: covidlib.augment (torch grid_sample) against the same transforms done with scipy.ndimage.

256 x 256 float32 slices with an int64 mask, one CPU thread. For rotation and the elastic
deformation the reference is scipy: ``ndimage.rotate(order=1)`` / ``ndimage.rotate(order=0)``
and ``ndimage.map_coordinates`` on a field upsampled with ``ndimage.zoom(order=3)``. The last
row is a whole SliceDataset item (pad/crop + the four transforms + tensor conversion).
Goal: augmentation never limits training: a slice in under 5 ms (a U-Net training step on a
batch of 8 at 256 x 256 takes hundreds of ms on this CPU), and not slower than scipy.

Run: .venv/bin/python benchmarks/bench_augment.py [--size 256] [--repeats 50]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.ndimage as ndi
import torch

from covidlib.augment import RandomElasticDeformation, Rotation, default_augmentation
from covidlib.data import SliceDataset


def best_ms(function: Callable[[], Any], repeats: int) -> float:
    """Best (minimum) wall time of ``function()`` in ms over ``repeats`` runs, after one warm-up.

    The minimum, not the median: this machine is shared, and the minimum is the least disturbed
    estimate of what the code itself costs.
    """
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.min(times))


def scipy_elastic(image: np.ndarray, mask: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same elastic warp with scipy: cubic upsampling of the control grid, then map_coordinates."""
    height, width = image.shape
    field = np.stack([ndi.zoom(c, (height / c.shape[0], width / c.shape[1]), order=3, grid_mode=False) for c in control])
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([rows + field[0], cols + field[1]])
    return (ndi.map_coordinates(image, coords, order=1, mode="grid-constant"),
            ndi.map_coordinates(mask, coords, order=0, mode="grid-constant"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((args.size, args.size)).astype(np.float32)
    mask = (rng.random((args.size, args.size)) > 0.8).astype(np.int64)
    rotation = Rotation(2.3)
    elastic = RandomElasticDeformation().sample(0)
    chain = default_augmentation(p=1.0).sample(0)
    volume = rng.standard_normal((8, args.size - 40, args.size - 20)).astype(np.float32)
    lesions = (rng.random(volume.shape) > 0.9).astype(np.uint8)
    dataset = SliceDataset([(volume, lesions)], output_size=args.size, transform=default_augmentation(p=1.0))

    rows = [
        ("rotation (image + mask)", best_ms(lambda: rotation(image, mask), args.repeats),
         best_ms(lambda: (ndi.rotate(image, 2.3, reshape=False, order=1, mode="grid-constant"),
                          ndi.rotate(mask, 2.3, reshape=False, order=0, mode="grid-constant")), args.repeats)),
        ("elastic (image + mask)", best_ms(lambda: elastic(image, mask), args.repeats),
         best_ms(lambda: scipy_elastic(image, mask, elastic.control_displacements), args.repeats)),
        ("all four transforms", best_ms(lambda: chain(image, mask), args.repeats), float("nan")),
        ("SliceDataset item", best_ms(lambda: dataset[3], args.repeats), float("nan")),
    ]
    print(f"{args.size} x {args.size} slice, 1 thread, best of {args.repeats}")
    print(f"{'operation':<26}{'covidlib ms':>12}{'scipy ms':>10}{'speed-up':>10}")
    for name, ours, reference in rows:
        speedup = reference / ours if np.isfinite(reference) else float("nan")
        print(f"{name:<26}{ours:>12.2f}{reference:>10.2f}{speedup:>10.1f}")


if __name__ == "__main__":
    main()
