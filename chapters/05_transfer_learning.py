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
# **Run time** quick: about 3 min CPU (tiny networks, small phantom cohort, 2 folds); reference
# (COVID-SemiSeg's 50 labelled slices, two pretraining sources, U-Net and attention U-Net of width
# 16 on 128-pixel slices, 5 folds, 100 trainings): resumable, about 2.9 hours on a 2-core
# first-generation AMD EPYC in float32, measured in two runs there: 76 min for the pretraining and
# folds 0-1, then 95 min for folds 2-4 (the U-Net cells of folds 0-1 alone took 14 min on a Zen 3
# EPYC and 7 min on a bfloat16 Xeon); full: the report's settings —
# 80 trainings of a 31M-parameter U-Net on a 3D cohort (100 on COVID-SemiSeg), a job for GPUs: on a CPU it would take far longer than
# anyone waits (the section "Full mode: size and cost" estimates the CPU-hours on the machine that runs it).

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
data_root = ""  # folder of a real dataset (empty: $COVIDLIB_DATA/<dataset>, else ~/.cache/covidlib/<dataset>)
# chapter knobs
source = "phantom"  # pretraining domain of 3D cohorts: "phantom" (nodule + effusion phantoms), "msd-lung" or "nsclc"
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

from covidlib.config import choose, format_summary, runtime_summary, seed_everything
from covidlib.datasets import get_dataset
from covidlib.experiments import (NETWORK_TITLES, NETWORKS, GridConfig, render_table, row_name, run_grid, summarise,
                                  weights_name)
from covidlib.models import UNet2d, get_model
from covidlib.models.unet3d import GenesisUNet2d, UNet3d, load_genesis_checkpoint
from covidlib.preprocess import SLICE_EXTENT_MM, preprocess_case, preprocess_cohort
from covidlib.restoration import (Corruption, RestorationSettings, corrupt, pretrained_weights, restoration_network,
                                  restore, unlabelled_slices)
from covidlib.train import TrainConfig, load_checkpoint, save_checkpoint
from covidlib.transfer import (SliceTraining, flatten_3d_to_2d, flatten_kernel, layer_status, prepare_finetune,
                               pretrain, pretrain_genesis_proxy)

seed_everything(seed)
# the quick networks are tiny: extra threads only add overhead; the reference U-Net uses both cores
torch.set_num_threads(choose(setting, quick=1, reference=2, full=torch.get_num_threads()))
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# %% [markdown]
# ## Settings
#
# Quick mode shrinks everything so the whole grid runs in the chapter's CPU budget. The reference
# setting is sized for a 2-core CPU on real data: a U-Net and an attention U-Net of width 16 on
# 128-pixel slices, 30 epochs a cell, all five folds, a few minutes of pretraining per
# source and network. Full mode is
# the report's experiment (section 5.1-5.2) with the training recipe of
# {doc}`chapter 04 <04_unet_and_attention>`: Adam at 2e-4, ×0.8 every 25 epochs, at most 500
# epochs, the best epoch by validation Dice, stop after 30 epochs without improvement, five
# folds, the paper-sized U-Net (widths 64-1024) and the published Models Genesis widths.
#
# COVID-SemiSeg is a cohort of single 2D slices (8-bit, no Hounsfield units, no third
# dimension): each "volume" of the report's splits is one slice, and the 3D Models Genesis
# network has nothing to restore there. Its sources are therefore 2D: a Models Genesis-style
# restoration pretraining on the dataset's own unlabelled slices, and supervised pretraining on
# phantom slices shown the way COVID-SemiSeg shows its slices (synthetic to real).

# %%
slices_2d = dataset == "covid-semiseg"  # a cohort of single 2D 8-bit slices
n_cases = choose(setting, quick=12, reference=50, full=70)  # the report pools 20 + 50 = 70 COVID volumes; COVID-SemiSeg has 50 labelled slices
n_source = choose(setting, quick=4, reference=12, full=40)  # per source disease (3D phantom nodule / effusion cohorts)
n_source_slices = choose(setting, quick=8, reference=48, full=400)  # phantom slices in COVID-SemiSeg's view (2D cohorts)
n_unlabelled = choose(setting, quick=32, reference=1600, full=1600)  # unlabelled slices for the restoration pretraining
phantom_shape = choose(setting, quick=(12, 64, 64), reference=(32, 128, 128), full=(64, 256, 256))
phantom_view_shape = choose(setting, quick=(4, 96, 96), reference=(8, 192, 192), full=(32, 512, 512))
slice_size = choose(setting, quick=64, reference=128, full=256)
# in-plane resampling (the report: 1 mm); a 2D slice has no spacing: its longer side becomes the slice size
spacing_mm = SLICE_EXTENT_MM / slice_size if slices_2d else choose(setting, quick=4.0, reference=2.0, full=1.0)
train_settings = TrainConfig(
    epochs=choose(setting, quick=5, reference=30, full=500), patience=30,
    lr=choose(setting, quick=1e-2, reference=1e-3, full=2e-4),  # a few steps need a large rate
    max_steps_per_epoch=choose(setting, quick=5, reference=None, full=None),
    amp=choose(setting, quick="off", reference="auto", full="auto"), seed=seed, device=device, progress=False)
training = SliceTraining(train=train_settings, batch_size=choose(setting, quick=8, reference=4, full=8),
                         output_size=slice_size, empty_fraction=0.5, augment=setting != "quick")
sources = ("restoration", "phantom") if slices_2d else ()
config = GridConfig(networks=choose(setting, quick=("unet", "attention-unet"), reference=("unet", "attention-unet"),
                                    full=("unet", "attention-unet")),
                    recipes=("scratch", "decoder", "all") if slices_2d else ("scratch", "decoder", "all", "genesis"),
                    sources=sources, folds=choose(setting, quick=2, reference=5, full=5), n_folds=5,
                    base_width=choose(setting, quick=4, reference=16, full=64),
                    depth=choose(setting, quick=3, reference=4, full=4),
                    genesis_width=choose(setting, quick=2, reference=8, full=32), training=training, split_seed=seed)
pretrain_epochs = choose(setting, quick=8, reference=15, full=200)
genesis_steps = 10 if slices_2d else choose(setting, quick=10, reference=100, full=2000)  # 2D: only the flattening demo
restoration_settings = RestorationSettings(base_width=config.base_width, depth=config.depth,
                                           steps=choose(setting, quick=10, reference=300, full=5000),
                                           batch_size=choose(setting, quick=4, reference=8, full=16), lr=1e-3,
                                           amp=train_settings.amp, seed=seed)
results_root = Path(grid_dir or Path(output_dir) / f"05_grid_{setting}_{dataset}")
pretrained_cache = Path(output_dir) / "pretrained"  # shared with chapters 06-08: same settings and slices, same weights
print(f"grid: {len(config.cells())} cells = {len(config.networks)} network(s) x {len(config.recipes)} recipes"
      f"{f' (fine-tuning from {len(sources)} sources)' if sources else ''} x {len(config.splits)} splits x "
      f"{config.folds} folds; results in {results_root}")

# %% [markdown]
# ## Data: a small COVID cohort and a source domain
#
# The target is COVID-19 infection. The source the report pretrains on is other lung disease
# with masks: MSD lung tumours and NSCLC pleural effusion. Without those downloads the phantom
# stands in for them — for a 3D cohort, the same synthetic chest with solid nodules or a
# dependent effusion instead of ground-glass opacities; for COVID-SemiSeg's 2D slices, phantom
# slices with COVID-like lesions shown as COVID-SemiSeg shows its slices (8-bit window, tight
# crop, quarter turns: `get_dataset("phantom", view="semiseg")`), so that the source differs
# from the target by being synthetic rather than by its disease. COVID-SemiSeg also has 1,600
# unlabelled slices: the self-supervised source. Every case goes through
# {doc}`chapter 02 <02_data_and_preprocessing>`'s preprocessing (3D: lung crop, in-plane
# resampling, z-score inside the lungs; 2D slices: the 2D equivalents, listed below).

# %%
start = time.perf_counter()
cohort = dict(root=data_root or None, spacing_mm=spacing_mm, phantom_shape=phantom_shape)
covid = preprocess_cohort(dataset, n_cases, seed=seed, id_prefix="covid_", **cohort)
if slices_2d:
    phantom_view = get_dataset("phantom", n=n_source_slices, shape=phantom_view_shape, disease="covid", view="semiseg",
                               seed=seed + 1000)
    source_cases = [dataclasses.replace(preprocess_case(phantom_view.load(case_id), spacing_mm=spacing_mm),
                                        case_id=f"source_{case_id}") for case_id in phantom_view.case_ids()]
    # the restoration network sees the slices exactly as the segmentation networks will
    restoration_slices = unlabelled_slices(dataset, data_root or None, n_unlabelled, slice_size)
    source_titles = {"restoration": f"self-supervised restoration of {len(restoration_slices):,} unlabelled real slices",
                     "phantom": f"{len(source_cases)} COVID phantom slices, synthetic to real"}
elif source == "phantom":
    source_cases = (preprocess_cohort("phantom", n_source, seed=seed + 1000, disease="nodule", id_prefix="nodule_", **cohort)
                    + preprocess_cohort("phantom", n_source, seed=seed + 2000, disease="effusion", id_prefix="effusion_",
                                        **cohort))
    source_titles = {}
else:
    source_cases = preprocess_cohort(source, n_source, seed=seed, id_prefix=f"{source}_", **cohort)
    source_titles = {}
print(f"{len(covid)} COVID {'slices' if slices_2d else 'volumes'}, {len(source_cases)} labelled source cases"
      f"{f', {len(restoration_slices)} unlabelled slices' if slices_2d else ''} "
      f"({time.perf_counter() - start:.1f} s); COVID preparation: {'; '.join(covid[0].meta['steps'])}")

# %% [markdown]
# ## Pretraining on the source domain
#
# Each network first learns to segment the source lesions (a binary task, like the target).
# Its best weights by validation Dice are saved and become the starting point of the
# `"decoder"` and `"all"` recipes. The checkpoints carry a fingerprint of the settings, the
# source volumes, the starting weights and the library code: run again unchanged, a finished
# pretraining is only reloaded; after any change it is trained again. A Dice is read against
# what predicting lesion everywhere scores on the same cases, printed beside it.
#
# For 2D slices the second source is self-supervised, in the way of Models Genesis (Zhou et
# al., MICCAI 2019; MedIA 2021): `covidlib.restoration` corrupts each unlabelled slice
# (a random non-linear intensity curve, local pixel shuffling, in- or out-painting) and trains
# the U-Net to give the original back, by a mean squared error. Its weights (all but the output
# layer, which both recipes redraw) are cached under a fingerprint of the settings, the slices
# and the code, so chapters 06-08 reuse them.

# %%
results_root.mkdir(parents=True, exist_ok=True)
pretrained_paths = {}
pretrain_dice = {}
restoration_losses = {}
source_training = SliceTraining(train=TrainConfig(**{**train_settings.__dict__, "epochs": pretrain_epochs}),
                                batch_size=8, output_size=slice_size, empty_fraction=0.5, augment=setting != "quick")
for network in config.networks:
    torch.manual_seed(seed)
    model = get_model(network, in_channels=1, num_classes=2, base_width=config.base_width, depth=config.depth)
    trainer = pretrain(model, source_cases, source_training, out_dir=results_root / f"pretrain_{network}", resume=True)
    name = weights_name(network, "phantom" if slices_2d else "")
    pretrained_paths[name] = save_checkpoint(model.state_dict(), results_root / f"pretrained_{name.replace('/', '_')}.pt")
    pretrain_dice[name] = trainer.best_metric
    if slices_2d:
        state, info = pretrained_weights(restoration_slices, dataclasses.replace(restoration_settings, network=network),
                                         pretrained_cache, device=device, progress=False)
        name = weights_name(network, "restoration")
        pretrained_paths[name] = save_checkpoint(state, results_root / f"pretrained_{name.replace('/', '_')}.pt")
        restoration_losses[network] = info["losses"]
        tenth = max(1, len(info["losses"]) // 10)
        print(f"{network}: restoration loss {np.mean(info['losses'][:tenth]):.4f} (first {tenth} steps) -> "
              f"{np.mean(info['losses'][-tenth:]):.4f} (last {tenth}) over {len(info['losses'])} steps"
              f"{' (cached)' if info['cached'] else ''}")
source_floor = float(np.mean([2 * case.lesion_mask.sum() / (case.lesion_mask.sum() + case.lesion_mask.size)
                              for case in source_cases]))
display(Markdown(", ".join(f"`{name}` pretraining: best validation Dice {value:.3f}" for name, value in pretrain_dice.items())
                 + f"; predicting lesion everywhere scores {source_floor:.3f} on the source cases (mean over cases)."))

# %% [markdown]
# The restoration task, seen on one unlabelled slice ({numref}`fig-05-restoration`): what the
# network gets (corrupted), what it gives back, the original it was asked for, and the error;
# then the loss step by step ({numref}`fig-05-restoration-loss`).

# %% mystnb={"figure": {"caption": "Models Genesis-style restoration on a 2D slice: an unlabelled COVID-SemiSeg slice (grey levels scaled to [0, 1]), a corruption drawn as in training, what the pretrained U-Net restores from it, and the absolute error. On a 3D phantom cohort the chapter has no 2D restoration source and the panel says so.", "name": "fig-05-restoration"}, "image": {"alt": "Models Genesis-style restoration on a 2D slice: an unlabelled COVID-SemiSeg slice (grey levels scaled to [0, 1]), a corruption drawn as in training, what the pretrained U-Net restores from it, and the absolute error"}}
from covidlib.viz import show_curves, show_panels

if slices_2d:
    shown_rng = np.random.default_rng(seed)
    settings0 = dataclasses.replace(restoration_settings, network=config.networks[0])
    _, info0 = pretrained_weights(restoration_slices, settings0, pretrained_cache, device=device, progress=False)
    restorer = restoration_network(settings0, load_checkpoint(info0["path"])["state_dict"])
    index = int(shown_rng.integers(len(restoration_slices)))
    image = restoration_slices[index]
    low, high = float(image.min()), float(image.max())
    unit = (image - low) / (high - low)
    corrupted = corrupt(unit, shown_rng, Corruption(nonlinear=1.0, local_shuffle=1.0, paint=1.0))
    restored = restore(restorer, (corrupted * (high - low) + low)[None], device=device)[0]
    figure = show_panels({f"unlabelled slice #{index}": unit, "corrupted (network input)": corrupted,
                          "restored": restored, "|restored - original|": np.abs(restored - unit)},
                         window=(0.0, 1.0), unit="(each slice rescaled to 0-1)", title="Restoration pretraining")
else:
    figure = show_curves(None, title="Restoration pretraining",
                         empty_message="This run's cohort is 3D: the 2D restoration source runs on 2D slices (dataset='covid-semiseg').")
figure

# %% mystnb={"figure": {"caption": "Restoration loss (mean squared error between the restored and the original slice, log scale) at every optimizer step of this run's pretraining, one curve per network; an empty panel when the run has no 2D restoration source.", "name": "fig-05-restoration-loss"}, "image": {"alt": "Restoration loss (mean squared error between the restored and the original slice, log scale) at every optimizer step of this run's pretraining, one curve per network; an empty panel when the run has no 2D restoration source"}}
show_curves({network: losses for network, losses in restoration_losses.items()}, xlabel="optimizer step",
            ylabel="restoration loss (MSE)", title="Restoration pretraining, this run", log_y=True,
            empty_message="No restoration pretraining in this run (3D cohort).")

# %% [markdown]
# ## Models Genesis: a 3D network, and its weights in 2D
#
# {term}`Models Genesis` {cite}`zhou2019genesis` trained a 3D U-Net without labels, to restore CT
# cubes that had been corrupted (voxels shuffled locally, boxes painted over, intensities bent).
# `covidlib.models.UNet3d` has its exact layout — the parameter names of the published
# `Genesis_Chest_CT.pt` — so the real checkpoint loads by name with
# `load_genesis_checkpoint(path)`. It cannot be downloaded here (the authors hand it out on
# request), so without `genesis_checkpoint` the chapter runs a small version of the same
# self-supervised restoration on the phantom's HU volumes: a stand-in for the idea, not for the
# published weights. On COVID-SemiSeg's 2D slices the grid has no use for a 3D network; there the
# proxy is trained for a few steps only, for the flattening shown below, and the 2D restoration
# source above takes the place of Models Genesis in the grid.
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
    small = setting == "quick" or slices_2d  # on 2D slices the proxy only serves the flattening demo below
    cube = (32, 32, 8) if small else (64, 64, 32)  # (y, x, z): depth last, as Models Genesis
    # cache: reused only when its fingerprint (settings, volumes, starting weights, code) matches
    losses = pretrain_genesis_proxy(genesis3d, volumes_hu, cube=cube, steps=genesis_steps, batch_size=2 if small else 8,
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
print(f"max |3D - 2D| on the first layer: {float((out3d - out2d).abs().max()):.1e}")

# %% [markdown]
# ## The recipes, layer by layer
#
# In {numref}`fig-05-recipes` each bar is one convolution of the network, its height the number of weights (log scale),
# its colour what the recipe does to it before fine-tuning on COVID.

# %% mystnb={"figure": {"caption": "Each convolution of the U-Net (top two panels) and of the Models Genesis twin (bottom), from the first encoder block to the head, as one bar: its height is the number of weights (log scale), its colour what the recipe does to it before fine-tuning. Fine-tuning the decoder freezes the first half of the encoder and redraws the head; fine-tuning everything redraws the last decoder block and the head; the Models Genesis start keeps every flattened layer and redraws only the head.", "name": "fig-05-recipes"}, "image": {"alt": "Each convolution of the U-Net (top two panels) and of the Models Genesis twin (bottom), from the first encoder block to the head, as one bar: its height is the number of weights (log scale), its colour what the recipe does to it before fine-tuning"}}
pretrained_state = torch.load(pretrained_paths[weights_name("unet", sources[0] if sources else "")], weights_only=True)
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
fig.suptitle("What each recipe freezes, keeps and redraws (convolution weights, encoder -> head)")
fig.tight_layout(rect=(0, 0.05, 1, 1))  # room under the panels for the legend, away from the title
fig.legend(handles, list(colours), loc="lower center", ncol=4, fontsize=9, frameon=False)
plt.show()

# %% [markdown]
# ## The grid of Table 5.1
#
# Every cell trains one network from one initialisation on one split and fold, then records
# the train, validation and held-out test Dice. {term}`Dice` here is the **3D Dice of each volume**
# (the slice predictions stacked back into the volume), averaged over volumes; the table shows
# the mean ± sd of that number over folds. On COVID-SemiSeg a "volume" is one slice, so this is
# the Dice of each test slice. Beside the Dice at 0.5 the table gives Inf-Net's mean Dice on the
# test cases (Fan et al. 2020: the probability map rescaled to [0, 1], Dice averaged over 256
# thresholds), the number published results on COVID-SemiSeg report. Cells are saved one JSON file each with a
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
                   genesis=(genesis_checkpoint or genesis_path_used) if "genesis" in config.recipes else None,
                   n_workers=n_workers, device=device, progress=False)
grid_seconds = time.perf_counter() - start
print(f"{len(records)} cells in {grid_seconds:.0f} s "
      f"({sum(r['seconds'] for r in records):.0f} s of cell time recorded)")

# %%
display(Markdown(f"**Table 5.1, this run** ({dataset}, {setting} setting):\n\n"
                 + render_table(records, source_titles=source_titles)))

# %% [markdown]
# ### On real scans (reference record)
#
# The same grid in the reference setting on COVID-SemiSeg's 50 labelled slices, read from the
# record committed with the book (`ci/book --reference --dataset covid-semiseg` regenerates it).
# The report's MSD lung tumour and NSCLC effusion sources are not available offline; the rows
# name what stands in for them.

# %% tags=["hide-input"]
from covidlib.records import load_reference, reference_notice

reference = load_reference("05_transfer_learning")
display(Markdown(reference_notice(reference, "05_transfer_learning")))
if reference is not None:
    display(Markdown("**Table 5.1, reference record** (mean ± sd over folds):\n\n" + reference.numbers["table_markdown"]))
    ref_rows = reference.numbers["rows"]
    findings = []
    for network, ref_table in reference.numbers["table"].items():
        small = {row: ref_table[row]["10-40"]["test"]["mean"] for row in ref_rows}
        best = max((row for row in ref_rows if row != "scratch"), key=small.__getitem__)
        findings.append(
            f"the {NETWORK_TITLES[network]} trained from scratch scores a test Dice of "
            f"{small['scratch']:.3f} on the small split (10-40) and "
            f"{ref_table['scratch']['40-10']['test']['mean']:.3f} on the large one (40-10), and its best pretrained "
            f"start on the small split, `{best}`, scores {small[best]:.3f} ({small[best] - small['scratch']:+.3f} "
            "against scratch)")
    folds_run = next(iter(reference.numbers["table"].values()))["scratch"]["10-40"]["test"]["n"]
    display(Markdown(
        "In the record, " + "; ".join(findings) + f". With {folds_run} folds and "
        f"{len(reference.numbers['test_cases'])} test slices, a difference smaller than the fold-to-fold sd is not a finding."))
    in_record = list(reference.numbers["table"])
    absent = [name for name in NETWORKS if name not in in_record]  # the report's Table 5.1 has both
    display(Markdown(
        "The record fills the rows of " + " and ".join(NETWORK_TITLES[n] for n in in_record)
        + f" ({', '.join(f'`{row}`' for row in ref_rows)}; both splits)"
        + (f"; the report's {' and '.join(NETWORK_TITLES[n] for n in absent)} rows are not in it"
           if absent else "") + "."))

# %% mystnb={"figure": {"caption": "Restoration loss of the reference record's self-supervised pretraining on the 1,600 unlabelled COVID-SemiSeg slices, step by step (every saved step; log scale). Without a committed record the panel says how to make one.", "name": "fig-05-reference-restoration"}, "image": {"alt": "Restoration loss of the reference record's self-supervised pretraining on the 1,600 unlabelled COVID-SemiSeg slices, step by step (every saved step; log scale)"}}
show_curves(None if reference is None else reference.numbers.get("restoration_losses"), xlabel="optimizer step",
            ylabel="restoration loss (MSE)", title="Restoration pretraining, reference record", log_y=True,
            empty_message="No reference record yet: run ci/book --reference --dataset covid-semiseg --data-root DIR --chapters 05")

# %% [markdown]
# ## Learning curves: scratch vs fine-tuned
#
# Validation Dice per epoch on the small-sample split ("10-40": train on one fold) for the
# first fold ({numref}`fig-05-learning-curves`). A good initialisation shows up as a higher start and a faster climb.

# %% mystnb={"figure": {"caption": "Validation Dice (3D, per volume; per slice on COVID-SemiSeg) after each epoch for every initialisation (scratch, decoder, all, genesis; on 2D slices decoder and all from each source), one panel per network (U-Net, then attention U-Net when the run has it), small-sample split 10-40, fold 0. In quick mode these are runs of a few steps each: they show the mechanics, not which start is better.", "name": "fig-05-learning-curves"}, "image": {"alt": "Validation Dice (3D, per volume; per slice on COVID-SemiSeg) after each epoch for every initialisation (scratch, decoder, all, genesis; on 2D slices decoder and all from each source), one panel per network (U-Net, then attention U-Net when the run has it), small-sample split 10-40, fold 0"}}
fig, axes = plt.subplots(1, len(config.networks), figsize=(5.5 * len(config.networks), 3.8), sharey=True, squeeze=False)
axes = axes[0]
for ax, network in zip(axes, config.networks):
    for record in records:
        cell = record["cell"]
        if cell["network"] == network and cell["split"] == "10-40" and cell["fold"] == 0:
            epochs = [h["epoch"] for h in record["history"]]
            ax.plot(epochs, [h["val_dice"] for h in record["history"]], marker="o",
                    label=row_name(cell["recipe"], cell.get("source", "")))
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
# a 0 that reads as a failed run); its attention U-Net rows have only training Dice, and no
# fine-tuned row has a test Dice. The COVID-19-CT-Seg benchmark {cite}`ma2021benchmark` reports lesion DSC of **0.609 (2D
# nnU-Net)** and **0.673 (3D nnU-Net)** when training on 4 cases, and **0.512 / 0.623** when the
# network is pretrained on MSD lung tumours and fine-tuned on the 4 COVID cases.
#
# These numbers do not compare one to one with each other, nor with the table above:
#
# - **Data.** The report pools 70 volumes (COVID-19-CT-Seg + MosMedData, thick and thin slices),
#   tests on 20 and trains on 10 or 40; the benchmark trains on 4 and tests on 16 of 20 with
#   five-fold rotation. Quick mode here uses a dozen tiny synthetic volumes, 25 optimizer steps
#   a cell and a pretraining of a few steps (compare its validation Dice above with the
#   all-lesion floor printed beside it). Its numbers show that the pipeline runs end to end and
#   fills every cell of the grid it runs; the fold-to-fold sd is as large as the gaps between
#   recipes, so they rank nothing. The reference record uses COVID-SemiSeg's labelled slices with
#   a CPU-sized U-Net and training budget; it fills only the rows its grid ran (named above), and its
#   table says over how many folds.
# - **Dice convention.** The benchmark's DSC is a 3D volume Dice per case. The report computes
#   Dice over 2D slices, and its very high training Dice (0.97-0.99) suggests slice-level
#   averaging that rewards the many empty slices; it does not say which. This chapter
#   always stacks the slices back and reports per-volume 3D Dice, the benchmark's convention,
#   with empty-vs-empty counted as 1 (healthy volumes). A slice-averaged Dice of the same
#   predictions is usually higher.
# - **Networks and budget.** nnU-Net tunes its own architecture, patch size and augmentation;
#   the report uses a fixed 2D U-Net at 500 epochs; quick mode trains for a few steps, the
#   reference setting 30 epochs of width-16 networks.
#
# The benchmark's own lesson — pretraining on MSD lung tumours *lowered* the lesion DSC
# (0.609 -> 0.512 in 2D) — is the caveat for this chapter too: a source domain with different
# lesions can pull the features the wrong way, and only the full-mode grid on real data can
# say which recipe wins.

# %% [markdown]
# ## Full mode: size and cost
#
# On a 3D cohort (the phantom, COVID-19-CT-Seg) the full grid is 2 networks x 4 recipes x 2
# splits x 5 folds = 80 trainings of up to 500 epochs, plus two pretrainings; on COVID-SemiSeg's
# 2D slices the two fine-tuning recipes run once per pretraining source (5 rows: 100 trainings,
# on far fewer slices). The cell below times one training step of the full-size U-Net on this
# machine (CPU time, one 64x64 slice, scaled to 256x256) and extrapolates for a 3D cohort: a
# planning number, not a result, and not checked by nbval. Start the full run with one command, and run it again with the same `grid_dir`
# to resume after an interruption:
#
# ```
# papermill chapters/05_transfer_learning.ipynb out.ipynb -p setting full -p device auto \
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

# %% tags=["hide-input"]
from covidlib.results import write_record

table = summarise(records)
numbers = {
    "grid_cells": len(records),
    "pretrain_val_dice": pretrain_dice,
    "genesis_source": genesis_source,
    "table": table,
    "table_markdown": render_table(records, source_titles=source_titles),
    "rows": list(dict.fromkeys(row_name(r["cell"]["recipe"], r["cell"].get("source", "")) for r in records)),
    "source_titles": source_titles,
    "source_all_lesion_dice": source_floor,
    "test_cases": records[0]["cases"]["test"],
    "restoration_losses": {network: [round(v, 6) for v in losses] for network, losses in restoration_losses.items()},
    "grid_seconds": grid_seconds,
    "preparation": covid[0].meta["steps"],
}
record_path = write_record(output_dir, "05_transfer_learning",
                           parameters=dict(dataset=dataset, data_root=data_root, setting=setting, device=device, seed=seed, source=source,
                                           genesis_checkpoint=genesis_checkpoint, grid_dir=str(results_root), n_workers=n_workers),
                           numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"cells: {len(records)}")
for network in config.networks:
    for recipe in table[network]:
        row = "  ".join(f"{split} test {table[network][recipe][split]['test']['mean']:.2f}"
                        for split in config.splits)
        print(f"{network:15s} {recipe:8s} {row}")
