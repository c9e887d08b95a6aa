"""GPU-only checks at real shapes (skipped without CUDA): the Triton kernels compiled for the device,
at the ViT-B/16 8-frame shape, against the fp64 reference."""
import pytest
import torch

from stadapter_fast import FastSTAdapter, STAdapterReference, st_adapter_conv
from stadapter_fast.ops.dwconv_tokens import st_adapter_conv_ref
from tests._util import assert_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("ks,act", [((3, 1, 1), "none"), ((3, 3, 3), "gelu"), ((1, 3, 3), "quick_gelu")])
def test_conv_vitb_shape(dtype, ks, act):
    g = torch.Generator(device="cuda").manual_seed(0)
    N, L, C = 64 * 8, 197, 384
    h = torch.randn(N, L, C, device="cuda", generator=g).to(dtype).requires_grad_()
    w = (0.3 * torch.randn(C, 1, *ks, device="cuda", generator=g)).requires_grad_()
    b = torch.randn(C, device="cuda", generator=g).requires_grad_()
    dz = torch.randn(N, L, C, device="cuda", generator=g).to(dtype)
    out = st_adapter_conv(h, w, b, 8, act=act, backend="triton")
    grads = torch.autograd.grad(out, [h, w, b], dz)
    ins = [t.detach().double().requires_grad_() for t in (h, w, b)]
    ref = st_adapter_conv_ref(*ins, 8, None, 1, act)
    rgrads = torch.autograd.grad(ref, ins, dz.double())
    assert_close(out, ref, dtype, "out")
    # weight/bias grads reduce over 100k tokens in fp32: allow a little more than one rounding
    for n, a, r in zip(["dh", "dw", "db"], grads, rgrads):
        assert_close(a, r, dtype, n, factor=1.0 if n == "dh" else 4.0)


@pytest.mark.parametrize("path,recompute", [("two_pass", True), ("one_pass", True), ("one_pass", False)])
def test_module_autocast_bf16_vitb(path, recompute):
    torch.manual_seed(0)
    ref = STAdapterReference(768, 384, (3, 1, 1)).cuda()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02)
    fast = FastSTAdapter(768, 384, (3, 1, 1), path=path, recompute=recompute).cuda()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(32 * 8, 197, 768, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = fast(x, 8)
    ref64 = ref.double()
    y_ref = ref64(x.double(), 8)
    assert y.dtype == torch.bfloat16
    assert_close(y, y_ref, torch.bfloat16, "y")
    assert torch.equal(y[:, 0], x[:, 0])
    # grads through the whole adapter (the one-pass backward recomputes z)
    xg = x.detach().requires_grad_()
    dy = torch.randn_like(y)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fast(xg, 8)
    grads = torch.autograd.grad(out, [xg] + list(fast.parameters()), dy)
    x64 = x.detach().double().requires_grad_()
    rgrads = torch.autograd.grad(ref64(x64, 8), [x64] + list(ref64.parameters()), dy.double())
    for a, b in zip(grads, rgrads):
        assert_close(a, b, torch.bfloat16, "grad", factor=2.0)


def test_compile_on_gpu():
    torch._dynamo.reset()
    m = FastSTAdapter(64, 32, (3, 3, 3), act="gelu").cuda()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(16, 1 + 16, 64, device="cuda")
    c = torch.compile(m, fullgraph=True)
    assert_close(c(x, 8), m(x, 8), torch.float32, "compiled", factor=10)


def test_autotuned_launch_is_deterministic_for_its_config():
    """The tuner's pick, forced again, gives bit-identical weight gradients (fixed-order partial sums)."""
    import csrc_triton.adapter_onepass as k1

    g = torch.Generator(device="cuda").manual_seed(1)
    N, L, C, CA, T = 64, 197, 768, 384, 8
    dy = torch.randn(N, L, C, device="cuda", generator=g, dtype=torch.bfloat16)
    h = torch.randn(N, L, CA, device="cuda", generator=g, dtype=torch.bfloat16)
    wc = 0.3 * torch.randn(CA, 3, device="cuda", generator=g)
    bc = torch.randn(CA, device="cuda", generator=g)
    w2 = 0.02 * torch.randn(C, CA, device="cuda", generator=g)
    tuned = k1.onepass_bwd(dy, h, None, wc, bc, w2, T, 14, 14, 1, (3, 1, 1), 2)
    pick = k1.onepass_bwd_kernel.tuned.best_config
    cfg = dict(pick.kwargs, num_warps=pick.num_warps)
    assert cfg in k1.onepass_bwd_kernel.space
    again = k1.onepass_bwd(dy, h, None, wc, bc, w2, T, 14, 14, 1, (3, 1, 1), 2, config=cfg)
    for a, b in zip(tuned[2:], again[2:]):
        assert torch.equal(a, b)
