"""stadapter-fast: fused Triton kernels for ST-Adapter (NeurIPS 2022) video adapters on image ViTs.

Public API::

    from stadapter_fast import FastSTAdapter, STAdapterReference, swap_adapters, set_adapter_path, st_adapter_conv
    from stadapter_fast import STAdapterConfig, add_st_adapters, VideoClassifier, save_adapters, load_adapters
    from stadapter_fast import FastMMAction2STAdapter, MMAction2STAdapterReference   # mmaction2's variant
"""
from ._backend import BACKENDS, PATHS, resolve_backend
from .modules import FastSTAdapter, STAdapterReference
from .ops.dwconv_tokens import ACTIVATIONS, st_adapter_conv
from .swap import RenamedFastSTAdapter, set_adapter_path, swap_adapters
from .integration import (STAdapterConfig, VideoClassifier, add_st_adapters, adapter_parameter_count,
                          count_parameters, create_backbone, set_backbone_checkpointing, set_num_frames)
from .madapter import MAdapterConfig, MAdapterVideoClassifier
from .mmaction2 import FastMMAction2STAdapter, MMAction2STAdapterReference
from .checkpoint import load_adapters, read_adapter_metadata, save_adapters
from ._compat import ensure_torchvision_importable

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "PATHS",
    "FastMMAction2STAdapter",
    "FastSTAdapter",
    "MAdapterConfig",
    "MAdapterVideoClassifier",
    "MMAction2STAdapterReference",
    "RenamedFastSTAdapter",
    "STAdapterConfig",
    "STAdapterReference",
    "VideoClassifier",
    "adapter_parameter_count",
    "add_st_adapters",
    "count_parameters",
    "create_backbone",
    "ensure_torchvision_importable",
    "load_adapters",
    "read_adapter_metadata",
    "resolve_backend",
    "save_adapters",
    "set_adapter_path",
    "set_backbone_checkpointing",
    "set_num_frames",
    "st_adapter_conv",
    "swap_adapters",
]
