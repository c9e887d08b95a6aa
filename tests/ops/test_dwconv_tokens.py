"""st_adapter_conv (both backends) against the plain-PyTorch oracle in fp64: forward and every grad."""
import pytest
import torch

from stadapter_fast import ACTIVATIONS, st_adapter_conv
from stadapter_fast.ops.dwconv_tokens import st_adapter_conv_ref
from tests._util import DEVICE, RTOL, TRITON_OK, assert_close, backends

KERNELS = [(3, 1, 1), (3, 3, 3), (1, 3, 3), (5, 1, 1)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_case(B, T, H, W, P, C, ks, dtype, wdtype=None, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    wdtype = wdtype or dtype
    h = torch.randn(B * T, P + H * W, C, generator=g).to(DEVICE, dtype).requires_grad_()
    w = (0.5 * torch.randn(C, 1, *ks, generator=g)).to(DEVICE, wdtype).requires_grad_()
    b = (0.5 * torch.randn(C, generator=g)).to(DEVICE, wdtype).requires_grad_() if bias else None
    dz = torch.randn(B * T, P + H * W, C, generator=g).to(DEVICE, dtype)
    return h, w, b, dz


def run_and_check(h, w, b, dz, T, grid, P, act, backend, dtype, factor=1.0):
    out = st_adapter_conv(h, w, b, T, grid, num_prefix_tokens=P, act=act, backend=backend)
    assert out.dtype == h.dtype and out.shape == h.shape and out.is_contiguous()
    params = [h, w] + ([b] if b is not None else [])
    grads = torch.autograd.grad(out, params, dz)

    ref_in = [t.detach().double().requires_grad_() for t in params]
    ref = st_adapter_conv_ref(ref_in[0], ref_in[1], ref_in[2] if b is not None else None, T, grid, P, act)
    ref_grads = torch.autograd.grad(ref, ref_in, dz.double())

    assert torch.all(out[:, :P] == 0), "prefix rows of the output must be zero"
    assert_close(out, ref, dtype, "out", factor)
    for name, g_, rg, p in zip(["dh", "dweight", "dbias"], grads, ref_grads, params):
        assert g_.dtype == p.dtype, f"{name} dtype {g_.dtype} != parameter dtype {p.dtype}"
        assert_close(g_, rg, dtype, name, factor)
    assert torch.all(grads[0][:, :P] == 0), "prefix rows of dh must be zero"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("ks", KERNELS, ids=lambda k: "k%d%d%d" % k)
@pytest.mark.parametrize("backend", backends())
def test_parity_kernels_activations_dtypes(backend, ks, act, dtype):
    # non-square grid, one prefix token, channels not a power of two
    B, T, H, W, P, C = 2, 3, 3, 4, 1, 20
    h, w, b, dz = make_case(B, T, H, W, P, C, ks, dtype)
    run_and_check(h, w, b, dz, T, (H, W), P, act, backend, dtype)


SHAPES = [  # B, T, H, W, P, C, grid given?
    (2, 1, 4, 4, 1, 16, False),
    (1, 2, 4, 4, 0, 24, False),
    (2, 8, 3, 3, 2, 12, False),
    (1, 8, 2, 5, 1, 33, True),
    (3, 2, 5, 2, 2, 7, True),
    (1, 8, 1, 1, 1, 9, False),   # a 1x1 grid: every spatial tap falls off the edge
]


@pytest.mark.parametrize("ks", [(3, 1, 1), (3, 3, 3)], ids=lambda k: "k%d%d%d" % k)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%dT%dH%dW%dP%dC%d" % s[:6])
@pytest.mark.parametrize("backend", backends())
def test_parity_shapes_prefix_tokens(backend, shape, ks):
    B, T, H, W, P, C, give_grid = shape
    h, w, b, dz = make_case(B, T, H, W, P, C, ks, torch.float32, seed=1)
    run_and_check(h, w, b, dz, T, (H, W) if give_grid else None, P, "gelu", backend, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backends())
def test_half_activations_with_fp32_parameters(backend, dtype):
    """The official recipe: activations in fp16/bf16, conv parameters fp32; grads in fp32."""
    h, w, b, dz = make_case(2, 4, 3, 3, 1, 24, (3, 1, 1), dtype, wdtype=torch.float32, seed=2)
    run_and_check(h, w, b, dz, 4, None, 1, "quick_gelu", backend, dtype)


@pytest.mark.parametrize("backend", backends())
def test_no_bias(backend):
    h, w, _, dz = make_case(2, 2, 3, 3, 1, 10, (3, 3, 3), torch.float32, bias=False, seed=3)
    run_and_check(h, w, None, dz, 2, None, 1, "silu", backend, torch.float32)


@pytest.mark.parametrize("backend", backends())
def test_strided_input_view_and_grad(backend):
    """h given as a strided view (every other channel; rows 1: of a bigger tensor): no copy needed for
    the token stride, and results match."""
    g = torch.Generator().manual_seed(4)
    big = torch.randn(4, 1 + 9, 2, 16, generator=g).to(DEVICE)
    h = big[:, 1:, 0, :].requires_grad_()  # [4, 9, 16], strides (320, 32, 1), P = 0
    w = torch.randn(16, 1, 3, 3, 3, generator=g).to(DEVICE).requires_grad_()
    b = torch.randn(16, generator=g).to(DEVICE).requires_grad_()
    dz = torch.randn(4, 9, 16, generator=g).to(DEVICE).expand(4, 9, 16)
    run_and_check(h, w, b, dz, 2, None, 0, "gelu_tanh", backend, torch.float32)
    # a non-unit channel stride is accepted too (copied)
    h2 = big[:, 1:, :, 0].detach().requires_grad_()  # [4, 9, 2]
    w2 = torch.randn(2, 1, 3, 1, 1, generator=g).to(DEVICE).requires_grad_()
    run_and_check(h2, w2, None, torch.randn(4, 9, 2, generator=g).to(DEVICE), 2, None, 0, "none", backend,
                  torch.float32)


@pytest.mark.skipif(not TRITON_OK, reason="needs CUDA or TRITON_INTERPRET=1")
# each value of each axis once (~15 s per case in the interpreter): the activation is applied per
# element after the taps and does not meet the token order
@pytest.mark.parametrize("act,group_s", [("none", 0), ("gelu", 4)])
def test_triton_many_small_tiles(monkeypatch, act, group_s):
    """Small tiles: many token and channel tiles with ragged edges; partial sums over many tiles;
    and the T-major token order (groups of 4 grid positions: 15 positions padded to 16)."""
    import csrc_triton.dwconv_tokens as dwconv

    for kern in (dwconv.conv_fwd_kernel, dwconv.conv_bwd_kernel):
        monkeypatch.setattr(kern, "forced", dict(BLOCK_M=16, BLOCK_C=8, GROUP_S=group_s, num_warps=1))
    h, w, b, dz = make_case(2, 4, 3, 5, 1, 21, (3, 3, 3), torch.float32, seed=5)
    run_and_check(h, w, b, dz, 4, (3, 5), 1, act, "triton", torch.float32)


@pytest.mark.skipif(not TRITON_OK, reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_backward_is_deterministic():
    h, w, b, dz = make_case(2, 4, 4, 4, 1, 32, (3, 3, 3), torch.float32, seed=6)
    runs = []
    for _ in range(2):
        out = st_adapter_conv(h, w, b, 4, act="gelu", backend="triton")
        runs.append(torch.autograd.grad(out, [h, w, b], dz))
    for g1, g2 in zip(*runs):
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("ks", [(3, 1, 1), (3, 3, 3)], ids=lambda k: "k%d%d%d" % k)
@pytest.mark.parametrize("act", ["none", "gelu_tanh", "quick_gelu"])
@pytest.mark.parametrize("backend", backends())
def test_gradcheck_fp64(backend, act, ks):
    g = torch.Generator().manual_seed(7)
    T, H, W, P, C = 2, 2, 3, 1, 3
    h = torch.randn(2 * T, P + H * W, C, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    w = torch.randn(C, 1, *ks, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    b = torch.randn(C, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    fn = lambda h, w, b: st_adapter_conv(h, w, b, T, (H, W), num_prefix_tokens=P, act=act, backend=backend)
    # Full Jacobians through the interpreter cost a minute per case; fast mode checks random projections.
    assert torch.autograd.gradcheck(fn, (h, w, b), eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=backend == "triton" and DEVICE == "cpu")


def test_tolerance_table_is_meaningful():
    """Guard that the parity checks can fail: a perturbation of one bf16 ulp at the max is caught at fp32."""
    from tests._util import rel_err

    a = torch.randn(100, dtype=torch.float64)
    b = a.clone()
    b[a.abs().argmax()] *= 1 + 2 ** -8
    assert rel_err(b, a) > RTOL[torch.float32]
    assert torch.empty(4).isnan().all(), "fresh allocations are NaN-poisoned in tests"


@pytest.mark.parametrize("act", ["none", "gelu"])
@pytest.mark.parametrize("backend", backends())
def test_opcheck_custom_ops(backend, act):
    """torch.library.opcheck: schema, fake (meta) kernels, autograd registration of both custom ops."""
    h, w, b, dz = make_case(2, 2, 2, 3, 1, 6, (3, 3, 3), torch.float32, seed=8)
    args = (h, w, b, 2, 2, 3, 1, act, backend)
    torch.library.opcheck(torch.ops.stadapter_fast.st_adapter_conv.default, args)
    bwd_args = (dz, h.detach(), w.detach(), b.detach(), 2, 2, 3, 1, act, backend)
    torch.library.opcheck(torch.ops.stadapter_fast.st_adapter_conv_backward.default, bwd_args)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
@pytest.mark.parametrize("ks", [(3, 1, 1), (3, 3, 3)], ids=lambda k: "k%d%d%d" % k)
@pytest.mark.parametrize("backend", backends())
def test_prefix_mode_no_conv(backend, ks, act, dtype):
    """prefix_mode="no_conv" (mmaction2's adapter): prefix rows are act(h) -- no conv, no bias -- and
    their gradient dz * act'(h); patch rows as before."""
    B, T, H, W, P, C = 2, 3, 3, 4, 2, 20
    h, w, b, dz = make_case(B, T, H, W, P, C, ks, dtype, seed=9)
    out = st_adapter_conv(h, w, b, T, (H, W), P, act, backend, prefix_mode="no_conv")
    grads = torch.autograd.grad(out, [h, w, b], dz)
    ref_in = [t.detach().double().requires_grad_() for t in (h, w, b)]
    ref = st_adapter_conv_ref(*ref_in, T, (H, W), P, act, prefix_mode="no_conv")
    ref_grads = torch.autograd.grad(ref, ref_in, dz.double())
    assert ref[:, :P].abs().max() > 0.1, "the oracle's prefix rows are nonzero (the test can fail)"
    assert_close(out, ref, dtype, "out")
    for name, g_, rg in zip(["dh", "dweight", "dbias"], grads, ref_grads):
        assert_close(g_, rg, dtype, name)
    with pytest.raises(ValueError, match="prefix_mode"):
        st_adapter_conv(h, w, b, T, (H, W), P, act, backend, prefix_mode="through")


@pytest.mark.parametrize("backend", backends())
def test_opcheck_prefix_no_conv(backend):
    h, w, b, dz = make_case(2, 2, 2, 3, 2, 6, (3, 3, 1), torch.float32, seed=10)
    torch.library.opcheck(torch.ops.stadapter_fast.st_adapter_conv.default, (h, w, b, 2, 2, 3, 2, "relu", backend, True))
    torch.library.opcheck(torch.ops.stadapter_fast.st_adapter_conv_backward.default,
                          (dz, h.detach(), w.detach(), b.detach(), 2, 2, 3, 2, "relu", backend, True))
