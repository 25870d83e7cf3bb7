"""Unlabelled data on top of the best supervised recipe: nested CV on COVID-SemiSeg, each arm against its control.

A' is ``train``'s defaults (``Recipe()``, a row of ``benchmarks/ablation.py``), trained by
:func:`covidlib.crossval.run_nested_cv` or read from the ablation's cache ``--supervised-runs``: for
each (seed, outer fold) it was trained on the inner split and its epoch chosen on the inner
validation slices. Six continuations of it then take the same optimizer steps, input noise,
augmentation (with the recipe's turns and mirrors) and epoch selection on those validation slices:

- ``control``: labels only (the student kept);
- ``pseudo_labels``: + the report's patch pseudo-labels of all 1,600 unlabelled slices (chapter 07;
  top-2 threshold calibrated on the inner validation slices);
- ``pseudo_slices``: + whole-slice pseudo-labels, A''s test-time-augmented probabilities
  (:mod:`covidlib.self_training`), a self-training baseline the report does not have;
- ``control_ema``: labels only with the mean teacher's consistency (the EMA teacher kept);
- ``mean_teacher``: + the patch pseudo-labels (chapter 08);
- ``consistency_slices``: + the mean teacher's consistency on the whole unlabelled slices, without
  pseudo-labels (Tarvainen and Valpola's own semi-supervised setting).

Every arm is scored on the outer test fold with test-time augmentation, Dice at 0.5 and Inf-Net's
mean Dice; each semi-supervised arm's paired difference to its control (and to A') comes with a
95 % bootstrap CI over (seed, fold) units. The record goes to
``records/reference-covid-semiseg/semi_recipe.json`` (committed; chapter 08 shows it).

Resumable across sessions: the record is rewritten after each (seed, fold) with every unit complete
so far (``numbers.units``: each arm's mean scores, the threshold, the seconds), so a committed
partial record is where the next run continues (:func:`_nested_cv.stored_units`: same data,
parameters, threads, precision and processor; units of code changed since are kept when the first
of them, computed again, reproduces exactly); only A''s checkpoints live in the ablation's cache. The record's ``timing`` is the last invocation's; ``numbers.seconds`` sums the units'.

    .venv/bin/python benchmarks/semi_recipe.py --seeds 0
    .venv/bin/python benchmarks/semi_recipe.py --quick --out /tmp/semi   # the whole path in minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from _nested_cv import METRICS, mean_scores, nested_cv_parser, open_data, run_units
from covidlib.augment import default_augmentation
from covidlib.crossval import score_cases
from covidlib.datasets import Dataset
from covidlib.inference import PreparedSlices, load_model
from covidlib.mean_teacher import ARM_LABELS, continue_arm, pseudo_label_patches, semi_supervised_settings
from covidlib.recipe import Recipe
from covidlib.self_training import PseudoSliceDataset, pseudo_label_slices
from covidlib.statistics import paired_bootstrap_ci


#: ``train``'s defaults, a row of benchmarks/ablation.py (chapter 09 marks it).
RECIPE = Recipe()
#: Each continuation: (the arm of :func:`covidlib.mean_teacher.arm_setup` it trains as, its pseudo-labels).
ARMS = {"control": ("control", None), "pseudo_labels": ("pseudo_labels", "patches"),
        "pseudo_slices": ("pseudo_labels", "slices"), "control_ema": ("control_ema", None),
        "mean_teacher": ("mean_teacher", "patches"), "consistency_slices": ("consistency", "slices")}
CONTROLS = {"pseudo_labels": "control", "pseudo_slices": "control", "mean_teacher": "control_ema",
            "consistency_slices": "control_ema"}
LABELS = {**ARM_LABELS, "pseudo_slices": "+ whole-slice pseudo-labels (A′'s TTA probabilities)",
          "consistency_slices": "+ mean teacher on the whole unlabelled slices (consistency only)"}


def run_fold(args: argparse.Namespace, dataset: Dataset, prepared: PreparedSlices, recipe: Recipe, a_prime_result: dict,
             checkpoint: Path) -> dict:
    """The continuations of :data:`ARMS` from one (seed, fold)'s A', scored on its outer test fold."""
    seed, train_ids, val_ids, test_ids = (a_prime_result[k] for k in ("seed", "train", "val", "test"))
    a_prime, _ = load_model(checkpoint)
    settings = semi_supervised_settings(recipe.image_size, len(train_ids), network=recipe.model,
                                        base_width=recipe.base_width, depth=recipe.depth, lr=recipe.lr,
                                        semi_epochs=args.semi_epochs, semi_lr=args.semi_lr,
                                        batch_size=recipe.batch_size, noise_std=args.noise_std, seed=seed,
                                        max_steps_per_epoch=recipe.max_steps_per_epoch, dihedral=recipe.dihedral)
    started = time.perf_counter()
    print(f"seed {seed} fold {a_prime_result['fold']}: pseudo-labelling {len(prepared.unlabelled)} unlabelled slices "
          "with A′ (patches, then whole slices)", flush=True)
    patches, pseudo = pseudo_label_patches(a_prime, prepared.labelled, train_ids, val_ids, prepared.unlabelled,
                                           settings, rng=np.random.default_rng(seed))
    unlabelled = np.stack([image[0] for image in prepared.unlabelled])
    probabilities = pseudo_label_slices(a_prime, unlabelled, recipe.image_size, tta=recipe.tta)
    # a slice dataset counts its draws: each arm gets its own, so an arm's batches do not depend on the arms before it
    sources = {"patches": lambda: patches,
               "slices": lambda: PseudoSliceDataset(unlabelled, probabilities, transform=default_augmentation(
                   dihedral=recipe.dihedral), seed=seed)}
    result = {"seed": seed, "fold": a_prime_result["fold"], "test": test_ids,
              "threshold": pseudo["threshold"], "pseudo": pseudo["pseudo"],
              "pseudo_slices": {"foreground_share": float((probabilities > 0.5).mean()),
                                "slices_with_foreground": int(((probabilities > 0.5).sum(axis=(1, 2)) > 0).sum())},
              "a_prime_val_dice": a_prime_result["best_val_dice"],
              "seconds": {"pseudo_labelling": time.perf_counter() - started},
              "scores": {"supervised": mean_scores(a_prime_result["per_case"])}, "best_epoch": {}, "steps": {}}
    for name, (arm, source) in ARMS.items():
        started = time.perf_counter()
        trainer = continue_arm(a_prime, prepared.labelled, train_ids, val_ids, settings, arm,
                               sources[source]() if source else None, seed=seed)
        result["scores"][name] = mean_scores(score_cases(trainer.validation_model(), dataset, test_ids, recipe))
        result["best_epoch"][name], result["steps"][name] = trainer.best_epoch, trainer.global_step
        result["seconds"][name] = time.perf_counter() - started
        print(f"seed {seed} fold {result['fold']} {name:<14} TTA Dice {result['scores'][name]['tta_dice']:.4f} "
              f"(best epoch {trainer.best_epoch}, {result['seconds'][name]:.0f} s)", flush=True)
    return result


def unit_scores(results: list[dict], arm: str, metric: str) -> list[float]:
    """Each (seed, fold)'s mean ``metric`` of ``arm`` over its test slices, in the results' order."""
    return [r["scores"][arm][metric] for r in results]


def summarise(results: list[dict]) -> dict:
    """Rows of mean ± sd over units and each arm's paired differences to its control and to A'."""
    rows = []
    for arm in ["supervised", *ARMS]:
        scores = {metric: unit_scores(results, arm, metric) for metric in METRICS}
        row = {"arm": arm, "label": LABELS[arm], "units": [[r["seed"], r["fold"]] for r in results],
               **{f"{metric}_by_unit": scores[metric] for metric in METRICS},
               **{f"{metric}_mean": float(np.mean(scores[metric])) for metric in METRICS},
               "tta_dice_sd_over_units": float(np.std(scores["tta_dice"], ddof=1)) if len(results) > 1 else 0.0,
               "best_epoch": [r["best_epoch"].get(arm) for r in results]}
        comparisons = ([CONTROLS[arm]] if arm in CONTROLS else []) + (["supervised"] if arm != "supervised" else [])
        for against in comparisons if len(results) > 1 else []:
            ci = paired_bootstrap_ci(unit_scores(results, against, "tta_dice"), scores["tta_dice"])
            row[f"tta_dice_change_vs_{'control' if against != 'supervised' else 'supervised'}"] = {
                **ci.as_dict(), "against": against}
        rows.append(row)
    return {"rows": rows, "thresholds": [r["threshold"] for r in results],
            "a_prime_val_dice": [r["a_prime_val_dice"] for r in results],
            "accepted_patches": [r["pseudo"]["accepted"] for r in results],
            "patches": [r["pseudo"]["patches"] for r in results],
            "pseudo_slice_foreground_share": [r["pseudo_slices"]["foreground_share"] for r in results],
            "seconds": {name: float(sum(r["seconds"][name] for r in results)) for name in results[0]["seconds"]}}


def main() -> None:
    parser = nested_cv_parser(__doc__, record="semi_recipe", supervised_runs="A' is read or trained",
                              quick="tiny networks, 2 epochs, 16 unlabelled slices")
    parser.add_argument("--semi-epochs", type=int, default=30)
    parser.add_argument("--semi-lr", type=float, default=5e-4)
    parser.add_argument("--noise-std", type=float, default=0.1)
    args = parser.parse_args()
    if (opened := open_data(args, RECIPE, unlabelled=True)) is None:
        return
    runtime, recipe, dataset, prepared = opened
    if args.quick:
        args.semi_epochs = 2
    parameters = {"data_root": args.data_root, "seeds": args.seeds, "recipe": dataclasses.asdict(recipe),
                  "semi_epochs": args.semi_epochs, "semi_lr": args.semi_lr, "noise_std": args.noise_std,
                  "folds": args.folds, "unlabelled_slices": len(prepared.unlabelled_ids), "quick": args.quick}

    run_units(args, dataset, prepared, recipe, parameters, runtime, run_fold, summarise)


if __name__ == "__main__":
    main()
