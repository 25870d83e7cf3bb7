"""The additive attention gate of Oktay et al. (2018) and the attention U-Net built with it.

Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018. For each
pixel ``i`` of a skip feature map ``x^l`` and the gating signal ``g`` from the coarser level,

    q_i = psi^T sigma1(W_x^T x_i + W_g^T g_i + b_xg) + b_psi,    alpha_i = sigma2(q_i),

with sigma1 = ReLU and sigma2 = sigmoid, and the gate passes on ``alpha_i * x_i``. ``W_x``,
``W_g`` and ``psi`` are 1x1 convolutions; ``W_x`` has no bias of its own because the one shared
bias ``b_xg`` sits in ``W_g``. The report's section 2.2.6 calls sigma2 a function that makes
the exponentials sum to one (a softmax over pixels); the paper, and this code, use the sigmoid,
which lets several regions be attended at once. The paper's reference code adds batch
normalisation inside the gate; the formula above (and the report) do not, so neither do we.

Introduced in chapter 04.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from covidlib.errors import InvalidInputError
from covidlib.models.unet2d import UNet2d, UpBlock


class AttentionGate(nn.Module):
    """Additive attention gate: ``(x, g) -> (alpha * x, alpha)``.

    ``x``: skip features ``(B, skip_channels, H, W)``; ``g``: gating signal
    ``(B, gating_channels, h, w)`` from the coarser level (any ``h, w``). ``W_g g`` is resampled
    bilinearly to the skip's grid; a 1x1 convolution commutes with bilinear interpolation, so
    this equals applying ``W_g`` to a resampled ``g`` at a quarter of the cost. Returns the
    gated skip ``(B, skip_channels, H, W)`` and the attention map ``alpha`` ``(B, 1, H, W)`` in
    ``(0, 1)``. Parameters: ``skip*inter + gating*inter + inter + inter + 1``.

    Oktay et al., MIDL 2018. Introduced in chapter 04.
    """

    def __init__(self, skip_channels: int, gating_channels: int, inter_channels: int) -> None:
        super().__init__()
        for name, value in (("skip_channels", skip_channels), ("gating_channels", gating_channels),
                            ("inter_channels", inter_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"AttentionGate {name} must be an integer >= 1, got {value!r}")
        self.skip_projection = nn.Conv2d(skip_channels, inter_channels, kernel_size=1, bias=False)  # W_x
        self.gating_projection = nn.Conv2d(gating_channels, inter_channels, kernel_size=1, bias=True)  # W_g, b_xg
        self.psi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)  # psi, b_psi

    def forward(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """Gated skip ``(B, C_x, H, W)`` and attention map ``(B, 1, H, W)``."""
        if x.ndim != 4 or g.ndim != 4 or x.shape[0] != g.shape[0]:
            raise InvalidInputError(
                f"AttentionGate expects x (B, C, H, W) and g (B, C_g, h, w) with the same B, "
                f"got x {tuple(x.shape)} and g {tuple(g.shape)}"
            )
        gating = self.gating_projection(g)
        if gating.shape[-2:] != x.shape[-2:]:
            gating = F.interpolate(gating, size=x.shape[-2:], mode="bilinear", align_corners=False)
        # in place: the sum is a fresh tensor that autograd does not keep
        attention = torch.sigmoid(self.psi(F.relu(self.skip_projection(x) + gating, inplace=True)))
        return x * attention, attention


class AttentionUNet2d(UNet2d):
    """U-Net whose skip connections pass through :class:`AttentionGate` s (Oktay et al. 2018).

    Same arguments, attributes and shapes as :class:`~covidlib.models.unet2d.UNet2d`; each
    ``decoder[j].gate`` gates the skip at its level with the coarser decoder feature, using
    ``inter_channels = skip_channels // 2`` as in the paper's code. After a forward pass,
    ``attention_maps`` holds one ``(B, 1, H_l, W_l)`` map per level, in decoder order (coarsest
    first, the full-resolution level last), detached and cropped to the input's extent at that
    level (``ceil(H / 2**l), ceil(W / 2**l)``).

    Oktay et al., MIDL 2018. Introduced in chapter 04.
    """

    def _make_up_block(self, coarse_channels: int, skip_channels: int) -> UpBlock:
        gate = AttentionGate(skip_channels, coarse_channels, max(skip_channels // 2, 1))
        return UpBlock(coarse_channels, skip_channels, skip_channels, gate=gate)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes, H, W)``; also records the attention maps."""
        logits = super().forward(x)
        self._input_size = tuple(x.shape[-2:])
        return logits

    @property
    def attention_maps(self) -> list[Tensor]:
        """Attention maps ``(B, 1, H_l, W_l)`` of the last forward pass, coarsest level first."""
        maps = [block.last_attention for block in self.decoder]
        size = getattr(self, "_input_size", None)
        if size is None or any(m is None for m in maps):
            raise InvalidInputError("attention_maps is empty until the model has run a forward pass")
        height, width = size
        cropped = []
        for level, attention in zip(reversed(range(self.depth)), maps):
            scale = 2**level
            cropped.append(attention[..., : -(-height // scale), : -(-width // scale)])  # type: ignore[index]  # nn.Module.__getattr__ is typed Tensor | Module; last_attention is a Tensor after a forward pass
        return cropped
