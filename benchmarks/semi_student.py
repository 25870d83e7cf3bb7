"""A student trained from scratch on labelled and pseudo-labelled slices, against A' at the same budget.

``benchmarks/semi_recipe.py`` continues A' for 30 epochs, and the continuation itself costs about
0.01 Dice, labels only included: its arms can only recover that loss. Self-training as Lee
("Pseudo-Label", 2013) and Xie et al. ("Noisy Student", CVPR 2020) do it trains a new student from
scratch instead. Here, for each (seed, outer fold) of nested CV on COVID-SemiSeg:

- ``supervised`` (the control): A', ``train``'s defaults (``Recipe()``) trained on the inner split
  and its epoch chosen on the inner validation slices, read from (or trained into) the ablation's
  cache ``--supervised-runs``;
- ``student``: the same recipe trained from scratch by the same code
  (:func:`covidlib.crossval.train_supervised`) on the inner split's labelled slices plus every
  unlabelled slice with A''s test-time-augmented prediction at 0.5 as its mask
  (:func:`covidlib.self_training.pseudo_label_slices`). It takes A''s optimizer steps (each epoch
  capped at A''s batches), A''s validation slices and epoch selection, so only the data differs.
  The labelled slices are repeated so that a draw is labelled with probability ``--labelled-share``.

Both are scored on the outer test fold with test-time augmentation (Dice at 0.5 and Inf-Net's mean
Dice); the student's paired difference to A' comes with a 95 % bootstrap CI over (seed, fold) units.
The record goes to ``records/reference-covid-semiseg/semi_student.json`` (chapter 08 shows it).
Resumable as ``semi_recipe`` is (:func:`_nested_cv.stored_units`); the students' checkpoints live in
``--runs``, so a unit cut short continues from its last epoch.

    .venv/bin/python benchmarks/semi_student.py --seeds 0,1,2 --threads 2
    .venv/bin/python benchmarks/semi_student.py --quick --out /tmp/student   # the whole path in minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from _nested_cv import arm_row, mean_scores, nested_cv_parser, open_data, run_units
from covidlib.crossval import score_cases, train_supervised
from covidlib.datasets import Dataset
from covidlib.errors import InvalidInputError
from covidlib.inference import PreparedSlices, load_model
from covidlib.recipe import Recipe
from covidlib.self_training import pseudo_label_slices

#: ``train``'s defaults, a row of benchmarks/ablation.py, as in ``semi_recipe``.
RECIPE = Recipe()
ARMS = ("supervised", "student")
LABELS = {"supervised": "A′: labelled slices only",
          "student": "student from scratch: labelled + A′'s whole-slice pseudo-labels"}


def student_slices(prepared: PreparedSlices, train_ids: list[str], pseudo_masks: np.ndarray,
                   labelled_share: float) -> tuple[PreparedSlices, list[str]]:
    """The student's training slices: ``prepared`` with each unlabelled slice under the id
    ``pseudo-<its id>`` and its mask from ``pseudo_masks`` (N, H, W), and the labelled slices of
    ``train_ids`` repeated (ids ``<id>~<k>``) so that a uniform draw is labelled with probability
    ``labelled_share`` (at least once each). Returns the slices and the training ids."""
    if not 0 < labelled_share < 1:
        raise InvalidInputError(f"--labelled-share must lie in (0, 1), got {labelled_share}")
    if len(pseudo_masks) != len(prepared.unlabelled):
        raise InvalidInputError(f"{len(pseudo_masks)} pseudo-masks for {len(prepared.unlabelled)} unlabelled slices")
    repeats = max(1, round(labelled_share / (1 - labelled_share) * len(pseudo_masks) / len(train_ids)))
    pseudo = {f"pseudo-{case_id}": (image, mask[None].astype(np.uint8))
              for case_id, image, mask in zip(prepared.unlabelled_ids, prepared.unlabelled, pseudo_masks, strict=True)}
    repeated = {f"{case_id}~{k}": prepared.labelled[case_id] for case_id in train_ids for k in range(repeats)}
    slices = dataclasses.replace(prepared, labelled={**prepared.labelled, **repeated, **pseudo})
    return slices, [*repeated, *pseudo]


def steps_per_epoch(n_slices: int, batch_size: int) -> int:
    """The batches of one epoch over ``n_slices`` (the last one partial): A''s epoch, the student's cap."""
    return math.ceil(n_slices / batch_size)


def run_fold(args: argparse.Namespace, dataset: Dataset, prepared: PreparedSlices, recipe: Recipe, a_prime_result: dict,
             checkpoint: Path) -> dict:
    """A student for one (seed, fold): pseudo-label with A', train from scratch, score both on the outer test fold."""
    seed, fold, train_ids, val_ids, test_ids = (a_prime_result[k] for k in ("seed", "fold", "train", "val", "test"))
    started = time.perf_counter()
    print(f"seed {seed} fold {fold}: pseudo-labelling {len(prepared.unlabelled)} unlabelled slices with A′", flush=True)
    a_prime, _ = load_model(checkpoint)
    unlabelled = np.stack([image[0] for image in prepared.unlabelled])
    pseudo_masks = pseudo_label_slices(a_prime, unlabelled, recipe.image_size, tta=recipe.tta) > 0.5
    labelling_seconds = time.perf_counter() - started
    slices, student_ids = student_slices(prepared, train_ids, pseudo_masks, args.labelled_share)
    student_recipe = dataclasses.replace(
        recipe, max_steps_per_epoch=recipe.max_steps_per_epoch or steps_per_epoch(len(train_ids), recipe.batch_size))
    started = time.perf_counter()
    print(f"seed {seed} fold {fold}: training the student on {len(student_ids)} slices "
          f"({student_recipe.epochs} epochs of {student_recipe.max_steps_per_epoch} steps)", flush=True)
    trainer = train_supervised(slices, student_ids, val_ids, student_recipe, seed=seed,
                               out_dir=Path(args.runs) / f"seed{seed}_fold{fold}", resume=True, progress=True)
    result = {"seed": seed, "fold": fold, "test": test_ids, "a_prime_val_dice": a_prime_result["best_val_dice"],
              "pseudo_slices": {"foreground_share": float(pseudo_masks.mean()),
                                "slices_with_foreground": int(pseudo_masks.any(axis=(1, 2)).sum())},
              "scores": {"supervised": mean_scores(a_prime_result["per_case"]),
                         "student": mean_scores(score_cases(trainer.model, dataset, test_ids, recipe))},
              "best_epoch": {"supervised": a_prime_result["best_epoch"], "student": trainer.best_epoch},
              "steps": trainer.optimizer_steps,
              "seconds": {"pseudo_labelling": labelling_seconds, "student": time.perf_counter() - started}}
    print(f"seed {seed} fold {fold}: TTA Dice A′ {result['scores']['supervised']['tta_dice']:.4f}, student "
          f"{result['scores']['student']['tta_dice']:.4f} (best epoch {trainer.best_epoch}, "
          f"{result['seconds']['student']:.0f} s)", flush=True)
    return result


def summarise(results: list[dict]) -> dict:
    """Each arm's mean ± sd over units, and the student's paired difference to its control, A'
    (``tta_dice_change_vs_control``, as ``semi_recipe``'s rows name theirs)."""
    rows = [{**arm_row(results, arm, LABELS[arm], {"control": "supervised"} if arm != "supervised" else {}),
             "best_epoch": [r["best_epoch"][arm] for r in results]}  # A' is the student's control
            for arm in ARMS]
    return {"rows": rows, "a_prime_val_dice": [r["a_prime_val_dice"] for r in results],
            "pseudo_slice_foreground_share": [r["pseudo_slices"]["foreground_share"] for r in results],
            "seconds": {name: float(sum(r["seconds"][name] for r in results)) for name in results[0]["seconds"]}}


def main() -> None:
    parser = nested_cv_parser(__doc__, runs="semi_student", record="semi_student", supervised_runs="A' is read or trained",
                              quick="tiny networks, 2 epochs, 16 unlabelled slices")
    parser.add_argument("--labelled-share", type=float, default=0.5,
                        help="probability that a training draw is a labelled slice (default 0.5)")
    args = parser.parse_args()
    if (opened := open_data(args, RECIPE, unlabelled=True)) is None:
        return
    runtime, recipe, dataset, prepared = opened
    parameters = {"data_root": args.data_root, "seeds": args.seeds, "recipe": dataclasses.asdict(recipe),
                  "labelled_share": args.labelled_share, "folds": args.folds,
                  "unlabelled_slices": len(prepared.unlabelled_ids), "quick": args.quick}

    run_units(args, dataset, prepared, recipe, parameters, runtime, run_fold, summarise)


if __name__ == "__main__":
    main()
