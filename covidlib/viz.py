"""Figures: windowed slices, montages, mask overlays, three anatomical views, HU histograms, a slice viewer,
and the chapters' figures of training, augmentation, pseudo-labels and stored records.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (nothing to
close, nothing shown twice: a figure displays when it is a notebook cell's value). Titles name
the display window. Axial slices are drawn as radiologists read them: the patient's right
(smaller x, with the identity direction) on the image's left, anterior at the top; coronal and
sagittal views put superior at the top.

Sections: notebook display, helpers, slices and montages, overlays, views, intensity plots,
interactive viewer, then the figures of particular chapters (dataset spacing, training,
augmentations and pseudo-labels, the book's own run, phantom beside real, stored records).
Introduced in chapter 01.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import matplotlib
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Patch

from covidlib.ct import Window, resolve_window, window_hu, window_label
from covidlib.errors import InvalidInputError
from covidlib.io import Volume

if TYPE_CHECKING:  # annotations only: these modules pull in torch or a widget toolkit
    import ipywidgets

    from covidlib.augment import Mixup, Transform
    from covidlib.pseudo import PseudoLabelConfig

#: Mask colours readable on grey CT and in print (Okabe-Ito, colour-blind safe).
MASK_COLOURS = ("#D55E00", "#0072B2", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442")

PANEL_INCHES = 3.2

Masks = np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray] | None
#: Numbers to plot: a list or tuple of floats, or a NumPy array.
Values = Sequence[float] | np.ndarray

# ---------------------------------------------------------------------------------------------
# Notebook display


def _register_notebook_display() -> None:
    """Let IPython render a pyplot-free Figure returned as a cell's value (as PNG).

    The inline backend registers this only once pyplot is imported; these figures never touch
    pyplot, so a fresh kernel (papermill, the built book) would otherwise show only ``<Figure>``.
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(Figure, lambda fig: print_figure(fig, "png", dpi=100))


_register_notebook_display()

# ---------------------------------------------------------------------------------------------
# Helpers


def _array_and_spacing(image: Volume | np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    if isinstance(image, Volume):
        return image.array, image.spacing
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise InvalidInputError(f"expected a 2D slice or a 3D (z, y, x) volume, got shape {array.shape}")
    return array, (1.0, 1.0, 1.0)


def _named_masks(masks: Masks, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Masks as ``{name: array}``; a label mask with several values becomes one entry per label."""
    if masks is None:
        return {}
    if isinstance(masks, Mapping):
        items = list(masks.items())
    elif isinstance(masks, np.ndarray):
        values = [v for v in np.unique(masks) if v != 0]
        items = [(f"label {int(v)}", masks == v) for v in values] if len(values) > 1 else [("mask", masks)]
    else:
        items = [(f"mask {i + 1}", m) for i, m in enumerate(masks)]
    named = {}
    for name, mask in items:
        mask = np.asarray(mask)
        if mask.ndim == 2 and len(shape) == 3 and shape[0] == 1:
            mask = mask[None]
        if mask.shape != tuple(shape):
            raise InvalidInputError(f"mask {name!r} has shape {mask.shape}, the image {tuple(shape)}")
        named[name] = mask != 0
    return named


def _take(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(array, index, axis=axis)


def _busiest_slice(masks: dict[str, np.ndarray], axis: int, length: int) -> int:
    """The slice along ``axis`` with the most mask voxels (the middle one when there are none)."""
    if masks:
        counts = sum(m.sum(axis=tuple(a for a in range(3) if a != axis)) for m in masks.values())
        if np.any(counts):
            return int(np.argmax(counts))
    return length // 2


def _draw(ax: Axes, image2d: np.ndarray, window: Window, masks2d: dict[str, np.ndarray] | None = None,
          alpha: float = 0.35, aspect: float = 1.0, origin: Literal["upper", "lower"] = "upper") -> None:
    ax.imshow(window_hu(image2d, window), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
              aspect=aspect, origin=origin)
    # The first mask is drawn last, on top: list the small structure (lesion) before the large one (lung).
    for colour, mask in reversed(list(zip(MASK_COLOURS, (masks2d or {}).values()))):
        if mask.any():
            ax.imshow(np.ma.masked_where(~mask, mask), cmap=ListedColormap([colour]), alpha=alpha,
                      interpolation="nearest", aspect=aspect, origin=origin)
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(fig: Figure, masks: dict[str, np.ndarray]) -> None:
    if masks:
        handles = [Patch(facecolor=c, edgecolor=c, label=n) for c, n in zip(MASK_COLOURS, masks)]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)


def _grid_figure(n: int, columns: int | None, title: str, legend: bool = False) -> tuple[Figure, np.ndarray]:
    columns = min(n, columns or int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / columns))
    fig = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * rows + 0.6 + (0.3 if legend else 0.0)),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(title)
    return fig, axes[:n]


# ---------------------------------------------------------------------------------------------
# Slices and montages


def show_slices(image: Volume | np.ndarray, indices: Sequence[int] | None = None, *, axis: int = 0,
                window: Window = "lung", masks: Masks = None, alpha: float = 0.35,
                title: str | None = None) -> Figure:
    """One row of slices (default: four evenly spaced along ``axis``), windowed, with optional masks.

    ``image``: a :class:`Volume` or an array ``(z, y, x)`` (or one 2D slice) in HU.
    Introduced in chapter 01.
    """
    array, _ = _array_and_spacing(image)
    if indices is None:
        indices = np.linspace(0, array.shape[axis] - 1, min(4, array.shape[axis]) + 2)[1:-1].round().astype(int).tolist() \
            if array.shape[axis] > 2 else list(range(array.shape[axis]))
    named = _named_masks(masks, array.shape)
    name = ("z", "y", "x")[axis]
    fig, axes = _grid_figure(len(indices), len(indices), f"{title or 'Slices'} ({window_label(window)})", bool(named))
    for ax, index in zip(axes, indices):
        _draw(ax, _take(array, axis, index), window, {k: _take(m, axis, index) for k, m in named.items()}, alpha)
        ax.set_title(f"{name} = {index}", fontsize=9)
    _legend(fig, named)
    return fig


def show_montage(image: Volume | np.ndarray, n: int = 12, *, axis: int = 0, window: Window = "lung",
                 masks: Masks = None, alpha: float = 0.35, columns: int | None = None,
                 title: str | None = None) -> Figure:
    """``n`` evenly spaced slices along ``axis`` in a grid: the static stand-in for :func:`slice_viewer`.

    Introduced in chapter 01.
    """
    array, _ = _array_and_spacing(image)
    count = min(n, array.shape[axis])
    if count < 1:
        raise InvalidInputError(f"n must be >= 1, got {n}")
    indices = np.linspace(0, array.shape[axis] - 1, count).round().astype(int)
    named = _named_masks(masks, array.shape)
    name = ("z", "y", "x")[axis]
    fig, axes = _grid_figure(count, columns, f"{title or 'Montage'} ({window_label(window)})", bool(named))
    for ax, index in zip(axes, indices):
        _draw(ax, _take(array, axis, int(index)), window, {k: _take(m, axis, int(index)) for k, m in named.items()}, alpha)
        ax.set_title(f"{name} = {int(index)}", fontsize=8)
    _legend(fig, named)
    return fig


def _range_label(window: Window, unit: str) -> str:
    """The title's name of the display range: a HU window by name, any other unit by its range."""
    if unit == "HU":
        return window_label(window)
    lo, hi = resolve_window(window)
    return f"display range [{lo:g}, {hi:g}] {unit}"


def show_panels(panels: Mapping[str, np.ndarray], *, window: Window = "lung", masks: Mapping[str, Masks] | None = None,
                alpha: float = 0.35, title: str | None = None, unit: str = "HU") -> Figure:
    """2D images side by side under one window, each titled by its key (e.g. thin vs thick slice).

    ``masks`` optionally maps a panel's key to masks for that panel. ``unit`` names what the
    pixel values are, for the title: ``"HU"`` (the window's name and range in HU), or e.g.
    ``"8-bit grey levels"`` or ``"z-score"`` for images that are not in Hounsfield units.
    Introduced in chapter 01.
    """
    if not panels:
        raise InvalidInputError("show_panels needs at least one panel")
    named = {key: _named_masks((masks or {}).get(key), np.shape(image)) for key, image in panels.items()}
    legend = next((m for m in named.values() if m), {})
    fig, axes = _grid_figure(len(panels), len(panels), f"{title or 'Comparison'} ({_range_label(window, unit)})",
                             bool(legend))
    for ax, (key, image) in zip(axes, panels.items()):
        image = np.asarray(image)
        if image.ndim != 2:
            raise InvalidInputError(f"panel {key!r} must be a 2D image, got shape {image.shape}")
        _draw(ax, image, window, named[key], alpha)
        ax.set_title(key, fontsize=9)
    _legend(fig, legend)
    return fig


# ---------------------------------------------------------------------------------------------
# Overlays


def show_overlay(image: Volume | np.ndarray, masks: Masks, *, index: int | None = None, window: Window = "lung",
                 alpha: float = 0.35, title: str | None = None) -> Figure:
    """The image slice beside the same slice with coloured, outlined masks.

    ``masks``: one array, a list, or ``{name: array}`` (names go in the legend); same shape as
    the image. ``index``: the axial slice, by default the one with the most mask voxels.
    Introduced in chapter 01.
    """
    array, _ = _array_and_spacing(image)
    named = _named_masks(masks, array.shape)
    z = _busiest_slice(named, 0, array.shape[0]) if index is None else int(index)
    if not 0 <= z < array.shape[0]:
        raise InvalidInputError(f"index {z} is outside the volume's {array.shape[0]} slices")
    fig, (left, right) = _grid_figure(2, 2, f"{title or 'Overlay'}, z = {z} ({window_label(window)})", bool(named))
    _draw(left, array[z], window)
    left.set_title("image", fontsize=9)
    _draw(right, array[z], window, {k: m[z] for k, m in named.items()}, alpha)
    right.set_title("masks", fontsize=9)
    _legend(fig, named)
    return fig


# ---------------------------------------------------------------------------------------------
# Views


def show_views(volume: Volume, index: tuple[int, int, int] | None = None, *, window: Window = "lung",
               masks: Masks = None, alpha: float = 0.35, title: str | None = None) -> Figure:
    """Axial, coronal and sagittal slices through ``index`` (z, y, x; default the centre), true to scale.

    Pixel aspect comes from the spacing, so a thick-slice scan looks stretched no more than it
    is; superior is drawn at the top (the z axis is flipped when the direction says z runs
    inferiorly).
    Introduced in chapter 01.
    """
    if not isinstance(volume, Volume):
        raise InvalidInputError(f"show_views needs a covidlib.io.Volume (for the spacing), got {type(volume).__name__}")
    array, (sz, sy, sx) = volume.array, volume.spacing
    named = _named_masks(masks, array.shape)
    if index is None:
        index = tuple(_busiest_slice(named, a, array.shape[a]) for a in range(3)) if named else tuple(s // 2 for s in array.shape)
    z, y, x = (int(i) for i in index)
    superior_up: Literal["upper", "lower"] = "lower" if volume.direction[8] >= 0 else "upper"
    fig, axes = _grid_figure(3, 3, f"{title or 'Three views'} ({window_label(window)})", bool(named))
    panels: list[tuple[str, str, np.ndarray, dict[str, np.ndarray], float, Literal["upper", "lower"]]] = [
        ("axial", f"z = {z}", array[z], {k: m[z] for k, m in named.items()}, sy / sx, "upper"),
        ("coronal", f"y = {y}", array[:, y], {k: m[:, y] for k, m in named.items()}, sz / sx, superior_up),
        ("sagittal", f"x = {x}", array[:, :, x], {k: m[:, :, x] for k, m in named.items()}, sz / sy, superior_up),
    ]
    for ax, (name, where, image2d, masks2d, aspect, origin) in zip(axes, panels):
        _draw(ax, image2d, window, masks2d, alpha, aspect=aspect, origin=origin)
        ax.set_title(f"{name} ({where})", fontsize=9)
    _legend(fig, named)
    return fig


# ---------------------------------------------------------------------------------------------
# Intensity plots


def show_windows(image: Volume | np.ndarray, windows: Sequence[Window] = ("lung", "mediastinal", "bone"), *,
                 index: int | None = None, title: str | None = None) -> Figure:
    """The same axial slice under several display windows, side by side.

    Introduced in chapter 01.
    """
    array, _ = _array_and_spacing(image)
    z = array.shape[0] // 2 if index is None else int(index)
    fig, axes = _grid_figure(len(windows), len(windows), f"{title or 'Display windows'}, z = {z}")
    for ax, window in zip(axes, windows):
        _draw(ax, array[z], window)
        ax.set_title(window_label(window), fontsize=9)
    return fig


def show_hu_histograms(image: Volume | np.ndarray, labels: np.ndarray, names: Mapping[str, int], *,
                       bins: np.ndarray | None = None, window: Window | None = "lung",
                       title: str | None = None) -> Figure:
    """Histogram of HU for each named label (log counts), with the display window shaded.

    Introduced in chapter 01.
    """
    array, _ = _array_and_spacing(image)
    labels = np.asarray(labels)
    if labels.shape != array.shape:
        raise InvalidInputError(f"labels have shape {labels.shape}, the image {array.shape}")
    bins = np.arange(-1100, 1201, 20) if bins is None else bins
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    # one distinct colour per tissue: the mask colours while they last, else matplotlib's ten;
    # beyond ten the line style changes too, so no two tissues are drawn alike
    palette = MASK_COLOURS if len(names) <= len(MASK_COLOURS) else tuple(matplotlib.colormaps["tab10"].colors)  # type: ignore[attr-defined]  # tab10 is a ListedColormap
    styles = ("-", "--", ":", "-.")
    drawn = 0
    for name, label in names.items():
        values = array[labels == label]
        if values.size:
            ax.hist(values, bins=bins, histtype="step",  # type: ignore[arg-type]  # matplotlib takes an array of bin edges
                    linewidth=1.5, color=palette[drawn % len(palette)],
                    linestyle=styles[drawn // len(palette) % len(styles)], label=f"{name} ({values.mean():.0f})")
            drawn += 1
    if window is not None:
        lo, hi = resolve_window(window)
        ax.axvspan(lo, hi, color="0.85", zorder=0, label=window_label(window))
    ax.set_yscale("log")
    ax.set_xlabel("HU")
    ax.set_ylabel("voxels")
    ax.set_xlim(bins[0], bins[-1])
    ax.legend(fontsize=8, title="tissue (mean HU)", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title or "HU by tissue")
    return fig


# ---------------------------------------------------------------------------------------------
# Interactive viewer


def slice_viewer(volume: Volume | np.ndarray, masks: Masks = None, *, window: Window = "lung",
                 alpha: float = 0.35, title: str | None = None, max_slices: int = 32,
                 dpi: int = 80) -> ipywidgets.VBox:
    """An ipywidgets viewer: a z slider over axial slices with optional mask overlays.

    Every shown slice is rendered once to a PNG and the slider is linked to a ``Stack`` of
    them in the browser (``jslink``), so the viewer works without a kernel: in Jupyter, in
    Colab and in the built HTML book alike. Volumes with more than ``max_slices`` slices show
    that many, evenly spaced. Returns the widget (a ``VBox``); chapters also show
    :func:`show_montage` of the same volume for print.
    Introduced in chapter 01.
    """
    import io as _io

    import ipywidgets as widgets

    array, _ = _array_and_spacing(volume)
    if max_slices < 1:
        raise InvalidInputError(f"slice_viewer: max_slices must be at least 1, got {max_slices}")
    named = _named_masks(masks, array.shape)
    depth = array.shape[0]
    shown = np.unique(np.linspace(0, depth - 1, min(depth, max_slices)).round().astype(int))
    label = title or "Slice viewer"
    images = []
    for frame, z in enumerate(shown):
        # the slider reads out the frame number, so the title names it beside z (they differ once
        # the volume is subsampled); two lines, as one does not fit a single panel's width
        fig, (ax,) = _grid_figure(1, 1, f"{label}: slice {frame} of {len(shown) - 1}, z = {z}\n{window_label(window)}",
                                  bool(named))
        _draw(ax, array[z], window, {k: m[z] for k, m in named.items()}, alpha)
        _legend(fig, named)
        buffer = _io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        images.append(widgets.Image(value=buffer.getvalue(), format="png"))
    start = int(np.abs(shown - _busiest_slice(named, 0, depth)).argmin())
    stack = widgets.Stack(images, selected_index=start)
    slider = widgets.IntSlider(value=start, min=0, max=len(shown) - 1, description="slice",
                               readout=True, continuous_update=True)
    widgets.jslink((slider, "value"), (stack, "selected_index"))
    return widgets.VBox([slider, stack])


# ---------------------------------------------------------------------------------------------
# Dataset spacing and intensity normalisation (chapter 02)


def show_spacings(spacings: Mapping[str, Sequence[Sequence[float]] | np.ndarray], *, title: str | None = None) -> Figure:
    """Slice thickness against in-plane pixel size, one marker style per group (like report Fig. 3.7).

    ``spacings`` maps a group name (dataset) to ``(z, y, x)`` spacings in mm, one per scan.
    Introduced in chapter 02.
    """
    if not spacings:
        raise InvalidInputError("show_spacings needs at least one group of spacings")
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    markers = iter("osD^vP*X" * 2)
    for colour, (name, values) in zip(MASK_COLOURS * 3, spacings.items()):
        values = np.asarray(values, dtype=float).reshape(-1, 3)
        ax.scatter(values[:, 1], values[:, 0], s=36, marker=next(markers), color=colour, alpha=0.8,
                   label=f"{name} ({len(values)})")
    ax.set_xlabel("in-plane pixel size (mm)")
    ax.set_ylabel("slice thickness / spacing (mm)")
    ax.grid(True, color="0.9")
    ax.legend(fontsize=8, title="dataset (scans)")
    ax.set_title(title or "Voxel spacing across scans")
    return fig


def show_normalisation(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray], *,
                       before_label: str = "HU", after_label: str = "z-score",
                       title: str | None = None) -> Figure:
    """Intensity histograms of the same voxels before and after normalisation (like report Fig. 3.8).

    ``before`` and ``after`` map a name (one scan) to its voxel values (e.g. the lung voxels);
    densities are drawn as step lines so many scans stay readable.
    Introduced in chapter 02.
    """
    if not before or set(before) != set(after):
        raise InvalidInputError("show_normalisation needs the same non-empty set of names before and after")
    fig = Figure(figsize=(11, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax, values_by_name, label in ((left, before, before_label), (right, after, after_label)):
        for colour, (name, values) in zip(MASK_COLOURS * 3, values_by_name.items()):
            values = np.asarray(values, dtype=float).ravel()
            lo, hi = np.percentile(values, [0.5, 99.5])
            ax.hist(values, bins=np.linspace(lo, hi, 80), density=True, histtype="step", linewidth=1.3,
                    color=colour, label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("density")
    left.set_title(f"before ({before_label})", fontsize=10)
    right.set_title(f"after ({after_label})", fontsize=10)
    right.legend(fontsize=7, loc="upper right")
    fig.suptitle(title or "Intensity before and after normalisation")
    return fig


# ---------------------------------------------------------------------------------------------
# Training figures


def show_learning_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], *, title: str | None = None) -> Figure:
    """Training loss and validation Dice per epoch, one line per run.

    ``histories`` maps a run's name to its :attr:`covidlib.train.Trainer.history` (dicts with
    ``epoch``, ``train_loss``, ``val_dice``); the best epoch of each run is marked. Losses of
    different kinds have different scales, so each is drawn relative to its first epoch.
    Introduced in chapter 04.
    """
    if not histories or any(len(rows) == 0 for rows in histories.values()):
        raise InvalidInputError("show_learning_curves needs at least one run with at least one epoch")
    fig = Figure(figsize=(11, 4.0), layout="constrained")
    loss_ax, dice_ax = fig.subplots(1, 2)
    for colour, (name, rows) in zip(MASK_COLOURS * 3, histories.items()):
        epochs = [row["epoch"] for row in rows]
        dices = [row["val_dice"] for row in rows]
        loss_ax.plot(epochs, [row["train_loss"] / rows[0]["train_loss"] for row in rows], color=colour, label=name)
        dice_ax.plot(epochs, dices, color=colour, label=name)
        best = int(np.argmax(dices))
        dice_ax.plot(epochs[best], dices[best], marker="o", color=colour)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss / loss of epoch 1")
    loss_ax.set_title("training loss, relative to the first epoch", fontsize=10)
    dice_ax.set_xlabel("epoch")
    dice_ax.set_ylabel("validation Dice")
    dice_ax.set_ylim(0, 1)
    dice_ax.set_title("validation Dice (dot: best epoch, the model kept)", fontsize=10)
    for ax in (loss_ax, dice_ax):
        ax.grid(True, color="0.9")
    dice_ax.legend(fontsize=8)
    fig.suptitle(title or "Learning curves")
    return fig


def show_attention_maps(images: np.ndarray, masks: np.ndarray, probabilities: np.ndarray,
                        attention: Mapping[str, np.ndarray], *, intensity_range: tuple[float, float] = (-3.0, 3.0),
                        title: str | None = None) -> Figure:
    """One row per slice: the image with its true mask outlined, the predicted probability, and
    each attention map (resized to the image, values in [0, 1]).

    ``images``, ``masks`` (0/1) and ``probabilities``: (N, H, W); ``attention`` maps a level's
    name to its maps (N, h, w) (e.g. ``AttentionUNet2d.attention_maps``, channel dropped).
    ``intensity_range``: the grey-scale limits of the (normalised) images.
    Introduced in chapter 04.
    """
    images, masks, probabilities = (np.asarray(a) for a in (images, masks, probabilities))
    if images.ndim != 3 or masks.shape != images.shape or probabilities.shape != images.shape:
        raise InvalidInputError(f"images, masks and probabilities must share one (N, H, W) shape, got "
                                f"{images.shape}, {masks.shape}, {probabilities.shape}")
    rows, columns = len(images), 2 + len(attention)
    fig = Figure(figsize=(2.4 * columns + 0.8, 2.4 * rows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, columns, squeeze=False))
    lo, hi = intensity_range
    shown = None
    for row in range(rows):
        height, width = images[row].shape
        axes[row, 0].imshow(images[row], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if masks[row].any():
            axes[row, 0].contour(masks[row].astype(float), levels=[0.5], colors=[MASK_COLOURS[0]], linewidths=0.9)
        shown = axes[row, 1].imshow(probabilities[row], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        for column, maps in enumerate(attention.values(), start=2):
            level = np.asarray(maps[row], dtype=float)
            # Nearest upsampling keeps the coarse levels' true resolution visible.
            rows_index = np.minimum(np.arange(height) * level.shape[0] // height, level.shape[0] - 1)
            cols_index = np.minimum(np.arange(width) * level.shape[1] // width, level.shape[1] - 1)
            axes[row, column].imshow(level[np.ix_(rows_index, cols_index)], cmap="viridis", vmin=0, vmax=1,
                                     interpolation="nearest")
    names = ["image, true infection outlined", "predicted probability", *(f"attention: {k}" for k in attention)]
    for column, name in enumerate(names):
        axes[0, column].set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    assert shown is not None  # rows >= 1: fig.subplots refuses 0 rows
    fig.colorbar(shown, ax=axes[:, 1:], fraction=0.02, label="probability / attention coefficient")
    fig.suptitle(title or f"Attention maps (grey scale [{lo:g}, {hi:g}] z-score)")
    return fig


# ---------------------------------------------------------------------------------------------
# Augmentations and pseudo-labels (chapters 03 and 07)


def show_augmentations(image: np.ndarray, mask: np.ndarray | None, transforms: Sequence[Transform], *,
                       titles: Sequence[str] | None = None, ncols: int = 4, value_range: tuple[float, float] = (-3.0, 3.0),
                       suptitle: str = "", include_original: bool = True, panel_size: float = 2.6) -> Figure:
    """``image`` (H, W) under each transform, the mask outline in red on every panel.

    Titles default to each transform's :meth:`covidlib.augment.Transform.label`. ``value_range``
    is the grey scale (z-score units after preprocessing: lung window equivalent about [-3, 3]).
    Introduced in chapter 03.
    """
    panels = [("original", image, mask)] if include_original else []
    for i, transform in enumerate(transforms):
        out_image, out_mask = transform(image, mask)
        panels.append((titles[i] if titles is not None else transform.label(), out_image, out_mask))
    ncols = min(ncols, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, panel, panel_mask) in zip(axes.ravel(), panels):
        ax.imshow(panel, cmap="gray", vmin=value_range[0], vmax=value_range[1], interpolation="nearest")
        if panel_mask is not None and np.any(panel_mask):
            ax.contour(np.asarray(panel_mask, dtype=float), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(suptitle or f"grey scale [{value_range[0]:g}, {value_range[1]:g}] (z-score); red: infection outline",
                 fontsize=10)
    return fig


def show_mixup(images: np.ndarray, targets: np.ndarray, mixed_images: np.ndarray, soft_targets: np.ndarray,
               transform: Mixup, *, item: int = 0, value_range: tuple[float, float] = (-3.0, 3.0)) -> Figure:
    """The two slices mixup combined into batch item ``item``, the mix, and its soft label.

    ``images`` (B, 1, H, W), ``targets`` (B, H, W) class indices, ``mixed_images`` and
    ``soft_targets`` (B, 2, H, W) from :class:`covidlib.augment.Mixup`. The soft label panel shows
    the infection probability (class 1) on a 0-1 colour scale.
    Introduced in chapter 03.
    """
    partner = int(transform.permutation[item])
    lam = transform.lam
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, (title, panel, outline) in zip(axes[:3], [
            (f"slice {item} (weight λ={lam:.2f})", images[item, 0], targets[item]),
            (f"slice {partner} (weight 1-λ={1 - lam:.2f})", images[partner, 0], targets[partner]),
            ("mixed image", mixed_images[item, 0], None)]):
        ax.imshow(panel, cmap="gray", vmin=value_range[0], vmax=value_range[1])
        if outline is not None and np.any(outline):
            ax.contour(np.asarray(outline, dtype=float), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(title, fontsize=9)
    shown = axes[3].imshow(soft_targets[item, 1], cmap="viridis", vmin=0.0, vmax=1.0)
    axes[3].set_title("soft label: P(infection)", fontsize=9)
    fig.colorbar(shown, ax=axes[3], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("mixup (Zhang et al. 2018): images and labels mixed with the same λ", fontsize=10)
    return fig


def show_similarity_histogram(scores: np.ndarray, config: PseudoLabelConfig | None = None, *, bins: int = 60,
                              ax: Axes | None = None) -> Figure | SubFigure:
    """Histogram of each unlabelled patch's best cosine similarity (report Fig. 5.7), with the
    acceptance thresholds of ``config`` (default :class:`covidlib.pseudo.PseudoLabelConfig`) marked.

    Drawn on ``ax`` when given (its figure, or subfigure, is returned, its layout left to its owner).
    Introduced in chapter 07.
    """
    if config is None:
        # Imported here: covidlib.pseudo pulls in torch, which no other figure needs.
        from covidlib.pseudo import PseudoLabelConfig

        config = PseudoLabelConfig()
    scores = np.asarray(scores, dtype=np.float32)
    best = scores[:, 0] if scores.ndim == 2 else scores
    if ax is None:
        fig = Figure(figsize=(6, 3.5), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    ax.hist(best, bins=bins, color="0.45")
    low, high = config.band
    ax.axvspan(low, high, color="tab:orange", alpha=0.2, label=f"top1_band [{low:.2f}, {high:.2f}]")
    ax.axvline(config.top2_threshold, color="tab:blue", linestyle="--", label=f"top2 threshold {config.top2_threshold:.2f}")
    ax.set_xlabel("best cosine similarity to the labelled dictionary")
    ax.set_ylabel("unlabelled patches")
    ax.set_title(f"Similarity of {len(best)} unlabelled patches (encoder + GAP)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def show_pseudo_label_examples(patches: np.ndarray, masks: np.ndarray, weights: np.ndarray, *, n: int = 8,
                               title: str = "Unlabelled patches and their pseudo masks") -> Figure:
    """Patches (N, P, P) over their soft masks (N, P, P), weight in each title (report Fig. 5.8).

    Top row: the patch (grey, its own min-max window); bottom row: the patch with the soft
    mask as a red overlay (alpha = mask probability).
    Introduced in chapter 07.
    """
    count = min(n, len(patches))
    if count == 0:
        raise InvalidInputError("no patches to show (no patch was accepted?)")
    fig = Figure(figsize=(1.6 * count, 3.6), layout="constrained")
    axes = fig.subplots(2, count, squeeze=False)
    for column in range(count):
        for row in range(2):
            axes[row, column].imshow(patches[column], cmap="gray")
            axes[row, column].axis("off")
        overlay = np.zeros((*masks[column].shape, 4), dtype=np.float32)
        overlay[..., 0] = 1.0
        overlay[..., 3] = 0.6 * np.clip(masks[column], 0.0, 1.0)
        axes[1, column].imshow(overlay)
        axes[0, column].set_title(f"w={float(weights[column]):.3f}", fontsize=8)
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------
# The book's own run (chapter 09)


def show_run_times(seconds: Mapping[str, float], *, budget_s: float | None = None,
                   title: str | None = None) -> Figure:
    """Horizontal bars of the measured wall time of each chapter, with an optional budget line.

    ``seconds`` maps a chapter name to its wall time in seconds (``ci/book``'s ``_timings.json``).
    Introduced in chapter 09.
    """
    if not seconds:
        raise InvalidInputError("show_run_times needs at least one chapter's time")
    if any(not np.isfinite(v) or v < 0 for v in seconds.values()):
        raise InvalidInputError(f"show_run_times: times must be finite and non-negative, got {dict(seconds)}")
    names = list(seconds)
    values = np.array([seconds[n] for n in names], dtype=float)
    fig = Figure(figsize=(6.4, 0.4 * len(names) + 1.2), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(names))[::-1]
    ax.barh(positions, values, color=MASK_COLOURS[0])
    ax.set_yticks(positions, names)
    for y, value in zip(positions, values):
        ax.text(value, y, f" {value:.0f} s", va="center", fontsize=8)
    if budget_s is not None:
        ax.axvline(budget_s, color="0.3", linestyle="--", linewidth=1, label=f"budget {budget_s:.0f} s")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("wall time (s)")
    ax.set_xlim(0, max(values.max(), budget_s or 0) * 1.15)
    ax.set_title(title or f"Chapter run times (total {values.sum():.0f} s)")
    return fig


# ---------------------------------------------------------------------------------------------
# Phantom beside real slices (chapter 01)


def show_phantom_and_real(phantom: Sequence[tuple[np.ndarray, np.ndarray]],
                          histograms: Mapping[str, Mapping[str, np.ndarray]], bin_edges: np.ndarray,
                          real: Sequence[tuple[np.ndarray, np.ndarray]] | None = None, *,
                          title: str | None = None) -> Figure:
    """Phantom slices (and real ones, when given) with lesions outlined, beside grey-level histograms.

    ``phantom`` and ``real``: (image (H, W) 8-bit grey levels, lesion mask (H, W)) pairs, sizes
    may differ; one row each. ``histograms``: ``{source: {region: shares}}`` (e.g. source
    "phantom" / "real", region "lung" / "body" / "lesion") over ``bin_edges`` (0..256); drawn
    as lines, one panel per region, solid for the first source, dashed for the others.
    Introduced in chapter 01.
    """
    if not phantom:
        raise InvalidInputError("show_phantom_and_real needs at least one phantom slice")
    rows = [("phantom", list(phantom))] + ([("real", list(real))] if real else [])
    columns = max(len(slices) for _, slices in rows)
    regions = list(next(iter(histograms.values()))) if histograms else []
    edges = np.asarray(bin_edges, dtype=float)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = Figure(figsize=(2.2 * columns + 3.6, 2.4 * max(len(rows), len(regions) * 0.8) + 0.6), layout="constrained")
    grid = fig.add_gridspec(max(len(rows), 1) * len(regions) if regions else len(rows), columns + 2)
    span = len(regions) if regions else 1
    for row, (name, slices) in enumerate(rows):
        for column, (image, mask) in enumerate(slices):
            ax = fig.add_subplot(grid[row * span:(row + 1) * span, column])
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if np.asarray(mask).any():
                ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=[MASK_COLOURS[0]], linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(name)
    for index, region in enumerate(regions):
        ax = fig.add_subplot(grid[index * len(rows):(index + 1) * len(rows), columns:])
        for number, (source, by_region) in enumerate(histograms.items()):
            ax.plot(centres, np.asarray(by_region[region], dtype=float), linestyle="-" if number == 0 else "--",
                    color=MASK_COLOURS[1 + number], label=source)
        ax.set_title(region, fontsize=8)
        ax.set_xlim(0, 256)
        ax.set_ylabel("share of pixels", fontsize=7)
        ax.tick_params(labelsize=7)
        if index == 0:
            ax.legend(fontsize=7)
        if index == len(regions) - 1:
            ax.set_xlabel("grey level (8 bit)")
    fig.suptitle(title or "Phantom and real slices, with grey-level histograms")
    return fig


# ---------------------------------------------------------------------------------------------
# Figures redrawn from stored numbers: reference records (chapters 02 and 03)


def _message_figure(message: str, title: str | None) -> Figure:
    """One empty panel that says why there is nothing to draw (e.g. no reference record yet)."""
    fig = Figure(figsize=(6.4, 1.8), layout="constrained")
    ax = fig.subplots()
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9)
    ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def show_binned_histograms(panels: Mapping[str, tuple[Values, Mapping[str, Values]]] | None, *,
                           scatter: Mapping[str, tuple[Values, Values]] | None = None,
                           scatter_labels: tuple[str, str] = ("x", "y"), title: str | None = None,
                           empty_message: str = "nothing to draw") -> Figure:
    """Histograms stored as bin edges and counts (one panel each), and optionally a scatter panel.

    ``panels``: ``{panel title: (bin edges (n + 1,), {group: counts (n,)})}``; each group's counts
    are drawn as shares of its total (step lines), so groups of different sizes compare.
    ``scatter``: ``{group: (x values, y values)}`` one point per item (e.g. per image mean and sd).
    A group keeps its colour in every panel. With nothing to draw, one panel says ``empty_message``.
    Introduced in chapter 02.
    """
    panels, scatter = dict(panels or {}), dict(scatter or {})
    if not panels and not scatter:
        return _message_figure(empty_message, title)
    colours: dict[str, str] = {}
    for group in [g for _, by_group in panels.values() for g in by_group] + list(scatter):
        colours.setdefault(group, MASK_COLOURS[len(colours) % len(MASK_COLOURS)])
    count = len(panels) + bool(scatter)
    fig = Figure(figsize=(4.2 * count, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, count))
    for ax, (name, (edges, by_group)) in zip(axes, panels.items()):
        edges = np.asarray(edges, dtype=float)
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise InvalidInputError(f"show_binned_histograms: panel {name!r} needs increasing bin edges")
        for group, counts in by_group.items():
            counts = np.asarray(counts, dtype=float)
            if counts.shape != (len(edges) - 1,) or np.any(counts < 0) or not counts.sum() > 0:
                raise InvalidInputError(f"show_binned_histograms: panel {name!r}, group {group!r}: need "
                                        f"{len(edges) - 1} non-negative counts with a positive total")
            ax.stairs(counts / counts.sum(), edges, color=colours[group], linewidth=1.3, label=group)
        ax.set_xlabel(name)
        ax.set_ylabel("share per bin")
        ax.legend(fontsize=7)
    if scatter:
        ax = axes[-1]
        for group, (xs, ys) in scatter.items():
            xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
            if xs.shape != ys.shape or xs.ndim != 1:
                raise InvalidInputError(f"show_binned_histograms: scatter group {group!r} needs x and y of one length")
            ax.scatter(xs, ys, s=6, alpha=0.6, color=colours[group], label=f"{group} ({len(xs)})")
        ax.set_xlabel(scatter_labels[0])
        ax.set_ylabel(scatter_labels[1])
        ax.legend(fontsize=7, markerscale=2)
    if title:
        fig.suptitle(title)
    return fig


def show_grouped_values(groups: Mapping[str, Values] | None, *, ylabel: str = "value",
                        title: str | None = None, empty_message: str = "nothing to draw",
                        baseline: float | None = None) -> Figure:
    """One column of points per group (spread sideways so they do not hide each other) with the
    group's mean as a black bar: e.g. the infection share of the slices of each fold. A
    ``baseline`` (e.g. 0 under paired differences) is drawn as a dashed line across the groups.

    With no groups, one panel says ``empty_message``.
    Introduced in chapter 03.
    """
    if not groups:
        return _message_figure(empty_message, title)
    fig = Figure(figsize=(max(4.0, 1.6 * len(groups) + 1.5), 3.6), layout="constrained")
    ax = fig.subplots()
    for position, (name, values) in enumerate(groups.items()):
        values = np.asarray(values, dtype=float)
        if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)):
            raise InvalidInputError(f"show_grouped_values: group {name!r} needs a non-empty list of finite numbers")
        spread = np.linspace(-0.25, 0.25, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(position + spread, values, s=12, alpha=0.7, color=MASK_COLOURS[position % len(MASK_COLOURS)])
        ax.hlines(values.mean(), position - 0.35, position + 0.35, color="black", linewidth=2)
    if baseline is not None:
        ax.axhline(baseline, color="0.5", linestyle="--", linewidth=1, zorder=0)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


@dataclass(frozen=True)
class PathRow:
    """One row of a stepwise comparison such as chapter 09's ablation.

    ``scores``: ``{metric: one value per run}`` (e.g. per (fold, seed)); ``change``: the paired
    difference from the row it changes as ``(mean, low, high)`` of its 95 % CI, ``None`` for the
    first row; ``alternative``: tried beside the path, not a step of it; ``marked``: the row to
    point out (e.g. today's defaults).
    """

    name: str
    scores: Mapping[str, Sequence[float]]
    change: tuple[float, float, float] | None = None
    alternative: bool = False
    marked: bool = False


def show_path(rows: Sequence[PathRow] | None, *, metrics: Sequence[str], change_label: str = "change [95 % CI]",
              reference_lines: Mapping[str, Mapping[str, float]] | None = None, title: str | None = None,
              empty_message: str = "nothing to draw") -> Figure:
    """A stepwise comparison read top to bottom: per metric a panel with one point per run and the
    mean as a black bar, then a panel of each row's change from the row it changes with its 95 %
    CI (a forest plot), zero dashed. Alternatives are drawn in grey and italic; the marked row's
    name is bold. ``reference_lines``: ``{metric: {label: value}}`` dotted lines with a legend,
    e.g. published results measured the same way. With no rows, one panel says ``empty_message``.
    Introduced in chapter 09.
    """
    if not rows:
        return _message_figure(empty_message, title)
    metrics, references = list(metrics), dict(reference_lines or {})
    unknown = sorted(set(references) - set(metrics))
    if not metrics or unknown:
        raise InvalidInputError(f"show_path needs at least one metric and reference lines only for those; got "
                                f"metrics {metrics}, reference lines for {unknown}")
    for row in rows:
        for metric in metrics:
            values = np.asarray(row.scores.get(metric, []), dtype=float)
            if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)):
                raise InvalidInputError(f"show_path: row {row.name!r} needs a non-empty list of finite {metric!r} scores")
        if row.change is not None and not (np.all(np.isfinite(row.change)) and row.change[1] <= row.change[0] <= row.change[2]):
            raise InvalidInputError(f"show_path: row {row.name!r}: change {row.change} is not (mean, low, high) "
                                    "with low <= mean <= high")
    positions = np.arange(len(rows))[::-1]  # the first row on top
    fig = Figure(figsize=(3.4 * (len(metrics) + 1) + 2.5, 0.32 * len(rows) + 1.4), layout="constrained")
    axes = fig.subplots(1, len(metrics) + 1, sharey=True)
    for ax, metric in zip(axes, metrics):
        for y, row in zip(positions, rows):
            values = np.asarray(row.scores[metric], dtype=float)
            spread = np.linspace(-0.18, 0.18, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(values, y + spread, s=9, alpha=0.6, color="0.6" if row.alternative else MASK_COLOURS[1])
            ax.vlines(values.mean(), y - 0.3, y + 0.3, color="black", linewidth=2)
        for index, (label, value) in enumerate(references.get(metric, {}).items()):
            ax.axvline(value, color=MASK_COLOURS[(index + 2) % len(MASK_COLOURS)], linestyle=":", linewidth=1.5,
                       label=f"{label} {value:.3f}")
        if metric in references:
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel(metric)
        ax.grid(axis="x", alpha=0.3)
    changes = axes[-1]
    changes.axvline(0.0, color="0.3", linestyle="--", linewidth=1)
    for y, row in zip(positions, rows):
        if row.change is not None:
            mean, low, high = row.change
            changes.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", markersize=4, capsize=3,
                             color="0.6" if row.alternative else MASK_COLOURS[0])
    changes.set_xlabel(change_label)
    changes.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, [row.name for row in rows], fontsize=8)
    for label, row in zip(axes[0].get_yticklabels(), rows):
        label.set_fontweight("bold" if row.marked else "normal")
        label.set_fontstyle("italic" if row.alternative else "normal")
        label.set_color("0.4" if row.alternative else "black")
    axes[0].set_ylim(-0.7, len(rows) - 0.3)
    if title:
        fig.suptitle(title)
    return fig


def show_curves(curves: Mapping[str, Values] | None, *, xlabel: str = "step", ylabel: str = "value",
                title: str | None = None, log_y: bool = False, empty_message: str = "nothing to draw") -> Figure:
    """One line per named curve against its index (e.g. the restoration loss of each pretraining,
    step by step). With no curves, one panel says ``empty_message``.
    Introduced in chapter 05.
    """
    if not curves:
        return _message_figure(empty_message, title)
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    for position, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=float)
        if values.ndim != 1 or len(values) == 0:
            raise InvalidInputError(f"show_curves: curve {name!r} needs a non-empty list of numbers")
        ax.plot(np.arange(1, len(values) + 1), values, color=MASK_COLOURS[position % len(MASK_COLOURS)], label=name)
    _finish_axes(ax, xlabel, ylabel, title, log_y=log_y)
    return fig


def _finish_axes(ax: Axes, xlabel: str, ylabel: str, title: str | None, *, log_x: bool = False,
                 log_y: bool = False) -> None:
    """Scales, labels, a legend of the named series, a light grid and the title, as the line and
    point figures share them."""
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)


def show_points(series: Mapping[str, tuple[Values, Values]] | None, *, xlabel: str = "x", ylabel: str = "y",
                title: str | None = None, log_x: bool = False, empty_message: str = "nothing to draw") -> Figure:
    """One dot per item of each named series, ``(x values, y values)`` of equal length (e.g. each test
    slice's Dice against its infected share, for one network and for an ensemble). With no series,
    one panel says ``empty_message``.
    Introduced in chapter 09.
    """
    if not series:
        return _message_figure(empty_message, title)
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    for position, (name, (x, y)) in enumerate(series.items()):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if x.ndim != 1 or x.shape != y.shape or len(x) == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise InvalidInputError(f"show_points: series {name!r} needs two non-empty lists of finite numbers of "
                                    f"one length, got {x.shape} and {y.shape}")
        if log_x and np.any(x <= 0):
            raise InvalidInputError(f"show_points: series {name!r} has x values <= 0, which a log axis cannot place")
        ax.scatter(x, y, s=16, alpha=0.7, color=MASK_COLOURS[position % len(MASK_COLOURS)], label=name)
    _finish_axes(ax, xlabel, ylabel, title, log_x=log_x)
    return fig


def show_threshold_calibration(calibration: Mapping[str, Any] | None, *, title: str | None = None,
                               empty_message: str = "nothing to draw") -> Figure:
    """The pseudo-label threshold chosen on labelled patches treated as unlabelled: the share of
    patches accepted (left axis) and the mean Dice of the accepted patches' pseudo masks (right
    axis) against the top-2 threshold, with the chosen threshold marked.

    ``calibration``: :meth:`covidlib.pseudo.ThresholdCalibration.as_dict` (``thresholds``,
    ``accepted_share``, ``pseudo_dice``, ``chosen``, ``quality_bar``). With none, one panel says
    ``empty_message``. Introduced in chapter 07.
    """
    if not calibration:
        return _message_figure(empty_message, title)
    thresholds = np.asarray(calibration["thresholds"], dtype=float)
    share = np.asarray(calibration["accepted_share"], dtype=float)
    dice = np.asarray(calibration["pseudo_dice"], dtype=float)
    if thresholds.ndim != 1 or share.shape != thresholds.shape or dice.shape != thresholds.shape:
        raise InvalidInputError("show_threshold_calibration: thresholds, accepted_share and pseudo_dice need one length")
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(thresholds, share, color=MASK_COLOURS[0], label="accepted share")
    ax.set_xlabel("top-2 threshold (centred cosine)")
    ax.set_ylabel("share of patches accepted")
    ax.set_ylim(0, 1.02)
    right = ax.twinx()
    right.plot(thresholds, dice, color=MASK_COLOURS[1], label="pseudo-mask Dice (accepted)")
    right.axhline(float(calibration["quality_bar"]), color=MASK_COLOURS[1], linestyle=":", linewidth=1,
                  label=f"quality bar {float(calibration['quality_bar']):.2f}")
    right.set_ylabel("mean Dice of accepted pseudo masks")
    right.set_ylim(0, 1.02)
    ax.axvline(float(calibration["chosen"]), color="black", linestyle="--", linewidth=1,
               label=f"chosen {float(calibration['chosen']):.2f}")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
