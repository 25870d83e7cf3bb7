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
# - the {term}`mean-teacher <Mean teacher>` scheme of Tarvainen and Valpola (2017): a student network, a teacher whose
#   weights are the student's {term}`exponential moving average <EMA>`, and a consistency cost between their
#   predictions under independent noise;
# - the warm-up of the averaging rate, α_t = min(1 − 1/(t+1), α), and the sigmoid ramp-up of the
#   consistency weight, exp(−5(1 − t/T)²), written out and checked against the library;
# - how {doc}`chapter 07 <07_pseudo_labels>`'s soft {term}`pseudo masks <Pseudo-label>` enter the loss, each patch weighted by its similarity;
# - the comparison the report left blank ("an improvement of ??? percent"): A′ alone vs
#   + pseudo-labels vs + pseudo-labels and mean teacher, as mean ± sd over folds.
#
# **Prerequisites** {doc}`chapter 07 <07_pseudo_labels>` (pseudo-labels); {doc}`chapter 04 <04_unet_and_attention>`
# (the Trainer).
#
# **Run time** quick: ~1.5 min CPU (phantom, 2 folds of tiny networks); full: hours on a GPU
# (5 folds; `dataset="covid-semiseg"` uses its 50 labelled and 1600 unlabelled slices).

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

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from covidlib.config import format_summary, runtime_summary, seed_everything
from covidlib.datasets import get_dataset
from covidlib.inference import prepare_slices
from covidlib.mean_teacher import (ARMS, ema_update, nested_fold, semi_supervised_fold, semi_supervised_settings,
                                   sigmoid_rampup)
from covidlib.results import write_record

seed_everything(seed)
quick = setting == "quick"
if quick:
    torch.set_num_threads(1)  # tiny networks: more threads only add overhead on a shared CPU
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# %% [markdown]
# ## The two schedules, by hand
#
# The teacher's weights follow θ′_t = α_t θ′_{t−1} + (1 − α_t) θ_t. With a fixed α = 0.99 the
# teacher would spend its first hundred steps remembering its random start, so the rate warms
# up: α_t = min(1 − 1/(t+1), α) makes the teacher the plain average of all student weights so
# far until that average is older than α allows. The consistency weight starts near zero,
# while the pseudo-labels and the teacher are still poor, and reaches its full value after T
# steps. {numref}`fig-08-schedules` shows both.

# %% mystnb={"figure": {"caption": "Left: a student weight that swings like a sine and the teacher, its exponential moving average with the warm-up (\u03b1 = 0.99 by default). While \u03b1_t warms up the teacher is the plain average of the student so far; afterwards it smooths the swings to a small ripple. Right: the sigmoid ramp-up of the consistency weight, at full value after T = 100 steps.", "name": "fig-08-schedules"}}
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
axes[0].set_xlabel("step"); axes[0].legend(fontsize=8); axes[0].set_title("Teacher = moving average of the student")
axes[1].plot(steps, by_hand_ramp, color="tab:orange")
axes[1].set_xlabel("step"); axes[1].set_title(f"Consistency ramp-up, T = {ramp_length}")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Settings and data
#
# The semi-supervised arms start from A′ and train for fewer epochs at half its learning rate.
# A step sees a labelled batch, a batch of pseudo-labelled patches and, for the mean teacher,
# the teacher's predictions of both under fresh noise. The spatial augmentation is shared by
# student and teacher (it happens in the data set), so their outputs stay pixel-aligned; only
# the noise differs.

# %%
is_phantom = dataset == "phantom"
slice_size = (64 if quick else 256) if is_phantom else (96 if quick else 352)
n_labelled = 10 if quick else 50
n_unlabelled = 6 if quick else 200
n_folds = 5
run_folds = 2 if quick else 5
base_width, depth = (4, 3) if quick else (32, 4)
batch_size = 8
# A' and the two arms start from these settings; each fold adds its own number of training cases.
settings_options = dict(
    base_width=base_width, depth=depth, supervised_epochs=6 if quick else 500, semi_epochs=3 if quick else 100,
    lr=5e-3 if quick else 2e-4, patience=30, batch_size=batch_size, rule=rule, amp="off" if quick else "auto",
    device=device, seed=seed, max_steps_per_epoch=4 if quick else None,
    patch_size=(16 if quick else 32) if is_phantom else None,
    labelled_patches=40 if quick else 120, patches_per_unlabelled=8 if quick else 32,
    rampup_steps=4 if quick else 500, alpha=ema_alpha, consistency_weight=consistency_weight, noise_std=noise_std,
    output_size=slice_size if is_phantom else None, empty_fraction=0.3, augment=not quick)

t0 = time.perf_counter()
if is_phantom:
    shape = (12, 64, 64) if quick else (48, 256, 256)
    spacing_mm = 512 / slice_size * 0.7
    labelled_part = prepare_slices(get_dataset("phantom", n=n_labelled, seed=seed, shape=shape), method="lung-crop",
                                   spacing_mm=spacing_mm)
    hidden = prepare_slices(get_dataset("phantom", n=n_unlabelled, seed=seed + 1000, shape=shape), method="lung-crop",
                            spacing_mm=spacing_mm).labelled
    arrays, preparation = labelled_part.labelled, labelled_part.steps
    unlabelled = [image for image, _ in hidden.values()]
else:
    # 8 unlabelled slices stand for one unlabelled "volume"
    prepared = prepare_slices(get_dataset(dataset, data_root or None), slice_size, n_unlabelled=n_unlabelled * 8)
    arrays, unlabelled, preparation = prepared.labelled, prepared.unlabelled, prepared.steps
print("preparation:", "; ".join(preparation))
print(f"{len(arrays)} labelled, {len(unlabelled)} unlabelled images; loaded in {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ## The comparison
#
# Five folds over the labelled cases: each fold's held-out cases are the test set; of the rest,
# a fifth selects the best epoch (validation {term}`Dice`) and the others train. Per fold, A′ is trained
# on labels only, its prediction on the unlabelled images gives the boxes (a 2D stand-in for the
# coarse 3D network of {doc}`chapter 07 <07_pseudo_labels>`, which is cheap to swap in), the patches are pseudo-labelled,
# and the two arms continue from A′. All arms are scored on the same held-out cases.

# %%
rows = []
for fold in range(run_folds):
    train_ids, val_ids, test_ids = nested_fold(list(arrays), n_folds, fold, seed)
    settings = semi_supervised_settings(slice_size, len(train_ids), **settings_options)
    t0 = time.perf_counter()
    result = semi_supervised_fold(arrays, train_ids, val_ids, test_ids, unlabelled, settings)
    rows.append(result)
    print(f"fold {fold}: " + ", ".join(f"{arm} {result['dice'][arm]:.3f}" for arm in ARMS)
          + f"; {result['pseudo']['accepted']}/{result['pseudo']['patches']} patches accepted; "
          f"{time.perf_counter() - t0:.0f} s")

# %%
dice_by_arm = {arm: [row["dice"][arm] for row in rows] for arm in ARMS}
summary = {arm: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for arm, v in dice_by_arm.items()}
baseline = summary["supervised"][0]
improvement = {arm: (summary[arm][0] - baseline) / baseline * 100 if baseline > 0 else float("nan") for arm in ARMS}
print(f"{'arm':<15} {'Dice mean ± sd':>16} {'vs A′':>9}")
for arm in ARMS:
    print(f"{arm:<15} {summary[arm][0]:>8.3f} ± {summary[arm][1]:.3f} {improvement[arm]:>+8.1f}%")

# %% mystnb={"figure": {"caption": "Test Dice on each fold's held-out cases (grey, one line per fold) for A\u2032 trained on labels only, with pseudo-labels added, and with pseudo-labels and a mean teacher; red: mean \u00b1 sd over folds. In quick mode these are two folds of tiny networks: a check that the pipeline runs, not evidence.", "name": "fig-08-arms"}}
fig, ax = plt.subplots(figsize=(5, 3.2))
for fold in range(len(rows)):
    ax.plot(range(len(ARMS)), [dice_by_arm[arm][fold] for arm in ARMS], marker="o", color="0.6")
ax.errorbar(range(len(ARMS)), [summary[a][0] for a in ARMS], yerr=[summary[a][1] for a in ARMS], color="tab:red",
            marker="s", capsize=4, label="mean ± sd")
ax.set_xticks(range(len(ARMS)), ["A′ (labels)", "+ pseudo-labels", "+ mean teacher"])
ax.set_ylabel("test Dice"); ax.set_title(f"Held-out Dice per fold ({dataset}, {'quick' if quick else 'full'})")
ax.legend(fontsize=8); plt.tight_layout(); plt.show()

# %% [markdown]
# Read the quick-mode numbers ({numref}`fig-08-arms`) as a demonstration that the pipeline runs, not as evidence: the
# networks are tiny and train for a handful of steps. The full run (and the COVID-SemiSeg
# cross-validation in `benchmarks/cv_semisupervised.py`) fills the report's blank with the
# improvement — or the lack of one — of each arm over A′.

# %%
numbers = {"dice": dice_by_arm, "mean": {a: summary[a][0] for a in ARMS}, "sd": {a: summary[a][1] for a in ARMS},
           "improvement_percent": improvement, "folds_run": len(rows), "n_folds": n_folds,
           "accepted": [row["pseudo"]["accepted"] for row in rows], "patches": [row["pseudo"]["patches"] for row in rows],
           "seconds": [row["seconds"] for row in rows], "preparation": preparation}
write_record(output_dir, "08_mean_teacher",
             parameters=dict(dataset=dataset, data_root=data_root, setting=setting, device=device, seed=seed, rule=rule, ema_alpha=ema_alpha,
                             consistency_weight=consistency_weight, noise_std=noise_std, base_width=base_width,
                             depth=depth, slice_size=slice_size),
             numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"folds run: {len(rows)} of {n_folds}; arms: {', '.join(ARMS)}")
print(f"ema alpha at steps 0, 1, 9, 299: {[round(float(a), 3) for a in by_hand_alpha[[0, 1, 9, 299]]]}")
print(f"accepted patches per fold: {numbers['accepted']} of {numbers['patches']}")
