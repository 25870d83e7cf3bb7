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
# **Run time** quick: ~1 min CPU; reference: ~1 min CPU (12 phantom scans on 256 x 256, all 1,650 COVID-SemiSeg
# slices); full: ~10 min CPU (a 40-scan cohort on 512 x 512 matrices).

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
data_root = ""  # folder of a real dataset (e.g. the COVID-SemiSeg "Dataset" folder); empty: $COVIDLIB_DATA/<dataset>
lungmask_modelpath = None  # a lungmask R231 weights file; None: the torch hub cache, if it holds one
threshold_hu = -350.0

# %%
from pathlib import Path

import numpy as np
from IPython.display import Markdown, display

from covidlib import viz
from covidlib.config import choose, format_summary, runtime_summary, seed_everything
from covidlib.datasets import Case, get_dataset, list_datasets
from covidlib.inference import spread_evenly
from covidlib.io import Volume
from covidlib.metrics import dice
from covidlib.preprocess import (PreprocessCache, classical_lung_mask, lung_mask, lungmask_weights,
                                 normalise_image, preprocess_case)
from covidlib.records import load_reference, reference_notice
from covidlib.results import markdown_table

seed_everything(seed)
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))

# The phantom cohort: 8 scans on a 128 x 128 matrix (quick), 12 on 256 x 256 (reference), 40 on 512 x 512 (full).
n_cases = choose(setting, quick=8, reference=12, full=40)
shape = choose(setting, quick=(48, 128, 128), reference=(96, 256, 256), full=(160, 512, 512))
# COVID-SemiSeg's facts: every labelled slice and this many unlabelled ones, evenly spread (None: all 1600)
n_unlabelled = choose(setting, quick=400, reference=None, full=None)
numbers: dict[str, object] = {}
reference = load_reference("02_data_and_preprocessing")

# %% [markdown]
# ## 1. The datasets
#
# The report's central problem is that labelled COVID-19 CT scans were scarce in 2020, so it
# leaned on other lung CT collections for pre-training and transfer: lung tumours (MSD),
# pleural effusion (NSCLC with the PleThora masks {cite}`kiser2020plethora`), and COVID-19 scans with (MosMed, the
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
# fit the body); between slices, the spacing ({term}`slice thickness <Slice thickness>`) ranges from under 1 mm (thin slices: 1.5 mm or less) to 5-10 mm
# ("thick-slice", common in emergency COVID-19 imaging, MosMed among them). The phantom
# cohort draws both at random like a multi-centre collection ({numref}`fig-02-spacings`). (In quick mode the matrix is
# 128 x 128, so its pixels are four times larger than a real scan's; full mode uses 512.)

# %% mystnb={"figure": {"caption": "Slice thickness against in-plane pixel size, one marker per scan of the phantom cohort (and of a real dataset when one is chosen). Slices run from about 1 mm to 8 mm thick, so a voxel of one scan can hold several times the tissue of another's.", "name": "fig-02-spacings"}, "image": {"alt": "Slice thickness against in-plane pixel size, one marker per scan of the phantom cohort (and of a real dataset when one is chosen)"}}
spacings = {"phantom cohort": [case.image.spacing for case in cases]}
real = None
if dataset not in ("phantom", "covid-semiseg"):
    real = get_dataset(dataset, data_root or None)
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
# below about -350 HU should be lung... Let us try it on one scan, and grade each mask against the
# phantom's exact lungs by its {term}`Dice` overlap (1 for a perfect match, 0 for none).

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
# The library's `classical_lung_mask` does exactly that. First, by hand, step 1 and the naive
# alternative to step 2, keeping the two largest connected air regions inside the body, to see
# why step 2 needs seeds and a watershed.

# %%
from scipy import ndimage

body = ndimage.binary_fill_holes(hu > -500, structure=np.ones((1, 3, 3)))
labels, count = ndimage.label(body)
body = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
air_inside = naive & body
components, count = ndimage.label(air_inside)
sizes = np.sort(np.bincount(components.ravel())[1:])[::-1]
two_largest = np.isin(components, np.argsort(np.bincount(components.ravel())[1:])[::-1][:2] + 1)
print(f"air inside the body: {count} connected regions, the three largest {sizes[:3].tolist()} voxels")
print(f"two largest regions: Dice {dice(two_largest, exact):.3f}")
# Often the lungs and the trachea form one connected region (the bronchi join them), or the two
# lungs touch in front of the heart: 'largest components' alone cannot separate them.

classical = classical_lung_mask(example.image, threshold_hu=threshold_hu)
print(f"library classical mask: Dice {dice(classical > 0, exact):.3f} "
      f"(right {dice(classical == 1, example.lung_mask == 1):.3f}, left {dice(classical == 2, example.lung_mask == 2):.3f})")
assert dice(classical > 0, exact) > max(dice(naive, exact), dice(two_largest, exact))

# %% mystnb={"figure": {"caption": "Axial, coronal and sagittal views of one phantom scan in the lung window, before lung extraction, with the classical lung mask (threshold, watershed split, closing and hole filling) and the lesions overlaid.", "name": "fig-02-before-extraction"}, "image": {"alt": "Axial, coronal and sagittal views of one phantom scan in the lung window, before lung extraction, with the classical lung mask (threshold, watershed split, closing and hole filling) and the lesions overlaid"}}
background = np.where(classical > 0, hu, -1024.0).astype(np.float32)
viz.show_views(example.image, masks={"lesion": example.lesion_mask, "classical lung mask": classical > 0},
               title=f"{example.case_id} before lung extraction (report Fig. 3.6)")

# %% mystnb={"figure": {"caption": "The same scan after lung extraction: every voxel outside the classical lung mask is set to air (-1024 HU), lung window. Only the lungs and their lesions are left for the intensity statistics.", "name": "fig-02-after-extraction"}, "image": {"alt": "The same scan after lung extraction: every voxel outside the classical lung mask is set to air (-1024 HU), lung window"}}
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

# %% mystnb={"figure": {"caption": "Only when lungmask weights are available: the learned lungmask model's lungs against the classical mask on the same scan, lung window.", "name": "fig-02-lungmask"}, "image": {"alt": "Only when lungmask weights are available: the learned lungmask model's lungs against the classical mask on the same scan, lung window"}}
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

# %% mystnb={"figure": {"caption": "Histograms of the lung voxels of six phantom scans, in HU (left) and after the z-score inside the lungs (right). Each histogram keeps its shape, since a z-score is a straight line; every scan now has mean 0 and sd 1, which puts a scan with much lesion (a wider spread) with its parenchyma peak further left.", "name": "fig-02-normalisation"}, "image": {"alt": "Histograms of the lung voxels of six phantom scans, in HU (left) and after the z-score inside the lungs (right)"}}
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
# Offsets between scans (calibration drift, different noise, denser dependent lung) move the
# whole HU histogram, and the z-score removes them: every scan's lung voxels get mean 0 and sd 1
# ({numref}`fig-02-normalisation`). It does not line the histograms up exactly: lesions widen a
# scan's spread, so a scan with much of them has its parenchyma peak further left after the
# z-score. The shape of each histogram is untouched: a z-score is a straight line. Histogram
# equalisation (`equalise_histogram`, listed among the report's steps without details) would
# change shapes; it is available as an option (`preprocess_case(..., equalise=True)`) but not used by
# default, because it also rescales lesion contrast differently in every scan.

# %% [markdown]
# ## 6. 2D 8-bit slices: COVID-SemiSeg
#
# The semi-supervised chapters ({doc}`07 <07_pseudo_labels>` and {doc}`08 <08_mean_teacher>`),
# and every chapter's reference run, use COVID-SemiSeg (Fan et al. 2020): single axial slices
# saved as 8-bit JPG, already windowed, cropped around the body, with no spacing and no HU. The
# report's steps need what these files lack: a lung mask needs HU, resampling to millimetres needs
# a spacing, and the z-score inside the lungs needs the lungs. `preprocess_case` therefore routes an
# 8-bit slice (`case.meta["intensity"] == "8bit"`) to its 2D equivalents and lists in
# `meta["steps"]` what ran; `covidlib.inference.prepare_slices`, which the training chapters call,
# does the same. Below, one slice goes both ways: an 8-bit slice of this run's data (the phantom
# scan above seen through the lung window, or real slices when `dataset="covid-semiseg"`) and the
# phantom CT in HU.

# %%
if dataset == "covid-semiseg":
    semiseg = get_dataset("covid-semiseg", data_root or None)
    train_ids = semiseg.case_ids("train")
    by_infection = sorted(train_ids, key=lambda case_id: int(semiseg.load(case_id).lesion_mask.sum()))
    unlabelled_all = semiseg.case_ids("unlabelled")
    # the slices with the most, the median and the least infection, and two unlabelled ones
    example_ids = [by_infection[-1], by_infection[len(by_infection) // 2], by_infection[0],
                   unlabelled_all[0], unlabelled_all[-1]]
    eight_bit = [semiseg.load(case_id) for case_id in example_ids]
else:
    z_view = int(example.lesion_mask.reshape(len(example.lesion_mask), -1).sum(axis=1).argmax())
    eight_bit = [Case(f"{example.case_id} z={z_view} (lung window, 8 bit)", Volume(windowed.array[z_view:z_view + 1], windowed.spacing),
                      None, example.lesion_mask[z_view:z_view + 1], {"intensity": "8bit"})]
after_2d = [preprocess_case(case) for case in eight_bit]
try:
    lung_mask(eight_bit[0].image, "auto")
    refusal = None
except ValueError as error:
    refusal = str(error)
routes = [("report, CT in HU (the phantom scan above)", prepared[0].meta["steps"]),
          ("2D equivalent, 8-bit slice (this run)", after_2d[0].meta["steps"])]
if reference is not None:
    routes.append(("2D equivalent, COVID-SemiSeg (reference record)", reference.numbers["covid_semiseg"]["steps"]))
display(Markdown(markdown_table([(name, " → ".join(steps)) for name, steps in routes], header=("route", "steps that ran"))))
display(Markdown(f"`lung_mask` on the 8-bit slice `{eight_bit[0].case_id}` refuses: `{refusal}`"))
for case, out in zip(eight_bit, after_2d):
    print(f"{case.case_id}: {case.image.shape[1:]} grey levels {case.image.array.min():.0f}-{case.image.array.max():.0f} "
          f"-> {out.image.shape[1:]}, z-score mean {out.image.mean():+.3f}, sd {out.image.std():.3f}")

# %% mystnb={"figure": {"caption": "8-bit slices of this run before their 2D preparation, grey levels as stored (0-255), infection outlined where the slice is labelled: with the phantom, its scan in the lung window; with COVID-SemiSeg, the labelled slices with the most, the median and the least infection and two unlabelled slices.", "name": "fig-02-slices-before"}, "image": {"alt": "8-bit slices of this run before their 2D preparation, grey levels as stored (0-255), infection outlined where the slice is labelled: with the phantom, its scan in the lung window; with COVID-SemiSeg, the labelled slices with the most, the median and the least infection and two unlabelled slices"}}
viz.show_panels({case.case_id: case.image.array[0] for case in eight_bit}, window=(0.0, 255.0), unit="8-bit grey levels",
                masks={case.case_id: {"infection": case.lesion_mask[0]} for case in eight_bit if case.lesion_mask is not None},
                title="Before: the slices as stored")

# %% mystnb={"figure": {"caption": "The same slices after the 2D equivalents of the report's preprocessing: resized so that the longer side spans 300 one-millimetre pixels, and z-scored over the whole image (grey scale -3 to 3).", "name": "fig-02-slices-after"}, "image": {"alt": "The same slices after the 2D equivalents of the report's preprocessing: resized so that the longer side spans 300 one-millimetre pixels, and z-scored over the whole image (grey scale -3 to 3)"}}
viz.show_panels({out.case_id: out.image[0] for out in after_2d}, window=(-3.0, 3.0), unit="z-score",
                masks={out.case_id: {"infection": out.lesion_mask[0]} for out in after_2d if out.lesion_mask is not None},
                title="After: resized to 1 mm pixels (300 mm assumed), z-scored per image")

# %% [markdown]
# ### The dataset's facts, computed from the files
#
# How many slices, how large, how much of each labelled slice is infected, and how bright: the
# labelled slices come from the MedSeg collection, the unlabelled ones from the 20 volumes of
# COVID-19-CT-Seg, whose file names say which archive each volume came from (Coronacases or
# Radiopaedia). The dataset's notes warn that the two parts were windowed differently, so the grey
# levels are counted per part, before and after the per-image z-score (`normalise_image`).
# The distance between two histograms is their total variation: the share of pixels that would
# have to move to another bin to turn one into the other (0: the same, 1: no overlap).

# %%
def source_of(case: Case) -> str:
    """labelled, or the archive an unlabelled slice's volume came from (its file name says)."""
    if case.lesion_mask is not None:
        return "labelled"
    return "unlabelled " + str(case.meta.get("source_volume", "unknown")).split("_org")[0]


def total_variation(counts_a: list[int], counts_b: list[int]) -> float:
    a, b = np.asarray(counts_a, float), np.asarray(counts_b, float)
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


facts = None
if dataset == "covid-semiseg":
    grey_edges, z_edges = np.arange(0.0, 257.0, 4.0), np.linspace(-4.0, 4.0, 65)
    unlabelled_ids = unlabelled_all if n_unlabelled is None else spread_evenly(unlabelled_all, n_unlabelled)
    groups: dict[str, dict[str, list]] = {}
    infection_share = []
    for case_id in train_ids + unlabelled_ids:
        case = semiseg.load(case_id)
        grey = case.image.array[0]
        group = groups.setdefault(source_of(case), {"grey": [], "z": [], "mean": [], "sd": [], "height": [], "width": []})
        group["grey"].append(np.histogram(grey, grey_edges)[0])
        group["z"].append(np.histogram(normalise_image(grey, case_id), z_edges)[0])
        group["mean"].append(round(float(grey.mean()), 1))
        group["sd"].append(round(float(grey.std()), 1))
        group["height"].append(grey.shape[0])
        group["width"].append(grey.shape[1])
        if case.lesion_mask is not None:
            infection_share.append(round(float(case.lesion_mask.mean()), 4))
    infection_edges = np.linspace(0.0, max(infection_share), 11)
    facts = {
        "counts": {split: len(semiseg.case_ids(split)) for split in semiseg.splits},
        "slices_measured": {name: len(g["mean"]) for name, g in groups.items()},
        "height_px": {name: [min(g["height"]), max(g["height"])] for name, g in groups.items()},
        "width_px": {name: [min(g["width"]), max(g["width"])] for name, g in groups.items()},
        "mean_grey": {name: round(float(np.mean(g["mean"])), 1) for name, g in groups.items()},
        "infection_share": infection_share,
        "infection_edges": infection_edges.round(5), "infection_counts": np.histogram(infection_share, infection_edges)[0],
        "grey_edges": grey_edges, "grey_counts": {name: np.sum(g["grey"], axis=0) for name, g in groups.items()},
        "z_edges": z_edges.round(4), "z_counts": {name: np.sum(g["z"], axis=0) for name, g in groups.items()},
        "image_mean": {name: g["mean"] for name, g in groups.items()},
        "image_sd": {name: g["sd"] for name, g in groups.items()},
        "steps": after_2d[0].meta["steps"],
        "lung_mask_refusal": refusal,
        "examples": [{"case_id": case.case_id, "shape_before": case.image.shape[1:], "shape_after": out.image.shape[1:]}
                     for case, out in zip(eight_bit, after_2d)],
    }
    facts["total_variation"] = {name: {"grey level": round(total_variation(facts["grey_counts"]["labelled"], facts["grey_counts"][name]), 3),
                                       "z-score": round(total_variation(facts["z_counts"]["labelled"], facts["z_counts"][name]), 3)}
                                for name in groups if name != "labelled"}
    numbers["covid_semiseg"] = facts
    print(f"{sum(facts['slices_measured'].values())} slices measured: {facts['slices_measured']}")
else:
    print("This run uses the phantom; with dataset='covid-semiseg' and data_root=<the COVID-SemiSeg folder> "
          "this cell measures the real slices. The reference record below holds those measurements.")

# %% [markdown]
# ### On real scans (reference record)
#
# The table puts this run's measurements (only when it ran on COVID-SemiSeg) beside those of the
# committed reference record, which measured every labelled and unlabelled slice. A copy without
# Inf-Net's 48 test slices (the one the reference run read) counts 0 test slices: every real-data
# score in this book comes from cross-validation on the 50 labelled slices.

# %% tags=["hide-input"]
display(Markdown(reference_notice(reference, "02_data_and_preprocessing")))
recorded = reference.numbers.get("covid_semiseg") if reference is not None else None


def fact_rows(found: dict | None) -> dict[str, str]:
    """The table's rows for one set of facts (this run's or the record's)."""
    if found is None:
        return {}
    share = np.asarray(found["infection_share"])
    rows = {f"{split} slices in this copy of the dataset": str(count) for split, count in found["counts"].items()}
    for name in found["slices_measured"]:
        rows[f"{name}: slices measured"] = str(found["slices_measured"][name])
        rows[f"{name}: height x width (px)"] = (f"{found['height_px'][name][0]}-{found['height_px'][name][1]} x "
                                               f"{found['width_px'][name][0]}-{found['width_px'][name][1]}")
        rows[f"{name}: mean grey level"] = f"{found['mean_grey'][name]:.1f}"
    for name, distances in found["total_variation"].items():
        rows[f"histogram distance labelled / {name}: grey level -> z-score"] = (
            f"{distances['grey level']:.3f} -> {distances['z-score']:.3f}")
    rows["infection share of a labelled slice: mean (min-max)"] = f"{share.mean():.3f} ({share.min():.4f}-{share.max():.3f})"
    return rows


live_rows, record_rows = fact_rows(facts), fact_rows(recorded)
if live_rows or record_rows:
    names = list(record_rows) + [name for name in live_rows if name not in record_rows]
    display(Markdown(markdown_table([(name, live_rows.get(name, "—"), record_rows.get(name, "—")) for name in names],
                                    header=("COVID-SemiSeg", "this run", "reference record"))))
shown, shown_from = (recorded, "reference record") if recorded is not None else (facts, "this run")

# %% mystnb={"figure": {"caption": "Grey levels of COVID-SemiSeg: labelled slices and the unlabelled ones by the archive their volume came from, as stored (left) and after the per-image z-score (middle), and each slice's mean against its standard deviation (right). Drawn from the reference record (from this run when there is no record; the title says which).", "name": "fig-02-semiseg-grey"}, "image": {"alt": "Grey levels of COVID-SemiSeg: labelled slices and the unlabelled ones by the archive their volume came from, as stored (left) and after the per-image z-score (middle), and each slice's mean against its standard deviation (right)"}}
viz.show_binned_histograms(
    None if shown is None else {"8-bit grey level": (shown["grey_edges"], shown["grey_counts"]),
                                "per-image z-score": (shown["z_edges"], shown["z_counts"])},
    scatter=None if shown is None else {name: (shown["image_mean"][name], shown["image_sd"][name]) for name in shown["image_mean"]},
    scatter_labels=("mean grey level of a slice", "sd of its grey levels"),
    title=f"COVID-SemiSeg: labelled against unlabelled slices ({shown_from})",
    empty_message="No reference record yet and this run used the phantom: nothing measured on COVID-SemiSeg.")

# %% mystnb={"figure": {"caption": "Share of the pixels of each labelled COVID-SemiSeg slice that the doctors marked as infection. Drawn from the reference record (from this run when there is no record; the title says which).", "name": "fig-02-semiseg-infection"}, "image": {"alt": "Share of the pixels of each labelled COVID-SemiSeg slice that the doctors marked as infection"}}
viz.show_binned_histograms(
    None if shown is None else {"infection share of a labelled slice": (shown["infection_edges"], {"labelled": shown["infection_counts"]})},
    title=f"COVID-SemiSeg: how much of a labelled slice is infected ({shown_from})",
    empty_message="No reference record yet and this run used the phantom: nothing measured on COVID-SemiSeg.")

# %%
if shown is not None:
    darkest = min(shown["mean_grey"], key=shown["mean_grey"].get)
    share = np.asarray(shown["infection_share"])
    distances = shown["total_variation"]
    display(Markdown(
        f"In {'the reference record' if shown is recorded else 'this run'}, the labelled slices average grey level "
        f"{shown['mean_grey']['labelled']:.0f}, while "
        f"the darkest part, *{darkest}*, averages {shown['mean_grey'][darkest]:.0f}: the same lung tissue is stored "
        f"at different grey levels. The histogram distance between the labelled slices and each unlabelled part drops "
        + ", ".join(f"from {d['grey level']:.2f} to {d['z-score']:.2f} ({name}: {1 - d['z-score'] / d['grey level']:.0%} of it gone)"
                    for name, d in distances.items())
        + " once each image is z-scored on its own: that share of the difference was overall brightness and contrast, and "
        "the per-image z-score is what lets the semi-supervised chapters pool the parts. Infection covers "
        f"{share.mean():.1%} of a labelled slice on average ({share.min():.1%} to {share.max():.1%}); "
        f"{int((share > 0).sum())} of the {len(share)} labelled slices show some, unlike most slices of a CT volume."))

# %% [markdown]
# ## Summary
#
# - The report's datasets differ in labels (infection, tumour, effusion, lungs), in format (3D HU
#   volumes, 2D 8-bit slices) and in voxel size; `covidlib.datasets` gives them one interface.
# - Lung extraction by threshold alone fails; body mask + watershed split + closing/hole filling
#   gets the lungs right on the phantom ({term}`Dice` per lung printed in section 3), but can cut off dense lesions
#   at the pleura, which matters for infection segmentation. lungmask is preferable when its
#   weights are available; its input must be a 3D CT in HU.
# - Preprocessing = crop to the lungs, 1 x 1 mm in-plane with z kept, z-score inside the lungs.
# - 2D 8-bit slices (COVID-SemiSeg) have no HU, no lungs and no spacing: `preprocess_case` runs
#   their 2D equivalents (resize as if 300 mm wide, z-score per image) and says so in `meta["steps"]`;
#   the per-image z-score removes most of the windowing offset between the labelled and unlabelled parts.
#
# **Next**: {doc}`chapter 03 <03_augmentation>` augments these preprocessed scans.

# %% tags=["hide-input"]
from covidlib.results import write_record

record_path = write_record(output_dir, "02_data_and_preprocessing",
                           parameters=dict(dataset=dataset, data_root=data_root, setting=setting, device=device, seed=seed,
                                           n_cases=n_cases, shape=list(shape), n_unlabelled=n_unlabelled, threshold_hu=threshold_hu, lungmask_weights=str(weights) if weights else None),
                           numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"cases: {len(cases)}, shapes after preprocessing: {sorted({p.image.shape[1:] for p in prepared})[:2]}")
print(f"classical lung mask Dice: mean {np.mean(dice_right + dice_left):.3f}, min {min(dice_right + dice_left):.3f}")
print(f"lesion voxels inside the classical mask: {np.mean(lesion_inside):.2f}")
print(f"spacing after: {sorted({tuple(round(s, 2) for s in p.spacing[1:]) for p in prepared})}")
