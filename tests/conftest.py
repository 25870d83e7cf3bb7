"""Shared test settings."""

import torch


def pytest_configure(config) -> None:
    # The tests' networks are tiny: one thread is faster than two fighting over a 2-core CPU
    # (measured about 40x on a busy machine), and it keeps timings steady.
    torch.set_num_threads(1)
