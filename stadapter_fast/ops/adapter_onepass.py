"""The one-pass adapter tail ``y = x + act(DWConv3D(h) + b) W2^T + b2`` (prefix rows: ``y = x``), as a
custom op with autograd. Kernels: ``csrc_triton.adapter_onepass`` (forward) and
``csrc_triton.dwconv_tokens`` (backward).

Forward: one kernel; the bottleneck activation ``z`` is never written. Backward (``recompute``): only
``h`` is kept (and ``x`` by fc1); ``z`` is recomputed with the conv kernel, then ``dz = dy W2`` (GEMM),
the conv backward kernel (act' fused with the transposed conv; deterministic dW/db partial sums),
``dW2 = z^T dy`` and ``db2``. ``dx = dy`` (the residual; fc1's backward adds ``dh W1``).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import triton_kernels
from .dwconv_tokens import ACTIVATIONS, _conv_bwd_op, _conv_op, _IMPLS, _unit_channel_stride
from .fc2_residual import fc2_residual_backward, fc2_residual_forward


@torch.library.custom_op("stadapter_fast::st_adapter_onepass", mutates_args=())
def _onepass_op(x: torch.Tensor, h: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
                w2: torch.Tensor, b2: Optional[torch.Tensor], T: int, H: int, W: int, P: int, act: str,
                backend: str) -> torch.Tensor:
    if backend == "torch":
        return fc2_residual_forward(x, _IMPLS["torch"][0](h, conv_w, conv_b, T, H, W, P, act), w2, b2, P)
    k = triton_kernels("adapter_onepass")
    N, L, C = x.shape
    x = _unit_channel_stride(x)
    y = torch.empty((N, L, C), dtype=x.dtype, device=x.device)
    y[:, :P] = x[:, :P]
    return k.onepass_fwd(_unit_channel_stride(h), x, y, conv_w.reshape(conv_w.shape[0], -1).contiguous(), conv_b,
                         w2.contiguous(), b2, T, H, W, P, tuple(conv_w.shape[2:]), ACTIVATIONS[act])


@_onepass_op.register_fake
def _(x, h, conv_w, conv_b, w2, b2, T, H, W, P, act, backend):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, h, conv_w, conv_b, w2, b2, T, H, W, P, act, backend = inputs
    ctx.save_for_backward(h, conv_w, conv_b, w2)
    ctx.args = (T, H, W, P, act, backend)
    ctx.b2_dtype = b2.dtype if b2 is not None else None


def _backward(ctx, dy):
    h, conv_w, conv_b, w2 = ctx.saved_tensors
    T, H, W, P, act, backend = ctx.args
    z = _conv_op(h, conv_w, conv_b, T, H, W, P, act, backend)  # recompute: z was never stored
    dz, dw2, db2 = fc2_residual_backward(dy, z, w2, ctx.b2_dtype, P)
    dh, dcw, dcb = _conv_bwd_op(dz, h, conv_w, conv_b, T, H, W, P, act, backend)
    return dy, dh, dcw, (dcb if conv_b is not None else None), dw2, db2, None, None, None, None, None, None


_onepass_op.register_autograd(_backward, setup_context=_setup_context)


def adapter_onepass(x: torch.Tensor, h: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
                    w2: torch.Tensor, b2: Optional[torch.Tensor], T: int, H: int, W: int, P: int, act: str,
                    backend: str) -> torch.Tensor:
    """Arguments already validated by the module (``backend`` resolved to "triton" or "torch")."""
    return _onepass_op(x, h, conv_w, conv_b, w2, b2, T, H, W, P, act, backend)
