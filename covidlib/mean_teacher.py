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

Introduced in chapter 08.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from covidlib.coarse import Box, predict_boxes_2d
from covidlib.errors import InvalidInputError
from covidlib.models import get_model
from covidlib.pseudo import PseudoLabelConfig, PseudoPatchDataset, build_dictionary, pseudo_label
from covidlib.train import Trainer, TrainConfig, evaluate, split_batch, validate_batch
from covidlib.transfer import SliceTraining, fit_volumes, slice_loader

VALIDATE_CHOICES = ("teacher", "student")


def ema_alpha(alpha: float, step: int) -> float:
    """The warm-up EMA decay ``min(1 - 1/(step + 1), alpha)`` (Tarvainen and Valpola 2017)."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be in [0, 1], got {alpha!r}")
    if step < 0:
        raise InvalidInputError(f"step must be non-negative, got {step!r}")
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float, step: int) -> float:
    """``teacher <- a_t teacher + (1 - a_t) student`` for every parameter and float buffer; returns ``a_t``.

    Float buffers (BatchNorm running mean/variance) are averaged like weights, so the teacher
    can run in eval mode; integer buffers (``num_batches_tracked``) are copied. The two
    networks must have the same architecture.
    """
    decay = ema_alpha(alpha, step)
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    if teacher_state.keys() != student_state.keys():
        raise InvalidInputError("teacher and student have different parameter names: they must be copies of one network")
    for name, value in teacher_state.items():
        source = student_state[name]
        if value.shape != source.shape:
            raise InvalidInputError(f"teacher and student differ at {name}: {tuple(value.shape)} vs {tuple(source.shape)}")
        if value.is_floating_point():
            value.mul_(decay).add_(source.detach(), alpha=1.0 - decay)
        else:
            value.copy_(source)
    return decay


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


class MeanTeacher(Trainer):
    """Train a copy of ``model`` (the student) with labels, weighted pseudo-labels and a mean teacher.

    ``pseudo_patches``: a dataset whose items hold ``image`` (1, P, P), ``mask`` (C, P, P) soft
    targets and ``weight`` (e.g. :class:`covidlib.pseudo.PseudoPatchDataset`), or ``None`` for
    no pseudo-labels. Each step draws ``pseudo_batch_size`` of them with the trainer's seeded,
    checkpointed generator. The loss of one step is
    ``sup + pseudo_weight * sum_i w_i l_i / sum_i w_i + lambda(t) * (consistency on labelled + pseudo inputs)``.

    With ``consistency_weight=0`` no teacher is run and ``validate`` should be ``"student"``:
    that is plain fine-tuning on labels plus pseudo-labels, the book's middle arm.
    Introduced in chapter 08.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None,
                 mean_teacher: MeanTeacherConfig | None = None, *, pseudo_patches: Dataset | None = None,
                 out_dir: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(model, config, out_dir=out_dir, metadata=metadata)
        self.mean_teacher = mean_teacher or MeanTeacherConfig()
        self.pseudo_patches = pseudo_patches
        if pseudo_patches is not None and len(pseudo_patches) == 0:
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
        size = min(self.mean_teacher.pseudo_batch_size, len(self.pseudo_patches))
        chosen = self.rng.choice(len(self.pseudo_patches), size=size, replace=False)
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
        if self.pseudo_patches is not None and self.mean_teacher.pseudo_weight > 0:
            patches, soft_targets, weights = self._pseudo_batch()
            inputs.append(patches)
            student_logits.append(self.model(self._noise(patches)).float())
            per_patch = torch.stack([self.loss_fn(student_logits[-1][i:i + 1], soft_targets[i:i + 1])
                                     for i in range(len(patches))])
            pseudo = (weights * per_patch).sum() / weights.sum().clamp(min=1e-8)
            loss = loss + self.mean_teacher.pseudo_weight * pseudo
            terms["pseudo"] = float(pseudo.detach())
        ramp = self.mean_teacher.consistency_weight * sigmoid_rampup(self.global_step, self.mean_teacher.rampup_steps)
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



# --- the book's comparison: supervised A' vs + pseudo-labels vs + mean teacher ----------------

ARMS = ("supervised", "pseudo_labels", "mean_teacher")


@dataclass(frozen=True)
class SemiSupervisedSettings:
    """Everything one fold of the comparison needs.

    ``supervised``: how A' is trained on the labelled slices (:class:`~covidlib.transfer.SliceTraining`);
    ``semi``: the Trainer settings of the two semi-supervised arms, which start from A';
    ``pseudo``/``mean_teacher``: their settings; ``network``/``base_width``/``depth``: the 2D U-Net.
    """

    supervised: SliceTraining
    semi: TrainConfig
    pseudo: PseudoLabelConfig = dataclasses.field(default_factory=PseudoLabelConfig)
    mean_teacher: MeanTeacherConfig = dataclasses.field(default_factory=MeanTeacherConfig)
    network: str = "unet"
    base_width: int = 16
    depth: int = 4


def semi_supervised_fold(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], train_ids: Sequence[str],
                         val_ids: Sequence[str], test_ids: Sequence[str], unlabelled: Sequence[np.ndarray],
                         settings: SemiSupervisedSettings, *, unlabelled_boxes: Sequence[Box | None] | None = None,
                         initial_state: Mapping[str, torch.Tensor] | None = None,
                         progress: bool = False) -> dict[str, Any]:
    """Train A' on ``train_ids`` (selected on ``val_ids``), pseudo-label ``unlabelled``, train
    the two semi-supervised arms from A', and return each arm's Dice on ``test_ids``.

    ``arrays``: ``{case_id: (image (z, y, x) float32, lesion (z, y, x) uint8)}`` (a 2D slice is
    ``z = 1``); ``unlabelled``: images (z, y, x) or (H, W) on the same intensity scale.
    ``unlabelled_boxes``: coarse boxes (e.g. from :func:`covidlib.coarse.predict_boxes_3d`);
    ``None`` takes them from A''s own prediction (2D slices). ``initial_state``: pretrained
    weights for A' (transfer learning); ``None`` trains it from scratch.
    Returns ``{"dice": {arm: mean test Dice}, "per_case": {arm: {case: Dice}}, "pseudo": counts,
    "seconds": {stage: wall time}, "history": {arm: learning curve}}``. Introduced in chapter 08.
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
    test_loader = slice_loader(arrays, test_ids, settings.supervised, training=False, seed=seed)
    device = supervised.device
    results: dict[str, Any] = {"dice": {}, "per_case": {}, "history": {"supervised": supervised.history}}

    def record(arm: str, network: nn.Module) -> None:
        evaluation = evaluate(network, test_loader, device)
        results["dice"][arm] = float(evaluation["summary"]["dice"]["mean"])
        results["per_case"][arm] = {case: row["dice"] for case, row in evaluation["per_case"].items()}

    record("supervised", supervised.model)

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    images = [arrays[c][0] for c in train_ids]
    masks = [arrays[c][1] for c in train_ids]
    if unlabelled_boxes is None:
        unlabelled_boxes = predict_boxes_2d(supervised.model, unlabelled, device=device)
    dictionary = build_dictionary(supervised.model, images, masks, settings.pseudo, rng, device=device,
                                  amp=supervised.amp_dtype)
    labels = pseudo_label(supervised.model, dictionary, unlabelled, unlabelled_boxes, settings.pseudo, rng,
                          device=device, amp=supervised.amp_dtype, progress=progress)
    patches = PseudoPatchDataset(unlabelled, labels, dictionary)
    seconds["pseudo_labelling"] = time.perf_counter() - start
    results["pseudo"] = {"unlabelled_images": len(unlabelled),
                         "images_with_box": int(sum(b is not None for b in unlabelled_boxes)),
                         "patches": len(labels.locations), "accepted": labels.num_accepted,
                         "dictionary": len(dictionary.features),
                         "best_similarity_quantiles": np.quantile(labels.scores[:, 0], [0.05, 0.5, 0.95]).tolist()
                         if len(labels.scores) else []}

    arms = {"pseudo_labels": dataclasses.replace(settings.mean_teacher, consistency_weight=0.0, validate="student"),
            "mean_teacher": settings.mean_teacher}
    for arm, arm_config in arms.items():
        start = time.perf_counter()
        student = copy.deepcopy(supervised.model)
        trainer = MeanTeacher(student, settings.semi, arm_config, pseudo_patches=patches)
        trainer.fit(slice_loader(arrays, train_ids, settings.supervised, training=True, seed=seed),
                    slice_loader(arrays, val_ids, settings.supervised, training=False, seed=seed))
        record(arm, trainer.validation_model())
        results["history"][arm] = trainer.history
        seconds[arm] = time.perf_counter() - start
    results["seconds"] = seconds
    return results
