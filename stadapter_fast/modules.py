"""ST-Adapter modules: the fast drop-in and the plain-PyTorch reference (the tests' oracle).

Both hold the official release's parameters under the official names (``fc1``, ``conv``, ``fc2``)
with its zero init, so checkpoints move between them (and the official module) with ``strict=True``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._backend import BACKENDS, check_path_options, resolve_backend, resolve_path
from .checks import check_frames, check_int
from .ops.adapter_onepass import adapter_onepass
from .ops.dwconv_tokens import (act_fwd, check_conv_args, check_grid_size, check_kernel_size,
                                check_num_prefix_tokens, normalize_act, resolve_grid, st_adapter_conv)
from .ops.fc2_residual import fc2_residual


class _STAdapterBase(nn.Module):
    def __init__(self, in_channels: int, adapter_channels: int,
                 kernel_size: Sequence[int] = (3, 1, 1), act: Optional[str] = None,
                 num_prefix_tokens: int = 1, grid_size: Optional[Sequence[int]] = None,
                 backend: str = "auto") -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("adapter_channels", adapter_channels)
        kernel_size = check_kernel_size(kernel_size)
        check_num_prefix_tokens(num_prefix_tokens)
        if grid_size is not None:
            grid_size = check_grid_size(grid_size)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.act = normalize_act(act)
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = grid_size
        self.backend = backend
        self.kernel_size = kernel_size
        self.fc1 = nn.Linear(in_channels, adapter_channels)
        self.conv = nn.Conv3d(adapter_channels, adapter_channels, kernel_size=kernel_size, stride=1,
                              padding=tuple(k // 2 for k in kernel_size), groups=adapter_channels)
        self.fc2 = nn.Linear(adapter_channels, in_channels)
        # The official init: the adapter starts as the identity.
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    @property
    def in_channels(self) -> int:
        return self.fc1.in_features

    @property
    def adapter_channels(self) -> int:
        return self.fc1.out_features

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, act={self.act!r}, num_prefix_tokens={self.num_prefix_tokens}, "
                f"grid_size={self.grid_size}, backend={self.backend!r}")

    def _check_input(self, x: torch.Tensor, T: int) -> tuple[int, int]:
        return check_tokens(x, T, self.fc1.weight, self.num_prefix_tokens, self.grid_size)


def check_tokens(x: torch.Tensor, T: int, fc1_weight: torch.Tensor, num_prefix_tokens: int,
                 grid_size: Optional[Sequence[int]]) -> tuple[int, int]:
    """Validate an adapter's input ``x: [B*T, L, C]`` against its first linear layer's weight
    ([Ca, C]); returns the patch grid ``(H, W)``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a tensor of shape [B*T, L, C], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    in_channels = fc1_weight.shape[1]
    if x.shape[2] != in_channels:
        raise ValueError(f"x has {x.shape[2]} channels (x.shape[2]), expected in_channels={in_channels}")
    check_frames(T, x.shape[0], "x.shape[0] = B*T")
    if x.device != fc1_weight.device:
        raise ValueError(f"x is on {x.device} but the adapter's parameters are on {fc1_weight.device}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must be floating point, got {x.dtype}")
    if x.dtype != fc1_weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"x has dtype {x.dtype} but the adapter's parameters are {fc1_weight.dtype}; cast one "
                         f"of them or run under torch.autocast")
    return resolve_grid(x.shape[1], num_prefix_tokens, grid_size)


class FastSTAdapter(_STAdapterBase):
    """ST-Adapter ``x + fc2(act(DWConv3D(fc1(x))))`` over patch tokens, with fused kernels.

    Args:
        in_channels: token width C of the backbone (768 for ViT-B).
        adapter_channels: bottleneck width Ca (384 in the release).
        kernel_size: odd ``(kt, kh, kw)``; the release uses ``(3, 1, 1)``.
        act: None (the release: no activation) or a name in :data:`stadapter_fast.ACTIVATIONS` ("relu", "gelu", ...).
        num_prefix_tokens: leading class/register tokens, passed through unchanged.
        grid_size: ``(H, W)`` patch grid; None infers a square grid from ``L - num_prefix_tokens``.
        backend: "auto" (Triton on CUDA, PyTorch on CPU), "triton" or "torch".

    ``forward(x, T)``: ``x`` is ``[B*T, L, C]`` (frames of a clip consecutive); returns a new tensor
    of the same shape, dtype and device (``x`` is never modified, unlike the release's in-place add).

    ``path``: "two_pass" (conv kernel, then fc2 + residual as one GEMM into ``x + b2``; keeps x, h
    and the conv output z for backward), "one_pass" (conv + act + fc2 + b2 + residual in one kernel,
    and a fused backward: ``dy W2``, act', the transposed conv and the conv's weight gradients in one
    pass), or "auto": the path measured faster for the backend and kernel shape, see
    ``stadapter_fast._backend.AUTO_PATH`` (two_pass everywhere; GPU unmeasured).

    ``recompute`` (one-pass path only): True keeps only x and h for backward and recomputes the conv
    there; False also keeps the pre-activation ``conv(h) + b`` ([B*T, L, Ca], in the activation
    dtype: in bf16 its rounding makes the grads differ slightly from recompute=True's) to skip that
    conv. Under ``torch.no_grad()`` nothing is kept either way.
    """

    def __init__(self, *args, path: str = "auto", recompute: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_path_options(path, recompute)
        self.path = path
        self.recompute = recompute

    def extra_repr(self) -> str:
        return super().extra_repr() + f", path={self.path!r}, recompute={self.recompute}"

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        grid = self._check_input(x, T)
        P = self.num_prefix_tokens
        # fc1 over all L rows of the contiguous input: the prefix rows cost 1/L of the GEMM and save
        # the strided-slice copy; the conv skips them.
        h = F.linear(x, self.fc1.weight, self.fc1.bias)
        backend = resolve_backend(self.backend, x.device)
        if resolve_path(self.path, backend, self.kernel_size) == "one_pass":
            check_conv_args(h, self.conv.weight, self.conv.bias, T)
            # nothing to keep without autograd: recompute=False would only write an unused tensor
            recompute = self.recompute or not torch.is_grad_enabled()
            return adapter_onepass(x, h, self.conv.weight, self.conv.bias, self.fc2.weight, self.fc2.bias, T,
                                   grid[0], grid[1], P, self.act, backend, recompute=recompute)
        z = st_adapter_conv(h, self.conv.weight, self.conv.bias, T, grid, P, self.act, backend)
        return fc2_residual(x, z, self.fc2.weight, self.fc2.bias, P)


class STAdapterReference(_STAdapterBase):
    """The official ST-Adapter computation in plain PyTorch (permute copies + ``nn.Conv3d``).

    Same constructor, parameters and state_dict as :class:`FastSTAdapter`; ``backend`` is accepted
    and ignored. Differs from the release only in not adding into ``x`` in place, and in the
    optional activation (``act=None`` is the release).
    """

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        H, W = self._check_input(x, T)
        P = self.num_prefix_tokens
        N, L, C = x.shape
        Ca = self.adapter_channels
        h = self.fc1(x[:, P:, :])
        h = h.view(N // T, T, H, W, Ca).permute(0, 4, 1, 2, 3).contiguous()
        h = self.conv(h)
        h = h.permute(0, 2, 3, 4, 1).contiguous().view(N, H * W, Ca)
        h = self.fc2(act_fwd(h, self.act))
        return torch.cat([x[:, :P, :], x[:, P:, :] + h], dim=1)
