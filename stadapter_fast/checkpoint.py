"""Adapter-only checkpoints: the trainable tensors (adapters, head) in safetensors, with a JSON config
(backbone signature, adapter config, head classes) in the file's metadata. A task's checkpoint is a
few MB instead of the backbone's hundreds."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Union

import torch
from torch import nn

FORMAT = "stadapter-fast/adapters-v1"
#: Config fields that choose how adapters run, not what they compute: not compared on load.
RUNTIME_FIELDS = ("impl", "backend", "path", "recompute")


def _comparable(v):
    return {k: x for k, x in v.items() if k not in RUNTIME_FIELDS} if isinstance(v, dict) else v


def _describe(model: nn.Module) -> dict:
    from .integration import BackboneArch, VideoClassifier
    from .madapter import MAdapterVideoClassifier

    if isinstance(model, MAdapterVideoClassifier):
        backbone, config = model.backbone, {"m_adapter_config": model.m_adapter_config.to_dict()}
    else:
        backbone = model.backbone if isinstance(model, VideoClassifier) else model
        cfg = getattr(backbone, "st_adapter_config", None)
        if cfg is None:
            raise ValueError(f"{type(model).__name__} has no ST-Adapters (add_st_adapters was not applied)")
        config = {"adapter_config": cfg.to_dict()}
    meta = {"format": FORMAT, "backbone": BackboneArch(backbone).signature(), **config}
    if isinstance(model, (VideoClassifier, MAdapterVideoClassifier)):
        meta["head"] = {"num_classes": model.num_classes, "num_frames": model.num_frames, "pool": model.pool}
    return meta


def save_adapters(model: nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Write the trainable parameters of ``model`` (a backbone with adapters, a VideoClassifier, or an
    MAdapterVideoClassifier)
    and its config to ``path`` (safetensors). Written atomically. Returns the path."""
    from safetensors.torch import save_file

    meta = _describe(model)
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    if not tensors:
        raise ValueError("model has no trainable parameters to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"stadapter_fast": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_adapter_metadata(path: Union[str, os.PathLike]) -> dict:
    """The JSON config stored in an adapter checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("stadapter_fast")
    except Exception as e:  # missing, truncated or not safetensors
        raise ValueError(f"{path}: cannot read adapter checkpoint ({e})") from e
    if raw is None:
        raise ValueError(f"{path}: not a stadapter-fast adapter checkpoint (no 'stadapter_fast' metadata)")
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{path}: adapter checkpoint metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: adapter checkpoint metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_adapters(model: nn.Module, path: Union[str, os.PathLike]) -> nn.Module:
    """Load a checkpoint written by :func:`save_adapters` into ``model`` (built the same way: same
    backbone architecture and adapter config, e.g. a fresh backbone + ``add_st_adapters``).

    Raises ValueError naming the file and the first problem (backbone, adapter config, head, missing,
    mis-shaped or mis-typed tensors, unreadable data); on any error the model is left unchanged."""
    from safetensors.torch import load_file

    meta = read_adapter_metadata(path)
    mine = _describe(model)
    for key in ("backbone", "adapter_config", "m_adapter_config", "head"):
        if _comparable(meta.get(key)) != _comparable(mine.get(key)):
            raise ValueError(f"{path}: checkpoint {key} {meta.get(key)} does not match the model's {mine.get(key)}")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # truncated data, a header that lies about sizes or offsets
        raise ValueError(f"{path}: cannot read the adapter tensors ({type(e).__name__}: {e})") from e
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(trainable - tensors.keys()), sorted(tensors.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    # every check before the first copy: a bad file changes nothing in the model
    for n, t in tensors.items():
        if params[n].shape != t.shape:
            raise ValueError(f"{path}: tensor {n} has shape {tuple(t.shape)}, model expects {tuple(params[n].shape)}")
        if params[n].dtype != t.dtype:
            raise ValueError(f"{path}: tensor {n} has dtype {t.dtype}, model expects {params[n].dtype}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    return model
