"""Property-based parity (hypothesis): shapes nobody picked, against the fp64 reference.

Each example draws B, T (1..16), a grid (1..16 per side, square or not), a prefix count (0..5), C and Ca
(1..300), an odd kernel up to 5 per axis, an activation, a dtype (fp32, fp16, bf16, or fp32 parameters
under bf16 autocast), a path (two-pass, one-pass with and without recompute) and an input layout
(contiguous, a slice of a wider tensor, a transposed-then-contiguous buffer), and checks the adapter's
output and every gradient (input and parameters) against ``STAdapterReference`` in fp64.

Profiles (tests/conftest.py): "ci" (the default; fixed seed, a bounded number of examples per
backend) and "slow" (many more, for before touching a kernel):
``.venv/bin/pytest tests/test_properties.py --hypothesis-profile=slow``.
"""
import copy

import pytest
import torch

from stadapter_fast import ACTIVATIONS, FastSTAdapter, STAdapterReference
from tests._util import DEVICE, assert_close, backends

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MAX_TOKENS = 1536  # B*T*L cap: keeps an example well under a second on the torch path
PATHS = [("two_pass", True), ("one_pass", True), ("one_pass", False)]
DTYPES = ["float32", "float16", "bfloat16", "autocast_bf16"]
LAYOUTS = ["contiguous", "slice_of_wider", "transposed"]
# tolerance factors over tests/_util.RTOL: the adapter chains two GEMMs and the conv, each rounding
FACTOR = {torch.float32: 4.0, torch.float16: 4.0, torch.bfloat16: 2.0}


@st.composite
def adapter_cases(draw):
    H, W = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    P = draw(st.integers(0, 5))
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, max(1, min(16, MAX_TOKENS // (B * (P + H * W))))))
    dtype = draw(st.sampled_from(DTYPES))
    # relu's derivative jumps at 0: a pre-activation within a half-precision rounding of 0 may take the
    # other side than in fp64, and its gradient then differs by the whole jump (not an error of the
    # kernels). relu is drawn with fp32 only.
    acts = [a for a in ACTIVATIONS if dtype == "float32" or a != "relu"]
    # A parameter gradient is a sum over tokens. In half precision each term carries ~1e-3 of rounding,
    # and a sum that cancels (one channel, a few dozen terms of mixed sign) can sit far below its terms,
    # where a bound relative to the result means nothing (C = Ca = 1 gave 0.3). Half-precision examples
    # therefore draw widths from 16 up; fp32 draws from 1.
    low = 1 if dtype == "float32" else 16
    return dict(B=B, T=T, H=H, W=W, P=P, square=draw(st.booleans()) if H == W else False,
                C=draw(st.integers(low, 300)), Ca=draw(st.integers(low, 300)),
                ks=tuple(draw(st.sampled_from([1, 3, 5])) for _ in range(3)),
                act=draw(st.sampled_from(acts)), dtype=dtype,
                path=draw(st.sampled_from(PATHS)), layout=draw(st.sampled_from(LAYOUTS)),
                seed=draw(st.integers(0, 2 ** 16)))


def _tokens(case, dtype, g):
    """[B*T, L, C] input in the drawn layout (the values are the same random numbers in each)."""
    N, L, C = case["B"] * case["T"], case["P"] + case["H"] * case["W"], case["C"]
    x = torch.randn(N, L, C, generator=g)
    if case["layout"] == "slice_of_wider":
        wide = torch.randn(N, L, C + 5, generator=g).to(DEVICE, dtype)
        wide[..., 2:C + 2] = x.to(DEVICE, dtype)
        return wide[..., 2:C + 2]
    if case["layout"] == "transposed":
        return x.transpose(0, 1).contiguous().to(DEVICE, dtype).transpose(0, 1)
    return x.to(DEVICE, dtype)


def check_case(case, backend):
    autocast = case["dtype"] == "autocast_bf16"
    dtype = torch.bfloat16 if autocast else getattr(torch, case["dtype"])
    grid = None if case["square"] else (case["H"], case["W"])
    path, recompute = case["path"]
    g = torch.Generator().manual_seed(case["seed"])
    ref = STAdapterReference(case["C"], case["Ca"], case["ks"], act=case["act"], num_prefix_tokens=case["P"],
                             grid_size=grid)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5 * (1.0 if p.dim() > 1 else 0.3))
    fast = FastSTAdapter(case["C"], case["Ca"], case["ks"], act=case["act"], num_prefix_tokens=case["P"],
                         grid_size=grid, backend=backend, path=path, recompute=recompute)
    fast.load_state_dict(ref.state_dict())
    fast = fast.to(DEVICE, torch.float32 if autocast else dtype)
    x = _tokens(case, dtype, g).requires_grad_()
    dy = torch.randn(x.shape, generator=g).to(DEVICE, dtype)
    T = case["T"]
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        y = fast(x, T)
    grads = torch.autograd.grad(y, [x] + list(fast.parameters()), dy)
    ref64 = copy.deepcopy(ref).to(DEVICE, torch.float64)
    x64 = x.detach().double().requires_grad_()
    y64 = ref64(x64, T)
    rgrads = torch.autograd.grad(y64, [x64] + list(ref64.parameters()), dy.double())
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y[:, :case["P"]], x[:, :case["P"]]), "prefix rows must pass through bit for bit"
    f = FACTOR[dtype]
    assert_close(y, y64, dtype, "y", f)
    for name, a, b in zip(["x"] + [n for n, _ in fast.named_parameters()], grads, rgrads):
        assert_close(a, b, dtype, "grad " + name, f)


@given(case=adapter_cases())
def test_adapter_parity_torch_backend(case):
    check_case(case, "torch")


@pytest.mark.skipif("triton" not in backends(), reason="needs CUDA or TRITON_INTERPRET=1")
@settings(max_examples=max(4, settings().max_examples // 3))  # the interpreter is ~10x slower
@given(case=adapter_cases())
def test_adapter_parity_triton_backend(case):
    """The Triton kernels (in the interpreter on CPU; the interpreter's bf16 ``tl.dot`` is upcast)."""
    check_case(case, "triton")
