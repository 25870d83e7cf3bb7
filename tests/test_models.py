"""Tests for covidlib.models: parameter counts from the layer formulas, shapes, padding, gates."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from covidlib.errors import InvalidInputError
from covidlib.models import AttentionGate, AttentionUNet2d, UNet2d, get_model
from covidlib.models.unet2d import to_channels_last


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def double_conv_parameters(c_in: int, c_out: int) -> int:
    # two bias-free 3x3 convolutions, each followed by a BatchNorm with scale and shift
    return 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out


def unet_parameters(c_in: int, classes: int, width: int, depth: int, attention: bool = False) -> int:
    widths = [width * 2**level for level in range(depth + 1)]
    total = double_conv_parameters(c_in, widths[0])
    total += sum(double_conv_parameters(widths[i - 1], widths[i]) for i in range(1, depth + 1))
    for level in range(depth):
        coarse, skip = widths[level + 1], widths[level]
        total += coarse * (coarse // 2) * 4 + coarse // 2  # 2x2 transposed conv with bias
        total += double_conv_parameters(coarse // 2 + skip, skip)
        if attention:
            inter = skip // 2
            total += skip * inter + coarse * inter + inter + inter + 1  # W_x, W_g + b_xg, psi + b_psi
    return total + widths[0] * classes + classes  # 1x1 head


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_parameter_count_matches_layer_formula(depth: int) -> None:
    assert count_parameters(UNet2d(1, 2, base_width=4, depth=depth)) == unet_parameters(1, 2, 4, depth)
    assert count_parameters(AttentionUNet2d(3, 4, base_width=6, depth=depth)) == unet_parameters(3, 4, 6, depth, True)


def test_default_unet_is_the_paper_sized_network() -> None:
    model = UNet2d()
    assert model.widths == [64, 128, 256, 512, 1024]
    assert count_parameters(model) == unet_parameters(1, 2, 64, 4) == 31_036_546


def test_default_attention_unet_is_the_paper_sized_network_plus_its_gates() -> None:
    # gates at skips 64, 128, 256, 512 (coarse = 2 * skip, inter = skip / 2):
    #   skip * inter + coarse * inter + 2 * inter + 1
    #   = (2,048 + 4,096 + 65) + (8,192 + 16,384 + 129) + (32,768 + 65,536 + 257) + (131,072 + 262,144 + 513)
    #   = 6,209 + 24,705 + 98,561 + 393,729 = 523,204
    model = AttentionUNet2d()
    assert model.widths == [64, 128, 256, 512, 1024]
    assert count_parameters(model) == unet_parameters(1, 2, 64, 4, attention=True) == 31_036_546 + 523_204 == 31_559_750


def test_structure_for_transfer_learning() -> None:
    model = UNet2d(1, 2, base_width=4, depth=3)
    assert len(model.encoder) == 4 and len(model.decoder) == 3
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 2
    # a plain U-Net's weights load into the attention U-Net; only the gates stay new
    attention = AttentionUNet2d(1, 2, base_width=4, depth=3)
    result = attention.load_state_dict(model.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".gate." in key for key in result.missing_keys)


@pytest.mark.parametrize("model_class", [UNet2d, AttentionUNet2d])
@pytest.mark.parametrize("size", [(16, 16), (37, 50), (1, 3)])
def test_output_has_input_size(model_class: type[UNet2d], size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = model_class(2, 3, base_width=4, depth=3)
    logits = model(torch.randn(2, 2, *size))
    assert logits.shape == (2, 3, *size)


def test_encode_features_and_decode() -> None:
    torch.manual_seed(0)
    model = UNet2d(1, 2, base_width=4, depth=3).eval()
    x = torch.randn(1, 1, 32, 24)
    features = model.encode(x)
    assert [tuple(f.shape) for f in features] == [(1, 4 * 2**i, 32 // 2**i, 24 // 2**i) for i in range(4)]
    torch.testing.assert_close(model.decode(features), model(x))
    with pytest.raises(InvalidInputError, match="4 feature maps"):
        model.decode(features[:-1])


@pytest.mark.parametrize("model_class", [UNet2d, AttentionUNet2d])
def test_odd_input_equals_zero_padded_input_cropped(model_class: type[UNet2d]) -> None:
    torch.manual_seed(0)
    model = model_class(1, 2, base_width=4, depth=2).eval()
    x = torch.randn(2, 1, 13, 10)
    expected = model(F.pad(x, (0, 2, 0, 3)))[..., :13, :10]
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("model_class", [UNet2d, AttentionUNet2d])
def test_every_parameter_gets_a_finite_gradient(model_class: type[UNet2d]) -> None:
    torch.manual_seed(0)
    model = model_class(1, 2, base_width=4, depth=2)
    logits = model(torch.randn(2, 1, 16, 16))
    F.cross_entropy(logits, torch.randint(0, 2, (2, 16, 16))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_bad_input_raises() -> None:
    model = UNet2d(1, 2, base_width=4, depth=2)
    with pytest.raises(InvalidInputError, match="channels"):
        model(torch.zeros(1, 3, 16, 16))
    with pytest.raises(InvalidInputError, match=r"\(B, C, H, W\)"):
        model(torch.zeros(1, 16, 16))
    with pytest.raises(InvalidInputError, match="float"):
        model(torch.zeros(1, 1, 16, 16, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="depth"):
        UNet2d(depth=0)
    with pytest.raises(InvalidInputError, match="base_width"):
        UNet2d(base_width=2.5)  # type: ignore[arg-type]


def test_gate_with_zero_weights_passes_half_of_the_skip() -> None:
    gate = AttentionGate(3, 5, 2)
    for parameter in gate.parameters():
        torch.nn.init.zeros_(parameter)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    gated, attention = gate(x, torch.randn(2, 5, 4, 4, generator=generator))
    assert attention.shape == (2, 1, 8, 8)
    torch.testing.assert_close(attention, torch.full_like(attention, 0.5))
    torch.testing.assert_close(gated, 0.5 * x)


def test_gate_matches_the_formula_by_hand() -> None:
    gate = AttentionGate(1, 1, 1)
    with torch.no_grad():
        gate.skip_projection.weight.fill_(2.0)  # W_x
        gate.gating_projection.weight.fill_(-1.0)  # W_g
        gate.gating_projection.bias.fill_(0.5)  # b_xg
        gate.psi.weight.fill_(3.0)
        gate.psi.bias.fill_(-1.0)  # b_psi
    x = torch.tensor([[[[1.0, -2.0], [0.25, 0.0]]]])
    g = torch.tensor([[[[0.5, 4.0], [1.0, -3.0]]]])
    expected_alpha = torch.sigmoid(3.0 * torch.clamp(2.0 * x - g + 0.5, min=0.0) - 1.0)
    gated, attention = gate(x, g)
    torch.testing.assert_close(attention, expected_alpha)
    torch.testing.assert_close(gated, x * expected_alpha)


@pytest.mark.parametrize("name, arguments", [
    ("skip_channels", (0, 4, 2)),
    ("gating_channels", (3, -1, 2)),
    ("inter_channels", (3, 4, 1.5)),
    ("skip_channels", (True, 4, 2)),  # a bool is not a channel count
])
def test_gate_rejects_bad_channel_counts_by_name(name: str, arguments: tuple) -> None:
    with pytest.raises(InvalidInputError, match=f"AttentionGate {name} must be an integer >= 1"):
        AttentionGate(*arguments)


def test_gate_rejects_inputs_that_are_not_batches_of_images() -> None:
    gate = AttentionGate(3, 5, 2)
    with pytest.raises(InvalidInputError, match=r"got x \(3, 8, 8\) and g \(1, 5, 4, 4\)"):
        gate(torch.zeros(3, 8, 8), torch.zeros(1, 5, 4, 4))  # x without its batch dimension
    with pytest.raises(InvalidInputError, match=r"same B"):
        gate(torch.zeros(2, 3, 8, 8), torch.zeros(1, 5, 4, 4))
    with pytest.raises(InvalidInputError, match=r"g \(5, 4, 4\)"):
        gate(torch.zeros(1, 3, 8, 8), torch.zeros(5, 4, 4))


def test_gate_resamples_the_gating_signal_to_the_skip_grid() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(4, 6, 3)
    x, g = torch.randn(1, 4, 10, 12), torch.randn(1, 6, 5, 6)
    g_on_skip_grid = F.interpolate(g, size=(10, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(gate(x, g)[1], gate(x, g_on_skip_grid)[1])


def test_attention_maps_after_forward() -> None:
    torch.manual_seed(0)
    model = AttentionUNet2d(1, 2, base_width=4, depth=3)
    with pytest.raises(InvalidInputError, match="forward"):
        _ = model.attention_maps
    model(torch.randn(2, 1, 37, 50))
    maps = model.attention_maps
    assert [tuple(m.shape) for m in maps] == [(2, 1, 10, 13), (2, 1, 19, 25), (2, 1, 37, 50)]
    for attention in maps:
        assert not attention.requires_grad
        assert (attention > 0).all() and (attention < 1).all()
    copy.deepcopy(model)  # a mean teacher copies the student after it has run


def test_get_model_by_name() -> None:
    assert type(get_model("attention-unet", base_width=4, depth=2)) is AttentionUNet2d
    assert type(get_model("unet", base_width=4, depth=2)) is UNet2d
    with pytest.raises(InvalidInputError, match="unet"):
        get_model("segformer")


# --- fast paths (issue 14): channels-last activations and bf16 autocast ------------------------

def test_to_channels_last_restrides_even_one_channel_images() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 5, 7, generator=generator)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.stride(1) != 1  # the trap
    y = to_channels_last(x)
    assert y.stride() == (35, 1, 7, 1)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    assert to_channels_last(y) is y  # already NHWC: no copy
    z = to_channels_last(torch.randn(2, 3, 4, 4, generator=generator))
    assert z.stride() == (48, 1, 12, 3)


def plain_and_fast(model_class: type[UNet2d]) -> tuple[UNet2d, UNet2d]:
    torch.manual_seed(0)
    fast = model_class(1, 2, base_width=4, depth=2)
    plain = copy.deepcopy(fast)
    plain.channels_last = False
    assert fast.channels_last
    return plain, fast


@pytest.mark.parametrize("model_class", [UNet2d, AttentionUNet2d])
def test_channels_last_path_equals_the_plain_path(model_class: type[UNet2d]) -> None:
    plain, fast = plain_and_fast(model_class)
    x = torch.randn(3, 1, 21, 18)
    target = torch.randint(0, 2, (3, 21, 18))
    layouts = []
    for model in (plain, fast):  # the first convolution's output shows which layout ran
        model.encoder[0][0].register_forward_hook(lambda _m, _i, out: layouts.append(out.stride(1) == 1))
    outputs = []
    for model in (plain, fast):
        logits = model(x)
        F.cross_entropy(logits, target).backward()
        outputs.append(logits)
    assert layouts == [False, True]  # plain: NCHW; fast: NHWC
    # same logits, NCHW-contiguous either way; same gradients; weights never change layout
    assert outputs[1].is_contiguous() and outputs[1].shape == (3, 2, 21, 18)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for (name, p_plain), p_fast in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_plain.grad, rtol=1e-4, atol=1e-5, msg=name)
        assert p_fast.is_contiguous(), name
    # the BatchNorm running statistics are updated the same way
    for (name, b_plain), b_fast in zip(plain.named_buffers(), fast.buffers()):
        torch.testing.assert_close(b_fast, b_plain, rtol=1e-5, atol=1e-6, msg=name)
    assert count_parameters(fast) == unet_parameters(1, 2, 4, 2, model_class is AttentionUNet2d)


@pytest.mark.parametrize("model_class", [UNet2d, AttentionUNet2d])
def test_bf16_autocast_stays_within_bf16_tolerance_of_float32(model_class: type[UNet2d]) -> None:
    plain, fast = plain_and_fast(model_class)
    plain.eval(), fast.eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        reference = plain(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(x)
    assert low.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits (relative step 2**-8 = 0.4 %); a few layers compound it
    scale = reference.abs().max()
    assert (low.float() - reference).abs().max() < 0.05 * scale
    assert (low.float().argmax(1) == reference.argmax(1)).float().mean() > 0.95
