"""GPU-only checks at real shapes (skipped without CUDA): the Triton kernels compiled for the device,
at the ViT-B/16 8-frame shape, against the fp64 reference."""
import copy

import pytest
import torch

from stadapter_fast import FastSTAdapter, STAdapterReference, st_adapter_conv
from stadapter_fast.ops.adapter_onepass import adapter_onepass, adapter_onepass_ref
from stadapter_fast.ops.dwconv_tokens import st_adapter_conv_ref
from tests._util import RTOL, assert_close, mixed_drop_seed, rel_err

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("prefix_through", [False, True], ids=["official", "mmaction2"])
def test_onepass_op_vitb_shape(dtype, prefix_through):
    """The one-pass op against its fp64 oracle (``adapter_onepass_ref``), forward and every gradient:
    tensor-core dots at the ViT-B/16 8-frame shape; with ``prefix_through`` mmaction2's variant (prefix
    rows through act + fc2, a per-clip scale)."""
    g = torch.Generator(device="cuda").manual_seed(2)
    B, T, C, Ca, ks = 8, 8, 768, 384, (3, 3, 3)

    def r(*shape, s=1.0, dt=torch.float32):
        return (s * torch.randn(*shape, device="cuda", generator=g)).to(dt).requires_grad_()
    x, h = r(B * T, 197, C, dt=dtype), r(B * T, 197, Ca, dt=dtype)
    params = [r(Ca, 1, *ks, s=0.3), r(Ca), r(C, Ca, s=0.05), r(C)]
    scale = r(B) if prefix_through else None
    dy = torch.randn(B * T, 197, C, device="cuda", generator=g).to(dtype)
    ins = [x, h, *params] + ([scale] if prefix_through else [])
    y = adapter_onepass(x, h, *params, T, 14, 14, 1, "gelu", "triton", prefix_through=prefix_through,
                        row_scale=scale)
    grads = torch.autograd.grad(y, ins, dy)
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    ref = adapter_onepass_ref(*ins64[:6], T, 14, 14, 1, "gelu", prefix_through=prefix_through,
                              row_scale=ins64[6] if prefix_through else None)
    rgrads = torch.autograd.grad(ref, ins64, dy.double())
    assert_close(y, ref, dtype, "y")
    for n, a, b in zip(["dx", "dh", "dwc", "dbc", "dw2", "db2", "dscale"], grads, rgrads):
        assert_close(a, b, dtype, n, factor=1.0 if n in ("dx", "dh") else 4.0)


@pytest.mark.autotune  # the module as users run it: the tuner picks
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


@pytest.mark.autotune
def test_autotuned_launch_is_deterministic_for_its_config():
    """The tuner's pick, forced again, gives bit-identical weight gradients (fixed-order partial sums)."""
    import csrc_triton.adapter_onepass as onepass

    g = torch.Generator(device="cuda").manual_seed(1)
    N, L, C, Ca, T = 64, 197, 768, 384, 8
    dy = torch.randn(N, L, C, device="cuda", generator=g, dtype=torch.bfloat16)
    h = torch.randn(N, L, Ca, device="cuda", generator=g, dtype=torch.bfloat16)
    wc = 0.3 * torch.randn(Ca, 3, device="cuda", generator=g)
    bc = torch.randn(Ca, device="cuda", generator=g)
    w2 = 0.02 * torch.randn(C, Ca, device="cuda", generator=g)
    tuned = onepass.onepass_bwd(dy, h, None, wc, bc, w2, T, 14, 14, 1, (3, 1, 1), 2)
    pick = onepass.onepass_bwd_kernel.tuned.best_config
    cfg = dict(pick.kwargs, num_warps=pick.num_warps)
    assert cfg in onepass.onepass_bwd_kernel.space
    again = onepass.onepass_bwd(dy, h, None, wc, bc, w2, T, 14, 14, 1, (3, 1, 1), 2, config=cfg)
    for a, b in zip(tuned[2:], again[2:]):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# Cases the interpreter cannot reach: tensor-core dots in fp16/bf16 (the interpreter's bf16 dot is
# wrong), real tile counts, odd shapes; compile and CUDA graphs on the device.
# ------------------------------------------------------------------------------------------------

# (name, B, T, grid (H, W), prefix tokens, C, Ca): prefix 0/1/5, a non-square grid, Ca not a power of
# two, T = 1 and T = 16
GPU_SHAPES = [
    ("p0_14x14_T8", 4, 8, (14, 14), 0, 768, 384),
    ("p1_12x16_T1_ca200", 16, 1, (12, 16), 1, 256, 200),
    ("p5_14x14_T16", 2, 16, (14, 14), 5, 768, 384),
]
GPU_KERNELS = [((3, 1, 1), None), ((3, 3, 3), "gelu"), ((1, 3, 3), "quick_gelu")]
PATHS = [("two_pass", True), ("one_pass", True), ("one_pass", False)]
# every kernel x path in bf16 on every shape, and fp16 on the first (each new case compiles kernels,
# one config per kernel (tests/conftest.py), which is what bounds this file's run time on the device)
ADAPTER_CASES = [pytest.param(shape, path, rec, ks, act, dt, id=f"{shape[0]}-{path}-rec{int(rec)}-k{''.join(map(str, ks))}-{act}-{str(dt)[6:]}")
                 for shape in GPU_SHAPES for path, rec in PATHS for ks, act in GPU_KERNELS
                 for dt in (torch.bfloat16, torch.float16) if dt == torch.bfloat16 or shape is GPU_SHAPES[0]]


def _adapters(C, Ca, ks, act, P, grid, path, recompute, seed=0):
    """(fast on CUDA, fp64 reference on CUDA) with the same random (non-zero) weights."""
    torch.manual_seed(seed)
    ref = STAdapterReference(C, Ca, ks, act=act, num_prefix_tokens=P, grid_size=grid).cuda()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02 if p.dim() == 2 else 0.3)
    fast = FastSTAdapter(C, Ca, ks, act=act, num_prefix_tokens=P, grid_size=grid, path=path,
                         recompute=recompute).cuda()
    fast.load_state_dict(ref.state_dict())
    return fast, ref.double()


@pytest.mark.parametrize("shape,path,recompute,ks,act,dtype", ADAPTER_CASES)
def test_adapter_paths_autocast_vs_fp64(shape, path, recompute, ks, act, dtype):
    """Forward and every gradient of both paths under autocast (fp32 parameters, tokens in ``dtype``)."""
    _, B, T, grid, P, C, Ca = shape
    fast, ref64 = _adapters(C, Ca, ks, act, P, grid, path, recompute)
    g = torch.Generator(device="cuda").manual_seed(1)
    L = P + grid[0] * grid[1]
    x = torch.randn(B * T, L, C, device="cuda", generator=g).to(dtype).requires_grad_()
    dy = torch.randn(B * T, L, C, device="cuda", generator=g).to(dtype)
    with torch.autocast("cuda", dtype=dtype):
        y = fast(x, T)
    grads = torch.autograd.grad(y, [x] + list(fast.parameters()), dy)
    x64 = x.detach().double().requires_grad_()
    y_ref = ref64(x64, T)
    rgrads = torch.autograd.grad(y_ref, [x64] + list(ref64.parameters()), dy.double())
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, "y")
    assert torch.equal(y[:, :P], x[:, :P]), "prefix rows must pass through bit for bit"
    names = ["dx"] + [n for n, _ in fast.named_parameters()]
    for n, a, b in zip(names, grads, rgrads):
        # weight grads reduce over every token in fp32 from rounded operands: two roundings' worth
        assert_close(a, b, dtype, n, factor=2.0)


@pytest.mark.parametrize("path", ["two_pass", "one_pass"])
def test_compile_fullgraph_grads_on_gpu(path):
    """torch.compile(fullgraph=True) on CUDA (the Triton backend): outputs and every gradient = eager."""
    torch._dynamo.reset()
    fast, _ = _adapters(64, 32, (3, 3, 3), "gelu", 1, None, path, True)
    x = torch.randn(16, 1 + 16, 64, device="cuda")
    dy = torch.randn_like(x)

    def run(fn):
        xi = x.clone().requires_grad_()
        y = fn(xi, 8)
        return [y] + list(torch.autograd.grad(y, [xi] + list(fast.parameters()), dy))

    eager = run(fast)
    compiled = run(torch.compile(fast, fullgraph=True))
    for a, b in zip(compiled, eager):
        assert b.abs().max() > 0
        assert_close(a, b, torch.float32, "compiled", factor=10)


@pytest.mark.autotune  # the warm-up call tunes, outside any capture
@pytest.mark.parametrize("path", ["two_pass", "one_pass"])
def test_compile_reduce_overhead_after_warmup(path):
    """mode="reduce-overhead" (CUDA graphs) after an eager warm-up call (which autotunes): replays
    give eager's output and gradients."""
    torch._dynamo.reset()
    fast, _ = _adapters(768, 384, (3, 1, 1), None, 1, None, path, True)
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(4 * 8, 197, 768, device="cuda", generator=g, dtype=torch.bfloat16)
    dy = torch.randn_like(x)

    def run(fn):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(xi, 8)
        return [y.detach().clone()] + [t.clone() for t in torch.autograd.grad(y, [xi] + list(fast.parameters()), dy)]

    eager = run(fast)  # warm-up: autotuning happens outside any capture
    compiled = torch.compile(fast, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # record, then replays
        got = run(compiled)
    for a, b in zip(got, eager):
        assert_close(a, b, torch.bfloat16, "reduce-overhead", factor=2.0)


def test_conv_backward_is_deterministic():
    """Two backward runs on the same inputs give bit-identical weight and bias gradients."""
    g = torch.Generator(device="cuda").manual_seed(3)
    N, L, C = 64, 197, 384
    h = torch.randn(N, L, C, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
    w = (0.3 * torch.randn(C, 1, 3, 3, 3, device="cuda", generator=g)).requires_grad_()
    b = torch.randn(C, device="cuda", generator=g).requires_grad_()
    dz = torch.randn(N, L, C, device="cuda", generator=g, dtype=torch.bfloat16)
    runs = [torch.autograd.grad(st_adapter_conv(h, w, b, 8, act="gelu", backend="triton"), [h, w, b], dz)
            for _ in range(2)]
    for a, c in zip(*runs):
        assert torch.equal(a, c)


@pytest.mark.autotune
@pytest.mark.serial  # times the GPU: alone on it
def test_benchmark_harness_times_on_gpu():
    """The benchmark harness's device, wall and CUDA-graph times for an adapter training step."""
    from benchmarks import _harness as harness

    fast, _ = _adapters(768, 384, (3, 1, 1), None, 1, None, "two_pass", True)
    x = torch.randn(8 * 8, 197, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)

    def step(i):
        x.grad = None
        fast.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fast(x, 8)
        y.backward(dy)

    timing = harness.measure(step, 3, 10)
    assert timing.graph_error is None, timing.graph_error
    assert 0 < timing.graph_s and 0 < timing.device_s and 0 < timing.wall_s
    # a replay has no launch gaps: it cannot be much slower than the eager call's device time
    assert timing.graph_s < 1.5 * timing.device_s


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("path", ["two_pass", "one_pass"])
def test_mmaction2_adapter_vitb_autocast_vs_fp64(path, dtype):
    """mmaction2's adapter (VindLU: (3,3,3), ReLU, class token through act + fc2, scale, drop path) at
    ViT-B/16 8 frames in training mode (same seed: same drop mask), autocast, against the fp64 reference."""
    from stadapter_fast import FastMMAction2STAdapter, MMAction2STAdapterReference

    torch.manual_seed(0)
    ref = MMAction2STAdapterReference((3, 3, 3), 768, 384, drop_prob=0.3).cuda()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02 if p.dim() == 2 else 0.3)
    fast = FastMMAction2STAdapter((3, 3, 3), 768, 384, drop_prob=0.3, path=path).cuda()
    fast.load_state_dict(ref.state_dict())
    ref64 = ref.double()
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(8, 8, 197, 768, device="cuda", generator=g).to(dtype).requires_grad_()
    dy = torch.randn(8, 8, 197, 768, device="cuda", generator=g).to(dtype)
    seed = mixed_drop_seed(lambda: [fast.train().drop_factor(x)], start=2)  # some clips kept, some dropped
    torch.manual_seed(seed)
    with torch.autocast("cuda", dtype=dtype):
        y = fast.train()(x)
    grads = torch.autograd.grad(y, [x] + list(fast.parameters()), dy)
    x64 = x.detach().double().requires_grad_()
    # the same Bernoulli draws: the fused module draws its mask in x's dtype, as timm's DropPath does
    torch.manual_seed(seed)
    mask = x.new_empty((8,)).bernoulli_(0.7)
    torch.manual_seed(seed)
    d = fast.drop_factor(x)
    assert torch.equal(d, mask / 0.7)
    ref64.drop_factor = lambda _x: d.double()
    y_ref = ref64.train()(x64)
    rgrads = torch.autograd.grad(y_ref, [x64] + list(ref64.parameters()), dy.double())
    # the reference itself under the same autocast: with ReLU, bf16 rounding flips act' near 0, and the
    # weight gradients of fc1/conv come out ~5e-2 off the fp64 ones (measured on CPU at small sizes)
    ref32 = copy.deepcopy(ref64).float()
    ref32.drop_factor = lambda _x: d.float()
    with torch.autocast("cuda", dtype=dtype):
        y_amp = ref32.train()(x)
    agrads = torch.autograd.grad(y_amp, [x] + list(ref32.parameters()), dy)
    assert_close(y, y_ref, dtype, "y")
    for n, a, b, c in zip(["dx"] + [n for n, _ in fast.named_parameters()], grads, rgrads, agrads):
        assert rel_err(a, b) <= max(2 * RTOL[dtype], 1.5 * rel_err(c, b)), n
