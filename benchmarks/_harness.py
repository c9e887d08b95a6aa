"""Timing, memory and roofline helpers shared by the benchmark levels.

Timing (:func:`measure`), three figures per row, warm-up calls (and so Triton autotuning and
torch.compile) excluded:
- device time: on GPU, CUDA events around each call, the L2 flushed before each (a write of 2x its
  size), median over rounds; on CPU, a host clock per call (the host is the device).
- eager wall time: back-to-back calls with one synchronize at the end, divided by their count. It
  includes launch and Python overhead, which device time hides where the GPU runs ahead of the host.
- graph time (GPU only): one call captured into a CUDA graph, then replays timed like device time; the
  gap to device time is what launch gaps cost inside a call. None (with the error) where capture fails.
Inputs also rotate over several copies when one set would sit in L2.
Memory: ``torch.cuda.max_memory_allocated`` delta over one call (GPU only; None on CPU).
Roofline: copy bandwidth and matmul rate are measured once per session on the device itself.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from stadapter_fast.swap import rel_err  # noqa: F401  (the output checks: harness.rel_err)

L2_BYTES = 50 * 2 ** 20  # H100 L2; H200 is the same. Inputs smaller than 2x this are rotated.


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def n_rotations(bytes_per_set: int) -> int:
    """How many input copies to cycle through so consecutive calls do not hit a warm L2."""
    if device() != "cuda" or bytes_per_set <= 0:
        return 1
    return max(1, min(8, math.ceil(2 * L2_BYTES / bytes_per_set)))


def rotated_inputs(shape: tuple, dtype: torch.dtype, requires_grad: bool, seed: int):
    """(inputs to rotate through, one random grad of the same shape): random data on the device."""
    g = torch.Generator(device=device()).manual_seed(seed)
    n = n_rotations(math.prod(shape) * torch.finfo(dtype).bits // 8)
    xs = [torch.randn(shape, device=device(), dtype=dtype, generator=g).requires_grad_(requires_grad)
          for _ in range(n)]
    return xs, torch.randn(shape, device=device(), dtype=dtype, generator=g)


def time_calls(fn: Callable[[int], object], warmup: int, rounds: int) -> list[float]:
    """Per-call seconds of ``fn(i)`` (i = call index, for input rotation), each call synchronized."""
    for i in range(warmup):
        fn(i)
    sync()
    out = []
    for i in range(rounds):
        t = time.perf_counter()
        fn(warmup + i)
        sync()
        out.append(time.perf_counter() - t)
    return out


_FLUSH: dict = {}


def flush_l2() -> None:
    """Evict the GPU's L2 (write a buffer of twice its size), so the next call reads from HBM."""
    if "buf" not in _FLUSH:
        _FLUSH["buf"] = torch.empty(2 * L2_BYTES // 4, dtype=torch.int32, device="cuda")
    _FLUSH["buf"].zero_()


def device_times(fn: Callable[[int], object], warmup: int, rounds: int) -> list[float]:
    """Per-call device seconds of ``fn(i)``: CUDA events with the L2 flushed before each call on GPU;
    a synchronized host clock per call on CPU."""
    if device() != "cuda":
        return time_calls(fn, warmup, rounds)
    for i in range(warmup):
        fn(i)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rounds)]
    for i, (start, end) in enumerate(events):
        flush_l2()
        start.record()
        fn(warmup + i)
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def wall_time(fn: Callable[[int], object], calls: int) -> float:
    """Eager host seconds per call over ``calls`` back-to-back calls (one synchronize at the end)."""
    sync()
    t = time.perf_counter()
    for i in range(calls):
        fn(i)
    sync()
    return (time.perf_counter() - t) / calls


def graph_times(fn: Callable[[int], object], rounds: int) -> tuple[Optional[list[float]], Optional[str]]:
    """(per-replay device seconds, None) of ``fn(0)`` captured into a CUDA graph (warmed up on a side
    stream first, as capture requires), L2 flushed before each replay; ``(None, reason)`` off GPU or
    where capture fails (e.g. host synchronization inside the call)."""
    if device() != "cuda":
        return None, "CUDA graphs need a GPU"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn(0)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(0)
        graph.replay()
        torch.cuda.synchronize()
        return device_times(lambda i: graph.replay(), 2, rounds), None
    except Exception as e:  # noqa: BLE001 -- a capture or replay failure is reported in the row, not fatal
        torch.cuda.synchronize()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


@dataclass
class Timing:
    device_s: float                 # median device seconds per call
    wall_s: float                   # eager host seconds per call, back to back
    graph_s: Optional[float]        # median device seconds per CUDA-graph replay (GPU), else None
    graph_error: Optional[str] = None
    method: str = ""

    def info(self) -> dict:
        """The row's ``extra_info`` fields (ms)."""
        return {"median_ms": self.device_s * 1e3, "device_ms": self.device_s * 1e3, "wall_ms": self.wall_s * 1e3,
                "graph_ms": None if self.graph_s is None else self.graph_s * 1e3, "graph_error": self.graph_error,
                "timing": self.method}


def measure(fn: Callable[[int], object], warmup: int, rounds: int, graph: bool = True) -> Timing:
    """Device, eager wall and (GPU) CUDA-graph time of ``fn(i)``, after ``warmup`` calls."""
    dev_s = statistics.median(device_times(fn, warmup, rounds))
    wall_s = wall_time(fn, rounds)
    graph_s, err = (None, "not requested") if not graph else graph_times(fn, rounds)
    if device() == "cuda":
        method = "CUDA events per call, L2 flushed before each; median"
    else:
        method = "host clock per call (CPU); median"
    return Timing(dev_s, wall_s, None if graph_s is None else statistics.median(graph_s), err, method)


def strict_dynamo(recompile_limit: int = 64) -> None:
    """Compiled rows share code objects (``FastSTAdapter.forward``, the references' forwards) across
    rows, each row adding guard sets (dtype, grad mode, backend, shape). Past dynamo's recompile limit
    (8 by default) torch would run that code eagerly with only a warning, and a ``*_compiled`` row
    would time eager code. Raise the limit, and fail a row that still hits it."""
    torch._dynamo.config.recompile_limit = recompile_limit
    torch._dynamo.config.fail_on_recompile_limit_hit = True


def peak_memory_bytes(fn: Callable[[], object]) -> Optional[int]:
    """Extra device memory at the peak of one call of ``fn`` (beyond what was allocated before)."""
    if device() != "cuda":
        return None
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return torch.cuda.max_memory_allocated() - base


@dataclass
class DeviceRates:
    copy_gbps: float     # device copy bandwidth, bytes read + written per second / 1e9
    matmul_tflops: float  # dense matmul rate in the benchmark dtype's class (bf16 on GPU, fp32 on CPU)
    name: str


_RATES: dict[str, DeviceRates] = {}


def device_rates() -> DeviceRates:
    """Measured once per session, timed as the rows are (:func:`device_times`: CUDA events on GPU, so no
    launch or synchronize time understates the ceilings): a device-to-device copy of 1 GiB (~0.5 ms on
    an H100) and an 8192^3 bf16 matmul on random data."""
    dev = device()
    if dev in _RATES:
        return _RATES[dev]
    if dev == "cuda":
        n_copy, mm, dt, name = 2 ** 30, 8192, torch.bfloat16, torch.cuda.get_device_name()
    else:
        n_copy, mm, dt, name = 2 ** 25, 1024, torch.float32, "cpu"
    src = torch.empty(n_copy, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    t_copy = statistics.median(device_times(lambda i: dst.copy_(src), 3, 10))
    del src, dst
    a = torch.randn(mm, mm, device=dev, dtype=dt)
    b = torch.randn(mm, mm, device=dev, dtype=dt)
    t_mm = statistics.median(device_times(lambda i: a @ b, 3, 10))
    _RATES[dev] = DeviceRates(2 * n_copy / t_copy / 1e9, 2 * mm ** 3 / t_mm / 1e12, name)
    return _RATES[dev]


@dataclass
class Baselines:
    """Timings and peak bytes of the baseline providers per case, filled as rows run (or measured on
    demand, with the same method, when a selection skipped them)."""
    timing: dict = field(default_factory=dict)
    peak: dict = field(default_factory=dict)


BASELINES = Baselines()


def versions() -> dict:
    out = {"torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


# Tolerances for "outputs checked equal before timing": relative to the output's max, per dtype.
CHECK_RTOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
