# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/covid-ct-book/covid-ct-book/blob/main/chapters/09_results.ipynb)
#
# # 09. Results
#
# **What you will learn**
#
# - the report's tables rebuilt on real scans (COVID-SemiSeg) from the book's committed reference
#   records: Table 5.1, the network and loss comparisons, and the semi-supervised comparison whose
#   "improvement of ??? percent" the report left blank;
# - how they stand against what the report and others published, quoted with their protocol;
# - where every number comes from (setting, data, commit, run time, whether the code has changed
#   since), and what the experiments can and cannot support.
#
# **Prerequisites** chapters {doc}`04 <04_unet_and_attention>`, {doc}`05 <05_transfer_learning>` and
# {doc}`08 <08_mean_teacher>`, whose records this page reads.
#
# **Run time** a few seconds: this chapter only reads records.

# %% tags=["remove-cell"]
# Colab and fresh kernels: install the book's library only when it is missing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("covidlib") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "covidlib @ git+https://github.com/covid-ct-book/covid-ct-book"])

# %% tags=["parameters"]
dataset = "phantom"
data_root = ""  # folder of a real dataset (not read here; accepted so every chapter takes the same parameters)
setting = "quick"  # "quick" (minutes, CI), "reference" (real data, a 2-core CPU), "full" (the report's settings, a GPU)
device = "auto"
seed = 0
output_dir = "results"
# chapter knobs
digits = 3

# %%
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from IPython.display import Markdown, display
from scipy.stats import spearmanr

from covidlib import viz
from covidlib.config import choose, format_summary, runtime_summary, seed_everything
from covidlib.experiments import NETWORK_TITLES
from covidlib.mean_teacher import arm_rows, paired_rows
from covidlib.published import PUBLISHED, REPORT_BEST, REPORT_TABLE_5_1, published
from covidlib.recipe import Recipe, describe_recipe
from covidlib.records import (FEWEST_RUNS_TO_READ, ReferenceRecord, benchmark_of, describe_machine, load_reference,
                              machine_records, reference_notice)
from covidlib.results import (format_change, format_interval, interval_side, markdown_table, read_build_timings,
                              read_records, write_record)
from covidlib.statistics import paired_bootstrap_ci, summarise_runs

seed_everything(seed)
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

this_chapter = "09_results"
# The sources sit beside this notebook in chapters/; the executed notebooks in book/chapters/ (nbval).
book_chapters = sorted({p.stem for pattern in ("[0-9][0-9]_*.py", "[0-9][0-9]_*.ipynb") for p in Path(".").glob(pattern)}
                       - {this_chapter})
benchmark_records = ["ablation", "seed_ensemble", "map_sharpness", "learning_curve", "all_slices", "semi_recipe",
                     "semi_student", "phantom_to_real"]  # by benchmarks/*.py; shown here, in 08 and in 01
# a kind of machine that cannot continue a benchmark's record keeps its own (--record <benchmark>-<machine>)
machine_ablations = machine_records("ablation")
benchmark_records += machine_records()
references = {name: load_reference(name) for name in [*book_chapters, *benchmark_records]}
live = read_records(output_dir) if Path(output_dir).is_dir() else {}

#: What a paired difference's 95 % interval says, by where it lies against 0 (:func:`interval_side`).
outcome = {"lies above 0": "an improvement", "lies below 0": "a loss",
           "includes 0": "no difference distinguishable from noise"}


def reading(change: Mapping[str, Any], runs: int, words: Mapping[str, str] = outcome) -> str:
    """What a paired difference over ``runs`` (fold, seed) runs says: ``words`` for where its 95 % interval
    lies, or that the runs are too few for it to say anything (fewer than ``FEWEST_RUNS_TO_READ``)."""
    if runs < FEWEST_RUNS_TO_READ:
        return f"too few runs for the interval to mean anything yet (fewer than {FEWEST_RUNS_TO_READ})"
    return words[interval_side(change)]


def cell(value: float | None, sd: float | None = None) -> str:
    """A table cell: ``mean ± sd``, or an em dash where there is no number."""
    if value is None:
        return "—"
    return f"{value:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


# %% [markdown]
# ## Where every number comes from
#
# The book shows two kinds of record. *This run* is what `ci/book` just computed (by default the
# quick setting on the phantom: it proves the code runs, nothing more). The *reference records* are
# the real-data runs committed in `records/reference-covid-semiseg/`: a chapter's is regenerated by
# `ci/book --reference --dataset covid-semiseg --data-root DIR`, a benchmark's by its script in
# `benchmarks/`. The `ablation`, `learning_curve`, `semi_recipe` and `semi_student` scripts resume from the units
# their record already holds, so the run that last wrote one may have computed little of it.
# A reference record is *stale* when the code that produced it has changed since; its numbers then
# describe an earlier version. On a CPU the same seed gives the same numbers only on the same threads
# and precision (bfloat16 where the processor has native kernels, see {doc}`/book/reproducing`), so
# the table names each record's machine. A benchmark's last run may have computed little of its record;
# where the record stores the time of each row or unit, the last column adds them up.

# %% tags=["hide-input"]
def stored_work(reference) -> str:
    """The minutes of compute a benchmark record stores row by row or unit by unit, all runs together:
    the ablation's distinct trainings (wall / CPU, training and scoring), the learning curve's units
    (wall), the semi-supervised benchmarks' units (wall, A''s training aside); an em dash where the
    record stores no such times."""
    numbers = reference.numbers if reference is not None else {}
    if reference is not None and benchmark_of(reference.path.stem) == "ablation":
        runs = {row["run"]: row for row in numbers.get("rows", []) if "train_cpu_seconds" in row}
        if runs:
            wall = sum(row.get("train_wall_seconds", 0.0) for row in runs.values())
            cpu = sum(row["train_cpu_seconds"] for row in runs.values())
            return f"{wall / 60:.0f} wall / {cpu / 60:.0f} CPU ({len(runs)} trainings)"
    units = numbers.get("units")
    if isinstance(units, list) and units and all("wall_seconds" in unit for unit in units):
        return f"{sum(unit['wall_seconds'] for unit in units) / 60:.0f} wall ({len(units)} units)"
    if isinstance(units, list) and units and all(isinstance(unit.get("seconds"), dict) for unit in units):
        # the semi-supervised units time their own steps; A' was trained (and timed) in the ablation's cache
        wall = sum(sum(unit["seconds"].values()) for unit in units)
        return f"{wall / 60:.0f} wall ({len(units)} units, besides A′)"
    return "—"


rows = []
for name in [*book_chapters, *benchmark_records]:
    reference = references[name]
    timing = reference.record.get("timing", {}) if reference else {}
    rows.append((name, "yes" if name in live else "—", describe_machine(reference.record["runtime"]) if reference else "—",
                 str(reference.record.get("commit", "?"))[:10] if reference else "—",
                 str(reference.record.get("created", "?"))[:10] if reference else "—",
                 f"{timing['wall_seconds'] / 60:.1f}" if timing.get("wall_seconds") is not None else "—",
                 f"{timing['cpu_seconds'] / 60:.1f}" if timing.get("cpu_seconds") is not None else "—",
                 stored_work(reference),
                 ("stale: " + ", ".join(reference.stale[:3])) if reference and reference.stale else
                 ("up to date" if reference else "no record")))
display(Markdown(markdown_table(rows, ("record", "in this run", "reference: machine", "reference: commit", "written",
                                       "wall min (last run)", "CPU min (last run)",
                                       "min, all stored rows or units", "reference: code"))))
fresh = [name for name, reference in references.items() if reference is not None and not reference.stale]
print(f"reference records: {sum(r is not None for r in references.values())} of {len(references)}, "
      f"up to date: {len(fresh)}")

# %% [markdown]
# ## Table 5.1 on real scans
#
# The report's central table trains a U-Net and an attention U-Net from scratch or fine-tunes a
# pretrained one (decoder only, or all layers) on 10 or 40 labelled volumes, tests on 20 more, and
# leaves most cells empty. The book fills the cells that chapter 05's reference record ran (the line
# under the table names them): COVID-SemiSeg's 2D slices, mean ± sd over folds, Dice at 0.5 (and
# Inf-Net's mean Dice on the test slices). The
# report's pretraining sources (MSD, NSCLC) are not available offline; chapter 05 names what stands
# in for them. The report's own numbers are quoted beside ours: its data (50 + 20 CT volumes) differ,
# so the comparison is of trends, not of values.

# %% tags=["hide-input"]
reference_05 = references["05_transfer_learning"]
display(Markdown(reference_notice(reference_05, "05_transfer_learning")))
if reference_05 is not None:
    table = reference_05.numbers["table"]
    titles = reference_05.numbers.get("source_titles", {})
    rows = []
    for network, recipes in table.items():
        for row_name, splits in recipes.items():
            recipe, _, source = row_name.partition("/")
            for split, phases in splits.items():
                quoted = REPORT_TABLE_5_1.get(network, {}).get(recipe, {}).get(split, {})
                ours = [cell(phases[p]["mean"], phases[p]["sd"]) for p in ("train", "val", "test")]
                infnet = phases.get("test_infnet")
                rows.append((NETWORK_TITLES[network], recipe + (f" ({titles.get(source, source)})" if source else ""), split,
                             *(cell(quoted.get(p)) for p in ("train", "val", "test")), *ours,
                             cell(infnet["mean"], infnet["sd"]) if infnet else "—"))
    display(Markdown(markdown_table(rows, ("network", "initialisation", "split", "report: train", "report: val",
                                           "report: test", "ours: train", "ours: val", "ours: test",
                                           "ours: test, Inf-Net mean Dice"))))
    report_rows = {(network, recipe) for network, recipes in REPORT_TABLE_5_1.items() for recipe in recipes}
    ours = {(network, row_name.partition("/")[0]) for network, recipes in table.items() for row_name in recipes}
    not_run = [(network, recipe) for network, recipes in REPORT_TABLE_5_1.items() for recipe in recipes
               if (network, recipe) not in ours]
    filled = (f"{len(report_rows & ours)} of the report's {len(report_rows)}" if not_run
              else f"all {len(report_rows)} of the report's")
    display(Markdown(
        f"The record fills {filled} (network, initialisation) rows"
        + (" (each from every pretraining source it ran)" if any("/" in r for recipes in table.values() for r in recipes) else "")
        + (": it has no row for " + "; ".join(
            f"the {NETWORK_TITLES[network]} ({', '.join(r for n, r in not_run if n == network)})"
            for network in dict.fromkeys(n for n, _ in not_run))
           + ", whose cells stay empty here." if not_run else ".")))

# %% [markdown]
# ## Networks and losses
#
# Chapter 04 compares the U-Net with the attention U-Net, and the four losses, with nested 5-fold
# cross-validation of the 50 labelled slices: the outer fold only scores, an inner split picks the
# epoch. Below, the same numbers beside the published results on COVID-SemiSeg. Those were measured
# on a separate 48-slice test split that is not part of the data here, with Inf-Net's protocol (mean
# Dice over 256 thresholds); ours are cross-validated on the 50 training slices, with both metrics.

# %% tags=["hide-input"]
reference_04 = references["04_unet_and_attention"]
display(Markdown(reference_notice(reference_04, "04_unet_and_attention")))
cv_04 = reference_04.numbers.get("cv") if reference_04 is not None else None
if cv_04:
    rows = []
    for name, arm in cv_04["arms"].items():
        dice, infnet = (summarise_runs(np.asarray(arm[m])[:, None]) for m in ("dice", "infnet_mean_dice"))
        rows.append((f"{name} (this book, nested CV)", cell(dice["mean"], dice["sd_folds"]),
                     cell(infnet["mean"], infnet["sd_folds"]), "50 labelled slices, outer folds"))
    rows += [(f"{r.method} ({r.source.split(',')[0]})", "—", cell(r.value), r.data) for r in PUBLISHED]
    rows.append(("the report's best U-Net (section 5.2.2)", cell(REPORT_BEST["test"]), "—",
                 "the report's own 20 test volumes"))
    display(Markdown(markdown_table(rows, ("method", "Dice at 0.5", "Inf-Net mean Dice", "data"))))

# %% [markdown]
# ## The path past the published results
#
# `benchmarks/ablation.py` starts from the report's recipe and adds one change at a time. Each row
# is nested-CV'd over the seeds its record names and set beside the row it changes, which its change
# column names: the path row above it, or, for an alternative tried at some point of the path, the
# row it was tried on. The change comes with its 95 % bootstrap interval over (fold, seed) runs. The
# path ends at the recipe each network of `python -m covidlib train` trains with, marked as such. The record is committed like
# the chapters' (`records/reference-covid-semiseg/ablation.json`) and is rewritten as rows complete,
# so it may hold only some of them.
#
# The path is chosen by the same outer folds that score it, so a row kept because it scored best at
# seed 0 is somewhat optimistic at seed 0. A seed also draws the folds
# (`covidlib.crossval.nested_folds`), so a row's other seeds score it on splits that took no part in
# the choice, and an alternative becomes `train`'s default only once they confirm it. (The 128 px
# input was chosen on an earlier record, made on another processor in float32.) The record's planned
# rows that it does not hold yet are listed under the table; the sentences under it are generated
# from the rows it holds. {numref}`Fig. {number} <fig-09-ablation>` draws every run of each row
# and each change with its interval.

# %% tags=["hide-input"]
def show_ablation(ablation, *, list_missing: bool = True) -> None:
    """The table of an ablation record, the rows it does not hold yet (with ``list_missing``), and what
    each alternative did."""
    if not ablation.numbers["rows"]:
        display(Markdown("No row of this record has all its outer folds yet (the benchmark resumes where it stopped)."))
        return
    rows = []
    for row in ablation.numbers["rows"]:
        change = row.get("dice_change_vs_previous")
        versus = f" vs “{change['previous']}”" if change and "previous" in change else ""
        defaults = " (`train`'s recipe)" if Recipe(**row["recipe"]) == Recipe() else ""
        rows.append((row["name"] + defaults, cell(row["dice_mean"], row["dice_sd_over_units"]), cell(row["infnet_mean_dice_mean"]),
                     f"{format_interval(change)}{versus}"
                     if change else "—", str(len(row["dice_by_unit"])),
                     f"{row['train_cpu_seconds'] / 60:.0f}" if "train_cpu_seconds" in row else "—"))
    threshold_rows = [row["name"] for row in ablation.numbers["rows"] if row["recipe"].get("select_threshold")]
    display(Markdown(f"Seeds {ablation.record['parameters']['seeds']}, {ablation.record['parameters']['folds']} "
                     "outer folds; Dice at 0.5"
                     + (f" (“{'”, “'.join(threshold_rows)}”: at the threshold chosen on the inner validation slices)"
                        if threshold_rows else "")
                     + " as mean ± sd over a row's (fold, seed) runs. Rows may have "
                     "different seeds: a change is measured on the runs both rows have."))
    display(Markdown(markdown_table(rows, ("recipe", "Dice", "Inf-Net mean Dice",
                                           "change [95 % CI] vs the row it changes", "(fold, seed) runs",
                                           "CPU min (training and scoring)"))))
    done = {row["name"] for row in ablation.numbers["rows"]}
    missing = [name for name in ablation.numbers.get("planned", []) if name not in done]
    if missing and list_missing:
        display(Markdown("Rows not computed yet (the benchmark resumes where it stopped): "
                         + "; ".join(f"“{name}”" for name in missing) + "."))

    def verdict(change: dict) -> str:
        """How an alternative scored against the row it changes, and the interval that says so."""
        side = interval_side(change)
        compared = {"lies above 0": "higher", "lies below 0": "lower", "includes 0": "not distinguishable"}[side]
        return f"{compared}, its interval {side}"

    by_name = {row["name"]: row for row in ablation.numbers["rows"]}
    notes = []
    defaults = [row["name"] for row in ablation.numbers["rows"] if Recipe(**row["recipe"]) == Recipe()]
    if defaults:
        notes.append(f"“{defaults[0]}” is `train`'s recipe today (seeds {by_name[defaults[0]]['seeds']}).")
    for row in ablation.numbers["rows"]:
        change = row.get("dice_change_vs_previous")
        if row.get("base") and change:  # an alternative tried at some point of the path, not a step of it
            notes.append(f"The alternative “{row['name']}” (seeds {row['seeds']}) against “{change['previous']}”: "
                         f"{format_change(change['mean_difference'])} ({verdict(change)}, {change['n']} paired runs).")
    for name in threshold_rows:
        notes.append(f"“{name}” trains nothing new: it segments its base row's models at the probability threshold "
                     "that is best on each fold's inner validation slices (`covidlib.inference.choose_threshold`, "
                     "`train --select-threshold`) instead of at 0.5.")
    if notes:
        display(Markdown(" ".join(notes)))


def path_rows(ablation) -> list[viz.PathRow]:
    """The rows of an ablation record as :func:`covidlib.viz.show_path` draws them."""
    return [viz.PathRow(row["name"], {"Dice at 0.5": [unit[-1] for unit in row["dice_by_unit"]],
                                      "Inf-Net mean Dice": [unit[-1] for unit in row["infnet_mean_dice_by_unit"]]},
                        change=(change["mean_difference"], change["low"], change["high"])
                        if (change := row.get("dice_change_vs_previous")) else None,
                        alternative=bool(row.get("base")), marked=Recipe(**row["recipe"]) == Recipe())
            for row in ablation.numbers["rows"]]


path_figure = dict(metrics=["Dice at 0.5", "Inf-Net mean Dice"], change_label="change in Dice at 0.5 [95 % CI]",
                   reference_lines={"Inf-Net mean Dice": {method: published(method).value
                                                          for method in ("Inf-Net", "Semi-Inf-Net")}})
ablation = references["ablation"]
display(Markdown(reference_notice(ablation, "ablation")))
if ablation is not None:
    show_ablation(ablation)

# %% mystnb={"figure": {"caption": "Reference record (COVID-SemiSeg): the ablation read top to bottom. Left: test Dice at 0.5 of each outer (fold, seed) run (dots) and the row's mean (bar). Middle: the same runs by Inf-Net's mean Dice, with the published Inf-Net and Semi-Inf-Net results dotted (measured on a separate 48-slice test split, so a guide, not a paired comparison). Right: each row's change in Dice at 0.5 from the row it changes, with its 95 % bootstrap interval. Alternatives tried beside the path are grey and in italics; train's recipe is in bold. Without a record the panel says so.", "name": "fig-09-ablation"}, "image": {"alt": "Reference record (COVID-SemiSeg): the ablation read top to bottom"}}
viz.show_path(path_rows(ablation) if ablation is not None else None, **path_figure,
              title="The path past the published results (COVID-SemiSeg, nested CV)",
              empty_message="no reference record of benchmarks/ablation.py yet")

# %% [markdown]
# ### The path on another processor
#
# In bfloat16 a unit reproduces to the last bit only on the processor family that trained it
# ({doc}`/book/reproducing`), so a machine of another kind cannot add units to the record above: its
# rows would mix two processors' rounding. It keeps a record of its own instead
# (`benchmarks/ablation.py --record ablation-<machine>`), whose changes are measured against rows it
# trained itself. Where both records hold a row, the same recipe, seeds and folds trained on two
# processors show how far last-bit differences alone move a unit's Dice: a change between rows
# smaller than that is not a finding, whatever its interval says.

# %% tags=["hide-input"]
def machine_differences(first, second) -> list[tuple[str, ...]]:
    """The rows two ablation records both hold (same name and recipe): on the (fold, seed) runs both
    trained, each record's mean Dice, the mean difference and the largest one in absolute value."""
    theirs = {row["name"]: row for row in second.numbers["rows"]}
    table = []
    for row in first.numbers["rows"]:
        other = theirs.get(row["name"])
        # a record written before a field of Recipe existed lacks it: compare as recipes, defaults filled in
        if other is None or Recipe(**other["recipe"]) != Recipe(**row["recipe"]):
            continue
        mine, its = ({(seed, fold): dice for seed, fold, dice in r["dice_by_unit"]} for r in (row, other))
        shared = sorted(set(mine) & set(its))
        if not shared:
            continue
        differences = np.array([its[unit] - mine[unit] for unit in shared])
        table.append((row["name"], str(len(shared)), cell(float(np.mean([mine[u] for u in shared]))),
                      cell(float(np.mean([its[u] for u in shared]))), format_change(float(differences.mean())),
                      f"{np.abs(differences).max():.{digits}f}"))
    return table


for name in machine_ablations:
    other = references[name]
    display(Markdown(f"**`{name}`**, on {describe_machine(other.record['runtime'])}: the rows it holds.\n\n{other.notice()}"))
    show_ablation(other, list_missing=False)
    if ablation is not None and (shared_rows := machine_differences(ablation, other)):
        display(Markdown(
            f"The same rows on two processors, over the (fold, seed) runs both trained: "
            f"{describe_machine(ablation.record['runtime'])} (`ablation`) and "
            f"{describe_machine(other.record['runtime'])} (`{name}`)."))
        display(Markdown(markdown_table(shared_rows, ("recipe", "(fold, seed) runs", "Dice, ablation",
                                                      f"Dice, {name}", "mean difference", "largest absolute difference"))))
if not machine_ablations:
    display(Markdown("No other processor has an ablation record yet."))

# %% mystnb={"figure": {"caption": "The ablation record of each other processor, drawn as the one above: each run (dots), each row's mean (bar) and each change with its 95 % bootstrap interval, measured against rows trained on that processor. Without such a record the panel says so.", "name": "fig-09-ablation-machines"}, "image": {"alt": "The ablation record of each other processor, drawn as the one above"}}
# one figure for every such record: a row is named with its record's machine when there are several
viz.show_path([dataclasses.replace(row, name=f"{row.name} ({name})" if len(machine_ablations) > 1 else row.name)
               for name in machine_ablations for row in path_rows(references[name])],
              **path_figure, empty_message="no row of another processor's ablation record has all its folds yet"
              if machine_ablations else "no ablation record of another processor yet",
              title="The path on " + "; ".join(describe_machine(references[name].record["runtime"])
                                               for name in machine_ablations) if machine_ablations else None)

# %% [markdown]
# ### Averaging networks
#
# Networks trained from other seeds err in different places, and the mean of their probabilities
# cancels part of it: a *deep ensemble* {cite}`lakshminarayanan2017ensembles`; nnU-Net {cite}`isensee2021nnunet` predicts with the
# mean of its five cross-validation networks. Every seed of the nested cross-validation above draws
# its own outer folds, and each labelled slice is in the test fold of exactly one outer fold of each
# seed, so for two seeds every slice has two networks of `train`'s recipe that never trained on it
# nor chose their epoch on it. `benchmarks/seed_ensemble.py` scores each slice by the mean of their
# probabilities (`covidlib.ensemble.Ensemble`, test-time augmentation as usual), for every
# pair of seeds, against the same two networks alone. It trains nothing: it reads the ablation's
# networks. An ensemble costs its members' training time, so its fair rival is one network trained
# as long (twice the epochs for two members: the ablation's row "two networks' budget"): with
# `--control-seeds`, the benchmark reads those networks too and pairs each of their outer folds with
# the ensembles' Dice on the same test slices.
#
# The same networks say what choosing an epoch is worth. Each run keeps the epoch that scored best on
# its 8 inner validation slices and its last one (epoch 600 in `train`'s recipe); the row "one
# network at its last epoch" scores every network at its last epoch instead, and "mean of one
# network's chosen and last epochs" by the mean of the two, an ensemble of two snapshots of one
# training that costs no training at all. Both are paired with the chosen epoch alone on the same
# (fold, seed) runs.

# %% tags=["hide-input"]
def against_budget(ensemble: ReferenceRecord) -> str | None:
    """The ensemble against one network trained as long (``--control-seeds``): the paired difference,
    its units and what the interval says; ``None`` when the record holds no such network."""
    change = ensemble.numbers["rows"][-1].get("tta_dice_change_vs_budget")
    if not change:
        return None
    units = next(row["units"] for row in ensemble.numbers["rows"] if row["arm"] == "budget")
    return (f"{format_interval(change)} over {units} (fold, seed) runs, "
            + reading(change, units))


ensembles = {name: references[name] for name in ["seed_ensemble", *machine_records("seed_ensemble")]}
for name, ensemble in ensembles.items():
    display(Markdown(reference_notice(ensemble, name)))
    if ensemble is None:
        continue
    parameters = ensemble.record["parameters"]
    rows = []
    for row in ensemble.numbers["rows"]:
        change = row.get("tta_dice_change_vs_control")
        rows.append((row["label"], cell(row["tta_dice_mean"], row["tta_dice_sd_over_units"]),
                     cell(row["tta_infnet_mean_dice_mean"]),
                     f"{format_interval(change)} vs {change['against']}" if change else "—", str(row["units"])))
    display(Markdown(f"**`{name}`**, on {describe_machine(ensemble.record['runtime'])}: seeds {parameters['seeds']}, "
                     f"{parameters['folds']} outer folds, {describe_recipe(parameters['recipe'])}."))
    display(Markdown(markdown_table(rows, ("prediction", "Dice at 0.5 (TTA)", "Inf-Net mean Dice",
                                           "change [95 % CI]", "units"))))
    comparison = against_budget(ensemble)
    display(Markdown(f"Against one network trained as long, on the same test slices, the ensemble changed Dice at "
                     f"0.5 by {comparison}." if comparison else
                     f"This record holds no network trained as long as the ensemble (`--control-seeds`): it measures "
                     f"the ensemble only against networks each trained on 1/{parameters['members']} of its budget."))

# %% mystnb={"figure": {"caption": "Reference record (COVID-SemiSeg): for each combination of seeds and each outer fold of the first, the ensemble's test Dice at 0.5 minus the mean of its networks' Dice on the same slices (dots), the mean as a black bar and no change dashed. Without a record the panel says so.", "name": "fig-09-ensemble"}, "image": {"alt": "Reference record (COVID-SemiSeg): for each pair of seeds and each outer fold of the first, the ensemble's test Dice minus its networks' mean"}}
viz.show_grouped_values({f"{name}: ensemble of {ensemble.record['parameters']['members']} − its networks":
                         [unit["ensemble_tta_dice"] - unit["members_tta_dice"] for unit in ensemble.numbers["units"]]
                         for name, ensemble in ensembles.items() if ensemble is not None} or None,
                        ylabel="change in Dice at 0.5", baseline=0.0,
                        title="What averaging networks changes (COVID-SemiSeg)",
                        empty_message="no reference record of benchmarks/seed_ensemble.py yet")

# %% [markdown]
# ### Where the Dice is lost
#
# Mean Dice weighs every slice alike, and one might expect the slices with little infection to be the
# hard ones: there a handful of pixels missed or added is a large share of the lesion. The same record
# tests that. It keeps each labelled slice's Dice at 0.5 beside its infected share (of its pixels, as
# stored), once by one network alone (the mean over the seeds) and once by an ensemble (the mean over
# the combinations); every slice is scored by networks that never trained on it.

# %% tags=["hide-input"]
slices_record = next((record for record in ensembles.values() if record is not None and "slices" in record.numbers), None)
slice_scores = slices_record.numbers["slices"] if slices_record else {}
if slice_scores:
    shares = np.array([scores["infected_share"] for scores in slice_scores.values()])
    alone_dice = np.array([scores["network_tta_dice"] for scores in slice_scores.values()])
    ensemble_dice = np.array([scores["ensemble_tta_dice"] for scores in slice_scores.values()])
    median_share = np.median(shares)
    smaller, failed = shares < median_share, alone_dice < 0.5
    display(Markdown(
        f"In `{slices_record.path.stem}`, the {smaller.sum()} slices with the least infection (under "
        f"{median_share:.1%} of their pixels) scored Dice {alone_dice[smaller].mean():.3f} by one network and "
        f"{ensemble_dice[smaller].mean():.3f} by an ensemble; the other {(~smaller).sum()}, "
        f"{alone_dice[~smaller].mean():.3f} and {ensemble_dice[~smaller].mean():.3f}. "
        + (f"The {failed.sum()} slices one network scored below 0.5 have {np.median(shares[failed]):.1%} of their "
           "pixels infected at the median." if failed.any() else "One network scored no slice below 0.5.")
        + f" Spearman's rank correlation of infected share and Dice is {spearmanr(shares, alone_dice).statistic:+.2f} "
        f"for one network and {spearmanr(shares, ensemble_dice).statistic:+.2f} for an ensemble."
        + (f" {np.sum(shares == 0)} slices hold no infection and are left out of the figure." if np.any(shares == 0)
           else "")))
    shown = shares > 0  # a log axis cannot place a slice without infection

# %% mystnb={"figure": {"caption": "Reference record (COVID-SemiSeg): each labelled slice's test Dice at 0.5 (with test-time augmentation) against the share of its pixels labelled infection (log scale), by one network of train's recipe (the mean over the seeds whose outer test fold held it) and by an ensemble of networks of other seeds (the mean over its combinations of seeds). Without a record that keeps slices the panel says so.", "name": "fig-09-dice-by-share"}, "image": {"alt": "Reference record (COVID-SemiSeg): each labelled slice's test Dice against the share of its pixels labelled infection, for one network and for an ensemble"}}
viz.show_points({"one network": (shares[shown] * 100, alone_dice[shown]),
                 f"ensemble of {slices_record.record['parameters']['members']}": (shares[shown] * 100, ensemble_dice[shown])}
                if slice_scores else None, xlabel="infected pixels (% of the slice)", ylabel="Dice at 0.5 (TTA)",
                log_x=True, title="Each slice's Dice against its infected share (COVID-SemiSeg)",
                empty_message="no reference record of benchmarks/seed_ensemble.py with slices yet")

# %% [markdown]
# ### What Inf-Net's mean Dice rewards
#
# The published numbers beside the ablation use Inf-Net's protocol (chapter 04): each probability map is
# rescaled by its own minimum and maximum and Dice is averaged over 256 thresholds from 1 down to 0. So the
# metric asks how confident a map is as well as where it is right: a pixel at 0.6 counts as infected at
# the thresholds below it only. Dividing a map's log-odds by a temperature $T < 1$,
# $p \mapsto \sigma(\operatorname{logit}(p) / T)$, leaves every pixel on its side of 0.5, so Dice at 0.5
# cannot move, while Inf-Net's mean Dice can; at $T = 0$ the map is its own mask. Averaging predictions works
# the other way: where the 8 symmetries of test-time augmentation, or the networks of an ensemble, disagree,
# their mean hesitates, which is why the ensemble above can gain Dice at 0.5 and not Inf-Net's mean Dice.
# `benchmarks/map_sharpness.py`
# scores A′'s outer test folds (`train`'s recipe, the ablation's networks, test-time augmentation as usual)
# at several temperatures: how much of the distance to a published number is the sharpness of the maps.

# %% tags=["hide-input"]
sharpness_records = {name: references[name] for name in ["map_sharpness", *machine_records("map_sharpness")]}
for name, sharpness in sharpness_records.items():
    display(Markdown(reference_notice(sharpness, name)))
    if sharpness is None:
        continue
    rows = []
    for row in sharpness.numbers["rows"]:
        change = row.get("tta_infnet_mean_dice_change_vs_control")
        rows.append((row["label"], cell(row["tta_dice_mean"]), cell(row["tta_infnet_mean_dice_mean"]),
                     format_interval(change) if change else "—", str(len(row["units"]))))
    display(Markdown(f"**`{name}`**, on {describe_machine(sharpness.record['runtime'])}: "
                     f"{describe_recipe(sharpness.record['parameters']['recipe'])}."))
    display(Markdown(markdown_table(rows, ("map", "Dice at 0.5 (TTA)", "Inf-Net mean Dice",
                                           "Inf-Net mean Dice vs as predicted [95 % CI]", "units"))))

# %% mystnb={"figure": {"caption": "Reference record (COVID-SemiSeg): Inf-Net's mean Dice of the same test-fold maps of A\u2032 sharpened at each temperature, one point per (fold, seed), the black bar the mean; dashed, their mean Dice at 0.5, which no temperature changes. Without a record the panel says so.", "name": "fig-09-map-sharpness"}, "image": {"alt": "Reference record (COVID-SemiSeg): Inf-Net's mean Dice of the same maps sharpened at each temperature, against their unchanged Dice at 0.5"}}
sharpness_shown = next((record for record in sharpness_records.values() if record is not None), None)
viz.show_grouped_values({row["label"]: row["tta_infnet_mean_dice_by_unit"] for row in sharpness_shown.numbers["rows"]}
                        if sharpness_shown else None, ylabel="Inf-Net mean Dice",
                        baseline=sharpness_shown.numbers["rows"][0]["tta_dice_mean"] if sharpness_shown else None,
                        title="The same segmentations, more or less confident (COVID-SemiSeg)",
                        empty_message="no reference record of benchmarks/map_sharpness.py yet")

# %% [markdown]
# ## How many labelled slices does the recipe need?
#
# Every outer fold of the ablation trains on 32 labelled slices. `benchmarks/learning_curve.py`
# trains `train`'s recipe (as it stood when the record ran; named below) on fewer of them (each
# smaller set inside the larger ones), with the same inner validation slices, the same outer test
# fold and as many optimizer steps, so that only the number of labels changes. Where the curve
# still climbs at 32, more labels would help; a book about few labels should know how steep it is.

# %% tags=["hide-input"]
curve = references["learning_curve"]
display(Markdown(reference_notice(curve, "learning_curve")))
if curve is not None:
    display(Markdown(f"The recipe of this record: {describe_recipe(curve.record['parameters']['recipe'])}."))
curve_rows = curve.numbers["rows"] if curve is not None else []
if curve_rows:
    rows = []
    for row in curve_rows:
        change = row.get("tta_dice_change_vs_all")
        rows.append((str(row["n"]), cell(row["tta_dice_mean"], row["tta_dice_sd_over_units"]),
                     cell(row["tta_infnet_mean_dice_mean"]),
                     format_interval(change) if change else "—",
                     str(len(row["units"]))))
    display(Markdown(markdown_table(rows, ("labelled training slices", "Dice at 0.5 (TTA)", "Inf-Net mean Dice",
                                           f"change [95 % CI] vs all {curve.numbers['all_slices']}",
                                           "(fold, seed) runs"))))
    doubling = curve.numbers.get("per_doubling")
    if doubling:
        display(Markdown(f"Each doubling of the labelled slices added {format_change(doubling['mean_difference'])} test Dice "
                         f"(95 % CI {format_change(doubling['low'])} to {format_change(doubling['high'])}): the mean over {doubling['n']} "
                         "(fold, seed) runs of each run's least-squares slope of Dice on log2 of the number of slices."))

# %% mystnb={"figure": {"caption": "Reference record (COVID-SemiSeg): test Dice at 0.5 with test-time augmentation of the recipe the record names (above) against the number of labelled training slices, one point per (fold, seed), the black bar the mean. Without a record the panel says so.", "name": "fig-09-learning-curve"}, "image": {"alt": "Reference record (COVID-SemiSeg): test Dice at 0.5 with test-time augmentation of the recipe the record names (above) against the number of labelled training slices, one point per (fold, seed), the black bar the mean"}}
viz.show_grouped_values({f"{row['n']} slices": row["tta_dice_by_unit"] for row in curve_rows} or None,
                        ylabel="Dice at 0.5", title="Dice against the number of labelled slices (COVID-SemiSeg)",
                        empty_message="no reference record of benchmarks/learning_curve.py yet")

# %% [markdown]
# ### What the eight validation slices cost
#
# Every network above sets 8 of its outer fold's 40 training slices aside to choose its epoch, and
# the curve is still climbing where it ends. The seed-ensemble records find little between the chosen
# epoch and the last one; would those 8 slices do more as training data?
# `benchmarks/all_slices.py` trains `train`'s recipe on all 40 for the same 600 epochs and keeps
# its last epoch (nothing is chosen), and pairs it on the same test slices with A′ at its chosen
# epoch (what `train --val-fraction 0.2` does) and at its last (the same protocol on 32 slices). From
# the second seed on it also averages each 40-slice network with the previous seed's, and A′ with A′,
# and for the seeds it names it trains that ensemble's fair rival: one 40-slice network of twice the
# epochs, the same training time as the two.
#
# The ensemble of two 40-slice networks is what `python -m covidlib train` does at its defaults, on
# every labelled slice (all 50 of COVID-SemiSeg): it trains two networks of two seeds, keeps each at
# its last epoch, and `evaluate`, `predict` and `segment` average them. These runs measure it at 40
# training slices, the most an outer fold leaves.

# %% tags=["hide-input"]
every_slice = references["all_slices"]
display(Markdown(reference_notice(every_slice, "all_slices")))
every_rows = every_slice.numbers["rows"] if every_slice is not None else []
every_verdicts: list[str] = []  # its sentences, which the findings below repeat
if every_rows:
    display(Markdown(f"**`all_slices`**, on {describe_machine(every_slice.record['runtime'])}: "
                     f"{describe_recipe(every_slice.record['parameters']['recipe'])}; {len(every_slice.numbers['units'])} "
                     f"of {every_slice.numbers['units_planned']} planned (fold, seed) runs, whose 40-slice trainings took "
                     f"{every_slice.numbers['wall_seconds'] / 60:.0f} min wall in all."))
    every_label = {row["arm"]: row["label"] for row in every_rows}

    def other_change(row: dict) -> str:
        """The row's paired differences to its closer controls (last epoch, A′'s ensemble, one network of
        the ensemble's budget), named, with their units where fewer than the row's."""
        changes = [value for key, value in row.items() if key.startswith("tta_dice_change_vs_") and key != "tta_dice_change_vs_control"]
        return "; ".join(f"{format_interval(change)} vs {every_label[change['against']]}"
                         + (f" ({change['n']} runs)" if change["n"] < len(row["units"]) else "")
                         for change in changes) or "—"

    display(Markdown(markdown_table(
        [(row["label"], cell(row["tta_dice_mean"], row["tta_dice_sd_over_units"]), cell(row["tta_infnet_mean_dice_mean"]),
          format_interval(row["tta_dice_change_vs_control"]) if "tta_dice_change_vs_control" in row else "—",
          other_change(row), str(len(row["units"])))
         for row in every_rows],
        ("network", "Dice at 0.5 (TTA)", "Inf-Net mean Dice", "change [95 % CI] vs A′ (epoch chosen)",
         "change [95 % CI] vs its closer control", "(fold, seed) runs"))))

    chosen_by_unit = dict(zip(map(tuple, every_rows[0]["units"]), every_rows[0]["tta_dice_by_unit"]))

    def verdict(arm: str, what: str) -> str | None:
        """A sentence on ``arm``'s change against A′ at its chosen epoch, or ``None`` without the arm or a change."""
        row = next((row for row in every_rows if row["arm"] == arm), None)
        if row is None or "tta_dice_change_vs_control" not in row:
            return None
        runs = len(row["units"])
        baseline = float(np.mean([chosen_by_unit[tuple(unit)] for unit in row["units"]]))
        return (f"{what} changed Dice at 0.5 by {format_interval(row['tta_dice_change_vs_control'])} against A′ at "
                f"its chosen epoch over {runs} (fold, seed) runs ({row['tta_dice_mean']:.{digits}f} against "
                f"{baseline:.{digits}f}): {reading(row['tta_dice_change_vs_control'], runs)}.")

    every_verdicts = [sentence for sentence in (
        verdict("all_slices", "Training on the 8 validation slices too, and keeping the last epoch,"),
        verdict("ensemble_all_slices", "Averaging two such networks (40 slices, last epoch) of two seeds, "
                                       "what `train` does at its defaults,")) if sentence]
    ensemble_row = next((row for row in every_rows if row["arm"] == "ensemble_all_slices"), {})
    if rival := ensemble_row.get("tta_dice_change_vs_budget"):
        every_verdicts.append(f"Against its fair rival, one 40-slice network trained twice as long (the same training "
                              f"time), the ensemble changed Dice at 0.5 by {format_interval(rival)} over {rival['n']} "
                              f"(fold, seed) runs: {reading(rival, rival['n'])}.")
    display(Markdown(" ".join(every_verdicts)))

# %% [markdown]
# ## The semi-supervised comparison
#
# The report's summary ends with "an improvement of ??? percent". Chapter 08 answers it on
# COVID-SemiSeg with a fair comparison: each semi-supervised arm against a control that trains as
# many steps with the same noise and the same selection rule but without the unlabelled slices.

# %% tags=["hide-input"]
reference_08 = references["08_mean_teacher"]
display(Markdown(reference_notice(reference_08, "08_mean_teacher")))
if reference_08 is not None:
    summary_08 = reference_08.numbers["summary"]
    display(Markdown(markdown_table(arm_rows(summary_08), ("arm", "Dice at 0.5", "sd over seeds", "Inf-Net mean Dice"))))
    display(Markdown(markdown_table(paired_rows(summary_08), ("arm − its control", "metric", "difference [95 % CI]",
                                                              "in % of the control", "(fold, seed) runs"))))

# %% [markdown]
# ## What agrees with the report, and what does not
#
# The paragraph below is written from the records above, so it changes when they do.

# %% tags=["hide-input"]
findings = []
if reference_05 is not None:
    scratch = reference_05.numbers["table"].get("unet", {}).get("scratch", {})
    if {"10-40", "40-10"} <= set(scratch):
        few, many = scratch["10-40"]["test"]["mean"], scratch["40-10"]["test"]["mean"]
        findings.append(f"As in the report, 40 labelled volumes beat 10 when training from scratch "
                        f"(test Dice {many:.3f} against {few:.3f})" if many > few else
                        f"Unlike the report, 10 labelled volumes did as well as 40 from scratch "
                        f"(test Dice {few:.3f} against {many:.3f})")
    # each network's pretrained starts against that network trained from scratch, fold by fold on the same split
    starts = [(network, row, split, paired_bootstrap_ci(network_table["scratch"][split]["test"]["folds"],
                                                        phases["test"]["folds"], seed=seed))
              for network, network_table in reference_05.numbers["table"].items()
              for row, splits in network_table.items() if row != "scratch"
              for split, phases in splits.items() if split in network_table.get("scratch", {})]
    if starts:
        network, row, split, best = max(starts, key=lambda start: start[3].mean_difference)
        above = sum(interval_side(start[3].as_dict()) == "lies above 0" for start in starts)
        findings.append(
            f"{sum(start[3].mean_difference > 0 for start in starts)} of the {len(starts)} pretrained starts scored above "
            f"the same network trained from scratch and {above} of them with a paired 95 % interval above 0, where the "
            f"report expected transfer to help; the best ({NETWORK_TITLES[network]}, {row}, {split}) changed test Dice "
            f"by {format_interval(best.as_dict())} over {best.n} folds (the best of {len(starts)}, so optimistic)")
if cv_04:
    arms = cv_04["arms"]
    infnet = {name: float(np.mean(arm["infnet_mean_dice"])) for name, arm in arms.items()}
    best_arm = max(infnet, key=infnet.get)
    semi_inf = next(r for r in PUBLISHED if r.method == "Semi-Inf-Net")
    findings.append(f"the best supervised arm of chapter 04 ({best_arm}) reached Inf-Net mean Dice "
                    f"{infnet[best_arm]:.3f} in nested CV, {'above' if infnet[best_arm] > semi_inf.value else 'below'} "
                    f"Semi-Inf-Net's published {semi_inf.value:.3f} (a different split: an indication, not a ranking)")
if ablation is not None and ablation.numbers["rows"]:
    # the defaults row, not the best-scoring one: rows may hold different seeds, and its extra seeds are
    # splits that took no part in choosing it
    defaults_row = next((row for row in ablation.numbers["rows"] if Recipe(**row["recipe"]) == Recipe()),
                        None)
    semi_inf = next(r for r in PUBLISHED if r.method == "Semi-Inf-Net")
    if defaults_row is not None:
        threshold = "the threshold chosen on the inner split" if Recipe().select_threshold else "0.5"
        findings.append(f"One network of `train`'s recipe (the ablation's “{defaults_row['name']}”) reached Dice at {threshold} "
                        f"{defaults_row['dice_mean']:.3f} ± {defaults_row['dice_sd_over_units']:.3f} over "
                        f"{len(defaults_row['dice_by_unit'])} nested-CV runs (seeds {defaults_row['seeds']}); its "
                        f"Inf-Net mean Dice, {defaults_row['infnet_mean_dice_mean']:.3f}, is the number to set beside "
                        f"Semi-Inf-Net's published {semi_inf.value:.3f} (again a different split, and 32 training "
                        "slices against 50, and a metric that also scores how confident the maps are: below)")
for name, sharpness in sharpness_records.items():
    if sharpness is None or len(sharpness.numbers["rows"]) < 2:
        continue
    predicted = next(row for row in sharpness.numbers["rows"] if row["temperature"] == 1)
    sharpest = min(sharpness.numbers["rows"], key=lambda row: row["temperature"])
    change = sharpest.get("tta_infnet_mean_dice_change_vs_control")
    if change is None:  # one unit, or no temperature below 1
        continue
    sharpened = ("binarised at 0.5" if sharpest["temperature"] == 0 else
                 f"with their log-odds divided by {sharpest['temperature']:g}")
    findings.append(f"A′'s test-fold maps (`{name}`) scored Inf-Net mean Dice "
                    f"{cell(predicted['tta_infnet_mean_dice_mean'])} as predicted and "
                    f"{cell(sharpest['tta_infnet_mean_dice_mean'])} {sharpened}, {format_interval(change)} over "
                    f"{change['n']} (fold, seed) runs ("
                    + reading(change, change["n"], words={side: f"the interval {side}" for side in outcome})
                    + f"), with Dice at 0.5 {cell(predicted['tta_dice_mean'])} at every temperature: a ranking "
                    "against a published Inf-Net mean Dice also ranks how confident the two methods' maps are")
if len(curve_rows) > 1 and "tta_dice_change_vs_all" in curve_rows[-2]:
    below = curve_rows[-2]
    change = below["tta_dice_change_vs_all"]
    side = interval_side(change)
    curve_recipe = curve.record["parameters"]["recipe"]
    findings.append(f"with {below['n']} instead of {curve.numbers['all_slices']} labelled training slices the recipe "
                    + ("" if Recipe(**curve_recipe) == Recipe() else
                       f"of the learning-curve record ({describe_recipe(curve_recipe)}) ")
                    + f"changed test Dice by {format_interval(change)}"
                    + ("; the curve still climbs, so more labels would help" if side == "lies below 0" else
                       f"; its interval {side}, so these runs cannot show that more labels would help"))
    doubling = curve.numbers.get("per_doubling")
    if doubling:
        findings.append(f"over the whole curve each doubling of the labelled slices added "
                        f"{format_interval(doubling)} "
                        f"test Dice")
findings += [f"{verdict.removesuffix('.')} (`all_slices`)" for verdict in every_verdicts]
for name, ensemble in ensembles.items():
    last_epoch = next((row for row in ensemble.numbers["rows"] if row["arm"] == "last"), None) if ensemble else None
    if last_epoch and (change := last_epoch.get("tta_dice_change_vs_control")):
        findings.append(f"A′ at its last epoch instead of the one chosen on its inner validation slices (`{name}`) "
                        f"changed Dice at 0.5 by {format_interval(change)} over {change['n']} (fold, seed) runs, "
                        + reading(change, change["n"]))
    if ensemble is None or ensemble.numbers["rows"][-1]["arm"] != "ensemble":
        continue
    averaged = ensemble.numbers["rows"][-1]
    findings.append(f"the mean of {ensemble.record['parameters']['members']} networks of other seeds (`{name}`) scored "
                    f"{cell(averaged['tta_dice_mean'])} Dice at 0.5"
                    + (f", {format_interval(averaged['tta_dice_change_vs_control'])} against its networks alone"
                       if averaged.get("tta_dice_change_vs_control") else "")
                    + (f" and, against one network trained as long, {comparison}"
                       if (comparison := against_budget(ensemble)) else ", with no network trained as long beside it"))
if reference_08 is not None:
    paired = reference_08.numbers["summary"]["dice"]["paired"]
    for arm, interval in paired.items():
        findings.append(f"{arm.replace('_', ' ')} against its control: {interval['percent']:+.1f} % of the control's "
                        f"Dice (95 % CI {interval['percent_low']:+.1f} to {interval['percent_high']:+.1f} %), "
                        f"{outcome[interval_side(interval)]}, where the report anticipated a gain")
for name in ["semi_recipe", *machine_records("semi_recipe"), "semi_student", *machine_records("semi_student")]:
    semi_record = references[name]
    if semi_record is None:
        continue
    findings.append(f"the semi-supervised benchmark's A′ (`{name}`, {describe_machine(semi_record.record['runtime'])}) is "
                    f"{describe_recipe(semi_record.record['parameters']['recipe'])}")
    labels = {row["arm"]: row["label"] for row in semi_record.numbers["rows"]}
    for row in semi_record.numbers["rows"]:
        change = row.get("tta_dice_change_vs_control")
        if change is not None:
            done, planned = len(row["units"]), semi_record.numbers["units_planned"]
            findings.append("there" + (f" (over {done} of {planned} planned (fold, seed) runs)" if done < planned else "")
                            + f", {row['label']} changed Dice at 0.5 by "
                            f"{format_change(change['mean_difference'])} against “{labels[change['against']]}” (95 % CI "
                            f"{format_change(change['low'])} to {format_change(change['high'])}), "
                            + reading(change, done))
display(Markdown(("On real scans:\n\n" + "\n".join(f"- {finding[:1].upper()}{finding[1:]}." for finding in findings))
                 if findings else
                 "No reference record is committed yet, so there is nothing to compare with the report."))

# %% [markdown]
# ## How long it took
#
# `ci/book` times every chapter it executes and writes the times next to the records
# (`_timings.json`); the reference records also hold each chapter's wall and CPU time (table above).

# %% mystnb={"figure": {"caption": "Wall time of each chapter in the run that produced this page, with the setting's budget per chapter (dashed): two minutes in the quick setting, thirty in the reference setting.", "name": "fig-09-run-times"}, "image": {"alt": "Wall time of each chapter in the run that produced this page, with the setting's budget per chapter (dashed): two minutes in the quick setting, thirty in the reference setting"}}
timings = read_build_timings(output_dir) if Path(output_dir).is_dir() else None
if timings and timings.get("seconds"):
    total = sum(timings["seconds"].values())
    display(viz.show_run_times(timings["seconds"], budget_s=choose(setting, quick=120, reference=1800, full=None),
                               title=f"Chapter run times, total {total:.0f} s ({timings.get('machine', '?')})"))
else:
    reference_times = {name: r.record["timing"]["wall_seconds"] for name, r in references.items()
                       if r is not None and r.record.get("timing", {}).get("wall_seconds") is not None}
    display(viz.show_run_times(reference_times or {"(none)": 0.0}, budget_s=1800,
                               title="Reference records: wall time of each chapter"))

# %% [markdown]
# ## Conclusion
#
# - Quick-setting numbers come from tiny networks trained for a few steps on a synthetic
#   {term}`phantom <Phantom>` (or on real slices, in CI): they show that every step runs and is
#   reproducible; they are not evidence for or against a method. The reference records are.
# - With 50 labelled slices the spread between folds is as large as many differences between
#   methods: every comparison in this book is paired (the same folds and seeds for both arms) and
#   comes with its interval, and a claim whose interval includes zero is reported as no difference.
# - The pseudo-labelling of {doc}`chapter 07 <07_pseudo_labels>` depends on a detail the report does not
#   discuss: pooled ReLU features are nearly parallel, so plain cosine similarity is close to 1 for every pair
#   ({numref}`Fig. {number} of chapter 07 <fig-07-similarity>`) and the report's fixed thresholds select
#   almost nothing in particular; the book centres the features and picks the threshold on validation slices.
# - Pseudo-labelled patches are not slices: passed through the network in training mode, 16 px
#   patches pulled batch norm's running statistics towards their own, and every whole slice was
#   then normalised with them at test time. On one COVID-SemiSeg fold this alone cost the patch arm
#   0.21 Dice against its control; `covidlib.mean_teacher` now leaves the running statistics to the
#   labelled batches.
# - Inf-Net's mean Dice, the metric of every published COVID-SemiSeg number, scores how confident a map
#   is as well as where it is right: the same segmentations, sharpened without moving a pixel across 0.5,
#   score higher ({numref}`fig-09-map-sharpness`). A ranking against a published number on that metric is
#   only as good as the guess that both methods' maps are alike in confidence; Dice at 0.5 does not depend on it.

# %% tags=["hide-input"]
numbers = {"live_records": sorted(live), "reference_records": sorted(n for n, r in references.items() if r is not None),
           "reference_up_to_date": fresh, "findings": findings,
           # when each record shown here was written: ci/book reruns this chapter once one is rewritten
           "records_shown": {name: r.record.get("created") if r else None for name, r in references.items()}}
record_path = write_record(output_dir, this_chapter, numbers=numbers, runtime=runtime,
                           parameters=dict(dataset=dataset, setting=setting, device=device, seed=seed))

# %%
# NBVAL_CHECK_OUTPUT
print(f"chapters: {len(book_chapters)}; with a record in this run: {sum(name in live for name in book_chapters)}")
