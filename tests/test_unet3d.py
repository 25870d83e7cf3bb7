"""Tests for covidlib.models.unet3d: the Models Genesis layout, by name and shape, and its loader."""

from __future__ import annotations

import pytest
import torch

from covidlib.errors import InvalidInputError
from covidlib.models.unet3d import GenesisUNet2d, UNet3d, load_genesis_checkpoint


def published_layout(w: int = 32, in_channels: int = 1, num_classes: int = 1) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer shapes of the published UNet3D (ModelsGenesis pytorch/unet3d.py),
    written out from its description: LUConv(conv1, bn1) pairs per level, up_conv keeping
    the channels, concatenation [up, skip], final 1x1x1 conv."""
    units = {
        "down_tr64": [(in_channels, w), (w, 2 * w)],
        "down_tr128": [(2 * w, 2 * w), (2 * w, 4 * w)],
        "down_tr256": [(4 * w, 4 * w), (4 * w, 8 * w)],
        "down_tr512": [(8 * w, 8 * w), (8 * w, 16 * w)],
        "up_tr256": [(16 * w + 8 * w, 8 * w), (8 * w, 8 * w)],
        "up_tr128": [(8 * w + 4 * w, 4 * w), (4 * w, 4 * w)],
        "up_tr64": [(4 * w + 2 * w, 2 * w), (2 * w, 2 * w)],
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for block, pairs in units.items():
        if block.startswith("up"):
            channels = {"up_tr256": 16 * w, "up_tr128": 8 * w, "up_tr64": 4 * w}[block]
            shapes[f"{block}.up_conv.weight"] = (channels, channels, 2, 2, 2)
            shapes[f"{block}.up_conv.bias"] = (channels,)
        for index, (cin, cout) in enumerate(pairs):
            prefix = f"{block}.ops.{index}"
            shapes[f"{prefix}.conv1.weight"] = (cout, cin, 3, 3, 3)
            shapes[f"{prefix}.conv1.bias"] = (cout,)
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.bn1.{buffer}"] = (cout,)
            shapes[f"{prefix}.bn1.num_batches_tracked"] = ()
    shapes["out_tr.final_conv.weight"] = (num_classes, 2 * w, 1, 1, 1)
    shapes["out_tr.final_conv.bias"] = (num_classes,)
    return shapes


def test_default_unet3d_has_the_published_names_shapes_and_parameter_count() -> None:
    model = UNet3d()
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert state == published_layout()
    # 19,073,665 is the total the published network reports (torchsummary in its README run).
    assert sum(p.numel() for p in model.parameters()) == 19_073_665


def test_base_width_scales_shapes_without_renaming() -> None:
    model = UNet3d(in_channels=1, num_classes=2, base_width=4)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == published_layout(4, 1, 2)


def test_forward_shapes_and_input_checks() -> None:
    torch.manual_seed(0)
    model = UNet3d(num_classes=2, base_width=2).eval()
    assert model(torch.randn(1, 1, 8, 16, 24)).shape == (1, 2, 8, 16, 24)
    features = model.encode(torch.randn(1, 1, 16, 16, 16))
    assert [tuple(f.shape) for f in features] == [(1, 4, 16, 16, 16), (1, 8, 8, 8, 8), (1, 16, 4, 4, 4), (1, 32, 2, 2, 2)]
    with pytest.raises(InvalidInputError, match="multiple of 8"):
        model(torch.randn(1, 1, 8, 8, 12))
    with pytest.raises(InvalidInputError, match="5 dims"):
        model(torch.randn(1, 1, 8, 8))
    with pytest.raises(InvalidInputError, match="channels"):
        model(torch.randn(1, 3, 8, 8, 8))


def test_genesis_unet2d_shares_every_name_of_the_3d_network() -> None:
    names3d = set(UNet3d(base_width=4).state_dict())
    plain = GenesisUNet2d(base_width=4)
    assert set(plain.state_dict()) == names3d
    gated = GenesisUNet2d(base_width=4, attention=True)
    extra = set(gated.state_dict()) - names3d
    assert extra and all(".gate." in name for name in extra)
    assert gated(torch.randn(2, 1, 16, 24)).shape == (2, 2, 16, 24)
    assert len(gated.up_tr64.last_attention.shape) == 4


def _save_published_style(model: UNet3d, path) -> None:
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save({"state_dict": state, "optimizer_state_dict": optimizer.state_dict()}, path)


def test_load_genesis_checkpoint_roundtrip_with_dataparallel_prefix(tmp_path) -> None:
    torch.manual_seed(1)
    original = UNet3d(base_width=4)
    with torch.no_grad():
        for module in original.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    path = tmp_path / "Genesis_Chest_CT.pt"
    _save_published_style(original, path)
    loaded = load_genesis_checkpoint(path)
    assert (loaded.base_width, loaded.in_channels, loaded.num_classes) == (4, 1, 1)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(1, 1, 16, 16, 8)
    assert torch.equal(loaded.eval()(x), original.eval()(x))


def test_load_genesis_checkpoint_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        load_genesis_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInputError, match="garbage.pt"):
        load_genesis_checkpoint(garbage)
    state = UNet3d(base_width=2).state_dict()
    missing = dict(state)
    del missing["up_tr64.ops.1.bn1.running_var"]
    path = tmp_path / "missing.pt"
    torch.save({"state_dict": missing}, path)
    with pytest.raises(InvalidInputError, match=r"missing\.pt.*missing \['up_tr64\.ops\.1\.bn1\.running_var'\]"):
        load_genesis_checkpoint(path)
    unexpected = dict(state) | {"down_tr64.ops.0.activation.weight": torch.ones(2)}  # a PReLU checkpoint
    path = tmp_path / "prelu.pt"
    torch.save(unexpected, path)
    with pytest.raises(InvalidInputError, match=r"prelu\.pt.*unexpected \['down_tr64\.ops\.0\.activation\.weight'\]"):
        load_genesis_checkpoint(path)
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"conv.weight": torch.ones(1)}}, path)
    with pytest.raises(InvalidInputError, match="other.pt.*not a Models Genesis"):
        load_genesis_checkpoint(path)
