"""Tests for covidlib.options: the command line's names are the keys of the registries they stand for."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from covidlib import options
from covidlib.losses import LOSSES
from covidlib.mean_teacher import SEMI_METHODS
from covidlib.models import MODELS


@pytest.mark.parametrize(("registry", "names"), [(LOSSES, options.LOSS_NAMES), (MODELS, options.MODEL_NAMES),
                                                 (SEMI_METHODS, options.SEMI_METHOD_NAMES)],
                         ids=["losses", "models", "semi-methods"])
def test_the_names_are_the_registry_keys(registry: Mapping[str, object], names: tuple[str, ...]) -> None:
    assert tuple(registry) == names
