"""benchmarks/all_slices.py: its rows from hand-made units (the real-data path is run in
tests/test_nested_cv_benchmarks.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def all_slices(load_benchmark):
    return load_benchmark("all_slices")


def _unit(seed: int, fold: int, chosen: float, last: float, everything: float) -> dict:
    scores = {arm: {"tta_dice": value, "tta_infnet_mean_dice": value / 2}
              for arm, value in (("chosen", chosen), ("last", last), ("all_slices", everything))}
    return {"seed": seed, "fold": fold, "scores": scores, "wall_seconds": 10.0}


def test_rows_pair_the_last_epoch_with_the_chosen_and_all_slices_with_both(all_slices):
    numbers = all_slices.summarise([_unit(0, 0, 0.70, 0.72, 0.75), _unit(0, 1, 0.80, 0.79, 0.84)])
    chosen, last, everything = numbers["rows"]
    assert [row["arm"] for row in numbers["rows"]] == ["chosen", "last", "all_slices"]
    assert chosen["tta_dice_mean"] == pytest.approx(0.75) and chosen["tta_infnet_mean_dice_mean"] == pytest.approx(0.375)
    assert chosen["units"] == [[0, 0], [0, 1]] and "tta_dice_change_vs_control" not in chosen
    # sd of 0.70, 0.80 with ddof 1: 0.1 / sqrt(2)
    assert chosen["tta_dice_sd_over_units"] == pytest.approx(0.1 / 2 ** 0.5)
    # two units: every bootstrap mean lies between the two paired differences
    change = last["tta_dice_change_vs_control"]  # +0.02, -0.01
    assert change["mean_difference"] == pytest.approx(0.005) and change["against"] == "chosen"
    assert (change["low"], change["high"]) == pytest.approx((-0.01, 0.02))
    versus_chosen, versus_last = everything["tta_dice_change_vs_control"], everything["tta_dice_change_vs_last"]
    assert versus_chosen["mean_difference"] == pytest.approx(0.045)  # +0.05, +0.04
    assert versus_last["mean_difference"] == pytest.approx(0.04) and versus_last["against"] == "last"  # +0.03, +0.05
    assert numbers["wall_seconds"] == 20.0


def test_one_unit_has_rows_without_differences(all_slices):
    rows = all_slices.summarise([_unit(1, 3, 0.6, 0.6, 0.7)])["rows"]
    assert [row["tta_dice_sd_over_units"] for row in rows] == [0.0, 0.0, 0.0]
    assert not any(key.startswith("tta_dice_change") for row in rows for key in row)


def test_ensemble_rows_cover_only_the_units_of_seeds_above_0_and_pair_with_a_primes_ensemble(all_slices):
    plain = _unit(0, 0, 0.70, 0.72, 0.75)
    ensembled = [_unit(1, fold, chosen, chosen, chosen + 0.02) for fold, chosen in ((0, 0.60), (1, 0.80))]
    for unit, (of_chosen, of_all) in zip(ensembled, ((0.62, 0.66), (0.81, 0.84))):
        unit["scores"]["ensemble_chosen"] = {"tta_dice": of_chosen, "tta_infnet_mean_dice": 0.5}
        unit["scores"]["ensemble_all_slices"] = {"tta_dice": of_all, "tta_infnet_mean_dice": 0.5}
    rows = {row["arm"]: row for row in all_slices.summarise([plain, *ensembled])["rows"]}
    assert list(rows) == ["chosen", "last", "all_slices", "ensemble_chosen", "ensemble_all_slices"]
    assert len(rows["chosen"]["units"]) == 3 and rows["ensemble_all_slices"]["units"] == [[1, 0], [1, 1]]
    assert rows["ensemble_all_slices"]["tta_dice_mean"] == pytest.approx(0.75)
    # against A' alone on the same two units: +0.06, +0.04; against A''s ensemble: +0.04, +0.03
    assert rows["ensemble_all_slices"]["tta_dice_change_vs_control"]["mean_difference"] == pytest.approx(0.05)
    versus_ensemble = rows["ensemble_all_slices"]["tta_dice_change_vs_ensemble_chosen"]
    assert versus_ensemble["mean_difference"] == pytest.approx(0.035) and versus_ensemble["against"] == "ensemble_chosen"
    assert rows["ensemble_chosen"]["tta_dice_change_vs_control"]["mean_difference"] == pytest.approx(0.015)


def test_the_budget_row_pairs_with_the_40_slice_network_and_the_ensemble_only_where_both_ran(all_slices):
    units = [_unit(1, fold, 0.70, 0.70, everything) for fold, everything in ((0, 0.72), (1, 0.76), (2, 0.80))]
    for unit, (ensembled, budget) in zip(units, ((0.75, 0.74), (0.79, 0.76), (0.83, None))):
        unit["scores"]["ensemble_chosen"] = {"tta_dice": 0.7, "tta_infnet_mean_dice": 0.5}
        unit["scores"]["ensemble_all_slices"] = {"tta_dice": ensembled, "tta_infnet_mean_dice": 0.5}
        if budget is not None:
            unit["scores"]["budget_all_slices"] = {"tta_dice": budget, "tta_infnet_mean_dice": 0.5}
    rows = {row["arm"]: row for row in all_slices.summarise(units)["rows"]}
    assert list(rows)[-1] == "budget_all_slices" and rows["budget_all_slices"]["units"] == [[1, 0], [1, 1]]
    # the rival against the 40-slice network: +0.02, 0.00; the ensemble against the rival: +0.01, +0.03
    assert rows["budget_all_slices"]["tta_dice_change_vs_all_slices"]["mean_difference"] == pytest.approx(0.01)
    versus_budget = rows["ensemble_all_slices"]["tta_dice_change_vs_budget"]
    assert versus_budget["mean_difference"] == pytest.approx(0.02) and versus_budget["n"] == 2
    assert rows["ensemble_all_slices"]["tta_dice_change_vs_control"]["n"] == 3  # every unit against A'


def test_budget_seeds_outside_the_seeds_are_refused(all_slices, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["all_slices.py", "--seeds", "0,1", "--budget-seeds", "2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--budget-seeds must be among --seeds 0,1: 2 is not"):
        all_slices.main()
    assert not list(tmp_path.iterdir())
