"""``y = x + (z @ W2^T + b2)`` on the patch rows, ``y = x`` (bit-identical) on the prefix rows.

Memory passes (forward): ``y = x + b2`` (read x, write y), then one GEMM that accumulates into y in
place (cuBLAS/oneDNN beta=1 epilogue), then a copy of the ``P`` prefix rows (P/L of the data). The
caller's ``x`` is never modified. ``z`` is ``st_adapter_conv``'s output over all ``L`` rows, whose
prefix rows are zero: that keeps both GEMMs over contiguous ``[N*L, .]`` matrices with no slice copy.
"""
from __future__ import annotations

from typing import Optional

import torch


def fc2_residual_forward(x: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor],
                         P: int) -> torch.Tensor:
    """The forward computation (no autograd); compute dtype = ``z``'s (autocast's, under autocast)."""
    N, L, C = x.shape
    cd = z.dtype
    with torch.autocast(x.device.type, enabled=False):
        w = w2.to(cd)
        y = torch.empty((N, L, C), dtype=x.dtype, device=x.device)
        if x.dtype == cd:
            if b2 is None:
                y.copy_(x)
            else:
                torch.add(x, b2.to(cd), out=y)
            y.view(N * L, C).addmm_(z.reshape(N * L, -1), w.t())
        else:  # e.g. fp32 residual stream with a bf16 adapter: add in the wider dtype
            proj = z.reshape(N * L, -1) @ w.t()
            if b2 is not None:
                proj += b2.to(cd)
            torch.add(x, proj.view(N, L, C), out=y)
        y[:, :P] = x[:, :P]
    return y


def fc2_residual_backward(dy: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b_dtype: Optional[torch.dtype],
                          P: int, need_z: bool = True, need_w2: bool = True):
    """(dz with zero prefix rows, dW2 in w2's dtype, db2 in ``b_dtype`` or None); ``z``'s prefix rows
    must be zero (then the full-row GEMM for dW2 equals the patch-row one)."""
    N, L, C = dy.shape
    cd = z.dtype
    dz = dw2 = db2 = None
    with torch.autocast(dy.device.type, enabled=False):
        dyc = dy.to(cd).reshape(N * L, C)
        if need_z:
            dz = (dyc @ w2.to(cd)).view(N, L, -1)
            dz[:, :P] = 0
        if need_w2:
            dw2 = (dyc.t() @ z.reshape(N * L, -1)).to(w2.dtype)
        if b_dtype is not None:
            acc_t = torch.float64 if dy.dtype == torch.float64 else torch.float32
            db2 = dy[:, P:].sum(dim=(0, 1), dtype=acc_t).to(b_dtype)
    return dz, dw2, db2


class Fc2Residual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, w2, b2, P: int):
        ctx.save_for_backward(z, w2)
        ctx.P = P
        ctx.b_dtype = b2.dtype if b2 is not None else None
        return fc2_residual_forward(x, z, w2, b2, P)

    @staticmethod
    def backward(ctx, dy):
        z, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        dz, dw2, db2 = fc2_residual_backward(dy, z, w2, ctx.b_dtype if need[3] else None, ctx.P,
                                             need_z=need[1], need_w2=need[2])
        return (dy if need[0] else None), dz, dw2, db2, None


def fc2_residual(x: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor],
                 num_prefix_tokens: int) -> torch.Tensor:
    """See module docstring. ``z`` must have zero prefix rows (as ``st_adapter_conv`` returns)."""
    return Fc2Residual.apply(x, z, w2, b2, num_prefix_tokens)
