"""Transfer learning: freeze and re-initialise named parts of a U-Net, the report's fine-tuning
recipes, and the flattening of Models Genesis 3D weights into a 2D network.

The report (sections 2.3.4 and 5.2.3) pretrains a U-Net on non-COVID lung CT and fine-tunes it
on a few COVID volumes in the two ways of Amiri et al. ("Fine-tuning U-Net for ultrasound
image segmentation: different layers, different outcomes", 2020, the report's [12]):

* ``"decoder"`` — fine-tune the decoder: the first half of the encoder is frozen and the
  output layer is re-initialised;
* ``"all"`` — fine-tune everything, with the last block of convolutions (the last decoder
  block and the output layer that reads it) re-initialised;

plus ``"scratch"`` (random initialisation) and ``"genesis"`` (a 2D network initialised with the
self-supervised Models Genesis weights of Zhou et al., MICCAI 2019, flattened from 3D).

A network is split into five *parts* (``PARTS``) through its ``encoder`` (``depth + 1``
blocks, the last the bottleneck), ``decoder`` and ``head`` attributes, which
:class:`~covidlib.models.UNet2d`, :class:`~covidlib.models.AttentionUNet2d`,
:class:`~covidlib.models.unet3d.UNet3d` and :class:`~covidlib.models.unet3d.GenesisUNet2d`
all have. The ``depth`` encoder blocks above the bottleneck are halved, the first half taking
the extra block of an odd count: blocks 0-1 | 2-3 for the 4-pooling U-Net, 0-1 | 2 for Genesis.

Introduced in chapter 05.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from covidlib.augment import default_augmentation
from covidlib.ct import check_hu
from covidlib.data import SliceDataset, seeded_loader, split_volumes
from covidlib.distributed import EpochLoader
from covidlib.errors import InvalidInputError
from covidlib.fingerprint import code_fingerprint, content_key, imported_modules
from covidlib.models.unet3d import GenesisUNet2d, UNet3d
from covidlib.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint

PARTS = ("encoder_first_half", "encoder_second_half", "bottleneck", "decoder", "head")
RECIPES = ("scratch", "decoder", "all", "genesis")
FLATTEN_MODES = ("sum", "centre")

Recipe = Literal["scratch", "decoder", "all", "genesis"]


def model_parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The modules of each part in :data:`PARTS`, from ``model.encoder/decoder/head``."""
    for attribute in ("encoder", "decoder", "head"):
        if not hasattr(model, attribute):
            raise InvalidInputError(f"{type(model).__name__} has no '{attribute}' attribute; transfer needs a U-Net "
                                    "with encoder (ModuleList, bottleneck last), decoder (ModuleList) and head")
    encoder = list(model.encoder)  # type: ignore[arg-type]  # nn.Module.__getattr__ is typed Tensor | Module; encoder is a ModuleList
    if len(encoder) < 2:
        raise InvalidInputError(f"{type(model).__name__}.encoder needs at least 2 blocks (one plus the bottleneck)")
    above = encoder[:-1]
    split = (len(above) + 1) // 2
    return {
        "encoder_first_half": above[:split],
        "encoder_second_half": above[split:],
        "bottleneck": [encoder[-1]],
        "decoder": list(model.decoder),  # type: ignore[arg-type]  # as above; decoder is a ModuleList
        "head": [model.head],  # type: ignore[list-item]  # as above; head is a Module
    }


def _check_parts(parts: str | Iterable[str]) -> list[str]:
    names = [parts] if isinstance(parts, str) else list(parts)
    unknown = [name for name in names if name not in PARTS]
    if unknown:
        raise InvalidInputError(f"unknown part(s) {unknown}; choose from {PARTS}")
    return names


def parameter_parts(model: nn.Module) -> dict[str, str]:
    """The part each named parameter belongs to; raises if a parameter is in no part."""
    owner = {}
    for part, modules in model_parts(model).items():
        for module in modules:
            for parameter in module.parameters():
                owner[id(parameter)] = part
    table = {}
    for name, parameter in model.named_parameters():
        if id(parameter) not in owner:
            raise InvalidInputError(f"parameter {name!r} of {type(model).__name__} belongs to no part of {PARTS}")
        table[name] = owner[id(parameter)]
    return table


def _set_frozen(model: nn.Module, parts: str | Iterable[str], frozen: bool) -> nn.Module:
    selected = model_parts(model)
    for name in _check_parts(parts):
        for module in selected[name]:
            for parameter in module.parameters():
                parameter.requires_grad_(not frozen)
            for submodule in module.modules():
                if isinstance(submodule, nn.modules.batchnorm._BatchNorm):
                    # A frozen layer must not drift either: without this, BatchNorm would keep
                    # updating its running statistics from the new data during training.
                    submodule.track_running_stats = not frozen
    return model


def freeze(model: nn.Module, parts: str | Iterable[str]) -> nn.Module:
    """Freeze ``parts`` in place: no gradients, and their BatchNorm running statistics stop
    updating (in training they normalise with batch statistics; in ``eval()`` with the stored
    ones). Returns ``model``. Introduced in chapter 05."""
    return _set_frozen(model, parts, frozen=True)


def unfreeze(model: nn.Module, parts: str | Iterable[str] = PARTS) -> nn.Module:
    """Undo :func:`freeze` for ``parts`` (all by default). Returns ``model``. Introduced in chapter 05."""
    return _set_frozen(model, parts, frozen=False)


def reinitialise(model: nn.Module, part: str | Iterable[str], seed: int) -> nn.Module:
    """Re-draw the weights of ``part`` (one name or several) with each layer's own default
    initialisation (``reset_parameters``; BatchNorm also resets its running statistics), from
    ``seed`` and without touching the global random state. Returns ``model``.
    Introduced in chapter 05."""
    names = _check_parts(part)
    selected = model_parts(model)
    _reset_modules([module for name in names for module in selected[name]], seed)
    return model


def _reset_modules(modules: Iterable[nn.Module], seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in modules:
            for submodule in module.modules():
                if hasattr(submodule, "reset_parameters"):
                    submodule.reset_parameters()  # type: ignore[operator]  # hasattr found the module's reset_parameters method


def trainable_summary(model: nn.Module) -> list[dict[str, object]]:
    """One row a parameter tensor: ``name``, ``part``, ``count`` and ``trainable`` — what a
    figure of "what is frozen" draws. Introduced in chapter 05."""
    parts = parameter_parts(model)
    return [{"name": name, "part": parts[name], "count": parameter.numel(), "trainable": parameter.requires_grad}
            for name, parameter in model.named_parameters()]


def flatten_kernel(weight: Tensor, mode: str = "sum", depth_axis: int = -1) -> Tensor:
    """A 3D convolution kernel ``(out, in, k, k, k)`` as a 2D kernel ``(out, in, k, k)``.

    ``"sum"`` adds the taps along ``depth_axis``: for an input that is constant along depth,
    a 3D convolution then gives exactly the 2D convolution of one slice (away from the first
    and last slices, where the 3D zero padding cuts taps off). ``"centre"`` keeps the middle
    tap: the 2D network sees what the 3D one would see from the slice itself, ignoring its
    neighbours. ``depth_axis`` is the kernel axis that ran along slices: ``-1`` for Models
    Genesis, trained on ``(x, y, z)`` cubes; ``-3`` for networks trained on ``(z, y, x)``.
    """
    if mode not in FLATTEN_MODES:
        raise InvalidInputError(f"flatten mode must be one of {FLATTEN_MODES}, got {mode!r}")
    if weight.ndim != 5 or depth_axis not in (-3, -2, -1, 2, 3, 4):
        raise InvalidInputError(f"flatten_kernel expects a 5D kernel and a spatial depth_axis, got shape "
                                f"{tuple(weight.shape)} and depth_axis={depth_axis}")
    if mode == "sum":
        return weight.sum(dim=depth_axis)
    size = weight.shape[depth_axis]
    if size % 2 == 0:
        raise InvalidInputError(f"a kernel of even depth {size} has no centre tap; use mode='sum'")
    return weight.select(depth_axis, size // 2)


@torch.no_grad()
def flatten_3d_to_2d(unet3d: nn.Module, unet2d: nn.Module, mode: str = "sum", *, depth_axis: int = -1,
                     exclude: Iterable[str] = ()) -> nn.Module:
    """Copy a 3D network's weights into its 2D twin, module by module, by name.

    The mapping, for every module name of ``unet3d`` (e.g. a :class:`UNet3d`) that is not under
    a prefix in ``exclude``:

    * ``Conv3d`` ``(out, in, k, k, k)`` -> ``Conv2d`` ``(out, in, k, k)`` by
      :func:`flatten_kernel` (``"sum"`` or ``"centre"``); the bias is copied;
    * ``ConvTranspose3d`` ``(in, out, 2, 2, 2)`` with stride 2 -> ``ConvTranspose2d`` by the
      *mean* over depth, in both modes: each output voxel of this layer receives exactly one
      depth tap (even slices one, odd slices the other), so the mean gives the depth-average of
      the 3D response to a depth-constant input; an even kernel has no centre tap;
    * ``BatchNorm3d`` -> ``BatchNorm2d``: weight, bias and running statistics copied;
    * layers without parameters (ReLU, pooling) need nothing.

    ``unet2d`` must have a module of the matching 2D type under every such name, with the
    flattened shapes (:class:`~covidlib.models.unet3d.GenesisUNet2d` of the same
    ``base_width`` has them); its extra modules (attention gates) are left as they are.
    Returns ``unet2d``. Introduced in chapter 05.
    """
    excluded = tuple(exclude)
    targets = dict(unet2d.named_modules())
    pairs = {nn.Conv3d: nn.Conv2d, nn.ConvTranspose3d: nn.ConvTranspose2d, nn.BatchNorm3d: nn.BatchNorm2d}
    for name, source in unet3d.named_modules():
        if not name or any(name == prefix.rstrip(".") or name.startswith(prefix) for prefix in excluded):
            continue
        if not any(True for _ in source.parameters(recurse=False)):
            continue
        expected = pairs.get(type(source))
        if expected is None:
            raise InvalidInputError(f"flatten_3d_to_2d: no 2D rule for module {name!r} of type {type(source).__name__}")
        target = targets.get(name)
        if not isinstance(target, expected):
            raise InvalidInputError(f"flatten_3d_to_2d: the 2D network needs a {expected.__name__} named {name!r}, "
                                    f"found {type(target).__name__ if target is not None else 'nothing'}")
        if isinstance(source, nn.ConvTranspose3d):
            weight = source.weight.mean(dim=depth_axis)
        elif isinstance(source, nn.Conv3d):
            weight = flatten_kernel(source.weight, mode, depth_axis)
        else:
            weight = source.weight
        values = {"weight": weight, "bias": source.bias}
        if isinstance(source, nn.BatchNorm3d):
            values |= {"running_mean": source.running_mean, "running_var": source.running_var,
                       "num_batches_tracked": source.num_batches_tracked}
        for key, value in values.items():
            destination = getattr(target, key)
            if (value is None) != (destination is None):
                raise InvalidInputError(f"flatten_3d_to_2d: {name}.{key} exists in only one of the two networks")
            if value is None:
                continue
            if destination.shape != value.shape:
                raise InvalidInputError(f"flatten_3d_to_2d: {name}.{key} flattens to {tuple(value.shape)} but the 2D "
                                        f"network has {tuple(destination.shape)} (use a GenesisUNet2d with the same base_width)")
            destination.copy_(value)
    return unet2d


def prepare_finetune(model: nn.Module, recipe: str, *, pretrained: nn.Module | Mapping[str, Tensor] | None = None,
                     seed: int = 0, flatten_mode: str = "sum") -> nn.Module:
    """Initialise and freeze ``model`` in place for one fine-tuning ``recipe``; returns it.

    * ``"scratch"``: ``model`` as it was built (random weights), all trainable;
    * ``"decoder"``: ``pretrained`` weights (a state dict or a model of the same class),
      first half of the encoder frozen, head re-initialised;
    * ``"all"``: ``pretrained`` weights, everything trainable, last decoder block and head
      re-initialised;
    * ``"genesis"``: ``model`` must be a :class:`GenesisUNet2d` and ``pretrained`` a
      :class:`UNet3d` (e.g. from :func:`~covidlib.models.unet3d.load_genesis_checkpoint`);
      its weights are flattened into ``model`` (``flatten_mode``) except the output layer,
      which belongs to the restoration task and is re-initialised; all trainable.

    Re-initialisation draws from ``seed``. Introduced in chapter 05.
    """
    if recipe not in RECIPES:
        raise InvalidInputError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    unfreeze(model)
    if recipe == "scratch":
        return model
    if pretrained is None:
        raise InvalidInputError(f"recipe {recipe!r} needs pretrained weights (pretrained=...)")
    if recipe == "genesis":
        if not isinstance(model, GenesisUNet2d) or not isinstance(pretrained, UNet3d):
            raise InvalidInputError("recipe 'genesis' needs a GenesisUNet2d model and a UNet3d as pretrained, got "
                                    f"{type(model).__name__} and {type(pretrained).__name__}")
        flatten_3d_to_2d(pretrained, model, flatten_mode, exclude=("out_tr",))
        return reinitialise(model, "head", seed)
    state = pretrained.state_dict() if isinstance(pretrained, nn.Module) else pretrained
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InvalidInputError(f"pretrained weights do not fit {type(model).__name__} (same class and widths "
                                f"needed): {str(exc).splitlines()[0]}") from exc
    if recipe == "decoder":
        freeze(model, "encoder_first_half")
        return reinitialise(model, "head", seed)
    _reset_modules([model.decoder[-1], model.head], seed)  # type: ignore[index, list-item]  # nn.Module.__getattr__ is typed Tensor | Module
    return model


# --- training on volumes: pretraining on a source domain and the experiment cells ------------

@dataclass(frozen=True)
class SliceTraining:
    """How a 2D network is trained on volumes: slices of ``output_size`` (pixels; ``None`` =
    the slices' own size), ``empty_fraction`` of the lesion-free slices kept, the report's
    augmentation when ``augment``, ``batch_size`` slices a step, and the Trainer's ``train``
    settings (epochs, learning rate, early stopping...). Introduced in chapter 05."""

    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int = 8
    output_size: int | None = None
    empty_fraction: float = 1.0
    augment: bool = True


def case_arrays(cases: Iterable[Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{case_id: (image float32 (z, y, x), lesion mask uint8 (z, y, x))}`` from preprocessed
    cases (objects with ``case_id``, ``image`` (array or Volume) and ``lesion_mask``)."""
    arrays = {}
    for position, case in enumerate(cases):
        case_id = str(getattr(case, "case_id", f"case{position:03d}"))
        image = getattr(case, "image", None)
        image = getattr(image, "array", image)
        lesion = getattr(case, "lesion_mask", None)
        if image is None or lesion is None:
            raise InvalidInputError(f"case {case_id!r} needs an image and a lesion_mask for supervised training")
        if case_id in arrays:
            raise InvalidInputError(f"case id {case_id!r} occurs twice")
        arrays[case_id] = (np.asarray(image, dtype=np.float32), np.asarray(lesion, dtype=np.uint8))
    return arrays


def slice_loader(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], case_ids: Sequence[str],
                 settings: SliceTraining, *, training: bool, seed: int, dihedral: bool = False) -> Any:
    """A seeded loader of the slices of ``case_ids``: shuffled, subsampled and augmented when
    ``training`` (``dihedral`` adds random turns and mirrors to the report's augmentation);
    every slice in order otherwise (for volume-level evaluation)."""
    augment = training and settings.augment
    dataset = SliceDataset([arrays[c] for c in case_ids], case_ids=list(case_ids),
                           empty_fraction=settings.empty_fraction if training else 1.0,
                           output_size=settings.output_size,
                           transform=default_augmentation(dihedral=dihedral) if augment else None, seed=seed)
    loader = seeded_loader(dataset, settings.batch_size, shuffle=training, seed=seed)
    return EpochLoader(loader) if training else loader


def stable_settings(settings: SliceTraining) -> dict[str, Any]:
    """``settings`` as a dict without what does not change a result (device, progress bars)."""
    plain = dataclasses.asdict(settings)
    for volatile in ("device", "progress"):
        plain["train"].pop(volatile)
    return plain


def code_versions(*modules: str) -> dict[str, str]:
    """``{path: hash}`` of the source of ``modules`` and every covidlib module they import
    (:func:`covidlib.fingerprint.code_fingerprint` over their import closure)."""
    return code_fingerprint(imported_modules(modules))


def training_fingerprint(model: nn.Module, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
                         train_ids: Sequence[str], val_ids: Sequence[str], settings: SliceTraining) -> str:
    """The key of one :func:`fit_volumes` run: its settings (not the device), the ids and
    array contents of its cases, the network's class, starting weights and trainable
    parameters, and the code of the modules that train it. Introduced in chapter 05."""
    cases = {case: arrays[case] for case in [*train_ids, *val_ids]}
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    network_module = type(model).__module__
    modules = [__name__] + ([network_module] if network_module.startswith("covidlib.") else [])
    return content_key(stable_settings(settings), list(train_ids), list(val_ids), cases,
                       f"{network_module}.{type(model).__qualname__}", model.state_dict(), trainable,
                       code_versions(*modules))


def fit_volumes(model: nn.Module, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], train_ids: Sequence[str],
                val_ids: Sequence[str], settings: SliceTraining, *, out_dir: str | Path | None = None,
                resume: bool = False) -> Trainer:
    """Train ``model`` on the axial slices of ``train_ids``, validating by volume Dice on
    ``val_ids``; returns the :class:`~covidlib.train.Trainer` (history, best weights loaded).

    With ``out_dir`` the checkpoints carry :func:`training_fingerprint`, so ``resume=True``
    continues (or, when finished, just reloads) only a run of the same settings, cases,
    starting weights and code; any other ``last.pt`` there is replaced by a fresh run.
    Introduced in chapter 05."""
    seed = settings.train.seed
    metadata = None if out_dir is None else {"fingerprint": training_fingerprint(model, arrays, train_ids, val_ids, settings)}
    trainer = Trainer(model, settings.train, out_dir=out_dir, metadata=metadata)
    trainer.fit(slice_loader(arrays, train_ids, settings, training=True, seed=seed),
                slice_loader(arrays, val_ids, settings, training=False, seed=seed), resume=resume)
    return trainer


def pretrain(model: nn.Module, source_cases: Sequence[Any], settings: SliceTraining, *, val_fraction: float = 0.25,
             out_dir: str | Path | None = None, resume: bool = False) -> Trainer:
    """Pretrain ``model`` to segment the lesions of a source domain (report section 5.2.3).

    ``source_cases``: preprocessed non-COVID cases — by default the phantom's ``"nodule"`` and
    ``"effusion"`` cohorts (stand-ins for MSD lung tumour and NSCLC pleural effusion), or the
    real ``msd-lung`` / ``nsclc`` data when present. A seeded ``val_fraction`` of the cases (at
    least one, drawn with ``settings.train.seed``) validate. Returns the Trainer; ``model`` ends
    with the best weights. Introduced in chapter 05.
    """
    arrays = case_arrays(source_cases)
    n_val = max(1, int(round(len(arrays) * val_fraction)))
    if len(arrays) <= n_val:
        raise InvalidInputError(f"pretraining needs more than {n_val} source cases (got {len(arrays)})")
    train_ids, val_ids = split_volumes(list(arrays), n_val, settings.train.seed)
    return fit_volumes(model, arrays, train_ids, val_ids, settings, out_dir=out_dir, resume=resume)


def genesis_corruption(cube: Tensor, generator: torch.Generator, *, block: int = 4, boxes: int = 3) -> Tensor:
    """A corrupted copy of a batch of cubes ``(B, 1, D, H, W)`` in [0, 1], for Models Genesis
    style restoration: local pixel shuffling inside ``block``-sized blocks on a random half of
    the blocks, then ``boxes`` in-painted boxes filled with uniform noise. Zhou et al. 2019 use
    these two plus a non-linear intensity curve and out-painting. Introduced in chapter 05."""
    corrupted = cube.clone()
    batch, channels, *size = cube.shape
    grid = [s // block for s in size]
    blocks = corrupted[..., :grid[0] * block, :grid[1] * block, :grid[2] * block]
    view = blocks.reshape(batch, channels, grid[0], block, grid[1], block, grid[2], block)
    view = view.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(batch, channels, *grid, block**3)
    order = torch.argsort(torch.rand(view.shape, generator=generator), dim=-1)
    chosen = torch.rand((batch, channels, *grid, 1), generator=generator) < 0.5
    view = torch.where(chosen, torch.gather(view, -1, order), view)
    view = view.reshape(batch, channels, *grid, block, block, block).permute(0, 1, 2, 5, 3, 6, 4, 7)
    corrupted[..., :grid[0] * block, :grid[1] * block, :grid[2] * block] = view.reshape(blocks.shape)
    for b in range(batch):
        for _ in range(boxes):
            extent = [int(torch.randint(max(s // 8, 1), max(s // 3, 2), (1,), generator=generator)) for s in size]
            start = [int(torch.randint(0, s - e + 1, (1,), generator=generator)) for s, e in zip(size, extent)]
            region = tuple(slice(a, a + e) for a, e in zip(start, extent))
            corrupted[(b, slice(None), *region)] = torch.rand((channels, *extent), generator=generator)  # type: ignore[index]  # (int, slice, *slices): mypy joins the items to object
    return corrupted


def pretrain_genesis_proxy(unet3d: UNet3d, volumes_hu: Sequence[np.ndarray], *, cube: tuple[int, int, int] = (32, 32, 16),
                           steps: int = 100, batch_size: int = 4, lr: float = 1e-3, seed: int = 0,
                           progress: bool = True, cache: str | Path | None = None) -> list[float]:
    """Self-supervised restoration pretraining of ``unet3d`` in the Models Genesis way, for when
    the published ``Genesis_Chest_CT.pt`` is not at hand: cubes cut from ``volumes_hu``
    ((z, y, x) HU arrays, clipped to [-1000, 1000] HU and scaled to [0, 1] as Models Genesis
    does), corrupted by :func:`genesis_corruption`, restored through a sigmoid with a mean
    squared error. Cubes are laid out ``(y, x, z)`` — depth last, like Models Genesis — so
    :func:`flatten_3d_to_2d` with its default ``depth_axis=-1`` applies. ``cube`` is
    ``(y, x, z)`` voxels, multiples of 8. Returns the loss of each step.

    ``cache``: a file in the published checkpoint's layout (``state_dict`` with the ``module.``
    prefix, so :func:`~covidlib.models.unet3d.load_genesis_checkpoint` reads it) plus the
    losses and a fingerprint of the settings, the volumes, ``unet3d``'s starting weights and
    the code. When the file's fingerprint matches, its weights are loaded into ``unet3d`` and
    its losses returned without training; otherwise the proxy is trained and the file
    (re)written atomically.
    Zhou et al., MICCAI 2019. Introduced in chapter 05.
    """
    if unet3d.in_channels != 1 or unet3d.num_classes != 1:
        raise InvalidInputError("pretrain_genesis_proxy restores one-channel images: use UNet3d(in_channels=1, num_classes=1)")
    for index, volume in enumerate(volumes_hu):
        check_hu(np.asarray(volume), f"volume {index}")
    key = None
    if cache is not None:
        key = content_key(dict(cube=list(cube), steps=steps, batch_size=batch_size, lr=lr, seed=seed),
                          [np.asarray(v) for v in volumes_hu], unet3d.state_dict(), code_versions(__name__))
        if Path(cache).is_file():
            stored = load_checkpoint(cache)
            if stored.get("fingerprint") == key:
                unet3d.load_state_dict({k.removeprefix("module."): v for k, v in stored["state_dict"].items()})
                return [float(loss) for loss in stored["losses"]]
    scaled = [np.transpose((np.clip(np.asarray(v, np.float32), -1000, 1000) + 1000) / 2000, (1, 2, 0)) for v in volumes_hu]
    for index, volume in enumerate(scaled):
        if any(s < c for s, c in zip(volume.shape, cube)):
            raise InvalidInputError(f"volume {index} of shape (y, x, z) {volume.shape} is smaller than the cube {cube}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(unet3d.parameters(), lr=lr)
    unet3d.train()
    losses: list[float] = []
    for _ in tqdm(range(steps), desc="genesis proxy", disable=not progress):
        cubes = []
        for _ in range(batch_size):
            volume = scaled[int(torch.randint(len(scaled), (1,), generator=generator))]
            start = [int(torch.randint(0, s - c + 1, (1,), generator=generator)) for s, c in zip(volume.shape, cube)]
            cubes.append(volume[tuple(slice(a, a + c) for a, c in zip(start, cube))])
        target = torch.from_numpy(np.stack(cubes))[:, None]
        loss = F.mse_loss(torch.sigmoid(unet3d(genesis_corruption(target, generator))), target)
        if not torch.isfinite(loss):
            raise InvalidInputError(f"the restoration loss became {float(loss)} at step {len(losses) + 1}: lower lr={lr}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    if cache is not None:
        save_checkpoint({"state_dict": {f"module.{k}": v for k, v in unet3d.state_dict().items()},
                         "losses": losses, "fingerprint": key}, cache)
    return losses


def layer_status(model: nn.Module, initial: Mapping[str, Tensor] | None = None) -> list[dict[str, object]]:
    """What a recipe did to each weight tensor (convolutions; biases and norms follow their
    layer): ``name``, ``part``, ``count`` and ``status`` — ``"frozen"`` (no gradient),
    ``"re-initialised"`` (trainable, differs from ``initial``), ``"fine-tuned"`` (trainable,
    starts from ``initial``) or ``"new"`` (not in ``initial``, or no ``initial``: from
    scratch). ``initial`` is the state the recipe started from (the pretrained weights).
    Introduced in chapter 05."""
    rows = []
    for row, (name, parameter) in zip(trainable_summary(model), model.named_parameters()):
        if parameter.ndim < 2:
            continue
        if not parameter.requires_grad:
            status = "frozen"
        elif initial is None or name not in initial or initial[name].shape != parameter.shape:
            status = "new"
        elif torch.equal(initial[name].to(parameter.device), parameter.detach()):
            status = "fine-tuned"
        else:
            status = "re-initialised"
        rows.append({"name": name, "part": row["part"], "count": row["count"], "status": status})
    return rows
