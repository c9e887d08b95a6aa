"""Level 1: the bottleneck conv alone (depthwise 3D conv + bias + activation on the token layout)."""
import pytest
import torch
from torch import nn

from benchmarks._cases import CONV_PROVIDERS, OP_DTYPES, SHAPES, VARIANTS, dtype_id, provider_backend
from benchmarks._harness import device, rotated_inputs
from benchmarks.conftest import skip_unavailable
from stadapter_fast import st_adapter_conv
from stadapter_fast.ops.dwconv_tokens import act_fwd


def conv_reference(h, conv, act, T, grid, P, channels_last=False):
    """The release's route: slice, view, permute + contiguous copy, nn.Conv3d, permute back + copy."""
    N, L, C = h.shape
    x = h[:, P:].reshape(N // T, T, grid, grid, C).permute(0, 4, 1, 2, 3)
    x = x.contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    z = conv(x)
    return act_fwd(z.permute(0, 2, 3, 4, 1).reshape(N, grid * grid, C), act)


def build_conv(shape, ks, act, dtype, mode, provider, compile_mode):
    dev = device()
    g = torch.Generator(device=dev).manual_seed(0)
    hs, dz = rotated_inputs((shape.N, shape.L, shape.Ca), dtype, mode != "fwd", seed=0)
    n = len(hs)
    conv = nn.Conv3d(shape.Ca, shape.Ca, ks, padding=tuple(k // 2 for k in ks), groups=shape.Ca).to(dev, dtype)
    with torch.no_grad():
        conv.weight.normal_(0, 0.3, generator=g)
        conv.bias.normal_(0, 0.3, generator=g)
    T, grid, P = shape.T, shape.grid, shape.P
    if provider.startswith("reference"):
        if provider == "reference_channels_last":
            conv = conv.to(memory_format=torch.channels_last_3d)
        fn = lambda h: conv_reference(h, conv, act, T, grid, P, provider == "reference_channels_last")
        grad = dz[:, P:]
    else:
        backend = provider_backend(provider)
        fn = lambda h: st_adapter_conv(h, conv.weight, conv.bias, T, (grid, grid), P, act, backend)[:, P:]
        grad = dz[:, P:]
    if provider.endswith("compiled"):
        fn = torch.compile(fn, mode=compile_mode, fullgraph=provider.startswith("fast"))
    params = [conv.weight, conv.bias]

    def step(i):
        h = hs[i % n]
        if mode == "fwd":
            with torch.no_grad():
                return fn(h)
        h.grad = None
        for p in params:
            p.grad = None
        fn(h).backward(grad)

    def output():
        with torch.no_grad():
            return fn(hs[0])
    return step, output


@pytest.mark.parametrize("provider", CONV_PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", OP_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_conv(row, compile_mode, shape, variant, dtype, mode, provider):
    skip_unavailable(provider)
    name, ks, act = variant
    es = torch.finfo(dtype).bits // 8
    act_bytes = shape.N * shape.HW * shape.Ca * es
    min_bytes = (2 if mode == "fwd" else 4) * act_bytes   # h, z (+ dz, dh)
    r = row(level=1, case_key=(shape.name, name), mode=mode, dtype=dtype, min_bytes=min_bytes,
            build=lambda p: build_conv(shape, ks, act, dtype, mode, p, compile_mode))
    r.run(provider)
