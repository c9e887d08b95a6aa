"""``st_adapter_conv``: depthwise 3D conv + bias + activation on the ViT token layout.

Autograd and dispatch live here; kernels live in ``csrc_triton.dwconv_tokens``. The op is registered
with ``torch.library`` (forward and backward as custom ops) so ``torch.compile(fullgraph=True)`` sees
it as one opaque node with a known output shape.

Output convention: the output has ``h``'s shape ``[B*T, L, Ca]`` (contiguous); its ``P`` prefix rows
are zero. A following linear over all ``L`` rows therefore maps prefix rows to its bias only, and its
weight gradient picks up nothing from them.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

# activation name -> code of the Triton kernels: the one table (plain Python, imports no Triton)
from csrc_triton.activations import ACTIVATIONS
# the accumulation dtype rule the kernels use (plain PyTorch, imports no Triton)
from csrc_triton.dtypes import acc_dtype

from .._backend import resolve_backend, triton_kernels
from ..checks import check_frames

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# Activations (PyTorch path and the reference module use these)
# ----------------------------------------------------------------------------------------------

def act_fwd(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "none":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "gelu":
        return F.gelu(x)
    if act == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if act == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if act == "silu":
        return F.silu(x)
    raise ValueError(f"act must be one of {tuple(ACTIVATIONS)} or None, got {act!r}")


def act_grad(x: torch.Tensor, act: str) -> torch.Tensor:
    """Elementwise derivative of ``act_fwd(x, act)`` (act != "none")."""
    if act == "relu":
        return (x > 0).to(x.dtype)
    if act == "gelu":
        return 0.5 * (1.0 + torch.erf(x * math.sqrt(0.5))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    if act == "gelu_tanh":
        th = torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * math.sqrt(2 / math.pi) * (1 + 0.134145 * x * x)
    if act == "quick_gelu":
        s = torch.sigmoid(1.702 * x)
        return s + 1.702 * x * s * (1 - s)
    if act == "silu":
        s = torch.sigmoid(x)
        return s + x * s * (1 - s)
    raise ValueError(f"no derivative for act {act!r}")


# ----------------------------------------------------------------------------------------------
# PyTorch path: works on the [B, T, H, W, C] *view* of the tokens (no permute copies)
# ----------------------------------------------------------------------------------------------

def _grid_view(t: torch.Tensor, p: int, T: int, H: int, W: int) -> torch.Tensor:
    """[N, L, C] tokens -> [B, T, H, W, C] view of the patch rows (a view: no copy)."""
    N, _, C = t.shape
    return t[:, p:, :].view(N // T, T, H, W, C)


def _shift(size: int, d: int) -> tuple[slice, slice]:
    """Output and input slices along one axis for a tap at offset ``d`` with zero padding."""
    return slice(max(0, -d), min(size, size - d)), slice(max(0, d), min(size, size + d))


def _taps(kernel_size: Sequence[int]):
    kt, kh, kw = kernel_size
    for it in range(kt):
        for iy in range(kh):
            for ix in range(kw):
                yield (it * kh + iy) * kw + ix, (it - kt // 2, iy - kh // 2, ix - kw // 2)


def _conv_accumulate(out5: torch.Tensor, src5: torch.Tensor, w2d: torch.Tensor,
                     kernel_size: Sequence[int], flip: bool) -> None:
    """``out5 += conv(src5)`` (``flip``: transposed conv), all [B, T, H, W, C]."""
    _, T, H, W, _ = out5.shape
    for tap, (dt, dy, dx) in _taps(kernel_size):
        if flip:
            dt, dy, dx = -dt, -dy, -dx
        (ot, it), (oy, iy), (ox, ix) = _shift(T, dt), _shift(H, dy), _shift(W, dx)
        out5[:, ot, oy, ox].addcmul_(src5[:, it, iy, ix], w2d[:, tap])


def _torch_pre(h5: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """conv(h) + bias as a [B, T, H, W, C] tensor: ``F.conv3d`` on the channels-last *view* of the
    tokens (no permute copy; measured on CPU 3-17x faster than the reference's contiguous route)."""
    pad = tuple(k // 2 for k in weight.shape[2:])
    b = None if bias is None else bias.to(h5.dtype)
    z = F.conv3d(h5.permute(0, 4, 1, 2, 3), weight.to(h5.dtype), b, padding=pad, groups=h5.shape[-1])
    return z.permute(0, 2, 3, 4, 1)


def _prefix_rows_fwd(h: torch.Tensor, out: torch.Tensor, P: int, act: str, through: bool) -> None:
    """``out``'s prefix rows: ``act(h)`` (``through``: the conv is skipped, the activation is not) or 0."""
    if through:
        out[:, :P] = act_fwd(h[:, :P].to(acc_dtype(h.dtype)), act)
    else:
        out[:, :P].zero_()


def _prefix_rows_bwd(dz: torch.Tensor, h: torch.Tensor, dh: torch.Tensor, P: int, act: str, through: bool) -> None:
    """``dh``'s prefix rows: ``dz * act'(h)`` (``through``) or 0."""
    if through:
        d = dz[:, :P].to(acc_dtype(h.dtype))
        dh[:, :P] = d if act == "none" else d * act_grad(h[:, :P].to(d.dtype), act)
    else:
        dh[:, :P].zero_()


def _torch_fwd(h, weight, bias, T, H, W, P, act, through=False):
    N, L, C = h.shape
    h5 = _grid_view(h, P, T, H, W).to(acc_dtype(h.dtype))
    out = torch.empty((N, L, C), dtype=h.dtype, device=h.device)
    _prefix_rows_fwd(h, out, P, act, through)
    _grid_view(out, P, T, H, W).copy_(act_fwd(_torch_pre(h5, weight, bias), act))
    return out


def _torch_bwd(dz, h, weight, bias, T, H, W, P, act, through=False):
    N, L, C = h.shape
    acc_t = acc_dtype(h.dtype)
    kernel_size = tuple(weight.shape[2:])
    h5 = _grid_view(h, P, T, H, W).to(acc_t)
    dp5 = _grid_view(dz, P, T, H, W).to(acc_t)
    if act != "none":
        dp5 = dp5 * act_grad(_torch_pre(h5, weight, bias), act)
    dh = torch.empty((N, L, C), dtype=h.dtype, device=h.device)
    _prefix_rows_bwd(dz, h, dh, P, act, through)
    w = weight.to(acc_t)
    if kernel_size[1] * kernel_size[2] > 1:
        # spatial kernels: ATen's convolution backward on the channels-last views (fewer passes than
        # one multiply-add per tap)
        pad = [k // 2 for k in kernel_size]
        dh5, dw, db = torch.ops.aten.convolution_backward(
            dp5.permute(0, 4, 1, 2, 3), h5.permute(0, 4, 1, 2, 3), w, [C], [1, 1, 1], pad, [1, 1, 1],
            False, [0, 0, 0], C, [True, True, True])
        _grid_view(dh, P, T, H, W).copy_(dh5.permute(0, 2, 3, 4, 1))
        return dh, dw.reshape(C, -1), db
    # temporal kernels (kt, 1, 1): shifted multiply-adds, one pass per tap
    w2d = w.reshape(C, -1)
    dims = (0, 1, 2, 3)
    db = dp5.sum(dims)
    dw = torch.empty_like(w2d)
    for tap, (dt, dy, dx) in _taps(kernel_size):
        (ot, it), (oy, iy), (ox, ix) = _shift(T, dt), _shift(H, dy), _shift(W, dx)
        dw[:, tap] = (dp5[:, ot, oy, ox] * h5[:, it, iy, ix]).sum(dims)
    dh5 = torch.zeros_like(h5)
    _conv_accumulate(dh5, dp5, w2d, kernel_size, flip=True)
    _grid_view(dh, P, T, H, W).copy_(dh5)
    return dh, dw, db


# ----------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------

def unit_channel_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if its channel (last) stride is 1 (what the kernels index), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _triton_fwd(h, weight, bias, T, H, W, P, act, through=False):
    kernels = triton_kernels("dwconv_tokens")
    N, L, C = h.shape
    h = unit_channel_stride(h)
    out = torch.empty((N, L, C), dtype=h.dtype, device=h.device)
    if through:
        kernels.prefix_act_rows(h, out, P, ACTIVATIONS[act])
    else:
        out[:, :P].zero_()
    kernels.dwconv_tokens_fwd(h, weight.reshape(C, -1).contiguous(), bias, out, T, H, W, P, P,
                        tuple(weight.shape[2:]), ACTIVATIONS[act])
    return out


def _triton_bwd(dz, h, weight, bias, T, H, W, P, act, through=False):
    kernels = triton_kernels("dwconv_tokens")
    C = h.shape[2]
    dz, h = unit_channel_stride(dz), unit_channel_stride(h)
    dh, dw, db = kernels.dwconv_tokens_bwd(dz, h, weight.reshape(C, -1).contiguous(), bias, T, H, W, P,
                                           tuple(weight.shape[2:]), ACTIVATIONS[act], zero_prefix=not through)
    if through:
        kernels.prefix_act_rows(h, dh, P, ACTIVATIONS[act], dz=dz)
    return dh, dw, db


class ConvImpl(NamedTuple):
    """One backend's conv: ``fwd(h, weight, bias, T, H, W, P, act, through) -> out`` and
    ``bwd(dz, h, weight, bias, T, H, W, P, act, through) -> (dh, dw, db)``."""
    fwd: Callable
    bwd: Callable


#: backend name -> its conv implementation (the one-pass op's PyTorch path reuses the "torch" one)
CONV_IMPLS = {"torch": ConvImpl(_torch_fwd, _torch_bwd), "triton": ConvImpl(_triton_fwd, _triton_bwd)}


# ----------------------------------------------------------------------------------------------
# Custom ops + autograd
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("stadapter_fast::st_adapter_conv", mutates_args=())
def _conv_op(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], T: int, H: int,
             W: int, P: int, act: str, backend: str, through: bool = False) -> torch.Tensor:
    return CONV_IMPLS[backend].fwd(h, weight, bias, T, H, W, P, act, through)


@_conv_op.register_fake
def _(h, weight, bias, T, H, W, P, act, backend, through=False):
    return h.new_empty(h.shape)


@torch.library.custom_op("stadapter_fast::st_adapter_conv_backward", mutates_args=())
def _conv_bwd_op(dz: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor], T: int, H: int, W: int, P: int, act: str,
                 backend: str, through: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dh, dw, db = CONV_IMPLS[backend].bwd(dz, h, weight, bias, T, H, W, P, act, through)
    b_dtype = bias.dtype if bias is not None else weight.dtype
    # dw and db may be (transposed) views of one partial-sum buffer: copy them (tiny) into fresh
    # contiguous tensors, so outputs never alias and match the fake kernel's strides.
    cf = torch.contiguous_format
    return (dh, dw.reshape(weight.shape).to(weight.dtype, memory_format=cf, copy=True),
            db.to(b_dtype, memory_format=cf, copy=True))


@_conv_bwd_op.register_fake
def _(dz, h, weight, bias, T, H, W, P, act, backend, through=False):
    b_dtype = bias.dtype if bias is not None else weight.dtype
    return h.new_empty(h.shape), weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],), dtype=b_dtype)


def _setup_context(ctx, inputs, output):
    h, weight, bias, T, H, W, P, act, backend, through = inputs
    ctx.save_for_backward(h, weight, bias)
    ctx.args = (T, H, W, P, act, backend, through)


def _backward(ctx, dz):
    h, weight, bias = ctx.saved_tensors
    dh, dw, db = _conv_bwd_op(dz, h, weight, bias, *ctx.args)
    grads = (dh, dw, (db if bias is not None else None), None, None, None, None, None, None, None)
    return grads[:len(ctx.needs_input_grad)]  # trailing arguments left at their defaults are not inputs


_conv_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public functional API
# ----------------------------------------------------------------------------------------------

def resolve_grid(L: int, num_prefix_tokens: int, grid_size: Optional[Sequence[int]]) -> tuple[int, int]:
    """(H, W) of the patch grid of ``L`` tokens with ``num_prefix_tokens`` prefix tokens."""
    check_num_prefix_tokens(num_prefix_tokens)
    n = L - num_prefix_tokens
    if n <= 0:
        raise ValueError(f"token count L={L} leaves no patch tokens after num_prefix_tokens={num_prefix_tokens}")
    if grid_size is None:
        side = int(n ** 0.5 + 0.5)  # not math.isqrt: this also traces with symbolic L (dynamic=True)
        if side * side != n:
            raise ValueError(f"L - num_prefix_tokens = {L} - {num_prefix_tokens} = {n} is not a square "
                             f"grid; pass grid_size=(H, W) for non-square grids")
        return side, side
    H, W = check_grid_size(grid_size)
    if H * W != n:
        raise ValueError(f"grid_size={tuple(grid_size)} holds H*W={H * W} tokens, but L - num_prefix_tokens = "
                         f"{L} - {num_prefix_tokens} = {n}")
    return H, W


def check_grid_size(grid_size: Sequence[int]) -> tuple[int, int]:
    """Validate an explicit ``(H, W)`` patch grid."""
    if (not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2
            or any(isinstance(g, bool) or not isinstance(g, int) or g <= 0 for g in grid_size)):
        raise ValueError(f"grid_size must be None or two positive ints (H, W), got {grid_size!r}")
    return int(grid_size[0]), int(grid_size[1])


def check_num_prefix_tokens(num_prefix_tokens: int) -> int:
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
    return num_prefix_tokens


def normalize_act(act: Optional[str]) -> str:
    act = "none" if act is None else act
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {tuple(ACTIVATIONS)} or None, got {act!r}")
    return act


def check_kernel_size(kernel_size: Sequence[int]) -> tuple[int, int, int]:
    ks = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 3
    if len(ks) != 3 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in ks):
        raise ValueError(f"kernel_size must be three odd positive ints (kt, kh, kw), got {kernel_size!r}")
    return ks


def check_conv_args(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], T: int) -> None:
    """Validate the conv op's tensors and ``T`` (shapes, dtypes, devices); ``ValueError`` naming the
    argument otherwise."""
    if not isinstance(h, torch.Tensor) or h.dim() != 3:
        raise ValueError(f"h must be a tensor of shape [B*T, L, C], got "
                         f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
    if h.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"h must have dtype in {SUPPORTED_DTYPES}, got {h.dtype}")
    N, L, C = h.shape
    check_frames(T, N, "h.shape[0] = B*T")
    if weight.dim() != 5 or weight.shape[0] != C or weight.shape[1] != 1:
        raise ValueError(f"weight must have shape [C, 1, kt, kh, kw] with C = h.shape[2] = {C}, "
                         f"got {tuple(weight.shape)}")
    check_kernel_size(tuple(weight.shape[2:]))
    if not weight.dtype.is_floating_point:
        raise ValueError(f"weight must be floating point, got {weight.dtype}")
    if weight.device != h.device:
        raise ValueError(f"weight is on {weight.device} but h is on {h.device}")
    if bias is not None:
        if bias.shape != (C,):
            raise ValueError(f"bias must have shape [{C}], got {tuple(bias.shape)}")
        if not bias.dtype.is_floating_point:
            raise ValueError(f"bias must be floating point, got {bias.dtype}")
        if bias.device != h.device:
            raise ValueError(f"bias is on {bias.device} but h is on {h.device}")


#: How an adapter treats the prefix (class/register) tokens: "skip" (the official release: they pass
#: through the adapter unchanged) or "no_conv" (mmaction2's adapter: they take fc1, the activation, fc2
#: and the residual, and skip only the conv and its bias).
PREFIX_MODES = ("skip", "no_conv")


def check_prefix_mode(prefix_mode: str) -> bool:
    """Validate ``prefix_mode``; returns whether prefix rows go through the adapter ("no_conv")."""
    if prefix_mode not in PREFIX_MODES:
        raise ValueError(f"prefix_mode must be one of {PREFIX_MODES}, got {prefix_mode!r}")
    return prefix_mode == "no_conv"


def st_adapter_conv(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], T: int,
                    grid_size: Optional[Sequence[int]] = None, num_prefix_tokens: int = 1,
                    act: Optional[str] = None, backend: str = "auto", prefix_mode: str = "skip") -> torch.Tensor:
    """Depthwise 3D conv + bias + activation over the patch tokens of ``h``, in the token layout.

    Args:
        h: ``[B*T, L, Ca]`` tokens (frames of a clip consecutive along dim 0), e.g. the output of the
            adapter's ``fc1`` over all tokens. Any token/frame strides; channel stride must be 1 (else
            a copy is made). fp16, bf16, fp32 or fp64.
        weight: ``[Ca, 1, kt, kh, kw]`` depthwise kernel (``nn.Conv3d(groups=Ca).weight``); odd sizes.
        bias: ``[Ca]`` or None. Parameters may be fp32 while ``h`` is fp16/bf16 (autocast recipe).
        T: frames per clip.
        grid_size: ``(H, W)`` of the patch grid, or None for a square grid of ``L - num_prefix_tokens``.
        num_prefix_tokens: leading tokens (class/register) that the conv skips.
        act: None/"none" (the official release) or another name in :data:`ACTIVATIONS` ("relu", "gelu", ...).
        backend: "auto" (Triton on CUDA, PyTorch on CPU), "triton" or "torch".
        prefix_mode: "skip" (prefix rows of the output are zero) or "no_conv" (they are ``act(h)``:
            no conv, no bias; mmaction2's adapter), see :data:`PREFIX_MODES`.

    Returns:
        ``[B*T, L, Ca]`` in ``h``'s dtype, contiguous; ``act(conv(h) + bias)`` at the patch rows
        (zero padding ``k // 2`` per axis, as the official ``nn.Conv3d``), zeros (or ``act(h)``) at
        the prefix rows.
    """
    check_conv_args(h, weight, bias, T)
    H, W = resolve_grid(h.shape[1], num_prefix_tokens, grid_size)
    act = normalize_act(act)
    through = check_prefix_mode(prefix_mode)
    impl = resolve_backend(backend, h.device)
    return _conv_op(h, weight, bias, T, H, W, num_prefix_tokens, act, impl, through)


def st_adapter_conv_ref(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], T: int,
                        grid_size: Optional[Sequence[int]] = None, num_prefix_tokens: int = 1,
                        act: Optional[str] = None, prefix_mode: str = "skip") -> torch.Tensor:
    """Plain-PyTorch oracle of :func:`st_adapter_conv` (the official permute + ``F.conv3d`` route)."""
    N, L, C = h.shape
    P = num_prefix_tokens
    H, W = resolve_grid(L, P, grid_size)
    x = h[:, P:, :].reshape(N // T, T, H, W, C).permute(0, 4, 1, 2, 3)
    pad = tuple(k // 2 for k in weight.shape[2:])
    z = act_fwd(F.conv3d(x, weight.to(h.dtype), None if bias is None else bias.to(h.dtype), padding=pad,
                         groups=C), normalize_act(act))
    z = z.permute(0, 2, 3, 4, 1).reshape(N, H * W, C)
    prefix = act_fwd(h[:, :P], normalize_act(act)) if check_prefix_mode(prefix_mode) else z.new_zeros(N, P, C)
    return torch.cat([prefix, z], dim=1)
