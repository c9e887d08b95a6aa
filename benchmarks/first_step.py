"""First-call cost: seconds of the first training step of the level-3 video model (ViT-B/16 with 12
adapters on GPU) vs the steps after it. The first step pays Triton's JIT compiles and autotuning (one
timing sweep per kernel and shape class); later steps only run. Run it in a fresh process, since the
autotuner's picks live for the process (Triton's on-disk cache of compiled kernels outlives it: the
report says how many files it held before).

    python -m benchmarks.first_step [--provider fast] [--config 12x384] [--dtype bfloat16] [--out F.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks._harness import device, sync, versions
from benchmarks._model import build_model_step

CONFIGS = {"12x384": ("12x384", 1), "24x384": ("24x384", 2)}


def _cache_files() -> int:
    root = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def _tuned_keys() -> dict:
    """How many (kernel, key) pairs the autotuner has timed in this process, per kernel module."""
    out = {}
    for name in ("csrc_triton.dwconv_tokens", "csrc_triton.adapter_onepass"):
        mod = sys.modules.get(name)
        if mod is None:
            continue
        for attr, obj in vars(mod).items():
            cache = getattr(getattr(obj, "tuned", None), "cache", None)
            if isinstance(cache, dict):
                out[attr] = len(cache)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", default="fast", choices=["fast", "fast_onepass", "reference"])
    ap.add_argument("--config", default="12x384", choices=sorted(CONFIGS))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cache_before = _cache_files()
    step, _ = build_model_step(CONFIGS[args.config], getattr(torch, args.dtype), "train_step", args.provider,
                               "default")
    sync()
    seconds = []
    for i in range(args.steps):
        t = time.perf_counter()
        step(i)
        sync()
        seconds.append(time.perf_counter() - t)
    result = {"provider": args.provider, "config": args.config, "dtype": args.dtype, "device": device(),
              "device_name": torch.cuda.get_device_name() if device() == "cuda" else "cpu",
              "step_s": seconds, "first_minus_steady_s": seconds[0] - min(seconds[1:] or seconds),
              "triton_cache_files_before": cache_before, "autotuned_keys": _tuned_keys(), **versions()}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
