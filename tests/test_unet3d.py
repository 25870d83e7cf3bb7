"""Tests for covidlib.models.unet3d: the Models Genesis layout, by name and shape, and its loader."""

from __future__ import annotations

import copy

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
    torch.manual_seed(0)
    names3d = set(UNet3d(base_width=4).state_dict())
    plain = GenesisUNet2d(base_width=4)
    assert set(plain.state_dict()) == names3d
    gated = GenesisUNet2d(base_width=4, attention=True)
    extra = set(gated.state_dict()) - names3d
    assert extra and all(".gate." in name for name in extra)
    assert gated(torch.randn(2, 1, 16, 24)).shape == (2, 2, 16, 24)
    assert gated.up_tr64.last_attention.shape == (2, 1, 16, 24)


def test_gated_genesis_unet2d_deep_copies_after_a_forward_pass() -> None:
    # a mean teacher copies the student after it has run; the stored attention map must not
    # carry the autograd graph (only graph leaves can be deep-copied)
    torch.manual_seed(0)
    model = GenesisUNet2d(base_width=4, attention=True)
    x = torch.randn(2, 1, 16, 16)
    model(x).sum().backward()  # the gradients still reach the gates
    assert all(p.grad is not None for name, p in model.named_parameters() if ".gate." in name)
    for block in model.decoder:
        assert block.last_attention is not None and not block.last_attention.requires_grad
    twin = copy.deepcopy(model)
    for (name, p), q in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(twin.eval()(x), model.eval()(x), rtol=0, atol=0)


def conv_unit_parameters(c_in: int, c_out: int, dims: int) -> int:
    # 3^dims kernel with bias, then BatchNorm scale and shift
    return 3**dims * c_in * c_out + c_out + 2 * c_out


def genesis_parameters(c_in: int, classes: int, w: int, dims: int, attention: bool = False) -> int:
    """The Models Genesis layout's parameter count from its layer formulas (module docstring)."""
    total = 0
    for cin, cout in ((c_in, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w), (8 * w, 16 * w)):  # down_tr64 .. 512
        total += conv_unit_parameters(cin, cout // 2, dims) + conv_unit_parameters(cout // 2, cout, dims)
    for coarse, skip in ((16 * w, 8 * w), (8 * w, 4 * w), (4 * w, 2 * w)):  # up_tr256, 128, 64
        total += 2**dims * coarse * coarse + coarse  # up_conv: 2^dims transposed conv, channels kept, bias
        total += conv_unit_parameters(coarse + skip, skip, dims) + conv_unit_parameters(skip, skip, dims)
        if attention:
            inter = skip // 2
            total += skip * inter + coarse * inter + inter + inter + 1  # W_x, W_g + b_xg, psi + b_psi
    return total + 2 * w * classes + classes  # out_tr: 1x1 conv


def test_parameter_counts_follow_the_layer_formulas() -> None:
    # the formula reproduces the published 3D network's count, so it can be trusted in 2D
    assert genesis_parameters(1, 1, 32, dims=3) == 19_073_665
    # GenesisUNet2d() by hand (9 c_in c_out + 3 c_out per unit):
    #   down: (1->32, 32->64) 384 + 18,624; (64->64, 64->128) 37,056 + 74,112;
    #         (128->128, 128->256) 147,840 + 295,680; (256->256, 256->512) 590,592 + 1,181,184
    #         = 2,345,472
    #   up_tr256: up_conv 4 * 512^2 + 512 = 1,049,088; units 768->256, 256->256 1,770,240 + 590,592
    #   up_tr128: 262,400 + 442,752 + 147,840;  up_tr64: 65,664 + 110,784 + 37,056
    #   = 3,409,920 + 852,992 + 213,504;  out_tr 64 * 2 + 2 = 130
    #   total 2,345,472 + 4,476,416 + 130 = 6,822,018
    assert genesis_parameters(1, 2, 32, dims=2) == 6_822_018
    assert sum(p.numel() for p in GenesisUNet2d().parameters()) == 6_822_018
    # gates (inter = skip / 2): 256*128 + 512*128 + 257 + 128*64 + 256*64 + 129 + 64*32 + 128*32 + 65
    #   = 98,561 + 24,705 + 6,209 = 129,475
    assert genesis_parameters(1, 2, 32, dims=2, attention=True) == 6_822_018 + 129_475
    assert sum(p.numel() for p in GenesisUNet2d(attention=True).parameters()) == 6_822_018 + 129_475
    for c_in, classes, w in ((3, 4, 4), (1, 1, 6)):
        assert sum(p.numel() for p in UNet3d(c_in, classes, w).parameters()) == genesis_parameters(c_in, classes, w, 3)
        assert sum(p.numel() for p in GenesisUNet2d(c_in, classes, w, attention=True).parameters()) == \
            genesis_parameters(c_in, classes, w, 2, attention=True)


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
