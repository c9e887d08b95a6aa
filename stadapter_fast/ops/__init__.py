"""Autograd functions and dispatch for the fused ops (kernels are in ``csrc_triton``)."""
from .dwconv_tokens import ACTIVATIONS, st_adapter_conv
from .fc2_residual import fc2_residual

__all__ = ["ACTIVATIONS", "st_adapter_conv", "fc2_residual"]
