"""Tests for covidlib.train: the recipe, early stopping, best model, exact resume, checks."""

from __future__ import annotations

import math
import pickle
import random
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from covidlib.errors import InvalidInputError
from covidlib.models import UNet2d
from covidlib.train import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    TrainConfig,
    Trainer,
    capture_rng_state,
    evaluate,
    load_checkpoint,
    mixup_transform,
    predict_proba,
    resolve_amp,
    restore_rng_state,
    save_checkpoint,
    validate_batch,
)


class SquaresDataset(Dataset):
    """Noisy images with one bright square each; the mask is the square (16x16 slices)."""

    def __init__(self, count: int, seed: int, size: int = 16) -> None:
        rng = np.random.default_rng(seed)
        self.images = np.zeros((count, 1, size, size), dtype=np.float32)
        self.masks = np.zeros((count, size, size), dtype=np.int64)
        for i in range(count):
            side = int(rng.integers(3, 7))
            y, x = rng.integers(0, size - side, size=2)
            self.masks[i, y:y + side, x:x + side] = 1
            self.images[i, 0] = 2.0 * self.masks[i] + rng.normal(0, 0.5, (size, size))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"image": torch.from_numpy(self.images[index]), "mask": torch.from_numpy(self.masks[index]),
                "case_id": f"case{index}", "slice_index": 0}


def loaders(seed: int = 0, train_count: int = 16, val_count: int = 8) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(SquaresDataset(train_count, seed), batch_size=4, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(SquaresDataset(val_count, seed + 100), batch_size=4)
    return train, val


def tiny_model(seed: int = 0) -> UNet2d:
    torch.manual_seed(seed)
    return UNet2d(in_channels=1, num_classes=2, base_width=4, depth=2)


def quick_config(**overrides: object) -> TrainConfig:
    settings = dict(epochs=4, lr=1e-2, step_size=2, gamma=0.5, patience=10, loss="ce+dice", amp="off",
                    progress=False, device="cpu", seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def assert_same_state(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def without_times(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_defaults_are_the_reports_recipe() -> None:
    config = TrainConfig()
    assert (config.lr, config.step_size, config.gamma, config.epochs, config.patience) == (2e-4, 25, 0.8, 500, 30)
    trainer = Trainer(tiny_model(), TrainConfig(device="cpu", progress=False))
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    assert isinstance(trainer.scheduler, torch.optim.lr_scheduler.StepLR)


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", -1.0), ("gamma", 1.5), ("patience", 0),
                                          ("amp", "fp8"), ("max_steps_per_epoch", 0), ("seed", -1), ("ema_decay", 1.0),
                                          ("ema_decay", -0.1)])
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError, match=field if field != "amp" else "amp"):
        TrainConfig(**{field: value})


def test_unknown_loss_name_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="loss"):
        Trainer(tiny_model(), quick_config(loss="focal"))


def test_learning_rate_follows_step_schedule() -> None:
    train, val = loaders()
    history = Trainer(tiny_model(), quick_config(epochs=5, lr=1e-3)).fit(train, val)
    assert [row["lr"] for row in history] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_training_learns_the_squares() -> None:
    train, val = loaders()
    trainer = Trainer(tiny_model(), quick_config(epochs=12, step_size=25))
    history = trainer.fit(train, val)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert trainer.best_metric > 0.8
    assert evaluate(trainer.model, val, "cpu")["summary"]["dice"]["mean"] == pytest.approx(trainer.best_metric)


def test_early_stopping_after_patience_epochs_without_improvement() -> None:
    train, val = loaders()
    # A learning rate this small cannot change the thresholded prediction: epoch 1 stays best.
    trainer = Trainer(tiny_model(), quick_config(epochs=20, lr=1e-12, patience=3))
    history = trainer.fit(train, val)
    assert trainer.stopped_early
    assert trainer.best_epoch == 1
    assert len(history) == 1 + 3
    assert [row["best"] for row in history] == [True, False, False, False]


def test_max_steps_per_epoch_limits_batches() -> None:
    train, val = loaders()
    trainer = Trainer(tiny_model(), quick_config(epochs=1, max_steps_per_epoch=2))
    calls = []
    original = trainer.train_step
    trainer.train_step = lambda batch: calls.append(1) or original(batch)  # type: ignore[method-assign]
    trainer.fit(train, val)
    assert len(calls) == 2


def test_best_checkpoint_holds_the_best_epochs_weights(tmp_path: Path) -> None:
    train, val = loaders()
    trainer = Trainer(tiny_model(), quick_config(epochs=6), out_dir=tmp_path, metadata={"model": "unet"})
    history = trainer.fit(train, val)
    best = load_checkpoint(tmp_path / BEST_CHECKPOINT)
    assert best["epoch"] == trainer.best_epoch
    assert best["val_dice"] == pytest.approx(max(row["val_dice"] for row in history))
    assert best["metadata"] == {"model": "unet"}
    # After fit the model holds the best weights, and they reproduce the recorded Dice.
    assert_same_state(trainer.model.state_dict(), best["model"])
    restored = tiny_model(seed=5)
    restored.load_state_dict(best["model"])
    assert evaluate(restored, val, "cpu")["summary"]["dice"]["mean"] == pytest.approx(best["val_dice"])
    # Checkpoints are plain tensors and types: torch's safe loader accepts them.
    torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert not list(tmp_path.glob(".*.tmp"))


class Killed(Exception):
    """Stands in for a process killed mid-epoch."""


class KilledTrainer(Trainer):
    def __init__(self, *args: object, kill_at_step: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.steps = 0
        self.kill_at_step = kill_at_step

    def train_step(self, batch: object) -> float:
        self.steps += 1
        if self.steps == self.kill_at_step:
            raise Killed
        return super().train_step(batch)


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path: Path, amp: str) -> None:
    config = quick_config(epochs=5, amp=amp)
    train, val = loaders()
    straight = Trainer(tiny_model(), config, out_dir=tmp_path / "straight")
    straight_history = straight.fit(train, val)

    train, val = loaders()
    # 4 batches an epoch: step 11 is in the middle of epoch 3, after last.pt of epoch 2.
    killed = KilledTrainer(tiny_model(), config, out_dir=tmp_path / "killed", kill_at_step=11)
    with pytest.raises(Killed):
        killed.fit(train, val)
    assert load_checkpoint(tmp_path / "killed" / LAST_CHECKPOINT)["epoch"] == 2
    # Everything a new process would have: a differently initialised model, fresh loaders and
    # disturbed global random states.
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    train, val = loaders()
    resumed = Trainer(tiny_model(seed=9), config, out_dir=tmp_path / "killed")
    resumed_history = resumed.fit(train, val, resume=True)

    assert without_times(resumed_history) == without_times(straight_history)
    assert_same_state(resumed.model.state_dict(), straight.model.state_dict())
    assert_same_state(load_checkpoint(tmp_path / "killed" / LAST_CHECKPOINT)["model"],
                      load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)["model"])


def test_resume_without_checkpoint_starts_fresh_and_needs_out_dir(tmp_path: Path) -> None:
    train, val = loaders()
    fresh = Trainer(tiny_model(), quick_config(epochs=2), out_dir=tmp_path / "a").fit(train, val)
    train, val = loaders()
    resumed = Trainer(tiny_model(), quick_config(epochs=2), out_dir=tmp_path / "b").fit(train, val, resume=True)
    assert without_times(resumed) == without_times(fresh)
    with pytest.raises(InvalidInputError, match="out_dir"):
        Trainer(tiny_model(), quick_config()).fit(train, val, resume=True)


def test_resume_continues_only_a_checkpoint_with_the_same_fingerprint(tmp_path: Path) -> None:
    train, val = loaders()
    Trainer(tiny_model(), quick_config(epochs=2), out_dir=tmp_path, metadata={"fingerprint": "a"}).fit(train, val)
    train, val = loaders()
    other = Trainer(tiny_model(seed=3), quick_config(epochs=3), out_dir=tmp_path, metadata={"fingerprint": "b"})
    history = other.fit(train, val, resume=True)
    train, val = loaders()
    fresh = Trainer(tiny_model(seed=3), quick_config(epochs=3), out_dir=tmp_path / "fresh", metadata={"fingerprint": "b"})
    assert without_times(history) == without_times(fresh.fit(train, val))  # a fresh start, not epoch 3 of run "a"
    assert load_checkpoint(tmp_path / BEST_CHECKPOINT)["metadata"] == {"fingerprint": "b"}
    train, val = loaders()
    same = Trainer(tiny_model(seed=5), quick_config(epochs=3), out_dir=tmp_path, metadata={"fingerprint": "b"})
    assert without_times(same.fit(train, val, resume=True)) == without_times(history)  # finished: reloaded
    assert_same_state(same.model.state_dict(), other.model.state_dict())


class CountingTrainer(Trainer):
    """A subclass in the way mean teacher uses the hooks: extra state that must survive resume."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.step_count = torch.zeros((), dtype=torch.int64)

    def after_step(self) -> None:
        self.step_count += 1

    def extra_state(self) -> dict[str, object]:
        return {"step_count": self.step_count.clone()}

    def load_extra_state(self, state: dict[str, object]) -> None:
        self.step_count = state["step_count"].clone()


def test_subclass_hooks_and_extra_state_survive_resume(tmp_path: Path) -> None:
    train, val = loaders()
    first = CountingTrainer(tiny_model(), quick_config(epochs=2), out_dir=tmp_path)
    first.fit(train, val)
    assert int(first.step_count) == 2 * 4
    train, val = loaders()
    second = CountingTrainer(tiny_model(), quick_config(epochs=3), out_dir=tmp_path)
    second.fit(train, val, resume=True)
    assert int(second.step_count) == 3 * 4


def test_batch_transform_receives_the_trainers_seeded_generator() -> None:
    train, val = loaders()
    seen = []

    def soften(images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(rng.random())
        soft = torch.nn.functional.one_hot(targets, 2).movedim(-1, 1).float()
        return images, soft

    trainer = Trainer(tiny_model(), quick_config(epochs=1, seed=7), batch_transform=soften)
    trainer.fit(train, val)
    assert seen == list(np.random.default_rng(7).random(4))


def test_mixup_training_resumes_exactly(tmp_path: Path) -> None:
    config = quick_config(epochs=3)
    train, val = loaders()
    straight = Trainer(tiny_model(), config, batch_transform=mixup_transform(0.4))
    straight.fit(train, val)
    train, val = loaders()
    Trainer(tiny_model(), quick_config(epochs=2), out_dir=tmp_path, batch_transform=mixup_transform(0.4)).fit(train, val)
    train, val = loaders()
    resumed = Trainer(tiny_model(), config, out_dir=tmp_path, batch_transform=mixup_transform(0.4))
    resumed.fit(train, val, resume=True)
    assert_same_state(resumed.model.state_dict(), straight.model.state_dict())


def test_validate_batch_names_the_problem() -> None:
    images = torch.zeros(2, 1, 8, 8)
    validate_batch(images, torch.zeros(2, 8, 8, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="does not match"):
        validate_batch(images, torch.zeros(2, 8, 7, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="0/1"):
        validate_batch(images, torch.full((2, 8, 8), 255, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="NaN"):
        validate_batch(images.clone().fill_(float("nan")), torch.zeros(2, 8, 8, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="summing to 1"):
        validate_batch(images, torch.full((2, 2, 8, 8), 0.7))
    with pytest.raises(InvalidInputError, match="integers"):
        validate_batch(images, torch.zeros(2, 8, 8))


def test_nan_in_a_training_batch_raises_before_the_step() -> None:
    train, val = loaders()
    trainer = Trainer(tiny_model(), quick_config(epochs=1))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    images = torch.zeros(2, 1, 16, 16)
    images[0, 0, 3, 3] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        trainer.train_step({"image": images, "mask": torch.zeros(2, 16, 16, dtype=torch.int64)})
    with pytest.raises(InvalidInputError, match="0/1"):
        trainer.train_step({"image": torch.zeros(2, 1, 16, 16), "mask": torch.full((2, 16, 16), 255)})
    assert_same_state(trainer.model.state_dict(), before)


def test_evaluate_groups_slices_into_cases_and_matches_hand_counts() -> None:
    class Oracle(nn.Module):
        """Predicts the first column of every image as foreground."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            foreground = torch.zeros_like(x[:, 0])
            foreground[..., 0] = 1.0
            return torch.stack([1 - foreground, foreground], dim=1) * 10

    masks = torch.zeros(3, 4, 4, dtype=torch.int64)
    masks[0, :, 0] = 1          # case a, slice 0: the 4 predicted pixels
    masks[1, :2, 0:2] = 1       # case a, slice 1: 4 pixels, 2 predicted of 4 predicted
    # case b: an empty mask, 4 false positives -> Dice 0
    batch = {"image": torch.zeros(3, 1, 4, 4), "mask": masks, "case_id": ["a", "a", "b"], "slice_index": torch.tensor([1, 0, 0])}
    result = evaluate(Oracle(), [batch], "cpu")
    # Case a (2 slices): prediction 8 pixels, truth 8, overlap 4 + 2 = 6 -> Dice 12/16.
    assert result["per_case"]["a"]["dice"] == pytest.approx(12 / 16)
    assert result["per_case"]["a"]["sensitivity"] == pytest.approx(6 / 8)
    assert result["per_case"]["b"]["dice"] == pytest.approx(0.0)
    assert result["summary"]["dice"]["n"] == 2
    assert result["summary"]["dice"]["mean"] == pytest.approx(0.375)
    assert result["summary"]["dice"]["sd"] == pytest.approx(np.std([0.75, 0.0], ddof=1))


def test_evaluate_segments_at_the_threshold_and_with_spacing_adds_distances() -> None:
    class Graded(nn.Module):
        """Foreground probability 0.9 in the first column, 0.6 in the second, 0.1 elsewhere."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            probability = torch.full_like(x[:, 0], 0.1)
            probability[..., 0], probability[..., 1] = 0.9, 0.6
            return torch.stack([torch.zeros_like(probability), torch.logit(probability)], dim=1)

    masks = torch.zeros(1, 4, 4, dtype=torch.int64)
    masks[0, :, 0] = 1
    batch = {"image": torch.zeros(1, 1, 4, 4), "mask": masks, "case_id": ["c"], "slice_index": torch.tensor([0])}
    # at 0.5 both columns: 8 predicted, 4 true, 4 overlap -> Dice 8/12; at 0.7 the first column only
    assert evaluate(Graded(), [batch], "cpu")["per_case"]["c"]["dice"] == pytest.approx(8 / 12)
    exact = evaluate(Graded(), [batch], "cpu", threshold=0.7, spacing=(1.0, 1.0, 1.0))["per_case"]["c"]
    assert exact["dice"] == pytest.approx(1.0)
    assert exact["hd95"] == pytest.approx(0.0) and exact["nsd"] == pytest.approx(1.0)
    shifted = evaluate(Graded(), [batch], "cpu", threshold=0.5, spacing=(1.0, 1.0, 2.0))["per_case"]["c"]
    assert shifted["hd95"] == pytest.approx(2.0)  # the second column lies one pixel (2 mm) off the truth


def test_predict_proba_is_the_softmax_foreground_and_batch_independent() -> None:
    model = tiny_model().eval()
    images = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        expected = torch.softmax(model(images), dim=1)[:, 1].numpy()
    one = predict_proba(model, images, "cpu", batch_size=1)
    assert one.shape == (5, 16, 16) and one.dtype == np.float32
    np.testing.assert_allclose(one, expected, atol=1e-6)
    np.testing.assert_allclose(predict_proba(model, images[:, 0].numpy(), "cpu", batch_size=4), expected, atol=1e-6)
    with pytest.raises(InvalidInputError, match="NaN"):
        predict_proba(model, torch.full((1, 1, 16, 16), float("nan")), "cpu")


def test_checkpoints_are_written_atomically(tmp_path: Path) -> None:
    path = save_checkpoint({"value": torch.tensor([1.0])}, tmp_path / "c.pt")
    with pytest.raises((pickle.PicklingError, AttributeError)):  # AttributeError on some Python versions
        save_checkpoint({"value": lambda: None}, path)  # cannot be pickled
    assert torch.equal(load_checkpoint(path)["value"], torch.tensor([1.0]))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    torch.save({"value": Fraction(1, 3)}, tmp_path / "object.pt")  # loads only by unpickling code
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    for bad in ("junk.pt", "object.pt", "truncated.pt"):
        with pytest.raises(InvalidInputError, match=rf"checkpoint .*{bad} cannot be read") as info:
            load_checkpoint(tmp_path / bad)
        assert "weights_only" not in str(info.value) and "\n" not in str(info.value)  # no unsafe advice


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(4)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint({"rng": capture_rng_state(generator)}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(()).item(), torch.rand((), generator=generator).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    generator.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], generator)
    assert (random.random(), np.random.rand(), torch.rand(()).item(), torch.rand((), generator=generator).item()) == expected


@pytest.mark.parametrize("native_bf16", [True, False])
def test_resolve_amp(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    monkeypatch.setattr("covidlib.train.cpu_supports_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu) is None
    # auto: bf16 where the CPU has native kernels, float32 where bf16 would be emulated (slower)
    assert resolve_amp("auto", cpu) is (torch.bfloat16 if native_bf16 else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert len([w for w in caught if "emulates" in str(w.message)]) == (0 if native_bf16 else 1)
    with pytest.raises(InvalidInputError, match="CUDA"):
        resolve_amp("fp16", cpu)


def test_bf16_training_reaches_float32_accuracy_on_the_squares() -> None:
    results = {}
    for amp in ("off", "bf16"):
        train, val = loaders()
        trainer = Trainer(tiny_model(), quick_config(epochs=12, step_size=25, amp=amp))
        trainer.fit(train, val)
        results[amp] = trainer.best_metric
    assert math.isfinite(results["bf16"])
    assert results["bf16"] > results["off"] - 0.05


def test_fit_tells_the_dataset_each_epoch_for_fresh_augmentation() -> None:
    class EpochRecordingSquares(SquaresDataset):
        def __init__(self) -> None:
            super().__init__(8, 0)
            self.epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

    dataset = EpochRecordingSquares()
    train = DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    _, val = loaders()
    Trainer(tiny_model(), quick_config(epochs=3)).fit(train, val)
    assert dataset.epochs == [0, 1, 2]


class RecordingTrainer(Trainer):
    """Keeps the network's weights after every optimizer step."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.after_each_step: list[dict[str, torch.Tensor]] = []

    def after_step(self) -> None:
        self.after_each_step.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


def test_ema_decay_validates_and_keeps_the_moving_average_of_the_weights() -> None:
    train, val = loaders()
    trainer = RecordingTrainer(tiny_model(), quick_config(epochs=1, ema_decay=0.6))
    trainer.fit(train, val)
    # by hand: a_0 = 0 copies the first step's weights, then a_t = min(1 - 1/(t+1), 0.6): 0.5, 0.6, 0.6
    expected = {k: v.clone() for k, v in trainer.after_each_step[0].items()}
    for step, weights in enumerate(trainer.after_each_step[1:], start=1):
        decay = min(1 - 1 / (step + 1), 0.6)
        for name, value in expected.items():
            expected[name] = decay * value + (1 - decay) * weights[name] if value.is_floating_point() else weights[name]
    assert len(trainer.after_each_step) == 4
    for name, value in trainer.validation_model().state_dict().items():
        torch.testing.assert_close(value, expected[name])
    # one epoch is the best epoch: the network handed back holds the average, not its last step
    assert_same_state(trainer.model.state_dict(), trainer.validation_model().state_dict())
    assert not torch.equal(trainer.model.state_dict()["encoder.0.0.weight"],
                           trainer.after_each_step[-1]["encoder.0.0.weight"])


def test_without_ema_decay_the_network_itself_is_validated() -> None:
    trainer = Trainer(tiny_model(), quick_config())
    assert trainer.averaged is None and trainer.validation_model() is trainer.model


def test_ema_training_resumes_exactly(tmp_path: Path) -> None:
    train, val = loaders()
    straight = Trainer(tiny_model(), quick_config(epochs=3, ema_decay=0.9), out_dir=tmp_path / "straight")
    straight.fit(train, val)
    train, val = loaders()
    Trainer(tiny_model(), quick_config(epochs=2, ema_decay=0.9), out_dir=tmp_path / "resumed").fit(train, val)
    train, val = loaders()
    resumed = Trainer(tiny_model(seed=4), quick_config(epochs=3, ema_decay=0.9), out_dir=tmp_path / "resumed")
    resumed.fit(train, val, resume=True)
    assert without_times(resumed.history) == without_times(straight.history)
    assert_same_state(resumed.model.state_dict(), straight.model.state_dict())
    assert_same_state(load_checkpoint(tmp_path / "resumed" / LAST_CHECKPOINT)["averaged"],
                      load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)["averaged"])
