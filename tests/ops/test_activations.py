"""The activation table: every entry's Triton forward and derivative match ``torch.autograd`` on the
PyTorch definition; the table, the PyTorch definitions and the CLI agree; an unknown code does not
compile."""
import pytest
import torch

from stadapter_fast import ACTIVATIONS, st_adapter_conv
from stadapter_fast.ops.dwconv_tokens import act_fwd, act_grad
from tests._util import DEVICE, TRITON_OK, assert_close


def _points(dtype):
    """Values across every activation's interesting range, zero and both tails included."""
    x = torch.cat([torch.linspace(-6, 6, 193, dtype=torch.float64), torch.tensor([0.0, -1e-3, 1e-3]).double()])
    return x.to(DEVICE, dtype)


@pytest.mark.skipif(not TRITON_OK, reason="needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_kernel_activation_and_derivative_match_autograd(act):
    """Through the real kernels: a (1,1,1) conv with weight 1 and bias 0 is act(h) forward, and its
    input gradient is dz * act'(h)."""
    x = _points(torch.float32)
    C = x.numel()
    prefix = torch.randn(C, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(1))
    h = torch.stack([prefix, x]).unsqueeze(0).requires_grad_()  # [N=1, L=2, C]: a prefix row and a 1x1 grid
    w = torch.ones(C, 1, 1, 1, 1, device=DEVICE)
    dz = torch.randn(1, 2, C, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(0))
    out = st_adapter_conv(h, w, torch.zeros(C, device=DEVICE), 1, (1, 1), 1, act, backend="triton")
    (dh,) = torch.autograd.grad(out, [h], dz)
    x64 = x.double().requires_grad_()
    y64 = act_fwd(x64, act)
    (g64,) = torch.autograd.grad(y64, [x64], dz[0, 1].double())
    assert_close(out[0, 1], y64, torch.float32, f"{act} forward")
    assert_close(dh[0, 1], g64, torch.float32, f"{act} derivative")


@pytest.mark.parametrize("act", [a for a in ACTIVATIONS if a != "none"])
def test_pytorch_derivative_matches_autograd(act):
    x = _points(torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(act_fwd(x, act).sum(), [x])
    # relu at exactly 0: autograd's subgradient is 0, as act_grad's
    assert_close(act_grad(x.detach(), act), g, torch.float64, act)


def test_table_pytorch_definitions_and_cli_agree():
    from stadapter_fast.train import build_parser

    codes = list(ACTIVATIONS.values())
    assert sorted(codes) == list(range(len(codes))), "codes are 0..n-1, each once"
    x = torch.randn(8, dtype=torch.float64)
    for name in ACTIVATIONS:
        act_fwd(x, name)  # every name has a PyTorch definition (an unknown one raises)
    with pytest.raises(ValueError, match="act must be one of"):
        act_fwd(x, "no_such_activation")
    act_action = next(a for a in build_parser()._actions if a.dest == "act")
    assert set(act_action.choices) == set(ACTIVATIONS) - {"none"}


PROBE = """
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from csrc_triton.activations import ACTIVATIONS
from csrc_triton.common import act_fwd, act_grad


@triton.jit
def probe(X, ACT: tl.constexpr, GRAD: tl.constexpr):
    o = tl.arange(0, 16)
    x = tl.load(X + o)
    if GRAD:
        x = act_grad(x, ACT)
    else:
        x = act_fwd(x, ACT)
    tl.store(X + o, x)


LAST = max(ACTIVATIONS.values())  # the last code in the table compiles; the next one must not
for grad in (0, 1):
    for act in (LAST, LAST + 1):
        src = ASTSource(fn=probe, signature={"X": "*fp32", "ACT": "constexpr", "GRAD": "constexpr"},
                        constexprs={"ACT": act, "GRAD": grad})
        try:
            triton.compile(src, target=GPUTarget("cuda", 90, 32))
            print(grad, act, "compiled")
        except Exception as e:
            print(grad, act, "failed", "activation code" in f"{e} {e.__cause__!r}")
"""


def test_unknown_code_does_not_compile(tmp_path):
    """The kernels' branches end in a compile-time error, not a silent fallback (AOT compile for sm_90)."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "probe_act.py"  # Triton reads a kernel's source from its file
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = max(ACTIVATIONS.values())
    assert proc.stdout.splitlines() == [f"{g} {last} compiled" if ok else f"{g} {last + 1} failed True"
                                        for g in (0, 1) for ok in (True, False)], proc.stdout + proc.stderr[-2000:]
