"""5-fold cross-validation on COVID-SemiSeg: supervised A' vs + pseudo-labels vs + mean teacher.

The 50 labelled slices are split into 5 folds (by slice: every slice is its own case). For each
fold the held-out 10 slices are the test set; of the other 40, ``--inner-val`` slices select the
best epoch (validation Dice) and the rest train. A' is trained on the labelled slices only; the
1600 unlabelled slices (from other patients and scanners, windowed differently) are
pseudo-labelled with A''s encoder (chapter 07) and two arms continue from A': pseudo-labels
only, and pseudo-labels + mean teacher (chapter 08). Reported: Dice on each held-out fold (mean
over slices), mean ± sd over folds, wall time per stage.

Images are prepared by covidlib.inference.prepare_slices (z-scored per image, resized to
``--size`` pixels), as ``python -m covidlib semi`` prepares them, and the settings built by semi_supervised_settings: patch size and margins
are the report's (68 px, 10/15 px at about 512 px) scaled to that size. One fold of the same
comparison is ``python -m covidlib semi``.

Run: ``.venv/bin/python benchmarks/cv_semisupervised.py --root ../shared/data/covid-semiseg``
(``--run-folds 1 --sup-epochs 3 --semi-epochs 2 --unlabelled 100`` for a pilot). Introduced with chapter 08.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from covidlib.config import runtime_summary, seed_everything
from covidlib.datasets import get_dataset
from covidlib.inference import prepare_slices
from covidlib.io import atomic_write_text
from covidlib.crossval import nested_folds
from covidlib.mean_teacher import ARMS, semi_supervised_fold, semi_supervised_settings
from covidlib.pseudo import PseudoLabelConfig
from covidlib.results import git_commit


def build_record(args: argparse.Namespace, rows: list[dict], pseudo: PseudoLabelConfig, n_unlabelled: int,
                 preparation: list[str], load_seconds: float, start_all: float, cpu_start: float) -> dict:
    """The JSON record of the folds finished so far (mean ± sd over them)."""
    summary = {arm: {"mean": float(np.mean([r["dice"][arm] for r in rows])),
                     "sd": float(np.std([r["dice"][arm] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
                     "per_fold": [r["dice"][arm] for r in rows]} for arm in ARMS}
    return {"settings": {**vars(args), "preparation": preparation, "patch_size": pseudo.patch_size,
                         "labelled_margin": pseudo.labelled_margin,
                         "unlabelled_margin": pseudo.unlabelled_margin, "n_unlabelled": n_unlabelled},
            "folds_done": len(rows), "summary": summary, "folds": rows, "load_seconds": load_seconds,
            "wall_seconds": time.perf_counter() - start_all, "cpu_seconds": time.process_time() - cpu_start,
            "commit": git_commit(Path(__file__).resolve().parent),
            "runtime": runtime_summary(setting="reference", device="cpu", seed=args.seed, dataset="covid-semiseg")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/covid-semiseg")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--sup-epochs", type=int, default=25)
    parser.add_argument("--semi-epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rule", default="top2", choices=("top2", "top1_band"))
    parser.add_argument("--unlabelled", type=int, default=None, help="use this many unlabelled slices (default all)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--run-folds", type=int, default=None, help="run only the first N folds (pilot)")
    parser.add_argument("--inner-val", type=int, default=8)
    # one thread: on a shared, busy CPU a second torch thread spin-waits and slows training many times
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/cv_semisupervised.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    start_all = time.perf_counter()
    cpu_start = time.process_time()
    prepared = prepare_slices(get_dataset("covid-semiseg", args.root), args.size, n_unlabelled=args.unlabelled)
    arrays, unlabelled = prepared.labelled, prepared.unlabelled
    load_seconds = time.perf_counter() - start_all
    ids = list(arrays)
    rows: list[dict] = []
    record: dict = {}
    for fold in range(args.run_folds or args.folds):
        split = nested_folds(ids, args.folds, args.seed, args.inner_val)[fold]
        train, val, test = split.train, split.val, split.test
        settings = semi_supervised_settings(args.size, len(train), base_width=args.base_width,
                                            supervised_epochs=args.sup_epochs, semi_epochs=args.semi_epochs,
                                            lr=args.lr, patience=args.patience, batch_size=args.batch_size,
                                            rule=args.rule, amp=args.amp, device="cpu", seed=args.seed + fold)
        result = semi_supervised_fold(arrays, train, val, test, unlabelled, settings)
        rows.append({"fold": fold, **result})
        print(f"fold {fold}: " + "  ".join(f"{arm} {result['dice'][arm]:.3f}" for arm in ARMS)
              + f"  accepted {result['pseudo']['accepted']}/{result['pseudo']['patches']}"
              + "  seconds " + " ".join(f"{k}={v:.0f}" for k, v in result["seconds"].items()), flush=True)
        record = build_record(args, rows, settings.pseudo, len(unlabelled), prepared.steps, load_seconds, start_all,
                              cpu_start)
        atomic_write_text(args.out, json.dumps(record, indent=1, default=float) + "\n")  # after every fold
    summary = record["summary"]
    print("\nDice on held-out folds (mean ± sd over folds):")
    for arm in ARMS:
        print(f"  {arm:<14} {summary[arm]['mean']:.3f} ± {summary[arm]['sd']:.3f}")
    print(f"wall {record['wall_seconds']:.0f} s, CPU {record['cpu_seconds']:.0f} s, written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
