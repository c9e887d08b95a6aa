"""Depthwise 3D convolution over ViT token layout, fused with bias and activation.

The input is a token tensor ``h[n, l, c]`` with ``n = b * T + t`` (frames of a clip consecutive) and
``l = P + y * W + x`` (``P`` prefix tokens, then a row-major ``H x W`` patch grid). The "reshape to
[B, C, T, H, W]" of the official ST-Adapter is pure index math here: no permute, no copy.

Kernels (launchers beside them):
  * ``_dwconv_tokens_kernel``: ``out[m] = act(bias + sum_tap w[tap] * in[m + off(tap)])``; with
    ``FLIP`` it is the transposed conv ``out[m] = sum_tap w[tap] * in[m - off(tap)]`` (grad of input).
  * ``_dwconv_tokens_bwd_kernel``: recomputes the pre-activation from the saved input, forms
    ``dpre = dz * act'(pre)``, optionally stores it, and writes per-tile fp32 partial sums of the
    weight and bias gradients (summed afterwards in a fixed order: deterministic).

Only ``[.., .., C]`` tensors with unit channel stride are accepted; token and frame strides are free,
so strided views (e.g. ``x[:, 1:, :]``) are read in place.
"""
from __future__ import annotations

import os
import threading

import torch
import triton
import triton.language as tl

#: Whether kernels in this module were decorated under Triton's CPU interpreter.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Each code of csrc_triton.activations.ACTIVATIONS has its own branch below; an unknown code fails to
# compile (tl.static_assert) instead of silently computing another activation.


@triton.jit
def _act_fwd(x, ACT: tl.constexpr):
    if ACT == 0:  # none
        x = x
    elif ACT == 1:  # relu
        x = tl.where(x > 0, x, 0.0)
    elif ACT == 2:  # gelu (erf)
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 3:  # gelu (tanh approximation); tanh(u) = 2 * sigmoid(2u) - 1
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = 0.5 * x * (2.0 * tl.sigmoid(2.0 * u))
    elif ACT == 4:  # quick_gelu (CLIP)
        x = x * tl.sigmoid(1.702 * x)
    elif ACT == 5:  # silu
        x = x * tl.sigmoid(x)
    else:
        tl.static_assert(False, "unknown activation code (see csrc_triton/activations.py)")
    return x


@triton.jit
def _act_grad(x, ACT: tl.constexpr):
    """d act(x) / dx, elementwise (ACT != 0)."""
    if ACT == 1:
        g = tl.where(x > 0, 1.0, 0.0).to(x.dtype)
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        g = cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
    elif ACT == 3:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        th = 2.0 * tl.sigmoid(2.0 * u) - 1.0
        du = 0.7978845608028654 * (1.0 + 0.134145 * x * x)
        g = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du
    elif ACT == 4:
        s = tl.sigmoid(1.702 * x)
        g = s + 1.702 * x * s * (1.0 - s)
    elif ACT == 5:
        s = tl.sigmoid(x)
        g = s + x * s * (1.0 - s)
    else:
        tl.static_assert(False, "no derivative for this activation code (see csrc_triton/activations.py)")
    return g


@triton.jit
def _token_coords(pid_m, M, T, H, W, BLOCK_M: tl.constexpr, GROUP_S: tl.constexpr):
    """The patch tokens of row-tile ``pid_m``: ``(m, valid, n, s, y, x)`` with ``m = n * H*W + s`` the
    token's index in the [N, H*W] patch layout (frame row ``n``, grid index ``s = y * W + x``).

    ``GROUP_S == 0``: tiles walk ``m`` in order (BLOCK_M consecutive tokens of one frame).
    ``GROUP_S > 0``: "T-major" order over (clip, block of GROUP_S grid positions, frame, position in
    the block), so a tile of ``T * GROUP_S`` rows holds every frame of GROUP_S positions: a temporal
    tap's halo rows are the tile's own rows (L1 hits) instead of other tiles'. Grid positions are
    padded to a multiple of GROUP_S; the padding rows are invalid."""
    HW = H * W
    offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if GROUP_S == 0:
        n = offs // HW
        s = offs % HW
        valid = offs < M
    else:
        HWB = (HW + GROUP_S - 1) // GROUP_S
        q = offs // GROUP_S
        t = q % T
        q2 = q // T
        s = (q2 % HWB) * GROUP_S + offs % GROUP_S
        n = (q2 // HWB) * T + t
        valid = (n < M // HW) & (s < HW)
    return n * HW + s, valid, n, s, s // W, s % W


@triton.jit
def _prefix_coords(pid_m, NP, P, BLOCK_M: tl.constexpr):
    """The prefix (class/register) rows of row-tile ``pid_m``, for ops whose prefix rows go through the
    adapter without the conv: ``(valid, n, l)`` with ``q = n * P + l < NP = N * P`` (frame ``n``, token
    ``l < P``)."""
    q = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    return q < NP, q // P, q % P


@triton.jit
def _tile_coords(M, C, T, H, W, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_S: tl.constexpr):
    """This program's tokens (see ``_token_coords``) and channels: (pid_m, m, channel offsets,
    token mask, channel mask, n, s, y, x)."""
    pid_m = tl.program_id(0)
    m, m_mask, n, s, yy, xx = _token_coords(pid_m, M, T, H, W, BLOCK_M, GROUP_S)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid_m, m, offs_c, m_mask, offs_c < C, n, s, yy, xx


def token_programs(M: int, HW: int, meta: dict) -> int:
    """Programs along the token axis for a launch with meta-parameters ``meta`` (see ``_token_coords``;
    the launchers check that the frames form whole clips, which the T-major order relies on)."""
    g = meta.get("GROUP_S", 0)
    rows = M if g == 0 else (M // HW) * triton.cdiv(HW, g) * g
    return triton.cdiv(rows, meta["BLOCK_M"])


@triton.jit
def _tap_tile(X, sx_n, sx_l, P, offs_c, c_mask, n, yy, xx, m_mask, T, H, W, tap,
              KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, FLIP: tl.constexpr,
              ACC: tl.constexpr):
    """Input tile feeding conv tap ``tap`` (0 outside the zero-padded volume) for a block of tokens."""
    dt = tap // (KH * KW) - KT // 2
    dy = (tap // KW) % KH - KH // 2
    dx = tap % KW - KW // 2
    if FLIP:
        dt = -dt
        dy = -dy
        dx = -dx
    t = n % T + dt
    y = yy + dy
    x = xx + dx
    ok = m_mask & (t >= 0) & (t < T) & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    row = (n + dt).to(tl.int64) * sx_n + (P + y * W + x).to(tl.int64) * sx_l
    v = tl.load(X + row[:, None] + offs_c[None, :], mask=ok[:, None] & c_mask[None, :], other=0.0)
    return v.to(ACC)


@triton.jit
def _conv_tile(X, sx_n, sx_l, P, Wt, Bias, offs_c, c_mask, n, yy, xx, m_mask, T, H, W,
               KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, FLIP: tl.constexpr,
               HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """conv(X) (+ bias) for a [BLOCK_M tokens, BLOCK_C channels] tile; FLIP: the transposed conv.
    A runtime loop over taps (not unrolled): (3,3,3) would otherwise bloat code and compile time."""
    KTAPS: tl.constexpr = KT * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for tap in range(KTAPS):
        v = _tap_tile(X, sx_n, sx_l, P, offs_c, c_mask, n, yy, xx, m_mask, T, H, W, tap, KT, KH, KW, FLIP, ACC)
        w = tl.load(Wt + offs_c * KTAPS + tap, mask=c_mask, other=0.0).to(ACC)
        acc += v * w[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + offs_c, mask=c_mask, other=0.0).to(ACC)[None, :]
    return acc


@triton.jit
def _store_wgrad_partials(PART, pid_m, dp, X, sx_n, sx_l, PX, offs_c, c_mask, n, yy, xx, m_mask, C, T, H, W,
                          KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr):
    """This tile's share of the depthwise weight and bias gradients, ``PART[pid_m, tap, c] =
    sum_m dp[m, c] * X[m + off(tap), c]`` and ``PART[pid_m, taps, c] = sum_m dp[m, c]`` (``dp`` is 0
    outside the tile's valid rows and channels)."""
    KTAPS: tl.constexpr = KT * KH * KW
    part = PART + pid_m.to(tl.int64) * (KTAPS + 1) * C + offs_c
    for tap in range(KTAPS):
        v = _tap_tile(X, sx_n, sx_l, PX, offs_c, c_mask, n, yy, xx, m_mask, T, H, W, tap,
                      KT, KH, KW, False, ACC)
        tl.store(part + tap * C, tl.sum(dp * v, axis=0), mask=c_mask)
    tl.store(part + KTAPS * C, tl.sum(dp, axis=0), mask=c_mask)


@triton.jit
def _dwconv_tokens_kernel(
    X, sx_n, sx_l, PX,          # input tokens [N, L_in, C], prefix rows PX skipped
    Y, sy_n, sy_l, PY,          # output tokens [N, L_out, C], written at rows PY..PY+H*W
    Wt, Bias,                   # weight [C, KT*KH*KW] contiguous; bias [C] (unused if not HAS_BIAS)
    M, C, T, H, W,              # M = N * H * W patch tokens
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    FLIP: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_S: tl.constexpr,
):
    pid_m, offs_m, offs_c, m_mask, c_mask, n, s, yy, xx = _tile_coords(M, C, T, H, W, BLOCK_M, BLOCK_C, GROUP_S)
    acc = _conv_tile(X, sx_n, sx_l, PX, Wt, Bias, offs_c, c_mask, n, yy, xx, m_mask, T, H, W,
                     KT, KH, KW, FLIP, HAS_BIAS, ACC, BLOCK_M, BLOCK_C)
    if ACT != 0:
        acc = _act_fwd(acc, ACT)
    out_row = n.to(tl.int64) * sy_n + (PY + s).to(tl.int64) * sy_l
    tl.store(Y + out_row[:, None] + offs_c[None, :], acc.to(Y.dtype.element_ty),
             mask=m_mask[:, None] & c_mask[None, :])


@triton.jit
def _dwconv_tokens_bwd_kernel(
    X, sx_n, sx_l, PX,          # saved conv input h
    DZ, sdz_n, sdz_l, PDZ,      # grad of the conv output (post-activation)
    DP,                         # dpre out, contiguous [M, C] (written iff STORE_DPRE)
    Wt, Bias,
    PART,                       # fp32/fp64 partials [num_m_tiles, KTAPS + 1, C]
    M, C, T, H, W,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_DPRE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_S: tl.constexpr,
):
    pid_m, offs_m, offs_c, m_mask, c_mask, n, s, yy, xx = _tile_coords(M, C, T, H, W, BLOCK_M, BLOCK_C, GROUP_S)
    mc_mask = m_mask[:, None] & c_mask[None, :]

    dz_row = n.to(tl.int64) * sdz_n + (PDZ + s).to(tl.int64) * sdz_l
    dp = tl.load(DZ + dz_row[:, None] + offs_c[None, :], mask=mc_mask, other=0.0).to(ACC)
    if ACT != 0:
        # Recompute the pre-activation from the saved input (nothing but h is kept from forward).
        pre = _conv_tile(X, sx_n, sx_l, PX, Wt, Bias, offs_c, c_mask, n, yy, xx, m_mask, T, H, W,
                         KT, KH, KW, False, HAS_BIAS, ACC, BLOCK_M, BLOCK_C)
        dp = dp * _act_grad(pre, ACT)
        dp = tl.where(mc_mask, dp, 0.0)
    if STORE_DPRE:
        dp_row = offs_m.to(tl.int64) * C
        tl.store(DP + dp_row[:, None] + offs_c[None, :], dp.to(DP.dtype.element_ty), mask=mc_mask)

    _store_wgrad_partials(PART, pid_m, dp, X, sx_n, sx_l, PX, offs_c, c_mask, n, yy, xx, m_mask, C, T, H, W,
                          KT, KH, KW, ACC)


@triton.jit
def _prefix_act_kernel(
    X, sx_n, sx_l,              # conv input tokens [N, L, C]
    DZ, sdz_n, sdz_l,           # grad of the output (read iff BWD)
    Y, sy_n, sy_l,              # out: act(X) (forward) or DZ * act'(X) (BWD), prefix rows only
    NP, C, P,                   # NP = N * P prefix rows
    ACT: tl.constexpr, BWD: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Prefix rows that take the activation but not the conv (mmaction2's adapter: the class token skips
    the conv and its bias)."""
    valid, n, l = _prefix_coords(tl.program_id(0), NP, P, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = valid[:, None] & (offs_c < C)[None, :]
    v = tl.load(X + (n.to(tl.int64) * sx_n + l * sx_l)[:, None] + offs_c[None, :], mask=mask, other=0.0).to(ACC)
    if BWD:
        out = tl.load(DZ + (n.to(tl.int64) * sdz_n + l * sdz_l)[:, None] + offs_c[None, :], mask=mask,
                      other=0.0).to(ACC)
        if ACT != 0:
            out = out * _act_grad(v, ACT)
    else:
        out = v
        if ACT != 0:
            out = _act_fwd(v, ACT)
    tl.store(Y + (n.to(tl.int64) * sy_n + l * sy_l)[:, None] + offs_c[None, :], out.to(Y.dtype.element_ty),
             mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

_TL_ACC = {torch.float64: tl.float64}


def _acc_dtype(dtype: torch.dtype):
    return _TL_ACC.get(dtype, tl.float32)


class TunedKernel:
    """A ``@triton.jit`` kernel with its launch configurations.

    On a GPU, launches go through ``triton.autotune`` over ``space`` (a small list of dicts of block
    sizes and ``num_warps``), timed once per ``key`` (shape class + constexpr variant + dtypes).
    Under the interpreter (which cannot time, and pays ~7 ms per program) there is one config,
    ``interp(**shape)``, with big tiles. ``config=`` (a dict) or the ``forced`` attribute forces one
    config, so tests can run every GPU config through the interpreter."""

    def __init__(self, kernel, space: list[dict], key: list[str], interp, defaults: dict | None = None):
        self.kernel = kernel
        self.defaults = defaults or {}
        space = [dict(self.defaults, **d) for d in space]
        self.space = space
        self.interp = interp
        #: a config every launch uses (tests set it to force small tiles); None: tune / interp.
        self.forced: dict | None = None
        # The Autotuner keeps per-call state (the args, best_config): one launch at a time per kernel,
        # so the config read back is the one that ran even with one backward thread per GPU.
        self._lock = threading.Lock()
        self.tuned = None
        if not INTERPRET:
            cfgs = [triton.Config({k: v for k, v in d.items() if not k.startswith("num_")},
                                  num_warps=d.get("num_warps", 4), num_stages=d.get("num_stages", 3))
                    for d in space]
            self.tuned = triton.autotune(configs=cfgs, key=key)(kernel)

    def _pick(self, shape: dict, config: dict | None) -> dict | None:
        if config is None:
            config = self.forced
        if config is None and INTERPRET:
            config = self.interp(**shape)
        return None if config is None else dict(self.defaults, **config)

    def launch(self, grid, args: tuple, consts: dict, shape: dict, config: dict | None = None) -> dict:
        """Launch with ``grid(meta)``; returns the meta-parameters that ran (the tuner's pick on GPU)."""
        config = self._pick(shape, config)
        if config is not None:
            self.kernel[grid(config)](*args, **consts, **config)
            return config
        with self._lock:
            self.tuned[grid](*args, **consts)
            best = getattr(self.tuned, "best_config", None)
        if best is None:  # every Triton 3.x Autotuner sets it; refuse to guess
            raise RuntimeError("triton.autotune did not report its chosen config (best_config)")
        return dict(best.kwargs, num_warps=best.num_warps)

    def max_programs(self, programs, shape: dict, config: dict | None = None) -> int:
        """The most programs ``programs(meta)`` over every config that may run (to size per-program
        outputs before the tuner picks)."""
        config = self._pick(shape, config)
        return max(programs(d) for d in ([config] if config is not None else self.space))


def _conv_interp(C: int) -> dict:
    return dict(BLOCK_M=256, BLOCK_C=min(triton.next_power_of_2(C), 512), num_warps=4)


#: Meta-parameters a config may leave out.
DEFAULTS = dict(GROUP_S=0)
#: GPU configs of the two conv kernels (bandwidth-bound: tile shape, token order and warps). No
#: BLOCK_M below 64: the backward's partial-sum buffer is (taps + 1) * 4 / BLOCK_M bytes per token and
#: channel (for (3,3,3) at BLOCK_M=64 already 0.9x the size of a bf16 h).
CONV_SPACE = [
    dict(BLOCK_M=64, BLOCK_C=128, GROUP_S=0, num_warps=4),
    dict(BLOCK_M=64, BLOCK_C=32, GROUP_S=0, num_warps=2),
    dict(BLOCK_M=128, BLOCK_C=64, GROUP_S=0, num_warps=4),
    dict(BLOCK_M=128, BLOCK_C=128, GROUP_S=0, num_warps=8),
    dict(BLOCK_M=256, BLOCK_C=64, GROUP_S=0, num_warps=8),
    dict(BLOCK_M=64, BLOCK_C=64, GROUP_S=0, num_warps=2),
    dict(BLOCK_M=64, BLOCK_C=128, GROUP_S=8, num_warps=4),    # T-major: 8 frames x 8 positions
    dict(BLOCK_M=128, BLOCK_C=64, GROUP_S=16, num_warps=4),
]
_CONV_KEY = ["C", "T", "H", "W", "KT", "KH", "KW", "ACT"]
conv_fwd_kernel = TunedKernel(_dwconv_tokens_kernel, CONV_SPACE, _CONV_KEY + ["FLIP", "HAS_BIAS"], _conv_interp,
                              DEFAULTS)
conv_bwd_kernel = TunedKernel(_dwconv_tokens_bwd_kernel, CONV_SPACE, _CONV_KEY + ["HAS_BIAS"], _conv_interp, DEFAULTS)


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (e.g. cuda:1)."""
    import contextlib

    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _check_token_tensor(t: torch.Tensor) -> None:
    if t.stride(2) != 1:
        raise ValueError(f"token tensor must have unit channel stride, got strides {tuple(t.stride())}")


def _check_clips(N: int, T: int) -> None:
    if T < 1 or N % T != 0:
        raise ValueError(f"token tensors hold N = {N} frames, expected a multiple of T = {T} (whole clips)")


def dwconv_tokens_fwd(h: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None,
                      out: torch.Tensor, T: int, H: int, W: int, p_in: int, p_out: int,
                      kernel_size: tuple[int, int, int], act: int, flip: bool = False,
                      config: dict | None = None) -> torch.Tensor:
    """Write ``act(conv(h) + bias)`` for the patch rows of ``out`` (rows ``p_out..``).

    ``h``: [N, L_in, C] (patch rows from ``p_in``), ``w2d``: [C, kt*kh*kw] contiguous,
    ``out``: [N, L_out, C]. Prefix rows of ``out`` are not touched. ``flip`` gives the transposed conv.
    ``config``: force one launch config (see :class:`TunedKernel`); default: autotuned on GPU.
    """
    _check_token_tensor(h)
    _check_token_tensor(out)
    N, _, C = h.shape
    _check_clips(N, T)
    M = N * H * W
    if M == 0:
        return out
    kt, kh, kw = kernel_size
    with _on_device(h):
        conv_fwd_kernel.launch(
            lambda meta: (token_programs(M, H * W, meta), triton.cdiv(C, meta["BLOCK_C"])),
            (h, h.stride(0), h.stride(1), p_in,
             out, out.stride(0), out.stride(1), p_out,
             w2d, bias if bias is not None else w2d,
             M, C, T, H, W),
            dict(KT=kt, KH=kh, KW=kw, FLIP=flip, HAS_BIAS=bias is not None, ACT=act, ACC=_acc_dtype(h.dtype)),
            dict(C=C), config)
    return out


#: Launch config of the prefix-row kernel (N * P rows: a few per frame, so one config, not tuned).
PREFIX_CONFIG = dict(BLOCK_M=64, BLOCK_C=128, num_warps=4)


def prefix_act_rows(h: torch.Tensor, out: torch.Tensor, P: int, act: int,
                    dz: torch.Tensor | None = None) -> torch.Tensor:
    """Write ``act(h)`` (or, given ``dz``, ``dz * act'(h)``) into the ``P`` prefix rows of ``out``.

    ``h``, ``out`` (and ``dz``): [N, L, C] token tensors with unit channel stride."""
    for t in (h, out) + ((dz,) if dz is not None else ()):
        _check_token_tensor(t)
    N, _, C = h.shape
    NP = N * P
    if NP == 0:
        return out
    cfg = dict(PREFIX_CONFIG, BLOCK_C=min(PREFIX_CONFIG["BLOCK_C"], triton.next_power_of_2(C)))
    if INTERPRET:  # ~7 ms per program: few, big tiles
        cfg = dict(cfg, BLOCK_M=max(64, triton.next_power_of_2(min(NP, 1024))), BLOCK_C=triton.next_power_of_2(C))
    d = dz if dz is not None else h
    with _on_device(h):
        _prefix_act_kernel[(triton.cdiv(NP, cfg["BLOCK_M"]), triton.cdiv(C, cfg["BLOCK_C"]))](
            h, h.stride(0), h.stride(1), d, d.stride(0), d.stride(1), out, out.stride(0), out.stride(1),
            NP, C, P, ACT=act, BWD=dz is not None, ACC=_acc_dtype(h.dtype), **cfg)
    return out


def dwconv_tokens_bwd(dz: torch.Tensor, h: torch.Tensor, w2d: torch.Tensor,
                      bias: torch.Tensor | None, T: int, H: int, W: int, p: int,
                      kernel_size: tuple[int, int, int], act: int, config: dict | None = None,
                      flip_config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``z = act(conv(h) + bias)`` given ``dz`` (same layout as z, prefix rows ignored).
    ``config`` / ``flip_config``: force the configs of the backward and transposed-conv kernels.

    Returns ``(dh, dw2d, dbias)``: ``dh`` shaped like ``h`` (contiguous, prefix rows zero),
    ``dw2d`` [C, taps] and ``dbias`` [C] in the accumulation dtype (fp32, or fp64 for fp64 input).
    """
    _check_token_tensor(h)
    _check_token_tensor(dz)
    N, L, C = h.shape
    _check_clips(N, T)
    M = N * H * W
    kt, kh, kw = kernel_size
    taps = kt * kh * kw
    acc_t = torch.float64 if h.dtype == torch.float64 else torch.float32
    dh = torch.empty((N, L, C), dtype=h.dtype, device=h.device)
    dh[:, :p].zero_()
    if M == 0:
        z = torch.zeros((C, taps), dtype=acc_t, device=h.device)
        return dh, z, z[:, 0].clone()
    shape = dict(C=C)
    programs = lambda meta: token_programs(M, H * W, meta)  # noqa: E731
    part = torch.empty((conv_bwd_kernel.max_programs(programs, shape, config), taps + 1, C),
                       dtype=acc_t, device=h.device)
    store_dpre = act != 0
    dpre = torch.empty((M, C), dtype=h.dtype, device=h.device) if store_dpre else part
    with _on_device(h):
        ran = conv_bwd_kernel.launch(
            lambda meta: (programs(meta), triton.cdiv(C, meta["BLOCK_C"])),
            (h, h.stride(0), h.stride(1), p,
             dz, dz.stride(0), dz.stride(1), p,
             dpre,
             w2d, bias if bias is not None else w2d,
             part,
             M, C, T, H, W),
            dict(KT=kt, KH=kh, KW=kw, HAS_BIAS=bias is not None, ACT=act, STORE_DPRE=store_dpre,
                 ACC=_acc_dtype(h.dtype)),
            shape, config)
    sums = part[:programs(ran)].sum(dim=0)  # the rows this launch wrote, in a fixed order: deterministic
    # grad of the input: transposed conv of dpre (or of dz itself when there is no activation).
    if store_dpre:
        src, src_p = dpre.view(N, H * W, C), 0
    else:
        src, src_p = dz, p
    dwconv_tokens_fwd(src, w2d, None, dh, T, H, W, src_p, p, kernel_size, 0, flip=True, config=flip_config)
    return dh, sums[:taps].t(), sums[taps]

