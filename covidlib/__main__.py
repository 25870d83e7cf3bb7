"""The command line: ``python -m covidlib <command>`` (also installed as ``covidlib``).

Commands: ``train`` (by default the final model: two 2D networks of every labelled case of a
registered dataset, averaged; with ``--val-fraction`` or ``--folds`` one network with cases held out
to validate it; with ``--semi`` continued semi-supervised on an unlabelled split), ``evaluate`` (a
checkpoint on a split, metrics as JSON on stdout),
``predict`` (a checkpoint on a folder of 2D images or on a NIfTI volume, writing probability maps;
several checkpoints predict as one :class:`covidlib.ensemble.Ensemble`, as in ``evaluate`` and ``segment``),
``segment`` (a CT scan to infection and lung masks on its own grid, with volumes in mL;
:mod:`covidlib.segment`) and ``semi`` (one fold of supervised vs pseudo-labels vs mean
teacher using a dataset's unlabelled split; :mod:`covidlib.mean_teacher`).
Each command is one :class:`Command` in :data:`COMMANDS`; adding one is a line there.

The command line works in image pixels: every slice is prepared the "window" way of
:mod:`covidlib.inference` (8-bit grey levels, z-scored per slice, resized to the network's
square input), and predictions are resized back to each input's size. This module only parses
arguments and calls the library. It imports torch and the library's torch modules inside the
commands, not at the top, and reads the choices it offers (networks, losses, methods) from the
torch-free :mod:`covidlib.options`, so that ``--help``, of every command, and a bad command answer
at once (0.1 s here, where importing torch takes 3-4 s on a 2-core CPU).

Introduced in chapter 04.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidlib.errors import InvalidInputError
from covidlib.options import (AMP_CHOICES, LOSS_NAMES, LUNG_METHODS, MODEL_NAMES, PSEUDO_LABEL_RULES, QUICK_UNLABELLED,
                              SEMI_FULL, SEMI_METHOD_NAMES, SEMI_QUICK)
from covidlib.recipe import Recipe

if TYPE_CHECKING:
    import numpy as np
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Quick mode: a smoke run in seconds (tests, trying a setup); explicit flags still win.
QUICK = {"epochs": 3, "max_steps_per_epoch": 2, "image_size": 64, "base_width": 8, "batch_size": 4}
# Without --quick: the recipe the book's nested cross-validation measures (covidlib.recipe.Recipe).
FULL = {name: getattr(Recipe(), name) for name in QUICK}
#: ``train --members``'s split when --folds is not given: each network validates on a fifth of the cases.
ENSEMBLE_FOLDS = 5
#: How many networks ``train``'s final model averages (chapter 09: two 40-slice networks averaged beat one
#: network trained twice as long, and one network whose epoch the held-out cases chose).
FINAL_MEMBERS = 2
#: What ``--checkpoint`` of evaluate, predict and segment takes.
CHECKPOINT_HELP = ("the folder OUT that 'train' wrote (its network, or with --members all its networks), or checkpoint "
                   "files (best.pt or last.pt); several networks predict together, the mean of their probabilities")


# --- train ------------------------------------------------------------------------------------

#: What ``train --help`` says of its cost, measured alone on COVID-SemiSeg.
TRAIN_TIMES = (
    "Cost on COVID-SemiSeg, measured alone on a 2-core Intel Xeon with AMX (bfloat16, torch's default 2 threads): "
    "train at its defaults, the final model (two networks of all 50 labelled slices, 600 epochs each, kept at their "
    "last epochs), took 20.3 min wall, 38.7 CPU-minutes and 0.7 GB (the networks 10.6 and 9.7 min). One network "
    "validated on a fifth of the cases (--val-fraction 0.2, the supervised stage of --semi) took 16.7 min (all 600 "
    "epochs at 160 px; the best epoch was 519), and train --semi both 17.8 min wall, 33.6 CPU-minutes and 2.0 GB: pseudo-labelling the 1,600 "
    "unlabelled slices plus 8 semi-supervised epochs took 1.0 min. On a 2-core AMD EPYC with AVX512-BF16 (Zen 4, "
    "bfloat16) train --semi both took 13.8 min wall, 26.7 CPU-minutes and 1.8 GB (13.0 min supervised, best epoch "
    "416), and --members 2 --folds 5 (two networks of 40 slices, each validated on its fold) 26.9 min wall, 52.0 "
    "CPU-minutes and 0.7 GB; the final model was not timed there. On a 2-core AMD EPYC without native bfloat16 "
    "(Zen 3, AVX2, float32) train --semi both took 43.0 min wall, 82.9 CPU-minutes and 1.9 GB (41.2 min "
    "supervised, best epoch 414), 2.5 times the Xeon's supervised time; there the earlier defaults (--image-size "
    "128 --epochs 300 --step-size 75 --patience 300, the row '+ 300 epochs, no early stop' of chapter 09's "
    "ablation) took 12.3 min, and 4.0 min on an AMX Xeon and on a Zen 5 AMD EPYC with AVX512-BF16. On an NVIDIA "
    "H200 (bfloat16) one network ran its 600 epochs in 2.0 min (131 s for the command).")


#: What ``train --help`` says it trains, before its cost.
TRAIN_WHAT = (
    "Without --val-fraction, --folds, --semi, --select-threshold or --patience, train holds no case out: it trains "
    "the final model, --members networks (default 2) of every labelled case, each kept at its last epoch, which "
    "evaluate, predict and segment average (chapter 09's 'What the eight validation slices cost' measures it in "
    "nested cross-validation). Each of those flags holds cases out to validate a network and choose its epoch.")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = f"{TRAIN_WHAT} {TRAIN_TIMES}"
    parser.add_argument("--dataset", default="covid-semiseg", help="registered dataset name (default: covid-semiseg)")
    parser.add_argument("--data-root", help="the dataset's folder (default: $COVIDLIB_DATA/<dataset>)")
    parser.add_argument("--split", help="the dataset split to train on (default: 'train', else the dataset's first)")
    parser.add_argument("--model", choices=sorted(MODEL_NAMES), default="unet", help="network (default: unet)")
    parser.add_argument("--out", required=True, help="output folder: metrics.json and, for each network K, member-K/ "
                                                     "with its last.pt and history.json; one network (--members 1) "
                                                     "writes them in OUT itself, with best.pt when cases are held out")
    parser.add_argument("--epochs", type=int, help=f"maximum epochs (default {FULL['epochs']}, quick {QUICK['epochs']})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few short epochs of a small network on small images")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation, batches and augmentation")
    parser.add_argument("--folds", type=int, help="hold out a fold to validate: k of a k-fold split by case, the "
                                                  "fold --fold")
    parser.add_argument("--fold", type=int, help="with --folds: which fold (0..k-1) validates (default 0)")
    parser.add_argument("--members", type=int,
                        help="train this many networks, network K with seed --seed + K into OUT/member-K/ (with "
                             "--folds: validating on fold K); evaluate, predict and segment take OUT as one ensemble, "
                             "the mean of their probabilities, for that many times the training time (default: "
                             f"{FINAL_MEMBERS} for the final model, 1 when cases are held out)")
    parser.add_argument("--val-fraction", type=float,
                        help="hold out this share of the cases to validate one network, which chooses its epoch "
                             "(default: none, the final model trains on every case; 0.2 with --semi, "
                             "--select-threshold or --patience, which choose on them)")
    parser.add_argument("--image-size", type=int, help=f"square network input in pixels (default {FULL['image_size']})")
    parser.add_argument("--base-width", type=int, help=f"channels of the first level (default {FULL['base_width']}; the paper: 64)")
    parser.add_argument("--depth", type=int, default=4, help="number of poolings (default 4)")
    parser.add_argument("--batch-size", type=int, help=f"default {FULL['batch_size']}")
    parser.add_argument("--loss", choices=sorted(LOSS_NAMES), default="ce+dice", help="training loss (default ce+dice)")
    parser.add_argument("--lr", type=float, default=Recipe.lr, help=f"Adam learning rate (default {Recipe.lr:g}; the report: 2e-4)")
    parser.add_argument("--step-size", type=int, default=Recipe.step_size, help=f"StepLR period in epochs (default {Recipe.step_size})")
    parser.add_argument("--gamma", type=float, default=Recipe.gamma, help=f"StepLR factor (default {Recipe.gamma})")
    parser.add_argument("--patience", type=int,
                        help=f"stop after this many epochs without a better validation Dice (default {Recipe.patience}, "
                             "when cases are held out)")
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap the batches of an epoch")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto", help="mixed precision: auto (bf16/fp16 on a GPU; bf16 on a CPU with native bf16 kernels, "
                        "AVX512-BF16/AMX; else float32), bf16, fp16 or off")
    parser.add_argument("--no-augment", action="store_true", help="switch off all augmentation: rotation, elastic, gamma, noise, the random turns and mirrors, and --zoom")
    parser.add_argument("--no-dihedral", action="store_true", help="no random 90-degree turns and mirrors in the augmentation")
    parser.add_argument("--zoom", type=float, default=Recipe.zoom,
                        help="also scale each training slice of the supervised stage by a random factor in "
                             f"[1/ZOOM, ZOOM], e.g. 1.25 (default {Recipe.zoom:g}: no zoom)")
    parser.add_argument("--crop-size", type=int,
                        help="train the supervised stage on a random CROP_SIZE square window of each --image-size "
                             "slice, and validate and predict on whole slices: e.g. --image-size 256 --crop-size 160 "
                             "sees finer detail at the cost per training step of 160 px; validating whole 256 px "
                             "slices each epoch made an epoch about 40 %% longer on a 2-core Zen 3 (default: whole slices)")
    parser.add_argument("--crop-foreground", type=float, default=Recipe.crop_foreground,
                        help="with --crop-size: the probability that a window holds infection, placed around an "
                             "infected pixel drawn at random (nnU-Net draws a third of its patches so: 0.33; "
                             f"default {Recipe.crop_foreground:g}: every position equally likely)")
    parser.add_argument("--no-tta", action="store_true",
                        help="predict without test-time augmentation (default: average the 8 turns and mirrors; "
                             "stored in the checkpoint, so evaluate and predict do the same)")
    parser.add_argument("--select-threshold", action="store_true",
                        help="segment at the probability threshold (0.20 to 0.70) with the best Dice on the validation "
                             "cases instead of 0.5; stored in best.pt, so evaluate and segment use it")
    parser.add_argument("--mixup-alpha", type=float, default=0.0, help="mixup Beta(alpha, alpha); 0 = no mixup")
    parser.add_argument("--ema-decay", type=float, default=Recipe.ema_decay,
                        help="validate and keep a moving average of the weights with this decay per step, e.g. 0.995 "
                             f"(default {Recipe.ema_decay:g}: the weights themselves)")
    parser.add_argument("--empty-fraction", type=float, default=1.0, help="share of training slices without infection kept")
    _threads_argument(parser)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when it exists (with --semi: "
                                                              "the supervised stage's OUT/supervised/last.pt)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    semi = parser.add_argument_group(
        "semi-supervised (chapter 08)",
        "With --semi the supervised model (A', kept in OUT/supervised/) is continued on the labelled slices plus "
        "pseudo-labelled patches of the unlabelled images, the threshold and the epoch chosen on the validation "
        "cases; OUT/best.pt is the semi-supervised network.")
    semi.add_argument("--semi", choices=sorted(SEMI_METHOD_NAMES),
                      help="pseudo-labels (their weighted loss), mean-teacher (an EMA teacher's consistency on the "
                           "unlabelled patches) or both (the book's mean-teacher arm)")
    semi.add_argument("--unlabelled-split", help="the dataset split of unlabelled images (default: unlabelled)")
    semi.add_argument("--unlabelled", type=int, help=f"how many unlabelled images, spread evenly (default all; quick "
                                                     f"at most {QUICK_UNLABELLED})")
    semi.add_argument("--semi-epochs", type=int, help=f"epochs of the continuation (default {SEMI_FULL['semi_epochs']}, "
                                                      f"quick {SEMI_QUICK['semi_epochs']})")


def _setting(args: argparse.Namespace, name: str, semi: bool = False) -> Any:
    """``args.<name>``, else its ``--quick`` or full default (``semi``: the semi-supervised stage's)."""
    value = getattr(args, name)
    if value is not None:
        return value
    quick, full = (SEMI_QUICK, SEMI_FULL) if semi else (QUICK, FULL)
    return (quick if args.quick else full)[name]


def _train_and_val_ids(dataset: Any, args: argparse.Namespace, split_seed: int) -> tuple[str, list[str], list[str]]:
    """The split trained on and its training and validation cases: fold ``args.fold`` of ``args.folds``,
    else ``args.val_fraction`` of the cases held out, drawn with ``split_seed``."""
    from covidlib.data import kfold_volumes, split_volumes

    split = args.split or dataset.default_split
    ids = dataset.case_ids(split)
    if len(ids) < 2:
        raise InvalidInputError(f"split {split!r} of dataset {args.dataset!r} has {len(ids)} case(s); training needs at least 2")
    if args.folds is not None:
        if args.folds > len(ids):
            raise InvalidInputError(f"--folds {args.folds}: split {split!r} of dataset {args.dataset!r} has only "
                                    f"{len(ids)} cases; --folds must be in [2, {len(ids)}]")
        if not 0 <= args.fold < args.folds:
            raise InvalidInputError(f"--fold must be in [0, {args.folds - 1}] for --folds {args.folds}, got {args.fold}")
        train_ids, val_ids = kfold_volumes(ids, args.folds, split_seed)[args.fold]
        return split, train_ids, val_ids
    if not 0 < args.val_fraction < 1:
        raise InvalidInputError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    n_val = max(1, round(args.val_fraction * len(ids)))
    if n_val >= len(ids):
        raise InvalidInputError(f"--val-fraction {args.val_fraction:g} holds out {n_val} of the {len(ids)} cases of split "
                                f"{split!r}, leaving none to train; hold out at most {len(ids) - 1}")
    train_ids, val_ids = split_volumes(ids, n_val, split_seed)
    return split, train_ids, val_ids


def run_train(args: argparse.Namespace) -> int:
    """Train one network into OUT, or with ``--members`` network K (seed ``--seed`` + K, with ``--folds``
    validating on fold K of one split) into OUT/member-K, and a summary of them in OUT/metrics.json."""
    if args.all_slices:
        networks = f"{args.members} networks, each" if args.members > 1 else "one network"
        print(f"the final model: {networks} trained on every case and kept at its last epoch (nothing is held out, "
              "so nothing is scored; --val-fraction 0.2 or --folds 5 holds cases out to validate a network)")
    if args.members == 1:
        _train_network(args, Path(args.out), split_seed=args.seed)
        return 0
    from covidlib.io import atomic_write_text
    from covidlib.results import to_json

    started, cpu_started = time.perf_counter(), time.process_time()
    out = Path(args.out)
    members = []
    for member in range(args.members):
        print(f"network {member + 1} of {args.members}, seed {args.seed + member}: "
              + ("every case trains it" if args.all_slices else f"fold {member} of {args.folds} validates it"))
        member_args = argparse.Namespace(**{**vars(args), "fold": member, "seed": args.seed + member})
        result = _train_network(member_args, out / f"member-{member}", split_seed=args.seed)
        members.append({"checkpoint": result["checkpoint"], "seed": args.seed + member,
                        "wall_seconds": result["wall_seconds"],
                        **({} if args.all_slices else {"fold": member, "validation_dice": result["validation"]["dice"]["mean"],
                                                       "best_epoch": result["best_epoch"]})})
    summary: dict[str, Any] = {"members": members, "wall_seconds": time.perf_counter() - started,
                               "cpu_seconds": time.process_time() - cpu_started}
    atomic_write_text(out / "metrics.json", to_json(summary) + "\n")
    scores = ("each trained on every case, at its last epoch" if args.all_slices else
              "each one's validation Dice on its own fold " + ", ".join(f"{member['validation_dice']:.4f}" for member in members)
              + " (optimistic: each fold also chose its network's epoch)")
    print(f"ensemble of {args.members} {args.model} networks in {summary['wall_seconds'] / 60:.1f} min: {scores}; use them "
          f"together: python -m covidlib predict --checkpoint {out} --input IMAGES --output MAPS")
    return 0


def _train_network(args: argparse.Namespace, out: Path, split_seed: int) -> dict[str, Any]:
    """Train one network, its split drawn with ``split_seed``, and write OUT/{last,best}.pt,
    history.json and metrics.json; returns the metrics."""
    import torch

    from covidlib.config import seed_everything
    from covidlib.crossval import train_supervised
    from covidlib.datasets import get_dataset
    from covidlib.fingerprint import content_key
    from covidlib.inference import prepare_slices
    from covidlib.io import atomic_write_text
    from covidlib.mean_teacher import semi_supervised_settings, train_semi_supervised
    from covidlib.results import to_json
    from covidlib.train import BEST_CHECKPOINT, LAST_CHECKPOINT

    seed_everything(args.seed)
    started = time.perf_counter()
    cpu_started = time.process_time()
    dataset = get_dataset(args.dataset, args.data_root)
    split, train_ids, val_ids = _train_and_val_ids(dataset, args, split_seed)
    if args.semi and args.unlabelled_split == split:
        raise InvalidInputError(f"--unlabelled-split {args.unlabelled_split!r} is the split the network trains and "
                                "validates on; name a split of unlabelled images")
    recipe = Recipe(model=args.model, image_size=_setting(args, "image_size"), base_width=_setting(args, "base_width"),
                    depth=args.depth, epochs=_setting(args, "epochs"), lr=args.lr, step_size=args.step_size,
                    gamma=args.gamma, patience=_setting(args, "epochs") if args.all_slices else args.patience,
                    batch_size=_setting(args, "batch_size"), loss=args.loss,
                    amp=args.amp, augment=not args.no_augment, dihedral=not args.no_dihedral, tta=not args.no_tta,
                    empty_fraction=args.empty_fraction, mixup_alpha=args.mixup_alpha, ema_decay=args.ema_decay,
                    select_threshold=args.select_threshold, zoom=args.zoom, crop_size=args.crop_size,
                    crop_foreground=args.crop_foreground, max_steps_per_epoch=_setting(args, "max_steps_per_epoch"))
    n_unlabelled = 0
    if args.semi:
        n_unlabelled = args.unlabelled
        if n_unlabelled is not None and n_unlabelled < 1:
            raise InvalidInputError(f"--unlabelled must be at least 1, got {n_unlabelled}")
        if n_unlabelled is None and args.quick and args.unlabelled_split in dataset.splits:
            n_unlabelled = min(QUICK_UNLABELLED, len(dataset.case_ids(args.unlabelled_split))) or None
    prepared = prepare_slices(dataset, recipe.image_size, case_ids=train_ids + val_ids, n_unlabelled=n_unlabelled,
                              unlabelled_split=args.unlabelled_split)
    fit_ids = train_ids + val_ids if args.all_slices else train_ids
    metadata = {"dataset": args.dataset, "split": split, "train_cases": fit_ids,
                "val_cases": [] if args.all_slices else val_ids, "all_slices": args.all_slices,
                "folds": args.folds, "fold": args.fold if args.folds is not None else None, "preparation": prepared.steps}
    trainer = train_supervised(prepared, fit_ids, val_ids, recipe, seed=args.seed, device=args.device,
                               out_dir=out / "supervised" if args.semi else out, resume=args.resume, metadata=metadata,
                               progress=not args.no_progress)
    history, kept = trainer.history, trainer
    result: dict[str, Any] = {"checkpoint": str(out / (LAST_CHECKPOINT if args.all_slices else BEST_CHECKPOINT))}
    if args.all_slices:
        # chosen on cases it trained on, best.pt would look like a selected network: only last.pt is one
        (out / BEST_CHECKPOINT).unlink(missing_ok=True)
    else:
        evaluation = _validate(trainer.model, dataset, val_ids, recipe, trainer.device,
                               out / "supervised" / BEST_CHECKPOINT if args.semi else out / BEST_CHECKPOINT)
    supervised_seconds = {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu_started}
    if args.semi:
        settings = semi_supervised_settings(
            recipe.image_size, len(train_ids), network=recipe.model, base_width=recipe.base_width, depth=recipe.depth,
            semi_epochs=_setting(args, "semi_epochs", semi=True), lr=recipe.lr,
            batch_size=recipe.batch_size, amp=args.amp, device=args.device, seed=args.seed,
            max_steps_per_epoch=recipe.max_steps_per_epoch, progress=not args.no_progress,
            empty_fraction=recipe.empty_fraction, augment=recipe.augment)
        semi_run = {"method": args.semi, "unlabelled_split": args.unlabelled_split,
                    "unlabelled_cases": len(prepared.unlabelled), "settings": dataclasses.asdict(settings)}
        # a fingerprint of its own, so that `train --resume` without --semi never continues this network
        semi_metadata = {**trainer.metadata, "semi_supervised": semi_run,
                         "fingerprint": content_key(trainer.metadata["fingerprint"], semi_run, prepared.unlabelled)}
        kept, pseudo = train_semi_supervised(trainer.model, prepared.labelled, train_ids, val_ids, prepared.unlabelled,
                                             settings, args.semi, out_dir=out, metadata=semi_metadata,
                                             progress=not args.no_progress)
        history = kept.history
        supervised_evaluation, evaluation = evaluation, _validate(kept.validation_model(), dataset, val_ids, recipe,
                                                                  kept.device, out / "best.pt")
        result["semi_supervised"] = {"method": args.semi, "supervised_validation": supervised_evaluation["summary"],
                                     "supervised_seconds": supervised_seconds,
                                     "supervised_best_epoch": trainer.best_epoch, "threshold": pseudo["threshold"],
                                     "pseudo": pseudo["pseudo"], "calibration": pseudo["calibration"]}
    atomic_write_text(out / "history.json", to_json(history) + "\n")
    if not args.all_slices:
        result.update({"validation": evaluation["summary"], "per_case": evaluation["per_case"],
                       "probability_threshold": evaluation["threshold"], "best_epoch": kept.best_epoch,
                       "stopped_early": kept.stopped_early, "best_val_dice_training_size": kept.best_metric})
    result.update({
        "epochs_run": len(history), "training_cases": len(fit_ids),
        "wall_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
        "device": str(kept.device), "amp": str(kept.amp_dtype), "threads": torch.get_num_threads(),
        "settings": kept.metadata,
    })
    atomic_write_text(out / "metrics.json", to_json(result) + "\n")
    if args.all_slices:
        print(f"{args.model}: trained on all {len(fit_ids)} case(s) of split {split!r} for {len(history)} epochs, kept "
              f"the last (nothing held out, so no score: evaluate it on other cases); wrote {result['checkpoint']}")
        return result
    dice_summary = evaluation["summary"]["dice"]
    what = f"{args.model} + {args.semi}" if args.semi else args.model
    chose = "the epoch and the threshold" if recipe.select_threshold else "the epoch"
    print(f"{what}: validation Dice {dice_summary['mean']:.4f} ± {dice_summary['sd']:.4f} over {dice_summary['n']} "
          f"case(s) at threshold {evaluation['threshold']:g} (optimistic: these cases also chose {chose}), best epoch {kept.best_epoch} "
          f"of {len(history)}; wrote {out}")
    if args.semi:
        before = result["semi_supervised"]["supervised_validation"]["dice"]["mean"]
        print(f"A′, the supervised network it continued ({out / 'supervised' / 'best.pt'}): validation Dice "
              f"{before:.4f} on the same cases" + (
                  "; the continuation scored lower there, so A′ may be the better model to keep"
                  if dice_summary["mean"] < before else ""))
    return result


def _validate(model: torch.nn.Module, dataset: Any, val_ids: list[str], recipe: Recipe, device: torch.device,
              checkpoint: Path) -> dict[str, Any]:
    """``evaluate_cases`` of ``model`` on the validation cases, plus its ``threshold``: 0.5, or with
    ``recipe.select_threshold`` the one best on these cases, then also stored in ``checkpoint``."""
    from covidlib.inference import choose_threshold, evaluate_cases
    from covidlib.train import add_checkpoint_metadata

    threshold = 0.5
    if recipe.select_threshold:
        threshold = choose_threshold(model, dataset, val_ids, recipe.image_size, device, tta=recipe.tta)
        add_checkpoint_metadata(checkpoint, probability_threshold=threshold)
    evaluation = evaluate_cases(model, dataset, val_ids, recipe.image_size, device, tta=recipe.tta, threshold=threshold)
    return {**evaluation, "threshold": threshold}


def _threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


# --- evaluate ---------------------------------------------------------------------------------

def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, nargs="+", help=CHECKPOINT_HELP)
    parser.add_argument("--dataset", help="registered dataset (default: the one the checkpoint was trained on)")
    parser.add_argument("--data-root", help="the dataset's folder (default: $COVIDLIB_DATA/<dataset>)")
    parser.add_argument("--split", help="split to evaluate (default: the checkpoint's validation cases)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--per-case", action="store_true", help="include every case's metrics in the JSON")
    _threads_argument(parser)


def run_evaluate(args: argparse.Namespace) -> int:
    """Print the checkpoint's metrics on a split (or its validation cases) as JSON."""
    from covidlib.config import get_device
    from covidlib.datasets import get_dataset
    from covidlib.ensemble import load_ensemble
    from covidlib.inference import decision_threshold, evaluate_cases
    from covidlib.results import to_json

    model, metadata = load_ensemble(args.checkpoint)
    checkpoint = " ".join(args.checkpoint)
    image_size = _image_size(metadata, checkpoint)
    name = args.dataset or metadata.get("dataset")
    if not name:
        raise InvalidInputError("--dataset is needed: the checkpoint does not name its dataset")
    dataset = get_dataset(name, args.data_root)
    if args.split is not None:
        case_ids = dataset.case_ids(args.split)
    elif name == metadata.get("dataset") and metadata.get("val_cases"):
        case_ids = list(metadata["val_cases"])
    elif name != metadata.get("dataset"):
        raise InvalidInputError("--split is needed: the checkpoint's validation cases belong to another dataset")
    elif "members" in metadata:
        raise InvalidInputError("--split is needed: no case validated a network of this ensemble without training "
                                "another one (train's final model trains each on every case)")
    else:
        raise InvalidInputError("--split is needed: this network trained on every case it was given (train without "
                                "--val-fraction or --folds), none is held out")
    threshold = decision_threshold(metadata, checkpoint)
    evaluation = evaluate_cases(model, dataset, case_ids, image_size, get_device(args.device),
                                tta=bool(metadata.get("tta", False)), threshold=threshold)
    output = {"checkpoint": args.checkpoint[0] if len(args.checkpoint) == 1 else args.checkpoint, "dataset": name,
              "split": args.split or "validation cases",
              "threshold": threshold, "summary": evaluation["summary"]}
    seen = _seen_in_training(metadata, name, case_ids)
    if seen:
        output["seen_in_training"] = seen
        network = "a network of this ensemble" if "members" in metadata else "this network"
        print(f"note: of the {len(case_ids)} cases, {seen['trained_on']} trained {network} and "
              f"{seen['selected_on']} chose its epoch (and threshold): its score on them is optimistic, "
              "not a test score", file=sys.stderr)
    if args.per_case:
        output["per_case"] = evaluation["per_case"]
    print(to_json(output))
    return 0


def _seen_in_training(metadata: dict[str, Any], dataset: str, case_ids: Sequence[str]) -> dict[str, int]:
    """How many of ``case_ids`` the checkpoint trained on and selected on (empty when none, or
    when it was trained on another dataset)."""
    if metadata.get("dataset") != dataset:
        return {}
    cases = set(case_ids)
    seen = {"trained_on": len(cases & set(metadata.get("train_cases") or [])),
            "selected_on": len(cases & set(metadata.get("val_cases") or []))}
    return seen if any(seen.values()) else {}


# --- predict ----------------------------------------------------------------------------------

def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, nargs="+", help=CHECKPOINT_HELP)
    parser.add_argument("--input", required=True,
                        help="a folder of 2D images (PNG/JPG/BMP/TIFF, 8-bit grey) or a NIfTI volume (.nii/.nii.gz, HU)")
    parser.add_argument("--output", required=True,
                        help="for a folder: an output folder of 8-bit PNG probability maps (same names, .png); "
                             "for a NIfTI: the output NIfTI file (float32 probabilities, the input's geometry)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    _threads_argument(parser)


def _write_png(probabilities: np.ndarray, path: Path) -> None:
    import numpy as np
    from PIL import Image

    from covidlib.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.round(probabilities * 255.0).astype(np.uint8), mode="L").save(tmp, format="PNG")


def _image_size(metadata: dict[str, Any], checkpoint: str) -> int:
    """The square input size a checkpoint's network was trained on (``train`` and ``semi`` record it)."""
    if "image_size" not in metadata:
        raise InvalidInputError(f"checkpoint {checkpoint} does not record its input size (metadata 'image_size'); "
                                "evaluate and predict need a checkpoint written by 'train' or 'semi'")
    return int(metadata["image_size"])


def _check_8bit(path: Path) -> None:
    """Refuse an image stored with more than 8 bits a channel (16-bit PNG/TIFF, 32-bit integer or float):
    converting it to 8-bit grey levels would clip it, not scale it."""
    from PIL import Image

    with Image.open(path) as img:
        mode = img.mode
    if mode in ("I", "F") or mode.startswith(("I;", "F;")):
        raise InvalidInputError(f"{path}: a {mode!r} image (16- or 32-bit); predict needs 8-bit grey images "
                                "(converting would clip the values above 255): convert it to 8 bits first")


def _predict_folder(source: Path, target: Path) -> list[tuple[Path, Path]]:
    """(input image, output map) of every image in ``source``; raises before any work when the
    outputs would overwrite the inputs or each other."""
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"--output {target}: exists and is not a folder; a folder of images needs an output folder")
    if target.resolve() == source.resolve():
        raise InvalidInputError(f"--output {target} is the --input folder: the probability maps would overwrite or mix "
                                "with the input images; choose another output folder")
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidInputError(f"{source}: no 2D images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    first: dict[Path, Path] = {}
    for path in files:
        output = target / f"{path.stem}.png"
        if output in first:
            raise InvalidInputError(f"--input {source}: {first[output].name} and {path.name} would both be written to "
                                    f"{output}; rename one of them")
        if output.is_dir():
            raise InvalidInputError(f"--output {target}: {output} is a folder; it cannot hold the map of {path.name}")
        first[output] = path
    return [(path, output) for output, path in first.items()]


def run_predict(args: argparse.Namespace) -> int:
    """Write probability maps for a folder of 2D images or for one NIfTI volume.

    Every path and every input is checked before any output is written: an output never replaces
    an input, two inputs never share an output, and one bad image leaves no partial output."""
    import numpy as np

    from covidlib.config import get_device
    from covidlib.ct import check_hu
    from covidlib.datasets import read_8bit
    from covidlib.ensemble import load_ensemble
    from covidlib.inference import decision_threshold, grey_levels, normalise_ct_slices, normalise_slices, predict_stack
    from covidlib.io import Volume, read_volume, write_volume

    source, target = Path(args.input), Path(args.output)
    if source.is_dir():
        pairs = _predict_folder(source, target)
        images = []
        for path, _ in pairs:  # read and check every image before the first output
            grey = read_8bit(path)
            _check_8bit(path)
            normalise_slices(grey[None].astype(np.float32), str(path))  # refuses a constant image
            images.append(grey)
    elif source.name.lower().endswith(NIFTI_SUFFIXES):
        if not target.name.lower().endswith(NIFTI_SUFFIXES):
            raise InvalidInputError(f"--output {target}: a NIfTI input needs a .nii or .nii.gz output file")
        if target.resolve() == source.resolve():
            raise InvalidInputError(f"--output {target} is the --input file; it would be overwritten")
        if target.is_dir():
            raise InvalidInputError(f"--output {target}: is a folder; give a .nii or .nii.gz file name")
        volume = read_volume(source)
        check_hu(volume.array, str(source))  # as segment does: an 8-bit or normalised volume is not a CT in HU
    else:
        raise InvalidInputError(f"--input {source}: expected a folder of 2D images or a .nii/.nii.gz file")
    model, metadata = load_ensemble(args.checkpoint)
    checkpoint = " ".join(args.checkpoint)
    image_size = _image_size(metadata, checkpoint)
    tta = bool(metadata.get("tta", False))  # as the checkpoint was validated
    segments_at = (f"the {'ensemble' if 'members' in metadata else 'checkpoint'} calls a pixel infected above "
                   f"probability {decision_threshold(metadata, checkpoint):g}")
    device = get_device(args.device)
    if source.is_dir():
        for (path, output), grey in zip(pairs, images):
            image = normalise_slices(grey[None].astype(np.float32), str(path))
            _write_png(predict_stack(model, image, image_size, device, args.batch_size, tta=tta)[0], output)
        print(f"wrote {len(pairs)} probability map(s) to {target}; {segments_at}")
        return 0
    image, constant = normalise_ct_slices(grey_levels(volume.array, "hu"), str(source))
    probabilities = predict_stack(model, image, image_size, device, args.batch_size, tta=tta).astype(np.float32)
    probabilities[constant] = 0.0  # padding outside the field of view: no anatomy, so no infection (as segment)
    write_volume(Volume(array=probabilities, spacing=volume.spacing, origin=volume.origin,
                        direction=volume.direction, source=None), target)
    print(f"wrote a probability volume {probabilities.shape} to {target}; {segments_at}")
    return 0


# --- segment and semi: their work lives in the library ----------------------------------------

#: What ``segment`` says, in place of a Python warning, when ``--lung-method auto`` finds no lungmask weights.
LUNGMASK_FALLBACK_NOTE = "note: lungmask weights not found; using the classical lung mask"


def _segment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scan", nargs="?", help="CT scan in HU: NIfTI/NRRD/MetaImage file or a DICOM series folder "
                                                "(it may also come last, after --checkpoint's files)")
    parser.add_argument("-o", "--output", required=True, help="infection mask to write (.nii.gz, .nii, .nrrd, .mha)")
    parser.add_argument("--checkpoint", required=True, nargs="+", help=CHECKPOINT_HELP)
    parser.add_argument("--lung-mask", help="lung mask to write (right 1, left 2); default: <output>_lungs beside the output")
    parser.add_argument("--summary", help="also write the volume summary as JSON here")
    parser.add_argument("--lung-method", choices=LUNG_METHODS, default="auto",
                        help="lungmask when its weights are present, else classical (default: auto)")
    parser.add_argument("--lungmask-weights", help="lungmask weights file (default: R231 from the torch hub cache)")
    parser.add_argument("--series-id", help="DICOM series to read when the folder holds several")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto", help="autocast dtype (auto: bf16/fp16 on a GPU; bf16 on a CPU with native "
                        "bf16 kernels, AVX512-BF16/AMX; else float32)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    parser.add_argument("--threshold", type=float, help="infection when the probability exceeds this (default: the "
                        "checkpoint's, chosen on its validation cases by train --select-threshold, else 0.5)")
    parser.add_argument("--model", choices=sorted(MODEL_NAMES), help="architecture, for checkpoints that do not record it")
    parser.add_argument("--base-width", type=int, help="with --model: channels of the first level")
    parser.add_argument("--depth", type=int, help="with --model: number of poolings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_segment(args: argparse.Namespace) -> int:
    """:func:`covidlib.segment.run`, with ``--lung-method auto`` resolved first: a fallback to the
    classical mask is then said in one plain line before the work, not as a Python warning."""
    from covidlib import segment
    from covidlib.preprocess import LungmaskFallbackWarning, resolve_lung_method

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LungmaskFallbackWarning)
        args.lung_method = resolve_lung_method(args.lung_method, args.lungmask_weights)
    if any(issubclass(warning.category, LungmaskFallbackWarning) for warning in caught):
        print(LUNGMASK_FALLBACK_NOTE, file=sys.stderr)
    return segment.run(args)


def _semi_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="covid-semiseg", help="registered dataset with an 'unlabelled' split "
                                                                   "(default: covid-semiseg)")
    parser.add_argument("--data-root", help="the dataset's folder (default: $COVIDLIB_DATA/<dataset>)")
    parser.add_argument("--out", required=True, help="output folder: best.pt (the mean teacher) and metrics.json")
    parser.add_argument("--folds", type=int, default=5, help="k of the k-fold split of the labelled cases (default 5)")
    parser.add_argument("--fold", type=int, default=0, help="which fold (0..k-1) is held out to test (default 0)")
    parser.add_argument("--inner-val", type=int, help="non-test cases that select the best epoch (default: a fifth)")
    parser.add_argument("--unlabelled", type=int,
                        help=f"unlabelled images to pseudo-label, spread evenly (default all; quick at most {QUICK_UNLABELLED})")
    parser.add_argument("--rule", choices=[rule.replace("_", "-") for rule in PSEUDO_LABEL_RULES], default="top2",
                        help="pseudo-label rule: top2 (both best scores above a threshold chosen on the inner validation "
                             "slices) or top1-band (best in [0.87, 0.96])")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="top2 with the report's fixed threshold 0.90 instead of the calibrated one")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small images, a small network, few short epochs")
    parser.add_argument("--model", choices=sorted(MODEL_NAMES), default="unet", help="network (default: unet)")
    parser.add_argument("--image-size", type=int, help=f"square network input in pixels (default {SEMI_FULL['image_size']})")
    parser.add_argument("--base-width", type=int, help=f"channels of the first level (default {SEMI_FULL['base_width']})")
    parser.add_argument("--depth", type=int, default=4, help="number of poolings (default 4)")
    parser.add_argument("--epochs", type=int, help=f"epochs of the supervised A' (default {SEMI_FULL['epochs']})")
    parser.add_argument("--semi-epochs", type=int, help=f"epochs of each semi-supervised arm (default {SEMI_FULL['semi_epochs']})")
    parser.add_argument("--batch-size", type=int, help=f"slices (and pseudo-labelled patches) a step (default {SEMI_FULL['batch_size']})")
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap the batches of an epoch")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of A' (default 1e-3; the arms use half)")
    parser.add_argument("--patience", type=int, default=20, help="stop after this many epochs without a better validation Dice")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                        help="mixed precision: auto (bf16/fp16 on a GPU; bf16 on a CPU with native bf16 kernels, "
                        "AVX512-BF16/AMX; else float32), bf16, fp16 or off")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds, initialisation, batches and sampling")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_semi(args: argparse.Namespace) -> int:
    """:func:`covidlib.mean_teacher.run` once ``--folds`` and ``--inner-val`` are checked against
    the number of labelled cases (listing them reads no image)."""
    from covidlib import mean_teacher
    from covidlib.datasets import get_dataset

    dataset = get_dataset(args.dataset, args.data_root)
    split = dataset.default_split
    _check_semi_folds(args, split, len(dataset.case_ids(split)))
    return mean_teacher.run(args)


# --- checks before any work -------------------------------------------------------------------

def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and value >= 1


#: Flags of every command checked before any work: dest -> (test, what it must be).
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "threads": (_positive_int, "a positive integer"),
    "epochs": (_positive_int, "a positive integer"),
    "semi_epochs": (_positive_int, "a positive integer"),
    "patience": (_positive_int, "a positive integer"),
    "step_size": (_positive_int, "a positive integer"),
    "max_steps_per_epoch": (_positive_int, "a positive integer"),
    "batch_size": (_positive_int, "a positive integer"),
    "base_width": (_positive_int, "a positive integer"),
    "depth": (_positive_int, "a positive integer"),
    "image_size": (_positive_int, "a positive integer"),
    "unlabelled": (_positive_int, "at least 1"),
    "members": (_positive_int, "a positive integer"),
    "inner_val": (_positive_int, "at least 1"),
    "folds": (lambda v: isinstance(v, int) and v >= 2, "an integer of at least 2"),
    "fold": (lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
    "seed": (lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
    "lr": (lambda v: math.isfinite(v) and v > 0, "a positive number"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "mixup_alpha": (lambda v: math.isfinite(v) and v >= 0, "a non-negative number (0: no mixup)"),
    "empty_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "zoom": (lambda v: math.isfinite(v) and v >= 1, "a number of at least 1 (1: no zoom)"),
    "crop_size": (_positive_int, "a positive integer"),
    "crop_foreground": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "val_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "threshold": (lambda v: 0 < v < 1, "in (0, 1)"),
}


def _check_rules(args: argparse.Namespace) -> None:
    for dest, (test, what) in RULES.items():
        value = getattr(args, dest, None)
        if value is not None and not test(value):
            raise InvalidInputError(f"--{dest.replace('_', '-')} must be {what}, got {value}")


def _checkpoint_files(given: Sequence[str]) -> list[str]:
    """The checkpoint files of ``--checkpoint``: each file as given, and each folder ``train`` wrote
    (known by its metrics.json, written last) as the checkpoint its metrics name, or with ``--members``
    each member's, found in the folder's member-K/ so that a moved folder still works."""
    import json

    files = []
    for value in given:
        path = Path(value)
        if not path.is_dir():
            _check_input_file("--checkpoint", path)
            files.append(value)
            continue
        metrics_path = path / "metrics.json"
        if not metrics_path.is_file():
            raise InvalidInputError(f"--checkpoint {path} is a folder without metrics.json, which 'train' writes once "
                                    "it has finished; give its checkpoint file (best.pt or last.pt)")
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            named = ([path / f"member-{k}" / Path(member["checkpoint"]).name for k, member in enumerate(metrics["members"])]
                     if "members" in metrics else [path / Path(metrics.get("checkpoint", "best.pt")).name])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise InvalidInputError(f"--checkpoint {path}: {metrics_path} is not the metrics.json of a 'train' run "
                                    f"({type(error).__name__}: {error}); give a checkpoint file") from error
        for file in named:
            _check_input_file(f"--checkpoint {path}: its", file)
        files += map(str, named)
    return files


def _check_input_file(flag: str, path: Path) -> None:
    """Refuse an input file that is missing or a folder, naming its flag."""
    if not path.is_file():
        raise InvalidInputError(f"{flag} {path} {'is a folder' if path.is_dir() else 'does not exist'}; give a file")


def _check_depth(image_size: int, depth: int, flag: str = "--image-size") -> None:
    """The network halves its input (of size ``image_size``, given by ``flag``) ``depth`` times; its
    bottleneck must keep at least 2 x 2 pixels (a 1 x 1 bottleneck of a batch of one cannot be
    batch-normalised in training)."""
    if image_size // 2**depth < 2:
        deepest = max(1, int(math.log2(image_size // 2))) if image_size >= 4 else 0
        hint = f"at most {deepest}" if deepest else f"use {flag} 4 or more"
        raise InvalidInputError(f"--depth {depth} is too deep for {flag} {image_size}: {depth} poolings leave "
                                f"{image_size // 2**depth} pixel(s) at the bottleneck, the network needs at least 2 "
                                f"(--depth {hint} for this size, or a larger {flag})")


def check_train(args: argparse.Namespace) -> None:
    """``train``'s flags, alone and together, before any data is read."""
    from covidlib.io import check_output_folder

    _check_rules(args)
    # validation cases exist only where something is chosen on them or they are asked for
    holds_out = any(value is not None for value in (args.folds, args.fold, args.val_fraction, args.semi,
                                                    args.select_threshold or None, args.patience))
    args.all_slices = not holds_out
    if args.members is None:
        args.members = FINAL_MEMBERS if args.all_slices else 1
    if args.patience is None:
        args.patience = Recipe.patience
    if args.members > 1:
        for flag, value in (("--fold", args.fold), ("--val-fraction", args.val_fraction), ("--semi", args.semi)):
            if value is not None:
                raise InvalidInputError(f"{flag} acts on one network; --members {args.members} trains network K on "
                                        "fold K of --folds")
        if args.folds is None:
            args.folds = max(ENSEMBLE_FOLDS, args.members)
        elif args.folds < args.members:
            raise InvalidInputError(f"--members {args.members} needs --folds of at least {args.members}: each network "
                                    f"validates on its own fold, got --folds {args.folds}")
    if args.folds is None:
        if args.fold is not None:
            raise InvalidInputError(f"--fold {args.fold} needs --folds (k of the k-fold split)")
        if args.val_fraction is None:
            args.val_fraction = 0.2
    else:
        if args.val_fraction is not None:
            raise InvalidInputError("--val-fraction and --folds exclude each other: with --folds the fold validates")
        if args.fold is None:
            args.fold = 0
    if not args.semi:
        given = [flag for flag, value in (("--semi-epochs", args.semi_epochs), ("--unlabelled", args.unlabelled),
                                          ("--unlabelled-split", args.unlabelled_split)) if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)} {'acts' if len(given) == 1 else 'act'} only with --semi")
    if args.unlabelled_split is None:
        args.unlabelled_split = "unlabelled"
    _check_depth(_setting(args, "image_size"), args.depth)
    if args.crop_size is not None:
        if args.crop_size > _setting(args, "image_size"):
            raise InvalidInputError(f"--crop-size {args.crop_size} is larger than --image-size "
                                    f"{_setting(args, 'image_size')}: the window must fit in the slice")
        _check_depth(args.crop_size, args.depth, "--crop-size")
    elif args.crop_foreground != Recipe.crop_foreground:
        raise InvalidInputError("--crop-foreground acts only with --crop-size")
    if args.no_augment and args.zoom != Recipe.zoom:
        raise InvalidInputError(f"--zoom {args.zoom:g} is part of the augmentation that --no-augment switches off")
    check_output_folder("--out", Path(args.out))


def check_semi(args: argparse.Namespace) -> None:
    """``semi``'s flags before any data is read (:func:`run_semi` checks those that depend on the
    number of labelled cases)."""
    from covidlib.io import check_output_folder

    _check_rules(args)
    if args.fold >= args.folds:
        raise InvalidInputError(f"--fold must be in [0, {args.folds - 1}] for --folds {args.folds}, got {args.fold}")
    image_size = _setting(args, "image_size", semi=True)
    if image_size < 16:
        raise InvalidInputError(f"--image-size must be an integer of at least 16, got {image_size}")
    _check_depth(image_size, args.depth)
    check_output_folder("--out", Path(args.out))


def _check_semi_folds(args: argparse.Namespace, split: str, n_cases: int) -> None:
    """``semi``'s ``--folds`` and ``--inner-val`` against the ``n_cases`` labelled cases of ``split``:
    every fold must leave, besides its test cases, at least one case to select the epoch and one to
    train (the limits :func:`covidlib.crossval.nested_folds` enforces, named by flag)."""
    from covidlib.crossval import allowed_folds, largest_inner_val

    cases = f"split {split!r} of dataset {args.dataset!r} has {n_cases} labelled case(s)"
    folds = allowed_folds(n_cases)
    if not folds:
        raise InvalidInputError(f"{cases}; semi needs at least 3: to test, to select the epoch and to train")
    if args.folds not in folds:
        raise InvalidInputError(f"--folds {args.folds}: {cases}; --folds must be in [{folds[0]}, {folds[-1]}] so that "
                                "every fold leaves a case to select the epoch and one to train")
    largest = largest_inner_val(n_cases, args.folds)
    if args.inner_val is not None and args.inner_val > largest:
        raise InvalidInputError(f"--inner-val {args.inner_val}: with --folds {args.folds} of the {n_cases} labelled "
                                f"cases, a fold leaves {largest + 1} non-test cases and none would train; "
                                f"--inner-val must be at most {largest}")


def check_predict(args: argparse.Namespace) -> None:
    """``predict``'s numbers and checkpoint (its other paths are checked by :func:`run_predict` before any work)."""
    _check_rules(args)
    args.checkpoint = _checkpoint_files(args.checkpoint)


def check_evaluate(args: argparse.Namespace) -> None:
    """``evaluate``'s flags before the checkpoint or any data is read."""
    _check_rules(args)
    args.checkpoint = _checkpoint_files(args.checkpoint)


def check_segment(args: argparse.Namespace) -> None:
    """``segment``'s flags and paths before the checkpoint or the scan is read."""
    from covidlib.preprocess import lungmask_weights
    from covidlib.io import check_output_file
    from covidlib.segment import check_output_paths, default_lung_mask_path

    _check_rules(args)
    if args.scan is None:  # `segment --checkpoint a.pt [b.pt ...] scan`: --checkpoint took the scan too
        if len(args.checkpoint) < 2:
            raise InvalidInputError("segment needs a scan: give the CT file or DICOM folder before --checkpoint")
        args.scan = args.checkpoint.pop()
    if not Path(args.scan).exists():
        raise InvalidInputError(f"scan {args.scan}: no such file or folder; give a CT file or a DICOM series folder")
    args.checkpoint = _checkpoint_files(args.checkpoint)
    if args.lungmask_weights is not None:
        _check_input_file("--lungmask-weights", Path(args.lungmask_weights))
    elif args.lung_method == "lungmask" and lungmask_weights() is None:
        raise InvalidInputError("--lung-method lungmask: no lungmask weights in the torch hub cache; give "
                                "--lungmask-weights, or use --lung-method auto or classical")
    lung_mask = Path(args.lung_mask) if args.lung_mask else default_lung_mask_path(args.output)
    check_output_paths(args.scan, args.output, lung_mask, args.summary)
    for flag, path in (("-o/--output", args.output), ("--lung-mask", lung_mask), ("--summary", args.summary)):
        if path is not None:
            check_output_file(flag, Path(path))


# --- the command table ------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help, its arguments and what it runs (returns an exit code)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    #: checks the parsed arguments before any work (raises InvalidInputError naming the flag)
    check: Callable[[argparse.Namespace], None] | None = None
    #: what to say when Ctrl-C stops it (from the arguments), or None for nothing
    interrupted: Callable[[argparse.Namespace], str] | None = None


COMMANDS: dict[str, Command] = {
    "train": Command("train a final model (two 2D networks of every labelled case) or one validated network",
                     _train_arguments, run_train,
                     check_train, lambda args: _train_interrupted(args)),
    "evaluate": Command("evaluate a checkpoint on a dataset split; prints metrics as JSON", _evaluate_arguments, run_evaluate,
                        check_evaluate),
    "predict": Command("probability maps for a folder of 2D images or a NIfTI volume", _predict_arguments, run_predict,
                       check_predict),
    "segment": Command("infection and lung masks of a CT scan on its own grid, with volumes in mL",
                       _segment_arguments, run_segment, check_segment),
    "semi": Command("one fold of supervised A' vs + pseudo-labels vs + mean teacher, using the unlabelled split",
                    _semi_arguments, run_semi, check_semi,
                    lambda args: "interrupted; semi has no --resume: run the same command again to start over"),
}


def _train_interrupted(args: argparse.Namespace) -> str:
    """What ``--resume`` would do after Ctrl-C stopped ``train``: continue the supervised stage's
    ``last.pt`` (written after every epoch) when one exists; the ``--semi`` stage starts again."""
    if args.members > 1:
        return ("interrupted; the same command with --resume keeps the networks it finished and continues the "
                f"others from {Path(args.out)}/member-K/last.pt")
    last = Path(args.out) / ("supervised" if args.semi else "") / "last.pt"
    if not last.is_file():
        return f"interrupted before the first epoch ended: no {last} to resume from; run the same command again"
    again = "; the --semi stage starts again" if args.semi else ""
    return f"interrupted; the same command with --resume continues from {last}{again}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser for each entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="python -m covidlib",
        description="COVID-19 lung-infection segmentation in chest CT: train, evaluate and apply 2D U-Nets.",
        epilog="Example: python -m covidlib train --dataset covid-semiseg --data-root DATA --model attention-unet --out runs/att",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(subparsers.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Bad input (a missing file, an unknown dataset, a mask that does not fit, a flag out of range)
    is reported on stderr as one line and gives exit code 2. Ctrl-C during ``train`` or ``semi``
    prints one line (how to continue) and gives exit code 130.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    try:
        if command.check is not None:
            command.check(args)
        if getattr(args, "threads", None) is not None:
            import torch

            torch.set_num_threads(args.threads)
        return command.run(args)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if command.interrupted is None:
            raise
        print(f"\n{command.interrupted(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
