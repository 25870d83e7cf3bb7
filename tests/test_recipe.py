"""covidlib.recipe: a recipe described against train's defaults."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from covidlib.errors import InvalidInputError
from covidlib.recipe import Recipe, describe_recipe


def test_the_defaults_are_named_as_such():
    assert describe_recipe(asdict(Recipe())) == "`train`'s defaults"


def test_each_field_that_differs_is_named_with_the_default_it_differs_from():
    fields = {**asdict(Recipe()), "epochs": 7, "image_size": 96}
    assert describe_recipe(fields) == "`train`'s defaults except image size 96 (now 128), epochs 7 (now 300)"


def test_a_field_that_is_not_a_recipe_field_is_an_error():
    with pytest.raises(InvalidInputError, match="not fields of a Recipe: width"):
        describe_recipe({"width": 16})
