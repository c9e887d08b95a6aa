"""mmaction2's ST-Adapter (VindLU's ``STAdapter``): swapped by ``swap_adapters`` inside a small model, against
a restatement of the mmaction2 module written here from its published semantics; the fused module against
the plain-PyTorch reference over dtypes, paths and backends; drop path in training."""
import copy
import math

import pytest
import torch
from torch import nn

from stadapter_fast import (FastMMAction2STAdapter, FastSTAdapter, MMAction2STAdapterReference,
                            set_adapter_path, swap_adapters)
from stadapter_fast.swap import RenamedFastSTAdapter
from tests._util import DEVICE, assert_close, backends, mixed_drop_seed, randomize

timm_layers = pytest.importorskip("timm.layers", reason="timm is not installed (mmaction2 uses timm's DropPath)")
PATHS = ["two_pass", "one_pass"]


class MMAction2STAdapter(nn.Module):
    """mmaction2's ``STAdapter`` as published (its structure, names and arguments), restated with plain
    PyTorch; ``num_prefix_tokens`` generalises its single class token for the tests."""

    def __init__(self, kernel_size=(3, 3, 3), input_dim=768, hidden_dim=384, img_size=224, patch_size=16,
                 drop_prob=0.1, num_prefix_tokens=1):
        super().__init__()
        self.kernel_size = kernel_size
        self.h = self.w = img_size // patch_size
        self.p = num_prefix_tokens
        self.linear1 = nn.Linear(input_dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, input_dim)
        self.act = nn.ReLU()
        self.conv = nn.Conv3d(hidden_dim, hidden_dim, kernel_size=kernel_size, padding="same", groups=hidden_dim)
        self.droppath = timm_layers.DropPath(drop_prob=drop_prob)
        self.scale = nn.Parameter(torch.zeros([]))

    def forward(self, x):
        if x.shape[1] == 1:
            return x
        shortcut = x
        x = self.linear1(x)
        b, t, l, c = x.shape
        cls, tokens = x[:, :, :self.p, :], x[:, :, self.p:, :]
        tokens = tokens.reshape(b, t, self.h, self.w, c).permute(0, 4, 1, 2, 3).contiguous()
        tokens = self.conv(tokens).permute(0, 2, 3, 4, 1).reshape(b, t, self.h * self.w, c)
        x = self.act(torch.cat([cls, tokens], dim=2))
        x = self.linear2(x)
        return shortcut + self.scale * self.droppath(x)


class VindLULike(nn.Module):
    """Two adapters between other layers, as a VindLU-style encoder calls them ([b, t, l, c])."""

    def __init__(self, adapters, C):
        super().__init__()
        self.embed = nn.Linear(C, C)
        self.adapter1 = adapters[0]
        self.mid = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C))
        self.adapter2 = adapters[1]
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        x = self.adapter1(self.embed(x))
        x = self.adapter2(x + self.mid(x))
        return self.head(x.mean(dim=(1, 2)))


class _DrawIn(nn.Module):
    """timm's ``DropPath`` drawing its per-sample mask in ``dtype``: the same draw as a model in ``dtype``
    (on CPU a Bernoulli draw does not depend on the dtype; on CUDA fp64 draws differ from fp32 ones)."""

    def __init__(self, dtype, droppath):
        super().__init__()
        self.dtype, self.droppath = dtype, droppath

    def forward(self, x):
        ones = torch.ones((x.shape[0],) + (1,) * (x.dim() - 1), dtype=self.dtype, device=x.device)
        return x * self.droppath(ones).to(x.dtype)


def _factor(name: str) -> float:
    """``scale``'s gradient is one sum over every element of the adapter's output, with cancellation: its
    fp32 error relative to its own size reaches ~2e-5 (measured), against ~1e-6 for the other gradients."""
    return 10.0 if name.endswith("scale") else 1.0


def _make(ks, P, drop_prob=0.2, C=16, Ca=8, img=32, patch=8):
    adapters = [MMAction2STAdapter(ks, C, Ca, img, patch, drop_prob, num_prefix_tokens=P) for _ in range(2)]
    model = VindLULike(adapters, C)
    randomize(model, 0.4)
    return model.to(DEVICE)


def _grads(model, x):
    out = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.pow(2).sum(), [x] + params, allow_unused=True)
    return out, [torch.zeros_like(p) if g is None else g for p, g in zip([x] + params, grads)]


# (kernel, prefix count, frames): every kernel shape class, 1 and 2 prefix tokens, and one-frame clips
SWAP_CASES = [((3, 3, 3), 1, 4), ((3, 1, 1), 2, 4), ((1, 3, 3), 1, 4), ((3, 3, 3), 2, 4), ((3, 3, 3), 1, 1)]


@pytest.mark.parametrize("ks,P,T", SWAP_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path", PATHS)
def test_swapped_model_matches_eval(path, backend, ks, P, T):
    old = _make(ks, P).eval()
    new = copy.deepcopy(old)
    n = swap_adapters(new, num_prefix_tokens=None if P == 1 else P, backend=backend, path=path, strict=True)
    assert n == 2 and all(isinstance(getattr(new, a), FastMMAction2STAdapter) for a in ("adapter1", "adapter2"))
    assert new.adapter1.drop_prob == pytest.approx(0.2) and not new.adapter1.training
    # parameter names stay mmaction2's: its checkpoints load with strict=True
    assert list(new.state_dict()) == list(old.state_dict())
    new.load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(2, T, P + 16, 16, device=DEVICE, requires_grad=True)
    y_old, g_old = _grads(copy.deepcopy(old).double(), x.detach().double().requires_grad_())  # the fp64 oracle
    y_new, g_new = _grads(new, x)
    assert_close(y_new, y_old, torch.float32, "logits")
    names = ["x"] + [n for n, p in old.named_parameters()]
    for name, a, b in zip(names, g_new, g_old):
        if T == 1 and ("adapter" in name):
            assert a.abs().max() == 0 and b.abs().max() == 0, name  # one frame: adapters are skipped
            continue
        assert_close(a, b, torch.float32, f"grad {name}", _factor(name))
    assert any("scale" in n for n in names)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path", PATHS)
def test_training_gradients_match_for_a_fixed_mask(path, backend):
    """Same seed -> the same per-clip Bernoulli draws (timm's DropPath and the fused module draw alike):
    outputs and every gradient match in training mode, with some clips dropped and some kept."""
    old = _make((3, 3, 3), 1, drop_prob=0.5).train()
    new = copy.deepcopy(old)
    assert swap_adapters(new, backend=backend, path=path, strict=True) == 2
    assert new.adapter1.training
    x = torch.randn(6, 3, 17, 16, device=DEVICE, requires_grad=True)
    draws = []
    for a in (new.adapter1, new.adapter2):
        a.drop_factor = lambda v, f=a.drop_factor: draws.append(f(v)) or draws[-1]

    def draw():
        draws.clear()
        with torch.no_grad():
            new(x)
        return draws

    seed = mixed_drop_seed(draw, start=3)
    old64 = old.double()
    for a in (old64.adapter1, old64.adapter2):  # the oracle draws its masks in fp32, as the fp32 model does
        a.droppath = _DrawIn(torch.float32, a.droppath)
    torch.manual_seed(seed)
    y_old, g_old = _grads(old64, x.detach().double().requires_grad_())  # the fp64 oracle
    torch.manual_seed(seed)
    y_new, g_new = _grads(new, x)
    assert_close(y_new, y_old, torch.float32, "logits")
    for name, a, b in zip(["x"] + [n for n, _ in old.named_parameters()], g_new, g_old):
        assert_close(a, b, torch.float32, f"grad {name}", _factor(name))


def test_drop_rate_matches_drop_path():
    """The share of clips whose update is dropped is drop_prob (a 5-sigma binomial bound), and kept
    clips' updates are scaled by 1 / (1 - drop_prob)."""
    torch.manual_seed(0)
    b, p = 4000, 0.3
    m = FastMMAction2STAdapter((3, 1, 1), 8, 4, img_size=8, patch_size=4, drop_prob=p, backend="torch")
    randomize(m, 0.4)
    x = torch.randn(b, 2, 5, 8)
    with torch.no_grad():
        y_eval = m.eval()(x)
        y = m.train()(x)
    upd, upd_eval = (y - x).flatten(1), (y_eval - x).flatten(1)
    dropped = (upd.abs().amax(dim=1) == 0)
    sd = math.sqrt(b * p * (1 - p))
    assert abs(dropped.sum().item() - b * p) < 5 * sd
    kept = ~dropped
    assert_close(upd[kept], upd_eval[kept] / (1 - p), torch.float32, "kept clips' update")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act", ["relu", "gelu", None])
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path", PATHS)
def test_fast_module_matches_fp64_reference(path, backend, act, dtype):
    """Forward and every gradient (``scale``'s included) in each dtype against the fp64 reference, in
    training mode with a fixed seed (so some clips are dropped), a non-square grid and 2 prefix tokens."""
    kw = dict(act=act, num_prefix_tokens=2, grid_size=(3, 4))
    ref = MMAction2STAdapterReference((3, 3, 1), 24, 12, drop_prob=0.4, **kw).double()
    randomize(ref, 0.4)
    fast = FastMMAction2STAdapter((3, 3, 1), 24, 12, drop_prob=0.4, backend=backend, path=path, **kw)
    fast.load_state_dict(ref.state_dict())
    fast = fast.to(DEVICE, dtype).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, 14, 24, generator=g)
    dy = torch.randn(5, 4, 14, 24, generator=g)
    xd = x.double().requires_grad_()
    xf = x.to(DEVICE, dtype).requires_grad_()
    # the fast module's draw (in its dtype, on its device) is the reference's mask too
    seed = mixed_drop_seed(lambda: [fast.drop_factor(xf)], start=7)
    torch.manual_seed(seed)
    d = fast.drop_factor(xf)
    ref.drop_factor = lambda _x: d.to("cpu", torch.float64)
    y_ref = ref.train()(xd)
    torch.manual_seed(seed)
    y = fast(xf)
    assert y.dtype == dtype and y.shape == xf.shape
    g_ref = torch.autograd.grad(y_ref, [xd] + list(ref.parameters()), dy.double())
    g_new = torch.autograd.grad(y, [xf] + list(fast.parameters()), dy.to(DEVICE, dtype))
    assert_close(y, y_ref, dtype, "y")
    for name, a, b in zip(["x"] + [n for n, _ in ref.named_parameters()], g_new, g_ref):
        assert a.dtype == dtype, name
        assert_close(a, b, dtype, f"grad {name}", factor=2.0 * _factor(name))


def test_oracles_share_the_mask_when_draws_depend_on_the_dtype(monkeypatch):
    """On CUDA an fp64 Bernoulli draw uses other random numbers than an fp32 one (same seed, other mask);
    on CPU it does not. Simulated here: the two tests above still hold (their oracles take the fast
    module's mask, or draw it in fp32)."""
    bernoulli_ = torch.Tensor.bernoulli_

    def dtype_dependent(t, *args, **kwargs):
        if t.dtype == torch.float64:
            torch.rand(1)  # fp64 draws start one number later
        return bernoulli_(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "bernoulli_", dtype_dependent)
    test_training_gradients_match_for_a_fixed_mask("two_pass", "torch")
    test_fast_module_matches_fp64_reference("two_pass", "torch", "relu", torch.float32)


def test_single_frame_returns_input_and_bad_input():
    m = FastMMAction2STAdapter((3, 3, 3), 8, 4, img_size=8, patch_size=4)
    x = torch.randn(2, 1, 5, 8)
    assert m(x) is x and MMAction2STAdapterReference((3, 3, 3), 8, 4, img_size=8, patch_size=4)(x) is x
    with pytest.raises(ValueError, match=r"\[b, t, l, c\]"):
        m(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="L - num_prefix_tokens"):
        m(torch.randn(2, 3, 6, 8))
    with pytest.raises(ValueError, match="drop_prob"):
        FastMMAction2STAdapter(drop_prob=1.0)
    with pytest.raises(ValueError, match="kernel_size"):
        FastMMAction2STAdapter(kernel_size=(2, 3, 3))
    assert set_adapter_path(VindLULike([m, copy.deepcopy(m)], 8), "one_pass") == 2


class WrongCls(MMAction2STAdapter):
    """Structure of mmaction2's adapter, but the class token goes through the conv too: not equivalent."""

    def forward(self, x):
        b, t, l, c = x.shape
        u = self.linear1(x).reshape(b, t, self.h * self.w + 1, -1)
        u = torch.cat([u[:, :, :1], u], dim=2)[:, :, 1:]  # same shape, but shifted rows
        return x + self.scale * self.linear2(self.act(u))


def test_non_equivalent_module_is_left_in_place():
    model = VindLULike([WrongCls((3, 1, 1), 16, 8, 32, 8, 0.1), MMAction2STAdapter((3, 1, 1), 16, 8, 32, 8, 0.1)], 16)
    randomize(model, 0.4)
    with pytest.warns(UserWarning, match="adapter1"):
        assert swap_adapters(model) == 1
    assert isinstance(model.adapter1, WrongCls) and isinstance(model.adapter2, FastMMAction2STAdapter)
    with pytest.raises(ValueError, match="left in place"):
        swap_adapters(VindLULike([WrongCls((3, 1, 1), 16, 8, 32, 8, 0.1)] * 2, 16), strict=True)


class RenamedOfficial(nn.Module):
    """The official adapter's semantics under another codebase's attribute names."""

    def __init__(self, C, Ca, ks=(3, 1, 1)):
        super().__init__()
        self.down = nn.Linear(C, Ca)
        self.dw = nn.Conv3d(Ca, Ca, ks, padding=tuple(k // 2 for k in ks), groups=Ca)
        self.up = nn.Linear(Ca, C)

    def forward(self, x, T):
        BT, L, C = x.shape
        H = W = round(math.sqrt(L - 1))
        h = self.down(x[:, 1:]).view(BT // T, T, H, W, -1).permute(0, 4, 1, 2, 3)
        h = self.dw(h).permute(0, 2, 3, 4, 1).reshape(BT, L - 1, -1)
        return torch.cat([x[:, :1], x[:, 1:] + self.up(h)], dim=1)


class Holder(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x, T):
        return self.a(x, T)


@pytest.mark.parametrize("backend", backends())
def test_names_for_renamed_official_adapters(backend):
    model = Holder(RenamedOfficial(16, 8)).to(DEVICE)
    randomize(model, 0.4)
    keys = list(model.state_dict())
    assert swap_adapters(model) == 0  # not recognised without names
    new = copy.deepcopy(model)
    assert swap_adapters(new, names={"fc1": "down", "conv": "dw", "fc2": "up"}, backend=backend, strict=True) == 1
    assert isinstance(new.a, RenamedFastSTAdapter) and isinstance(new.a, FastSTAdapter)
    assert list(new.state_dict()) == keys and new.a.fc1 is new.a.down
    new.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(4, 17, 16, device=DEVICE)
    assert_close(new(x, 2), model(x, 2), torch.float32, "renamed adapter")
    for bad in ({"fc1": "down", "fc3": "x"}, {"fc1": "up", "fc2": "up"}, {"fc1": "not an identifier"}):
        with pytest.raises(ValueError, match="names"):
            swap_adapters(new, names=bad)
