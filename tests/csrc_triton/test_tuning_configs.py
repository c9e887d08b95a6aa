"""Every GPU autotuning config of every kernel gives the right answer (run through the interpreter on
CPU, natively on GPU): the tuner may pick any of them, and CI cannot time them. Ragged shapes, so each
config has partial tiles on every axis; outputs are NaN-poisoned (tests/conftest.py), so a config that
leaves a row or channel unwritten fails."""
import pytest
import torch

from stadapter_fast.ops.adapter_onepass import adapter_onepass_ref
from stadapter_fast.ops.dwconv_tokens import st_adapter_conv_ref
from tests._util import DEVICE, TRITON_OK, assert_close

pytestmark = pytest.mark.skipif(not TRITON_OK, reason="needs CUDA or TRITON_INTERPRET=1")

B, T, H, W, P = 2, 4, 3, 5, 1          # M = 120 patch tokens
C, Ca = 72, 40                         # ragged against 32/64/128/256 tiles
ACTS = {"none": 0, "gelu": 2}


def _case(ks, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, L = B * T, P + H * W

    def r(*shape, s=1.0):
        return (s * torch.randn(*shape, generator=g)).to(DEVICE)
    return dict(x=r(N, L, C), h=r(N, L, Ca), wc=r(Ca, 1, *ks, s=0.4), bc=r(Ca), w2=r(C, Ca, s=0.2), b2=r(C),
                dy=r(N, L, C), r=r(B))


def _reference(c, ks, act, mm2=False):
    """fp64 oracles: pre, z (the conv op's ref), y (the one-pass op's ref), and the grads of sum(y * dy)
    w.r.t. h, conv weight and conv bias. ``mm2``: mmaction2's variant (prefix rows through act + fc2,
    a per-clip output scale)."""
    h, wc, bc = (c[k].double().requires_grad_() for k in ("h", "wc", "bc"))
    y = adapter_onepass_ref(c["x"].double(), h, wc, bc, c["w2"].double(), c["b2"].double(), T, H, W, P, act,
                            prefix_through=mm2, row_scale=c["r"].double() if mm2 else None)
    dh, dwc, dbc = torch.autograd.grad(y, [h, wc, bc], c["dy"].double())
    mode = "no_conv" if mm2 else "skip"
    with torch.no_grad():
        pre = st_adapter_conv_ref(h, wc, bc, T, (H, W), P, None, mode)
        z = st_adapter_conv_ref(h, wc, bc, T, (H, W), P, act, mode)
    return dict(pre=pre, z=z, y=y.detach(), dh=dh, dwc=dwc.reshape(Ca, -1), dbc=dbc)


def _conv_space():
    import csrc_triton.dwconv_tokens as dwconv
    return dwconv.conv_fwd_kernel.space  # the configs as launched (defaults filled in)


def _onepass_spaces():
    import csrc_triton.adapter_onepass as onepass
    return onepass.onepass_fwd_kernel.space, onepass.onepass_bwd_kernel.space


N_CONV, N_FWD, N_BWD = 8, 7, 7  # sizes of the spaces (checked below)


@pytest.mark.parametrize("i", range(N_CONV))
@pytest.mark.parametrize("act", ["none", "gelu"])
def test_conv_kernels_every_config(i, act):
    import csrc_triton.dwconv_tokens as dwconv

    cfg = _conv_space()[i]
    ks = (3, 1, 1) if i % 2 == 0 else (3, 3, 3)
    c = _case(ks, seed=i)
    h, wc, bc = c["h"], c["wc"], c["bc"]
    ref = _reference(c, ks, act)
    w2d = wc.reshape(Ca, -1).contiguous()
    out = torch.empty_like(h)
    out[:, :P] = 0
    dwconv.dwconv_tokens_fwd(h, w2d, bc, out, T, H, W, P, P, ks, ACTS[act], config=cfg)
    assert_close(out[:, P:], ref["z"][:, P:], torch.float32, f"conv fwd {cfg}")
    # conv backward given dz = dy W2 (from the reference's chain)
    dz = (c["dy"].double() @ c["w2"].double()).float()
    dh, dwc, dbc = dwconv.dwconv_tokens_bwd(dz, h, w2d, bc, T, H, W, P, ks, ACTS[act], config=cfg, flip_config=cfg)
    assert_close(dh[:, P:], ref["dh"][:, P:], torch.float32, f"conv dh {cfg}")
    assert torch.count_nonzero(dh[:, :P]) == 0
    assert_close(dwc, ref["dwc"], torch.float32, f"conv dw {cfg}")
    assert_close(dbc, ref["dbc"], torch.float32, f"conv db {cfg}")


@pytest.mark.parametrize("i", range(N_FWD))
@pytest.mark.parametrize("act", ["none", "gelu"])
def test_onepass_forward_every_config(i, act):
    """With gelu, mmaction2's variant: the prefix rows' launch and the per-clip scale, in every config."""
    import csrc_triton.adapter_onepass as onepass

    cfg = _onepass_spaces()[0][i]
    ks = (3, 1, 1) if i % 2 == 0 else (1, 3, 3)
    c = _case(ks, seed=10 + i)
    mm2 = act == "gelu"
    ref = _reference(c, ks, act, mm2)
    y = torch.empty_like(c["x"])
    pre = torch.empty_like(c["h"])
    if not mm2:  # the op's caller writes the prefix rows the kernel leaves alone
        y[:, :P] = c["x"][:, :P]
        pre[:, :P] = 0
    onepass.onepass_fwd(c["h"], c["x"], y, c["wc"].reshape(Ca, -1).contiguous(), c["bc"], c["w2"], c["b2"],
                        T, H, W, P, ks, ACTS[act], pre=pre, config=cfg, prefix_through=mm2,
                        row_scale=c["r"] if mm2 else None)
    assert_close(y, ref["y"], torch.float32, f"one-pass y {cfg} mm2={mm2}")
    assert_close(pre, ref["pre"], torch.float32, f"one-pass pre {cfg} mm2={mm2}")


@pytest.mark.parametrize("i", range(N_BWD))
@pytest.mark.parametrize("act,load_pre", [("none", False), ("gelu", False), ("gelu", True), ("none", True)])
def test_onepass_backward_every_config(i, act, load_pre):
    import csrc_triton.adapter_onepass as onepass

    cfg = _onepass_spaces()[1][i]
    ks = (3, 1, 1) if i % 2 == 0 else (3, 3, 3)
    c = _case(ks, seed=20 + i)
    mm2 = act == "gelu"  # mmaction2's variant: the prefix rows' launch and the per-clip scale
    ref = _reference(c, ks, act, mm2)
    pre = ref["pre"].float() if load_pre else None
    flip_cfg = _conv_space()[i]
    z, dh, dwc, dbc = onepass.onepass_bwd(c["dy"], c["h"], pre, c["wc"].reshape(Ca, -1).contiguous(), c["bc"],
                                          c["w2"], T, H, W, P, ks, ACTS[act], config=cfg, flip_config=flip_cfg,
                                          prefix_through=mm2, row_scale=c["r"] if mm2 else None)
    what = f"one-pass bwd {cfg} load_pre={load_pre} mm2={mm2}"
    assert_close(z, ref["z"], torch.float32, what + " z")  # prefix rows: 0, or act(h) (mm2), as the reference
    assert_close(dh, ref["dh"], torch.float32, what + " dh")
    assert_close(dwc, ref["dwc"], torch.float32, what + " dwc")
    assert_close(dbc, ref["dbc"], torch.float32, what + " dbc")


def test_spaces_are_small_and_well_formed():
    fwd, bwd = _onepass_spaces()
    assert (len(_conv_space()), len(fwd), len(bwd)) == (N_CONV, N_FWD, N_BWD)
    for space, keys in ((_conv_space(), {"BLOCK_M", "BLOCK_C"}), (fwd, {"BLOCK_M", "BLOCK_N", "BLOCK_K"}),
                        (bwd, {"BLOCK_M", "BLOCK_N", "BLOCK_K"})):
        assert 1 < len(space) <= 8
        assert len({tuple(sorted(d.items())) for d in space}) == len(space), "duplicate configs"
        assert any(d["GROUP_S"] > 0 for d in space), "the T-major token order is tuned too"
        for d in space:
            assert set(d) == keys | {"GROUP_S", "num_warps"}
            assert all(v & (v - 1) == 0 for v in d.values()), d  # powers of two (or GROUP_S=0)
            # tl.dot needs every dot dimension >= 16 on GPU
            assert all(d[b] >= 16 for b in keys), d
            assert d["GROUP_S"] == 0 or d["BLOCK_M"] % d["GROUP_S"] == 0, d


def test_launchers_refuse_partial_clips():
    """The T-major order walks whole clips: a frame count that is not a multiple of T is refused
    (the op layer checks it first; this guards direct launcher calls)."""
    import csrc_triton.adapter_onepass as onepass
    import csrc_triton.dwconv_tokens as dwconv

    c = _case((3, 1, 1))
    h = c["h"][:7]  # 7 frames, T = 4
    w2d = c["wc"].reshape(Ca, -1).contiguous()
    with pytest.raises(ValueError, match="N = 7 frames, expected a multiple of T = 4"):
        dwconv.dwconv_tokens_fwd(h, w2d, None, torch.empty_like(h), T, H, W, P, P, (3, 1, 1), 0)
    with pytest.raises(ValueError, match="N = 7 frames"):
        onepass.onepass_bwd(c["dy"][:7], h, None, w2d, None, c["w2"], T, H, W, P, (3, 1, 1), 0)


def test_gpu_tests_run_one_config_per_kernel_spread_by_test_id(monkeypatch):
    """On a GPU every test but those marked ``autotune`` runs one config per kernel (tests/conftest.py):
    a member of the kernel's space, the same for the same test id, and spread over the space by the ids."""
    from csrc_triton.common import tuned_kernels
    from tests.conftest import force_one_config, forced_config

    kernels = tuned_kernels()
    assert {k.name for k in kernels} == {"_dwconv_tokens_kernel", "_dwconv_tokens_bwd_kernel",
                                         "_onepass_fwd_kernel", "_onepass_bwd_kernel"}
    ids = [f"tests/test_gpu.py::test_adapter_paths_autocast_vs_fp64[case{i}]" for i in range(36)]
    for k in kernels:
        picks = [forced_config(i, k) for i in ids]
        assert all(p in k.space for p in picks) and picks == [forced_config(i, k) for i in ids]
        assert len({tuple(sorted(p.items())) for p in picks}) == len(k.space), k.name  # every config
    before = [k.forced for k in kernels]  # None, or on a GPU this test's own forced configs
    with monkeypatch.context() as m:
        force_one_config(ids[0], m)
        for k in kernels:
            assert k.forced == forced_config(ids[0], k) and k._pick({}, None) == k.forced
            assert k._pick({}, {"BLOCK_M": 16}) == dict(k.defaults, BLOCK_M=16)  # an explicit config wins
    assert [k.forced for k in kernels] == before  # undone with the monkeypatch


def test_autotuner_times_each_config_with_the_short_bench(monkeypatch):
    """On a GPU the tuner times configs with ``tune_bench`` (5 ms warm-up, 25 ms of repeats, not Triton's
    25/100): built here as on a GPU, the Autotuner holds it, and it passes the times and quantiles on."""
    import triton
    import triton.testing

    import csrc_triton.common as common
    import csrc_triton.dwconv_tokens as dwconv

    monkeypatch.setattr(common, "INTERPRET", False)
    monkeypatch.setattr(common, "_TUNED_KERNELS", [])
    tk = common.TunedKernel(dwconv._dwconv_tokens_kernel, [{"BLOCK_M": 64, "BLOCK_C": 32}, {"BLOCK_M": 32, "BLOCK_C": 64}],
                            ["M", "C"], dwconv._conv_interp)
    assert isinstance(tk.tuned, triton.runtime.Autotuner) and tk.tuned.do_bench is common.tune_bench
    assert common.tuned_kernels()[-1] is tk
    calls = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: calls.append((fn, kw)) or [1.0, 0.9, 1.1])
    fn = object()
    assert common.tune_bench(fn, quantiles=(0.5, 0.2, 0.8)) == [1.0, 0.9, 1.1]
    assert calls == [(fn, dict(warmup=5, rep=25, quantiles=(0.5, 0.2, 0.8)))]
