"""swap_adapters: official-style adapters in a model become FastSTAdapters with the same outputs."""
import math
import warnings

import pytest
import torch
from torch import nn

from stadapter_fast import FastSTAdapter, STAdapterReference, set_adapter_path, swap_adapters
from tests._util import DEVICE, assert_close, randomize


class OfficialAdapter(nn.Module):
    """The structure of the release's adapter (written here from its description): in-place add."""

    def __init__(self, in_channels, adapter_channels, kernel_size):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, adapter_channels)
        self.conv = nn.Conv3d(adapter_channels, adapter_channels, kernel_size=kernel_size, stride=(1, 1, 1),
                              padding=tuple(k // 2 for k in kernel_size), groups=adapter_channels)
        self.fc2 = nn.Linear(adapter_channels, in_channels)

    def forward(self, x, T):
        BT, L, C = x.size()
        Ca = self.conv.in_channels
        H = W = round(math.sqrt(L - 1))
        x_id = x
        x = self.fc1(x[:, 1:, :])
        x = x.view(BT // T, T, H, W, Ca).permute(0, 4, 1, 2, 3).contiguous()
        x = self.conv(x)
        x = x.permute(0, 2, 3, 4, 1).contiguous().view(BT, L - 1, Ca)
        x_id[:, 1:, :] += self.fc2(x)
        return x_id


class NotAnAdapter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.conv = nn.Conv3d(4, 4, 3, padding=1)  # dense, not depthwise

    def forward(self, x, T):
        return x


class Block(nn.Module):
    def __init__(self, C, adapter):
        super().__init__()
        self.adapter = adapter
        self.mlp = nn.Linear(C, C)

    def forward(self, x, T):
        x = self.adapter(x, T)
        return x + self.mlp(x)


class Net(nn.Module):
    def __init__(self, adapters):
        super().__init__()
        self.blocks = nn.ModuleList(Block(16, a) for a in adapters)
        self.other = NotAnAdapter()

    def forward(self, x, T):
        for b in self.blocks:
            x = b(x, T)
        return x


def test_swap_official_adapters_same_outputs_and_grads():
    net = Net([OfficialAdapter(16, 8, (3, 1, 1)), OfficialAdapter(16, 8, (3, 3, 3))]).double().to(DEVICE)
    randomize(net, 0.2)
    net.blocks[1].adapter.fc2.weight.requires_grad_(False)
    x = torch.randn(4, 10, 16, dtype=torch.float64, device=DEVICE)
    y_ref = net(x.clone(), 2)
    gx = torch.randn_like(y_ref)
    xr = x.clone().requires_grad_()
    ref_grads = torch.autograd.grad(net(xr.clone(), 2), [xr] + [p for p in net.blocks.parameters() if p.requires_grad], gx)
    net.eval()

    assert swap_adapters(net) == 2
    assert all(isinstance(b.adapter, FastSTAdapter) for b in net.blocks)
    assert isinstance(net.other, NotAnAdapter)
    a = net.blocks[1].adapter
    assert a.kernel_size == (3, 3, 3) and a.act == "none" and a.num_prefix_tokens == 1
    assert not a.fc2.weight.requires_grad and not a.training
    assert a.fc1.weight.dtype == torch.float64 and a.fc1.weight.device.type == DEVICE

    x2 = x.clone().requires_grad_()
    y = net(x2, 2)
    assert_close(y, y_ref, torch.float64, "y")
    grads = torch.autograd.grad(y, [x2] + [p for p in net.blocks.parameters() if p.requires_grad], gx)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg, torch.float64, "grad")
    assert swap_adapters(net) == 0  # idempotent


def test_swap_reference_keeps_its_config():
    ref = STAdapterReference(16, 8, (1, 3, 3), act="quick_gelu", num_prefix_tokens=2, grid_size=(2, 4))
    net = nn.Sequential(nn.Identity())
    net.add_module("ad", ref)
    assert swap_adapters(net, backend="torch") == 1
    new = net.ad
    assert (new.act, new.num_prefix_tokens, new.grid_size, new.backend) == ("quick_gelu", 2, (2, 4), "torch")


def test_swap_path_options_and_set_adapter_path():
    net = nn.ModuleDict({"a": OfficialAdapter(16, 8, (3, 1, 1)), "b": OfficialAdapter(16, 8, (3, 1, 1))})
    assert swap_adapters(net, path="one_pass", recompute=False) == 2
    assert all((m.path, m.recompute) == ("one_pass", False) for m in net.values())
    assert set_adapter_path(net, "two_pass") == 2
    assert all((m.path, m.recompute) == ("two_pass", True) for m in net.values())
    with pytest.raises(ValueError, match="path must be one of"):
        set_adapter_path(net, "onepass")
    with pytest.raises(ValueError, match="recompute must be a bool, got 1"):
        set_adapter_path(net, "one_pass", recompute=1)


class VariantAdapter(nn.Module):
    """The release's structure (fc1 / depthwise conv / fc2, called (x, T)) with other semantics."""

    def __init__(self, C=16, Ca=8, ks=(3, 1, 1), prefix=1, grid=None, fn=None, inplace=True, delta_only=False):
        super().__init__()
        self.fc1 = nn.Linear(C, Ca)
        self.conv = nn.Conv3d(Ca, Ca, ks, padding=tuple(k // 2 for k in ks), groups=Ca)
        self.fc2 = nn.Linear(Ca, C)
        self.prefix, self.grid, self._fn, self.inplace, self.delta_only = prefix, grid, fn, inplace, delta_only

    def forward(self, x, T):
        N, L, C = x.shape
        P = self.prefix
        H, W = self.grid or (round(math.sqrt(L - P)),) * 2
        h = self.fc1(x[:, P:]).view(N // T, T, H, W, -1).permute(0, 4, 1, 2, 3)
        h = self.conv(h).permute(0, 2, 3, 4, 1).reshape(N, H * W, -1)
        d = self.fc2(h if self._fn is None else self._fn(h))
        if self.delta_only:
            return torch.cat([torch.zeros_like(x[:, :P]), d], dim=1)
        if self.inplace:
            x[:, P:] += d
            return x
        return torch.cat([x[:, :P], x[:, P:] + d], dim=1)


class GeluByAttribute(VariantAdapter):
    act = "gelu"

    def __init__(self, **kw):
        super().__init__(fn=nn.functional.gelu, **kw)


class DropoutInTraining(VariantAdapter):
    """The release's computation in eval mode, with dropout on the bottleneck in training mode."""

    def __init__(self):
        super().__init__()
        self._fn = self._dropout

    def _dropout(self, h):
        return nn.functional.dropout(h, 0.5, training=self.training)


def swapped_matches(adapter, **swap_kw):
    """Swap ``adapter`` inside a container (warnings are errors) and check the result against a copy of
    the old module on the same random weights; returns swap_adapters' count."""
    import copy

    randomize(adapter, 0.2)
    before = copy.deepcopy(adapter).double()
    net = nn.ModuleDict({"a": adapter})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        n = swap_adapters(net, **swap_kw)
    T = 2
    P = swap_kw.get("num_prefix_tokens", 1)
    H, W = swap_kw.get("grid_size", (3, 3))
    x = torch.randn(2 * T, P + H * W, 16, dtype=torch.float64)
    assert isinstance(net["a"], FastSTAdapter)
    assert_close(net["a"].double()(x.clone(), T), before(x.clone(), T), torch.float64, "swapped adapter")
    return n


def test_swap_probe_accepts_equivalent_variants():
    assert swapped_matches(GeluByAttribute()) == 1  # the activation read from the attribute
    assert swapped_matches(VariantAdapter(prefix=0, inplace=False), num_prefix_tokens=0) == 1
    assert swapped_matches(VariantAdapter(grid=(2, 3)), grid_size=(2, 3)) == 1
    assert swapped_matches(VariantAdapter(inplace=False)) == 1
    assert swapped_matches(VariantAdapter(ks=(3, 3, 3))) == 1


@pytest.mark.parametrize("old,why", [
    (VariantAdapter(fn=nn.functional.gelu), "output differs"),           # an activation no attribute names
    (VariantAdapter(fn=torch.relu), "output differs"),
    (VariantAdapter(prefix=0), "raised RuntimeError"),                   # no class token, not told
    (VariantAdapter(grid=(2, 3)), "raised RuntimeError"),                 # non-square grid, not told
    (VariantAdapter(delta_only=True), "output differs"),                  # returns the update, not x + update
    (DropoutInTraining(), "training-mode output differs"),               # eval mode alone would pass
], ids=["gelu", "relu", "prefix0", "grid2x3", "delta_only", "dropout"])
def test_swap_probe_refuses_what_it_cannot_show_equivalent(old, why):
    # official zero init: conv weight/bias zero, so the current weights alone would hide the activation
    nn.init.zeros_(old.conv.weight)
    nn.init.zeros_(old.conv.bias)
    net = nn.ModuleDict({"a": old, "b": OfficialAdapter(16, 8, (3, 1, 1))})
    with pytest.raises(ValueError, match=f"left in place.*a \\({type(old).__name__}\\).*{why}"):
        swap_adapters(net, strict=True)
    assert net["a"] is old and isinstance(net["b"], OfficialAdapter), "strict: nothing replaced"
    with pytest.warns(UserWarning, match=f"1 adapter-shaped module\\(s\\) left in place.*{why}"):
        assert swap_adapters(net) == 1
    assert net["a"] is old and isinstance(net["b"], FastSTAdapter)


def test_swap_attribute_naming_the_wrong_activation_is_refused():
    class Mislabelled(VariantAdapter):
        act = "relu"

    old = Mislabelled(fn=nn.functional.gelu)
    net = nn.ModuleDict({"a": old})
    with pytest.warns(UserWarning, match="act='relu'.*output differs.*act=None.*output differs"):
        assert swap_adapters(net) == 0
    assert net["a"] is old


def test_swap_no_match():
    assert swap_adapters(nn.Sequential(nn.Linear(3, 3), NotAnAdapter())) == 0


def _mmaction2_adapter(droppath):
    """mmaction2's adapter (tests/test_mmaction2.py's restatement) on random weights, with ``droppath``."""
    pytest.importorskip("timm.layers", reason="timm is not installed (mmaction2 uses timm's DropPath)")
    from tests.test_mmaction2 import MMAction2STAdapter

    a = MMAction2STAdapter((3, 3, 3), 16, 8, 32, 8, drop_prob=0.5)
    a.droppath = droppath
    return randomize(a, 0.3)


class MmcvDropPath(nn.Module):
    """mmcv's ``DropPath`` computation (a mask from ``torch.rand``, kept samples divided by the keep rate):
    other draws than timm's, the same semantics."""

    def __init__(self, drop_prob):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)).floor()
        return x.div(keep) * mask


def test_swap_refuses_drop_path_that_does_not_rescale():
    DropPath = pytest.importorskip("timm.layers", reason="timm is not installed").DropPath  # noqa: N806

    old = _mmaction2_adapter(DropPath(0.5, scale_by_keep=False))  # kept clips not divided by 1 - p
    net = nn.ModuleDict({"a": old})
    with pytest.raises(ValueError, match=r"a \(MMAction2STAdapter\).*training-mode output differs.*clip"):
        swap_adapters(net, strict=True)
    with pytest.warns(UserWarning, match="training-mode output differs"):
        assert swap_adapters(net) == 0
    assert net["a"] is old
    for dp in (DropPath(0.5), DropPath(0.9), MmcvDropPath(0.5)):  # the semantics of the fused module
        net = nn.ModuleDict({"a": _mmaction2_adapter(dp)})
        assert swap_adapters(net, backend="torch", strict=True) == 1


def test_swap_keeps_parameter_objects():
    DropPath = pytest.importorskip("timm.layers", reason="timm is not installed").DropPath  # noqa: N806
    from tests.test_mmaction2 import RenamedOfficial

    net = nn.ModuleDict({"official": randomize(OfficialAdapter(16, 8, (3, 3, 3)), 0.3),
                         "renamed": randomize(RenamedOfficial(16, 8), 0.3),
                         "mmaction2": _mmaction2_adapter(DropPath(0.1))}).eval()
    net["official"].fc2.bias.requires_grad_(False)
    params = dict(net.named_parameters())
    opt = torch.optim.SGD([p for p in params.values() if p.requires_grad], lr=0.1)
    assert swap_adapters(net, backend="torch", strict=True, names=None) == 2  # renamed: needs names
    assert swap_adapters(net, backend="torch", strict=True, names={"fc1": "down", "conv": "dw", "fc2": "up"}) == 1
    assert isinstance(net["official"], FastSTAdapter) and isinstance(net["renamed"], FastSTAdapter)
    after = dict(net.named_parameters())
    assert list(after) == list(params) and all(after[k] is p for k, p in params.items())
    assert not net["official"].fc2.bias.requires_grad
    before = {k: p.detach().clone() for k, p in after.items()}
    x = torch.randn(4, 17, 16)
    loss = net["official"](x, 2).square().sum() + net["renamed"](x, 2).square().sum()
    (loss + net["mmaction2"](x.view(2, 2, 17, 16)).square().sum()).backward()
    opt.step()  # the optimizer built before the swap updates the swapped modules
    assert all(not torch.equal(before[k], p) for k, p in after.items() if p.requires_grad)
    assert torch.equal(before["official.fc2.bias"], net["official"].fc2.bias)


def test_swap_shared_adapter_stays_shared():
    shared = randomize(OfficialAdapter(16, 8, (3, 1, 1)), 0.3)
    net = Net([shared, shared, OfficialAdapter(16, 8, (3, 1, 1))])
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.randn(4, 10, 16, dtype=torch.float64)
    y_ref = net.double()(x.clone(), 2)
    assert swap_adapters(net, strict=True) == 2  # the shared module counted once
    a = net.blocks[0].adapter
    assert isinstance(a, FastSTAdapter) and net.blocks[1].adapter is a and net.blocks[2].adapter is not a
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert_close(net(x.clone(), 2), y_ref, torch.float64, "shared adapter")


def test_swap_shared_unswappable_adapter_reported_once():
    shared = VariantAdapter(fn=torch.relu)
    net = Net([shared, shared])
    with pytest.warns(UserWarning, match=r"1 adapter-shaped module\(s\) left in place") as record:
        assert swap_adapters(net) == 0
    assert "blocks.0.adapter" in str(record[0].message) and "blocks.1.adapter" not in str(record[0].message)
    assert net.blocks[0].adapter is shared and net.blocks[1].adapter is shared


class LoRALinear(nn.Linear):
    """A Linear with a low-rank update: the structure check sees a Linear; the weights are more."""

    def __init__(self, i, o, r=2):
        super().__init__(i, o)
        self.lora_a = nn.Parameter(0.1 * torch.randn(r, i))
        self.lora_b = nn.Parameter(0.1 * torch.randn(o, r))

    def forward(self, x):
        return super().forward(x) + x @ self.lora_a.t() @ self.lora_b.t()


def _with_lora_fc1(a):
    a.fc1 = LoRALinear(a.fc1.in_features, a.fc1.out_features)
    return a


def _with_weight_norm_fc2(a):
    a.fc2 = nn.utils.parametrizations.weight_norm(a.fc2)
    return a


@pytest.mark.parametrize("change", [_with_lora_fc1, _with_weight_norm_fc2], ids=["lora", "weight_norm"])
def test_swap_skips_adapter_whose_weights_it_cannot_take(change):
    old = change(OfficialAdapter(16, 8, (3, 1, 1)))
    net = nn.ModuleDict({"a": old, "b": OfficialAdapter(16, 8, (3, 1, 1))})
    with pytest.raises(ValueError, match=r"a \(OfficialAdapter\).*FastSTAdapter cannot take the module's parameters"):
        swap_adapters(net, strict=True)
    with pytest.warns(UserWarning, match="cannot take the module's parameters.*Unexpected key"):
        assert swap_adapters(net) == 1
    assert net["a"] is old and isinstance(net["b"], FastSTAdapter)


def test_swap_skips_adapter_with_mixed_dtypes():
    old = OfficialAdapter(16, 8, (3, 1, 1))
    old.fc2.double()
    net = nn.ModuleDict({"a": old})
    why = r"more than one dtype or device \(torch.float32 on cpu, torch.float64 on cpu\)"
    with pytest.raises(ValueError, match=why):
        swap_adapters(net, strict=True)
    assert net["a"] is old


def test_swap_under_inference_mode():
    net = Net([randomize(OfficialAdapter(16, 8, (3, 3, 3)), 0.3)])
    x = torch.randn(4, 10, 16)
    with torch.inference_mode():
        y_ref = net(x.clone(), 2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert swap_adapters(net, strict=True) == 1
        assert isinstance(net.blocks[0].adapter, FastSTAdapter)
        assert_close(net(x.clone(), 2), y_ref, torch.float32, "swapped under inference_mode")
