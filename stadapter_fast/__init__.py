"""stadapter-fast: fused Triton kernels for ST-Adapter (NeurIPS 2022) video adapters on image ViTs.

Public API::

    from stadapter_fast import FastSTAdapter, STAdapterReference, swap_adapters, st_adapter_conv
"""
from ._backend import BACKENDS, resolve_backend
from .modules import FastSTAdapter, STAdapterReference
from .ops.dwconv_tokens import ACTIVATIONS, st_adapter_conv
from .swap import swap_adapters

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "FastSTAdapter",
    "STAdapterReference",
    "resolve_backend",
    "st_adapter_conv",
    "swap_adapters",
]
