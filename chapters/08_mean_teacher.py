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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/covid-ct-book/covid-ct-book/blob/main/chapters/08_mean_teacher.ipynb)
#
# # 08. Mean teacher: does the unlabelled data help?
#
# **What you will learn**
#
# - the {term}`mean-teacher <Mean teacher>` scheme of {cite:t}`tarvainen2017mean`: a student network, a teacher whose
#   weights are the student's {term}`exponential moving average <EMA>`, and a consistency cost between their
#   predictions under independent noise;
# - the warm-up of the averaging rate, $\alpha_t = \min(1 - 1/(t+1), \alpha)$, and the sigmoid ramp-up of the
#   consistency weight, $\exp(-5(1 - t/T)^2)$, written out and checked against the library;
# - how {doc}`chapter 07 <07_pseudo_labels>`'s soft {term}`pseudo masks <Pseudo-label>` enter the loss, each patch weighted by its similarity;
# - the comparison the report left blank ("an improvement of ??? percent"), made fair: nested
#   cross-validation (the outer fold only scores), and each semi-supervised arm against a
#   *control* that trains as many steps with the same noise and selection but no unlabelled data;
#   mean ± sd over folds and seeds, and the paired difference with a 95 % bootstrap interval;
# - the answer on the real COVID-SemiSeg slices (the committed reference record), and again where
#   it matters: on top of `train`'s supervised recipe (the record names the version it ran), with all
#   1,600 unlabelled slices, beside a simpler rival, whole-slice pseudo-labels (self-training).
#
# **Prerequisites** {doc}`chapter 07 <07_pseudo_labels>` (pseudo-labels); {doc}`chapter 04 <04_unet_and_attention>`
# (the Trainer).
#
# **Run time** quick: ~2 min CPU (2 folds of tiny networks, phantom or COVID-SemiSeg);
# reference (COVID-SemiSeg, 5 folds x 3 seeds of small networks at 128 px, 400 unlabelled
# slices): about 10 min on a 2-core CPU; full: hours on a GPU.

# %% tags=["remove-cell"]
# Colab and fresh kernels: install the book's library only when it is missing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("covidlib") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "covidlib @ git+https://github.com/covid-ct-book/covid-ct-book"])

# %% tags=["parameters"]
dataset = "phantom"
data_root = ""
setting = "quick"  # "quick" (minutes, CI), "reference" (real data, a 2-core CPU), "full" (the report's settings, a GPU)
device = "auto"
seed = 0
output_dir = "results"
# chapter knobs
rule = "top2"
ema_alpha = 0.99
consistency_weight = 1.0
noise_std = 0.1

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display
from torch import nn

from covidlib.config import choose, format_summary, runtime_summary, seed_everything
from covidlib.datasets import get_dataset
from covidlib.inference import prepare_slices
from covidlib.mean_teacher import (A_PRIME_PRECONDITION, ARMS, CONTROLS, arm_rows, compare_arms, ema_update,
                                   paired_rows, run_semi_cv, sigmoid_rampup)
from covidlib.recipe import describe_recipe
from covidlib.records import FEWEST_RUNS_TO_READ, describe_machine, load_reference, machine_records, reference_notice
from covidlib.restoration import RestorationSettings, pretrained_weights
from covidlib.results import format_interval, interval_side, markdown_table, write_record
from covidlib.viz import show_grouped_values

#: Short display names of the arms for figure tick labels (the tables use covidlib's ARM_LABELS).
ARM_SHORT = {"supervised": "A′", "control": "control", "pseudo_labels": "+ pseudo-labels",
             "pseudo_slices": "+ whole-slice\npseudo-labels", "control_ema": "control with\nmean teacher",
             "mean_teacher": "+ pseudo-labels\n+ mean teacher", "student": "student from\nscratch"}


def difference_name(arm: str, control: str) -> str:
    """A figure's tick label for the paired difference ``arm − control``, in display names."""
    short = lambda name: ARM_SHORT.get(name, name.replace("_", " "))  # noqa: E731
    return f"{short(arm)}\n− {short(control)}"


seed_everything(seed)
# One thread: these networks are small, and on a shared 2-core CPU a second torch thread
# measured 4-5 times slower per step (it spin-waits for a busy core).
torch.set_num_threads(1)
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# %% [markdown]
# ## The two schedules, by hand
#
# The teacher's weights follow $\theta'_t = \alpha_t \theta'_{t-1} + (1 - \alpha_t)\,\theta_t$. With a fixed
# $\alpha = 0.99$ the teacher would spend its first hundred steps remembering its random start, so the rate warms
# up: $\alpha_t = \min(1 - 1/(t+1), \alpha)$ makes the teacher the plain average of all student weights so
# far until that average is older than α allows. The consistency weight starts near zero,
# while the pseudo-labels and the teacher are still poor, and reaches its full value after T
# steps. {numref}`fig-08-schedules` shows both.

# %% mystnb={"figure": {"caption": "Left: a student weight that swings like a sine and the teacher, its exponential moving average with the warm-up (\u03b1 = 0.99 by default). While \u03b1_t warms up the teacher is the plain average of the student so far; afterwards it smooths the swings to a small ripple. Right: the sigmoid ramp-up of the consistency weight, at full value after T = 100 steps.", "name": "fig-08-schedules"}, "image": {"alt": "Left: a student weight that swings like a sine and the teacher, its exponential moving average with the warm-up (\u03b1 = 0.99 by default)"}}
steps = np.arange(0, 300)
by_hand_alpha = np.minimum(1 - 1 / (steps + 1), ema_alpha)
ramp_length = 100
by_hand_ramp = np.exp(-5 * (1 - np.minimum(steps, ramp_length) / ramp_length) ** 2)
assert np.allclose(by_hand_ramp, [sigmoid_rampup(t, ramp_length) for t in steps])

teacher, student = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
history = []
for t in steps:
    student.weight.data.fill_(float(np.sin(t / 10)))  # a wandering student
    ema_update(teacher, student, ema_alpha, int(t))
    history.append(teacher.weight.item())
running = [np.sin(0.0)]  # alpha_0 = 0: the teacher starts as a copy of the student
for t in steps[1:]:
    running.append(by_hand_alpha[t] * running[-1] + (1 - by_hand_alpha[t]) * np.sin(t / 10))
assert np.allclose(history, running, atol=1e-6)

fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].plot(steps, np.sin(steps / 10), label="student weight", color="0.6")
axes[0].plot(steps, history, label=f"teacher (EMA, α={ema_alpha})", color="tab:blue")
axes[0].set_xlabel("step"); axes[0].set_ylabel("weight value"); axes[0].legend(fontsize=8); axes[0].set_title("Teacher = moving average of the student")
axes[1].plot(steps, by_hand_ramp, color="tab:orange")
axes[1].set_xlabel("step"); axes[1].set_ylabel("consistency weight (share of full)"); axes[1].set_title(f"Consistency ramp-up, T = {ramp_length}")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Settings and data
#
# A′ is fine-tuned from A, a U-Net pretrained without labels on the unlabelled slices by
# Models-Genesis restoration (2D data; the phantom has no separate unlabelled source, so there A′
# starts from scratch). Four continuations of A′ then train for the same number of steps at half
# its learning rate, with the same input noise, each keeping its epoch best on the validation
# slices: a **control** (labels only), **+ pseudo-labels** (a batch of pseudo-labelled patches
# added to each step), a **control with the mean teacher** (the consistency cost and EMA teacher
# on the labelled batches only) and **+ mean teacher** (the same with the pseudo-labelled
# patches). So the difference between an arm and its control is what the unlabelled data adds.
# The pseudo-label threshold is chosen on the validation slices
# ({doc}`chapter 07 <07_pseudo_labels>`, step 6). The spatial augmentation is shared by student
# and teacher (it happens in the data set), so their outputs stay pixel-aligned; only the noise differs.

# %%
is_phantom = dataset == "phantom"
slice_size = (choose(setting, quick=64, reference=128, full=256) if is_phantom
              else choose(setting, quick=96, reference=128, full=352))
n_labelled = choose(setting, quick=10, reference=50, full=50)
n_unlabelled = choose(setting, quick=6, reference=50, full=200)  # volumes; on 2D data 8 slices stand for one
n_folds = 5
run_folds = choose(setting, quick=2, reference=n_folds, full=n_folds)
seeds = [seed + k for k in range(choose(setting, quick=1, reference=3, full=3))]
base_width, depth = choose(setting, quick=(4, 3), reference=(8, 4), full=(32, 4))
batch_size = 8
restoration_steps = choose(setting, quick=4, reference=100, full=2000)
pretrained_cache = Path(output_dir) / "pretrained"  # shared with chapters 05 and 07: same settings, same weights
cv_cache = Path(output_dir) / "08_semi_cv"  # one result per (seed, fold): a re-run continues
# A' and the four continuations; each fold adds its own number of training cases and its seed.
settings_options = dict(
    base_width=base_width, depth=depth, supervised_epochs=choose(setting, quick=6, reference=10, full=500),
    semi_epochs=choose(setting, quick=3, reference=3, full=100), lr=choose(setting, quick=5e-3, reference=1e-3, full=2e-4),
    patience=30, batch_size=batch_size, rule=rule, amp=choose(setting, quick="off", reference="auto", full="auto"),
    device=device, max_steps_per_epoch=choose(setting, quick=4, reference=None, full=None),
    patch_size=choose(setting, quick=16, reference=16, full=32) if is_phantom else None,
    labelled_patches=choose(setting, quick=40, reference=120, full=120),
    patches_per_unlabelled=choose(setting, quick=8, reference=32, full=32),
    rampup_steps=choose(setting, quick=4, reference=8, full=500), alpha=ema_alpha,
    consistency_weight=consistency_weight, noise_std=noise_std, output_size=slice_size if is_phantom else None,
    empty_fraction=0.3, augment=setting != "quick")

t0 = time.perf_counter()
native = None
if is_phantom:
    shape = choose(setting, quick=(12, 64, 64), reference=(24, 128, 128), full=(48, 256, 256))
    spacing_mm = 512 / slice_size * 0.7
    labelled_part = prepare_slices(get_dataset("phantom", n=n_labelled, seed=seed, shape=shape), method="lung-crop",
                                   spacing_mm=spacing_mm)
    hidden = prepare_slices(get_dataset("phantom", n=n_unlabelled, seed=seed + 1000, shape=shape), method="lung-crop",
                            spacing_mm=spacing_mm).labelled
    arrays, preparation = labelled_part.labelled, labelled_part.steps
    unlabelled = [image for image, _ in hidden.values()]
else:
    real = get_dataset(dataset, data_root or None)
    prepared = prepare_slices(real, slice_size, n_unlabelled=n_unlabelled * 8)
    arrays, unlabelled, preparation = prepared.labelled, prepared.unlabelled, prepared.steps
    native = prepare_slices(real, None).labelled  # scored at each slice's own size
print("preparation:", "; ".join(preparation))
print(f"{len(arrays)} labelled, {len(unlabelled)} unlabelled images; loaded in {time.perf_counter() - t0:.1f} s")

initial_state = None
if not is_phantom:
    restoration = RestorationSettings(base_width=base_width, depth=depth, steps=restoration_steps, seed=seed,
                                      amp=settings_options["amp"])
    initial_state, pretrained_info = pretrained_weights(np.concatenate(unlabelled), restoration, pretrained_cache,
                                                        device=device, progress=False)
    print(f"model A: {restoration_steps} restoration steps on {len(unlabelled)} unlabelled slices"
          f"{' (cached)' if pretrained_info['cached'] else ''}")

# %% [markdown]
# ## The comparison
#
# Nested cross-validation over the labelled cases: each outer fold's cases only score; of the
# rest, a fifth picks every epoch and the pseudo-label threshold and the others train
# (`covidlib.crossval.nested_folds`). Per fold, A′ gives the boxes on the unlabelled images (a
# 2D stand-in for the coarse 3D network of {doc}`chapter 07 <07_pseudo_labels>`), the patches
# are pseudo-labelled and the four continuations run. Scores are per slice at each slice's own
# size: {term}`Dice` at probability 0.5 and Inf-Net's mean Dice over 256 thresholds.

# %%
t0 = time.perf_counter()
results = run_semi_cv(arrays, unlabelled, slice_size, settings_options, cv_cache, folds=n_folds, seeds=seeds,
                      run_folds=run_folds, native=native, initial_state=initial_state)
seconds_cv = time.perf_counter() - t0
for row in results:
    print(f"seed {row['seed']} fold {row['fold']}: " + ", ".join(f"{arm} {row['dice'][arm]:.3f}" for arm in ARMS)
          + f"; threshold {row['threshold']:.2f}, {row['pseudo']['accepted']}/{row['pseudo']['patches']} patches accepted")
for row in results:  # the controls' budget equals their arms' (checked, not assumed)
    assert all(row["steps"][arm] == row["steps"][control] for arm, control in CONTROLS.items()), row["steps"]
summary = compare_arms(results)
a_prime_dice = [row["a_prime"]["val_dice"] for row in results]

# %% [markdown]
# Every arm, mean over folds and seeds, with the spread between folds and between seeds:

# %%
display(Markdown(markdown_table(arm_rows(summary), ("arm (this run)", "Dice at 0.5", "sd over seeds",
                                                    "Inf-Net mean Dice"))))
display(Markdown(markdown_table(paired_rows(summary), ("arm − its control (this run)", "metric",
                                                       "difference [95 % CI]", "in % of the control", "(fold, seed) runs"))))
display(Markdown(f"A′ validation Dice: {np.mean(a_prime_dice):.3f} on average; the report's precondition "
                 f"(> {A_PRIME_PRECONDITION}) holds in {sum(d > A_PRIME_PRECONDITION for d in a_prime_dice)} of "
                 f"{len(a_prime_dice)} (fold, seed) runs."))
if sum(row["pseudo"]["accepted"] for row in results) == 0:
    display(Markdown(
        f"No patch passed the pseudo-label threshold in any of this run's {len(results)} (fold, seed) runs"
        + (" (the quick setting: networks of a few steps, whose features separate little)" if setting == "quick" else "")
        + ", so the pseudo-label arms trained exactly as their controls and their differences are zero by construction."))

# %% mystnb={"figure": {"caption": "This run: the paired difference in test Dice at 0.5 of each semi-supervised arm against its control (same fold, same seed, same number of steps), one point per (fold, seed); the black bar is the mean. Above zero (dashed) the unlabelled data helped. In quick mode these are tiny networks on two folds: a check that the pipeline runs, not evidence.", "name": "fig-08-arms"}, "image": {"alt": "This run: the paired difference in test Dice at 0.5 of each semi-supervised arm against its control (same fold, same seed, same number of steps), one point per (fold, seed); the black bar is the mean"}}
show_grouped_values({difference_name(arm, control): summary["dice"]["paired"][arm]["per_unit"]
                     for arm, control in CONTROLS.items() if arm in summary["dice"]["paired"]},
                    ylabel="Dice difference", baseline=0.0, title=f"Paired differences ({dataset}, {setting})",
                    empty_message="fewer than two (fold, seed) runs: no paired difference")

# %% [markdown]
# ## On real scans (reference record): the report's "???"
#
# The report wrote "an improvement of ??? percent". The committed reference record answers it
# on COVID-SemiSeg: the difference of each arm against its control of the same budget, in
# percent of the control's mean Dice, with its 95 % bootstrap interval over (fold, seed) runs.

# %% tags=["hide-input"]
reference = load_reference("08_mean_teacher")
display(Markdown(reference_notice(reference, "08_mean_teacher")))
if reference is not None:
    ref = reference.numbers
    display(Markdown(markdown_table(arm_rows(ref["summary"]), ("arm (reference record)", "Dice at 0.5",
                                                               "sd over seeds", "Inf-Net mean Dice"))))
    display(Markdown(markdown_table(paired_rows(ref["summary"]), ("arm − its control (reference record)", "metric",
                                                                  "difference [95 % CI]", "in % of the control",
                                                                  "(fold, seed) runs"))))
    answer = ref["summary"]["dice"]["paired"]["mean_teacher"]
    pseudo_answer = ref["summary"]["dice"]["paired"]["pseudo_labels"]
    side = interval_side(answer)
    meaning = {"lies above 0": "the unlabelled data helped",
               "lies below 0": "the unlabelled data cost Dice",
               "includes 0": "at this budget the unlabelled data's effect is not distinguishable from none"}[side]
    display(Markdown(
        f"**The answer.** On COVID-SemiSeg ({ref['units']} (fold, seed) runs), pseudo-labels and the mean teacher "
        f"change test Dice at 0.5 by **{answer['percent']:+.1f} %** of the control's "
        f"(95 % CI {answer['percent_low']:+.1f} % to {answer['percent_high']:+.1f} %); pseudo-labels alone by "
        f"{pseudo_answer['percent']:+.1f} % ({pseudo_answer['percent_low']:+.1f} % to "
        f"{pseudo_answer['percent_high']:+.1f} %). "
        f"The mean teacher's interval {side}: {meaning}. "
        f"A′ reached validation Dice {ref['a_prime_val_dice_mean']:.3f} on average; the report's precondition "
        f"(> {A_PRIME_PRECONDITION}) held in {ref['a_prime_precondition_met']} of {ref['units']} runs. The "
        f"pseudo-label threshold chosen on the validation slices averaged {ref['threshold_mean']:.2f}, accepting "
        f"{ref['accepted_share_mean']:.0%} of the unlabelled patches."))

# %% mystnb={"figure": {"caption": "Reference record (COVID-SemiSeg): the paired difference in test Dice at 0.5 of each semi-supervised arm against its control of the same budget, one point per (fold, seed), the black bar the mean, no difference dashed. Without a record the panel says so.", "name": "fig-08-reference-arms"}, "image": {"alt": "Reference record (COVID-SemiSeg): the paired difference in test Dice at 0.5 of each semi-supervised arm against its control of the same budget, one point per (fold, seed), the black bar the mean"}}
show_grouped_values({difference_name(arm, control): reference.numbers["summary"]["dice"]["paired"][arm]["per_unit"]
                     for arm, control in CONTROLS.items()} if reference is not None else None,
                    ylabel="Dice difference", baseline=0.0, title="Paired differences (COVID-SemiSeg, reference record)",
                    empty_message="no reference record of chapter 08 yet")

# %% [markdown]
# ## At `train`'s recipe (reference record)
#
# The record above uses small networks trained briefly, so A′ is far from the best supervised
# model this book trains. `benchmarks/semi_recipe.py` asks the same question with a stronger A′:
# A′ is trained with `python -m covidlib train`'s recipe as it stood when the record ran (its epoch
# chosen on the inner validation slices). The record names that recipe below, against today's
# (the row of {doc}`chapter 09 <09_results>`'s ablation marked as `train`'s recipe), and each arm continues
# it over all 1,600 unlabelled slices with the same steps, noise, augmentation and selection as its
# control. Beside the report's patch pseudo-labels it tries two alternatives on the whole unlabelled
# slices: pseudo-labels that are A′'s own test-time-augmented probabilities (self-training,
# {mod}`covidlib.self_training`), and the mean teacher as Tarvainen and Valpola use it, its consistency
# cost on the unlabelled slices with no pseudo-labels at all (a record that predates this arm lacks
# its row). Every arm is scored with test-time augmentation. In bfloat16 a run reproduces to the last
# bit only on the kind of processor that made it ({doc}`/book/reproducing`), so a processor of another
# kind keeps a record of its own (`benchmarks/semi_recipe.py --record semi_recipe-<machine>`); each is
# shown with its machine, and its differences are paired within it.

# %% tags=["hide-input"]
def change_cell(change: dict | None) -> str:
    """``+0.012 [-0.004, +0.027]``, or an em dash where there is no paired difference."""
    return format_interval(change) if change else "—"


def show_semi_recipe(semi_recipe) -> dict[str, str]:
    """The table of a ``semi_recipe`` record and what its arms did; returns ``{arm: its control}``."""
    semi_rows = semi_recipe.numbers["rows"]
    display(Markdown(markdown_table(
        [(row["label"], f"{row['tta_dice_mean']:.3f} ± {row['tta_dice_sd_over_units']:.3f}",
          f"{row['tta_infnet_mean_dice_mean']:.3f}", change_cell(row.get("tta_dice_change_vs_control")),
          change_cell(row.get("tta_dice_change_vs_supervised"))) for row in semi_rows],
        ("arm (the record's recipe, TTA)", "Dice at 0.5", "Inf-Net mean Dice", "− its control [95 % CI]", "− A′ [95 % CI]"))))
    by_arm = {row["arm"]: row for row in semi_rows}
    controls = {row["arm"]: row["tta_dice_change_vs_control"]["against"] for row in semi_rows
                if "tta_dice_change_vs_control" in row}
    verdicts = []
    for arm in controls:
        change = by_arm[arm]["tta_dice_change_vs_control"]
        base = by_arm[change["against"]]["tta_dice_mean"]
        verdicts.append(f"{by_arm[arm]['label']}: {100 * change['mean_difference'] / base:+.1f} % of its control "
                        f"(95 % CI {100 * change['low'] / base:+.1f} % to {100 * change['high'] / base:+.1f} %)")
    units = len(by_arm["supervised"]["units"])
    planned = semi_recipe.numbers["units_planned"]
    a_prime_val = semi_recipe.numbers.get("a_prime_val_dice", [])
    none_accepted = sum(n == 0 for n in semi_recipe.numbers["accepted_patches"])
    best = max(semi_rows, key=lambda row: row["tta_dice_mean"])
    display(Markdown(
        f"**At the record's recipe** ({describe_recipe(semi_recipe.record['parameters']['recipe'])}; each arm "
        f"continued for {semi_recipe.record['parameters']['semi_epochs']} epochs at learning rate "
        f"{semi_recipe.record['parameters']['semi_lr']:g} with input noise of sd "
        f"{semi_recipe.record['parameters']['noise_std']:g}; {units} (fold, seed) runs" + (f" of the {planned} planned" if units < planned else "")
        + "; the top-2 threshold chosen on the validation slices "
        f"averaged {np.mean(semi_recipe.numbers['thresholds']):.2f} and accepted "
        f"{np.mean(semi_recipe.numbers['accepted_patches']) / np.mean(semi_recipe.numbers['patches']):.0%} of the "
        "patches" + (f"; in {none_accepted} of {units} runs it accepted none, and both patch pseudo-label arms "
                     "then train exactly as their controls there" if none_accepted else "") + "). "
        + ("; ".join(verdicts) + "." if verdicts else "A paired interval needs at least two runs.")
        + (f" With fewer than {FEWEST_RUNS_TO_READ} runs these intervals cannot be read as evidence either way yet."
           if 2 <= units < FEWEST_RUNS_TO_READ else "")
        + f" The best arm is “{best['label']}” at {best['tta_dice_mean']:.3f}; A′ itself scored "
        f"{by_arm['supervised']['tta_dice_mean']:.3f} and its labels-only continuation "
        f"{by_arm['control']['tta_dice_mean']:.3f}. A′ is trained from scratch here (the report fine-tunes a pretrained "
        f"A; chapter 05 weighs pretrained starts); its validation Dice averaged {np.mean(a_prime_val):.3f}, and the "
        f"report's precondition for pseudo-labelling (> {A_PRIME_PRECONDITION}) held in "
        f"{sum(d > A_PRIME_PRECONDITION for d in a_prime_val)} of {units} runs."))
    return controls


# a kind of machine that cannot continue semi_recipe.json keeps its own record (--record semi_recipe-<machine>)
semi_recipes = {name: load_reference(name) for name in ["semi_recipe", *machine_records("semi_recipe")]}
recipe_differences = {}
for name, semi_recipe in semi_recipes.items():
    if len(semi_recipes) > 1 and semi_recipe is not None:
        display(Markdown(f"**`{name}`**, on {describe_machine(semi_recipe.record['runtime'])}:"))
    display(Markdown(reference_notice(semi_recipe, name)))
    if semi_recipe is None:
        continue
    by_arm = {row["arm"]: row for row in semi_recipe.numbers["rows"]}
    for arm, control in show_semi_recipe(semi_recipe).items():
        label = difference_name(arm, control) + (f"\n({name})" if len(semi_recipes) > 1 else "")
        recipe_differences[label] = np.subtract(by_arm[arm]["tta_dice_by_unit"], by_arm[control]["tta_dice_by_unit"])

# %% [markdown]
# Each arm above continues A′, and so does its control: compare A′ with its labels-only
# continuation to see what the extra epochs at a lower rate with input noise cost or gain by
# themselves before any unlabelled slice is seen. Self-training as Lee (2013) and Xie et al. (Noisy
# Student, 2020) practise it does not continue the teacher: it trains a new student from scratch. `benchmarks/semi_student.py` does that with the same recipe, the same code
# and A′'s own budget (as many optimizer steps, the same validation slices and epoch selection), on
# the inner split's labelled slices and all 1,600 unlabelled slices with A′'s test-time-augmented
# prediction at 0.5 as their masks, the labelled slices repeated so that a set share of the draws is
# labelled (each record names it). A′ is then its control: only the data differs.

# %% tags=["hide-input"]
def show_semi_student(semi_student) -> None:
    """The table of a ``semi_student`` record and its verdict."""
    rows = {row["arm"]: row for row in semi_student.numbers["rows"]}
    display(Markdown(markdown_table(
        [(row["label"], f"{row['tta_dice_mean']:.3f} ± {row['tta_dice_sd_over_units']:.3f}",
          f"{row['tta_infnet_mean_dice_mean']:.3f}", change_cell(row.get("tta_dice_change_vs_control")),
          ", ".join(str(epoch) for epoch in row["best_epoch"])) for row in rows.values()],
        ("arm (the record's recipe, TTA)", "Dice at 0.5", "Inf-Net mean Dice", "− A′ [95 % CI]", "best epoch by run"))))
    units, planned = len(rows["supervised"]["units"]), semi_student.numbers["units_planned"]
    change = rows["student"].get("tta_dice_change_vs_control")
    display(Markdown(
        f"**{describe_recipe(semi_student.record['parameters']['recipe'])}**, {units} (fold, seed) runs"
        + (f" of the {planned} planned" if units < planned else "")
        + f"; {semi_student.record['parameters']['labelled_share']:.0%} of the student's draws labelled; A′ labelled "
        f"{np.mean(semi_student.numbers['pseudo_slice_foreground_share']):.1%} of the unlabelled pixels as infection. "
        + (f"The student against A′: {format_interval(change)} Dice at 0.5"
           + (f" (fewer than {FEWEST_RUNS_TO_READ} runs: not yet evidence either way)." if units < FEWEST_RUNS_TO_READ
              else f"; its interval {interval_side(change)}: {STUDENT_OUTCOME[interval_side(change)]}.")
           if change else "A paired interval needs at least two runs.")))


STUDENT_OUTCOME = {"lies above 0": "the pseudo-labelled slices helped", "lies below 0": "they cost Dice",
                   "includes 0": "their effect is not distinguishable from none"}
semi_students = {name: load_reference(name) for name in ["semi_student", *machine_records("semi_student")]}
for name, semi_student in semi_students.items():
    if semi_student is not None:
        display(Markdown(f"**`{name}`**, on {describe_machine(semi_student.record['runtime'])}:"))
    display(Markdown(reference_notice(semi_student, name)))
    if semi_student is None:
        continue
    show_semi_student(semi_student)
    by_arm = {row["arm"]: row for row in semi_student.numbers["rows"]}
    recipe_differences[difference_name("student", "supervised") + f"\n({name})"] = np.subtract(
        by_arm["student"]["tta_dice_by_unit"], by_arm["supervised"]["tta_dice_by_unit"])

# %% mystnb={"figure": {"caption": "Reference records at the recipe each names (COVID-SemiSeg): the paired difference in test Dice at 0.5 (with test-time augmentation) of each semi-supervised arm against its control (the student's is A\u2032), one point per (fold, seed), the black bar the mean, no difference dashed; one group per arm and record where several processors keep one. Without a record the panel says so.", "name": "fig-08-recipe-arms"}, "image": {"alt": "Reference records at the recipe each names (COVID-SemiSeg): the paired difference in test Dice at 0.5 (with test-time augmentation) of each semi-supervised arm against its control, one point per (fold, seed), the black bar the mean"}}
show_grouped_values(recipe_differences, ylabel="Dice difference", baseline=0.0,
                    title="Paired differences at the record's recipe (COVID-SemiSeg)",
                    empty_message="no reference record of benchmarks/semi_recipe.py yet")

# %% tags=["hide-input"]
numbers = {"summary": summary, "units": len(results), "folds_run": run_folds, "n_folds": n_folds, "seeds": seeds,
           "dice": {arm: [row["dice"][arm] for row in results] for arm in ARMS},
           "infnet_mean_dice": {arm: [row["infnet_mean_dice"][arm] for row in results] for arm in ARMS},
           "steps": [row["steps"] for row in results], "thresholds": [row["threshold"] for row in results],
           "threshold_mean": float(np.mean([row["threshold"] for row in results])),
           "accepted": [row["pseudo"]["accepted"] for row in results], "patches": [row["pseudo"]["patches"] for row in results],
           "accepted_share_mean": float(np.mean([row["pseudo"]["accepted"] / max(row["pseudo"]["patches"], 1)
                                                 for row in results])),
           "a_prime_val_dice": a_prime_dice, "a_prime_val_dice_mean": float(np.mean(a_prime_dice)),
           "a_prime_precondition_met": int(sum(d > A_PRIME_PRECONDITION for d in a_prime_dice)),
           "a_prime_pretrained": initial_state is not None,
           "rules": [row["rules"] for row in results],
           "seconds": [row["seconds"] for row in results], "seconds_cv": seconds_cv, "preparation": preparation}
record_path = write_record(output_dir, "08_mean_teacher",
                           parameters=dict(dataset=dataset, data_root=data_root, setting=setting, device=device, seed=seed, rule=rule,
                                           ema_alpha=ema_alpha, consistency_weight=consistency_weight, noise_std=noise_std,
                                           slice_size=slice_size, restoration_steps=restoration_steps,
                                           n_unlabelled_images=len(unlabelled), settings=settings_options),
                           numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"units run: {len(results)} ({run_folds} of {n_folds} folds x {len(seeds)} seed(s)); arms: {', '.join(ARMS)}")
print(f"ema alpha at steps 0, 1, 9, 299: {[round(float(a), 3) for a in by_hand_alpha[[0, 1, 9, 299]]]}")
print(f"equal steps, arm and control: {all(r['steps'][a] == r['steps'][c] for r in results for a, c in CONTROLS.items())}")
