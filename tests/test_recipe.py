"""covidlib.recipe: a recipe described against train's defaults."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from covidlib.errors import InvalidInputError
from covidlib.crossval import run_key
from covidlib.recipe import Recipe, describe_recipe, key_fields


def test_the_defaults_are_named_as_such():
    assert describe_recipe(asdict(Recipe())) == "`train`'s defaults"


def test_each_field_that_differs_is_named_with_the_default_it_differs_from():
    fields = {**asdict(Recipe()), "epochs": 7, "image_size": 96}
    assert describe_recipe(fields) == "`train`'s defaults except image size 96 (now 160), epochs 7 (now 600)"


def test_a_field_that_is_not_a_recipe_field_is_an_error():
    with pytest.raises(InvalidInputError, match="not fields of a Recipe: width"):
        describe_recipe({"width": 16})


def test_a_later_field_at_its_neutral_value_leaves_the_key_as_before_it_existed():
    assert not {"ema_decay", "select_threshold", "zoom", "crop_size", "crop_foreground"} & set(key_fields(Recipe()))
    assert key_fields(Recipe(ema_decay=0.995))["ema_decay"] == 0.995
    assert key_fields(Recipe(select_threshold=True))["select_threshold"] is True
    assert key_fields(Recipe(zoom=1.25))["zoom"] == 1.25
    assert key_fields(Recipe(image_size=256, crop_size=160))["crop_size"] == 160
    assert key_fields(Recipe(crop_size=128, crop_foreground=0.33))["crop_foreground"] == 0.33
    # the key this recipe had before ema_decay existed (the 300-epoch row of the committed ablation record)
    stored = Recipe(model="unet", image_size=128, base_width=16, depth=4, epochs=300, lr=1e-3, step_size=75, gamma=0.8,
                    patience=300, batch_size=8, loss="ce+dice", amp="auto", augment=True, dihedral=True, tta=True,
                    empty_fraction=1.0, mixup_alpha=0.0, max_steps_per_epoch=None)
    assert run_key(stored, "covid-semiseg", 5) == "unet-998290dcef37271e"
    for later in ({"ema_decay": 0.995}, {"select_threshold": True}, {"zoom": 1.25}, {"crop_size": 128}):
        assert run_key(Recipe(**later), "covid-semiseg", 5) != run_key(Recipe(), "covid-semiseg", 5)
    assert run_key(Recipe(crop_size=128, crop_foreground=0.33), "covid-semiseg", 5) != \
        run_key(Recipe(crop_size=128), "covid-semiseg", 5)
