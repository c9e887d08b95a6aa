"""Timing, memory and roofline helpers shared by the benchmark levels.

Timing: synchronized wall-clock timers around each call (``torch.cuda.synchronize`` on GPU), warm-up
calls excluded, median over rounds; inputs rotate over several copies when one set would sit in L2.
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
    """Measured once per session: a large device-to-device copy and a large matmul."""
    dev = device()
    if dev in _RATES:
        return _RATES[dev]
    if dev == "cuda":
        n_copy, mm, dt, name = 2 ** 28, 8192, torch.bfloat16, torch.cuda.get_device_name()
    else:
        n_copy, mm, dt, name = 2 ** 25, 1024, torch.float32, "cpu"
    src = torch.empty(n_copy, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    t_copy = statistics.median(time_calls(lambda i: dst.copy_(src), 3, 10))
    a = torch.randn(mm, mm, device=dev, dtype=dt)
    b = torch.randn(mm, mm, device=dev, dtype=dt)
    t_mm = statistics.median(time_calls(lambda i: a @ b, 3, 10))
    _RATES[dev] = DeviceRates(2 * n_copy / t_copy / 1e9, 2 * mm ** 3 / t_mm / 1e12, name)
    return _RATES[dev]


@dataclass
class Baselines:
    """Median seconds and peak bytes of the baseline providers per case, filled as rows run (or
    measured on demand, with the same method, when a selection skipped them)."""
    median_s: dict = field(default_factory=dict)
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


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# Tolerances for "outputs checked equal before timing": relative to the output's max, per dtype.
CHECK_RTOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
