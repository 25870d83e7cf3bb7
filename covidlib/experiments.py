"""The transfer-learning grid of the report's Table 5.1, run cell by cell, resumable, in parallel.

A *cell* is one training run: a network (``"unet"``, ``"attention-unet"``) x an initialisation
recipe (``"scratch"``, ``"decoder"``, ``"all"``, ``"genesis"``; see :mod:`covidlib.transfer`),
the fine-tuning recipes once per named pretraining *source* when there are several (e.g. a
self-supervised restoration source and a phantom source, ``GridConfig.sources``) x a split (``"10-40"``, ``"40-10"``; see :func:`covidlib.data.report_split`) x a fold. The test
volumes are held out once for the whole grid; splits are by volume. Each finished cell is one
JSON record ``<results_dir>/cells/<key>.json`` (written atomically) with its train, validation
and test Dice — the mean over volumes of the 3D (volume) Dice of the stacked slice
predictions — its per-volume values, learning curve and provenance, and on the test volumes
also Inf-Net's mean Dice over thresholds (:func:`covidlib.metrics.infnet_metrics`, averaged
over each volume's slices with lesions). Each record carries the
cell's fingerprint (:func:`cell_fingerprint`: the grid settings, the cohort's ids and array
contents, the pretrained or Models Genesis weights the cell starts from, and the code of the
modules that compute it). When the grid runs again, cells whose record has the current
fingerprint are skipped and every other cell is computed again (never silently reused); a cell
interrupted mid-training resumes from its ``last.pt`` when that run's own fingerprint matches,
so an interrupted grid continues where it stopped. :func:`render_table` gives mean ± sd over folds
in the layout of Table 5.1.

Cells run in worker processes (``spawn``): one per GPU when several are present, else
``n_workers`` CPU processes, each with ``threads_per_worker`` torch threads; ``n_workers=0``
runs them in this process (quick runs, where starting interpreters would cost more than it
saves).

Introduced in chapter 05.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib.config import get_device
from covidlib.data import REPORT_SPLITS, report_split
from covidlib.errors import InvalidInputError
from covidlib.fingerprint import content_key, settings_key
from covidlib.metrics import infnet_metrics
from covidlib.metrics import summarise as summarise_values
from covidlib.models import get_model
from covidlib.models.unet3d import GenesisUNet2d, load_genesis_checkpoint
from covidlib.results import atomic_write_text
from covidlib.train import evaluate, load_checkpoint, split_batch
from covidlib.transfer import (RECIPES, SliceTraining, case_arrays, code_versions, fit_volumes, prepare_finetune,
                               slice_loader, stable_settings)

NETWORKS = ("unet", "attention-unet")
NETWORK_TITLES = {"unet": "U-Net", "attention-unet": "Attention U-Net"}
RECIPE_TITLES = {"scratch": "From scratch", "decoder": "Fine-tune decoder", "all": "Fine-tune all",
                 "genesis": "Models Genesis init"}
PHASES = ("train", "val", "test")


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    network: str
    recipe: str
    split: str
    fold: int
    source: str = ""

    @property
    def key(self) -> str:
        """File-name key, e.g. ``unet__decoder__10-40__fold0`` or, from a named source,
        ``unet__decoder-restoration__10-40__fold0``."""
        recipe = f"{self.recipe}-{self.source}" if self.source else self.recipe
        return f"{self.network}__{recipe}__{self.split}__fold{self.fold}"

    @property
    def row(self) -> str:
        """The table row it belongs to: the recipe, with its source when it has one (``"decoder/restoration"``)."""
        return row_name(self.recipe, self.source)


def row_name(recipe: str, source: str = "") -> str:
    """A table row's name: ``recipe`` or ``recipe/source``."""
    return f"{recipe}/{source}" if source else recipe


def weights_name(network: str, source: str = "") -> str:
    """The key of a network's pretrained weights in ``run_grid(pretrained=...)``: ``network``,
    or ``network/source`` for a named source."""
    return f"{network}/{source}" if source else network


@dataclass(frozen=True)
class GridConfig:
    """What the grid runs. ``folds`` of the ``n_folds`` report folds are run (the report: 5 of
    5); ``n_test`` volumes are held out (``None``: 2/7 of the cohort, the report's 20 of 70).
    ``sources``: names of the pretraining sources; the ``"decoder"`` and ``"all"`` recipes run
    once per source (none: one unnamed source, the weights keyed by network alone).
    ``base_width``/``depth`` size the U-Nets; ``genesis_width`` the Models Genesis twin (32 =
    the published network). ``training`` holds batch, slice size and the Trainer's settings;
    ``split_seed`` fixes the volume split. Introduced in chapter 05."""

    networks: tuple[str, ...] = NETWORKS
    recipes: tuple[str, ...] = RECIPES
    splits: tuple[str, ...] = REPORT_SPLITS
    sources: tuple[str, ...] = ()
    folds: int = 5
    n_folds: int = 5
    n_test: int | None = None
    base_width: int = 64
    depth: int = 4
    genesis_width: int = 32
    flatten_mode: str = "sum"
    training: SliceTraining = field(default_factory=SliceTraining)
    split_seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("networks", NETWORKS), ("recipes", RECIPES), ("splits", REPORT_SPLITS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad or not getattr(self, name):
                raise InvalidInputError(f"GridConfig.{name} must be a non-empty subset of {allowed}, got {getattr(self, name)}")
        bad_sources = [s for s in self.sources if not isinstance(s, str) or not s or "/" in s or "__" in s]
        if bad_sources or len(set(self.sources)) != len(self.sources):
            raise InvalidInputError(f"GridConfig.sources must be distinct non-empty names without '/' or '__', "
                                    f"got {self.sources}")
        if not (isinstance(self.folds, int) and 1 <= self.folds <= self.n_folds):
            raise InvalidInputError(f"GridConfig.folds must be in [1, n_folds={self.n_folds}], got {self.folds!r}")

    def cells(self) -> list[Cell]:
        """Every cell, network-major (the table's order); fine-tuning recipes once per source."""
        def sources(recipe: str) -> tuple[str, ...]:
            return (self.sources or ("",)) if recipe in ("decoder", "all") else ("",)

        return [Cell(n, r, s, f, source) for n in self.networks for r in self.recipes for source in sources(r)
                for s in self.splits for f in range(self.folds)]

    def fingerprint(self) -> str:
        """A hash of the settings that change a cell's result (not the device or progress bars,
        nor which cells run); :func:`cell_fingerprint` adds the data, weights and code."""
        settings = dataclasses.asdict(self)
        settings["training"] = stable_settings(self.training)
        for per_cell in ("networks", "recipes", "splits", "sources", "folds"):
            settings.pop(per_cell)
        return settings_key(settings)


def build_network(network: str, recipe: str, config: GridConfig) -> nn.Module:
    """The 2D network of a cell: the U-Net family at ``base_width``/``depth``, or, for the
    ``"genesis"`` recipe, the Models Genesis twin (gated when ``network`` is the attention
    U-Net), whose widths must match the checkpoint."""
    if recipe == "genesis":
        return GenesisUNet2d(num_classes=2, base_width=config.genesis_width, attention=network == "attention-unet")
    return get_model(network, in_channels=1, num_classes=2, base_width=config.base_width, depth=config.depth)


def _pretrained_for(cell: Cell, pretrained: Mapping[str, str | Path], genesis: str | Path | None) -> Any:
    if cell.recipe == "scratch":
        return None
    if cell.recipe == "genesis":
        if genesis is None:
            raise InvalidInputError("the 'genesis' recipe needs a Models Genesis checkpoint (genesis=path)")
        return load_genesis_checkpoint(genesis)
    name = weights_name(cell.network, cell.source)
    if name not in pretrained:
        raise InvalidInputError(f"recipe {cell.recipe!r} for {cell.network!r} needs pretrained weights: "
                                f"pass pretrained={{'{name}': path}}")
    path = Path(pretrained[name])
    if not path.is_file():
        raise InvalidInputError(f"pretrained weights {path} for {name!r} not found")
    return load_checkpoint(path)


def cell_inputs(cells: Sequence[Cell], arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], config: GridConfig, *,
                pretrained: Mapping[str, str | Path], genesis: str | Path | None) -> dict[str, dict[str, Any]]:
    """``{cell key: what the cell's result depends on}``: ``settings`` (:meth:`GridConfig.fingerprint`),
    ``data`` (the cohort's case ids and array contents, which fix the split), ``weights`` (the
    content of the pretrained or Models Genesis weights it starts from; ``None`` from scratch)
    and ``code`` (``{path: hash}`` of this module and every covidlib module it imports).
    Weight files are read once each. Introduced in chapter 05."""
    data = content_key(dict(arrays))
    code = code_versions(__name__)
    weights: dict[str, str | None] = {}
    inputs = {}
    for cell in cells:
        # cells of one network share its pretrained weights; every Genesis cell the same checkpoint
        source = (cell.recipe if cell.recipe in ("scratch", "genesis")
                  else f"pretrained:{weights_name(cell.network, cell.source)}")
        if source not in weights:
            with torch.random.fork_rng(devices=[]):  # building the Genesis network draws initial weights
                loaded = _pretrained_for(cell, pretrained, genesis)
            weights[source] = None if loaded is None else content_key(
                loaded.state_dict() if isinstance(loaded, nn.Module) else loaded)
        inputs[cell.key] = {"settings": config.fingerprint(), "data": data, "weights": weights[source], "code": code}
    return inputs


def cell_fingerprint(cell: Cell, inputs: Mapping[str, Any]) -> str:
    """The key of a cell's record: a hash of the cell and its :func:`cell_inputs`."""
    return content_key(dataclasses.asdict(cell), dict(inputs))


@torch.no_grad()
def infnet_mean_dice(model: nn.Module, loader: Any, device: str | torch.device = "auto") -> dict[str, float]:
    """``{case_id: Inf-Net's mean Dice}`` of ``model`` on ``loader``'s slices: per slice with a
    lesion, the mean Dice over 256 thresholds of the min-max rescaled probability map
    (:func:`covidlib.metrics.infnet_metrics`, at the network's input size), averaged over the
    case's slices; cases without lesions are left out (their Dice over thresholds is not
    defined). Fan et al., Inf-Net, IEEE TMI 2020. Introduced in chapter 05."""
    resolved = get_device(device)
    was_training = model.training
    model.to(resolved).eval()
    per_case: dict[str, list[float]] = {}
    for batch in loader:
        images, targets = split_batch(batch)
        if "case_id" not in batch:
            raise InvalidInputError("infnet_mean_dice needs batches that name their slices' case_id "
                                    "(e.g. from covidlib.data.SliceDataset)")
        probabilities = torch.softmax(model(images.to(resolved)).float(), dim=1)[:, 1].cpu().numpy()
        for case, probability, target in zip(batch["case_id"], probabilities, targets.numpy()):
            if target.any():
                per_case.setdefault(str(case), []).append(infnet_metrics(probability, target)["mean_dice"])
    model.train(was_training)
    return {case: float(np.mean(values)) for case, values in per_case.items()}


def run_cell(cell: Cell, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], config: GridConfig,
             results_dir: str | Path, *, pretrained: Mapping[str, str | Path], genesis: str | Path | None,
             device: str = "auto") -> dict[str, Any]:
    """Train and evaluate one cell; write and return its record. Resumes from the cell's
    ``last.pt`` when an earlier run of the same settings, data, weights and code was
    interrupted. Introduced in chapter 05."""
    start = time.perf_counter()
    results_dir = Path(results_dir)
    inputs = cell_inputs([cell], arrays, config, pretrained=pretrained, genesis=genesis)[cell.key]
    split = report_split(list(arrays), cell.split, config.split_seed, fold=cell.fold, n_test=config.n_test,
                         n_folds=config.n_folds)
    seed = config.training.train.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same initial weights whichever process runs the cell
        model = build_network(cell.network, cell.recipe, config)
    prepare_finetune(model, cell.recipe, pretrained=_pretrained_for(cell, pretrained, genesis), seed=seed,
                     flatten_mode=config.flatten_mode)
    settings = dataclasses.replace(config.training, train=dataclasses.replace(config.training.train, device=device,
                                                                                    progress=False))
    trainer = fit_volumes(model, arrays, split.train, split.val, settings,
                          out_dir=results_dir / "checkpoints" / cell.key, resume=True)
    dice: dict[str, dict[str, Any]] = {}
    for phase, ids in zip(PHASES, (split.train, split.val, split.test)):
        result = evaluate(model, slice_loader(arrays, ids, settings, training=False, seed=seed), trainer.device)
        dice[phase] = dict(result["summary"]["dice"],
                           per_case={case: values["dice"] for case, values in result["per_case"].items()})
    infnet = infnet_mean_dice(model, slice_loader(arrays, split.test, settings, training=False, seed=seed), trainer.device)
    record = {
        "cell": dataclasses.asdict(cell),
        "fingerprint": cell_fingerprint(cell, inputs),
        "inputs": inputs,
        "dice": dice,
        "infnet_mean_dice": {"mean": float(np.mean(list(infnet.values()))) if infnet else None, "per_case": infnet},
        "cases": {"train": split.train, "val": split.val, "test": split.test},
        "history": trainer.history,
        "best_epoch": trainer.best_epoch,
        "network_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": str(trainer.device),
        "seconds": time.perf_counter() - start,
    }
    atomic_write_text(cell_path(results_dir, cell), json.dumps(record, indent=1) + "\n")
    return record


def cell_path(results_dir: str | Path, cell: Cell) -> Path:
    """Where a cell's record lives."""
    return Path(results_dir) / "cells" / f"{cell.key}.json"


def read_record(path: Path) -> dict[str, Any]:
    """One cell record; :class:`InvalidInputError` naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not a valid cell record ({exc})") from exc


def load_records(results_dir: str | Path, config: GridConfig | None = None) -> list[dict[str, Any]]:
    """The finished cells' records in ``results_dir`` (only ``config``'s cells when given, and
    then an error naming a record made with other settings: it is stale, not a result of
    ``config``). Data, weights and code are checked by :func:`run_grid`, which recomputes."""
    records = []
    wanted = None if config is None else {c.key for c in config.cells()}
    for path in sorted((Path(results_dir) / "cells").glob("*.json")):
        record = read_record(path)
        if wanted is not None:
            if Cell(**record["cell"]).key not in wanted:
                continue
            made_with = record.get("inputs", {}).get("settings")
            if made_with != config.fingerprint():  # type: ignore[union-attr]  # wanted is set only with a config
                raise InvalidInputError(f"{path} is stale: made with other grid settings (fingerprint "
                                        f"{made_with} != {config.fingerprint()}); run the grid again to recompute it")  # type: ignore[union-attr]  # as above
        records.append(record)
    return records


_WORKER: dict[str, Any] = {}


def _init_worker(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], devices: Any, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["arrays"] = arrays
    _WORKER["device"] = devices.get() if devices is not None else "cpu"


def _run_in_worker(cell: Cell, config: GridConfig, results_dir: str, pretrained: Mapping[str, str | Path],
                   genesis: str | Path | None) -> dict[str, Any]:
    return run_cell(cell, _WORKER["arrays"], config, results_dir, pretrained=pretrained, genesis=genesis,
                    device=_WORKER["device"])


def run_grid(cases: Sequence[Any], config: GridConfig, results_dir: str | Path, *,
             pretrained: Mapping[str, str | Path] | None = None, genesis: str | Path | None = None,
             n_workers: int = 0, threads_per_worker: int = 1, device: str = "auto",
             progress: bool = True) -> list[dict[str, Any]]:
    """Run every cell of ``config`` on ``cases`` (preprocessed, with lesion masks) that has no
    record with its current :func:`cell_fingerprint` (missing, or made from other settings,
    data, weights or code: recomputed); return the grid's records in :meth:`GridConfig.cells`
    order. ``pretrained`` maps a network name to a state-dict file (the ``"decoder"``/``"all"``
    recipes), ``genesis`` is a Models Genesis checkpoint file.

    With several CUDA devices (and ``device`` ``"auto"``/``"cuda"``) one worker runs per GPU;
    otherwise ``n_workers`` CPU processes (0 = in this process). Introduced in chapter 05.
    """
    results_dir = Path(results_dir)
    arrays = case_arrays(cases)
    pretrained = {name: str(path) for name, path in (pretrained or {}).items()}
    genesis = None if genesis is None else str(genesis)
    inputs = cell_inputs(config.cells(), arrays, config, pretrained=pretrained, genesis=genesis)
    expected = {cell.key: cell_fingerprint(cell, inputs[cell.key]) for cell in config.cells()}

    def current(cell: Cell) -> dict[str, Any] | None:
        path = cell_path(results_dir, cell)
        record = read_record(path) if path.is_file() else None
        return record if record is not None and record.get("fingerprint") == expected[cell.key] else None

    todo = [cell for cell in config.cells() if current(cell) is None]
    resolved = get_device(device)
    gpus = torch.cuda.device_count() if resolved.type == "cuda" else 0
    bar = tqdm(total=len(todo), desc="grid cells", disable=not progress)
    if todo and (gpus > 1 or n_workers > 0):
        context = multiprocessing.get_context("spawn")
        devices = None
        if gpus > 1:
            devices = context.Manager().Queue()
            for index in range(gpus):
                devices.put(f"cuda:{index}")
        workers = gpus if gpus > 1 else n_workers
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(arrays, devices, threads_per_worker)) as pool:
            futures = [pool.submit(_run_in_worker, cell, config, str(results_dir), pretrained, genesis) for cell in todo]
            for future in futures:
                future.result()
                bar.update(1)
    else:
        for cell in todo:
            run_cell(cell, arrays, config, results_dir, pretrained=pretrained, genesis=genesis, device=str(resolved))
            bar.update(1)
    bar.close()
    # Read back as written: a source file edited while the grid ran gives the later records its
    # new hash (they carry their own inputs), and the next run recomputes the earlier ones.
    missing = [cell.key for cell in config.cells() if not cell_path(results_dir, cell).is_file()]
    if missing:
        raise InvalidInputError(f"grid cells {missing} have no record in {results_dir} after running")
    return [read_record(cell_path(results_dir, cell)) for cell in config.cells()]


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{network: {row: {split: {phase: {"mean", "sd", "n", "n_undefined", "folds"}}}}}``
    over folds (:func:`covidlib.metrics.summarise`: sd with ``ddof=1``, 0 for one fold). A row
    is the recipe, or ``recipe/source`` for a named source (:func:`row_name`); besides the
    phases, ``"test_infnet"`` holds Inf-Net's mean Dice on the test volumes when every fold has it."""
    grouped: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        cell = record["cell"]
        row = row_name(cell["recipe"], cell.get("source", ""))
        grouped.setdefault((cell["network"], row, cell["split"]), []).append(record)
    summary: dict[str, Any] = {}
    for (network, recipe, split), rows in grouped.items():
        rows = sorted(rows, key=lambda r: r["cell"]["fold"])
        phases = {}
        for phase in PHASES:
            values = [r["dice"][phase]["mean"] for r in rows]
            phases[phase] = dict(summarise_values(values), folds=values)
        infnet = [r.get("infnet_mean_dice", {}).get("mean") for r in rows]
        if all(value is not None for value in infnet):
            phases["test_infnet"] = dict(summarise_values(infnet), folds=infnet)
        summary.setdefault(network, {}).setdefault(recipe, {})[split] = phases
    return summary


def render_table(records: Sequence[Mapping[str, Any]], *, digits: int = 3,
                 source_titles: Mapping[str, str] | None = None) -> str:
    """Table 5.1 as Markdown: per network, rows = recipe (x source) x split, columns = train,
    validation and test Dice at 0.5 as ``mean ± sd`` over folds, then the test volumes' Inf-Net
    mean Dice when every row has it (``n`` folds shown). ``source_titles`` names each pretraining
    source in its rows (default: the source's name). Introduced in chapter 05."""
    if not records:
        raise InvalidInputError("render_table needs at least one cell record")
    summary = summarise(records)
    with_infnet = all("test_infnet" in phases for rows in summary.values() for splits in rows.values()
                      for phases in splits.values())
    columns = [*PHASES, *(["test_infnet"] if with_infnet else [])]
    titles = {"train": "Train", "val": "Validation", "test": "Test", "test_infnet": "Test, Inf-Net mean Dice"}
    lines = [f"| Network | Initialisation | Split | {' | '.join(titles[c] for c in columns)} | Folds |",
             "|---|---|---|" + "---|" * (len(columns) + 1)]
    sources = list(dict.fromkeys(record["cell"].get("source", "") for record in records))
    for network in [n for n in NETWORKS if n in summary]:
        for recipe, source in [(r, s) for r in RECIPES for s in sources if row_name(r, s) in summary[network]]:
            title = RECIPE_TITLES[recipe] + (f" ({(source_titles or {}).get(source, source)})" if source else "")
            for split in [s for s in REPORT_SPLITS if s in summary[network][row_name(recipe, source)]]:
                phases = summary[network][row_name(recipe, source)][split]
                cells = [f"{phases[p]['mean']:.{digits}f} ± {phases[p]['sd']:.{digits}f}" for p in columns]
                lines.append(f"| {NETWORK_TITLES[network]} | {title} | {split} | "
                             f"{' | '.join(cells)} | {phases['train']['n']} |")
    return "\n".join(lines)
