"""The path from the report's recipe to the book's: one change at a time, nested CV on COVID-SemiSeg.

Each path row adds one change to the row above; an alternative row applies its change to a named
row instead and is measured against it (a change tried there, kept or set aside). Every row is
nested 5-fold cross-validation of the 50 labelled slices (:func:`covidlib.crossval.run_nested_cv`:
the outer fold only scores) over the given seeds, and its paired difference to the row it changes
comes with a 95 % bootstrap CI over (fold, seed) units. Test-time augmentation and a threshold chosen
on the inner validation slices need no training: their rows score the models of the row they change
with ``tta_`` metrics and at that threshold (a unit stored before that score existed is computed again
for such a row). The record goes to
``records/reference-covid-semiseg/ablation.json`` (committed; chapter 09 shows it).

Resumable across machines: the record keeps every (seed, fold) run of each row's training recipe
(``numbers.runs``, with the code that trained it) and is rewritten after each, so a committed
partial record is where the next machine continues; a training in progress resumes from its last
epoch in ``--runs``. A run trained by code that has changed since is rechecked first, whichever rows
are asked for: one of its units is retrained and, when the numbers reproduce to the last bit, the
run's units stand (a new option, off by default, costs a unit a run); otherwise they are computed
afresh, and until then the row is left out. A row shows the seeds whose folds are all there (rows
may differ: a change is measured on the (seed, fold) runs both rows have). A record made at other
numerics (threads, bfloat16, processor) is never continued or overwritten: its rows would mix last
bits (one processor's bfloat16 does not reproduce another's). Another kind of machine keeps a record of
its own, ``--record ablation-<machine>`` (e.g. ``ablation-zen4.json``, in the same folder): chapter 09 shows
each, and where two machines trained the same row, how far their units differ. ``--summarise-only`` trains nothing
and may run anywhere: it rewrites the rows from the stored runs (after a change to ``STEPS``, or to
code the runs do not depend on, such as a new default in ``covidlib.recipe``). Processes given
different ``--rows`` may share the record and the cache, each keeping the units the other wrote (on
this 2-core CPU one process at 2 threads finishes sooner than two side by side).

    .venv/bin/python benchmarks/ablation.py --seeds 0,1,2
    .venv/bin/python benchmarks/ablation.py --seeds 0 --rows 5,6     # only these rows
    .venv/bin/python benchmarks/ablation.py --seeds 1,2 --rows 4     # more seeds for one row
    .venv/bin/python benchmarks/ablation.py --quick --out /tmp/ablation   # the whole path in minutes
    .venv/bin/python benchmarks/ablation.py --summarise-only    # rows rewritten from the stored runs
    .venv/bin/python benchmarks/ablation.py --seeds 0 --rows 9,17 --record ablation-zen4   # a Zen 4's own record
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from _nested_cv import begin, budget_changes, comparable_record, integers, mean_scores, nested_cv_parser, quick_recipe, record_path
from covidlib.crossval import run_key, run_nested_cv, scored_metric
from covidlib.datasets import get_dataset
from covidlib.fingerprint import changed_sources, data_fingerprint
from covidlib.inference import PreparedSlices, prepare_slices
from covidlib.recipe import Recipe
from covidlib.records import read_reference
from covidlib.results import write_record
from covidlib.statistics import paired_bootstrap_ci


#: The report's recipe (section 5.1: Adam 2e-4, StepLR 0.8 every 25 epochs, early stop after 30
#: epochs without a better validation Dice, rotation, elastic, gamma and noise), at this CPU's
#: image size, width and 80 epochs; the path of the steps below ends at ``Recipe()``, the command line's defaults.
REPORT = Recipe(lr=2e-4, dihedral=False, tta=False, image_size=160, epochs=80, step_size=25, patience=30)


@dataclasses.dataclass(frozen=True)
class Step:
    """One row: ``change`` applied to the recipe of row ``base`` (``None``: the path row above).

    A path row has no ``base``; a row with a ``base`` is an alternative tried at that point of the
    path, measured against it, and the path goes on from the row above it. A row is scored as its
    recipe says (:func:`covidlib.crossval.scored_metric`: with TTA, at a chosen threshold).
    """

    name: str
    change: dict
    base: str | None = None


TTA_ROW = "+ test-time augmentation (8 symmetries)"
STEPS: list[Step] = [
    Step("the report's recipe", {}),
    Step("+ learning rate 1e-3", {"lr": 1e-3}),
    Step("+ random turns and mirrors", {"dihedral": True}),
    Step(TTA_ROW, {"tta": True}),
    Step("+ 128 px input", {"image_size": 128}),
    Step("+ 300 epochs, no early stop", {"epochs": 300, "step_size": 75, "patience": 300}),
    Step("+ faster decay (× 0.75 every 30 epochs)", {"step_size": 30, "gamma": 0.75},
         base="+ 300 epochs, no early stop"),
    Step("+ 600 epochs (× 0.8 every 150)", {"epochs": 600, "step_size": 150, "patience": 600}),
    Step("+ threshold chosen on the inner split", {"select_threshold": True}, base="+ 600 epochs (× 0.8 every 150)"),
    Step("+ 160 px input", {"image_size": 160}),
    Step("+ moving average of the weights (decay 0.99)", {"ema_decay": 0.99}, base="+ 160 px input"),
    Step("+ threshold chosen on the inner split (at 160 px)", {"select_threshold": True}, base="+ 160 px input"),
    # candidates toward 0.76 that keep train's 30 min on a bfloat16 CPU (AMX Xeon: 600 epochs at 160 px took 16.7)
    Step("+ 900 epochs (× 0.8 every 225)", {"epochs": 900, "step_size": 225, "patience": 900}, base="+ 160 px input"),
    Step("+ batch size 4 (twice the steps)", {"batch_size": 4}, base="+ 160 px input"),
    # the trend of 128 -> 160 px one size further (the labelled slices are 221-487 px on their longer side,
    # median 398); 1.44x the pixels of 160 px a step
    Step("+ 192 px input", {"image_size": 192}, base="+ 160 px input"),
    # the report's attention gates (chapter 04) at the final recipe; a step costs about 10 % more
    # (bench_unet at 160 px: 12.6 against 14.0 img/s on a Zen 3 in float32)
    Step("+ attention gates (the report's attention U-Net)", {"model": "attention-unet"}, base="+ 160 px input"),
    # scale augmentation, as nnU-Net's (not the report's): each training slice scaled by 0.8 to 1.25
    Step("+ random zoom (× 0.8 to 1.25)", {"zoom": 1.25}, base="+ 160 px input"),
    # finer detail at the cost a step of 160 px (nnU-Net's patch-based training): train on random 160 px
    # windows of 256 px slices, validate and predict on whole 256 px slices
    Step("+ 256 px slices, random 160 px windows", {"image_size": 256, "crop_size": 160}, base="+ 160 px input"),
    # a uniform window holds only part of a slice's infection, and some hold none (chapter 03's table
    # counts both); nnU-Net draws a third of its patches around foreground
    Step("+ a third of the windows around infection", {"crop_foreground": 0.33},
         base="+ 256 px slices, random 160 px windows"),
    # the training budget of an ensemble of two networks (benchmarks/seed_ensemble.py) spent on one:
    # the control an ensemble's gain must beat
    Step("+ 1200 epochs (× 0.8 every 300): two networks' budget", budget_changes(Recipe(), 2),
         base="+ 160 px input"),
]


#: The scores a unit keeps: Dice at 0.5 and Inf-Net's mean Dice, without and with TTA, and Dice with
#: TTA at the threshold chosen on the inner validation slices (whose value the unit keeps too).
UNIT_SCORES = ("dice", "infnet_mean_dice", "tta_dice", "tta_infnet_mean_dice", "tta_dice_at_val_threshold")


def row_scores(recipe: Recipe) -> dict[str, str]:
    """The unit scores a row of ``recipe`` reports as its Dice and its Inf-Net mean Dice."""
    return {"dice": scored_metric(recipe), "infnet_mean_dice": ("tta_" if recipe.tta else "") + "infnet_mean_dice"}


def has_scores(unit: dict, names: Iterable[str]) -> bool:
    """Whether ``unit`` holds every score of ``names`` (a unit stored before a score existed lacks it)."""
    return set(names) <= set(unit["scores"])


def main() -> None:
    parser = nested_cv_parser(__doc__, runs="ablation", record="ablation", seeds="0,1,2")
    parser.add_argument("--rows", type=integers,
                        help="compute only these rows, in this order (e.g. 4,2); the record keeps every "
                             "row computed before, and those another process adds")
    parser.add_argument("--summarise-only", action="store_true",
                        help="train nothing: rewrite the record's rows from its stored runs (after a change to "
                             "STEPS or to code its runs do not depend on), on any processor")
    args = parser.parse_args()
    runtime = begin(args)
    if runtime is None:
        return
    dataset = get_dataset("covid-semiseg", args.data_root)
    recipes = build_recipes(quick_recipe(REPORT) if args.quick else REPORT, quick=args.quick)
    if not args.quick and path_recipes(recipes)[-1] != Recipe():
        raise SystemExit("the path of STEPS does not end at Recipe(), the defaults of 'train': update STEPS or Recipe")
    keys = [run_key(training_recipe(recipe), dataset.name, args.folds) for recipe in recipes]
    parameters = {"data_root": args.data_root, "folds": args.folds, "quick": args.quick}
    if args.summarise_only:
        summarise_only(args, parameters, runtime, keys, recipes)
        return
    runs = stored_runs(record_path(args), parameters, runtime, restart=args.restart)
    prepared_by_size: dict[int, PreparedSlices] = {}

    def train_unit(index: int, seed: int, fold: int) -> dict:
        recipe = training_recipe(recipes[index])
        if recipe.image_size not in prepared_by_size:
            prepared_by_size[recipe.image_size] = prepare_slices(dataset, recipe.image_size)
        result, = run_nested_cv(dataset, prepared_by_size[recipe.image_size], recipe, args.runs, folds=args.folds,
                                seeds=[seed], fold_indices=[fold])
        return result

    for index, key in enumerate(keys):
        if runs.get(key, new_run())["units"] and (changed := changed_sources(runs[key]["code"])):
            runs[key] = recheck(runs[key], changed, functools.partial(train_unit, index))
            write_rows(args, runtime, runs, keys, recipes)
    for index in range(len(STEPS)) if args.rows is None else args.rows:
        run = runs.setdefault(keys[index], new_run())
        needed = row_scores(recipes[index]).values()
        done = {(unit["seed"], unit["fold"]) for unit in run["units"] if has_scores(unit, needed)}
        todo = [(seed, fold) for seed in args.seeds for fold in range(args.folds) if (seed, fold) not in done]
        print(f"row {index}: {STEPS[index].name}: {len(todo)} of {len(args.seeds) * args.folds} runs to compute",
              flush=True)
        for seed, fold in todo:
            add_result(run, train_unit(index, seed, fold))
            # another process may have added units to the record since: keep them
            merge_runs(runs, stored_runs(record_path(args), parameters, runtime))
            write_rows(args, runtime, runs, keys, recipes)
    write_rows(args, runtime, runs, keys, recipes)


def training_recipe(recipe: Recipe) -> Recipe:
    """What a row trains: TTA and the threshold change scoring only (every unit holds the scores
    of both settings), so every row trains with TTA on and without a chosen threshold, and a TTA or
    threshold row reuses the models of the row it changes."""
    return dataclasses.replace(recipe, tta=True, select_threshold=False)


def new_run() -> dict:
    """A run (the units of one training recipe): the code that trained it, its (seed, fold) units, and
    the seconds they took (each entry the total of the units it names)."""
    return {"code": {}, "units": [], "seconds": []}


def add_result(run: dict, result: dict) -> None:
    """Add one (seed, fold) result of :func:`covidlib.crossval.run_nested_cv` to ``run`` as a unit:
    each of :data:`UNIT_SCORES` averaged over the fold's test slices, the threshold chosen on the
    inner validation slices, the epochs and the seconds. It replaces a unit of the same (seed, fold)
    stored without some of these scores, and the seconds that named that unit."""
    unit = [result["seed"], result["fold"]]
    run["code"] = result["code"]
    run["units"] = [old for old in run["units"] if [old["seed"], old["fold"]] != unit]
    run["seconds"] = [entry for entry in run["seconds"] if unit not in entry["units"]]
    run["units"].append({"seed": result["seed"], "fold": result["fold"],
                         "scores": mean_scores(result["per_case"], UNIT_SCORES), "val_threshold": result["val_threshold"],
                         "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"]})
    run["seconds"].append({"units": [unit], "wall_seconds": result["wall_seconds"], "cpu_seconds": result["cpu_seconds"]})


def recheck(run: dict, changed: list[str], retrain: Callable[[int, int], dict]) -> dict:
    """``run``, trained by code that has changed since (``changed``: its files), kept when the current
    code reproduces its first (seed, fold) unit exactly (``retrain(seed, fold)``: every score the unit
    holds, epochs run and best epoch, to the last bit): its units then stand under the current code, the check noted in
    ``checks``. Otherwise a new run holding the retrained unit. Training is deterministic on one kind of
    CPU, so a change that leaves the numbers alone (a new option, off by default) costs one unit a
    run instead of all of them."""
    first = min(run["units"], key=lambda unit: (unit["seed"], unit["fold"]))
    fresh = new_run()
    add_result(fresh, retrain(first["seed"], first["fold"]))
    again = fresh["units"][0]
    # a stored unit may hold only the scores its rows show (units carried over from an older record)
    if (all(again[name] == first[name] for name in ("epochs_run", "best_epoch"))
            and all(again["scores"][name] == value for name, value in first["scores"].items())):
        print(f"the current code reproduces unit ({first['seed']}, {first['fold']}) exactly: keeping the run's "
              f"{len(run['units'])} units", flush=True)
        # the retrained unit may hold scores the stored one lacks
        units = [again if unit is first else unit for unit in run["units"]]
        return {**run, "code": fresh["code"], "units": units,
                "checks": [*run.get("checks", []), {"unit": [first["seed"], first["fold"]], "changed": changed}]}
    print(f"the current code does not reproduce unit ({first['seed']}, {first['fold']}): "
          f"{first['scores']} then, {again['scores']} now; its units are computed afresh", flush=True)
    return fresh


def merge_runs(runs: dict[str, dict], other: dict[str, dict]) -> None:
    """Add to ``runs`` the units of ``other`` that it lacks, with their seconds, where both runs have the
    same code; where they differ, the run of the current code is kept whole."""
    for key, run in other.items():
        mine = runs.setdefault(key, new_run())
        if run["code"] != mine["code"] and mine["units"]:
            if changed_sources(mine["code"]) and not changed_sources(run["code"]):
                runs[key] = run
            continue
        mine["code"] = run["code"]
        have = {(unit["seed"], unit["fold"]) for unit in mine["units"]}
        mine["units"] += [unit for unit in run["units"] if (unit["seed"], unit["fold"]) not in have]
        mine["seconds"] += [entry for entry in run["seconds"]
                            if not {tuple(unit) for unit in entry["units"]} & have and entry not in mine["seconds"]]


def stored_runs(record: Path, parameters: dict, runtime: dict, restart: bool = False) -> dict[str, dict]:
    """``{run key: run}`` of the earlier ``record`` when it holds: same parameters and data
    (:func:`_nested_cv.comparable_record`, which refuses a record made at other numerics, and one of other
    parameters or data unless ``restart``); runs of changed training code are among them, for :func:`recheck`."""
    comparable = comparable_record(record, parameters, runtime, restart=restart)
    runs = comparable.numbers.get("runs", {}) if comparable else {}
    for key, run in runs.items():
        if changed := changed_sources(run["code"]):
            print(f"{record}: the runs {key} were trained by code changed since ({', '.join(changed)}): "
                  "one unit is retrained to check them", flush=True)
    return runs


def summarise_only(args: argparse.Namespace, parameters: dict, runtime: dict, keys: list[str],
                   recipes: list[Recipe]) -> None:
    """Rewrite the record's rows from its stored runs, training nothing, on any processor: no number
    of a row depends on the machine that summarises, so the record keeps the numerics of the one that
    trained its runs (``runtime``: only this invocation's start, for its timing). Refused when the
    parameters or the data differ, or when a run of ``keys`` was trained by code changed since (a
    recheck trains one of its units: a machine like the record's must run it)."""
    record = record_path(args)
    if not record.exists():
        raise SystemExit(f"{record}: no record to summarise")
    earlier = read_reference(record).record
    differ = [name for name, value in parameters.items()
              if name != "data_root" and earlier["parameters"].get(name) != value]
    if differ or earlier["fingerprint"]["data"] != data_fingerprint(args.data_root):
        raise SystemExit(f"{record} was computed with other " + (", ".join(differ) if differ else "data")
                         + ": its runs cannot be summarised for these")
    runs = earlier["numbers"]["runs"]
    if stale := [key for key in keys if key in runs and changed_sources(runs[key]["code"])]:
        raise SystemExit(f"{record}: the runs {', '.join(stale)} were trained by code changed since; rechecking them "
                         f"trains a unit each: run without --summarise-only on a machine like "
                         f"{earlier['runtime'].get('device_name', '?')}")
    started = {name: runtime[name] for name in ("started_unix", "started_cpu_seconds") if name in runtime}
    write_rows(args, {**earlier["runtime"], **started}, runs, keys, recipes)


#: What ``--quick`` makes of a change of these fields: every size 80 px, every longer schedule 3 epochs.
QUICK_CHANGES = {"image_size": 80, "epochs": 3, "crop_size": 48}


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


def path_recipes(recipes: list[Recipe]) -> list[Recipe]:
    """The recipes of the path rows of ``STEPS`` (``recipes``: one a row), alternatives left out."""
    return [recipe for step, recipe in zip(STEPS, recipes) if step.base is None]


def row_index(name: str) -> int:
    """The index in ``STEPS`` of the row called ``name``."""
    return next(index for index, step in enumerate(STEPS) if step.name == name)


def complete_units(units: list[dict], folds: int) -> list[dict]:
    """The units of the seeds whose ``folds`` outer folds are all there, in (seed, fold) order."""
    counts = Counter(unit["seed"] for unit in units)
    return sorted((unit for unit in units if counts[unit["seed"]] == folds), key=lambda unit: (unit["seed"], unit["fold"]))


def write_rows(args: argparse.Namespace, runtime: dict, runs: dict[str, dict], keys: list[str],
               recipes: list[Recipe]) -> None:
    """Write the record: the runs, and a row for each step whose run (``runs[keys[index]]``) has a seed
    with all its folds, over such seeds; a path row's change is measured against the nearest such path
    row above it, an alternative's against its base, on the (seed, fold) units both rows have."""
    rows: list[dict[str, Any]] = []
    path_end: str | None = None
    # each complete row's Dice by (seed, fold) unit, by row name; looked up with None before the first path row
    complete: dict[str | None, dict[tuple[int, int], float]] = {}
    for index, step in enumerate(STEPS):
        run = runs.get(keys[index], new_run())
        names = row_scores(recipes[index])
        units = [] if changed_sources(run["code"]) else complete_units(
            [unit for unit in run["units"] if has_scores(unit, names.values())], args.folds)
        if not units:
            continue
        scores = {metric: {(unit["seed"], unit["fold"]): unit["scores"][name] for unit in units}
                  for metric, name in names.items()}
        timed = [entry for entry in run["seconds"] if {tuple(unit) for unit in entry["units"]} <= set(scores["dice"])]
        row: dict[str, Any] = {"name": step.name, "recipe": dataclasses.asdict(recipes[index]), "run": keys[index],
                               "scored_with_tta": recipes[index].tta, "base": step.base,
                               "seeds": sorted({unit["seed"] for unit in units}),
                               "dice_by_unit": [[seed, fold, value] for (seed, fold), value in scores["dice"].items()],
                               "infnet_mean_dice_by_unit": [[s, f, v] for (s, f), v in scores["infnet_mean_dice"].items()],
                               "dice_mean": float(np.mean(list(scores["dice"].values()))),
                               "dice_sd_over_units": float(np.std(list(scores["dice"].values()), ddof=1)),
                               "infnet_mean_dice_mean": float(np.mean(list(scores["infnet_mean_dice"].values()))),
                               "epochs_run": [unit["epochs_run"] for unit in units], "best_epoch": [unit["best_epoch"] for unit in units],
                               "train_wall_seconds": float(sum(entry["wall_seconds"] for entry in timed)),
                               "train_cpu_seconds": float(sum(entry["cpu_seconds"] for entry in timed))}
        against = step.base or path_end
        shared = sorted(set(scores["dice"]) & set(complete.get(against, {})))
        if shared:
            ci = paired_bootstrap_ci([complete[against][k] for k in shared], [scores["dice"][k] for k in shared])
            row["dice_change_vs_previous"] = {**ci.as_dict(), "previous": against}
        rows.append(row)
        change = row.get("dice_change_vs_previous")
        print(f"{step.name:<45} Dice {row['dice_mean']:.3f} ± {row['dice_sd_over_units']:.3f}, "
              f"Inf-Net mean Dice {row['infnet_mean_dice_mean']:.3f}"
              + (f", change {change['mean_difference']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]"
                 if change else ""), flush=True)
        complete[step.name] = scores["dice"]
        if step.base is None:
            path_end = step.name
    kept = {key: {**run, "units": sorted(run["units"], key=lambda unit: (unit["seed"], unit["fold"]))}
            for key, run in runs.items() if key in keys and run["units"]}
    seeds = sorted({seed for row in rows for seed in row["seeds"]})
    write_record(args.out, args.record, parameters={"data_root": args.data_root, "seeds": seeds, "folds": args.folds,
                                                   "quick": args.quick},
                 numbers={"rows": rows, "runs": kept, "planned": [step.name for step in STEPS]}, runtime=runtime)
    print(f"wrote {record_path(args)} ({len(rows)} of {len(STEPS)} rows complete, "
          f"{sum(len(run['units']) for run in kept.values())} runs)", flush=True)


if __name__ == "__main__":
    main()
