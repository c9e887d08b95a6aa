"""A ViT video model with ST-Adapters for the model-level benchmark: timm's VisionTransformer (random
weights) where timm is installed, else a minimal block stack with the same block structure."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from stadapter_fast import STAdapterReference, swap_adapters


class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, C))


class _Block(nn.Module):
    """timm Block's attribute names, so one adapter wrapper serves both."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), _Attention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ls1 = self.ls2 = self.drop_path1 = self.drop_path2 = nn.Identity()


class _MiniViT(nn.Module):
    def __init__(self, img, patch, dim, depth, heads):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.embed_dim = dim

    def forward_features(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1) + self.pos_embed.to(x.dtype)
        return self.norm(self.blocks(x))


class AdapterBlock(nn.Module):
    """Runs a (timm-style) ViT block with ST-Adapters before attention and/or before the MLP."""

    def __init__(self, block, pre_attn, pre_mlp, frames):
        super().__init__()
        self.block, self.pre_attn, self.pre_mlp, self.frames = block, pre_attn, pre_mlp, frames

    def forward(self, x):
        b, T = self.block, self.frames
        if self.pre_attn is not None:
            x = self.pre_attn(x, T)
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        if self.pre_mlp is not None:
            x = self.pre_mlp(x, T)
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


class VideoViT(nn.Module):
    def __init__(self, backbone, frames, num_classes):
        super().__init__()
        self.backbone, self.frames = backbone, frames
        self.head = nn.Linear(backbone.embed_dim, num_classes)

    def forward(self, video):  # [B, T, 3, H, W]
        B, T = video.shape[:2]
        feats = self.backbone.forward_features(video.flatten(0, 1))
        return self.head(feats[:, 0].view(B, T, -1).mean(1).float())


def build_backbone(gpu: bool):
    """ViT-B/16 at 224 on GPU (timm if available); a small stack on CPU. Returns (backbone, img)."""
    if gpu:
        try:
            from timm.models.vision_transformer import VisionTransformer

            return VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                     num_classes=0), 224
        except Exception:  # timm missing or not importable: the same architecture, hand-built
            return _MiniViT(224, 16, 768, 12, 12), 224
    return _MiniViT(32, 8, 96, 2, 4), 32


def build_models(adapters_per_block: int, frames: int, dtype: torch.dtype, gpu: bool, Ca: int = 384):
    """(reference model, fast model) with identical weights: frozen backbone in ``dtype``, fp32
    adapters (12xCa pre-MLP, or 24xCa pre-attention + pre-MLP) and head, as in the release."""
    torch.manual_seed(0)
    backbone, img = build_backbone(gpu)
    backbone.to(dtype).requires_grad_(False)
    C = backbone.embed_dim
    Ca = Ca if gpu else 48

    def adapter():
        a = STAdapterReference(C, Ca, (3, 1, 1))
        with torch.no_grad():
            for p in a.parameters():
                p.normal_(0, 0.02)
        return a

    blocks = [AdapterBlock(b, adapter() if adapters_per_block == 2 else None, adapter(), frames)
              for b in backbone.blocks]
    backbone.blocks = nn.Sequential(*blocks)
    ref = VideoViT(backbone, frames, 400)
    fast = copy.deepcopy(ref)
    swap_adapters(fast)
    return ref, fast, img
