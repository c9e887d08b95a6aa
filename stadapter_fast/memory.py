"""Counting the activation memory a forward keeps for backward (works on any device, CPU included)."""
from __future__ import annotations

from typing import Callable

import torch


def saved_activation_bytes(fn: Callable[[], object]) -> tuple[int, object]:
    """(bytes of distinct tensors autograd saves for backward while running ``fn()``, its result).

    Counted with ``torch.autograd.graph.saved_tensors_hooks``; storages are deduplicated, and
    parameters and views of them (e.g. a linear layer's ``weight.t()``; alive anyway) are not counted.
    Autocast's low-precision weight copies are new tensors and are counted."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        if isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter):
            return t
        try:
            st = t.untyped_storage()
            key = (st.data_ptr(), t.device.type)
            seen[key] = max(seen.get(key, 0), st.nbytes())
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out
