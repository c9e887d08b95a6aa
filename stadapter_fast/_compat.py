"""Compatibility fix for one known broken install: PyPI's CUDA torchvision with a CPU-only torch.

There, ``import torchvision`` (hence ``import timm`` / ``import open_clip``) fails with
``RuntimeError: operator torchvision::nms does not exist``: its compiled ops cannot load, and its
Python side registers fake kernels for them. Registering just those op *schemas* lets the pure-Python
parts (transforms, models) import; torchvision's compiled ops (``torchvision.ops.nms``...) still do
not work. Acts only on that exact failure; any other error propagates unchanged.
"""
from __future__ import annotations

import sys
import warnings

import torch

_MISSING_OP_ERROR = "operator torchvision::nms does not exist"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIB = None  # keeps the registrations alive


def ensure_torchvision_importable() -> bool:
    """Import torchvision, applying the schema fix if (and only if) the known failure occurs.

    Returns True if the fix was applied. Missing torchvision is not an error here (returns False).
    """
    global _LIB
    try:
        import torchvision  # noqa: F401
        return False
    except ImportError:
        return False
    except RuntimeError as e:
        if _MISSING_OP_ERROR not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
        for op, schema in _SCHEMAS.items():
            try:
                getattr(torch.ops.torchvision, op)
            except (AttributeError, RuntimeError):
                _LIB.define(schema)
    warnings.warn("torchvision's compiled ops could not load (a CUDA torchvision wheel with a CPU-only "
                  "torch); registered placeholder schemas so its Python parts import. "
                  "torchvision.ops.nms and similar ops will not work.", RuntimeWarning, stacklevel=2)
    import torchvision  # noqa: F401,F811
    return True
