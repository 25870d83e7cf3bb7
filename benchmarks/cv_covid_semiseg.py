"""5-fold cross-validation by slice on COVID-SemiSeg's 50 labelled slices, U-Net and attention U-Net.

Each (model, fold) is one ``python -m covidlib train`` run (through ``covidlib.__main__.main``, whose
slices come from ``covidlib.inference.prepare_slices``);
its ``metrics.json`` holds the validation metrics at each slice's own resolution. This script
collects them into one JSON file per model and prints per-fold Dice and mean ± sd.

    .venv/bin/python benchmarks/cv_covid_semiseg.py --model unet --runs runs/cv
    .venv/bin/python benchmarks/cv_covid_semiseg.py --report        # table of what has finished

A fold whose ``metrics.json`` exists is not trained again, and an interrupted fold resumes from
its ``last.pt``; run the two models in two processes of one thread each on a shared CPU (a
second torch thread competing with other processes slows training down many times).

Published mean Dice on this dataset's separate 48-slice test split (not comparable one to one
with cross-validation on the training slices): U-Net 0.439, U-Net++ 0.581, Inf-Net 0.682
(Fan et al., IEEE TMI 2020).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from covidlib.__main__ import main as covidlib_main
from covidlib.io import atomic_write_text
from covidlib.results import to_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "covid-semiseg"
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("unet", "attention-unet")


def run_model(args: argparse.Namespace, model: str) -> dict[str, object]:
    """Train every fold of ``model`` that has no metrics yet; return the collected results."""
    folds = []
    for fold in range(args.folds):
        out = Path(args.runs) / model / f"fold{fold}"
        if not (out / "metrics.json").exists():
            argv = ["train", "--dataset", "covid-semiseg", "--data-root", str(args.data_root), "--model", model,
                    "--out", str(out), "--folds", str(args.folds), "--fold", str(fold), "--seed", str(args.seed),
                    "--image-size", str(args.image_size), "--base-width", str(args.base_width),
                    "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
                    "--step-size", str(args.step_size), "--gamma", str(args.gamma), "--patience", str(args.patience),
                    "--loss", args.loss, "--amp", args.amp, "--mixup-alpha", str(args.mixup_alpha),
                    "--threads", str(args.threads), "--resume", "--no-progress"]
            if covidlib_main(argv) != 0:
                raise SystemExit(f"training {model} fold {fold} failed")
        metrics = json.loads((out / "metrics.json").read_text())
        per_slice = [row["dice"] for row in metrics["per_case"].values()]
        folds.append({"fold": fold, "dice_mean": metrics["validation"]["dice"]["mean"], "dice_per_slice": per_slice,
                      "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                      "wall_seconds": metrics["wall_seconds"], "cpu_seconds": metrics["cpu_seconds"],
                      "autocast": metrics["amp"], "threads": metrics["threads"]})
        result = summarise_model(model, folds, metrics["settings"], args)
        atomic_write_text(RESULTS / f"cv_covid_semiseg_{model}.json", to_json(result) + "\n")
    return result


def summarise_model(model: str, folds: list[dict], settings: dict, args: argparse.Namespace) -> dict[str, object]:
    """Mean ± sd of the fold Dice values (and of all slices pooled), times, settings."""
    fold_dice = np.array([f["dice_mean"] for f in folds])
    pooled = np.array([d for f in folds for d in f["dice_per_slice"]])
    return {
        "model": model, "folds_done": len(folds), "folds": folds,
        "dice_mean_of_folds": float(fold_dice.mean()),
        "dice_sd_of_folds": float(fold_dice.std(ddof=1)) if len(folds) > 1 else 0.0,
        "dice_mean_of_slices": float(pooled.mean()), "dice_sd_of_slices": float(pooled.std(ddof=1)),
        "wall_seconds_total": float(sum(f["wall_seconds"] for f in folds)),
        "cpu_seconds_total": float(sum(f["cpu_seconds"] for f in folds)),
        "settings": {"image_size": args.image_size, "base_width": args.base_width, "batch_size": args.batch_size,
                     "epochs": args.epochs, "lr": args.lr, "step_size": args.step_size, "gamma": args.gamma,
                     "patience": args.patience, "loss": args.loss, "amp": args.amp, "mixup_alpha": args.mixup_alpha,
                     "threads": args.threads, "seed": args.seed, "augment": settings.get("augment"),
                     "model_options": settings.get("model_options")},
        "torch": torch.__version__,
    }


def report() -> None:
    """Print the table of whatever results exist."""
    print(f"{'model':<16} {'folds':>5} {'Dice per fold':<40} {'mean ± sd (folds)':<20} {'epochs (best)':<26} {'wall min':>8}")
    for model in MODELS:
        path = RESULTS / f"cv_covid_semiseg_{model}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        per_fold = " ".join(f"{f['dice_mean']:.3f}" for f in result["folds"])
        epochs = " ".join(f"{f['epochs_run']}({f['best_epoch']})" for f in result["folds"])
        print(f"{model:<16} {result['folds_done']:>5} {per_fold:<40} "
              f"{result['dice_mean_of_folds']:.3f} ± {result['dice_sd_of_folds']:.3f}       {epochs:<26} "
              f"{result['wall_seconds_total'] / 60:>8.1f}")
    print("published, test split (48 slices): U-Net 0.439, U-Net++ 0.581, Inf-Net 0.682")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, action="append", help="model(s) to run (default: both, one after the other)")
    parser.add_argument("--report", action="store_true", help="only print the table of finished results")
    parser.add_argument("--data-root", default=str(DEFAULT_DATA))
    parser.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "covidlib_cv_covid_semiseg"),
                        help="folder of the training runs (checkpoints; not part of the repository)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=28)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--step-size", type=int, default=8)
    parser.add_argument("--gamma", type=float, default=0.8)
    parser.add_argument("--patience", type=int, default=12)
    parser.add_argument("--loss", default="ce+dice")
    parser.add_argument("--amp", default="bf16", help="bf16 autocast: 1.5-2x faster on a CPU with AVX512-BF16")
    parser.add_argument("--mixup-alpha", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.report:
        started = time.perf_counter()
        for model in args.model or MODELS:
            run_model(args, model)
        print(f"finished in {(time.perf_counter() - started) / 60:.1f} min")
    report()


if __name__ == "__main__":
    main()
