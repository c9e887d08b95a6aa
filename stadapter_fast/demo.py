"""``make demo``: the project's main job end to end, on the embedded synthetic dataset.

1. FastSTAdapter vs the reference adapter (outputs, grads, one timing) on this machine.
2. Creates the synthetic dataset (if absent): clips whose classes differ only in the direction of
   change over time (see ``stadapter_fast.data.synthetic``).
3. Trains a small ViT with FastSTAdapters, the same frozen ViT with an M-Adapter side branch, and the
   same frozen ViT with no adapters (frame-averaged class tokens: the frame-only baseline), with the
   same recipe and data.
4. Prints val top-1 and clips/s of each. The adapters must clearly beat the baseline (it cannot tell
   the direction: its ceiling is 50%); exits non-zero otherwise.

On a GPU machine the same command trains on the GPU; with DALI installed it decodes with DALI's GPU
("mixed") decoder, a route not yet run on a GPU.
"""
from __future__ import annotations

import argparse
import json
import time

from . import kernel_check
from .data.synthetic import ensure_synthetic
from .train import main as train_main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/synthetic")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--loader", default="auto", choices=["auto", "dali", "pyav"])
    a = ap.parse_args(argv)
    t0 = time.time()
    print("== 1. FastSTAdapter vs reference adapter", flush=True)
    kernel_check.main(["--reps", "3"])
    print(f"\n== 2. synthetic dataset in {a.data}", flush=True)
    ensure_synthetic(a.data)
    common = ["--data-root", a.data, "--epochs", str(a.epochs), "--loader", a.loader, "--quiet"]
    results = {}
    for method in ("st-adapter", "m-adapter", "frame-only"):
        print(f"\n== 3. training: {method}", flush=True)
        results[method] = train_main(common + ["--method", method, "--out", f"{a.out}/{method}"])
        print(json.dumps({k: results[method][k] for k in ("val_top1", "clips_per_s", "loader", "device")}), flush=True)
    print("\n== 4. results (val top-1 on held-out clips; 4 classes: chance 25%, frame-only ceiling 50%)")
    print(f"| {'model':<32} | {'val top-1':>9} | {'clips/s':>8} | {'trainable params':>16} |")
    print(f"|{'-' * 34}|{'-' * 11}|{'-' * 10}|{'-' * 18}|")
    names = {"st-adapter": "ViT + FastSTAdapters (3,1,1)", "m-adapter": "ViT frozen + M-Adapter branch",
             "frame-only": "ViT frozen, frame-averaged"}
    for m, r in results.items():
        print(f"| {names[m]:<32} | {r['val_top1']:>9.1%} | {r['clips_per_s']:>8.1f} | {r['trainable_params']:>16,} |")
    print(f"\ntotal {time.time() - t0:.0f} s; runs (metrics.jsonl, summary.json, curves.png) in {a.out}/")
    for method in ("st-adapter", "m-adapter"):
        gap = results[method]["val_top1"] - results["frame-only"]["val_top1"]
        if gap < 0.2:
            raise SystemExit(f"{method} did not clearly beat the frame-only baseline (gap {gap:.1%})")


if __name__ == "__main__":
    main()
