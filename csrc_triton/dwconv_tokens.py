"""Depthwise 3D convolution over ViT token layout, fused with bias and activation.

The input is a token tensor ``h[n, l, c]`` with ``n = b * T + t`` (frames of a clip consecutive) and
``l = prefix + y * W + x`` (prefix tokens, then a row-major ``H x W`` patch grid). The "reshape to
[B, C, T, H, W]" of the official ST-Adapter is pure index math here: no permute, no copy.

Kernels (launchers below them; shared helpers in ``csrc_triton.common``):
  * ``_dwconv_tokens_kernel``: ``out[m] = act(bias + sum_tap w[tap] * in[m + off(tap)])``; with
    ``FLIP`` it is the transposed conv ``out[m] = sum_tap w[tap] * in[m - off(tap)]`` (grad of input).
  * ``_dwconv_tokens_bwd_kernel``: recomputes the pre-activation from the saved input, forms
    ``dpre = dz * act'(pre)``, optionally stores it, and writes per-tile fp32 partial sums of the
    weight and bias gradients (summed afterwards in a fixed order: deterministic).
  * ``prefix_act_kernel``: prefix rows that take the activation but not the conv.

Only ``[.., .., C]`` tensors with unit channel stride are accepted; token and frame strides are free,
so strided views (e.g. ``x[:, 1:, :]``) are read in place. Optional tensors (a bias, ``dz``) are
passed as ``None`` with a constexpr flag set from the same ``is None``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (INTERPRET, TunedKernel, act_fwd, act_grad, check_clips, check_token_tensor, config_space,
                     conv_tile, on_device, prefix_coords, store_wgrad_partials, tile_coords, tl_acc_dtype,
                     token_args, token_programs)
from .dtypes import acc_dtype


@triton.jit
def _dwconv_tokens_kernel(
    X, sx_n, sx_l, x_prefix,    # input tokens [N, L_in, C], prefix rows x_prefix skipped
    Y, sy_n, sy_l, y_prefix,    # output tokens [N, L_out, C], written at rows y_prefix..y_prefix+H*W
    Wt, Bias,                   # weight [C, KT*KH*KW] contiguous; bias [C] (None iff not HAS_BIAS)
    M, C, T, H, W,              # M = N * H * W patch tokens
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    FLIP: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_S: tl.constexpr,
):
    pid_m, offs_m, offs_c, m_mask, c_mask, n, s, yy, xx = tile_coords(M, C, T, H, W, BLOCK_M, BLOCK_C, GROUP_S)
    acc = conv_tile(X, sx_n, sx_l, x_prefix, Wt, Bias, offs_c, c_mask, n, yy, xx, m_mask, T, H, W,
                    KT, KH, KW, FLIP, HAS_BIAS, ACC, BLOCK_M, BLOCK_C)
    if ACT != 0:
        acc = act_fwd(acc, ACT)
    out_row = n.to(tl.int64) * sy_n + (y_prefix + s).to(tl.int64) * sy_l
    tl.store(Y + out_row[:, None] + offs_c[None, :], acc.to(Y.dtype.element_ty),
             mask=m_mask[:, None] & c_mask[None, :])


@triton.jit
def _dwconv_tokens_bwd_kernel(
    X, sx_n, sx_l, x_prefix,    # saved conv input h
    DZ, sdz_n, sdz_l, dz_prefix,  # grad of the conv output (post-activation)
    DP,                         # dpre out, contiguous [M, C] (None iff not STORE_DPRE)
    Wt, Bias,                   # weight [C, taps] contiguous; bias [C] (None iff not HAS_BIAS)
    PART,                       # fp32/fp64 partials [num_m_tiles, KTAPS + 1, C]
    M, C, T, H, W,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_DPRE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_S: tl.constexpr,
):
    pid_m, offs_m, offs_c, m_mask, c_mask, n, s, yy, xx = tile_coords(M, C, T, H, W, BLOCK_M, BLOCK_C, GROUP_S)
    mc_mask = m_mask[:, None] & c_mask[None, :]

    dz_row = n.to(tl.int64) * sdz_n + (dz_prefix + s).to(tl.int64) * sdz_l
    dp = tl.load(DZ + dz_row[:, None] + offs_c[None, :], mask=mc_mask, other=0.0).to(ACC)
    if ACT != 0:
        # Recompute the pre-activation from the saved input (nothing but h is kept from forward).
        pre = conv_tile(X, sx_n, sx_l, x_prefix, Wt, Bias, offs_c, c_mask, n, yy, xx, m_mask, T, H, W,
                        KT, KH, KW, False, HAS_BIAS, ACC, BLOCK_M, BLOCK_C)
        dp = dp * act_grad(pre, ACT)
        dp = tl.where(mc_mask, dp, 0.0)
    if STORE_DPRE:
        dp_row = offs_m.to(tl.int64) * C
        tl.store(DP + dp_row[:, None] + offs_c[None, :], dp.to(DP.dtype.element_ty), mask=mc_mask)

    store_wgrad_partials(PART, pid_m, dp, X, sx_n, sx_l, x_prefix, offs_c, c_mask, n, yy, xx, m_mask, C, T, H, W,
                         KT, KH, KW, ACC)


@triton.jit
def prefix_act_kernel(
    X, sx_n, sx_l,              # conv input tokens [N, L, C]
    DZ, sdz_n, sdz_l,           # grad of the output (None iff not BWD)
    Y, sy_n, sy_l,              # out: act(X) (forward) or DZ * act'(X) (BWD), prefix rows only
    NP, C, num_prefix,          # NP = N * num_prefix prefix rows
    ACT: tl.constexpr, BWD: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Prefix rows that take the activation but not the conv (mmaction2's adapter: the class token skips
    the conv and its bias)."""
    valid, n, l = prefix_coords(tl.program_id(0), NP, num_prefix, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = valid[:, None] & (offs_c < C)[None, :]
    v = tl.load(X + (n.to(tl.int64) * sx_n + l * sx_l)[:, None] + offs_c[None, :], mask=mask, other=0.0).to(ACC)
    if BWD:
        out = tl.load(DZ + (n.to(tl.int64) * sdz_n + l * sdz_l)[:, None] + offs_c[None, :], mask=mask,
                      other=0.0).to(ACC)
        if ACT != 0:
            out = out * act_grad(v, ACT)
    else:
        out = v
        if ACT != 0:
            out = act_fwd(v, ACT)
    tl.store(Y + (n.to(tl.int64) * sy_n + l * sy_l)[:, None] + offs_c[None, :], out.to(Y.dtype.element_ty),
             mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _conv_interp(C: int) -> dict:
    return dict(BLOCK_M=256, BLOCK_C=min(triton.next_power_of_2(C), 512), num_warps=4)


#: GPU configs of the two conv kernels (bandwidth-bound: tile shape, token order and warps). No
#: BLOCK_M below 64: the backward's partial-sum buffer is (taps + 1) * 4 / BLOCK_M bytes per token and
#: channel (for (3,3,3) at BLOCK_M=64 already 0.9x the size of a bf16 h).
CONV_SPACE = config_space(
    "BLOCK_M BLOCK_C GROUP_S num_warps",
    (64, 128, 0, 4),
    (64, 32, 0, 2),
    (128, 64, 0, 4),
    (128, 128, 0, 8),
    (256, 64, 0, 8),
    (64, 64, 0, 2),
    (64, 128, 8, 4),    # T-major: 8 frames x 8 positions
    (128, 64, 16, 4),
)
_CONV_KEY = ["C", "T", "H", "W", "KT", "KH", "KW", "ACT"]
conv_fwd_kernel = TunedKernel(_dwconv_tokens_kernel, CONV_SPACE, _CONV_KEY + ["FLIP", "HAS_BIAS"], _conv_interp)
conv_bwd_kernel = TunedKernel(_dwconv_tokens_bwd_kernel, CONV_SPACE, _CONV_KEY + ["HAS_BIAS"], _conv_interp)


def dwconv_tokens_fwd(h: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None,
                      out: torch.Tensor, T: int, H: int, W: int, p_in: int, p_out: int,
                      kernel_size: tuple[int, int, int], act: int, flip: bool = False,
                      config: dict | None = None) -> torch.Tensor:
    """Write ``act(conv(h) + bias)`` for the patch rows of ``out`` (rows ``p_out..``).

    ``h``: [N, L_in, C] (patch rows from ``p_in``), ``w2d``: [C, kt*kh*kw] contiguous,
    ``out``: [N, L_out, C]. Prefix rows of ``out`` are not touched. ``flip`` gives the transposed conv.
    ``config``: force one launch config (see :class:`TunedKernel`); default: autotuned on GPU.
    """
    check_token_tensor(h)
    check_token_tensor(out)
    N, _, C = h.shape
    check_clips(N, T)
    M = N * H * W
    if M == 0:
        return out
    kt, kh, kw = kernel_size
    with on_device(h):
        conv_fwd_kernel.launch(
            lambda meta: (token_programs(M, H * W, meta), triton.cdiv(C, meta["BLOCK_C"])),
            dict(**token_args(X=h), x_prefix=p_in, **token_args(Y=out), y_prefix=p_out, Wt=w2d, Bias=bias,
                 M=M, C=C, T=T, H=H, W=W, KT=kt, KH=kh, KW=kw, FLIP=flip, HAS_BIAS=bias is not None, ACT=act,
                 ACC=tl_acc_dtype(h.dtype)),
            dict(C=C), config)
    return out


#: Launch config of the prefix-row kernel (N * P rows: a few per frame, so one config, not tuned).
PREFIX_CONFIG = dict(BLOCK_M=64, BLOCK_C=128, num_warps=4)


def prefix_act_rows(h: torch.Tensor, out: torch.Tensor, P: int, act: int,
                    dz: torch.Tensor | None = None) -> torch.Tensor:
    """Write ``act(h)`` (or, given ``dz``, ``dz * act'(h)``) into the ``P`` prefix rows of ``out``.

    ``h``, ``out`` (and ``dz``): [N, L, C] token tensors with unit channel stride."""
    for t in (h, out) + ((dz,) if dz is not None else ()):
        check_token_tensor(t)
    N, _, C = h.shape
    NP = N * P
    if NP == 0:
        return out
    cfg = dict(PREFIX_CONFIG, BLOCK_C=min(PREFIX_CONFIG["BLOCK_C"], triton.next_power_of_2(C)))
    if INTERPRET:  # ~7 ms per program: few, big tiles
        cfg = dict(cfg, BLOCK_M=max(64, triton.next_power_of_2(min(NP, 1024))), BLOCK_C=triton.next_power_of_2(C))
    with on_device(h):
        prefix_act_kernel[(triton.cdiv(NP, cfg["BLOCK_M"]), triton.cdiv(C, cfg["BLOCK_C"]))](
            **token_args(X=h, DZ=dz, Y=out), NP=NP, C=C, num_prefix=P, ACT=act, BWD=dz is not None,
            ACC=tl_acc_dtype(h.dtype), **cfg)
    return out


def dwconv_tokens_bwd(dz: torch.Tensor, h: torch.Tensor, w2d: torch.Tensor,
                      bias: torch.Tensor | None, T: int, H: int, W: int, p: int,
                      kernel_size: tuple[int, int, int], act: int, config: dict | None = None,
                      flip_config: dict | None = None,
                      zero_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``z = act(conv(h) + bias)`` given ``dz`` (same layout as z, prefix rows ignored).
    ``config`` / ``flip_config``: force the configs of the backward and transposed-conv kernels.
    ``zero_prefix=False`` leaves ``dh``'s prefix rows unwritten, for a caller that writes them.

    Returns ``(dh, dw2d, dbias)``: ``dh`` shaped like ``h`` (contiguous, prefix rows zero),
    ``dw2d`` [C, taps] and ``dbias`` [C] in the accumulation dtype (fp32, or fp64 for fp64 input).
    """
    check_token_tensor(h)
    check_token_tensor(dz)
    N, L, C = h.shape
    check_clips(N, T)
    M = N * H * W
    kt, kh, kw = kernel_size
    taps = kt * kh * kw
    acc_t = acc_dtype(h.dtype)
    dh = torch.empty((N, L, C), dtype=h.dtype, device=h.device)
    if zero_prefix:
        dh[:, :p].zero_()
    if M == 0:
        z = torch.zeros((C, taps), dtype=acc_t, device=h.device)
        return dh, z, z[:, 0].clone()
    shape = dict(C=C)
    programs = lambda meta: token_programs(M, H * W, meta)  # noqa: E731
    part = torch.empty((conv_bwd_kernel.max_programs(programs, shape, config), taps + 1, C),
                       dtype=acc_t, device=h.device)
    dpre = torch.empty((M, C), dtype=h.dtype, device=h.device) if act != 0 else None
    with on_device(h):
        ran = conv_bwd_kernel.launch(
            lambda meta: (programs(meta), triton.cdiv(C, meta["BLOCK_C"])),
            dict(**token_args(X=h), x_prefix=p, **token_args(DZ=dz), dz_prefix=p, DP=dpre, Wt=w2d, Bias=bias,
                 PART=part, M=M, C=C, T=T, H=H, W=W, KT=kt, KH=kh, KW=kw, HAS_BIAS=bias is not None, ACT=act,
                 STORE_DPRE=dpre is not None, ACC=tl_acc_dtype(h.dtype)),
            shape, config)
    sums = part[:programs(ran)].sum(dim=0)  # the rows this launch wrote, in a fixed order: deterministic
    # grad of the input: transposed conv of dpre (or of dz itself when there is no activation).
    if dpre is not None:
        src, src_p = dpre.view(N, H * W, C), 0
    else:
        src, src_p = dz, p
    dwconv_tokens_fwd(src, w2d, None, dh, T, H, W, src_p, p, kernel_size, 0, flip=True, config=flip_config)
    return dh, sums[:taps].t(), sums[taps]
