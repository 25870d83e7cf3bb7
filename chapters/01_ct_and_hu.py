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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/covid-ct-book/covid-ct-book/blob/main/chapters/01_ct_and_hu.ipynb)
#
# # 01. CT and Hounsfield units
#
# **What you will learn**
#
# - what a CT scanner measures (the linear attenuation coefficient) and how the Hounsfield
#   scale turns it into numbers where water is 0 and air is -1000;
# - how stored scanner values become HU (rescale slope and intercept) and what the odd values
#   -2048 or -3024 outside the field of view are;
# - what {term}`HU` each tissue of a chest CT has, using the book's synthetic {term}`phantom <Phantom>`, whose every
#   voxel's true tissue is known;
# - why a *display {term}`window <Window>`* is needed, and what the lung window [-1250, 250] of the report shows
#   that a mediastinal or a bone window hides;
# - what thick slices do to small lesions (the partial-volume effect), measured on the same
#   patient at 1 mm and 8 mm;
# - the three anatomical views and the slice viewer used throughout the book.
#
# **Prerequisites** none: Python and NumPy.
#
# **Run time** quick: ~30 s CPU; full: ~2 min CPU (no GPU needed).

# %% tags=["remove-cell"]
# Colab and fresh kernels: install the book's library only when it is missing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("covidlib") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "covidlib @ git+https://github.com/covid-ct-book/covid-ct-book"])

# %% tags=["parameters"]
dataset = "phantom"
data_root = ""  # COVID-SemiSeg's folder: with that dataset, section 8 sets real slices beside the phantom's
setting = "quick"  # "quick" (minutes, CI), "reference" (real data, a 2-core CPU), "full" (the report's settings, a GPU)
device = "auto"
seed = 0
output_dir = "results"
# chapter knobs
thin_mm = 1.0
thick_mm = 8.0
noise_hu = 20.0

# %%
import numpy as np
from scipy import ndimage

from covidlib import viz
from covidlib.config import choose, format_summary, runtime_summary, seed_everything
from covidlib.ct import check_hu, hu_summary, make_thick_slices, rescale_to_hu, resolve_window, window_hu
from covidlib.phantom import LESION_TISSUES, TISSUES, make_phantom

seed_everything(seed)
runtime = runtime_summary(setting=setting, device=device, seed=seed, dataset=dataset)
print(format_summary(runtime))
if dataset != "phantom":
    print(f"Chapter 01 needs the true tissue of every voxel, which only the phantom has: using it instead of {dataset!r} "
          "(section 8 shows real slices beside it).")

# Quick: a 96-slice slab on a 128 x 128 matrix; reference: 160 slices on 256 x 256; full: a whole chest on 512 x 512.
shape = choose(setting, quick=(96, 128, 128), reference=(160, 256, 256), full=(320, 512, 512))
pixel_mm = choose(setting, quick=2.8, reference=1.4, full=0.7)  # the same field of view, about 358 mm

# %% [markdown]
# ## 1. What a CT scanner measures
#
# An X-ray beam that crosses a body loses photons. Along a straight ray through material with
# linear attenuation coefficient $\mu(s)$, the intensity falls as
# $I = I_0 \exp\left(-\int \mu(s)\, ds\right)$ (Beer-Lambert). The scanner records $I/I_0$ for
# thousands of rays as the tube turns around the patient, and reconstruction (filtered back
# projection or an iterative method) recovers $\mu$ in every voxel {cite}`buzug2008ct`.
#
# $\mu$ depends on the photon energy and the scanner, so CT reports it relative to water:
#
# $$\mathrm{HU} = 1000 \times \frac{\mu - \mu_\text{water}}{\mu_\text{water} - \mu_\text{air}}.$$
#
# Water is 0 HU and air -1000 HU by definition. The scale has no upper end: dense bone reaches
# 1000-2000 HU and metal implants 3000 HU and more, so the report's remark that CT numbers lie
# between -1000 and 1000 holds only for soft tissue and lungs. Below, rough attenuation
# coefficients at an effective energy of about 70 keV give familiar HU values.

# %%
mu_per_cm = {"air": 0.0002, "water": 0.193, "inflated lung": 0.030, "fat": 0.172, "muscle": 0.201, "cortical bone": 0.38}


def hounsfield(mu: float) -> float:
    """HU from a linear attenuation coefficient (1/cm), relative to water and air."""
    return 1000.0 * (mu - mu_per_cm["water"]) / (mu_per_cm["water"] - mu_per_cm["air"])


for tissue, mu in mu_per_cm.items():
    print(f"{tissue:>14}: mu = {mu:.4f} /cm  ->  {hounsfield(mu):7.0f} HU")

# %% [markdown]
# ## 2. From stored values to HU
#
# Scanners store integers (often 12 bits, 0-4095) together with a *rescale slope* and
# *intercept* (DICOM tags 0028,1053 and 0028,1052): $\mathrm{HU} = \text{stored} \times
# \text{slope} + \text{intercept}$, typically slope 1 and intercept -1024. The reconstruction
# covers a circular field of view; the corners of the square image lie outside it and carry a
# *padding value* that is not a tissue. Some scanners write it so that it reads -2048 or -3024
# HU after rescaling. It must be set to air (or masked) before any statistics or
# normalisation, or a lung-window image of a perfectly normal scan has black corners that a
# network will happily learn. `covidlib.ct.rescale_to_hu` does both.

# %%
stored = np.array([0, 24, 1064, 2024, -2000], dtype=np.int16)  # the last one is the padding value (-3024 HU)
hu = rescale_to_hu(stored, slope=1.0, intercept=-1024.0, padding_value=-2000)
print("stored:", stored.tolist(), "->  HU:", hu.tolist())
assert hu.tolist() == [-1024.0, -1000.0, 40.0, 1000.0, -1000.0]

# %% [markdown]
# ## 3. The phantom: a chest CT whose every voxel's tissue is known
#
# Real scans cannot ship with the book, so it generates one: `covidlib.phantom.make_phantom`
# builds a chest in millimetres (body, fat, muscle, ribs, sternum and spine, two lungs with a
# vessel tree and airways, a table, the circular field of view with its padding) and adds
# COVID-19-like lesions: bilateral, mostly subpleural {term}`ground-glass opacities <GGO>`, some with
# {term}`consolidation <Consolidation>`. Along with the image it returns the {term}`lung mask <Lung mask>` (right lung 1, left lung 2, the
# convention of the lungmask tool {cite}`hofmanninger2020lungmask`), the infection mask and
# the tissue of every voxel. Here it is acquired with thin slices and a known noise level.

# %%
case = make_phantom(seed, shape, spacing=(thin_mm, pixel_mm, pixel_mm), noise_hu=noise_hu, offset_hu=0.0)
image = case.image
check_hu(image.array, image.source)
voxel_ml = float(np.prod(image.spacing)) / 1000.0
print(f"image {image.shape} (z, y, x), spacing {tuple(round(s, 2) for s in image.spacing)} mm, "
      f"{case.n_lesions} lesions, infection {case.lesion_mask.sum() * voxel_ml:.1f} mL")

tissues = {name: TISSUES[name] for name in ("air", "fat", "soft_tissue", "bone", "lung", "vessel", "airway", "ggo", "consolidation")}
summary = hu_summary(image.array, case.tissue_labels, tissues)
print(f"{'tissue':>14} {'mean HU':>8} {'sd':>6} {'voxels':>9}")
for name, row in summary.items():
    print(f"{name:>14} {row['mean']:8.0f} {row['sd']:6.0f} {row['voxels']:9d}")

# %% [markdown]
# Each tissue forms a peak ({numref}`fig-01-hu-histograms`); the spread around it is the scanner noise (here 20 HU) plus the
# tissue's own texture. Parenchyma (about -850) sits far from air (-1000), ground glass lies
# between parenchyma and soft tissue, and consolidation overlaps soft tissue and vessels: a
# single threshold cannot separate infection from vessels, which is one reason the book trains
# networks rather than thresholding.

# %% mystnb={"figure": {"caption": "HU of each tissue of the phantom (log counts), with the lung window [-1250, 250] HU shaded. Ground glass lies between parenchyma and soft tissue; consolidation overlaps soft tissue and vessels, so no single threshold separates infection.", "name": "fig-01-hu-histograms"}, "image": {"alt": "HU of each tissue of the phantom (log counts), with the lung window [-1250, 250] HU shaded"}}
viz.show_hu_histograms(image, case.tissue_labels, tissues, title="HU by tissue in the phantom (noise 20 HU)")

# %% [markdown]
# ## 4. Display windows
#
# A screen shows about 256 grey levels and the eye separates far fewer, so a viewer maps only a
# *window* of HU to black..white: values below it are black, above it white. A window is often
# given as width and level: the lung window of the report, [-1250, 250], is width 1500 and level
# -500. Written from scratch, windowing is a clip and a rescale:

# %%
def my_window(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((hu - lo) / (hi - lo), 0.0, 1.0)


for name in ("lung", "mediastinal", "bone"):
    lo, hi = resolve_window(name)
    assert np.allclose(my_window(image.array, lo, hi), window_hu(image.array, name), atol=1e-6)
    print(f"{name:>12}: [{lo:g}, {hi:g}] HU  (width {hi - lo:g}, level {(lo + hi) / 2:g})")

# %% mystnb={"figure": {"caption": "The phantom slice with the most infection, under the lung, mediastinal and bone windows. Only the lung window [-1250, 250] HU shows the ground-glass lesion; the mediastinal and bone windows both turn the lungs black.", "name": "fig-01-windows"}, "image": {"alt": "The phantom slice with the most infection, under the lung, mediastinal and bone windows"}}
lesion_slice = int(np.argmax(case.lesion_mask.sum(axis=(1, 2))))
viz.show_windows(image, ("lung", "mediastinal", "bone"), index=lesion_slice, title="One slice, three windows")

# %% [markdown]
# In the mediastinal window of {numref}`fig-01-windows` the lungs are flat black: parenchyma and ground glass are both
# below -160 HU. The bone window ([-450, 1050] HU) shows the ribs and spine, and its lower
# edge lies above both as well, so the lungs are black there too. Counting grey levels (of 256)
# between mean ground glass and mean parenchyma makes this concrete:

# %%
ggo_hu, lung_hu = summary["ggo"]["mean"], summary["lung"]["mean"]
grey_levels = {name: float(255 * (window_hu(np.array([ggo_hu]), name) - window_hu(np.array([lung_hu]), name))[0])
               for name in ("lung", "mediastinal", "bone")}
for name, levels in grey_levels.items():
    print(f"{name:>12} window: ground glass is {levels:5.1f} grey levels brighter than parenchyma")

# %% [markdown]
# ## 5. Thin and thick slices
#
# {term}`Slice thickness` is how much of the patient along z one image averages. Thin slices (1.5 mm
# or less) show small structures sharply but are noisier and many more; thick slices (5-8 mm,
# common where dose, storage or older scanners matter, as in the MosMed data
# {cite}`morozov2020mosmed`) average them away. The report's data ranged from 1 mm to 8 mm. A
# thick slice is, to a good approximation, the mean of the thin slices it covers, which is how
# `covidlib.ct.make_thick_slices` makes one. A small lesion then shares its slab with
# parenchyma: it looks fainter and its edges blur. This is the *partial-volume effect*.

# %% mystnb={"figure": {"caption": "A thin slice (1 mm by default) beside the thick slab (8 mm) that contains it, and that slab with its infection mask, all in the lung window. The slab is less noisy, but vessels and the edges of small lesions blur into the parenchyma.", "name": "fig-01-thin-thick"}, "image": {"alt": "A thin slice (1 mm by default) beside the thick slab (8 mm) that contains it, and that slab with its infection mask, all in the lung window"}}
thick = make_thick_slices(image, thick_mm)
thick_lesion = make_thick_slices(image.with_array(case.lesion_mask), thick_mm).array  # majority of the thin voxels
thick_labels = make_thick_slices(image.with_array(case.tissue_labels), thick_mm).array
print(f"thin {image.shape} at {image.spacing[0]} mm  ->  thick {thick.shape} at {thick.spacing[0]} mm")

# Each connected piece of infection: how much of its fullest thick voxel it fills.
pieces, n_pieces = ndimage.label(case.lesion_mask)
piece_ml = ndimage.sum_labels(case.lesion_mask, pieces, index=np.arange(1, n_pieces + 1)) * voxel_ml
piece_fraction = [make_thick_slices(image.with_array((pieces == k).astype(np.float32)), thick_mm).array.max()
                  for k in range(1, n_pieces + 1)]
vanished = [ml for ml, fraction in zip(piece_ml, piece_fraction) if fraction <= 0.5]  # never the majority of a thick voxel
factor = int(round(thick_mm / thin_mm))
z_show = int(np.argmax(case.lesion_mask.sum(axis=(1, 2))))

viz.show_panels(
    {f"thin: slice {z_show} ({thin_mm:g} mm)": image.array[z_show],
     f"thick: slab {z_show // factor} ({thick_mm:g} mm)": thick.array[z_show // factor],
     "thick, with its infection mask": thick.array[z_show // factor]},
    masks={"thick, with its infection mask": {"infection": thick_lesion[z_show // factor]}},
    title="The same patient, thin and thick",
)

# %%
lung_ids = [TISSUES["lung"]]
lesion_ids = [TISSUES[name] for name in LESION_TISSUES["covid"]]
contrast_thin = float(image.array[case.lesion_mask == 1].mean() - image.array[np.isin(case.tissue_labels, lung_ids)].mean())
contrast_thick = float(thick.array[thick_lesion == 1].mean() - thick.array[np.isin(thick_labels, lung_ids)].mean())
thick_voxel_ml = float(np.prod(thick.spacing)) / 1000.0
volume_thin = float(case.lesion_mask.sum() * voxel_ml)
volume_thick = float(thick_lesion.sum() * thick_voxel_ml)
air = case.tissue_labels == TISSUES["air"]
noise_thin = float(image.array[air].std())
noise_thick = float(thick.array[thick_labels == TISSUES["air"]].std())
print(f"lesion - parenchyma contrast: thin {contrast_thin:.0f} HU, thick {contrast_thick:.0f} HU")
print(f"infection volume: thin {volume_thin:.1f} mL, thick (majority mask) {volume_thick:.1f} mL")
vessel_thin = float(image.array[case.tissue_labels == TISSUES["vessel"]].mean())
vessel_thick = float(thick.array[thick_labels == TISSUES["vessel"]].mean())
print(f"vessels (mean HU of voxels labelled vessel): thin {vessel_thin:.0f}, thick {vessel_thick:.0f}")
print(f"infection pieces: {n_pieces} on thin slices; {len(vanished)} never fill more than half a thick voxel "
      f"and vanish from the thick mask (each under {max(vanished, default=0):.2f} mL)")
print(f"noise (sd in air): thin {noise_thin:.1f} HU, thick {noise_thick:.1f} HU, ratio {noise_thick / noise_thin:.2f} "
      f"(averaging {factor} independent slices predicts {1 / np.sqrt(factor):.2f})")

# %% [markdown]
# Thick slices trade noise for detail ({numref}`fig-01-thin-thick`): averaging 8 slices cuts the noise by about
# $\sqrt{8} \approx 2.8$. Large lesions, wider than a slab, keep most of their contrast; thin
# structures do not: vessels, a few millimetres wide, fall from soft-tissue values to a grey
# mixture with the parenchyma around them, and small pieces of infection never make up half of any
# thick voxel, so a mask drawn on thick slices loses them. A network trained on one kind of slice meets the other at test
# time, which is why the report slices all volumes into 2D images and why
# {doc}`chapter 02 <02_data_and_preprocessing>` resamples only in-plane.
#
# ## 6. Three views
#
# A volume is cut three ways: *axial* (across the body, the way CT is acquired), *coronal*
# (front view) and *sagittal* (side view). Radiologists look at an axial slice from the
# patient's feet, so the patient's right is on the image's left, which is also where the right
# lung (label 1) is drawn here. Voxels are not cubes, so the coronal and sagittal views must be
# stretched by the ratio of slice spacing to pixel spacing; `show_views` does this from the
# volume's spacing ({numref}`fig-01-views` and, for the thick slices, {numref}`fig-01-views-thick`).

# %% mystnb={"figure": {"caption": "Axial, coronal and sagittal slices of the thin-slice phantom in the lung window, to scale, with the infection and the right (label 1) and left (label 2) lung masks. The right lung is drawn on the image's left, as radiologists read an axial slice.", "name": "fig-01-views"}, "image": {"alt": "Axial, coronal and sagittal slices of the thin-slice phantom in the lung window, to scale, with the infection and the right (label 1) and left (label 2) lung masks"}}
viz.show_views(image, masks={"infection": case.lesion_mask, "right lung": case.lung_mask == 1,
                             "left lung": case.lung_mask == 2}, title="Thin-slice phantom")

# %% mystnb={"figure": {"caption": "The same three views of the thick-slice volume with its infection mask. Each voxel is now a whole slab tall (8 mm by default), so the coronal and sagittal views turn coarse along z.", "name": "fig-01-views-thick"}, "image": {"alt": "The same three views of the thick-slice volume with its infection mask"}}
viz.show_views(thick, masks={"infection": thick_lesion}, title=f"The same patient at {thick_mm:g} mm")

# %% [markdown]
# ## 7. Scrolling through a volume
#
# The slider below scrolls through the axial slices with the infection mask drawn on top. Every
# slice it shows is drawn in advance and travels with the page, so it works without a Python
# kernel: in Jupyter, in Colab and in this HTML book alike. (It shows at most 32 slices, evenly
# spaced: the slider counts them, the title gives each one's z.) A static montage of the same
# volume follows for print.

# %%
viz.slice_viewer(image, {"infection": case.lesion_mask}, window="lung", title="Phantom")

# %% mystnb={"figure": {"caption": "Twelve evenly spaced axial slices of the thin-slice phantom in the lung window, infection overlaid: the printed stand-in for the slice viewer above.", "name": "fig-01-montage"}, "image": {"alt": "Twelve evenly spaced axial slices of the thin-slice phantom in the lung window, infection overlaid: the printed stand-in for the slice viewer above"}}
viz.show_montage(image, n=12, masks={"infection": case.lesion_mask}, title="Phantom, 12 evenly spaced slices")

# %% [markdown]
# ## 8. The phantom beside real slices
#
# A phantom is only worth training on if it looks like the scans a network will meet. The real
# slices the book uses most, COVID-SemiSeg's {cite}`fan2020infnet`, are not HU volumes but 8-bit
# screenshots: windowed, cropped tightly to the chest, most of them turned a quarter so that the
# lungs lie above and below the heart. `covidlib.phantom.semiseg_view` shows a phantom slice
# the same way, drawing the window, the crop and the turn from small tables measured on the 50
# labelled real slices (`covidlib/phantom_calibration.json`, made by
# `benchmarks/calibrate_phantom.py`: histograms and quantiles, no pixels). The same tables drive
# the lesions' burden, count and grey level. {numref}`fig-01-phantom-real` compares grey-level
# histograms of lung parenchyma, body and lesions; with `dataset = "covid-semiseg"` and
# `data_root` set, real slices are drawn under the phantom's.

# %% mystnb={"figure": {"caption": "Phantom slices in the real-like view (8-bit window, tight crop, quarter turns drawn from the calibration tables), infection outlined, beside grey-level histograms of lung parenchyma, body and lesions: the phantom views (solid) against the 50 labelled COVID-SemiSeg slices (dashed, from the calibration tables). With real data configured, real slices appear in a second row.", "name": "fig-01-phantom-real"}, "image": {"alt": "Phantom slices in the real-like view (8-bit window, tight crop, quarter turns drawn from the calibration tables), infection outlined, beside grey-level histograms of lung parenchyma, body and lesions: the phantom views (solid) against the 50 labelled COVID-SemiSeg slices (dashed, from the calibration tables)"}}
from covidlib.phantom import grey_histogram, grey_regions, load_calibration, semiseg_view

calibration = load_calibration()
views = []
for k in range(4):
    source = make_phantom(seed + 100 + k, (8, 160, 160))
    views.append(semiseg_view(source, int(np.argmax(source.lesion_mask.sum(axis=(1, 2)))), seed + k, calibration))
regions = ("lung", "body", "lesion")
phantom_pixels = {name: np.concatenate([v.image[grey_regions(v.image, v.lung_mask > 0, v.lesion_mask > 0)[name]]
                                        for v in views]) for name in regions}
histograms = {"phantom": {name: grey_histogram(phantom_pixels[name]) for name in regions},
              f"real ({calibration['provenance']['n_slices']} slices)": {name: calibration["grey_histograms"][name]
                                                                         for name in regions}}
real_slices = None
if dataset == "covid-semiseg" and data_root:
    from covidlib.datasets import get_dataset

    semiseg = get_dataset("covid-semiseg", data_root)
    real_slices = [(c.image.array[0], c.lesion_mask[0]) for c in map(semiseg.load, semiseg.case_ids("train")[:4])]
viz.show_phantom_and_real([(v.image, v.lesion_mask) for v in views], histograms,
                          np.asarray(calibration["grey_histograms"]["bin_edges"]), real_slices)

# %%
view_medians = {name: float(np.median(phantom_pixels[name])) for name in regions}
real_medians = calibration["grey_histograms"]["medians"]
for name in regions:
    print(f"{name:>7}: median grey level phantom {view_medians[name]:5.1f}, real {real_medians[name]:5.1f}")

# %% [markdown]
# ### Does the phantom teach? On real scans (reference record)
#
# Matching histograms is not the point; a phantom earns its place if what a network learns on it
# carries over to real scans. `benchmarks/phantom_to_real.py` tests that in two parts. It trains a
# U-Net on phantom slices in the real-like view alone, picks its epoch on other phantom slices, and
# scores it once on COVID-SemiSeg's 50 labelled slices by {term}`Dice` (at probability 0.5) and by
# the {term}`Inf-Net mean Dice` that published results on this dataset use. Then, in
# {term}`nested cross-validation <Nested cross-validation>` on those slices (an inner split picks
# the epoch, the outer fold only scores), it fine-tunes that network and a network trained from
# scratch with the same splits, seeds and schedule, and compares them slice by slice. The numbers below are read from the committed record.

# %% tags=["hide-input"]
from IPython.display import Markdown, display

from covidlib.records import load_reference, reference_notice
from covidlib.results import format_change, interval_side, markdown_table

transfer_record = load_reference("phantom_to_real")
display(Markdown(reference_notice(transfer_record, "phantom_to_real")))
if transfer_record is not None:
    phantom_only = transfer_record.numbers["phantom_only"]
    at_half, infnet = phantom_only["real_dice_at_0.5"], phantom_only["real_infnet_mean_dice"]
    rows = [("trained on phantom slices only", f"{at_half['mean']:.3f} ± {at_half['sd']:.3f}",
             f"{infnet['mean']:.3f} ± {infnet['sd']:.3f}", f"all {at_half['n']} labelled slices"),
            ("every pixel called infection (the floor)", f"{phantom_only['real_dice_all_foreground_baseline']:.3f}",
             "—", f"all {at_half['n']} labelled slices")]
    transfer = transfer_record.numbers.get("transfer", {}).get("summary")
    if transfer:
        rows += [(f"{name}, nested CV", f"{transfer[key]:.3f}", f"{transfer['infnet_mean_dice'][arm]:.3f}",
                  f"{transfer['n']} outer-fold test slices")
                 for name, key, arm in (("trained from scratch", "scratch_mean_dice", "scratch"),
                                        ("fine-tuned from the phantom network", "pretrained_mean_dice", "phantom_pretrained"))]
    display(Markdown(markdown_table(rows, ("network", "Dice at 0.5 (mean ± sd over slices)", "Inf-Net mean Dice",
                                           "scored on"))))
    if transfer:
        lines = []
        for label, key in (("Dice at 0.5", "difference_pretrained_minus_scratch"),
                           ("Inf-Net mean Dice", "infnet_difference_pretrained_minus_scratch")):
            ci = transfer[key]
            lines.append(f"{label}: {format_change(ci['mean_difference'])}, "
                         f"95 % CI [{format_change(ci['low'])}, {format_change(ci['high'])}], which {interval_side(ci)}")
        display(Markdown("Phantom-pretrained minus scratch, paired over the test slices: " + "; ".join(lines) + "."))

# %% [markdown]
# ## Summary
#
# CT measures attenuation, and Hounsfield units express it relative to water and air. Stored
# values need their rescale, and padding outside the field of view must become air before
# anything else. Each tissue has its own HU range, and a window shows one range at a time: the
# lung window [-1250, 250] is the one where infection is visible. Thick slices average thin
# ones, which lowers noise but also the contrast and volume of small lesions.
# {doc}`Chapter 02 <02_data_and_preprocessing>` reads real scans and prepares them (lung masks, resampling, normalisation) for the networks.

# %% tags=["hide-input"]
from covidlib.results import write_record

numbers = {
    "hu_mean": {name: round(row["mean"], 1) for name, row in summary.items()},
    "hu_sd": {name: round(row["sd"], 1) for name, row in summary.items()},
    "n_lesions": case.n_lesions,
    "infection_ml_thin": volume_thin,
    "infection_ml_thick": volume_thick,
    "contrast_hu_thin": contrast_thin,
    "contrast_hu_thick": contrast_thick,
    "vessel_hu_thin": vessel_thin,
    "vessel_hu_thick": vessel_thick,
    "infection_pieces_thin": n_pieces,
    "infection_pieces_vanished_thick": len(vanished),
    "infection_piece_ml": piece_ml.tolist(),
    "noise_sd_thin": noise_thin,
    "noise_sd_thick": noise_thick,
    "ggo_vs_lung_grey_levels": grey_levels,
    "semiseg_view_median_grey": view_medians,
    # when each record shown here was written: ci/book reruns this chapter once one is rewritten
    "records_shown": {"phantom_to_real": transfer_record.record.get("created") if transfer_record else None},
}
record_path = write_record(output_dir, "01_ct_and_hu",
                           parameters=dict(dataset=dataset, setting=setting, device=device, seed=seed, thin_mm=thin_mm,
                                           thick_mm=thick_mm, noise_hu=noise_hu, shape=shape, pixel_mm=pixel_mm),
                           numbers=numbers, runtime=runtime)

# %%
# NBVAL_CHECK_OUTPUT
print(f"phantom {image.shape}, {case.n_lesions} lesions")
print("mean HU:", {name: int(round(row["mean"], -1)) for name, row in summary.items()})
print(f"infection mL thin/thick: {volume_thin:.0f} / {volume_thick:.0f}")
print(f"lesion contrast HU thin/thick: {contrast_thin:.0f} / {contrast_thick:.0f}")
print(f"vessel HU thin/thick: {vessel_thin:.0f} / {vessel_thick:.0f}")
print(f"infection pieces thin/vanished in thick: {n_pieces} / {len(vanished)}")
print(f"noise ratio thick/thin: {noise_thick / noise_thin:.2f}")
