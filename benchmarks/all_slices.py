"""What the inner validation slices cost: ``train``'s recipe trained on them too, kept at its last epoch.

Nested cross-validation (:func:`covidlib.crossval.nested_folds`) splits each outer fold's 40 training
slices into 32 that train A' and 8 that choose its epoch. If choosing the epoch buys little, those 8
slices might do more as training data. For each (seed, outer fold) this trains ``train``'s recipe
(:class:`covidlib.recipe.Recipe`) on all 40, for the recipe's epochs, and scores its last epoch on the
outer test fold; nothing is chosen on any slice it is scored on or trained on. (The 8 slices still
pass through validation, as part of the training set, so that the same training path runs; what
they say is not used.) It is paired, on the same test slices, with A' of the same seed and fold read
from (or trained into) the ablation's cache ``--supervised-runs``: at its chosen epoch (what
``train --val-fraction 0.2`` does) and at its last epoch (the same protocol on 32 slices). Each arm's Dice at 0.5 and Inf-Net's
mean Dice (both with the recipe's test-time augmentation) come with the paired difference of Dice to
the chosen epoch and to the last, with 95 % bootstrap CIs over (seed, fold) units.

Two such networks might make a better ``train`` than one network of twice the epochs would (chapter
09's seed ensembles); ``train`` at its defaults now trains that ensemble, on all 50 labelled slices. So every unit of a seed s > 0 also scores, on its test slices, the ensemble
(:class:`covidlib.ensemble.Ensemble`) of its 40-slice network with the 40-slice network of seed s - 1
whose outer test fold held each slice (neither trained on it), and likewise the ensemble of the two
seeds' A' at their chosen epochs; the first is paired with A' alone and with the second. The fair
rival of two networks is one trained as long (:func:`_nested_cv.budget_changes`): for the units of
``--budget-seeds`` a 40-slice network of twice the epochs (learning-rate step and patience scaled) is
scored at its last epoch too, paired with the 40-slice network and with the ensemble of two.

A unit costs one training of 40 slices (600 epochs of 5 steps: 8-10 min wall alone on a 2-core AMX Xeon,
15-19 beside another job), twice that more with ``--budget-seeds``, and seconds of scoring. Adding
``--budget-seeds`` later completes the stored units of those seeds. Resumable as ``semi_recipe`` is
(:func:`_nested_cv.stored_units`); the trainings checkpoint every epoch in ``--runs``. The record
goes to ``records/reference-covid-semiseg/all_slices.json`` (chapter 09 shows it).

    .venv/bin/python benchmarks/all_slices.py --seeds 0,1,2 --threads 2
    .venv/bin/python benchmarks/all_slices.py --seeds 0,1,2 --budget-seeds 1,2 --threads 2   # and the rival
    .venv/bin/python benchmarks/all_slices.py --quick --out /tmp/all   # the whole path in minutes
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict
from pathlib import Path

from _nested_cv import (a_prime_unit, arm_row, budget_changes, integers, mean_scores, nested_cv_parser, open_data,
                        require_among_seeds, run_units)
from covidlib.crossval import Fold, nested_folds, score_cases, train_supervised
from covidlib.datasets import Dataset
from covidlib.ensemble import Ensemble
from covidlib.fingerprint import settings_key
from covidlib.inference import PreparedSlices, load_model
from covidlib.recipe import Recipe
from covidlib.train import LAST_CHECKPOINT, load_checkpoint

#: ``train``'s recipe, a row of benchmarks/ablation.py.
RECIPE = Recipe()
LABELS = {"chosen": "A′: 32 slices, epoch chosen on the other 8 (as train --val-fraction 0.2)",
          "last": "A′ at its last epoch (32 slices, none chosen)",
          "all_slices": "all 40 slices, last epoch (none chosen; as train --members 1)",
          "ensemble_chosen": "ensemble of two seeds' A′ (chosen epochs)",
          "ensemble_all_slices": "ensemble of two seeds' 40-slice networks, last epochs (as train at its defaults)",
          "budget_all_slices": "one 40-slice network trained twice as long (the ensemble's budget, last epoch)"}
#: The arms a unit's ensembles average: each with its namesake network of the previous seed.
ENSEMBLED = {"ensemble_chosen": "chosen", "ensemble_all_slices": "all_slices"}


def all_slices_network(args: argparse.Namespace, prepared: PreparedSlices, recipe: Recipe, seed: int, fold: Fold) -> Path:
    """The last epoch of ``recipe`` trained on all of ``fold``'s training slices (its inner validation
    slices too) in ``--runs``, one folder per recipe: trained, resumed or, when finished, only read."""
    folder = Path(args.runs) / f"all-{settings_key([dataclasses.asdict(recipe), args.folds])}" / f"seed{seed}_fold{fold.index}"
    train_supervised(prepared, [*fold.train, *fold.val], fold.val, recipe, seed=seed, out_dir=folder, resume=True,
                     progress=True)
    return folder / LAST_CHECKPOINT


def ensembles_with_previous_seed(args: argparse.Namespace, dataset: Dataset, prepared: PreparedSlices, recipe: Recipe,
                                 seed: int, test_ids: list[str], own: dict[str, Path]) -> dict[str, dict[str, float]]:
    """``{ensemble arm: mean scores over test_ids}``: each arm's network of this unit (``own``) averaged,
    slice by slice, with the same arm's network of seed - 1 whose outer test fold held the slice."""
    holders: dict[int, list[str]] = defaultdict(list)
    previous = nested_folds(sorted(prepared.labelled), args.folds, seed - 1)
    for case in test_ids:
        holders[next(fold.index for fold in previous if case in fold.test)].append(case)
    partners = {"chosen": lambda index: a_prime_unit(args, dataset, prepared, recipe, (seed - 1, index))[1],
                "all_slices": lambda index: all_slices_network(args, prepared, recipe, seed - 1, previous[index])}
    scores = {}
    for ensemble_arm, arm in ENSEMBLED.items():
        per_case: dict[str, dict[str, float]] = {}
        for index, cases in holders.items():
            members = [load_model(own[arm])[0], load_model(partners[arm](index))[0]]
            per_case.update(score_cases(Ensemble(members), dataset, cases, recipe))
        scores[ensemble_arm] = mean_scores(per_case)
    return scores


def run_fold(args: argparse.Namespace, dataset: Dataset, prepared: PreparedSlices, recipe: Recipe,
             a_prime: dict, checkpoint: Path) -> dict:
    """One (seed, outer fold): A''s chosen and last epochs scored, the recipe trained on the fold's
    training and validation slices together and scored at its last epoch, and for a seed above 0 the
    ensembles of both with the previous seed's (:func:`ensembles_with_previous_seed`)."""
    seed, index = a_prime["seed"], a_prime["fold"]
    fold = nested_folds(sorted(prepared.labelled), args.folds, seed)[index]
    networks = {"chosen": checkpoint, "last": checkpoint.parent / LAST_CHECKPOINT,
                "all_slices": all_slices_network(args, prepared, recipe, seed, fold)}
    if seed in args.budget_seeds:
        budget = dataclasses.replace(recipe, **budget_changes(recipe, 2))
        networks["budget_all_slices"] = all_slices_network(args, prepared, budget, seed, fold)
    scores = {"chosen": mean_scores(a_prime["per_case"]),
              **{arm: mean_scores(score_cases(load_model(network)[0], dataset, fold.test, recipe))
                 for arm, network in networks.items() if arm != "chosen"}}
    if seed > 0:
        scores.update(ensembles_with_previous_seed(args, dataset, prepared, recipe, seed, fold.test, networks))
    histories = {arm: load_checkpoint(networks[arm])["history"] for arm in ("all_slices", "budget_all_slices")
                 if arm in networks}
    unit = {"seed": seed, "fold": index, "training_slices": {"chosen": len(fold.train), "all_slices": len(fold.train) + len(fold.val)},
            "epochs_run": len(histories["all_slices"]), "scores": scores,
            "wall_seconds": float(sum(row["seconds"] for history in histories.values() for row in history))}
    if "budget_all_slices" in histories:
        unit["budget_epochs_run"] = len(histories["budget_all_slices"])
    print(f"seed {seed} fold {index}: TTA Dice " + ", ".join(f"{arm} {value['tta_dice']:.4f}" for arm, value in scores.items()),
          flush=True)
    return unit


def summarise(results: list[dict]) -> dict:
    """Each arm's mean ± sd over the units that have it (the ensembles: seeds above 0); the last epoch
    paired with the chosen one, the 40-slice network with both, the ensembles with A' alone
    (``tta_dice_change_vs_control``: against the chosen epoch, ``train --val-fraction 0.2``), the 40-slice
    ensemble with A''s and with one network of its budget (on the units that have both), and that
    network with the 40-slice network of the recipe's epochs."""
    changes = {"chosen": {}, "last": {"control": "chosen"}, "all_slices": {"control": "chosen", "last": "last"},
               "ensemble_chosen": {"control": "chosen"},
               "ensemble_all_slices": {"control": "chosen", "ensemble_chosen": "ensemble_chosen",
                                       "budget": "budget_all_slices"},
               "budget_all_slices": {"control": "chosen", "all_slices": "all_slices"}}
    rows = [arm_row(having, arm, LABELS[arm], changes[arm]) for arm in LABELS
            if (having := [r for r in results if arm in r["scores"]])]
    return {"rows": rows, "wall_seconds": float(sum(r["wall_seconds"] for r in results))}


def main() -> None:
    parser = nested_cv_parser(__doc__, runs="all_slices", record="all_slices", supervised_runs="A' is read or trained")
    parser.add_argument("--budget-seeds", type=integers, default=[],
                        help="seeds (among --seeds) whose units also train one 40-slice network twice as long, the "
                             "ensemble's fair rival; about 16-20 min more a unit on a 2-core AMX Xeon")
    args = parser.parse_args()
    require_among_seeds(args, "budget_seeds")
    if (opened := open_data(args, RECIPE)) is None:
        return
    runtime, recipe, dataset, prepared = opened
    parameters = {"data_root": args.data_root, "seeds": args.seeds, "budget_seeds": args.budget_seeds,
                  "recipe": dataclasses.asdict(recipe), "folds": args.folds, "quick": args.quick}
    run_units(args, dataset, prepared, recipe, parameters, runtime, run_fold, summarise,
              complete=lambda unit: unit["seed"] not in args.budget_seeds or "budget_all_slices" in unit["scores"])


if __name__ == "__main__":
    main()
