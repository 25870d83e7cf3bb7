"""The path from the report's recipe to the book's: one change at a time, nested CV on COVID-SemiSeg.

Each path row adds one change to the row above; an alternative row applies its change to a named
row instead and is measured against it (a change tried there, kept or set aside). Every row is
nested 5-fold cross-validation of the 50 labelled slices (:func:`covidlib.crossval.run_nested_cv`:
the outer fold only scores) over the given seeds, and its paired difference to the row it changes
comes with a 95 % bootstrap CI over (fold, seed) units. Test-time augmentation needs no training:
its row scores the models of the row above with ``tta_`` metrics. The record goes to
``records/reference-covid-semiseg/ablation.json`` (committed; chapter 09 shows it).

Resumable: every (recipe, seed, fold) is cached under ``--runs``; run the same command again to
continue. The record is rewritten after each row with every row computed so far, each over the
seeds whose folds are all there (rows may differ: a change is measured on the (seed, fold) runs
both rows have). Processes given different ``--rows`` share the cache (on this 2-core CPU one
process at 2 threads finishes sooner than two side by side).

    .venv/bin/python benchmarks/ablation.py --seeds 0,1,2
    .venv/bin/python benchmarks/ablation.py --seeds 0 --rows 5,6     # only these rows
    .venv/bin/python benchmarks/ablation.py --seeds 1,2 --rows 4     # more seeds for one row
    .venv/bin/python benchmarks/ablation.py --quick --out /tmp/ablation   # the whole path in minutes
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from _nested_cv import begin, integers, nested_cv_parser, quick_recipe
from covidlib.crossval import run_nested_cv
from covidlib.datasets import get_dataset
from covidlib.inference import prepare_slices
from covidlib.recipe import Recipe
from covidlib.results import write_record
from covidlib.statistics import paired_bootstrap_ci


#: The report's recipe (section 5.1: Adam 2e-4, StepLR 0.8 every 25 epochs, early stop after 30
#: epochs without a better validation Dice, rotation, elastic, gamma and noise), at this CPU's
#: image size, width and 80 epochs; one row of the steps below is ``Recipe()``, the command line's defaults.
REPORT = Recipe(lr=2e-4, dihedral=False, tta=False, image_size=160, epochs=80, step_size=25, patience=30)


@dataclasses.dataclass(frozen=True)
class Step:
    """One row: ``change`` applied to the recipe of row ``base`` (``None``: the path row above).

    A path row has no ``base``; a row with a ``base`` is an alternative tried at that point of the
    path, measured against it, and the path goes on from the row above it.
    ``scored_with_tta``: score with test-time augmentation.
    """

    name: str
    change: dict
    scored_with_tta: bool = True
    base: str | None = None


TTA_ROW = "+ test-time augmentation (8 symmetries)"
STEPS: list[Step] = [
    Step("the report's recipe", {}, scored_with_tta=False),
    Step("+ learning rate 1e-3", {"lr": 1e-3}, scored_with_tta=False),
    Step("+ random turns and mirrors", {"dihedral": True}, scored_with_tta=False),
    Step(TTA_ROW, {"tta": True}),
    Step("+ 128 px input", {"image_size": 128}),
    Step("+ 300 epochs, no early stop", {"epochs": 300, "step_size": 75, "patience": 300}),
    Step("+ faster decay (× 0.75 every 30 epochs)", {"step_size": 30, "gamma": 0.75},
         base="+ 300 epochs, no early stop"),
    Step("+ 160 px input", {"image_size": 160}, base="+ 300 epochs, no early stop"),
    Step("+ 600 epochs (× 0.8 every 150)", {"epochs": 600, "step_size": 150, "patience": 600},
         base="+ 300 epochs, no early stop"),
]


#: The seeds a record looks for; a row holds each of them whose folds are all computed.
RECORD_SEEDS = tuple(range(10))


def per_unit(results: list[dict], metric: str) -> dict[tuple[int, int], float]:
    """``{(seed, fold): mean of metric over the fold's test slices}``."""
    return {(r["seed"], r["fold"]): float(np.mean([row[metric] for row in r["per_case"].values()])) for r in results}


def main() -> None:
    parser = nested_cv_parser(__doc__, runs="ablation", record="ablation.json", seeds="0,1,2")
    parser.add_argument("--rows", type=integers,
                        help="compute only these rows, in this order (e.g. 4,2); the record holds every "
                             "complete row, so processes given different rows can run side by side")
    args = parser.parse_args()
    runtime = begin(args)
    if runtime is None:
        return
    seeds = args.seeds
    dataset = get_dataset("covid-semiseg", args.data_root)
    recipe = quick_recipe(REPORT) if args.quick else REPORT
    recipes = build_recipes(recipe, quick=args.quick)
    if not args.quick and Recipe() not in recipes:
        raise SystemExit("no row is Recipe(), the defaults of 'train': update STEPS or Recipe")
    order = range(len(STEPS)) if args.rows is None else args.rows
    prepared_by_size: dict[int, object] = {}

    def results_of(index: int, row_seeds: Sequence[int], compute: bool) -> list[dict]:
        recipe = recipes[index]
        if recipe.image_size not in prepared_by_size:
            prepared_by_size[recipe.image_size] = prepare_slices(dataset, recipe.image_size)
        # TTA changes scoring only: every row trains with it on, so a TTA row reuses the row above's models
        return run_nested_cv(dataset, prepared_by_size[recipe.image_size], dataclasses.replace(recipe, tta=True),
                             args.runs, folds=args.folds, seeds=row_seeds, compute=compute,
                             progress=compute)

    for index in order:
        print(f"computing row {index}: {STEPS[index].name}", flush=True)
        results_of(index, seeds, compute=True)
        write_complete_rows(args, runtime, results_of, recipes)


#: What ``--quick`` makes of a change of these fields: every size 80 px, every longer schedule 3 epochs.
QUICK_CHANGES = {"image_size": 80, "epochs": 3}


def build_recipes(start: Recipe, quick: bool) -> list[Recipe]:
    """The recipe of each row of ``STEPS``, from ``start`` (quick: :data:`QUICK_CHANGES`).

    A path row builds on the path row above it (alternatives in between are skipped)."""
    recipes: list[Recipe] = []
    path_end = start
    for step in STEPS:
        change = {**step.change, **{name: value for name, value in QUICK_CHANGES.items() if quick and name in step.change}}
        recipe = dataclasses.replace(recipes[row_index(step.base)] if step.base else path_end, **change)
        recipes.append(recipe)
        if step.base is None:
            path_end = recipe
    return recipes


def row_index(name: str) -> int:
    """The index in ``STEPS`` of the row called ``name``."""
    return next(index for index, step in enumerate(STEPS) if step.name == name)


def complete_seeds(results: list[dict], folds: int) -> list[dict]:
    """The results of the seeds whose ``folds`` outer folds are all there."""
    counts = Counter(r["seed"] for r in results)
    return [r for r in results if counts[r["seed"]] == folds]


def write_complete_rows(args: argparse.Namespace, runtime: dict, results_of, recipes: list) -> None:
    """Write the record of every row with at least one seed whose folds are all stored, over such
    seeds (:data:`RECORD_SEEDS`); a path row's change is measured against the nearest such path row
    above it, an alternative's against its base, on the (seed, fold) runs both rows have."""
    rows, path_end, complete = [], None, {}
    for index, step in enumerate(STEPS):
        name, with_tta = step.name, step.scored_with_tta
        results = complete_seeds(results_of(index, RECORD_SEEDS, compute=False), args.folds)
        if not results:
            continue
        prefix = "tta_" if with_tta else ""
        units = {metric: per_unit(results, prefix + metric) for metric in ("dice", "infnet_mean_dice")}
        row = {"name": name, "recipe": dataclasses.asdict(recipes[index]), "scored_with_tta": with_tta,
               "base": step.base, "seeds": sorted({r["seed"] for r in results}),
               "dice_by_unit": [[seed, fold, value] for (seed, fold), value in units["dice"].items()],
               "infnet_mean_dice_by_unit": [[s, f, v] for (s, f), v in units["infnet_mean_dice"].items()],
               "dice_mean": float(np.mean(list(units["dice"].values()))),
               "dice_sd_over_units": float(np.std(list(units["dice"].values()), ddof=1)),
               "infnet_mean_dice_mean": float(np.mean(list(units["infnet_mean_dice"].values()))),
               "epochs_run": [r["epochs_run"] for r in results], "best_epoch": [r["best_epoch"] for r in results],
               "train_wall_seconds": float(sum(r["wall_seconds"] for r in results)),
               "train_cpu_seconds": float(sum(r["cpu_seconds"] for r in results))}
        against = step.base or path_end
        keys = sorted(set(units["dice"]) & set(complete.get(against, {}).get("dice", {})))
        if keys:
            ci = paired_bootstrap_ci([complete[against]["dice"][k] for k in keys], [units["dice"][k] for k in keys])
            row["dice_change_vs_previous"] = {**ci.as_dict(), "previous": against}
        rows.append(row)
        change = row.get("dice_change_vs_previous")
        print(f"{name:<45} Dice {row['dice_mean']:.3f} ± {row['dice_sd_over_units']:.3f}, "
              f"Inf-Net mean Dice {row['infnet_mean_dice_mean']:.3f}"
              + (f", change {change['mean_difference']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]"
                 if change else ""), flush=True)
        complete[name] = units
        if step.base is None:
            path_end = name
    if not rows:
        return
    seeds = sorted({seed for row in rows for seed in row["seeds"]})
    write_record(args.out, "ablation", parameters={"data_root": args.data_root, "seeds": seeds, "folds": args.folds,
                                                   "quick": args.quick},
                 numbers={"rows": rows, "planned": [step.name for step in STEPS]}, runtime=runtime)
    print(f"wrote {Path(args.out) / 'ablation.json'} ({len(rows)} of {len(STEPS)} rows complete)", flush=True)


if __name__ == "__main__":
    main()
