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


# ----------------------------------------------------------------------------------------------
# Custom ops + autograd. Not a ``torch.autograd.Function``: dynamo traces into those, and torch 2.11
# does so wrongly here -- an autograd.Function output written by an in-place or ``out=`` op (the
# ``addmm_`` into ``x + b2`` above) is taken as not requiring grad, a zero tangent is baked into the
# compiled backward, and every gradient upstream comes out exactly zero with no error
# (tests/ops/test_fc2_residual.py). A custom op is opaque to dynamo on every torch version.
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("stadapter_fast::fc2_residual", mutates_args=())
def _fc2_residual_op(x: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor],
                     P: int) -> torch.Tensor:
    return fc2_residual_forward(x, z, w2, b2, P)


@_fc2_residual_op.register_fake
def _(x, z, w2, b2, P):
    return x.new_empty(x.shape)


def _skipped(t: torch.Tensor) -> torch.Tensor:
    """A gradient the caller did not ask for (custom ops cannot return None)."""
    return t.new_empty((0,))


@torch.library.custom_op("stadapter_fast::fc2_residual_backward", mutates_args=())
def _fc2_residual_bwd_op(dy: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor], P: int,
                         need_z: bool, need_w2: bool, need_b2: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dz, dW2, db2), each 1-D and empty where not needed (db2 also where ``b2`` is None)."""
    need_b2 = need_b2 and b2 is not None
    dz, dw2, db2 = fc2_residual_backward(dy, z, w2, b2.dtype if need_b2 else None, P, need_z=need_z,
                                         need_w2=need_w2)
    return (dz if need_z else _skipped(z), dw2 if need_w2 else _skipped(w2), db2 if need_b2 else _skipped(w2))


@_fc2_residual_bwd_op.register_fake
def _(dy, z, w2, b2, P, need_z, need_w2, need_b2):
    need_b2 = need_b2 and b2 is not None
    return (z.new_empty(z.shape) if need_z else _skipped(z), w2.new_empty(w2.shape) if need_w2 else _skipped(w2),
            w2.new_empty((w2.shape[0],), dtype=b2.dtype) if need_b2 else _skipped(w2))


def _setup_context(ctx, inputs, output):
    x, z, w2, b2, P = inputs
    ctx.save_for_backward(z, w2, b2)
    ctx.P = P


def _backward(ctx, dy):
    z, w2, b2 = ctx.saved_tensors
    need_x, need_z, need_w2, need_b2 = ctx.needs_input_grad[:4]
    dz, dw2, db2 = _fc2_residual_bwd_op(dy, z, w2, b2, ctx.P, need_z, need_w2, need_b2)
    return ((dy if need_x else None), (dz if need_z else None), (dw2 if need_w2 else None),
            (db2 if need_b2 and b2 is not None else None), None)


_fc2_residual_op.register_autograd(_backward, setup_context=_setup_context)


def fc2_residual(x: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor],
                 num_prefix_tokens: int) -> torch.Tensor:
    """See module docstring. ``z`` must have zero prefix rows (as ``st_adapter_conv`` returns)."""
    return _fc2_residual_op(x, z, w2, b2, num_prefix_tokens)
