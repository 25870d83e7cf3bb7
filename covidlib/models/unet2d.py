"""The 2D U-Net of Ronneberger et al. (2015), with padded convolutions and batch normalisation.

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015. Two changes from the paper, both now standard and both what the
report trains: 3x3 convolutions are zero-padded, so a block keeps the spatial size and no
cropping of skip connections is needed; and each convolution is followed by batch
normalisation (Ioffe and Szegedy 2015) before the ReLU.

The layers are grouped for transfer learning (chapter 05) and feature extraction (chapter 07):
``encoder`` holds the ``depth + 1`` double-convolution blocks (the last is the bottleneck),
``decoder`` the ``depth`` up-blocks, ``head`` the final 1x1 convolution.

Introduced in chapter 04.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from covidlib.errors import InvalidInputError


def to_channels_last(x: Tensor) -> Tensor:
    """``x`` ``(B, C, H, W)`` laid out in memory as NHWC ("channels last"); same values and shape.

    Unlike ``x.contiguous(memory_format=torch.channels_last)``, this also restrides a
    one-channel image (whose NCHW strides already count as channels-last): oneDNN picks its
    layout from the strides, and a one-channel input would otherwise keep the whole network in
    NCHW. Differentiable (a copy unless ``x`` already has NHWC strides).
    """
    if x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


class DoubleConv(nn.Sequential):
    """Two (3x3 conv -> BatchNorm -> ReLU) layers; padding 1 keeps the size.

    The convolutions carry no bias: the BatchNorm shift that follows would cancel it.
    Parameters: ``9 * in * out + 2 * out + 9 * out * out + 2 * out``.
    Input ``(B, in_channels, H, W)``, output ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """One decoder step: 2x2 transposed convolution (halves the channels), concatenation with
    the skip features, double convolution; optionally an attention gate on the skip.

    ``up``: ``ConvTranspose2d(in, in // 2, 2, stride 2)`` (the paper's "up-conv 2x2"),
    ``gate``: an :class:`~covidlib.models.attention.AttentionGate` or ``None``,
    ``conv``: ``DoubleConv(in // 2 + skip_channels, out_channels)``.
    After a forward pass with a gate, ``last_attention`` holds the gate's map ``(B, 1, H, W)``,
    detached (for figures; it also keeps ``copy.deepcopy`` of the model working).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, gate: nn.Module | None = None) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.gate = gate
        self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels)
        self.last_attention: Tensor | None = None

    def forward(self, coarse: Tensor, skip: Tensor) -> Tensor:
        """``coarse`` ``(B, in, h, w)`` and ``skip`` ``(B, skip, 2h, 2w)`` -> ``(B, out, 2h, 2w)``."""
        if self.gate is not None:
            # Oktay et al.: the gating signal is the coarser decoder feature, before upsampling.
            skip, attention = self.gate(skip, coarse)
            self.last_attention = attention.detach()
        return self.conv(torch.cat([skip, self.up(coarse)], dim=1))


class UNet2d(nn.Module):
    """2D U-Net: ``depth`` poolings, widths ``base_width * 2**i`` for levels ``i = 0..depth``.

    Input ``(B, in_channels, H, W)`` float, any ``H, W``: the input is zero-padded at the bottom
    and right to a multiple of ``2**depth`` and the logits are cropped back, so the output is
    ``(B, num_classes, H, W)`` logits (apply softmax for probabilities). Zero is the value
    outside the lungs after the book's normalisation, so the padding looks like background.
    ``depth=4, base_width=64`` is the paper's network (widths 64..1024); with
    ``in_channels=1, num_classes=2`` it has 31,036,546 parameters.

    Speed: on the CPU the activations run in channels-last (NHWC) memory format, oneDNN's
    native layout (a width-16 float32 training step was about 15 % faster on an AVX512 CPU, and
    the same as NCHW on an AVX2-only one; ``benchmarks/bench_unet.py``); the weights, their ``state_dict`` and the returned
    (contiguous NCHW) logits are the same as without it. Set ``channels_last = False`` on an
    instance for the plain NCHW path (same outputs up to float rounding); CUDA inputs are left in
    the layout they come in.

    Ronneberger et al., MICCAI 2015. Introduced in chapter 04.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_width: int = 64, depth: int = 4) -> None:
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("num_classes", num_classes, 1),
                                 ("base_width", base_width, 1), ("depth", depth, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.base_width = base_width
        self.depth = depth
        self.channels_last = True
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.widths = widths
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels, widths[0])] + [DoubleConv(widths[i - 1], widths[i]) for i in range(1, depth + 1)]
        )
        self.pool = nn.MaxPool2d(kernel_size=2)
        self.decoder = nn.ModuleList(
            [self._make_up_block(widths[level + 1], widths[level]) for level in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def _make_up_block(self, coarse_channels: int, skip_channels: int) -> UpBlock:
        return UpBlock(coarse_channels, skip_channels, skip_channels)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InvalidInputError(f"{type(self).__name__} input x must be a (B, C, H, W) tensor, got {shape}")
        if x.shape[1] != self.in_channels:
            raise InvalidInputError(
                f"{type(self).__name__} input x has {x.shape[1]} channels, the model expects in_channels={self.in_channels}"
            )
        if not x.is_floating_point():
            raise InvalidInputError(f"{type(self).__name__} input x must be a float tensor, got {x.dtype}")

    def pad_to_multiple(self, x: Tensor) -> Tensor:
        """Zero-pad ``(B, C, H, W)`` at the bottom/right so ``H, W`` are multiples of ``2**depth``."""
        multiple = 2**self.depth
        pad_h = -x.shape[-2] % multiple
        pad_w = -x.shape[-1] % multiple
        if pad_h == 0 and pad_w == 0:
            return x
        return F.pad(x, (0, pad_w, 0, pad_h))

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features, finest first and the bottleneck last: ``depth + 1`` tensors.

        Level ``i`` is ``(B, base_width * 2**i, H' / 2**i, W' / 2**i)`` where ``H', W'`` are the
        padded sizes (see :meth:`pad_to_multiple`).
        """
        self._check_input(x)
        x = self.pad_to_multiple(x)
        if self.channels_last and x.device.type == "cpu":
            x = to_channels_last(x)  # every later layer keeps the layout of its input
        features = [self.encoder[0](x)]
        for block in self.encoder[1:]:
            features.append(block(self.pool(features[-1])))
        return features

    def decode(self, features: list[Tensor]) -> Tensor:
        """Logits ``(B, num_classes, H', W')`` from :meth:`encode`'s features (padded size)."""
        if len(features) != self.depth + 1:
            raise InvalidInputError(f"decode expects {self.depth + 1} feature maps (from encode), got {len(features)}")
        x = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            x = block(x, skip)
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes, H, W)`` for input ``(B, in_channels, H, W)``."""
        self._check_input(x)
        height, width = x.shape[-2:]
        return self.decode(self.encode(x))[..., :height, :width].contiguous()
