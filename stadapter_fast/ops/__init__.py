"""Autograd functions and dispatch for the fused ops (kernels are in ``csrc_triton``); each op has a
plain-PyTorch ``_ref`` beside it with the same signature. The one-pass op itself is imported from its
module (``stadapter_fast.ops.adapter_onepass.adapter_onepass``): a package attribute of that name would
hide the submodule."""
from .adapter_onepass import adapter_onepass_ref
from .dwconv_tokens import ACTIVATIONS, st_adapter_conv, st_adapter_conv_ref
from .fc2_residual import fc2_residual

__all__ = ["ACTIVATIONS", "adapter_onepass_ref", "fc2_residual", "st_adapter_conv", "st_adapter_conv_ref"]
