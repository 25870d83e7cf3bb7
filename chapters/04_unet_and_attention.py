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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/covid-ct-book/covid-ct-book/blob/main/chapters/04_unet_and_attention.ipynb)
#
# # 04. U-Net and attention U-Net
#
# **What you will learn**
#
# - how the {term}`U-Net` of {cite:t}`ronneberger2015unet` is put together, read off a live model as the
#   layer table of the original paper (input 572, output 388, no padding) next to the padded
#   version this book trains;
# - the additive {term}`attention gate <Attention gate>` of {cite:t}`oktay2018attention`, written from its equations and checked
#   against the library, and what its attention maps look like after training;
# - the four losses the report discusses — cross entropy, soft Dice, their sum, and the
#   distance-transform Hausdorff loss — compared on the same data;
# - the training recipe of the report (Adam, learning rate 2e-4 decayed by 0.8 every 25 epochs,
#   best model by validation Dice, early stop after 30 epochs without improvement), with
#   learning curves and Dice on held-out volumes for both networks;
# - how the networks, the losses and bfloat16 training compare on real COVID-19 CT slices
#   (COVID-SemiSeg) with nested cross-validation, paired differences and their confidence intervals.
#
# **Prerequisites** chapters {doc}`02 <02_data_and_preprocessing>` (preprocessing) and
# {doc}`03 <03_augmentation>` (augmentation, slices and splits).
#
# **Run time** quick: ~1.5 min CPU (small networks, few epochs); reference (COVID-SemiSeg,
# nested 5-fold cross-validation of small networks): about 15 min at one thread on a 2-core
# first-generation AMD EPYC in float32; full: the
# report's settings, hours on a GPU.

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
losses = ["ce", "dice", "ce+dice", "hd"]
network_loss = "ce+dice"
amp = "auto"  # "bf16" trains in bfloat16 on a CPU too (faster; see section 4)
empty_fraction = 0.5
cv_dir = ""  # folder of the nested-CV runs (one JSON per seed and fold; re-run to resume); empty: under output_dir

# %%
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from torch import nn

from covidlib.augment import default_augmentation
from covidlib.config import choose, cpu_supports_bf16, format_summary, get_device, runtime_summary, seed_everything
from covidlib.crossval import fold_means, run_nested_cv
from covidlib.data import SliceDataset, seeded_loader, split_volumes
from covidlib.datasets import get_dataset
from covidlib.inference import prepare_slices
from covidlib.models import AttentionGate, AttentionUNet2d, UNet2d
from covidlib.recipe import Recipe
from covidlib.records import load_reference, reference_notice
from covidlib.results import format_change, interval_side, markdown_table, write_record
from covidlib.statistics import paired_bootstrap_ci, summarise_runs
from covidlib.train import TrainConfig, Trainer, evaluate, resolve_amp
from covidlib.viz import show_attention_maps, show_grouped_values, show_learning_curves

seed_everything(seed)
# The quick and reference networks are narrow: a second thread adds little, and on a shared CPU
# its synchronisation stalls every step.
threads = choose(setting, quick=1, reference=1, full=torch.get_num_threads())
torch.set_num_threads(threads)
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# Sections 3-7 train on one split: a small cohort at 3 mm pixels, narrow networks and a few
# epochs at a higher learning rate (quick and reference: the reference setting spends its time on
# section 8); full: the report's settings (1 mm pixels, 256 x 256 slices, U-Net widths 64..1024,
# Adam 2e-4, StepLR 0.8 / 25 epochs, up to 500 epochs, patience 30).
n_volumes, phantom_shape, n_test, n_val = choose(setting, quick=(10, (16, 128, 128), 2, 2),
                                                 reference=(10, (16, 128, 128), 2, 2), full=(40, (64, 128, 128), 10, 8))
pixel_mm, slice_size = choose(setting, quick=(3.0, (64, 96)), reference=(3.0, (64, 96)), full=(1.0, (256, 256)))
base_width, depth = choose(setting, quick=(8, 3), reference=(8, 3), full=(64, 4))
epochs, lr, step_size, patience = choose(setting, quick=(12, 1e-3, 6, 12), reference=(12, 1e-3, 6, 12),
                                         full=(500, 2e-4, 25, 30))
batch_size = 8
# Section 8: nested cross-validation on real slices (none in quick). One recipe for every arm;
# an arm changes one thing. amp="auto" is resolved here so that the arm that matches the
# precision comparison's is the same recipe, trained once.
training_device = get_device(device)
cv_amp = {None: "off", torch.bfloat16: "bf16"}.get(resolve_amp(amp, training_device), amp)
cv_recipe = choose(setting, quick=None,
                   reference=Recipe(image_size=64, base_width=8, depth=4, epochs=24, lr=1e-3, step_size=8,
                                    patience=8, batch_size=4, loss=network_loss, amp=cv_amp, tta=False),
                   full=Recipe(image_size=256, base_width=64, depth=4, epochs=500, lr=2e-4, step_size=25,
                               patience=30, batch_size=8, loss=network_loss, amp=cv_amp, tta=False))
cv_folds = choose(setting, quick=0, reference=5, full=5)
precision_seeds, precision_folds = choose(setting, quick=((), ()), reference=((seed, seed + 1), (0, 1)),
                                          full=((seed, seed + 1, seed + 2), (0, 1, 2, 3, 4)))

# %% [markdown]
# ## 1. The U-Net, read off the model
#
# A U-Net has a contracting path (two 3x3 convolutions with ReLU, then 2x2 max pooling, the
# number of channels doubling at each level) and an expanding path (a 2x2 "up-convolution"
# that doubles the size and halves the channels, concatenation with the encoder features of
# the same level, two 3x3 convolutions), closed by a 1x1 convolution to the classes. In the
# original paper the convolutions are not padded: each one trims a pixel from every border, a
# 572 x 572 input gives a 388 x 388 output, and the encoder features are cropped before they
# are concatenated. The book's `UNet2d` pads the convolutions (and adds batch normalisation), so
# sizes stay put and nothing is cropped — the standard choice today and what the report trains.
#
# The table below is not typed in: it walks the layers of `UNet2d(base_width=64, depth=4)` — the
# paper's widths — and computes two sizes for each: the paper's, from each layer's kernel and
# stride without padding, starting at 572; and ours, recorded by forward hooks on a 256 x 256
# input. (The report's Table 4.1 copies the paper's table with two slips: its decoder
# convolutions are labelled 1x1 where they are 3x3, and its last rows skip a convolution.)

# %%
reference = UNet2d(in_channels=1, num_classes=2, base_width=64, depth=4)


def layers_in_order(model: UNet2d) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the convolutions, poolings and up-convolutions in forward order."""
    def convolutions(block: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
        return [(prefix, m) for m in block.modules() if isinstance(m, nn.Conv2d)]

    ordered = []
    for level, block in enumerate(model.encoder):
        ordered += convolutions(block, f"encoder {level}")
        if level < model.depth:
            ordered.append((f"encoder {level}", model.pool))
    for step, up_block in enumerate(model.decoder):
        level = model.depth - 1 - step
        ordered.append((f"decoder {level}", up_block.up))
        ordered += convolutions(up_block.conv, f"decoder {level}")
    ordered.append(("head", model.head))
    return ordered


def describe(layer: nn.Module) -> str:
    if isinstance(layer, nn.MaxPool2d):
        return "max pool 2x2"
    if isinstance(layer, nn.ConvTranspose2d):
        return "up-conv 2x2"
    k = layer.kernel_size[0]
    return f"conv {k}x{k}" + (" + BN + ReLU" if k == 3 else "")


def paper_size(layer: nn.Module, size: int) -> int:
    """Output size of ``layer`` as in the paper: convolutions without padding."""
    if isinstance(layer, nn.MaxPool2d):
        return size // 2
    if isinstance(layer, nn.ConvTranspose2d):
        return (size - 1) * layer.stride[0] + layer.kernel_size[0]
    return size - (layer.kernel_size[0] - 1)


ordered = layers_in_order(reference)
recorded = {}


def recorder(idx: int):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        recorded[idx] = (inputs[0].shape, output.shape)
    return hook


hooks = [layer.register_forward_hook(recorder(idx))
         for idx, (_, layer) in enumerate(ordered) if not isinstance(layer, nn.MaxPool2d)]
with torch.no_grad():
    reference.eval()
    ours_input = torch.zeros(1, 1, 256, 256)
    features = reference.encode(ours_input)
    pooled_sizes = [f.shape[-1] // 2 for f in features[:-1]]
    reference.decode(features)
for hook in hooks:
    hook.remove()

rows, size, pool_index = [], 572, 0
for idx, (name, layer) in enumerate(ordered):
    new_size = paper_size(layer, size)
    if isinstance(layer, nn.MaxPool2d):
        channels = rows[-1]["out"]
        ours = (rows[-1]["ours_out"], pooled_sizes[pool_index])
        pool_index += 1
        in_channels = channels
    else:
        in_shape, out_shape = recorded[idx]
        in_channels, channels = in_shape[1], out_shape[1]
        ours = (in_shape[-1], out_shape[-1])
    rows.append({"part": name, "layer": describe(layer), "in": in_channels, "out": channels,
                 "paper": (size, new_size), "ours_in": ours[0], "ours_out": ours[1]})
    size = new_size

print(f"{'part':<10} {'layer':<21} {'channels':>12}   {'paper (no padding)':>18}   {'book (padding 1)':>16}")
for row in rows:
    print(f"{row['part']:<10} {row['layer']:<21} {row['in']:>5} -> {row['out']:<4}   "
          f"{row['paper'][0]:>7} -> {row['paper'][1]:<7}   {row['ours_in']:>6} -> {row['ours_out']:<6}")
n_parameters = sum(p.numel() for p in reference.parameters())
print(f"parameters: {n_parameters:,}")
assert rows[0]["paper"] == (572, 570) and rows[-1]["paper"][1] == 388 and rows[-1]["out"] == 2
assert rows[-1]["ours_out"] == 256

# %% [markdown]
# The paper's output is 388 pixels for a 572 input, exactly as its Figure 1 says; the padded
# network returns the input's size. Channels run 64, 128, 256, 512 and 1024 at the bottleneck.
# With batch normalisation and no convolution biases the network has about 31 million
# parameters; the book's quick mode uses the same layout with width 8 and depth 3 (three poolings).
#
# ## 2. The attention gate
#
# {cite:t}`oktay2018attention` let the decoder decide which parts of a skip connection to pass on. For
# the skip features $x_i^l$ at pixel $i$ of level $l$ and a gating signal $g$ taken from the
# coarser level below, the additive attention coefficient is
#
# $$q_{att,i}^l = \psi^T\, \sigma_1\!\left(W_x^T x_i^l + W_g^T g_i + b_{xg}\right) + b_\psi,
# \qquad \alpha_i^l = \sigma_2\!\left(q_{att,i}^l\right),$$
#
# with $\sigma_1$ the ReLU and $\sigma_2$ the sigmoid, and the gate passes on
# $\hat{x}_i^l = \alpha_i^l x_i^l$. $W_x$, $W_g$ and $\psi$ are 1x1 convolutions (linear maps of
# the channel vector at each pixel). The report describes $\sigma_2$ as a function that makes
# the coefficients sum to one (a softmax over pixels); the paper and the book use the sigmoid,
# which lets several separate regions be switched on at once, as multifocal COVID-19 lesions
# need. Since $g$ is coarser than $x$, $W_g^T g$ is resized to the skip's grid (bilinear).
#
# Below, the gate written with nothing but matrix products, then compared with the library's
# `AttentionGate` carrying the same weights.

# %%
def attention_gate_from_scratch(x: torch.Tensor, g: torch.Tensor, w_x: torch.Tensor, w_g: torch.Tensor,
                                b_xg: torch.Tensor, psi: torch.Tensor, b_psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, Cx, H, W), g (B, Cg, h, w); w_x (F, Cx), w_g (F, Cg), b_xg (F,), psi (F,), b_psi ()."""
    gating = torch.einsum("fc,bchw->bfhw", w_g, g) + b_xg[:, None, None]
    gating = F.interpolate(gating, size=x.shape[-2:], mode="bilinear", align_corners=False)
    q = torch.einsum("f,bfhw->bhw", psi, torch.relu(torch.einsum("fc,bchw->bfhw", w_x, x) + gating)) + b_psi
    alpha = torch.sigmoid(q)[:, None]
    return alpha * x, alpha


torch.manual_seed(seed)
gate = AttentionGate(skip_channels=16, gating_channels=32, inter_channels=8)
skip, gating_signal = torch.randn(2, 16, 24, 24), torch.randn(2, 32, 12, 12)
with torch.no_grad():
    library_out, library_alpha = gate(skip, gating_signal)
    scratch_out, scratch_alpha = attention_gate_from_scratch(
        skip, gating_signal, gate.skip_projection.weight[:, :, 0, 0], gate.gating_projection.weight[:, :, 0, 0],
        gate.gating_projection.bias, gate.psi.weight[0, :, 0, 0], gate.psi.bias[0])
gate_error = float(max((library_out - scratch_out).abs().max(), (library_alpha - scratch_alpha).abs().max()))
print(f"attention map {tuple(library_alpha.shape)}, values in ({library_alpha.min():.3f}, {library_alpha.max():.3f}); "
      f"largest difference from scratch vs library: {gate_error:.1e}")
assert gate_error < 1e-5

# %% [markdown]
# ## 3. Data: phantom volumes, split by volume
#
# The chapter trains on the built-in phantom (or another dataset by the `dataset` parameter),
# preprocessed as in {doc}`chapter 02 <02_data_and_preprocessing>`: lungs masked, cropped, resampled in-plane, z-scored inside the
# lungs. Whole volumes go to the test set, the validation set (used for early stopping and
# choosing the best epoch) and the training set; slices are cut only afterwards, so no volume
# is on both sides of a split. Training slices get the report's augmentation ({doc}`chapter 03 <03_augmentation>`,
# {numref}`Fig. {number} there <fig-03-random-draws>`); only
# a share `empty_fraction` of the training slices without infection is kept.

# %%
source = (get_dataset("phantom", n=n_volumes, shape=phantom_shape, seed=seed) if dataset == "phantom"
          else get_dataset(dataset, data_root or None))
prepared = prepare_slices(source, method="lung-crop", spacing_mm=pixel_mm)
print("preparation:", "; ".join(prepared.steps))
all_ids = list(prepared.labelled)
trainval_ids, test_ids = split_volumes(all_ids, n_test, seed)
train_ids, val_ids = split_volumes(trainval_ids, n_val, seed)


def slices(ids: list[str], training: bool) -> SliceDataset:
    return SliceDataset([prepared.labelled[cid] for cid in ids], case_ids=ids, output_size=slice_size,
                        empty_fraction=empty_fraction if training else 1.0,
                        transform=default_augmentation() if training else None, seed=seed)


train_slices, val_slices, test_slices = slices(train_ids, True), slices(val_ids, False), slices(test_ids, False)
for name, part in (("train", train_slices), ("validation", val_slices), ("test", test_slices)):
    print(f"{name:<10} {len(part.case_ids)} volumes, {len(part):>4} slices ({part.num_lesion_slices} with infection)")

# %% [markdown]
# ## 4. The training recipe
#
# `covidlib.train.Trainer` carries the report's recipe as its defaults: Adam at learning rate
# 2e-4, multiplied by 0.8 every 25 epochs, validation after every epoch, the model with the best
# validation {term}`Dice` kept, and a stop after 30 epochs without improvement (at most 500). It writes
# `last.pt` after every epoch and `best.pt` when the validation Dice improves, and a run that is
# killed resumes from `last.pt` to the same weights as a run that never stopped (tested in
# `tests/test_train.py`). Quick mode keeps the recipe's shape but trains few epochs, so it uses
# a higher learning rate. `amp="auto"` trains in bfloat16 (or float16) on a GPU; on the CPU it
# takes bfloat16 only where the CPU has native bfloat16 kernels (AVX512-BF16 or AMX,
# `covidlib.config.cpu_supports_bf16`): elsewhere PyTorch emulates them and a step gets slower, not
# faster. Losses, softmax and Dice are computed in float32 either way. Whether bfloat16 costs
# accuracy, and what it saves in time, is measured in section 8 on real slices: the same seeds and
# folds trained in both precisions.

# %%
amp_dtype = resolve_amp(amp, training_device)
print(f"device {training_device.type}"
      + (f" (native bfloat16 kernels on this CPU: {cpu_supports_bf16()})" if training_device.type == "cpu" else "")
      + f"; amp={amp!r} trains in {'float32' if amp_dtype is None else str(amp_dtype).removeprefix('torch.')} here")

# %% [markdown]
# ## 5. Four losses on the same data
#
# With softmax probabilities $p$, one-hot targets $g$ and $N$ pixels:
#
# - **cross entropy** $-\frac{1}{N}\sum_i \sum_c g_{ic} \log p_{ic}$ — every pixel counts the
#   same, so the many background pixels dominate;
# - **soft Dice** $1 - \frac{2\sum_i p_i g_i}{\sum_i p_i^2 + \sum_i g_i^2}$ (V-Net) on the
#   infection class — a region overlap, insensitive to class imbalance;
# - **CE + Dice**, the compound the loss survey the report cites found reliable;
# - **Hausdorff loss** $\frac{1}{N}\sum_i (p_i - g_i)^2 (d_{G,i}^2 + d_{S,i}^2)$ {cite}`karimi2019hausdorff`
#   with $d_G$, $d_S$ the distances to the true and predicted boundaries — errors far
#   from a boundary cost more. (The report writes $(s_i - g_i)$ unsquared, which can go
#   negative; the paper squares it.)
#
# The same U-Net, the same seed and the same batches are trained with each ({numref}`fig-04-losses`).

# %%
def train(network: type[UNet2d], loss: str) -> tuple[Trainer, dict]:
    """Train ``network`` with ``loss``; return the trainer (best weights loaded) and test metrics."""
    torch.manual_seed(seed)
    model = network(in_channels=1, num_classes=2, base_width=base_width, depth=depth)
    config = TrainConfig(epochs=epochs, lr=lr, step_size=step_size, patience=patience, loss=loss, amp=amp,
                         seed=seed, device=device, progress=False)
    trainer = Trainer(model, config)
    trainer.fit(seeded_loader(train_slices, batch_size, shuffle=True, seed=seed),
                seeded_loader(val_slices, batch_size, shuffle=False, seed=seed))
    test = evaluate(trainer.model, seeded_loader(test_slices, batch_size, shuffle=False, seed=seed),
                    trainer.device, amp=trainer.amp_dtype)
    return trainer, test


runs = {}
for loss in losses:
    runs[loss] = train(UNet2d, loss)
    trainer, test = runs[loss]
    print(f"U-Net, {loss:<8} best epoch {trainer.best_epoch:>3}, validation Dice {trainer.best_metric:.3f}, "
          f"test Dice {test['summary']['dice']['mean']:.3f} (volumes: "
          + ", ".join(f"{row['dice']:.3f}" for row in test["per_case"].values()) + ")")

# %% mystnb={"figure": {"caption": "The same small U-Net trained with cross entropy, soft Dice, their sum and the Hausdorff loss: training loss relative to its first epoch (left) and validation Dice per epoch (right), a dot at each run's best epoch, the model kept. On this little data the order of the runs is noise; how each curve rises is the point.", "name": "fig-04-losses"}, "image": {"alt": "The same small U-Net trained with cross entropy, soft Dice, their sum and the Hausdorff loss: training loss relative to its first epoch (left) and validation Dice per epoch (right), a dot at each run's best epoch, the model kept"}}
show_learning_curves({loss: runs[loss][0].history for loss in losses},
                     title=f"U-Net (width {base_width}, depth {depth}) with four losses")

# %% [markdown]
# On small data the comparison is noisy: read it as how each loss behaves (how fast Dice rises,
# whether it is stable), not as a ranking. Cross entropy alone starts slowly when infection is a
# small share of the pixels; Dice-based losses push the overlap directly. The Hausdorff loss
# weights errors by their distance to the boundaries and is usually paired with a region loss.
#
# ## 6. U-Net and attention U-Net
#
# The attention U-Net is the U-Net with a gate on every skip connection (the channels of the
# gate's intermediate layer are half the skip's, as in the paper's code). Both train with
# `network_loss` ({numref}`fig-04-networks`).

# %% mystnb={"figure": {"caption": "Learning curves of the U-Net and the attention U-Net trained with the same loss (`network_loss`, CE + Dice by default): training loss relative to epoch 1 (left) and validation Dice, with the kept epoch dotted (right).", "name": "fig-04-networks"}, "image": {"alt": "Learning curves of the U-Net and the attention U-Net trained with the same loss (network_loss, CE + Dice by default): training loss relative to epoch 1 (left) and validation Dice, with the kept epoch dotted (right)"}}
unet_trainer, unet_test = runs[network_loss] if network_loss in runs else train(UNet2d, network_loss)
attention_trainer, attention_test = train(AttentionUNet2d, network_loss)
networks = {"U-Net": (unet_trainer, unet_test), "attention U-Net": (attention_trainer, attention_test)}
for name, (trainer, test) in networks.items():
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"{name:<16} {n_params:>9,} parameters, best epoch {trainer.best_epoch:>3}, validation Dice "
          f"{trainer.best_metric:.3f}, test Dice {test['summary']['dice']['mean']:.3f} ± {test['summary']['dice']['sd']:.3f} "
          f"(sd over {len(test_ids)} test volumes)")
show_learning_curves({name: trainer.history for name, (trainer, _) in networks.items()},
                     title=f"U-Net vs attention U-Net ({network_loss})")

# %% [markdown]
# ## 7. Where the gates look
#
# After a forward pass, `AttentionUNet2d.attention_maps` holds the coefficients $\alpha$ of each
# gate, coarsest level first. {numref}`fig-04-attention` shows test slices with the most infection: the image
# with the true infection outlined, the predicted probability, and the gates of the finest and
# the next coarser level.

# %% mystnb={"figure": {"caption": "The three test slices with the most infection, one per row: the z-scored image (grey scale [-3, 3]) with the true infection outlined, the attention U-Net's predicted infection probability, and the coefficients \u03b1 of its two finest attention gates (upsampled by nearest neighbour, so the coarser gate keeps its blocky grid). After a short quick-mode training the gate maps are still rough.", "name": "fig-04-attention"}, "image": {"alt": "The three test slices with the most infection, one per row: the z-scored image (grey scale [-3, 3]) with the true infection outlined, the attention U-Net's predicted infection probability, and the coefficients \u03b1 of its two finest attention gates (upsampled by nearest neighbour, so the coarser gate keeps its blocky grid)"}}
lesion_counts = [int(test_slices[i]["mask"].sum()) for i in range(len(test_slices))]
chosen = list(np.argsort(lesion_counts)[::-1][:3])
images = torch.stack([test_slices[int(i)]["image"] for i in chosen])
masks = torch.stack([test_slices[int(i)]["mask"] for i in chosen]).numpy()
model = attention_trainer.model.eval()
with torch.no_grad():
    probabilities = torch.softmax(model(images.to(attention_trainer.device)).float(), dim=1)[:, 1].cpu().numpy()
maps = model.attention_maps
levels = {f"level {depth - 1 - j} ({m.shape[-2]}x{m.shape[-1]})": m[:, 0].float().cpu().numpy()
          for j, m in enumerate(maps)}
finest_two = dict(list(levels.items())[-2:])
show_attention_maps(images[:, 0].numpy(), masks, probabilities, finest_two,
                    title="Attention U-Net on test slices (grey scale [-3, 3] z-score)")

# %%
inside = float(np.mean([maps[-1][k, 0].cpu().numpy()[masks[k] == 1].mean() for k in range(len(chosen))]))
outside = float(np.mean([maps[-1][k, 0].cpu().numpy()[masks[k] == 0].mean() for k in range(len(chosen))]))
print(f"finest gate: mean alpha {inside:.3f} on infection, {outside:.3f} elsewhere")

# %% [markdown]
# The gates are trained only through the segmentation loss; nothing tells them where the
# infection is. Whether their maps concentrate on it depends on how long and on how much data
# the network has trained; in quick mode, after a few epochs, expect rough maps.
#
# ## 8. On real scans: nested cross-validation on COVID-SemiSeg
#
# One split of a few volumes cannot rank networks or losses: the test set is too small and
# the same slices pick the epoch. The reference setting therefore compares them on the 50
# labelled slices of COVID-SemiSeg with nested 5-fold cross-validation (`covidlib.crossval`):
# each slice is tested exactly once, in its outer fold; inside the other four folds an inner
# validation split picks the epoch, so the test slices never choose anything. Every arm uses the
# same recipe, the same folds and the same seed and changes one thing: (a) the network (U-Net or
# attention U-Net, CE + Dice), (b) the loss of the U-Net, (c) the precision of the U-Net's
# training, float32 or bfloat16, on several seeds and a few folds. Each arm is scored by Dice at
# threshold 0.5 and by Inf-Net's mean Dice over 256 thresholds (the number published results on
# this dataset use), per slice at its own resolution, averaged per fold. A difference between two
# arms is taken fold by fold (paired) with a 95 % bootstrap interval; with five folds such an
# interval is rough and too narrow rather than too wide, so read it with its `n`.
#
# The slices are COVID-SemiSeg's 8-bit windowed images: there are no Hounsfield units to window
# and no volume to crop to the lungs, so the networks see each slice windowed and z-scored as
# `python -m covidlib train` does (`prepare_slices`), resized to the recipe's square. In quick mode
# this section trains nothing and shows the committed reference record.

# %% tags=["hide-input"]
def summarise_arm(results: list[dict]) -> dict:
    """What the page needs of one arm's nested-CV results, units in (seed, fold) order."""
    curves = [[row["val_dice"] for row in result["history"]] for result in results]
    losses_by_epoch = [[row["train_loss"] / result["history"][0]["train_loss"] for row in result["history"]]
                       for result in results]

    def mean_curve(runs: list[list[float]]) -> list[float]:  # mean over the runs still training at each epoch
        return [round(float(np.mean([run[e] for run in runs if len(run) > e])), 4) for e in range(max(map(len, runs)))]

    return {
        "units": [[result["seed"], result["fold"]] for result in results],
        "dice": [value for values in fold_means(results, "dice").values() for value in values],
        "infnet_mean_dice": [value for values in fold_means(results, "infnet_mean_dice").values() for value in values],
        "best_epoch": [result["best_epoch"] for result in results],
        "epochs_run": [result["epochs_run"] for result in results],
        "epoch_seconds": float(np.mean([row["seconds"] for result in results for row in result["history"]])),
        # CPU time (training and scoring) per epoch: steadier than wall time on a shared machine
        "epoch_cpu_seconds": float(np.mean([result["cpu_seconds"] / result["epochs_run"] for result in results])),
        "val_dice_curve": mean_curve(curves),
        "relative_train_loss_curve": mean_curve(losses_by_epoch),
        "recipe": results[0]["recipe"],
    }


def compare(arms: dict, first: str, second: str, metric: str) -> dict:
    """Paired difference second - first of ``metric`` over the units both arms share."""
    shared = [unit for unit in arms[first]["units"] if unit in arms[second]["units"]]

    def pick(arm: str) -> list[float]:
        return [arms[arm][metric][arms[arm]["units"].index(unit)] for unit in shared]

    return {"first": first, "second": second, "metric": metric,
            **paired_bootstrap_ci(pick(first), pick(second), seed=seed).as_dict()}


def arm_rows(arms: dict) -> list[tuple[str, ...]]:
    rows = []
    for name, arm in arms.items():
        dice, infnet = (summarise_runs(np.asarray(arm[m])[:, None]) for m in ("dice", "infnet_mean_dice"))
        rows.append((name, f"{dice['mean']:.3f} ± {dice['sd_folds']:.3f}", f"{infnet['mean']:.3f} ± {infnet['sd_folds']:.3f}",
                     ", ".join(f"{v:.2f}" for v in arm["dice"]), f"{np.mean(arm['best_epoch']):.0f}",
                     f"{arm.get('epoch_cpu_seconds', float('nan')):.2f}"))  # nan: a record from before it was kept
    return rows


def comparison_rows(comparisons: list[dict]) -> list[tuple[str, ...]]:
    metric_names = {"dice": "Dice at 0.5", "infnet_mean_dice": "Inf-Net mean Dice"}
    return [(f"{c['second']} − {c['first']}", metric_names[c["metric"]], f"{format_change(c['mean_difference'])}",
             f"[{format_change(c['low'])}, {format_change(c['high'])}]", str(c["n"])) for c in comparisons]


def show_cv_tables(numbers: dict, source_label: str) -> None:
    header = ("arm", "Dice at 0.5 (mean ± sd over folds)", "Inf-Net mean Dice", "Dice per fold (seed by seed)",
              "mean best epoch", "CPU s per epoch")
    display(Markdown(f"**{source_label}: arms, {numbers['folds']}-fold nested CV, seed {numbers['seed']}**\n\n"
                     + markdown_table(arm_rows(numbers["arms"]), header)))
    display(Markdown(f"**{source_label}: float32 and bfloat16 training, seeds × folds "
                     f"{sorted({u[0] for u in numbers['precision']['float32']['units']})} × "
                     f"{sorted({u[1] for u in numbers['precision']['float32']['units']})}**\n\n"
                     + markdown_table(arm_rows(numbers["precision"]), header)))
    compute = numbers.get("compute") or {"trainings": "?", "cpu_seconds": float("nan"), "wall_seconds": float("nan")}
    display(Markdown(f"{source_label}: {compute['trainings']} distinct trainings (training and scoring) took "
                     f"{compute['cpu_seconds'] / 60:.1f} min CPU and {compute['wall_seconds'] / 60:.1f} min wall when "
                     f"they were computed, {numbers['threads']} thread(s); a re-run reads them back from `cv_dir`."))
    display(Markdown(f"**{source_label}: paired differences (95 % bootstrap interval over the shared folds)**\n\n"
                     + markdown_table(comparison_rows(numbers["comparisons"]),
                                      ("difference", "metric", "mean", "95 % interval", "n"))))


# %%
cv_numbers = None
if cv_folds:
    cv_root = Path(cv_dir or Path(output_dir) / f"04_cv_{setting}_{dataset}")
    cv_prepared = prepare_slices(source, cv_recipe.image_size)
    print("preparation:", "; ".join(cv_prepared.steps))
    arm_recipes = {f"U-Net, {loss}": replace(cv_recipe, model="unet", loss=loss) for loss in losses}
    arm_recipes[f"attention U-Net, {network_loss}"] = replace(cv_recipe, model="attention-unet")
    cv_runs = {}  # every distinct training once (arms that share a recipe share its runs)

    def cross_validate(recipe: Recipe, seeds: tuple, fold_indices: tuple | None = None) -> dict:
        results = run_nested_cv(source, cv_prepared, recipe, cv_root, folds=cv_folds, seeds=seeds,
                                fold_indices=fold_indices, checkpoints=False, progress=False)
        cv_runs.update({(str(r["recipe"]), r["seed"], r["fold"]): r for r in results})
        return summarise_arm(results)

    arms = {name: cross_validate(recipe, (seed,)) for name, recipe in arm_recipes.items()}
    precision = {label: cross_validate(replace(cv_recipe, amp=value), precision_seeds, precision_folds)
                 for label, value in (("float32", "off"), ("bfloat16", "bf16"))}
    baseline = f"U-Net, {network_loss}"
    comparisons = [compare(arms, baseline, f"attention U-Net, {network_loss}", metric)
                   for metric in ("dice", "infnet_mean_dice")]
    comparisons += [compare(arms, baseline, f"U-Net, {loss}", metric)
                    for loss in losses if loss != network_loss for metric in ("dice", "infnet_mean_dice")]
    comparisons += [compare(precision, "float32", "bfloat16", metric) for metric in ("dice", "infnet_mean_dice")]
    cv_numbers = {"folds": cv_folds, "seed": seed, "preparation": cv_prepared.steps, "arms": arms,
                  "precision": precision, "comparisons": comparisons,
                  "device": training_device.type, "cpu_native_bf16": cpu_supports_bf16(), "threads": threads,
                  "compute": {"trainings": len(cv_runs),
                              "cpu_seconds": sum(r["cpu_seconds"] for r in cv_runs.values()),
                              "wall_seconds": sum(r["wall_seconds"] for r in cv_runs.values())}}

if cv_numbers is not None:
    show_cv_tables(cv_numbers, "This run")

# %% [markdown]
# ### The reference record
#
# The committed record of this chapter's reference run on COVID-SemiSeg (the tables above appear
# only when this run is itself a reference or full run):

# %% tags=["hide-input"]
reference = load_reference("04_unet_and_attention")
display(Markdown(reference_notice(reference, "04_unet_and_attention")))
recorded = reference.numbers.get("cv") if reference is not None else None
if recorded is not None:
    show_cv_tables(recorded, "Reference record")
shown, shown_label = (cv_numbers, "this run") if cv_numbers is not None else (recorded, "the reference record")

# %% mystnb={"figure": {"caption": "Dice at 0.5 of each outer test fold (dots) and its mean over folds (bar) for every arm of the nested cross-validation on COVID-SemiSeg: the two networks and the four losses, then float32 and bfloat16 training on the seeds and folds of the precision comparison. From this run when it cross-validated, else from the committed reference record.", "name": "fig-04-cv-folds"}, "image": {"alt": "Dice at 0.5 of each outer test fold (dots) and its mean over folds (bar) for every arm of the nested cross-validation on COVID-SemiSeg: the two networks and the four losses, then float32 and bfloat16 training on the seeds and folds of the precision comparison"}}
fold_groups = None
if shown is not None:
    fold_groups = {name: arm["dice"] for name, arm in shown["arms"].items()}
    fold_groups.update({f"{name} (precision)": arm["dice"] for name, arm in shown["precision"].items()})
show_grouped_values(fold_groups, ylabel="Dice at 0.5 per outer fold",
                    title=f"Nested CV on COVID-SemiSeg ({shown_label})",
                    empty_message="No cross-validation here: quick mode trains none, and no reference record is committed yet.")

# %% mystnb={"figure": {"caption": "Mean learning curves of the cross-validated arms on COVID-SemiSeg: training loss relative to its first epoch and inner-validation Dice per epoch, averaged over the folds still training at that epoch (early stopping ends folds at different epochs), the dot at the best mean. From this run when it cross-validated, else from the committed reference record.", "name": "fig-04-cv-curves"}, "image": {"alt": "Mean learning curves of the cross-validated arms on COVID-SemiSeg: training loss relative to its first epoch and inner-validation Dice per epoch, averaged over the folds still training at that epoch (early stopping ends folds at different epochs), the dot at the best mean"}}
curves_figure = show_grouped_values(
    None, title="Learning curves, mean over folds",
    empty_message="No cross-validation here: quick mode trains none, and no reference record is committed yet.")
if shown is not None:
    curves_figure = show_learning_curves(
        {name: [{"epoch": e + 1, "train_loss": loss, "val_dice": dice} for e, (loss, dice)
                in enumerate(zip(arm["relative_train_loss_curve"], arm["val_dice_curve"]))]
         for name, arm in shown["arms"].items()},
        title=f"Learning curves, mean over folds ({shown_label})")
curves_figure

# %% tags=["hide-input"]
if shown is not None:
    by_metric = {(c["second"], c["metric"]): c for c in shown["comparisons"]}
    attention = by_metric[(f"attention U-Net, {network_loss}", "dice")]
    bf16 = by_metric[("bfloat16", "dice")]
    on_cpu = shown["device"] == "cpu"
    time_key = "epoch_cpu_seconds" if on_cpu else "epoch_seconds"  # a GPU's work is not the process's CPU time
    ratio = shown["precision"]["bfloat16"][time_key] / shown["precision"]["float32"][time_key]

    def reading(comparison: dict, higher: str, lower: str) -> str:
        """What a paired 95 % interval says: which arm scored higher, or that it cannot tell."""
        side = interval_side(comparison)
        meaning = {"lies above 0": f"{higher} scored higher on these folds",
                   "lies below 0": f"{higher} scored lower than {lower} on these folds",
                   "includes 0": f"the data cannot tell {higher} from {lower} at this size"}[side]
        return f"its interval {side}: {meaning}"

    display(Markdown(
        f"In {shown_label}, the attention U-Net differs from the U-Net by {format_change(attention['mean_difference'])} "
        f"Dice at 0.5 (95 % interval [{format_change(attention['low'])}, {format_change(attention['high'])}], {attention['n']} folds; "
        f"{reading(attention, 'the attention U-Net', 'the U-Net')}). "
        f"bfloat16 training differs from float32 by {format_change(bf16['mean_difference'])} "
        f"([{format_change(bf16['low'])}, {format_change(bf16['high'])}], {bf16['n']} seed-fold pairs; "
        f"{reading(bf16, 'bfloat16 training', 'float32')}), and an epoch took "
        f"{ratio:.2f} times the "
        + (f"CPU time of float32 on a CPU {'with' if shown['cpu_native_bf16'] else 'without'} native bfloat16 kernels."
           if on_cpu else f"wall time of float32 on the {shown['device']} device.")))

# %% [markdown]
# ## 9. Summary
#
# Quick mode trains tiny networks for a few epochs: its Dice values show that the pipeline works
# end to end, not what the architectures can do. The reference setting compares the networks, the
# losses and the training precision on real slices with nested cross-validation, small networks
# sized for a 2-core CPU; the full setting runs the report's settings.

# %% tags=["hide-input"]
numbers = {
    "unet_parameters_paper_widths": n_parameters,
    "paper_output_size_for_572": rows[-1]["paper"][1],
    "attention_gate_from_scratch_max_abs_error": gate_error,
    "split_volumes": {"train": len(train_ids), "val": len(val_ids), "test": len(test_ids)},
    "split_slices": {"train": len(train_slices), "val": len(val_slices), "test": len(test_slices)},
    "loss_test_dice": {loss: runs[loss][1]["summary"]["dice"]["mean"] for loss in losses},
    "loss_best_epoch": {loss: runs[loss][0].best_epoch for loss in losses},
    "network_test_dice": {name: test["summary"]["dice"]["mean"] for name, (_, test) in networks.items()},
    "network_test_dice_sd": {name: test["summary"]["dice"]["sd"] for name, (_, test) in networks.items()},
    "network_test_dice_per_volume": {name: {cid: row["dice"] for cid, row in test["per_case"].items()}
                                     for name, (_, test) in networks.items()},
    "network_val_dice": {name: trainer.best_metric for name, (trainer, _) in networks.items()},
    "histories": {name: trainer.history for name, (trainer, _) in networks.items()},
    "attention_finest_mean_alpha": {"infection": inside, "elsewhere": outside},
    "preparation": prepared.steps,
    "cv": cv_numbers,
}
record_path = write_record(output_dir, "04_unet_and_attention",
                           parameters=dict(dataset=dataset, data_root=data_root, setting=setting, device=device, seed=seed, losses=losses,
                                           network_loss=network_loss, amp=amp, empty_fraction=empty_fraction,
                                           epochs=epochs, lr=lr, step_size=step_size, patience=patience,
                                           base_width=base_width, depth=depth, slice_size=list(slice_size), pixel_mm=pixel_mm,
                                           cv_dir=cv_dir, cv_folds=cv_folds, threads=threads,
                                           precision_seeds=list(precision_seeds), precision_folds=list(precision_folds)),
                           numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"U-Net (paper widths): {n_parameters:,} parameters, 572 -> {rows[-1]['paper'][1]} without padding")
print(f"attention gate from scratch agrees with covidlib: {gate_error < 1e-5}")
print(f"volumes train/val/test: {len(train_ids)}/{len(val_ids)}/{len(test_ids)}; "
      f"slices {len(train_slices)}/{len(val_slices)}/{len(test_slices)}")
print("test Dice by loss (U-Net):", {loss: round(runs[loss][1]["summary"]["dice"]["mean"], 2) for loss in losses})
print("test Dice by network:", {name: round(test["summary"]["dice"]["mean"], 2) for name, (_, test) in networks.items()})
