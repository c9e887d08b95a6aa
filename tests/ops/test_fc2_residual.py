"""``fc2_residual`` (the two-pass adapter tail): fp64 parity, gradients only where asked, the custom ops'
registration, and gradients under ``torch.compile``.

The compile test is the regression test for torch 2.11, where the tail was a ``torch.autograd.Function``
whose output an ``addmm_`` wrote: dynamo traced it as not requiring grad and every gradient came out
exactly zero (outputs still matched eager).
"""
import pytest
import torch

from stadapter_fast.ops import fc2_residual
from tests._util import DEVICE, RTOL, assert_close

N, L, C, CA, P = 4, 10, 32, 16, 1


def make_inputs(dtype=torch.float32, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, C, generator=g, dtype=torch.float64)
    z = torch.randn(N, L, CA, generator=g, dtype=torch.float64)
    z[:, :P] = 0  # the op's contract: zero prefix rows (as st_adapter_conv returns)
    w2 = 0.3 * torch.randn(C, CA, generator=g, dtype=torch.float64)
    b2 = torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    dy = torch.randn(N, L, C, generator=g, dtype=torch.float64)
    cast = [t if t is None else t.to(DEVICE, dtype) for t in (x, z, w2, b2, dy)]
    return cast[:4], cast[4]


def reference(x, z, w2, b2, P):
    proj = z[:, P:] @ w2.t()
    if b2 is not None:
        proj = proj + b2
    return torch.cat([x[:, :P], x[:, P:] + proj], dim=1)


def grads(fn, inputs, dy, wanted=(True, True, True, True)):
    ins = [None if t is None else t.detach().clone().requires_grad_(w) for t, w in zip(inputs, wanted)]
    y = fn(*ins, P)
    leaves = [t for t in ins if t is not None and t.requires_grad]
    return y, torch.autograd.grad(y, leaves, dy), ins


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_fp64_reference(dtype, bias):
    inputs, dy = make_inputs(dtype, bias=bias)
    ref_in = [None if t is None else t.double() for t in inputs]
    y_ref, g_ref, _ = grads(reference, ref_in, dy.double())
    y, g, _ = grads(fc2_residual, inputs, dy)
    assert_close(y, y_ref, dtype, "y")
    assert torch.equal(y[:, :P], inputs[0][:, :P]), "prefix rows must be x, bit for bit"
    for name, a, b in zip(("dx", "dz", "dW2", "db2"), g, g_ref):
        # dz's prefix rows are zero in the op (z's are, by contract); the reference's are x-independent
        b = b.clone()
        if name == "dz":
            b[:, :P] = 0
        assert_close(a, b, dtype, name)


def test_grads_only_where_asked():
    """A frozen fc2 (or a z that needs no grad) gets None, and what is asked for is still right."""
    inputs, dy = make_inputs()
    _, g_all, _ = grads(fc2_residual, inputs, dy)
    _, g, ins = grads(fc2_residual, inputs, dy, wanted=(True, True, False, False))
    assert len(g) == 2
    assert_close(g[0], g_all[0], torch.float32, "dx")
    assert_close(g[1], g_all[1], torch.float32, "dz")
    _, g, _ = grads(fc2_residual, inputs, dy, wanted=(False, False, True, True))
    assert_close(g[0], g_all[2], torch.float32, "dW2")
    assert_close(g[1], g_all[3], torch.float32, "db2")


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_custom_ops(bias):
    """torch.library.opcheck: schema, fake kernels and autograd registration of both custom ops."""
    inputs, dy = make_inputs(bias=bias)
    x, z, w2, b2 = inputs
    ops = torch.ops.stadapter_fast
    torch.library.opcheck(ops.fc2_residual.default, (x.requires_grad_(), z.requires_grad_(),
                                                     w2.requires_grad_(), b2, P))
    for need in ((True, True, True), (True, False, False), (False, True, True)):
        torch.library.opcheck(ops.fc2_residual_backward.default,
                              (dy, z.detach(), w2.detach(), None if b2 is None else b2.detach(), P, *need))


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_gradients_match_eager(dynamic):
    """The regression test for torch 2.11's silently zero gradients under torch.compile."""
    torch._dynamo.reset()
    inputs, dy = make_inputs()
    y_e, g_e, _ = grads(fc2_residual, inputs, dy)
    compiled = torch.compile(fc2_residual, fullgraph=True, dynamic=dynamic)
    y_c, g_c, _ = grads(compiled, inputs, dy)
    assert_close(y_c, y_e, torch.float32, "y", factor=10)
    for name, a, b in zip(("dx", "dz", "dW2", "db2"), g_c, g_e):
        assert b.abs().max() > 100 * RTOL[torch.float32], f"{name}: eager gradient is ~0; the test cannot fail"
        assert_close(a, b, torch.float32, f"compiled {name}", factor=10)


@pytest.mark.parametrize("through", [False, True])
def test_row_scale_and_prefix_through_opcheck_and_grads(through):
    """The per-clip output scale (mmaction2's scale x drop-path mask) and prefix rows through the update:
    forward and every gradient (the scale's included) against a direct fp64 formula; opcheck of both ops."""
    inputs, dy = make_inputs()
    x, z, w2, b2 = (t.detach().double() for t in inputs)
    if through:  # prefix rows of z are act(h), not zero
        z[:, :P] = torch.randn(z[:, :P].shape, generator=torch.Generator().manual_seed(5), dtype=z.dtype)
    B = 2
    r = torch.tensor([0.7, -1.3], dtype=torch.float64)
    ins = [t.clone().requires_grad_() for t in (x, z, w2, b2, r)]
    y = fc2_residual(*ins[:4], P, through, ins[4])
    u = (ins[1] @ ins[2].t() + ins[3]) * ins[4].repeat_interleave(x.shape[0] // B)[:, None, None]
    if not through:
        u = torch.cat([torch.zeros_like(u[:, :P]), u[:, P:]], dim=1)
    y_ref = ins[0] + u
    assert_close(y, y_ref, torch.float64, "y")
    g = torch.autograd.grad(y, ins, dy.double())
    g_ref = torch.autograd.grad(y_ref, ins, dy.double())
    for name, a, b in zip(("dx", "dz", "dW2", "db2", "dr"), g, g_ref):
        assert_close(a, b, torch.float64, name)
    ops = torch.ops.stadapter_fast
    f32 = [t.float() for t in (x, z, w2, b2, r)]
    torch.library.opcheck(ops.fc2_residual.default, (f32[0].requires_grad_(), f32[1].requires_grad_(), f32[2], f32[3],
                                                     P, through, f32[4].requires_grad_()))
    f32 = [t.detach() for t in f32]
    torch.library.opcheck(ops.fc2_residual_backward.default,
                          (dy, f32[1], f32[2], f32[3], P, True, True, True, through, f32[4], True))
