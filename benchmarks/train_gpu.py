"""End-to-end training throughput: ``stadapter-train`` runs of the release's setup and of this library's
(issue 12's five configs), each measured for steady-state clips/s, peak GPU memory and GPU utilisation;
and the loaders alone (DALI vs PyAV, same thread count) on the same data.

    python -m benchmarks.train_gpu --data DIR --out OUT [--configs 1,2,3,4,5] [--batch-size auto|N]
                                   [--workers 16] [--epochs 3] [--repeat 4] [--min-steps 48] [--loaders pyav,dali]
    python -m benchmarks.train_gpu --probe-dali DIR      # which DALI decoder works here: DIR/route.txt
    python -m benchmarks.train_gpu --step-memory 1 --batches 4,12   # one step's peak memory, as JSON

``--batch-size auto`` (CUDA only) takes the largest batch that fits, the same for every config: one
training step of config 1's model (the reference adapters, whose autograd keeps the most; issue 12 asks
for "batch as large as fits") is run at two batch sizes in a separate process, torch's peak memory is
fitted as ``fixed + per_clip * batch``, and the batch is what fills ``FIT_FRACTION`` of the device's
memory less ``FIT_RESERVE_MB`` (DALI's own buffers, the CUDA context), rounded down to a multiple of 8 and
capped by the shared memory the PyAV DataLoader's in-flight batches take (``workers * 2`` batches of
float32 clips, at most half of /dev/shm's free space; not applied, but recorded, where that leaves under
8) and by ``FIT_CAP`` (96: at ``--min-steps`` 48 an epoch is then 4608 clips, which a 16-worker PyAV
loader at the ~200 clips/s NOTES 15 expects decodes in ~25 s, keeping a config inside its
``--config-timeout``). If the probe or the fit fails on a GPU, the configs run at ``FIT_FALLBACK`` with
the error in ``batch_fit``. An ``--append`` run reuses the first run's batch and repeat, so every row of
a table has the same. The list is repeated enough for ``--min-steps`` steps an epoch (48: three waves
of a 16-worker DataLoader's batches) for the steady rate's window.

Each config trains ``--epochs`` epochs in its own process (``python -m stadapter_fast.train``) on the
training list repeated ``--repeat`` times (more steps per epoch without more files, so the loaders'
per-epoch start is a small part of an epoch). Epoch 1 pays Triton's compiles and autotuning, so:
  * clips/s: the median over epochs 2.. of ``metrics.jsonl``'s ``clips_per_s_steady``, the rate over the
    second half of each epoch, in whole waves of the loader's batches (``steady_clips_per_s``;
    validation runs once, after the last epoch, and is not in it). An epoch's start is left out: the
    PyAV DataLoader's workers each decode a whole first batch before any arrives (up to 16 batches'
    decoding with the GPU idle, where DALI fills ~one), which a benchmark's short epoch pays in a
    large share and a real dataset's epoch does not. ``clips_per_s_whole_epoch`` (median over epochs
    2.., start included) is beside it;
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
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.targets import bound, met

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


# --batch-size auto: see the module's docstring
FIT_PROBE_BATCHES = (4, 12)
FIT_FRACTION, FIT_RESERVE_MB, FIT_CAP = 0.8, 4096, 96
FIT_FALLBACK = 32  # the batch when the fit fails (E1 still runs its configs; the failure is on record)
STEP_MEMORY_TAG = "step memory (MiB): "  # the line of --step-memory's output that holds its JSON


def batch_size_arg(text: str):
    """``--batch-size``: "auto" or an integer >= 1."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}")
    return value


def step_memory(common: str, extra: str, batches, device: str, num_classes: int = 4, peak_mb=None) -> dict:
    """Peak torch memory (MiB) of one training step of ``stadapter-train``'s loop (its model from ``common``
    + ``extra``, its loss under autocast, backward through its scaler, its optimizer update) at each of
    ``batches`` clips, measured from a reset peak each time. ``peak_mb`` (a function) replaces torch's
    CUDA counter, so a CPU test can run the steps."""
    import torch

    from stadapter_fast.train import (_DTYPES, build_model, build_parser, forward_loss, init_process,
                                      optimization, optimizer_step)

    args = build_parser().parse_args([*shlex.split(common), *shlex.split(extra), "--device", device])
    cuda = torch.device(device).type == "cuda"
    if peak_mb is None and not cuda:
        raise ValueError(f"step_memory: device: expected a CUDA device (torch's peak counter), got {device!r}")
    dev = init_process(args)[3]  # stadapter-train's precision rules and device
    if peak_mb is None:
        peak_mb = lambda: torch.cuda.max_memory_allocated(dev) / 2 ** 20  # noqa: E731
    model = build_model(args, num_classes, dev)
    model.train()
    opt, sched, scaler = optimization(args, model, dev, steps_per_epoch=len(batches) + 1)

    def step(b):
        clips = torch.randn(b, 3, args.frames, args.image_size, args.image_size, device=dev)
        labels = torch.randint(0, num_classes, (b,), device=dev)
        scaler.scale(forward_loss(model, clips, labels, _DTYPES[args.amp])).backward()
        optimizer_step(opt, sched, scaler, 0)

    step(min(batches))  # unmeasured: AdamW's state and the libraries' workspaces exist before the first reading
    out = {}
    for b in batches:
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        step(b)
        if cuda:
            torch.cuda.synchronize(dev)
        out[b] = peak_mb()
    return out


def fit_batch(memory: dict, total_mb: float, shm_free_mb: float, clip_mb: float, workers: int,
              fraction: float = FIT_FRACTION, reserve_mb: float = FIT_RESERVE_MB, cap: int = FIT_CAP) -> dict:
    """The largest batch that fits (see the module's docstring) from ``memory`` ({batch: peak MiB} at two
    or more sizes): ``{"batch_size", "per_clip_mb", "fixed_mb", "by_memory", "by_shm"}``. Raises
    ValueError when memory does not grow with the batch (a measurement that cannot be extrapolated)."""
    (b1, m1), (b2, m2) = sorted(memory.items())[0], sorted(memory.items())[-1]
    per_clip = (m2 - m1) / (b2 - b1) if b2 != b1 else 0.0
    if per_clip <= 0:
        raise ValueError(f"--batch-size auto: expected peak memory to grow with the batch, got {memory} (MiB)")
    fixed = m1 - per_clip * b1
    by_memory = math.floor((fraction * total_mb - reserve_mb - fixed) / per_clip)
    # the PyAV DataLoader holds up to workers * prefetch_factor (2) batches in shared memory
    by_shm = math.floor(0.5 * shm_free_mb / (max(workers, 1) * 2 * clip_mb))
    if by_memory < 1:
        raise ValueError(f"--batch-size auto: expected room for one clip, got {fraction * total_mb - reserve_mb:.0f} "
                         f"MiB usable for {fixed:.0f} MiB fixed + {per_clip:.0f} MiB per clip")
    # /dev/shm too small for even 8 clips a batch: the PyAV configs fail at any useful batch, and the
    # DALI ones (which do not use it) should not shrink with them; kept on record, not applied
    shm_applies = by_shm >= 8
    b = min(by_memory, cap, by_shm if shm_applies else cap)
    if b >= 8:
        b -= b % 8
    return {"batch_size": b, "per_clip_mb": per_clip, "fixed_mb": fixed, "by_memory": by_memory,
            "by_shm": by_shm, "shm_applied": shm_applies, "probe_mb": {str(k): v for k, v in sorted(memory.items())},
            "total_mb": total_mb, "shm_free_mb": shm_free_mb}


def auto_batch(args) -> dict:
    """``--batch-size auto`` on a CUDA device: config 1's step memory from a separate process (so this
    one holds no CUDA memory while the configs run), fitted by :func:`fit_batch`."""
    import torch

    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        raise ValueError(f"--batch-size auto: expected a CUDA --device that is available, got {args.device!r} "
                         f"(give a number instead)")
    cmd = [sys.executable, "-m", "benchmarks.train_gpu", "--step-memory", "1", "--device", args.device,
           "--batches", ",".join(map(str, FIT_PROBE_BATCHES)), "--common", args.common]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    lines = [ln[len(STEP_MEMORY_TAG):] for ln in done.stdout.splitlines() if ln.startswith(STEP_MEMORY_TAG)]
    if done.returncode or not lines:
        raise RuntimeError(f"--batch-size auto: the memory probe failed (exit {done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-2000:]}")
    memory = {int(k): v for k, v in json.loads(lines[-1]).items()}
    total_mb = torch.cuda.get_device_properties(torch.device(args.device)).total_memory / 2 ** 20
    shm = shutil.disk_usage("/dev/shm").free / 2 ** 20 if os.path.isdir("/dev/shm") else float("inf")
    from stadapter_fast.train import build_parser

    targs = build_parser().parse_args(shlex.split(args.common))
    clip_mb = 3 * targs.frames * targs.image_size ** 2 * 4 / 2 ** 20  # a float32 clip, as the workers ship it
    return fit_batch(memory, total_mb, shm, clip_mb, args.workers)


def nvml_device(device: str, visible: str | None) -> tuple[str, int | str]:
    """Which GPU NVML should read for torch's ``device`` ("cuda" or "cuda:K") under
    ``CUDA_VISIBLE_DEVICES=visible`` (None: unset): ``("index", i)`` or ``("uuid", "GPU-...")``. torch's
    ``cuda:K`` is the K-th visible device; NVML counts every GPU of the machine. Worked out from the
    environment, as torch does, so the sampling process never opens a CUDA context of its own (which would
    add to the memory it reads). Assumes CUDA's device order is NVML's (PCI bus order), which holds unless
    ``CUDA_DEVICE_ORDER`` is left at its default on a machine with mixed GPUs."""
    k = int(device.partition(":")[2] or 0)
    if visible is None:
        return "index", k
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if k >= len(entries):
        raise ValueError(f"device {device!r}: CUDA_VISIBLE_DEVICES={visible!r} makes {len(entries)} GPU(s) visible")
    entry = entries[k]
    if entry.isdigit():
        return "index", int(entry)
    if entry.startswith("GPU-"):
        return "uuid", entry
    raise ValueError(f"device {device!r}: CUDA_VISIBLE_DEVICES entry {entry!r} is neither an index nor a "
                     "GPU-... UUID (MIG instances are not sampled)")


class GpuSampler:
    """Samples GPU and NVDEC utilisation (%) and device memory in use (MiB) of torch's ``device`` every
    ``period`` s in a thread, through NVML (nvidia-ml-py, which the GPU image holds; which GPU: the
    machine's only one, else :func:`nvml_device`). ``available`` is False where NVML, a driver or a GPU
    is missing, or for a CPU run; ``error`` holds what stopped the sampling, if anything did. ``read`` (a
    function returning ``(gpu %, decoder %, used MiB)``) replaces NVML in tests."""

    def __init__(self, enabled: bool = True, period: float = 0.2, read=None, device: str = "cuda"):
        self.period, self.samples, self.error, self._stop = period, [], None, threading.Event()
        self._read, self.available = read, read is not None
        if enabled and read is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                if pynvml.nvmlDeviceGetCount() == 1:  # the only GPU, however CUDA_VISIBLE_DEVICES names it
                    how, which = "index", 0
                else:
                    how, which = nvml_device(device, os.environ.get("CUDA_VISIBLE_DEVICES"))
                handle = (pynvml.nvmlDeviceGetHandleByIndex(which) if how == "index"
                          else pynvml.nvmlDeviceGetHandleByUUID(which))

                def decoder():
                    return pynvml.nvmlDeviceGetDecoderUtilization(handle)[0]

                try:  # a device may not report NVDEC's load (MIG, say): keep the other figures
                    decoder()
                except pynvml.NVMLError as e:
                    self.error = f"NVML decoder utilisation: {e}"

                    def decoder():
                        return None

                def nvml_read():
                    return (pynvml.nvmlDeviceGetUtilizationRates(handle).gpu, decoder(),
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
        dec = [d for d in dec if d is not None]
        return {"gpu_util_pct": statistics.fmean(gpu), "nvdec_util_pct": statistics.fmean(dec) if dec else None,
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


def rates(whole: list, steady: list) -> dict:
    """A run's clips/s from its per-epoch rates (whole epochs, and ``steady_clips_per_s``): medians over
    epochs 2.. (epoch 1 pays compiles and autotuning); the steady one is None if an epoch had none."""
    return {"clips_per_s": statistics.median(steady[1:]) if None not in steady[1:] else None,
            "clips_per_s_whole_epoch": statistics.median(whole[1:]), "clips_per_s_epoch1": whole[0],
            "clips_per_s_per_epoch": whole, "clips_per_s_steady_per_epoch": steady}


def run_config(config: int, args, train_list: Path, read=None) -> dict:
    out = args.out / f"config{config}"
    shutil.rmtree(out, ignore_errors=True)  # a previous run's metrics.jsonl would start the window early
    cmd = train_args(config, args.data, train_list, out, args.common, args.batch_size, args.workers, args.epochs,
                     args.device, args.dali_decoder)
    metrics, log_path = out / "metrics.jsonl", args.out / f"config{config}.log"
    seen = {}  # number of epoch records -> when it was first seen
    with GpuSampler(args.device.startswith("cuda"), read=read, device=args.device) as gpu, open(log_path, "w") as log:
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
    return row | rates([r["clips_per_s"] for r in recs], [r["clips_per_s_steady"] for r in recs]) | {
        "peak_memory_mb": summary["peak_memory_mb"], "loader": summary["loader"], **window, "nvml_error": gpu.error,
        "val_top1": summary["val_top1"], "trainable_params": summary["trainable_params"]}


def loader_alone(kind: str, args, train_list: Path) -> dict:
    """Clips/s of one loader with no model: ``--epochs`` epochs of the (repeated) training list,
    batches moved to the device as the training loop moves them; median over epochs 2.. of the rate
    over each epoch's second half (as for the configs), and of whole epochs."""
    import torch

    from stadapter_fast.data import read_video_list
    from stadapter_fast.data.loaders import make_loaders
    from stadapter_fast.train import build_parser, steady_clips_per_s

    targs = build_parser().parse_args([*shlex.split(args.common), "--data-root", str(args.data),
                                       "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                                       "--loader", kind, "--dali-decoder", args.dali_decoder])
    device = torch.device(args.device)
    items = read_video_list(train_list)
    loader, _, name = make_loaders(targs, items, items[:1], device, 0, 1)
    whole, steady = [], []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        t0, n, stamps = time.perf_counter(), 0, []
        for clips, labels, _ in loader:
            clips = clips.to(device, non_blocking=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # as the training loop's loss.item() does each step
            n += len(labels)
            stamps.append((time.perf_counter(), n))
        whole.append(n / (time.perf_counter() - t0))
        steady.append(steady_clips_per_s(stamps, loader.batches_per_wave))
    return {"loader": name, "threads": args.workers} | rates(whole, steady)


def probe_dali(tmp: Path) -> str:
    """"gpu" if DALI's NVDEC route decodes a batch of H.264 and VP9 here, else "cpu" (printing why)."""
    import torch

    from stadapter_fast.data import read_video_list
    from stadapter_fast.data.loaders import DALILoader
    from stadapter_fast.data.synthetic import make_synthetic
    from stadapter_fast.train import build_parser

    # 160 px: NVDEC refuses frames under its minimum size (128x128 for VP9, by NVIDIA's decoder guide),
    # and a probe of smaller videos would report "cpu" on a machine whose NVDEC works
    data = make_synthetic(tmp, n_train=4, n_val=0, frames=16, size=160, seed=0)
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
    lines = ["| config | loader | batch | clips/s | vs (1) | whole-epoch clips/s | epoch-1 clips/s | peak torch memory "
             "(MiB) | peak device memory (MiB) | GPU util (%) | NVDEC util (%) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["config"]):  # by config, whichever call ran each
        if "error" in r:
            lines.append(f"| ({r['config']}) {r['what']} | failed (exit {r['exit']}) | {r['batch_size']} | | | | | | | | |")
            continue
        ratio = r["clips_per_s"] / base if base and r["clips_per_s"] else None
        lines.append(f"| ({r['config']}) {r['what']} | {r['loader']} | {r['batch_size']} | {f(r['clips_per_s'], '.1f')} | "
                     f"{f(ratio, '.2f') + ('x' if ratio else '')} | {f(r['clips_per_s_whole_epoch'], '.1f')} | "
                     f"{f(r['clips_per_s_epoch1'], '.1f')} | "
                     f"{f(r['peak_memory_mb'], '.0f')} | {f(r['nvml_peak_used_mb'], '.0f')} | "
                     f"{f(r['gpu_util_pct'], '.0f')} | {f(r['nvdec_util_pct'], '.0f')} |")
    if loaders:
        lines.append("")
    lines += [f"loader alone, {ld['threads']} thread(s): {ld['loader']} "
              + (f"{f(ld['clips_per_s'], '.1f')} clips/s ({f(ld['clips_per_s_whole_epoch'], '.1f')} over whole epochs)"
                 if "error" not in ld else f"failed: {ld['error'][:200]}")
              for ld in loaders]
    return "\n".join(lines + ["", *targets(rows, loaders)])


def targets(rows: list, loaders: list) -> list[str]:
    """Issue 12's targets, each met or missed, or which figure it lacks: (3) >= 1.5x the clips/s of (1);
    the DALI loader alone >= 2x PyAV's at the same threads; (5)'s peak torch memory <= 0.6x (3)'s, with
    (5)'s step-time cost (the clips/s of (3) over those of (5); a loader-bound run hides it)."""
    by = {r["config"]: r for r in rows if "error" not in r}
    alone = {("dali" if ld["loader"].startswith("dali") else ld["loader"]): ld for ld in loaders if "error" not in ld}

    def ratio(a, b, key):
        return a[key] / b[key] if a and b and a.get(key) and b.get(key) else None

    def line(what, v, wanted, higher, lacks):
        if v is None:
            return f"- {what}: n/a ({lacks})"
        return f"- {what}: {v:.2f}x (wanted {bound(wanted, higher)}x): {'met' if met(v, wanted, higher) else 'missed'}"

    cost = ratio(by.get(3), by.get(5), "clips_per_s")
    return ["targets:",
            line("(3) vs (1) clips/s", ratio(by.get(3), by.get(1), "clips_per_s"), 1.5, True,
                 "needs configs 1 and 3"),
            line("DALI loader alone vs PyAV alone, clips/s", ratio(alone.get("dali"), alone.get("pyav"), "clips_per_s"),
                 2.0, True, "needs both loaders alone"),
            line("(5) vs (3) peak torch memory", ratio(by.get(5), by.get(3), "peak_memory_mb"), 0.6, False,
                 "needs configs 3 and 5")
            + ("" if cost is None else f"; (5) takes {cost:.2f}x (3)'s time per clip (its step-time cost)")]


def main(argv=None, read=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.train_gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe-dali", type=Path, default=None, metavar="DIR",
                    help="only check DALI's NVDEC route (a 4-video set made in DIR); writes gpu or cpu to DIR/route.txt")
    ap.add_argument("--data", type=Path, help="a dataset root with train.txt and val.txt")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--configs", default="1,2,3,4,5", help="comma-separated numbers of CONFIGS")
    ap.add_argument("--loaders", default="pyav,dali", help="loaders timed alone, after the configs ('' for none)")
    ap.add_argument("--step-memory", type=int, default=None, metavar="CONFIG",
                    help="only print one training step's peak memory (MiB) of CONFIG's model at --batches, as JSON")
    ap.add_argument("--batches", default=",".join(map(str, FIT_PROBE_BATCHES)), help="batch sizes for --step-memory")
    ap.add_argument("--batch-size", type=batch_size_arg, default=32,
                    help="clips per step, every config; 'auto': the largest that fits (CUDA; see the docstring)")
    ap.add_argument("--workers", type=int, default=16, help="DataLoader workers / DALI threads, every run")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=4, help="times each training video is listed per epoch")
    ap.add_argument("--min-steps", type=int, default=48,
                    help="list the videos more than --repeat times where needed for this many steps per epoch")
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
    if args.step_memory is not None:
        if args.step_memory not in CONFIGS:
            raise ValueError(f"--step-memory: expected a number among {sorted(CONFIGS)}, got {args.step_memory}")
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        memory = step_memory(args.common, CONFIGS[args.step_memory][1], batches, args.device)
        print(STEP_MEMORY_TAG + json.dumps(memory))
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
    old = json.loads(previous.read_text()) if args.append and previous.is_file() else None
    if old is not None:
        result["configs"], result["loaders_alone"] = old["configs"], old["loaders_alone"]
    if args.batch_size == "auto" and old is not None and "batch_size" in old:
        # the rows of one table share the batch and the list
        args.batch_size, args.repeat = old["batch_size"], old["repeat"]
        result["batch_fit"] = old.get("batch_fit")
    elif args.batch_size == "auto":
        try:
            result["batch_fit"] = auto_batch(args)
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            if not args.device.startswith("cuda"):
                raise
            # a visit cannot be redone: run the configs at the fallback batch, with the failure on record
            result["batch_fit"] = {"batch_size": FIT_FALLBACK, "error": f"{type(e).__name__}: {e}"[-2000:]}
        args.batch_size = result["batch_fit"]["batch_size"]
        print(f"--batch-size auto: {json.dumps(result['batch_fit'])}", flush=True)
    videos = sum(1 for ln in (args.data / "train.txt").read_text().splitlines() if ln.strip())
    args.repeat = max(args.repeat, math.ceil(args.min_steps * args.batch_size / max(videos, 1)))
    result["batch_size"], result["repeat"] = args.batch_size, args.repeat
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name()

    def save():
        (args.out / "train_gpu.json").write_text(json.dumps(result, indent=1))

    train_list = repeated_list(args.data, args.out, args.repeat)
    save()  # the batch (and its fit) is on record before the first config runs
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
