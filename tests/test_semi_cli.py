"""``python -m covidlib semi``: one fold of supervised A' vs + pseudo-labels vs + mean teacher,
run in-process through main([...]) on a tiny synthetic COVID-SemiSeg folder."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import write_semiseg
from test_datasets import REAL_SEMISEG

from covidlib import mean_teacher
from covidlib import train as train_module
from covidlib.__main__ import main
from covidlib.data import fit_slice, kfold_volumes
from covidlib.datasets import get_dataset
from covidlib.errors import InvalidInputError
from covidlib.inference import load_model, prepare_slices
from covidlib.mean_teacher import ARMS, semi_supervised_settings
from covidlib.metrics import THRESHOLD_GRID
from covidlib.preprocess import normalise_image

SIDE = 32  # the images are as large as the network input, so evaluate sees exactly what training saw
N_LABELLED, N_UNLABELLED = 12, 5
#: The metadata keys ``python -m covidlib train`` writes into a checkpoint.
TRAIN_METADATA_KEYS = {"model", "model_options", "image_size", "dataset", "split", "train_cases", "val_cases",
                       "folds", "fold", "augment", "mixup_alpha", "preparation"}
UNLABELLED_NAME = "Data-1_coronacases_org_001_{}"


def _disc_slice(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A grey 8-bit slice (SIDE, SIDE) with one bright disc "lesion", and its {0, 255} mask."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    radius = rng.uniform(4, 7)
    cy, cx = rng.uniform(radius + 2, SIDE - radius - 2, size=2)
    mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2).astype(np.uint8) * 255
    image = np.clip(70 + 0.45 * mask + rng.normal(0, 8, (SIDE, SIDE)), 0, 255)
    return image, mask


def make_semiseg(root: Path) -> Path:
    """COVID-SemiSeg layout: N_LABELLED labelled slices (JPG + PNG mask) and N_UNLABELLED unlabelled ones."""
    rng = np.random.default_rng(7)
    labelled = {str(index): _disc_slice(rng) for index in range(N_LABELLED)}
    unlabelled = {UNLABELLED_NAME.format(index): _disc_slice(rng)[0] for index in range(N_UNLABELLED)}
    return write_semiseg(root, labelled, unlabelled=unlabelled)


TINY = ["--folds", "3", "--fold", "1", "--image-size", str(SIDE), "--base-width", "4", "--depth", "2",
        "--epochs", "6", "--semi-epochs", "3", "--lr", "5e-3", "--batch-size", "4", "--device", "cpu", "--amp", "off",
        "--no-progress"]


@pytest.fixture(scope="module")
def semi_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict[str, torch.nn.Module]]:
    """(data root, output folder, printed summary, every arm's network) of one tiny ``semi`` run shared
    by the tests below; the networks are caught on their way out of the fold (only one is saved)."""
    root = make_semiseg(tmp_path_factory.mktemp("semiseg"))
    out = tmp_path_factory.mktemp("semi")
    printed = io.StringIO()
    models: dict[str, torch.nn.Module] = {}
    real_fold = mean_teacher.semi_supervised_fold

    def keep_models(*args, **kwargs):
        result = real_fold(*args, **kwargs)
        models.update(result["models"])
        return result

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(mean_teacher, "semi_supervised_fold", keep_models)
        code = main(["semi", "--data-root", str(root), "--out", str(out), "--unlabelled", "3", *TINY])
    assert code == 0 and set(models) == set(ARMS)
    return root, out, json.loads(printed.getvalue().strip().splitlines()[-1]), models


def test_semi_writes_three_arms_and_pseudo_label_counts(semi_run: tuple[Path, Path, dict, dict]) -> None:
    root, out, printed, _ = semi_run
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    ids = get_dataset("covid-semiseg", root).case_ids("train")
    test_ids = kfold_volumes(ids, 3, 0)[1][1]  # fold 1 of 3, computed here independently
    assert set(metrics["dice"]) == set(ARMS) == set(printed["dice"])
    for arm in ARMS:
        assert 0.0 <= metrics["dice"][arm] <= 1.0
        assert sorted(metrics["per_case"][arm]) == sorted(test_ids)
        # the reported Dice is the mean over the held-out slices
        assert metrics["dice"][arm] == pytest.approx(np.mean(list(metrics["per_case"][arm].values())))
        assert printed["dice"][arm] == pytest.approx(metrics["dice"][arm], abs=5e-5)
    settings = metrics["settings"]
    assert sorted(settings["test_cases"]) == sorted(test_ids)
    parts = [settings["train_cases"], settings["selection_cases"], settings["test_cases"]]
    assert sorted(sum(parts, [])) == sorted(ids)  # a partition of the labelled slices
    assert len(settings["selection_cases"]) == (N_LABELLED - len(test_ids)) // 5
    pseudo = metrics["pseudo"]
    assert pseudo["unlabelled_images"] == 3 == printed["unlabelled"]
    assert 1 <= pseudo["images_with_box"] <= 3  # the discs give A' something to box
    assert 0 <= pseudo["accepted"] <= pseudo["patches"] <= 32 * pseudo["images_with_box"]
    assert set(metrics["seconds"]) >= {"loading", "supervised", "pseudo_labelling", *ARMS[1:]}
    assert settings["image_size"] == SIDE and settings["base_width"] == 4 and settings["depth"] == 2
    assert settings["pseudo"]["patch_size"] == 8 and settings["pseudo"]["rule"] == "top2"


def test_semi_applies_the_calibrated_threshold(semi_run: tuple[Path, Path, dict, dict]) -> None:
    """The threshold reported, printed and stored with the checkpoint is the calibration's choice (the
    grid value of largest gain, ties to the higher), not the report's 0.90 that the run started from;
    the calibrated rule's share of the unlabelled patches is the share the arms trained on."""
    _, out, printed, _ = semi_run
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    calibration = metrics["calibration"]
    assert calibration is not None and metrics["settings"]["calibrate"] is True
    gain = np.asarray(calibration["gain"])
    chosen = calibration["thresholds"][np.flatnonzero(gain >= gain.max() - 1e-12)[-1]]
    assert metrics["threshold"] == calibration["chosen"] == chosen == printed["threshold"]
    assert metrics["settings"]["pseudo"]["top2_threshold"] == 0.90 != chosen  # the calibration moved it
    assert load_model(out / "best.pt")[1]["semi_supervised"]["threshold"] == chosen
    calibrated_rule = metrics["rules"][-1]
    assert calibrated_rule["rule"] == f"top-2 > {chosen:.2f}, centred (calibrated)"
    pseudo = metrics["pseudo"]
    assert calibrated_rule["unlabelled_share"] == pytest.approx(pseudo["accepted"] / pseudo["patches"])


def test_semi_no_calibrate_keeps_the_reports_0_90(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--no-calibrate`` hands the fold the report's fixed top-2 threshold 0.90 with calibration off
    (what the fold does with them: test_mean_teacher's pseudo_label_patches test); stopped there,
    before any training."""

    class Stop(Exception):
        pass

    handed = []

    def stop(arrays, train, val, test, unlabelled, settings, **kwargs):
        handed.append(settings)
        raise Stop

    monkeypatch.setattr(mean_teacher, "semi_supervised_fold", stop)
    root = make_semiseg(tmp_path / "data")
    for flags, calibrate in (([], True), (["--no-calibrate"], False)):
        with pytest.raises(Stop):
            main(["semi", "--data-root", str(root), "--out", str(tmp_path / "run"), "--unlabelled", "3", *TINY, *flags])
        assert handed[-1].calibrate is calibrate
        assert handed[-1].pseudo.rule == "top2" and handed[-1].pseudo.top2_threshold == 0.90


def test_semi_checkpoint_is_loaded_by_evaluate_and_predict(semi_run: tuple[Path, Path, dict, dict], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root, out, _, _ = semi_run
    model, metadata = load_model(out / "best.pt")
    assert set(metadata) >= TRAIN_METADATA_KEYS
    assert metadata["model"] == "unet" and metadata["image_size"] == SIDE
    assert metadata["model_options"] == {"in_channels": 1, "num_classes": 2, "base_width": 4, "depth": 2}
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert sorted(metadata["val_cases"]) == sorted(metrics["per_case"]["mean_teacher"])

    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(root), "--device", "cpu",
                 "--per-case"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    # evaluate's own pipeline (read, z-score, predict, threshold) reproduces the mean-teacher arm's Dice
    for case, dice in metrics["per_case"]["mean_teacher"].items():
        assert evaluation["per_case"][case]["dice"] == pytest.approx(dice, abs=1e-6)

    unlabelled = root / "TrainingSet" / "LungInfection-Train" / "Pseudo-label" / "Imgs"
    assert main(["predict", "--checkpoint", str(out / "best.pt"), "--input", str(unlabelled),
                 "--output", str(tmp_path / "maps"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "maps").glob("*.png"))) == N_UNLABELLED


def test_every_arms_dice_is_reproduced_by_evaluate(semi_run: tuple[Path, Path, dict, dict], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Each arm's network from the same run, saved in best.pt's place, is scored by ``evaluate``'s own
    pipeline (read, z-score, predict, threshold) as metrics.json says, case by case; the saved
    best.pt is the mean-teacher arm's network."""
    root, out, _, models = semi_run
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    saved = train_module.load_checkpoint(out / "best.pt")
    for name, value in models["mean_teacher"].state_dict().items():
        assert torch.equal(saved["model"][name], value.cpu()), name
    assert len({tuple(metrics["per_case"][arm].values()) for arm in ARMS}) > 1  # the arms do score differently
    for arm in ARMS:
        path = tmp_path / f"{arm}.pt"
        state = {k: v.detach().cpu() for k, v in models[arm].state_dict().items()}
        train_module.save_checkpoint({**saved, "model": state}, path)
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(path), "--data-root", str(root), "--device", "cpu",
                     "--per-case"]) == 0
        evaluation = json.loads(capsys.readouterr().out)
        assert sorted(evaluation["per_case"]) == sorted(metrics["per_case"][arm])
        for case, dice in metrics["per_case"][arm].items():
            assert evaluation["per_case"][case]["dice"] == pytest.approx(dice, abs=1e-6), (arm, case)


def test_load_matches_per_image_zscore_and_resize(tmp_path: Path) -> None:
    """A second route to the same arrays: normalise_image then fit_slice, on images resized 32 -> 24."""
    dataset = get_dataset("covid-semiseg", make_semiseg(tmp_path))
    prepared = prepare_slices(dataset, 24, n_unlabelled=2)
    arrays, unlabelled = prepared.labelled, prepared.unlabelled
    assert prepared.split == "train"
    assert prepared.steps == ["8-bit grey levels as stored", "z-score per slice",
                              "resize to 24 x 24 px (images bilinear, masks nearest)"]
    assert list(arrays) == [f"train/{i}" for i in range(N_LABELLED)]
    for case_id, (image, mask) in arrays.items():
        case = dataset.load(case_id)
        expected_image, expected_mask = fit_slice(normalise_image(case.image.array[0]), case.lesion_mask[0], (24, 24), "resize")
        np.testing.assert_allclose(image[0], expected_image, atol=1e-6)
        np.testing.assert_array_equal(mask[0], expected_mask)
        assert image.shape == (1, 24, 24) and image.dtype == np.float32 and mask.dtype == np.uint8
    # two of five unlabelled slices at an even stride: the 1st and the 3rd
    for image, index in zip(unlabelled, (0, 2), strict=True):
        pixels = dataset.load(f"unlabelled/{UNLABELLED_NAME.format(index)}").image.array[0]
        expected = fit_slice(normalise_image(pixels), np.zeros(pixels.shape, np.uint8), (24, 24), "resize")[0]
        np.testing.assert_allclose(image[0], expected, atol=1e-6)


def test_settings_scale_the_report_patch_and_margins() -> None:
    # 128 px is a quarter of 512: patch 68/4 = 17 -> 16 (a multiple of 4), margins 10/4 = 2.5 -> 2, 15/4 = 3.75 -> 4
    settings = semi_supervised_settings(128, 32, batch_size=8, lr=1e-3, seed=3)
    assert (settings.pseudo.patch_size, settings.pseudo.labelled_margin, settings.pseudo.unlabelled_margin) == (16, 2, 4)
    assert settings.mean_teacher.rampup_steps == 5 * 4  # five epochs of ceil(32 / 8) steps
    assert settings.semi.lr == pytest.approx(5e-4) and settings.supervised.train.lr == pytest.approx(1e-3)
    assert settings.supervised.train.seed == settings.semi.seed == 3
    capped = semi_supervised_settings(128, 32, batch_size=8, max_steps_per_epoch=2)
    assert capped.mean_teacher.rampup_steps == 5 * 2


def test_bad_input_names_the_dataset_or_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidInputError, match=r"'phantom' has no 'unlabelled' split"):
        prepare_slices(get_dataset("phantom", n=2, shape=(4, 32, 32)), 32, n_unlabelled=None)
    assert main(["semi", "--dataset", "phantom", "--out", str(tmp_path / "run"), "--quick"]) == 2
    assert "'phantom' has no 'unlabelled' split" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    root = make_semiseg(tmp_path / "data")
    dataset = get_dataset("covid-semiseg", root)
    for count in (-1, N_UNLABELLED + 1):
        with pytest.raises(InvalidInputError, match=r"n_unlabelled must be in \[1, 5\]"):
            prepare_slices(dataset, 32, n_unlabelled=count)
    assert prepare_slices(dataset, 32, n_unlabelled=0).unlabelled == []  # 0: labelled slices only
    with pytest.raises(InvalidInputError, match="image_size"):
        semi_supervised_settings(8, 10)
    assert main(["semi", "--data-root", str(root), "--out", str(tmp_path / "run"), "--image-size", "8"]) == 2
    assert "--image-size must be an integer of at least 16, got 8" in capsys.readouterr().err
    assert main(["semi", "--data-root", str(root), "--out", str(tmp_path / "run"), "--unlabelled", "0"]) == 2
    assert "--unlabelled must be at least 1" in capsys.readouterr().err
    assert main(["semi", "--data-root", str(root), "--out", str(tmp_path / "run"), "--folds", "3", "--fold", "3"]) == 2
    assert "--fold must be in [0, 2]" in capsys.readouterr().err

    for path in (root / "TrainingSet" / "LungInfection-Train" / "Pseudo-label" / "Imgs").iterdir():
        path.unlink()
    with pytest.raises(InvalidInputError, match=r"'unlabelled' split of dataset 'covid-semiseg' is empty"):
        prepare_slices(get_dataset("covid-semiseg", root), 32, n_unlabelled=None)


@pytest.mark.parametrize(("labelled", "flags", "message"), [
    (N_LABELLED, ["--folds", "13"], "--folds 13: split 'train' of dataset 'covid-semiseg' has 12 labelled case(s); "
                                    "--folds must be in [2, 12]"),
    # 3 of 12 cases tested leave 9: 8 may select the epoch, the 9th trains
    (N_LABELLED, ["--folds", "4", "--inner-val", "9"], "--inner-val 9: with --folds 4 of the 12 labelled cases, a fold "
                                                       "leaves 9 non-test cases and none would train; --inner-val must be at most 8"),
    # 2 folds of 3 cases: the larger test fold leaves 1 case, which cannot both train and select
    (3, ["--folds", "2"], "--folds 2: split 'train' of dataset 'covid-semiseg' has 3 labelled case(s); --folds must be in [3, 3]"),
    (3, ["--folds", "3", "--inner-val", "2"], "--inner-val must be at most 1"),
    (2, ["--folds", "2"], "has 2 labelled case(s); semi needs at least 3"),
])
def test_folds_and_inner_val_too_large_for_the_labelled_cases_fail_before_training(
        labelled: int, flags: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = make_semiseg(tmp_path / "data")
    labels = root / "TrainingSet" / "LungInfection-Train" / "Doctor-label"
    for index in range(labelled, N_LABELLED):
        (labels / "Imgs" / f"{index}.jpg").unlink()
        (labels / "GT" / f"{index}.png").unlink()
    monkeypatch.setattr(mean_teacher, "run", lambda args: pytest.fail("the library's semi ran"))
    assert main(["semi", "--data-root", str(root), "--out", str(tmp_path / "run"), "--fold", "0", *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and message in error
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not REAL_SEMISEG.is_dir(), reason="real COVID-SemiSeg data not present")
def test_semi_quick_on_real_covid_semiseg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["semi", "--data-root", str(REAL_SEMISEG), "--out", str(out), "--quick", "--unlabelled", "16",
                 "--device", "cpu", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert all(0.0 <= metrics["dice"][arm] <= 1.0 for arm in ARMS)
    assert all(len(metrics["per_case"][arm]) == 10 for arm in ARMS)  # fold 0 of 5 over 50 slices
    assert metrics["pseudo"]["unlabelled_images"] == 16
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(REAL_SEMISEG),
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["dice"]["n"] == 10


# --- python -m covidlib train --semi: a final semi-supervised model ----------------------------

TRAIN_TINY = ["--image-size", str(SIDE), "--base-width", "4", "--depth", "2", "--epochs", "4", "--semi-epochs", "2",
              "--lr", "5e-3", "--batch-size", "4", "--device", "cpu", "--amp", "off", "--no-progress", "--no-tta"]


@pytest.fixture(scope="module")
def final_semi(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(data root, output folder, what it printed) of one tiny ``train --semi both`` run on every labelled slice."""
    root = make_semiseg(tmp_path_factory.mktemp("semiseg-final"))
    out = tmp_path_factory.mktemp("final")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", "--data-root", str(root), "--out", str(out), "--semi", "both", "--unlabelled", "4",
                     "--select-threshold", *TRAIN_TINY]) == 0
    return root, out, printed.getvalue()


def test_train_semi_keeps_the_supervised_model_and_writes_a_loadable_final_one(
        final_semi: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    root, out, printed = final_semi
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    ids = get_dataset("covid-semiseg", root).case_ids("train")
    model, metadata = load_model(out / "best.pt")
    supervised, supervised_metadata = load_model(out / "supervised" / "best.pt")
    # no test fold: every labelled slice trains or selects
    assert sorted(metadata["train_cases"] + metadata["val_cases"]) == sorted(ids)
    assert metadata["semi_supervised"]["method"] == "both" and metadata["semi_supervised"]["unlabelled_cases"] == 4
    assert supervised_metadata["val_cases"] == metadata["val_cases"]
    # each network keeps the threshold chosen for it on the validation slices
    assert metadata["probability_threshold"] == metrics["probability_threshold"] in THRESHOLD_GRID
    assert supervised_metadata["probability_threshold"] in THRESHOLD_GRID
    # the continuation changed the supervised network's weights
    assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in
               zip(model.state_dict().values(), supervised.state_dict().values()))
    semi = metrics["semi_supervised"]
    assert semi["method"] == "both" and semi["pseudo"]["unlabelled_images"] == 4
    assert metrics["epochs_run"] == 2 and 1 <= metrics["best_epoch"] <= 2
    # the user is told how A' scored on the same validation slices, and when it scored higher
    before = semi["supervised_validation"]["dice"]["mean"]
    assert f"validation Dice {before:.4f} on the same cases" in printed
    assert ("A′ may be the better model" in printed) == (metrics["validation"]["dice"]["mean"] < before)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(root), "--device", "cpu",
                 "--per-case"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    for case, row in metrics["per_case"].items():  # evaluate reproduces the final model's validation scores
        assert evaluation["per_case"][case]["dice"] == pytest.approx(row["dice"], abs=1e-6)


def supervised_flags(flags: list[str]) -> list[str]:
    """``flags`` less ``--semi-epochs N``, which ``train`` refuses without ``--semi``."""
    at = flags.index("--semi-epochs")
    return flags[:at] + flags[at + 2:]


def test_train_resume_without_semi_never_continues_the_semi_supervised_network(
        final_semi: tuple[Path, Path, str], tmp_path: Path) -> None:
    root, semi_out, _ = final_semi
    out = tmp_path / "run"
    shutil.copytree(semi_out, out)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--data-root", str(root), "--out", str(out), "--resume", "--select-threshold",
                     *supervised_flags(TRAIN_TINY)]) == 0
    # trained from scratch with the supervised stage's settings and seed: the supervised stage's network
    resumed, supervised = load_model(out / "best.pt")[0], load_model(out / "supervised" / "best.pt")[0]
    for name, value in supervised.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


@pytest.mark.parametrize(("method", "pseudo_weight", "consistency_weight", "validate", "label"),
                         [("pseudo-labels", 1.0, 0.0, "student", "pseudo-label epochs"),
                          ("mean-teacher", 0.0, 1.0, "teacher", "mean-teacher epochs"),
                          ("both", 1.0, 1.0, "teacher", "pseudo-label + mean-teacher epochs")])
def test_each_semi_method_trains_the_arm_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
                                                  pseudo_weight: float, consistency_weight: float, validate: str,
                                                  label: str) -> None:
    trained = []
    real_init = mean_teacher.MeanTeacher.__init__

    def spy(self, model, config=None, settings=None, **kwargs):
        trained.append((settings, kwargs.get("pseudo_patches")))
        real_init(self, model, config, settings, **kwargs)

    bars = []
    real_tqdm = train_module.tqdm

    def named(*args, **kwargs):
        bars.append(kwargs.get("desc"))
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(mean_teacher.MeanTeacher, "__init__", spy)
    monkeypatch.setattr(train_module, "tqdm", named)
    root = make_semiseg(tmp_path / "data")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--data-root", str(root), "--out", str(tmp_path / "run"), "--semi", method,
                     "--unlabelled", "2", *TRAIN_TINY]) == 0
    ((settings, patches),) = trained  # one network continued, the one the method names
    assert patches is not None and len(patches) > 0
    assert (settings.pseudo_weight, settings.consistency_weight, settings.validate) == (
        pseudo_weight, consistency_weight, validate)
    assert bars == ["supervised epochs", label]  # the two stages' progress bars are told apart


def test_train_semi_without_unlabelled_images_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "phantom", "--out", str(tmp_path / "run"), "--quick", "--semi", "both"]) == 2
    assert "'phantom' has no 'unlabelled' split" in capsys.readouterr().err
    root = make_semiseg(tmp_path / "data")
    assert main(["train", "--data-root", str(root), "--out", str(tmp_path / "run"), "--semi", "both",
                 "--unlabelled-split", "extra", *TRAIN_TINY]) == 2
    assert "no 'extra' split" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
