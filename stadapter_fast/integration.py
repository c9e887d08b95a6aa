"""ST-Adapters in timm, open_clip and Hugging Face transformers ViTs: ``STAdapterConfig``,
``add_st_adapters``, ``VideoClassifier``.

Insertion follows the paper and the release: an adapter before attention and/or before the MLP of each
chosen block, receiving the block input as ``[B*T, L, C]``. Each chosen block is wrapped by
:class:`STAdapterBlock`, which calls the block (so its hooks and its library's per-layer machinery
run) with a forward of its own installed on that block instance: the block's sublayers with the
adapters in between (library classes are not patched). The frame count comes from a small context
object shared by the wrappers (:class:`VideoClassifier` sets it from the video it is given); each
wrapper call reads it once and passes it on as an argument, so a re-run of the call in backward
(activation checkpointing) uses the same count.

Note: wrapping moves a chosen block's parameters under ``.block.`` in the backbone's state_dict
(``blocks.3.block.attn.qkv.weight``). Load pretrained backbone weights before adding adapters.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.utils.checkpoint
from torch import nn

from . import hf
from ._backend import check_path_options
from .checks import check_int, is_int
from .modules import FastSTAdapter, STAdapterReference
from .ops.dwconv_tokens import check_kernel_size, normalize_act

POSITIONS = ("pre_attn", "pre_mlp")
#: ``input_layout`` of the video classifiers: channels then time (the release's), or time then channels
INPUT_LAYOUTS = ("BCTHW", "BTCHW")


@dataclass
class STAdapterConfig:
    """How to insert ST-Adapters.

    Args:
        adapter_channels: bottleneck width Ca (384 in the release).
        kernel_size: odd (kt, kh, kw); the release uses (3, 1, 1).
        act: None (the release) or a name in :data:`stadapter_fast.ACTIVATIONS` ("relu", "gelu", ...).
        positions: any of "pre_attn", "pre_mlp" ("pre_mlp" alone = the release's 12x384 on K400;
            both = 24x384 for SSv2).
        layers: "all", an int k (the last k blocks), or a non-empty sequence of block indices.
        impl: "fast" (FastSTAdapter) or "reference" (STAdapterReference, for comparisons).
        backend: backend of the fast adapters ("auto", "triton", "torch").
        path, recompute: the fast adapters' execution path ("auto", "two_pass", "one_pass") and
            one-pass recompute option (see FastSTAdapter). Like impl and backend, they do not affect
            checkpoints.
        freeze_backbone: only adapters (and a classifier head) train.
        backbone_dtype: e.g. torch.float16 / torch.bfloat16 casts the frozen backbone (the release's
            recipe, with adapters and head kept fp32 under autocast); None leaves it as is.
    """

    adapter_channels: int = 384
    kernel_size: Sequence[int] = (3, 1, 1)
    act: Optional[str] = None
    positions: Sequence[str] = ("pre_mlp",)
    layers: Union[str, int, Sequence[int]] = "all"
    impl: str = "fast"
    backend: str = "auto"
    path: str = "auto"
    recompute: bool = True
    freeze_backbone: bool = True
    backbone_dtype: Optional[torch.dtype] = None

    def __post_init__(self):
        check_int("adapter_channels", self.adapter_channels)
        self.kernel_size = check_kernel_size(self.kernel_size)
        self.act = None if normalize_act(self.act) == "none" else self.act
        if isinstance(self.positions, str):
            self.positions = (self.positions,)
        self.positions = tuple(self.positions)
        if not self.positions or any(p not in POSITIONS for p in self.positions) or len(set(self.positions)) != len(self.positions):
            raise ValueError(f"positions must be a non-empty subset of {POSITIONS}, got {self.positions!r}")
        if self.impl not in ("fast", "reference"):
            raise ValueError(f"impl must be 'fast' or 'reference', got {self.impl!r}")
        check_path_options(self.path, self.recompute)
        if not (self.layers == "all" or is_int(self.layers)
                or (isinstance(self.layers, (list, tuple)) and self.layers
                    and all(isinstance(i, int) for i in self.layers))):
            raise ValueError(f"layers must be 'all', a positive int (last k blocks) or a non-empty list of block "
                             f"indices, got {self.layers!r}")
        if not isinstance(self.freeze_backbone, bool):
            raise ValueError(f"freeze_backbone must be a bool, got {self.freeze_backbone!r}")
        if isinstance(self.layers, list):
            self.layers = tuple(self.layers)
        if self.backbone_dtype not in (None, torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"backbone_dtype must be None, torch.float16, torch.bfloat16 or torch.float32, "
                             f"got {self.backbone_dtype!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kernel_size"] = list(self.kernel_size)
        d["positions"] = list(self.positions)
        d["layers"] = self.layers if isinstance(self.layers, (str, int)) else list(self.layers)
        d["backbone_dtype"] = None if self.backbone_dtype is None else str(self.backbone_dtype).replace("torch.", "")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "STAdapterConfig":
        d = dict(d)
        if d.get("backbone_dtype") is not None:
            d["backbone_dtype"] = getattr(torch, d["backbone_dtype"])
        d["kernel_size"] = tuple(d["kernel_size"])
        d["positions"] = tuple(d["positions"])
        if isinstance(d["layers"], list):
            d["layers"] = tuple(d["layers"])
        return cls(**d)


class FrameContext:
    """Frames per clip, shared by the adapter wrappers of one backbone."""

    def __init__(self, num_frames: int):
        self.num_frames = num_frames


class BackboneArch:
    """A timm, open_clip or transformers ViT as the adapters and classifiers see it, read off the model.

    Attributes: ``kind`` ("timm", "open_clip" or "hf"), ``model`` (the image tower: open_clip's
    ``.visual``, a transformers model's core), ``container`` (the ``nn.ModuleList`` / ``nn.Sequential``
    of blocks, where adapter wrappers go), ``depth``, ``width``, ``num_prefix_tokens`` (class and
    register tokens), ``grid`` (patch grid ``(H, W)``), ``has_cls``, ``final_norm``, ``name``; for "hf",
    ``hf`` (the :class:`stadapter_fast.hf.HFTower`).

    :meth:`block_tokens` runs frames through the tower: the one place that knows each library's
    embedding and block calls; :meth:`frame_tokens` is its output after the last block.
    """

    def __init__(self, model: nn.Module):
        if hasattr(model, "visual") and hasattr(model.visual, "transformer"):
            model = model.visual  # open_clip CLIP -> its image tower
        self.model = model
        if hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens"):
            self.kind = "timm"
            self.container = model.blocks
            self.width = model.embed_dim
            self.num_prefix_tokens = int(model.num_prefix_tokens)
            self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
            self.has_cls = getattr(model, "cls_token", None) is not None
            self.final_norm = model.norm if not isinstance(model.norm, nn.Identity) else getattr(model, "fc_norm", model.norm)
            self.name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        elif hasattr(model, "transformer") and hasattr(model.transformer, "resblocks") and hasattr(model, "conv1"):
            self.kind = "open_clip"
            self.container = model.transformer.resblocks
            self.width = model.conv1.out_channels
            self.num_prefix_tokens = 1
            self.grid = tuple(int(g) for g in model.grid_size)
            self.has_cls = True
            self.final_norm = model.ln_post
            self.name = "open_clip." + type(model).__name__
        elif hf.is_hf_model(model):
            self.kind = "hf"
            self.hf = hf.HFTower(model)
            self.model = self.hf.core
            for a in ("container", "width", "num_prefix_tokens", "grid", "has_cls", "final_norm", "name"):
                setattr(self, a, getattr(self.hf, a))
        else:
            raise ValueError(f"unsupported backbone {type(model).__name__}: expected a timm VisionTransformer, an "
                             f"open_clip CLIP model / its .visual VisionTransformer, or a transformers "
                             f"{'/'.join(f.model_class for f in hf.FAMILIES.values())}")
        self.depth = len(self.container)

    def signature(self) -> dict:
        return {"name": self.name, "kind": self.kind, "width": self.width, "depth": self.depth,
                "grid": list(self.grid), "num_prefix_tokens": self.num_prefix_tokens}

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Tokens before the first block: ``[N, L, C]`` for frames ``[N, 3, H, W]``."""
        m = self.model
        if self.kind == "timm":
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(frames))))
        if self.kind == "hf":
            return self.hf.embed(frames)
        return m._embeds(frames)

    def block_tokens(self, frames: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Tokens ``[N, L, C]`` after each block in ``indices`` (ascending, in ``[0, depth)``), for frames
        ``[N, 3, H, W]``; blocks past the deepest one do not run.

        Blocks are called as their library's encoder calls them: transformers layers with no attention
        mask, an open_clip transformer's blocks in its layout (sequence-first unless ``batch_first``)
        and with its activation checkpointing (``set_grad_checkpointing``) when gradients are on."""
        x, want, out = self.embed(frames), set(indices), []
        tr = self.model.transformer if self.kind == "open_clip" else None
        seq_first = tr is not None and not getattr(tr, "batch_first", True)
        ckpt = tr is not None and getattr(tr, "grad_checkpointing", False) and torch.is_grad_enabled()
        if seq_first:
            x = x.transpose(0, 1)  # NLD -> LND
        for i, blk in enumerate(self.container):
            if self.kind == "hf":
                x = blk(x, None)  # CLIP's layer takes the mask positionally, without a default
            elif ckpt:  # a wrapper's frame count goes in as an argument: the re-run in backward gets it too
                kw = {FRAMES_KWARG: blk.frames.num_frames} if isinstance(blk, STAdapterBlock) else {}
                x = torch.utils.checkpoint.checkpoint(blk, x, None, None, None, use_reentrant=False, **kw)
            else:
                x = blk(x)
            if i in want:
                out.append(x.transpose(0, 1) if seq_first else x)
            if i >= indices[-1]:
                break
        return out

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block, before the final norm: [B*T, L, C]."""
        return self.block_tokens(frames, [self.depth - 1])[0]


#: keyword argument that carries a wrapper call's frame count into the wrapped block's forward
FRAMES_KWARG = "_st_adapter_num_frames"


class STAdapterBlock(nn.Module):
    """A ViT block with ST-Adapters before its attention and/or its MLP.

    ``kind`` is "timm", "open_clip" or "hf"; for "hf", ``family`` names the layer's sublayers
    (:class:`stadapter_fast.hf.Family`).

    :meth:`forward` reads the frame count from ``frames`` and calls ``block`` with it as the keyword
    argument :data:`FRAMES_KWARG` (a caller may pass that keyword itself). The block's forward is
    :meth:`block_forward`, set on the block instance: calling the block runs its hooks (transformers
    records ``output_hidden_states`` with them) around the adapted computation, and any re-run of
    the call with the same arguments uses the same frame count."""

    def __init__(self, block: nn.Module, kind: str, frames: FrameContext,
                 pre_attn: Optional[nn.Module], pre_mlp: Optional[nn.Module], family: Optional[hf.Family] = None):
        super().__init__()
        self.block, self.kind, self.frames = block, kind, frames
        self.pre_attn, self.pre_mlp = pre_attn, pre_mlp
        self.family = family
        if kind == "hf" and family is None:
            raise ValueError("kind='hf' needs family (a stadapter_fast.hf.Family), got None")
        needed = {"timm": ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"),
                  "open_clip": ("ln_1", "attention", "ls_1", "ln_2", "mlp", "ls_2"),
                  "hf": hf.layer_attributes(family) if family is not None else ()}.get(kind)
        if needed is None:
            raise ValueError(f"kind must be 'timm', 'open_clip' or 'hf', got {kind!r}")
        missing = [a for a in needed if not hasattr(block, a)]
        if missing:
            raise ValueError(f"cannot insert adapters into {type(block).__name__}: missing {missing} "
                             f"(supported: timm Block, open_clip ResidualAttentionBlock, the encoder layers of "
                             f"transformers' {'/'.join(f.model_class for f in hf.FAMILIES.values())})")
        self.batch_first = kind in ("timm", "hf") or getattr(getattr(block, "attn", None), "batch_first", True)
        #: activation checkpointing (see :func:`set_backbone_checkpointing`)
        self.checkpoint = False
        block.forward = self.block_forward

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        kwargs.setdefault(FRAMES_KWARG, self.frames.num_frames)
        return self.block(x, *args, **kwargs)

    def block_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The wrapped block's forward: its sublayers with the adapters in between, for clips of
        ``kwargs[FRAMES_KWARG]`` frames (the context's count when the block is called without it).
        Checkpointed when :attr:`checkpoint` is set and gradients are on, or when transformers'
        ``gradient_checkpointing_enable()`` has turned it on for the layer; the re-run in backward gets
        the same frame count, and restores the RNG state, so dropout masks repeat."""
        T = kwargs.pop(FRAMES_KWARG, None)
        T = self.frames.num_frames if T is None else T
        if self.checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, T, *args, use_reentrant=False, **kwargs)
        hf_checkpoint = hf.layer_checkpointing(self.block) if self.kind == "hf" else None
        if hf_checkpoint is not None:
            return hf_checkpoint(functools.partial(self._forward, **kwargs), x, T, *args)
        return self._forward(x, T, *args, **kwargs)

    def _adapt(self, adapter: Optional[nn.Module], x: torch.Tensor, T: int) -> torch.Tensor:
        if adapter is None:
            return x
        if self.batch_first:
            return adapter(x, T)
        return adapter(x.transpose(0, 1), T).transpose(0, 1)  # LND <-> NLD

    def _forward(self, x: torch.Tensor, T: int, *args, **kwargs) -> torch.Tensor:
        b = self.block
        x = self._adapt(self.pre_attn, x, T)
        if self.kind == "timm":
            x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x), *args, **kwargs)))
            x = self._adapt(self.pre_mlp, x, T)
            return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))
        if self.kind == "hf":
            x = hf.run_layer_branch(b, self.family, "attn", x, *args, **kwargs)
            x = self._adapt(self.pre_mlp, x, T)
            return hf.run_layer_branch(b, self.family, "mlp", x)
        attn_mask = kwargs.get("attn_mask", args[2] if len(args) > 2 else None)
        x = x + b.ls_1(b.attention(q_x=b.ln_1(x), attn_mask=attn_mask))
        x = self._adapt(self.pre_mlp, x, T)
        return x + b.ls_2(b.mlp(b.ln_2(x)))


def _chosen_layers(layers, depth: int) -> list[int]:
    if layers == "all":
        return list(range(depth))
    if isinstance(layers, int):
        if layers > depth:
            raise ValueError(f"layers={layers} (last k blocks) exceeds the backbone's depth {depth}")
        return list(range(depth - layers, depth))
    out = sorted({i % depth if -depth <= i < depth else None for i in layers} - {None})
    if len(out) != len(set(layers)):
        raise ValueError(f"layers {list(layers)} has indices outside [-{depth}, {depth}) or duplicates")
    return out


def add_st_adapters(backbone: nn.Module, cfg: Optional[STAdapterConfig] = None, num_frames: int = 8) -> nn.Module:
    """Insert ST-Adapters into a timm VisionTransformer, an open_clip CLIP model (or its ``.visual``) or a
    transformers CLIPVisionModel[WithProjection] / SiglipVisionModel / Dinov2Model /
    Dinov2WithRegistersModel / ViTModel.

    Modifies ``backbone`` in place and returns it. Prefix tokens (class, register tokens) and the
    patch grid (non-square too) are read from the model. With ``cfg.freeze_backbone`` every
    backbone parameter stops requiring grad and only the adapters train. ``num_frames`` is the
    initial frame count. :class:`VideoClassifier` updates it per call; otherwise use
    :func:`set_num_frames`.
    """
    cfg = cfg or STAdapterConfig()
    if getattr(backbone, "st_adapter_config", None) is not None:
        raise ValueError("backbone already has ST-Adapters (st_adapter_config is set)")
    arch = BackboneArch(backbone)
    if cfg.backbone_dtype is not None:
        backbone.to(cfg.backbone_dtype)
    if cfg.freeze_backbone:
        backbone.requires_grad_(False)
    ref = next(arch.model.parameters())
    frames = FrameContext(num_frames)
    cls = FastSTAdapter if cfg.impl == "fast" else STAdapterReference

    fast_kw = dict(path=cfg.path, recompute=cfg.recompute) if cfg.impl == "fast" else {}

    def make():
        a = cls(arch.width, cfg.adapter_channels, cfg.kernel_size, act=cfg.act,
                num_prefix_tokens=arch.num_prefix_tokens, grid_size=arch.grid, backend=cfg.backend, **fast_kw)
        return a.to(ref.device)  # fp32 adapters, whatever the backbone's dtype

    for i in _chosen_layers(cfg.layers, arch.depth):
        arch.container[i] = STAdapterBlock(arch.container[i], arch.kind, frames,
                                           make() if "pre_attn" in cfg.positions else None,
                                           make() if "pre_mlp" in cfg.positions else None,
                                           family=arch.hf.family if arch.kind == "hf" else None)
    backbone.st_adapter_config = cfg
    backbone.st_adapter_frames = frames
    return backbone


def set_num_frames(model: nn.Module, num_frames: int) -> None:
    """Set the frame count the adapters of ``model`` (a backbone or classifier) use.

    Each call of a wrapped block reads it once; a checkpointing that re-calls the wrapper itself in
    backward (timm's ``set_grad_checkpointing``) reads it again, so keep it until that backward."""
    ctx = getattr(model, "st_adapter_frames", None) or getattr(getattr(model, "backbone", None), "st_adapter_frames", None)
    if ctx is None:
        raise ValueError("model has no ST-Adapters (call add_st_adapters first)")
    ctx.num_frames = num_frames


def set_backbone_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Activation checkpointing of every block that holds ST-Adapters (the adapters inside included):
    in training, such a block keeps only its input for backward and re-runs itself there. Less
    activation memory for one more forward of those blocks; gradients are unchanged. Blocks without
    adapters of a frozen backbone keep nothing for backward anyway. Returns how many blocks."""
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be a bool, got {enabled!r}")
    blocks = [m for m in model.modules() if isinstance(m, STAdapterBlock)]
    for m in blocks:
        m.checkpoint = enabled
    return len(blocks)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapter_parameter_count(in_channels: int, cfg: STAdapterConfig, num_adapters: int) -> int:
    """Formula: per adapter C*Ca + Ca (fc1) + Ca*kt*kh*kw + Ca (conv) + Ca*C + C (fc2)."""
    C, Ca = in_channels, cfg.adapter_channels
    return num_adapters * (2 * C * Ca + Ca + Ca * math.prod(cfg.kernel_size) + Ca + C)


def check_input_layout(input_layout: str) -> str:
    """``input_layout`` if it is one of :data:`INPUT_LAYOUTS`, else a ValueError."""
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"input_layout must be 'BCTHW' or 'BTCHW', got {input_layout!r}")
    return input_layout


def video_frames(video: torch.Tensor, input_layout: str, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """The frames of ``video`` (``[B, C, T, H, W]`` for ``input_layout="BCTHW"``, ``[B, T, C, H, W]`` for
    "BTCHW") as one batch ``[B*T, C, H, W]`` in ``dtype`` (the backbone's), and T."""
    if video.dim() != 5:
        raise ValueError(f"video must be 5-D ({input_layout}), got shape {tuple(video.shape)}")
    if input_layout == "BCTHW":
        video = video.transpose(1, 2)
    B, T = video.shape[:2]
    return video.reshape(B * T, *video.shape[2:]).to(dtype), T


def classifier_head(width: int, num_classes: int) -> nn.Linear:
    """The classifiers' ``Linear`` head: weights N(0, 0.02), zero bias (the release's init)."""
    head = nn.Linear(width, num_classes)
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def head_logits(head: nn.Linear, dropout: nn.Module, feat: torch.Tensor) -> torch.Tensor:
    """``head(dropout(feat))`` in fp32 with autocast off (the head is tiny): fp32 logits."""
    with torch.autocast(feat.device.type, enabled=False):
        return head(dropout(feat.float()))


class VideoClassifier(nn.Module):
    """Video classifier on an image ViT with ST-Adapters, as in the release.

    Frames go through the backbone. The class token (or, with ``pool="mean"`` or for models without
    one, the mean of the patch tokens) is averaged over frames, then passed through the backbone's
    final norm, ``Dropout(dropout)`` and a ``Linear`` head (init std 0.02, zero bias).

    ``forward(video)``: ``video`` is ``[B, C, T, H, W]`` (channels, then time: the release's
    layout) or, with ``input_layout="BTCHW"``, ``[B, T, C, H, W]``. Returns ``[B, num_classes]``
    fp32 logits.

    ``arch`` is the backbone's :class:`BackboneArch` (width, prefix tokens, final norm, ...).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_frames: int = 8, dropout: float = 0.5,
                 pool: str = "auto", input_layout: str = "BCTHW"):
        super().__init__()
        check_int("num_classes", num_classes)
        check_input_layout(input_layout)
        if pool not in ("auto", "cls", "mean"):
            raise ValueError(f"pool must be 'auto', 'cls' or 'mean', got {pool!r}")
        self.backbone = backbone
        self.arch = BackboneArch(backbone)
        if pool == "cls" and not self.arch.has_cls:
            raise ValueError(f"pool='cls' but {self.arch.name} has no class token; use pool='mean'")
        self.pool = ("cls" if self.arch.has_cls else "mean") if pool == "auto" else pool
        self.num_frames, self.num_classes, self.input_layout = num_frames, num_classes, input_layout
        self.dropout = nn.Dropout(dropout)
        self.head = classifier_head(self.arch.width, num_classes)
        if getattr(backbone, "st_adapter_frames", None) is not None:
            backbone.st_adapter_frames.num_frames = num_frames

    def frame_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame tokens after the last block (before the final norm): [B*T, L, C]."""
        frames, T = video_frames(video, self.input_layout, next(self.backbone.parameters()).dtype)
        ctx = getattr(self.backbone, "st_adapter_frames", None)
        if ctx is not None:
            ctx.num_frames = T
        return self.arch.frame_tokens(frames)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B = video.shape[0]
        tokens = self.frame_tokens(video)
        P = self.arch.num_prefix_tokens
        feat = tokens[:, 0] if self.pool == "cls" else tokens[:, P:].mean(1)
        feat = feat.reshape(B, -1, feat.shape[-1]).mean(1)
        return head_logits(self.head, self.dropout, self.arch.final_norm(feat))


def create_backbone(name: str, pretrained: Union[bool, str] = False, **kwargs) -> nn.Module:
    """A backbone by name: ``"timm:<model>"`` (e.g. ``timm:vit_base_patch16_224``),
    ``"open_clip:<model>"`` (e.g. ``open_clip:ViT-B-16``; returns the image tower ``.visual``) or
    ``"hf:<model id or built-in config>"`` (a transformers vision tower, e.g.
    ``hf:facebook/dinov2-base`` or ``hf:tiny-vit``).

    ``pretrained`` passes through (timm, hf: bool; open_clip: a tag such as ``"openai"`` or True for
    "openai"). Downloads happen only when it is set. kwargs go to the library's constructor, e.g.
    ``img_size=(224, 160)`` (timm) or ``force_image_size=...`` (open_clip).

    For ``hf:``, kwargs are ``config=`` (a transformers config, or a dict with ``model_type``: needed
    offline for a model id with ``pretrained=False``), ``input_size=`` (frame size if not the config's
    ``image_size``; position embeddings are interpolated) and config fields to override; see
    :func:`stadapter_fast.hf.create_hf_backbone`. Built-in configs (random weights, no download):
    ``hf:tiny-clip``, ``hf:tiny-siglip``, ``hf:tiny-dinov2``, ``hf:tiny-dinov2-registers``, ``hf:tiny-vit``.
    """
    from ._compat import ensure_torchvision_importable

    lib, _, model = name.partition(":")
    if not model:
        raise ValueError(f"backbone name must be 'timm:<model>', 'open_clip:<model>' or 'hf:<model>', got {name!r}")
    if lib == "hf":
        return hf.create_hf_backbone(model, pretrained, **kwargs)
    ensure_torchvision_importable()
    if lib == "timm":
        import timm

        return timm.create_model(model, pretrained=bool(pretrained), num_classes=0, **kwargs)
    if lib == "open_clip":
        import open_clip

        tag = ("openai" if pretrained is True else pretrained) or None
        return open_clip.create_model(model, pretrained=tag, **kwargs).visual
    raise ValueError(f"backbone library must be 'timm', 'open_clip' or 'hf', got {lib!r} in {name!r}")
