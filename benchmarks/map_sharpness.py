"""How much of Inf-Net's mean Dice measures a map's confidence rather than where it is right.

Inf-Net's evaluation (Fan et al., IEEE TMI 2020; :func:`covidlib.metrics.infnet_metrics`), which every
published COVID-SemiSeg number uses, rescales each probability map by its own minimum and maximum and
averages Dice over 256 thresholds from 1 down to 0. A map that hesitates near a lesion's edge (as the
mean of test-time augmentation's 8 predictions and the resize back to the slice's size make it) loses
Dice at the thresholds far from 0.5; a confident one keeps it. Sharpening a map at temperature T,
``p -> p^(1/T) / (p^(1/T) + (1 - p)^(1/T))`` (its log-odds divided by T), keeps every pixel on its side
of 0.5, so Dice at 0.5 does not move while Inf-Net's mean Dice does; at T = 0 the map is the mask
itself and its mean Dice is (255 x Dice at 0.5 + Dice of calling every pixel infected) / 256.

For each (seed, outer fold) of nested CV, A' at ``train``'s defaults (``Recipe()``, read from or
trained into the ablation's cache ``--supervised-runs``) predicts its outer test fold with test-time
augmentation, and each map is scored at each of ``--temperatures`` (1: as predicted; 0: binarised at
0.5). Each temperature's Inf-Net mean Dice is paired with the map as predicted over the units, with a
95 % bootstrap CI. The record goes to ``records/reference-covid-semiseg/map_sharpness.json`` (chapter
09 shows it beside the published results); resumable and rechecked as ``semi_recipe`` is.

    .venv/bin/python benchmarks/map_sharpness.py --seeds 0
    .venv/bin/python benchmarks/map_sharpness.py --quick --out /tmp/sharpness   # the whole path in minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from _nested_cv import METRICS, nested_cv_parser, open_data, run_units
from covidlib.datasets import Dataset
from covidlib.inference import PreparedSlices, case_metrics, load_model, predict_cases
from covidlib.recipe import Recipe
from covidlib.statistics import paired_bootstrap_ci

#: ``train``'s defaults, a row of benchmarks/ablation.py.
RECIPE = Recipe()
#: The map as the network and its test-time augmentation give it.
AS_PREDICTED = 1.0


def temperatures(text: str) -> list[float]:
    """``"1,0.5,0"`` -> ``[1.0, 0.5, 0.0]``: each at least 0, 1 (the map as predicted) among them; an argparse ``type``."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,0.5,0, got {text!r}") from None
    if any(not value >= 0 for value in values) or AS_PREDICTED not in values or len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"expected distinct temperatures of at least 0, 1 among them, got {text!r}")
    return values


def sharpen(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``probabilities`` (any shape, in [0, 1]) with their log-odds divided by ``temperature``: the same
    side of 0.5 everywhere, more confident below 1, less above; 0 gives the mask ``p > 0.5`` (as 0.0 and 1.0)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature == 0:
        return (p > 0.5).astype(np.float64)
    with np.errstate(divide="ignore"):
        log_odds = np.log(p) - np.log1p(-p)
    return 0.5 * (1.0 + np.tanh(log_odds / (2.0 * temperature)))  # the logistic function, exact at +-inf


def label(temperature: float) -> str:
    """A row's name: the map as predicted, sharpened at ``temperature``, or binarised."""
    if temperature == AS_PREDICTED:
        return "as predicted (T = 1)"
    return "binarised at 0.5 (T = 0)" if temperature == 0 else f"log-odds / {temperature:g}"


def run_fold(args: argparse.Namespace, dataset: Dataset, prepared: PreparedSlices, recipe: Recipe,
             a_prime_result: dict, checkpoint: Path) -> dict:
    """One (seed, fold)'s A' test-fold maps (with TTA) scored at each of ``args.temperatures``, averaged over its slices."""
    started = time.perf_counter()
    model, _ = load_model(checkpoint)
    per_case: dict[str, dict[str, list[float]]] = {str(t): {metric: [] for metric in METRICS} for t in args.temperatures}
    for _, probabilities, mask in predict_cases(model, dataset, a_prime_result["test"], recipe.image_size, tta=True):
        for temperature in args.temperatures:
            scores = case_metrics(sharpen(probabilities, temperature), mask)
            for metric in METRICS:
                per_case[str(temperature)][metric].append(scores[metric.removeprefix("tta_")])
    result = {"seed": a_prime_result["seed"], "fold": a_prime_result["fold"], "test": a_prime_result["test"],
              "scores": {t: {metric: float(np.mean(values)) for metric, values in by_metric.items()}
                         for t, by_metric in per_case.items()},
              "seconds": time.perf_counter() - started}
    shown = ", ".join(f"T={t} {scores['tta_infnet_mean_dice']:.4f}" for t, scores in result["scores"].items())
    print(f"seed {result['seed']} fold {result['fold']}: Dice at 0.5 {result['scores'][str(AS_PREDICTED)]['tta_dice']:.4f}; "
          f"Inf-Net mean Dice {shown}", flush=True)
    return result


def summarise(results: list[dict], temperature_list: Sequence[float]) -> dict:
    """A row a temperature: both metrics' means over (seed, fold) units, and Inf-Net mean Dice's paired
    change from the map as predicted with its 95 % bootstrap CI."""
    def by_unit(temperature: float, metric: str) -> list[float]:
        return [result["scores"][str(temperature)][metric] for result in results]

    rows = []
    for temperature in temperature_list:
        row = {"arm": str(temperature), "temperature": temperature, "label": label(temperature),
               "units": [[result["seed"], result["fold"]] for result in results],
               **{f"{metric}_by_unit": by_unit(temperature, metric) for metric in METRICS},
               **{f"{metric}_mean": float(np.mean(by_unit(temperature, metric))) for metric in METRICS},
               "tta_dice_sd_over_units": float(np.std(by_unit(temperature, "tta_dice"), ddof=1)) if len(results) > 1 else 0.0}
        if temperature != AS_PREDICTED and len(results) > 1:
            row["tta_infnet_mean_dice_change_vs_control"] = {
                **paired_bootstrap_ci(by_unit(AS_PREDICTED, "tta_infnet_mean_dice"),
                                      by_unit(temperature, "tta_infnet_mean_dice")).as_dict(),
                "against": label(AS_PREDICTED)}
        rows.append(row)
    return {"rows": rows}


def main() -> None:
    parser = nested_cv_parser(__doc__, record="map_sharpness", supervised_runs="A' is read or trained",
                              quick="tiny networks and 2 epochs: checks the path")
    parser.add_argument("--temperatures", type=temperatures, default="1,0.5,0.25,0.1,0",
                        help="temperatures each map is scored at: 1 as predicted, 0 binarised at 0.5 "
                             "(default 1,0.5,0.25,0.1,0)")
    args = parser.parse_args()
    if (opened := open_data(args, RECIPE)) is None:
        return
    runtime, recipe, dataset, prepared = opened
    parameters = {"data_root": args.data_root, "seeds": args.seeds, "temperatures": args.temperatures,
                  "recipe": dataclasses.asdict(recipe), "folds": args.folds, "quick": args.quick}
    run_units(args, dataset, prepared, recipe, parameters, runtime, run_fold,
              lambda results: summarise(results, args.temperatures))


if __name__ == "__main__":
    main()
