"""torch.compile(fullgraph=True) over a model with FastSTAdapter: no graph break, matches eager."""
import pytest
import torch
from torch import nn

from stadapter_fast import FastSTAdapter
from tests._util import DEVICE, assert_close, backends


class TinyVideoBlock(nn.Module):
    def __init__(self, backend, path="two_pass", recompute=True):
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.adapter = FastSTAdapter(32, 16, (3, 3, 3), act="gelu", backend=backend, path=path,
                                     recompute=recompute)
        self.mlp = nn.Linear(32, 32)
        with torch.no_grad():
            for p in self.adapter.parameters():
                p.normal_(0, 0.2)

    def forward(self, x, T: int):
        x = self.adapter(x, T)
        return x + self.mlp(self.norm(x))


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path,recompute", [("two_pass", True), ("one_pass", True), ("one_pass", False)])
def test_compile_fullgraph_matches_eager(path, recompute, backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = TinyVideoBlock(backend, path, recompute).to(DEVICE)
    x = torch.randn(4, 1 + 9, 32, device=DEVICE)
    dy = torch.randn_like(x)

    def run(fn):
        xi = x.clone().requires_grad_()
        y = fn(xi, 2)
        grads = torch.autograd.grad(y, [xi] + list(m.parameters()), dy)
        return y, grads

    y_e, g_e = run(m)
    compiled = torch.compile(m, fullgraph=True, dynamic=False)
    y_c, g_c = run(compiled)
    assert_close(y_c, y_e, torch.float32, "y", factor=10)
    for a, b in zip(g_c, g_e):
        assert_close(a, b, torch.float32, "grad", factor=10)


def test_compile_dynamic_shapes_with_inferred_grid():
    torch._dynamo.reset()
    m = FastSTAdapter(16, 8, (3, 1, 1), act="gelu", backend="torch")
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    c = torch.compile(m, fullgraph=True, dynamic=True)
    for n, L in ((4, 10), (8, 17)):
        x = torch.randn(n, L, 16)
        assert_close(c(x, 2), m(x, 2), torch.float32, "dynamic", factor=10)
