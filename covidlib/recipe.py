"""What one supervised network is: the settings of its training and of its use, as data.

A :class:`Recipe` holds values only; :mod:`covidlib.crossval` turns them into a network, a
training run and its scores. Nested-CV results are stored under a hash of every field
(:func:`covidlib.crossval.run_key`), so changing a default here recomputes exactly the recipes
that relied on it. Introduced in chapter 04.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from covidlib.errors import InvalidInputError


@dataclass(frozen=True)
class Recipe:
    """How one supervised network is trained and applied (defaults: ``python -m covidlib train``'s,
    a row of ``benchmarks/ablation.py``, whose nested CV the book reports).

    ``image_size``: square network input in pixels; ``dihedral``: random turns and mirrors on
    top of the report's augmentation; ``tta``: average the predictions over the 8 turns and
    mirrors at test time; ``empty_fraction``: share of infection-free training slices kept;
    ``mixup_alpha``: mixup's Beta(alpha, alpha), 0 for none; ``ema_decay``: validate and keep a
    moving average of the weights (:mod:`covidlib.averaging`), 0 for none; ``select_threshold``:
    segment at the probability threshold best on the validation slices
    (:func:`covidlib.inference.choose_threshold`), not at 0.5; ``zoom``: above 1, scale each
    training slice by a random factor in [1 / zoom, zoom] (:class:`covidlib.augment.RandomZoom`);
    ``crop_size``: train on a random ``crop_size`` square window of each ``image_size`` slice
    (:class:`covidlib.augment.RandomCrop`) and validate and predict on whole slices, ``None`` for
    whole slices throughout (a step then costs what one at ``crop_size`` does); ``crop_foreground``:
    the probability that a window holds infection (:class:`covidlib.augment.RandomCrop`'s ``foreground``).
    ``model``, ``base_width`` and ``depth`` choose the network (:func:`covidlib.models.get_model`);
    the rest are :class:`covidlib.train.TrainConfig`'s.
    """

    model: str = "unet"
    image_size: int = 160
    base_width: int = 16
    depth: int = 4
    epochs: int = 600
    lr: float = 1e-3
    step_size: int = 150
    gamma: float = 0.8
    patience: int = 600
    batch_size: int = 8
    loss: str = "ce+dice"
    amp: str = "auto"
    augment: bool = True
    dihedral: bool = True
    tta: bool = True
    empty_fraction: float = 1.0
    mixup_alpha: float = 0.0
    max_steps_per_epoch: int | None = None
    ema_decay: float = 0.0
    select_threshold: bool = False
    zoom: float = 1.0
    crop_size: int | None = None
    crop_foreground: float = 0.0


#: Fields added after runs were stored, each with the value that leaves training as it was before
#: the field existed: :func:`key_fields` omits them at that value, so the stored runs of the recipes
#: that do not use a feature keep their key.
LATER_FIELDS: dict[str, Any] = {"ema_decay": 0.0, "select_threshold": False, "zoom": 1.0, "crop_size": None,
                                 "crop_foreground": 0.0}


def key_fields(recipe: Recipe) -> dict[str, Any]:
    """``recipe``'s fields as stored results are keyed by (:func:`covidlib.crossval.run_key`): all of
    them, less those of :data:`LATER_FIELDS` at their neutral value."""
    return {name: value for name, value in asdict(recipe).items()
            if not (name in LATER_FIELDS and value == LATER_FIELDS[name])}


def describe_recipe(fields: Mapping[str, Any]) -> str:
    """One line for a reader: a recipe's fields (e.g. from a record) as they differ from, or match,
    ``Recipe()``, the defaults of ``python -m covidlib train``: "`train`'s defaults", or e.g.
    "`train`'s defaults except epochs 80 (now 300), patience 30 (now 300)" for a record that
    predates them. Introduced in chapter 08.
    """
    defaults = asdict(Recipe())
    unknown = sorted(set(fields) - set(defaults))
    if unknown:
        raise InvalidInputError(f"not fields of a Recipe: {', '.join(unknown)}")
    changed = [f"{name.replace('_', ' ')} {fields[name]} (now {value})" for name, value in defaults.items()
               if name in fields and fields[name] != value]
    return "`train`'s defaults" + (" except " + ", ".join(changed) if changed else "")
