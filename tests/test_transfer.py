"""Tests for covidlib.transfer: freezing, re-initialisation, recipes and 3D -> 2D flattening."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import covidlib.transfer as transfer
from covidlib import fingerprint
from covidlib.errors import InvalidInputError
from covidlib.models import AttentionUNet2d, UNet2d, UpBlock
from covidlib.models.unet3d import ConvUnit, GenesisUNet2d, UNet3d, load_genesis_checkpoint
from covidlib.train import TrainConfig, load_checkpoint
from covidlib.transfer import (
    PARTS,
    SliceTraining,
    flatten_3d_to_2d,
    flatten_kernel,
    freeze,
    genesis_corruption,
    layer_status,
    model_parts,
    parameter_parts,
    prepare_finetune,
    pretrain,
    pretrain_genesis_proxy,
    reinitialise,
    trainable_summary,
    unfreeze,
)


def small_unet(seed: int = 0) -> UNet2d:
    torch.manual_seed(seed)
    return UNet2d(base_width=2, depth=4)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def one_adam_step(model: nn.Module) -> None:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    loss = model(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("factory", [lambda: small_unet(), lambda: AttentionUNet2d(base_width=2, depth=3),
                                     lambda: GenesisUNet2d(base_width=2, attention=True), lambda: UNet3d(base_width=2)])
def test_every_parameter_lies_in_exactly_one_part(factory) -> None:
    model = factory()
    parts = parameter_parts(model)
    assert set(parts) == {name for name, _ in model.named_parameters()}
    assert set(parts.values()) <= set(PARTS)
    counts = [sum(p.numel() for m in modules for p in m.parameters()) for modules in model_parts(model).values()]
    assert sum(counts) == sum(p.numel() for p in model.parameters())


def test_encoder_halves_for_four_and_three_poolings() -> None:
    unet = small_unet()
    parts = model_parts(unet)
    assert parts["encoder_first_half"] == [unet.encoder[0], unet.encoder[1]]
    assert parts["encoder_second_half"] == [unet.encoder[2], unet.encoder[3]]
    assert parts["bottleneck"] == [unet.encoder[4]]
    genesis = model_parts(GenesisUNet2d(base_width=2))
    assert [len(genesis[p]) for p in ("encoder_first_half", "encoder_second_half", "bottleneck")] == [2, 1, 1]


def test_freeze_really_freezes_and_unfreeze_undoes_it() -> None:
    model = small_unet()
    freeze(model, ["encoder_first_half", "head"])
    parts = parameter_parts(model)
    frozen = {name for name, part in parts.items() if part in ("encoder_first_half", "head")}
    assert frozen and all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)
    before = snapshot(model)
    one_adam_step(model)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is None for n in frozen)
    after = model.state_dict()
    frozen_modules = [model.encoder[0], model.encoder[1], model.head]
    prefixes = tuple(name + "." for name, m in model.named_modules() if any(m is f for f in frozen_modules))
    frozen_keys = [key for key in after if key.startswith(prefixes)]
    assert len(frozen_keys) > len(frozen)  # parameters and BatchNorm buffers
    for key in frozen_keys:
        # Weights *and* BatchNorm running statistics stay exactly as they were.
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["encoder.2.0.weight"], before["encoder.2.0.weight"])
    assert not torch.equal(after["encoder.2.1.running_mean"], before["encoder.2.1.running_mean"])
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    one_adam_step(model)
    assert not torch.equal(model.state_dict()["encoder.0.1.running_mean"], before["encoder.0.1.running_mean"])


def test_reinitialise_changes_only_the_named_part_and_is_seeded() -> None:
    model = small_unet()
    before = snapshot(model)
    state = torch.get_rng_state()
    reinitialise(model, "decoder", seed=7)
    assert torch.equal(torch.get_rng_state(), state), "global random state must be untouched"
    parts = parameter_parts(model)
    for name, parameter in model.named_parameters():
        if parts[name] == "decoder" and parameter.ndim > 1:
            assert not torch.equal(parameter, before[name]), name
        elif parts[name] != "decoder":
            assert torch.equal(parameter, before[name]), name
    again = small_unet()
    reinitialise(again, "decoder", seed=7)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())
    with pytest.raises(InvalidInputError, match="unknown part"):
        reinitialise(model, "encoder", seed=0)


def test_trainable_summary_counts() -> None:
    model = freeze(small_unet(), "bottleneck")
    rows = trainable_summary(model)
    frozen = sum(r["count"] for r in rows if not r["trainable"])
    assert frozen == sum(p.numel() for p in model.encoder[4].parameters())


# --- flattening ------------------------------------------------------------------------------

def depth_constant(x2d: torch.Tensor, depth: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W, D) constant along the last (Models Genesis depth) axis."""
    return x2d[..., None].expand(*x2d.shape, depth).contiguous()


def test_summed_kernel_reproduces_3d_conv_on_depth_constant_input() -> None:
    torch.manual_seed(0)
    conv3d = nn.Conv3d(3, 4, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 10, 12)
    out3d = conv3d(depth_constant(x, 7))
    out2d = F.conv2d(x, flatten_kernel(conv3d.weight, "sum"), conv3d.bias, padding=1)
    for d in range(1, 6):  # slices 0 and 6 lose a tap to the zero padding
        torch.testing.assert_close(out3d[..., d], out2d, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out3d[..., 0], out2d, atol=1e-3)


def test_depth_axis_first_for_zyx_networks() -> None:
    torch.manual_seed(1)
    conv3d = nn.Conv3d(1, 2, kernel_size=3, padding=1)
    x = torch.randn(1, 1, 8, 8)
    volume = x[:, :, None].expand(1, 1, 5, 8, 8)
    out2d = F.conv2d(x, flatten_kernel(conv3d.weight, "sum", depth_axis=-3), conv3d.bias, padding=1)
    torch.testing.assert_close(conv3d(volume)[:, :, 2], out2d, rtol=1e-5, atol=1e-5)


def test_centre_kernel_reproduces_3d_conv_on_a_single_slice() -> None:
    torch.manual_seed(2)
    conv3d = nn.Conv3d(2, 3, kernel_size=3, padding=1)
    x = torch.randn(1, 2, 8, 8)
    volume = torch.zeros(1, 2, 8, 8, 5)
    volume[..., 2] = x  # a lone slice: the 3D net's neighbours are empty
    out2d = F.conv2d(x, flatten_kernel(conv3d.weight, "centre"), conv3d.bias, padding=1)
    torch.testing.assert_close(conv3d(volume)[..., 2], out2d, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInputError, match="centre"):
        flatten_kernel(torch.ones(1, 1, 2, 2, 2), "centre")


def test_summed_block_matches_3d_block_on_depth_constant_input() -> None:
    torch.manual_seed(3)
    block3d = nn.Sequential(ConvUnit(2, 4, 3), ConvUnit(4, 6, 3))
    block2d = nn.Sequential(ConvUnit(2, 4, 2), ConvUnit(4, 6, 2))
    with torch.no_grad():
        for module in block3d.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    flatten_3d_to_2d(block3d, block2d, "sum")
    block3d.eval(), block2d.eval()
    x = torch.randn(2, 2, 8, 8)
    out3d = block3d(depth_constant(x, 8))
    out2d = block2d(x)
    for d in range(2, 6):  # two stacked 3x3x3 convolutions: slices 2 away from the ends are exact
        torch.testing.assert_close(out3d[..., d], out2d, rtol=1e-4, atol=1e-5)


def test_transposed_conv_mean_gives_the_depth_average() -> None:
    torch.manual_seed(4)
    up3d = nn.ConvTranspose3d(3, 3, kernel_size=2, stride=2)
    up2d = nn.ConvTranspose2d(3, 3, kernel_size=2, stride=2)
    flatten_3d_to_2d(nn.Sequential(up3d), nn.Sequential(up2d))
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(up3d(depth_constant(x, 3)).mean(dim=-1), up2d(x), rtol=1e-5, atol=1e-5)


def test_flatten_whole_genesis_network_by_name() -> None:
    torch.manual_seed(5)
    net3d, net2d = UNet3d(base_width=2), GenesisUNet2d(num_classes=2, base_width=2, attention=True)
    gate_before = snapshot(net2d.up_tr64.gate)
    flatten_3d_to_2d(net3d, net2d, "centre", exclude=("out_tr",))
    torch.testing.assert_close(net2d.down_tr128.ops[1].conv1.weight,
                               net3d.down_tr128.ops[1].conv1.weight[..., 1])
    torch.testing.assert_close(net2d.up_tr128.up_conv.weight, net3d.up_tr128.up_conv.weight.mean(-1))
    assert torch.equal(net2d.down_tr64.ops[0].bn1.running_var, net3d.down_tr64.ops[0].bn1.running_var)
    assert all(torch.equal(v, gate_before[k]) for k, v in net2d.up_tr64.gate.state_dict().items())
    with pytest.raises(InvalidInputError, match="out_tr.final_conv"):
        flatten_3d_to_2d(net3d, GenesisUNet2d(num_classes=2, base_width=2))  # 1 vs 2 classes
    with pytest.raises(InvalidInputError, match="base_width"):
        flatten_3d_to_2d(net3d, GenesisUNet2d(base_width=4), exclude=("out_tr",))
    with pytest.raises(InvalidInputError, match="needs a Conv2d"):
        flatten_3d_to_2d(net3d, small_unet())


# --- recipes ---------------------------------------------------------------------------------

def trained_unet(seed: int) -> UNet2d:
    """A small U-Net after one training step: weights and BatchNorm statistics no longer their defaults."""
    model = small_unet(seed)
    one_adam_step(model)
    return model


def entries(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def assert_same_state(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_recipe_decoder_freezes_first_half_and_resets_head() -> None:
    """The head is re-drawn from ``seed`` alone: two models that start different end with the same
    head, the one a fresh 1x1 convolution draws from that seed; every other layer is the pretrained one."""
    pretrained = trained_unet(seed=1)
    source = snapshot(pretrained)
    first, second = small_unet(seed=2), small_unet(seed=3)
    rng_before = torch.get_rng_state()
    prepare_finetune(first, "decoder", pretrained=pretrained, seed=7)
    prepare_finetune(second, "decoder", pretrained=source, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the re-draw leaves the global random state alone
    torch.manual_seed(7)
    fresh_head = nn.Conv2d(2, 2, kernel_size=1)  # draws weight then bias, as head.reset_parameters() does
    parts = parameter_parts(first)
    for model in (first, second):
        for name, parameter in model.named_parameters():
            assert parameter.requires_grad == (parts[name] != "encoder_first_half"), name
        state = snapshot(model)
        assert_same_state(entries(state, ("head.",)), {f"head.{k}": v for k, v in fresh_head.state_dict().items()})
        assert not torch.equal(state["head.weight"], source["head.weight"])
        body = {k: v for k, v in state.items() if not k.startswith("head.")}
        assert_same_state(body, {k: v for k, v in source.items() if not k.startswith("head.")})
    other_seed = prepare_finetune(small_unet(seed=2), "decoder", pretrained=source, seed=8)
    assert not torch.equal(other_seed.head.weight, first.head.weight)


def test_recipe_all_trains_everything_and_resets_last_block() -> None:
    """The last decoder block and the head are re-drawn from ``seed`` alone (their BatchNorm statistics
    back to their defaults), exactly as freshly built ones; the rest keeps the pretrained weights."""
    pretrained = trained_unet(seed=1)
    source = snapshot(pretrained)
    reset = ("decoder.3.", "head.")
    assert any(not torch.equal(v, source[k]) for k, v in entries(small_unet(seed=1).state_dict(), reset).items()
               if "running" in k)  # the step moved the statistics the reset must restore
    first = prepare_finetune(small_unet(seed=2), "all", pretrained=source, seed=7)
    second = prepare_finetune(small_unet(seed=3), "all", pretrained=pretrained, seed=7)
    torch.manual_seed(7)
    fresh_block, fresh_head = UpBlock(4, 2, 2), nn.Conv2d(2, 2, kernel_size=1)  # built in reset order
    expected = {**{f"decoder.3.{k}": v for k, v in fresh_block.state_dict().items()},
                **{f"head.{k}": v for k, v in fresh_head.state_dict().items()}}
    for model in (first, second):
        assert all(p.requires_grad for p in model.parameters())
        state = snapshot(model)
        assert_same_state(entries(state, reset), expected)
        assert not torch.equal(state["decoder.3.conv.0.weight"], source["decoder.3.conv.0.weight"])
        assert_same_state({k: v for k, v in state.items() if not k.startswith(reset)},
                          {k: v for k, v in source.items() if not k.startswith(reset)})


def test_recipe_genesis_flattens_the_body_and_resets_the_output_layer() -> None:
    """Everything but the restoration output layer comes from the 3D network, whatever the 2D model
    held before; the output layer is re-drawn from ``seed`` alone."""
    torch.manual_seed(0)
    net3d = UNet3d(base_width=2)
    models = []
    for init in (2, 3):
        torch.manual_seed(init)
        models.append(prepare_finetune(GenesisUNet2d(base_width=2), "genesis", pretrained=net3d, seed=7))
    torch.manual_seed(4)
    flattened = snapshot(flatten_3d_to_2d(net3d, GenesisUNet2d(base_width=2), "sum", exclude=("out_tr",)))
    torch.manual_seed(7)
    fresh_head = nn.Conv2d(4, 2, kernel_size=1)
    for model in models:
        assert all(p.requires_grad for p in model.parameters())
        state = snapshot(model)
        assert_same_state(entries(state, ("out_tr.",)),
                          {f"out_tr.final_conv.{k}": v for k, v in fresh_head.state_dict().items()})
        assert_same_state({k: v for k, v in state.items() if not k.startswith("out_tr.")},
                          {k: v for k, v in flattened.items() if not k.startswith("out_tr.")})


def test_recipe_genesis_and_scratch_and_errors() -> None:
    torch.manual_seed(0)
    net3d = UNet3d(base_width=2)
    model = prepare_finetune(GenesisUNet2d(base_width=2), "genesis", pretrained=net3d, seed=0)
    torch.testing.assert_close(model.down_tr64.ops[0].conv1.weight, net3d.down_tr64.ops[0].conv1.weight.sum(-1))
    assert model.out_tr.final_conv.weight.shape == (2, 4, 1, 1)
    scratch = small_unet(seed=3)
    before = snapshot(scratch)
    freeze(scratch, "decoder")
    prepare_finetune(scratch, "scratch")
    assert all(p.requires_grad for p in scratch.parameters())
    assert all(torch.equal(v, before[k]) for k, v in scratch.state_dict().items())
    with pytest.raises(InvalidInputError, match="needs pretrained"):
        prepare_finetune(small_unet(), "all")
    with pytest.raises(InvalidInputError, match="do not fit"):
        prepare_finetune(small_unet(), "all", pretrained=UNet2d(base_width=4, depth=4))
    with pytest.raises(InvalidInputError, match="GenesisUNet2d"):
        prepare_finetune(small_unet(), "genesis", pretrained=net3d)
    with pytest.raises(InvalidInputError, match="recipe"):
        prepare_finetune(small_unet(), "linear-probe")


def test_layer_status_describes_the_recipes() -> None:
    pretrained = small_unet(seed=1).state_dict()
    decoder = {r["name"]: r["status"] for r in layer_status(prepare_finetune(small_unet(2), "decoder", pretrained=pretrained), pretrained)}
    assert decoder["encoder.0.0.weight"] == "frozen" and decoder["encoder.2.0.weight"] == "fine-tuned"
    assert decoder["head.weight"] == "re-initialised" and decoder["decoder.3.conv.0.weight"] == "fine-tuned"
    everything = {r["name"]: r["status"] for r in layer_status(prepare_finetune(small_unet(2), "all", pretrained=pretrained), pretrained)}
    assert everything["decoder.3.conv.3.weight"] == "re-initialised" and everything["decoder.2.up.weight"] == "fine-tuned"
    assert set(r["status"] for r in layer_status(small_unet())) == {"new"}


def test_genesis_corruption_shuffles_within_blocks_and_inpaints() -> None:
    cube = torch.rand(2, 1, 16, 16, 8, generator=torch.Generator().manual_seed(0))
    shuffled = genesis_corruption(cube, torch.Generator().manual_seed(1), block=4, boxes=0)
    assert not torch.equal(shuffled, cube)
    blocks = lambda t: t.unfold(2, 4, 4).unfold(3, 4, 4).unfold(4, 4, 4).reshape(2, 1, -1, 64)  # noqa: E731
    # Local shuffling only permutes voxels inside each 4x4x4 block: per-block sorted values agree.
    assert torch.equal(blocks(shuffled).sort(-1).values, blocks(cube).sort(-1).values)
    painted = genesis_corruption(torch.zeros(1, 1, 16, 16, 8), torch.Generator().manual_seed(2), boxes=2)
    assert 0 < (painted != 0).float().mean() < 0.5


def test_genesis_proxy_pretraining_lowers_restoration_loss() -> None:
    torch.manual_seed(0)
    volume = np.full((16, 32, 32), -800.0, np.float32)
    volume[:, 8:24, 8:24] = 40.0  # a soft-tissue block in air-filled lung
    losses = pretrain_genesis_proxy(UNet3d(base_width=2), [volume], cube=(16, 16, 8), steps=12, batch_size=2,
                                    lr=1e-2, progress=False)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    with pytest.raises(InvalidInputError, match="num_classes=1"):
        pretrain_genesis_proxy(UNet3d(num_classes=2, base_width=2), [volume], progress=False)
    broken = volume.copy()
    broken[0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="volume 1: image holds NaN"):
        pretrain_genesis_proxy(UNet3d(base_width=2), [volume, broken], progress=False)
    with pytest.raises(InvalidInputError, match="volume 0: .*8-bit"):
        pretrain_genesis_proxy(UNet3d(base_width=2), [np.linspace(0, 255, 16 * 32 * 32, dtype=np.float32).reshape(16, 32, 32)],
                               progress=False)


def toy_source_cases(count: int) -> list[SimpleNamespace]:
    """Cases with a bright square lesion on noise, as ``case_arrays`` reads them."""
    cases = []
    for index in range(count):
        rng = np.random.default_rng(index)
        lesion = np.zeros((3, 16, 16), np.uint8)
        y, x = rng.integers(2, 9, size=2)
        lesion[1:, y:y + 6, x:x + 6] = 1
        image = (rng.normal(0, 0.3, lesion.shape) + 2.0 * lesion).astype(np.float32)
        cases.append(SimpleNamespace(case_id=f"source{index}", image=image, lesion_mask=lesion))
    return cases


def test_interrupted_augmented_pretraining_resumes_bit_for_bit(tmp_path, interrupt_after_epoch) -> None:
    """Pretraining killed after epoch 2 of 4 and run again (a new model object, other global
    random state) ends with the uninterrupted run's weights, augmentation on."""
    cases = toy_source_cases(5)
    train = TrainConfig(epochs=4, patience=10, max_steps_per_epoch=2, amp="off", progress=False, device="cpu", lr=1e-2)
    settings = SliceTraining(train=train, batch_size=2, augment=True, empty_fraction=0.5)
    straight = small_unet()
    pretrain(straight, cases, settings, out_dir=tmp_path / "straight", resume=True)

    interrupted = interrupt_after_epoch(2)
    with pytest.raises(interrupted):
        pretrain(small_unet(), cases, settings, out_dir=tmp_path / "resumed", resume=True)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 2
    torch.manual_seed(99)
    np.random.seed(99)
    resumed = small_unet()
    trainer = pretrain(resumed, cases, settings, out_dir=tmp_path / "resumed", resume=True)

    assert [row["epoch"] for row in trainer.history] == [1, 2, 3, 4]
    for name in ("last.pt", "best.pt"):
        a = load_checkpoint(tmp_path / "straight" / name)["model"]
        b = load_checkpoint(tmp_path / "resumed" / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


def test_pretraining_continues_only_its_own_run(tmp_path) -> None:
    """A finished pretraining is reloaded, not redone; an edited setting starts afresh (the
    result equals a run in an empty folder), never continuing the other run's last.pt."""
    cases = toy_source_cases(5)
    train = TrainConfig(epochs=2, patience=10, max_steps_per_epoch=2, amp="off", progress=False, device="cpu", lr=1e-2)
    settings = SliceTraining(train=train, batch_size=2, augment=False)
    first = pretrain(small_unet(), cases, settings, out_dir=tmp_path / "run", resume=True)
    again = pretrain(small_unet(), cases, settings, out_dir=tmp_path / "run", resume=True)
    assert again.history == first.history  # reloaded: the same rows, times included

    edited = SliceTraining(train=TrainConfig(**{**train.__dict__, "lr": 5e-3}), batch_size=2, augment=False)
    changed = small_unet()
    pretrain(changed, cases, edited, out_dir=tmp_path / "run", resume=True)
    reference = small_unet()
    pretrain(reference, cases, edited, out_dir=tmp_path / "fresh", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(changed.state_dict().values(), reference.state_dict().values()))
    other_start = small_unet(seed=1)  # other starting weights: another run too
    fingerprints = {load_checkpoint(tmp_path / "run" / "last.pt")["metadata"]["fingerprint"]}
    pretrain(other_start, cases, edited, out_dir=tmp_path / "run", resume=True)
    fingerprints.add(load_checkpoint(tmp_path / "run" / "last.pt")["metadata"]["fingerprint"])
    assert len(fingerprints) == 2


def test_genesis_proxy_cache_is_keyed_by_settings_data_and_code(tmp_path, monkeypatch) -> None:
    volume = np.full((8, 16, 16), -800.0, np.float32)
    volume[:, 4:12, 4:12] = 40.0
    cache = tmp_path / "genesis_proxy.pt"

    def proxy(steps: int = 3, seed: int = 0) -> tuple[UNet3d, list[float]]:
        torch.manual_seed(0)
        network = UNet3d(base_width=2)
        losses = pretrain_genesis_proxy(network, [volume], cube=(16, 16, 8), steps=steps, batch_size=1, seed=seed,
                                        progress=False, cache=cache)
        return network, losses

    trained, losses = proxy()
    assert len(losses) == 3 and cache.is_file()
    reloaded = load_genesis_checkpoint(cache)  # the published checkpoint's layout
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), reloaded.state_dict().values()))
    steps_run = []
    real_corruption = transfer.genesis_corruption
    monkeypatch.setattr(transfer, "genesis_corruption", lambda *a, **k: steps_run.append(1) or real_corruption(*a, **k))
    cached, cached_losses = proxy()
    assert steps_run == [] and cached_losses == losses
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), cached.state_dict().values()))
    _, other = proxy(steps=2)  # an edited setting: trained again
    assert len(steps_run) == 2 and len(other) == 2
    proxy(steps=2)
    assert len(steps_run) == 2
    real_hash = fingerprint.source_hash
    monkeypatch.setattr(fingerprint, "source_hash",
                        lambda path: "ast:edited" if Path(path).name == "unet3d.py" else real_hash(path))
    proxy(steps=2)  # the code that trains it changed: trained again
    assert len(steps_run) == 4


def test_training_fingerprint_accepts_any_network_and_sees_its_weights() -> None:
    arrays = {case: (np.full((1, 8, 8), i, np.float32), np.zeros((1, 8, 8), np.uint8)) for i, case in enumerate("ab")}
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 2, 1))  # defined outside covidlib: its weights and class still count
    key = transfer.training_fingerprint(network, arrays, ["a"], ["b"], SliceTraining())
    assert key == transfer.training_fingerprint(network, arrays, ["a"], ["b"], SliceTraining(train=TrainConfig(device="cpu")))
    assert key != transfer.training_fingerprint(network, arrays, ["b"], ["a"], SliceTraining())
    with torch.no_grad():
        network[0].bias.add_(1.0)
    assert key != transfer.training_fingerprint(network, arrays, ["a"], ["b"], SliceTraining())
