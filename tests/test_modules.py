"""FastSTAdapter vs STAdapterReference: forward, grad of x and of every parameter, state_dict, init."""
import copy

import pytest
import torch

from stadapter_fast import FastSTAdapter, STAdapterReference
from tests._util import DEVICE, assert_close, backends

OFFICIAL_KEYS = {"fc1.weight": (24, 40), "fc1.bias": (24,), "conv.weight": (24, 1, 3, 1, 1),
                 "conv.bias": (24,), "fc2.weight": (40, 24), "fc2.bias": (40,)}


def randomize(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (the official init zeroes conv and biases, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return m


PATHS = ["two_pass", "one_pass"]


def pair(C=40, Ca=24, ks=(3, 1, 1), act=None, P=1, grid=None, backend="torch", seed=0, path="two_pass"):
    ref = randomize(STAdapterReference(C, Ca, ks, act=act, num_prefix_tokens=P, grid_size=grid), seed)
    fast = FastSTAdapter(C, Ca, ks, act=act, num_prefix_tokens=P, grid_size=grid, backend=backend, path=path)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return fast.to(DEVICE), ref.to(DEVICE)


def grads_of(m, x, T, dy):
    x = x.detach().requires_grad_()
    y = m(x, T)
    gs = torch.autograd.grad(y, [x] + list(m.parameters()), dy)
    return y, gs


def check_against_fp64(fast, ref, x, T, dtype, autocast=None):
    """fast (in the given dtype/autocast) vs the reference in fp64 from the same rounded inputs."""
    g = torch.Generator().manual_seed(11)
    dy = torch.randn(x.shape, generator=g).to(DEVICE, x.dtype)
    with torch.autocast(DEVICE, dtype=autocast, enabled=autocast is not None):
        y, gs = grads_of(fast, x, T, dy)
    ref64 = copy.deepcopy(ref).double()
    ry, rgs = grads_of(ref64, x.double(), T, dy.double())
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, ry, dtype, "y")
    names = ["x"] + [n for n, _ in fast.named_parameters()]
    params = [x] + list(fast.parameters())
    for n, a, b, p in zip(names, gs, rgs, params):
        assert a.dtype == p.dtype, f"grad {n}: dtype {a.dtype} != {p.dtype}"
        assert_close(a, b, dtype, "grad " + n)


@pytest.mark.parametrize("act", [None, "gelu", "quick_gelu"])
@pytest.mark.parametrize("ks", [(3, 1, 1), (3, 3, 3)], ids=lambda k: "k%d%d%d" % k)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path", PATHS)
def test_parity_with_reference(path, backend, dtype, ks, act):
    fast, ref = pair(ks=ks, act=act, backend=backend, path=path)
    fast.to(dtype)
    x = torch.randn(2 * 4, 1 + 9, 40, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    check_against_fp64(fast, ref, x, 4, dtype)


@pytest.mark.parametrize("act", ["relu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path", PATHS)
def test_parity_other_activations(path, backend, act):
    """The activations the main parity test leaves out, on both paths (fp32, (1,3,3))."""
    fast, ref = pair(ks=(1, 3, 3), act=act, backend=backend, path=path, seed=12)
    x = torch.randn(2 * 4, 1 + 9, 40, generator=torch.Generator().manual_seed(13)).to(DEVICE)
    check_against_fp64(fast, ref, x, 4, torch.float32)


@pytest.mark.parametrize("P,grid,T", [(0, None, 2), (2, (2, 5), 8), (1, (4, 2), 1)])
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path", PATHS)
def test_parity_prefix_tokens_and_grids(path, backend, P, grid, T):
    fast, ref = pair(P=P, grid=grid, act="silu", backend=backend, seed=3, path=path)
    L = P + (grid[0] * grid[1] if grid else 9)
    x = torch.randn(2 * T, L, 40, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    check_against_fp64(fast, ref, x, T, torch.float32)


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path", PATHS)
def test_autocast_recipe(path, backend, x_dtype):
    """The release's recipe: fp32 adapter parameters under bf16 autocast; frozen backbone's tokens in
    bf16 (or fp32). Output keeps x's dtype; parameter grads are fp32."""
    fast, ref = pair(act="gelu", backend=backend, seed=4, path=path)
    x = torch.randn(2 * 4, 10, 40, generator=torch.Generator().manual_seed(5)).to(DEVICE, x_dtype)
    check_against_fp64(fast, ref, x, 4, torch.bfloat16, autocast=torch.bfloat16)


@pytest.mark.parametrize("backend", backends())
def test_fresh_adapter_is_identity_and_input_untouched(backend):
    m = FastSTAdapter(40, 24, (3, 3, 3), act="gelu", backend=backend).to(DEVICE)
    x = torch.randn(4, 10, 40, device=DEVICE)
    x0 = x.clone()
    y = m(x, 2)
    assert torch.equal(y, x)
    assert y.data_ptr() != x.data_ptr()
    assert torch.equal(x, x0)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path", PATHS)
def test_prefix_tokens_bit_identical_and_input_not_modified(path, backend):
    fast, _ = pair(P=2, grid=(3, 3), act="relu", backend=backend, path=path)
    x = torch.randn(4, 11, 40, device=DEVICE, requires_grad=True)
    x.data[0, 0, :4] = torch.tensor([-0.0, float("inf"), 1e-40, -3.0])
    x0 = x.detach().clone()
    y = fast(x, 2)
    y.sum().backward()
    assert torch.equal(y[:, :2].detach().view(torch.int32), x0[:, :2].view(torch.int32))
    assert torch.equal(x.detach().view(torch.int32), x0.view(torch.int32))
    assert not torch.equal(y[:, 2:], x0[:, 2:])


def test_state_dict_matches_official_layout_and_round_trips():
    for cls in (FastSTAdapter, STAdapterReference):
        m = cls(40, 24, (3, 1, 1))
        sd = m.state_dict()
        assert {k: tuple(v.shape) for k, v in sd.items()} == OFFICIAL_KEYS
        for k in ("conv.weight", "conv.bias", "fc1.bias", "fc2.bias"):
            assert torch.count_nonzero(sd[k]) == 0, f"{k} must be zero-initialised"
        assert torch.count_nonzero(sd["fc1.weight"]) > 0 and torch.count_nonzero(sd["fc2.weight"]) > 0
    fast, ref = pair()
    back = STAdapterReference(40, 24, (3, 1, 1))
    back.load_state_dict(fast.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k].to(v.device), v)


def test_module_is_thin_and_trainable_params_count():
    m = FastSTAdapter(768, 384, (3, 1, 1))
    # the release's 12x384 on ViT-B/16: 12 * (768*384 + 384 + 384*3 + 384 + 384*768 + 768) ~= 7.1M
    n = sum(p.numel() for p in m.parameters())
    assert n == 768 * 384 + 384 + 384 * 3 + 384 + 384 * 768 + 768
    assert 7.0e6 < 12 * n < 7.2e6


@pytest.mark.parametrize("backend", backends())
def test_onepass_saves_only_x_and_h(backend):
    """recompute=True: the one-pass path keeps no [N, L, Ca] conv output for backward; recompute=False
    keeps exactly one (the pre-activation)."""
    from stadapter_fast.memory import saved_activation_bytes

    x = torch.randn(4, 10, 40, device=DEVICE, requires_grad=True)
    saved = {}
    for path, recompute in (("two_pass", True), ("one_pass", True), ("one_pass", False)):
        fast, _ = pair(act="gelu", backend=backend, path=path)
        fast.recompute = recompute
        saved[path, recompute], _ = saved_activation_bytes(lambda: fast(x, 2))
    x_bytes, h_bytes = 4 * 10 * 40 * 4, 4 * 10 * 24 * 4
    assert saved["one_pass", True] == x_bytes + h_bytes
    assert saved["one_pass", False] == x_bytes + 2 * h_bytes
    assert saved["two_pass", True] >= x_bytes + 2 * h_bytes


@pytest.mark.parametrize("act", [None, "gelu"])
@pytest.mark.parametrize("ks", [(3, 1, 1), (1, 3, 3)], ids=lambda k: "k%d%d%d" % k)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backends())
def test_onepass_without_recompute(backend, dtype, ks, act):
    """recompute=False (the pre-activation kept from forward) gives the same answers."""
    fast, ref = pair(ks=ks, act=act, backend=backend, path="one_pass", seed=8)
    fast.recompute = False
    fast.to(dtype)
    x = torch.randn(2 * 4, 1 + 9, 40, generator=torch.Generator().manual_seed(9)).to(DEVICE, dtype)
    check_against_fp64(fast, ref, x, 4, dtype)


@pytest.mark.parametrize("backend", backends())
def test_onepass_no_grad_keeps_nothing(monkeypatch, backend):
    """recompute=False under no_grad: the same output, and no pre-activation is written."""
    import stadapter_fast.ops.adapter_onepass as mod

    fast, _ = pair(act="gelu", backend=backend, path="one_pass")
    fast.recompute = False
    x = torch.randn(4, 10, 40, device=DEVICE)
    calls, real = [], mod._onepass_op

    def spy(*args):
        calls.append(args[11])  # the recompute argument
        return real(*args)
    monkeypatch.setattr(mod, "_onepass_op", spy)
    with torch.no_grad():
        y = fast(x, 2)
    y2 = fast(x, 2)
    assert calls == [True, False]  # recompute forced on without autograd
    assert_close(y, y2.detach(), torch.float32, "y")


def test_path_auto_and_recompute_validation():
    from stadapter_fast._backend import AUTO_PATH, resolve_path

    assert resolve_path("auto", "torch", (3, 1, 1)) == AUTO_PATH["torch", "temporal"]
    assert resolve_path("auto", "triton", (3, 3, 3)) == AUTO_PATH["triton", "spatial"]
    assert resolve_path("one_pass", "torch", (3, 1, 1)) == "one_pass"
    assert set(AUTO_PATH.values()) <= {"two_pass", "one_pass"}
    with pytest.raises(ValueError, match="path must be one of"):
        FastSTAdapter(40, 24, path="fused")
    with pytest.raises(ValueError, match="recompute must be a bool, got 'yes'"):
        FastSTAdapter(40, 24, recompute="yes")
    assert "path='one_pass', recompute=False" in repr(FastSTAdapter(40, 24, path="one_pass", recompute=False))


@pytest.mark.parametrize("recompute", [True, False])
def test_onepass_opcheck(recompute):
    from tests._util import TRITON_OK

    fast, _ = pair(act="gelu", path="one_pass")
    x = torch.randn(4, 10, 40, device=DEVICE)
    h = torch.nn.functional.linear(x, fast.fc1.weight, fast.fc1.bias).detach()
    ops = torch.ops.stadapter_fast
    for backend in (["torch", "triton"] if TRITON_OK else ["torch"]):
        args = (x, h, fast.conv.weight, fast.conv.bias, fast.fc2.weight, fast.fc2.bias, 2, 3, 3, 1, "gelu",
                recompute, backend)
        torch.library.opcheck(ops.st_adapter_onepass.default, args)
        pre = ops.st_adapter_onepass.default(*args)[1]
        params = [p.detach() for p in (fast.conv.weight, fast.conv.bias, fast.fc2.weight, fast.fc2.bias)]
        bargs = (torch.randn_like(x), h, pre, *params, 2, 3, 3, 1, "gelu", backend)
        torch.library.opcheck(ops.st_adapter_onepass_backward.default, bargs)
        # mmaction2's variant: prefix rows through act + fc2, a per-clip output scale with its gradient
        r = torch.tensor([0.5, -2.0], device=DEVICE)
        args = args + (True, r.requires_grad_())
        torch.library.opcheck(ops.st_adapter_onepass.default, args)
        pre = ops.st_adapter_onepass.default(*args)[1]
        torch.library.opcheck(ops.st_adapter_onepass_backward.default, bargs[:2] + (pre,) + bargs[3:] + (True, r.detach(), True))
