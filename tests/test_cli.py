"""Tests for the command line (covidlib.__main__), run in-process through main([...])."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from covidlib.__main__ import COMMANDS, main
from covidlib.data import kfold_volumes
from covidlib.datasets import get_dataset
from covidlib.inference import load_model, predict_stack, prepare_case
from covidlib.metrics import best_threshold, dice
from covidlib.io import read_volume
from covidlib.train import load_checkpoint, predict_proba

SIZES = [(40, 48), (36, 44), (44, 40), (40, 40), (38, 46), (42, 42)]


def make_semiseg(root: Path) -> Path:
    """A tiny COVID-SemiSeg layout: 6 grey JPG slices of varied size with PNG masks {0, 255}."""
    rng = np.random.default_rng(0)
    images = root / "TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    masks = root / "TrainingSet/LungInfection-Train/Doctor-label/GT"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for index, (height, width) in enumerate(SIZES):
        mask = np.zeros((height, width), dtype=np.uint8)
        y, x = rng.integers(4, 20, size=2)
        mask[y:y + 12, x:x + 10] = 255
        image = np.clip(60 + 0.6 * mask + rng.normal(0, 10, (height, width)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(images / f"{index}.jpg", quality=95)
        Image.fromarray(mask).save(masks / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, run folder) of one quick training run shared by the tests below."""
    root = make_semiseg(tmp_path_factory.mktemp("semiseg"))
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--dataset", "covid-semiseg", "--data-root", str(root), "--model", "attention-unet",
                 "--out", str(out), "--quick", "--folds", "3", "--fold", "1", "--device", "cpu", "--amp", "off",
                 "--no-progress"])
    assert code == 0
    return root, out


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert name in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--data-root" in capsys.readouterr().out


def test_train_writes_checkpoints_history_and_metrics(trained: tuple[Path, Path]) -> None:
    _, out = trained
    assert {p.name for p in out.iterdir()} == {"last.pt", "best.pt", "history.json", "metrics.json"}
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert [row["epoch"] for row in history] == [1, 2, 3]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    ids = [f"train/{i}" for i in range(len(SIZES))]
    assert metrics["settings"]["val_cases"] == kfold_volumes(ids, 3, 0)[1][1]
    assert sorted(metrics["per_case"]) == sorted(metrics["settings"]["val_cases"])
    assert metrics["validation"]["dice"]["n"] == 2
    assert metrics["settings"]["model_options"]["base_width"] == 8
    assert metrics["settings"]["preparation"] == ["8-bit grey levels as stored", "z-score per slice",
                                                  "resize to 64 x 64 px (images bilinear, masks nearest)"]
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == metrics["best_epoch"]


def test_evaluate_prints_the_validation_metrics_as_json(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, out = trained
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(root), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    recorded = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["validation"]
    assert printed["summary"]["dice"] == recorded["dice"]
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(root), "--split", "train",
                 "--per-case", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"]["dice"]["n"] == len(SIZES)
    assert len(printed["per_case"]) == len(SIZES)


def test_select_threshold_stores_the_validation_choice_for_evaluate(trained: tuple[Path, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = trained
    out = tmp_path / "chosen"
    assert main(["train", "--dataset", "covid-semiseg", "--data-root", str(root), "--out", str(out), "--quick",
                 "--folds", "3", "--fold", "1", "--device", "cpu", "--amp", "off", "--no-progress",
                 "--select-threshold"]) == 0
    metadata = load_checkpoint(out / "best.pt")["metadata"]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    model, _ = load_model(out / "best.pt")
    val = [prepare_case(get_dataset("covid-semiseg", str(root)).load(case)) for case in metadata["val_cases"]]
    probabilities = [predict_stack(model, image, metadata["image_size"], "cpu", tta=True) for image, _ in val]
    chosen = best_threshold(probabilities, [mask for _, mask in val])
    assert metadata["probability_threshold"] == metrics["probability_threshold"] == chosen
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(root), "--device", "cpu",
                 "--per-case"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["threshold"] == chosen and printed["summary"]["dice"] == metrics["validation"]["dice"]
    by_hand = [dice(p > chosen, mask) for p, (_, mask) in zip(probabilities, val)]
    assert [printed["per_case"][case]["dice"] for case in metadata["val_cases"]] == by_hand
    assert "probability_threshold" not in load_checkpoint(trained[1] / "best.pt")["metadata"]


def tta_by_hand(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Probabilities averaged over the 4 turns, each with and without a left-right mirror."""
    outputs = []
    for k in range(4):
        for mirror in (False, True):
            turned = np.rot90(images, k, axes=(-2, -1))
            turned = turned[..., ::-1] if mirror else turned
            probability = predict_proba(model, np.ascontiguousarray(turned), "cpu")
            probability = probability[..., ::-1] if mirror else probability
            outputs.append(np.rot90(probability, -k, axes=(-2, -1)))
    return np.mean(outputs, axis=0)


def test_predict_folder_writes_8bit_pngs_with_the_same_names(trained: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root, out = trained
    inputs = root / "TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    assert main(["predict", "--checkpoint", str(out / "best.pt"), "--input", str(inputs),
                 "--output", str(tmp_path / "maps"), "--device", "cpu"]) == 0
    assert "infected above probability 0.5" in capsys.readouterr().out  # trained without --select-threshold
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(f"{i}.png" for i in range(len(SIZES)))
    model, metadata = load_model(out / "best.pt")
    size = metadata["image_size"]
    for index, shape in enumerate(SIZES):
        written = np.asarray(Image.open(tmp_path / "maps" / f"{index}.png"))
        assert written.dtype == np.uint8 and written.shape == shape
        # Independent route: resize the normalised image by hand, predict, resize back.
        grey = np.asarray(Image.open(inputs / f"{index}.jpg").convert("L"), dtype=np.float32)
        normalised = (grey - grey.mean()) / grey.std()
        small = torch.nn.functional.interpolate(torch.from_numpy(normalised)[None, None], size=(size, size), mode="bilinear")
        assert metadata["tta"]  # the default: average the 8 turns and mirrors, each turned back
        probability = tta_by_hand(model, small.numpy())
        back = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(probability))[None], size=shape,
                                               mode="bilinear")[0, 0].numpy()
        assert np.abs(written.astype(float) - np.round(back * 255)).max() <= 1


def test_predict_nifti_keeps_the_inputs_geometry(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = trained
    hu = np.full((3, 40, 48), -850.0, dtype=np.float32)
    hu[:, 15:25, 10:22] = -500.0
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 20.0, 30.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / "scan.nii.gz"))
    assert main(["predict", "--checkpoint", str(out / "best.pt"), "--input", str(tmp_path / "scan.nii.gz"),
                 "--output", str(tmp_path / "prob.nii.gz"), "--device", "cpu"]) == 0
    source, result = read_volume(tmp_path / "scan.nii.gz"), read_volume(tmp_path / "prob.nii.gz")
    assert result.shape == source.shape
    np.testing.assert_allclose(result.spacing, source.spacing)
    np.testing.assert_allclose(result.origin, source.origin)
    np.testing.assert_allclose(result.direction, source.direction)
    assert 0.0 <= result.array.min() and result.array.max() <= 1.0


def test_training_resumes_through_the_command_line(tmp_path: Path) -> None:
    root = make_semiseg(tmp_path / "data")
    common = ["train", "--data-root", str(root), "--quick", "--device", "cpu", "--amp", "off", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "straight"), "--epochs", "3"]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--epochs", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--epochs", "3", "--resume"]) == 0
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "nope", "--out", "{tmp}/o"], "unknown"),
    (["train", "--data-root", "{data}", "--out", "{tmp}/o", "--folds", "3", "--fold", "3", "--quick"], "--fold"),
    (["evaluate", "--checkpoint", "{tmp}/missing.pt"], "does not exist"),
    (["evaluate", "--checkpoint", "{tmp}/bare.pt", "--dataset", "covid-semiseg"], "does not record its input size"),
    (["predict", "--checkpoint", "{run}/best.pt", "--input", "{tmp}/empty", "--output", "{tmp}/o"], "no 2D images"),
    (["predict", "--checkpoint", "{run}/best.pt", "--input", "{tmp}/scan.nii.gz", "--output", "{tmp}/o.png"], ".nii"),
])
def test_bad_input_gives_exit_code_2_and_a_message(argv: list[str], message: str, trained: tuple[Path, Path],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, out = trained
    (tmp_path / "empty").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 8, 8), dtype=np.float32)), str(tmp_path / "scan.nii.gz"))
    bare = load_checkpoint(out / "best.pt")  # a chapter's checkpoint: architecture but no input size
    bare["metadata"] = {k: v for k, v in bare["metadata"].items() if k != "image_size"}
    torch.save(bare, tmp_path / "bare.pt")
    filled = [a.format(tmp=tmp_path, data=root, run=out) for a in argv]
    assert main(filled) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and message in error
