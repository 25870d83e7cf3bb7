"""Run configuration: seeding, device choice and the runtime summary each chapter prints.

Introduced in chapter 01.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import time
from collections.abc import Iterator
from importlib import metadata
from typing import TypeVar

import numpy as np
import torch

from covidlib.errors import InvalidInputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (all devices) so a run repeats exactly on CPU.

    It also sets ``os.environ["PYTHONHASHSEED"]``, which only child processes started afterwards
    see: the running interpreter fixed its ``str``/``bytes`` hash seed at start-up, so set
    ``PYTHONHASHSEED`` before starting Python when string hashing (e.g. set order) must repeat.
    """
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


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions and matrix products natively in oneDNN.

    True on CPUs with AVX512-BF16 or AMX (``torch.ops.mkldnn._is_mkldnn_bf16_supported``);
    elsewhere (e.g. AVX2-only CPUs) PyTorch emulates bfloat16 and a U-Net step is several times
    *slower* than in float32, so ``amp="auto"`` (:func:`covidlib.train.resolve_amp`) keeps float32.
    Introduced in chapter 04.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads, then restore the previous count.

    For per-slice work such as resizing and augmentation: its operations are too small to gain
    from several threads, and on a busy machine the threads' synchronisation made a 192 x 192
    ``SliceDataset`` item about 10x slower with 2 threads than with 1 (issue 14).
    Introduced in chapter 04.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInputError(f"torch_threads count must be a positive integer, got {count!r}")
    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def package_versions(names: tuple[str, ...] = ("covidlib", "torch", "numpy", "SimpleITK")) -> dict[str, str]:
    """Installed versions of ``names`` (``"missing"`` when not installed)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


#: The book's three settings, one code path: ``quick`` proves the code runs (phantom or real
#: data, minutes, CI); ``reference`` is real data sized for a 2-core CPU (its records are
#: committed and shown in the book); ``full`` is the report's settings (hours on a GPU).
SETTINGS = ("quick", "reference", "full")
T = TypeVar("T")


def check_setting(setting: str) -> str:
    """``setting`` when it is one of :data:`SETTINGS`, else a clear error."""
    if setting not in SETTINGS:
        raise InvalidInputError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    return setting


def choose(setting: str, *, quick: T, reference: T, full: T) -> T:
    """The value of a chapter knob for ``setting``: e.g. ``epochs = choose(setting, quick=12,
    reference=60, full=500)``. Introduced in chapter 01."""
    return {"quick": quick, "reference": reference, "full": full}[check_setting(setting)]


def processor_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def runtime_summary(*, setting: str, device: torch.device | str, seed: int, dataset: str) -> dict[str, object]:
    """The settings a chapter runs with, as a dict ready to print or to store in a record.

    Beside the seed and the threads, a CPU run's last digits depend on the processor
    (``device_name``) and on whether it computes in bfloat16 (``cpu_bf16``: what ``amp="auto"``
    does there, :func:`cpu_supports_bf16`).
    """
    resolved = get_device(device)
    summary: dict[str, object] = {
        "setting": check_setting(setting),
        "dataset": dataset,
        "device": str(resolved),
        "device_name": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else processor_name(),
        "cpu_bf16": cpu_supports_bf16(),
        "threads": torch.get_num_threads(),
        "seed": seed,
    }
    summary.update(package_versions())
    # Where the chapter's clock starts: results.write_record stores the wall and CPU time since.
    summary["started_unix"] = time.time()
    summary["started_cpu_seconds"] = sum(os.times()[:4])
    return summary


def format_summary(summary: dict[str, object]) -> str:
    """Render a summary dict as aligned ``key: value`` lines (the clock's start is kept, not shown)."""
    shown = {k: v for k, v in summary.items() if not k.startswith("started_")}
    width = max(len(k) for k in shown)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in shown.items())
