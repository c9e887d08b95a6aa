"""One-pass ST-Adapter tail: depthwise 3D conv + bias + activation + up-projection (fc2) + bias +
residual in one kernel, so the bottleneck activation ``z`` never makes a round trip through memory.

For a tile of BLOCK_M patch tokens and BLOCK_N output channels, the kernel loops over the bottleneck
channels in chunks of BLOCK_K: it loads the conv window of ``h`` straight from the token layout,
forms ``z = act(conv(h) + b)`` for that chunk in registers, and accumulates ``z @ W2^T`` with
``tl.dot``. Then it adds ``b2`` and the residual ``x`` tile and stores ``y``. Prefix rows are not
touched (the launcher's caller copies them). ``z`` is recomputed once per BLOCK_N column tile.
With ``STORE_PRE`` the first column tile also stores the pre-activation ``conv(h) + b`` (the
``recompute=False`` option: backward then loads it instead of redoing the conv).

The fused backward ``_onepass_bwd_kernel``, for a tile of BLOCK_M tokens and BLOCK_K bottleneck
channels: ``dz = dy W2`` with ``tl.dot`` (looping over C in BLOCK_N chunks; dz never touches memory),
the pre-activation recomputed from ``h`` (or loaded), ``z = act(pre)`` stored once for the ``dW2 =
dy^T z`` GEMM, ``dpre = dz * act'(pre)`` stored for the transposed conv (it needs neighbouring
tokens' dpre, which live in other tiles), and this tile's fp32 partial sums of the depthwise weight
and bias gradients. The launcher then runs the transposed conv ``dh = conv^T(dpre)``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (INTERPRET, TunedKernel, act_fwd, act_grad, check_clips, check_token_tensor, config_space,
                     conv_tile, on_device, prefix_coords, store_wgrad_partials, tile_coords, tl_acc_dtype,
                     token_args, token_coords, token_programs)
from .dtypes import acc_dtype
from .dwconv_tokens import dwconv_tokens_fwd


@triton.jit
def _onepass_fwd_kernel(
    Htok, shtok_n, shtok_l,     # h = fc1(x) tokens [N, L, Ca] (patch rows from num_prefix)
    X, sx_n, sx_l,              # residual tokens [N, L, C]
    Y, sy_n, sy_l,              # output tokens [N, L, C]
    PRE, spre_n, spre_l,        # pre-activation out [N, L, Ca] (None iff not STORE_PRE)
    Wc, Bc,                     # conv weight [Ca, taps] contiguous; conv bias [Ca] (None iff not HAS_CB)
    W2, B2,                     # fc2 weight [C, Ca] contiguous; fc2 bias [C] (None iff not HAS_B2)
    R,                          # per-clip output scale [N // T] (None iff not HAS_R)
    M, Ca, C, T, H, W,          # M: rows of this launch (N*H*W patch rows, or N*num_prefix prefix rows)
    num_prefix,                 # prefix (class/register) rows per frame
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_CB: tl.constexpr, HAS_B2: tl.constexpr, HAS_R: tl.constexpr, PREFIX_ROWS: tl.constexpr,
    ACT: tl.constexpr, ACC: tl.constexpr, DOT_IEEE: tl.constexpr, STORE_PRE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_S: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if PREFIX_ROWS:  # prefix rows: no conv, pre = h
        m_mask, n, tok = prefix_coords(pid_m, M, num_prefix, BLOCK_M)
        yy = tok
        xx = tok
    else:
        _, m_mask, n, s, yy, xx = token_coords(pid_m, M, T, H, W, BLOCK_M, GROUP_S)
        tok = num_prefix + s
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, Ca, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < Ca
        if PREFIX_ROWS:
            h_row = n.to(tl.int64) * shtok_n + tok.to(tl.int64) * shtok_l
            z = tl.load(Htok + h_row[:, None] + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                        other=0.0).to(ACC)
        else:
            z = conv_tile(Htok, shtok_n, shtok_l, num_prefix, Wc, Bc, offs_k, k_mask, n, yy, xx, m_mask,
                          T, H, W, KT, KH, KW, False, HAS_CB, ACC, BLOCK_M, BLOCK_K)
        if STORE_PRE:  # only the first column tile stores; the mask is all-block (no scalar `if`:
            # Triton 3.6's interpreter cannot branch on a program id, 3.9's cannot mix scalars into masks)
            first = (pid_n + tl.zeros((BLOCK_K,), tl.int32)) == 0
            pre_row = n.to(tl.int64) * spre_n + tok.to(tl.int64) * spre_l
            tl.store(PRE + pre_row[:, None] + offs_k[None, :], z.to(PRE.dtype.element_ty),
                     mask=m_mask[:, None] & (k_mask & first)[None, :])
        if ACT != 0:
            z = act_fwd(z, ACT)
        z = tl.where(m_mask[:, None] & k_mask[None, :], z, 0.0)
        w2 = tl.load(W2 + offs_n[None, :] * Ca + offs_k[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if DOT_IEEE:  # fp32/fp64 inputs (no TF32), and the interpreter (whose bf16 dot is wrong)
            acc += tl.dot(z.to(ACC), w2.to(ACC), input_precision="ieee")
        else:  # fp16/bf16 tensor cores: z rounded to the activation dtype, as the two-pass path stores it
            acc += tl.dot(z.to(Htok.dtype.element_ty), w2.to(Htok.dtype.element_ty))
    if HAS_B2:
        acc += tl.load(B2 + offs_n, mask=n_mask, other=0.0).to(ACC)[None, :]
    if HAS_R:
        acc = acc * tl.load(R + n // T, mask=m_mask, other=0.0).to(ACC)[:, None]
    mn_mask = m_mask[:, None] & n_mask[None, :]
    x_row = n.to(tl.int64) * sx_n + tok.to(tl.int64) * sx_l
    xv = tl.load(X + x_row[:, None] + offs_n[None, :], mask=mn_mask, other=0.0).to(ACC)
    y_row = n.to(tl.int64) * sy_n + tok.to(tl.int64) * sy_l
    tl.store(Y + y_row[:, None] + offs_n[None, :], (xv + acc).to(Y.dtype.element_ty), mask=mn_mask)


@triton.jit
def _onepass_bwd_kernel(
    Htok, shtok_n, shtok_l,     # saved h tokens [N, L, Ca]
    DY, sdy_n, sdy_l,           # dy tokens [N, L, C]
    PRE, spre_n, spre_l,        # saved pre-activation [N, L, Ca] (None iff not LOAD_PRE)
    Z, sz_n, sz_l,              # z = act(pre) out [N, L, Ca] (None iff not STORE_Z)
    DP,                         # dpre out, contiguous [M, Ca] (patch-row launch; None in the prefix-row one)
    DH, sdh_n, sdh_l,           # dh out [N, L, Ca] (prefix-row launch; None in the patch-row one)
    Wc, Bc, W2,                 # conv weight [Ca, taps], conv bias [Ca] (None iff not HAS_CB), fc2 weight [C, Ca]
    R,                          # per-clip output scale [N // T] (None iff not HAS_R)
    PART,                       # fp32/fp64 partials [num_m_tiles, taps + 1, Ca] (patch-row launch; else None)
    M, Ca, C, T, H, W,          # M: rows of this launch (N*H*W patch rows, or N*num_prefix prefix rows)
    num_prefix,                 # prefix (class/register) rows per frame
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_CB: tl.constexpr, HAS_R: tl.constexpr, PREFIX_ROWS: tl.constexpr, ACT: tl.constexpr,
    ACC: tl.constexpr, DOT_IEEE: tl.constexpr, LOAD_PRE: tl.constexpr, STORE_Z: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_S: tl.constexpr,
):
    if PREFIX_ROWS:  # prefix rows: no conv (pre = h), dh = dpre written straight to DH
        pid_m = tl.program_id(0)
        m_mask, n, tok = prefix_coords(pid_m, M, num_prefix, BLOCK_M)
        offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = offs_k < Ca
        yy = tok
        xx = tok
        offs_m = tok
    else:
        pid_m, offs_m, offs_k, m_mask, k_mask, n, s, yy, xx = tile_coords(M, Ca, T, H, W, BLOCK_M, BLOCK_K,
                                                                           GROUP_S)
        tok = num_prefix + s
    mk_mask = m_mask[:, None] & k_mask[None, :]
    # dz = dy W2 for this tile, in registers
    dy_row = n.to(tl.int64) * sdy_n + tok.to(tl.int64) * sdy_l
    dz = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
    for c0 in range(0, C, BLOCK_N):
        offs_n = c0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < C
        dyv = tl.load(DY + dy_row[:, None] + offs_n[None, :], mask=m_mask[:, None] & n_mask[None, :], other=0.0)
        w2 = tl.load(W2 + offs_n[:, None] * Ca + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        if DOT_IEEE:
            dz += tl.dot(dyv.to(ACC), w2.to(ACC), input_precision="ieee")
        else:  # tensor cores in the activation dtype (autocast's fc2 backward does the same)
            dz += tl.dot(dyv.to(Htok.dtype.element_ty), w2.to(Htok.dtype.element_ty))
    if HAS_R:  # y = x + r * (...): every gradient into the adapter is scaled by its clip's r
        dz = dz * tl.load(R + n // T, mask=m_mask, other=0.0).to(ACC)[:, None]
    # the pre-activation: recomputed from h (recompute=True) or loaded
    if LOAD_PRE:
        pre_row = n.to(tl.int64) * spre_n + tok.to(tl.int64) * spre_l
        pre = tl.load(PRE + pre_row[:, None] + offs_k[None, :], mask=mk_mask, other=0.0).to(ACC)
    elif PREFIX_ROWS:
        h_row = n.to(tl.int64) * shtok_n + tok.to(tl.int64) * shtok_l
        pre = tl.load(Htok + h_row[:, None] + offs_k[None, :], mask=mk_mask, other=0.0).to(ACC)
    else:
        pre = conv_tile(Htok, shtok_n, shtok_l, num_prefix, Wc, Bc, offs_k, k_mask, n, yy, xx, m_mask,
                        T, H, W, KT, KH, KW, False, HAS_CB, ACC, BLOCK_M, BLOCK_K)
    if STORE_Z:
        z = pre
        if ACT != 0:
            z = act_fwd(pre, ACT)
        z_row = n.to(tl.int64) * sz_n + tok.to(tl.int64) * sz_l
        tl.store(Z + z_row[:, None] + offs_k[None, :], z.to(Z.dtype.element_ty), mask=mk_mask)
    dp = dz
    if ACT != 0:
        dp = dz * act_grad(pre, ACT)
    dp = tl.where(mk_mask, dp, 0.0)
    if PREFIX_ROWS:
        dh_row = n.to(tl.int64) * sdh_n + tok.to(tl.int64) * sdh_l
        tl.store(DH + dh_row[:, None] + offs_k[None, :], dp.to(DH.dtype.element_ty), mask=mk_mask)
    else:
        tl.store(DP + offs_m.to(tl.int64)[:, None] * Ca + offs_k[None, :], dp.to(DP.dtype.element_ty),
                 mask=mk_mask)
        store_wgrad_partials(PART, pid_m, dp, Htok, shtok_n, shtok_l, num_prefix, offs_k, k_mask, n, yy, xx,
                             m_mask, Ca, T, H, W, KT, KH, KW, ACC)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _fwd_interp(C: int, Ca: int) -> dict:
    return dict(BLOCK_M=128, BLOCK_N=min(triton.next_power_of_2(C), 256),
                BLOCK_K=min(triton.next_power_of_2(Ca), 128), num_warps=4)


def _bwd_interp(C: int, Ca: int) -> dict:
    return dict(BLOCK_M=128, BLOCK_K=min(triton.next_power_of_2(Ca), 128),
                BLOCK_N=min(triton.next_power_of_2(C), 256), num_warps=4)


#: GPU configs of the one-pass forward: (tokens, output channels, bottleneck chunk) tiles. Larger
#: BLOCK_N recomputes z less often (C / BLOCK_N times); larger BLOCK_M re-reads W2 less.
FWD_SPACE = config_space(
    "BLOCK_M BLOCK_N BLOCK_K GROUP_S num_warps",
    (64, 128, 32, 0, 4),
    (128, 128, 32, 0, 8),
    (64, 64, 64, 0, 4),
    (128, 64, 64, 0, 4),
    (64, 256, 32, 0, 8),
    (128, 256, 32, 0, 8),
    (64, 128, 32, 8, 4),    # T-major: 8 frames x 8 positions
)
#: GPU configs of the fused backward: (tokens, bottleneck channels, C chunk of the dz dot) tiles.
#: Larger BLOCK_K re-reads dy less often (Ca / BLOCK_K times).
BWD_SPACE = config_space(
    "BLOCK_M BLOCK_K BLOCK_N GROUP_S num_warps",
    (64, 64, 64, 0, 4),
    (64, 128, 64, 0, 4),
    (128, 64, 64, 0, 8),
    (128, 128, 32, 0, 8),
    (64, 128, 32, 0, 8),
    (64, 32, 128, 0, 4),
    (64, 64, 64, 8, 4),     # T-major: 8 frames x 8 positions
)
_KEY = ["C", "Ca", "T", "H", "W", "KT", "KH", "KW", "ACT", "HAS_R", "PREFIX_ROWS"]
onepass_fwd_kernel = TunedKernel(_onepass_fwd_kernel, FWD_SPACE, _KEY + ["STORE_PRE"], _fwd_interp)
onepass_bwd_kernel = TunedKernel(_onepass_bwd_kernel, BWD_SPACE, _KEY + ["LOAD_PRE"], _bwd_interp)


def _dot_ieee(dtype: torch.dtype) -> bool:
    """IEEE fp32/fp64 dots for fp32/fp64 (no TF32), and in the interpreter (whose bf16 dot is wrong)."""
    return INTERPRET or dtype in (torch.float32, torch.float64)


def _row_scale(row_scale: torch.Tensor | None, N: int, T: int, acc_t: torch.dtype) -> torch.Tensor | None:
    """The per-clip output scale as a contiguous accumulation-dtype vector of N // T entries."""
    if row_scale is None:
        return None
    if row_scale.shape != (N // T,):
        raise ValueError(f"row_scale must have shape [{N // T}] (one per clip), got {tuple(row_scale.shape)}")
    return row_scale.to(acc_t).contiguous()


def _launches(M: int, HW: int, NP: int, prefix_through: bool):
    """``(prefix_rows, rows, programs(meta))`` of each launch: the patch rows, then (``prefix_through``)
    the ``NP`` prefix rows."""
    out = [(False, M, lambda meta: token_programs(M, HW, meta))]
    if prefix_through and NP > 0:
        out.append((True, NP, lambda meta: triton.cdiv(NP, meta["BLOCK_M"])))
    return out


def onepass_fwd(h: torch.Tensor, x: torch.Tensor, out: torch.Tensor, wc2d: torch.Tensor, bc, w2: torch.Tensor,
                b2, T: int, H: int, W: int, P: int, kernel_size: tuple[int, int, int], act: int,
                pre: torch.Tensor | None = None, config: dict | None = None, prefix_through: bool = False,
                row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Write ``x + r * (act(conv(h) + bc) @ w2^T + b2)`` into the patch rows of ``out`` ([N, L, C]).

    ``h``: [N, L, Ca]; ``wc2d``: [Ca, taps] contiguous; ``w2``: [C, Ca] contiguous. ``row_scale``: the
    per-clip ``r`` ([N // T]; None: 1). ``prefix_through``: the prefix rows get ``x + r * (act(h) @ w2^T
    + b2)`` (no conv; a second launch of the same kernel); otherwise they are not written. ``pre``
    ([N, L, Ca]): if given, its rows get ``conv(h) + bc`` (``h`` at prefix rows with ``prefix_through``).
    ``config``: force one launch config (default: autotuned on GPU)."""
    for t in (h, x, out) + ((pre,) if pre is not None else ()):
        check_token_tensor(t)
    N, L, Ca = h.shape
    check_clips(N, T)
    C = x.shape[2]
    kt, kh, kw = kernel_size
    r = _row_scale(row_scale, N, T, acc_dtype(h.dtype))
    with on_device(h):
        for prefix_rows, rows, programs in _launches(N * H * W, H * W, N * P, prefix_through):
            if rows == 0:
                continue
            onepass_fwd_kernel.launch(
                lambda meta: (programs(meta), triton.cdiv(C, meta["BLOCK_N"])),
                dict(**token_args(Htok=h, X=x, Y=out, PRE=pre), Wc=wc2d, Bc=bc, W2=w2, B2=b2, R=r,
                     M=rows, Ca=Ca, C=C, T=T, H=H, W=W, num_prefix=P, KT=kt, KH=kh, KW=kw,
                     HAS_CB=bc is not None, HAS_B2=b2 is not None, HAS_R=r is not None, PREFIX_ROWS=prefix_rows,
                     ACT=act, ACC=tl_acc_dtype(h.dtype), DOT_IEEE=_dot_ieee(h.dtype), STORE_PRE=pre is not None),
                dict(C=C, Ca=Ca), config)
    return out


def onepass_bwd(dy: torch.Tensor, h: torch.Tensor, pre: torch.Tensor | None, wc2d: torch.Tensor, bc,
                w2: torch.Tensor, T: int, H: int, W: int, P: int, kernel_size: tuple[int, int, int], act: int,
                config: dict | None = None, flip_config: dict | None = None, prefix_through: bool = False,
                row_scale: torch.Tensor | None = None):
    """The one-pass tail's backward, but for the ``dW2``, ``db2`` and ``d row_scale`` reductions (GEMMs).

    ``dy``: [N, L, C]; ``h``: [N, L, Ca] (fc1's output); ``pre``: the saved ``conv(h) + bc`` or None
    (recomputed); ``prefix_through`` / ``row_scale`` as in :func:`onepass_fwd`. Returns ``(z, dh, dwc,
    dbc)``: ``z = act(pre)`` [N, L, Ca] (unscaled; zero prefix rows unless ``prefix_through``) for the dW2
    GEMM (``pre`` itself when there is no activation), ``dh`` [N, L, Ca] (prefix rows zero unless
    ``prefix_through``), ``dwc`` [Ca, taps] and ``dbc`` [Ca] in the accumulation dtype.
    ``config`` / ``flip_config``: force the fused kernel's / the transposed conv's launch config."""
    for t in (dy, h) + ((pre,) if pre is not None else ()):
        check_token_tensor(t)
    N, L, Ca = h.shape
    check_clips(N, T)
    C = dy.shape[2]
    M = N * H * W
    kt, kh, kw = kernel_size
    taps = kt * kh * kw
    acc_t = acc_dtype(h.dtype)
    r = _row_scale(row_scale, N, T, acc_t)
    through = prefix_through and P > 0
    if pre is None or act != 0:
        z = torch.empty((N, L, Ca), dtype=h.dtype, device=h.device)
        if not through:
            z[:, :P].zero_()
    else:
        z = pre
    dh = torch.empty((N, L, Ca), dtype=h.dtype, device=h.device)
    if not through:
        dh[:, :P].zero_()
    if M == 0:
        zero = torch.zeros((Ca, taps + 1), dtype=acc_t, device=h.device)
        return z, dh, zero[:, :taps], zero[:, taps]
    shape = dict(C=C, Ca=Ca)
    (_, _, programs), *prefix_launch = _launches(M, H * W, N * P, through)
    part = torch.empty((onepass_bwd_kernel.max_programs(programs, shape, config), taps + 1, Ca),
                       dtype=acc_t, device=h.device)
    dpre = torch.empty((M, Ca), dtype=h.dtype, device=h.device)

    def launch(prefix_rows, rows, programs):
        return onepass_bwd_kernel.launch(
            lambda meta: (programs(meta), triton.cdiv(Ca, meta["BLOCK_K"])),
            dict(**token_args(Htok=h, DY=dy, PRE=pre, Z=z if z is not pre else None,
                              DH=dh if prefix_rows else None),
                 DP=None if prefix_rows else dpre, Wc=wc2d, Bc=bc, W2=w2, R=r, PART=None if prefix_rows else part,
                 M=rows, Ca=Ca, C=C, T=T, H=H, W=W, num_prefix=P, KT=kt, KH=kh, KW=kw,
                 HAS_CB=bc is not None, HAS_R=r is not None, PREFIX_ROWS=prefix_rows, ACT=act,
                 ACC=tl_acc_dtype(h.dtype), DOT_IEEE=_dot_ieee(h.dtype), LOAD_PRE=pre is not None,
                 STORE_Z=z is not pre),
            shape, config)

    with on_device(h):
        ran = launch(False, M, programs)
        sums = part[:programs(ran)].sum(dim=0)  # the rows this launch wrote, in a fixed order
        for prefix_rows, rows, prefix_programs in prefix_launch:
            launch(prefix_rows, rows, prefix_programs)
        dwconv_tokens_fwd(dpre.view(N, H * W, Ca), wc2d, None, dh, T, H, W, 0, P, kernel_size, 0, flip=True,
                          config=flip_config)
    return z, dh, sums[:taps].t(), sums[taps]
