"""First-call cost: seconds of the first training step of the level-3 video model (ViT-B/16 with 12
adapters on GPU) vs the steps after it. The first step pays Triton's JIT compiles and autotuning (one
timing sweep per kernel and shape class); later steps only run. Run it in a fresh process, since the
autotuner's picks live for the process (Triton's on-disk cache of compiled kernels outlives it: the
report says how many files it held before). With ``TRITON_CACHE_AUTOTUNING=1`` Triton also keeps each
key's config timings on disk (keyed by Triton's version, the GPU architecture, the kernel's source, the
key and the configs), so a second process skips the timing sweeps: the report says whether the knob was
on and how many such files the cache held before.

    python -m benchmarks.first_step [--provider fast] [--config 12x384] [--dtype bfloat16] [--label L]
                                    [--out F.json]   (F.json: a list of runs; each run appends to it)

A SIGTERM (a time limit) ends the run early: it still reports and appends, with the steps done and
``stopped`` saying in which step (or the set-up) it stopped and how far into it, a lower bound.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from benchmarks._harness import device, sync, versions
from benchmarks._model import build_model_step

CONFIGS = {"12x384": ("12x384", 1), "24x384": ("24x384", 2)}


def _cache_files() -> tuple[int, int]:
    """(files, autotuning timings files) in Triton's on-disk cache, in one walk of it."""
    root = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    files = [p.name for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    return len(files), sum(name.endswith(".autotune.json") for name in files)


def _autotune_disk_cache() -> bool:
    """Whether Triton keeps autotuning timings on disk in this process (``TRITON_CACHE_AUTOTUNING``)."""
    try:
        from triton import knobs

        return bool(knobs.autotuning.cache)
    except (ImportError, AttributeError):  # no triton here, or a version without the knob
        return os.environ.get("TRITON_CACHE_AUTOTUNING", "0").lower() in ("1", "true", "on", "yes")


def _tuned_keys() -> dict:
    """How many keys the autotuner has timed (or read from disk) in this process, per kernel."""
    if "csrc_triton.common" not in sys.modules:  # no Triton launch happened (the torch backend)
        return {}
    from csrc_triton.common import tuned_kernels

    return {k.name: len(k.tuned.cache) for k in tuned_kernels() if k.tuned is not None}


class _Stopped(BaseException):
    """SIGTERM arrived: the run reports what it measured before (a BaseException, as KeyboardInterrupt
    is, so no ``except Exception`` on the way swallows it)."""


def _stop(signum, frame):
    raise _Stopped


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", default="fast", choices=["fast", "fast_onepass", "reference"])
    ap.add_argument("--config", default="12x384", choices=sorted(CONFIGS))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--label", default=None, help="the run's name in the output (default: the provider)")
    ap.add_argument("--out", type=Path, default=None, help="a JSON list of runs: this run is appended")
    args = ap.parse_args(argv)
    cache_before, tuned_before = _cache_files()
    seconds, stopped, where, t = [], None, "set-up", time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        step, _ = build_model_step(CONFIGS[args.config], getattr(torch, args.dtype), "train_step", args.provider,
                                   "default")
        sync()
        for i in range(args.steps):
            where, t = f"step {i + 1}", time.perf_counter()
            step(i)
            sync()
            seconds.append(time.perf_counter() - t)
    except _Stopped:  # a time limit (run_gpu.sh's `timeout`): what was measured, and where it stopped
        stopped = f"SIGTERM in {where}, {time.perf_counter() - t:.1f} s into it"
    finally:
        signal.signal(signal.SIGTERM, previous)
    result = {"run": args.label or args.provider, "provider": args.provider, "config": args.config,
              "dtype": args.dtype, "device": device(),
              "device_name": torch.cuda.get_device_name() if device() == "cuda" else "cpu",
              "step_s": seconds, "stopped": stopped,
              "first_minus_steady_s": seconds[0] - min(seconds[1:]) if len(seconds) > 1 else None,
              "triton_cache_files_before": cache_before, "autotune_disk_cache": _autotune_disk_cache(),
              "autotune_files_before": tuned_before, "autotuned_keys": _tuned_keys(), **versions()}
    print(json.dumps(result, indent=1))
    if args.out:
        runs = json.loads(args.out.read_text()) if args.out.is_file() else []
        if not isinstance(runs, list):
            raise ValueError(f"--out: expected {args.out} to hold a JSON list of runs, got {type(runs).__name__}")
        args.out.write_text(json.dumps(runs + [result], indent=1))
    return result


if __name__ == "__main__":
    main()
