"""What the inner validation slices cost: ``train``'s recipe trained on them too, kept at its last epoch.

Nested cross-validation (:func:`covidlib.crossval.nested_folds`) splits each outer fold's 40 training
slices into 32 that train A' and 8 that choose its epoch. If choosing the epoch buys little, those 8
slices might do more as training data. For each (seed, outer fold) this trains ``train``'s recipe
(:class:`covidlib.recipe.Recipe`) on all 40, for the recipe's epochs, and scores its last epoch on the
outer test fold; nothing is chosen on any slice it is scored on or trained on. (The 8 slices still
pass through validation, as part of the training set, so that the same training path runs; what
they say is not used.) It is paired, on the same test slices, with A' of the same seed and fold read
from (or trained into) the ablation's cache ``--supervised-runs``: at its chosen epoch (``train``'s
defaults) and at its last epoch (the same protocol on 32 slices). Each arm's Dice at 0.5 and Inf-Net's
mean Dice (both with the recipe's test-time augmentation) come with the paired difference of Dice to
the chosen epoch and to the last, with 95 % bootstrap CIs over (seed, fold) units.

A unit costs one training of 40 slices (600 epochs of 5 steps: 13 min wall on a 2-core AMX Xeon
beside nothing else) and seconds of scoring. Resumable as ``semi_recipe`` is
(:func:`_nested_cv.stored_units`); the trainings checkpoint every epoch in ``--runs``. The record
goes to ``records/reference-covid-semiseg/all_slices.json`` (chapter 09 shows it).

    .venv/bin/python benchmarks/all_slices.py --seeds 0,1,2 --threads 2
    .venv/bin/python benchmarks/all_slices.py --quick --out /tmp/all   # the whole path in minutes
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from _nested_cv import arm_row, mean_scores, nested_cv_parser, open_data, run_units
from covidlib.crossval import nested_folds, score_cases, train_supervised
from covidlib.datasets import Dataset
from covidlib.fingerprint import settings_key
from covidlib.inference import PreparedSlices, load_model
from covidlib.recipe import Recipe
from covidlib.train import LAST_CHECKPOINT

#: ``train``'s defaults, a row of benchmarks/ablation.py.
RECIPE = Recipe()
LABELS = {"chosen": "A′: 32 slices, epoch chosen on the other 8 (train's defaults)",
          "last": "A′ at its last epoch (32 slices, none chosen)",
          "all_slices": "all 40 slices, last epoch (none chosen)"}


def run_fold(args: argparse.Namespace, dataset: Dataset, prepared: PreparedSlices, recipe: Recipe,
             a_prime: dict, checkpoint: Path) -> dict:
    """One (seed, outer fold): A''s chosen and last epochs scored, and the recipe trained on the
    fold's training and validation slices together, scored at its last epoch."""
    seed, index = a_prime["seed"], a_prime["fold"]
    fold = nested_folds(sorted(prepared.labelled), args.folds, seed)[index]
    folder = Path(args.runs) / f"all-{settings_key([dataclasses.asdict(recipe), args.folds])}" / f"seed{seed}_fold{index}"
    trainer = train_supervised(prepared, [*fold.train, *fold.val], fold.val, recipe, seed=seed, out_dir=folder,
                               resume=True, progress=True)
    networks = {"last": checkpoint.parent / LAST_CHECKPOINT, "all_slices": folder / LAST_CHECKPOINT}
    scores = {"chosen": mean_scores(a_prime["per_case"]),
              **{arm: mean_scores(score_cases(load_model(path)[0], dataset, fold.test, recipe))
                 for arm, path in networks.items()}}
    unit = {"seed": seed, "fold": index, "training_slices": {"chosen": len(fold.train), "all_slices": len(fold.train) + len(fold.val)},
            "epochs_run": len(trainer.history), "scores": scores,
            "wall_seconds": float(sum(row["seconds"] for row in trainer.history))}
    print(f"seed {seed} fold {index}: TTA Dice chosen {scores['chosen']['tta_dice']:.4f}, last "
          f"{scores['last']['tta_dice']:.4f}, all slices {scores['all_slices']['tta_dice']:.4f}", flush=True)
    return unit


def summarise(results: list[dict]) -> dict:
    """Each arm's mean ± sd over units; the last epoch paired with the chosen one, the 40-slice network
    with both (``tta_dice_change_vs_control``: against the chosen epoch, ``train``'s defaults)."""
    changes = {"chosen": {}, "last": {"control": "chosen"}, "all_slices": {"control": "chosen", "last": "last"}}
    return {"rows": [arm_row(results, arm, LABELS[arm], changes[arm]) for arm in LABELS],
            "wall_seconds": float(sum(r["wall_seconds"] for r in results))}


def main() -> None:
    parser = nested_cv_parser(__doc__, runs="all_slices", record="all_slices", supervised_runs="A' is read or trained")
    args = parser.parse_args()
    if (opened := open_data(args, RECIPE)) is None:
        return
    runtime, recipe, dataset, prepared = opened
    parameters = {"data_root": args.data_root, "seeds": args.seeds, "recipe": dataclasses.asdict(recipe),
                  "folds": args.folds, "quick": args.quick}
    run_units(args, dataset, prepared, recipe, parameters, runtime, run_fold, summarise)


if __name__ == "__main__":
    main()
