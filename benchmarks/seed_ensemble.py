"""Ensembles of A' networks of different seeds, against the networks alone: what averaging buys.

Every seed of nested cross-validation draws its own outer folds, and every labelled slice lies in
the test fold of exactly one outer fold of each seed. So for any ``--members`` seeds, each slice has
one network of each that never trained on it nor chose its epoch on it: their
:class:`covidlib.ensemble.Ensemble` (the mean of their probabilities, with test-time augmentation)
scores it out of sample. The networks are A' of ``train``'s recipe (``Recipe()``), read from (or
trained into) the ablation's cache ``--supervised-runs``, so this costs only prediction.

The members differ in their training slices as well as in their initialisation (as nnU-Net's
cross-validation ensemble does); an ensemble costs its members' training time, ``--members`` times
one network's. A unit is (combination of seeds, outer fold of its first seed): the ensemble's mean
Dice on that fold's test slices against the mean of its members' Dice on the same slices, with a 95 %
bootstrap CI of the paired difference. Its fair rival is one network trained as long: with
``--control-seeds``, A' of those seeds trained ``--members`` times the epochs (the ablation's row "two
networks' budget" for two) is read from (or trained into) the same cache, and each of its (seed, outer
fold) units is paired with the ensembles' mean Dice on the same test slices. The record goes to
``records/reference-covid-semiseg/seed_ensemble.json`` (chapter 09 shows it); it is computed whole
each time (minutes), the trainings it reads resume as the ablation's do.

The same cache answers a question about one network: what choosing its epoch on the inner validation
slices buys. Each run keeps its chosen epoch (``best.pt``) and its last (``last.pt``, epoch 600 in the
recipe); the record also scores every (seed, outer fold) at its last epoch, and by the mean of its
chosen and last epochs (a two-snapshot ensemble that costs no training), each paired with the chosen
epoch alone. Each labelled slice's infected share (of its pixels, as stored) is kept
beside its Dice by one network and by an ensemble: where the Dice is lost.

    .venv/bin/python benchmarks/seed_ensemble.py --seeds 0,1,2 --control-seeds 0 --threads 2
    .venv/bin/python benchmarks/seed_ensemble.py --quick --out /tmp/ensemble   # the whole path in minutes
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np

from _nested_cv import (METRICS, budget_changes, comparable_record, integers, nested_cv_parser, open_data, print_rows,
                        record_path, require_among_seeds)
from covidlib.crossval import run_key, run_nested_cv, score_cases
from covidlib.datasets import Dataset
from covidlib.ensemble import Ensemble
from covidlib.errors import InvalidInputError
from covidlib.inference import load_model
from covidlib.recipe import Recipe
from covidlib.results import write_record
from covidlib.statistics import paired_bootstrap_ci
from covidlib.train import BEST_CHECKPOINT, LAST_CHECKPOINT

#: ``train``'s recipe, a row of benchmarks/ablation.py.
RECIPE = Recipe()
#: One network's checkpoints scored beside its chosen epoch: arm, label, the checkpoint files averaged.
CHECKPOINT_ARMS = (("last", "one network at its last epoch (none chosen)", (LAST_CHECKPOINT,)),
                   ("snapshots", "mean of one network's chosen and last epochs", (BEST_CHECKPOINT, LAST_CHECKPOINT)))


def ensemble_scores(dataset: Dataset, recipe: Recipe, results: dict[int, list[dict]], folder: Path,
                    combination: tuple[int, ...], checkpoints: tuple[str, ...] = (BEST_CHECKPOINT,)
                    ) -> dict[str, dict[str, float]]:
    """``{case_id: scores}`` of the ensemble of ``combination``'s seeds on every labelled slice, each
    slice predicted by the networks (one a seed, ``folder/seed<s>_fold<k>/<checkpoint>`` for each of
    ``checkpoints``) whose outer test fold held it (:func:`covidlib.crossval.score_cases`, as A' itself
    is scored); one checkpoint of one seed is that network alone."""
    test_fold = {seed: {case: result["fold"] for result in results[seed] for case in result["test"]} for seed in combination}
    groups: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for case in sorted(test_fold[combination[0]]):
        groups[tuple(test_fold[seed][case] for seed in combination)].append(case)
    per_case: dict[str, dict[str, float]] = {}
    for folds, cases in groups.items():
        members = [load_model(folder / f"seed{seed}_fold{fold}" / checkpoint)[0]
                   for seed, fold in zip(combination, folds) for checkpoint in checkpoints]
        per_case.update(score_cases(members[0] if len(members) == 1 else Ensemble(members), dataset, cases, recipe))
    return per_case


def fold_means(results: dict[int, list[dict]], per_case: dict[str, dict[str, float]] | None = None) -> dict:
    """``{(seed, fold): {metric: mean over that outer fold's test slices}}`` of nested-CV ``results``, scored
    by their own networks, or by ``per_case`` (``{case_id: scores}``) when it is given."""
    return {(seed, result["fold"]): {metric: float(np.mean([(per_case or result["per_case"])[case][metric]
                                                            for case in result["test"]])) for metric in METRICS}
            for seed in results for result in results[seed]}


def row_of(arm: str, label: str, by_unit: list[dict[str, float]]) -> dict:
    """A summary row: each metric's mean over ``by_unit`` (one dict of scores a unit), and Dice's sd."""
    dice = [unit["tta_dice"] for unit in by_unit]
    return {"arm": arm, "label": label, "units": len(by_unit), "tta_dice_by_unit": dice,
            **{f"{metric}_mean": float(np.mean([unit[metric] for unit in by_unit])) for metric in METRICS},
            "tta_dice_sd_over_units": float(np.std(dice, ddof=1)) if len(dice) > 1 else 0.0}


def paired_change(control: list[float], arm: list[float], against: str) -> dict | None:
    """``arm − control`` with its 95 % bootstrap CI (paired units), or ``None`` below two units."""
    return {**paired_bootstrap_ci(control, arm).as_dict(), "against": against} if len(arm) > 1 else None


def summarise(results: dict[int, list[dict]], ensembles: dict[tuple[int, ...], dict[str, dict[str, float]]],
              controls: dict[int, list[dict]] | None = None,
              checkpoints: dict[str, dict[int, dict[str, dict[str, float]]]] | None = None,
              infected_share: dict[str, float] | None = None) -> dict:
    """The networks alone (mean ± sd over (seed, fold)), each ensemble's mean, and the paired difference
    ensemble − its members' mean over (combination, fold of its first seed) units with a 95 % bootstrap CI.
    With ``checkpoints`` (``{arm: {seed: {case_id: scores}}}``, :data:`CHECKPOINT_ARMS`' scores of each
    seed's networks) a row an arm, paired with the networks at their chosen epochs over (seed, fold) units.
    With ``controls`` (nested-CV results of networks trained as long as an ensemble, by seed) also their
    row, paired with the networks alone and with the ensembles (their mean Dice over the combinations on
    each control unit's test slices) over (seed, fold) units. With ``infected_share`` (``{case_id: share
    of its pixels labelled infection}``) also ``slices``: each slice's share beside its Dice at 0.5 (TTA)
    by one network (the mean over the seeds) and by an ensemble (the mean over the combinations)."""
    single = {seed: {case: result["per_case"][case] for result in results[seed] for case in result["test"]}
              for seed in results}
    alone = fold_means(results)
    units: list[dict] = []
    for combination, per_case in ensembles.items():
        for result in results[combination[0]]:
            unit: dict = {"members": list(combination), "fold": result["fold"]}
            for metric in METRICS:
                unit[f"ensemble_{metric}"] = float(np.mean([per_case[case][metric] for case in result["test"]]))
                unit[f"members_{metric}"] = float(np.mean([single[seed][case][metric] for case in result["test"]
                                                           for seed in combination]))
            units.append(unit)
    rows = [row_of("network", "one network (A′, train's recipe)", list(alone.values()))]
    checkpoints = checkpoints or {}
    for arm, label, _ in CHECKPOINT_ARMS:
        if arm not in checkpoints:
            continue
        scored = {unit: scores for seed, per_case in checkpoints[arm].items()
                  for unit, scores in fold_means({seed: results[seed]}, per_case).items()}
        row = row_of(arm, label, list(scored.values()))
        row["tta_dice_change_vs_control"] = paired_change([alone[unit]["tta_dice"] for unit in scored],
                                                          row["tta_dice_by_unit"], "its chosen epoch alone")
        rows.append(row)
    members = len(next(iter(ensembles))) if ensembles else 0
    controls = controls or {}
    budget = fold_means(controls)
    if budget:
        row = row_of("budget", f"one network trained {members}× as long (the ensemble's budget)", list(budget.values()))
        row["tta_dice_change_vs_control"] = paired_change([alone[unit]["tta_dice"] for unit in budget],
                                                          row["tta_dice_by_unit"], "one network of train's recipe")
        rows.append(row)
    if units:
        row = {**row_of("ensemble", f"ensemble of {members} networks of other seeds",
                        [{metric: unit[f"ensemble_{metric}"] for metric in METRICS} for unit in units]),
               "combinations": [list(combination) for combination in ensembles],
               "tta_dice_change_vs_control": paired_change([unit["members_tta_dice"] for unit in units],
                                                           [unit["ensemble_tta_dice"] for unit in units],
                                                           "its members alone")}
        if budget:
            on_budget_folds = [fold_means(controls, per_case) for per_case in ensembles.values()]
            averaged = [float(np.mean([scores[unit]["tta_dice"] for scores in on_budget_folds])) for unit in budget]
            row["tta_dice_change_vs_budget"] = paired_change([scores["tta_dice"] for scores in budget.values()],
                                                             averaged, "one network trained as long")
        rows.append(row)
    slices = {case: {"infected_share": share,
                     "network_tta_dice": float(np.mean([single[seed][case]["tta_dice"] for seed in single])),
                     "ensemble_tta_dice": float(np.mean([per_case[case]["tta_dice"] for per_case in ensembles.values()]))}
              for case, share in sorted((infected_share or {}).items())}
    return {"rows": rows, "units": units, **({"slices": slices} if slices else {}),
            "per_case": {"-".join(map(str, combination)): {case: {metric: scores[metric] for metric in METRICS}
                                                           for case, scores in per_case.items()}
                         for combination, per_case in ensembles.items()}}


def main() -> None:
    parser = nested_cv_parser(__doc__, seeds="0,1,2", record="seed_ensemble", supervised_runs="A' is read or trained",
                              quick="tiny networks and 2 epochs: checks the path")
    parser.add_argument("--members", type=int, default=2, help="networks an ensemble averages, each of another seed "
                                                                "(default 2; at most the number of --seeds)")
    parser.add_argument("--control-seeds", type=integers, default=[],
                        help="seeds (among --seeds) whose one network trained --members times as long, the "
                             "ensemble's fair rival, is read from --supervised-runs or trained there (for two "
                             "members, the ablation's row \"two networks' budget\"; about 22 min a fold on a 2-core "
                             "Zen 4); default none")
    args = parser.parse_args()
    if not 2 <= args.members <= len(args.seeds):
        raise SystemExit(f"error: --members must lie in [2, {len(args.seeds)}] for --seeds "
                         f"{','.join(map(str, args.seeds))}, got {args.members}")
    require_among_seeds(args, "control_seeds")
    if (opened := open_data(args, RECIPE)) is None:
        return
    runtime, recipe, dataset, prepared = opened
    parameters = {"data_root": args.data_root, "seeds": args.seeds, "members": args.members,
                  "control_seeds": args.control_seeds, "recipe": dataclasses.asdict(recipe), "folds": args.folds,
                  "quick": args.quick}
    record = record_path(args)
    comparable_record(record, parameters, runtime, restart=args.restart)  # refuses another machine's or setting's
    results = {seed: run_nested_cv(dataset, prepared, recipe, args.supervised_runs, folds=args.folds, seeds=[seed])
               for seed in args.seeds}
    folder = Path(args.supervised_runs) / run_key(recipe, dataset.name, args.folds)

    def scores(combination: tuple[int, ...], checkpoints: tuple[str, ...] = (BEST_CHECKPOINT,)) -> dict:
        try:
            return ensemble_scores(dataset, recipe, results, folder, combination, checkpoints)
        except InvalidInputError as error:
            raise SystemExit(f"error: {error} (its nested-CV result is stored without it: delete that result's "
                             f"JSON in {folder} to train it again)") from None

    ensembles = {}
    for combination in itertools.combinations(args.seeds, args.members):
        print(f"ensemble of seeds {', '.join(map(str, combination))}", flush=True)
        ensembles[combination] = scores(combination)
    print("each network at its last epoch, and with its chosen one", flush=True)
    checkpoints = {arm: {seed: scores((seed,), files) for seed in args.seeds} for arm, _, files in CHECKPOINT_ARMS}
    budget = dataclasses.replace(recipe, **budget_changes(recipe, args.members))
    controls = {seed: run_nested_cv(dataset, prepared, budget, args.supervised_runs, folds=args.folds, seeds=[seed])
                for seed in args.control_seeds}
    infected_share = {case: float(np.mean(np.asarray(dataset.load(case).lesion_mask) > 0)) for case in prepared.labelled}
    summary = summarise(results, ensembles, controls, checkpoints, infected_share)
    path = write_record(record.parent, record.stem, parameters=parameters, runtime=runtime, numbers=summary)
    print_rows(summary)
    if change := summary["rows"][-1].get("tta_dice_change_vs_budget"):
        print(f"ensemble vs {change['against']}: {change['mean_difference']:+.3f} [{change['low']:+.3f}, "
              f"{change['high']:+.3f}]", flush=True)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
