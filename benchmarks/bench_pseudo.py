"""Pseudo-labelling at COVID-SemiSeg scale: 1600 unlabelled slices x 32 patches vs 120 labelled patches.

Goal: the whole of :func:`covidlib.pseudo.pseudo_label` (sampling, cropping, encoder + global
average pooling, cosine top-2, the assignment rule) for 1600 slices x 32 patches of 68 x 68
pixels against a dictionary of 120 labelled patches in at most 2 minutes on this CPU.

Two ways are compared in the same run, each in its own process so that peak memory (the
process's maximum resident set size) is its own:

* ``streamed`` — the library: patch *locations* are sampled, then patches are cropped,
  encoded and matched chunk by chunk (memory = one chunk + O(N) results);
* ``all-in-memory`` — the straightforward version: crop every patch, encode them all, one
  N x M similarity matrix, ``argsort``.

Both run at two sizes of the unlabelled set; time and memory at 10x the larger size are
extrapolated linearly from the two measurements (printed as such). Images are seeded random
textures with a bright blob (352 x 352, Inf-Net's input size); the encoder is an untrained
:class:`~covidlib.models.UNet2d` of the given width (the features' values do not change the
cost). Wall time on a shared machine depends on the load, so the CPU time of the process is
printed too, and the load average at the start.

    .venv/bin/python benchmarks/bench_pseudo.py --base-width 8 --sizes 160 1600
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from covidlib.coarse import Box
from covidlib.models import UNet2d
from covidlib.pseudo import (PseudoLabelConfig, assign, build_dictionary, crop_patches, encode_patches, pseudo_label,
                             sample_patch_locations)
from covidlib.train import resolve_amp


def synthetic(n: int, size: int, seed: int) -> tuple[list[np.ndarray], list[Box]]:
    """``n`` z-scored (1, size, size) float32 images with a bright blob each, and boxes around the blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, boxes = [], []
    for _ in range(n):
        cy, cx, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [int(rng.integers(10, 40))]
        image = rng.normal(size=(size, size)).astype(np.float32)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 2.0
        images.append(image[None])
        boxes.append(Box(0, 1, max(0, cy - r), min(size, cy + r), max(0, cx - r), min(size, cx + r)))
    return images, boxes


def worker(method: str, n: int, base_width: int, size: int, amp_name: str, seed: int) -> dict:
    torch.manual_seed(seed)
    model = UNet2d(base_width=base_width, depth=4)
    amp = resolve_amp(amp_name, torch.device("cpu"))
    config = PseudoLabelConfig()
    labelled, label_boxes = synthetic(20, size, seed)
    masks = []
    for image, box in zip(labelled, label_boxes):
        mask = np.zeros(image.shape, np.uint8)
        mask[0, box.y0:box.y1, box.x0:box.x1] = 1
        masks.append(mask)
    dictionary = build_dictionary(model, labelled, masks, config, np.random.default_rng(seed), device="cpu", amp=amp)
    images, boxes = synthetic(n, size, seed + 1)
    wall, cpu = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(seed + 2)
    if method == "streamed":
        labels = pseudo_label(model, dictionary, images, boxes, config, rng, device="cpu", amp=amp, progress=False)
        accepted, patches = labels.num_accepted, len(labels.locations)
    else:
        locations = sample_patch_locations([im.shape for im in images], boxes, [config.patches_per_unlabelled] * n,
                                           patch_size=config.patch_size, max_margin=config.unlabelled_margin, rng=rng)
        features = encode_patches(model, crop_patches(images, locations, config.patch_size), config.batch_size, "cpu",
                                  amp=amp) - dictionary.center
        keys = dictionary.features - dictionary.center
        similarity = (features / np.linalg.norm(features, axis=1, keepdims=True)) @ \
            (keys / np.linalg.norm(keys, axis=1, keepdims=True)).T
        order = np.argsort(-similarity, axis=1)[:, :2]
        decision = assign(np.take_along_axis(similarity, order, 1), order, config.rule)
        accepted, patches = int(decision.accepted.sum()), len(locations)
    return {"method": method, "n": n, "patches": patches, "accepted": accepted,
            "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 1600], help="unlabelled slice counts")
    parser.add_argument("--methods", nargs="+", default=["streamed", "all-in-memory"])
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=352)
    parser.add_argument("--amp", default="auto", help="autocast: auto (bf16 where native), bf16, off")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.base_width, args.image_size, args.amp, args.seed)))
        return 0
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; UNet2d width "
          f"{args.base_width}, {args.threads} threads, amp={args.amp}, images {args.image_size} px, 68 px patches, "
          "dictionary 120")
    rows = []
    for n in sorted(args.sizes):
        for method in args.methods:
            command = [sys.executable, __file__, "--worker", method, str(n), "--base-width", str(args.base_width),
                       "--image-size", str(args.image_size), "--amp", args.amp, "--threads", str(args.threads),
                       "--seed", str(args.seed)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['method']:<14} {r['n']:>6} slices {r['patches']:>7} patches  wall {r['wall_s']:7.1f} s  "
                  f"CPU {r['cpu_s']:7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  accepted {r['accepted']}", flush=True)
    if len(set(r["n"] for r in rows)) >= 2:
        print("\nextrapolated linearly to 10x the largest size (not measured):")
        for method in args.methods:
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["n"])
            small, large = mine[0], mine[-1]
            target = 10 * large["n"]
            for key, unit in (("wall_s", "s wall"), ("cpu_s", "s CPU"), ("peak_rss_mb", "MB peak RSS")):
                slope = (large[key] - small[key]) / (large["n"] - small["n"])
                print(f"  {method:<14} {target:>6} slices: {large[key] + slope * (target - large['n']):9.0f} {unit} "
                      f"({slope * 1000:.2f} per 1000 slices)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
