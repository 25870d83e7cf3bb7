"""The 3D U-Net of Models Genesis, with parameter names that load its published checkpoint, and
its 2D twin that receives the checkpoint's weights flattened to 2D (chapter 05).

Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis",
MICCAI 2019 (github.com/MrGiovanni/ModelsGenesis, ``pytorch/unet3d.py``). The network is a
3D U-Net with three poolings; each level is a pair of (3x3x3 conv -> BatchNorm -> ReLU)
units whose *first* unit has half the level's output width (``1 -> 32 -> 64``,
``64 -> 64 -> 128``, ``128 -> 128 -> 256``, ``256 -> 256 -> 512``). Each decoder step is a 2x2x2
transposed convolution that keeps the channel count, a concatenation ``[upsampled, skip]`` and
two units; a 1x1x1 convolution gives the output. Parameter names follow the published code
(``down_tr64.ops.0.conv1.weight``, ``up_tr256.up_conv.weight``, ``out_tr.final_conv.weight``
...), so ``Genesis_Chest_CT.pt`` loads by name (:func:`load_genesis_checkpoint`).

Two deliberate differences from the published code, neither of which changes a parameter
name or shape: the output is logits (the published ``out_tr`` applies a sigmoid because it was
trained for image restoration), and normalisation is the standard ``BatchNorm`` (the published
``ContBatchNorm3d`` normalises with batch statistics even in ``eval()``; ours uses the running
statistics stored in the checkpoint, as every other network in the book).

``base_width`` scales every width (32 is the published network) without renaming anything,
so tiny networks for quick runs load and flatten exactly like the real one.

Introduced in chapter 05.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from covidlib.errors import InvalidInputError
from covidlib.models.attention import AttentionGate

SpatialDims = Literal[2, 3]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}

#: Number of poolings of the Models Genesis network: inputs must be multiples of ``2**3``.
GENESIS_POOLINGS = 3


class ConvUnit(nn.Module):
    """3x3(x3) convolution (with bias, as published) -> BatchNorm -> ReLU; keeps the size.

    Models Genesis ``LUConv``: attributes ``conv1``, ``bn1``, ``activation``.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: SpatialDims) -> None:
        super().__init__()
        self.conv1 = _CONV[spatial_dims](in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = _BATCH_NORM[spatial_dims](out_channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.bn1(self.conv1(x)))


class DownBlock(nn.Module):
    """Encoder level: ``ops`` = two :class:`ConvUnit` s (``in -> out/2 -> out``), then 2x max
    pooling unless it is the bottleneck. Returns ``(pooled, before_pool)``."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: SpatialDims, bottleneck: bool) -> None:
        super().__init__()
        self.ops = nn.Sequential(ConvUnit(in_channels, out_channels // 2, spatial_dims),
                                 ConvUnit(out_channels // 2, out_channels, spatial_dims))
        self.maxpool = None if bottleneck else _MAX_POOL[spatial_dims](2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.ops(x)
        return (features if self.maxpool is None else self.maxpool(features)), features


class GenesisUpBlock(nn.Module):
    """Decoder level: ``up_conv`` (2x transposed conv, ``in -> in`` channels), concatenation
    ``[upsampled, skip]`` (the published order, which the weights depend on), ``ops`` = two
    :class:`ConvUnit` s ``in + skip -> out -> out``. Optional 2D ``gate``
    (:class:`~covidlib.models.attention.AttentionGate`) on the skip, gated by the coarse input;
    after a forward pass ``last_attention`` holds its map ``(B, 1, H, W)``, detached (as in
    :class:`~covidlib.models.unet2d.UpBlock`: the model stays deep-copyable, e.g. by a mean teacher)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, spatial_dims: SpatialDims,
                 attention: bool = False) -> None:
        super().__init__()
        self.up_conv = _CONV_TRANSPOSE[spatial_dims](in_channels, in_channels, kernel_size=2, stride=2)
        self.gate = AttentionGate(skip_channels, in_channels, max(skip_channels // 2, 1)) if attention else None
        self.ops = nn.Sequential(ConvUnit(in_channels + skip_channels, out_channels, spatial_dims),
                                 ConvUnit(out_channels, out_channels, spatial_dims))
        self.last_attention: Tensor | None = None

    def forward(self, coarse: Tensor, skip: Tensor) -> Tensor:
        if self.gate is not None:
            skip, attention = self.gate(skip, coarse)
            self.last_attention = attention.detach()
        return self.ops(torch.cat([self.up_conv(coarse), skip], dim=1))


class OutputBlock(nn.Module):
    """1x1(x1) convolution to class logits: ``final_conv``."""

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: SpatialDims) -> None:
        super().__init__()
        self.final_conv = _CONV[spatial_dims](in_channels, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.final_conv(x)


class _GenesisUNet(nn.Module):
    """Models Genesis U-Net layout in 2 or 3 spatial dimensions (see the module docstring)."""

    spatial_dims: SpatialDims

    def __init__(self, in_channels: int, num_classes: int, base_width: int, attention: bool = False) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("base_width", base_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{type(self).__name__} {name} must be an integer >= 1, got {value!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.base_width = base_width
        w = base_width
        dims = self.spatial_dims
        # Level widths 2w, 4w, 8w, 16w: (64, 128, 256, 512) for the published w = 32.
        self.down_tr64 = DownBlock(in_channels, 2 * w, dims, bottleneck=False)
        self.down_tr128 = DownBlock(2 * w, 4 * w, dims, bottleneck=False)
        self.down_tr256 = DownBlock(4 * w, 8 * w, dims, bottleneck=False)
        self.down_tr512 = DownBlock(8 * w, 16 * w, dims, bottleneck=True)
        self.up_tr256 = GenesisUpBlock(16 * w, 8 * w, 8 * w, dims, attention)
        self.up_tr128 = GenesisUpBlock(8 * w, 4 * w, 4 * w, dims, attention)
        self.up_tr64 = GenesisUpBlock(4 * w, 2 * w, 2 * w, dims, attention)
        self.out_tr = OutputBlock(2 * w, num_classes, dims)

    # Views grouping the layers like UNet2d's, so covidlib.transfer treats both layouts alike.
    @property
    def encoder(self) -> nn.ModuleList:
        """The four encoder levels, finest first; the last is the bottleneck."""
        return nn.ModuleList([self.down_tr64, self.down_tr128, self.down_tr256, self.down_tr512])

    @property
    def decoder(self) -> nn.ModuleList:
        """The three up-blocks, coarsest first."""
        return nn.ModuleList([self.up_tr256, self.up_tr128, self.up_tr64])

    @property
    def head(self) -> nn.Module:
        """The output 1x1 convolution."""
        return self.out_tr.final_conv

    def _check_input(self, x: Tensor) -> None:
        expected = 2 + self.spatial_dims
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.ndim != expected or not x.is_floating_point():
            got = (tuple(x.shape), x.dtype) if isinstance(x, Tensor) else type(x).__name__
            raise InvalidInputError(f"{name} input x must be a float tensor with {expected} dims "
                                    f"(B, C, {'D, ' if expected == 5 else ''}H, W), got {got}")
        if x.shape[1] != self.in_channels:
            raise InvalidInputError(f"{name} input x has {x.shape[1]} channels, the model expects {self.in_channels}")
        multiple = 2**GENESIS_POOLINGS
        if any(size % multiple for size in x.shape[2:]):
            raise InvalidInputError(f"{name} input spatial size {tuple(x.shape[2:])} must be a multiple of {multiple} "
                                    "in every dimension (three 2x poolings)")

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features before pooling, finest first, bottleneck last: 4 tensors with
        ``2w, 4w, 8w, 16w`` channels at sizes ``S, S/2, S/4, S/8``."""
        self._check_input(x)
        features = []
        for block in self.encoder:
            x, before_pool = block(x)
            features.append(before_pool)
        return features

    def decode(self, features: list[Tensor]) -> Tensor:
        """Logits ``(B, num_classes, *S)`` from :meth:`encode`'s four feature maps."""
        if len(features) != 4:
            raise InvalidInputError(f"decode expects the 4 feature maps of encode, got {len(features)}")
        x = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            x = block(x, skip)
        return self.out_tr(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes, *S)`` for input ``(B, in_channels, *S)``, ``S`` multiples of 8."""
        return self.decode(self.encode(x))


class UNet3d(_GenesisUNet):
    """The Models Genesis 3D U-Net (Zhou et al., MICCAI 2019): input ``(B, C, D, H, W)`` with
    every size a multiple of 8, output logits ``(B, num_classes, D, H, W)``.

    ``UNet3d()`` (``in_channels=1, num_classes=1, base_width=32``) has exactly the parameter
    names and shapes of the published ``UNet3D`` (19,073,665 parameters). With
    ``num_classes=2`` and a small ``base_width`` it is the book's coarse 3D segmenter on
    downsampled volumes (chapter 07). Introduced in chapter 05.
    """

    spatial_dims: SpatialDims = 3

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_width: int = 32) -> None:
        super().__init__(in_channels, num_classes, base_width)


class GenesisUNet2d(_GenesisUNet):
    """2D twin of :class:`UNet3d`: the same parameter names with 2D kernels, so flattened
    Models Genesis weights drop in by name (:func:`covidlib.transfer.flatten_3d_to_2d`).

    Input ``(B, C, H, W)`` with ``H, W`` multiples of 8, output logits ``(B, num_classes, H, W)``.
    ``attention=True`` adds an :class:`~covidlib.models.attention.AttentionGate` on each skip
    (Oktay et al. 2018) — new parameters under ``*.gate.*`` that the 3D checkpoint does not
    have, so they start from their own initialisation. Introduced in chapter 05.
    """

    spatial_dims: SpatialDims = 2

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_width: int = 32, attention: bool = False) -> None:
        super().__init__(in_channels, num_classes, base_width, attention)
        self.attention = attention


def load_genesis_checkpoint(path: str | Path) -> UNet3d:
    """Load a Models Genesis checkpoint (e.g. ``Genesis_Chest_CT.pt``) into a :class:`UNet3d`.

    Accepts the published format (a dict whose ``state_dict`` holds the weights with the
    ``module.`` prefix of ``nn.DataParallel``) or a bare state dict, with or without the prefix.
    The file is read with ``weights_only=True`` (no code runs on load); the widths, input
    channels and classes are read from the weights' shapes. Raises
    :class:`~covidlib.errors.InvalidInputError` naming the file when it is missing, unreadable
    or its names/shapes do not match the Models Genesis layout. Introduced in chapter 05.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: Models Genesis checkpoint not found (request and download "
                                "Genesis_Chest_CT.pt from github.com/MrGiovanni/ModelsGenesis, then pass its path)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or non-torch file
        raise InvalidInputError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InvalidInputError(f"{path}: expected a dict of tensors (or a dict with a 'state_dict' of tensors)")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    first, last = state.get("down_tr64.ops.0.conv1.weight"), state.get("out_tr.final_conv.weight")
    if first is None or last is None or first.ndim != 5:
        raise InvalidInputError(f"{path}: not a Models Genesis 3D U-Net: no 5D 'down_tr64.ops.0.conv1.weight' "
                                f"and 'out_tr.final_conv.weight' (found keys such as {sorted(state)[:3]})")
    model = UNet3d(in_channels=int(first.shape[1]), num_classes=int(last.shape[0]), base_width=int(first.shape[0]))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InvalidInputError(f"{path}: parameter names do not match the Models Genesis UNet3D layout; "
                                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise InvalidInputError(f"{path}: parameter shapes do not match the Models Genesis layout: {wrong[:3]}")
    model.load_state_dict(state)
    return model
