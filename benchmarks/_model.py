"""The video model of the model-level benchmark, built with the library's own integration
(``add_st_adapters`` + ``VideoClassifier``): timm's VisionTransformer (random weights) where timm
imports, else a minimal ViT with timm's module layout."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._cases import provider_backend
from benchmarks._harness import device
from stadapter_fast import (FastSTAdapter, STAdapterConfig, VideoClassifier, add_st_adapters,
                            ensure_torchvision_importable, set_adapter_path, swap_adapters)


class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, **_):
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, C))


class _Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), _Attention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ls1 = self.ls2 = self.drop_path1 = self.drop_path2 = nn.Identity()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, img, patch, dim):
        super().__init__()
        self.img_size, self.grid_size = (img, img), (img // patch, img // patch)
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class MiniViT(nn.Module):
    """timm's VisionTransformer layout (patch_embed, _pos_embed, blocks, norm, num_prefix_tokens)."""

    def __init__(self, img, patch, dim, depth, heads):
        super().__init__()
        self.embed_dim, self.num_prefix_tokens = dim, 1
        self.patch_embed = _PatchEmbed(img, patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, dim) * 0.02)
        self.patch_drop = self.norm_pre = nn.Identity()
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def _pos_embed(self, x):
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed


def build_backbone(gpu: bool):
    """ViT-B/16 at 224 on GPU; a 2-block dim-96 ViT at 32x32 on CPU. timm where it imports."""
    dims = dict(img=224, patch=16, dim=768, depth=12, heads=12) if gpu else dict(img=32, patch=8, dim=96, depth=2, heads=4)
    try:
        ensure_torchvision_importable()
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=dims["img"], patch_size=dims["patch"], embed_dim=dims["dim"],
                                 depth=dims["depth"], num_heads=dims["heads"], num_classes=0), dims["img"]
    except ImportError:
        return MiniViT(**dims), dims["img"]


def build_models(adapters_per_block: int, frames: int, dtype: torch.dtype, gpu: bool):
    """(reference classifier, fast classifier, image size) with identical weights: frozen backbone in
    ``dtype``, fp32 adapters (12x384 pre-MLP, or 24x384 pre-attention + pre-MLP) and head."""
    torch.manual_seed(0)
    backbone, img = build_backbone(gpu)
    positions = ("pre_attn", "pre_mlp") if adapters_per_block == 2 else ("pre_mlp",)
    cfg = STAdapterConfig(adapter_channels=384 if gpu else 48, positions=positions, impl="reference",
                          backbone_dtype=dtype)
    ref = VideoClassifier(add_st_adapters(backbone, cfg, num_frames=frames), num_classes=400, num_frames=frames)
    with torch.no_grad():  # non-zero adapters, so the output check compares real adapter outputs
        for p in ref.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    fast = copy.deepcopy(ref)
    swap_adapters(fast)
    return ref, fast, img


def build_model_step(config, dtype, mode, provider, compile_mode):
    """(step(i), output()) of the level-3 model for one provider: ``config`` = (name, adapters per
    block); ``mode`` "train_step" (fwd + bwd + AdamW) or "inference"."""
    gpu = device() == "cuda"
    frames, clips = (8, 32) if gpu else (8, 2)
    ref, fast, img = build_models(config[1], frames, dtype, gpu)
    model = (ref if provider.startswith("reference") else fast).to(device())
    if provider == "fast_onepass":
        set_adapter_path(model, "one_pass")
    for m in model.modules():
        if isinstance(m, FastSTAdapter):
            m.backend = provider_backend(provider)
    fwd = torch.compile(model, mode=compile_mode) if provider.endswith("compiled") else model
    g = torch.Generator(device=device()).manual_seed(0)
    video = torch.randn(clips, 3, frames, img, img, device=device(), generator=g).to(dtype)
    labels = torch.randint(0, 400, (clips,), device=device(), generator=g)
    # capturable on GPU: the step can then be captured into a CUDA graph (the harness's graph time)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01,
                            capturable=gpu)

    def step(i):
        with torch.autocast(device(), dtype=dtype):
            if mode == "inference":
                with torch.no_grad():
                    return fwd(video)
            loss = torch.nn.functional.cross_entropy(fwd(video), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def output():
        with torch.no_grad(), torch.autocast(device(), dtype=dtype):
            return fwd(video)
    return step, output
