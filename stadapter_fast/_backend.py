"""The one place that picks an implementation ("backend") for an op call."""
from __future__ import annotations

import importlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    """True if the ``triton`` package can be imported here."""
    return importlib.util.find_spec("triton") is not None


def triton_kernels(name: str):
    """Import ``csrc_triton.<name>`` lazily (Triton reads TRITON_INTERPRET when kernels are defined)."""
    return importlib.import_module(f"csrc_triton.{name}")


def interpreting() -> bool:
    """Whether Triton kernels run (or will run) in the CPU interpreter."""
    import sys

    mod = sys.modules.get("csrc_triton.dwconv_tokens")
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
        raise ValueError("backend='triton' needs the `triton` package, which is not installed; "
                         "use backend='torch' or 'auto'")
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
