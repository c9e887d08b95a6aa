"""The one-pass adapter tail ``y = x + act(DWConv3D(h) + b) W2^T + b2`` (prefix rows: ``y = x``), as a
custom op with autograd. Kernels: ``csrc_triton.adapter_onepass``.

Forward: one kernel; the bottleneck activation ``z`` is never written. With ``recompute=False`` the
kernel also writes the pre-activation ``pre = conv(h) + b`` and backward keeps it (more memory, no
conv in backward); with ``recompute=True`` (the default) only ``h`` is kept (``x`` by fc1).

Backward (one custom op, ``st_adapter_onepass_backward``): the fused kernel forms ``dz = dy W2`` in
registers, recomputes (or loads) ``pre``, writes ``z`` once and ``dpre = dz * act'(pre)``, and the
depthwise weight/bias gradients as deterministic per-tile partial sums; the transposed conv gives
``dh``; ``dW2 = dy^T z`` and ``db2`` are GEMM/reduction. ``dx = dy`` (the residual; fc1's backward
adds ``dh W1``). The PyTorch backend computes the same quantities with ATen ops (``_torch_*``).
"""
from __future__ import annotations

from typing import Optional

import torch

from csrc_triton.dtypes import acc_dtype

from .._backend import triton_kernels
from .dwconv_tokens import (ACTIVATIONS, CONV_IMPLS, act_fwd, act_grad, normalize_act, st_adapter_conv_ref,
                            unit_channel_stride)
from .fc2_residual import fc2_residual_backward, fc2_residual_forward


def _no_pre(h: torch.Tensor) -> torch.Tensor:
    """The op's second output when nothing extra is kept for backward (recompute=True)."""
    return h.new_empty((0,))


def _torch_fwd(x, h, conv_w, conv_b, w2, b2, T, H, W, P, act, recompute, through, r):
    pre = CONV_IMPLS["torch"].fwd(h, conv_w, conv_b, T, H, W, P, "none", through)  # conv + bias (prefix: h or 0)
    y = fc2_residual_forward(x, act_fwd(pre, act), w2, b2, P, through, r)
    return y, (_no_pre(h) if recompute else pre)


def _torch_bwd(dy, h, pre, conv_w, conv_b, w2, b2, T, H, W, P, act, through, r, need_r):
    if pre is None:
        pre = CONV_IMPLS["torch"].fwd(h, conv_w, conv_b, T, H, W, P, "none", through)
    b2_dtype = b2.dtype if b2 is not None else w2.dtype
    dz, dw2, db2, dr = fc2_residual_backward(dy, act_fwd(pre, act), w2, b2_dtype, P, through=through, r=r, b2=b2,
                                             need_r=need_r)
    if act != "none":
        acc_t = acc_dtype(h.dtype)
        dz = (dz.to(acc_t) * act_grad(pre.to(acc_t), act)).to(h.dtype)
    dh, dcw, dcb = CONV_IMPLS["torch"].bwd(dz, h, conv_w, conv_b, T, H, W, P, "none", through)
    return dh, dcw, dcb, dw2, db2, dr


def _triton_fwd(x, h, conv_w, conv_b, w2, b2, T, H, W, P, act, recompute, through, r):
    kernels = triton_kernels("adapter_onepass")
    N, L, C = x.shape
    x = unit_channel_stride(x)
    h = unit_channel_stride(h)
    y = torch.empty((N, L, C), dtype=x.dtype, device=x.device)
    if not through:
        y[:, :P] = x[:, :P]
    pre = None
    if not recompute:
        pre = torch.empty(h.shape, dtype=h.dtype, device=h.device)
        if not through:
            pre[:, :P].zero_()
    kernels.onepass_fwd(h, x, y, conv_w.reshape(conv_w.shape[0], -1).contiguous(), conv_b, w2.contiguous(), b2,
                  T, H, W, P, tuple(conv_w.shape[2:]), ACTIVATIONS[act], pre=pre, prefix_through=through, row_scale=r)
    return y, (_no_pre(h) if recompute else pre)


def _triton_bwd(dy, h, pre, conv_w, conv_b, w2, b2, T, H, W, P, act, through, r, need_r):
    kernels = triton_kernels("adapter_onepass")
    Ca = h.shape[2]
    z, dh, dcw, dcb = kernels.onepass_bwd(unit_channel_stride(dy), unit_channel_stride(h),
                                    None if pre is None else unit_channel_stride(pre),
                                    conv_w.reshape(Ca, -1).contiguous(), conv_b, w2.contiguous(),
                                    T, H, W, P, tuple(conv_w.shape[2:]), ACTIVATIONS[act], prefix_through=through,
                                    row_scale=r)
    b2_dtype = b2.dtype if b2 is not None else w2.dtype
    _, dw2, db2, dr = fc2_residual_backward(dy, z, w2, b2_dtype, P, need_z=False, through=through, r=r, b2=b2,
                                            need_r=need_r)
    return dh, dcw, dcb, dw2, db2, dr


_FWD = {"torch": _torch_fwd, "triton": _triton_fwd}
_BWD = {"torch": _torch_bwd, "triton": _triton_bwd}


@torch.library.custom_op("stadapter_fast::st_adapter_onepass", mutates_args=())
def _onepass_op(x: torch.Tensor, h: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
                w2: torch.Tensor, b2: Optional[torch.Tensor], T: int, H: int, W: int, P: int, act: str,
                recompute: bool, backend: str, through: bool = False, r: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(y, pre)``; ``pre`` is empty when ``recompute`` (it exists only for backward)."""
    return _FWD[backend](x, h, conv_w, conv_b, w2, b2, T, H, W, P, act, recompute, through, r)


@_onepass_op.register_fake
def _(x, h, conv_w, conv_b, w2, b2, T, H, W, P, act, recompute, backend, through=False, r=None):
    return x.new_empty(x.shape), (h.new_empty((0,)) if recompute else h.new_empty(h.shape))


@torch.library.custom_op("stadapter_fast::st_adapter_onepass_backward", mutates_args=())
def _onepass_bwd_op(dy: torch.Tensor, h: torch.Tensor, pre: torch.Tensor, conv_w: torch.Tensor,
                    conv_b: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor], T: int, H: int,
                    W: int, P: int, act: str, backend: str, through: bool = False,
                    r: Optional[torch.Tensor] = None, need_r: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, d conv weight, d conv bias, dW2, db2, dr); biases' grads come in their dtypes (the weights'
    when a bias is None); dr is empty unless ``need_r``. ``pre`` 1-D (empty): recomputed from ``h``."""
    need_r = need_r and r is not None
    dh, dcw, dcb, dw2, db2, dr = _BWD[backend](dy, h, pre if pre.dim() == 3 else None, conv_w, conv_b,
                                               w2, b2, T, H, W, P, act, through, r, need_r)
    b2_dtype = b2.dtype if b2 is not None else w2.dtype
    cb_dtype = conv_b.dtype if conv_b is not None else conv_w.dtype
    cf = torch.contiguous_format
    # the small grads may be views of one partial-sum buffer: fresh contiguous copies (no aliasing)
    return (dh, dcw.reshape(conv_w.shape).to(conv_w.dtype, memory_format=cf, copy=True),
            dcb.to(cb_dtype, memory_format=cf, copy=True), dw2.to(w2.dtype, memory_format=cf, copy=True),
            db2.to(b2_dtype, memory_format=cf, copy=True), dr if need_r else w2.new_empty((0,)))


@_onepass_bwd_op.register_fake
def _(dy, h, pre, conv_w, conv_b, w2, b2, T, H, W, P, act, backend, through=False, r=None, need_r=False):
    cb_dtype = conv_b.dtype if conv_b is not None else conv_w.dtype
    b2_dtype = b2.dtype if b2 is not None else w2.dtype
    need_r = need_r and r is not None
    return (h.new_empty(h.shape), conv_w.new_empty(conv_w.shape),
            conv_w.new_empty((conv_w.shape[0],), dtype=cb_dtype), w2.new_empty(w2.shape),
            w2.new_empty((w2.shape[0],), dtype=b2_dtype), r.new_empty(r.shape) if need_r else w2.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    x, h, conv_w, conv_b, w2, b2, T, H, W, P, act, recompute, backend, through, r = inputs
    ctx.save_for_backward(h, output[1], conv_w, conv_b, w2, b2, r)
    ctx.mark_non_differentiable(output[1])
    ctx.args = (T, H, W, P, act, backend, through)


def _backward(ctx, dy, _dpre):
    h, pre, conv_w, conv_b, w2, b2, r = ctx.saved_tensors
    # trailing arguments left at their defaults are not counted as inputs
    need_r = r is not None and len(ctx.needs_input_grad) > 14 and ctx.needs_input_grad[14]
    dh, dcw, dcb, dw2, db2, dr = _onepass_bwd_op(dy, h, pre, conv_w, conv_b, w2, b2, *ctx.args, r, need_r)
    grads = (dy, dh, dcw, (dcb if conv_b is not None else None), dw2, (db2 if b2 is not None else None),
             None, None, None, None, None, None, None, None, (dr if need_r else None))
    return grads[:len(ctx.needs_input_grad)]


_onepass_op.register_autograd(_backward, setup_context=_setup_context)


def adapter_onepass(x: torch.Tensor, h: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
                    w2: torch.Tensor, b2: Optional[torch.Tensor], T: int, H: int, W: int, P: int, act: str,
                    backend: str, recompute: bool = True, prefix_through: bool = False,
                    row_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Arguments already validated by the module (``backend`` resolved to "triton" or "torch").
    ``prefix_through``: prefix rows take act + fc2 + residual (no conv); ``row_scale`` ([B]): per-clip
    scale of the adapter's update (see :func:`fc2_residual`)."""
    return _onepass_op(x, h, conv_w, conv_b, w2, b2, T, H, W, P, act, recompute, backend, prefix_through,
                       row_scale)[0]


def adapter_onepass_ref(x: torch.Tensor, h: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
                        w2: torch.Tensor, b2: Optional[torch.Tensor], T: int, H: int, W: int, P: int, act: str,
                        backend: str = "torch", recompute: bool = True, prefix_through: bool = False,
                        row_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain-PyTorch oracle of :func:`adapter_onepass`, same signature (``backend`` and ``recompute`` are
    accepted and ignored): :func:`st_adapter_conv_ref` (the official permute + ``F.conv3d`` route), the
    activation, ``fc2`` and the residual, in ``h``'s dtype. Differentiable in every tensor argument."""
    pre = st_adapter_conv_ref(h, conv_w, conv_b, T, (H, W), P, None, "no_conv" if prefix_through else "skip")
    u = act_fwd(pre, normalize_act(act)) @ w2.to(pre.dtype).t()
    if b2 is not None:
        u = u + b2.to(u.dtype)
    if row_scale is not None:
        u = u * row_scale.to(u.dtype).repeat_interleave(T)[:, None, None]
    if prefix_through:
        return x + u
    return torch.cat([x[:, :P], x[:, P:] + u[:, P:]], dim=1)  # prefix rows: x, bit for bit
