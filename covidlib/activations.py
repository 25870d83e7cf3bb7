"""Layer activations over a probe set, snapshots during training, and layer-wise comparisons.

The tools behind the report's SVCCA analysis (section 5.2.4): capture what chosen layers of a
network output on a fixed set of probe slices (forward hooks, removed afterwards), keep the
weights every few optimizer steps while a :class:`~covidlib.train.Trainer` trains
(:class:`SnapshotTrainer`), score every layer of every snapshot against a reference model
with :func:`~covidlib.svcca.svcca` (:func:`svcca_over_checkpoints`), and measure how far each
layer's weights moved from a starting point such as a pretrained model
(:func:`weight_distance`).

Two figure helpers draw the report's plots: :func:`plot_layer_curves` (similarity of every
layer over training, Figs. 5.2-5.4) and :func:`plot_layer_bars` (one value per layer and
condition with the spread over repeats, Fig. 5.5).

Layers are named by their qualified module names (``"encoder.0"``, ``"decoder.3"``,
``"head"``), as :meth:`torch.nn.Module.get_submodule` reads them.

Raghu et al., "SVCCA: Singular Vector Canonical Correlation Analysis for Deep Learning
Dynamics and Interpretability", NeurIPS 2017. Introduced in chapter 06.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn
from tqdm.auto import tqdm

from covidlib.config import get_device
from covidlib.errors import InvalidInputError
from covidlib.svcca import flatten_conv, svcca
from covidlib.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint

Label = TypeVar("Label", bound=Hashable)
Checkpoint = str | Path | Mapping[str, Tensor]


def layer_names(model: nn.Module) -> list[str]:
    """The layers worth comparing in a U-Net: every encoder block (the last is the
    bottleneck), every decoder block, and the output head, in forward order.

    Needs the ``encoder``/``decoder`` (sequences of modules) and ``head`` attributes of
    :class:`~covidlib.models.UNet2d` and its relatives. Introduced in chapter 06.
    """
    qualified = {id(module): name for name, module in model.named_modules()}
    for attribute in ("encoder", "decoder", "head"):
        if not hasattr(model, attribute):
            raise InvalidInputError(f"{type(model).__name__} has no '{attribute}' attribute; pass layer names "
                                    "explicitly (see model.named_modules())")
    modules = [*model.encoder, *model.decoder, model.head]  # type: ignore[misc]  # nn.Module.__getattr__ is typed Tensor | Module; encoder/decoder are ModuleLists
    return [qualified[id(module)] for module in modules]


def _as_probe_tensor(inputs: np.ndarray | Tensor) -> Tensor:
    tensor = torch.as_tensor(inputs)
    if tensor.ndim == 3:
        tensor = tensor[:, None]
    if tensor.ndim != 4 or tensor.shape[0] < 1:
        raise InvalidInputError(f"inputs: expected probe images (N, C, H, W) or (N, H, W), got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise InvalidInputError(f"inputs: expected floating-point images, got {tensor.dtype}")
    return tensor.float()


def _first_tensor(output: Any, name: str) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise InvalidInputError(f"layer {name!r} returns {type(output).__name__}, not a tensor; pick another layer")


@torch.no_grad()
def capture_activations(model: nn.Module, inputs: np.ndarray | Tensor, layers: Sequence[str],
                        device: str | torch.device = "auto", batch_size: int = 16,
                        max_spatial: int | None = None) -> dict[str, Tensor]:
    """The outputs of ``layers`` of ``model`` on ``inputs`` (N, C, H, W), in evaluation mode.

    Forward hooks record each layer's output batch by batch and are removed afterwards; the
    model's train/eval mode is restored. Returns ``{name: (N, C_l, H_l, W_l)}`` float32 CPU
    tensors (the first tensor when a layer returns a tuple). ``max_spatial`` average-pools maps
    larger than that many pixels a side down to it, to bound memory on big inputs.
    The model is moved to ``device``. Introduced in chapter 06.
    """
    probes = _as_probe_tensor(inputs)
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be positive, got {batch_size}")
    if max_spatial is not None and max_spatial < 1:
        raise InvalidInputError(f"max_spatial must be None or positive, got {max_spatial}")
    if not layers:
        raise InvalidInputError("layers: name at least one layer (see layer_names(model))")
    known = dict(model.named_modules())
    missing = [name for name in layers if name not in known]
    if missing:
        raise InvalidInputError(f"layers {missing} are not modules of {type(model).__name__}; "
                                f"for example {layer_names(model) if hasattr(model, 'head') else list(known)[1:6]}")
    resolved = get_device(device)
    model.to(resolved)
    chunks: dict[str, list[Tensor]] = {name: [] for name in layers}
    calls: dict[str, int] = dict.fromkeys(layers, 0)

    def make_hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name] += 1
            activation = _first_tensor(output, name).detach().float()
            if max_spatial is not None and activation.ndim == 4 and max(activation.shape[2:]) > max_spatial:
                size = (min(activation.shape[2], max_spatial), min(activation.shape[3], max_spatial))
                activation = F.adaptive_avg_pool2d(activation, size)
            # a copy: later in-place operations of the network must not change what was recorded
            chunks[name].append(activation.to("cpu", copy=True))
        return hook

    handles = [known[name].register_forward_hook(make_hook(name)) for name in layers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, probes.shape[0], batch_size):
            before = dict(calls)
            model(probes[start:start + batch_size].to(resolved))
            reused = [name for name in layers if calls[name] - before[name] != 1]
            if reused:
                raise InvalidInputError(f"layers {reused} ran {[calls[n] - before[n] for n in reused]} times in one "
                                        "forward pass; capture needs layers that run exactly once")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def load_weights(checkpoint: Checkpoint) -> Mapping[str, Tensor]:
    """A state dict from a path (a :class:`~covidlib.train.Trainer` or :class:`SnapshotTrainer`
    checkpoint, or a bare saved state dict) or a state dict passed through."""
    if isinstance(checkpoint, (str, Path)):
        loaded = load_checkpoint(checkpoint)
        return loaded["model"] if "model" in loaded else loaded
    if isinstance(checkpoint, Mapping):
        return checkpoint
    raise InvalidInputError(f"checkpoint: expected a path or a state dict, got {type(checkpoint).__name__}")


def svcca_over_checkpoints(model_factory: Callable[[], nn.Module], checkpoints: Mapping[Label, Checkpoint],
                           probe_inputs: np.ndarray | Tensor, layers: Sequence[str] | None = None,
                           reference: Label | None = None, *, variance: float = 0.99, mode: str = "positions",
                           max_positions: int | None = 20000, seed: int = 0, device: str | torch.device = "auto",
                           batch_size: int = 16, max_spatial: int | None = None,
                           progress: bool = True) -> dict[str, dict[Label, float]]:
    """SVCCA similarity of every layer of every checkpoint to the same layer of a reference.

    ``model_factory()`` builds an untrained network of the right class; each checkpoint
    (path or state dict) is loaded into it and run on ``probe_inputs`` (N, C, H, W).
    ``reference``: the label of the reference checkpoint, by default the last one (the
    converged model). Conv maps become matrices with :func:`~covidlib.svcca.flatten_conv`
    (``mode``, ``max_positions`` rows drawn from ``seed``: the same rows for every
    checkpoint). Returns ``{layer: {label: mean canonical correlation}}``; the reference
    scores 1 with itself. Introduced in chapter 06.
    """
    if not checkpoints:
        raise InvalidInputError("checkpoints: give at least one checkpoint")
    labels = list(checkpoints)
    reference = labels[-1] if reference is None else reference
    if reference not in checkpoints:
        raise InvalidInputError(f"reference {reference!r} is not one of the checkpoint labels {labels}")
    model = model_factory()
    layers = list(layers) if layers is not None else layer_names(model)

    def layer_matrices(checkpoint: Checkpoint) -> dict[str, Tensor]:
        model.load_state_dict(load_weights(checkpoint))
        captured = capture_activations(model, probe_inputs, layers, device, batch_size, max_spatial)
        return {name: flatten_conv(acts, mode, max_positions, seed) for name, acts in captured.items()}

    reference_matrices = layer_matrices(checkpoints[reference])
    similarity: dict[str, dict[Label, float]] = {name: {} for name in layers}
    for label in tqdm(labels, desc="checkpoints", disable=not progress):
        matrices = reference_matrices if label == reference else layer_matrices(checkpoints[label])
        for name in layers:
            similarity[name][label] = svcca(matrices[name], reference_matrices[name], variance=variance).mean
    return similarity


def weight_distance(model: nn.Module, reference: nn.Module, layers: Sequence[str] | None = None) -> dict[str, float]:
    """How far each layer's learnable weights moved: ``||theta - theta_ref|| / ||theta_ref||``.

    Both networks must have the same architecture; ``layers`` default to
    :func:`layer_names`. The norm is the Euclidean norm over all parameters of a layer
    (weights, biases, BatchNorm scales and shifts; not the running statistics). 0 means
    unchanged; 1 means a change as large as the reference weights themselves.
    Introduced in chapter 06.
    """
    layers = list(layers) if layers is not None else layer_names(reference)
    modules_a, modules_b = dict(model.named_modules()), dict(reference.named_modules())
    distances = {}
    for name in layers:
        if name not in modules_a or name not in modules_b:
            raise InvalidInputError(f"layer {name!r} is missing from {'model' if name not in modules_a else 'reference'}")
        params_a = dict(modules_a[name].named_parameters())
        params_b = dict(modules_b[name].named_parameters())
        if params_a.keys() != params_b.keys() or any(params_a[k].shape != params_b[k].shape for k in params_a):
            raise InvalidInputError(f"layer {name!r} has different parameters in model and reference")
        if not params_b:
            raise InvalidInputError(f"layer {name!r} has no parameters to compare")
        moved = sum(float(((params_a[k].detach().double().cpu() - params_b[k].detach().double().cpu()) ** 2).sum())
                    for k in params_b)
        size = sum(float((params_b[k].detach().double().cpu() ** 2).sum()) for k in params_b)
        if size == 0.0:
            raise InvalidInputError(f"layer {name!r} of the reference has all-zero weights; a relative distance is undefined")
        distances[name] = float(np.sqrt(moved / size))
    return distances


class SnapshotTrainer(Trainer):
    """A :class:`~covidlib.train.Trainer` that also keeps the weights every ``interval``
    optimizer steps, and before the first step (step 0).

    ``snapshots`` maps the step to a state dict (CPU copies kept in memory) or, with
    ``snapshot_dir``, to the file ``snapshot_dir/step_NNNNNNN.pt`` written atomically. The report
    validated every 100 iterations and kept only improving models (section 5.2.4); a fixed
    interval samples the whole trajectory instead. For the final weights to be a snapshot,
    make the total number of steps a multiple of ``interval``. Resuming a run keeps the step
    count; in-memory snapshots of the interrupted run are lost, files are found again.
    Introduced in chapter 06.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None, *, interval: int,
                 snapshot_dir: str | Path | None = None, **kwargs: Any) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise InvalidInputError(f"interval must be a positive integer (optimizer steps), got {interval!r}")
        super().__init__(model, config, **kwargs)
        self.interval = interval
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self.step = 0
        self.snapshots: dict[int, Checkpoint] = {}

    def _snapshot(self) -> None:
        state = {key: value.detach().to("cpu", copy=True) for key, value in self.model.state_dict().items()}
        if self.snapshot_dir is None:
            self.snapshots[self.step] = state
        else:
            self.snapshots[self.step] = save_checkpoint({"model": state, "step": self.step},
                                                        self.snapshot_dir / f"step_{self.step:07d}.pt")

    def train_step(self, batch: Any) -> float:
        """Keep the initial weights before the very first step, then train as usual."""
        if self.step == 0 and 0 not in self.snapshots:
            self._snapshot()
        return super().train_step(batch)

    def after_step(self) -> None:
        """Count the step and keep a snapshot every ``interval`` steps."""
        super().after_step()
        self.step += 1
        if self.step % self.interval == 0:
            self._snapshot()

    def extra_state(self) -> dict[str, Any]:
        """The step count, so a resumed run continues the snapshot schedule."""
        return {**super().extra_state(), "snapshot_step": self.step}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore the step count and the snapshot files written before the interruption."""
        super().load_extra_state(state)
        if "snapshot_step" not in state:
            raise InvalidInputError("the checkpoint to resume was not written by a SnapshotTrainer (no 'snapshot_step')")
        self.step = int(state["snapshot_step"])
        self.snapshots = {}
        if self.snapshot_dir is not None:
            for path in sorted(self.snapshot_dir.glob("step_*.pt")):
                step = int(path.stem.split("_")[1])
                if step <= self.step:
                    self.snapshots[step] = path


# Okabe-Ito colours (colour-blind safe) then a few more, one per layer
LAYER_COLOURS = ("#0072B2", "#56B4E9", "#009E73", "#F0E442", "#E69F00", "#D55E00", "#CC79A7", "#000000",
                 "#999999", "#882255", "#44AA99")


def plot_layer_curves(panels: Mapping[str, Mapping[str, Mapping[int, float]]], *, title: str,
                      xlabel: str = "optimizer step", ylabel: str = "SVCCA similarity to the converged model",
                      marked: Sequence[str] = (), panel_size: tuple[float, float] = (4.6, 3.4)) -> Figure:
    """Figure: one panel per run, one line per layer of ``{layer: {step: value}}``.

    Encoder layers are solid, the others dashed; layers in ``marked`` (e.g. re-initialised
    ones) get a ``*`` in the legend. Panels share the y axis. Introduced in chapter 06.
    """
    if not panels:
        raise InvalidInputError("panels: give at least one run to plot")
    figure = Figure(figsize=(panel_size[0] * len(panels), panel_size[1] + 0.6), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (panel_title, curves) in zip(axes, panels.items()):
        for index, (layer, values) in enumerate(curves.items()):
            steps = sorted(values)
            ax.plot(steps, [values[s] for s in steps], marker="o", markersize=3,
                    linestyle="-" if layer.startswith("encoder") else "--",
                    color=LAYER_COLOURS[index % len(LAYER_COLOURS)], label=layer + (" *" if layer in marked else ""))
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize=7, loc="lower right")
    figure.suptitle(title, fontsize=11)
    return figure


def plot_layer_bars(groups: Mapping[str, Mapping[str, Sequence[float]]], *, title: str, ylabel: str,
                    panel_size: tuple[float, float] = (7.5, 3.4)) -> Figure:
    """Figure: grouped bars per layer, one bar per condition in ``{condition: {layer: values}}``.

    The bar is the mean over repeats, the dots the repeats themselves (no error bar pretends
    to more than the few repeats there are). Introduced in chapter 06.
    """
    if not groups:
        raise InvalidInputError("groups: give at least one condition to plot")
    layers = list(next(iter(groups.values())))
    figure = Figure(figsize=panel_size, layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(groups)
    positions = np.arange(len(layers))
    for index, (condition, values) in enumerate(groups.items()):
        offset = positions + (index - (len(groups) - 1) / 2) * width
        colour = LAYER_COLOURS[index % len(LAYER_COLOURS)]
        ax.bar(offset, [float(np.mean(values[layer])) for layer in layers], width, color=colour, alpha=0.7, label=condition)
        for x, layer in zip(offset, layers):
            ax.plot([x] * len(values[layer]), values[layer], "o", color="black", markersize=2.5)
    ax.set_xticks(positions, layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=11)
    return figure
