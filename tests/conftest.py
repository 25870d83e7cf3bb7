"""Shared test settings and fixtures."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def pytest_configure(config) -> None:
    # The tests' networks are tiny: one thread is faster than two fighting over a 2-core CPU
    # (measured about 40x on a busy machine), and it keeps timings steady.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items) -> None:
    # `gpu` tests are collected everywhere (ci/test runs every marker) and skipped without CUDA.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Interrupted(Exception):
    """Stands for a process killed between two epochs in the resume tests."""


@pytest.fixture
def interrupt_after_epoch(monkeypatch):
    """``arm(n)`` makes the next ``Trainer.fit`` raise :class:`Interrupted` right after it wrote
    epoch ``n``'s ``last.pt``, as if the process had been killed there; returns the exception type."""
    import covidlib.train as train

    def arm(epoch: int) -> type[Exception]:
        real = train.save_checkpoint

        def save_then_stop(payload, path):
            written = real(payload, path)
            if Path(path).name == train.LAST_CHECKPOINT and payload["epoch"] == epoch:
                monkeypatch.setattr(train, "save_checkpoint", real)
                raise Interrupted(f"stopped after epoch {epoch}")
            return written

        monkeypatch.setattr(train, "save_checkpoint", save_then_stop)
        return Interrupted

    return arm


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("ablation")``: the script ``benchmarks/ablation.py`` as a module. Scripts run as
    files, with their folder first on ``sys.path`` (they import ``_nested_cv``), so it goes there too."""
    sys.path.insert(0, str(BENCHMARKS))
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    yield load
    for module in loaded.values():
        del sys.modules[module.__name__]
    sys.path.remove(str(BENCHMARKS))
