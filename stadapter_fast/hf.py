"""Hugging Face ``transformers`` vision towers as ST-Adapter backbones.

Supported: ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection``, ``SiglipVisionModel``,
``Dinov2Model``, ``Dinov2WithRegistersModel`` and ``ViTModel``. What differs between them (sublayer
names, layer scale, drop path, the norm before the first layer, the final norm, class and register
tokens) is a :class:`Family` entry keyed by the config's ``model_type``. :class:`HFTower` reads a
model; :func:`create_hf_backbone` builds one. ``transformers`` is imported only here, and only when
an HF model is built (a model handed in already comes with it).

The frame size is the config's ``image_size`` unless the model carries ``st_adapter_input_size``
(set by ``create_hf_backbone(input_size=...)``). Then the position embeddings are interpolated by the
model's own ``interpolate_pos_encoding``, as ``model(pixel_values, interpolate_pos_encoding=True)``
does; DINOv2's embeddings always interpolate when the size differs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from .checks import is_int


@dataclass(frozen=True)
class Family:
    """Names of an HF encoder layer's sublayers and of the model's norms.

    A layer computes ``x = x + post_attn(attn(norm1(x))[0]); x = x + post_mlp(mlp(norm2(x)))``, where
    ``post_*`` are applied in order (layer scale, drop path, dropout)."""

    model_class: str
    norm1: str
    attn: str
    post_attn: tuple
    norm2: str
    mlp: str
    post_mlp: tuple
    final_norm: str
    pre_norm: Optional[str]  # CLIP's LayerNorm between the embeddings and the first layer
    has_cls: bool
    interpolate_kwarg: bool  # embeddings(..., interpolate_pos_encoding=True) exists (DINOv2: always on)


_CLIP_LAYER = dict(norm1="layer_norm1", attn="self_attn", post_attn=(), norm2="layer_norm2", mlp="mlp", post_mlp=())
_DINOV2 = dict(norm1="norm1", attn="attention", post_attn=("layer_scale1", "drop_path"), norm2="norm2", mlp="mlp",
               post_mlp=("layer_scale2", "drop_path"), final_norm="layernorm", pre_norm=None, has_cls=True,
               interpolate_kwarg=False)

#: config ``model_type`` -> family
FAMILIES = {
    "clip_vision_model": Family("CLIPVisionModel", **_CLIP_LAYER, final_norm="post_layernorm",
                                pre_norm="pre_layrnorm", has_cls=True, interpolate_kwarg=True),
    "siglip_vision_model": Family("SiglipVisionModel", **_CLIP_LAYER, final_norm="post_layernorm", pre_norm=None,
                                  has_cls=False, interpolate_kwarg=True),
    "dinov2": Family("Dinov2Model", **_DINOV2),
    "dinov2_with_registers": Family("Dinov2WithRegistersModel", **_DINOV2),
    "vit": Family("ViTModel", norm1="layernorm_before", attn="attention", post_attn=("dropout",),
                  norm2="layernorm_after", mlp="mlp", post_mlp=("dropout",), final_norm="layernorm", pre_norm=None,
                  has_cls=True, interpolate_kwarg=True),
}
#: full image-text configs whose ``vision_config`` is the tower
_VISION_SUBCONFIG = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}

_TINY_LAYERS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
#: built-in small configs (random weights, no download): ``create_backbone("hf:tiny-vit")``
TINY_CONFIGS = {
    "tiny-clip": ("clip_vision_model", dict(_TINY_LAYERS, intermediate_size=64)),
    "tiny-siglip": ("siglip_vision_model", dict(_TINY_LAYERS, intermediate_size=64)),
    "tiny-dinov2": ("dinov2", dict(_TINY_LAYERS, mlp_ratio=2)),
    "tiny-dinov2-registers": ("dinov2_with_registers", dict(_TINY_LAYERS, mlp_ratio=2, num_register_tokens=2)),
    "tiny-vit": ("vit", dict(_TINY_LAYERS, intermediate_size=64)),
}


def import_transformers():
    """``transformers``, or a ValueError saying how to install it."""
    from ._compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # transformers' image utilities import torchvision
    try:
        import transformers
    except ImportError as e:
        raise ValueError("backbone 'hf:...' needs the transformers package: pip install 'transformers>=5.18' "
                         "(or pip install '.[hf]' in a stadapter-fast checkout)") from e
    return transformers


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is (a subclass of) a ``transformers`` class, without importing transformers."""
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _get_path(m: nn.Module, path: str):
    for part in path.split("."):
        m = getattr(m, part, None)
    return m


class HFTower:
    """What :func:`add_st_adapters` needs of a transformers vision model, read off the model and its
    config: the encoder layers, width, prefix tokens, patch grid, final norm, and the embedding step
    (:meth:`embed`; :class:`stadapter_fast.integration.BackboneArch` runs the layers after it)."""

    def __init__(self, model: nn.Module):
        core = model
        while not hasattr(core, "embeddings") and hasattr(core, "vision_model"):
            core = core.vision_model  # CLIPVisionModelWithProjection -> CLIPVisionModel (-> its transformer)
        model_type = getattr(getattr(core, "config", None), "model_type", None)
        if model_type not in FAMILIES or not hasattr(core, "embeddings"):
            raise ValueError(f"unsupported transformers model {type(model).__name__} (config model_type "
                             f"{model_type!r}): expected one of {sorted(FAMILIES)} (CLIPVisionModel[WithProjection], "
                             f"SiglipVisionModel, Dinov2Model, Dinov2WithRegistersModel, ViTModel)")
        self.core, self.family, self.config = core, FAMILIES[model_type], core.config
        layers = next((c for c in (_get_path(core, p) for p in ("encoder.layers", "encoder.layer", "layers"))
                       if isinstance(c, nn.ModuleList)), None)
        if layers is None:
            raise ValueError(f"cannot find the encoder layers of {type(core).__name__} (looked for encoder.layers, "
                             f"encoder.layer, layers); transformers {_version()} is not supported")
        self.container = layers
        self.width = int(self.config.hidden_size)
        registers = getattr(core.embeddings, "register_tokens", None)
        self.num_prefix_tokens = int(self.family.has_cls) + (0 if registers is None else int(registers.shape[1]))
        self.has_cls = self.family.has_cls
        native = _pair(self.config.image_size)
        self.input_size = _pair(getattr(model, "st_adapter_input_size", None) or native)
        self.interpolate = self.input_size != native
        patch = _pair(self.config.patch_size)
        self.grid = (self.input_size[0] // patch[0], self.input_size[1] // patch[1])
        self.final_norm = getattr(core, self.family.final_norm)
        self.name = "hf." + type(model).__name__

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Tokens before the first encoder layer: ``[N, L, C]``."""
        if tuple(frames.shape[-2:]) != self.input_size:
            raise ValueError(f"frames must be {self.input_size[0]}x{self.input_size[1]} (the model's input size), got "
                             f"{frames.shape[-2]}x{frames.shape[-1]}; build the backbone with "
                             f"create_backbone('hf:...', input_size=(H, W)) for another size")
        kw = {"interpolate_pos_encoding": True} if self.interpolate and self.family.interpolate_kwarg else {}
        x = self.core.embeddings(frames, **kw)
        if self.family.pre_norm is not None:
            x = getattr(self.core, self.family.pre_norm)(x)
        return x


def _version() -> str:
    import transformers

    return transformers.__version__


def run_layer_branch(layer: nn.Module, family: Family, which: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """One residual branch of an HF encoder layer, as its own forward computes it:
    ``x + post(f(norm(x)))`` with ``which`` = "attn" (args go to the attention) or "mlp"."""
    norm, fn, post = ((family.norm1, family.attn, family.post_attn) if which == "attn"
                      else (family.norm2, family.mlp, family.post_mlp))
    h = getattr(layer, fn)(getattr(layer, norm)(x), *args, **kwargs)
    if isinstance(h, tuple):  # attention returns (output, weights)
        h = h[0]
    for name in post:
        h = getattr(layer, name)(h)
    return x + h


def layer_checkpointing(layer: nn.Module):
    """The activation checkpointing function that ``gradient_checkpointing_enable()`` set on ``layer``
    when it applies now (turned on, layer in training mode, as ``GradientCheckpointingLayer`` decides),
    else None. It is called as ``fn(forward_with_kwargs_bound, *args)``."""
    if getattr(layer, "gradient_checkpointing", False) and layer.training:
        return layer._gradient_checkpointing_func
    return None


def layer_attributes(family: Family) -> tuple:
    """The sublayer names :func:`run_layer_branch` uses."""
    return (family.norm1, family.attn, *family.post_attn, family.norm2, family.mlp, *family.post_mlp)


def set_input_size(model: nn.Module, input_size: Union[int, tuple]) -> None:
    """Run ``model`` (an HF vision model, before :func:`add_st_adapters`) on frames of ``input_size``:
    an int or (H, W). Its position embeddings are interpolated from the config's size."""
    if not (is_int(input_size) or (isinstance(input_size, (tuple, list)) and len(input_size) == 2
                                   and all(is_int(s) for s in input_size))):
        raise ValueError(f"input_size must be a positive int or a pair (H, W) of positive ints, got {input_size!r}")
    if getattr(model, "st_adapter_config", None) is not None:
        raise ValueError("input_size must be set before add_st_adapters (the adapters' grid depends on it)")
    model.st_adapter_input_size = _pair(input_size)


def create_hf_backbone(name: str, pretrained: bool = False, config: Any = None,
                       input_size: Union[int, tuple, None] = None, **overrides) -> nn.Module:
    """A transformers vision tower (see :func:`stadapter_fast.create_backbone` for ``"hf:<name>"``).

    Args:
        name: a built-in config name (:data:`TINY_CONFIGS`, random weights only) or a Hugging Face
            model id (e.g. ``"openai/clip-vit-base-patch16"``, ``"facebook/dinov2-base"``).
        pretrained: True downloads the weights (``from_pretrained``); False builds random weights from
            the config.
        config: a transformers config, or a dict with ``model_type`` (e.g. ``"vit"``,
            ``"clip_vision_model"``) and its fields. Without it, a model id's config is fetched from the
            hub (``AutoConfig.from_pretrained``, which needs the internet or the local HF cache).
        input_size: frame size (int or (H, W)) if not the config's ``image_size``; position embeddings
            are interpolated.
        overrides: config fields to change (e.g. ``num_hidden_layers=4``); unknown names are an error.
    """
    transformers = import_transformers()
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained must be a bool for 'hf:' backbones, got {pretrained!r}")
    if name in TINY_CONFIGS:
        if pretrained or config is not None:
            raise ValueError(f"'hf:{name}' is a built-in config with random weights: expected pretrained=False and "
                             f"config=None, got pretrained={pretrained!r}, config={type(config).__name__}")
        model_type, fields = TINY_CONFIGS[name]
        cfg = transformers.AutoConfig.for_model(model_type, **fields)
    elif config is None:
        try:
            cfg = transformers.AutoConfig.from_pretrained(name)
        except OSError as e:
            raise OSError(f"cannot get the config of 'hf:{name}' ({e}). Offline, pass config= (a transformers config "
                          f"or a dict with model_type) or use a built-in config: {sorted(TINY_CONFIGS)}") from e
    elif isinstance(config, dict):
        if "model_type" not in config:
            raise ValueError(f"config dict must contain 'model_type' (one of {sorted(FAMILIES)}), got keys "
                             f"{sorted(config)}")
        fields = {k: v for k, v in config.items() if k != "model_type"}
        cfg = transformers.AutoConfig.for_model(config["model_type"], **fields)
    elif isinstance(config, transformers.PretrainedConfig):
        cfg = copy.deepcopy(config)
    else:
        raise ValueError(f"config must be None, a dict or a transformers PretrainedConfig, got {type(config).__name__}")
    if cfg.model_type in _VISION_SUBCONFIG:
        cfg = cfg.vision_config  # a full CLIP / SigLIP config: its image tower
    if cfg.model_type not in FAMILIES:
        raise ValueError(f"config model_type must be one of {sorted(FAMILIES) + sorted(_VISION_SUBCONFIG)}, got "
                         f"{cfg.model_type!r} (from 'hf:{name}')")
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"unknown {type(cfg).__name__} field {k!r} in the backbone keyword arguments (expected "
                             f"config fields such as hidden_size, num_hidden_layers, image_size), got {k}={v!r}")
        setattr(cfg, k, v)
    cls = getattr(transformers, FAMILIES[cfg.model_type].model_class)
    extra = {"add_pooling_layer": False} if cfg.model_type == "vit" else {}  # ViT's pooler: unused, not trained
    model = cls.from_pretrained(name, config=cfg, **extra) if pretrained else cls(cfg, **extra)
    if input_size is not None:
        set_input_size(model, input_size)
    return model
