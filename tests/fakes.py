"""Tiny stand-ins for datasets on disk, shared by the test files that read them back.

Only the folder layout and the file formats live here: each test draws its own pixels (with
its own seed), so what it asserts about them stays next to where they are made.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

#: COVID-SemiSeg (Inf-Net) folders, relative to the dataset root, as ``covidlib.datasets`` reads them.
SEMISEG_TRAIN = Path("TrainingSet") / "LungInfection-Train"
SEMISEG_LABELLED_IMAGES = SEMISEG_TRAIN / "Doctor-label" / "Imgs"
SEMISEG_LABELLED_MASKS = SEMISEG_TRAIN / "Doctor-label" / "GT"
SEMISEG_UNLABELLED_IMAGES = SEMISEG_TRAIN / "Pseudo-label" / "Imgs"
SEMISEG_MULTICLASS_MASKS = Path("TrainingSet") / "MultiClassInfection-Train" / "GT"
SEMISEG_TEST_IMAGES = Path("TestingSet") / "LungInfection-Test" / "Imgs"
SEMISEG_TEST_MASKS = Path("TestingSet") / "LungInfection-Test" / "GT"


def save_jpg(path: Path, pixels: np.ndarray) -> None:
    """A grey 8-bit JPG, as the dataset ships its slices (quality 95: close to, not exactly, ``pixels``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path, quality=95)


def save_png(path: Path, labels: np.ndarray, palette: bool = False) -> None:
    """A lossless 8-bit mask; ``palette`` stores it as the multi-class masks are (indices into a palette)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.astype(np.uint8), mode="L")
    if palette:
        img = img.convert("P")
        img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.save(path)


def write_semiseg(root: Path, labelled: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                  unlabelled: Mapping[str, np.ndarray] | None = None,
                  test: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                  multiclass: Mapping[str, np.ndarray] | None = None) -> Path:
    """A COVID-SemiSeg folder at ``root``: ``{name: (image, mask {0, 255})}`` labelled and test
    slices, ``{name: image}`` unlabelled ones and ``{name: class indices}`` multi-class masks,
    each written under its file name ``name`` (``.jpg`` images, ``.png`` masks). Returns ``root``."""
    for name, (image, mask) in labelled.items():
        save_jpg(root / SEMISEG_LABELLED_IMAGES / f"{name}.jpg", image)
        save_png(root / SEMISEG_LABELLED_MASKS / f"{name}.png", mask)
    for name, classes in (multiclass or {}).items():
        save_png(root / SEMISEG_MULTICLASS_MASKS / f"{name}.png", classes, palette=True)
    for name, image in (unlabelled or {}).items():
        save_jpg(root / SEMISEG_UNLABELLED_IMAGES / f"{name}.jpg", image)
    for name, (image, mask) in (test or {}).items():
        save_jpg(root / SEMISEG_TEST_IMAGES / f"{name}.jpg", image)
        save_png(root / SEMISEG_TEST_MASKS / f"{name}.png", mask)
    return root
