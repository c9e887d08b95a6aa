"""``swap_adapters``: replace ST-Adapters in any model with fused ones, each after a probe shows it
computes the same function. Recognised variants: the official release's adapter (``fc1``/``conv``/
``fc2``, called ``(x, T)``; other attribute names through ``names=``) -> :class:`FastSTAdapter`, and
mmaction2's ``STAdapter`` (``linear1``/``conv``/``linear2``/``scale``, called ``(x)`` on ``[b, t, l, c]``)
-> :class:`FastMMAction2STAdapter`."""
from __future__ import annotations

import copy
import inspect
import warnings
from collections import OrderedDict
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ._backend import check_path_options
from .mmaction2 import FastMMAction2STAdapter, MMAction2STAdapterReference
from .modules import FastSTAdapter, STAdapterReference
from .ops.dwconv_tokens import ACTIVATIONS

#: The official adapter's attribute names (``names=`` maps them to another codebase's).
OFFICIAL_NAMES = ("fc1", "conv", "fc2")


class RenamedFastSTAdapter(FastSTAdapter):
    """A :class:`FastSTAdapter` whose ``fc1``/``conv``/``fc2`` are registered under other names (those
    of the adapter it replaced), so that codebase's state_dict keys and parameter names stay."""

    def __init__(self, *args, names: Mapping[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._aliases = dict(names)
        renamed = OrderedDict((self._aliases.get(k, k), v) for k, v in self._modules.items())
        self._modules.clear()
        self._modules.update(renamed)

    def __getattr__(self, name: str):
        aliases = self.__dict__.get("_aliases")
        if aliases is not None and name in aliases:
            return self._modules[aliases[name]]
        return super().__getattr__(name)


def _check_names(names: Optional[Mapping[str, str]]) -> dict:
    if names is None:
        return {n: n for n in OFFICIAL_NAMES}
    if (not isinstance(names, Mapping) or set(names) - set(OFFICIAL_NAMES)
            or not all(isinstance(v, str) and v.isidentifier() for v in names.values())):
        raise ValueError(f"names must map a subset of {OFFICIAL_NAMES} to attribute names, got {names!r}")
    full = {n: names.get(n, n) for n in OFFICIAL_NAMES}
    if len(set(full.values())) != len(full):
        raise ValueError(f"names must map {OFFICIAL_NAMES} to three distinct attribute names, got {names!r}")
    return full


def _positional_params(m: nn.Module) -> Optional[int]:
    try:
        return len([p for p in inspect.signature(m.forward).parameters.values()
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    except (TypeError, ValueError):
        return None


def _is_depthwise_odd_same(conv, in_linear, out_linear) -> bool:
    """in Linear(C->Ca), conv depthwise Conv3d(Ca, Ca, odd k, stride 1, zero padding k//2 or 'same'),
    out Linear(Ca->C), all with biases."""
    if not (isinstance(in_linear, nn.Linear) and isinstance(conv, nn.Conv3d) and isinstance(out_linear, nn.Linear)):
        return False
    ca = conv.in_channels
    if not (conv.out_channels == ca == conv.groups == in_linear.out_features == out_linear.in_features
            and out_linear.out_features == in_linear.in_features):
        return False
    if any(k % 2 == 0 for k in conv.kernel_size) or tuple(conv.stride) != (1, 1, 1):
        return False
    if conv.padding not in ("same", tuple(k // 2 for k in conv.kernel_size)) or tuple(conv.dilation) != (1, 1, 1):
        return False
    return conv.padding_mode == "zeros" and None not in (in_linear.bias, out_linear.bias, conv.bias)


def _is_official_adapter(m: nn.Module, names: Mapping[str, str]) -> bool:
    """fc1 Linear(C->Ca), conv depthwise Conv3d(Ca, Ca, odd k, stride 1, padding k//2), fc2 Linear(Ca->C)
    (under ``names``), nothing else beside them, and a forward called as ``(x, T)``."""
    fc1, conv, fc2 = (getattr(m, names[n], None) for n in OFFICIAL_NAMES)
    if not _is_depthwise_odd_same(conv, fc1, fc2):
        return False
    if set(dict(m.named_children())) != set(names.values()) or set(dict(m.named_parameters(recurse=False))):
        return False  # an unknown extra submodule or parameter (e.g. a norm): semantics not known
    return _positional_params(m) == 2


#: mmaction2-style activation modules -> activation names (the probe checks the choice).
_ACT_MODULES = ((nn.ReLU, "relu"), (nn.SiLU, "silu"), (nn.Identity, "none"))


def _act_name(m: Optional[nn.Module]) -> Optional[str]:
    if isinstance(m, nn.GELU):
        return "gelu_tanh" if m.approximate == "tanh" else "gelu"
    for cls, name in _ACT_MODULES:
        if isinstance(m, cls):
            return name
    return None


def _is_mmaction2_adapter(m: nn.Module) -> bool:
    """mmaction2's ``STAdapter`` by structure: ``linear1``, depthwise ``conv`` ('same' padding),
    ``linear2``, a scalar parameter ``scale``, an activation module ``act``, optionally ``droppath``
    (with ``drop_prob``), nothing else, and a forward called as ``(x)``."""
    if not _is_depthwise_odd_same(getattr(m, "conv", None), getattr(m, "linear1", None), getattr(m, "linear2", None)):
        return False
    children = dict(m.named_children())
    if not {"linear1", "conv", "linear2", "act"} <= set(children) <= {"linear1", "conv", "linear2", "act", "droppath"}:
        return False
    if _act_name(children["act"]) is None:
        return False
    dp = children.get("droppath")
    if dp is not None and not (isinstance(dp, nn.Identity) or isinstance(getattr(dp, "drop_prob", None), (int, float))):
        return False
    own = dict(m.named_parameters(recurse=False))
    if set(own) != {"scale"} or own["scale"].dim() != 0:
        return False
    return _positional_params(m) == 1


#: Probe tolerance: max |old - new| / max |old| over output and input gradient, both in fp64.
PROBE_RTOL = 1e-9


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max|expected|``, computed in fp64: the relative error of the probe, of
    ``python -m stadapter_fast.kernel_check``, of the tests' tolerances and of the benchmarks' checks."""
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def _probe_input_shape(new: Union[FastSTAdapter, FastMMAction2STAdapter]) -> tuple[int, int, int]:
    """(T, B*T, L) of a probe clip: every tap of the kernel meets real (not padded) tokens."""
    kt, kh, kw = new.kernel_size
    T = kt + 1
    H, W = new.grid_size if new.grid_size is not None else (max(kh, kw) + 1,) * 2
    return T, 2 * T, new.num_prefix_tokens + H * W


def _run(m: nn.Module, x: torch.Tensor, T: int, clip: bool) -> torch.Tensor:
    """``m`` on a copy of ``x`` (an adapter may add into its input in place): ``m(x)`` for a clip-shaped
    ``[b, t, l, c]`` adapter, ``m(x, T)`` for a token-shaped one."""
    return m(x.clone()) if clip else m(x.clone(), T)


#: Training-mode probe: forward passes of ``old`` (each a new drop-path draw) until some clip keeps its update.
PROBE_TRAIN_PASSES = 64


def _probe_training_mode(ref: nn.Module, x: torch.Tensor, update: torch.Tensor, T: int, clip: bool,
                         drop_prob: float, seed: int) -> tuple[bool, str]:
    """Whether ``ref`` in training mode does what the fused module does: on each clip of ``x``, its update
    (output - x) is ``update`` (the eval-mode one) times 1/(1 - drop_prob), or, when ``drop_prob > 0``,
    zero (the clip dropped). Draws come from the default generator (that of timm's and mmcv's DropPath),
    seeded with ``seed`` and restored afterwards; passes repeat until a clip is kept, since a kept clip
    is what shows the rescaling. Returns ``(ok, reason)``."""
    b = x.shape[0] if clip else x.shape[0] // T
    expected = (update / (1.0 - drop_prob)).reshape(b, -1)
    ref.train()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(PROBE_TRAIN_PASSES):
            try:
                got = (_run(ref, x, T, clip) - x).reshape(b, -1)
            except Exception as e:  # noqa: BLE001 -- any failure means equivalence was not shown
                return False, f"the module raised {type(e).__name__} in training mode: {e}"
            kept = 0
            for i in range(b):
                if drop_prob > 0 and not got[i].any():
                    continue
                err = rel_err(got[i], expected[i])
                if not err <= PROBE_RTOL:
                    what = "dropped or scaled by" if drop_prob > 0 else "equal to the eval-mode update times"
                    return False, (f"training-mode output differs: clip {i}'s update is not {what} "
                                   f"1/(1 - drop_prob) = {1.0 / (1.0 - drop_prob):.6g}, drop_prob={drop_prob} "
                                   f"(relative error {err:.1e})")
                kept += 1
            if kept:
                return True, ""
    return False, (f"training mode dropped every clip in {PROBE_TRAIN_PASSES} passes (drop_prob={drop_prob}): "
                   f"the rescaling of kept clips was not shown")


def probe_equivalent(old: nn.Module, new: Union[FastSTAdapter, FastMMAction2STAdapter],
                     seed: int = 0) -> tuple[bool, str]:
    """Whether ``new`` computes ``old``'s function: fp64 CPU copies of both get the same random weights
    (not the current ones: a zero-initialised conv hides the activation and prefix handling) and the
    same random clip (a grid and prefix count as ``new`` would use them); in eval mode, forward outputs
    and input gradients must agree to ``PROBE_RTOL``; in training mode, ``old``'s output must show
    ``new``'s training behaviour (:func:`_probe_training_mode`: no difference from eval mode, or
    mmaction2's per-clip drop path). ``old`` may add into its input in place (the release does); it gets
    a copy. Runs with autograd on, also when called under ``torch.inference_mode()`` or
    ``torch.no_grad()``. Returns ``(ok, reason)``."""
    with torch.inference_mode(False), torch.enable_grad():
        ref = copy.deepcopy(old).to(device="cpu", dtype=torch.float64).eval()
        cand = copy.deepcopy(new).to(device="cpu", dtype=torch.float64).eval()
        cand.backend = "torch"
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for prm in ref.parameters():
                prm.copy_(0.3 * torch.randn(prm.shape, generator=g, dtype=torch.float64))
        try:
            cand.load_state_dict(ref.state_dict(), strict=True)
        except Exception as e:  # noqa: BLE001 -- e.g. extra (LoRA-like) or reparametrized weights
            return False, f"{type(cand).__name__} cannot take the module's parameters: {' '.join(str(e).split())}"
        T, N, L = _probe_input_shape(cand)
        clip = isinstance(cand, FastMMAction2STAdapter)  # called as m(x) on [b, t, l, c]
        C = cand.input_dim if clip else cand.in_channels
        shape = (N // T, T, L, C) if clip else (N, L, C)
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        dy = torch.randn(shape, generator=g, dtype=torch.float64)
        outs = []
        for m in (ref, cand):
            xi = x.clone().requires_grad_()
            try:
                y = _run(m, xi, T, clip)
                if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                    return False, f"output {getattr(y, 'shape', type(y).__name__)} for input {tuple(x.shape)}"
                (dx,) = torch.autograd.grad(y, xi, dy)
            except Exception as e:  # noqa: BLE001 -- any failure means equivalence was not shown
                return False, f"{'the module' if m is ref else type(cand).__name__} raised {type(e).__name__}: {e}"
            outs.append((y.detach(), dx))
        for what, a, b in zip(("output", "input gradient"), outs[0], outs[1]):
            err = rel_err(b, a)
            if not err <= PROBE_RTOL:
                return False, f"{what} differs (relative error {err:.1e})"
        return _probe_training_mode(ref, x, outs[0][0] - x, T, clip, getattr(cand, "drop_prob", 0.0), seed)


def _candidate_kwargs(old: nn.Module, num_prefix_tokens, grid_size) -> list[dict]:
    """FastSTAdapter settings to try for an official-style ``old``, most likely first."""
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


def _official_candidates(old: nn.Module, names: dict, num_prefix_tokens, grid_size, fast_kw: dict):
    """(description, new module) pairs for an official-style adapter, most likely first."""
    fc1, conv = getattr(old, names["fc1"]), getattr(old, names["conv"])
    renamed = any(k != v for k, v in names.items())
    for kw in _candidate_kwargs(old, num_prefix_tokens, grid_size):
        args = (fc1.in_features, fc1.out_features)
        kw = dict(kw, kernel_size=tuple(conv.kernel_size), **fast_kw)
        new = RenamedFastSTAdapter(*args, names=names, **kw) if renamed else FastSTAdapter(*args, **kw)
        yield (f"as FastSTAdapter(act={kw['act']!r}, num_prefix_tokens={kw['num_prefix_tokens']}, "
               f"grid_size={kw['grid_size']})"), new


def _mmaction2_candidates(old: nn.Module, num_prefix_tokens, grid_size, fast_kw: dict):
    """(description, new module) pairs for an mmaction2-style adapter: its grid (``h``, ``w``), one class
    token and its activation module, unless ``grid_size`` / ``num_prefix_tokens`` say otherwise."""
    l1 = old.linear1
    if grid_size is None and isinstance(getattr(old, "h", None), int) and isinstance(getattr(old, "w", None), int):
        grid_size = (old.h, old.w)
    if isinstance(old, MMAction2STAdapterReference):
        act, prefix, drop_prob = old.act, old.num_prefix_tokens, old.drop_prob
    else:
        dp = getattr(old, "droppath", None)
        act, prefix, drop_prob = _act_name(old.act), 1, float(getattr(dp, "drop_prob", 0.0) or 0.0)
    kw = dict(act=act, num_prefix_tokens=prefix if num_prefix_tokens is None else num_prefix_tokens,
              grid_size=None if grid_size is None else tuple(grid_size), **fast_kw)
    new = FastMMAction2STAdapter(tuple(old.conv.kernel_size), l1.in_features, l1.out_features,
                                 drop_prob=drop_prob, **kw)
    if kw["grid_size"] is None:  # no grid known: mmaction2's default img_size // patch_size stays; say so
        kw["grid_size"] = new.grid_size
    yield (f"as FastMMAction2STAdapter(act={kw['act']!r}, num_prefix_tokens={kw['num_prefix_tokens']}, "
           f"grid_size={kw['grid_size']}, drop_prob={drop_prob})"), new


def swap_adapters(model: nn.Module, num_prefix_tokens: Optional[int] = None,
                  grid_size: Optional[Sequence[int]] = None, backend: str = "auto", path: str = "auto",
                  recompute: bool = True, strict: bool = False,
                  names: Optional[Mapping[str, str]] = None) -> int:
    """Replace, in place, every recognised ST-Adapter in ``model`` that a probe shows to be equivalent
    with a fused one.

    Recognised, by structure:

    - the official release's adapter: children ``fc1`` (Linear C->Ca), ``conv`` (depthwise Conv3d over
      Ca, odd kernel, stride 1, padding k//2) and ``fc2`` (Linear Ca->C), called as ``adapter(x, T)``
      -> :class:`FastSTAdapter`. ``names={"fc1": ..., "conv": ..., "fc2": ...}`` gives other attribute
      names for the same semantics; the new module keeps them (a :class:`RenamedFastSTAdapter`).
      :class:`STAdapterReference` modules keep their ``act``, prefix count and grid; other adapters are
      tried with the release's semantics (no activation, one class token, square grid), with
      ``num_prefix_tokens`` / ``grid_size`` where given, and first with the activation named by a
      string attribute ``act`` / ``activation`` if there is one.
    - mmaction2's ``STAdapter`` (its VindLU models): ``linear1``, depthwise ``conv`` ('same' padding),
      ``linear2``, an activation module ``act``, a scalar parameter ``scale`` and ``droppath``, called as
      ``adapter(x)`` on ``[b, t, l, c]`` -> :class:`FastMMAction2STAdapter`, with the grid of its ``h``/``w``
      (or ``grid_size``), one class token (or ``num_prefix_tokens``) and its drop-path probability.

    Parameter names stay (``linear1.*``, ``conv.*``, ``linear2.*``, ``scale``; ``fc1.*`` ... or the
    ``names`` given), so the codebase's own checkpoints still load with ``strict=True``.

    Before replacing, each candidate is probed (:func:`probe_equivalent`): the old and the new module run
    on the same random weights and clip, and must agree in output and input gradient in eval mode, and
    in training mode the old one must do what the new one does (nothing different, or mmaction2's
    per-clip drop path rescaled by ``1 / (1 - drop_prob)``). A module that does not, whose parameters
    the new one cannot take (e.g. LoRA-like extra weights, a ``weight_norm`` parametrization) or whose
    parameters differ in dtype or device, is left in place and reported: a ``UserWarning`` naming it
    and why, or with ``strict=True`` a ``ValueError`` (raised before anything is replaced). The probe
    runs on its own fp64 CPU copies, so ``swap_adapters`` also works under ``torch.inference_mode()``.

    The new module holds the old one's Parameter objects themselves (the fused modules keep every
    weight in the layout of the module they replace), so weights, dtype, device, ``requires_grad``,
    weight tying and an optimizer built before the swap all carry over; so does the train/eval mode.
    An adapter reached from several places (one instance shared by several blocks) becomes one new
    module in all of them. ``backend``, ``path`` and ``recompute`` go to every new module. Returns how
    many modules were replaced, a shared one counted once (0 if ``model`` itself is an adapter: swap
    it by assignment instead).

    Note: the release adds into its input in place; FastSTAdapter returns a new tensor. Code that
    uses the return value (``x = adapter(x, T)``, as the release's blocks do) behaves the same.
    """
    check_path_options(path, recompute)
    names = _check_names(names)
    fast_kw = dict(backend=backend, path=path, recompute=recompute)
    replacement: dict[nn.Module, Optional[nn.Module]] = {}  # old -> new (None: left in place); once per module
    places, skipped = [], []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if child not in replacement:
                new, why = _replacement(child, names, num_prefix_tokens, grid_size, fast_kw)
                if why:
                    qualname = f"{parent_name}.{name}" if parent_name else name
                    skipped.append(f"{qualname} ({type(child).__name__}) {why}")
                replacement[child] = new
            if replacement[child] is not None:
                places.append((parent, name, replacement[child]))
    if skipped:
        msg = (f"swap_adapters: {len(skipped)} adapter-shaped module(s) left in place, since replacing them "
               f"was not shown to be safe: " + " | ".join(skipped))
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    swapped = [(old, new) for old, new in replacement.items() if new is not None]
    for old, new in swapped:
        _adopt_parameters(new, old)
        new.train(old.training)
    for parent, name, new in places:
        setattr(parent, name, new)
    return len(swapped)


def _replacement(child: nn.Module, names: dict, num_prefix_tokens, grid_size,
                 fast_kw: dict) -> tuple[Optional[nn.Module], str]:
    """``(new module, "")`` for a recognised adapter a probe shows equivalent to its fused module;
    ``(None, reason)`` for one that is left in place; ``(None, "")`` for anything else."""
    if isinstance(child, (FastSTAdapter, FastMMAction2STAdapter)):
        return None, ""
    if isinstance(child, MMAction2STAdapterReference) or _is_mmaction2_adapter(child):
        candidates = _mmaction2_candidates(child, num_prefix_tokens, grid_size, fast_kw)
    elif _is_official_adapter(child, names):
        candidates = _official_candidates(child, names, num_prefix_tokens, grid_size, fast_kw)
    else:
        return None, ""
    kinds = sorted({f"{p.dtype} on {p.device}" for p in child.parameters()})
    if len(kinds) > 1:  # the fused module keeps these very tensors, and its kernels take one dtype and device
        return None, f"has parameters of more than one dtype or device ({', '.join(kinds)})"
    reasons = []
    for what, new in candidates:
        ok, why = probe_equivalent(child, new)
        if ok:
            return new, ""
        reasons.append(f"{what}: {why}")
    return None, "; ".join(reasons)


def _adopt_parameters(new: nn.Module, old: nn.Module) -> None:
    """Registers ``old``'s Parameter objects in ``new`` in place of its own, under the same names: the
    probe loaded ``old``'s state_dict into ``new`` with ``strict=True``, so names and shapes match, and
    the fused modules store every weight in the layout of the module they replace. Identity, sharing,
    ``requires_grad``, dtype, device and an optimizer's references all carry over."""
    for pname, _ in list(new.named_parameters()):
        owner, _, attr = pname.rpartition(".")
        setattr(new.get_submodule(owner), attr, old.get_parameter(pname))


def set_adapter_path(model: nn.Module, path: str, recompute: bool = True) -> int:
    """Set ``path`` ("auto", "two_pass", "one_pass") and ``recompute`` on every :class:`FastSTAdapter` and
    :class:`FastMMAction2STAdapter` in ``model`` (see :class:`FastSTAdapter`); returns how many.
    Checkpoints are unaffected."""
    check_path_options(path, recompute)
    adapters = [m for m in model.modules() if isinstance(m, (FastSTAdapter, FastMMAction2STAdapter))]
    for m in adapters:
        m.path = path
        m.recompute = recompute
    return len(adapters)
