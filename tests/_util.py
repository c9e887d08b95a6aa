"""Shared test helpers: device, per-dtype tolerances, comparison against an fp64 reference."""
import os

import torch

from stadapter_fast.swap import rel_err

HAS_CUDA = torch.cuda.is_available()
TRITON_OK = HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if HAS_CUDA else "cpu"

# Relative tolerance, max|a - b| / max|b|, per dtype, against an fp64 reference.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "",
                 factor: float = 1.0) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (an unwritten output?)"
    err = rel_err(actual, expected)
    tol = RTOL[dtype] * factor
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"


def assert_models_agree(ref: torch.nn.Module, fast: torch.nn.Module, x: torch.Tensor, factor: float = 1.0) -> None:
    """``fast(x)`` matches ``ref(x)`` (fp32 logits), and so do the gradients of ``sum(y ** 2)`` with respect
    to each model's trainable parameters (in order), within the fp32 tolerance times ``factor``."""
    outs = []
    for m in (ref, fast):
        y = m(x)
        outs.append((y, torch.autograd.grad(y.square().sum(), [p for p in m.parameters() if p.requires_grad])))
    assert_close(outs[1][0], outs[0][0], torch.float32, "logits", factor=factor)
    for a, b in zip(outs[1][1], outs[0][1]):
        assert_close(a, b, torch.float32, "grad", factor=factor)


def randomize(model: torch.nn.Module, std: float, seed: int = 0, trainable_only: bool = False) -> torch.nn.Module:
    """Replaces the parameters of ``model`` by N(0, std^2) draws (in each parameter's dtype, from a
    generator seeded with ``seed``); with ``trainable_only``, only those that require grad (a frozen
    backbone keeps its weights). Returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad or not trainable_only:
                p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def randomize_trainable(model: torch.nn.Module, seed: int = 1, std: float = 0.05) -> torch.nn.Module:
    """:func:`randomize` of the trainable parameters (adapters, branch, head) of a model."""
    return randomize(model, std, seed, trainable_only=True)


def tiny_open_clip():
    """open_clip's ViT-B-16 tower at 32x32 with random weights; skips the calling test without open_clip
    (the timm cases of the same test module still run)."""
    import pytest

    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed")
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=32).visual


def backends():
    """Backends testable here: torch always; triton on GPU or through the interpreter."""
    return ["torch", "triton"] if TRITON_OK else ["torch"]


def mixed_drop_seed(draw, start: int = 0, tries: int = 200) -> int:
    """The first seed from ``start`` after which ``draw()`` (drop-path draws from the default generator,
    as a list of per-clip factors) keeps some clips and drops others in every factor. Draws depend on the
    device and dtype (CUDA's Bernoulli draws fp64 from other random numbers than fp32), so a fixed seed
    that mixes on CPU may keep every clip on a GPU."""
    for seed in range(start, start + tries):
        torch.manual_seed(seed)
        if all(0 < int((d != 0).sum()) < d.numel() for d in draw()):
            return seed
    raise AssertionError(f"no seed in [{start}, {start + tries}) gives mixed drop masks")
