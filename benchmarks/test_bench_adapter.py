"""Level 2: the whole adapter (fc1 -> conv -> act -> fc2 -> residual), fp32 parameters under autocast
with tokens in the autocast dtype (the release's recipe)."""
import math

import pytest
import torch

from benchmarks._cases import AMP_DTYPES, PROVIDERS, SHAPES, VARIANTS, dtype_id, provider_backend
from benchmarks._harness import device, rotated_inputs
from benchmarks.conftest import skip_unavailable
from stadapter_fast import FastSTAdapter, STAdapterReference
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
