"""Training: the report's recipe with best-model selection, early stopping and exact resume.

The recipe (report section 5.1): Adam with learning rate 2e-4, multiplied by 0.8 every 25
epochs (StepLR), at most 500 epochs, validation after every epoch, the best model by
validation Dice kept, and a stop after 30 epochs without improvement.

A :class:`Trainer` writes ``last.pt`` after every epoch (model, optimizer, scheduler, every
random state, history) and ``best.pt`` whenever validation Dice improves, each through a
temporary file and a rename. ``fit(..., resume=True)`` continues from ``last.pt`` and ends with
the same weights, bit for bit on the CPU, as a run that was never interrupted.

Other objectives (mean teacher, chapter 08) reuse the loop by subclassing: override
:meth:`Trainer.training_loss` for the loss of one batch, :meth:`Trainer.after_step` for work
after each optimizer step (an EMA update), :meth:`Trainer.validation_model` for the network
that is validated, and :meth:`Trainer.extra_state` / :meth:`Trainer.load_extra_state` for
anything else the checkpoint must carry.

Introduced in chapter 04.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import pickle
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib.averaging import ema_update
from covidlib.config import cpu_supports_bf16, get_device
from covidlib.errors import InvalidInputError
from covidlib.io import atomic_path
from covidlib.losses import get_loss
from covidlib.augment import mixup
from covidlib.metrics import as_binary_mask, dice, iou, segmentation_metrics, sensitivity, specificity, summarise
from covidlib.options import AMP_CHOICES

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"

# Called as batch_transform(images, targets, rng) on each training batch (after the checks,
# before the forward pass) with the trainer's seeded, checkpointed generator; mixup turns
# class-index targets (B, H, W) into soft ones (B, C, H, W).
BatchTransform = Callable[[torch.Tensor, torch.Tensor, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]


def mixup_transform(alpha: float, num_classes: int = 2) -> BatchTransform:
    """A :data:`BatchTransform` doing batch-level mixup with ``lam ~ Beta(alpha, alpha)``.

    Zhang et al., "mixup: Beyond empirical risk minimization", ICLR 2018; see
    :func:`covidlib.augment.mixup`. Introduced in chapter 04.
    """
    def transform(images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        mixed_images, soft_targets, _ = mixup(images, targets, alpha, rng, num_classes=num_classes)
        return mixed_images, soft_targets

    return transform


@dataclass
class TrainConfig:
    """Settings of one training run; the defaults are the report's recipe (section 5.1).

    ``amp``: ``"auto"`` uses bfloat16 autocast on a GPU that supports it, float16 with gradient
    scaling on older GPUs, bfloat16 on a CPU with native bfloat16 kernels (AVX512-BF16 or AMX,
    :func:`covidlib.config.cpu_supports_bf16`; U-Net steps about 2x faster there) and float32 on
    other CPUs, where bfloat16 is emulated and about 10x *slower*; ``"bf16"``/``"fp16"`` force
    one; ``"off"`` trains in float32. Under autocast only convolutions and matrix products (and
    the layers between them) run in bfloat16: the loss and its softmax (the logits are cast to
    float32 first), the BatchNorm running statistics, the weights, their gradients and Adam's
    moments stay float32 (issue 14 traced this).
    ``max_steps_per_epoch`` caps the batches of an epoch (quick mode); ``None`` = all.
    ``ema_decay``: above 0, an exponential moving average of the weights with this decay
    (:func:`covidlib.averaging.ema_update`, one update a step) is what is validated and kept,
    instead of the weights of the step; 0 (the report's recipe) keeps the weights themselves.
    """

    epochs: int = 500
    lr: float = 2e-4
    step_size: int = 25
    gamma: float = 0.8
    patience: int = 30
    loss: str = "ce+dice"
    amp: str = "auto"
    max_steps_per_epoch: int | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epochs", "step_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InvalidInputError(f"TrainConfig.lr must be positive, got {self.lr!r}")
        if not (isinstance(self.gamma, (int, float)) and 0 < self.gamma <= 1):
            raise InvalidInputError(f"TrainConfig.gamma must be in (0, 1], got {self.gamma!r}")
        if self.amp not in AMP_CHOICES:
            raise InvalidInputError(f"TrainConfig.amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.max_steps_per_epoch is not None and (not isinstance(self.max_steps_per_epoch, int) or self.max_steps_per_epoch < 1):
            raise InvalidInputError(f"TrainConfig.max_steps_per_epoch must be None or a positive integer, got {self.max_steps_per_epoch!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInputError(f"TrainConfig.seed must be a non-negative integer, got {self.seed!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise InvalidInputError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (``None`` = float32 throughout)."""
    if amp not in AMP_CHOICES:
        raise InvalidInputError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise InvalidInputError("amp='fp16' needs a CUDA device; use amp='bf16' or 'off' on the CPU")
        return torch.float16
    if amp == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            warnings.warn("amp='bf16' on a CPU without native bfloat16 kernels (AVX512-BF16/AMX): PyTorch emulates "
                          "them and training runs several times slower than amp='off'", RuntimeWarning, stacklevel=2)
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def validate_batch(images: torch.Tensor, targets: torch.Tensor, num_classes: int = 2,
                   *, name: str = "batch") -> None:
    """Check a training batch before it reaches the network.

    ``images`` (B, C, H, W) finite floats; ``targets`` either class indices (B, H, W) in
    ``[0, num_classes)`` or probabilities (B, num_classes, H, W) that sum to 1 over classes.
    Raises :class:`InvalidInputError` naming the problem.
    """
    if images.ndim != 4:
        raise InvalidInputError(f"{name}: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if not torch.is_floating_point(images):
        raise InvalidInputError(f"{name}: images must be floating point, got {images.dtype}")
    if not torch.isfinite(images).all():
        raise InvalidInputError(f"{name}: images contain NaN or infinite values")
    batch, _, height, width = images.shape
    if targets.ndim == 3:
        if tuple(targets.shape) != (batch, height, width):
            raise InvalidInputError(f"{name}: mask shape {tuple(targets.shape)} does not match image shape "
                                    f"{tuple(images.shape)} (expected ({batch}, {height}, {width}))")
        if torch.is_floating_point(targets):
            raise InvalidInputError(f"{name}: class-index masks must be integers, got {targets.dtype}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            found = torch.unique(targets)[:10].tolist()
            raise InvalidInputError(f"{name}: mask values must be class indices in [0, {num_classes}) "
                                    f"(0/1 for a binary mask), found {found}")
    elif targets.ndim == 4:
        if targets.shape[0] != batch or tuple(targets.shape[2:]) != (height, width):
            raise InvalidInputError(f"{name}: soft target shape {tuple(targets.shape)} does not match image shape {tuple(images.shape)}")
        if targets.shape[1] != num_classes:
            raise InvalidInputError(f"{name}: soft target has {targets.shape[1]} classes, the network {num_classes}")
        if not torch.isfinite(targets).all():
            raise InvalidInputError(f"{name}: soft targets contain NaN or infinite values")
        if (targets < 0).any() or not torch.allclose(targets.sum(1), torch.ones_like(targets[:, 0]), atol=1e-4):
            raise InvalidInputError(f"{name}: soft targets must be probabilities summing to 1 over dim 1")
    else:
        raise InvalidInputError(f"{name}: targets must be (B, H, W) class indices or (B, C, H, W) probabilities, "
                                f"got shape {tuple(targets.shape)}")


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and targets of a loader batch: a dict with ``image``/``mask`` or a pair."""
    if isinstance(batch, Mapping):
        if "image" not in batch or "mask" not in batch:
            raise InvalidInputError(f"batch dict needs 'image' and 'mask' keys, got {sorted(batch)}")
        return batch["image"], batch["mask"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise InvalidInputError(f"a batch must be a dict with 'image'/'mask' or an (image, mask) pair, got {type(batch).__name__}")


# --- random states as tensors and plain types, so checkpoints load with weights_only=True ---

def capture_rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) and, if given, a DataLoader generator's state."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),  # type: ignore[attr-defined]  # the global RandomState (MT19937) gives the legacy tuple, never a dict
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def restore_rng_state(state: Mapping[str, Any], loader_generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def set_loader_epoch(loader: Iterable[Any], epoch: int) -> None:
    """Tell ``loader`` which epoch its next pass is: ``loader.set_epoch`` when it has one (an
    :class:`~covidlib.distributed.EpochLoader`), else its sampler's and dataset's (a
    DistributedSampler reshuffles and a :class:`~covidlib.data.SliceDataset` draws its
    augmentation by epoch). The Trainer calls it before every epoch, after a resume too, so
    the resumed epochs see the same batches as an uninterrupted run."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    for owner in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(epoch)  # type: ignore[union-attr]  # hasattr is False for None


def save_checkpoint(payload: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: never a partial file."""
    with atomic_path(path) as tmp:
        torch.save(dict(payload), tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :class:`Trainer`, loaded with ``weights_only=True`` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own message advises the unsafe weights_only=False
        raise InvalidInputError(f"checkpoint {path} cannot be read: it holds no PyTorch tensors and plain values "
                                "(damaged, or objects that a weights-only load refuses)") from exc
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InvalidInputError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {reason})") from exc


def add_checkpoint_metadata(path: str | Path, **values: Any) -> Path:
    """Add ``values`` (plain types) to the ``metadata`` of the checkpoint at ``path``, rewritten
    atomically: facts learnt after training, such as the threshold chosen on the validation slices."""
    payload = load_checkpoint(path)
    payload["metadata"] = {**dict(payload.get("metadata") or {}), **values}
    return save_checkpoint(payload, path)


class Trainer:
    """Train a segmentation network with the report's recipe; see the module docstring.

    ``model`` maps (B, C_in, H, W) to logits (B, num_classes, H, W). ``out_dir`` receives
    ``last.pt``/``best.pt`` (no files when ``None``). ``batch_transform`` is applied to each
    training batch with the trainer's own seeded generator (mixup). ``metadata`` (plain types)
    is stored in every checkpoint, e.g. the model's constructor arguments; its ``"fingerprint"``
    (see :mod:`covidlib.fingerprint`) keys the run, so ``fit(resume=True)`` continues only a
    ``last.pt`` written with the same one.

    Introduced in chapter 04.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None, *, out_dir: str | Path | None = None,
                 batch_transform: BatchTransform | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        self.config = config or TrainConfig()
        self.device = get_device(self.config.device)
        self.model = model.to(self.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.batch_transform = batch_transform
        self.metadata = dict(metadata or {})
        self.num_classes = int(getattr(model, "num_classes", 2))
        self.amp_dtype = resolve_amp(self.config.amp, self.device)
        self.loss_fn = get_loss(self.config.loss)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=self.config.step_size, gamma=self.config.gamma)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.rng = np.random.default_rng(self.config.seed)
        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self.best_metric = -float("inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_early = False
        self.averaged: nn.Module | None = None
        if self.config.ema_decay > 0:
            self.averaged = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer_steps = 0

    # --- hooks for other objectives -------------------------------------------------------

    def training_loss(self, batch: Any) -> torch.Tensor:
        """The loss of one training batch (runs under autocast). Override for other objectives."""
        images, targets = split_batch(batch)
        images = images.to(self.device)
        targets = targets.to(self.device)
        validate_batch(images, targets, self.num_classes, name="training batch")
        if self.batch_transform is not None:
            images, targets = self.batch_transform(images, targets, self.rng)
        return self.loss_fn(self.model(images).float(), targets)

    def after_step(self) -> None:
        """Called after each optimizer step (mean teacher updates its EMA weights here)."""

    def validation_model(self) -> nn.Module:
        """The network that is validated, kept as best and saved in ``best.pt``: the weights'
        moving average with ``config.ema_decay``, else the network trained."""
        return self.model if self.averaged is None else self.averaged

    def extra_state(self) -> dict[str, Any]:
        """Anything more a subclass must checkpoint (tensors and plain types only)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # --- the loop --------------------------------------------------------------------------

    def train_step(self, batch: Any) -> float:
        """One optimizer step on ``batch``; returns the loss as a float."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.amp_dtype):
            loss = self.training_loss(batch)
        if not torch.isfinite(loss):
            raise InvalidInputError(f"training loss became {loss.item()} at epoch {self.epoch + 1}; "
                                    "check the inputs or lower the learning rate")
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.after_step()
        if self.averaged is not None:
            ema_update(self.averaged, self.model, self.config.ema_decay, self.optimizer_steps)
        self.optimizer_steps += 1
        return float(loss.detach())

    def fit(self, train_loader: Iterable[Any], val_loader: Iterable[Any], *, resume: bool = False,
            progress_label: str = "epochs") -> list[dict[str, float]]:
        """Train until ``config.epochs`` or early stopping; returns :attr:`history`.

        ``progress_label`` names the progress bar, so that the stages of one run (supervised, then
        semi-supervised) can be told apart.

        ``resume=True`` continues from ``out_dir/last.pt`` when it exists and carries the same
        ``metadata["fingerprint"]`` as this Trainer (a fresh start otherwise: a checkpoint of
        other settings, inputs or code is never continued). At the end the model holds the best
        weights by validation Dice (with ``config.ema_decay``: the best average's).
        """
        loader_generator = getattr(train_loader, "generator", None)
        if resume and self.out_dir is None:
            raise InvalidInputError("fit(resume=True) needs the Trainer's out_dir to find last.pt")
        state = self._resumable_state() if resume else None
        if state is not None:
            self._load_training_state(state, loader_generator)
        else:
            self._start_fresh()
        config = self.config
        bar = tqdm(total=config.epochs, initial=self.epoch, desc=progress_label, disable=not config.progress)
        while self.epoch < config.epochs and not self.stopped_early:
            start = time.perf_counter()
            set_loader_epoch(train_loader, self.epoch)
            losses = [self.train_step(batch) for batch in self._limited(train_loader)]
            if not losses:
                raise InvalidInputError("the training loader yielded no batches")
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            summary = evaluate(self.validation_model(), val_loader, self.device, amp=self.amp_dtype)["summary"]
            val_dice = float(summary["dice"]["mean"])
            self.epoch += 1
            improved = val_dice > self.best_metric
            if improved:
                self.best_metric, self.best_epoch = val_dice, self.epoch
                self.best_state = {k: v.detach().clone() for k, v in self.validation_model().state_dict().items()}
            elif self.epoch - self.best_epoch >= config.patience:
                self.stopped_early = True
            self.history.append({"epoch": self.epoch, "train_loss": float(np.mean(losses)), "val_dice": val_dice,
                                 "lr": lr, "seconds": time.perf_counter() - start, "best": improved})
            if self.out_dir is not None:
                if improved:
                    save_checkpoint(self._best_payload(), self.out_dir / BEST_CHECKPOINT)
                save_checkpoint(self._training_payload(loader_generator), self.out_dir / LAST_CHECKPOINT)
            bar.update(1)
            bar.set_postfix(loss=f"{self.history[-1]['train_loss']:.4f}", val_dice=f"{val_dice:.4f}", best=f"{self.best_metric:.4f}")
        bar.close()
        if self.best_state is not None:
            self.validation_model().load_state_dict(self.best_state)
            if self.averaged is not None:
                self.model.load_state_dict(self.best_state)
        return self.history

    # --- internals ---------------------------------------------------------------------------

    def _limited(self, loader: Iterable[Any]) -> Iterator[Any]:
        for step, batch in enumerate(loader):
            if self.config.max_steps_per_epoch is not None and step >= self.config.max_steps_per_epoch:
                break
            yield batch

    def _resumable_state(self) -> dict[str, Any] | None:
        """``last.pt`` when it exists and was written by the same run: a ``metadata["fingerprint"]``
        that differs from this Trainer's marks a checkpoint of other settings, data or code."""
        assert self.out_dir is not None
        path = self.out_dir / LAST_CHECKPOINT
        if not path.exists():
            return None
        state = load_checkpoint(path)
        if state.get("metadata", {}).get("fingerprint") != self.metadata.get("fingerprint"):
            return None
        return state

    def _start_fresh(self) -> None:
        self._seed()
        if self.out_dir is not None:
            # a best.pt left by another run must not stand for this one's
            (self.out_dir / BEST_CHECKPOINT).unlink(missing_ok=True)

    def _seed(self) -> None:
        random.seed(self.config.seed)
        np.random.seed(self.config.seed)
        torch.manual_seed(self.config.seed)
        self.rng = np.random.default_rng(self.config.seed)

    def _best_payload(self) -> dict[str, Any]:
        return {"model": self.best_state, "epoch": self.best_epoch, "val_dice": self.best_metric,
                "config": dataclasses.asdict(self.config), "metadata": copy.deepcopy(self.metadata)}

    def _training_payload(self, loader_generator: torch.Generator | None) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(loader_generator),
            "batch_rng": self.rng.bit_generator.state,
            "epoch": self.epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "optimizer_steps": self.optimizer_steps,
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
            "history": self.history,
            "config": dataclasses.asdict(self.config),
            "metadata": copy.deepcopy(self.metadata),
            "extra": self.extra_state(),
        }

    def _load_training_state(self, state: Mapping[str, Any], loader_generator: torch.Generator | None) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"], loader_generator)
        self.rng.bit_generator.state = state["batch_rng"]
        self.epoch = int(state["epoch"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        self.stopped_early = bool(state["stopped_early"])
        self.optimizer_steps = int(state["optimizer_steps"])
        if self.averaged is not None:
            self.averaged.load_state_dict(state["averaged"])
        self.history = [dict(row) for row in state["history"]]
        self.load_extra_state(state["extra"])
        best_path = self.out_dir / BEST_CHECKPOINT if self.out_dir is not None else None
        if best_path is not None and best_path.exists():
            self.best_state = load_checkpoint(best_path)["model"]


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray | torch.Tensor, device: str | torch.device = "auto",
                  batch_size: int = 8, *, amp: torch.dtype | None = None) -> np.ndarray:
    """Foreground probability maps (N, H, W) float32 in [0, 1] for images (N, C, H, W) or (N, H, W).

    The foreground is class 1 of the softmax over the network's logits.
    Introduced in chapter 04.
    """
    tensor = torch.as_tensor(images, dtype=torch.float32)
    if tensor.ndim == 3:
        tensor = tensor[:, None]
    if tensor.ndim != 4:
        raise InvalidInputError(f"images must be (N, C, H, W) or (N, H, W), got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise InvalidInputError("images contain NaN or infinite values")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be positive, got {batch_size}")
    resolved = get_device(device)
    model = model.to(resolved).eval()
    chunks = []
    for start in range(0, len(tensor), batch_size):
        with autocast_context(resolved, amp):
            logits = model(tensor[start:start + batch_size].to(resolved))
        chunks.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
    if not chunks:
        return np.zeros((0, *tensor.shape[2:]), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], device: str | torch.device = "auto", *,
             threshold: float = 0.5, spacing: tuple[float, ...] | None = None,
             amp: torch.dtype | None = None) -> dict[str, Any]:
    """Segmentation metrics of ``model`` on ``loader``, per case and summarised.

    Slices are grouped into cases by the batch's ``case_id`` (in COVID-SemiSeg every slice is
    its own case) and stacked in ``slice_index`` order; the prediction is foreground
    probability > ``threshold``. Per case: dice, iou, sensitivity, specificity, and with
    ``spacing`` (mm, one value per axis of a case's stack ``(z, y, x)``) also hd95 and nsd;
    empty-mask conventions are :mod:`covidlib.metrics`'. Returns ``{"per_case": {case_id:
    {metric: value}}, "summary": {metric: covidlib.metrics.summarise(values)}}``.
    Introduced in chapter 04.
    """
    resolved = get_device(device)
    model = model.to(resolved)
    was_training = model.training
    model.eval()
    slices: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for batch in loader:
        images, targets = split_batch(batch)
        if targets.ndim != 3:
            raise InvalidInputError(f"evaluation needs (B, H, W) class-index masks, got shape {tuple(targets.shape)}")
        validate_batch(images, targets, name="evaluation batch")
        with autocast_context(resolved, amp):
            logits = model(images.to(resolved))
        probabilities = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
        case_ids = batch.get("case_id") if isinstance(batch, Mapping) else None
        slice_indices = batch.get("slice_index") if isinstance(batch, Mapping) else None
        for i in range(len(images)):
            case = str(case_ids[i]) if case_ids is not None else f"slice{sum(map(len, slices.values()))}"
            index = int(slice_indices[i]) if slice_indices is not None else 0
            target = as_binary_mask(targets[i], f"mask of case {case}")
            slices.setdefault(case, []).append((index, probabilities[i] > threshold, target))
    model.train(was_training)
    if not slices:
        raise InvalidInputError("the evaluation loader yielded no batches")
    per_case = {}
    for case, items in slices.items():
        items.sort(key=lambda item: item[0])
        prediction = np.stack([item[1] for item in items])
        target = np.stack([item[2] for item in items])
        if spacing is None:
            per_case[case] = {"dice": dice(prediction, target), "iou": iou(prediction, target),
                              "sensitivity": sensitivity(prediction, target),
                              "specificity": specificity(prediction, target)}
        else:
            per_case[case] = segmentation_metrics(prediction, target, spacing)
    names = next(iter(per_case.values())).keys()
    summary = {name: summarise(row[name] for row in per_case.values()) for name in names}
    return {"per_case": per_case, "summary": summary}
