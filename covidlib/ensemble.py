"""An ensemble of trained networks: the average of their class probabilities.

Networks trained from other initialisations, or on other slices, err in different places;
averaging their probabilities cancels part of those errors (Lakshminarayanan et al., "Simple and
scalable predictive uncertainty estimation using deep ensembles", NeurIPS 2017). nnU-Net (Isensee
et al., Nature Methods 2021) predicts with the average of its five cross-validation models.
:class:`Ensemble` is an ``nn.Module`` like any network here, so every prediction path
(:func:`covidlib.train.predict_proba`, :func:`covidlib.inference.predict_stack` and test-time
augmentation) takes it unchanged; :func:`load_ensemble` rebuilds one from several checkpoints.

Introduced in chapter 09.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from covidlib.errors import InvalidInputError
from covidlib.inference import decision_threshold, load_model

#: What the members of an ensemble must share: they are prepared alike, predicted alike and cut alike.
SHARED_METADATA = ("image_size", "preprocess", "tta", "probability_threshold")


class Ensemble(nn.Module):
    """The mean of the members' softmax probabilities, returned as its logarithm.

    ``forward``: images (B, C, H, W) -> (B, K, H, W) whose softmax over K is the members' mean
    probability (softmax(log p) = p for probabilities p that sum to 1), so it stands wherever a
    network's logits do. The members' outputs are taken in float32 whatever autocast gives.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        if not members:
            raise InvalidInputError("an ensemble needs at least one member network")
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(member(images).float(), dim=1) for member in self.members]).mean(0)
        return torch.log(probabilities.clamp_min(torch.finfo(torch.float32).tiny))


def load_ensemble(paths: Sequence[str | Path]) -> tuple[nn.Module, dict[str, Any]]:
    """The network of one checkpoint (:func:`covidlib.inference.load_model`), or the :class:`Ensemble`
    of several, with metadata that holds for all of them.

    Members must agree on :data:`SHARED_METADATA` (an error names each checkpoint's value otherwise).
    The ensemble's ``train_cases`` are the cases any member trained on, its ``val_cases`` those some
    member selected on that none trained on (so a default evaluation never scores a trained-on case),
    and ``dataset`` is kept when all name the same one. ``members`` lists the checkpoints and
    ``model_options`` their networks' options.
    """
    if not paths:
        raise InvalidInputError("no checkpoint to load")
    loaded = [load_model(path) for path in paths]
    if len(loaded) == 1:
        return loaded[0]
    for key in SHARED_METADATA:
        values = [decision_threshold(metadata, path) if key == "probability_threshold" else metadata.get(key)
                  for path, (_, metadata) in zip(paths, loaded, strict=True)]
        if any(value != values[0] for value in values):
            raise InvalidInputError(f"the checkpoints of an ensemble must share their {key}, got "
                                    + ", ".join(f"{value!r} ({path})" for path, value in zip(paths, values, strict=True)))
    first = loaded[0][1]
    trained = sorted({case for _, metadata in loaded for case in metadata.get("train_cases") or []})
    selected = sorted({case for _, metadata in loaded for case in metadata.get("val_cases") or []} - set(trained))
    datasets = {metadata.get("dataset") for _, metadata in loaded}
    metadata = {key: first[key] for key in SHARED_METADATA if key in first}
    metadata.update(members=[str(path) for path in paths], train_cases=trained, val_cases=selected,
                    dataset=datasets.pop() if len(datasets) == 1 else None,
                    model="ensemble of " + ", ".join(sorted({m["model"] for _, m in loaded})),
                    model_options=[m["model_options"] for _, m in loaded])
    return Ensemble([model for model, _ in loaded]).eval(), metadata
