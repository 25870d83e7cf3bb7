"""Nested cross-validation on a few labelled slices: the outer fold only scores.

With 50 labelled slices every choice made on the slices that are then scored inflates the score.
Here each outer fold's test slices are used once, to score; the epoch is picked on an inner
validation split of the remaining slices (:func:`nested_folds`), and so is a probability threshold
(:func:`covidlib.inference.choose_threshold`). Each (seed, fold) is one JSON file keyed by the
recipe (:class:`covidlib.recipe.Recipe`), so a run that is interrupted continues where it stopped,
and a changed recipe or changed code is computed afresh.

Scores are per slice at the slice's own resolution: Dice at 0.5 and at the chosen threshold and, when
:func:`covidlib.metrics.infnet_metrics` is there, Inf-Net's mean Dice over thresholds
(Fan et al., "Inf-Net", IEEE TMI 2020), the number every published result on COVID-SemiSeg uses.

Introduced in chapter 04 (supervised) and used by chapter 08 (semi-supervised).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib.augment import RandomCrop, RandomTransform, default_augmentation
from covidlib.data import SliceDataset, kfold_volumes, seeded_loader, split_volumes
from covidlib.datasets import Dataset as CaseDataset
from covidlib.errors import InvalidInputError
from covidlib.fingerprint import changed_sources, code_fingerprint, content_key, imported_modules, settings_key
from covidlib.inference import PreparedSlices, case_metrics, choose_threshold, predict_cases
from covidlib.metrics import dice
from covidlib.io import atomic_write_text
from covidlib.models import get_model
from covidlib.recipe import Recipe, key_fields
from covidlib.train import TrainConfig, Trainer, mixup_transform


@dataclass(frozen=True)
class Fold:
    """One outer fold: ``train`` fits, ``val`` picks the epoch, ``test`` only scores."""

    index: int
    train: list[str]
    val: list[str]
    test: list[str]


def largest_inner_val(n_cases: int, folds: int) -> int:
    """The largest inner-validation count (``n_val`` of :func:`nested_folds`) of ``n_cases`` cases
    in ``folds`` outer folds: the non-test cases a largest test fold leaves (fold sizes differ by at
    most one, :func:`covidlib.data.kfold_volumes`), less one to train. Below 1 when such a fold
    leaves no case either to select the epoch or to train."""
    return n_cases - math.ceil(n_cases / folds) - 1


def allowed_folds(n_cases: int) -> range:
    """The fold counts :func:`nested_folds` accepts for ``n_cases`` cases: from the fewest whose
    every fold leaves, besides its test cases, a case to select the epoch and one to train
    (:func:`largest_inner_val` at least 1), up to ``n_cases`` folds; empty below 3 cases."""
    counts = [folds for folds in range(2, n_cases + 1) if largest_inner_val(n_cases, folds) >= 1]
    return range(counts[0], n_cases + 1) if counts else range(0)


def nested_folds(case_ids: Sequence[str], folds: int, seed: int, n_val: int | None = None) -> list[Fold]:
    """The ``folds`` outer folds of ``case_ids``; of each fold's non-test cases, ``n_val``
    (default a fifth, at least 1) select the epoch and the others train.

    Test folds are :func:`covidlib.data.kfold_volumes` with ``seed``; fold ``k``'s validation
    draw uses ``seed + k``. Every case is tested exactly once. ``folds`` must lie in
    :func:`allowed_folds` and ``n_val`` in [1, :func:`largest_inner_val`].
    """
    splits = kfold_volumes(case_ids, folds, seed)  # first: it refuses a `folds` outside [2, n]
    result = []
    for index, (train_val, test) in enumerate(splits):
        count = max(1, len(train_val) // 5) if n_val is None else n_val
        if not 1 <= count < len(train_val):
            raise InvalidInputError(f"the validation count must be in [1, {len(train_val) - 1}] for the "
                                    f"{len(train_val)} non-test cases of fold {index}, got {count!r}")
        train, val = split_volumes(train_val, count, seed + index)
        result.append(Fold(index, train, val, test))
    return result


def model_options(recipe: Recipe) -> dict[str, int]:
    """The keyword arguments of ``recipe``'s network (:func:`covidlib.models.get_model`)."""
    return {"in_channels": 1, "num_classes": 2, "base_width": recipe.base_width, "depth": recipe.depth}


def train_config(recipe: Recipe, seed: int, device: str, progress: bool) -> TrainConfig:
    """``recipe``'s training settings for one run."""
    return TrainConfig(epochs=recipe.epochs, lr=recipe.lr, step_size=recipe.step_size, gamma=recipe.gamma,
                       patience=recipe.patience, loss=recipe.loss, amp=recipe.amp,
                       max_steps_per_epoch=recipe.max_steps_per_epoch, seed=seed, device=device, progress=progress,
                       ema_decay=recipe.ema_decay)


def training_transform(recipe: Recipe) -> RandomTransform | None:
    """What each training slice of ``recipe`` goes through: its window (``recipe.crop_size``, one that
    holds infection with probability ``recipe.crop_foreground``), then the augmentation
    (``recipe.augment``); ``None`` when neither."""
    if recipe.augment:
        return default_augmentation(dihedral=recipe.dihedral, zoom=recipe.zoom, crop=recipe.crop_size,
                                    crop_foreground=recipe.crop_foreground)
    return None if recipe.crop_size is None else RandomCrop(recipe.crop_size, foreground=recipe.crop_foreground)


def slice_dataset(prepared: PreparedSlices, ids: Sequence[str], recipe: Recipe, *, training: bool,
                  seed: int) -> SliceDataset:
    """The slices of ``ids`` from ``prepared`` (already at ``recipe.image_size``); for training through
    :func:`training_transform`, whole otherwise."""
    transform = training_transform(recipe) if training else None
    return SliceDataset([prepared.labelled[i] for i in ids], case_ids=list(ids), transform=transform, seed=seed,
                        empty_fraction=recipe.empty_fraction if training else 1.0)


def training_code() -> dict[str, str]:
    """The source a supervised run's numbers depend on (:func:`covidlib.fingerprint.code_fingerprint`):
    this module and every ``covidlib`` module it imports, directly or not, so that a change to the
    windowing or normalisation of the slices stales stored runs too. Less ``covidlib.recipe``: a run's
    key and fingerprint already hold every field of its recipe, so a new default stales nothing."""
    return code_fingerprint(name for name in imported_modules([__name__]) if name != "covidlib.recipe")


def training_fingerprint(prepared: PreparedSlices, train_ids: Sequence[str], val_ids: Sequence[str], recipe: Recipe,
                         seed: int) -> str:
    """What a supervised run's checkpoints are keyed by, so that ``resume`` never continues a run
    of other settings, slices or code: the recipe, the seed, the split, the slices' content and
    the source of :func:`training_code`."""
    return content_key(dataclasses.asdict(recipe), seed, list(train_ids), list(val_ids),
                       [prepared.labelled[i] for i in [*train_ids, *val_ids]], training_code())


def train_supervised(prepared: PreparedSlices, train_ids: Sequence[str], val_ids: Sequence[str], recipe: Recipe, *,
                     seed: int = 0, device: str = "auto", out_dir: str | Path | None = None, resume: bool = False,
                     metadata: Mapping[str, Any] | None = None, progress: bool = False) -> Trainer:
    """Train ``recipe``'s network on ``train_ids``, keeping the epoch best on ``val_ids``.

    With ``out_dir`` the run checkpoints every epoch (``last.pt``, ``best.pt``, readable by
    :func:`covidlib.inference.load_model`, with ``metadata`` added); ``resume`` continues from
    ``last.pt`` when it holds the same :func:`training_fingerprint`. The one training path of nested CV and of ``python -m covidlib train``.
    """
    torch.manual_seed(seed)
    model = get_model(recipe.model, **model_options(recipe))
    trainer = Trainer(model, train_config(recipe, seed, device, progress), out_dir=out_dir,
                      batch_transform=mixup_transform(recipe.mixup_alpha) if recipe.mixup_alpha > 0 else None,
                      metadata={**(metadata or {}), "model": recipe.model, "model_options": model_options(recipe),
                                "image_size": recipe.image_size, "tta": recipe.tta,
                                "recipe": dataclasses.asdict(recipe),
                                "fingerprint": training_fingerprint(prepared, train_ids, val_ids, recipe, seed)})
    train = seeded_loader(slice_dataset(prepared, train_ids, recipe, training=True, seed=seed),
                          recipe.batch_size, shuffle=True, seed=seed)
    val = seeded_loader(slice_dataset(prepared, val_ids, recipe, training=False, seed=seed),
                        recipe.batch_size, shuffle=False, seed=seed)
    trainer.fit(train, val, resume=resume, progress_label="supervised epochs")
    return trainer


def score_cases(model: nn.Module, dataset: CaseDataset, case_ids: Sequence[str], recipe: Recipe,
                device: str | torch.device = "auto", threshold: float | None = None) -> dict[str, dict[str, float]]:
    """``{case_id: scores}`` of ``model`` on ``case_ids`` at each slice's own size: at 0.5
    (:func:`covidlib.inference.case_metrics`), with ``recipe.tta`` the same prefixed ``tta_``; with a
    ``threshold`` (chosen on validation slices, :func:`covidlib.inference.choose_threshold`) also the
    Dice of the recipe's own prediction (with TTA when ``recipe.tta``) at it, as ``[tta_]dice_at_val_threshold``."""
    per_case: dict[str, dict[str, float]] = {}
    for tta in (False, True) if recipe.tta else (False,):
        prefix = "tta_" if tta else ""
        for case_id, probabilities, mask in predict_cases(model, dataset, case_ids, recipe.image_size, device, tta=tta):
            scores = case_metrics(probabilities, mask)
            if threshold is not None and tta == recipe.tta:
                scores["dice_at_val_threshold"] = dice(probabilities > threshold, mask)
            per_case.setdefault(case_id, {}).update({prefix + name: value for name, value in scores.items()})
    return per_case


def scored_metric(recipe: Recipe) -> str:
    """The per-slice score ``recipe`` is judged by in :func:`score_cases`'s results: Dice, with TTA
    when ``recipe.tta``, at the threshold chosen on the inner validation slices when
    ``recipe.select_threshold``, else at 0.5."""
    return ("tta_" if recipe.tta else "") + ("dice_at_val_threshold" if recipe.select_threshold else "dice")


def run_key(recipe: Recipe, dataset: str, folds: int) -> str:
    """The folder name of a recipe's runs: a hash of the recipe, the dataset and the fold count."""
    return f"{recipe.model}-{settings_key([key_fields(recipe), dataset, folds])}"


def run_nested_cv(dataset: CaseDataset, prepared: PreparedSlices, recipe: Recipe, out_dir: str | Path, *,
                  folds: int = 5, seeds: Sequence[int] = (0,), device: str = "auto", checkpoints: bool = True,
                  progress: bool = True, fold_indices: Sequence[int] | None = None,
                  compute: bool = True) -> list[dict[str, Any]]:
    """Every (seed, outer fold) of ``recipe``: train on the inner split, score the outer test fold.

    ``prepared``: the dataset's labelled slices at ``recipe.image_size``
    (:func:`covidlib.inference.prepare_slices`). One JSON result per (seed, fold) goes to
    ``out_dir/<run_key>/``; a result whose recipe or code is unchanged is read instead of
    recomputed, and with ``checkpoints`` an interrupted training resumes from its last epoch.
    ``fold_indices``: run only these outer folds (of ``folds``; e.g. a cheaper check on a few).
    ``compute=False`` only reads: (seed, fold) pairs without an up-to-date stored result are left out.
    Returns the results in (seed, fold) order, each with the training's per-epoch ``history``.
    """
    if fold_indices is not None and not set(fold_indices) <= set(range(folds)):
        raise InvalidInputError(f"fold_indices must lie in 0..{folds - 1} for {folds} folds, got {list(fold_indices)}")
    ids = sorted(prepared.labelled)
    folder = Path(out_dir) / run_key(recipe, dataset.name, folds)
    code = training_code()
    results = []
    jobs = [(seed, fold) for seed in seeds for fold in nested_folds(ids, folds, seed)
            if fold_indices is None or fold.index in fold_indices]
    for seed, fold in tqdm(jobs, desc=f"nested CV {recipe.model}", disable=not progress):
        path = folder / f"seed{seed}_fold{fold.index}.json"
        stored = _stored_result(path)
        if stored is not None and not changed_sources(stored["code"]):
            results.append(stored)
            continue
        if not compute:
            continue
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer = train_supervised(prepared, fold.train, fold.val, recipe, seed=seed, device=device,
                                   out_dir=folder / f"seed{seed}_fold{fold.index}" if checkpoints else None,
                                   resume=checkpoints)
        threshold = choose_threshold(trainer.model, dataset, fold.val, recipe.image_size, trainer.device, tta=recipe.tta)
        per_case = score_cases(trainer.model, dataset, fold.test, recipe, trainer.device, threshold)
        result = {"seed": seed, "fold": fold.index, "train": fold.train, "val": fold.val, "test": fold.test,
                  "recipe": dataclasses.asdict(recipe), "dataset": dataset.name, "best_epoch": trainer.best_epoch,
                  "val_threshold": threshold,
                  "epochs_run": len(trainer.history), "best_val_dice": trainer.best_metric, "per_case": per_case,
                  "history": trainer.history,
                  "wall_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
                  "threads": torch.get_num_threads(), "code": code}
        atomic_write_text(path, json.dumps(result, indent=1, allow_nan=True) + "\n")
        results.append(result)
    return results


def _stored_result(path: Path) -> dict[str, Any] | None:
    """The result stored at ``path``, or None when there is none; a damaged one (e.g. cut short
    by a full disk) is recomputed, with a warning naming it."""
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(stored, dict) and isinstance(stored.get("code"), dict):
            return stored
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    warnings.warn(f"{path}: not a readable nested-CV result; computing it again", stacklevel=3)
    return None


def fold_means(results: Sequence[dict[str, Any]], metric: str = "dice") -> dict[int, list[float]]:
    """``{seed: [mean of metric over the fold's test slices, for each fold]}``."""
    table: dict[int, list[float]] = {}
    for result in results:
        values = [row[metric] for row in result["per_case"].values()]
        table.setdefault(result["seed"], []).append(float(np.nanmean(values)))
    return table
