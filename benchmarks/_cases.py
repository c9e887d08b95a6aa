"""Shapes, kernel variants and providers of the benchmark suite, chosen by device."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks._harness import device


@dataclass(frozen=True)
class Shape:
    name: str
    B: int      # clips
    T: int      # frames per clip
    grid: int   # patch grid side (L = 1 + grid^2)
    C: int      # backbone width
    Ca: int     # adapter width
    P: int = 1

    @property
    def N(self) -> int:
        return self.B * self.T

    @property
    def L(self) -> int:
        return self.P + self.grid ** 2

    @property
    def HW(self) -> int:
        return self.grid ** 2


GPU_SHAPES = [
    Shape("vitb16_8f", 32, 8, 14, 768, 384),     # B*T = 256, L = 197: the release's K400 setting
    Shape("vitb16_16f", 16, 16, 14, 768, 384),
    Shape("vitb16_32f", 8, 32, 14, 768, 384),
    Shape("vitl14_8f", 32, 8, 16, 1024, 384),    # L = 257
]
CPU_SHAPES = [Shape("cpu_small", 2, 8, 8, 96, 48)]
SHAPES = GPU_SHAPES if device() == "cuda" else CPU_SHAPES

# (name, kernel, activation): the release's adapter, and the VindLU-style spatio-temporal one.
VARIANTS = [("k311", (3, 1, 1), "none"), ("k333relu", (3, 3, 3), "relu")]

# fast_torch_compiled: this library's pure-PyTorch path (backend="torch") under torch.compile, the
# strongest PyTorch-only peer (Inductor compiles everything around the op; the op itself is ATen).
PROVIDERS = ["reference", "reference_compiled", "reference_channels_last", "fast", "fast_compiled",
             "fast_torch_compiled", "fast_onepass"]
MODEL_PROVIDERS = ["reference", "reference_compiled", "fast", "fast_compiled", "fast_torch_compiled", "fast_onepass"]
#: the conv op alone (level 1) has no one-pass form
CONV_PROVIDERS = [p for p in PROVIDERS if not p.startswith("fast_onepass")]

OP_DTYPES = [torch.bfloat16, torch.float16, torch.float32] if device() == "cuda" else [torch.float32, torch.bfloat16]
AMP_DTYPES = [torch.bfloat16, torch.float16] if device() == "cuda" else [torch.bfloat16]


def provider_backend(provider: str) -> str:
    """The ``backend=`` a fast provider runs with."""
    return "torch" if provider == "fast_torch_compiled" else "auto"


def dtype_id(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")
