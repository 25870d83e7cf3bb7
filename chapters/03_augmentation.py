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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/covid-ct-book/covid-ct-book/blob/main/chapters/03_augmentation.ipynb)
#
# # 03. Augmentation
#
# **What you will learn**
#
# - why a segmentation network trained on a handful of CT volumes needs augmentation, and why
#   each transform should mimic a variation that real scans have (so flips are wrong for CT volumes,
#   yet right for COVID-SemiSeg's slices, which are stored turned and mirrored);
# - the four transforms the report uses — a small rotation, a gentle elastic deformation,
#   random gamma and Gaussian noise — applied to an image and its infection mask together;
# - how to split a random transform into *drawing parameters* and *applying them*, so every
#   augmentation can be printed, logged and replayed;
# - how a rotation is computed with a sampling grid and bilinear interpolation, written from
#   scratch and checked against the library;
# - mixup, which blends two slices and turns their labels into soft probabilities;
# - how `covidlib.data` cuts volumes into 2D slices, splits *by volume* (the report's "10-40" and
#   "40-10" splits) and gives each slice a reproducible augmentation.
#
# **Prerequisites** chapters {doc}`01 <01_ct_and_hu>` (HU and the phantom) and
# {doc}`02 <02_data_and_preprocessing>` (preprocessing).
#
# **Run time** quick: ~20 s CPU; reference (50 real slices): ~15 s CPU; full: ~2 min CPU (no GPU needed).

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
rotation_degrees = 3.0
elastic_max_displacement = 4.0
mixup_alpha = 0.4
augmentation_p = 0.5

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from IPython.display import Markdown, display

from covidlib import viz
from covidlib.augment import (Crop, Dihedral, ElasticDeformation, GammaCorrection, GaussianNoise, RandomDihedral,
                              RandomCrop, RandomElasticDeformation, RandomRotation, Rotation, Zoom, default_augmentation,
                              mixup, sample_mixup)
from covidlib.config import choose, format_summary, runtime_summary, seed_everything
from covidlib.data import SliceDataset, fit_slice, kfold_volumes, report_split, seeded_loader
from covidlib.datasets import get_dataset
from covidlib.inference import prepare_slices
from covidlib.phantom import load_calibration
from covidlib.records import load_reference, reference_notice
from covidlib.results import markdown_table, write_record

seed_everything(seed)
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# Quick uses a thinner phantom, fewer real slices and fewer random draws and timing repeats.
phantom_shape = choose(setting, quick=(24, 128, 128), reference=(64, 128, 128), full=(64, 128, 128))
n_cases = choose(setting, quick=3, reference=8, full=8)  # phantom volumes
n_slices = choose(setting, quick=8, reference=50, full=50)  # labelled slices of a 2D dataset (COVID-SemiSeg has 50)
n_draws = choose(setting, quick=8, reference=16, full=16)
n_repeats = choose(setting, quick=5, reference=30, full=30)  # timing: best of this many runs
n_windows = choose(setting, quick=10, reference=40, full=40)  # random windows drawn per slice, each way
slice_size = 256  # network input (H, W) after padding/cropping the 1 mm slices
reference = load_reference("03_augmentation")

# %% [markdown]
# ## 1. One slice to augment
#
# We take a {term}`phantom <Phantom>` case through {doc}`chapter 02 <02_data_and_preprocessing>`'s preprocessing (lungs kept, resampled to 1 x 1 mm
# in-plane, z-scored inside the lungs, 0 outside) and pick the axial slice with the most
# infection. Every transform below is shown on this same slice with the infection outlined in
# red, the way the report's figures 3.9-3.11 show them on a MosMed slice. One library call,
# `covidlib.inference.prepare_slices`, prepares the cases and prints what it did; with a 2D
# dataset such as COVID-SemiSeg (`dataset="covid-semiseg"`, `data_root=...`) the slice is an
# 8-bit image, and the lung-only steps are replaced by their 2D equivalents (the whole image
# z-scored, the slice resized as if it spanned 300 mm).

# %%
source = (get_dataset("phantom", n=n_cases, shape=phantom_shape, seed=seed) if dataset == "phantom"
          else get_dataset(dataset, data_root or None))
n_used = n_cases if dataset == "phantom" else n_slices
prepared = prepare_slices(source, method="lung-crop", case_ids=source.case_ids(source.default_split)[:n_used])
print("preparation:", "; ".join(prepared.steps))
case_ids = list(prepared.labelled)
example_id = case_ids[0]
example_image, example_mask = prepared.labelled[example_id]
lesion_area = example_mask.reshape(len(example_mask), -1).sum(axis=1)
z = int(lesion_area.argmax())

# 1 mm slices are padded/cropped to the network's input: pixels keep their size
image, mask = fit_slice(example_image[z], example_mask[z], (slice_size, slice_size))
mask = mask.astype(np.int64)
print(f"case {example_id}, slice z={z}: image {image.shape} {image.dtype}, "
      f"infection {int(mask.sum())} pixels, intensities [{image.min():.2f}, {image.max():.2f}]")

# %% [markdown]
# ## 2. Drawing parameters, then applying them
#
# A random transform in `covidlib.augment` does only one thing: it draws its parameters from a
# seeded NumPy generator and returns a *deterministic* transform that holds them. The idea comes
# from TorchIO. It makes an augmentation something you can print, store in a log as JSON, and
# apply again later to get the identical result.

# %%
random_rotation = RandomRotation(degrees=rotation_degrees)
drawn = random_rotation.sample(np.random.default_rng(seed))
print("drawn:", drawn)
print("as JSON:", json.dumps(drawn.describe()))
assert random_rotation.sample(np.random.default_rng(seed)) == drawn  # same seed, same parameters
rotated, rotated_mask = drawn(image, mask)
logged = json.loads(json.dumps(drawn.describe()))  # e.g. read back from a training log
replayed, _ = Rotation(logged["angle_deg"], fill=logged["fill"])(image, mask)
assert np.array_equal(rotated, replayed)

# %% [markdown]
# ## 3. Geometry: rotation, turns and mirrors, zoom, windows
#
# ### Rotation: how the patient lies
#
# Patients lie face up on the CT table, but never in exactly the same pose, so the chest turns a
# few degrees in the axial plane from one scan to the next. The report rotates by an angle drawn
# from [-3°, 3°]. Larger rotations, or flips, would create chests that no scanner produces (the
# heart on the wrong side, the table on top), and the report rightly calls them too "violent".
#
# A 3° turn is hard to see by eye ({numref}`fig-03-rotation`), so the figure also shows how far the outline moved.

# %% mystnb={"figure": {"caption": "The example slice (z-score, grey scale [-3, 3]) turned by -3\u00b0 and +3\u00b0, the ends of the report's range, with the infection outlined in red. The change is hard to see; the outline moves by a few pixels, most where it lies far from the slice centre.", "name": "fig-03-rotation"}, "image": {"alt": "The example slice (z-score, grey scale [-3, 3]) turned by -3\u00b0 and +3\u00b0, the ends of the report's range, with the infection outlined in red"}}
fig = viz.show_augmentations(image, mask, [Rotation(-rotation_degrees), Rotation(rotation_degrees)],
                             ncols=3, suptitle="Rotation (report Fig. 3.9), grey scale [-3, 3] z-score, red: infection")
display(fig)
moved = {angle: int((Rotation(angle)(image, mask)[1] != mask).sum()) for angle in (-rotation_degrees, rotation_degrees)}
print("mask pixels that change label:", moved)

# %% [markdown]
# ### Rotation from scratch
#
# How does the library rotate? It works *backwards*: for every output pixel it asks "where in
# the input did this pixel come from?", which is the inverse rotation about the slice centre,
# and then reads the input there. That point usually falls between pixels, so the image value is
# interpolated bilinearly from the four neighbours; for the mask we take the nearest pixel, so
# labels stay 0 or 1. Outside the slice we read the background value 0.
#
# Below is that recipe in NumPy, with the rows pointing down (so the textbook matrix's signs
# flip). The library does the same with `torch.nn.functional.grid_sample`, which also runs on
# batches and GPUs.

# %%
def rotate_from_scratch(picture: np.ndarray, angle_deg: float, fill: float = 0.0) -> np.ndarray:
    """Bilinear rotation of a (H, W) array about its centre, counter-clockwise as displayed."""
    height, width = picture.shape
    theta = np.deg2rad(angle_deg)
    rows, cols = np.meshgrid(np.arange(height, dtype=float), np.arange(width, dtype=float), indexing="ij")
    cy, cx = (height - 1) / 2, (width - 1) / 2
    dy, dx = rows - cy, cols - cx
    # inverse mapping: the input position each output pixel reads
    src_y = dx * np.sin(theta) + dy * np.cos(theta) + cy
    src_x = dx * np.cos(theta) - dy * np.sin(theta) + cx
    # bilinear weights of the four neighbours
    y0, x0 = np.floor(src_y), np.floor(src_x)
    wy, wx = src_y - y0, src_x - x0
    # pad by one pixel of `fill`; clipping the indices into the pad reads `fill` outside the slice
    padded = np.pad(picture.astype(float), 1, constant_values=fill)
    def at(y, x):
        return padded[np.clip(y, -1, height).astype(int) + 1, np.clip(x, -1, width).astype(int) + 1]
    return ((1 - wy) * (1 - wx) * at(y0, x0) + (1 - wy) * wx * at(y0, x0 + 1)
            + wy * (1 - wx) * at(y0 + 1, x0) + wy * wx * at(y0 + 1, x0 + 1))


ours = rotate_from_scratch(image, drawn.angle_deg)
# In float64 the library computes exactly the same numbers; on float32 slices (what training
# uses) grid_sample's float32 coordinate arithmetic leaves differences around 1e-4.
scratch_error = float(np.abs(ours - drawn(image.astype(np.float64))[0]).max())
float32_error = float(np.abs(ours - rotated).max())
print(f"largest difference, from-scratch vs covidlib: {scratch_error:.1e} (float64), {float32_error:.1e} (float32)")
assert scratch_error < 1e-9 and float32_error < 1e-3

# %% [markdown]
# ### Turns and mirrors: when flips are right
#
# The argument against flips holds for CT volumes, whose orientation the scanner fixes. It does not
# hold for COVID-SemiSeg: its slices were saved turned by a quarter, with the spine on either side.
# The phantom's calibration tables (`covidlib.phantom.load_calibration`, measured on the 50
# labelled slices by `benchmarks/calibrate_phantom.py`) record how they lie:

# %%
orientation = load_calibration()["orientation"]
display(Markdown(
    f"In {orientation['lungs_above_and_below_share']:.0%} of COVID-SemiSeg's labelled slices the two lungs lie "
    f"above and below each other (the slice is turned a quarter), and in those the heart (the front of the chest) is on "
    f"the image's left in {orientation['mediastinum_left_share']:.0%} and on its right in "
    f"{1 - orientation['mediastinum_left_share']:.0%}. On these slices orientation says nothing about the "
    "patient, so a network should not learn it: `default_augmentation(dihedral=True)` first applies one of the "
    "8 symmetries of the square (`RandomDihedral`: 4 quarter turns, each mirrored or not), drawn uniformly. "
    "They are exact (no interpolation), so the infection keeps every pixel."))

# %% mystnb={"figure": {"caption": "The example slice under the 7 other symmetries of the square (quarter turns, each mirrored or not), with the infection outlined in red: what `RandomDihedral` draws from for COVID-SemiSeg, whose slices come in several of these orientations.", "name": "fig-03-dihedral"}, "image": {"alt": "The example slice under the 7 other symmetries of the square (quarter turns, each mirrored or not), with the infection outlined in red: what RandomDihedral draws from for COVID-SemiSeg, whose slices come in several of these orientations"}}
symmetries = [Dihedral(quarter_turns=k % 4, flip=k >= 4) for k in range(1, 8)]
fig = viz.show_augmentations(image, mask, symmetries, ncols=4,
                             suptitle="Turns and mirrors (RandomDihedral), grey scale [-3, 3] z-score, red: infection")
display(fig)
for symmetry in symmetries:
    turned_image, turned_mask = symmetry(image, mask)
    assert int(turned_mask.sum()) == int(mask.sum())  # exact: no pixel of infection gained or lost
    back = turned_image[:, ::-1] if symmetry.flip else turned_image  # undo the mirror, then the turn
    assert np.array_equal(np.rot90(back, -symmetry.quarter_turns), image)
dihedral_rng = np.random.default_rng(seed + 5)
dihedral_counts = np.bincount([4 * d.flip + d.quarter_turns for d in (RandomDihedral().sample(dihedral_rng) for _ in range(800))],
                              minlength=8)
print("800 draws of RandomDihedral, count of each symmetry (turns 0-3, then mirrored):", dihedral_counts.tolist())

# %% [markdown]
# ### Zoom: a change of scale (not the report's)
#
# Every COVID-SemiSeg slice is cropped tightly to the chest and then resized to the network's
# input, so how large the lungs and the lesions appear depends on the patient and on the crop.
# `Zoom(factor)` scales the slice about its centre and keeps its size (enlarging pushes the border
# out, shrinking brings in background); `RandomZoom(max_factor)` draws the factor log-uniformly in
# [1 / max_factor, max_factor], so enlarging and shrinking are equally likely, as nnU-Net does with
# its scale augmentation. The report does not zoom, and `train` does not by default:
# `train --zoom 1.25` adds it, and chapter 09's ablation measures what it is worth.

# %% mystnb={"figure": {"caption": "The example slice (z-score, grey scale [-3, 3]) shrunk to 0.8 and enlarged to 1.25 of its size about its centre, the ends of the range `train --zoom 1.25` draws from, with the infection outlined in red.", "name": "fig-03-zoom"}, "image": {"alt": "The example slice (z-score, grey scale [-3, 3]) shrunk to 0.8 and enlarged to 1.25 of its size about its centre, the ends of the range train --zoom 1.25 draws from, with the infection outlined in red"}}
zooms = [Zoom(1 / 1.25), Zoom(1.25)]
display(viz.show_augmentations(image, mask, zooms, ncols=3, suptitle="Zoom about the centre, red: infection"))
for zoom in zooms:
    _, zoomed_mask = zoom(image, mask)
    print(f"{zoom.label()}: infection area {zoomed_mask.sum() / mask.sum():.2f} x the original "
          f"(a pure scaling gives {zoom.factor ** 2:.2f} x while the lesion stays inside the slice)")

# %% [markdown]
# ### Windows: training on part of a slice (not the report's)
#
# A U-Net is fully convolutional: it can train on square windows cut out of a slice and still
# predict a whole slice. That buys resolution at a fixed cost. A step on 160 px windows of 256 px
# slices costs what a step on whole 160 px slices costs, yet each lesion is drawn 1.6 times as wide and
# as tall (2.56 times the pixels). This is how nnU-Net trains (Isensee et al. 2021). `Crop(size, top, left)` cuts the
# window, with `top` and `left` in [0, 1] running from one border to the other. `RandomCrop(size)`
# draws both uniformly, so every position is equally likely, and it crops on every draw, because
# the items of a batch must share one size. `train --image-size 256 --crop-size 160` trains this way
# and predicts on whole 256 px slices. Chapter 09's ablation measures what it is worth. A window
# holds only part of the infection, and some windows hold none. nnU-Net does not leave that to
# chance: it places a third of its patches around foreground. `RandomCrop(size, foreground=p)` does
# the same with probability `p`: it draws an infected pixel at random and then a window among
# those that hold it (`train --crop-foreground 0.33`). The table under the figure draws windows
# of every labelled slice with infection, each way, and counts what they hold.

# %% mystnb={"figure": {"caption": "The example slice (first panel) and four windows of 5/8 of its side (z-score, grey scale [-3, 3]): at its top-left corner, its centre and its bottom-right corner, and one that holds the infected pixel halfway through the slice's list of them (`Crop(size, around=0.5)`), each drawn at the size of the panel, with the infection outlined in red.", "name": "fig-03-crop"}, "image": {"alt": "The example slice (first panel) and four windows of 5/8 of its side (z-score, grey scale [-3, 3]): at its top-left corner, its centre and its bottom-right corner, and one that holds the infected pixel halfway through the slice's list of them (Crop(size, around=0.5)), each drawn at the size of the panel, with the infection outlined in red"}}
window = round(image.shape[-1] * 160 / 256)
windows = [Crop(window, 0.0, 0.0), Crop(window), Crop(window, 1.0, 1.0), Crop(window, around=0.5)]
display(viz.show_augmentations(image, mask, windows, ncols=5, suptitle=f"{window} px windows, red: infection",
                               titles=["top-left", "centre", "bottom-right", "around infection"]))

# %% tags=["hide-input"]
infected = [fit_slice(volume[k], labels[k], (slice_size, slice_size)) for volume, labels in prepared.labelled.values()
            for k in range(len(labels)) if labels[k].any()]
samplers = {"uniform": RandomCrop(window), "third_around_infection": RandomCrop(window, foreground=0.33),
            "all_around_infection": RandomCrop(window, foreground=1.0)}
sampler_labels = {"uniform": "uniform (`--crop-size`)",
                  "third_around_infection": "a third around infection (`--crop-foreground 0.33`)",
                  "all_around_infection": "all around infection (`--crop-foreground 1`)"}
crop_rng = np.random.default_rng(seed + 6)
window_sampling = {}
for name, sampler in samplers.items():
    shares = np.array([sampler.sample(crop_rng)(slice_image, slice_mask)[1].sum() / slice_mask.sum()
                       for slice_image, slice_mask in infected for _ in range(n_windows)])
    window_sampling[name] = {"no_infection": round(float(np.mean(shares == 0)), 4),
                             "mean_share": round(float(shares.mean()), 4)}
print(f"{window} px windows of {slice_size} px slices ({(window / slice_size) ** 2:.0%} of the area), "
      f"{n_windows} each way on each of the {len(infected)} slices with infection:")
display(Markdown(markdown_table([(sampler_labels[name], f"{row['no_infection']:.1%}", f"{row['mean_share']:.2f}")
                                 for name, row in window_sampling.items()],
                                header=("windows", "hold no infection", "share of the slice's infection, mean"))))

# %% [markdown]
# ## 4. Elastic deformation: breathing
#
# Lungs change shape as a patient breathes in and holds it, and soft tissue sags differently in
# each scan. An elastic deformation imitates that: every pixel is moved by a smooth displacement
# field. Drawing a random number per pixel and smoothing it (Simard et al. 2003) works, but has
# a whole image of parameters. Instead, as TorchIO does, we draw displacements on a coarse 7 x 7
# grid of control points (the outer ring fixed at zero, so the slice border stays put) and
# interpolate them smoothly (bicubic) to every pixel. The parameters are then 2 x 7 x 7 numbers
# that fit in a log. Up to 4 px means up to 4 mm at the preprocessed 1 mm spacing: a breathing-
# sized change, not a rubber sheet. (Bicubic interpolation can overshoot between control points,
# so the dense field may exceed the control-point maximum by a pixel or so, as printed below.)

# %% mystnb={"figure": {"caption": "Elastic deformation (the report's Fig. 3.10): the slice and its outline under one sampled field, and under the same field tripled so that its shape is visible. Grey scale [-3, 3] z-score.", "name": "fig-03-elastic"}, "image": {"alt": "Elastic deformation (the report's Fig. 3.10): the slice and its outline under one sampled field, and under the same field tripled so that its shape is visible"}}
elastic = RandomElasticDeformation(max_displacement=elastic_max_displacement).sample(np.random.default_rng(seed + 1))
field = elastic.dense_field(*image.shape).numpy()
strong = ElasticDeformation(elastic.control_displacements * 3)
fig = viz.show_augmentations(image, mask, [elastic, strong], titles=[elastic.label(), "same field x3 (to see it)"],
                             ncols=3, suptitle="Elastic deformation (report Fig. 3.10), grey scale [-3, 3] z-score")
fig

# %% mystnb={"figure": {"caption": "The dense displacement field d of the elastic deformation above: its length per pixel (colour) and direction (arrows, every 16th pixel); each output pixel reads from p + d.", "name": "fig-03-elastic-field"}, "image": {"alt": "The dense displacement field d of the elastic deformation above: its length per pixel (colour) and direction (arrows, every 16th pixel); each output pixel reads from p + d"}}
fig, ax = plt.subplots(figsize=(4, 4))
step = 16
shown = ax.imshow(np.hypot(*field), cmap="magma")
fig.colorbar(shown, ax=ax, fraction=0.046, label="|d| (px)")
ax.quiver(np.arange(0, image.shape[1], step), np.arange(0, image.shape[0], step),
          field[1, ::step, ::step], -field[0, ::step, ::step], color="white", scale=60)
ax.set_title("displacement field d: each pixel reads from p + d", fontsize=9)
ax.axis("off")
plt.show()
print(f"field: max |d| = {np.hypot(*field).max():.2f} px, mean |d| = {np.hypot(*field).mean():.2f} px "
      f"(control points up to {np.abs(elastic.control_displacements).max():.2f} px)")

# %% [markdown]
# ## 5. Random gamma and Gaussian noise: scanners differ
#
# Different scanners, reconstruction kernels and protocols give the same tissue slightly
# different contrast and noise. Gamma correction bends the intensity scale,
# `lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma`, between the slice's own darkest and
# brightest values; gamma is drawn as `exp(u)`, `u` uniform in [-0.3, 0.3] (so 0.74 to 1.35).
# Gaussian noise adds zero-mean noise whose standard deviation is drawn up to 0.1 (in z-score
# units: a tenth of the lung's intensity spread). Both leave the mask untouched.
#
# One caveat the report does not mention: after z-scoring, the background outside the lungs is
# 0, so a gamma computed over the whole slice also shifts that background (visible in {numref}`fig-03-gamma-noise` as a
# lighter or darker grey), and noise is added there too. The network still sees one uniform
# background per slice, so this is mild; `GammaCorrection` takes an explicit `intensity_range`
# for images with a known fixed range such as [0, 1].

# %% mystnb={"figure": {"caption": "The example slice (grey scale [-3, 3] z-score) with the weakest and strongest gamma the transform draws (0.74 and 1.35) and with Gaussian noise of standard deviation 0.1. The infection outline stays put; gamma also lightens or darkens the background outside the lungs.", "name": "fig-03-gamma-noise"}, "image": {"alt": "The example slice (grey scale [-3, 3] z-score) with the weakest and strongest gamma the transform draws (0.74 and 1.35) and with Gaussian noise of standard deviation 0.1"}}
gamma_low, gamma_high = GammaCorrection(float(np.exp(-0.3))), GammaCorrection(float(np.exp(0.3)))
noise = GaussianNoise(std=0.1, noise_seed=seed)
fig = viz.show_augmentations(image, mask, [gamma_low, gamma_high, noise], ncols=4,
                             suptitle="Random gamma and Gaussian noise (report Fig. 3.11), grey scale [-3, 3] z-score")
display(fig)
measured_noise = float((noise(image)[0] - image).std())
print(f"noise: asked std 0.1, measured {measured_noise:.4f}")

# %% [markdown]
# ## 6. All four together, drawn at random
#
# `default_augmentation` chains the four transforms, each applied with probability
# `augmentation_p`. Every draw below ({numref}`fig-03-random-draws`) is printed as JSON-ready parameters: any panel can be
# rebuilt exactly from its line.

# %% mystnb={"figure": {"caption": "Random draws of the chained augmentation (rotation, elastic deformation, gamma and noise, each applied with probability `augmentation_p`) on the example slice; each panel's title lists what was applied, with its parameters.", "name": "fig-03-random-draws"}, "image": {"alt": "Random draws of the chained augmentation (rotation, elastic deformation, gamma and noise, each applied with probability augmentation_p) on the example slice; each panel's title lists what was applied, with its parameters"}}
augmentation = default_augmentation(p=augmentation_p, degrees=rotation_degrees,
                                    max_displacement=elastic_max_displacement)
draw_rng = np.random.default_rng(seed + 2)
draws = [augmentation.sample(draw_rng) for _ in range(n_draws)]
for i, chain in enumerate(draws):
    print(i, chain.label())
fig = viz.show_augmentations(image, mask, draws, titles=[f"{i}: {c.label()}" for i, c in enumerate(draws)],
                             ncols=3, include_original=False, panel_size=3.0,
                             suptitle=f"{n_draws} random draws (p={augmentation_p}), grey scale [-3, 3] z-score")
for ax in fig.axes:
    ax.title.set_fontsize(7)
fig

# %% [markdown]
# ## 7. Mixup: soft labels
#
# {term}`Mixup` {cite}`zhang2018mixup` makes a new training pair by blending two:
# `x = λ x_i + (1 - λ) x_j` and `y = λ y_i + (1 - λ) y_j`, with one λ drawn from Beta(α, α) for
# the batch and partners `j` drawn by a random permutation. The label is no longer 0 or 1 per
# pixel but a probability ({numref}`fig-03-mixup`), which the losses of
# {doc}`chapter 04 <04_unet_and_attention>` accept. With α = 0.4 most λ are near
# 0 or 1 (a slice with a faint ghost of another); α = 1 makes λ uniform. The report used mixup
# for its best fully supervised model (section 5.2.2); {cite:t}`panfilov2019mixup` found it helps on
# small knee MRI sets but can underfit without removing weight decay.

# %% mystnb={"figure": {"caption": "Mixup of two training slices: each with its infection outlined, their blend with weights \u03bb and 1 \u2212 \u03bb, and the soft label, the infection probability mixed from the two masks with the same weights.", "name": "fig-03-mixup"}, "image": {"alt": "Mixup of two training slices: each with its infection outlined, their blend with weights \u03bb and 1 \u2212 \u03bb, and the soft label, the infection probability mixed from the two masks with the same weights"}}

cases = [prepared.labelled[case_id] for case_id in case_ids]
slices = SliceDataset(cases, case_ids=case_ids, empty_fraction=0.0, output_size=slice_size, seed=seed)
batch = next(iter(seeded_loader(slices, batch_size=4, shuffle=True, seed=seed)))
batch_images, batch_masks = batch["image"].numpy(), batch["mask"].numpy()
mix = sample_mixup(len(batch_images), mixup_alpha, np.random.default_rng(seed + 3))
mixed_images, soft_targets = mix(batch_images, batch_masks)
print("mixup:", json.dumps(mix.describe()))
paired_with_other = np.flatnonzero(mix.permutation != np.arange(len(mix.permutation)))
item = int(paired_with_other[0]) if len(paired_with_other) else 0  # show a slice mixed with another one
fig = viz.show_mixup(batch_images, batch_masks, mixed_images, soft_targets, mix, item=item)
display(fig)
label_sums = soft_targets.sum(axis=1)
print(f"soft labels: values [{', '.join(f'{v:.4f}' for v in np.unique(np.round(soft_targets[:, 1], 4)))}], "
      f"class sums in [{label_sums.min():.6f}, {label_sums.max():.6f}]")
# the one-call version used in training loops gives the same result from the same generator
again_images, again_targets, again_lam = mixup(torch.from_numpy(batch_images), torch.from_numpy(batch_masks),
                                               mixup_alpha, np.random.default_rng(seed + 3))
assert again_lam == mix.lam and np.allclose(again_targets.numpy(), soft_targets)

# %% [markdown]
# ## 8. From volumes to reproducible training slices
#
# The networks of the next chapters are 2D, like the report's ("we sliced the volume into 2D",
# because {term}`slice thickness <Slice thickness>` varies too much between datasets). `covidlib.data` takes care of three
# things.
#
# **Splits by volume.** Neighbouring slices of one scan are almost copies of each other, so
# a split by slice would put near-duplicates of test slices into training. All splits are made
# over case ids, and slices follow their volume. The report (section 5.2.1) pools 70 volumes,
# holds out 20 for testing and cuts the other 50 into five folds of 10. Its "10-40 split" trains
# on *one* fold and validates on the other four (the small-sample setting); its "40-10 split"
# trains on four folds and validates on one (ordinary 5-fold cross-validation). The test volumes
# are the same for both. `report_split` keeps those proportions for any cohort size. For
# COVID-SemiSeg, where each image is its own case, `kfold_volumes` is k-fold by slice.
#
# **Empty slices.** Most axial slices show no infection. `empty_fraction` sets the share of those
# slices that is kept (drawn once from the seed); all slices with infection are always kept.
#
# **Seeded augmentation.** Each item gets a generator seeded by `(seed, epoch, index)`, so item 5
# of epoch 3 receives the same augmentation in every run, whatever the batch order or number of
# worker processes; `set_epoch` moves to the next epoch's draws. `seeded_loader` gives the
# shuffling its own seeded generator.

# %%
cohort_ids = [f"volume_{i:02d}" for i in range(70)]
splits = {name: report_split(cohort_ids, name, seed=seed) for name in ("10-40", "40-10")}
for name, split in splits.items():
    print(f"{name}: train {len(split.train)}, validation {len(split.val)}, test {len(split.test)}")
assert splits["10-40"].train == splits["40-10"].val and splits["10-40"].test == splits["40-10"].test
# a 2D dataset such as COVID-SemiSeg: 50 labelled slices, each its own case -> 5-fold by slice
slice_folds = kfold_volumes([f"train/{i}" for i in range(50)], k=5, seed=seed)
print("5-fold by slice, validation sizes:", [len(val) for _, val in slice_folds])

full_slices = SliceDataset(cases, case_ids=case_ids, empty_fraction=1.0, seed=seed)
half_empty = SliceDataset(cases, case_ids=case_ids, empty_fraction=0.5, output_size=slice_size, seed=seed,
                          transform=augmentation)
print(f"{len(cases)} volumes -> {len(full_slices)} slices, {full_slices.num_lesion_slices} with infection; "
      f"empty_fraction=0.5 keeps {len(half_empty) - half_empty.num_lesion_slices} "
      f"of {half_empty.num_empty_available} empty slices")
for epoch in (0, 1):
    half_empty.set_epoch(epoch)
    print(f"epoch {epoch}, item 0:", half_empty.augmentation_for(0).label())
half_empty.set_epoch(0)
first_run = half_empty[0]["image"]
assert torch.equal(first_run, half_empty[0]["image"])

# %% [markdown]
# ## 9. Measured on this run's slices
#
# Three measurements on every prepared slice with infection (on the phantom, its volumes' slices;
# on COVID-SemiSeg, the labelled slices), so that the reference record holds them for real slices:
#
# - **how far each transform moves the infection**: the share of infection pixels whose label
#   changes at their position (0: untouched; a quarter turn moves almost all of them), and the
#   infection area after the transform over before (1: no pixel lost or gained);
# - **what each transform costs**: the best wall time of one call on the example slice, on one thread (not
#   checked in CI: it depends on the machine and its load);
# - **how balanced the folds are**: the infection share of the slices (or volumes) in each
#   validation fold of a 5-fold split, since a fold that happens to hold only small lesions
#   scores differently from the others.

# %%
lesion_slices = [fit_slice(volume_image[z], volume_mask[z], (slice_size, slice_size))
                 for volume_image, volume_mask in cases for z in range(len(volume_mask)) if volume_mask[z].any()]
random_transforms = {
    f"rotation ±{rotation_degrees:g}°": RandomRotation(degrees=rotation_degrees),
    "elastic": RandomElasticDeformation(max_displacement=elastic_max_displacement),
    "turn / mirror": RandomDihedral(),
    f"report's chain (p={augmentation_p:g})": augmentation,
    "chain + turn / mirror": default_augmentation(p=augmentation_p, degrees=rotation_degrees,
                                                  max_displacement=elastic_max_displacement, dihedral=True),
}
measure_rng = np.random.default_rng(seed + 4)
label_moved: dict[str, list[float]] = {name: [] for name in random_transforms}
area_kept: dict[str, list[float]] = {name: [] for name in random_transforms}
for slice_image, slice_mask in lesion_slices:
    slice_mask = slice_mask.astype(np.int64)
    for name, random_transform in random_transforms.items():
        _, moved_mask = random_transform.sample(measure_rng)(slice_image, slice_mask)
        label_moved[name].append(round(float(((moved_mask != slice_mask) & (slice_mask > 0)).sum() / slice_mask.sum()), 4))
        area_kept[name].append(round(float(moved_mask.sum() / slice_mask.sum()), 4))
print(f"{len(lesion_slices)} slices with infection, one draw of each transform per slice")


def best_ms(function) -> float:
    """Best wall time of ``function()`` in ms over ``n_repeats`` runs after one warm-up (the least disturbed)."""
    function()
    times = []
    for _ in range(n_repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return round(1000 * min(times), 3)


# One thread, as in training, where SliceDataset items run single-threaded (several at once in workers);
# with two threads on a busy CPU, a 256 x 256 grid_sample waits for the second thread far longer than it computes.
threads = torch.get_num_threads()
torch.set_num_threads(1)
timing_ms = {
    "rotation": best_ms(lambda: drawn(image, mask)),
    "elastic": best_ms(lambda: elastic(image, mask)),
    "gamma": best_ms(lambda: gamma_high(image, mask)),
    "noise": best_ms(lambda: noise(image, mask)),
    "turn / mirror": best_ms(lambda: Dihedral(1, True)(image, mask)),
    "SliceDataset item (pad/crop + chain)": best_ms(lambda: half_empty[0]),
}
torch.set_num_threads(threads)
print(f"timing on a {slice_size} x {slice_size} slice, one thread, best of {n_repeats}:", timing_ms)

infection_share = {case_id: float(volume_mask.mean()) for case_id, (_, volume_mask) in zip(case_ids, cases)}
folds = kfold_volumes(case_ids, k=5, seed=seed) if len(case_ids) >= 5 else []
fold_infection = {f"fold {i + 1}": [round(infection_share[case_id], 4) for case_id in val] for i, (_, val) in enumerate(folds)}
own_splits = ({name: [len(s.train), len(s.val), len(s.test)] for name in ("10-40", "40-10")
               for s in [report_split(case_ids, name, seed=seed)]} if len(case_ids) >= 10 else {})
print("validation folds (cases each):", {name: len(shares) for name, shares in fold_infection.items()} or
      f"none: {len(case_ids)} cases are fewer than 5")
print("the report's splits on this run's cases (train, val, test):", own_splits or "too few cases")

# %% [markdown]
# ### On real scans (reference record)
#
# The committed reference record ran this chapter on every labelled COVID-SemiSeg slice. Its
# numbers stand beside this run's; the figures below are drawn from it (from this run when there
# is no record; each title says which).

# %% tags=["hide-input"]
display(Markdown(reference_notice(reference, "03_augmentation")))
recorded = reference.numbers if reference is not None else None


def measured_rows(found: dict | None) -> dict[str, str]:
    """The comparison table's rows for one run's numbers (this run's or the record's)."""
    if found is None:
        return {}
    rows = {"prepared cases": f"{found['cases_prepared']} ({found['lesion_slices_measured']} slices with infection)",
            "example slice": f"{found['example_case']} z={found['example_slice']}, {found['example_lesion_pixels']} infection px",
            "mask pixels changed at -/+ rotation limit": " / ".join(str(v) for v in found["rotation_changed_mask_pixels"].values())}
    for name in found["label_moved"]:
        moved, kept = np.asarray(found["label_moved"][name]), np.asarray(found["area_kept"][name])
        rows[f"{name}: infection moved, area kept (mean)"] = f"{moved.mean():.3f}, {kept.mean():.3f} (min {kept.min():.3f})"
    for name, ms in found["timing_ms"].items():
        rows[f"{name}: ms per slice"] = f"{ms:.2f}"
    for name, shares in found["fold_infection_share"].items():
        rows[f"{name}: cases, mean infection share"] = f"{len(shares)}, {np.mean(shares):.3f}"
    for name, sizes in found["own_report_split_sizes"].items():
        rows[f"report split {name} on these cases (train, val, test)"] = ", ".join(map(str, sizes))
    return rows


this_run = {"cases_prepared": len(case_ids), "lesion_slices_measured": len(lesion_slices), "example_case": example_id,
            "example_slice": z, "example_lesion_pixels": int(mask.sum()), "rotation_changed_mask_pixels": moved,
            "label_moved": label_moved, "area_kept": area_kept, "timing_ms": timing_ms,
            "fold_infection_share": fold_infection, "own_report_split_sizes": own_splits}
live_rows, record_rows = measured_rows(this_run), measured_rows(recorded)
names = list(record_rows) + [name for name in live_rows if name not in record_rows]
display(Markdown(markdown_table([(name, live_rows.get(name, "—"), record_rows.get(name, "—")) for name in names],
                                header=("measured", f"this run ({dataset})", "reference record"))))
shown, shown_from = (recorded, "reference record") if recorded is not None else (this_run, f"this run, {dataset}")

# %% mystnb={"figure": {"caption": "Share of the infection pixels whose label changes at their position under one random draw of each transform, one point per slice with infection, black bar the mean. Small rotations and elastic deformations move only the infection's edge; a turn or mirror moves most of it (exactly, without losing a pixel; none when the identity is drawn). Drawn from the reference record (from this run when there is no record; the title says which).", "name": "fig-03-label-moved"}, "image": {"alt": "Share of the infection pixels whose label changes at their position under one random draw of each transform, one point per slice with infection, black bar the mean"}}
viz.show_grouped_values(shown["label_moved"], ylabel="share of infection pixels moved",
                        title=f"How far each transform moves the infection ({shown_from})")

# %% mystnb={"figure": {"caption": "Infection share of each case in the five validation folds of a 5-fold split (one point per slice or volume, black bar the fold's mean). Drawn from the reference record, every labelled COVID-SemiSeg slice (from this run when there is no record; a panel says so when a run had fewer than five cases).", "name": "fig-03-fold-infection"}, "image": {"alt": "Infection share of each case in the five validation folds of a 5-fold split (one point per slice or volume, black bar the fold's mean)"}}
viz.show_grouped_values(shown["fold_infection_share"], ylabel="infection share of a case",
                        title=f"Infection burden per validation fold ({shown_from})",
                        empty_message=f"{shown['cases_prepared']} cases in {shown_from}: too few for 5 folds.")

# %%
if recorded is not None:
    fold_means = {name: float(np.mean(shares)) for name, shares in recorded["fold_infection_share"].items()}
    moved_means = {name: float(np.mean(values)) for name, values in recorded["label_moved"].items()}
    turn = next(name for name in moved_means if name.startswith("turn"))
    rotation_name = next(name for name in moved_means if name.startswith("rotation"))
    display(Markdown(
        f"On the reference record's {recorded['cases_prepared']} real slices, a rotation within the report's range moves "
        f"{moved_means[rotation_name]:.1%} of the infection pixels on average, a turn or mirror "
        f"{moved_means[turn]:.1%}; the mean infection share of the five validation folds runs from "
        f"{min(fold_means.values()):.3f} to {max(fold_means.values()):.3f}, so fold-to-fold differences in the "
        "later chapters' scores are partly differences in what the folds hold. One augmented training item costs "
        f"{recorded['timing_ms']['SliceDataset item (pad/crop + chain)']:.1f} ms there."))

# %% tags=["hide-input"]
numbers = {
    "example_case": example_id,
    "example_slice": z,
    "example_lesion_pixels": int(mask.sum()),
    "rotation_angle_deg_seed": round(drawn.angle_deg, 4),
    "rotation_changed_mask_pixels": moved,
    "rotation_from_scratch_max_abs_error": scratch_error,
    "elastic_max_displacement_px": round(float(np.hypot(*field).max()), 3),
    "noise_std_measured": round(measured_noise, 4),
    "mixup_lambda": round(mix.lam, 4),
    "mixup_permutation": mix.permutation.tolist(),
    "report_split_sizes": {name: [len(s.train), len(s.val), len(s.test)] for name, s in splits.items()},
    "slices_total": len(full_slices),
    "slices_with_infection": full_slices.num_lesion_slices,
    "slices_kept_empty_fraction_0.5": len(half_empty),
    "preparation": prepared.steps,
    "orientation_calibration": orientation,
    "dihedral_draw_counts": dihedral_counts.tolist(),
    "window_sampling": window_sampling,
    **this_run,
}
record_path = write_record(output_dir, "03_augmentation",
                           parameters=dict(dataset=dataset, data_root=data_root, setting=setting, device=device, seed=seed,
                                           n_cases=n_cases, n_slices=n_slices, n_draws=n_draws, n_repeats=n_repeats,
                                           rotation_degrees=rotation_degrees, elastic_max_displacement=elastic_max_displacement,
                                           mixup_alpha=mixup_alpha, augmentation_p=augmentation_p),
                           numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"example: {example_id} z={z}, {int(mask.sum())} infection pixels")
print(f"rotation drawn: {drawn.angle_deg:+.3f} deg; mask pixels changed at -/+{rotation_degrees:g} deg: "
      f"{moved[-rotation_degrees]}/{moved[rotation_degrees]}")
print(f"from-scratch rotation agrees with covidlib: {scratch_error < 1e-9}")
print(f"elastic max |d| = {np.hypot(*field).max():.2f} px; noise std measured {measured_noise:.3f}")
print(f"mixup lambda = {mix.lam:.3f}, permutation {mix.permutation.tolist()}")
print("report splits (train, val, test):", {name: (len(s.train), len(s.val), len(s.test)) for name, s in splits.items()})
print(f"slices: {len(full_slices)} total, {full_slices.num_lesion_slices} with infection, "
      f"{len(half_empty)} kept with empty_fraction=0.5")
