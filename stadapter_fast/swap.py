"""``swap_adapters``: replace official-style ST-Adapters in any model with :class:`FastSTAdapter`."""
from __future__ import annotations

import inspect
import warnings
from typing import Optional, Sequence

from torch import nn

from ._backend import check_path_options
from .modules import FastSTAdapter, STAdapterReference


def _is_official_adapter(m: nn.Module) -> bool:
    """fc1 Linear(C->Ca), conv depthwise Conv3d(Ca, Ca, odd k, stride 1, padding k//2), fc2 Linear(Ca->C),
    nothing else trainable beside them, and a forward called as ``(x, T)``."""
    fc1, conv, fc2 = (getattr(m, n, None) for n in ("fc1", "conv", "fc2"))
    if not (isinstance(fc1, nn.Linear) and isinstance(conv, nn.Conv3d) and isinstance(fc2, nn.Linear)):
        return False
    ca = conv.in_channels
    if not (conv.out_channels == ca == conv.groups == fc1.out_features == fc2.in_features
            and fc2.out_features == fc1.in_features):
        return False
    if any(k % 2 == 0 for k in conv.kernel_size) or tuple(conv.stride) != (1, 1, 1):
        return False
    if tuple(conv.padding) != tuple(k // 2 for k in conv.kernel_size) or tuple(conv.dilation) != (1, 1, 1):
        return False
    if conv.padding_mode != "zeros" or fc1.bias is None or fc2.bias is None or conv.bias is None:
        return False
    if set(dict(m.named_children())) != {"fc1", "conv", "fc2"}:
        return False  # an unknown extra submodule (e.g. a norm or activation): semantics not known
    try:
        params = [p for p in inspect.signature(m.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) == 2


def swap_adapters(model: nn.Module, num_prefix_tokens: Optional[int] = None,
                  grid_size: Optional[Sequence[int]] = None, backend: str = "auto", path: str = "auto",
                  recompute: bool = True) -> int:
    """Replace, in place, every official-style ST-Adapter in ``model`` with a :class:`FastSTAdapter`.

    An official-style adapter has children ``fc1`` (Linear C->Ca), ``conv`` (depthwise Conv3d over Ca,
    odd kernel, stride 1, padding k//2) and ``fc2`` (Linear Ca->C) and is called as ``adapter(x, T)``.
    :class:`STAdapterReference` modules are swapped keeping their ``act``, prefix count and grid;
    other adapters get the release's semantics (no activation, one class token, square grid) unless
    ``num_prefix_tokens`` / ``grid_size`` say otherwise. Weights, dtype, device, ``requires_grad``
    and train/eval mode carry over. ``backend``, ``path`` and ``recompute`` go to every new
    :class:`FastSTAdapter`. Returns how many modules were replaced (0 if ``model`` itself is an
    adapter: swap it by assignment instead).

    Note: the release adds into its input in place; FastSTAdapter returns a new tensor. Code that
    uses the return value (``x = adapter(x, T)``, as the release's blocks do) behaves the same.
    """
    targets = []
    for _, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, FastSTAdapter) or not _is_official_adapter(child):
                continue
            targets.append((parent, name, child))
    for parent, name, old in targets:
        if isinstance(old, STAdapterReference):
            kw = dict(act=old.act, num_prefix_tokens=old.num_prefix_tokens, grid_size=old.grid_size)
        else:
            kw = dict(act=None, num_prefix_tokens=1, grid_size=None)
            if hasattr(old, "act") or hasattr(old, "activation"):
                warnings.warn(f"swap_adapters: {type(old).__name__} has an activation attribute; the swapped "
                              f"FastSTAdapter uses act=None as the official release does", stacklevel=2)
        if num_prefix_tokens is not None:
            kw["num_prefix_tokens"] = num_prefix_tokens
        if grid_size is not None:
            kw["grid_size"] = grid_size
        w = old.fc1.weight
        new = FastSTAdapter(old.fc1.in_features, old.fc1.out_features, kernel_size=tuple(old.conv.kernel_size),
                            backend=backend, path=path, recompute=recompute, **kw).to(device=w.device, dtype=w.dtype)
        new.load_state_dict(old.state_dict(), strict=True)
        old_params = dict(old.named_parameters())
        for pn, p_new in new.named_parameters():
            p_new.requires_grad_(old_params[pn].requires_grad)
        new.train(old.training)
        setattr(parent, name, new)
    return len(targets)


def set_adapter_path(model: nn.Module, path: str, recompute: bool = True) -> int:
    """Set ``path`` ("auto", "two_pass", "one_pass") and ``recompute`` on every :class:`FastSTAdapter` in
    ``model`` (see :class:`FastSTAdapter`); returns how many. Checkpoints are unaffected."""
    check_path_options(path, recompute)
    adapters = [m for m in model.modules() if isinstance(m, FastSTAdapter)]
    for m in adapters:
        m.path = path
        m.recompute = recompute
    return len(adapters)
