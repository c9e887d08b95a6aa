"""``y = x + (z @ W2^T + b2)`` on the patch rows, ``y = x`` (bit-identical) on the prefix rows.

Memory passes (forward): ``y = x + b2`` (read x, write y), then one GEMM that accumulates into y in
place (cuBLAS/oneDNN beta=1 epilogue), then a copy of the ``P`` prefix rows (P/L of the data). The
caller's ``x`` is never modified. ``z`` is ``st_adapter_conv``'s output over all ``L`` rows, whose
prefix rows are zero: that keeps both GEMMs over contiguous ``[N*L, .]`` matrices with no slice copy.
"""
from __future__ import annotations

from typing import Optional

import torch

from csrc_triton.dtypes import acc_dtype


def _scaled_w2t(w2: torch.Tensor, r: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    """``r_b * W2^T`` per clip ([B, Ca, C] in the compute dtype): the per-clip output scale folded into
    a batched GEMM's weights (B * Ca * C elements, small next to the tokens), so no pass over the tokens
    applies it."""
    acc = acc_dtype(r.dtype)
    return (r.to(acc)[:, None, None] * w2.t().to(acc)).to(cd)


def fc2_residual_forward(x: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor],
                         P: int, through: bool = False, r: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The forward computation (no autograd); compute dtype = ``z``'s (autocast's, under autocast).
    ``through``: the prefix rows get the update too (``z``'s prefix rows are then not zero). ``r``: the
    per-clip output scale ([B]; None: 1)."""
    N, L, C = x.shape
    cd = z.dtype
    with torch.autocast(x.device.type, enabled=False):
        y = torch.empty((N, L, C), dtype=x.dtype, device=x.device)
        if r is not None:  # y_b = x_b + z_b (r_b W2^T) + r_b b2: one batched GEMM per clip
            B = r.shape[0]
            z3, x3, y3 = z.reshape(B, -1, z.shape[-1]), x.view(B, -1, C), y.view(B, -1, C)
            w = _scaled_w2t(w2, r, cd)
            rb2 = None if b2 is None else (r.to(acc_dtype(cd))[:, None] * b2.to(acc_dtype(cd))[None, :]).to(cd)[:, None, :]
            if x.dtype == cd:
                if rb2 is None:
                    y3.copy_(x3)
                else:
                    torch.add(x3, rb2, out=y3)
                y3.baddbmm_(z3, w)
            else:
                proj = torch.bmm(z3, w)
                if rb2 is not None:
                    proj += rb2
                torch.add(x3, proj, out=y3)
        else:
            w = w2.to(cd)
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
        if not through:
            y[:, :P] = x[:, :P]
    return y


def fc2_residual_backward(dy: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b_dtype: Optional[torch.dtype],
                          P: int, need_z: bool = True, need_w2: bool = True, through: bool = False,
                          r: Optional[torch.Tensor] = None, b2: Optional[torch.Tensor] = None,
                          need_r: bool = False):
    """(dz, dW2 in w2's dtype, db2 in ``b_dtype`` or None, dr in ``r``'s dtype or None). Without
    ``through``, ``z``'s prefix rows must be zero (then the full-row GEMM for dW2 equals the patch-row
    one) and dz's prefix rows are zero. ``dr`` (``need_r``; needs ``b2`` if the adapter has one):
    ``dr_b = sum over clip b's rows of dy . (z W2^T + b2)``."""
    N, L, C = dy.shape
    cd = z.dtype
    acc_t = acc_dtype(dy.dtype)
    p0 = 0 if through else P
    dz = dw2 = db2 = dr = None
    with torch.autocast(dy.device.type, enabled=False):
        if r is None:
            dyc = dy.to(cd).reshape(N * L, C)
            if need_z:
                dz = (dyc @ w2.to(cd)).view(N, L, -1)
            if need_w2:
                dw2 = (dyc.t() @ z.reshape(N * L, -1)).to(w2.dtype)
            if b_dtype is not None:
                db2 = dy[:, p0:].sum(dim=(0, 1), dtype=acc_t).to(b_dtype)
        else:
            B = r.shape[0]
            ra = r.to(acc_t)
            dy3 = dy.to(cd).reshape(B, -1, C)
            if need_z:  # dz_b = dy_b (r_b W2)
                dz = torch.bmm(dy3, _scaled_w2t(w2, r, cd).transpose(1, 2)).view(N, L, -1)
            colsum = None
            if b_dtype is not None or (need_r and b2 is not None):
                colsum = dy.view(B, N // B, L, C)[:, :, p0:].sum(dim=(1, 2), dtype=acc_t)  # [B, C]
            if need_w2 or need_r:
                per_clip = torch.bmm(dy3.transpose(1, 2), z.reshape(B, -1, z.shape[-1])).to(acc_t)  # dy_b^T z_b
                if need_w2:
                    dw2 = torch.einsum("b,bck->ck", ra, per_clip).to(w2.dtype)
                if need_r:
                    dr = (per_clip * w2.to(acc_t)).sum(dim=(1, 2))
                    if b2 is not None:
                        dr = dr + colsum @ b2.to(acc_t)
                    dr = dr.to(r.dtype)
            if b_dtype is not None:
                db2 = (ra[:, None] * colsum).sum(dim=0).to(b_dtype)
        if dz is not None and not through:
            dz[:, :P] = 0
    return dz, dw2, db2, dr


# ----------------------------------------------------------------------------------------------
# Custom ops + autograd. Not a ``torch.autograd.Function``: dynamo traces into those, and torch 2.11
# does so wrongly here -- an autograd.Function output written by an in-place or ``out=`` op (the
# ``addmm_`` into ``x + b2`` above) is taken as not requiring grad, a zero tangent is baked into the
# compiled backward, and every gradient upstream comes out exactly zero with no error
# (tests/ops/test_fc2_residual.py). A custom op is opaque to dynamo on every torch version.
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("stadapter_fast::fc2_residual", mutates_args=())
def _fc2_residual_op(x: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor],
                     P: int, through: bool = False, r: Optional[torch.Tensor] = None) -> torch.Tensor:
    return fc2_residual_forward(x, z, w2, b2, P, through, r)


@_fc2_residual_op.register_fake
def _(x, z, w2, b2, P, through=False, r=None):
    return x.new_empty(x.shape)


def _skipped(t: torch.Tensor) -> torch.Tensor:
    """A gradient the caller did not ask for (custom ops cannot return None)."""
    return t.new_empty((0,))


@torch.library.custom_op("stadapter_fast::fc2_residual_backward", mutates_args=())
def _fc2_residual_bwd_op(dy: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor], P: int,
                         need_z: bool, need_w2: bool, need_b2: bool, through: bool = False,
                         r: Optional[torch.Tensor] = None, need_r: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dz, dW2, db2, dr), each 1-D and empty where not needed (db2 also where ``b2`` is None, dr where
    ``r`` is)."""
    need_b2 = need_b2 and b2 is not None
    need_r = need_r and r is not None
    dz, dw2, db2, dr = fc2_residual_backward(dy, z, w2, b2.dtype if need_b2 else None, P, need_z=need_z,
                                             need_w2=need_w2, through=through, r=r, b2=b2, need_r=need_r)
    return (dz if need_z else _skipped(z), dw2 if need_w2 else _skipped(w2), db2 if need_b2 else _skipped(w2),
            dr if need_r else _skipped(w2))


@_fc2_residual_bwd_op.register_fake
def _(dy, z, w2, b2, P, need_z, need_w2, need_b2, through=False, r=None, need_r=False):
    need_b2 = need_b2 and b2 is not None
    need_r = need_r and r is not None
    return (z.new_empty(z.shape) if need_z else _skipped(z), w2.new_empty(w2.shape) if need_w2 else _skipped(w2),
            w2.new_empty((w2.shape[0],), dtype=b2.dtype) if need_b2 else _skipped(w2),
            r.new_empty(r.shape) if need_r else _skipped(w2))


def _setup_context(ctx, inputs, output):
    x, z, w2, b2, P, through, r = inputs
    ctx.save_for_backward(z, w2, b2, r)
    ctx.P = P
    ctx.through = through


def _backward(ctx, dy):
    z, w2, b2, r = ctx.saved_tensors
    need_x, need_z, need_w2, need_b2 = ctx.needs_input_grad[:4]
    # trailing arguments left at their defaults are not counted as inputs
    need_r = r is not None and len(ctx.needs_input_grad) > 6 and ctx.needs_input_grad[6]
    dz, dw2, db2, dr = _fc2_residual_bwd_op(dy, z, w2, b2, ctx.P, need_z, need_w2, need_b2, ctx.through, r, need_r)
    grads = ((dy if need_x else None), (dz if need_z else None), (dw2 if need_w2 else None),
             (db2 if need_b2 and b2 is not None else None), None, None, (dr if need_r else None))
    return grads[:len(ctx.needs_input_grad)]


_fc2_residual_op.register_autograd(_backward, setup_context=_setup_context)


def fc2_residual(x: torch.Tensor, z: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor],
                 num_prefix_tokens: int, prefix_through: bool = False,
                 row_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """See module docstring. Without ``prefix_through``, ``z`` must have zero prefix rows (as
    ``st_adapter_conv`` returns) and the prefix rows of ``y`` are ``x``'s; with it, every row gets the
    update. ``row_scale`` ([B], one per clip, differentiable): ``y = x + r_b * (z W2^T + b2)``."""
    return _fc2_residual_op(x, z, w2, b2, num_prefix_tokens, prefix_through, row_scale)
