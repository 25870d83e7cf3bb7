"""Published numbers: well-formed quotations (values in [0, 1], every one with a source)."""

from __future__ import annotations

import pytest

from covidlib.published import PUBLISHED, REPORT_BEST, REPORT_TABLE_5_1, published


def test_every_published_value_is_a_dice_with_a_source():
    for result in PUBLISHED:
        assert 0.0 <= result.value <= 1.0
        assert result.source and result.protocol and result.data
    assert published("Semi-Inf-Net").value > published("Inf-Net").value
    with pytest.raises(KeyError, match="no published result"):
        published("SAM")


def test_report_table_covers_both_networks_recipes_and_splits():
    for network in ("unet", "attention-unet"):
        assert set(REPORT_TABLE_5_1[network]) == {"scratch", "decoder", "all"}
        for splits in REPORT_TABLE_5_1[network].values():
            assert set(splits) == {"10-40", "40-10"}
            for phases in splits.values():
                assert set(phases) == {"train", "val", "test"}
                assert all(value is None or 0.0 <= value <= 1.0 for value in phases.values())
    assert REPORT_BEST["train"] > REPORT_BEST["val"] > 0.5
