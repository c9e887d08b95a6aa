"""Level 2: the whole adapter (fc1 -> conv -> act -> fc2 -> residual), fp32 parameters under autocast
with tokens in the autocast dtype (the release's recipe); the official adapter and mmaction2's variant."""
import math

import pytest
import torch

from benchmarks._cases import AMP_DTYPES, PROVIDERS, SHAPES, VARIANTS, dtype_id, provider_backend
from benchmarks._harness import device, rotated_inputs
from benchmarks.conftest import skip_unavailable
from stadapter_fast import (FastMMAction2STAdapter, FastSTAdapter, MMAction2STAdapterReference, STAdapterReference,
                            swap_adapters)
from stadapter_fast.ops.dwconv_tokens import act_fwd


class ReferenceChannelsLast(STAdapterReference):
    """The reference with the conv input in channels_last_3d (routes the conv to cuDNN on GPU)."""

    def forward(self, x, T):
        N, L, C = x.shape
        P, Ca = self.num_prefix_tokens, self.adapter_channels
        H = W = math.isqrt(L - P)
        h = self.fc1(x[:, P:, :]).view(N // T, T, H, W, Ca).permute(0, 4, 1, 2, 3)
        h = self.conv(h.contiguous(memory_format=torch.channels_last_3d))
        h = self.fc2(act_fwd(h.permute(0, 2, 3, 4, 1).reshape(N, H * W, Ca), self.act))
        return torch.cat([x[:, :P, :], x[:, P:, :] + h], dim=1)


def make_adapter(provider, C, Ca, ks, act, compile_mode):
    cls = {"reference": STAdapterReference, "reference_channels_last": ReferenceChannelsLast}.get(
        provider.replace("_compiled", ""), FastSTAdapter)
    torch.manual_seed(0)
    kw = {"path": "one_pass"} if provider == "fast_onepass" else {}
    if cls is FastSTAdapter:
        kw["backend"] = provider_backend(provider)
    m = cls(C, Ca, ks, act=act, **kw).to(device())
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    if provider == "reference_channels_last":
        m.conv.to(memory_format=torch.channels_last_3d)
    if provider.endswith("compiled"):
        return m, torch.compile(m, mode=compile_mode, fullgraph=provider.startswith("fast"))
    return m, m


def build_adapter(shape, ks, act, dtype, mode, provider, compile_mode):
    dev = device()
    xs, dy = rotated_inputs((shape.N, shape.L, shape.C), dtype, mode != "fwd", seed=1)
    n = len(xs)
    m, fn = make_adapter(provider, shape.C, shape.Ca, ks, act, compile_mode)
    T = shape.T

    def step(i):
        x = xs[i % n]
        with torch.autocast(dev, dtype=dtype):
            if mode == "fwd":
                with torch.no_grad():
                    return fn(x, T)
            x.grad = None
            m.zero_grad(set_to_none=True)
            y = fn(x, T)
        y.backward(dy)

    def output():
        with torch.no_grad(), torch.autocast(dev, dtype=dtype):
            return fn(xs[0], T)
    return step, output


def adapter_cost(shape, ks, dtype, mode):
    """Minimum bytes (each input read once, each output written once) and flops of one call."""
    es = torch.finfo(dtype).bits // 8
    tok = shape.N * shape.L * shape.C * es
    params = (2 * shape.C * shape.Ca + shape.Ca * (2 + math.prod(ks)) + shape.C) * 4
    gemm = 2 * shape.N * shape.HW * shape.C * shape.Ca
    conv = 2 * shape.N * shape.HW * shape.Ca * math.prod(ks)
    if mode == "fwd":
        return 2 * tok + params, 2 * gemm + conv
    return 4 * tok + 2 * params, 6 * gemm + 3 * conv


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", AMP_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_adapter(row, compile_mode, shape, variant, dtype, mode, provider):
    skip_unavailable(provider)
    name, ks, act = variant
    min_bytes, flops = adapter_cost(shape, ks, dtype, mode)
    r = row(level=2, case_key=(shape.name, name), mode=mode, dtype=dtype, min_bytes=min_bytes, flops=flops,
            build=lambda p: build_adapter(shape, ks, act, dtype, mode, p, compile_mode))
    r.run(provider)


# mmaction2's adapter (VindLU): [b, t, l, c] in and out, the class token through act + fc2, a learnable
# output scale and drop path. reference = the plain-PyTorch restatement; fast = what swap_adapters makes
# of it. fwd runs in eval mode, fwd_bwd in training mode (drop path on, drop_prob 0.1 as mmaction2's
# default); outputs are checked in eval mode.
MM2_PROVIDERS = ["reference", "reference_compiled", "fast", "fast_compiled", "fast_torch_compiled", "fast_onepass"]


class _Holder(torch.nn.Module):
    def __init__(self, adapter):
        super().__init__()
        self.adapter = adapter


def make_mmaction2_adapter(provider, shape, compile_mode):
    torch.manual_seed(0)
    ref = MMAction2STAdapterReference((3, 3, 3), shape.C, shape.Ca, drop_prob=0.1, grid_size=(shape.grid,) * 2,
                                      num_prefix_tokens=shape.P)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02)
    m = _Holder(ref.to(device()))
    if provider != "reference" and not provider.startswith("reference_"):
        path = "one_pass" if provider == "fast_onepass" else "auto"
        n = swap_adapters(m, backend=provider_backend(provider), path=path, strict=True)
        assert n == 1 and isinstance(m.adapter, FastMMAction2STAdapter)
    m = m.adapter
    if provider.endswith("compiled"):
        return m, torch.compile(m, mode=compile_mode, fullgraph=provider.startswith("fast"))
    return m, m


def build_mmaction2_adapter(shape, dtype, mode, provider, compile_mode):
    dev = device()
    xs, dy = rotated_inputs((shape.B, shape.T, shape.L, shape.C), dtype, mode != "fwd", seed=1)
    n = len(xs)
    m, fn = make_mmaction2_adapter(provider, shape, compile_mode)
    m.train(mode != "fwd")

    def step(i):
        x = xs[i % n]
        with torch.autocast(dev, dtype=dtype):
            if mode == "fwd":
                with torch.no_grad():
                    return fn(x)
            x.grad = None
            m.zero_grad(set_to_none=True)
            y = fn(x)
        y.backward(dy)

    def output():
        was = m.training
        m.eval()
        with torch.no_grad(), torch.autocast(dev, dtype=dtype):
            y = fn(xs[0])
        m.train(was)
        return y
    return step, output


@pytest.mark.parametrize("provider", MM2_PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", AMP_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_adapter_mmaction2(row, compile_mode, shape, dtype, mode, provider):
    skip_unavailable(provider)
    ks = (3, 3, 3)
    min_bytes, flops = adapter_cost(shape, ks, dtype, mode)
    r = row(level=2, case_key=(shape.name, "mmaction2_k333relu"), mode=mode, dtype=dtype, min_bytes=min_bytes,
            flops=flops, build=lambda p: build_mmaction2_adapter(shape, dtype, mode, p, compile_mode))
    r.run(provider)
