"""How Dice grows with the number of labelled training slices: ``train``'s recipe on nested subsets.

For each (seed, outer fold) of the ablation's nested CV (:func:`covidlib.crossval.nested_folds`),
``train``'s recipe (:class:`covidlib.recipe.Recipe`) trains on the first ``n`` of a seeded shuffle
of the fold's training slices (each subset holds the smaller ones), picks its epoch on the same
inner validation slices and is scored on the same outer test fold. Every ``n`` takes the recipe's
number of optimizer steps: its epochs, learning-rate step and patience grow by (training slices) / n,
so a smaller set is not also a shorter training. ``n`` = all the fold's training slices is the
recipe's own nested CV, read from (or trained into) the ablation's cache ``--supervised-runs``.

Scores are Dice at 0.5 and Inf-Net's mean Dice, both with the recipe's test-time augmentation; each
``n``'s paired difference to all slices comes with a 95 % bootstrap CI over (seed, fold) units, and so
does the Dice a doubling of the slices adds (each unit's slope of Dice on log2 n, averaged).
The record goes to ``records/reference-covid-semiseg/learning_curve.json`` (committed; chapter 09
shows it).

Resumable across sessions: the record is rewritten after each (seed, fold, n) with every unit complete
so far (``numbers.units``: each (seed, fold, n)'s mean scores and its training's length), so a
committed partial record is where the next run continues (:func:`_nested_cv.stored_units`; units of
code changed since are kept when the first of them, computed again, reproduces exactly); a
training in progress resumes from its last epoch in ``--runs``.

    .venv/bin/python benchmarks/learning_curve.py --seeds 0
    .venv/bin/python benchmarks/learning_curve.py --quick --out /tmp/curve   # the whole path in minutes
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from _nested_cv import (METRICS, integers, mean_scores, nested_cv_parser, open_data, record_path, stored_units,
                        write_units_record)
from covidlib.crossval import Fold, nested_folds, run_nested_cv, score_cases, train_supervised
from covidlib.datasets import Dataset
from covidlib.errors import InvalidInputError
from covidlib.fingerprint import settings_key
from covidlib.inference import PreparedSlices
from covidlib.recipe import Recipe
from covidlib.statistics import paired_bootstrap_ci

def training_subset(train_ids: Sequence[str], n: int, seed: int, fold: int) -> list[str]:
    """The first ``n`` of a shuffle of ``train_ids`` seeded by (seed, fold): a smaller ``n`` gives a
    subset of a larger one's."""
    if not 1 <= n <= len(train_ids):
        raise InvalidInputError(f"n must lie in [1, {len(train_ids)}], got {n}")
    order = np.random.default_rng([seed, fold]).permutation(sorted(train_ids))
    return sorted(order[:n].tolist())


def scaled_recipe(recipe: Recipe, n: int, full: int) -> Recipe:
    """``recipe`` for ``n`` of ``full`` training slices, taking as many optimizer steps (to within an
    epoch): epochs, learning-rate step and patience times ``full / n``, rounded."""
    factor = full / n
    return dataclasses.replace(recipe, epochs=round(recipe.epochs * factor),
                               step_size=round(recipe.step_size * factor), patience=round(recipe.patience * factor))


def run_unit(dataset: Dataset, prepared: PreparedSlices, recipe: Recipe, fold: Fold, seed: int, n: int, folder: Path) -> dict:
    """One (seed, fold, n): train on ``n`` of the fold's training slices, score its test fold."""
    subset = training_subset(fold.train, n, seed, fold.index)
    scaled = scaled_recipe(recipe, n, len(fold.train))
    started = time.perf_counter()
    trainer = train_supervised(prepared, subset, fold.val, scaled, seed=seed,
                               out_dir=folder / f"seed{seed}_fold{fold.index}_n{n}", resume=True, progress=True)
    return {"seed": seed, "fold": fold.index, "n": n, "best_epoch": trainer.best_epoch,
            "epochs_run": len(trainer.history), "wall_seconds": time.perf_counter() - started,
            "scores": mean_scores(score_cases(trainer.model, dataset, fold.test, scaled, trainer.device))}


def all_slices_unit(result: dict) -> dict:
    """A unit of the recipe's own nested CV (:func:`covidlib.crossval.run_nested_cv`'s result) as the
    curve's point at all of the fold's training slices."""
    return {"seed": result["seed"], "fold": result["fold"], "n": len(result["train"]),
            "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
            "wall_seconds": result["wall_seconds"], "scores": mean_scores(result["per_case"])}


def summarise(units: list[dict]) -> dict:
    """Rows per ``n`` (ascending): mean ± sd over (seed, fold) units of each metric, and the paired
    difference to the largest ``n`` on the units both have. ``units``: (seed, fold, n) results."""
    by_unit: dict[int, dict[tuple[int, int], dict]] = {}
    for unit in units:
        by_unit.setdefault(unit["n"], {})[unit["seed"], unit["fold"]] = unit
    full = max(by_unit)
    rows = []
    for n in sorted(by_unit):
        at_n = by_unit[n]
        row = {"n": n, "units": [list(key) for key in sorted(at_n)]}
        for metric in METRICS:
            values = [at_n[key]["scores"][metric] for key in sorted(at_n)]
            row[f"{metric}_by_unit"] = values
            row[f"{metric}_mean"] = float(np.mean(values))
            row[f"{metric}_sd_over_units"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        shared = sorted(set(at_n) & set(by_unit[full]))
        if n != full and len(shared) > 1:
            row["tta_dice_change_vs_all"] = paired_bootstrap_ci(
                [by_unit[full][key]["scores"]["tta_dice"] for key in shared],
                [at_n[key]["scores"]["tta_dice"] for key in shared]).as_dict()
        rows.append(row)
    return {"rows": rows, "all_slices": full, "per_doubling": per_doubling(by_unit)}


def per_doubling(by_unit: dict[int, dict[tuple[int, int], dict]]) -> dict | None:
    """How much TTA Dice one doubling of the training slices adds: each (seed, fold) unit present at
    every ``n`` gets the least-squares slope of its Dice on log2(n); the mean slope comes with a 95 %
    bootstrap CI over units. ``None`` with fewer than two sizes or two such units."""
    sizes = sorted(by_unit)
    units = sorted(set.intersection(*(set(by_unit[n]) for n in sizes))) if sizes else []
    if len(sizes) < 2 or len(units) < 2:
        return None
    slopes = [float(np.polyfit(np.log2(sizes), [by_unit[n][key]["scores"]["tta_dice"] for n in sizes], 1)[0])
              for key in units]
    # a CI of the mean slope: the paired difference of the slopes from a flat curve
    return {**paired_bootstrap_ci(np.zeros(len(slopes)), slopes).as_dict(), "slopes": slopes,
            "units": [list(key) for key in units], "sizes": sizes}


def main() -> None:
    parser = nested_cv_parser(__doc__, runs="learning_curve", record="learning_curve",
                              supervised_runs="the all-slices point is read or trained")
    parser.add_argument("--sizes", type=integers, default="8,16,24", help="training slices per fold, below all of them")
    args = parser.parse_args()
    if (opened := open_data(args, Recipe())) is None:
        return
    runtime, recipe, dataset, prepared = opened
    folder = Path(args.runs) / f"curve-{settings_key([dataclasses.asdict(recipe), args.folds])}"
    parameters = {"data_root": args.data_root, "seeds": args.seeds, "folds": args.folds, "sizes": args.sizes,
                  "recipe": dataclasses.asdict(recipe), "quick": args.quick}
    record = record_path(args)

    def compute_unit(unit: tuple[int, int, int]) -> dict:
        seed, index, n = unit
        fold = nested_folds(sorted(prepared.labelled), args.folds, seed)[index]
        if n < len(fold.train):
            return run_unit(dataset, prepared, recipe, fold, seed, n, folder)
        [everything] = run_nested_cv(dataset, prepared, recipe, args.supervised_runs, folds=args.folds,
                                     seeds=[seed], fold_indices=[index], progress=False)
        return all_slices_unit(everything)

    units = stored_units(record, parameters, runtime, key=("seed", "fold", "n"), recheck=compute_unit,
                         restart=args.restart)
    folds = [(seed, fold) for seed in args.seeds for fold in nested_folds(sorted(prepared.labelled), args.folds, seed)]
    planned = [(seed, fold.index, n) for seed, fold in folds for n in [*args.sizes, len(fold.train)]]
    print(f"{sum(unit in units for unit in planned)} of {len(planned)} units stored in {record}", flush=True)
    for seed, fold in folds:
        if max(args.sizes) >= len(fold.train):
            raise SystemExit(f"--sizes must stay below the {len(fold.train)} training slices of a fold")
        missing = [n for n in [*args.sizes, len(fold.train)] if (seed, fold.index, n) not in units]
        if not missing:
            continue
        for n in missing:
            units[seed, fold.index, n] = compute_unit((seed, fold.index, n))
            summary = write_units_record(record, parameters=parameters, runtime=runtime,
                                         units=units, planned=planned, summarise=summarise)
            for row in summary["rows"]:
                change = row.get("tta_dice_change_vs_all")
                print(f"n={row['n']:>3}  TTA Dice {row['tta_dice_mean']:.3f}"
                      + (f", vs all {change['mean_difference']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]"
                         if change else ""), flush=True)
    if all(unit in units for unit in planned):
        print(f"every unit is stored: {record} holds all {len(planned)}", flush=True)


if __name__ == "__main__":
    main()
