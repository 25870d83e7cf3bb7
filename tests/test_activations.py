"""Tests for covidlib.activations: hooks, snapshots, layer-wise SVCCA and weight distances."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from covidlib.activations import (
    SnapshotTrainer,
    capture_activations,
    layer_names,
    load_weights,
    svcca_over_checkpoints,
    weight_distance,
)
from covidlib.errors import InvalidInputError
from covidlib.models import UNet2d
from covidlib.svcca import flatten_conv, svcca
from covidlib.train import TrainConfig, load_checkpoint

LAYERS = ["encoder.0", "encoder.1", "encoder.2", "decoder.0", "decoder.1", "head"]


def tiny_unet(seed: int = 0) -> UNet2d:
    torch.manual_seed(seed)
    return UNet2d(in_channels=1, num_classes=2, base_width=4, depth=2)


def probes(n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(1))


def has_hooks(model: torch.nn.Module) -> bool:
    return any(module._forward_hooks for module in model.modules())


def test_layer_names_follow_the_unet_blocks() -> None:
    assert layer_names(tiny_unet()) == LAYERS
    with pytest.raises(InvalidInputError, match="encoder"):
        layer_names(torch.nn.Linear(2, 2))


def test_capture_matches_a_manual_forward_and_cleans_up() -> None:
    model = tiny_unet().train()
    x = probes()
    captured = capture_activations(model, x, LAYERS, device="cpu", batch_size=4)
    assert not has_hooks(model) and model.training  # hooks removed, mode restored
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(captured["head"], model(x))
        torch.testing.assert_close(captured["encoder.0"], model.encoder[0](x))
        bottleneck = model.encode(x)[-1]
    torch.testing.assert_close(captured["encoder.2"], bottleneck)
    assert captured["decoder.0"].shape == (6, 8, 8, 8) and captured["decoder.1"].shape == (6, 4, 16, 16)
    # the batch size must not change what is recorded (evaluation mode: BatchNorm uses running stats)
    one_batch = capture_activations(model, x[:, 0], ["decoder.1"], device="cpu", batch_size=16)
    torch.testing.assert_close(one_batch["decoder.1"], captured["decoder.1"])


def test_capture_pools_large_maps() -> None:
    model = tiny_unet()
    x = probes()
    full = capture_activations(model, x, ["encoder.0", "encoder.2"], device="cpu")
    pooled = capture_activations(model, x, ["encoder.0", "encoder.2"], device="cpu", max_spatial=8)
    torch.testing.assert_close(pooled["encoder.0"], F.avg_pool2d(full["encoder.0"], 2))
    torch.testing.assert_close(pooled["encoder.2"], full["encoder.2"])  # already 4x4


def test_capture_errors_leave_no_hooks() -> None:
    model = tiny_unet()
    with pytest.raises(InvalidInputError, match="not modules"):
        capture_activations(model, probes(), ["encoder.9"], device="cpu")
    with pytest.raises(InvalidInputError, match="channels"):
        capture_activations(model, torch.randn(2, 3, 16, 16), ["head"], device="cpu")
    assert not has_hooks(model)
    with pytest.raises(InvalidInputError, match="floating-point"):
        capture_activations(model, torch.ones(2, 1, 16, 16, dtype=torch.int64), ["head"], device="cpu")
    shared = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(InvalidInputError, match="exactly once"):
        capture_activations(torch.nn.Sequential(shared, shared), probes(), ["0"], device="cpu")


def scaled_head(model: UNet2d, factor: float) -> UNet2d:
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in scaled.head.parameters():
            parameter.mul_(factor)
    return scaled


def test_weight_distance_known_values() -> None:
    model = tiny_unet()
    assert set(weight_distance(model, copy.deepcopy(model)).values()) == {0.0}
    doubled = weight_distance(scaled_head(model, 2.0), model)
    assert doubled["head"] == pytest.approx(1.0, abs=1e-12)  # ||2w - w|| / ||w||
    assert weight_distance(scaled_head(model, -1.0), model)["head"] == pytest.approx(2.0, abs=1e-12)
    assert all(doubled[name] == 0.0 for name in LAYERS[:-1])
    assert weight_distance(tiny_unet(seed=1), model)["encoder.0"] > 0.5  # two random inits are far apart
    with pytest.raises(InvalidInputError, match="missing"):
        weight_distance(model, model, ["nope"])
    with pytest.raises(InvalidInputError, match="different parameters"):
        weight_distance(UNet2d(base_width=8, depth=2), model, ["head"])


def test_svcca_over_checkpoints_scores_and_invariance(tmp_path) -> None:
    model = tiny_unet()
    path = tmp_path / "ref.pt"
    torch.save({"model": model.state_dict()}, path)
    checkpoints = {
        "random": tiny_unet(seed=5).state_dict(),
        # a linear rescaling of the head changes its weights but not what SVCCA measures
        "scaled-head": scaled_head(model, 3.0).state_dict(),
        "final": path,
    }
    x = probes(n=12)
    result = svcca_over_checkpoints(tiny_unet, checkpoints, x, device="cpu", max_positions=600, progress=False)
    assert list(result) == LAYERS
    assert all(list(scores) == ["random", "scaled-head", "final"] for scores in result.values())
    for name in LAYERS:
        assert result[name]["final"] == pytest.approx(1.0, abs=1e-9)
        assert result[name]["scaled-head"] == pytest.approx(1.0, abs=1e-9)
        assert result[name]["random"] < 0.99
    # the plumbing pairs the same rows of both checkpoints: recompute one layer by hand
    captured_random = capture_activations(tiny_unet(seed=5), x, ["decoder.0"], device="cpu")["decoder.0"]
    captured_final = capture_activations(model, x, ["decoder.0"], device="cpu")["decoder.0"]
    expected = svcca(flatten_conv(captured_random, max_positions=600), flatten_conv(captured_final, max_positions=600))
    assert result["decoder.0"]["random"] == pytest.approx(expected.mean, abs=1e-12)
    with pytest.raises(InvalidInputError, match="reference"):
        svcca_over_checkpoints(tiny_unet, checkpoints, x, reference="best", device="cpu", progress=False)


def tiny_batches(n_batches: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        images = torch.randn(2, 1, 16, 16, generator=generator)
        batches.append({"image": images, "mask": (images[:, 0] > 0.5).long()})
    return batches


def test_snapshot_trainer_keeps_weights_on_schedule(tmp_path) -> None:
    model = tiny_unet()
    initial = copy.deepcopy(model.state_dict())
    config = TrainConfig(epochs=2, amp="off", device="cpu", progress=False, seed=0)
    trainer = SnapshotTrainer(model, config, interval=2, out_dir=tmp_path / "run", snapshot_dir=tmp_path / "snaps")
    trainer.fit(tiny_batches(3, seed=0), tiny_batches(1, seed=1))
    assert sorted(trainer.snapshots) == [0, 2, 4, 6]
    first = load_weights(trainer.snapshots[0])
    assert all(torch.equal(first[key], initial[key]) for key in initial)
    # the last snapshot is the state after the last step, which last.pt also holds
    last = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    final = load_weights(trainer.snapshots[6])
    assert all(torch.equal(final[key], last[key]) for key in last)
    assert not torch.equal(load_weights(trainer.snapshots[2])["head.weight"], first["head.weight"])
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == [f"step_{s:07d}.pt" for s in (0, 2, 4, 6)]
    with pytest.raises(InvalidInputError, match="interval"):
        SnapshotTrainer(tiny_unet(), config, interval=0)


class CountingSnapshotTrainer(SnapshotTrainer):
    """Counts the optimizer steps this trainer itself ran (not those of an earlier run)."""

    steps_run = 0

    def train_step(self, batch):
        self.steps_run += 1
        return super().train_step(batch)


def test_snapshot_trainer_resume_continues_the_schedule(tmp_path) -> None:
    train, val = tiny_batches(3, seed=0), tiny_batches(1, seed=1)
    uninterrupted = SnapshotTrainer(tiny_unet(), TrainConfig(epochs=2, amp="off", device="cpu", progress=False, seed=0),
                                    interval=2, out_dir=tmp_path / "full", snapshot_dir=tmp_path / "full_snaps")
    uninterrupted.fit(train, val)

    config = TrainConfig(epochs=1, amp="off", device="cpu", progress=False, seed=0)
    SnapshotTrainer(tiny_unet(), config, interval=2, out_dir=tmp_path / "run", snapshot_dir=tmp_path / "snaps").fit(
        train, val)
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in (tmp_path / "snaps").iterdir()}
    assert sorted(before) == ["step_0000000.pt", "step_0000002.pt"]
    config.epochs = 2
    # a different initialisation: a restart instead of a resume would show in every snapshot
    resumed = CountingSnapshotTrainer(tiny_unet(seed=7), config, interval=2, out_dir=tmp_path / "run",
                                      snapshot_dir=tmp_path / "snaps")
    resumed.fit(train, val, resume=True)
    assert resumed.steps_run == 3  # only the second epoch's three batches were trained
    assert resumed.step == 6 and sorted(resumed.snapshots) == [0, 2, 4, 6]
    for name, (content, mtime) in before.items():  # the interrupted run's snapshots are kept, not rewritten
        path = tmp_path / "snaps" / name
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime
    for step in (0, 2, 4, 6):  # resuming gives the uninterrupted run's weights, bit for bit
        expected, got = load_weights(uninterrupted.snapshots[step]), load_weights(resumed.snapshots[step])
        assert all(torch.equal(got[key], expected[key]) for key in expected), step
