"""Nested cross-validation of a supervised recipe on COVID-SemiSeg's 50 labelled slices.

The outer test fold only scores; an inner validation split picks the epoch
(:mod:`covidlib.crossval`). Results are one JSON per (seed, fold) under ``--runs``; re-running
the same command continues where it stopped. Prints per-fold and mean ± sd Dice at 0.5, with
and without test-time augmentation, and Inf-Net's mean Dice when available.

    .venv/bin/python benchmarks/cv_nested.py --seeds 0 --image-size 224 --epochs 80
    .venv/bin/python benchmarks/cv_nested.py --quick          # a smoke run in about a minute
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from _nested_cv import QUICK, begin, integers, nested_cv_parser
from covidlib.crossval import fold_means, run_nested_cv
from covidlib.datasets import get_dataset
from covidlib.inference import prepare_slices
from covidlib.recipe import Recipe


def main() -> None:
    parser = nested_cv_parser(__doc__, runs="cv_nested", quick="tiny recipe: checks the whole path")
    parser.add_argument("--fold-indices", type=integers,
                        help="only these outer folds, e.g. 3,4 (processes given disjoint folds of one recipe "
                             "can share --runs side by side)")
    # each option's argparse type, by the type of its Recipe default (int where that is None)
    kinds: dict[type, Callable[[str], Any]] = {bool: lambda text: text.lower() in ("1", "true", "yes"), int: int,
                                               float: float, str: str}
    for field in dataclasses.fields(Recipe):
        kind = kinds.get(type(field.default), int)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=None)
    args = parser.parse_args()
    if begin(args) is None:
        return
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    if args.quick:
        overrides = {**QUICK, **overrides}
    recipe = Recipe(**overrides)
    dataset = get_dataset("covid-semiseg", args.data_root)
    prepared = prepare_slices(dataset, recipe.image_size)
    seeds = args.seeds
    started = time.perf_counter()
    results = run_nested_cv(dataset, prepared, recipe, args.runs, folds=args.folds, seeds=seeds,
                            fold_indices=args.fold_indices)
    print(recipe)
    metric_names = [m for m in ("dice", "tta_dice", "dice_at_val_threshold", "tta_dice_at_val_threshold",
                                "infnet_mean_dice", "tta_infnet_mean_dice") if m in results[0]["per_case"][results[0]["test"][0]]]
    for metric in metric_names:
        for seed, values in fold_means(results, metric).items():
            print(f"{metric:<26} seed {seed}: folds {' '.join(f'{v:.3f}' for v in values)}  "
                  f"mean {np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}")
    epochs = " ".join(f"{r['epochs_run']}({r['best_epoch']})" for r in results)
    minutes = sum(r["wall_seconds"] for r in results) / 60
    print(f"epochs run (best): {epochs}; training+scoring {minutes:.1f} min wall in total, "
          f"this call {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
