"""Bad input gets a ValueError naming the argument, the expected and the actual value."""
import pytest
import torch

import stadapter_fast._backend as backend_mod
from stadapter_fast import FastSTAdapter, STAdapterReference, st_adapter_conv


def conv_args(N=4, L=10, C=8, ks=(3, 1, 1)):
    return torch.randn(N, L, C), torch.randn(C, 1, *ks), torch.randn(C)


@pytest.mark.parametrize("kwargs,match", [
    (dict(T=3), r"B\*T = 4 is not divisible by T = 3"),
    (dict(T=0), r"T \(frames per clip\) must be a positive int, got 0"),
    (dict(T=2, num_prefix_tokens=2), r"10 - 2 = 8 is not a square grid"),
    (dict(T=2, grid_size=(2, 4)), r"grid_size=\(2, 4\) holds H\*W=8 tokens, but L - num_prefix_tokens = 10 - 1 = 9"),
    (dict(T=2, grid_size=(3, 0)), r"grid_size must be None or two positive ints"),
    (dict(T=2, num_prefix_tokens=-1), r"num_prefix_tokens must be an int >= 0, got -1"),
    (dict(T=2, num_prefix_tokens=10), r"leaves no patch tokens"),
    (dict(T=2, act="tanh"), r"act must be one of .* got 'tanh'"),
    (dict(T=2, backend="cuda"), r"backend must be one of .* got 'cuda'"),
])
def test_conv_argument_errors(kwargs, match):
    h, w, b = conv_args()
    with pytest.raises(ValueError, match=match):
        st_adapter_conv(h, w, b, **kwargs)


def test_conv_tensor_errors():
    h, w, b = conv_args()
    with pytest.raises(ValueError, match=r"weight must have shape \[C, 1, kt, kh, kw\] with C = h.shape\[2\] = 8, got \(6, 1, 3, 1, 1\)"):
        st_adapter_conv(h, w[:6], b, 2)
    with pytest.raises(ValueError, match=r"kernel_size must be three odd positive ints .* got \(2, 1, 1\)"):
        st_adapter_conv(h, torch.randn(8, 1, 2, 1, 1), b, 2)
    with pytest.raises(ValueError, match=r"bias must have shape \[8\], got \(7,\)"):
        st_adapter_conv(h, w, b[:7], 2)
    with pytest.raises(ValueError, match=r"h must have dtype in .* got torch.int64"):
        st_adapter_conv(h.long(), w, b, 2)
    with pytest.raises(ValueError, match=r"h must be a tensor of shape \[B\*T, L, C\], got \(4, 80\)"):
        st_adapter_conv(h.reshape(4, 80), w, b, 2)
    with pytest.raises(ValueError, match=r"weight is on meta but h is on cpu"):
        st_adapter_conv(h, w.to("meta"), b, 2)
    with pytest.raises(ValueError, match=r"bias is on meta but h is on cpu"):
        st_adapter_conv(h, w, b.to("meta"), 2)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend_mod, "interpreting", lambda: False)
    h, w, b = conv_args()
    with pytest.raises(ValueError, match=r"TRITON_INTERPRET=1"):
        st_adapter_conv(h, w, b, 2, backend="triton")
    monkeypatch.setattr(backend_mod, "triton_available", lambda: False)
    with pytest.raises(ValueError, match=r"needs the `triton` package"):
        st_adapter_conv(h, w, b, 2, backend="triton")
    assert backend_mod.resolve_backend("auto", torch.device("cpu")) == "torch"


@pytest.mark.parametrize("cls", [FastSTAdapter, STAdapterReference])
def test_module_errors(cls):
    with pytest.raises(ValueError, match=r"kernel_size must be three odd positive ints .* got \(3, 2, 1\)"):
        cls(16, 8, (3, 2, 1))
    with pytest.raises(ValueError, match=r"adapter_channels must be a positive int, got 0"):
        cls(16, 0)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        cls(16, 8, backend="cudnn")
    with pytest.raises(ValueError, match=r"grid_size must be None or two positive ints"):
        cls(16, 8, grid_size=(3,))
    if cls is FastSTAdapter:
        with pytest.raises(ValueError, match=r"path must be one of .* got 'fused'"):
            cls(16, 8, path="fused")
    m = cls(16, 8)
    with pytest.raises(ValueError, match=r"x has 12 channels \(x.shape\[2\]\), expected in_channels=16"):
        m(torch.randn(4, 10, 12), 2)
    with pytest.raises(ValueError, match=r"B\*T = 4 is not divisible by T = 3"):
        m(torch.randn(4, 10, 16), 3)
    with pytest.raises(ValueError, match=r"10 - 1 = 9|11 - 1 = 10 is not a square grid"):
        m(torch.randn(4, 11, 16), 2)
    with pytest.raises(ValueError, match=r"x has dtype torch.float16 but the adapter's parameters are torch.float32"):
        m(torch.randn(4, 10, 16, dtype=torch.float16), 2)
    with pytest.raises(ValueError, match=r"x is on meta but the adapter's parameters are on cpu"):
        m(torch.randn(4, 10, 16, device="meta"), 2)
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \[B\*T, L, C\], got \(40, 16\)"):
        m(torch.randn(40, 16), 2)
