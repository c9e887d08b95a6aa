"""End-to-end training throughput: ``stadapter-train`` runs of the release's setup and of this library's
(issue 12's five configs), each measured for steady-state clips/s, peak GPU memory and GPU utilisation;
and the loaders alone (DALI vs PyAV, same thread count) on the same data.

    python -m benchmarks.train_gpu --data DIR --out OUT [--configs 1,2,3,4,5] [--batch-size 32]
                                   [--workers 16] [--epochs 3] [--loaders pyav,dali]

Each config trains ``--epochs`` epochs in its own process (``python -m stadapter_fast.train``). Epoch
1 pays Triton's compiles and autotuning and the loaders' start, so clips/s is the median over epochs
2.. (``metrics.jsonl``'s per-epoch ``clips_per_s``: training time only, validation excluded), and GPU
utilisation (NVML, sampled every 0.2 s) the mean over the samples taken after epoch 1's record is
written (the final validation falls inside it: keep the val list small). Peak memory is
``max_memory_allocated`` over the run (``summary.json``). Writes ``OUT/train_gpu.json`` and prints a
Markdown table. On CPU (a check of the script, not a measurement) memory and utilisation are None.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# ViT-B/16, 8 frames at 224, 12x384 adapters (the release), bf16 autocast, frozen fp16 backbone
COMMON = ("--backbone timm:vit_base_patch16_224 --backbone-kwargs {} --image-size 224 --frames 8 "
          "--adapter-channels 384 --amp bf16 --backbone-dtype fp16")
# issue 12's table: (name, the arguments that make it)
CONFIGS = {
    1: ("reference adapters + PyAV DataLoader (the release's setup)", "--adapter-impl reference --loader pyav"),
    2: ("fast adapters + PyAV DataLoader", "--loader pyav"),
    3: ("fast adapters + DALI", "--loader dali"),
    4: ("M-Adapter (w384, every 3rd block) + DALI", "--method m-adapter --m-width 384 --m-levels 3 --loader dali"),
    5: ("fast adapters + DALI + --checkpoint-backbone", "--loader dali --checkpoint-backbone"),
}


class GpuSampler:
    """Samples GPU utilisation (%) every ``period`` s in a thread, through NVML (nvidia-ml-py, which the
    GPU image holds); ``available`` is False where NVML or a GPU is missing."""

    def __init__(self, period: float = 0.2):
        self.period, self.samples, self._stop = period, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0")
                                                                 .split(",")[0] or 0))
            self._util = lambda: pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self.available = True
        except Exception:  # no NVML library, no driver or no GPU: CPU checks of this script
            self.available = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.period):
            self.samples.append((time.time(), self._util()))

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    def mean_after(self, t0: float | None, t1: float | None = None):
        vals = [u for t, u in self.samples if t0 is not None and t >= t0 and (t1 is None or t <= t1)]
        return statistics.fmean(vals) if vals else None


def train_args(config: int, data: Path, out: Path, common: str, batch_size: int, workers: int, epochs: int,
               device: str) -> list:
    """The ``stadapter-train`` command line of one config."""
    _, extra = CONFIGS[config]
    return [sys.executable, "-m", "stadapter_fast.train", "--data-root", str(data), *shlex.split(common),
            *shlex.split(extra), "--batch-size", str(batch_size), "--workers", str(workers), "--epochs", str(epochs),
            "--val-every", str(epochs), "--device", device, "--out", str(out), "--quiet"]


def run_config(config: int, args) -> dict:
    out = args.out / f"config{config}"
    cmd = train_args(config, args.data, out, args.common, args.batch_size, args.workers, args.epochs, args.device)
    metrics = out / "metrics.jsonl"
    first_epoch_done = None
    with GpuSampler() as gpu, open(args.out / f"config{config}.log", "w") as log:
        t_start = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if first_epoch_done is None and metrics.is_file() and metrics.read_text().strip():
                first_epoch_done = time.time()
            time.sleep(0.1)
        t_end = time.time()
    row = {"config": config, "what": CONFIGS[config][0], "command": shlex.join(cmd[1:]), "exit": proc.returncode,
           "batch_size": args.batch_size, "workers": args.workers, "epochs": args.epochs}
    if proc.returncode:
        tail = (args.out / f"config{config}.log").read_text()[-2000:]
        return row | {"error": tail}
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    summary = json.loads((out / "summary.json").read_text())
    steady = [r["clips_per_s"] for r in recs[1:]]
    return row | {"clips_per_s": statistics.median(steady) if steady else None,
                  "clips_per_s_epoch1": recs[0]["clips_per_s"], "clips_per_s_per_epoch": [r["clips_per_s"] for r in recs],
                  "peak_memory_mb": summary["peak_memory_mb"], "loader": summary["loader"],
                  "gpu_util_pct": gpu.mean_after(first_epoch_done, t_end), "wall_s": t_end - t_start,
                  "val_top1": summary["val_top1"], "trainable_params": summary["trainable_params"]}


def loader_alone(kind: str, args) -> dict:
    """Clips/s of one loader with no model: ``--epochs`` epochs of the training list (batches moved to
    the device, as the training loop does), median over epochs 2.."""
    import torch

    from stadapter_fast.data import read_video_list
    from stadapter_fast.data.loaders import make_loaders
    from stadapter_fast.train import build_parser

    targs = build_parser().parse_args([*shlex.split(args.common), "--data-root", str(args.data),
                                       "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                                       "--loader", kind])
    device = torch.device(args.device)
    items = read_video_list(args.data / "train.txt")
    loader, _, name = make_loaders(targs, items, items[:1], device, 0, 1)
    rates = []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for clips, labels, _ in loader:
            clips = clips.to(device, non_blocking=True)
            n += len(labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(n / (time.perf_counter() - t0))
    return {"loader": name, "threads": args.workers, "clips_per_s": statistics.median(rates[1:] or rates),
            "clips_per_s_per_epoch": rates}


def table(rows: list, loaders: list) -> str:
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    base = next((r.get("clips_per_s") for r in rows if r["config"] == 1), None)
    lines = ["| config | loader | clips/s | vs (1) | epoch-1 clips/s | peak GPU memory (MiB) | GPU util (%) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| ({r['config']}) {r['what']} | failed (exit {r['exit']}) | | | | | |")
            continue
        ratio = r["clips_per_s"] / base if base and r["clips_per_s"] else None
        lines.append(f"| ({r['config']}) {r['what']} | {r['loader']} | {f(r['clips_per_s'], '.1f')} | "
                     f"{f(ratio, '.2f') + ('x' if ratio else '')} | {f(r['clips_per_s_epoch1'], '.1f')} | {f(r['peak_memory_mb'], '.0f')} | "
                     f"{f(r['gpu_util_pct'], '.0f')} |")
    if loaders:
        lines.append("")
    lines += [f"loader alone, {ld['threads']} thread(s): {ld['loader']} {ld['clips_per_s']:.1f} clips/s" for ld in loaders]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.train_gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a dataset root with train.txt and val.txt")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--configs", default="1,2,3,4,5", help="comma-separated numbers of CONFIGS")
    ap.add_argument("--loaders", default="pyav,dali", help="loaders timed alone ('' for none)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=16, help="DataLoader workers / DALI threads, every run")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--common", default=COMMON, help="stadapter-train arguments shared by every config")
    args = ap.parse_args(argv)
    configs = [int(c) for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        raise ValueError(f"--configs: expected numbers among {sorted(CONFIGS)}, got {unknown}")
    if args.epochs < 2:
        raise ValueError(f"--epochs: expected >= 2 (epoch 1 is warm-up), got {args.epochs}")
    args.out.mkdir(parents=True, exist_ok=True)
    loaders = [loader_alone(k, args) for k in args.loaders.split(",") if k.strip()]
    rows = []
    for c in configs:
        rows.append(run_config(c, args))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("command", "error")}), flush=True)
    from benchmarks._harness import versions

    result = {"configs": rows, "loaders_alone": loaders, "device": args.device, **versions()}
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name()
    (args.out / "train_gpu.json").write_text(json.dumps(result, indent=1))
    print(table(rows, loaders))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
