"""Segmenting a user's CT scan with a trained 2D network: ``python -m covidlib segment``.

The scan goes through the training preprocessing (:mod:`covidlib.preprocess`: lung mask, crop
to the lungs, 1 x 1 mm in-plane with z kept, z-score inside the lungs), the network runs slice
by slice on that grid, and its infection probability is brought back onto the scan's own grid:

* the probability map lives on the 1 mm crop grid, whose origin and direction are those of the
  cropped scan (:func:`covidlib.preprocess.crop_to_mask`); SimpleITK resamples it **linearly**
  onto the cropped scan's voxels (z needs no interpolation: it was never resampled), and a voxel
  is infected when the interpolated probability exceeds the threshold (the checkpoint's, 0.5 unless
  training chose one; ``--threshold`` overrides it). Interpolating
  probabilities and thresholding afterwards gives smooth borders; interpolating thresholded
  labels with nearest neighbour would give 1 mm staircases on a 0.7 mm grid;
* the crop is pasted into a full-size mask and restricted to the lung mask.

The outputs, the infection mask and the lung mask (right lung 1, left lung 2), carry the scan's
exact origin, spacing and direction (NIfTI headers hold float32, so a DICOM or NRRD scan written
as NIfTI keeps its geometry to about 1e-7 relative; ``.nrrd`` outputs keep doubles), and the
summary gives volumes in mL (lungs, infection) and the infected share of each lung and of both,
the measure radiologists grade severity by (e.g. the CT severity score of Pan et al., Radiology
2020). Nothing is written unless every output can be::

    python -m covidlib segment scan.nii.gz -o infection.nii.gz --checkpoint runs/unet/best.pt \
        [--lung-mask lungs.nii.gz] [--summary summary.json]

Checkpoints are those of :class:`covidlib.train.Trainer` (``best.pt``/``last.pt``), loaded by
:func:`covidlib.inference.load_model` with
``torch.load(weights_only=True)``. The network is rebuilt from the checkpoint's ``metadata`` as
``python -m covidlib train`` writes it: ``{"model": "unet", "model_options": {"base_width": 32,
"depth": 4, ...}}`` (:func:`covidlib.models.get_model`'s names and arguments). Checkpoints
without it need the architecture given (``--model``, ``--base-width``, ``--depth``).

The input must be prepared as it was in training, and the book has two ways:

* **lung crop** (the report's, :mod:`covidlib.preprocess`; the chapters train on it): the
  default; ``metadata["preprocess"]`` may hold the ``spacing_mm``/``margin_mm``/``equalise``
  the network was trained with;
* **window** (``python -m covidlib train``, whose checkpoints record ``image_size``): whole
  slices through the lung window to grey levels, z-scored per slice and resized to
  ``image_size`` squared; probabilities are resized back (bilinear) to each slice's own size.
  A constant slice (padding outside the field of view) is called free of infection rather than
  failing the scan (:func:`covidlib.inference.normalise_ct_slices`).

Introduced in chapter 04.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib.config import get_device
from covidlib.datasets import Case
from covidlib.errors import InvalidInputError
from covidlib.ensemble import load_ensemble
from covidlib.inference import Architecture, decision_threshold, grey_levels, load_model, normalise_ct_slices, resize_stack
from covidlib.io import WRITE_SUFFIXES, Volume, atomic_path, read_volume, write_volume
from covidlib.options import LUNG_METHODS
from covidlib.preprocess import check_ct_volume, crop_to_mask, lung_mask, preprocess_case, resolve_lung_method
from covidlib.train import predict_proba, resolve_amp

#: Lung labels of lungmask's convention and the names the summary uses for them.
LUNG_SIDES = {1: "right", 2: "left"}
#: Preprocessing settings a checkpoint's ``metadata["preprocess"]`` may fix (see preprocess_case).
PREPROCESS_KEYS = ("spacing_mm", "margin_mm", "equalise")


@dataclass
class Segmentation:
    """The result of :func:`segment_volume`, every volume on the scan's own grid ``(z, y, x)``.

    ``infection``: uint8 0/1; ``probability``: float32 infection probability (0 outside the
    lungs); ``lung_mask``: uint8, right lung 1, left lung 2; ``summary``: volumes in mL and the
    infected share of the lungs (see :func:`volume_summary`) plus what was run.

    Introduced in chapter 04.
    """

    infection: Volume
    probability: Volume
    lung_mask: Volume
    summary: dict[str, Any]


# --------------------------------------------------------------------------------------------
# The network


def predict_volume(model: nn.Module, image: np.ndarray, *, device: str | torch.device = "auto", batch_size: int = 8,
                   amp: str = "auto", progress: bool = True) -> np.ndarray:
    """Infection probability (z, y, x) float32 of a preprocessed volume, slice by slice.

    ``image`` (z, y, x) is the z-scored image of :func:`covidlib.preprocess.preprocess_case`.
    Runs without gradients under ``amp`` autocast (``"auto"``: bf16/fp16 on a GPU, bf16 on a CPU
    with native bf16 kernels, else float32, as :func:`covidlib.train.resolve_amp` decides) on
    ``get_device(device)``; a
    progress bar counts slices.

    Introduced in chapter 04.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    resolved = get_device(device)
    dtype = resolve_amp(amp, resolved)
    out = np.empty(image.shape, np.float32)
    with tqdm(total=len(image), desc="slices", unit="slice", disable=not progress) as bar:
        for start in range(0, len(image), batch_size):
            stop = min(start + batch_size, len(image))
            out[start:stop] = predict_proba(model, image[start:stop], resolved, batch_size, amp=dtype)
            bar.update(stop - start)
    return out


# --------------------------------------------------------------------------------------------
# From the crop grid back to the scan


def resample_onto(image: Volume, reference: Volume) -> np.ndarray:
    """``image`` linearly resampled onto ``reference``'s voxels; (z, y, x) float32 of ``reference``'s shape.

    Both volumes are placed by their origin, spacing and direction; reference voxels beyond the
    last sample of ``image`` take the nearest sample (no fading to zero at the edges).

    Introduced in chapter 04.
    """
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference.to_sitk())
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetUseNearestNeighborExtrapolator(True)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    source = sitk.Cast(image.to_sitk(), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(source))


def volume_summary(infection: np.ndarray, lungs: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """Lung and infected volumes in mL and the infected share (percent) of the lungs, per lung too.

    ``infection`` 0/1 and ``lungs`` (right 1, left 2) are (z, y, x) on a grid of ``spacing`` mm;
    a voxel holds ``prod(spacing) / 1000`` mL. Only infection inside the lungs counts.

    Introduced in chapter 04.
    """
    voxel_ml = float(np.prod(np.asarray(spacing, float))) / 1000.0
    infected = np.asarray(infection) > 0
    lungs = np.asarray(lungs)

    def measure(region: np.ndarray) -> dict[str, float | None]:
        lung_ml = int(np.count_nonzero(region)) * voxel_ml
        infected_ml = int(np.count_nonzero(region & infected)) * voxel_ml
        return {"lung_volume_ml": lung_ml, "infected_volume_ml": infected_ml,
                "infected_percent": 100.0 * infected_ml / lung_ml if lung_ml > 0 else None}

    summary: dict[str, Any] = {"voxel_volume_ml": voxel_ml, **measure(lungs > 0)}
    summary["lungs"] = {name: {"label": label, **measure(lungs == label)} for label, name in LUNG_SIDES.items()}
    return summary


def _lung_crop_probability(volume: Volume, lungs: np.ndarray, model: nn.Module, options: Mapping[str, Any],
                           predict: dict[str, Any]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Probability on the scan's grid through the report's preprocessing; also the network's grid shape."""
    case = Case(Path(volume.source or "scan").name, volume, lungs, None, {"intensity": "hu"})
    prepared = preprocess_case(case, lung_method="given", **options)
    # The crop grid's geometry: crop_to_mask on exactly preprocess_case's box (margin 0) gives its origin.
    box_mask = np.zeros(volume.shape, np.uint8)
    box_mask[tuple(slice(start, stop) for start, stop in prepared.meta["crop_box"])] = 1
    cropped, box = crop_to_mask(volume, box_mask, margin_mm=0.0)
    on_crop_grid = Volume(predict_volume(model, prepared.image, **predict), prepared.spacing, cropped.origin,
                          cropped.direction, volume.source)
    probability = np.zeros(volume.shape, np.float32)
    probability[box] = resample_onto(on_crop_grid, cropped)
    return probability, prepared.image.shape


def _window_probability(volume: Volume, model: nn.Module, image_size: int,
                        predict: dict[str, Any]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Probability on the scan's grid through ``python -m covidlib train``'s input preparation."""
    normalised, constant = normalise_ct_slices(grey_levels(volume.array, "hu"), volume.source or "<volume>")
    image = resize_stack(normalised, (image_size, image_size), "bilinear")
    probability = resize_stack(predict_volume(model, image, **predict), volume.shape[1:], "bilinear")
    # A constant slice (padding outside the field of view) shows no anatomy, so no infection;
    # a window-trained network never saw such input, so its output there is not evidence.
    probability[constant] = 0.0
    return np.clip(probability, 0.0, 1.0).astype(np.float32), image.shape


def segment_volume(volume: Volume, model: nn.Module, *, device: str | torch.device = "auto",
                   lung_method: str = "auto", lungmask_modelpath: str | Path | None = None,
                   preprocess: Mapping[str, Any] | None = None, window_size: int | None = None,
                   threshold: float = 0.5, batch_size: int = 8, amp: str = "auto", progress: bool = True) -> Segmentation:
    """Infection and lung masks of a CT ``volume`` (HU) on its own grid; see the module docstring.

    ``model`` maps (B, 1, H, W) prepared slices to logits (B, 2, H, W). Input preparation: with
    ``window_size=None`` the report's lung crop at 1 mm (``preprocess`` may set ``spacing_mm``,
    ``margin_mm`` and ``equalise`` as in training); with an int, the command line's windowed
    whole slices resized to ``window_size`` squared. ``lung_method`` and ``lungmask_modelpath``
    choose the lung mask (:func:`covidlib.preprocess.lung_mask`). A voxel is infected when its
    interpolated probability exceeds ``threshold`` and it lies in the lungs. Raises
    :class:`InvalidInputError` naming the scan for a 2D, 8-bit or otherwise non-HU image.

    Introduced in chapter 04.
    """
    if not 0.0 < threshold < 1.0:
        raise InvalidInputError(f"threshold must lie in (0, 1), got {threshold!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if lung_method not in LUNG_METHODS:
        raise InvalidInputError(f"lung_method={lung_method!r}: choose one of {LUNG_METHODS}")
    options = dict(preprocess or {})
    unknown = sorted(set(options) - set(PREPROCESS_KEYS))
    if unknown:
        raise InvalidInputError(f"preprocess options {unknown} are not known; choose from {PREPROCESS_KEYS}")
    if window_size is not None and (options or not isinstance(window_size, int) or window_size < 1):
        raise InvalidInputError(f"window_size={window_size!r} must be a positive int and excludes preprocess options")
    resolve_amp(amp, get_device(device))  # a bad device or amp fails here, before the lung mask
    check_ct_volume(volume)
    start = time.perf_counter()
    used = resolve_lung_method(lung_method, lungmask_modelpath)
    lungs = lung_mask(volume, used, lungmask_modelpath, device=str(device))
    if not lungs.any():
        raise InvalidInputError(f"{volume.source or '<volume>'}: no lungs found (lung mask by {used!r} is empty); "
                                "is this a chest CT?")
    predict = {"device": device, "batch_size": batch_size, "amp": amp, "progress": progress}
    if window_size is None:
        probability, network_shape = _lung_crop_probability(volume, lungs, model, options, predict)
    else:
        probability, network_shape = _window_probability(volume, model, window_size, predict)
    probability[lungs == 0] = 0.0
    infection = (probability > threshold).astype(np.uint8)

    summary = {"scan": volume.source, "shape": list(volume.shape), "spacing_mm": list(volume.spacing),
               **volume_summary(infection, lungs, volume.spacing),
               "threshold": threshold, "lung_method": used, "input": "window" if window_size else "lung-crop",
               "network_input_shape": list(network_shape), "device": str(get_device(device)),
               "seconds": time.perf_counter() - start}
    return Segmentation(volume.with_array(infection), volume.with_array(probability),
                        volume.with_array(lungs.astype(np.uint8)), summary)


# --------------------------------------------------------------------------------------------
# Files


def _image_suffix(path: Path) -> str:
    """The image ending of ``path`` among :data:`covidlib.io.WRITE_SUFFIXES` (longest match), or its last suffix."""
    name = path.name.lower()
    return next((s for s in sorted(WRITE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix)


def default_lung_mask_path(mask_path: str | Path) -> Path:
    """Where the lung mask goes when not named: ``<mask stem>_lungs<suffix>`` beside the mask."""
    mask_path = Path(mask_path)
    suffix = _image_suffix(mask_path)
    return mask_path.with_name(mask_path.name[: len(mask_path.name) - len(suffix)] + "_lungs" + suffix)


def check_output_paths(scan: str | Path, mask_path: str | Path, lung_mask_path: str | Path,
                       summary_path: str | Path | None = None) -> None:
    """Raise before any work when the outputs cannot be written or would overwrite the scan or each other."""
    outputs = {"-o/--output": Path(mask_path), "--lung-mask": Path(lung_mask_path)}
    for flag, path in outputs.items():
        if not path.name.lower().endswith(WRITE_SUFFIXES):
            raise InvalidInputError(f"{flag} {path}: an image output must end with one of {WRITE_SUFFIXES}")
    if summary_path is not None:
        outputs["--summary"] = Path(summary_path)
    resolved = [p.resolve() for p in outputs.values()]
    if len(set(resolved)) != len(resolved):
        raise InvalidInputError(f"output paths must differ, got {', '.join(f'{k} {v}' for k, v in outputs.items())}")
    if Path(scan).resolve() in resolved:
        raise InvalidInputError(f"{scan}: an output path names the input scan; it would be overwritten")
    for flag, path in outputs.items():
        if path.is_dir():
            raise InvalidInputError(f"{flag} {path}: is a folder; give a file name")


def write_segmentation(result: Segmentation, mask_path: str | Path, lung_mask_path: str | Path,
                       summary_path: str | Path | None = None) -> list[Path]:
    """Write the infection mask, the lung mask and (optionally) the JSON summary, all or none.

    Each file is first written in full to a hidden temporary name beside its target; only when
    every one is complete are they renamed into place, so a failure while writing leaves no
    output behind (and no earlier file half-replaced). A target that is a folder is refused before
    anything is written. Returns the paths written.

    Introduced in chapter 04.
    """
    outputs: list[tuple[Any, Path]] = [(result.infection, Path(mask_path)), (result.lung_mask, Path(lung_mask_path))]
    if summary_path is not None:
        outputs.append((result.summary, Path(summary_path)))
    for _, path in outputs:
        if path.is_dir():
            raise InvalidInputError(f"{path}: is a folder; give a file name")
    # Every temporary file is written before the first rename; a failure removes them all.
    with contextlib.ExitStack() as stack:
        for content, path in outputs:
            tmp = stack.enter_context(atomic_path(path, suffix=_image_suffix(path)))
            if isinstance(content, Volume):
                write_volume(content, tmp)
            else:
                tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return [path for _, path in outputs]


def format_volume_summary(summary: Mapping[str, Any]) -> str:
    """A few readable lines: lung and infected volumes (mL) and shares, both lungs and each."""
    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}%"

    lines = [f"lungs     {summary['lung_volume_ml']:9.1f} mL, infected {summary['infected_volume_ml']:8.1f} mL "
             f"({share(summary['infected_percent'])})"]
    for name, part in summary["lungs"].items():
        lines.append(f"{name:<5} ({part['label']}) {part['lung_volume_ml']:9.1f} mL, infected "
                     f"{part['infected_volume_ml']:8.1f} mL ({share(part['infected_percent'])})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line


def _architecture_option(args: argparse.Namespace) -> Architecture | None:
    if args.model is None:
        if args.base_width is not None or args.depth is not None:
            raise InvalidInputError("--base-width/--depth need --model")
        return None
    kwargs = {name: value for name, value in (("base_width", args.base_width), ("depth", args.depth)) if value is not None}
    return Architecture(args.model, kwargs)


def run(args: argparse.Namespace) -> int:
    """Run the ``segment`` subcommand: read, segment, write all outputs at the end, print the summary."""
    lung_mask_path = Path(args.lung_mask) if args.lung_mask else default_lung_mask_path(args.output)
    check_output_paths(args.scan, args.output, lung_mask_path, args.summary)
    architecture = _architecture_option(args)
    if architecture is not None and len(args.checkpoint) > 1:
        raise InvalidInputError("--model/--base-width/--depth rebuild one checkpoint's network; the checkpoints of "
                                "an ensemble must record their own")
    model, metadata = (load_model(args.checkpoint[0], architecture) if architecture is not None
                       else load_ensemble(args.checkpoint))
    checkpoint = " ".join(args.checkpoint)
    volume = read_volume(args.scan, series_id=args.series_id)
    preprocess = {k: v for k, v in dict(metadata.get("preprocess") or {}).items() if k in PREPROCESS_KEYS}
    window_size = int(metadata["image_size"]) if "image_size" in metadata and not preprocess else None
    result = segment_volume(volume, model, device=args.device, lung_method=args.lung_method,
                            lungmask_modelpath=args.lungmask_weights, preprocess=preprocess, window_size=window_size,
                            threshold=decision_threshold(metadata, checkpoint) if args.threshold is None
                            else args.threshold, batch_size=args.batch_size, amp=args.amp,
                            progress=not args.no_progress)
    result.summary.update(checkpoint=args.checkpoint[0] if len(args.checkpoint) == 1 else args.checkpoint,
                          model=metadata["model"], model_options=metadata["model_options"],
                          outputs={"infection": str(args.output), "lung_mask": str(lung_mask_path)})
    written = write_segmentation(result, args.output, lung_mask_path, args.summary)
    print(format_volume_summary(result.summary))
    print("lung mask from", result.summary["lung_method"], "| wrote", ", ".join(str(p) for p in written))
    return 0
