"""One-pass ST-Adapter tail: depthwise 3D conv + bias + activation + up-projection (fc2) + bias +
residual in one kernel, so the bottleneck activation ``z`` never makes a round trip through memory.

For a tile of BLOCK_M patch tokens and BLOCK_N output channels, the kernel loops over the bottleneck
channels in chunks of BLOCK_K: it loads the conv window of ``h`` straight from the token layout,
forms ``z = act(conv(h) + b)`` for that chunk in registers, and accumulates ``z @ W2^T`` with
``tl.dot``. Then it adds ``b2`` and the residual ``x`` tile and stores ``y``. Prefix rows are not
touched (the launcher's caller copies them). ``z`` is recomputed once per BLOCK_N column tile.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dwconv_tokens import INTERPRET, _acc_dtype, _act_fwd, _check_token_tensor, _conv_tile, _on_device


@triton.jit
def _onepass_fwd_kernel(
    Hh, sh_n, sh_l,             # h = fc1(x) tokens [N, L, CA] (patch rows from P)
    X, sx_n, sx_l,              # residual tokens [N, L, C]
    Y, sy_n, sy_l,              # output tokens [N, L, C]
    Wc, Bc,                     # conv weight [CA, taps] contiguous; conv bias [CA]
    W2, B2,                     # fc2 weight [C, CA] contiguous; fc2 bias [C]
    M, CA, C, T, H, W, P,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_CB: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
    DOT_IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < C
    HW = H * W
    n = offs_m // HW
    s = offs_m % HW
    yy = s // W
    xx = s % W
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, CA, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < CA
        z = _conv_tile(Hh, sh_n, sh_l, P, Wc, Bc, offs_k, k_mask, n, yy, xx, m_mask, T, H, W,
                       KT, KH, KW, False, HAS_CB, ACC, BLOCK_M, BLOCK_K)
        if ACT != 0:
            z = _act_fwd(z, ACT)
        z = tl.where(m_mask[:, None] & k_mask[None, :], z, 0.0)
        w2 = tl.load(W2 + offs_n[None, :] * CA + offs_k[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if DOT_IEEE:  # fp32/fp64 inputs (no TF32), and the interpreter (whose bf16 dot is wrong)
            acc += tl.dot(z.to(ACC), w2.to(ACC), input_precision="ieee")
        else:  # fp16/bf16 tensor cores: z rounded to the activation dtype, as the two-pass path stores it
            acc += tl.dot(z.to(Hh.dtype.element_ty), w2.to(Hh.dtype.element_ty))
    if HAS_B2:
        acc += tl.load(B2 + offs_n, mask=n_mask, other=0.0).to(ACC)[None, :]
    mn_mask = m_mask[:, None] & n_mask[None, :]
    x_row = n.to(tl.int64) * sx_n + (P + s).to(tl.int64) * sx_l
    xv = tl.load(X + x_row[:, None] + offs_n[None, :], mask=mn_mask, other=0.0).to(ACC)
    y_row = n.to(tl.int64) * sy_n + (P + s).to(tl.int64) * sy_l
    tl.store(Y + y_row[:, None] + offs_n[None, :], (xv + acc).to(Y.dtype.element_ty), mask=mn_mask)


def _blocks(CA: int, C: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps); one config (no GPU was available to tune it)."""
    if INTERPRET:
        return 128, min(triton.next_power_of_2(C), 256), min(triton.next_power_of_2(CA), 128), 4
    return 64, 128, 32, 4


def onepass_fwd(h: torch.Tensor, x: torch.Tensor, out: torch.Tensor, wc2d: torch.Tensor, bc, w2: torch.Tensor,
                b2, T: int, H: int, W: int, P: int, kernel_size: tuple[int, int, int], act: int) -> torch.Tensor:
    """Write ``x + act(conv(h) + bc) @ w2^T + b2`` into the patch rows of ``out`` ([N, L, C]).

    ``h``: [N, L, CA]; ``wc2d``: [CA, taps] contiguous; ``w2``: [C, CA] contiguous. Prefix rows of
    ``out`` are not written."""
    for t in (h, x, out):
        _check_token_tensor(t)
    N, L, CA = h.shape
    C = x.shape[2]
    M = N * H * W
    if M == 0:
        return out
    BLOCK_M, BLOCK_N, BLOCK_K, warps = _blocks(CA, C)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(C, BLOCK_N))
    kt, kh, kw = kernel_size
    dot_ieee = INTERPRET or h.dtype in (torch.float32, torch.float64)
    with _on_device(h):
        _onepass_fwd_kernel[grid](
            h, h.stride(0), h.stride(1),
            x, x.stride(0), x.stride(1),
            out, out.stride(0), out.stride(1),
            wc2d, bc if bc is not None else wc2d,
            w2, b2 if b2 is not None else w2,
            M, CA, C, T, H, W, P,
            KT=kt, KH=kh, KW=kw, HAS_CB=bc is not None, HAS_B2=b2 is not None, ACT=act,
            ACC=_acc_dtype(h.dtype), DOT_IEEE=dot_ieee,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=warps,
        )
    return out
