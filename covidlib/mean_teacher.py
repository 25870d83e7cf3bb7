"""Mean teacher: a student trained on labels, pseudo-labels and the agreement with its own average.

Tarvainen and Valpola, "Mean teachers are better role models: Weight-averaged consistency
targets improve semi-supervised deep learning results", NeurIPS 2017 (report section 2.3.5).
The teacher's weights are an exponential moving average (EMA) of the student's,
``theta'_t = a_t theta'_{t-1} + (1 - a_t) theta_t`` with the warm-up ``a_t = min(1 - 1/(t+1), a)``
so that early on the teacher follows the student closely; the consistency cost is the mean
squared difference of the two networks' softmax outputs under independent input noise, with
weight ``lambda * exp(-5 (1 - t/T)^2)`` ramped up over ``T`` steps.

The book's student (chapter 08) is a copy of the fine-tuned A' and sees three things each
step: a labelled batch (supervised loss), a batch of pseudo-labelled patches (the same loss
on soft masks, each patch weighted by its similarity, :mod:`covidlib.pseudo`), and the
consistency cost on both. Spatial augmentation is shared (it happens in the dataset, before
the noise), so student and teacher outputs stay pixel-aligned; the noise is drawn
independently for each.

:class:`MeanTeacher` is a :class:`covidlib.train.Trainer`: the same optimiser, schedule,
early stopping, best checkpoint by validation Dice and exact resume; the teacher is what is
validated and kept (``validate="teacher"``).

The book's comparison on one fold is :func:`semi_supervised_fold`: A' (labels only), then
pseudo-labels and mean teacher, each against a *control* that is the same continuation of A'
without the unlabelled data (the same optimizer steps, input noise and epoch selection), so
that a difference measures the unlabelled data and not extra training. :func:`run_semi_cv`
repeats it over the outer folds of a nested cross-validation and several seeds, and
:func:`compare_arms` gives mean ± sd and paired bootstrap intervals. The command line runs one
fold as ``python -m covidlib semi`` (:func:`run`).

Introduced in chapter 08.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from covidlib.averaging import ema_update
from covidlib.coarse import Box, predict_boxes_2d
from covidlib.config import seed_everything
from covidlib.crossval import nested_folds
from covidlib.data import fit_slice
from covidlib.datasets import get_dataset
from covidlib.errors import InvalidInputError
from covidlib.fingerprint import changed_sources, code_fingerprint, content_key, imported_modules
from covidlib.inference import case_metrics, predict_stack, prepare_slices
from covidlib.io import atomic_write_text
from covidlib.models import get_model
from covidlib.options import QUICK_UNLABELLED, SEMI_FULL, SEMI_QUICK
from covidlib.pseudo import (PseudoLabelConfig, PseudoPatchDataset, build_dictionary, calibrate_on_labelled,
                             compare_rules, pseudo_label, report_rules)
from covidlib.results import format_interval, to_json
from covidlib.statistics import paired_bootstrap_ci, summarise_runs
from covidlib.train import Trainer, TrainConfig, resolve_amp, save_checkpoint, split_batch, validate_batch
from covidlib.transfer import SliceTraining, fit_volumes, slice_loader

VALIDATE_CHOICES = ("teacher", "student")


def sigmoid_rampup(step: float, length: float) -> float:
    """``exp(-5 (1 - t/T)^2)`` with ``t`` clipped to ``[0, T]``; 1 when ``length`` is 0 (Laine and Aila 2017)."""
    if length < 0:
        raise InvalidInputError(f"ramp-up length must be non-negative, got {length!r}")
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(float(step), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * phase * phase))


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the softmax outputs (B, C, H, W); no gradient flows to the teacher."""
    if student_logits.shape != teacher_logits.shape:
        raise InvalidInputError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
                                f"and {tuple(teacher_logits.shape)}")
    return F.mse_loss(torch.softmax(student_logits.float(), dim=1),
                      torch.softmax(teacher_logits.detach().float(), dim=1))


@dataclass(frozen=True)
class MeanTeacherConfig:
    """Semi-supervised settings on top of a :class:`~covidlib.train.TrainConfig`.

    ``alpha``: EMA decay (0.99, Tarvainen and Valpola); ``consistency_weight``: the largest
    weight ``lambda`` of the consistency cost (0 switches the teacher off: plain training on
    labels + pseudo-labels); ``rampup_steps``: ``T`` of the sigmoid ramp-up in optimizer steps;
    ``pseudo_weight``: weight of the pseudo-label loss; ``pseudo_batch_size``: patches per step;
    ``noise_std``: std of the Gaussian input noise (normalised intensity units), drawn
    independently for student and teacher; ``validate``: which network is validated and kept.
    """

    alpha: float = 0.99
    consistency_weight: float = 1.0
    rampup_steps: int = 200
    pseudo_weight: float = 1.0
    pseudo_batch_size: int = 8
    noise_std: float = 0.1
    validate: str = "teacher"

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidInputError(f"MeanTeacherConfig.alpha must be in [0, 1], got {self.alpha!r}")
        for name in ("consistency_weight", "pseudo_weight", "noise_std"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"MeanTeacherConfig.{name} must be non-negative, got {getattr(self, name)!r}")
        if self.rampup_steps < 0 or self.pseudo_batch_size < 1:
            raise InvalidInputError("MeanTeacherConfig.rampup_steps must be >= 0 and pseudo_batch_size >= 1, "
                                    f"got {self.rampup_steps!r}, {self.pseudo_batch_size!r}")
        if self.validate not in VALIDATE_CHOICES:
            raise InvalidInputError(f"MeanTeacherConfig.validate must be one of {VALIDATE_CHOICES}, got {self.validate!r}")


@contextlib.contextmanager
def frozen_running_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, batch norm layers normalise with the batch's own statistics but leave their
    running estimates (what evaluation normalises with) unchanged. The pseudo-labelled batches pass
    through it: 16 px patches, or slices from other scanners, have other statistics than the
    labelled slices the network is tested on, and updating the estimates with them (momentum 0.1 a
    pass) cost the patch arm 0.21 Dice on a COVID-SemiSeg fold."""
    layers = [(layer, layer.momentum) for layer in model.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    for layer, _ in layers:
        layer.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for layer, momentum in layers:
            layer.momentum = momentum


class MeanTeacher(Trainer):
    """Train ``model`` itself (the student, in place) with labels, weighted pseudo-labels and a mean
    teacher; the teacher (``self.teacher``) is a deep copy of it, updated as its moving average.

    ``pseudo_patches``: a dataset whose items hold ``image`` (1, P, P), ``mask`` (C, P, P) soft
    targets and ``weight`` (e.g. :class:`covidlib.pseudo.PseudoPatchDataset`), or ``None`` for
    no pseudo-labels. Each step draws ``pseudo_batch_size`` of them with the trainer's seeded,
    checkpointed generator. The loss of one step is
    ``sup + pseudo_weight * sum_i w_i l_i / sum_i w_i + lambda(t) * (consistency on labelled + pseudo inputs)``.
    With ``pseudo_weight=0`` the patches only enter the consistency cost (their masks are unused).

    The pseudo-labelled batches pass through :func:`frozen_running_statistics`: batch norm's running
    estimates come from the labelled batches alone.

    With ``consistency_weight=0`` no teacher is run and ``validate`` should be ``"student"``:
    that is plain fine-tuning on labels plus pseudo-labels, the book's middle arm.
    Introduced in chapter 08.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None,
                 mean_teacher: MeanTeacherConfig | None = None, *, pseudo_patches: Dataset | None = None,
                 out_dir: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        if config is not None and config.ema_decay > 0:
            raise InvalidInputError("a MeanTeacher validates its teacher, already a moving average of the student: "
                                    f"TrainConfig.ema_decay must be 0, got {config.ema_decay!r}")
        super().__init__(model, config, out_dir=out_dir, metadata=metadata)
        self.mean_teacher = mean_teacher or MeanTeacherConfig()
        self.pseudo_patches = pseudo_patches
        if pseudo_patches is not None and len(pseudo_patches) == 0:  # type: ignore[arg-type]  # a map-style Dataset with __len__ (torch's base class does not declare it)
            self.pseudo_patches = None
        self.teacher = copy.deepcopy(self.model)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.global_step = 0
        self.last_terms: dict[str, float] = {}

    def _noise(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean_teacher.noise_std == 0:
            return images
        generator = torch.Generator().manual_seed(int(self.rng.integers(2**63 - 1)))
        noise = torch.randn(images.shape, generator=generator) * self.mean_teacher.noise_std
        return images + noise.to(images.device, images.dtype)

    def _pseudo_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.pseudo_patches is not None
        size = min(self.mean_teacher.pseudo_batch_size, len(self.pseudo_patches))  # type: ignore[arg-type]  # as above
        chosen = self.rng.choice(len(self.pseudo_patches), size=size, replace=False)  # type: ignore[arg-type]  # as above
        items = [self.pseudo_patches[int(i)] for i in chosen]
        images = torch.stack([item["image"] for item in items]).to(self.device)
        masks = torch.stack([item["mask"] for item in items]).to(self.device)
        weights = torch.stack([torch.as_tensor(item["weight"], dtype=torch.float32) for item in items]).to(self.device)
        validate_batch(images, masks, self.num_classes, name="pseudo-label batch")
        return images, masks, weights

    def training_loss(self, batch: Any) -> torch.Tensor:
        """Supervised + weighted pseudo-label + ramped consistency loss of one step."""
        images, targets = split_batch(batch)
        images, targets = images.to(self.device), targets.to(self.device)
        validate_batch(images, targets, self.num_classes, name="training batch")
        inputs = [images]
        student_logits = [self.model(self._noise(images)).float()]
        loss = supervised = self.loss_fn(student_logits[0], targets)
        terms = {"supervised": float(supervised.detach())}
        ramp = self.mean_teacher.consistency_weight * sigmoid_rampup(self.global_step, self.mean_teacher.rampup_steps)
        # with pseudo_weight 0 the patches still feed the consistency: a mean teacher on unlabelled data alone
        if self.pseudo_patches is not None and (self.mean_teacher.pseudo_weight > 0 or self.mean_teacher.consistency_weight > 0):
            patches, soft_targets, weights = self._pseudo_batch()
            inputs.append(patches)
            with frozen_running_statistics(self.model):
                student_logits.append(self.model(self._noise(patches)).float())
            if self.mean_teacher.pseudo_weight > 0:
                per_patch = torch.stack([self.loss_fn(student_logits[-1][i:i + 1], soft_targets[i:i + 1])
                                         for i in range(len(patches))])
                pseudo = (weights * per_patch).sum() / weights.sum().clamp(min=1e-8)
                loss = loss + self.mean_teacher.pseudo_weight * pseudo
                terms["pseudo"] = float(pseudo.detach())
        if ramp > 0:
            self.teacher.eval()
            with torch.no_grad():
                teacher_logits = [self.teacher(self._noise(x)).float() for x in inputs]
            consistency = torch.stack([consistency_loss(s, t) for s, t in zip(student_logits, teacher_logits)]).mean()
            loss = loss + ramp * consistency
            terms["consistency"] = float(consistency.detach())
        terms["ramp"] = ramp
        self.last_terms = terms
        return loss

    def after_step(self) -> None:
        """EMA update of the teacher from the student, then count the step."""
        if self.mean_teacher.consistency_weight > 0 or self.mean_teacher.validate == "teacher":
            ema_update(self.teacher, self.model, self.mean_teacher.alpha, self.global_step)
        self.global_step += 1

    def validation_model(self) -> nn.Module:
        """The teacher (default) or the student, as ``MeanTeacherConfig.validate`` says."""
        return self.teacher if self.mean_teacher.validate == "teacher" else self.model

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "global_step": self.global_step}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.global_step = int(state["global_step"])



# --- the book's comparison: each semi-supervised arm against a control of equal budget ---------

#: The arms of one fold: A' (labels only), then four continuations of A' with the same steps,
#: noise and selection rule: two controls without unlabelled data and the two semi-supervised arms.
ARMS = ("supervised", "control", "pseudo_labels", "control_ema", "mean_teacher")
#: Each semi-supervised arm and its control: the same arm with the unlabelled data removed.
CONTROLS = {"pseudo_labels": "control", "mean_teacher": "control_ema"}
#: The report's precondition on A' before pseudo-labelling (validation Dice, section 5.3.4).
A_PRIME_PRECONDITION = 0.75
#: Bins of the stored similarity histograms (cosine lies in [-1, 1]).
SIMILARITY_BINS = np.linspace(-1.0, 1.0, 81)


@dataclass(frozen=True)
class SemiSupervisedSettings:
    """Everything one fold of the comparison needs.

    ``supervised``: how A' is trained on the labelled slices (:class:`~covidlib.transfer.SliceTraining`);
    ``semi``: the Trainer settings of the four continuations of A' (they run all ``semi.epochs``:
    no early stopping, so every arm and its control take the same number of steps);
    ``pseudo``/``mean_teacher``: their settings; ``network``/``base_width``/``depth``: the 2D U-Net;
    ``calibrate``: choose the top-2 threshold on the inner validation slices
    (:func:`covidlib.pseudo.calibrate_on_labelled`, accepting patches whose pseudo masks beat
    ``quality_bar`` Dice) instead of ``pseudo.top2_threshold``; ``dihedral``: the continuations
    add random turns and mirrors to the report's augmentation (as a recipe of
    :class:`covidlib.recipe.Recipe` with ``dihedral`` trained A').
    """

    supervised: SliceTraining
    semi: TrainConfig
    pseudo: PseudoLabelConfig = dataclasses.field(default_factory=PseudoLabelConfig)
    mean_teacher: MeanTeacherConfig = dataclasses.field(default_factory=MeanTeacherConfig)
    network: str = "unet"
    base_width: int = 16
    depth: int = 4
    calibrate: bool = True
    quality_bar: float = 0.5
    dihedral: bool = False


def fit_cases(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], size: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each case's slices brought to ``size`` squared as the training loader does (centre pad or
    crop, pixels keep their size); unchanged when ``size`` is ``None``. What A' and the arms are
    scored on when no native-size slices are given (volumes of the phantom)."""
    if size is None:
        return dict(arrays)
    fitted = {}
    for case, (image, mask) in arrays.items():
        pairs = [fit_slice(plane, plane_mask, (size, size)) for plane, plane_mask in zip(image, mask)]
        fitted[case] = (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    return fitted


def _histogram(scores: np.ndarray | None) -> list[int]:
    if scores is None or len(scores) == 0:
        return [0] * (len(SIMILARITY_BINS) - 1)
    return np.histogram(np.clip(scores[:, 0], -1.0, 1.0), SIMILARITY_BINS)[0].tolist()


def pseudo_label_patches(model: nn.Module, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
                         train_ids: Sequence[str], val_ids: Sequence[str], unlabelled: Sequence[np.ndarray],
                         settings: SemiSupervisedSettings, *, rng: np.random.Generator,
                         device: str | torch.device = "auto", amp: torch.dtype | None = None,
                         unlabelled_boxes: Sequence[Box | None] | None = None,
                         progress: bool = False) -> tuple[PseudoPatchDataset, dict[str, Any]]:
    """Pseudo-labelled patches of ``unlabelled`` from ``model`` (A'): the feature dictionary of
    the ``train_ids`` slices, the top-2 threshold calibrated on ``val_ids`` (when
    ``settings.calibrate``), coarse boxes (given, or from ``model``), then
    :func:`covidlib.pseudo.pseudo_label`. Returns the patches and what the book reports of them:
    ``{"threshold", "calibration", "rules", "histogram", "pseudo"}``. Introduced in chapter 08.
    """
    dictionary = build_dictionary(model, [arrays[c][0] for c in train_ids], [arrays[c][1] for c in train_ids],
                                  settings.pseudo, rng, device=device, amp=amp)
    pseudo_config = settings.pseudo
    calibration = calibration_labels = truth = None
    val_images = [arrays[c][0] for c in val_ids]
    val_boxes = predict_boxes_2d(model, val_images, device=device)
    if any(box is not None for box in val_boxes):
        calibration, calibration_labels, truth = calibrate_on_labelled(
            model, dictionary, val_images, [arrays[c][1] for c in val_ids], val_boxes, settings.pseudo, rng,
            quality_bar=settings.quality_bar, device=device, amp=amp)
        if settings.calibrate and settings.pseudo.rule == "top2":
            pseudo_config = dataclasses.replace(settings.pseudo, top2_threshold=calibration.chosen)
    if unlabelled_boxes is None:
        unlabelled_boxes = predict_boxes_2d(model, unlabelled, device=device)
    labels = pseudo_label(model, dictionary, unlabelled, unlabelled_boxes, pseudo_config, rng,
                          device=device, amp=amp, progress=progress)
    info = {
        "threshold": pseudo_config.top2_threshold if pseudo_config.rule == "top2" else None,
        "calibration": calibration.as_dict() if calibration is not None else None,
        "rules": (compare_rules(report_rules(calibration.chosen), dictionary, calibration_labels, truth, labels)  # type: ignore[arg-type]  # set together with calibration (the if below)
                  if calibration is not None else []),
        "histogram": {"edges": SIMILARITY_BINS.tolist(), "centred": _histogram(labels.scores),
                      "plain": _histogram(labels.plain_scores)},
        "pseudo": {"unlabelled_images": len(unlabelled),
                   "images_with_box": int(sum(b is not None for b in unlabelled_boxes)),
                   "patches": len(labels.locations), "accepted": labels.num_accepted,
                   "dictionary": len(dictionary.features),
                   "best_similarity_quantiles": np.quantile(labels.scores[:, 0], [0.05, 0.5, 0.95]).tolist()
                   if len(labels.scores) else []},
    }
    return PseudoPatchDataset(unlabelled, labels, dictionary), info


def arm_setup(arm: str, config: MeanTeacherConfig) -> tuple[bool, MeanTeacherConfig]:
    """Whether ``arm`` trains on the unlabelled patches, and its mean-teacher settings: the four
    continuations of :data:`ARMS` plus ``"consistency"`` (the mean teacher on unlabelled patches
    without their pseudo-label loss; only :func:`train_semi_supervised` offers it)."""
    student_kept = dataclasses.replace(config, consistency_weight=0.0, validate="student")
    setups = {"control": (False, student_kept), "pseudo_labels": (True, student_kept),
              "control_ema": (False, config), "mean_teacher": (True, config),
              "consistency": (True, dataclasses.replace(config, pseudo_weight=0.0))}
    if arm not in setups:
        raise InvalidInputError(f"unknown arm {arm!r}: choose one of {sorted(setups)}")
    return setups[arm]


#: What each arm's progress bar says, so that the stages of one run can be told apart.
ARM_PROGRESS = {"control": "control epochs", "pseudo_labels": "pseudo-label epochs",
                "control_ema": "EMA control epochs", "mean_teacher": "pseudo-label + mean-teacher epochs",
                "consistency": "mean-teacher epochs"}

def continue_arm(model: nn.Module, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], train_ids: Sequence[str],
                 val_ids: Sequence[str], settings: SemiSupervisedSettings, arm: str,
                 patches: Dataset | None, *, seed: int, out_dir: str | Path | None = None,
                 metadata: Mapping[str, Any] | None = None) -> MeanTeacher:
    """A copy of ``model`` (A') trained on as ``arm`` (:func:`arm_setup`) for all
    ``settings.semi.epochs`` (no early stop: arms and controls take equal steps), drawing its
    pseudo-labelled batches from ``patches`` (:class:`~covidlib.pseudo.PseudoPatchDataset`, or
    whole slices, :class:`~covidlib.self_training.PseudoSliceDataset`), the epoch best on
    ``val_ids`` kept; with ``out_dir`` it checkpoints there like :class:`~covidlib.train.Trainer`.
    Its progress bar says which arm it trains (:data:`ARM_PROGRESS`).
    Introduced in chapter 08."""
    uses_patches, config = arm_setup(arm, settings.mean_teacher)
    semi = dataclasses.replace(settings.semi, patience=settings.semi.epochs)
    trainer = MeanTeacher(copy.deepcopy(model), semi, config, pseudo_patches=patches if uses_patches else None,
                          out_dir=None if out_dir is None else str(out_dir), metadata=metadata)
    trainer.fit(slice_loader(arrays, train_ids, settings.supervised, training=True, seed=seed,
                             dihedral=settings.dihedral),
                slice_loader(arrays, val_ids, settings.supervised, training=False, seed=seed),
                progress_label=ARM_PROGRESS[arm])
    return trainer


def semi_supervised_fold(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], train_ids: Sequence[str],
                         val_ids: Sequence[str], test_ids: Sequence[str], unlabelled: Sequence[np.ndarray],
                         settings: SemiSupervisedSettings, *,
                         native: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                         unlabelled_boxes: Sequence[Box | None] | None = None,
                         initial_state: Mapping[str, torch.Tensor] | None = None,
                         progress: bool = False, return_models: bool = False) -> dict[str, Any]:
    """One fold of the comparison: A' on ``train_ids`` (epoch picked on ``val_ids``), the
    pseudo-label threshold calibrated on ``val_ids``, then four continuations of A' with equal
    steps: ``control`` (labels only, input noise, the student kept), ``pseudo_labels`` (+ the
    pseudo-labelled patches), ``control_ema`` (labels only with the mean teacher's consistency;
    the EMA teacher kept) and ``mean_teacher`` (+ the patches). ``test_ids`` only score.

    ``arrays``: ``{case_id: (image (z, y, x) float32, lesion (z, y, x) uint8)}`` as the networks
    are trained (a 2D slice is ``z = 1``); ``native``: the same cases at their own size (scored
    there after predicting at the network size; default: ``arrays`` fitted to the training size);
    ``unlabelled``: images (z, y, x) or (H, W) on the same intensity scale as ``arrays``.
    ``unlabelled_boxes``: coarse boxes (e.g. :func:`covidlib.coarse.predict_boxes_3d`); ``None``
    takes them from A''s prediction. ``initial_state``: pretrained weights for A' (the report
    fine-tunes a pretrained A); ``None`` trains it from scratch.

    Returns ``{"dice": {arm: mean Dice at 0.5}, "infnet_mean_dice": {arm: mean}, "per_case":
    {arm: {case: Dice}}, "per_case_infnet": {arm: {case: Inf-Net mean Dice}}, "steps": {arm:
    optimizer steps}, "a_prime": {...}, "pseudo": counts, "calibration", "rules", "threshold",
    "histogram", "seconds", "history"}``, plus ``"models": {arm: network}`` when ``return_models``.
    Introduced in chapter 08.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    seed = settings.supervised.train.seed
    torch.manual_seed(seed)
    model = get_model(settings.network, base_width=settings.base_width, depth=settings.depth)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    supervised = fit_volumes(model, arrays, train_ids, val_ids, settings.supervised)
    seconds["supervised"] = time.perf_counter() - start
    device = supervised.device
    image_size = settings.supervised.output_size or int(arrays[train_ids[0]][0].shape[-1])
    scoring = native if native is not None else fit_cases({c: arrays[c] for c in test_ids}, settings.supervised.output_size)
    results: dict[str, Any] = {"dice": {}, "infnet_mean_dice": {}, "per_case": {}, "per_case_infnet": {},
                               "steps": {}, "history": {"supervised": supervised.history}}
    models: dict[str, nn.Module] = {}

    def record(arm: str, network: nn.Module) -> None:
        scores = {case: case_metrics(predict_stack(network, scoring[case][0], image_size, device), scoring[case][1])
                  for case in test_ids}
        results["per_case"][arm] = {case: row["dice"] for case, row in scores.items()}
        results["per_case_infnet"][arm] = {case: row["infnet_mean_dice"] for case, row in scores.items()}
        results["dice"][arm] = float(np.mean(list(results["per_case"][arm].values())))
        results["infnet_mean_dice"][arm] = float(np.mean(list(results["per_case_infnet"][arm].values())))
        models[arm] = network

    record("supervised", supervised.model)
    results["a_prime"] = {"val_dice": float(supervised.best_metric), "best_epoch": int(supervised.best_epoch),
                          "epochs_run": len(supervised.history), "pretrained": initial_state is not None,
                          "precondition": A_PRIME_PRECONDITION,
                          "precondition_met": bool(supervised.best_metric > A_PRIME_PRECONDITION)}

    start = time.perf_counter()
    patches, pseudo_info = pseudo_label_patches(supervised.model, arrays, train_ids, val_ids, unlabelled, settings,
                                                rng=np.random.default_rng(seed), device=device,
                                                amp=supervised.amp_dtype, unlabelled_boxes=unlabelled_boxes,
                                                progress=progress)
    results.update(pseudo_info)
    seconds["pseudo_labelling"] = time.perf_counter() - start
    for arm in ARMS[1:]:
        start = time.perf_counter()
        trainer = continue_arm(supervised.model, arrays, train_ids, val_ids, settings, arm, patches, seed=seed)
        record(arm, trainer.validation_model())
        results["steps"][arm] = trainer.global_step
        results["history"][arm] = trainer.history
        seconds[arm] = time.perf_counter() - start
    results["seconds"] = seconds
    if return_models:
        results["models"] = models
    return results


#: The methods of ``python -m covidlib train --semi`` and the arm (:func:`arm_setup`) each trains; the
#: command line lists them from :data:`covidlib.options.SEMI_METHOD_NAMES`, which a test keeps equal to these keys.
SEMI_METHODS = {"pseudo-labels": "pseudo_labels", "mean-teacher": "consistency", "both": "mean_teacher"}


def train_semi_supervised(model: nn.Module, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
                          train_ids: Sequence[str], val_ids: Sequence[str], unlabelled: Sequence[np.ndarray],
                          settings: SemiSupervisedSettings, method: str, *, out_dir: str | Path | None = None,
                          metadata: Mapping[str, Any] | None = None,
                          progress: bool = False) -> tuple[MeanTeacher, dict[str, Any]]:
    """A final semi-supervised model: ``model`` (a trained A') continued by ``method`` of
    :data:`SEMI_METHODS` on the labelled ``train_ids`` and the pseudo-labelled ``unlabelled``
    images, the threshold and the epoch chosen on ``val_ids`` (no test cases: every labelled
    slice serves training or selection). Returns the trainer (its ``validation_model()`` is the
    network to keep) and :func:`pseudo_label_patches`' report. Introduced in chapter 08.
    """
    if method not in SEMI_METHODS:
        raise InvalidInputError(f"unknown semi-supervised method {method!r}: choose one of {sorted(SEMI_METHODS)}")
    if len(unlabelled) == 0:
        raise InvalidInputError("semi-supervised training needs at least one unlabelled image, got none")
    device = next(model.parameters()).device
    seed = settings.semi.seed
    patches, report = pseudo_label_patches(model, arrays, train_ids, val_ids, unlabelled, settings,
                                           rng=np.random.default_rng(seed), device=device,
                                           amp=resolve_amp(settings.semi.amp, device), progress=progress)
    trainer = continue_arm(model, arrays, train_ids, val_ids, settings, SEMI_METHODS[method], patches, seed=seed,
                           out_dir=out_dir, metadata=metadata)
    return trainer, report


# --- data, settings and folds of the comparison on a registered dataset ------------------------

def semi_supervised_settings(image_size: int, n_train: int, *, network: str = "unet", base_width: int = 16,
                             depth: int = 4, supervised_epochs: int = 25, semi_epochs: int = 8, lr: float = 1e-3,
                             semi_lr: float | None = None, patience: int = 20, batch_size: int = 8, rule: str = "top2",
                             amp: str = "auto", device: str = "auto", seed: int = 0,
                             max_steps_per_epoch: int | None = None, progress: bool = False,
                             patch_size: int | None = None, labelled_patches: int = 120,
                             patches_per_unlabelled: int = 32, center_features: bool = True,
                             rampup_steps: int | None = None, alpha: float = 0.99, consistency_weight: float = 1.0,
                             noise_std: float = 0.1, output_size: int | None = None, empty_fraction: float = 1.0,
                             augment: bool = True, calibrate: bool = True, quality_bar: float = 0.5,
                             dihedral: bool = False) -> SemiSupervisedSettings:
    """The comparison's settings for slices of ``image_size`` pixels and ``n_train`` training slices.

    A' trains ``supervised_epochs`` at ``lr`` on slices of ``output_size`` (``None``: their own
    size) with ``empty_fraction`` of the lesion-free ones and the report's augmentation when
    ``augment``; the four continuations train ``semi_epochs`` at ``semi_lr`` (default
    ``lr / 2``). The patch size (unless given) and the box margins are the report's (68 px, 10
    and 15 px on 512 px slices) scaled to ``image_size``; the consistency ramp-up lasts
    ``rampup_steps`` (default 5 epochs of steps). ``alpha``, ``consistency_weight`` and
    ``noise_std`` are the mean teacher's (:class:`MeanTeacherConfig`); ``calibrate``,
    ``quality_bar`` and ``dihedral`` see :class:`SemiSupervisedSettings`. Raises :class:`InvalidInputError` for an
    ``image_size`` under 16 px (patches are at least 8 px and the default U-Net halves a side 4
    times). Introduced in chapter 08.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise InvalidInputError(f"image_size must be an integer of at least 16 pixels, got {image_size!r}")
    scale = image_size / 512
    pseudo = PseudoLabelConfig(patch_size=patch_size or max(8, int(round(68 * scale / 4)) * 4),
                               labelled_patches=labelled_patches, patches_per_unlabelled=patches_per_unlabelled,
                               labelled_margin=max(1, round(10 * scale)), unlabelled_margin=max(1, round(15 * scale)),
                               rule=rule, batch_size=256, chunk_size=4096, center_features=center_features)
    steps_per_epoch = -(-n_train // batch_size)
    if max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)

    def config(epochs: int, rate: float, wait: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=rate, patience=wait, amp=amp, max_steps_per_epoch=max_steps_per_epoch,
                           seed=seed, device=device, progress=progress)

    return SemiSupervisedSettings(
        supervised=SliceTraining(train=config(supervised_epochs, lr, patience), batch_size=batch_size,
                                 output_size=output_size, empty_fraction=empty_fraction, augment=augment),
        semi=config(semi_epochs, lr / 2 if semi_lr is None else semi_lr, semi_epochs), pseudo=pseudo,
        mean_teacher=MeanTeacherConfig(alpha=alpha, consistency_weight=consistency_weight, noise_std=noise_std,
                                       rampup_steps=5 * steps_per_epoch if rampup_steps is None else rampup_steps,
                                       pseudo_batch_size=batch_size),
        network=network, base_width=base_width, depth=depth, calibrate=calibrate, quality_bar=quality_bar,
        dihedral=dihedral)


#: Modules whose code a stored (seed, fold) result of :func:`run_semi_cv` depends on.
SEMI_CV_MODULES = ("covidlib.mean_teacher",)


def run_semi_cv(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], unlabelled: Sequence[np.ndarray],
                image_size: int, options: Mapping[str, Any], out_dir: str | Path | None, *, folds: int = 5,
                seeds: Sequence[int] = (0,), run_folds: int | None = None, n_val: int | None = None,
                native: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                initial_state: Mapping[str, torch.Tensor] | None = None,
                progress: bool = False) -> list[dict[str, Any]]:
    """Nested cross-validation of the comparison: every (seed, outer fold) runs
    :func:`semi_supervised_fold` on :func:`covidlib.crossval.nested_folds` (the outer fold only
    scores; an inner split of the rest picks A''s epoch, every arm's epoch and the threshold).

    ``options``: keyword arguments of :func:`semi_supervised_settings` (its ``seed`` is the run's);
    ``run_folds``: only the first so many folds of each seed (quick mode). With ``out_dir`` each
    result is stored as ``out_dir/<key>/seed<s>_fold<k>.json``, keyed by the options, the data,
    the starting weights and the code, so an interrupted run continues and a changed one
    recomputes. Returns the results in (seed, fold) order, each with ``seed``, ``fold``, the ids
    and ``wall_seconds``/``cpu_seconds``. Introduced in chapter 08.
    """
    ids = sorted(arrays)
    folder = None
    if out_dir is not None:
        key = content_key(dict(options), image_size, folds, n_val, arrays, list(unlabelled), native, initial_state)
        folder = Path(out_dir) / f"semi-{key}"
    code = code_fingerprint(imported_modules(SEMI_CV_MODULES))
    results = []
    jobs = [(seed, fold) for seed in seeds for fold in nested_folds(ids, folds, seed, n_val)[:run_folds]]
    for seed, fold in tqdm(jobs, desc="semi-supervised CV", disable=not progress):
        path = folder / f"seed{seed}_fold{fold.index}.json" if folder is not None else None
        if path is not None and path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if not changed_sources(stored["code"]):
                results.append(stored)
                continue
        started, cpu_started = time.perf_counter(), time.process_time()
        settings = semi_supervised_settings(image_size, len(fold.train), **{**options, "seed": seed})
        result = semi_supervised_fold(arrays, fold.train, fold.val, fold.test, unlabelled, settings, native=native,
                                      initial_state=initial_state)
        result.update({"seed": seed, "fold": fold.index, "train": fold.train, "val": fold.val, "test": fold.test,
                       "wall_seconds": time.perf_counter() - started,
                       "cpu_seconds": time.process_time() - cpu_started,
                       "code": code})
        if path is not None:
            atomic_write_text(path, to_json(result) + "\n")
            result = json.loads(path.read_text(encoding="utf-8"))
        results.append(result)
    return results


def unit_table(results: Sequence[Mapping[str, Any]], metric: str = "dice") -> dict[str, np.ndarray]:
    """``{arm: scores (n_folds, n_seeds)}`` of ``metric`` (``"dice"`` or ``"infnet_mean_dice"``)
    from :func:`run_semi_cv`'s results (every seed must have the same folds)."""
    seeds = sorted({r["seed"] for r in results})
    folds = sorted({r["fold"] for r in results})
    table = {arm: np.full((len(folds), len(seeds)), np.nan) for arm in ARMS}
    for r in results:
        for arm in ARMS:
            table[arm][folds.index(r["fold"]), seeds.index(r["seed"])] = r[metric][arm]
    if any(np.isnan(values).any() for values in table.values()):
        raise InvalidInputError("the results do not cover every (fold, seed) pair: run the same folds for every seed")
    return table


def compare_arms(results: Sequence[Mapping[str, Any]], *, metrics: Sequence[str] = ("dice", "infnet_mean_dice"),
                 seed: int = 0) -> dict[str, Any]:
    """Mean ± sd of every arm and the paired difference of each semi-supervised arm against its
    control (:data:`CONTROLS`) with a 95 % bootstrap CI over (fold, seed) units
    (:func:`covidlib.statistics.paired_bootstrap_ci`), for each of ``metrics``. Differences are
    also given in percent of the control's mean (the report's "improvement of ??? percent").
    Introduced in chapter 08.
    """
    summary: dict[str, Any] = {}
    for metric in metrics:
        table = unit_table(results, metric)
        arms = {arm: summarise_runs(values) for arm, values in table.items()}
        paired = {}
        for arm, control in CONTROLS.items():
            if table[arm].size < 2:
                continue
            interval: dict[str, Any] = paired_bootstrap_ci(table[control], table[arm], seed=seed).as_dict()
            base = arms[control]["mean"]
            interval.update({"control": control, "percent": 100 * interval["mean_difference"] / base if base else None,
                             "percent_low": 100 * interval["low"] / base if base else None,
                             "percent_high": 100 * interval["high"] / base if base else None,
                             "per_unit": (table[arm] - table[control]).ravel().tolist()})
            paired[arm] = interval
        summary[metric] = {"arms": arms, "paired": paired}
    return summary


#: How the arms are named in the book's tables.
ARM_LABELS = {"supervised": "A′ (labels only)", "control": "control: A′ continued, labels only",
              "pseudo_labels": "+ pseudo-labels", "control_ema": "control: A′ continued with the mean teacher, labels only",
              "mean_teacher": "+ pseudo-labels + mean teacher"}
METRIC_LABELS = {"dice": "Dice at 0.5", "infnet_mean_dice": "Inf-Net mean Dice"}


def arm_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """Table rows of :func:`compare_arms`' summary: arm, Dice at 0.5 as mean ± sd over folds, its
    sd over seeds ("one seed" when there is no spread over seeds), and Inf-Net's mean Dice as
    mean ± sd over folds. Introduced in chapter 08."""
    dice, infnet = summary["dice"]["arms"], summary["infnet_mean_dice"]["arms"]

    def over_seeds(sd: float) -> str:
        return "one seed" if math.isnan(sd) else f"{sd:.3f}"

    return [(ARM_LABELS[arm], f"{dice[arm]['mean']:.3f} ± {dice[arm]['sd_folds']:.3f}", over_seeds(dice[arm]["sd_seeds"]),
             f"{infnet[arm]['mean']:.3f} ± {infnet[arm]['sd_folds']:.3f}") for arm in ARMS]


def _percent_cell(interval: Mapping[str, Any]) -> str:
    """``+x.x % [low, high]``, or ``n/a`` when the control's mean is 0 (no percent of it exists)."""
    if interval["percent"] is None:
        return "n/a (control mean 0)"
    return f"{interval['percent']:+.1f} % [{interval['percent_low']:+.1f}, {interval['percent_high']:+.1f}]"


def paired_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Table rows of the paired differences in :func:`compare_arms`' summary: arm − control,
    metric, difference [95 % CI], the same in percent of the control's mean (``n/a`` when that
    mean is 0), and the number of (fold, seed) units. Introduced in chapter 08."""
    rows = []
    for metric, part in summary.items():
        for arm, interval in part["paired"].items():
            rows.append((f"{ARM_LABELS[arm]} − control", METRIC_LABELS.get(metric, metric),
                         format_interval(interval),
                         _percent_cell(interval), str(interval["n"])))
    return rows


# --- the command line: python -m covidlib semi ------------------------------------------------

def _size(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name)
    return value if value is not None else (SEMI_QUICK if args.quick else SEMI_FULL)[name]


def run(args: argparse.Namespace) -> int:
    """Run one fold of the comparison (every arm and its control); write OUT/best.pt and
    OUT/metrics.json; print a JSON summary.

    ``best.pt`` holds the mean-teacher arm's kept network (the teacher, the one validated) with
    the metadata ``python -m covidlib train`` writes, so evaluate/predict/segment load it; its
    ``val_cases`` are the held-out test fold. Scores in ``metrics.json`` (Dice at 0.5 and
    Inf-Net's mean Dice) are measured at each slice's own size.
    """
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not 0 <= args.fold < args.folds:  # before reading any image
        raise InvalidInputError(f"--fold must be in [0, {args.folds - 1}] for --folds {args.folds}, got {args.fold}")
    seed_everything(args.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    dataset = get_dataset(args.dataset, args.data_root)
    split = dataset.default_split
    image_size = _size(args, "image_size")
    n_unlabelled = args.unlabelled
    if n_unlabelled is not None and n_unlabelled < 1:
        raise InvalidInputError(f"--unlabelled must be at least 1, got {n_unlabelled}")
    if n_unlabelled is None and args.quick and "unlabelled" in dataset.splits:
        n_unlabelled = min(QUICK_UNLABELLED, len(dataset.case_ids("unlabelled"))) or None
    # folds and settings first: bad arguments fail before any image is read
    fold = nested_folds(dataset.case_ids(split), args.folds, args.seed, args.inner_val)[args.fold]
    train_ids, val_ids, test_ids = fold.train, fold.val, fold.test
    batch_size = _size(args, "batch_size")
    settings = semi_supervised_settings(
        image_size, len(train_ids), network=args.model, base_width=_size(args, "base_width"), depth=args.depth,
        supervised_epochs=_size(args, "epochs"), semi_epochs=_size(args, "semi_epochs"), lr=args.lr,
        patience=args.patience, batch_size=batch_size, rule=args.rule.replace("-", "_"), amp=args.amp,
        device=args.device, seed=args.seed + args.fold, max_steps_per_epoch=_size(args, "max_steps_per_epoch"),
        progress=not args.no_progress, calibrate=not args.no_calibrate)
    prepared = prepare_slices(dataset, image_size, split=split, n_unlabelled=n_unlabelled)
    arrays, unlabelled = prepared.labelled, prepared.unlabelled
    native = prepare_slices(dataset, None, split=split, case_ids=test_ids).labelled
    load_seconds = time.perf_counter() - started
    result = semi_supervised_fold(arrays, train_ids, val_ids, test_ids, unlabelled, settings, native=native,
                                  progress=not args.no_progress, return_models=True)
    kept = result.pop("models")["mean_teacher"]
    model_options = {"in_channels": 1, "num_classes": 2, "base_width": settings.base_width, "depth": settings.depth}
    metadata = {"model": settings.network, "model_options": model_options, "image_size": image_size,
                "dataset": args.dataset, "split": split, "train_cases": train_ids, "val_cases": test_ids,
                "selection_cases": val_ids, "folds": args.folds, "fold": args.fold,
                "augment": settings.supervised.augment, "mixup_alpha": 0.0, "preparation": prepared.steps,
                "semi_supervised": {"arm": "mean_teacher", "network": settings.mean_teacher.validate,
                                    "unlabelled_cases": len(unlabelled), "rule": settings.pseudo.rule,
                                    "threshold": result["threshold"]}}
    out = Path(args.out)
    save_checkpoint({"model": {k: v.detach().cpu() for k, v in kept.state_dict().items()},
                     "config": dataclasses.asdict(settings.semi), "metadata": metadata}, out / "best.pt")
    metrics = {
        "dice": result["dice"], "infnet_mean_dice": result["infnet_mean_dice"], "per_case": result["per_case"],
        "per_case_infnet": result["per_case_infnet"], "steps": result["steps"], "a_prime": result["a_prime"],
        "threshold": result["threshold"], "calibration": result["calibration"], "rules": result["rules"],
        "pseudo": result["pseudo"],
        "seconds": {"loading": load_seconds, **result["seconds"]},
        "wall_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
        "device": str(next(kept.parameters()).device), "threads": torch.get_num_threads(),
        "dice_measured_at": "each slice's own size (predicted at the network size)", "checkpoint": "best.pt",
        "settings": {"dataset": args.dataset, "split": split, "folds": args.folds, "fold": args.fold, "seed": args.seed,
                     "quick": args.quick, "train_cases": train_ids, "selection_cases": val_ids, "test_cases": test_ids,
                     "image_size": image_size, **dataclasses.asdict(settings)},
        "history": result["history"],
    }
    atomic_write_text(out / "metrics.json", to_json(metrics) + "\n")
    summary = {"dice": {arm: round(value, 4) for arm, value in result["dice"].items()},
               "infnet_mean_dice": {arm: round(value, 4) for arm, value in result["infnet_mean_dice"].items()},
               "threshold": result["threshold"],
               "test_cases": len(test_ids), "unlabelled": len(unlabelled),
               "pseudo_patches": {"accepted": result["pseudo"]["accepted"], "sampled": result["pseudo"]["patches"]},
               "wall_seconds": round(metrics["wall_seconds"], 1), "out": str(out)}
    print(json.dumps(summary))
    return 0
