"""benchmarks/semi_student.py: the student's training slices and the paired difference to A',
against hand-built inputs."""

from __future__ import annotations

import numpy as np
import pytest

from covidlib.errors import InvalidInputError
from covidlib.inference import PreparedSlices


@pytest.fixture(scope="module")
def semi_student(load_benchmark):
    return load_benchmark("semi_student")


def _prepared(n_labelled: int, n_unlabelled: int) -> PreparedSlices:
    labelled = {f"case{i}": (np.full((1, 4, 4), i, np.float32), np.zeros((1, 4, 4), np.uint8)) for i in range(n_labelled)}
    unlabelled = [np.full((1, 4, 4), 100 + i, np.float32) for i in range(n_unlabelled)]
    return PreparedSlices(labelled=labelled, unlabelled=unlabelled, unlabelled_ids=[f"u{i}" for i in range(n_unlabelled)])


def test_labelled_slices_are_repeated_to_the_asked_share_and_pseudo_masks_follow_their_slices(semi_student):
    prepared = _prepared(n_labelled=3, n_unlabelled=12)
    masks = np.zeros((12, 4, 4), bool)
    masks[5, 1, 2] = True
    slices, ids = semi_student.student_slices(prepared, ["case0", "case2"], masks, labelled_share=0.5)
    # 12 pseudo-labelled slices, 2 labelled: 6 copies of each labelled one make half the draws
    labelled = [i for i in ids if not i.startswith("pseudo-")]
    assert len(labelled) == 12 and len(ids) == 24 and len(set(ids)) == 24
    assert {i.split("~")[0] for i in labelled} == {"case0", "case2"}
    assert slices.labelled["case2~3"][0] is prepared.labelled["case2"][0]
    image, mask = slices.labelled["pseudo-u5"]
    assert image[0, 0, 0] == 105 and mask.shape == (1, 4, 4) and mask.dtype == np.uint8
    assert mask.sum() == 1 and mask[0, 1, 2] == 1 and slices.labelled["pseudo-u4"][1].sum() == 0
    # a quarter labelled: 1 / 3 * 12 / 3 = 1.33 copies each, rounded to 1; a tiny share still keeps one copy
    _, ids = semi_student.student_slices(prepared, ["case0", "case1", "case2"], masks, labelled_share=0.25)
    assert sum(not i.startswith("pseudo-") for i in ids) == 3
    _, ids = semi_student.student_slices(prepared, ["case1"], masks, labelled_share=0.01)
    assert [i for i in ids if not i.startswith("pseudo-")] == ["case1~0"]

def test_bad_share_or_mask_count_is_refused(semi_student):
    prepared = _prepared(2, 4)
    with pytest.raises(InvalidInputError, match="labelled-share"):
        semi_student.student_slices(prepared, ["case0"], np.zeros((4, 4, 4), bool), labelled_share=1.0)
    with pytest.raises(InvalidInputError, match="3 pseudo-masks for 4"):
        semi_student.student_slices(prepared, ["case0"], np.zeros((3, 4, 4), bool), labelled_share=0.5)


def test_steps_per_epoch_counts_the_last_partial_batch(semi_student):
    assert semi_student.steps_per_epoch(32, 8) == 4 and semi_student.steps_per_epoch(33, 8) == 5


def _unit(fold: int, a_prime: float, student: float) -> dict:
    return {"seed": 0, "fold": fold, "a_prime_val_dice": 0.8, "pseudo_slices": {"foreground_share": 0.1},
            "scores": {"supervised": {"tta_dice": a_prime, "tta_infnet_mean_dice": a_prime - 0.1},
                       "student": {"tta_dice": student, "tta_infnet_mean_dice": student - 0.1}},
            "best_epoch": {"supervised": 10, "student": 20}, "seconds": {"pseudo_labelling": 1.0, "student": 5.0}}


def test_summary_holds_means_and_the_students_paired_difference(semi_student):
    summary = semi_student.summarise([_unit(0, 0.70, 0.74), _unit(1, 0.80, 0.82)])
    supervised, student = summary["rows"]
    np.testing.assert_allclose(supervised["tta_dice_mean"], 0.75)
    np.testing.assert_allclose(student["tta_infnet_mean_dice_mean"], 0.68)
    np.testing.assert_allclose(student["tta_dice_sd_over_units"], np.std([0.74, 0.82], ddof=1))
    change = student["tta_dice_change_vs_control"]
    np.testing.assert_allclose(change["mean_difference"], 0.03)
    assert change["against"] == "supervised" and "tta_dice_change_vs_control" not in supervised
    assert student["best_epoch"] == [20, 20] and summary["seconds"] == {"pseudo_labelling": 2.0, "student": 10.0}
