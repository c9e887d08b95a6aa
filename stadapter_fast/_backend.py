"""The one place that picks an implementation ("backend") for an op call."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import torch

BACKENDS = ("auto", "triton", "torch")


#: Whether the ``triton`` package is installed, decided once at import: ``resolve_backend`` runs inside
#: modules' ``forward``, and dynamo on torch 2.11 refuses to trace ``importlib.util.find_spec``.
_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True if the ``triton`` package is installed here (checked once, when this module is imported)."""
    return _TRITON_AVAILABLE


def triton_missing_message() -> str:
    """Why ``backend="triton"`` cannot run here and what does: the package is a Linux-only dependency
    (pyproject: ``platform_system == 'Linux'``), so elsewhere it is absent by design, not by mistake."""
    if sys.platform.startswith("linux"):
        why = "which is not installed (`pip install triton`)"
    else:
        why = f"which is not installed: it ships wheels for Linux only, this platform is {sys.platform!r}"
    return (f"backend='triton' needs the `triton` package, {why}; backend='torch' (the PyTorch path) "
            f"and backend='auto' (which picks it when Triton is unavailable) work without it")


def triton_kernels(name: str):
    """Import ``csrc_triton.<name>`` lazily (Triton reads TRITON_INTERPRET when kernels are defined)."""
    return importlib.import_module(f"csrc_triton.{name}")


def interpreting() -> bool:
    """Whether Triton kernels run (or will run) in the CPU interpreter."""
    import sys

    mod = sys.modules.get("csrc_triton.common")
    if mod is not None:
        return mod.INTERPRET
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map a user-facing backend name to the implementation that runs: ``"triton"`` or ``"torch"``.

    ``"auto"``: Triton for CUDA tensors when triton is installed, else the PyTorch path.
    ``"triton"``: Triton always; CPU tensors only under ``TRITON_INTERPRET=1``.
    ``"torch"``: the pure-PyTorch path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise ValueError(triton_missing_message())
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu":
        if interpreting():
            return "triton"
        raise ValueError("backend='triton' got CPU tensors, but Triton runs on CPU only through its "
                         "interpreter: set TRITON_INTERPRET=1 before importing stadapter_fast, move the "
                         "tensors to CUDA, or use backend='torch'")
    raise ValueError(f"backend='triton' supports CUDA (or CPU via TRITON_INTERPRET=1) tensors, "
                     f"got device {device}")


PATHS = ("auto", "two_pass", "one_pass")

#: What ``path="auto"`` runs, per (backend that runs, shape class), with the measurement behind it.
#: Shape classes: "temporal" = kernel (kt, 1, 1) (the release's (3, 1, 1)), "spatial" = kh*kw > 1.
AUTO_PATH = {
    # CPU, 2 cores, cpu_small (B=2, T=8, 8x8 grid, C=96, Ca=48), bf16 autocast, adapter fwd+bwd vs
    # the reference (benchmarks/RESULTS.md): at commit 6afcdcb two_pass 1.20-1.31x, one_pass
    # 1.10-1.16x; at 5b943c7 (3,1,1) two_pass 1.11x vs one_pass 1.13x (a tie within the +-10% noise),
    # (3,3,3) 1.26x vs 1.14x. The torch one-pass recomputes the conv in backward (no fused kernel on
    # CPU), so two_pass: faster for spatial kernels, tied or faster for temporal ones.
    ("torch", "temporal"): "two_pass",
    ("torch", "spatial"): "two_pass",
    # Triton (GPU): NOT MEASURED yet (no kernel has run on a GPU). two_pass until benchmarks/run_gpu.sh phase B (fast vs fast_onepass) says otherwise;
    # one_pass is the memory-saving choice (keeps only x and h).
    ("triton", "temporal"): "two_pass",
    ("triton", "spatial"): "two_pass",
}


def check_path_options(path: str, recompute: bool) -> None:
    """Validate ``FastSTAdapter``'s ``path`` and ``recompute`` (ValueError naming the argument)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if not isinstance(recompute, bool):
        raise ValueError(f"recompute must be a bool, got {recompute!r}")


def resolve_path(path: str, backend: str, kernel_size: tuple[int, int, int]) -> str:
    """Map ``FastSTAdapter``'s ``path`` to the one that runs ("two_pass" or "one_pass") for a resolved
    ``backend`` ("triton"/"torch"); ``"auto"`` looks up :data:`AUTO_PATH`."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path != "auto":
        return path
    shape_class = "temporal" if kernel_size[1] * kernel_size[2] == 1 else "spatial"
    return AUTO_PATH[(backend, shape_class)]
