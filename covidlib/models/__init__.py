"""Segmentation networks: 2D U-Net, attention gate, attention U-Net (and the 3D U-Net).

``get_model(name, **kwargs)`` builds one by its command-line name. Introduced in chapter 04.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from covidlib.errors import InvalidInputError
from covidlib.models.attention import AttentionGate, AttentionUNet2d
from covidlib.models.unet2d import DoubleConv, UNet2d, UpBlock
from covidlib.models.unet3d import GenesisUNet2d, UNet3d, load_genesis_checkpoint  # noqa: F401  (chapter 05)

#: The 2D networks by name; the command line lists them from :data:`covidlib.options.MODEL_NAMES`, which a
#: test keeps equal to these keys (so that ``--help`` needs no torch).
MODELS: dict[str, type[nn.Module]] = {"unet": UNet2d, "attention-unet": AttentionUNet2d}


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a 2D network by name (``"unet"`` or ``"attention-unet"``); ``kwargs`` go to its class."""
    if name not in MODELS:
        raise InvalidInputError(f"model name {name!r} is not known; choose one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "AttentionGate", "AttentionUNet2d", "DoubleConv", "UNet2d", "UpBlock", "get_model"]
