"""Weight averaging: the EMA's warm-up and update by hand."""

import pytest
import torch
from torch import nn

from covidlib.averaging import ema_alpha, ema_update
from covidlib.errors import InvalidInputError


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    student(torch.randn(5, 3))  # moves the student's BatchNorm running statistics
    return teacher, student


def test_ema_alpha_warm_up_rule():
    assert ema_alpha(0.99, 0) == 0.0
    assert ema_alpha(0.99, 1) == 0.5
    assert ema_alpha(0.99, 3) == 0.75
    assert ema_alpha(0.99, 99) == 0.99  # 1 - 1/100 == 0.99
    assert ema_alpha(0.99, 10_000) == 0.99
    with pytest.raises(InvalidInputError):
        ema_alpha(1.5, 0)


@pytest.mark.parametrize("step, expected_alpha", [(0, 0.0), (1, 0.5), (4, 0.8), (500, 0.9)])
def test_ema_update_matches_formula_by_hand(step, expected_alpha):
    teacher, student = _pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    decay = ema_update(teacher, student, 0.9, step)
    assert decay == pytest.approx(expected_alpha)
    after, source = teacher.state_dict(), student.state_dict()
    for name, value in after.items():
        if value.is_floating_point():
            expected = expected_alpha * before[name] + (1 - expected_alpha) * source[name]
            torch.testing.assert_close(value, expected)
        else:
            assert torch.equal(value, source[name])  # num_batches_tracked is copied
    # one number checked entirely by hand
    w_t, w_s = before["0.weight"][0, 0].item(), source["0.weight"][0, 0].item()
    assert after["0.weight"][0, 0].item() == pytest.approx(expected_alpha * w_t + (1 - expected_alpha) * w_s, abs=1e-6)


def test_ema_update_at_step_zero_copies_the_student():
    teacher, student = _pair()
    ema_update(teacher, student, 0.99, 0)
    for a, b in zip(teacher.state_dict().values(), student.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_ema_update_rejects_different_networks():
    with pytest.raises(InvalidInputError, match="different parameter names"):
        ema_update(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2)), 0.9, 3)


