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
# - every number of the book, gathered from the JSON records the chapters wrote — nothing here
#   is typed by hand;
# - where each number comes from: quick or full mode, data set, device, seed and git commit;
# - what the experiments say, and what they do not.
#
# **Prerequisites** run chapters {doc}`01 <01_ct_and_hu>`-{doc}`08 <08_mean_teacher>` first with the same
# `output_dir` (`ci/book` does); a
# chapter that has not been run is listed as "not run".
#
# **Run time** a few seconds.

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
from pathlib import Path

from IPython.display import Markdown, display

from covidlib.config import choose, format_summary, runtime_summary, seed_everything
from covidlib.results import flatten_numbers, format_value, markdown_table, provenance, read_records

seed_everything(seed)
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# %% [markdown]
# ## The records
#
# Each chapter ends by writing `output_dir/<chapter>.json`: its parameters, the runtime summary
# it printed at the start, the git commit and its numbers. The chapters of the book are the
# notebooks next to this one; any of them without a record is reported as not run.

# %%
records = read_records(output_dir) if Path(output_dir).is_dir() else {}
this_chapter = "09_results"
book_chapters = sorted({p.stem for pattern in ("[0-9][0-9]_*.py", "[0-9][0-9]_*.ipynb") for p in Path(".").glob(pattern)}
                       - {this_chapter})
expected = sorted(set(book_chapters) | (set(records) - {this_chapter}))
missing = [name for name in expected if name not in records]
print(f"{len(records)} records in {output_dir!r}; chapters not run: {', '.join(missing) if missing else 'none'}")

# %% [markdown]
# ## Chapter by chapter

# %%
for name in expected:
    if name not in records:
        display(Markdown(f"### {name}\n\n*not run* — no record `{name}.json` in `{output_dir}`."))
        continue
    record = records[name]
    rows = [(key, format_value(value, digits)) for key, value in flatten_numbers(record["numbers"])]
    display(Markdown(f"### {name}\n\n{provenance(record)}\n\n{markdown_table(rows)}"))

# %% [markdown]
# ## The semi-supervised comparison (chapter 08)
#
# The report's summary ends with "an improvement of ??? percent". This is the number, for the
# run recorded here: each arm's {term}`Dice` on the held-out folds and its change relative to A′
# ({numref}`Fig. {number} of chapter 08 <fig-08-arms>` plots the comparison fold by fold).

# %%
comparison_rows = []
record_08 = records.get("08_mean_teacher")
if record_08 is None:
    display(Markdown("*not run* — chapter 08 has no record in this `output_dir`."))
else:
    numbers_08 = record_08["numbers"]
    for arm, values in numbers_08["dice"].items():
        comparison_rows.append((arm, format_value(values, digits), f"{numbers_08['improvement_percent'][arm]:+.1f} %"))
    header = ("arm", "Dice, mean ± sd over folds", "change vs A′")
    display(Markdown(provenance(record_08) + "\n\n" + markdown_table(comparison_rows, header)))

# %% [markdown]
# ## How long it took
#
# `ci/book` times every chapter it executes and writes the times next to the records
# (`_timings.json`), so this page shows what the run that produced it cost on its machine. The
# quick-mode budget is about two minutes a chapter on a 2-core CPU.

# %% mystnb={"figure": {"caption": "Wall time of each chapter in the run that produced this book, with the quick-mode budget of two minutes a chapter (dashed).", "name": "fig-09-run-times"}}
from covidlib import viz
from covidlib.results import read_build_timings

timings = read_build_timings(output_dir) if Path(output_dir).is_dir() else None
if timings and timings.get("seconds"):
    total = sum(timings["seconds"].values())
    display(viz.show_run_times(timings["seconds"], budget_s=choose(setting, quick=120, reference=1800, full=None),
                               title=f"Chapter run times, total {total:.0f} s ({timings.get('machine', '?')})"))
else:
    print("no _timings.json here: run the book with ci/book to measure each chapter's time")

# %% [markdown]
# ## Conclusion
#
# The book rebuilds the report's two scenarios on data anyone can generate. What the records
# above can and cannot support:
#
# - {term}`Quick-mode <Quick mode>` numbers come from tiny networks trained for a few steps on a synthetic
#   {term}`phantom <Phantom>`.
#   They show that every step runs and is reproducible; they are not evidence for or against a
#   method. Full-mode records (and the COVID-SemiSeg cross-validation in `benchmarks/`) are.
# - The pseudo-labelling of {doc}`chapter 07 <07_pseudo_labels>` depends on a detail the report does not
#   discuss: pooled ReLU features are nearly parallel, so plain cosine similarity is close to 1 for every pair
#   ({numref}`Fig. {number} of chapter 07 <fig-07-similarity>`)
#   and the report's thresholds (0.87-0.96, 0.90) select almost nothing in particular; centring
#   the features restores a usable spread.
# - The improvement the report left blank is whatever the comparison table above says for the
#   run that produced it — with its spread over folds, which on 10-50 labelled cases is as large
#   as most of the differences between arms.

# %%
from covidlib.results import write_record

numbers = {"records": sorted(records), "not_run": missing}
write_record(output_dir, this_chapter, parameters=dict(dataset=dataset, setting=setting, device=device, seed=seed),
             numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"chapters expected: {len(expected)}; with a record: {len(expected) - len(missing)}")
