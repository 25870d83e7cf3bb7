"""Tests for covidlib.restoration: Models Genesis corruptions on 2D slices and restoration pretraining."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fakes import write_semiseg

import covidlib.restoration as restoration
from covidlib.errors import InvalidInputError
from covidlib.models import UNet2d
from covidlib.restoration import (Corruption, RestorationSettings, bezier_curve, corrupt, inpaint, nonlinear_intensity,
                                  outpaint, pretrained_weights, restoration_batch, restoration_loss, restoration_model,
                                  shuffle_local_pixels, train_restoration)
from covidlib.transfer import prepare_finetune

NONE = Corruption(local_shuffle=0.0, nonlinear=0.0, paint=0.0)


def unit_image(seed: int = 0, shape: tuple[int, int] = (32, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    smooth = 0.5 + 0.3 * np.sin(yy / 5.0) * np.cos(xx / 7.0)
    return np.clip(smooth + 0.05 * rng.standard_normal(shape), 0, 1).astype(np.float32)


def slice_stack(n: int = 6, size: int = 16) -> np.ndarray:
    """z-scored slices, as the segmentation networks see them."""
    stack = np.stack([unit_image(seed, (size, size)) for seed in range(n)])
    return ((stack - stack.mean(axis=(1, 2), keepdims=True)) / stack.std(axis=(1, 2), keepdims=True)).astype(np.float32)


def tiny_settings(**changes) -> RestorationSettings:
    values = dict(base_width=4, depth=2, steps=10, batch_size=4, lr=1e-2, amp="off", seed=0, checkpoint_every=5)
    values.update(changes)
    return RestorationSettings(**values)


@pytest.mark.parametrize("transform", [
    lambda image, rng: nonlinear_intensity(image, rng),
    lambda image, rng: shuffle_local_pixels(image, rng, 0.04),
    lambda image, rng: inpaint(image, rng),
    lambda image, rng: outpaint(image, rng),
    lambda image, rng: corrupt(image, rng),
    lambda image, rng: corrupt(image, rng, Corruption(local_shuffle=1, nonlinear=1, paint=1, inpaint=1)),
])
def test_corruptions_keep_shape_and_range_are_seeded_and_change_the_image(transform) -> None:
    image = unit_image()
    first = transform(image, np.random.default_rng(3))
    assert first.shape == image.shape and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, transform(image, np.random.default_rng(3)))
    others = [transform(image, np.random.default_rng(seed)) for seed in range(4, 10)]
    assert any(not np.array_equal(first, other) for other in others)
    assert any(not np.array_equal(image, out) for out in [first, *others])
    np.testing.assert_array_equal(image, unit_image())  # the input is never changed in place


def test_no_corruption_is_the_identity() -> None:
    image = unit_image()
    for seed in range(5):
        np.testing.assert_array_equal(corrupt(image, np.random.default_rng(seed), NONE), image)
    inputs, targets = restoration_batch(slice_stack(), np.array([0, 3]), np.random.default_rng(0), NONE)
    np.testing.assert_allclose(inputs[:, 0].numpy(), slice_stack()[[0, 3]], atol=1e-5)
    assert float(targets.min()) == 0.0 and float(targets.max()) == 1.0


def test_bezier_curve_of_collinear_points_is_the_diagonal() -> None:
    x, y = bezier_curve(np.array([[0, 0], [0.2, 0.2], [0.7, 0.7], [1, 1]]), samples=11)
    np.testing.assert_allclose(x, y)
    assert (x[0], x[-1]) == (0.0, 1.0)
    # a quadratic through (0, 0), (0.5, 1), (1, 0) peaks at t = 0.5 at height 0.5
    _, y = bezier_curve(np.array([[0, 0], [0.5, 1.0], [1, 0]]), samples=3)
    np.testing.assert_allclose(y, [0, 0.5, 0])


def test_nonlinear_intensity_is_monotone_one_way_or_the_other() -> None:
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    directions = set()
    for seed in range(12):
        out = nonlinear_intensity(ramp, np.random.default_rng(seed)).reshape(-1)
        steps = np.diff(out)
        assert np.all(steps >= -1e-6) or np.all(steps <= 1e-6)
        directions.add(bool(out[-1] > out[0]))
    assert directions == {True, False}  # both the plain and the inverted curve occur


def test_one_shuffled_window_permutes_its_pixels_only() -> None:
    image = unit_image(shape=(20, 20))
    # density 1/400 on 20 x 20 is exactly one window; seed 0 draws a 2 x 2 window whose four
    # pixels all move (seeds 1, 6 and 8 happen to leave their window unchanged)
    out = shuffle_local_pixels(image, np.random.default_rng(0), density=1 / 400)
    changed = np.argwhere(out != image)
    assert len(changed) > 0
    low, high = changed.min(axis=0), changed.max(axis=0) + 1
    assert np.all(high - low <= 2)  # a window is at most a tenth of each side (2 of 20 pixels)
    box = (slice(low[0], high[0]), slice(low[1], high[1]))
    # the box's pixels are a permutation of its own original values, not values from elsewhere
    np.testing.assert_array_equal(np.sort(out[box], axis=None), np.sort(image[box], axis=None))
    outside = np.ones(image.shape, bool)
    outside[box] = False
    np.testing.assert_array_equal(out[outside], image[outside])


def test_outpainting_keeps_at_least_one_large_box() -> None:
    image = unit_image(shape=(28, 35))
    for seed in range(5):
        out = outpaint(image, np.random.default_rng(seed))
        kept = int(np.sum(out == image))
        assert kept >= int(28 * 3 / 7) * int(35 * 3 / 7)
        assert kept < image.size


def test_bad_inputs_are_named() -> None:
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        corrupt(unit_image() * 3, np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="2D slice"):
        corrupt(np.zeros((2, 16, 16), np.float32), np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="probability"):
        Corruption(paint=1.5)
    with pytest.raises(InvalidInputError, match="steps"):
        RestorationSettings(steps=0)
    with pytest.raises(InvalidInputError, match="stack"):
        train_restoration(restoration_model(tiny_settings()), np.zeros((16, 16), np.float32), tiny_settings())
    with pytest.raises(InvalidInputError, match="one output channel"):
        train_restoration(UNet2d(base_width=4, depth=2), slice_stack(), tiny_settings())


def held_out_loss(model: torch.nn.Module) -> float:
    inputs, targets = restoration_batch(slice_stack(8), np.arange(8), np.random.default_rng(99), Corruption())
    device = next(model.parameters()).device  # train_restoration moves the model to CUDA when present
    with torch.no_grad():
        return float(restoration_loss(model.eval(), inputs.to(device), targets.to(device)))


def test_a_few_steps_lower_the_restoration_loss() -> None:
    settings = tiny_settings(steps=40)
    model = restoration_model(settings)
    before = held_out_loss(model)
    losses = train_restoration(model, slice_stack(), settings, progress=False)
    assert len(losses) == 40
    assert held_out_loss(model) < 0.7 * before


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch) -> None:
    settings = tiny_settings()
    straight = restoration_model(settings)
    straight_losses = train_restoration(straight, slice_stack(), settings, out_dir=tmp_path / "a", progress=False)

    real_save = restoration.save_checkpoint

    def save_then_stop(payload, path):
        real_save(payload, path)
        if len(payload["losses"]) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(restoration, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_restoration(restoration_model(settings), slice_stack(), settings, out_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(restoration, "save_checkpoint", real_save)
    resumed = restoration_model(settings)
    resumed_losses = train_restoration(resumed, slice_stack(), settings, out_dir=tmp_path / "b", progress=False)
    assert resumed_losses == straight_losses
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    # a checkpoint of other settings is not continued: a fresh run of 10 steps
    other = dataclasses.replace(settings, lr=5e-3)
    assert len(train_restoration(restoration_model(other), slice_stack(), other, out_dir=tmp_path / "b",
                                 progress=False)) == 10


def test_pretrained_weights_fit_the_segmentation_network_and_are_cached(tmp_path, monkeypatch) -> None:
    settings = tiny_settings()
    # On the CPU, where the same run repeats bit for bit (a GPU's convolutions need not).
    state, info = pretrained_weights(slice_stack(), settings, tmp_path, device="cpu", progress=False)
    assert not info["cached"] and len(info["losses"]) == settings.steps
    restored = restoration_model(settings)
    train_restoration(restored, slice_stack(), settings, device="cpu", progress=False)  # the same run, not cached
    for name, value in restored.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(state[name], value), name
    assert state["head.weight"].shape[0] == 2

    def must_not_train(*args, **kwargs):
        raise AssertionError("cached weights were trained again")

    monkeypatch.setattr(restoration, "train_restoration", must_not_train)
    again, info_again = pretrained_weights(slice_stack(), settings, tmp_path, device="cpu", progress=False)
    assert info_again["cached"] and info_again["losses"] == info["losses"]
    assert all(torch.equal(again[name], state[name]) for name in state)
    model = prepare_finetune(UNet2d(base_width=4, depth=2), "decoder", pretrained=again, seed=0)
    for name, value in model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, again[name]), name
    with pytest.raises(AssertionError, match="trained again"):  # other slices: another key, trained afresh
        pretrained_weights(slice_stack() + 1, settings, tmp_path, progress=False)


def test_unlabelled_slices_of_a_2d_dataset_are_centred_z_scored_squares(tmp_path) -> None:
    rng = np.random.default_rng(0)
    write_semiseg(tmp_path, {}, unlabelled={f"Data-1_case_{index}": rng.integers(0, 256, shape, dtype=np.uint8)
                                            for index, shape in enumerate([(40, 80), (64, 32)])})
    slices = restoration.unlabelled_slices("covid-semiseg", tmp_path, 5, 16)
    assert slices.shape == (2, 16, 16) and slices.dtype == np.float32
    # the longer side fills the square, the shorter one is padded with 0 (the z-scored mean) on both sides
    assert np.all(slices[0, :4] == 0) and np.all(slices[0, -4:] == 0) and np.all(slices[0, 4:12] != 0)
    assert np.all(slices[1, :, :4] == 0) and np.all(slices[1, :, -4:] == 0)
    inside = slices[0, 4:12]
    assert abs(float(inside.mean())) < 1e-5 and abs(float(inside.std()) - 1) < 1e-4
    with pytest.raises(InvalidInputError, match="size"):
        restoration.unlabelled_slices("covid-semiseg", tmp_path, 5, 4)


def test_restore_gives_maps_in_unit_range_and_keeps_the_mode() -> None:
    settings = tiny_settings()
    model = restoration.restoration_network(settings, restoration_model(settings).state_dict())
    model.train()
    out = restoration.restore(model, slice_stack(3), device="cpu")
    assert out.shape == (3, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert model.training
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(torch.from_numpy(slice_stack(3))[:, None]))[:, 0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
