"""End-to-end training throughput: ``stadapter-train`` runs of the release's setup and of this library's
(issue 12's five configs), each measured for steady-state clips/s, peak GPU memory and GPU utilisation;
and the loaders alone (DALI vs PyAV, same thread count) on the same data.

    python -m benchmarks.train_gpu --data DIR --out OUT [--configs 1,2,3,4,5] [--batch-size 32]
                                   [--workers 16] [--epochs 3] [--repeat 4] [--loaders pyav,dali]
    python -m benchmarks.train_gpu --probe-dali DIR      # which DALI decoder works here: DIR/route.txt

Each config trains ``--epochs`` epochs in its own process (``python -m stadapter_fast.train``) on the
training list repeated ``--repeat`` times (more steps per epoch without more files, so the loaders'
per-epoch start is a small part of an epoch). Epoch 1 pays Triton's compiles and autotuning, so:
  * clips/s: the median of ``metrics.jsonl``'s per-epoch ``clips_per_s`` over epochs 2.. (training
    time only; validation runs once, after the last epoch, and is not in it);
  * GPU utilisation, NVDEC utilisation and device memory in use (NVML, sampled every 0.2 s): over
    epochs 2..N-1 only (from the time epoch 1's record appears to the time epoch N-1's does), so no
    compile, validation or teardown is in it; ``--epochs`` >= 3;
  * peak memory: torch's ``max_memory_allocated`` over the run (``summary.json``). DALI's own device
    memory is outside torch's allocator: ``nvml_peak_used_mb`` (the whole device) shows it.
Rows are written to ``OUT/train_gpu.json`` after each config, so a run stopped by a time limit keeps
the finished ones. On CPU (a check of the script, not a measurement) the NVML figures are None.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# ViT-B/16, 8 frames at 224, 12x384 adapters (the release), bf16 autocast over a frozen bf16 backbone.
# (Issue 12 names a frozen fp16 backbone under bf16 autocast: torch's autocast cannot mix the two half
# types, and stadapter-train refuses that pair.)
COMMON = ("--backbone timm:vit_base_patch16_224 --backbone-kwargs {} --image-size 224 --frames 8 "
          "--adapter-channels 384 --amp bf16 --backbone-dtype bf16")
# issue 12's table: (name, the arguments that make it)
CONFIGS = {
    1: ("reference adapters + PyAV DataLoader (the release's setup)", "--adapter-impl reference --loader pyav"),
    2: ("fast adapters + PyAV DataLoader", "--loader pyav"),
    3: ("fast adapters + DALI", "--loader dali"),
    4: ("M-Adapter (w384, every 3rd block) + DALI", "--method m-adapter --m-width 384 --m-levels 3 --loader dali"),
    5: ("fast adapters + DALI + --checkpoint-backbone", "--loader dali --checkpoint-backbone"),
}


class GpuSampler:
    """Samples GPU and NVDEC utilisation (%) and device memory in use (MiB) every ``period`` s in a
    thread, through NVML (nvidia-ml-py, which the GPU image holds). ``available`` is False where NVML,
    a driver or a GPU is missing, or for a CPU run; ``error`` holds what stopped the sampling, if
    anything did. ``read`` (a function returning ``(gpu %, decoder %, used MiB)``) replaces NVML in
    tests."""

    def __init__(self, enabled: bool = True, period: float = 0.2, read=None):
        self.period, self.samples, self.error, self._stop = period, [], None, threading.Event()
        self._read, self.available = read, read is not None
        if enabled and read is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(0)  # the one GPU of the machine (torch's cuda:0)

                def nvml_read():
                    return (pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                            pynvml.nvmlDeviceGetDecoderUtilization(handle)[0],
                            pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2 ** 20)

                nvml_read()
                self._read, self.available = nvml_read, True
            except Exception as e:  # no NVML library, no driver or no GPU
                self.error = f"NVML: {e}"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.period):
            try:
                self.samples.append((time.time(), *self._read()))
            except Exception as e:  # say why the figures stop, rather than hide it
                self.error = f"sampling stopped: {e}"
                return

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    def window(self, t0: float | None, t1: float | None) -> dict:
        """Mean GPU and decoder utilisation and the peak memory in use over samples in [t0, t1]."""
        rows = [s[1:] for s in self.samples if t0 is not None and t1 is not None and t0 <= s[0] <= t1]
        if not rows:
            return {"gpu_util_pct": None, "nvdec_util_pct": None, "nvml_peak_used_mb": None, "samples": 0}
        gpu, dec, used = zip(*rows)
        return {"gpu_util_pct": statistics.fmean(gpu), "nvdec_util_pct": statistics.fmean(dec),
                "nvml_peak_used_mb": max(used), "samples": len(rows)}


def repeated_list(data: Path, out: Path, repeat: int) -> Path:
    """``data/train.txt`` with each line ``repeat`` times, paths made absolute, written to ``out``."""
    lines = [ln for ln in (data / "train.txt").read_text().splitlines() if ln.strip()]
    absolute = [f"{(data / ln.rsplit(' ', 1)[0]).resolve()} {ln.rsplit(' ', 1)[1]}" for ln in lines]
    path = out / f"train_x{repeat}.txt"
    path.write_text("".join(ln + "\n" for _ in range(repeat) for ln in absolute))
    return path


def train_args(config: int, data: Path, train_list: Path, out: Path, common: str, batch_size: int, workers: int,
               epochs: int, device: str, dali_decoder: str = "auto") -> list:
    """The ``stadapter-train`` command line of one config."""
    _, extra = CONFIGS[config]
    return [sys.executable, "-m", "stadapter_fast.train", "--data-root", str(data), "--train-list", str(train_list),
            "--val-list", str(Path(data) / "val.txt"), *shlex.split(common), *shlex.split(extra),
            "--batch-size", str(batch_size), "--workers", str(workers), "--epochs", str(epochs),
            "--val-every", str(epochs), "--device", device, "--dali-decoder", dali_decoder, "--out", str(out),
            "--quiet"]


def run_config(config: int, args, train_list: Path, read=None) -> dict:
    out = args.out / f"config{config}"
    shutil.rmtree(out, ignore_errors=True)  # a previous run's metrics.jsonl would start the window early
    cmd = train_args(config, args.data, train_list, out, args.common, args.batch_size, args.workers, args.epochs,
                     args.device, args.dali_decoder)
    metrics, log_path = out / "metrics.jsonl", args.out / f"config{config}.log"
    seen = {}  # number of epoch records -> when it was first seen
    with GpuSampler(args.device.startswith("cuda"), read=read) as gpu, open(log_path, "w") as log:
        t_start = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        timed_out = False
        while proc.poll() is None:
            if metrics.is_file():
                n = sum(1 for ln in metrics.read_text().splitlines() if ln.strip())
                seen.setdefault(n, time.time())
            if time.time() - t_start > args.config_timeout:
                proc.kill()
                proc.wait()
                timed_out = True
                break
            time.sleep(0.1)
        t_end = time.time()
    row = {"config": config, "what": CONFIGS[config][0], "command": shlex.join(cmd[1:]), "exit": proc.returncode,
           "batch_size": args.batch_size, "workers": args.workers, "epochs": args.epochs, "repeat": args.repeat,
           "wall_s": t_end - t_start}
    if proc.returncode or timed_out:
        why = f"killed after {args.config_timeout:.0f} s (--config-timeout)\n" if timed_out else ""
        return row | {"error": why + log_path.read_text()[-2000:]}
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    summary = json.loads((out / "summary.json").read_text())
    def first_seen(k):  # when at least k epoch records were there (two may land within one poll)
        return min((t for n, t in seen.items() if n >= k), default=None)

    window = gpu.window(first_seen(1), first_seen(args.epochs - 1))
    return row | {"clips_per_s": statistics.median(r["clips_per_s"] for r in recs[1:]),
                  "clips_per_s_epoch1": recs[0]["clips_per_s"], "clips_per_s_per_epoch": [r["clips_per_s"] for r in recs],
                  "peak_memory_mb": summary["peak_memory_mb"], "loader": summary["loader"], **window,
                  "nvml_error": gpu.error, "val_top1": summary["val_top1"],
                  "trainable_params": summary["trainable_params"]}


def loader_alone(kind: str, args, train_list: Path) -> dict:
    """Clips/s of one loader with no model: ``--epochs`` epochs of the (repeated) training list,
    batches moved to the device as the training loop moves them; median over epochs 2.."""
    import torch

    from stadapter_fast.data import read_video_list
    from stadapter_fast.data.loaders import make_loaders
    from stadapter_fast.train import build_parser

    targs = build_parser().parse_args([*shlex.split(args.common), "--data-root", str(args.data),
                                       "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                                       "--loader", kind, "--dali-decoder", args.dali_decoder])
    device = torch.device(args.device)
    items = read_video_list(train_list)
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
    return {"loader": name, "threads": args.workers, "clips_per_s": statistics.median(rates[1:]),
            "clips_per_s_per_epoch": rates}


def probe_dali(tmp: Path) -> str:
    """"gpu" if DALI's NVDEC route decodes a batch of H.264 and VP9 here, else "cpu" (printing why)."""
    import torch

    from stadapter_fast.data import read_video_list
    from stadapter_fast.data.loaders import DALILoader
    from stadapter_fast.data.synthetic import make_synthetic
    from stadapter_fast.train import build_parser

    data = make_synthetic(tmp, n_train=4, n_val=0, frames=16, size=64, seed=0)
    items = read_video_list(data / "train.txt")
    a = build_parser().parse_args(["--frames", "8", "--image-size", "56", "--batch-size", "4", "--dali-decoder", "gpu"])
    try:
        loader = DALILoader(items, a, True, torch.device("cuda", 0), 0, 1)
        (clips, labels, _), = list(loader)
        ok = tuple(clips.shape) == (4, 3, 8, 56, 56) and clips.is_cuda and bool(torch.isfinite(clips).all())
        print(f"DALI NVDEC route: {loader.kind}, batch {tuple(clips.shape)} on {clips.device}: {'ok' if ok else 'WRONG'}")
        return "gpu" if ok else "cpu"
    except Exception as e:
        print(f"DALI NVDEC route failed: {type(e).__name__}: {str(e)[:600]}")
        return "cpu"


def table(rows: list, loaders: list) -> str:
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    base = next((r.get("clips_per_s") for r in rows if r["config"] == 1), None)
    lines = ["| config | loader | clips/s | vs (1) | epoch-1 clips/s | peak torch memory (MiB) | peak device memory "
             "(MiB) | GPU util (%) | NVDEC util (%) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| ({r['config']}) {r['what']} | failed (exit {r['exit']}) | | | | | | | |")
            continue
        ratio = r["clips_per_s"] / base if base and r["clips_per_s"] else None
        lines.append(f"| ({r['config']}) {r['what']} | {r['loader']} | {f(r['clips_per_s'], '.1f')} | "
                     f"{f(ratio, '.2f') + ('x' if ratio else '')} | {f(r['clips_per_s_epoch1'], '.1f')} | "
                     f"{f(r['peak_memory_mb'], '.0f')} | {f(r['nvml_peak_used_mb'], '.0f')} | "
                     f"{f(r['gpu_util_pct'], '.0f')} | {f(r['nvdec_util_pct'], '.0f')} |")
    if loaders:
        lines.append("")
    lines += [f"loader alone, {ld['threads']} thread(s): {ld['loader']} "
              + (f"{ld['clips_per_s']:.1f} clips/s" if "error" not in ld else f"failed: {ld['error'][:200]}")
              for ld in loaders]
    return "\n".join(lines)


def main(argv=None, read=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.train_gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe-dali", type=Path, default=None, metavar="DIR",
                    help="only check DALI's NVDEC route (a 4-video set made in DIR); writes gpu or cpu to DIR/route.txt")
    ap.add_argument("--data", type=Path, help="a dataset root with train.txt and val.txt")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--configs", default="1,2,3,4,5", help="comma-separated numbers of CONFIGS")
    ap.add_argument("--loaders", default="pyav,dali", help="loaders timed alone, after the configs ('' for none)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=16, help="DataLoader workers / DALI threads, every run")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=4, help="times each training video is listed per epoch")
    ap.add_argument("--config-timeout", type=float, default=150.0, help="seconds before a config's run is killed")
    ap.add_argument("--dali-decoder", choices=["auto", "gpu", "cpu"], default="auto", help="stadapter-train's flag")
    ap.add_argument("--append", action="store_true",
                    help="add to OUT/train_gpu.json's rows (a run split over two calls) instead of starting anew")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--common", default=COMMON, help="stadapter-train arguments shared by every config")
    args = ap.parse_args(argv)
    if args.probe_dali:
        route = probe_dali(args.probe_dali)
        (args.probe_dali / "route.txt").write_text(route + "\n")
        print(route)
        return 0
    if args.data is None or args.out is None:
        raise ValueError(f"--data and --out: expected both (or --probe-dali), got --data {args.data} --out {args.out}")
    configs = [int(c) for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        raise ValueError(f"--configs: expected numbers among {sorted(CONFIGS)}, got {unknown}")
    if args.epochs < 3:
        raise ValueError(f"--epochs: expected >= 3 (epoch 1 is warm-up; utilisation is read over epochs 2..N-1), "
                         f"got {args.epochs}")
    if args.repeat < 1:
        raise ValueError(f"--repeat: expected >= 1, got {args.repeat}")
    args.out.mkdir(parents=True, exist_ok=True)
    from benchmarks._harness import versions

    result = {"configs": [], "loaders_alone": [], "device": args.device, "dali_decoder": args.dali_decoder,
              **versions()}
    previous = args.out / "train_gpu.json"
    if args.append and previous.is_file():
        old = json.loads(previous.read_text())
        result["configs"], result["loaders_alone"] = old["configs"], old["loaders_alone"]
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name()

    def save():
        (args.out / "train_gpu.json").write_text(json.dumps(result, indent=1))

    train_list = repeated_list(args.data, args.out, args.repeat)
    for c in configs:
        result["configs"].append(run_config(c, args, train_list, read=read))
        save()
        print(json.dumps({k: v for k, v in result["configs"][-1].items() if k not in ("command", "error")}), flush=True)
    # the loaders last, in this process: a failure here cannot cost a config's figures
    for kind in (k.strip() for k in args.loaders.split(",") if k.strip()):
        try:
            result["loaders_alone"].append(loader_alone(kind, args, train_list))
        except Exception as e:
            result["loaders_alone"].append({"loader": kind, "threads": args.workers, "error": f"{type(e).__name__}: {e}"})
        save()
        print(json.dumps(result["loaders_alone"][-1]), flush=True)
    print(table(result["configs"], result["loaders_alone"]))
    failed = any("error" in r for r in result["configs"] + result["loaders_alone"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
