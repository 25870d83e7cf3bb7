"""Self-supervised restoration pretraining of a 2D U-Net in the Models Genesis way.

Zhou et al. ("Models Genesis: generic autodidactic models for 3D medical image analysis",
MICCAI 2019; Medical Image Analysis 67, 2021) pretrain a U-Net without labels: an image is
corrupted and the network learns to give the original back, by a mean squared error. Their four
corruptions, here on 2D slices in [0, 1]:

* **non-linear intensity transform** (:func:`nonlinear_intensity`): every grey level goes
  through a random monotone cubic Bezier curve, inverted half of the time, so the network must
  learn what tissue a grey level stands for;
* **local pixel shuffling** (:func:`shuffle_local_pixels`): the pixels inside many small random
  windows are permuted, which keeps the global shape and destroys the texture;
* **inner cut-out / in-painting** (:func:`inpaint`): up to five boxes are filled with uniform
  noise, to be restored from their surroundings;
* **outer cut-out / out-painting** (:func:`outpaint`): everything outside a few large boxes is
  noise, to be restored from the inside.

:func:`corrupt` applies them with Models Genesis' probabilities (:class:`Corruption`: shuffling
0.5, then the intensity curve 0.9, then painting 0.9, of which in-painting 0.2). Their random
flips are left out: they are data augmentation, not corruption. The published network is 3D and
restores 64 x 64 x 32 HU cubes; here a 2D U-Net restores whole slices, which is what a 2D
network fine-tuned on 8-bit slices such as COVID-SemiSeg can use.

:func:`pretrained_weights` is the entry point: it trains (or reloads) a restoration U-Net from a
stack of slices and returns its weights in the layout of the segmentation network of the same
widths, ready for :func:`covidlib.transfer.prepare_finetune`. Training is deterministic from its
seed, checkpoints every few steps and resumes; the finished weights are cached under a key
(:func:`restoration_fingerprint`) of the settings, the slices and the code.

Introduced in chapter 05 (and used by chapters 07-08 to pretrain model A).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from covidlib.config import get_device
from covidlib.errors import InvalidInputError
from covidlib.fingerprint import code_fingerprint, content_key, imported_modules
from covidlib.models import get_model
from covidlib.train import autocast_context, load_checkpoint, resolve_amp, save_checkpoint

#: Samples of the Bezier curve that :func:`nonlinear_intensity` interpolates (Models Genesis: 100,000).
CURVE_SAMPLES = 1000


@dataclass(frozen=True)
class Corruption:
    """How often each corruption is applied (Models Genesis' defaults).

    ``local_shuffle``, ``nonlinear`` and ``paint`` are probabilities per image; ``inpaint`` is the
    share of painted images that are in-painted (the rest out-painted). ``shuffle_density``:
    shuffled windows per pixel (0.04 gives about 650 windows of up to a tenth of the side on a
    128 x 128 slice, covering it about twice, as Models Genesis' 10,000 windows cover a
    64 x 64 x 32 cube). All probabilities 0: no corruption at all.
    """

    local_shuffle: float = 0.5
    nonlinear: float = 0.9
    paint: float = 0.9
    inpaint: float = 0.2
    shuffle_density: float = 0.04

    def __post_init__(self) -> None:
        for name in ("local_shuffle", "nonlinear", "paint", "inpaint"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise InvalidInputError(f"Corruption.{name} must be a probability in [0, 1], got {value!r}")
        if not (isinstance(self.shuffle_density, (int, float)) and self.shuffle_density >= 0):
            raise InvalidInputError(f"Corruption.shuffle_density must be >= 0, got {self.shuffle_density!r}")


def _check_unit_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2 or min(array.shape) < 8:
        raise InvalidInputError(f"{name}: expected a 2D slice (H, W) of at least 8 x 8 pixels, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
        raise InvalidInputError(f"{name}: grey levels must be finite and in [0, 1] (scale the slice first)")
    return array.astype(np.float32, copy=False)


def bezier_curve(points: np.ndarray, samples: int = CURVE_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of the Bezier curve of control ``points`` (n, 2), sampled at ``samples``
    parameter values from the first point to the last (Bernstein polynomials)."""
    points = np.asarray(points, dtype=np.float64)
    degree = len(points) - 1
    t = np.linspace(0.0, 1.0, samples)
    basis = np.stack([math.comb(degree, i) * t**i * (1 - t) ** (degree - i) for i in range(degree + 1)])
    curve = points.T @ basis
    return curve[0], curve[1]


def nonlinear_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey levels (H, W) in [0, 1] mapped through a random cubic Bezier curve from (0, 0) to
    (1, 1) with two random control points; half of the time the curve is inverted (dark becomes
    bright). The result stays in [0, 1]. Zhou et al. 2019, "non-linear transformation"."""
    image = _check_unit_image(image)
    inner = rng.random((2, 2))
    x, y = bezier_curve(np.array([[0.0, 0.0], *inner, [1.0, 1.0]]))
    x, y = np.sort(x), np.sort(y)
    if rng.random() < 0.5:
        y = y[::-1]
    return np.interp(image, x, y).astype(np.float32)


def shuffle_local_pixels(image: np.ndarray, rng: np.random.Generator, density: float = 0.04) -> np.ndarray:
    """Permute the pixels inside ``round(density * H * W)`` random windows of 1 to a tenth of
    each side; windows read from the original image, so overlapping ones do not compound.
    Zhou et al. 2019, "local pixel shuffling"."""
    image = _check_unit_image(image)
    height, width = image.shape
    out = image.copy()
    for _ in range(int(round(density * height * width))):
        h = int(rng.integers(1, max(height // 10, 1) + 1))
        w = int(rng.integers(1, max(width // 10, 1) + 1))
        y = int(rng.integers(0, height - h + 1))
        x = int(rng.integers(0, width - w + 1))
        window = image[y:y + h, x:x + w].reshape(-1)
        out[y:y + h, x:x + w] = rng.permutation(window).reshape(h, w)
    return out


def _box(rng: np.random.Generator, shape: tuple[int, int], low: float, high: float,
         margin: int) -> tuple[slice, slice]:
    sides = []
    for size in shape:
        extent = int(rng.integers(max(int(size * low), 1), max(int(size * high), int(size * low) + 1, 2)))
        extent = min(extent, size - 2 * margin)
        start = int(rng.integers(margin, size - extent - margin + 1))
        sides.append(slice(start, start + extent))
    return sides[0], sides[1]


def inpaint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to five boxes of a sixth to a third of each side filled with uniform noise in [0, 1]:
    each box, the first included, is drawn with probability 0.95 while none has been refused, so
    about one image in twenty is left as it was (as in Models Genesis' code). Zhou et al. 2019,
    "image in-painting"."""
    image = _check_unit_image(image)
    out = image.copy()
    for _ in range(5):
        if rng.random() >= 0.95:
            break
        box = _box(rng, image.shape, 1 / 6, 1 / 3, margin=3 if min(image.shape) > 24 else 0)
        out[box] = rng.random(out[box].shape, dtype=np.float32)
    return out


def outpaint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform noise everywhere except one box of 3/7 to 4/7 of each side and up to four more
    (each with probability 0.95), which keep the original. Zhou et al. 2019, "image out-painting"."""
    image = _check_unit_image(image)
    out = rng.random(image.shape, dtype=np.float32)
    for index in range(5):
        if index > 0 and rng.random() >= 0.95:
            break
        box = _box(rng, image.shape, 3 / 7, 4 / 7, margin=3 if min(image.shape) > 24 else 0)
        out[box] = image[box]
    return out


def corrupt(image: np.ndarray, rng: np.random.Generator, corruption: Corruption = Corruption()) -> np.ndarray:
    """One Models Genesis training input: ``image`` (H, W) in [0, 1] after local shuffling,
    the intensity curve and in- or out-painting, each drawn with ``corruption``'s probabilities
    from ``rng`` (the four decisions are drawn first, so one probability does not change which
    of the others apply).
    Returns a new float32 array of the same shape in [0, 1]."""
    out = _check_unit_image(image).copy()
    draws = rng.random(4)
    if draws[0] < corruption.local_shuffle:
        out = shuffle_local_pixels(out, rng, corruption.shuffle_density)
    if draws[1] < corruption.nonlinear:
        out = nonlinear_intensity(out, rng)
    if draws[2] < corruption.paint:
        out = inpaint(out, rng) if draws[3] < corruption.inpaint else outpaint(out, rng)
    return out


# --- training -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RestorationSettings:
    """What a restoration pretraining runs: the U-Net (``network``, ``base_width``, ``depth``,
    as :func:`covidlib.models.get_model` builds it), ``steps`` Adam steps of ``batch_size``
    slices at ``lr``, ``amp`` as :class:`covidlib.train.TrainConfig`, the ``corruption``
    probabilities, and ``seed`` (initial weights, batches and corruptions). A checkpoint is
    written every ``checkpoint_every`` steps."""

    network: str = "unet"
    base_width: int = 16
    depth: int = 4
    steps: int = 500
    batch_size: int = 8
    lr: float = 1e-3
    amp: str = "auto"
    seed: int = 0
    corruption: Corruption = field(default_factory=Corruption)
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("base_width", "depth", "steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"RestorationSettings.{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InvalidInputError(f"RestorationSettings.lr must be positive, got {self.lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInputError(f"RestorationSettings.seed must be a non-negative integer, got {self.seed!r}")


def _check_slices(slices: np.ndarray) -> np.ndarray:
    array = np.asarray(slices, dtype=np.float32)
    if array.ndim != 3 or len(array) < 1 or min(array.shape[1:]) < 8:
        raise InvalidInputError(f"slices: expected a stack (N, H, W) of at least one 8 x 8 slice, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError("slices: contains NaN or infinite values")
    return array


def restoration_model(settings: RestorationSettings, num_classes: int = 1) -> nn.Module:
    """The U-Net of ``settings`` with ``num_classes`` outputs, its weights drawn from ``settings.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return get_model(settings.network, in_channels=1, num_classes=num_classes, base_width=settings.base_width,
                         depth=settings.depth)


def restoration_batch(slices: np.ndarray, indices: np.ndarray, rng: np.random.Generator,
                      corruption: Corruption) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` (B, 1, H, W) for the slices at ``indices``. Each slice is min-max
    scaled to [0, 1] (the target) and corrupted there; the corrupted slice is mapped back by the
    inverse of that scaling, so that an uncorrupted input is exactly the slice as given (e.g.
    z-scored, as the segmentation network will see it)."""
    inputs, targets = [], []
    for index in indices:
        image = slices[int(index)]
        low, high = float(image.min()), float(image.max())
        scale = high - low if high > low else 1.0
        unit = ((image - low) / scale).astype(np.float32)
        inputs.append(corrupt(unit, rng, corruption) * scale + low)
        targets.append(unit)
    return torch.from_numpy(np.stack(inputs))[:, None], torch.from_numpy(np.stack(targets))[:, None]


def restoration_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error between the sigmoid of the network's one output channel and the
    original slice in [0, 1] (Models Genesis' objective)."""
    return F.mse_loss(torch.sigmoid(model(inputs).float()), targets)


def restoration_fingerprint(slices: np.ndarray, settings: RestorationSettings) -> str:
    """The key of a restoration run: its settings, the slices' contents and the code of this
    module and the covidlib modules it imports."""
    return content_key(dataclasses.asdict(settings), _check_slices(slices),
                       code_fingerprint(imported_modules([__name__])))


def train_restoration(model: nn.Module, slices: np.ndarray, settings: RestorationSettings, *,
                      out_dir: str | Path | None = None, device: str = "auto", progress: bool = True) -> list[float]:
    """Train ``model`` (one output channel) to restore corrupted ``slices`` (N, H, W), for
    ``settings.steps`` steps; returns the loss of every step.

    Batches and corruptions come from ``numpy.random.default_rng(settings.seed)``. With
    ``out_dir``, ``last.pt`` (weights, optimizer, random state, losses, and the
    :func:`restoration_fingerprint`) is written every ``checkpoint_every`` steps and at the end,
    and a run with the same fingerprint continues from it: an interrupted pretraining resumes
    and gives the same weights as an uninterrupted one. Introduced in chapter 05.
    """
    slices = _check_slices(slices)
    if getattr(model, "num_classes", 1) != 1:
        raise InvalidInputError("train_restoration needs a network with one output channel (num_classes=1)")
    resolved = get_device(device)
    model = model.to(resolved)
    amp = resolve_amp(settings.amp, resolved)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    losses: list[float] = []
    key = restoration_fingerprint(slices, settings) if out_dir is not None else None
    last = None if out_dir is None else Path(out_dir) / "last.pt"
    if last is not None and last.is_file():
        state = load_checkpoint(last)
        if state.get("fingerprint") == key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            rng.bit_generator.state = state["rng"]
            losses = [float(loss) for loss in state["losses"]]
    model.train()
    for step in tqdm(range(len(losses), settings.steps), desc="restoration", disable=not progress,
                     initial=len(losses), total=settings.steps):
        inputs, targets = restoration_batch(slices, rng.integers(0, len(slices), settings.batch_size), rng,
                                            settings.corruption)
        with autocast_context(resolved, amp):
            loss = restoration_loss(model, inputs.to(resolved), targets.to(resolved))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if last is not None and ((step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps):
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "rng": rng.bit_generator.state, "losses": losses, "fingerprint": key}, last)
    return losses


def pretrained_weights(slices: np.ndarray, settings: RestorationSettings, cache_dir: str | Path, *,
                       num_classes: int = 2, device: str = "auto",
                       progress: bool = True) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Restoration-pretrained weights for a segmentation U-Net, trained on ``slices`` once and cached.

    ``slices`` (N, H, W) as the segmentation network will see them (e.g. z-scored unlabelled
    slices at the fine-tuning size). Returns ``(state_dict, info)``: the state dict fits
    ``get_model(settings.network, in_channels=1, num_classes=num_classes, base_width=...,
    depth=...)``; every layer comes from the restoration network except the output layer,
    whose one grey-level channel has no counterpart in segmentation: it is freshly drawn from
    ``settings.seed`` (the report's recipes, :func:`covidlib.transfer.prepare_finetune`, redraw it
    anyway). ``info`` holds ``losses`` (one a step), ``fingerprint``, ``path`` and ``cached``
    (whether the weights were read instead of trained).

    The weights live in ``cache_dir/restoration_<fingerprint>.pt``; the training's ``last.pt``
    in ``cache_dir/restoration_<fingerprint>/`` lets an interrupted run continue.
    Zhou et al., MICCAI 2019 / MedIA 2021. Introduced in chapter 05.
    """
    slices = _check_slices(slices)
    key = restoration_fingerprint(slices, settings)
    path = Path(cache_dir) / f"restoration_{key}.pt"
    cached = path.is_file()
    if cached:
        stored = load_checkpoint(path)
        if stored.get("fingerprint") != key:
            raise InvalidInputError(f"{path}: its fingerprint {stored.get('fingerprint')} does not match its name; "
                                    "delete the file to recompute it")
        state, losses = stored["state_dict"], [float(loss) for loss in stored["losses"]]
    else:
        model = restoration_model(settings)
        losses = train_restoration(model, slices, settings, out_dir=Path(cache_dir) / f"restoration_{key}",
                                   device=device, progress=progress)
        state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
        save_checkpoint({"state_dict": state, "losses": losses, "fingerprint": key,
                         "settings": dataclasses.asdict(settings)}, path)
    target = restoration_model(settings, num_classes=num_classes)
    # every layer but the output layer: its shape (one grey level vs classes) differs
    head = {f"head.{name}" for name, _ in target.head.named_parameters()}  # type: ignore[union-attr]  # nn.Module.__getattr__ is typed Tensor | Module
    target.load_state_dict({name: value for name, value in state.items() if name not in head}, strict=False)
    info = {"losses": losses, "fingerprint": key, "path": str(path), "cached": cached}
    return {name: value.detach().clone() for name, value in target.state_dict().items()}, info


def unlabelled_slices(dataset: str, root: str | Path | None, n: int, size: int, *,
                      split: str = "unlabelled") -> np.ndarray:
    """The first ``n`` slices of a 2D dataset's ``split`` (N, size, size), prepared as chapter 05's
    segmentation networks see them: :func:`covidlib.preprocess.preprocess_cohort` (for 8-bit
    slices: resized so that the longer side is ``size`` pixels, z-scored), then centred in a
    ``size`` x ``size`` square padded with 0 (:func:`covidlib.data.fit_slice`). The input of
    :func:`pretrained_weights` for COVID-SemiSeg's unlabelled slices. Introduced in chapter 05."""
    from covidlib.data import fit_slice
    from covidlib.preprocess import SLICE_EXTENT_MM, preprocess_cohort

    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise InvalidInputError(f"size must be an integer of at least 8 pixels, got {size!r}")
    cases = preprocess_cohort(dataset, n, root=root, split=split, spacing_mm=SLICE_EXTENT_MM / size)
    flat = [case for case in cases if case.image.shape[0] == 1]
    if len(flat) != len(cases):
        raise InvalidInputError(f"dataset {dataset!r}: split {split!r} holds volumes, not single 2D slices")
    return np.stack([fit_slice(case.image[0], np.zeros(case.image.shape[1:], np.uint8), (size, size))[0]
                     for case in cases]).astype(np.float32)


def restore(model: nn.Module, inputs: np.ndarray, device: str = "auto") -> np.ndarray:
    """The restoration network's output (N, H, W) in [0, 1] for inputs (N, H, W): what a figure
    of corrupted / restored / original slices shows."""
    tensor = torch.as_tensor(_check_slices(inputs))[:, None]
    resolved = get_device(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = torch.sigmoid(model.to(resolved)(tensor.to(resolved)).float())[:, 0].cpu().numpy()
    model.train(was_training)
    return output


def restoration_network(settings: RestorationSettings, state: Mapping[str, Tensor]) -> nn.Module:
    """A restoration U-Net of ``settings`` holding ``state`` (one output channel)."""
    model = restoration_model(settings)
    model.load_state_dict(dict(state))
    return model
