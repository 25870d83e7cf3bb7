"""Mean teacher: the ramp-up's values, the consistency cost and a tiny training run."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from covidlib.coarse import Box
from covidlib.errors import InvalidInputError
from covidlib.mean_teacher import MeanTeacher, MeanTeacherConfig, consistency_loss, sigmoid_rampup
from covidlib.models import UNet2d
from covidlib.train import TrainConfig, load_checkpoint
from covidlib.transfer import SliceTraining, slice_loader


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(50, 10) == 1.0  # clipped after the ramp
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(7, 0) == 1.0
    values = [sigmoid_rampup(t, 20) for t in range(21)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_consistency_loss_is_mse_of_softmax_and_stops_teacher_gradient():
    student = torch.tensor([[[[0.0]], [[math.log(3.0)]]]], requires_grad=True)  # softmax (0.25, 0.75)
    teacher = torch.tensor([[[[0.0]], [[0.0]]]], requires_grad=True)  # softmax (0.5, 0.5)
    loss = consistency_loss(student, teacher)
    assert loss.item() == pytest.approx(0.25**2)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    assert consistency_loss(teacher, teacher).item() == 0.0


class _Patches(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int, weights: list[float]):
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 1, size, size, generator=generator)
        self.masks = torch.zeros(n, 2, size, size)
        self.masks[:, 0] = 1.0
        self.weights = weights

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "weight": torch.tensor(self.weights[i])}


def _loaders():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 1, 16, 16, generator=generator)
    masks = (images[:, 0] > 0.5).long()
    batches = [{"image": images[i:i + 2], "mask": masks[i:i + 2]} for i in (0, 2)]
    return batches, batches


class _RecordingMeanTeacher(MeanTeacher):
    """Keeps the student's weights after each optimizer step and the teacher's after its EMA update."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.students: list[dict[str, torch.Tensor]] = []
        self.teachers: list[dict[str, torch.Tensor]] = []
        self.terms: list[dict[str, float]] = []

    def after_step(self) -> None:
        self.students.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        self.terms.append(dict(self.last_terms))
        super().after_step()
        self.teachers.append({k: v.detach().clone() for k, v in self.teacher.state_dict().items()})


def test_mean_teacher_trains_keeps_teacher_as_ema_and_records_terms():
    torch.manual_seed(0)
    model = UNet2d(base_width=2, depth=2)
    config = TrainConfig(epochs=2, patience=5, amp="off", progress=False, device="cpu")
    # alpha 0.6: the warm-up decays of steps 0, 1, 2 are min(1 - 1/(t + 1), 0.6) = 0, 0.5, 0.6 (capped).
    trainer = _RecordingMeanTeacher(model, config, MeanTeacherConfig(alpha=0.6, rampup_steps=2, pseudo_batch_size=3),
                                    pseudo_patches=_Patches(5, 16, [0.9, 0.95, 0.91, 0.99, 0.88]))
    train, val = _loaders()
    history = trainer.fit(train, val)
    assert len(history) == 2 and trainer.global_step == 4
    assert set(trainer.last_terms) == {"supervised", "pseudo", "consistency", "ramp"}
    assert trainer.last_terms["ramp"] == pytest.approx(1.0)  # step 3 > ramp-up length 2
    # The EMA by hand over the first three steps, from the students s0, s1, s2 after each step:
    # t0 = s0; t1 = 0.5 t0 + 0.5 s1; t2 = 0.6 t1 + 0.4 s2 = 0.3 s0 + 0.3 s1 + 0.4 s2.
    s0, s1, s2 = trainer.students[:3]
    by_hand = [{k: s0[k] for k in s0},
               {k: 0.5 * s0[k] + 0.5 * s1[k] for k in s0},
               {k: 0.3 * s0[k] + 0.3 * s1[k] + 0.4 * s2[k] for k in s0}]
    for step, expected in enumerate(by_hand):
        for name, value in trainer.teachers[step].items():
            if value.is_floating_point():
                torch.testing.assert_close(value, expected[name], msg=f"step {step}, {name}")
            else:  # num_batches_tracked is copied from the student
                assert torch.equal(value, trainer.students[step][name]), (step, name)
    assert not torch.equal(trainer.teachers[2]["encoder.0.0.weight"], s2["encoder.0.0.weight"])  # averages, not copies
    assert trainer.validation_model() is trainer.teacher


def test_interrupted_mean_teacher_resumes_bit_for_bit(tmp_path, interrupt_after_epoch):
    """Student, teacher, step count and draws continue exactly after a kill after epoch 2 of 4,
    with augmented slices from the EpochLoader the book's loaders use."""
    rng = np.random.default_rng(0)
    arrays = {}
    for case in ("a", "b", "c"):
        lesion = np.zeros((2, 16, 16), np.uint8)
        lesion[:, 4:10, 5:11] = 1
        arrays[case] = ((rng.normal(0, 0.3, lesion.shape) + 2.0 * lesion).astype(np.float32), lesion)
    config = TrainConfig(epochs=4, patience=10, amp="off", progress=False, device="cpu", lr=1e-2)
    settings = SliceTraining(train=config, batch_size=2, augment=True)
    teacher_settings = MeanTeacherConfig(alpha=0.9, rampup_steps=3, pseudo_batch_size=2)

    def run(out_dir):
        torch.manual_seed(0)
        trainer = MeanTeacher(UNet2d(base_width=2, depth=2), config, teacher_settings,
                              pseudo_patches=_Patches(4, 16, [0.9, 1.0, 0.8, 0.95]), out_dir=str(out_dir))
        trainer.fit(slice_loader(arrays, ["a", "b"], settings, training=True, seed=0),
                    slice_loader(arrays, ["c"], settings, training=False, seed=0), resume=True)
        return trainer

    straight = run(tmp_path / "straight")
    interrupted = interrupt_after_epoch(2)
    with pytest.raises(interrupted):
        run(tmp_path / "resumed")
    np.random.seed(7)
    resumed = run(tmp_path / "resumed")
    assert resumed.global_step == straight.global_step == 4 * 2
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "resumed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["extra"]["teacher"][key], b["extra"]["teacher"][key]), key
    assert a["batch_rng"] == b["batch_rng"]


def test_mean_teacher_without_consistency_is_plain_training_on_labels_and_pseudo_labels():
    """With consistency weight 0 the teacher never reaches the student's loss: students trained beside
    a scrambled teacher, or beside one averaged with another decay (and validated), match the plain
    run bit for bit after every step, and every step reports a ramp of 0 and no consistency term.
    The ramp-up length is 0, so an ignored weight would act at full strength from step 0."""
    config = TrainConfig(epochs=2, patience=5, amp="off", progress=False, device="cpu")
    train, val = _loaders()

    def run(alpha: float, validate: str, scramble: bool) -> _RecordingMeanTeacher:
        torch.manual_seed(0)
        trainer = _RecordingMeanTeacher(UNet2d(base_width=2, depth=2), config,
                                        MeanTeacherConfig(alpha=alpha, consistency_weight=0.0, rampup_steps=0,
                                                          validate=validate, pseudo_batch_size=2),
                                        pseudo_patches=_Patches(4, 16, [1.0, 0.9, 0.8, 0.95]))
        if scramble:
            generator = torch.Generator().manual_seed(5)
            with torch.no_grad():
                for parameter in trainer.teacher.parameters():
                    parameter.copy_(3.0 * torch.randn(parameter.shape, generator=generator))
        trainer.fit(train, val)
        return trainer

    plain = run(0.99, "student", scramble=False)
    assert plain.global_step == 4 and plain.validation_model() is plain.model
    assert [sorted(terms) for terms in plain.terms] == [["pseudo", "ramp", "supervised"]] * 4
    assert [terms["ramp"] for terms in plain.terms] == [0.0] * 4
    for other in (run(0.99, "student", scramble=True), run(0.5, "teacher", scramble=False)):
        assert len(other.students) == 4 and all(terms["ramp"] == 0.0 for terms in other.terms)
        for step, (ours, theirs) in enumerate(zip(plain.students, other.students)):
            for name, value in ours.items():
                assert torch.equal(value, theirs[name]), (step, name)
    assert not torch.equal(plain.students[0]["head.weight"], plain.students[-1]["head.weight"])  # it did train


def test_pseudo_loss_is_the_similarity_weighted_mean_of_per_patch_losses():
    torch.manual_seed(0)
    model = UNet2d(base_width=2, depth=2)
    config = TrainConfig(epochs=1, amp="off", progress=False, device="cpu", loss="ce")
    patches = _Patches(3, 16, [0.5, 1.0, 0.25])
    patches.masks[1] = 0.0
    patches.masks[1, 1] = 1.0  # a different target for one patch, so per-patch losses differ
    trainer = MeanTeacher(model, config, MeanTeacherConfig(consistency_weight=0.0, validate="student", noise_std=0.0,
                                                           pseudo_batch_size=3, pseudo_weight=2.0),
                          pseudo_patches=patches)
    (train, _), _ = _loaders()
    model.eval()  # BatchNorm in eval mode: each forward is independent of the batch it is in
    total = trainer.training_loss(train)
    with torch.no_grad():
        per_patch = [trainer.loss_fn(model(patches.images[i:i + 1]), patches.masks[i:i + 1]).item() for i in range(3)]
        supervised = trainer.loss_fn(model(train["image"]), train["mask"]).item()
    expected = supervised + 2.0 * (0.5 * per_patch[0] + 1.0 * per_patch[1] + 0.25 * per_patch[2]) / 1.75
    assert per_patch[0] != pytest.approx(per_patch[1])
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_mean_teacher_config_rejects_bad_values():
    with pytest.raises(InvalidInputError, match="validate"):
        MeanTeacherConfig(validate="both")
    with pytest.raises(InvalidInputError, match="alpha"):
        MeanTeacherConfig(alpha=-0.1)


def square_lesion_cases(n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``n`` seeded 32 x 32 one-slice cases ``c0``, ``c1``, ...: noise with one bright 8 x 8 lesion
    each, as ``{case: (image, lesion mask)}``."""
    rng = np.random.default_rng(0)
    arrays = {}
    for case in range(n):
        lesion = np.zeros((1, 32, 32), np.uint8)
        y, x = rng.integers(4, 20, size=2)
        lesion[0, y:y + 8, x:x + 8] = 1
        arrays[f"c{case}"] = ((rng.normal(0, 0.3, lesion.shape) + 2.0 * lesion).astype(np.float32), lesion)
    return arrays


def test_every_arm_and_its_control_take_the_same_optimizer_steps():
    """Counted independently with a global optimizer hook: the four continuations of A' each take
    semi_epochs x batches-per-epoch steps, although the arms see pseudo-labelled patches and early
    stopping is asked for (patience 1) in the settings."""
    import dataclasses

    from covidlib.mean_teacher import ARMS, CONTROLS, semi_supervised_fold, semi_supervised_settings

    arrays = square_lesion_cases(7)
    unlabelled = [arrays[f"c{case}"][0] + np.float32(0.1) for case in range(3)]
    train, val, test = ["c0", "c1", "c2", "c3", "c4"], ["c5"], ["c6"]
    settings = semi_supervised_settings(32, len(train), base_width=2, depth=2, supervised_epochs=2, semi_epochs=3,
                                        lr=1e-2, patience=1, batch_size=2, amp="off", device="cpu", patch_size=8,
                                        labelled_patches=10, patches_per_unlabelled=4, calibrate=False)
    settings = dataclasses.replace(settings, pseudo=dataclasses.replace(settings.pseudo, top2_threshold=-1.0),
                                   semi=dataclasses.replace(settings.semi, patience=1))
    counts: dict[int, int] = {}
    held: list[torch.optim.Optimizer] = []  # kept alive: a freed optimizer's id can go to the next arm's

    def count(optimizer, args, kwargs):
        if id(optimizer) not in counts:
            held.append(optimizer)
        counts[id(optimizer)] = counts.get(id(optimizer), 0) + 1

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(count)
    try:
        result = semi_supervised_fold(arrays, train, val, test, unlabelled, settings,
                                      unlabelled_boxes=[Box(0, 1, 0, 32, 0, 32)] * 3)
    finally:
        handle.remove()
    assert result["pseudo"]["accepted"] > 0  # the arms did get unlabelled data
    steps = list(counts.values())  # in order: A', control, pseudo_labels, control_ema, mean_teacher
    assert len(steps) == len(ARMS)
    expected = 3 * 3  # 3 epochs of ceil(5 / 2) batches
    assert steps[1:] == [expected] * 4
    assert [result["steps"][arm] for arm in ARMS[1:]] == steps[1:]
    for arm, control in CONTROLS.items():
        assert result["steps"][arm] == result["steps"][control]
    assert set(result["dice"]) == set(ARMS) == set(result["infnet_mean_dice"])
    assert result["threshold"] == -1.0 and result["a_prime"]["precondition"] == 0.75


@pytest.mark.parametrize("calibrate", [True, False])
def test_pseudo_label_patches_apply_the_calibrated_threshold_or_else_the_reports_0_90(monkeypatch, calibrate):
    """The threshold reported is the one the unlabelled patches were accepted with: the calibrated
    choice (which maximises the calibration's own gain, ties to the higher threshold) when
    ``calibrate``, else the report's fixed 0.90, although the calibration is still run and reported.
    The network predicts lesion everywhere, so every slice gets a box; with quality bar 0.1 the
    calibration chooses 0.43, which accepts more patches than 0.90 does."""
    from covidlib import mean_teacher
    from covidlib.mean_teacher import pseudo_label_patches, semi_supervised_settings

    arrays = square_lesion_cases(6)
    unlabelled = [arrays[f"c{case}"][0][0] + np.float32(0.1) for case in range(3)]
    torch.manual_seed(0)
    model = UNet2d(base_width=2, depth=2)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-5.0, 5.0]))  # lesion everywhere: one box per slice
    settings = semi_supervised_settings(32, 4, base_width=2, depth=2, device="cpu", amp="off", patch_size=8,
                                        labelled_patches=10, patches_per_unlabelled=6, quality_bar=0.1,
                                        calibrate=calibrate)
    assert settings.pseudo.rule == "top2" and settings.pseudo.top2_threshold == 0.90
    applied = []
    real_pseudo_label = mean_teacher.pseudo_label

    def spy(model, dictionary, images, boxes, config, rng, **kwargs):
        labels = real_pseudo_label(model, dictionary, images, boxes, config, rng, **kwargs)
        applied.append((config, labels))
        return labels

    monkeypatch.setattr(mean_teacher, "pseudo_label", spy)  # only the unlabelled images' call goes through here
    patches, info = pseudo_label_patches(model, arrays, ["c0", "c1", "c2", "c3"], ["c4", "c5"], unlabelled, settings,
                                         rng=np.random.default_rng(0), device="cpu")
    ((config, labels),) = applied
    calibration = info["calibration"]
    gain = np.asarray(calibration["gain"])
    chosen = calibration["chosen"]
    assert chosen == calibration["thresholds"][np.flatnonzero(gain >= gain.max() - 1e-12)[-1]]
    assert chosen == pytest.approx(0.43)
    expected = chosen if calibrate else 0.90
    assert info["threshold"] == config.top2_threshold == expected
    weakest = labels.scores.min(axis=1)
    accepted = int((weakest > expected).sum())
    assert accepted != int((weakest > (0.90 if calibrate else chosen)).sum())  # the two thresholds disagree here
    assert len(patches) == info["pseudo"]["accepted"] == accepted
    np.testing.assert_array_equal(labels.assignment.accepted, weakest > expected)
    # the rules reported are graded on the same unlabelled patches: the one applied has the share training got
    rows = {row["rule"]: row["unlabelled_share"] for row in info["rules"]}
    used = "top-2 > 0.43, centred (calibrated)" if calibrate else "top-2 > 0.90, centred"
    assert rows[used] == pytest.approx(accepted / len(labels.locations))


def test_compare_arms_pairs_each_arm_with_its_control():
    """Paired differences by hand on made-up results of 2 folds x 2 seeds."""
    from covidlib.mean_teacher import ARMS, compare_arms

    results = []
    for seed in (0, 1):
        for fold in (0, 1):
            base = 0.5 + 0.1 * fold + 0.01 * seed
            dice = {"supervised": base, "control": base + 0.01, "pseudo_labels": base + 0.03,
                    "control_ema": base + 0.02, "mean_teacher": base + 0.02 - 0.01 * fold}
            results.append({"seed": seed, "fold": fold, "dice": dice, "infnet_mean_dice": dict(dice)})
    summary = compare_arms(results)
    paired = summary["dice"]["paired"]
    assert paired["pseudo_labels"]["mean_difference"] == pytest.approx(0.02)
    assert paired["pseudo_labels"]["low"] == pytest.approx(0.02) and paired["pseudo_labels"]["n"] == 4
    assert paired["mean_teacher"]["per_unit"] == pytest.approx([0.0, 0.0, -0.01, -0.01])
    control_mean = np.mean([0.51 + 0.1 * f + 0.01 * s for f in (0, 1) for s in (0, 1)])
    assert paired["pseudo_labels"]["percent"] == pytest.approx(100 * 0.02 / control_mean)
    assert summary["dice"]["arms"]["supervised"]["n"] == 4 and set(summary["dice"]["arms"]) == set(ARMS)


@pytest.mark.parametrize("dihedral", [False, True])
def test_slice_loader_adds_turns_and_mirrors_only_when_asked(dihedral):
    """``dihedral`` (the continuations of a recipe trained with turns and mirrors) adds them to the
    report's augmentation; without it the loader is chapter 05's, slice for slice."""
    from covidlib.augment import default_augmentation
    from covidlib.mean_teacher import semi_supervised_settings

    rng = np.random.default_rng(0)
    arrays = {f"c{i}": (rng.normal(size=(1, 16, 16)).astype(np.float32), np.zeros((1, 16, 16), np.uint8))
              for i in range(3)}
    settings = semi_supervised_settings(16, 3, batch_size=2, dihedral=dihedral)
    loader = slice_loader(arrays, list(arrays), settings.supervised, training=True, seed=0, dihedral=settings.dihedral)
    assert loader.loader.dataset.transform == default_augmentation(dihedral=dihedral)
    if not dihedral:
        plain = slice_loader(arrays, list(arrays), settings.supervised, training=True, seed=0)
        for ours, theirs in zip(loader, plain):
            assert torch.equal(ours["image"], theirs["image"])


def test_pseudo_labelled_batches_leave_batch_norm_running_statistics_to_the_labelled_ones():
    """One step with a batch norm on the input: its running mean moves by momentum 0.1 towards the
    labelled batch's mean only, although the pseudo-labelled patches are far brighter (+10)."""
    from covidlib.mean_teacher import frozen_running_statistics

    torch.manual_seed(0)
    network = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, kernel_size=1))
    images = torch.randn(2, 1, 8, 8)
    labelled = [{"image": images[i], "mask": (images[i, 0] > 0).long()} for i in range(2)]

    class Bright(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return {"image": torch.full((1, 8, 8), 10.0 + index), "mask": torch.stack([torch.zeros(8, 8), torch.ones(8, 8)]),
                    "weight": torch.tensor(1.0)}

    trainer = MeanTeacher(network, TrainConfig(epochs=1, lr=1e-3, device="cpu", amp="off"),
                          MeanTeacherConfig(consistency_weight=0.0, noise_std=0.0, validate="student",
                                            pseudo_batch_size=2), pseudo_patches=Bright())
    trainer.train_step(torch.utils.data.default_collate(labelled))
    assert "pseudo" in trainer.last_terms
    np.testing.assert_allclose(trainer.model[0].running_mean.item(), 0.1 * images.mean().item(), rtol=1e-5)
    layer = nn.BatchNorm1d(3)
    with frozen_running_statistics(layer):
        layer(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) + 5)
    assert torch.equal(layer.running_mean, torch.zeros(3)) and layer.momentum == 0.1


def test_mean_teacher_refuses_a_second_moving_average():
    with pytest.raises(InvalidInputError, match="ema_decay must be 0"):
        MeanTeacher(UNet2d(base_width=2, depth=2), TrainConfig(ema_decay=0.9, progress=False, device="cpu"))


def test_paired_rows_format_by_hand_and_say_n_a_for_a_zero_control():
    """A control whose mean Dice is 0 has no percent change: the row says so instead of crashing."""
    from covidlib.mean_teacher import compare_arms, paired_rows

    results = []
    for seed in (0, 1):
        for fold in (0, 1):
            dice = {"supervised": 0.0, "control": 0.0, "pseudo_labels": 0.1 + 0.1 * fold,
                    "control_ema": 0.5, "mean_teacher": 0.52}
            results.append({"seed": seed, "fold": fold, "dice": dice, "infnet_mean_dice": dict(dice)})
    summary = compare_arms(results, metrics=("dice",))
    assert summary["dice"]["paired"]["pseudo_labels"]["percent"] is None
    rows = {row[0]: row for row in paired_rows(summary)}
    zero = rows["+ pseudo-labels − control"]
    assert zero[1] == "Dice at 0.5" and zero[3] == "n/a (control mean 0)" and zero[4] == "4"
    assert zero[2].startswith("+0.150 [")  # differences 0.1, 0.2, 0.1, 0.2
    # a constant difference of 0.02 on a control of 0.5: +0.020 [+0.020, +0.020], 4 % [4, 4]
    assert rows["+ pseudo-labels + mean teacher − control"][2:] == ("+0.020 [+0.020, +0.020]", "+4.0 % [+4.0, +4.0]", "4")


def test_arm_rows_by_hand_say_one_seed_when_there_is_no_spread_over_seeds():
    from covidlib.mean_teacher import ARM_LABELS, ARMS, arm_rows, compare_arms

    def results(seeds):
        return [{"seed": seed, "fold": fold, "dice": {arm: 0.5 + 0.1 * fold + 0.01 * seed for arm in ARMS},
                 "infnet_mean_dice": {arm: 0.4 for arm in ARMS}} for seed in seeds for fold in (0, 1)]

    (first, *_) = arm_rows(compare_arms(results([0])))
    # folds 0.5 and 0.6: mean 0.55, sample sd 0.0707; one seed has no spread over seeds
    assert first == (ARM_LABELS[ARMS[0]], "0.550 ± 0.071", "one seed", "0.400 ± 0.000")
    (first, *_) = arm_rows(compare_arms(results([0, 1])))
    assert first[2] == "0.007"  # seed means 0.55 and 0.56: sample sd 0.00707


def test_run_semi_cv_continues_from_stored_folds_and_recomputes_other_code(tmp_path, monkeypatch):
    """Stored (seed, fold) results are reused; one written by other code is recomputed. The fold
    itself is a stand-in here (what is tested is the bookkeeping around it)."""
    import json

    from covidlib import mean_teacher

    rng = np.random.default_rng(0)
    arrays = {f"c{i}": (rng.normal(size=(1, 8, 8)).astype(np.float32), (rng.random((1, 8, 8)) > 0.7).astype(np.uint8))
              for i in range(6)}
    unlabelled = [rng.normal(size=(8, 8)).astype(np.float32)]
    calls = []

    def fake_fold(arrays, train, val, test, unlabelled, settings, *, native=None, initial_state=None):
        calls.append(tuple(test))
        return {"dice": {"score": len(calls) / 10}}

    monkeypatch.setattr(mean_teacher, "semi_supervised_fold", fake_fold)

    def run():
        return mean_teacher.run_semi_cv(arrays, unlabelled, 16, {"device": "cpu"}, tmp_path, folds=3, seeds=(0, 1))

    first = run()
    assert len(calls) == 6 and [(r["seed"], r["fold"]) for r in first] == [(s, k) for s in (0, 1) for k in range(3)]
    files = sorted((tmp_path).glob("semi-*/seed*_fold*.json"))
    assert len(files) == 6

    def refuse(*args, **kwargs):
        raise AssertionError("a stored fold was recomputed")

    monkeypatch.setattr(mean_teacher, "semi_supervised_fold", refuse)
    assert run() == first  # everything from disk

    stale = next(f for f in files if f.name == "seed1_fold2.json")
    stored = json.loads(stale.read_text(encoding="utf-8"))
    stored["code"] = {"covidlib/mean_teacher.py": "0" * 16}  # as if written by other code
    stale.write_text(json.dumps(stored), encoding="utf-8")
    monkeypatch.setattr(mean_teacher, "semi_supervised_fold", fake_fold)
    again = run()
    assert len(calls) == 7  # only the tampered fold ran again
    assert again[:5] == first[:5] and again[5]["dice"] == {"score": 0.7} and again[5]["test"] == first[5]["test"]
    assert json.loads(stale.read_text(encoding="utf-8"))["code"] == first[5]["code"]
    # other options are another key: a fresh folder, every fold computed
    mean_teacher.run_semi_cv(arrays, unlabelled, 16, {"device": "cpu", "lr": 5e-4}, tmp_path, folds=3, seeds=(0,))
    assert len(calls) == 10 and len(list(tmp_path.glob("semi-*"))) == 2
