"""Training-step throughput of covidlib's U-Nets against MONAI's, on the CPU.

Goal: ``UNet2d`` and ``AttentionUNet2d`` train at least as fast as MONAI's ``BasicUNet`` and
``AttentionUnet`` at the same widths (256x256 images, batch 8, fp32 and bf16 autocast).
One step = forward, cross-entropy loss, backward, Adam update. The models are timed in
interleaved rounds (each round runs every model once per precision) so that load from other
processes on a shared machine hits all of them alike; the table gives the median step time.

MONAI is a benchmark-only dependency (``pip install monai==1.6.1 --no-deps``)::

    .venv/bin/python benchmarks/bench_unet.py --base-width 16 --rounds 3

Measured on the book's shared 2-core CPU (AVX512-BF16, load 11-16 from other jobs, so single
numbers move by +-30 %; compare rows of one run only), base width 16, 256x256, batch 8,
2 threads, images/s fp32 / bf16: covidlib UNet2d 0.52 / 0.72, MONAI BasicUNet 0.48 / 0.58,
covidlib AttentionUNet2d 0.41 / 0.59, MONAI AttentionUnet 0.51 / 0.73. With ``--threads 1
--size 128 --rounds 5`` (less noisy), seconds a step fp32: 1.35, 1.62, 1.57, 1.47. Our U-Net
is faster than BasicUNet; our attention U-Net is 7-25 % slower than MONAI's, which is a
lighter network (one 3x3 convolution per decoder level instead of two: 14 % fewer FLOPs), and
the gates themselves add 16 % to a U-Net step (full-resolution 1x1 convolutions and products).
``--channels-last`` (weights and inputs in NHWC for oneDNN) made a UNet2d fp32 step about 15 % faster in an
interleaved A/B on the same machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from covidlib.config import seed_everything
from covidlib.models import AttentionUNet2d, UNet2d


def build_models(width: int) -> dict[str, Callable[[], nn.Module]]:
    """Constructors of the four networks, at widths ``width * 2**level`` for levels 0..4."""
    from monai.networks.nets import AttentionUnet, BasicUNet

    widths = tuple(width * 2**level for level in range(5))
    return {
        "covidlib UNet2d": lambda: UNet2d(1, 2, base_width=width, depth=4),
        # BN + ReLU and bias-free convolutions, as ours; MONAI's defaults are instance norm and LeakyReLU
        "monai BasicUNet": lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(*widths, width),
                                             act=("relu", {"inplace": True}), norm="batch", bias=False),
        "covidlib AttentionUNet2d": lambda: AttentionUNet2d(1, 2, base_width=width, depth=4),
        "monai AttentionUnet": lambda: AttentionUnet(spatial_dims=2, in_channels=1, out_channels=2, channels=widths,
                                                     strides=(2, 2, 2, 2)),
    }


def forward_gflop(model: nn.Module, size: int) -> float:
    """Forward GFLOP for one ``size`` x ``size`` image (convolutions and matrix products, as
    counted by ``torch.utils.flop_counter``; elementwise work is not counted)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, size, size))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


class StepRunner:
    """One model with its optimizer and fixed batch; ``step()`` returns the seconds one step took."""

    def __init__(self, model: nn.Module, batch: int, size: int, bf16: bool, channels_last: bool) -> None:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=memory_format).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-4)
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 1, size, size, generator=generator).contiguous(memory_format=memory_format)
        self.masks = torch.randint(0, 2, (batch, size, size), generator=generator)
        self.bf16 = bf16

    def step(self) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(self.images)
        loss = F.cross_entropy(logits.float(), self.masks)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per model and precision")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated substrings of model names to keep")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runners: dict[tuple[str, str], StepRunner] = {}
    parameters: dict[str, int] = {}
    gflops: dict[str, float] = {}
    for name, build in build_models(args.base_width).items():
        if args.only and not any(key in name for key in args.only.split(",")):
            continue
        for precision in ("fp32", "bf16"):
            seed_everything(0)
            model = build()
            parameters[name] = sum(p.numel() for p in model.parameters())
            if name not in gflops:
                gflops[name] = forward_gflop(model, args.size)
            runners[(name, precision)] = StepRunner(model, args.batch, args.size, precision == "bf16", args.channels_last)

    for runner in runners.values():  # warm-up: allocator, oneDNN kernel selection
        runner.step()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for _ in range(args.rounds):
        for key, runner in runners.items():
            times[key].append(runner.step())

    print(f"torch {torch.__version__}, threads {args.threads}, batch {args.batch}, {args.size}x{args.size}, "
          f"base width {args.base_width}, channels_last {args.channels_last}, median of {args.rounds} steps")
    print(f"{'model':<26} {'params':>11} {'GFLOP/img':>10} {'fp32 img/s':>11} {'bf16 img/s':>11}")
    for name, count in parameters.items():
        rates = [args.batch / statistics.median(times[(name, p)]) for p in ("fp32", "bf16")]
        print(f"{name:<26} {count:>11,} {gflops[name]:>10.2f} {rates[0]:>11.2f} {rates[1]:>11.2f}")


if __name__ == "__main__":
    main()
