"""mmaction2's ST-Adapter variant (its VindLU models' ``STAdapter``), fast and as a plain-PyTorch oracle.

Semantics (restated from mmaction2's ``mmaction/models/multimodal/temporal_model.py``; written here):

- input and output ``[b, t, l, c]`` with ``l = 1 + h*w`` and ``h = w = img_size // patch_size``; no
  frame-count argument;
- ``linear1`` over all tokens, the class token included; the patch tokens go through a depthwise
  ``Conv3d`` (``padding='same'``, with bias); the class token skips the conv and its bias;
- ReLU over all tokens, then ``linear2`` over all tokens;
- ``y = x + scale * drop_path(u)``: ``scale`` a learnable scalar initialised to 0 (the convs and
  biases keep PyTorch's default init), drop path per sample (per clip) in training, rescaled by
  ``1 / (1 - drop_prob)``;
- a clip of one frame is returned unchanged (the same tensor).

Parameter names are mmaction2's (``linear1.*``, ``conv.*``, ``linear2.*``, ``scale``), so its
checkpoints load with ``strict=True``. :class:`FastMMAction2STAdapter` runs the fused ops: the
``[b, t, l, c]`` input is viewed as ``[b*t, l, c]`` (no copy for a contiguous input), the prefix rows
take act + fc2 + residual but not the conv (``prefix_mode="no_conv"``), and ``scale`` and the drop
mask become one per-clip factor applied in the fc2/residual epilogue (a batched GEMM's weights on the
two-pass path, the kernel's epilogue on the one-pass path), with its gradient.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._backend import BACKENDS, check_path_options, resolve_backend, resolve_path
from .checks import check_int
from .modules import check_tokens
from .ops.adapter_onepass import adapter_onepass
from .ops.dwconv_tokens import (act_fwd, check_grid_size, check_kernel_size, check_num_prefix_tokens,
                                normalize_act, st_adapter_conv)
from .ops.fc2_residual import fc2_residual


class _MMAction2Base(nn.Module):
    def __init__(self, kernel_size: Sequence[int] = (3, 3, 3), input_dim: int = 768, hidden_dim: int = 384,
                 img_size: int = 224, patch_size: int = 16, drop_prob: float = 0.1, *,
                 act: Optional[str] = "relu", num_prefix_tokens: int = 1,
                 grid_size: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        kernel_size = check_kernel_size(kernel_size)
        for name, v in (("input_dim", input_dim), ("hidden_dim", hidden_dim), ("img_size", img_size),
                        ("patch_size", patch_size)):
            check_int(name, v)
        if isinstance(drop_prob, bool) or not isinstance(drop_prob, (int, float)) or not 0 <= drop_prob < 1:
            raise ValueError(f"drop_prob must be a number in [0, 1), got {drop_prob!r}")
        check_num_prefix_tokens(num_prefix_tokens)
        self.kernel_size = kernel_size
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.grid_size = check_grid_size(grid_size) if grid_size is not None else (img_size // patch_size,) * 2
        self.h, self.w = self.grid_size
        self.num_prefix_tokens = num_prefix_tokens
        self.act = normalize_act(act)
        self.drop_prob = float(drop_prob)
        self.linear1 = nn.Linear(input_dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, input_dim)
        self.conv = nn.Conv3d(hidden_dim, hidden_dim, kernel_size=kernel_size,
                              padding=tuple(k // 2 for k in kernel_size), groups=hidden_dim)
        self.scale = nn.Parameter(torch.zeros([]))

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, grid_size={self.grid_size}, act={self.act!r}, "
                f"num_prefix_tokens={self.num_prefix_tokens}, drop_prob={self.drop_prob}")

    def _tokens(self, x: torch.Tensor) -> tuple[Optional[tuple[int, int]], torch.Tensor]:
        """Validate ``x: [b, t, l, c]``; returns (the patch grid ``(H, W)``, or None for one-frame clips,
        which are returned unchanged; ``x`` as ``[b*t, l, c]``, a view when ``x`` is contiguous)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a tensor of shape [b, t, l, c], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        b, t, l, c = x.shape
        xt = x.reshape(b * t, l, c)
        grid = check_tokens(xt, t, self.linear1.weight, self.num_prefix_tokens, self.grid_size)
        return (None if t == 1 else grid), xt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid, xt = self._tokens(x)
        return x if grid is None else self._adapt(x, xt, grid)

    def _adapt(self, x: torch.Tensor, xt: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The adapter on ``x: [b, t, l, c]`` (``xt``: the same as ``[b*t, l, c]``) of ``t > 1`` frames
        with the patch grid ``grid``."""
        raise NotImplementedError

    def drop_factor(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-clip drop-path factor ``mask / (1 - drop_prob)`` ([b], x's dtype), or None (eval, or
        ``drop_prob == 0``). Drawn as timm's ``DropPath`` draws it: one Bernoulli per sample, in x's
        dtype, from the default generator."""
        if not self.training or self.drop_prob == 0.0:
            return None
        keep = 1.0 - self.drop_prob
        return x.new_empty((x.shape[0],)).bernoulli_(keep).div_(keep)


class MMAction2STAdapterReference(_MMAction2Base):
    """mmaction2's ``STAdapter`` computation in plain PyTorch (permute copy + ``nn.Conv3d``): the oracle
    of the tests and the benchmarks' baseline for this variant. Same constructor (mmaction2's
    arguments, then keyword options) and state_dict as :class:`FastMMAction2STAdapter`."""

    def _adapt(self, x: torch.Tensor, xt: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        (H, W), (b, t), P = grid, x.shape[:2], self.num_prefix_tokens
        u = self.linear1(x)
        tokens = u[:, :, P:, :].reshape(b, t, H, W, -1).permute(0, 4, 1, 2, 3).contiguous()
        tokens = self.conv(tokens).permute(0, 2, 3, 4, 1).reshape(b, t, H * W, -1)
        u = self.linear2(act_fwd(torch.cat([u[:, :, :P, :], tokens], dim=2), self.act))
        d = self.drop_factor(x)
        if d is not None:
            u = u * d.view(b, 1, 1, 1)
        return x + self.scale * u


class FastMMAction2STAdapter(_MMAction2Base):
    """mmaction2's ``STAdapter`` on the fused ops (see the module docstring for the semantics).

    Args:
        kernel_size, input_dim, hidden_dim, img_size, patch_size, drop_prob: mmaction2's arguments
            (defaults too); the grid is ``img_size // patch_size`` square.
        act: the activation (mmaction2: ReLU).
        num_prefix_tokens: leading tokens that skip the conv (mmaction2: the class token).
        grid_size: ``(H, W)``, overriding the square grid of ``img_size // patch_size``.
        backend, path, recompute: as :class:`~stadapter_fast.FastSTAdapter`'s.

    ``forward(x)``: ``x`` is ``[b, t, l, c]``; returns a new tensor of the same shape (``x`` itself when
    ``t == 1``).
    """

    def __init__(self, *args, backend: str = "auto", path: str = "auto", recompute: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        check_path_options(path, recompute)
        self.backend, self.path, self.recompute = backend, path, recompute

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}, path={self.path!r}, recompute={self.recompute}"

    def _adapt(self, x: torch.Tensor, xt: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        (H, W), (b, t, l, c), P = grid, x.shape, self.num_prefix_tokens
        d = self.drop_factor(x)
        r = self.scale.expand(b) if d is None else self.scale * d.to(self.scale.dtype)
        h = F.linear(xt, self.linear1.weight, self.linear1.bias)
        backend = resolve_backend(self.backend, x.device)
        if resolve_path(self.path, backend, self.kernel_size) == "one_pass":
            recompute = self.recompute or not torch.is_grad_enabled()
            y = adapter_onepass(xt, h, self.conv.weight, self.conv.bias, self.linear2.weight, self.linear2.bias, t,
                                H, W, P, self.act, backend, recompute=recompute, prefix_through=True, row_scale=r)
        else:
            z = st_adapter_conv(h, self.conv.weight, self.conv.bias, t, (H, W), P, self.act, backend,
                                prefix_mode="no_conv")
            y = fc2_residual(xt, z, self.linear2.weight, self.linear2.bias, P, prefix_through=True, row_scale=r)
        return y.view(b, t, l, c)
