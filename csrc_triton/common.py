"""What the kernel modules share: the activation helpers, the token-layout index math, the depthwise
conv tile and its weight-gradient partials (``@triton.jit`` helpers), and on the host side the tuned
launcher, the launch checks and the accumulation dtype. Each op module (``dwconv_tokens``,
``adapter_onepass``) keeps only its kernels and their launchers.

Token layout: a token tensor ``t[n, l, c]`` has ``n = b * T + t`` (frames of a clip consecutive) and
``l = prefix + y * W + x`` (``prefix`` class/register rows, then a row-major ``H x W`` patch grid);
only the channel stride must be 1.
"""
from __future__ import annotations

import contextlib
import os
import threading

import torch
import triton
import triton.language as tl

from .dtypes import acc_dtype

#: Whether the kernels were decorated under Triton's CPU interpreter (Triton reads TRITON_INTERPRET
#: once, when a kernel is decorated).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------------------------
# Activations. One branch per code of csrc_triton.activations.ACTIVATIONS; an unknown code fails to
# compile (tl.static_assert) instead of silently computing another activation.
# ----------------------------------------------------------------------------------------------

@triton.jit
def act_fwd(x, ACT: tl.constexpr):
    """act(x), elementwise."""
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
def act_grad(x, ACT: tl.constexpr):
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


# ----------------------------------------------------------------------------------------------
# Token-layout index math
# ----------------------------------------------------------------------------------------------

@triton.jit
def token_coords(pid_m, M, T, H, W, BLOCK_M: tl.constexpr, GROUP_S: tl.constexpr):
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
def prefix_coords(pid_m, NP, num_prefix, BLOCK_M: tl.constexpr):
    """The prefix (class/register) rows of row-tile ``pid_m``, for ops whose prefix rows go through the
    adapter without the conv: ``(valid, n, l)`` with ``q = n * num_prefix + l < NP = N * num_prefix``
    (frame ``n``, token ``l < num_prefix``)."""
    q = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    return q < NP, q // num_prefix, q % num_prefix


@triton.jit
def tile_coords(M, C, T, H, W, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_S: tl.constexpr):
    """This program's tokens (see ``token_coords``) and channels: (pid_m, m, channel offsets,
    token mask, channel mask, n, s, y, x)."""
    pid_m = tl.program_id(0)
    m, m_mask, n, s, yy, xx = token_coords(pid_m, M, T, H, W, BLOCK_M, GROUP_S)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid_m, m, offs_c, m_mask, offs_c < C, n, s, yy, xx


def token_programs(M: int, HW: int, meta: dict) -> int:
    """Programs along the token axis for a launch with meta-parameters ``meta`` (see ``token_coords``;
    the launchers check that the frames form whole clips, which the T-major order relies on)."""
    g = meta.get("GROUP_S", 0)
    rows = M if g == 0 else (M // HW) * triton.cdiv(HW, g) * g
    return triton.cdiv(rows, meta["BLOCK_M"])


# ----------------------------------------------------------------------------------------------
# The depthwise conv tile and its weight-gradient partials
# ----------------------------------------------------------------------------------------------

@triton.jit
def tap_tile(X, sx_n, sx_l, x_prefix, offs_c, c_mask, n, yy, xx, m_mask, T, H, W, tap,
             KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, FLIP: tl.constexpr, ACC: tl.constexpr):
    """Input tile feeding conv tap ``tap`` (0 outside the zero-padded volume) for a block of tokens;
    ``X``'s first ``x_prefix`` rows of each frame are not part of the grid."""
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
    row = (n + dt).to(tl.int64) * sx_n + (x_prefix + y * W + x).to(tl.int64) * sx_l
    v = tl.load(X + row[:, None] + offs_c[None, :], mask=ok[:, None] & c_mask[None, :], other=0.0)
    return v.to(ACC)


@triton.jit
def conv_tile(X, sx_n, sx_l, x_prefix, Wt, Bias, offs_c, c_mask, n, yy, xx, m_mask, T, H, W,
              KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, FLIP: tl.constexpr,
              HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """conv(X) (+ bias) for a [BLOCK_M tokens, BLOCK_C channels] tile; FLIP: the transposed conv.
    A runtime loop over taps (not unrolled): (3,3,3) would otherwise bloat code and compile time."""
    KTAPS: tl.constexpr = KT * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for tap in range(KTAPS):
        v = tap_tile(X, sx_n, sx_l, x_prefix, offs_c, c_mask, n, yy, xx, m_mask, T, H, W, tap, KT, KH, KW, FLIP, ACC)
        w = tl.load(Wt + offs_c * KTAPS + tap, mask=c_mask, other=0.0).to(ACC)
        acc += v * w[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + offs_c, mask=c_mask, other=0.0).to(ACC)[None, :]
    return acc


@triton.jit
def store_wgrad_partials(PART, pid_m, dp, X, sx_n, sx_l, x_prefix, offs_c, c_mask, n, yy, xx, m_mask, C, T, H, W,
                         KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr):
    """This tile's share of the depthwise weight and bias gradients, ``PART[pid_m, tap, c] =
    sum_m dp[m, c] * X[m + off(tap), c]`` and ``PART[pid_m, taps, c] = sum_m dp[m, c]`` (``dp`` is 0
    outside the tile's valid rows and channels)."""
    KTAPS: tl.constexpr = KT * KH * KW
    part = PART + pid_m.to(tl.int64) * (KTAPS + 1) * C + offs_c
    for tap in range(KTAPS):
        v = tap_tile(X, sx_n, sx_l, x_prefix, offs_c, c_mask, n, yy, xx, m_mask, T, H, W, tap,
                     KT, KH, KW, False, ACC)
        tl.store(part + tap * C, tl.sum(dp * v, axis=0), mask=c_mask)
    tl.store(part + KTAPS * C, tl.sum(dp, axis=0), mask=c_mask)


# ----------------------------------------------------------------------------------------------
# Host side: launch arguments, checks, the tuned launcher
# ----------------------------------------------------------------------------------------------

_TL_DTYPES = {torch.float64: tl.float64, torch.float32: tl.float32}


def tl_acc_dtype(dtype: torch.dtype):
    """The ``ACC`` constexpr for tensors of ``dtype`` (see :func:`csrc_triton.dtypes.acc_dtype`)."""
    return _TL_DTYPES[acc_dtype(dtype)]


def token_args(**tensors) -> dict:
    """Keyword arguments for token-tensor pointers: ``NAME=t, sname_n=t.stride(0), sname_l=t.stride(1)``
    for each ``NAME=t`` (``name`` lower-cased). A ``None`` tensor is passed as ``None`` (the kernel reads
    it only under a constexpr flag the launcher sets from the same ``is None``) with zero strides."""
    out = {}
    for name, t in tensors.items():
        s = name.lower()
        out[name] = t
        out[f"s{s}_n"], out[f"s{s}_l"] = (t.stride(0), t.stride(1)) if t is not None else (0, 0)
    return out


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (e.g. cuda:1)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def check_token_tensor(t: torch.Tensor) -> None:
    """Kernels index channels with unit stride; token and frame strides are free."""
    if t.stride(2) != 1:
        raise ValueError(f"token tensor must have unit channel stride, got strides {tuple(t.stride())}")


def check_clips(N: int, T: int) -> None:
    """The T-major token order walks whole clips: ``N`` frames must be a multiple of ``T``."""
    if T < 1 or N % T != 0:
        raise ValueError(f"token tensors hold N = {N} frames, expected a multiple of T = {T} (whole clips)")


#: Meta-parameters a config may leave out.
DEFAULTS = dict(GROUP_S=0)


def config_space(columns: str, *rows: tuple) -> list[dict]:
    """A tuning space written as a table: ``columns`` names the meta-parameters (space-separated), each
    row is one config."""
    names = columns.split()
    if any(len(r) != len(names) for r in rows):
        raise ValueError(f"every row of a tuning space needs {len(names)} values ({columns})")
    return [dict(zip(names, r)) for r in rows]


#: How the autotuner times one config (``triton.testing.do_bench``): warm-up and repeat time, in ms.
#: Triton's defaults (25, 100) cost ~0.15 s a config, ~1.2 s a key. The kernels here take 20-500 us a
#: launch, so 25 ms of repeats still gives the median 50-1000 samples, at about a quarter of the cost
#: (benchmarks/NOTES.md, 17).
TUNE_WARMUP_MS, TUNE_REP_MS = 5, 25


def tune_bench(kernel_call, quantiles):
    """The autotuner's timing function (``triton.autotune(do_bench=...)``)."""
    import triton.testing

    return triton.testing.do_bench(kernel_call, warmup=TUNE_WARMUP_MS, rep=TUNE_REP_MS, quantiles=quantiles)


_TUNED_KERNELS: list = []


def tuned_kernels() -> list:
    """Every :class:`TunedKernel` of the kernel modules (``dwconv_tokens``, ``adapter_onepass``), which
    this imports: for tools that read or force the tuner's state (the first-step report, the tests)."""
    from . import adapter_onepass, dwconv_tokens  # noqa: F401  (their kernels register on import)

    return list(_TUNED_KERNELS)


class TunedKernel:
    """A ``@triton.jit`` kernel with its launch configurations.

    On a GPU, launches go through ``triton.autotune`` over ``space`` (a small list of dicts of block
    sizes and ``num_warps``), timed (``tune_bench``) once per ``key`` (shape class + constexpr variant
    + dtypes).
    Under the interpreter (which cannot time, and pays ~7 ms per program) there is one config,
    ``interp(**shape)``, with big tiles. ``config=`` (a dict) or the ``forced`` attribute forces one
    config, so tests can run every GPU config through the interpreter. Every instance is listed by
    :func:`tuned_kernels`."""

    def __init__(self, kernel, space: list[dict], key: list[str], interp, defaults: dict | None = None):
        self.kernel = kernel
        self.name = getattr(kernel, "__name__", repr(kernel))
        self.defaults = DEFAULTS if defaults is None else defaults
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
            self.tuned = triton.autotune(configs=cfgs, key=key, do_bench=tune_bench)(kernel)
        _TUNED_KERNELS.append(self)

    def _pick(self, shape: dict, config: dict | None) -> dict | None:
        if config is None:
            config = self.forced
        if config is None and INTERPRET:
            config = self.interp(**shape)
        return None if config is None else dict(self.defaults, **config)

    def launch(self, grid, kwargs: dict, shape: dict, config: dict | None = None) -> dict:
        """Launch by keyword (``kwargs``: every runtime argument and constexpr but the tuned
        meta-parameters) with ``grid(meta)``; returns the meta-parameters that ran (the tuner's pick on
        GPU)."""
        config = self._pick(shape, config)
        if config is not None:
            self.kernel[grid(config)](**kwargs, **config)
            return config
        with self._lock:
            self.tuned[grid](**kwargs)
            best = getattr(self.tuned, "best_config", None)
        if best is None:  # every Triton 3.x Autotuner sets it; refuse to guess
            raise RuntimeError("triton.autotune did not report its chosen config (best_config)")
        return dict(best.kwargs, num_warps=best.num_warps)

    def max_programs(self, programs, shape: dict, config: dict | None = None) -> int:
        """The most programs ``programs(meta)`` over every config that may run (to size per-program
        outputs before the tuner picks)."""
        config = self._pick(shape, config)
        return max(programs(d) for d in ([config] if config is not None else self.space))
