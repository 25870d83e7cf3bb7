"""Training one network across processes, GPUs or machines with PyTorch's DistributedDataParallel.

Launch a script with ``torchrun --nproc_per_node=N script.py``; in the script call
:func:`init_from_env` (reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``
that torchrun sets), wrap the network with :func:`wrap_model`, give each process its share of
the data with :func:`distributed_loader`, and train with the ordinary
:class:`covidlib.train.Trainer`. DDP averages the gradients of all processes after every
backward pass, so every process takes the same optimizer step and the replicas stay identical;
with a loss that is a mean over equal-sized local batches this is the same step as one
process would take on the whole batch. Only rank 0 should write checkpoints
(:func:`is_main_process`).

Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
VLDB 2020. No chapter needs it (one process trains each of their networks);
``tests/test_distributed.py`` runs two processes and checks them against one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from covidlib.config import get_device
from covidlib.errors import InvalidInputError

_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init_from_env(backend: str | None = None) -> torch.device:
    """Join the process group described by torchrun's environment variables; returns this
    process's device (``cuda:LOCAL_RANK`` with NCCL when GPUs are present, else the CPU with
    gloo). Raises :class:`InvalidInputError` naming the missing variables."""
    missing = [name for name in _REQUIRED_ENV if name not in os.environ]
    if missing:
        raise InvalidInputError(f"distributed training needs the environment variables {missing} "
                                "(start the script with torchrun)")
    use_cuda = torch.cuda.is_available() and backend in (None, "nccl")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        device = get_device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    else:
        device = get_device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def is_main_process() -> bool:
    """True on rank 0, or when no process group is running."""
    return not dist.is_initialized() or dist.get_rank() == 0


def wrap_model(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` moved to ``device`` and wrapped in DDP (gradients all-reduced and averaged).

    Rank 0's weights are broadcast to all processes at wrapping, so replicas start equal even
    when they were initialised differently. The wrapper's ``num_classes`` mirrors the model's
    (the Trainer reads it).
    """
    if not dist.is_initialized():
        raise InvalidInputError("wrap_model needs an initialised process group; call init_from_env() first")
    model = model.to(device)
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    wrapped.num_classes = getattr(model, "num_classes", 2)  # type: ignore[arg-type]  # nn.Module.__setattr__ is typed for Tensor | Module values; an int attribute is fine
    return wrapped


class EpochLoader:
    """A DataLoader that calls ``set_epoch`` on its sampler and dataset before each pass.

    :class:`~torch.utils.data.distributed.DistributedSampler` reshuffles only when told the
    epoch, and :class:`~covidlib.data.SliceDataset` draws its augmentation per epoch the same
    way. Each pass uses :attr:`epoch` and then counts it up; :meth:`set_epoch` (which
    :meth:`covidlib.train.Trainer.fit` calls before every epoch, also after a resume) sets the
    epoch of the next pass, so a resumed run draws the shuffles and augmentations of the epoch
    it stopped at, not epoch 0's. ``generator`` is the inner loader's (the Trainer
    checkpoints it).
    """

    def __init__(self, loader: DataLoader, start_epoch: int = 0) -> None:
        self.loader = loader
        self.epoch = 0
        self.set_epoch(start_epoch)
        self.generator = loader.generator

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (a non-negative integer)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InvalidInputError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        for owner in (self.loader.sampler, self.loader.dataset):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def distributed_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int,
                       drop_last: bool = True) -> EpochLoader:
    """This process's share of ``dataset``: ``batch_size`` items a step per process, drawn by
    a :class:`DistributedSampler` (seeded, disjoint between ranks, reshuffled each epoch).

    ``drop_last=True`` keeps every process's batches the same size, so the averaged gradient
    is exactly the whole-batch gradient of a mean loss.
    """
    if not dist.is_initialized():
        raise InvalidInputError("distributed_loader needs an initialised process group; call init_from_env() first")
    sampler: DistributedSampler[int] = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed)
    return EpochLoader(DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                                  generator=generator))


def cleanup() -> None:
    """Leave the process group (call at the end of a torchrun script)."""
    if dist.is_initialized():
        dist.destroy_process_group()
