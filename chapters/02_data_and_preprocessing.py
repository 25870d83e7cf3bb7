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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/covid-ct-book/covid-ct-book/blob/main/chapters/02_data_and_preprocessing.ipynb)
#
# # 02. Data and preprocessing
#
# **What you will learn**
#
# - which public datasets the report combined (COVID-19 and other lung diseases), what each
#   holds, and how `covidlib.datasets` reads them all the same way, downloading with checksums
#   where a public archive exists;
# - why scans from different centres cannot be fed to one network as they are: voxel sizes
#   and slice thicknesses differ several-fold (the report's Fig. 3.7);
# - how the lungs are cut out of a CT, first with a bare threshold (and why that fails), then
#   with the classical threshold + watershed route, checked against the phantom's exact masks;
#   and when to prefer the learned **lungmask** model;
# - the report's preprocessing: crop to the lungs, resample to 1 x 1 mm in-plane with z kept,
#   z-score inside the lungs (Fig. 3.6 and 3.8);
# - how 2D 8-bit datasets such as COVID-SemiSeg differ, and what normalisation they get.
#
# **Prerequisites** {doc}`chapter 01 <01_ct_and_hu>` (HU, windows, the phantom).
#
# **Run time** quick: ~1 min CPU; full: ~10 min CPU (a 40-scan cohort on 512 x 512 matrices).

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
# chapter knobs
data_root = None  # folder of a real dataset (e.g. the COVID-SemiSeg "Dataset" folder); None: $COVIDLIB_DATA/<dataset>
lungmask_modelpath = None  # a lungmask R231 weights file; None: the torch hub cache, if it holds one
threshold_hu = -350.0

# %%
import warnings
from pathlib import Path

import numpy as np
from IPython.display import Markdown, display

from covidlib import viz
from covidlib.config import format_summary, runtime_summary, seed_everything
from covidlib.datasets import Case, get_dataset, list_datasets
from covidlib.metrics import dice
from covidlib.preprocess import (PreprocessCache, classical_lung_mask, lung_mask, lungmask_weights,
                                 normalise_image, preprocess_case)

seed_everything(seed)
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# Quick mode: 8 phantom scans on a 128 x 128 matrix; full mode: 40 scans on 512 x 512.
quick = setting == "quick"
n_cases = 8 if quick else 40
shape = (48, 128, 128) if quick else (160, 512, 512)
numbers: dict[str, object] = {}

# %% [markdown]
# ## 1. The datasets
#
# The report's central problem is that labelled COVID-19 CT scans were scarce in 2020, so it
# leaned on other lung CT collections for pre-training and transfer: lung tumours (MSD),
# pleural effusion (NSCLC with the PleThora masks), and COVID-19 scans with (MosMed, the
# "Covid Segmentation Benchmark" of Ma et al.) and without labels. The registry lists them,
# plus the 2D COVID-SemiSeg slices used for the semi-supervised chapters and the built-in
# {term}`phantom <Phantom>` that lets every chapter run anywhere.
#
# Two of them can be fetched by the library (`download=True`): the file is streamed to a
# temporary file, its checksum compared with the published one, and only then renamed; an
# archive is unpacked only after every member's path has been checked to stay inside the
# target folder. The others need a registration or a licence agreement, so you download them
# yourself and point `root=` (or `$COVIDLIB_DATA`) at the folder.

# %%
rows = ["| name | what | size | slice thickness | labels | licence | how |", "|---|---|---|---|---|---|---|"]
for info in list_datasets():
    link = f"[{info.name}]({info.url})" if info.url.startswith("http") else info.name
    rows.append(f"| {link} | {info.description} | {info.size} | {info.slice_thickness} | {info.labels} | "
                f"{info.licence} | {info.obtained} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# Every dataset answers the same three questions: its `splits`, the `case_ids(split)` in each,
# and `load(case_id)`, which reads one case only when asked, so listing 1600 unlabelled slices
# costs a directory scan. A case holds the image as a `Volume` (HU for CT), a {term}`lung mask <Lung mask>` (right
# lung 1, left lung 2, whatever the source's own convention was) and a lesion mask.

# %%
cohort = get_dataset("phantom", n=n_cases, shape=shape, seed=seed)
cases = [cohort.load(case_id) for case_id in cohort.case_ids()]
print(cohort)
for case in cases[:3]:
    print(f"{case.case_id}: shape {case.image.shape}, spacing {tuple(round(s, 2) for s in case.image.spacing)} mm, "
          f"lesion voxels {int(case.lesion_mask.sum())}")

# %% [markdown]
# ## 2. Why preprocessing: scans are not alike
#
# A CT volume is a stack of axial slices. Within a slice, pixels are typically 0.6-0.95 mm
# wide on a 512 x 512 matrix (it depends on the patient's size: the field of view is set to
# fit the body); between slices, the spacing ({term}`slice thickness <Slice thickness>`) ranges from under 1 mm ("thin-slice") to 5-10 mm
# ("thick-slice", common in emergency COVID-19 imaging, MosMed among them). The phantom
# cohort draws both at random like a multi-centre collection ({numref}`fig-02-spacings`). (In quick mode the matrix is
# 128 x 128, so its pixels are four times larger than a real scan's; full mode uses 512.)

# %% mystnb={"figure": {"caption": "Slice thickness against in-plane pixel size, one marker per scan of the phantom cohort (and of a real dataset when one is chosen). Slices run from about 1 mm to 8 mm thick, so a voxel of one scan can hold several times the tissue of another's.", "name": "fig-02-spacings"}}
spacings = {"phantom cohort": [case.image.spacing for case in cases]}
real = None
if dataset not in ("phantom", "covid-semiseg"):
    real = get_dataset(dataset, data_root)
    spacings[dataset] = [real.spacing(case_id) for case_id in real.case_ids()]
viz.show_spacings(spacings, title="Slice thickness against pixel size (report Fig. 3.7)")

# %%
thickness = np.array([s[0] for s in spacings["phantom cohort"]])
pixel = np.array([s[1] for s in spacings["phantom cohort"]])
print(f"slice thickness {thickness.min():.2f}-{thickness.max():.2f} mm, pixel {pixel.min():.2f}-{pixel.max():.2f} mm: "
      f"voxel volumes differ {(thickness * pixel**2).max() / (thickness * pixel**2).min():.0f}-fold")

# %% [markdown]
# A network sees voxels, not millimetres: a lesion 10 mm wide covers 3 slices of one scan and
# 1 of another, and 10 or 15 pixels across; thick slices also blur small lesions, as
# {numref}`Fig. {number} of chapter 01 <fig-01-thin-thick>` showed. The report therefore resamples every scan to the
# same in-plane pixel size, 1 x 1 mm, and leaves z alone (section 3.2.3). Keeping z avoids
# inventing 7 of every 8 slices of a thick scan by interpolation; the 2D networks of later
# chapters see one axial slice at a time, so they need in-plane consistency only.
#
# ## 3. Cutting out the lungs
#
# Ribs, muscle, the table and the air around the patient take most of a chest CT, and they
# would dominate the intensity statistics used for normalisation. So the report extracts the
# lungs first (section 3.2.2). The section names two routes, a watershed method and the
# pre-trained U-Net of Hofmanninger et al. (lungmask), but the watershed part of the report was
# left unwritten. Here is the idea from scratch, and then the library's version.
#
# **A bare threshold.** Lung parenchyma sits near -850 HU, soft tissue near +40 (the histograms of
# {numref}`Fig. {number} in chapter 01 <fig-01-hu-histograms>`): everything
# below about -350 HU should be lung... Let us try it on one scan.

# %%
# The scan with most lesion among those covering at least 15 cm of the chest (so all views show lung).
tall = [c for c in cases if c.image.shape[0] * c.image.spacing[0] >= 150] or cases
example = max(tall, key=lambda c: int(c.lesion_mask.sum()))
hu = example.image.array
naive = hu < threshold_hu
exact = example.lung_mask > 0
print(f"bare threshold: Dice {dice(naive, exact):.3f} with the exact lungs")

# %% [markdown]
# Poor: the threshold also takes the air around the patient, the padding outside the
# reconstructed field of view, the air in the trachea and under the table. The classical
# route fixes each in turn:
#
# 1. padding -> air, then keep only the air **inside the body** (the largest dense component,
#    filled slice by slice);
# 2. separate the lungs from the trachea and from each other: on the distance map of the air
#    (how deep each voxel lies inside it), deep cores are seeds; the two largest comparable
#    ones are the lungs, and a **watershed** gives every air voxel to its nearest seed;
# 3. vessels and dense lesions are holes in the lung: **close** each lung slice with a 20 mm
#    disk (this recovers lesions at the pleura) and **fill holes**;
# 4. name the sides from physical coordinates: right lung 1, left lung 2, as lungmask does.
#
# The library's `classical_lung_mask` does exactly that; a little by hand first, to see steps 1
# and 2 working.

# %%
from scipy import ndimage

body = ndimage.binary_fill_holes(hu > -500, structure=np.ones((1, 3, 3)))
labels, count = ndimage.label(body)
body = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
air_inside = naive & body
components, count = ndimage.label(air_inside)
sizes = np.sort(np.bincount(components.ravel())[1:])[::-1]
two_largest = np.isin(components, np.argsort(np.bincount(components.ravel())[1:])[::-1][:2] + 1)
print(f"air inside the body: {count} connected regions, largest {sizes[:3].tolist()} voxels")
print(f"two largest regions: Dice {dice(two_largest, exact):.3f}")
# Often the lungs and the trachea form one connected region (the bronchi join them), or the two
# lungs touch in front of the heart: 'largest components' alone cannot separate them.

classical = classical_lung_mask(example.image, threshold_hu=threshold_hu)
print(f"library classical mask: Dice {dice(classical > 0, exact):.3f} "
      f"(right {dice(classical == 1, example.lung_mask == 1):.3f}, left {dice(classical == 2, example.lung_mask == 2):.3f})")
assert dice(classical > 0, exact) > max(dice(naive, exact), dice(two_largest, exact))

# %% mystnb={"figure": {"caption": "Axial, coronal and sagittal views of one phantom scan in the lung window, before lung extraction, with the classical lung mask (threshold, watershed split, closing and hole filling) and the lesions overlaid.", "name": "fig-02-before-extraction"}}
background = np.where(classical > 0, hu, -1024.0).astype(np.float32)
viz.show_views(example.image, masks={"lesion": example.lesion_mask, "classical lung mask": classical > 0},
               title=f"{example.case_id} before lung extraction (report Fig. 3.6)")

# %% mystnb={"figure": {"caption": "The same scan after lung extraction: every voxel outside the classical lung mask is set to air (-1024 HU), lung window. Only the lungs and their lesions are left for the intensity statistics.", "name": "fig-02-after-extraction"}}
viz.show_views(example.image.with_array(background), masks={"lesion": example.lesion_mask},
               title=f"{example.case_id} after: outside the lungs set to air")

# %% [markdown]
# {numref}`fig-02-before-extraction` shows the classical mask on one scan and
# {numref}`fig-02-after-extraction` what is left once everything outside it is set to air.
# Over the whole cohort, against the exact masks the phantom was built with (thin and thick
# slices, with and without lesions):

# %%
dice_right, dice_left, lesion_inside, masks = [], [], [], {}
for case in cases:
    predicted = classical_lung_mask(case.image, threshold_hu=threshold_hu)
    masks[case.case_id] = predicted
    dice_right.append(dice(predicted == 1, case.lung_mask == 1))
    dice_left.append(dice(predicted == 2, case.lung_mask == 2))
    lesion = case.lesion_mask > 0
    if lesion.any():
        lesion_inside.append(float(np.mean(predicted[lesion] > 0)))
    print(f"{case.case_id}: slices {case.image.spacing[0]:.2f} mm, Dice right {dice_right[-1]:.3f} left {dice_left[-1]:.3f}")
numbers.update(classical_dice_right=dice_right, classical_dice_left=dice_left,
               classical_dice_min=float(min(dice_right + dice_left)), lesion_inside_classical=lesion_inside)
print(f"mean Dice {np.mean(dice_right + dice_left):.3f}, lowest {min(dice_right + dice_left):.3f}; "
      f"lesion voxels inside the mask: {np.mean(lesion_inside):.0%} on average")

# %% [markdown]
# The lungs themselves come out well, but look at the last number: not every lesion voxel lands
# inside the mask. Dense consolidation touching the chest wall looks like chest wall to a
# threshold, and closing recovers only bites narrower than its disk. This is the known weakness
# of classical lung masks on COVID-19 scans and the reason Hofmanninger et al. trained their
# U-Net on pathological lungs (and later a COVID-19 variant, R231CovidWeb). Anything outside the
# lung mask becomes 0 after normalisation, so a lesion cut off here is invisible to every
# network downstream.
#
# ## 4. lungmask
#
# `lung_mask(volume, method="auto")` uses lungmask when its weights are on disk (a
# `modelpath=`, or R231 in the torch hub cache, where lungmask saves it on first use with
# internet) and otherwise falls back to the classical route with a warning. Two things go wrong
# with lungmask in practice, silently: an 8-bit windowed image (PNG/JPEG slices, or the
# Radiopaedia half of the COVID-19-CT-Seg data) or an already normalised one gives an all-zero
# mask, and so does a volume whose axes are mixed up. The library checks the input is a 3D CT in
# HU first and hands lungmask a SimpleITK image with its direction, so lungmask can reorient it.

# %% mystnb={"figure": {"caption": "Only when lungmask weights are available: the learned lungmask model's lungs against the classical mask on the same scan, lung window.", "name": "fig-02-lungmask"}}
weights = lungmask_weights(lungmask_modelpath)
if weights is None:
    print("No lungmask weights here (none given, none in the torch hub cache, and this build is offline), "
          "so only the classical masks are shown. With weights, this cell compares the two.")
    numbers["lungmask_vs_classical_dice"] = None
else:
    learned = lung_mask(example.image, "lungmask", weights, device=device)
    agreement = dice(learned > 0, classical > 0)
    print(f"lungmask vs classical Dice {agreement:.3f}; lungmask vs exact {dice(learned > 0, exact):.3f}")
    numbers["lungmask_vs_classical_dice"] = agreement
    display(viz.show_views(example.image, masks={"lungmask": learned > 0, "classical": classical > 0},
                           title="lungmask against the classical mask"))

# %%
windowed = example.image.with_array(np.clip((hu + 1250) / 1500 * 255, 0, 255).astype(np.float32))
try:
    lung_mask(windowed, "auto")
except ValueError as error:
    print(f"refused: {error}")

# %% [markdown]
# ## 5. Crop, resample, normalise
#
# `preprocess_case` chains the report's steps: lung mask, crop to the lungs plus a 10 mm margin,
# resample in-plane to 1 x 1 mm (linear interpolation for the image, nearest neighbour for the
# masks, so labels stay labels), then the z-score of section 3.2.4 with the lungs' own mean and
# standard deviation, and 0 outside. (The report writes sigma as "the variance"; dividing by the
# variance would not give unit spread: it is the standard deviation.) Results are cached by the
# content of the scan and the parameters, so the training chapters never redo this work.
# Here the classical masks computed above are passed in as `"given"`.

# %%
cache = PreprocessCache(Path(output_dir) / "preprocess_cache")
prepared = []
for case in cases:
    with_mask = Case(case.case_id, case.image, masks[case.case_id], case.lesion_mask, case.meta)
    prepared.append(preprocess_case(with_mask, lung_method="given", spacing_mm=1.0, margin_mm=10.0, cache=cache))
for case, out in list(zip(cases, prepared))[:4]:
    print(f"{case.case_id}: {case.image.shape} at {tuple(round(s, 2) for s in case.image.spacing)} mm "
          f"-> {out.image.shape} at {tuple(round(s, 2) for s in out.spacing)} mm")

# %% mystnb={"figure": {"caption": "Histograms of the lung voxels of six phantom scans, in HU (left) and after the z-score inside the lungs (right). The offsets between scans disappear, while each histogram keeps its shape, since a z-score is a straight line.", "name": "fig-02-normalisation"}}
before = {c.case_id: c.image.array[masks[c.case_id] > 0] for c in cases[:6]}
after = {p.case_id: p.image[p.lung_mask > 0] for p in prepared[:6]}
viz.show_normalisation(before, after, before_label="HU (lung voxels)", after_label="z-score (lung voxels)",
                       title="Lung intensities before and after normalisation (report Fig. 3.8)")

# %%
lung_means = [float(np.mean(v)) for v in before.values()]
z_means = [float(np.mean(v)) for v in after.values()]
z_sds = [float(np.std(v)) for v in after.values()]
print(f"lung mean HU across scans: {min(lung_means):.0f} to {max(lung_means):.0f}; "
      f"after: mean {max(abs(m) for m in z_means):.1e} at most, sd {min(z_sds):.3f}-{max(z_sds):.3f}")
numbers.update(lung_mean_hu=lung_means, zscore_sd=z_sds, spacing_after=[list(p.spacing) for p in prepared])
assert all(abs(m) < 1e-3 for m in z_means) and all(abs(s - 1) < 1e-3 for s in z_sds)

# %% [markdown]
# The offsets between scans (calibration drift, different noise, denser dependent lung) move the
# whole HU histogram; after the z-score the lung histograms sit on top of each other
# ({numref}`fig-02-normalisation`). The shape
# of each histogram is untouched: a z-score is a straight line. Histogram equalisation
# (`equalise_histogram`, listed among the report's steps without details) would also change
# shapes; it is available as an option (`preprocess_case(..., equalise=True)`) but not used by
# default, because it also rescales lesion contrast differently in every scan.
#
# ## 6. 2D 8-bit slices: COVID-SemiSeg
#
# The semi-supervised chapters ({doc}`07 <07_pseudo_labels>` and {doc}`08 <08_mean_teacher>`) use COVID-SemiSeg (Fan et al. 2020): single axial slices saved as
# 8-bit JPG, already windowed, cropped around the body, with no spacing and no HU. None of the
# above applies: a lung mask would need HU, resampling needs a spacing. The labelled and the
# unlabelled slices were also windowed differently (some grey, some bright), so each image is
# standardised by its own mean and standard deviation (`normalise_image`).

# %%
if dataset == "covid-semiseg":
    semiseg = get_dataset("covid-semiseg", data_root)
    print(semiseg)
    n_show = 8 if quick else 50
    labelled = [semiseg.load(case_id) for case_id in semiseg.case_ids("train")[:n_show]]
    unlabelled_ids = semiseg.case_ids("unlabelled")
    picks = np.linspace(0, len(unlabelled_ids) - 1, n_show).round().astype(int)
    unlabelled = [semiseg.load(unlabelled_ids[i]) for i in picks]
    panels = {c.case_id: c.image.array[0] for c in labelled[:4]}
    display(viz.show_panels(panels, window=(0.0, 255.0), masks={c.case_id: {"infection": c.lesion_mask[0]} for c in labelled[:4]},
                            title="COVID-SemiSeg labelled slices with infection masks"))
    groups_before = {"labelled": np.concatenate([c.image.array.ravel() for c in labelled]),
                     "unlabelled": np.concatenate([c.image.array.ravel() for c in unlabelled])}
    groups_after = {"labelled": np.concatenate([normalise_image(c.image.array).ravel() for c in labelled]),
                    "unlabelled": np.concatenate([normalise_image(c.image.array).ravel() for c in unlabelled])}
    display(viz.show_normalisation(groups_before, groups_after, before_label="8-bit grey level",
                                   after_label="per-image z-score", title="Labelled vs unlabelled slices"))
    infection = [float(c.lesion_mask.mean()) for c in labelled]
    numbers.update(semiseg_counts={s: len(semiseg.case_ids(s)) for s in semiseg.splits},
                   semiseg_infection_fraction=infection,
                   semiseg_mean_grey={k: float(v.mean()) for k, v in groups_before.items()})
    print(f"infection covers {np.mean(infection):.1%} of a labelled slice on average; mean grey level "
          f"labelled {groups_before['labelled'].mean():.0f}, unlabelled {groups_before['unlabelled'].mean():.0f}")
else:
    print("Run this chapter with dataset='covid-semiseg' and data_root=<the COVID-SemiSeg Dataset folder> "
          "to see real slices here.")

# %% [markdown]
# ## Summary
#
# - The report's datasets differ in labels (infection, tumour, effusion, lungs), in format (3D HU
#   volumes, 2D 8-bit slices) and in voxel size; `covidlib.datasets` gives them one interface.
# - Lung extraction by threshold alone fails; body mask + watershed split + closing/hole filling
#   gets the lungs right on the phantom ({term}`Dice` above 0.95 per lung), but can cut off dense lesions
#   at the pleura, which matters for infection segmentation. lungmask is preferable when its
#   weights are available; its input must be a 3D CT in HU.
# - Preprocessing = crop to the lungs, 1 x 1 mm in-plane with z kept, z-score inside the lungs.
#
# **Next**: {doc}`chapter 03 <03_augmentation>` augments these preprocessed scans.

# %%
from covidlib.results import write_record

write_record(output_dir, "02_data_and_preprocessing",
             parameters=dict(dataset=dataset, setting=setting, device=device, seed=seed, n_cases=n_cases,
                             shape=list(shape), threshold_hu=threshold_hu, lungmask_weights=str(weights) if weights else None),
             numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"cases: {len(cases)}, shapes after preprocessing: {sorted({p.image.shape[1:] for p in prepared})[:2]}")
print(f"classical lung mask Dice: mean {np.mean(dice_right + dice_left):.3f}, min {min(dice_right + dice_left):.3f}")
print(f"lesion voxels inside the classical mask: {np.mean(lesion_inside):.2f}")
print(f"spacing after: {sorted({tuple(round(s, 2) for s in p.spacing[1:]) for p in prepared})}")
