"""Tests for the command line (covidlib.__main__), run in-process through main([...])."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fakes import write_semiseg
from PIL import Image

from covidlib.__main__ import COMMANDS, LUNGMASK_FALLBACK_NOTE, main
from covidlib.data import kfold_volumes
from covidlib.datasets import get_dataset
from covidlib.inference import load_model, predict_stack, prepare_case
from covidlib.metrics import best_threshold, dice
from covidlib.io import read_volume, write_volume
from covidlib.models import get_model
from covidlib.phantom import make_phantom
from covidlib.train import load_checkpoint, predict_proba, save_checkpoint

SIZES = [(40, 48), (36, 44), (44, 40), (40, 40), (38, 46), (42, 42)]


def make_semiseg(root: Path) -> Path:
    """A tiny COVID-SemiSeg layout: 6 grey JPG slices of varied size with PNG masks {0, 255}."""
    rng = np.random.default_rng(0)
    labelled = {}
    for index, (height, width) in enumerate(SIZES):
        mask = np.zeros((height, width), dtype=np.uint8)
        y, x = rng.integers(4, 20, size=2)
        mask[y:y + 12, x:x + 10] = 255
        labelled[str(index)] = (np.clip(60 + 0.6 * mask + rng.normal(0, 10, (height, width)), 0, 255), mask)
    return write_semiseg(root, labelled)


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


def _imported_by(argv: list[str]) -> set[str]:
    """The modules ``python -m covidlib ARGV`` imports (``-X importtime`` lists each on stderr)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "covidlib", *argv], capture_output=True,
                          text=True, timeout=120)
    return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("argv", [["--help"], ["no-such-command"], *([name, "--help"] for name in COMMANDS)])
def test_help_and_a_bad_command_do_not_import_torch(argv: list[str]) -> None:
    imported = _imported_by(argv)
    assert "argparse" in imported  # the listing works
    assert "torch" not in imported and "numpy" not in imported


BUILD_EVERY_PARSER = """
import argparse, json, sys
from covidlib.__main__ import build_parser
commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
print(json.dumps({"options": {name: sorted(sub._option_string_actions) for name, sub in commands.choices.items()},
                  "torch": "torch" in sys.modules}))
"""


def test_building_the_parser_of_every_command_imports_no_torch() -> None:
    """Their choices (networks, losses, methods) come from covidlib.options, not the torch modules."""
    done = subprocess.run([sys.executable, "-c", BUILD_EVERY_PARSER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads(done.stdout)
    assert sorted(built["options"]) == sorted(COMMANDS)
    assert {"--model", "--loss", "--semi", "--amp"} <= set(built["options"]["train"])  # its arguments were added
    assert {"--lung-method", "--model"} <= set(built["options"]["segment"])
    assert {"--rule", "--model"} <= set(built["options"]["semi"])
    assert not built["torch"]


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
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    recorded = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["validation"]
    assert printed["summary"]["dice"] == recorded["dice"]
    # the validation cases chose the epoch: said on stderr and in the JSON
    assert printed["seen_in_training"] == {"trained_on": 0, "selected_on": 2}
    assert "of the 2 cases, 0 trained this network and 2 chose its epoch" in captured.err
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(root), "--split", "train",
                 "--per-case", "--device", "cpu", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"]["dice"]["n"] == len(SIZES)
    assert len(printed["per_case"]) == len(SIZES)
    assert printed["seen_in_training"] == {"trained_on": len(SIZES) - 2, "selected_on": 2}
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(root), "--threads", "0"]) == 2
    assert "--threads must be a positive integer, got 0" in capsys.readouterr().err


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
    for z in range(3):  # a different slice each z, so slices cannot be mixed up unnoticed
        hu[z, 15:25, 10 + 6 * z:22 + 6 * z] = -500.0
    hu[2, 30:34, 5:9] = 400.0  # above the lung window: clipped to 255
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
    np.testing.assert_array_equal(source.array, hu)  # stored as written, so the route below starts from hu
    # Independent route: the lung window [-1250, 250] HU to grey levels 0..255 by hand
    # (-850 HU -> 68, -500 HU -> 127.5, 400 HU -> 255), z-score each slice, resize, 8-fold TTA, resize back.
    model, metadata = load_model(out / "best.pt")
    size = metadata["image_size"]
    grey = 255.0 * np.clip((hu + 1250.0) / 1500.0, 0.0, 1.0)
    assert grey[0, 0, 0] == pytest.approx(68.0) and grey[0, 15, 10] == pytest.approx(127.5)
    assert metadata["tta"]
    for z in range(3):
        normalised = (grey[z] - grey[z].mean()) / grey[z].std()
        small = torch.nn.functional.interpolate(torch.from_numpy(normalised.astype(np.float32))[None, None],
                                                size=(size, size), mode="bilinear")
        probability = tta_by_hand(model, small.numpy())
        back = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(probability))[None],
                                               size=(40, 48), mode="bilinear")[0, 0].numpy()
        np.testing.assert_allclose(result.array[z], back, atol=1e-4, err_msg=f"slice {z}")
    assert 0.0 <= result.array.min() and result.array.max() <= 1.0


def test_predict_nifti_calls_padding_slices_free_of_infection(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = trained
    hu = np.full((3, 40, 48), -3024.0, dtype=np.float32)  # slices 0 and 2: padding outside the field of view
    hu[1] = -850.0
    hu[1, 15:25, 10:22] = -500.0
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "padded.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(hu[1:2]), str(tmp_path / "middle.nii.gz"))
    for name in ("padded", "middle"):
        assert main(["predict", "--checkpoint", str(out / "best.pt"), "--input", str(tmp_path / f"{name}.nii.gz"),
                     "--output", str(tmp_path / f"{name}_prob.nii.gz"), "--device", "cpu"]) == 0
    padded, middle = (read_volume(tmp_path / f"{name}_prob.nii.gz").array for name in ("padded", "middle"))
    assert not padded[[0, 2]].any()
    np.testing.assert_allclose(padded[1], middle[0], atol=1e-6)  # the scan's own slice is predicted as alone
    assert middle[0].max() > 0


def test_training_resumes_through_the_command_line(tmp_path: Path) -> None:
    root = make_semiseg(tmp_path / "data")
    common = ["train", "--data-root", str(root), "--quick", "--device", "cpu", "--amp", "off", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "straight"), "--epochs", "3"]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--epochs", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--epochs", "3", "--resume"]) == 0
    for member in ("member-0", "member-1"):  # the final model's two networks
        straight = load_checkpoint(tmp_path / "straight" / member / "last.pt")["model"]
        resumed = load_checkpoint(tmp_path / "split" / member / "last.pt")["model"]
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


# --- checks before any work: flags, output paths and inputs of predict --------------------------

@pytest.mark.parametrize("argv, message", [
    # flags named as flags, checked before any data is read
    (["train", "--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["train", "--lr", "0"], "--lr must be a positive number"),
    (["train", "--patience", "0"], "--patience must be a positive integer"),
    (["train", "--step-size", "0"], "--step-size must be a positive integer"),
    (["train", "--gamma", "0"], "--gamma must be in (0, 1]"),
    (["train", "--ema-decay", "1.5"], "--ema-decay must be in [0, 1)"),
    (["train", "--zoom", "0.8"], "--zoom must be a number of at least 1 (1: no zoom), got 0.8"),
    (["train", "--crop-size", "0"], "--crop-size must be a positive integer, got 0"),
    (["train", "--crop-size", "96"], "--crop-size 96 is larger than --image-size 64: the window must fit in the slice"),
    (["train", "--crop-size", "8", "--depth", "3"], "--depth 3 is too deep for --crop-size 8"),
    (["train", "--crop-size", "32", "--crop-foreground", "1.5"], "--crop-foreground must be in [0, 1], got 1.5"),
    (["train", "--crop-foreground", "0.33"], "--crop-foreground acts only with --crop-size"),
    (["train", "--zoom", "1.25", "--no-augment"], "--zoom 1.25 is part of the augmentation that --no-augment switches off"),
    (["train", "--max-steps-per-epoch", "0"], "--max-steps-per-epoch must be a positive integer"),
    (["train", "--threads", "0"], "--threads must be a positive integer, got 0"),
    (["train", "--folds", "0"], "--folds must be an integer of at least 2"),
    (["train", "--folds", "1"], "--folds must be an integer of at least 2"),
    (["train", "--folds", "7"], "--folds 7: split 'train' of dataset 'covid-semiseg' has only 6 cases"),
    (["train", "--val-fraction", "0.995"], "--val-fraction 0.995 holds out 6 of the 6 cases"),
    (["train", "--depth", "9"], "--depth 9 is too deep for --image-size 64"),
    (["train", "--semi", "both", "--semi-epochs", "0"], "--semi-epochs must be a positive integer, got 0"),
    (["semi", "--semi-epochs", "0"], "--semi-epochs must be a positive integer, got 0"),
    (["semi", "--inner-val", "0"], "--inner-val must be at least 1, got 0"),
    (["semi", "--threads", "0"], "--threads must be a positive integer, got 0"),
    (["semi", "--depth", "6"], "--depth 6 is too deep for --image-size 64"),
    # semi's limits that depend on the number of labelled cases: checked once the dataset lists them
    (["semi", "--folds", "7"], "--folds 7: split 'train' of dataset 'covid-semiseg' has 6 labelled case(s); "
                               "--folds must be in [2, 6]"),
    (["semi", "--folds", "3", "--inner-val", "4"], "--inner-val 4: with --folds 3 of the 6 labelled cases, a fold "
                                                   "leaves 4 non-test cases and none would train; --inner-val must be at most 3"),
    # flags that would otherwise be ignored
    (["train", "--fold", "3"], "--fold 3 needs --folds"),
    (["train", "--folds", "3", "--val-fraction", "0.5"], "--val-fraction and --folds exclude each other"),
    (["train", "--semi-epochs", "5"], "--semi-epochs acts only with --semi"),
    (["train", "--unlabelled", "5"], "--unlabelled acts only with --semi"),
    (["train", "--mixup-alpha", "-1"], "--mixup-alpha must be a non-negative number"),
    (["train", "--semi", "both", "--unlabelled-split", "train"], "--unlabelled-split 'train' is the split the network trains"),
    (["train", "--members", "0"], "--members must be a positive integer, got 0"),
    (["train", "--members", "2", "--folds", "3", "--fold", "1"], "--fold acts on one network; --members 2 trains"),
    (["train", "--members", "2", "--val-fraction", "0.3"], "--val-fraction acts on one network"),
    (["train", "--members", "2", "--semi", "both"], "--semi acts on one network"),
    (["train", "--members", "4", "--folds", "3"], "--members 4 needs --folds of at least 4"),
    (["train", "--members", "2", "--patience", "5", "--val-fraction", "0.3"], "--val-fraction acts on one network"),
    # an output folder that is a file
    (["train", "--out", "{tmp}/afile.txt"], "--out {tmp}/afile.txt: exists and is not a folder"),
    (["train", "--out", "{tmp}/afile.txt/run"], "lies under {tmp}/afile.txt, which is not a folder"),
    (["semi", "--out", "{tmp}/afile.txt"], "--out {tmp}/afile.txt: exists and is not a folder"),
])
def test_bad_flags_fail_before_any_work_naming_the_flag(argv: list[str], message: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = make_semiseg(tmp_path / "data")
    (tmp_path / "afile.txt").write_text("not a folder\n", encoding="utf-8")
    out = ["--out", str(tmp_path / "o")] if "--out" not in argv else []
    filled = [a.format(tmp=tmp_path) for a in argv]
    small = [["--quick"], ["--epochs", "1"], ["--max-steps-per-epoch", "1"], ["--no-progress"], ["--device", "cpu"],
             ["--amp", "off"]]  # so that a run that should have failed ends soon
    code = main([*filled, "--data-root", str(root), *out, *[a for flag in small if flag[0] not in filled for a in flag]])
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith("error:") and message.format(tmp=tmp_path) in error and "Traceback" not in error
    assert not (tmp_path / "o").exists()
    assert (tmp_path / "afile.txt").read_text(encoding="utf-8") == "not a folder\n"


def test_ctrl_c_during_train_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args, out_dir, **kwargs):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "last.pt").write_bytes(b"an epoch's checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr("covidlib.crossval.train_supervised", interrupted)
    root = make_semiseg(tmp_path / "data")
    common = ["train", "--data-root", str(root), "--quick", "--device", "cpu", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "pair")]) == 130  # the final model: two networks
    error = capsys.readouterr().err
    assert f"continues the others from {tmp_path / 'pair'}/member-K/last.pt" in error and "Traceback" not in error
    common.extend(["--members", "1"])
    assert main([*common, "--out", str(tmp_path / "run")]) == 130
    error = capsys.readouterr().err
    assert f"--resume continues from {tmp_path / 'run' / 'last.pt'}" in error and "Traceback" not in error
    monkeypatch.setattr("covidlib.crossval.train_supervised", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main([*common, "--out", str(tmp_path / "fresh")]) == 130
    assert "no " in capsys.readouterr().err  # nothing written yet: nothing to resume


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--checkpoint", "{tmp}/best.pt", "--threads", "0"], "--threads must be a positive integer, got 0"),
    (["evaluate", "--checkpoint", "{tmp}/missing.pt"], "--checkpoint {tmp}/missing.pt does not exist"),
    (["evaluate", "--checkpoint", "{tmp}"], "--checkpoint {tmp} is a folder"),
    (["predict", "--checkpoint", "{tmp}/missing.pt", "--input", "{tmp}", "--output", "{tmp}/o"],
     "--checkpoint {tmp}/missing.pt does not exist"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt", "--batch-size", "0"],
     "--batch-size must be a positive integer, got 0"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt", "--threshold", "1"],
     "--threshold must be in (0, 1), got 1.0"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt", "--threshold", "0"],
     "--threshold must be in (0, 1), got 0.0"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt", "--model", "unet",
      "--depth", "0"], "--depth must be a positive integer, got 0"),
    (["segment", "{tmp}/missing.nii.gz", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt"],
     "scan {tmp}/missing.nii.gz: no such file or folder"),
    (["segment", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt", "{tmp}/missing.nii.gz"],
     "scan {tmp}/missing.nii.gz: no such file or folder"),
    (["segment", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt"], "segment needs a scan"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/missing.pt"],
     "--checkpoint {tmp}/missing.pt does not exist"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt",
      "--lungmask-weights", "{tmp}/missing.pth"], "--lungmask-weights {tmp}/missing.pth does not exist"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt",
      "--lung-method", "lungmask"], "--lung-method lungmask: no lungmask weights"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/afile.txt/mask.nii.gz", "--checkpoint", "{tmp}/best.pt"],
     "-o/--output {tmp}/afile.txt/mask.nii.gz: lies under {tmp}/afile.txt, which is not a folder"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/o/mask.nii.gz", "--checkpoint", "{tmp}/best.pt",
      "--summary", "{tmp}/afile.txt/summary.json"], "--summary {tmp}/afile.txt/summary.json: lies under {tmp}/afile.txt"),
    (["segment", "{tmp}/scan.nii.gz", "-o", "{tmp}/o/mask.png", "--checkpoint", "{tmp}/best.pt"],
     "-o/--output {tmp}/o/mask.png: an image output must end with"),
])
def test_evaluate_and_segment_flags_fail_before_any_work_naming_the_flag(
        argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))  # no lungmask weights cached
    # neither is read: a check that opened them would fail on their content, not name the flag
    (tmp_path / "scan.nii.gz").write_bytes(b"not a scan")
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "afile.txt").write_text("not a folder\n", encoding="utf-8")
    code = main([a.format(tmp=tmp_path) for a in argv])
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith("error:") and message.format(tmp=tmp_path) in error and "Traceback" not in error
    assert not (tmp_path / "o").exists()


def test_segment_says_the_lungmask_fallback_in_one_plain_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))  # no lungmask weights cached
    scan = tmp_path / "chest.nii.gz"
    write_volume(make_phantom(1, (3, 96, 96), spacing=(8.0, 3.0, 3.0)).image, scan)
    options = {"in_channels": 1, "num_classes": 2, "base_width": 2, "depth": 2}
    checkpoint = save_checkpoint({"model": get_model("unet", **options).state_dict(), "epoch": 1, "val_dice": 0.0,
                                  "config": {}, "metadata": {"model": "unet", "model_options": options, "image_size": 32}},
                                 tmp_path / "best.pt")
    assert main(["segment", str(scan), "-o", str(tmp_path / "mask.nii.gz"), "--checkpoint", str(checkpoint),
                 "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [LUNGMASK_FALLBACK_NOTE]  # no Python warning line
    assert "lung mask from classical" in captured.out


def _checkpoint_args(out: Path) -> list[str]:
    return ["predict", "--checkpoint", str(out / "best.pt"), "--device", "cpu"]


def test_predict_never_overwrites_its_inputs(trained: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root, out = trained
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(2):  # PNG inputs: their maps would have the same names
        Image.open(root / f"TrainingSet/LungInfection-Train/Doctor-label/Imgs/{index}.jpg").save(folder / f"{index}.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main([*_checkpoint_args(out), "--input", str(folder), "--output", str(folder)]) == 2
    assert "is the --input folder" in capsys.readouterr().err
    assert main([*_checkpoint_args(out), "--input", str(folder), "--output", str(tmp_path / "." / "images")]) == 2
    assert "is the --input folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    hu = np.full((2, 16, 16), -900.0, dtype=np.float32)
    hu[:, 4:8, 4:8] = 40.0
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "scan.nii.gz"))
    scan = (tmp_path / "scan.nii.gz").read_bytes()
    assert main([*_checkpoint_args(out), "--input", str(tmp_path / "scan.nii.gz"),
                 "--output", str(tmp_path / "scan.nii.gz")]) == 2
    assert "is the --input file" in capsys.readouterr().err
    assert (tmp_path / "scan.nii.gz").read_bytes() == scan


def test_predict_refuses_two_inputs_with_one_output_name(trained: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    root, out = trained
    folder = tmp_path / "images"
    folder.mkdir()
    image = Image.open(root / "TrainingSet/LungInfection-Train/Doctor-label/Imgs/0.jpg")
    image.save(folder / "0.jpg")
    image.save(folder / "0.png")
    assert main([*_checkpoint_args(out), "--input", str(folder), "--output", str(tmp_path / "maps")]) == 2
    error = capsys.readouterr().err
    assert "0.jpg and 0.png would both be written to" in error
    assert not (tmp_path / "maps").exists()


def test_predict_refuses_a_volume_that_is_not_in_hu(trained: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _, out = trained
    grey = np.random.default_rng(0).integers(0, 256, (3, 16, 16)).astype(np.float32)  # an 8-bit picture
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(tmp_path / "grey.nii.gz"))
    assert main([*_checkpoint_args(out), "--input", str(tmp_path / "grey.nii.gz"),
                 "--output", str(tmp_path / "prob.nii.gz")]) == 2
    error = capsys.readouterr().err
    assert "grey.nii.gz" in error and "not a CT in HU" in error
    assert not (tmp_path / "prob.nii.gz").exists()


def test_predict_refuses_16bit_images_and_writes_nothing_when_one_input_is_bad(
        trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, out = trained
    good = root / "TrainingSet/LungInfection-Train/Doctor-label/Imgs/0.jpg"
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30).save(deep / "1.png")
    Image.open(good).save(deep / "0.png")
    assert main([*_checkpoint_args(out), "--input", str(deep), "--output", str(tmp_path / "maps16")]) == 2
    error = capsys.readouterr().err
    assert "1.png" in error and "8-bit" in error
    assert not (tmp_path / "maps16").exists()  # 0.png, read first, got no map either
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.open(good).save(bad / "0.png")
    (bad / "1.png").write_bytes(b"not an image")
    assert main([*_checkpoint_args(out), "--input", str(bad), "--output", str(tmp_path / "maps")]) == 2
    assert "1.png" in capsys.readouterr().err
    assert not (tmp_path / "maps").exists()
    (tmp_path / "afile.txt").write_text("x", encoding="utf-8")
    assert main([*_checkpoint_args(out), "--input", str(deep), "--output", str(tmp_path / "afile.txt")]) == 2
    error = capsys.readouterr().err
    assert f"--output {tmp_path / 'afile.txt'}: exists and is not a folder" in error


def test_train_members_validate_on_their_own_folds_and_predict_as_the_mean_of_their_probabilities(
        trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = trained
    out = tmp_path / "ensemble"
    assert main(["train", "--dataset", "covid-semiseg", "--data-root", str(root), "--out", str(out), "--quick",
                 "--members", "2", "--folds", "3", "--seed", "4", "--device", "cpu", "--amp", "off",
                 "--no-progress"]) == 0
    assert "ensemble of 2 unet networks" in capsys.readouterr().out
    checkpoints = [out / f"member-{k}" / "best.pt" for k in (0, 1)]
    stored = [load_checkpoint(path) for path in checkpoints]
    metadata = [checkpoint["metadata"] for checkpoint in stored]
    ids = [f"train/{i}" for i in range(len(SIZES))]
    assert [m["val_cases"] for m in metadata] == [kfold_volumes(ids, 3, 4)[k][1] for k in (0, 1)]  # one split, two folds
    assert [checkpoint["config"]["seed"] for checkpoint in stored] == [4, 5]
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [member["checkpoint"] for member in summary["members"]] == [str(path) for path in checkpoints]
    # predict with both: the mean of each one's map (second route: predict with each alone), up to 8-bit rounding
    inputs = root / "TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    for name, chosen in (("both", checkpoints), ("first", checkpoints[:1]), ("second", checkpoints[1:])):
        assert main(["predict", "--checkpoint", *map(str, chosen), "--input", str(inputs),
                     "--output", str(tmp_path / name), "--device", "cpu"]) == 0
    assert "the ensemble calls a pixel infected above probability 0.5" in capsys.readouterr().out
    for index in range(len(SIZES)):
        maps = {name: np.asarray(Image.open(tmp_path / name / f"{index}.png"), dtype=float)
                for name in ("both", "first", "second")}
        assert np.abs(maps["both"] - (maps["first"] + maps["second"]) / 2).max() <= 1.0
    # every case trained one of them: evaluate needs a split, and says the score is optimistic
    assert main(["evaluate", "--checkpoint", *map(str, checkpoints), "--data-root", str(root), "--device", "cpu"]) == 2
    assert "--split is needed: no case validated a network of this ensemble" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", *map(str, checkpoints), "--data-root", str(root), "--split", "train",
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["checkpoint"] == [str(path) for path in checkpoints]
    assert "trained a network of this ensemble" in captured.err


def test_train_without_held_out_cases_trains_on_every_case_and_keeps_the_last_epoch(
        trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = trained
    out = tmp_path / "final"
    assert main(["train", "--dataset", "covid-semiseg", "--data-root", str(root), "--out", str(out), "--quick",
                 "--epochs", "3", "--members", "1", "--device", "cpu", "--amp", "off", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "the final model: one network trained on every case" in printed and "trained on all 6 case(s)" in printed
    assert not (out / "best.pt").exists()  # it would have been chosen on slices it trained on
    stored = load_checkpoint(out / "last.pt")
    ids = [f"train/{i}" for i in range(len(SIZES))]
    assert sorted(stored["metadata"]["train_cases"]) == ids and stored["metadata"]["val_cases"] == []
    assert stored["epoch"] == 3 and stored["metadata"]["recipe"]["patience"] == 3  # nothing stops it early
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["checkpoint"] == str(out / "last.pt") and metrics["training_cases"] == 6
    assert "validation" not in metrics and metrics["epochs_run"] == 3
    # no case is held out: evaluate needs a split, and says every case trained the network
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--data-root", str(root), "--device", "cpu"]) == 2
    assert "this network trained on every case it was given" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--data-root", str(root), "--split", "train",
                 "--device", "cpu"]) == 0
    assert "of the 6 cases, 6 trained this network and 0 chose its epoch" in capsys.readouterr().err
    # train's default: two such networks, each of every case, with its own seed
    pair = tmp_path / "pair"
    assert main(["train", "--dataset", "covid-semiseg", "--data-root", str(root), "--out", str(pair), "--quick",
                 "--epochs", "2", "--device", "cpu", "--amp", "off", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "the final model: 2 networks, each trained on every case" in printed
    assert "every case trains it" in printed and "each trained on every case, at its last epoch" in printed
    members = json.loads((pair / "metrics.json").read_text(encoding="utf-8"))["members"]
    assert [member["checkpoint"] for member in members] == [str(pair / f"member-{k}" / "last.pt") for k in (0, 1)]
    stored = [load_checkpoint(member["checkpoint"]) for member in members]
    assert [checkpoint["config"]["seed"] for checkpoint in stored] == [0, 1]
    assert all(sorted(checkpoint["metadata"]["train_cases"]) == ids for checkpoint in stored)
    assert main(["evaluate", "--checkpoint", str(pair), "--data-root", str(root), "--device", "cpu"]) == 2
    assert "train's final model trains each on every case" in capsys.readouterr().err
    # holding cases out (or choosing something on them) trains one validated network instead
    for flags in (["--val-fraction", "0.2"], ["--select-threshold"], ["--patience", "2"]):
        held = tmp_path / "held" / flags[0].strip("-")
        assert main(["train", "--dataset", "covid-semiseg", "--data-root", str(root), "--out", str(held), "--quick",
                     "--epochs", "1", *flags, "--device", "cpu", "--amp", "off", "--no-progress"]) == 0
        assert "validation Dice" in capsys.readouterr().out and (held / "best.pt").is_file()
        assert len(load_checkpoint(held / "best.pt")["metadata"]["val_cases"]) == 1  # a fifth of 6 cases


def test_a_train_folder_stands_for_its_checkpoints(trained: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root, out = trained
    # one held-out network: the folder is its best.pt (same JSON as naming the file)
    by_file = ["evaluate", "--data-root", str(root), "--device", "cpu"]
    assert main([*by_file, "--checkpoint", str(out / "best.pt")]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main([*by_file, "--checkpoint", str(out)]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert from_folder["summary"] == from_file["summary"] and from_folder["checkpoint"] == str(out / "best.pt")
    # train's final model, moved after training: its member-K/last.pt files
    pair = tmp_path / "pair"
    assert main(["train", "--dataset", "covid-semiseg", "--data-root", str(root), "--out", str(pair), "--quick",
                 "--epochs", "1", "--device", "cpu", "--amp", "off",
                 "--no-progress"]) == 0
    capsys.readouterr()
    moved = pair.rename(tmp_path / "moved")
    assert main([*by_file, "--split", "train", "--checkpoint", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == [str(moved / f"member-{k}" / "last.pt") for k in (0, 1)]
    # a folder that no finished train run wrote, or whose metrics are not train's, is refused by name
    (tmp_path / "half").mkdir()
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "metrics.json").write_text("[1, 2]", encoding="utf-8")
    (moved / "member-1" / "last.pt").unlink()
    for folder, message in (("half", "is a folder without metrics.json"), ("odd", "is not the metrics.json of a 'train' run"),
                            ("moved", "its " + str(moved / "member-1" / "last.pt") + " does not exist")):
        assert main([*by_file, "--checkpoint", str(tmp_path / folder)]) == 2
        assert message in capsys.readouterr().err
