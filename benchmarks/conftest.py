"""pytest-benchmark plumbing: one row per (level, case, mode, provider), with speed-ups against the
reference providers, peak memory, and roofline fractions in ``extra_info``.

Run: ``pytest benchmarks/ --benchmark-only`` (add ``--benchmark-json=out.json`` for the report tool,
``-k`` to select, ``--max-autotune`` to compile references with mode="max-autotune").
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

import pytest
import torch

from benchmarks import _harness as harness

WARMUP, ROUNDS = (3, 10) if harness.device() == "cuda" else (2, 15)
BASELINE_PROVIDERS = ("reference", "reference_compiled")
_REF_OUT: dict = {}


def pytest_addoption(parser):
    parser.addoption("--max-autotune", action="store_true", default=False,
                     help="compile the *_compiled providers with mode='max-autotune'")
    parser.addoption("--no-compiled-baseline", action="store_true", default=False,
                     help="report speed-up vs reference_compiled only where that row ran in this session "
                          "(skips compiling it on demand for -k selections without it)")


_OPTS = {}


def pytest_configure(config):
    _OPTS["compiled_baseline"] = not config.getoption("--no-compiled-baseline", default=False)
    harness.strict_dynamo()
    # A phase limit (`timeout -k 20` in benchmarks/run_gpu.sh) sends SIGTERM, which would end the
    # process before pytest-benchmark writes its JSON: stop the session instead (_stop_session).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_session)


#: seconds the row under way may take to finish after a SIGTERM, before the session is interrupted
STOP_GRACE_S = 10
_STATE: dict = {}


def pytest_sessionstart(session):
    _STATE["session"] = session


def _stop_session(signum, frame):
    """SIGTERM: the session stops after the row under way (pytest's ``shouldstop``), so every row done
    is saved. A second SIGTERM, or ``STOP_GRACE_S`` without the row ending, interrupts it as Ctrl-C
    does, in time for the JSON to be written before `timeout` kills."""
    session = _STATE.get("session")
    if session is None or session.shouldstop:
        _interrupt(signum, frame)
    session.shouldstop = f"signal {signum} (a time limit): stopped after the row under way"
    signal.signal(signal.SIGALRM, _interrupt)
    signal.alarm(STOP_GRACE_S)


def _interrupt(signum, frame):
    # once: a later signal must not break into the JSON's writing (`timeout` kills 20 s after its SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum} (a time limit): the rows done so far are saved")


_PASSED: set = set()


@pytest.hookimpl(tryfirst=True)  # before the terminal's progress mark: a row marked done is recorded
def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        _PASSED.add(report.nodeid)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    """Only the rows of tests that passed go into the JSON. A session stopped mid-row leaves that row
    without rounds (pytest-benchmark then fails to write the JSON at all) or without its metrics."""
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None:
        bs.benchmarks[:] = [b for b in bs.benchmarks if b.fullname in _PASSED]
    yield


@pytest.fixture(scope="session")
def compile_mode(request) -> str:
    return "max-autotune" if request.config.getoption("--max-autotune") else "default"


def skip_unavailable(provider: str) -> None:
    """Compiled and cuDNN providers are GPU rows; the CPU run compares fast (torch path) vs reference."""
    if harness.device() != "cuda" and provider not in ("reference", "fast", "fast_onepass"):
        pytest.skip(f"{provider} is benchmarked on GPU only (CPU runs compare fast vs reference)")


class Row:
    """Builds, checks and times one provider for one case; records extra_info."""

    def __init__(self, benchmark, level: int, case_key: tuple, mode: str, dtype: torch.dtype,
                 build: Callable[[str], tuple], min_bytes: Optional[float] = None,
                 flops: Optional[float] = None):
        self.benchmark, self.level, self.key, self.mode, self.dtype = benchmark, level, case_key, mode, dtype
        self.build, self.min_bytes, self.flops = build, min_bytes, flops

    def _measure(self, provider: str):
        """(timing, peak bytes) of one provider, measured the same way as :meth:`run`'s rows."""
        step, _ = self.build(provider)
        timing = harness.measure(step, WARMUP, ROUNDS)
        return timing, harness.peak_memory_bytes(lambda: step(0))

    def _reference_output(self, output_fn) -> torch.Tensor:
        k = self.key + (self.mode,)
        if k not in _REF_OUT:
            _REF_OUT.clear()  # keep one case's reference output alive at a time
            _REF_OUT[k] = self.build("reference")[1]()
        return _REF_OUT[k]

    def _baseline(self, provider: str) -> tuple[harness.Timing, Optional[int]]:
        k = self.key + (self.mode, provider)
        if k not in harness.BASELINES.timing:
            harness.BASELINES.timing[k], harness.BASELINES.peak[k] = self._measure(provider)
        return harness.BASELINES.timing[k], harness.BASELINES.peak[k]

    def run(self, provider: str) -> None:
        step, output = self.build(provider)
        # outputs checked equal before timing
        if provider != "reference":
            err = harness.rel_err(output(), self._reference_output(output))
            tol = harness.CHECK_RTOL[self.dtype]
            assert err <= tol, f"{provider} output differs from reference: rel err {err:.2e} > {tol:.0e}"
        # pytest-benchmark's own statistics: eager wall time of synchronized calls (the JSON's "stats");
        # the row's figures (extra_info) come from harness.measure: device, back-to-back wall and graph time
        calls = iter(range(10 ** 9))
        self.benchmark.pedantic(lambda: (step(next(calls)), harness.sync()), rounds=ROUNDS,
                                warmup_rounds=WARMUP, iterations=1)
        timing = harness.measure(step, 0, ROUNDS)
        peak = harness.peak_memory_bytes(lambda: step(0))
        k = self.key + (self.mode, provider)
        if provider in BASELINE_PROVIDERS:
            harness.BASELINES.timing[k], harness.BASELINES.peak[k] = timing, peak
        t = timing.device_s
        info = self.benchmark.extra_info
        info.update(level=self.level, case="/".join(map(str, self.key)), mode=self.mode, provider=provider,
                    dtype=str(self.dtype).replace("torch.", ""), device=harness.device_rates().name,
                    **harness.versions(), **timing.info())
        ref, ref_peak = self._baseline("reference")
        info.update(_speedups(timing, ref, "reference"))
        comp_key = self.key + (self.mode, "reference_compiled")
        compiled_ran = comp_key in harness.BASELINES.timing
        if harness.device() == "cuda" and (_OPTS.get("compiled_baseline", True) or compiled_ran):
            info.update(_speedups(timing, self._baseline("reference_compiled")[0], "reference_compiled"))
        info["peak_mem_mb"] = None if peak is None else peak / 2 ** 20
        info["mem_ratio_vs_reference"] = None if not (peak and ref_peak) else peak / ref_peak
        rates = harness.device_rates()
        info["copy_gbps_device"], info["matmul_tflops_device"] = rates.copy_gbps, rates.matmul_tflops
        if self.min_bytes:
            info["min_bytes"] = self.min_bytes
            info["achieved_gbps"] = self.min_bytes / t / 1e9
            info["bw_fraction"] = info["achieved_gbps"] / rates.copy_gbps
        if self.flops is not None and self.min_bytes:
            floor = max(self.flops / (rates.matmul_tflops * 1e12), self.min_bytes / (rates.copy_gbps * 1e9))
            info["flops"] = self.flops
            info["floor_ms"] = floor * 1e3
            info["floor_fraction"] = floor / t


def _speedups(timing: harness.Timing, base: harness.Timing, name: str) -> dict:
    """Speed-ups over a baseline provider: device time (the headline), eager wall and graph time."""
    out = {f"speedup_vs_{name}": base.device_s / timing.device_s,
           f"wall_speedup_vs_{name}": base.wall_s / timing.wall_s}
    if timing.graph_s and base.graph_s:
        out[f"graph_speedup_vs_{name}"] = base.graph_s / timing.graph_s
    return out


@pytest.fixture
def row(benchmark):
    def make(**kw) -> Row:
        return Row(benchmark, **kw)
    return make
