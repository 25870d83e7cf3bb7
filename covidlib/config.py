"""Run configuration: seeding, device choice and the runtime summary each chapter prints.

Introduced in chapter 01.
"""

from __future__ import annotations

import os
import platform
import random
import time
from importlib import metadata

import numpy as np
import torch

from covidlib.errors import InvalidInputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so a run repeats exactly on CPU."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))
    os.environ["PYTHONHASHSEED"] = str(int(seed))


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA when it is present and to the CPU otherwise.

    ``"cuda"`` (or ``"cuda:N"``) on a machine without CUDA raises a clear error instead of
    failing later inside a forward pass.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"device={device!r} was asked for but no CUDA device is available; "
                "use device='auto' or 'cpu'"
            )
        return torch.device(name)
    raise InvalidInputError(f"device must be one of {DEVICE_CHOICES} (or 'cuda:N'), got {device!r}")


def package_versions(names: tuple[str, ...] = ("covidlib", "torch", "numpy", "SimpleITK")) -> dict[str, str]:
    """Installed versions of ``names`` (``"missing"`` when not installed)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def runtime_summary(*, quick: bool, device: torch.device | str, seed: int, dataset: str) -> dict[str, object]:
    """The settings a chapter runs with, as a dict ready to print or to store in a record."""
    resolved = get_device(device)
    summary: dict[str, object] = {
        "mode": "quick" if quick else "full",
        "dataset": dataset,
        "device": str(resolved),
        "device_name": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "seed": seed,
    }
    summary.update(package_versions())
    # Where the chapter's clock starts: results.write_record stores the wall and CPU time since.
    summary["started_unix"] = time.time()
    summary["started_cpu_seconds"] = sum(os.times()[:4])
    return summary


def format_summary(summary: dict[str, object]) -> str:
    """Render a summary dict as aligned ``key: value`` lines."""
    width = max(len(k) for k in summary)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in summary.items())
