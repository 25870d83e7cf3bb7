"""Exponential moving averages of a network's weights: the mean teacher's teacher, and the averaged
model a supervised run may validate and keep instead of its last weights.

``theta'_t = a_t theta'_{t-1} + (1 - a_t) theta_t`` with the warm-up ``a_t = min(1 - 1/(t+1), a)``
(Tarvainen and Valpola, "Mean teachers are better role models", NeurIPS 2017), so that early on the
average follows the network closely. Averaging the weights of the last few hundred steps smooths the
noise of a learning rate that is still high (Polyak and Juditsky, SIAM J. Control Optim. 1992;
Izmailov et al., "Averaging weights leads to wider optima and better generalization", UAI 2018).

Introduced in chapter 08; a supervised option of :class:`covidlib.train.TrainConfig` (``ema_decay``).
"""

from __future__ import annotations

import torch
from torch import nn

from covidlib.errors import InvalidInputError


def ema_alpha(alpha: float, step: int) -> float:
    """The warm-up EMA decay ``min(1 - 1/(step + 1), alpha)`` (Tarvainen and Valpola 2017)."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be in [0, 1], got {alpha!r}")
    if step < 0:
        raise InvalidInputError(f"step must be non-negative, got {step!r}")
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update(average: nn.Module, network: nn.Module, alpha: float, step: int) -> float:
    """``average <- a_t average + (1 - a_t) network`` for every parameter and float buffer; returns ``a_t``.

    Float buffers (BatchNorm running mean/variance) are averaged like weights, so the average
    can run in eval mode; integer buffers (``num_batches_tracked``) are copied. The two
    networks must have the same architecture.
    """
    decay = ema_alpha(alpha, step)
    average_state = average.state_dict()
    network_state = network.state_dict()
    if average_state.keys() != network_state.keys():
        raise InvalidInputError("the average and the network have different parameter names: they must be copies of one network")
    for name, value in average_state.items():
        source = network_state[name]
        if value.shape != source.shape:
            raise InvalidInputError(f"the average and the network differ at {name}: {tuple(value.shape)} vs {tuple(source.shape)}")
        if value.is_floating_point():
            value.mul_(decay).add_(source.detach(), alpha=1.0 - decay)
        else:
            value.copy_(source)
    return decay
