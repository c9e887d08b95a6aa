"""M-Adapter (Li et al., CVIU 2024): multi-level side-branch adaptation of a frozen image ViT.

No public code exists; this is this project's reading of the paper's abstract. A parallel branch
adapts the outputs of several levels of a frozen backbone, so no gradient passes through the
backbone: it runs under ``torch.no_grad()`` and keeps no activations for backward. The branch
combines the levels hierarchically with one M-adapter per level, each a fusion module and a
temporal module:

* fusion: the level's tokens ``[B*T, L, C]`` go through LayerNorm and a Linear down-projection to the
  branch width D. They merge with the previous M-adapter's output by addition (``fusion="add"``, the
  default) or a learned per-channel gate (``fusion="gate"``: ``g * new + (1 - g) * prev``, with
  ``g = sigmoid(W [new, prev])``).
  Reasons: the LayerNorm puts levels of very different scales on one footing; addition is the
  simplest hierarchy and, with the gate initialised at 0.5, the gate can learn to weight levels.
* temporal: an ST-Adapter at the branch width (our fused depthwise conv over (T, H, W), any odd
  kernel, any activation; ``FastSTAdapter(D, D // 2)``) with its residual. It sees deeper levels
  already mixed with shallower ones, so temporal modelling is hierarchical too.

Levels default to every 3rd block ending at the last (blocks 2, 5, 8, 11 of 12). The mean of the
last M-adapter's patch tokens (not its class token: the branch has no attention, and its temporal
convs skip prefix tokens, so its class token never sees temporal features; measured on the synthetic
data: 56% with the class token vs the figure in the README with patch pooling) is averaged over
frames, then LayerNorm, Dropout and a Linear head.

The temporal module's adapter starts at zero (the official init), so at first the branch passes the
fused level features through and the model behaves like a multi-level linear probe.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .checks import check_int, is_int
from .integration import BackboneArch, check_input_layout, classifier_head, head_logits, video_frames
from .modules import FastSTAdapter, STAdapterReference
from .ops.dwconv_tokens import check_kernel_size, normalize_act


@dataclass
class MAdapterConfig:
    """M-Adapter branch configuration.

    Args:
        levels: block indices whose outputs feed the branch, or an int k: every k-th block ending
            at the last (default 3: blocks 2, 5, 8, 11 of a 12-block ViT).
        width: branch width D.
        kernel_size, act: of each temporal module's depthwise conv (act defaults to "gelu").
        fusion: "add" or "gate".
        impl: "fast" (FastSTAdapter) or "reference" (STAdapterReference) temporal modules.
        backbone_dtype: cast the frozen backbone (e.g. torch.float16); None leaves it.
    """

    levels: Union[int, Sequence[int]] = 3
    width: int = 384
    kernel_size: Sequence[int] = (3, 1, 1)
    act: Optional[str] = "gelu"
    fusion: str = "add"
    impl: str = "fast"
    backend: str = "auto"
    backbone_dtype: Optional[torch.dtype] = None

    def __post_init__(self):
        if not (is_int(self.levels)
                or (isinstance(self.levels, (list, tuple)) and self.levels and all(isinstance(i, int) for i in self.levels))):
            raise ValueError(f"levels must be a positive int (every k-th block) or a non-empty list of block "
                             f"indices, got {self.levels!r}")
        if isinstance(self.levels, list):
            self.levels = tuple(self.levels)
        check_int("width", self.width, minimum=2)
        self.kernel_size = check_kernel_size(self.kernel_size)
        normalize_act(self.act)
        if self.fusion not in ("add", "gate"):
            raise ValueError(f"fusion must be 'add' or 'gate', got {self.fusion!r}")
        if self.impl not in ("fast", "reference"):
            raise ValueError(f"impl must be 'fast' or 'reference', got {self.impl!r}")

    def resolve_levels(self, depth: int) -> list[int]:
        if isinstance(self.levels, int):
            if self.levels > depth:
                raise ValueError(f"levels={self.levels} (every k-th block) exceeds the backbone's depth {depth}")
            return list(range(depth - 1, -1, -self.levels))[::-1]
        out = sorted({i % depth for i in self.levels if -depth <= i < depth})
        if len(out) != len(set(self.levels)) or len(out) != len(self.levels):
            raise ValueError(f"levels {list(self.levels)} has indices outside [-{depth}, {depth}) or duplicates")
        return out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["levels"] = self.levels if isinstance(self.levels, int) else list(self.levels)
        d["kernel_size"] = list(self.kernel_size)
        d["backbone_dtype"] = None if self.backbone_dtype is None else str(self.backbone_dtype).replace("torch.", "")
        return d


class MAdapter(nn.Module):
    """One level of the branch: fusion (norm + down-projection, merged with the previous level's
    output) followed by the temporal module (an ST-Adapter at the branch width)."""

    def __init__(self, in_channels: int, cfg: MAdapterConfig, num_prefix_tokens: int, grid: tuple, first: bool):
        super().__init__()
        D = cfg.width
        self.norm = nn.LayerNorm(in_channels)
        self.proj = nn.Linear(in_channels, D)
        self.gate = nn.Linear(2 * D, D) if cfg.fusion == "gate" and not first else None
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)  # g = 0.5 at init: equal weight to new and previous levels
        cls = FastSTAdapter if cfg.impl == "fast" else STAdapterReference
        self.temporal = cls(D, max(1, D // 2), cfg.kernel_size, act=cfg.act, num_prefix_tokens=num_prefix_tokens,
                            grid_size=grid, backend=cfg.backend)

    def forward(self, feats: torch.Tensor, prev: Optional[torch.Tensor], T: int) -> torch.Tensor:
        u = self.proj(self.norm(feats))
        if prev is not None:
            if self.gate is None:
                u = u + prev
            else:
                g = torch.sigmoid(self.gate(torch.cat([u, prev], dim=-1)))
                u = g * u + (1 - g) * prev
        return self.temporal(u, T)


class MAdapterVideoClassifier(nn.Module):
    """Video classifier with an M-Adapter side branch on a frozen timm / open_clip / transformers ViT.

    ``forward(video)``: ``[B, C, T, H, W]`` (or ``[B, T, C, H, W]`` with ``input_layout="BTCHW"``) ->
    ``[B, num_classes]`` fp32 logits. The backbone runs under ``torch.no_grad()``.

    ``arch`` is the backbone's :class:`~stadapter_fast.integration.BackboneArch`.
    """

    def __init__(self, backbone: nn.Module, cfg: Optional[MAdapterConfig] = None, num_classes: int = 400,
                 num_frames: int = 8, dropout: float = 0.5, input_layout: str = "BCTHW"):
        super().__init__()
        cfg = cfg or MAdapterConfig()
        check_int("num_classes", num_classes)
        check_input_layout(input_layout)
        self.backbone = backbone
        self.arch = arch = BackboneArch(backbone)
        self.levels = cfg.resolve_levels(arch.depth)
        if cfg.backbone_dtype is not None:
            backbone.to(cfg.backbone_dtype)
        backbone.requires_grad_(False)
        self.m_adapter_config = cfg
        self.branch = nn.ModuleList(MAdapter(arch.width, cfg, arch.num_prefix_tokens, arch.grid, first=i == 0)
                                    for i in range(len(self.levels)))
        # The branch has no token mixing and its temporal convs skip prefix tokens, so its class token
        # never sees the temporal modules' output: pool the patch tokens.
        self.pool = "mean"
        self.num_frames, self.num_classes, self.input_layout = num_frames, num_classes, input_layout
        self.norm = nn.LayerNorm(cfg.width)
        self.dropout = nn.Dropout(dropout)
        self.head = classifier_head(cfg.width, num_classes)
        ref = next(backbone.parameters())
        self.branch.to(ref.device)
        self.norm.to(ref.device)
        self.head.to(ref.device)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout / drop-path in the backbone
        return self

    def level_features(self, video: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """The frozen backbone's tokens at the chosen levels (no autograd graph), and T."""
        frames, T = video_frames(video, self.input_layout, next(self.backbone.parameters()).dtype)
        with torch.no_grad():
            feats = self.arch.block_tokens(frames, self.levels)
        return feats, T

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B = video.shape[0]
        feats, T = self.level_features(video)
        s = None
        for m, f in zip(self.branch, feats):
            s = m(f.to(m.proj.weight.dtype), s, T)  # e.g. an fp16 backbone feeding an fp32 branch
        feat = s[:, self.arch.num_prefix_tokens:].mean(1)
        return head_logits(self.head, self.dropout, self.norm(feat.reshape(B, T, -1).mean(1)))
