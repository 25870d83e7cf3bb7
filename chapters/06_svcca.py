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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/covid-ct-book/covid-ct-book/blob/main/chapters/06_svcca.ipynb)
#
# # 06. SVCCA: which layers of a U-Net learn, and which are reused
#
# **What you will learn**
#
# - what SVCCA (Raghu et al., NeurIPS 2017) measures — how alike two layers' representations are,
#   up to any invertible linear map — in four equations, and a from-scratch version checked
#   against `covidlib.svcca`;
# - why a similarity must be read against its *chance level*, which is far from 0 for the
#   sizes met in practice;
# - how each layer of a U-Net converges when trained from scratch (the report's Figs. 5.2-5.3)
#   and when fine-tuned from a network pretrained on other lung disease (Fig. 5.4);
# - how far each layer moves from its pretrained weights with many or few training volumes
#   (Fig. 5.5, and the report's unfinished "5 volumes" question);
# - what such numbers can and cannot support with one seed, a few seeds, and a synthetic cohort.
#
# **Prerequisites** {doc}`chapter 04 <04_unet_and_attention>` (U-Net, Trainer) and
# {doc}`chapter 05 <05_transfer_learning>` (pretraining, fine-tuning recipes).
#
# **Run time** quick: ~1.5 min CPU; reference (COVID-SemiSeg's labelled slices, a width-16 U-Net
# on 128-pixel slices, fine-tuned from chapter 05's self-supervised restoration weights): about
# 5 min on a quiet 2-core CPU; full: many GPU hours (the report's 40-vs-5-volume setting,
# several repeats).

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
variance = 0.99  # fraction of each layer's variance SVD keeps (the report: 99%)
many_volumes = 40  # training volumes of the "many" condition (the report's 40-10 split)
few_volumes = 5  # the report's unfinished question: fine-tuning on 5 volumes
repeats = 3  # seeds of each fine-tuning condition (data subset, re-initialisation, batch order)
snapshot_interval = 1000  # optimizer steps between snapshots in full mode (files of ~125 MB each)

# %%
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

import covidlib.viz  # noqa: F401  (shows the pyplot-free figures below as PNG in a fresh kernel)
from covidlib.config import choose, format_summary, runtime_summary, seed_everything

seed_everything(seed)
# the quick networks are tiny: extra threads only add overhead; the reference U-Net uses both cores
torch.set_num_threads(choose(setting, quick=1, reference=2, full=torch.get_num_threads()))
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# %% [markdown]
# ## Settings
#
# Quick mode shrinks everything to fit the chapter's CPU budget: a U-Net of widths 8-64 on
# 64 x 64 slices, 8 vs 2 volumes, 60 optimizer steps a run at a learning rate of 2e-3 (so that
# so few steps get somewhere), 2 repeats. The reference setting runs on real slices
# (COVID-SemiSeg) with a U-Net of widths 16-256 on 128 x 128 slices, 25 epochs a run, and
# fine-tunes from the self-supervised restoration weights of {doc}`chapter 05 <05_transfer_learning>`
# (cached: the same settings and slices give the same file). Full mode is the report's
# setting: the paper-sized U-Net (widths 64-1024), 1 mm slices of 256 x 256, 40 vs 5 volumes,
# Adam at 2e-4 (x0.8 every 25 epochs), at most 500 epochs with early stopping. The report
# validated every 100 iterations and kept a model only when it improved; full mode keeps every
# 1000th step on disk instead (a snapshot of the full-size U-Net is about 125 MB).

# %%
from covidlib.preprocess import SLICE_EXTENT_MM
from covidlib.train import TrainConfig
from covidlib.transfer import SliceTraining

slices_2d = dataset == "covid-semiseg"  # a cohort of single 2D 8-bit slices: each "volume" is one slice
n_many = choose(setting, quick=8, reference=30, full=many_volumes)
n_few = choose(setting, quick=2, reference=few_volumes, full=few_volumes)
n_repeats = choose(setting, quick=2, reference=2, full=repeats)
n_val, n_probe = choose(setting, quick=(1, 2), reference=(8, 10), full=(10, 5))
n_source = choose(setting, quick=3, reference=12, full=40)  # per source disease (3D phantom nodule / effusion cohorts)
phantom_shape = choose(setting, quick=(16, 64, 64), reference=(32, 128, 128), full=(64, 256, 256))
slice_size = choose(setting, quick=64, reference=128, full=256)
# in-plane resampling (the report: 1 mm); a 2D slice has no spacing: its longer side becomes the slice size
spacing_mm = SLICE_EXTENT_MM / slice_size if slices_2d else choose(setting, quick=4.0, reference=2.0, full=1.0)
base_width, depth = choose(setting, quick=(8, 3), reference=(16, 4), full=(64, 4))
steps_per_epoch = choose(setting, quick=6, reference=None, full=None)  # quick: every run takes the same 6 steps an epoch
interval = choose(setting, quick=6, reference=20, full=snapshot_interval)
train_config = TrainConfig(epochs=choose(setting, quick=10, reference=25, full=500),
                           lr=choose(setting, quick=2e-3, reference=1e-3, full=2e-4), patience=30,
                           max_steps_per_epoch=steps_per_epoch, amp=choose(setting, quick="off", reference="auto", full="auto"),
                           seed=seed, device=device, progress=False)
training = SliceTraining(train=train_config, batch_size=choose(setting, quick=4, reference=4, full=8),
                         output_size=slice_size, empty_fraction=0.5, augment=setting != "quick")
max_positions = choose(setting, quick=20_000, reference=20_000, full=50_000)  # datapoints (pixels) per layer for SVCCA
max_spatial = choose(setting, quick=None, reference=None, full=64)  # full: average-pool feature maps above 64 px a side (memory)
# quick and reference keep the snapshots in memory (a width-16 U-Net is about 8 MB)
snapshot_root = Path(output_dir) / "06_svcca_snapshots" if setting == "full" else None
print(f"U-Net widths {base_width}-{base_width * 2**depth}, {slice_size}px slices; {n_many} vs {n_few} volumes, "
      f"{n_repeats} repeats; snapshot every {interval} steps")

# %% [markdown]
# ## 1. SVCCA in four equations
#
# {term}`SVCCA` was introduced to study how deep networks learn {cite}`raghu2017svcca`, and later used to
# ask what transfer learning from natural images really gives medical-imaging networks
# {cite}`raghu2019transfusion` — the question the report brings to COVID-19 segmentation
# (its sections 2.4.2 and 5.2.4).
#
# Run a fixed *probe set* of images through a network and record what one layer outputs. For a
# convolutional layer with $p$ channels every (image, pixel) pair is a datapoint and every
# channel a neuron, so the layer becomes a matrix $X \in \mathbb{R}^{n \times p}$ with
# $n$ = images x pixels. Another layer, or the same layer of another checkpoint, gives
# $Y \in \mathbb{R}^{n \times q}$ over the *same* datapoints.
#
# 1. **SV — keep the directions that matter.** Centre every column and take the SVD
#    $X = U S V^\top$. Keep the smallest $k$ with
#    $\sum_{i \le k} s_i^2 / \sum_i s_i^2 \ge 0.99$: $X' = U_k S_k$ (likewise $Y'$ with $k_Y$).
#    Directions that carry under 1% of the variance — mostly noise — are dropped.
# 2. **CCA — align the two subspaces.** Find directions $a_i, b_i$ that make
#    $\rho_i = \operatorname{corr}(X' a_i,\, Y' b_i)$ as large as possible, each uncorrelated
#    with the previous ones.
# 3. **A stable way to get all $\rho_i$ at once.** With orthonormal bases $Q_X, Q_Y$ of the
#    columns of $X'$ and $Y'$ (e.g. from QR), the canonical correlations are the singular values
#    of $Q_X^\top Q_Y$ — cosines of the principal angles between the two subspaces.
# 4. **The similarity** is their mean, $\bar\rho = \frac{1}{m}\sum_{i=1}^{m} \rho_i$ with
#    $m = \min(k_X, k_Y)$.
#
# Because CCA only looks at subspaces, $\bar\rho$ does not change when either layer is
# multiplied by an invertible matrix: a layer whose channels are permuted, rescaled or mixed
# still scores 1. That is why SVCCA can compare two networks whose neurons have no one-to-one
# correspondence.
#
# Here is step 1-4 written out in NumPy, compared with the library on two random layers (the
# library avoids the $n \times p$ QR: it needs only the Gram matrices $X^\top X$, $Y^\top Y$,
# $X^\top Y$, which is faster; see `benchmarks/bench_svcca.py`).

# %%
from covidlib.svcca import chance_mean_correlation, cca, flatten_conv, svcca


def svcca_from_scratch(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> np.ndarray:
    """Canonical correlations of the SVD-reduced, centred ``x`` (n, p) and ``y`` (n, q)."""
    def reduce(a: np.ndarray) -> np.ndarray:
        a = a - a.mean(axis=0)
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), keep)) + 1
        return u[:, :k] * s[:k]
    q_x, _ = np.linalg.qr(reduce(x))
    q_y, _ = np.linalg.qr(reduce(y))
    return np.linalg.svd(q_x.T @ q_y, compute_uv=False)


rng = np.random.default_rng(seed)
shared = rng.standard_normal((3000, 6))
layer_a = np.maximum(shared @ rng.standard_normal((6, 24)) + 0.5 * rng.standard_normal((3000, 24)), 0)
layer_b = np.tanh(shared @ rng.standard_normal((6, 16))) + 0.5 * rng.standard_normal((3000, 16))
ours = svcca_from_scratch(layer_a, layer_b, variance)
library = svcca(layer_a, layer_b, variance=variance)
assert np.allclose(ours, library.correlations, atol=1e-8), "teaching SVCCA and covidlib.svcca disagree"
mixing = rng.standard_normal((24, 24)) + 4 * np.eye(24)
print(f"toy layers: SVCCA {library.mean:.4f} (from scratch {ours.mean():.4f}), kept dims {library.kept_dims}")
print(f"a layer vs an invertible linear map of itself (plain CCA): {cca(layer_a, layer_a @ mixing).mean:.6f}")

# %% [markdown]
# ### Chance is not zero
#
# Two *independent* random layers are not similar, yet their canonical correlations are not 0:
# CCA finds the best-aligned directions, and with few datapoints per dimension it always finds
# some. For Gaussian data the limit is known {cite}`wachter1980limiting`: with $n$ datapoints and $p, q$
# dimensions the squared correlations follow a known law, whose mean `chance_mean_correlation`
# computes (`svcca` reports it for every comparison as `.chance`). Below ({numref}`fig-06-chance`), simulated independent
# layers against that curve: at 20 dimensions and 200 datapoints the "similarity" of pure noise
# is already about 0.3. A layer's score means something only well above its chance level.

# %% mystnb={"figure": {"caption": "Mean canonical correlation between two independent 20-dimensional Gaussian layers against the number of datapoints: simulations (dots, mean of 3) and the Wachter limit (line). With few datapoints per dimension, pure noise scores far above 0.", "name": "fig-06-chance"}, "image": {"alt": "Mean canonical correlation between two independent 20-dimensional Gaussian layers against the number of datapoints: simulations (dots, mean of 3) and the Wachter limit (line)"}}
from matplotlib.figure import Figure

dims = 20
points = [60, 100, 200, 500, 1000, 3000, 10000]
simulated = [np.mean([svcca(rng.standard_normal((n, dims)), rng.standard_normal((n, dims)), variance=1.0).mean
                      for _ in range(3)]) for n in points]
analytic = [chance_mean_correlation(n - 1, dims, dims) for n in points]
figure = Figure(figsize=(5, 3.2), layout="constrained")
ax = figure.subplots()
ax.plot(points, analytic, "-", color="#0072B2", label="Wachter limit")
ax.plot(points, simulated, "o", color="#D55E00", label="independent Gaussian layers (mean of 3)")
ax.set(xscale="log", xlabel="datapoints n", ylabel="mean canonical correlation",
       title=f"Chance level of CCA between two independent {dims}-dim layers")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
figure

# %% [markdown]
# ## 2. Data and the probe set
#
# The COVID cohort is split by volume into a training pool, validation volumes and *probe*
# volumes. The probe slices are never trained on; every snapshot of every network is run on
# exactly these slices, so all comparisons share their datapoints. The pretraining source is
# other lung disease, as in {doc}`chapter 05 <05_transfer_learning>` — the phantom's nodule and effusion cohorts standing in
# for MSD lung tumours and NSCLC effusion; on COVID-SemiSeg's 2D slices it is chapter 05's
# self-supervised source, the restoration of the dataset's unlabelled slices. All volumes go through
# {doc}`chapter 02 <02_data_and_preprocessing>`'s preprocessing (2D slices: its 2D equivalents).

# %%
from covidlib.data import SliceDataset
from covidlib.preprocess import preprocess_cohort
from covidlib.transfer import case_arrays


start = time.perf_counter()
cohort = dict(root=data_root or None, spacing_mm=spacing_mm, phantom_shape=phantom_shape)
covid_cases = preprocess_cohort(dataset, n_many + n_val + n_probe, seed=seed, id_prefix="covid_", **cohort)
covid = case_arrays(covid_cases)
print("COVID preparation:", "; ".join(covid_cases[0].meta["steps"]))
source_cases = [] if slices_2d else (
    preprocess_cohort("phantom", n_source, seed=seed + 1000, disease="nodule", id_prefix="nodule_", **cohort)
    + preprocess_cohort("phantom", n_source, seed=seed + 2000, disease="effusion", id_prefix="effusion_", **cohort))
covid_ids = list(covid)
probe_ids, val_ids, pool_ids = covid_ids[:n_probe], covid_ids[n_probe:n_probe + n_val], covid_ids[n_probe + n_val:]


def probe_slices(ids: list[str], size: int) -> torch.Tensor:
    """Every slice with infection of the probe volumes, padded/cropped to ``size``: (N, 1, size, size)."""
    dataset = SliceDataset([covid[i] for i in ids], case_ids=ids, empty_fraction=0.0, output_size=size)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


probes = probe_slices(probe_ids, slice_size)
print(f"{len(pool_ids)} training, {len(val_ids)} validation, {len(probe_ids)} probe {'slices' if slices_2d else 'volumes'} "
      f"({probes.shape[0]} probe slices); {len(source_cases)} source volumes ({time.perf_counter() - start:.1f} s)")

# %% [markdown]
# ## 3. Training with snapshots
#
# `covidlib.activations.SnapshotTrainer` is {doc}`chapter 04 <04_unet_and_attention>`'s Trainer that also keeps the weights
# every `interval` optimizer steps (and before the first step). The report instead saved a
# model only when validation improved; a fixed interval samples the whole trajectory,
# including the early steps where most of the change happens. The *converged* model every
# snapshot is compared with is the Trainer's final model — its best epoch by validation Dice,
# as in the report.

# %%
from covidlib.activations import SnapshotTrainer, layer_names, load_weights, svcca_over_checkpoints, weight_distance
from covidlib.models import UNet2d
from covidlib.restoration import RestorationSettings, pretrained_weights, unlabelled_slices
from covidlib.transfer import prepare_finetune, pretrain, slice_loader


def new_unet(init_seed: int) -> UNet2d:
    torch.manual_seed(init_seed)
    return UNet2d(in_channels=1, num_classes=2, base_width=base_width, depth=depth)


def train_with_snapshots(model: UNet2d, train_ids: list[str], run_seed: int, name: str) -> SnapshotTrainer:
    """Train ``model`` on ``train_ids`` (validating on the validation volumes), keeping snapshots."""
    settings = dataclasses.replace(training, train=dataclasses.replace(train_config, seed=run_seed))
    trainer = SnapshotTrainer(model, settings.train, interval=interval,
                              snapshot_dir=None if snapshot_root is None else snapshot_root / name)
    trainer.fit(slice_loader(covid, train_ids, settings, training=True, seed=run_seed),
                slice_loader(covid, val_ids, settings, training=False, seed=run_seed))
    return trainer


def converged_state(trainer: SnapshotTrainer) -> dict[str, torch.Tensor]:
    """The trainer's final weights (its best epoch by validation Dice), as a CPU state dict."""
    return {key: value.detach().cpu().clone() for key, value in trainer.model.state_dict().items()}


def layer_similarity(trainer: SnapshotTrainer) -> dict[str, dict[object, float]]:
    """SVCCA of every layer of every snapshot with the converged model, on the probe slices."""
    checkpoints = {**trainer.snapshots, "converged": converged_state(trainer)}
    return svcca_over_checkpoints(lambda: new_unet(0), checkpoints, probes, reference="converged", variance=variance,
                                  max_positions=max_positions, seed=seed, device=device, max_spatial=max_spatial,
                                  progress=False)


start = time.perf_counter()
scratch = train_with_snapshots(new_unet(seed), pool_ids, seed, "scratch")
scratch_similarity = layer_similarity(scratch)
layers = list(scratch_similarity)
print(f"from scratch: {scratch.step} steps, best validation Dice {scratch.best_metric:.3f} at epoch "
      f"{scratch.best_epoch}, {len(scratch.snapshots)} snapshots ({time.perf_counter() - start:.1f} s)")

# %% [markdown]
# ### Convergence from random initialisation (the report's Figs. 5.2 and 5.3)
#
# One line per layer in {numref}`fig-06-scratch`: the SVCCA similarity of that layer's output at each snapshot with the
# same layer of the converged model. Encoder blocks are solid, decoder blocks and the output
# head dashed. The right panel leaves the head out, as the report's Fig. 5.3 does.

# %% mystnb={"figure": {"caption": "Training from scratch: the SVCCA similarity of each layer at every snapshot with the same layer of the converged model (encoder solid, decoder and head dashed). Left all layers, right without the output head, as in the report's Figs. 5.2 and 5.3.", "name": "fig-06-scratch"}, "image": {"alt": "Training from scratch: the SVCCA similarity of each layer at every snapshot with the same layer of the converged model (encoder solid, decoder and head dashed)"}}
from covidlib.activations import plot_layer_bars, plot_layer_curves


def steps_only(similarity: dict[str, dict[object, float]], keep: list[str]) -> dict[str, dict[int, float]]:
    return {layer: {k: v for k, v in similarity[layer].items() if k != "converged"} for layer in keep}


plot_layer_curves({"all layers (Fig. 5.2)": steps_only(scratch_similarity, layers),
                   "without the output head (Fig. 5.3)": steps_only(scratch_similarity, layers[:-1])},
                  title=f"Training from scratch: each layer vs the converged model ({dataset})")

# %% [markdown]
# A curve reaches exactly 1 only where a snapshot falls on the converged model's own step (the
# Trainer keeps the epoch with the best validation Dice, which need not be the last, and
# snapshots are taken every few steps), and snapshots after it drift away again. The report's three observations can be checked against the figure and the table below
# (the first step at which each layer is at least 0.8 similar to its converged self):
#
# - *the encoder converged faster than the decoder* — and, in classifiers, Raghu et al. saw
#   networks converge bottom-up. In a U-Net the skip connections blur that order: every decoder
#   block also reads an early encoder block directly;
# - *the first down-convolution moved least* — not so surprising: a randomly initialised 3x3
#   convolution of the raw image already spans much of the subspace a trained one spans (the
#   image's local intensities and gradients);
# - *the output layer hardly moved* — the head has only two channels (background and infection
#   logits), so its SVCCA is a mean of at most two correlations, and any map that separates
#   lung from background already correlates with the final one. A score at the head says little
#   about the features underneath.

# %%
def first_step_reaching(similarity: dict[str, dict[object, float]], level: float) -> dict[str, int | None]:
    """The first snapshot step at which each layer's similarity reaches ``level`` (None: never)."""
    return {layer: next((step for step in sorted(k for k in scores if k != "converged") if scores[step] >= level), None)
            for layer, scores in similarity.items()}


scratch_reach = first_step_reaching(scratch_similarity, 0.8)
print(f"{'layer':<10} {'at step 0':>9} {'reaches 0.8 at step':>20}")
for layer in layers:
    print(f"{layer:<10} {scratch_similarity[layer][0]:9.2f} {str(scratch_reach[layer]):>20}")
encoder_steps = [scratch_reach[layer] for layer in layers if layer.startswith("encoder")]
decoder_steps = [scratch_reach[layer] for layer in layers if layer.startswith("decoder")]
print(f"median step to 0.8: encoder {np.median([s for s in encoder_steps if s is not None]):.0f}, "
      f"decoder {np.median([s for s in decoder_steps if s is not None]):.0f} (one seed)")

# %% [markdown]
# ## 4. Convergence during fine-tuning (the report's Fig. 5.4)
#
# Pretrain on the source domain (chapter 05's `pretrain`; on 2D slices chapter 05's restoration
# pretraining, `covidlib.restoration.pretrained_weights`), then fine-tune on COVID with the
# report's "fine-tune all" recipe (the middle panel of
# {numref}`Fig. {number} in chapter 05 <fig-05-recipes>`): every layer trainable, the last decoder block and the head
# re-initialised (`prepare_finetune(..., "all")`). Those two layers start from random weights,
# so their low early similarity is by construction; they are starred in the legend. We
# fine-tune twice: on the `n_many` training volumes and on only `n_few` of them, with the same
# number of optimizer steps in quick mode.

# %%
start = time.perf_counter()
pretrained_model = new_unet(seed)
if slices_2d:
    restoration_settings = RestorationSettings(base_width=base_width, depth=depth,
                                               steps=choose(setting, quick=10, reference=300, full=5000),
                                               batch_size=choose(setting, quick=4, reference=8, full=16), lr=1e-3,
                                               amp=train_config.amp, seed=seed)
    unlabelled = unlabelled_slices(dataset, data_root or None, choose(setting, quick=32, reference=1600, full=1600),
                                   slice_size)
    state, restoration_info = pretrained_weights(unlabelled, restoration_settings, Path(output_dir) / "pretrained",
                                                 device=device, progress=False)
    pretrained_model.load_state_dict(state)
    losses, tenth = restoration_info["losses"], max(1, len(restoration_info["losses"]) // 10)
    pretraining_summary = (f"restoration pretraining on {len(unlabelled)} unlabelled slices: loss {np.mean(losses[:tenth]):.4f} "
                           f"(first {tenth} steps) -> {np.mean(losses[-tenth:]):.4f} (last {tenth}) over {len(losses)} steps")
else:
    pretraining_summary = f"pretraining: best validation Dice {pretrain(pretrained_model, source_cases, training).best_metric:.3f}"
pretrained = {key: value.detach().cpu().clone() for key, value in pretrained_model.state_dict().items()}
reinitialised = layer_names(pretrained_model)[-2:]  # the last decoder block and the head


def fine_tune(train_ids: list[str], run_seed: int, name: str) -> SnapshotTrainer:
    model = prepare_finetune(new_unet(run_seed), "all", pretrained=pretrained, seed=run_seed)
    return train_with_snapshots(model, train_ids, run_seed, name)


runs = {}  # (condition, repeat) -> trainer
for repeat in range(n_repeats):
    run_seed = seed + repeat
    subset = list(np.random.default_rng(run_seed).choice(pool_ids, size=n_few, replace=False))
    runs["many", repeat] = fine_tune(pool_ids, run_seed, f"many_{repeat}")
    runs["few", repeat] = fine_tune(subset, run_seed, f"few_{repeat}")
print(f"{pretraining_summary}; {len(runs)} fine-tuning runs: "
      f"{time.perf_counter() - start:.1f} s")
print({f"{c} #{r}": round(t.best_metric, 3) for (c, r), t in runs.items()}, "best validation Dice")

# %% mystnb={"figure": {"caption": "The same per-layer similarity curves when the pretrained U-Net is fine-tuned on many volumes (left, the report's Fig. 5.4) and on few (middle), with training from scratch for comparison (right). Layers marked * were re-initialised by the recipe, so their low start is by construction.", "name": "fig-06-finetune"}, "image": {"alt": "The same per-layer similarity curves when the pretrained U-Net is fine-tuned on many volumes (left, the report's Fig. 5.4) and on few (middle), with training from scratch for comparison (right)"}}
finetune_similarity = {condition: layer_similarity(runs[condition, 0]) for condition in ("many", "few")}
plot_layer_curves({f"fine-tuning on {n_many} volumes (Fig. 5.4)": steps_only(finetune_similarity["many"], layers),
                   f"fine-tuning on {n_few} volumes": steps_only(finetune_similarity["few"], layers),
                   "from scratch (for comparison)": steps_only(scratch_similarity, layers)},
                  title="Each layer vs its converged model; * = re-initialised by the recipe", marked=reinitialised)

# %% [markdown]
# The report saw the fine-tuned encoder start much closer to its converged state than a
# randomly initialised one ("feature reuse"), most of all in the lowest layers, and the decoder
# layers converge together. The step-0 values of {numref}`fig-06-finetune` say how much of each layer's final representation
# was already there when fine-tuning began; compare them with training from scratch:

# %%
print(f"{'layer':<10} {'scratch@0':>9} {'tuned@0':>8} {'difference':>10}")
for layer in layers:
    tuned, fresh = finetune_similarity["many"][layer][0], scratch_similarity[layer][0]
    print(f"{layer:<10} {fresh:9.2f} {tuned:8.2f} {round(tuned - fresh, 2) + 0.0:+10.2f}" + ("  (re-initialised)" if layer in reinitialised else ""))

# %% [markdown]
# How large the head start is depends on how good the pretraining was: the quick run pretrains
# a tiny network for a few dozen steps on six synthetic volumes, the reference run a width-16
# U-Net for a few hundred restoration steps on unlabelled real slices, and the full run the
# report's network to convergence on 80 source volumes. In this run:

# %%
from IPython.display import Markdown, display

head_start = {layer: finetune_similarity["many"][layer][0] - scratch_similarity[layer][0]
              for layer in layers if layer not in reinitialised}
encoder_start = [head_start[layer] for layer in head_start if layer.startswith("encoder")]
display(Markdown(
    f"the fine-tuned encoder blocks start {np.mean(encoder_start):+.2f} (mean; from {min(encoder_start):+.2f} to "
    f"{max(encoder_start):+.2f}) closer to their converged selves than the same blocks trained from scratch; the "
    f"first block {head_start[layers[0]]:+.2f} (random first-layer filters are already close to trained ones, see above)."))

# %% [markdown]
# ## 5. How far did each layer move? Many vs few volumes (Fig. 5.5 and the "5 volumes" question)
#
# The report asked "how much did the model move given the amount of data it observed during
# fine-tuning", showed the 40-volume case, and left the 5-volume run unfinished ("We then
# trained the model using only 5 volumes sliced into 2D....."). Here both are run, each
# `n_repeats` times (a different random subset of volumes, re-initialisation and batch order
# per repeat), and two measures are taken for every layer between the start of fine-tuning and
# the converged model:
#
# - the **relative weight distance** $\lVert\theta_{end} - \theta_{start}\rVert / \lVert\theta_{start}\rVert$
#   (`covidlib.activations.weight_distance`): how far the parameters travelled;
# - the **SVCCA similarity** of the layer's outputs at the start and at the end: whether what
#   the layer computes changed, whatever happened to the individual weights.
#
# The bars ({numref}`fig-06-weight-distance` and {numref}`fig-06-svcca-start-end`) are means over repeats, the dots the repeats.

# %% mystnb={"figure": {"caption": "Relative weight distance of each layer between the start and the end of fine-tuning, on many and on few volumes; bars are means over repeats, dots the single repeats. The last two layers were re-initialised, so they travel from random weights.", "name": "fig-06-weight-distance"}, "image": {"alt": "Relative weight distance of each layer between the start and the end of fine-tuning, on many and on few volumes; bars are means over repeats, dots the single repeats"}}
def start_vs_end(trainer: SnapshotTrainer) -> tuple[dict[str, float], dict[str, float]]:
    """Per-layer weight distance and SVCCA similarity between step 0 and the converged model."""
    start_model, end_model = new_unet(0), new_unet(0)
    start_model.load_state_dict(load_weights(trainer.snapshots[0]))
    end_model.load_state_dict(converged_state(trainer))
    distance = weight_distance(end_model, start_model)
    similarity = svcca_over_checkpoints(lambda: new_unet(0), {"start": trainer.snapshots[0], "end": converged_state(trainer)},
                                        probes, reference="end", variance=variance, max_positions=max_positions,
                                        seed=seed, device=device, max_spatial=max_spatial, progress=False)
    return distance, {layer: scores["start"] for layer, scores in similarity.items()}


movement = {key: start_vs_end(trainer) for key, trainer in runs.items()}
conditions = {"many": f"{n_many} volumes", "few": f"{n_few} volumes"}
distances = {label: {layer: [movement[c, r][0][layer] for r in range(n_repeats)] for layer in layers}
             for c, label in conditions.items()}
similarities = {label: {layer: [movement[c, r][1][layer] for r in range(n_repeats)] for layer in layers}
                for c, label in conditions.items()}
plot_layer_bars(distances, title="How far each layer's weights moved during fine-tuning (last 2: re-initialised)",
                ylabel="relative weight distance")

# %% mystnb={"figure": {"caption": "SVCCA similarity of each layer's output at the start and at the end of fine-tuning, on many and on few volumes (the report's Fig. 5.5); bars are means over repeats, dots the single repeats. Near 1, the layer still computes much what it computed when fine-tuning began.", "name": "fig-06-svcca-start-end"}, "image": {"alt": "SVCCA similarity of each layer's output at the start and at the end of fine-tuning, on many and on few volumes (the report's Fig. 5.5); bars are means over repeats, dots the single repeats"}}
plot_layer_bars(similarities, title="SVCCA similarity of each layer before and after fine-tuning (Fig. 5.5)",
                ylabel="SVCCA(start, converged)")

# %% [markdown]
# So, does a network fine-tuned on few volumes move less? Two things must be kept apart: how far
# the weights travel, and whether the *representations* change. Adam's step size does not depend
# on how many distinct slices the batches came from, so with the same number of optimizer steps
# one might expect the weights to travel about as far either way; the distances above say whether
# they did in this run. The representations are the real question, and a difference has to clear
# the spread between repeats. The cell below counts, layer by layer, whether the repeats of the two conditions
# overlap at all — a crude test, but one that two or three repeats can support.

# %%
def separated(a: list[float], b: list[float]) -> bool:
    """True when every repeat of one condition lies above every repeat of the other."""
    return min(a) > max(b) or min(b) > max(a)


many_label, few_label = conditions["many"], conditions["few"]
for name, values in (("weight distance", distances), ("SVCCA(start, converged)", similarities)):
    apart = [layer for layer in layers if separated(values[many_label][layer], values[few_label][layer])]
    print(f"{name}: {n_many} vs {n_few} volumes separated in {len(apart)} of {len(layers)} layers {apart}")

# %% [markdown]
# ## 6. What is a "low" similarity? Two seeds from scratch
#
# Before reading a similarity of, say, 0.6 as "this layer changed a lot", compare it with two
# references. One is the chance level of that layer's sizes (section 1). The other is what two
# networks trained the same way, differing only in their random seed, share: Raghu et al. found
# that different seeds give similar lower layers and different higher ones. Here a second
# from-scratch run with another seed is compared layer by layer with the first.

# %%
from covidlib.activations import capture_activations

second = train_with_snapshots(new_unet(seed + 1), pool_ids, seed + 1, "scratch_seed2")
first_model, second_model = new_unet(0), new_unet(0)
first_model.load_state_dict(converged_state(scratch))
second_model.load_state_dict(converged_state(second))
acts_first = capture_activations(first_model, probes, layers, device=device, max_spatial=max_spatial)
acts_second = capture_activations(second_model, probes, layers, device=device, max_spatial=max_spatial)
between_seeds = {layer: svcca(flatten_conv(acts_first[layer], max_positions=max_positions, seed=seed),
                              flatten_conv(acts_second[layer], max_positions=max_positions, seed=seed), variance=variance)
                 for layer in layers}
print(f"{'layer':<10} {'seed A vs seed B':>17} {'chance':>7} {'kept dims':>10}")
for layer, result in between_seeds.items():
    print(f"{layer:<10} {result.mean:17.3f} {result.chance:7.3f} {str(result.kept_dims):>10}")
bottleneck = [layer for layer in layers if layer.startswith("encoder")][-1]  # the last encoder block
highest = max(layers, key=lambda layer: between_seeds[layer].chance)
seed_values = [between_seeds[layer].mean for layer in layers]
highest_note = ("the highest of any layer" if highest == bottleneck else
                f"the highest is `{highest}`'s, {between_seeds[highest].chance:.2f}")
scale_sentence = (f"In this run the bottleneck (`{bottleneck}`) has a chance level of {between_seeds[bottleneck].chance:.2f} "
                  f"({highest_note}), and two seeds share from "
                  f"{min(seed_values):.2f} to {max(seed_values):.2f} per layer.")
display(Markdown(scale_sentence))

# %% [markdown]
# ## On real scans (reference record)
#
# The same analysis in the reference setting on COVID-SemiSeg's labelled slices: a width-16
# U-Net trained from scratch, and fine-tuned ("fine-tune all") from chapter 05's self-supervised
# restoration weights, read from the record committed with the book
# (`ci/book --reference --dataset covid-semiseg` regenerates it).

# %% tags=["hide-input"]
from covidlib.records import load_reference, reference_notice
from covidlib.results import markdown_table

reference = load_reference("06_svcca")
display(Markdown(reference_notice(reference, "06_svcca")))


def run_title(key: str) -> str:
    """A run of the record (``scratch``, ``scratch_seed2``, ``many_0``, ``few_1``) in words."""
    if key.startswith("scratch"):
        return "from scratch" + (" (second seed)" if key == "scratch_seed2" else "")
    condition, repeat = key.rsplit("_", 1)
    return f"fine-tuned on {condition} volumes (repeat {int(repeat) + 1})"


if reference is not None:
    ref = reference.numbers
    display(Markdown(f"Reference record, {ref['pretraining']}; best validation Dice: "
                     + "; ".join(f"{run_title(name)} {value:.3f}" for name, value in ref["best_val_dice"].items()) + "."))
    display(Markdown(markdown_table(
        [(layer, f"{ref['similarity_scratch'][layer]['0']:.2f}", f"{ref['similarity_finetune']['many'][layer]['0']:.2f}",
          f"{ref['between_seeds'][layer]:.2f}", f"{ref['chance_between_seeds'][layer]:.2f}") for layer in ref["layers"]],
        header=("layer", "scratch at step 0", "fine-tuned at step 0", "seed A vs seed B", "chance"))))

# %% mystnb={"figure": {"caption": "Reference record (COVID-SemiSeg): the SVCCA similarity of each layer at every snapshot with the same layer of the converged model, trained from scratch (left) and fine-tuned from the restoration-pretrained weights on the many-slice condition (right; * = re-initialised by the recipe). Without a committed record the panel says how to make one.", "name": "fig-06-reference"}, "image": {"alt": "Reference record (COVID-SemiSeg): the SVCCA similarity of each layer at every snapshot with the same layer of the converged model, trained from scratch (left) and fine-tuned from the restoration-pretrained weights on the many-slice condition (right; * = re-initialised by the recipe)"}}
from covidlib.viz import show_curves


def record_curves(curves: dict[str, dict[str, float]]) -> dict[str, dict[int, float]]:
    """A record's ``{layer: {"step": value}}`` as the figures' ``{layer: {step: value}}`` (converged left out)."""
    return {layer: {int(step): value for step, value in scores.items() if step != "converged"}
            for layer, scores in curves.items()}


if reference is None:
    figure = show_curves(None, title="SVCCA on real slices, reference record",
                         empty_message="No reference record yet: run ci/book --reference --dataset covid-semiseg --data-root DIR --chapters 06")
else:
    figure = plot_layer_curves({"from scratch": record_curves(ref["similarity_scratch"]),
                                "fine-tuned from restoration (many)": record_curves(ref["similarity_finetune"]["many"])},
                               title="Each layer vs its converged model, reference record (COVID-SemiSeg)",
                               marked=ref["reinitialised_layers"])
figure

# %% [markdown]
# ## 7. What the numbers do and do not support
#
# - **One training run is one sample.** Every curve in sections 3-4 is a single seed, as in the
#   report. The repeats of section 5 show how much the per-layer values move between seeds and
#   volume subsets: a difference between conditions smaller than the spread of the dots is not
#   a finding. With 2 repeats (quick) or 3 (full) the spread itself is poorly known; more
#   repeats, or a paired test over seeds, are needed before any claim about a single layer.
# - **Chance and the seed baseline set the scale.** SVCCA between unrelated layers is well above
#   0 for wide layers and few datapoints (the bottleneck most of all), and two equally good
#   networks from different seeds share only part of their representations (section 6 prints
#   both for this run, and the reference record's values are in the table above). A "low" similarity
#   only means "changed" when it is well below what a second seed gives.
# - **Weights and representations answer different questions.** A layer can move far in weight
#   space and keep its subspace (SVCCA is blind to invertible remixing of channels), or move
#   little and still change what its successors read. The two panels of section 5 need not
#   agree, and it is their agreement, not either alone, that supports "this layer was reused".
# - **Fewer volumes means fewer distinct slices, not fewer steps** in quick mode: both
#   conditions take the same number of optimizer steps, so a smaller movement with few volumes
#   is not just a shorter run. In full mode each run stops early on its own validation curve
#   (the report's recipe), and the few-volume runs take far fewer steps; their smaller movement
#   then mixes less data with less training, and the record gives each run's step count.
# - **The phantom is not a patient.** The quick runs train tiny networks for a few dozen steps on
#   synthetic volumes; they show how the analysis works and what it can detect, not how a full
#   U-Net behaves on real COVID-19 CT. The report's claims (encoder before decoder; less
#   movement of the encoder when fine-tuning) are about its real runs, one seed each.
#
# ## Summary
#
# SVCCA compares what layers compute, not their weights, and is blind to any invertible linear
# remixing of channels. `covidlib.svcca` computes it in float64 from Gram matrices, several
# times faster than the textbook SVD + QR route and equal to it to rounding. Tracked over
# snapshots, it shows when each layer of a U-Net settles; compared before and after
# fine-tuning, it shows which pretrained layers were reused. Read every value against its chance
# level and against a second seed, and every difference between conditions against the spread
# of repeats. {doc}`Chapter 07 <07_pseudo_labels>` reuses the pretrained encoder's features to pseudo-label unannotated
# scans.

# %% tags=["hide-input"]
from covidlib.results import write_record

numbers = {
    "layers": layers,
    "steps": {"scratch": scratch.step, **{f"{c}_{r}": t.step for (c, r), t in runs.items()}},
    "best_val_dice": {"scratch": scratch.best_metric, "scratch_seed2": second.best_metric,
                      **{f"{c}_{r}": t.best_metric for (c, r), t in runs.items()}},
    "similarity_scratch": {layer: {str(k): v for k, v in scores.items()} for layer, scores in scratch_similarity.items()},
    "similarity_finetune": {c: {layer: {str(k): v for k, v in scores.items()} for layer, scores in sim.items()}
                            for c, sim in finetune_similarity.items()},
    "weight_distance": distances,
    "similarity_start_end": similarities,
    "between_seeds": {layer: r.mean for layer, r in between_seeds.items()},
    "chance_between_seeds": {layer: r.chance for layer, r in between_seeds.items()},
    "reinitialised_layers": reinitialised,
    "pretraining": pretraining_summary,
    "probe_slices": int(probes.shape[0]),
    "preparation": covid_cases[0].meta["steps"],
}
record_path = write_record(output_dir, "06_svcca", parameters=dict(dataset=dataset, data_root=data_root, setting=setting, device=device, seed=seed,
                                                                   variance=variance, many_volumes=n_many, few_volumes=n_few,
                                                                   repeats=n_repeats, snapshot_interval=interval),
                           numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"probe slices {tuple(probes.shape)}, layers {len(layers)}, steps a run {scratch.step}")
print("SVCCA with the converged model at step 0 (scratch, fine-tune many/few), mean weight distance, seed baseline")
print(f"{'layer':<10} {'scratch@0':>9} {'many@0':>7} {'few@0':>6} {'dist many':>10} {'dist few':>9} {'seeds':>6}")
for layer in layers:
    print(f"{layer:<10} {scratch_similarity[layer][0]:9.2f} {finetune_similarity['many'][layer][0]:7.2f} "
          f"{finetune_similarity['few'][layer][0]:6.2f} "
          f"{np.mean(distances[conditions['many']][layer]):10.2f} {np.mean(distances[conditions['few']][layer]):9.2f} "
          f"{between_seeds[layer].mean:6.2f}")
