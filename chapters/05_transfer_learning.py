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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/covid-ct-book/covid-ct-book/blob/main/chapters/05_transfer_learning.ipynb)
#
# # 05. Transfer learning
#
# **What you will learn**
#
# - how to reuse a {term}`U-Net` trained on *other* lung disease (tumours, pleural effusion) when only a
#   handful of COVID-19 scans carry infection masks, and the two {term}`fine-tuning <Transfer learning>` recipes the report
#   compares: fine-tune the decoder (first half of the encoder frozen, output layer redrawn) and
#   fine-tune everything (last block of convolutions redrawn);
# - what "frozen" has to mean in code (no gradient *and* no drifting BatchNorm statistics);
# - how the 3D, self-supervised Models Genesis network is turned into a 2D one by flattening its
#   kernels, and why summing over depth is the exact 2D equivalent for a depth-constant input;
# - how the report's Table 5.1 is run as a grid of independent, resumable cells and filled with
#   mean ± sd over folds — including the half the report left empty.
#
# **Prerequisites** chapters {doc}`03 <03_augmentation>` (slices, volume splits, augmentation) and
# {doc}`04 <04_unet_and_attention>` (U-Net, attention
# U-Net, the Trainer).
#
# **Run time** quick: ~1.5-2 min CPU (tiny networks, small phantom cohort, 2 folds); full: the
# report's settings — 80 trainings of a 31M-parameter U-Net, days on a CPU, hours on GPUs
# (see the estimate below).

# %% tags=["remove-cell"]
# Colab and fresh kernels: install the book's library only when it is missing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("covidlib") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "covidlib @ git+https://github.com/covid-ct-book/covid-ct-book"])

# %% tags=["parameters"]
dataset = "phantom"
setting = "quick"  # "quick" (minutes, CI), "reference" (real data, a 2-core CPU), "full" (the report's settings, a GPU)
device = "auto"
seed = 0
output_dir = "results"
data_root = ""  # folder of a real dataset (empty: $COVIDLIB_DATA or the cache folder)
# chapter knobs
source = "phantom"  # pretraining domain: "phantom" (nodule + effusion phantoms), "msd-lung" or "nsclc"
genesis_checkpoint = ""  # path to the published Genesis_Chest_CT.pt, or empty for the Genesis-style proxy
grid_dir = ""  # folder of the grid cells, re-run with the same folder to resume, empty: under output_dir
n_workers = 0  # CPU worker processes for the grid, 0: this process, several GPUs get one worker each

# %%
import dataclasses
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from covidlib.config import format_summary, runtime_summary, seed_everything
from covidlib.datasets import get_dataset
from covidlib.experiments import GridConfig, render_table, run_grid, summarise
from covidlib.models import UNet2d, get_model
from covidlib.models.unet3d import GenesisUNet2d, UNet3d, load_genesis_checkpoint
from covidlib.preprocess import preprocess_cohort
from covidlib.train import TrainConfig, save_checkpoint
from covidlib.transfer import (SliceTraining, flatten_3d_to_2d, flatten_kernel, layer_status, prepare_finetune,
                               pretrain, pretrain_genesis_proxy)

seed_everything(seed)
quick = setting == "quick"
if quick:
    torch.set_num_threads(1)  # the quick networks are tiny: extra threads only add overhead
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# %% [markdown]
# ## Settings
#
# Quick mode shrinks everything so the whole grid runs in the chapter's CPU budget; full mode is
# the report's experiment (section 5.1-5.2) with the training recipe of
# {doc}`chapter 04 <04_unet_and_attention>`: Adam at 2e-4, ×0.8 every 25 epochs, at most 500
# epochs, the best epoch by validation Dice, stop after 30 epochs without improvement, five
# folds, the paper-sized U-Net (widths 64-1024) and the published Models Genesis widths.

# %%
n_cases = 12 if quick else 70  # the report pools 20 + 50 = 70 COVID volumes
n_source = 4 if quick else 40  # per source disease (phantom nodule / effusion cohorts)
phantom_shape = (12, 64, 64) if quick else (64, 256, 256)
spacing_mm = 4.0 if quick else 1.0  # in-plane resampling (the report: 1 mm)
slice_size = 64 if quick else 256
train_settings = TrainConfig(
    epochs=5 if quick else 500, patience=30, lr=1e-2 if quick else 2e-4,  # a few steps need a large rate
    max_steps_per_epoch=5 if quick else None, amp="off" if quick else "auto",
    seed=seed, device=device, progress=False)
training = SliceTraining(train=train_settings, batch_size=8, output_size=slice_size,
                         empty_fraction=0.5, augment=not quick)
config = GridConfig(folds=2 if quick else 5, n_folds=5, base_width=4 if quick else 64, depth=3 if quick else 4,
                    genesis_width=2 if quick else 32, training=training, split_seed=seed)
pretrain_epochs = 8 if quick else 200
genesis_steps = 10 if quick else 2000
results_root = Path(grid_dir or Path(output_dir) / f"05_grid_{'quick' if quick else 'full'}_{dataset}")
print(f"grid: {len(config.cells())} cells = {len(config.networks)} networks x {len(config.recipes)} recipes x "
      f"{len(config.splits)} splits x {config.folds} folds; results in {results_root}")

# %% [markdown]
# ## Data: a small COVID cohort and a non-COVID source domain
#
# The target is COVID-19 infection. The source the report pretrains on is other lung disease
# with masks: MSD lung tumours and NSCLC pleural effusion. Without those downloads the phantom
# stands in for them — the same synthetic chest with solid nodules or a dependent effusion
# instead of ground-glass opacities. Every case goes through {doc}`chapter 02 <02_data_and_preprocessing>`'s preprocessing (lung
# crop, in-plane resampling, z-score inside the lungs).

# %%
start = time.perf_counter()
cohort = dict(root=data_root or None, spacing_mm=spacing_mm, phantom_shape=phantom_shape)
covid = preprocess_cohort(dataset, n_cases, seed=seed, id_prefix="covid_", **cohort)
if source == "phantom":
    source_cases = (preprocess_cohort("phantom", n_source, seed=seed + 1000, disease="nodule", id_prefix="nodule_", **cohort)
                    + preprocess_cohort("phantom", n_source, seed=seed + 2000, disease="effusion", id_prefix="effusion_",
                                        **cohort))
else:
    source_cases = preprocess_cohort(source, n_source, seed=seed, id_prefix=f"{source}_", **cohort)
print(f"{len(covid)} COVID volumes, {len(source_cases)} source volumes "
      f"({time.perf_counter() - start:.1f} s); COVID preparation: {'; '.join(covid[0].meta['steps'])}")

# %% [markdown]
# ## Pretraining on the source domain
#
# Each network first learns to segment the source lesions (a binary task, like the target).
# Its best weights by validation Dice are saved and become the starting point of the
# `"decoder"` and `"all"` recipes. The checkpoints carry a fingerprint of the settings, the
# source volumes, the starting weights and the library code: run again unchanged, a finished
# pretraining is only reloaded; after any change it is trained again.

# %%
results_root.mkdir(parents=True, exist_ok=True)
pretrained_paths = {}
pretrain_dice = {}
source_training = SliceTraining(train=TrainConfig(**{**train_settings.__dict__, "epochs": pretrain_epochs}),
                                batch_size=8, output_size=slice_size, empty_fraction=0.5, augment=not quick)
for network in config.networks:
    torch.manual_seed(seed)
    model = get_model(network, in_channels=1, num_classes=2, base_width=config.base_width, depth=config.depth)
    trainer = pretrain(model, source_cases, source_training, out_dir=results_root / f"pretrain_{network}", resume=True)
    pretrained_paths[network] = save_checkpoint(model.state_dict(), results_root / f"pretrained_{network}.pt")
    pretrain_dice[network] = trainer.best_metric
print({k: round(v, 3) for k, v in pretrain_dice.items()})

# %% [markdown]
# ## Models Genesis: a 3D network, and its weights in 2D
#
# {term}`Models Genesis` (Zhou et al., MICCAI 2019) trained a 3D U-Net without labels, to restore CT
# cubes that had been corrupted (voxels shuffled locally, boxes painted over, intensities bent).
# `covidlib.models.UNet3d` has its exact layout — the parameter names of the published
# `Genesis_Chest_CT.pt` — so the real checkpoint loads by name with
# `load_genesis_checkpoint(path)`. It cannot be downloaded here (the authors hand it out on
# request), so without `genesis_checkpoint` the chapter runs a small version of the same
# self-supervised restoration on the phantom's HU volumes: a stand-in for the idea, not for the
# published weights.
#
# The report trains in 2D, so the 3D kernels must become 2D ones. For a kernel
# $w_{o,i}(a,b,d)$ and an input that does not change along depth, a 3D convolution gives
# $\sum_{a,b} x(y+a,x+b)\,\sum_d w(a,b,d)$: **summing over depth is exactly the 2D
# convolution** (away from the first and last slices). The other choice keeps the centre tap,
# which is what the 3D network would compute if the neighbouring slices were empty. The
# `GenesisUNet2d` twin has the same names with 2D kernels, so flattening is a copy by name.

# %%
if genesis_checkpoint:
    genesis3d = load_genesis_checkpoint(genesis_checkpoint)
    genesis_source = f"published checkpoint {genesis_checkpoint}"
else:
    genesis_path = results_root / "genesis_proxy.pt"
    torch.manual_seed(seed)
    genesis3d = UNet3d(base_width=config.genesis_width)
    volumes_hu = [get_dataset("phantom", n=1, shape=phantom_shape, disease=d, seed=seed + 3000 + i).load("phantom_000").image.array
                  for i, d in enumerate(("covid", "nodule", "effusion", "healthy"))]
    cube = (32, 32, 8) if quick else (64, 64, 32)  # (y, x, z): depth last, as Models Genesis
    # cache: reused only when its fingerprint (settings, volumes, starting weights, code) matches
    losses = pretrain_genesis_proxy(genesis3d, volumes_hu, cube=cube, steps=genesis_steps, batch_size=2 if quick else 8,
                                    lr=1e-3, seed=seed, progress=False, cache=genesis_path)
    genesis3d = load_genesis_checkpoint(genesis_path)  # the same path the real checkpoint takes
    print(f"restoration loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
    genesis_path_used = genesis_path
    genesis_source = "Genesis-style restoration proxy on phantom volumes"
print(genesis_source, "| parameters:", sum(p.numel() for p in genesis3d.parameters()))

# %% [markdown]
# A small check of the identity, written out by hand on the first layer: a depth-constant
# volume through the 3D layer equals its slice through the summed 2D kernel.

# %%
first3d = genesis3d.down_tr64.ops[0].conv1
x2d = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
with torch.no_grad():
    out3d = first3d(x2d[..., None].expand(1, 1, 16, 16, 8))[..., 4]
    out2d = torch.nn.functional.conv2d(x2d, flatten_kernel(first3d.weight, "sum"), first3d.bias, padding=1)
assert torch.allclose(out3d, out2d, atol=1e-5)
genesis2d = flatten_3d_to_2d(genesis3d, GenesisUNet2d(num_classes=2, base_width=config.genesis_width), "sum",
                             exclude=("out_tr",))
assert torch.allclose(genesis2d.down_tr64.ops[0].conv1.weight, first3d.weight.sum(-1))
print("max |3D - 2D| on the first layer:", float((out3d - out2d).abs().max()))

# %% [markdown]
# ## The recipes, layer by layer
#
# In {numref}`fig-05-recipes` each bar is one convolution of the network, its height the number of weights (log scale),
# its colour what the recipe does to it before fine-tuning on COVID.

# %% mystnb={"figure": {"caption": "Each convolution of the U-Net (top two panels) and of the Models Genesis twin (bottom), from the first encoder block to the head, as one bar: its height is the number of weights (log scale), its colour what the recipe does to it before fine-tuning. Fine-tuning the decoder freezes the first half of the encoder and redraws the head; fine-tuning everything redraws the last decoder block and the head; the Models Genesis start keeps every flattened layer and redraws only the head.", "name": "fig-05-recipes"}}
pretrained_state = torch.load(pretrained_paths["unet"], weights_only=True)
torch.manual_seed(seed)
recipes_shown = {
    "fine-tune decoder": layer_status(prepare_finetune(UNet2d(base_width=config.base_width, depth=config.depth), "decoder",
                                                       pretrained=pretrained_state, seed=seed), pretrained_state),
    "fine-tune all": layer_status(prepare_finetune(UNet2d(base_width=config.base_width, depth=config.depth), "all",
                                                   pretrained=pretrained_state, seed=seed), pretrained_state),
    "Models Genesis init": layer_status(prepare_finetune(GenesisUNet2d(base_width=config.genesis_width), "genesis",
                                                        pretrained=genesis3d, seed=seed), genesis2d.state_dict()),
}
colours = {"frozen": "#4c72b0", "fine-tuned": "#55a868", "re-initialised": "#dd8452", "new": "#8c8c8c"}
fig, axes = plt.subplots(len(recipes_shown), 1, figsize=(11, 7.5))
for ax, (title, rows) in zip(axes, recipes_shown.items()):
    ax.bar(range(len(rows)), [r["count"] for r in rows], color=[colours[r["status"]] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("weights")
    ax.set_title(f"{title}: " + ", ".join(f"{s} {sum(r['count'] for r in rows if r['status'] == s) / sum(r['count'] for r in rows):.0%}"
                                          for s in colours if any(r["status"] == s for r in rows)), fontsize=10)
    bounds = [i for i in range(1, len(rows)) if rows[i]["part"] != rows[i - 1]["part"]]
    for b in bounds:
        ax.axvline(b - 0.5, color="black", lw=0.6, ls=":")
    ax.set_xticks([(a + b) / 2 - 0.5 for a, b in zip([0] + bounds, bounds + [len(rows)])])
    ax.set_xticklabels([rows[i]["part"].replace("_", " ") for i in [0] + bounds], fontsize=8)
handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
fig.legend(handles, list(colours), loc="upper right", ncol=4, fontsize=9)
fig.suptitle("What each recipe freezes, keeps and redraws (convolution weights, encoder -> head)", y=1.0)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The grid of Table 5.1
#
# Every cell trains one network from one initialisation on one split and fold, then records
# the train, validation and held-out test Dice. {term}`Dice` here is the **3D Dice of each volume**
# (the slice predictions stacked back into the volume), averaged over volumes; the table shows
# the mean ± sd of that number over folds. Cells are saved one JSON file each with a
# fingerprint of the settings, the cohort, the starting weights and the library code, so
# re-running this cell (or the whole chapter with the same `grid_dir`) skips the cells whose
# fingerprint still matches, recomputes the others, and resumes an interrupted one from its
# last epoch.
#
# The `"genesis"` rows use the Models Genesis twin (`GenesisUNet2d`, with attention gates for
# the attention U-Net row), because the flattened weights only fit that layout; their widths
# differ from the U-Net's, so they compare initialisations *and* architectures.

# %%
start = time.perf_counter()
records = run_grid(covid, config, results_root, pretrained=pretrained_paths,
                   genesis=genesis_checkpoint or genesis_path_used, n_workers=n_workers, device=device, progress=False)
grid_seconds = time.perf_counter() - start
print(f"{len(records)} cells in {grid_seconds:.0f} s "
      f"({sum(r['seconds'] for r in records):.0f} s of cell time recorded)")

# %%
display(Markdown(render_table(records)))

# %% [markdown]
# ## Learning curves: scratch vs fine-tuned
#
# Validation Dice per epoch on the small-sample split ("10-40": train on one fold) for the
# first fold ({numref}`fig-05-learning-curves`). A good initialisation shows up as a higher start and a faster climb.

# %% mystnb={"figure": {"caption": "Validation Dice (3D, per volume) after each epoch for every initialisation (scratch, decoder, all, genesis), U-Net on the left and attention U-Net on the right, small-sample split 10-40, fold 0. In quick mode these are runs of a few steps each: they show the mechanics, not which start is better.", "name": "fig-05-learning-curves"}}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, network in zip(axes, config.networks):
    for record in records:
        cell = record["cell"]
        if cell["network"] == network and cell["split"] == "10-40" and cell["fold"] == 0:
            epochs = [h["epoch"] for h in record["history"]]
            ax.plot(epochs, [h["val_dice"] for h in record["history"]], marker="o", label=cell["recipe"])
    ax.set_title(f"{network}: validation Dice, split 10-40, fold 0")
    ax.set_xlabel("epoch")
axes[0].set_ylabel("validation Dice (3D, per volume)")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Against the report and the COVID-19-CT-Seg benchmark
#
# The report's filled cells (Table 5.1) are the U-Net from scratch — test Dice **0.8012** on
# 40-10 and **0.6893** on 10-40 — and validation numbers for some fine-tuned rows (one of them
# a 0 that reads as a failed run); its attention U-Net rows and all fine-tuned test cells are
# empty. The COVID-19-CT-Seg benchmark (Ma et al. 2020) reports lesion DSC of **0.609 (2D
# nnU-Net)** and **0.673 (3D nnU-Net)** when training on 4 cases, and **0.512 / 0.623** when the
# network is pretrained on MSD lung tumours and fine-tuned on the 4 COVID cases.
#
# These numbers do not compare one to one with each other, nor with the table above:
#
# - **Data.** The report pools 70 volumes (COVID-19-CT-Seg + MosMedData, thick and thin slices),
#   tests on 20 and trains on 10 or 40; the benchmark trains on 4 and tests on 16 of 20 with
#   five-fold rotation. Quick mode here uses a dozen tiny synthetic volumes, 25 optimizer steps
#   a cell and a pretraining too short to learn the small source lesions (its validation Dice
#   above is near chance). Its numbers show that the pipeline runs end to end and fills every
#   cell; the fold-to-fold sd is as large as the gaps between recipes, so they rank nothing.
# - **Dice convention.** The benchmark's DSC is a 3D volume Dice per case. The report computes
#   Dice over 2D slices, and its very high training Dice (0.97-0.99) suggests slice-level
#   averaging that rewards the many empty slices; it does not say which. This chapter
#   always stacks the slices back and reports per-volume 3D Dice, the benchmark's convention,
#   with empty-vs-empty counted as 1 (healthy volumes). A slice-averaged Dice of the same
#   predictions is usually higher.
# - **Networks and budget.** nnU-Net tunes its own architecture, patch size and augmentation;
#   the report uses a fixed 2D U-Net at 500 epochs; quick mode trains for a few steps.
#
# The benchmark's own lesson — pretraining on MSD lung tumours *lowered* the lesion DSC
# (0.609 -> 0.512 in 2D) — is the caveat for this chapter too: a source domain with different
# lesions can pull the features the wrong way, and only the full-mode grid on real data can
# say which recipe wins.

# %% [markdown]
# ## Full mode: size and cost
#
# The full grid is 2 networks x 4 recipes x 2 splits x 5 folds = 80 trainings of up to 500
# epochs, plus two pretrainings. The cell below times one training step of the full-size
# U-Net on this machine (CPU time, one 64x64 slice, scaled to 256x256) and extrapolates: a
# planning number, not a result, and not checked by nbval. Start the full run with one command, and run it again with the same `grid_dir`
# to resume after an interruption:
#
# ```
# papermill chapters/05_transfer_learning.ipynb out.ipynb -p quick False -p device auto \
#     -p grid_dir results/05_grid_full -p n_workers 2
# ```

# %%
full_model = UNet2d(base_width=64, depth=4)
full_optimizer = torch.optim.Adam(full_model.parameters(), lr=2e-4)
batch = torch.randn(1, 1, 64, 64)
step_seconds = []
for _ in range(2):  # the first step pays one-off costs, the second is timed
    tick = time.process_time()  # CPU time: what a CPU-hour estimate needs, and steady on a busy machine
    full_optimizer.zero_grad()
    full_model(batch).mean().backward()
    full_optimizer.step()
    step_seconds.append(time.process_time() - tick)
per_slice_256 = step_seconds[-1] * (256 * 256) / (64 * 64)  # the convolutions scale with pixels
slices_per_epoch = 40 * 64 * 0.75  # "40-10": 40 volumes x 64 slices, half the empty slices kept
epochs_typical = 150  # early stopping usually ends far before 500
cpu_hours = per_slice_256 * slices_per_epoch * epochs_typical * len(GridConfig().cells()) / 3600
print(f"one full-size U-Net step: {per_slice_256:.2f} CPU-s per 256x256 slice with {torch.get_num_threads()} thread(s); "
      f"the full grid ~{cpu_hours:,.0f} CPU-hours at {epochs_typical} epochs a cell (upper bound x{500 / epochs_typical:.1f})")
del full_model, full_optimizer

# %% [markdown]
# ## Record

# %%
from covidlib.results import write_record

table = summarise(records)
numbers = {
    "grid_cells": len(records),
    "pretrain_val_dice": pretrain_dice,
    "genesis_source": genesis_source,
    "table": table,
    "table_markdown": render_table(records),
    "grid_seconds": grid_seconds,
    "preparation": covid[0].meta["steps"],
}
write_record(output_dir, "05_transfer_learning",
             parameters=dict(dataset=dataset, data_root=data_root, setting=setting, device=device, seed=seed, source=source,
                             genesis_checkpoint=genesis_checkpoint, grid_dir=str(results_root), n_workers=n_workers),
             numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"cells: {len(records)}")
for network in config.networks:
    for recipe in config.recipes:
        row = "  ".join(f"{split} test {table[network][recipe][split]['test']['mean']:.2f}"
                        for split in config.splits)
        print(f"{network:15s} {recipe:8s} {row}")
