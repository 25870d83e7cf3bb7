import io
import os
import random
import types

import numpy as np
import pytest
import torch

from covidlib import config
from covidlib.config import cpu_supports_bf16, format_summary, get_device, processor_name, runtime_summary, seed_everything
from covidlib.errors import InvalidInputError


def test_seed_everything_repeats_every_generator(monkeypatch):
    # seed_everything writes PYTHONHASHSEED: monkeypatch puts the session's value (or its
    # absence) back afterwards. setenv, not delenv: delenv of an absent variable records nothing.
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    seed_everything(7)
    first = (random.random(), np.random.rand(3), torch.rand(3))
    seed_everything(7)
    second = (random.random(), np.random.rand(3), torch.rand(3))
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    assert torch.equal(first[2], second[2])
    assert os.environ["PYTHONHASHSEED"] == "7"  # for child processes only
    seed_everything(8)
    assert random.random() != first[0] and not torch.equal(torch.rand(3), first[2])


@pytest.mark.parametrize("bad", [-1, 1.5, "0"])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(InvalidInputError, match="seed"):
        seed_everything(bad)


def test_auto_device_follows_cuda_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert get_device("auto").type == expected
    assert get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="no CUDA device"):
        get_device("cuda")


def test_unknown_device_is_rejected():
    with pytest.raises(InvalidInputError, match="device must be one of"):
        get_device("tpu")


def test_runtime_summary_names_setting_device_and_versions():
    summary = runtime_summary(setting="full", device="cpu", seed=3, dataset="phantom")
    assert summary["setting"] == "full" and summary["device"] == "cpu" and summary["seed"] == 3
    # the installed distribution's version: torch.__version__, or its release alone where only the
    # module adds the build tag (a CUDA image's torch: 2.11.0 installed, 2.11.0+cu130 imported)
    assert summary["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    text = format_summary(summary)
    assert text.splitlines()[0].startswith("setting") and "phantom" in text
    assert "started_unix" in summary and "started_" not in text  # kept for the record, not printed


def test_runtime_summary_names_the_processor_and_its_bfloat16(monkeypatch):
    cpuinfo = "processor\t: 0\nmodel name\t: Test CPU 9000\n\nprocessor\t: 1\nmodel name\t: Test CPU 9000\n"
    monkeypatch.setattr(config, "open", lambda *args, **kwargs: io.StringIO(cpuinfo), raising=False)
    summary = runtime_summary(setting="quick", device="cpu", seed=0, dataset="phantom")
    assert summary["device_name"] == "Test CPU 9000" == processor_name()


@pytest.mark.parametrize("bf16", [True, False])
def test_runtime_summary_records_what_cpu_supports_bf16_says(monkeypatch, bf16):
    monkeypatch.setattr(config, "cpu_supports_bf16", lambda: bf16)
    assert runtime_summary(setting="quick", device="cpu", seed=0, dataset="phantom")["cpu_bf16"] is bf16


@pytest.mark.parametrize(("mkldnn", "check", "expected"), [
    (True, lambda: True, True),  # oneDNN with native bfloat16 (AVX512-BF16 / AMX)
    (True, lambda: False, False),  # oneDNN that would emulate bfloat16 (AVX2 only)
    (True, lambda: 1, True),  # whatever the check returns is made a bool
    (True, None, False),  # a torch without the check
    (False, lambda: True, False),  # no oneDNN at all: the check is not trusted
])
def test_cpu_supports_bf16_asks_onednn(monkeypatch, mkldnn, check, expected):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)
    namespace = types.SimpleNamespace() if check is None else types.SimpleNamespace(_is_mkldnn_bf16_supported=check)
    monkeypatch.setattr(torch.ops, "mkldnn", namespace)
    assert cpu_supports_bf16() is expected


def test_choose_picks_the_value_of_the_setting_and_rejects_others():
    from covidlib.config import choose

    assert [choose(s, quick=1, reference=2, full=3) for s in ("quick", "reference", "full")] == [1, 2, 3]
    with pytest.raises(InvalidInputError, match="setting must be one of quick, reference, full"):
        choose("fast", quick=1, reference=2, full=3)
    with pytest.raises(InvalidInputError, match="setting must be one of"):
        runtime_summary(setting=True, device="cpu", seed=0, dataset="phantom")
