"""Test set-up: Triton's CPU interpreter when there is no GPU, NaN-poisoned fresh allocations,
and tolerance helpers shared by the tests."""
import os
import zlib

import pytest
import torch

# Triton reads TRITON_INTERPRET when kernels are decorated: decide before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest-xdist: every worker with torch's default of one thread per core oversubscribes the cores (2
# workers x 2 threads on CI's 2 cores). Share the cores among the workers; the environment variable
# carries the share to the subprocesses that tests start (training runs, the benchmark suite).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# A CUDA torchvision wheel beside a CPU-only torch cannot import (hence timm/open_clip): the library's
# narrowly targeted fix, applied once for every test module that imports them.
from stadapter_fast._compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()

_real_empty, _real_empty_like = torch.empty, torch.empty_like


def _poison(t):
    if t.dtype.is_floating_point or t.dtype.is_complex:
        with torch.no_grad():  # also leaves created with requires_grad=True (torch 2.11's checkpoint makes one)
            t.fill_(float("nan"))
    return t


def _nan_empty(*args, **kwargs):
    return _poison(_real_empty(*args, **kwargs))


def _nan_empty_like(*args, **kwargs):
    return _poison(_real_empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    """Every torch.empty / empty_like in code under test comes back filled with NaN, so an output
    element a kernel forgets to write shows up as NaN instead of as stale memory that looks right."""
    monkeypatch.setattr(torch, "empty", _nan_empty)
    monkeypatch.setattr(torch, "empty_like", _nan_empty_like)
    yield


def forced_config(nodeid: str, kernel) -> dict:
    """The config a test runs for ``kernel`` (a ``TunedKernel``) on a GPU: one of its space, picked by a
    hash of the test's id and the kernel's name (the same in every run and every xdist worker)."""
    return kernel.space[zlib.crc32(f"{nodeid}|{kernel.name}".encode()) % len(kernel.space)]


@pytest.fixture(autouse=True)
def one_config_per_kernel(request, monkeypatch):
    """On a GPU, each test runs one config per Triton kernel (``forced_config``) instead of the tuner,
    which compiles and times every config of a kernel for each new variant and key: ~8 compiles where
    one does, over the hundreds of variants the GPU tests meet. The hash spreads the configs over the
    tests; tests/csrc_triton/test_tuning_configs.py checks every config explicitly. Tests marked
    ``autotune`` run the tuner, as users do. (The interpreter runs one config anyway.)"""
    if torch.cuda.is_available() and request.node.get_closest_marker("autotune") is None:
        force_one_config(request.node.nodeid, monkeypatch)
    yield


def force_one_config(nodeid: str, monkeypatch) -> None:
    """Every Triton kernel launches ``forced_config(nodeid, kernel)`` until ``monkeypatch`` undoes it."""
    from csrc_triton.common import tuned_kernels

    for k in tuned_kernels():
        monkeypatch.setattr(k, "forced", forced_config(nodeid, k))


# Property-based tests (tests/test_properties.py): a fixed seed and bounded examples in CI; the "slow"
# profile (--hypothesis-profile=slow) runs many more before a kernel change; "compat", the CI row of
# the oldest versions, the first third of "ci"'s (the same seed: the same examples, fewer).
try:
    from hypothesis import HealthCheck, settings

    _common = dict(derandomize=True, deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("ci", **_common, max_examples=36)
    settings.register_profile("compat", **_common, max_examples=12)
    settings.register_profile("slow", **dict(_common, derandomize=False), max_examples=1000)
    settings.load_profile("ci")
except ImportError:
    pass
