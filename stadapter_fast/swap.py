"""``swap_adapters``: replace official-style ST-Adapters in any model with :class:`FastSTAdapter`."""
from __future__ import annotations

import copy
import inspect
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from ._backend import check_path_options
from .modules import FastSTAdapter, STAdapterReference
from .ops.dwconv_tokens import ACTIVATIONS


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


#: Probe tolerance: max |old - new| / max |old| over output and input gradient, both in fp64.
PROBE_RTOL = 1e-9


def _probe_input_shape(new: FastSTAdapter) -> tuple[int, int, int]:
    """(T, B*T, L) of a probe clip: every tap of the kernel meets real (not padded) tokens."""
    kt, kh, kw = new.kernel_size
    T = kt + 1
    H, W = new.grid_size if new.grid_size is not None else (max(kh, kw) + 1,) * 2
    return T, 2 * T, new.num_prefix_tokens + H * W


def probe_equivalent(old: nn.Module, new: FastSTAdapter, seed: int = 0) -> tuple[bool, str]:
    """Whether ``new`` computes ``old``'s function: fp64 CPU copies of both get the same random weights
    (not the current ones: a zero-initialised conv hides the activation and prefix handling) and the
    same random clip (a grid and prefix count as ``new`` would use them); forward outputs and input
    gradients must agree to ``PROBE_RTOL``. ``old`` may add into its input in place (the release
    does); it gets a copy. Both run in eval mode (dropout-like randomness would hide the comparison).
    Returns ``(ok, reason)``."""
    ref = copy.deepcopy(old).to(device="cpu", dtype=torch.float64).eval()
    cand = copy.deepcopy(new).to(device="cpu", dtype=torch.float64).eval()
    cand.backend = "torch"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in ref.parameters():
            prm.copy_(0.3 * torch.randn(prm.shape, generator=g, dtype=torch.float64))
    cand.load_state_dict(ref.state_dict(), strict=True)
    T, N, L = _probe_input_shape(cand)
    x = torch.randn(N, L, cand.in_channels, generator=g, dtype=torch.float64)
    dy = torch.randn(N, L, cand.in_channels, generator=g, dtype=torch.float64)
    outs = []
    for m in (ref, cand):
        xi = x.clone().requires_grad_()
        try:
            with torch.enable_grad():
                y = m(xi.clone(), T)
                if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                    return False, f"output {getattr(y, 'shape', type(y).__name__)} for input {tuple(x.shape)}"
                (dx,) = torch.autograd.grad(y, xi, dy)
        except Exception as e:  # noqa: BLE001 -- any failure means equivalence was not shown
            return False, f"{'the module' if m is ref else 'FastSTAdapter'} raised {type(e).__name__}: {e}"
        outs.append((y.detach(), dx))
    for what, a, b in zip(("output", "input gradient"), outs[0], outs[1]):
        err = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
        if not err <= PROBE_RTOL:
            return False, f"{what} differs (relative error {err:.1e})"
    return True, ""


def _candidate_kwargs(old: nn.Module, num_prefix_tokens, grid_size) -> list[dict]:
    """FastSTAdapter settings to try for ``old``, most likely first."""
    if isinstance(old, STAdapterReference):
        base = dict(act=old.act, num_prefix_tokens=old.num_prefix_tokens, grid_size=old.grid_size)
        acts = [old.act]
    else:
        base = dict(act=None, num_prefix_tokens=1, grid_size=None)
        acts = [None]
        for attr in ("act", "activation"):
            named = getattr(old, attr, None)
            if isinstance(named, str) and named in ACTIVATIONS and named not in acts:
                acts.insert(0, named)
    if num_prefix_tokens is not None:
        base["num_prefix_tokens"] = num_prefix_tokens
    if grid_size is not None:
        base["grid_size"] = tuple(grid_size)
    return [dict(base, act=a) for a in acts]


def swap_adapters(model: nn.Module, num_prefix_tokens: Optional[int] = None,
                  grid_size: Optional[Sequence[int]] = None, backend: str = "auto", path: str = "auto",
                  recompute: bool = True, strict: bool = False) -> int:
    """Replace, in place, every official-style ST-Adapter in ``model`` that a probe shows to be
    equivalent with a :class:`FastSTAdapter`.

    An official-style adapter has children ``fc1`` (Linear C->Ca), ``conv`` (depthwise Conv3d over Ca,
    odd kernel, stride 1, padding k//2) and ``fc2`` (Linear Ca->C) and is called as ``adapter(x, T)``.
    :class:`STAdapterReference` modules keep their ``act``, prefix count and grid; other adapters are
    tried with the release's semantics (no activation, one class token, square grid), with
    ``num_prefix_tokens`` / ``grid_size`` where given, and first with the activation named by a string
    attribute ``act`` / ``activation`` if there is one.

    Before replacing, each candidate is probed (:func:`probe_equivalent`): the old and the new module run
    on the same random weights and clip, and must agree in output and input gradient. A module that
    does not is left in place and reported: a ``UserWarning`` naming it and why, or with
    ``strict=True`` a ``ValueError`` (raised before anything is replaced).

    Weights, dtype, device, ``requires_grad`` and train/eval mode carry over. ``backend``, ``path`` and
    ``recompute`` go to every new :class:`FastSTAdapter`. Returns how many modules were replaced (0 if
    ``model`` itself is an adapter: swap it by assignment instead).

    Note: the release adds into its input in place; FastSTAdapter returns a new tensor. Code that
    uses the return value (``x = adapter(x, T)``, as the release's blocks do) behaves the same.
    """
    check_path_options(path, recompute)
    targets, skipped = [], []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, FastSTAdapter) or not _is_official_adapter(child):
                continue
            qualname = f"{parent_name}.{name}" if parent_name else name
            reasons = []
            for kw in _candidate_kwargs(child, num_prefix_tokens, grid_size):
                w = child.fc1.weight
                new = FastSTAdapter(child.fc1.in_features, child.fc1.out_features,
                                    kernel_size=tuple(child.conv.kernel_size), backend=backend, path=path,
                                    recompute=recompute, **kw).to(device=w.device, dtype=w.dtype)
                ok, why = probe_equivalent(child, new)
                if ok:
                    targets.append((parent, name, child, new))
                    break
                reasons.append(f"as FastSTAdapter(act={kw['act']!r}, num_prefix_tokens={kw['num_prefix_tokens']}, "
                               f"grid_size={kw['grid_size']}): {why}")
            else:
                skipped.append(f"{qualname} ({type(child).__name__}) " + "; ".join(reasons))
    if skipped:
        msg = (f"swap_adapters: {len(skipped)} adapter-shaped module(s) left in place, since a probe did not "
               f"show FastSTAdapter to compute the same function: " + " | ".join(skipped))
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    for parent, name, old, new in targets:
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
