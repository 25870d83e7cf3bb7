"""Tests for covidlib.experiments: the grid's cells, records, resume, workers and the table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import covidlib.experiments as experiments
from covidlib import fingerprint
from covidlib.errors import InvalidInputError
from covidlib.experiments import Cell, GridConfig, load_records, render_table, run_grid, summarise
from covidlib.models import UNet2d
from covidlib.models.unet3d import UNet3d
from covidlib.train import TrainConfig, load_checkpoint
from covidlib.transfer import SliceTraining


class ToyCase:
    """A bright square on noise: a lesion a tiny network can learn in a few steps."""

    def __init__(self, index: int) -> None:
        rng = np.random.default_rng(index)
        self.case_id = f"toy{index:02d}"
        self.lesion_mask = np.zeros((3, 16, 16), np.uint8)
        y, x = rng.integers(2, 9, size=2)
        self.lesion_mask[1:, y:y + 6, x:x + 6] = 1
        self.image = (rng.normal(0, 0.3, (3, 16, 16)) + 2.0 * self.lesion_mask).astype(np.float32)


def tiny_config(**changes) -> GridConfig:
    train = TrainConfig(epochs=1, max_steps_per_epoch=2, amp="off", progress=False, device="cpu", lr=1e-2)
    settings = dict(splits=("10-40",), folds=2, n_folds=3, n_test=2, base_width=2, depth=2, genesis_width=2,
                    training=SliceTraining(train=train, batch_size=4, augment=False))
    settings.update(changes)
    return GridConfig(**settings)


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    unet = tmp_path / "unet.pt"
    torch.save(UNet2d(base_width=2, depth=2).state_dict(), unet)
    genesis = tmp_path / "Genesis_Chest_CT.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in UNet3d(base_width=2).state_dict().items()}}, genesis)
    return {"unet": unet}, genesis


def test_grid_cells_and_validation() -> None:
    config = GridConfig()
    assert len(config.cells()) == 2 * 4 * 2 * 5
    assert config.cells()[0] == Cell("unet", "scratch", "10-40", 0)
    with pytest.raises(InvalidInputError, match="recipes"):
        GridConfig(recipes=("scratch", "linear"))
    with pytest.raises(InvalidInputError, match="folds"):
        GridConfig(folds=6)


def test_run_grid_writes_records_holds_out_test_and_resumes(tmp_path, weights, monkeypatch) -> None:
    pretrained, genesis = weights
    cases = [ToyCase(i) for i in range(8)]
    config = tiny_config(networks=("unet",), folds=1)
    results = tmp_path / "grid"
    records = run_grid(cases, config, results, pretrained=pretrained, genesis=genesis, progress=False)
    assert len(records) == 4
    tests = {tuple(r["cases"]["test"]) for r in records}
    assert len(tests) == 1  # the same held-out volumes for every cell
    for record in records:
        train, val, test = (set(record["cases"][p]) for p in ("train", "val", "test"))
        assert not (train & val or train & test or val & test)
        assert len(train) == 2 and len(val) == 4 and len(test) == 2  # "10-40": one fold trains
        for phase in ("train", "val", "test"):
            dice = record["dice"][phase]
            assert 0.0 <= dice["mean"] <= 1.0
            assert dice["mean"] == pytest.approx(np.nanmean(list(dice["per_case"].values())))
    genesis_record = next(r for r in records if r["cell"]["recipe"] == "genesis")
    assert genesis_record["network_class"] == "GenesisUNet2d"
    decoder_record = next(r for r in records if r["cell"]["recipe"] == "decoder")
    assert decoder_record["trainable"] < decoder_record["parameters"]

    # Resume: finished cells are not run again; a removed record is the only cell re-run.
    calls = []
    real_run_cell = experiments.run_cell
    monkeypatch.setattr(experiments, "run_cell", lambda cell, *a, **k: calls.append(cell.key) or real_run_cell(cell, *a, **k))
    run_grid(cases, config, results, pretrained=pretrained, genesis=genesis, progress=False)
    assert calls == []
    (results / "cells" / "unet__all__10-40__fold0.json").unlink()
    again = run_grid(cases, config, results, pretrained=pretrained, genesis=genesis, progress=False)
    assert calls == ["unet__all__10-40__fold0"] and len(again) == 4
    before = next(r for r in records if r["cell"]["recipe"] == "all")
    after = next(r for r in again if r["cell"]["recipe"] == "all")
    assert after["dice"] == before["dice"]  # the finished checkpoint is reused, same numbers

    with pytest.raises(InvalidInputError, match="other grid settings"):
        load_records(results, tiny_config(networks=("unet",), folds=1, base_width=4))


def without_seconds(record: dict) -> dict:
    kept = {k: v for k, v in record.items() if k != "seconds"}
    kept["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in record["history"]]
    return kept


def test_interrupted_augmented_cell_resumes_bit_for_bit(tmp_path, weights, interrupt_after_epoch) -> None:
    """A cell killed after epoch 2 of 4 and run again ends with the uninterrupted run's weights:
    the resumed epochs draw epoch 3's and 4's augmentation and shuffles, not epoch 1's again."""
    pretrained, _ = weights
    cases = [ToyCase(i) for i in range(8)]
    train = TrainConfig(epochs=4, patience=10, max_steps_per_epoch=2, amp="off", progress=False, device="cpu", lr=1e-2)
    config = tiny_config(networks=("unet",), recipes=("all",), folds=1,
                         training=SliceTraining(train=train, batch_size=2, augment=True))
    straight = run_grid(cases, config, tmp_path / "straight", pretrained=pretrained, progress=False)

    interrupted = interrupt_after_epoch(2)
    with pytest.raises(interrupted):
        run_grid(cases, config, tmp_path / "resumed", pretrained=pretrained, progress=False)
    key = config.cells()[0].key
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / key / "last.pt")["epoch"] == 2
    assert not (tmp_path / "resumed" / "cells" / f"{key}.json").exists()
    torch.manual_seed(123)  # a new process: other global random state
    resumed = run_grid(cases, config, tmp_path / "resumed", pretrained=pretrained, progress=False)

    assert [without_seconds(r) for r in resumed] == [without_seconds(r) for r in straight]
    for name in ("last.pt", "best.pt"):
        a = load_checkpoint(tmp_path / "straight" / "checkpoints" / key / name)["model"]
        b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / key / name)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_stale_cells_are_recomputed_when_a_setting_the_weights_or_the_code_change(tmp_path, weights,
                                                                                  monkeypatch) -> None:
    pretrained, genesis = weights
    cases = [ToyCase(i) for i in range(8)]
    config = tiny_config(networks=("unet",), recipes=("scratch", "all"), folds=1)
    results = tmp_path / "grid"
    calls = []
    real_run_cell = experiments.run_cell
    monkeypatch.setattr(experiments, "run_cell", lambda cell, *a, **k: calls.append(cell.key) or real_run_cell(cell, *a, **k))
    first = run_grid(cases, config, results, pretrained=pretrained, progress=False)
    scratch, all_ = (c.key for c in config.cells())
    assert calls == [scratch, all_]

    # An edited setting: every cell is recomputed from scratch (its stale last.pt is not continued).
    calls.clear()
    edited = tiny_config(networks=("unet",), recipes=("scratch", "all"), folds=1, training=SliceTraining(
        train=TrainConfig(epochs=1, max_steps_per_epoch=2, amp="off", progress=False, device="cpu", lr=5e-3),
        batch_size=4, augment=False))
    again = run_grid(cases, edited, results, pretrained=pretrained, progress=False)
    assert calls == [scratch, all_]
    fresh = run_grid(cases, edited, tmp_path / "fresh", pretrained=pretrained, progress=False)
    losses = lambda records: [[row["train_loss"] for row in r["history"]] for r in records]  # noqa: E731
    assert losses(again) == losses(fresh) != losses(first)
    assert all(a["fingerprint"] != b["fingerprint"] for a, b in zip(first, again))
    with pytest.raises(InvalidInputError, match="stale"):
        load_records(results, config)

    # Unchanged: nothing runs. Other pretrained weights: only the cell that starts from them.
    calls.clear()
    run_grid(cases, edited, results, pretrained=pretrained, progress=False)
    assert calls == []
    torch.manual_seed(1)
    torch.save(UNet2d(base_width=2, depth=2).state_dict(), pretrained["unet"])
    run_grid(cases, edited, results, pretrained=pretrained, progress=False)
    assert calls == [all_]

    # A code edit (a module the cells import, here the losses) makes every record stale.
    calls.clear()
    real_hash = fingerprint.source_hash
    monkeypatch.setattr(fingerprint, "source_hash",
                        lambda path: "ast:edited" if Path(path).name == "losses.py" else real_hash(path))
    edited_code = run_grid(cases, edited, results, pretrained=pretrained, progress=False)
    assert calls == [scratch, all_]
    assert all("covidlib/losses.py" in r["inputs"]["code"] for r in edited_code)
    # ...but an edit to a module they do not import changes nothing.
    calls.clear()
    monkeypatch.setattr(fingerprint, "source_hash",
                        lambda path: "ast:edited" if Path(path).name in ("losses.py", "svcca.py") else real_hash(path))
    run_grid(cases, edited, results, pretrained=pretrained, progress=False)
    assert calls == []


def test_missing_weights_are_named(tmp_path) -> None:
    cases = [ToyCase(i) for i in range(8)]
    with pytest.raises(InvalidInputError, match="pretrained"):
        run_grid(cases, tiny_config(recipes=("decoder",)), tmp_path, progress=False)
    with pytest.raises(InvalidInputError, match="Models Genesis checkpoint"):
        run_grid(cases, tiny_config(recipes=("genesis",)), tmp_path, progress=False)


def fake_record(network: str, recipe: str, split: str, fold: int, value: float) -> dict:
    return {"cell": {"network": network, "recipe": recipe, "split": split, "fold": fold},
            "dice": {p: {"mean": value} for p in ("train", "val", "test")}}


def test_render_table_mean_and_sample_sd() -> None:
    records = [fake_record("unet", "scratch", "40-10", 0, 0.5), fake_record("unet", "scratch", "40-10", 1, 0.7),
               fake_record("attention-unet", "all", "10-40", 0, 0.25)]
    table = render_table(records)
    lines = table.splitlines()
    assert lines[0] == "| Network | Initialisation | Split | Train | Validation | Test | Folds |"
    # mean 0.6, sample sd sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414
    assert lines[2] == "| U-Net | From scratch | 40-10 | 0.600 ± 0.141 | 0.600 ± 0.141 | 0.600 ± 0.141 | 2 |"
    assert lines[3] == "| Attention U-Net | Fine-tune all | 10-40 | 0.250 ± 0.000 | 0.250 ± 0.000 | 0.250 ± 0.000 | 1 |"
    assert summarise(records)["unet"]["scratch"]["40-10"]["test"]["folds"] == [0.5, 0.7]
    with pytest.raises(InvalidInputError):
        render_table([])


@pytest.mark.slow  # two spawned interpreters importing torch
def test_worker_processes_give_the_same_records(tmp_path, weights) -> None:
    pretrained, genesis = weights
    cases = [ToyCase(i) for i in range(8)]
    config = tiny_config(networks=("unet",), recipes=("scratch", "decoder"))
    serial = run_grid(cases, config, tmp_path / "serial", pretrained=pretrained, progress=False)
    parallel = run_grid(cases, config, tmp_path / "parallel", pretrained=pretrained, n_workers=2, progress=False)
    # every cell has a record from each way, in the grid's order, and each holds what the same
    # cell computed in this process: only the clock readings may differ
    assert [r["cell"] for r in serial] == [dataclasses.asdict(cell) for cell in config.cells()]
    assert [r["cell"] for r in parallel] == [r["cell"] for r in serial]
    on_disk = sorted(p.name for p in (tmp_path / "parallel" / "cells").glob("*.json"))
    assert on_disk == sorted(p.name for p in (tmp_path / "serial" / "cells").glob("*.json")) and len(on_disk) == 4

    def without_clock(record: dict) -> dict:
        return {**{k: v for k, v in record.items() if k != "seconds"},
                "history": [{k: v for k, v in row.items() if k != "seconds"} for row in record["history"]]}

    for a, b in zip(serial, parallel, strict=True):
        assert a["history"] and a["dice"]["test"]["per_case"] and a["cases"]["test"]  # something to compare
        assert without_clock(a) == without_clock(b)


def test_named_sources_give_one_fine_tuning_row_each_and_the_test_infnet_dice(tmp_path, weights) -> None:
    pretrained, _ = weights
    config = tiny_config(networks=("unet",), recipes=("scratch", "decoder"), sources=("restoration", "phantom"), folds=1)
    assert [cell.key for cell in config.cells()] == ["unet__scratch__10-40__fold0",
                                                     "unet__decoder-restoration__10-40__fold0",
                                                     "unet__decoder-phantom__10-40__fold0"]
    assert config.fingerprint() == tiny_config(networks=("unet",), recipes=("scratch", "decoder"), folds=1).fingerprint()
    cases = [ToyCase(i) for i in range(8)]
    with pytest.raises(InvalidInputError, match="unet/restoration"):
        run_grid(cases, config, tmp_path, pretrained=pretrained, progress=False)
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(UNet2d(base_width=2, depth=2).state_dict(), other)
    records = run_grid(cases, config, tmp_path, pretrained={"unet/restoration": pretrained["unet"], "unet/phantom": other},
                       progress=False)
    inputs = [r["inputs"]["weights"] for r in records]
    assert inputs[0] is None and inputs[1] != inputs[2]  # each source keys its cells by its own weights
    for record in records:
        infnet = record["infnet_mean_dice"]
        assert set(infnet["per_case"]) == set(record["cases"]["test"])  # every toy volume has a lesion
        assert infnet["mean"] == pytest.approx(np.mean(list(infnet["per_case"].values())))
        assert all(0.0 <= value <= 1.0 for value in infnet["per_case"].values())
    table = render_table(records, source_titles={"restoration": "self-supervised"})
    assert table.splitlines()[0].endswith("| Test | Test, Inf-Net mean Dice | Folds |")
    assert "| Fine-tune decoder (self-supervised) |" in table and "| Fine-tune decoder (phantom) |" in table
    summary = summarise(records)["unet"]
    assert set(summary) == {"scratch", "decoder/restoration", "decoder/phantom"}
    assert summary["scratch"]["10-40"]["test_infnet"]["mean"] == pytest.approx(records[0]["infnet_mean_dice"]["mean"])
    with pytest.raises(InvalidInputError, match="sources"):
        tiny_config(sources=("a/b",))


def test_infnet_mean_dice_of_a_perfect_and_an_inverted_network() -> None:
    class Oracle(torch.nn.Module):
        """Logits that put the lesion (where the toy image is bright) in class 1, or in class 0 when inverted."""

        def __init__(self, sign: float) -> None:
            super().__init__()
            self.sign = sign

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            foreground = (images > 1.0).float() * 10 * self.sign
            return torch.cat([torch.zeros_like(foreground), foreground], dim=1)

    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, 2:6, 2:6] = 1
    empty = np.zeros((1, 8, 8), np.uint8)
    arrays = {"a": (mask.astype(np.float32) * 2, mask), "b": (empty.astype(np.float32), empty)}
    settings = SliceTraining(batch_size=2, augment=False)
    loader = experiments.slice_loader(arrays, ["a", "b"], settings, training=False, seed=0)
    perfect = experiments.infnet_mean_dice(Oracle(1.0), loader, "cpu")
    assert list(perfect) == ["a"]  # a case without lesion has no Dice over thresholds
    # a binary map rescaled to {0, 1}: threshold 0 takes every pixel (Dice 2*16/(64+16) = 0.4),
    # every other of the 256 thresholds takes the lesion exactly (Dice 1)
    assert perfect["a"] == pytest.approx((0.4 + 255 * 1.0) / 256)
    inverted = experiments.infnet_mean_dice(Oracle(-1.0), loader, "cpu")
    assert inverted["a"] == pytest.approx(0.4 / 256)
    unnamed = [(torch.from_numpy(mask.astype(np.float32))[None], torch.from_numpy(mask.astype(np.int64)))]
    with pytest.raises(InvalidInputError, match="case_id"):
        experiments.infnet_mean_dice(Oracle(1.0), unnamed, "cpu")


def test_damaged_pretrained_weights_are_named(tmp_path) -> None:
    bad = tmp_path / "unet-phantom.pt"
    bad.write_bytes(b"not a checkpoint")
    config = tiny_config(networks=("unet",), recipes=("decoder",), sources=("phantom",))
    name = experiments.weights_name("unet", "phantom")
    with pytest.raises(InvalidInputError, match=r"checkpoint .*unet-phantom\.pt cannot be read"):
        run_grid([ToyCase(i) for i in range(8)], config, tmp_path / "grid", pretrained={name: bad}, progress=False)
