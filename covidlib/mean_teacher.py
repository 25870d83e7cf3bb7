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
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from covidlib.errors import InvalidInputError
from covidlib.train import Trainer, TrainConfig, split_batch, validate_batch

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


@dataclass
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

