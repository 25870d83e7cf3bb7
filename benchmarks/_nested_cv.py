"""What the nested cross-validation benchmarks share (``ablation``, ``cv_nested``, ``learning_curve``,
``semi_recipe``, ``semi_student``, ``seed_ensemble``, ``map_sharpness``, ``all_slices``): their common options, the check that COVID-SemiSeg is there, the tiny
recipe of ``--quick``, the runtime summary their records store, and resuming from a committed record:
only on the numerics that computed it, so another kind of machine keeps its own (``--record
<benchmark>-<label>``), and only at its parameters and data: a record of others is refused rather than
replaced, unless ``--restart``.

The benchmarks run as files (``python benchmarks/ablation.py``), so this folder is first on
``sys.path`` and they import this module by its plain name.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidlib.config import runtime_summary
from covidlib.crossval import run_key, run_nested_cv
from covidlib.datasets import Dataset, get_dataset
from covidlib.errors import InvalidInputError
from covidlib.fingerprint import data_fingerprint
from covidlib.inference import PreparedSlices, prepare_slices
from covidlib.io import check_output_folder
from covidlib.recipe import LATER_FIELDS, Recipe
from covidlib.records import (ReferenceRecord, benchmark_of, describe_machine, other_numerics, processor_family,
                              read_reference, reference_dir)
from covidlib.results import to_json, write_record
from covidlib.statistics import paired_bootstrap_ci

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "covid-semiseg"
#: The scores every nested-CV record keeps per unit: Dice at 0.5 and Inf-Net's mean Dice, both with TTA.
METRICS = ("tta_dice", "tta_infnet_mean_dice")
METRIC_NAMES = {"tta_dice": "Dice", "tta_infnet_mean_dice": "Inf-Net mean Dice"}
#: What ``--quick`` changes: tiny networks and 2 epochs of 2 steps, enough to check the whole path.
QUICK: dict[str, Any] = {"image_size": 64, "base_width": 4, "depth": 2, "epochs": 2, "max_steps_per_epoch": 2}


def integers(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; an argparse ``type``."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None


def nested_cv_parser(doc: str | None, *, runs: str | None = None, seeds: str = "0", record: str | None = None,
                     supervised_runs: str | None = None,
                     quick: str = "tiny networks and 2 epochs: checks the path") -> argparse.ArgumentParser:
    """A parser with the options every nested-CV benchmark takes: ``--data-root``, ``--seeds`` (parsed
    to a list), ``--folds``, ``--threads`` and ``--quick``; with ``runs``, ``--runs`` (its resumable
    cache, ``results/<runs>``); with ``record`` (the benchmark's name), ``--out`` (the folder of its
    committed record) and ``--record`` (:func:`record_name`); with ``supervised_runs`` (what the
    benchmark reads there), ``--supervised-runs``, the ablation's cache."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(DEFAULT_DATA), help="COVID-SemiSeg's folder")
    if runs is not None:
        parser.add_argument("--runs", default=str(ROOT / "results" / runs),
                            help="cache of the trainings: run the same command again to continue")
    if supervised_runs is not None:
        parser.add_argument("--supervised-runs", default=str(ROOT / "results" / "ablation"),
                            help=f"the ablation's cache of nested-CV runs, where {supervised_runs}")
    if record is not None:
        parser.add_argument("--out", default=str(reference_dir()), help=f"folder of the record {record}.json")
        parser.add_argument("--record", default=record, type=functools.partial(record_name, benchmark=record),
                            help=f"the record's name in --out: {record} (default), or {record}-<label> for a kind "
                                 f"of machine whose numerics {record}.json cannot take (e.g. {record}-zen4) or for "
                                 f"other settings (e.g. {record}-zen4-long)")
        parser.add_argument("--restart", action="store_true",
                            help="start the record afresh when it was computed with other parameters or data, "
                                 "at any numerics (its units are dropped); without it such a record is refused")
    parser.add_argument("--seeds", type=integers, default=seeds,
                        help=f"comma-separated seeds; each draws its own folds (default {seeds})")
    parser.add_argument("--folds", type=int, default=5, help="outer folds (default 5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def record_name(text: str, benchmark: str) -> str:
    """``--record``'s value checked: ``benchmark``, or ``benchmark-<label>`` (letters, digits, ``_`` and
    ``-``: a kind of machine, a setting, or both), so that :func:`covidlib.records.regenerate_command`
    finds the script from the name."""
    if not re.fullmatch(rf"{re.escape(benchmark)}(-[A-Za-z0-9_-]+)?", text):
        raise argparse.ArgumentTypeError(f"expected {benchmark} or {benchmark}-<label> such as {benchmark}-zen4, "
                                         f"got {text!r}")
    return text


def record_path(args: argparse.Namespace) -> Path:
    """The record this invocation continues and rewrites: ``--out``/``--record``.json."""
    return Path(args.out) / f"{args.record}.json"


def begin(args: argparse.Namespace) -> dict[str, Any] | None:
    """The runtime summary a record stores (processor, its family and bfloat16 included), after applying ``--threads``;
    ``None``, after saying so, when COVID-SemiSeg is not at ``--data-root`` (nothing to do then). An
    output folder (``--runs``, ``--out``) that is a file, or lies under one, is refused first."""
    for flag in ("runs", "out"):
        if hasattr(args, flag):
            try:
                check_output_folder(f"--{flag}", Path(getattr(args, flag)))
            except InvalidInputError as error:
                raise SystemExit(f"error: {error}") from None
    if not (Path(args.data_root) / "TrainingSet").is_dir():
        print(f"no COVID-SemiSeg at {args.data_root}: nothing to do")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = runtime_summary(setting="quick" if args.quick else "reference", device="auto", seed=0, dataset="covid-semiseg")
    return {**summary, "cpu_family": processor_family()}


def open_data(args: argparse.Namespace, recipe: Recipe, *,
              unlabelled: bool = False) -> tuple[dict[str, Any], Recipe, Dataset, PreparedSlices] | None:
    """What a benchmark of ``recipe`` starts from: the runtime summary its record stores (:func:`begin`),
    the recipe (shrunk by ``--quick``), COVID-SemiSeg at ``--data-root`` and its labelled slices prepared at
    the recipe's size, with ``unlabelled`` its unlabelled slices too (all of them; 16 with ``--quick``).
    ``None`` when the data is not there (:func:`begin` has said so)."""
    runtime = begin(args)
    if runtime is None:
        return None
    recipe = quick_recipe(recipe) if args.quick else recipe
    dataset = get_dataset("covid-semiseg", args.data_root)
    n_unlabelled = (16 if args.quick else None) if unlabelled else 0
    return runtime, recipe, dataset, prepare_slices(dataset, recipe.image_size, n_unlabelled=n_unlabelled)


def quick_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` shrunk as ``--quick`` asks (:data:`QUICK`)."""
    return dataclasses.replace(recipe, **QUICK)


def require_among_seeds(args: argparse.Namespace, option: str) -> None:
    """Exit with a clear error when a seed of ``args.<option>`` (an arm's seeds) is not among ``--seeds``."""
    if outside := sorted(set(getattr(args, option)) - set(args.seeds)):
        raise SystemExit(f"error: --{option.replace('_', '-')} must be among --seeds {','.join(map(str, args.seeds))}: "
                         f"{','.join(map(str, outside))} is not")


def budget_changes(recipe: Recipe, networks: int) -> dict[str, Any]:
    """The changes that train ``recipe``'s network ``networks`` times as long (epochs, learning-rate step
    and patience scaled): one network given the training budget of an ensemble of ``networks``."""
    return {"epochs": recipe.epochs * networks, "step_size": recipe.step_size * networks,
            "patience": recipe.patience * networks}


def mean_scores(per_case: dict[str, dict[str, float]], metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
    """Each of ``metrics`` averaged over the test slices of ``per_case`` (``{case_id: scores}``)."""
    return {metric: float(np.mean([row[metric] for row in per_case.values()])) for metric in metrics}


def arm_row(results: list[dict], arm: str, label: str, changes: dict[str, str] | None = None) -> dict[str, Any]:
    """A summary row of ``arm`` over unit ``results`` (each with ``scores[arm][metric]``): each metric by unit
    and its mean, Dice's sd over units, and for each ``suffix: other arm`` of ``changes`` the paired
    difference ``arm - other`` in Dice with its 95 % bootstrap CI as ``tta_dice_change_vs_<suffix>``,
    over the units that have ``other`` too (from two such units on)."""
    scores = {metric: [r["scores"][arm][metric] for r in results] for metric in METRICS}
    row: dict[str, Any] = {"arm": arm, "label": label, "units": [[r["seed"], r["fold"]] for r in results],
                           **{f"{metric}_by_unit": scores[metric] for metric in METRICS},
                           **{f"{metric}_mean": float(np.mean(scores[metric])) for metric in METRICS},
                           "tta_dice_sd_over_units": float(np.std(scores["tta_dice"], ddof=1)) if len(results) > 1 else 0.0}
    for suffix, against in (changes or {}).items():
        if len(paired := [r for r in results if against in r["scores"]]) > 1:
            ci = paired_bootstrap_ci([r["scores"][against]["tta_dice"] for r in paired],
                                     [r["scores"][arm]["tta_dice"] for r in paired])
            row[f"tta_dice_change_vs_{suffix}"] = {**ci.as_dict(), "against": against}
    return row


def comparable_record(record: Path, parameters: dict[str, Any], runtime: dict[str, Any], *,
                      restart: bool = False) -> ReferenceRecord | None:
    """The earlier ``record`` when it ran with ``parameters`` (its seeds and the data's folder aside)
    and the same data; ``None`` when there is none. One of other parameters or data is refused unless
    ``restart`` (then ``None``, after saying why): hours of committed units are never replaced by a
    mistyped option. One computed at other numerics than ``runtime`` (threads, bfloat16, processor) is
    refused before anything is computed, as its units cannot take units computed here, unless
    ``restart`` and its parameters differ too: then no machine could continue it at these parameters,
    while a record of these parameters is another machine's to continue."""
    if not record.exists():
        return None
    earlier = read_reference(record)
    benchmark = benchmark_of(record.stem)
    changes = parameter_changes(earlier.record["parameters"], parameters)
    if not changes and earlier.record["fingerprint"]["data"] != data_fingerprint(parameters["data_root"]):
        changes = ["data (its files differ from those at data_root)"]
    if (differ := other_numerics(ran := earlier.record["runtime"], runtime)) and not (restart and changes):
        raise SystemExit(f"{record} was computed with " + ", ".join(f"{name}={ran.get(name)}" for name in differ)
                         + "; this process has " + ", ".join(f"{name}={runtime.get(name)}" for name in differ)
                         + ". Its units cannot be continued at other numerics: continue on a machine like the one it "
                         f"names ({describe_machine(ran)}), or keep this machine's own record with --record "
                         f"{benchmark}-<machine> (e.g. {benchmark}-zen4) or --out DIR.")
    if not changes:
        return earlier
    if restart:
        print(f"{record}: starting it afresh (--restart), it was computed with other " + "; ".join(changes)
              + "".join(f", {name}={ran.get(name)}" for name in differ), flush=True)
        return None
    raise SystemExit(f"{record} was computed with other " + "; ".join(changes) + ". Continuing it with these would "
                     "drop its units: run with its parameters to continue it, keep this setting's own record with "
                     f"--record {benchmark}-<label> (e.g. {benchmark}-zen4-long) or --out DIR, or start it afresh "
                     "with --restart.")


def parameter_changes(earlier: dict[str, Any], now: dict[str, Any], prefix: str = "",
                      absent: dict[str, Any] | None = None) -> list[str]:
    """``"name: earlier -> now"`` for each parameter of ``now`` that differs from ``earlier`` (the seeds,
    those of an extra arm and the data's folder aside: more seeds continue a record, and the data may move); a dict
    parameter (a recipe) names only its fields that differ. A field of ``now`` that ``earlier`` lacks
    takes its value from ``absent``; for the recipe that is :data:`covidlib.recipe.LATER_FIELDS`, so a
    field added since, at the value that trains as before, is no change (its runs keep their key)."""
    changes = []
    for name, value in now.items():
        if not prefix and name in ("seeds", "budget_seeds", "data_root"):
            continue
        before = earlier.get(name, (absent or {}).get(name))
        if isinstance(value, dict) and isinstance(before, dict):
            changes += parameter_changes(before, value, prefix=f"{prefix}{name}.",
                                         absent=LATER_FIELDS if not prefix and name == "recipe" else None)
        elif before != value:
            changes.append(f"{prefix}{name}: {before!r} -> {value!r}")
    return changes


def stored_units(record: Path, parameters: dict[str, Any], runtime: dict[str, Any],
                 key: tuple[str, ...] = ("seed", "fold"),
                 recheck: Callable[[tuple], dict] | None = None, restart: bool = False) -> dict[tuple, dict]:
    """The units (``numbers.units``) of an earlier ``record`` that still hold, keyed by their ``key``
    fields: none when there is none or ``restart`` drops it (:func:`comparable_record`). When its code
    changed since, with ``recheck`` (a unit's key -> that unit computed now) they are
    :func:`rechecked_units`, else none.
    A committed partial record is thus where the next machine continues."""
    earlier = comparable_record(record, parameters, runtime, restart=restart)
    if earlier is None:
        return {}
    units = {tuple(unit[name] for name in key): unit for unit in earlier.numbers.get("units", [])}
    if earlier.stale and units and recheck is not None:
        return rechecked_units(units, recheck, earlier.stale)
    if earlier.stale:
        print(f"{record}: not resuming from it, its code changed ({', '.join(earlier.stale)})", flush=True)
        return {}
    return units


#: The fields of a unit that time it: a unit computed again agrees with the stored one in all the others.
TIMING_FIELDS = ("seconds", "wall_seconds", "cpu_seconds")


def rechecked_units(units: dict[tuple, dict], recheck: Callable[[tuple], dict], changed: list[str]) -> dict[tuple, dict]:
    """``units`` computed by code that has changed since (``changed``: its files), all kept when the
    current code reproduces the first of them exactly (``recheck(key)``: every value but the
    :data:`TIMING_FIELDS`, to the last bit); otherwise only that unit, computed afresh. Computing is
    deterministic on one kind of CPU, so a change that leaves the numbers alone (a refactoring, a new
    option off by default) costs one unit instead of all of them."""
    first = min(units)
    print(f"the stored units were computed by code changed since ({', '.join(changed)}): "
          f"computing unit {first} again to check them", flush=True)
    again = recheck(first)
    if untimed(again) == untimed(units[first]):
        print(f"the current code reproduces unit {first} exactly: keeping all {len(units)} units", flush=True)
        return {**units, first: again}
    print(f"the current code does not reproduce unit {first}: every unit is computed afresh", flush=True)
    return {first: again}


def untimed(unit: dict[str, Any]) -> str:
    """``unit`` as JSON (as a record stores it) without its :data:`TIMING_FIELDS`: what must reproduce."""
    return to_json({name: value for name, value in unit.items() if name not in TIMING_FIELDS})


def write_units_record(record: Path, *, parameters: dict[str, Any], runtime: dict[str, Any],
                       units: dict[tuple, dict], planned: list[tuple],
                       summarise: Callable[[list[dict]], dict[str, Any]]) -> dict[str, Any]:
    """Rewrite ``record`` (``<out>/<name>.json``) with the ``planned`` units done so far (``numbers.units``,
    in plan order, where :func:`stored_units` finds them next time) and their ``summarise``; returns that summary."""
    done = [units[key] for key in planned if key in units]
    summary = summarise(done)
    path = write_record(record.parent, record.stem, parameters=parameters, runtime=runtime,
                        numbers={**summary, "units": done, "units_planned": len(planned)})
    print(f"wrote {path} ({len(done)} of {len(planned)} units)", flush=True)
    return summary


def summarised_otherwise(record: Path, done: list[dict], summarise: Callable[[list[dict]], dict[str, Any]]) -> bool:
    """Whether ``summarise(done)`` differs from the summary ``record`` stores beside those units."""
    stored = json.loads(record.read_text(encoding="utf-8"))["numbers"]
    return any(to_json(value) != to_json(stored.get(name)) for name, value in summarise(done).items())


def a_prime_unit(args: argparse.Namespace, dataset: Dataset, prepared: PreparedSlices, recipe: Recipe,
                 unit: tuple[int, int]) -> tuple[dict[str, Any], Path]:
    """A' of one (seed, outer fold) of ``recipe``: its nested-CV result, read from (or trained into)
    the ablation's cache ``--supervised-runs``, and the path of its chosen epoch's checkpoint."""
    seed, fold = unit
    [result] = run_nested_cv(dataset, prepared, recipe, args.supervised_runs, folds=args.folds, seeds=[seed],
                             fold_indices=[fold])
    folder = Path(args.supervised_runs) / run_key(recipe, dataset.name, args.folds)
    return result, folder / f"seed{seed}_fold{fold}" / "best.pt"


def print_rows(summary: dict[str, Any]) -> None:
    """Each row of a unit benchmark's summary: its mean TTA Dice ± sd over units, its mean TTA Inf-Net
    mean Dice and, where it has them, its paired differences to its control (``<metric>_change_vs_control``)."""
    for row in summary["rows"]:
        changes = [(metric, change) for metric in METRICS if (change := row.get(f"{metric}_change_vs_control"))]
        print(f"{row['arm']:<18} TTA Dice {row['tta_dice_mean']:.3f} ± {row['tta_dice_sd_over_units']:.3f}, "
              f"Inf-Net mean Dice {row['tta_infnet_mean_dice_mean']:.3f}"
              + "".join(f"; {METRIC_NAMES[metric]} vs {change['against']} {change['mean_difference']:+.3f} "
                        f"[{change['low']:+.3f}, {change['high']:+.3f}]" for metric, change in changes), flush=True)


def run_units(args: argparse.Namespace, dataset: Dataset, prepared: PreparedSlices, recipe: Recipe,
              parameters: dict[str, Any], runtime: dict[str, Any],
              run_fold: Callable[[argparse.Namespace, Dataset, PreparedSlices, Recipe, dict, Path], dict],
              summarise: Callable[[list[dict]], dict[str, Any]],
              complete: Callable[[dict], bool] = lambda unit: True) -> None:
    """Every (seed, outer fold) of ``--seeds`` and ``--folds`` on top of A' (:func:`a_prime_unit`):
    those :func:`stored_units` finds in the record (:func:`record_path`) kept when ``complete``, the
    others computed in order by ``run_fold(args, dataset, prepared, recipe, a_prime_result, checkpoint)``
    (a stored unit that lacks an arm asked for since reads its finished trainings back, so only the
    arm costs time), the record rewritten after each (:func:`write_units_record`) and its summary
    printed (:func:`print_rows`). A record whose stored units the code now summarises differently (a
    row's label, say) is rewritten from them, nothing computed."""
    record = record_path(args)

    def compute_unit(unit: tuple[int, int]) -> dict:
        return run_fold(args, dataset, prepared, recipe, *a_prime_unit(args, dataset, prepared, recipe, unit))

    units = stored_units(record, parameters, runtime, recheck=compute_unit, restart=args.restart)
    plan = [(seed, fold) for seed in args.seeds for fold in range(args.folds)]
    print(f"{sum(unit in units for unit in plan)} of {len(plan)} units stored in {record}", flush=True)
    computed = False
    for unit in plan:
        if unit in units and complete(units[unit]):
            continue
        units[unit] = compute_unit(unit)
        computed = True
        print_rows(write_units_record(record, parameters=parameters, runtime=runtime, units=units, planned=plan,
                                      summarise=summarise))
    if units and not computed and summarised_otherwise(record, [units[key] for key in plan if key in units], summarise):
        print(f"{record}: the code summarises its stored units differently now; rewriting it from them", flush=True)
        write_units_record(record, parameters=parameters, runtime=runtime, units=units, planned=plan,
                           summarise=summarise)
    if all(unit in units for unit in plan):
        print(f"every unit is stored: {record} holds all {len(plan)}", flush=True)
