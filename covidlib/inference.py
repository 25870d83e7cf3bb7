"""Network input and prediction: one way from any source to slices, one checkpoint loader.

Every source the book meets (a CT volume in HU, a 2D 8-bit slice such as COVID-SemiSeg's, a
phantom case) becomes network input here, in one of two ways:

* **window** (the command line's): whole slices go to 8-bit grey levels (CT through the lung
  window [-1250, 250] HU; 8-bit slices already are), are z-scored per slice (the windowing
  differs between sources, so a per-image scale matters) and, when asked, resized to a square;
* **lung-crop** (the report's, :func:`covidlib.preprocess.preprocess_case`): lung mask, crop,
  in-plane resampling to mm, z-score inside the lungs; 2D 8-bit slices get its 2D equivalents.

:func:`prepare_slices` prepares a dataset's labelled (and, when asked, unlabelled) slices for
2D training either way; the chapters, ``python -m covidlib train``/``semi`` and the
cross-validation benchmarks all call it. :func:`predict_stack` predicts at any size and
:func:`load_model` rebuilds the network of any checkpoint the book writes.

Introduced in chapter 04.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidlib.augment import DIHEDRAL_GROUP
from covidlib.ct import window_hu, window_label
from covidlib.datasets import Case
from covidlib.datasets import Dataset as CaseDataset
from covidlib.errors import InvalidInputError
from covidlib.metrics import best_threshold, dice, infnet_metrics, iou, sensitivity, specificity, summarise
from covidlib.models import MODELS, get_model
from covidlib.preprocess import has_contrast, normalise_image, preprocess_case, zscore
from covidlib.train import load_checkpoint, predict_proba

#: The two ways to turn a case into network input (see the module docstring).
PREPARATIONS = ("window", "lung-crop")


# --- images: one normalisation for training, evaluation and prediction ------------------------

def grey_levels(image: np.ndarray, intensity: str) -> np.ndarray:
    """Grey levels 0..255 float32 of an image given in ``intensity`` ``"8bit"`` or ``"hu"``.

    HU go through the lung window [-1250, 250] HU, the window the book uses for display.
    """
    if intensity == "8bit":
        return np.asarray(image, dtype=np.float32)
    if intensity == "hu":
        return 255.0 * window_hu(np.asarray(image))
    raise InvalidInputError(f"intensity must be '8bit' or 'hu', got {intensity!r}")


def normalise_slices(grey: np.ndarray, source: str) -> np.ndarray:
    """Z-score each slice of ``grey`` (z, H, W) by its own mean and standard deviation
    (:func:`covidlib.preprocess.normalise_image`); ``source`` names the input in errors."""
    return np.stack([normalise_image(plane, f"{source} slice {z}") for z, plane in enumerate(np.asarray(grey))])


def normalise_ct_slices(grey: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Z-score each slice of a CT volume's grey levels (z, H, W) as :func:`normalise_slices`
    does, except that constant slices become 0 instead of being refused.

    A scan may hold whole slices outside the field of view (padding, e.g. -1024 or -3024 HU)
    or beyond the lung window; they carry no anatomy, so they must not fail the scan. Returns the
    normalised float32 stack and a bool (z,) array, True where a slice was constant, so callers
    can call those slices free of infection. A volume whose every slice is constant is refused,
    naming ``source``.
    """
    planes = np.asarray(grey, dtype=np.float32)
    constant = np.array([not has_contrast(plane) for plane in planes], dtype=bool)
    if constant.all():
        raise InvalidInputError(f"{source}: every slice is constant (no contrast in the lung window); "
                                "cannot normalise; is this a CT in HU?")
    # 0 is the z-score of a slice at its own mean: the network gets a defined, featureless input.
    out = np.zeros(planes.shape, np.float32)
    for z in np.flatnonzero(~constant):
        out[z] = zscore(planes[z])
    return out, constant


def window_steps(intensity: str) -> list[str]:
    """What :func:`prepare_case` does to an image of ``intensity``, in words (for records)."""
    first = "8-bit grey levels as stored" if intensity == "8bit" else f"{window_label('lung')} to grey levels 0..255"
    return [first, "z-score per slice"]


def prepare_case(case: Case) -> tuple[np.ndarray, np.ndarray | None]:
    """A dataset case, windowed: (normalised image (z, H, W) float32, lesion mask (z, H, W) uint8 or None).

    A CT in HU may hold constant slices (padding outside the field of view): they become 0, as
    :func:`normalise_ct_slices` makes them; a constant 8-bit slice is refused (a broken image).
    """
    image, _ = window_case(case)
    return image, None if case.lesion_mask is None else np.asarray(case.lesion_mask, dtype=np.uint8)


def window_case(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """A dataset case's normalised image (z, H, W) float32 and a bool (z,) array, True on the
    constant slices of a CT in HU (always False for 8-bit slices, whose constant ones are refused)."""
    intensity = case.meta.get("intensity", "hu")
    grey, source = grey_levels(case.image.array, intensity), f"case {case.case_id!r}"
    if intensity == "hu":
        return normalise_ct_slices(grey, source)
    return normalise_slices(grey, source), np.zeros(len(grey), dtype=bool)


def resize_stack(stack: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize (N, H, W) to (N, *size): ``"bilinear"`` for images/probabilities, ``"nearest-exact"`` for masks."""
    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor[:, 0].numpy()
    options = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(tensor, size=size, mode=mode, **options)[:, 0].numpy()


def predict_stack(model: nn.Module, images: np.ndarray, image_size: int, device: str | torch.device = "auto",
                  batch_size: int = 8, *, tta: bool = False) -> np.ndarray:
    """Foreground probabilities (z, H, W) for normalised slices (z, H, W) of any size.

    Slices are resized to ``image_size`` squared for the network and the probabilities back.
    ``tta`` (test-time augmentation) averages the predictions of the 8 turns and mirrors of each
    slice, each mapped back first (:data:`covidlib.augment.DIHEDRAL_GROUP`): 8 times the work.
    """
    resized = resize_stack(images, (image_size, image_size), "bilinear")
    symmetries = DIHEDRAL_GROUP if tta else DIHEDRAL_GROUP[:1]
    total = np.zeros_like(resized)
    for symmetry in symmetries:
        turned, _ = symmetry(resized)
        total += symmetry.inverse()(predict_proba(model, turned, device, batch_size))[0]
    return np.clip(resize_stack(total / len(symmetries), images.shape[-2:], "bilinear"), 0.0, 1.0)


def case_metrics(probabilities: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of one case: probabilities (z, H, W) or (H, W) in [0, 1] against its mask.

    Dice, IoU, sensitivity and specificity of the mask at ``threshold`` (over the whole case),
    and Inf-Net's threshold-averaged metrics (:func:`covidlib.metrics.infnet_metrics`, Fan et al.
    2020: the protocol of every published COVID-SemiSeg number) as ``infnet_<name>``, averaged
    over the case's slices (a slice without lesion scores 0 there, Inf-Net's convention; all 50
    COVID-SemiSeg labelled slices have one).
    """
    probabilities, target = np.asarray(probabilities), np.asarray(target)
    prediction = probabilities > threshold
    scores = {"dice": dice(prediction, target), "iou": iou(prediction, target),
              "sensitivity": sensitivity(prediction, target), "specificity": specificity(prediction, target)}
    planes = [infnet_metrics(plane, plane_target) for plane, plane_target in
              zip(probabilities.reshape(-1, *probabilities.shape[-2:]), target.reshape(-1, *target.shape[-2:]))]
    scores.update({f"infnet_{name}": float(np.mean([plane[name] for plane in planes])) for name in planes[0]})
    return scores


def predict_cases(model: nn.Module, dataset: CaseDataset, case_ids: Sequence[str], image_size: int,
                  device: str | torch.device = "auto", *, tta: bool = False) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(case_id, probabilities, mask)`` for each of the labelled ``case_ids`` in turn (one case in
    memory at a time), both (z, H, W) at the case's own resolution (windowed input; ``tta``:
    :func:`predict_stack`'s). The constant slices of a CT in HU get probability 0, as in ``predict``
    and ``segment``: padding carries no anatomy, so no infection."""
    for case_id in case_ids:
        case = _labelled(dataset.load(case_id))
        image, constant = window_case(case)
        probabilities = predict_stack(model, image, image_size, device, tta=tta)
        probabilities[constant] = 0.0
        yield case_id, probabilities, np.asarray(case.lesion_mask, dtype=np.uint8)


def choose_threshold(model: nn.Module, dataset: CaseDataset, case_ids: Sequence[str], image_size: int,
                     device: str | torch.device = "auto", *, tta: bool = False) -> float:
    """The probability threshold with the best mean Dice on ``case_ids``
    (:func:`covidlib.metrics.best_threshold`, which refuses an empty ``case_ids``): validation cases,
    never those then scored."""
    predictions = list(predict_cases(model, dataset, case_ids, image_size, device, tta=tta))
    return best_threshold([probabilities for _, probabilities, _ in predictions], [mask for _, _, mask in predictions])


def evaluate_cases(model: nn.Module, dataset: CaseDataset, case_ids: Sequence[str], image_size: int,
                   device: str | torch.device = "auto", *, tta: bool = False, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of ``model`` on ``case_ids`` (windowed input) at each case's own resolution.

    Returns ``{"per_case": {id: case_metrics(...)}, "summary": {metric: summarise(...)}}``;
    ``tta`` predicts with test-time augmentation (:func:`predict_stack`); masks are
    ``probability > threshold``.
    """
    if not case_ids:
        raise InvalidInputError("no cases to evaluate")
    per_case = {case_id: case_metrics(probabilities, mask, threshold) for case_id, probabilities, mask
                in predict_cases(model, dataset, case_ids, image_size, device, tta=tta)}
    names = next(iter(per_case.values())).keys()
    return {"per_case": per_case, "summary": {name: summarise(row[name] for row in per_case.values()) for name in names}}


def _labelled(case: Case) -> Case:
    if case.lesion_mask is None:
        raise InvalidInputError(f"case {case.case_id!r} has no lesion mask; training and evaluation need labelled cases")
    return case


# --- a dataset's slices for 2D training ----------------------------------------------------

@dataclass
class PreparedSlices:
    """A dataset's slices ready for a 2D network (:func:`prepare_slices`).

    ``labelled``: ``{case_id: (image (z, H, W) float32, lesion mask (z, H, W) uint8)}`` (a 2D
    slice has ``z = 1``; ``H = W = image_size`` when one was asked); ``unlabelled``: images
    (z, H, W) float32 on the same scale, ids in ``unlabelled_ids``; ``split``: the labelled
    split; ``steps``: what was done to the images, in order, in words (for the record).
    Introduced in chapter 04.
    """

    labelled: dict[str, tuple[np.ndarray, np.ndarray]]
    unlabelled: list[np.ndarray] = field(default_factory=list)
    unlabelled_ids: list[str] = field(default_factory=list)
    split: str = ""
    steps: list[str] = field(default_factory=list)


def spread_evenly(ids: Sequence[str], count: int) -> list[str]:
    """``count`` of ``ids`` spread evenly through them, the first included: id
    ``i * len(ids) // count`` for each ``i`` (a fixed stride when ``count`` divides ``len(ids)``).
    Introduced in chapter 02."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(ids):
        raise InvalidInputError(f"count must be in [1, {len(ids)}], got {count!r}")
    return [ids[i * len(ids) // count] for i in range(count)]


def _spread(ids: list[str], count: int | None, dataset: CaseDataset) -> list[str]:
    """:func:`spread_evenly` for ``prepare_slices``' ``n_unlabelled`` (all when None)."""
    if count is None:
        return ids
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(ids):
        raise InvalidInputError(f"n_unlabelled must be in [1, {len(ids)}] for dataset {dataset.name!r}, got {count!r}")
    return spread_evenly(ids, count)


def prepare_slices(dataset: CaseDataset, image_size: int | None = None, *, method: str = "window",
                   split: str | None = None, case_ids: Sequence[str] | None = None, n_unlabelled: int | None = 0,
                   unlabelled_split: str = "unlabelled", spacing_mm: float = 1.0,
                   lung_method: str | None = None) -> PreparedSlices:
    """The labelled (and, when asked, unlabelled) cases of ``dataset`` as 2D network input.

    ``method``: ``"window"`` (the command line's: grey levels, z-score per slice) or
    ``"lung-crop"`` (:func:`covidlib.preprocess.preprocess_case` at ``spacing_mm`` with
    ``lung_method``; ``None`` takes the case's own lung mask when it has one, else ``"auto"``).
    ``image_size``: resize every slice to that square (images bilinear, masks nearest); ``None``
    keeps each slice's size. ``case_ids``: which labelled cases (default every case of
    ``split``, itself by default :attr:`~covidlib.datasets.Dataset.default_split`).
    ``n_unlabelled``: 0 none, ``None`` the whole ``unlabelled_split``, else that many spread
    evenly through its sorted ids. Raises :class:`InvalidInputError` naming the case or argument.
    Introduced in chapter 04.
    """
    if method not in PREPARATIONS:
        raise InvalidInputError(f"method={method!r}: choose one of {PREPARATIONS}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise InvalidInputError(f"image_size must be a positive integer or None, got {image_size!r}")
    split = split or dataset.default_split
    ids = list(case_ids) if case_ids is not None else dataset.case_ids(split)
    if not ids:
        raise InvalidInputError(f"dataset {dataset.name!r} has no labelled cases to prepare (split {split!r})")
    unlabelled_ids: list[str] = []
    if n_unlabelled != 0:
        if unlabelled_split not in dataset.splits:
            raise InvalidInputError(f"dataset {dataset.name!r} has no {unlabelled_split!r} split (splits: "
                                    f"{', '.join(dataset.splits)}); semi-supervised training needs unlabelled images, "
                                    "e.g. --dataset covid-semiseg")
        unlabelled_ids = _spread(dataset.case_ids(unlabelled_split), n_unlabelled, dataset)
        if not unlabelled_ids:
            raise InvalidInputError(f"the {unlabelled_split!r} split of dataset {dataset.name!r} is empty")
    steps: list[str] = []

    def prepare(case: Case) -> tuple[np.ndarray, np.ndarray | None]:
        if method == "window":
            image, mask = prepare_case(case)
            case_steps = window_steps(case.meta.get("intensity", "hu"))
        else:
            chosen = lung_method or ("given" if case.lung_mask is not None else "auto")
            prepared = preprocess_case(case, lung_method=chosen, spacing_mm=spacing_mm)
            image, mask, case_steps = prepared.image, prepared.lesion_mask, prepared.meta["steps"]
        if image_size is not None:
            size = (image_size, image_size)
            image = resize_stack(image, size, "bilinear")
            mask = None if mask is None else resize_stack(mask, size, "nearest-exact").astype(np.uint8)
            case_steps = [*case_steps, f"resize to {image_size} x {image_size} px (images bilinear, masks nearest)"]
        steps.extend(step for step in case_steps if step not in steps)
        return image, mask

    labelled = {}
    for case_id in ids:
        image, mask = prepare(_labelled(dataset.load(case_id)))
        labelled[case_id] = (image.astype(np.float32, copy=False), mask)
    unlabelled = [prepare(dataset.load(case_id))[0].astype(np.float32, copy=False) for case_id in unlabelled_ids]
    return PreparedSlices(labelled, unlabelled, unlabelled_ids, split, steps)  # type: ignore[arg-type]  # the masks are not None: _labelled refuses a case without one


# --- checkpoints ------------------------------------------------------------------------------

@dataclass
class Architecture:
    """How to rebuild a network: a :func:`covidlib.models.get_model` name and its keyword arguments."""

    model: str
    model_options: dict[str, Any] = field(default_factory=dict)


def _architecture_from(metadata: Mapping[str, Any], path: Path) -> Architecture | None:
    if "model" not in metadata:
        return None
    options = metadata.get("model_options", {})
    if not isinstance(metadata["model"], str) or not isinstance(options, Mapping):
        raise InvalidInputError(f"checkpoint {path}: metadata 'model' must be a model name and 'model_options' a dict, "
                                f"got {metadata['model']!r} and {options!r}")
    return Architecture(metadata["model"], dict(options))


def decision_threshold(metadata: Mapping[str, Any], path: str | Path) -> float:
    """The probability above which the network of checkpoint ``path`` calls a pixel infected:
    ``metadata["probability_threshold"]`` (chosen on its validation slices by ``python -m covidlib
    train --select-threshold``), else 0.5."""
    threshold = metadata.get("probability_threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise InvalidInputError(f"checkpoint {path}: metadata 'probability_threshold' must be a number in (0, 1), "
                                f"got {threshold!r}")
    return float(threshold)


def load_model(path: str | Path, architecture: Architecture | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the 2D network stored in a :class:`~covidlib.train.Trainer` checkpoint.

    The architecture comes from ``architecture`` when given, else from the checkpoint's
    ``metadata`` (``model``, ``model_options``, as ``python -m covidlib train`` and ``semi``
    write them). The network must take one channel and give two classes (background,
    infection). Returns the network (CPU, eval mode) and the checkpoint's ``metadata`` with the
    architecture used filled in. Raises :class:`InvalidInputError` naming the file when it is
    missing, unreadable, records no architecture, or its weights do not fit.

    Introduced in chapter 04.
    """
    path = Path(path)
    payload = load_checkpoint(path)
    if not isinstance(payload, Mapping) or not isinstance(payload.get("model"), Mapping):
        found = sorted(payload) if isinstance(payload, Mapping) else type(payload).__name__
        raise InvalidInputError(f"checkpoint {path}: expected a covidlib Trainer checkpoint with the network's weights "
                                f"under 'model', found {found}")
    metadata = dict(payload.get("metadata") or {})
    chosen = architecture or _architecture_from(metadata, path)
    if chosen is None:
        raise InvalidInputError(f"checkpoint {path} does not record its architecture (metadata 'model'/'model_options'); "
                                f"give it explicitly: --model {{{','.join(sorted(MODELS))}}} --base-width N --depth N")
    try:
        model = get_model(chosen.model, **chosen.model_options)
    except (InvalidInputError, TypeError) as exc:
        raise InvalidInputError(f"checkpoint {path}: cannot build {chosen.model!r} with {chosen.model_options}: {exc}") from exc
    if getattr(model, "in_channels", 1) != 1 or getattr(model, "num_classes", 2) != 2:
        raise InvalidInputError(f"checkpoint {path}: the network must take 1 channel and give 2 classes, "
                                f"got {chosen.model_options}")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise InvalidInputError(f"checkpoint {path}: its weights do not fit a {chosen.model!r} network with "
                                f"{chosen.model_options} ({reason} {detail})") from exc
    metadata.update(model=chosen.model, model_options=chosen.model_options)
    return model.eval(), metadata
