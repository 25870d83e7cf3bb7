"""Training-step throughput of covidlib's U-Nets against MONAI's, and how close they come to the CPU's peak.

Goal (issue 14): ``UNet2d`` and ``AttentionUNet2d`` train at least 1.2x as fast as MONAI's
``BasicUNet`` and ``AttentionUnet`` at the same widths and precision, and the faster network
reaches a large share of this CPU's matrix-multiply rate. One step = forward, cross-entropy,
backward, Adam update, on random ``size`` x ``size`` images in batches of ``batch``.

What is measured, all in one interleaved run (every round runs every configuration once,
so load from other processes on a shared machine hits all of them alike; the table gives
the median step time):

- the CPU's peak: GFLOPS of a large square matrix product (``torch.mm``) per precision and
  thread count, the best of a few repeats;
- each network's FLOPs per training step, counted by ``torch.utils.flop_counter`` on one
  step (forward and backward convolutions and matrix products; elementwise work, BatchNorm
  and the optimizer are not counted);
- images/s per network, width, precision (fp32, bf16 autocast) and thread count, the
  achieved GFLOPS (FLOPs per step / step time), the share of the peak at the same precision
  and threads, and the ratio to MONAI's matching network (UNet2d : BasicUNet,
  AttentionUNet2d : AttentionUnet).

covidlib's networks run in channels-last memory format by themselves (see
``covidlib.models.unet2d``); MONAI's run as shipped (NCHW) unless ``--monai-channels-last``.
bf16 is only timed by default where oneDNN has native bf16 kernels
(``covidlib.config.cpu_supports_bf16``): elsewhere bf16 is emulated and 10-400x slower than
fp32 (name it with ``--precisions fp32,bf16`` to time it anyway).

MONAI is a benchmark-only dependency (``.venv/bin/pip install -c ci/constraints.txt -e '.[bench]'``: monai 1.6.1)::

    .venv/bin/python benchmarks/bench_unet.py                               # the whole matrix
    .venv/bin/python benchmarks/bench_unet.py --widths 16 --threads 2 --rounds 3  # a quick check
    .venv/bin/python benchmarks/bench_unet.py --widths 16 --threads 1 --models unet --profile

Measured (issue 14) on the book's shared 2-core AMD EPYC (Zen 3: AVX2, no AVX512, no native
bf16) at load average 19-21 from other jobs, so only ratios within one run mean anything:
``--widths 16 --threads 1,2 --rounds 3`` at 256x256 gave peak fp32 ``torch.mm`` 50.6 / 31.0
GFLOPS (1 / 2 threads), 144.6 GFLOP per UNet2d step (MONAI BasicUNet 153.4, AttentionUNet2d
147.0, MONAI AttentionUnet 126.9), img/s UNet2d 0.14 / 0.12 against BasicUNet 0.09 / 0.09
(1.51x / 1.27x) and AttentionUNet2d 0.09 / 0.09 against AttentionUnet 0.13 / 0.10 (0.70x /
0.91x), all at 3-7 % of the (equally loaded) peak. On this CPU bf16 is emulated: a 2048^2
bf16 ``torch.mm`` ran at 0.2 GFLOPS against 79 fp32, a 3x3 convolution at 2 against 16-28, and
a 128x128 U-Net step about 10x slower than fp32. In an interleaved A/B of CPU seconds per
step (1 thread, 192x192, width 16, 5 rounds) channels-last and NCHW were equal (UNet2d 2.00
/ 2.04 s, AttentionUNet2d 2.32 / 2.10 s, +-20 % noise); on an AVX512 CPU channels-last had
made a UNet2d fp32 step about 15 % faster.

``--compile`` adds covidlib's networks under ``torch.compile`` (inductor), with their speed
against the same network run eagerly (``x eager``) and the first step's seconds, which hold the
compilation unless inductor's cache (``TORCHINDUCTOR_CACHE_DIR``) already has it. On a 2-core AMD
EPYC (Zen 3, float32), otherwise idle, ``--widths 16 --threads 2 --models unet,attention-unet
--size 160 --rounds 8 --compile`` with an empty cache gave 14.0 img/s eager against 13.7
compiled for UNet2d (0.98x; its first step 40.5 s) and 12.6 against 12.7 for AttentionUNet2d
(1.01x; 45.7 s): the eager step already reached 56 % and 51 % of the fp32 ``torch.mm`` peak, so
compiling, which fuses only the elementwise work between convolutions, leaves nothing to gain
there, and ``train`` does not compile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from covidlib.config import cpu_supports_bf16, seed_everything
from covidlib.models import AttentionUNet2d, UNet2d

MODEL_NAMES = {
    "unet": "covidlib UNet2d",
    "monai-unet": "monai BasicUNet",
    "attention-unet": "covidlib AttentionUNet2d",
    "monai-attention-unet": "monai AttentionUnet",
}
MONAI_COUNTERPART = {"unet": "monai-unet", "attention-unet": "monai-attention-unet"}


def build_model(key: str, width: int) -> nn.Module:
    """One of the four networks at widths ``width * 2**level`` for levels 0..4."""
    widths = tuple(width * 2**level for level in range(5))
    if key == "unet":
        return UNet2d(1, 2, base_width=width, depth=4)
    if key == "attention-unet":
        return AttentionUNet2d(1, 2, base_width=width, depth=4)
    from monai.networks.nets import AttentionUnet, BasicUNet

    if key == "monai-unet":
        # BN + ReLU and bias-free convolutions, as ours; MONAI's defaults are instance norm and LeakyReLU
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(*widths, width),
                         act=("relu", {"inplace": True}), norm="batch", bias=False)
    if key == "monai-attention-unet":
        return AttentionUnet(spatial_dims=2, in_channels=1, out_channels=2, channels=widths, strides=(2, 2, 2, 2))
    raise ValueError(f"unknown model {key!r}; choose from {sorted(MODEL_NAMES)}")


def matmul_gflops(dtype: torch.dtype, threads: int, max_size: int = 2048, min_seconds: float = 0.2) -> float:
    """The best GFLOPS of ``n x n @ n x n`` products in ``dtype``, ``n`` doubled from 256 until
    one product takes ``min_seconds`` or ``n`` reaches ``max_size`` (slow emulated bf16 stays small)."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    size, best = 256, 0.0
    while True:
        a = torch.randn(size, size, generator=generator).to(dtype)
        b = torch.randn(size, size, generator=generator).to(dtype)
        torch.mm(a, b)  # warm-up: kernel selection, packing buffers
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            torch.mm(a, b)
            seconds.append(time.perf_counter() - start)
        best = max(best, 2 * size**3 / min(seconds) / 1e9)
        if min(seconds) >= min_seconds or size >= max_size:
            return best
        size *= 2


def step_gflop(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> float:
    """GFLOP of one training step's forward and backward (``torch.utils.flop_counter``)."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images).float(), masks).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


@dataclass
class StepRunner:
    """One model with its Adam optimizer and a fixed random batch; :meth:`step` times one step."""

    model: nn.Module
    batch: int
    size: int
    bf16: bool
    channels_last: bool = False
    compiled: bool = False
    times: dict[int, list[float]] = field(default_factory=dict)
    first_step_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch documents Module.to(memory_format=...) (its docstring), its overloads omit it
        self.model.train()
        self.forward = torch.compile(self.model) if self.compiled else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-4)
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(self.batch, 1, self.size, self.size, generator=generator)
        self.masks = torch.randint(0, 2, (self.batch, self.size, self.size), generator=generator)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(self.images)
        F.cross_entropy(logits.float(), self.masks).backward()
        self.optimizer.step()

    def timed_step(self, threads: int) -> None:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        self.step()
        self.times.setdefault(threads, []).append(time.perf_counter() - start)


def speed_ratio(other: StepRunner | None, threads: int, seconds: float) -> str:
    """A table cell: how many times ``other``'s median step time is ``seconds`` (blank without ``other``)."""
    return f"{statistics.median(other.times[threads]) / seconds:>7.2f}" if other is not None else f"{'':>7}"


def profile_step(runner: StepRunner, threads: int, rows: int) -> str:
    """``torch.profiler`` table of one training step (after a warm-up), by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    runner.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def comma_list(kind: Callable[[str], object]) -> Callable[[str], list]:
    return lambda text: [kind(item) for item in text.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=comma_list(int), default=[16, 32], help="base widths (default 16,32)")
    parser.add_argument("--threads", type=comma_list(int), default=[1, 2], help="torch thread counts (default 1,2)")
    parser.add_argument("--precisions", type=comma_list(str), default=None,
                        help="fp32 and/or bf16 (default: both where the CPU has native bf16, else fp32)")
    parser.add_argument("--models", type=comma_list(str), default=list(MODEL_NAMES),
                        help=f"subset of {','.join(MODEL_NAMES)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--monai-channels-last", action="store_true", help="run MONAI's networks in channels-last too")
    parser.add_argument("--compile", action="store_true",
                        help="also time covidlib's networks under torch.compile (inductor; needs a C++ compiler)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step per configuration")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    precisions = args.precisions or (["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"])
    for key in args.models:
        if key not in MODEL_NAMES:
            parser.error(f"unknown model {key!r}; choose from {','.join(MODEL_NAMES)}")
    for precision in precisions:
        if precision not in ("fp32", "bf16"):
            parser.error(f"unknown precision {precision!r}; choose fp32 and/or bf16")

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peak = {(p, t): matmul_gflops(dtypes[p], t) for t in args.threads for p in precisions}

    runners: dict[tuple[str, int, str, bool], StepRunner] = {}
    parameters: dict[tuple[str, int], int] = {}
    gflop: dict[tuple[str, int], float] = {}
    for width in args.widths:
        for key in args.models:
            for precision in precisions:
                for compiled in [False, True] if args.compile and not key.startswith("monai") else [False]:
                    seed_everything(0)
                    runner = StepRunner(build_model(key, width), args.batch, args.size, precision == "bf16",
                                        channels_last=args.monai_channels_last and key.startswith("monai"),
                                        compiled=compiled)
                    parameters[(key, width)] = sum(p.numel() for p in runner.model.parameters())
                    if (key, width) not in gflop:
                        gflop[(key, width)] = step_gflop(runner.model, runner.images, runner.masks)
                    runners[(key, width, precision, compiled)] = runner

    if args.profile:
        for (key, width, precision, compiled), runner in runners.items():
            for threads in args.threads:
                print(f"\n=== profile: {MODEL_NAMES[key]}{' (compiled)' if compiled else ''}, width {width}, "
                      f"{precision}, {threads} thread(s) ===")
                print(profile_step(runner, threads, args.profile_rows))
        return

    for runner in runners.values():  # warm-up: allocator, oneDNN kernel selection, torch.compile's compilation
        for threads in args.threads:
            torch.set_num_threads(threads)
            start = time.perf_counter()
            runner.step()
            if runner.first_step_seconds is None:
                runner.first_step_seconds = time.perf_counter() - start
    for _ in range(args.rounds):
        for threads in args.threads:
            for runner in runners.values():
                runner.timed_step(threads)

    load = os.getloadavg()
    print(f"torch {torch.__version__}, batch {args.batch}, {args.size}x{args.size}, median of {args.rounds} interleaved "
          f"steps; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs; "
          f"MONAI channels-last {args.monai_channels_last}")
    print("peak (torch.mm): " + ", ".join(f"{p} {t} thread(s) {rate:.1f} GFLOPS" for (p, t), rate in peak.items()))
    header = (f"{'model':<34} {'width':>5} {'prec':>4} {'thr':>3} {'params':>10} {'GFLOP/step':>10} "
              f"{'img/s':>7} {'GFLOPS':>7} {'% peak':>6} {'x MONAI':>7} {'x eager':>7} {'1st step s':>10}")
    print(header)
    print("-" * len(header))
    for (key, width, precision, compiled), runner in runners.items():
        for threads in args.threads:
            seconds = statistics.median(runner.times[threads])
            achieved = gflop[(key, width)] / seconds
            name = MODEL_NAMES[key] + (" compiled" if compiled else "")
            print(f"{name:<34} {width:>5} {precision:>4} {threads:>3} {parameters[(key, width)]:>10,} "
                  f"{gflop[(key, width)]:>10.2f} {args.batch / seconds:>7.2f} {achieved:>7.1f} "
                  f"{100 * achieved / peak[(precision, threads)]:>6.1f} "
                  f"{speed_ratio(runners.get((MONAI_COUNTERPART.get(key, ''), width, precision, False)), threads, seconds)} "
                  f"{speed_ratio(runners.get((key, width, precision, False)) if compiled else None, threads, seconds)} "
                  f"{runner.first_step_seconds:>10.1f}")


if __name__ == "__main__":
    main()
