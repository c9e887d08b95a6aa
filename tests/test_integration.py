"""ST-Adapters in timm and open_clip ViTs (random weights, small images), VideoClassifier, checkpoints."""
import copy
import re
import sys

import pytest
import torch

from stadapter_fast import (FastSTAdapter, STAdapterConfig, STAdapterReference, VideoClassifier,
                            adapter_parameter_count, add_st_adapters, count_parameters,
                            ensure_torchvision_importable, load_adapters, save_adapters, swap_adapters)
from tests._util import assert_close, assert_models_agree, randomize_trainable, tiny_open_clip

ensure_torchvision_importable()
timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def tiny_timm(**kw):
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, num_classes=0)
    args.update(kw)
    torch.manual_seed(0)
    return VisionTransformer(**args)


def video(B=2, T=4, H=32, W=32, layout="BCTHW", seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, 3, T, H, W, generator=g)
    return v if layout == "BCTHW" else v.transpose(1, 2).contiguous()



# --- identity at init -----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=32),
    lambda: tiny_timm(reg_tokens=4),
    lambda: tiny_timm(img_size=(32, 24)),   # non-square grid 4x3
], ids=["timm_vit_b16", "timm_registers", "timm_nonsquare"])
@pytest.mark.parametrize("positions", [("pre_mlp",), ("pre_attn", "pre_mlp")])
def test_identity_at_init_timm(make, positions):
    plain = make().eval()
    model = add_st_adapters(copy.deepcopy(plain), STAdapterConfig(adapter_channels=16, positions=positions))
    clf = VideoClassifier(model, num_classes=5, num_frames=4).eval()
    H, W = plain.patch_embed.img_size
    v = video(H=H, W=W)
    frames = v.transpose(1, 2).reshape(-1, 3, H, W)
    expected = plain.forward_features(frames)
    got = clf.arch.final_norm(clf.frame_tokens(v))
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()


def test_identity_at_init_open_clip_vit_b16():
    plain = tiny_open_clip().eval()
    model = add_st_adapters(copy.deepcopy(plain), STAdapterConfig(adapter_channels=16))
    clf = VideoClassifier(model, num_classes=5, num_frames=4).eval()
    v = video()
    expected = plain(v.transpose(1, 2).reshape(-1, 3, 32, 32))  # pooled class token @ proj
    got = clf.arch.final_norm(clf.frame_tokens(v))[:, 0] @ model.proj
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


# --- training behaviour ---------------------------------------------------------------------------

@pytest.mark.parametrize("make", [tiny_timm, tiny_open_clip], ids=["timm", "open_clip"])
def test_one_step_changes_only_adapters_and_head(make):
    model = add_st_adapters(make(), STAdapterConfig(adapter_channels=16, positions=("pre_attn", "pre_mlp")))
    clf = VideoClassifier(model, num_classes=3, num_frames=4)
    randomize_trainable(clf)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all(".pre_attn." in n or ".pre_mlp." in n or n.startswith("head.") for n in trainable)
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-2)
    loss = torch.nn.functional.cross_entropy(clf(video()), torch.tensor([0, 2]))
    loss.backward()
    opt.step()
    for n, p in clf.named_parameters():
        changed = not torch.equal(p.detach(), before[n])
        if n in trainable:
            assert changed, f"trainable {n} did not change"
        else:
            assert not changed and p.grad is None, f"backbone parameter {n} changed or has a grad"


@pytest.mark.parametrize("make", [tiny_timm, tiny_open_clip], ids=["timm", "open_clip"])
def test_fast_and_reference_adapters_agree(make):
    cfg = dict(adapter_channels=16, kernel_size=(3, 3, 3), act="gelu", positions=("pre_attn", "pre_mlp"))
    ref = VideoClassifier(add_st_adapters(make(), STAdapterConfig(impl="reference", **cfg)), 3, 4).eval()
    randomize_trainable(ref)
    fast = copy.deepcopy(ref)
    assert swap_adapters(fast) == 2 * ref.arch.depth
    assert any(isinstance(m, STAdapterReference) for m in ref.modules())
    assert not any(type(m) is STAdapterReference for m in fast.modules())
    assert any(isinstance(m, FastSTAdapter) for m in fast.modules())
    assert_models_agree(ref, fast, video(layout="BCTHW"), factor=10)


def test_parameter_counts_vit_b16_match_formula():
    for positions, n in ((("pre_mlp",), 12), (("pre_attn", "pre_mlp"), 24)):
        cfg = STAdapterConfig(adapter_channels=384, positions=positions)
        m = add_st_adapters(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0), cfg)
        trainable, total = count_parameters(m)
        assert trainable == adapter_parameter_count(768, cfg, n)
        assert total - trainable == 85_798_656  # ViT-B/16 without head
    assert adapter_parameter_count(768, STAdapterConfig(), 12) == 7_110_144  # the release's ~7.1M


def test_layers_last_k_and_indices():
    m = add_st_adapters(tiny_timm(depth=4), STAdapterConfig(adapter_channels=8, layers=2))
    assert [type(b).__name__ for b in m.blocks] == ["Block", "Block", "STAdapterBlock", "STAdapterBlock"]
    m = add_st_adapters(tiny_timm(depth=4), STAdapterConfig(adapter_channels=8, layers=[0, -1]))
    assert [type(b).__name__ for b in m.blocks] == ["STAdapterBlock", "Block", "Block", "STAdapterBlock"]
    with pytest.raises(ValueError, match="exceeds the backbone's depth 4"):
        add_st_adapters(tiny_timm(depth=4), STAdapterConfig(layers=5))
    with pytest.raises(ValueError, match="outside"):
        add_st_adapters(tiny_timm(depth=4), STAdapterConfig(layers=[7]))


def test_input_layouts_and_mean_pool_without_class_token():
    model = add_st_adapters(tiny_timm(class_token=False, reg_tokens=2, global_pool="avg"), STAdapterConfig(adapter_channels=8))
    clf = VideoClassifier(model, 4, num_frames=4, input_layout="BTCHW").eval()
    assert clf.pool == "mean"
    out = clf(video(layout="BTCHW"))
    assert out.shape == (2, 4) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="has no class token"):
        VideoClassifier(model, 4, pool="cls")
    with pytest.raises(ValueError, match=r"video must be 5-D \(BTCHW\), got shape \(8, 3, 32, 32\)"):
        clf(torch.randn(8, 3, 32, 32))


def test_backbone_precision_recipe_bf16():
    cfg = STAdapterConfig(adapter_channels=8, backbone_dtype=torch.bfloat16)
    clf = VideoClassifier(add_st_adapters(tiny_timm(), cfg), 3, num_frames=4)
    assert clf.backbone.patch_embed.proj.weight.dtype == torch.bfloat16
    adapters = [m for m in clf.modules() if isinstance(m, FastSTAdapter)]
    assert adapters and all(p.dtype == torch.float32 for a in adapters for p in a.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = clf(video())
    out.sum().backward()
    assert out.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for a in adapters for p in a.parameters())


def test_config_and_backbone_errors():
    with pytest.raises(ValueError, match=r"positions must be a non-empty subset of .* got \('pre_ffn',\)"):
        STAdapterConfig(positions=("pre_ffn",))
    with pytest.raises(ValueError, match="impl must be 'fast' or 'reference'"):
        STAdapterConfig(impl="cuda")
    with pytest.raises(ValueError, match="kernel_size must be three odd positive ints"):
        STAdapterConfig(kernel_size=(2, 1, 1))
    for empty in ((), []):
        with pytest.raises(ValueError, match=rf"layers must be 'all', .* non-empty list of block indices, "
                                             rf"got {re.escape(repr(empty))}"):
            STAdapterConfig(layers=empty)
    with pytest.raises(ValueError, match="freeze_backbone must be a bool, got 'no'"):
        STAdapterConfig(freeze_backbone="no")
    with pytest.raises(ValueError, match="unsupported backbone Linear"):
        add_st_adapters(torch.nn.Linear(3, 3))
    m = add_st_adapters(tiny_timm(), STAdapterConfig(adapter_channels=8))
    with pytest.raises(ValueError, match="already has ST-Adapters"):
        add_st_adapters(m)


def test_compile_classifier_cpu():
    torch._dynamo.reset()
    clf = VideoClassifier(add_st_adapters(tiny_timm(depth=2), STAdapterConfig(adapter_channels=8, act="gelu")), 3, 4).eval()
    randomize_trainable(clf)
    v = video()
    eager = clf(v)
    compiled = torch.compile(clf, fullgraph=True)(v)
    assert_close(compiled, eager, torch.float32, "compiled logits", factor=100)


# --- checkpoints ----------------------------------------------------------------------------------

def build_clf(make=tiny_timm, **cfg):
    cfg = dict(dict(adapter_channels=16, positions=("pre_attn", "pre_mlp")), **cfg)
    return VideoClassifier(add_st_adapters(make(), STAdapterConfig(**cfg)), num_classes=7, num_frames=4)


@pytest.mark.parametrize("make", [tiny_timm, tiny_open_clip], ids=["timm", "open_clip"])
def test_save_load_round_trip(tmp_path, make):
    clf = build_clf(make).eval()
    randomize_trainable(clf, seed=5)
    path = save_adapters(clf, tmp_path / "task.safetensors")
    trainable, total = count_parameters(clf)
    assert path.stat().st_size < 4 * trainable + 64 * 1024  # only the trainable tensors (+ header)
    fresh = build_clf(make).eval()   # a freshly built backbone (same seed: same frozen weights)
    v = video()
    assert not torch.allclose(fresh(v), clf(v))
    load_adapters(fresh, path)
    assert torch.equal(fresh(v), clf(v))


def test_path_options_reach_the_adapters_and_do_not_bind_checkpoints(tmp_path):
    clf = build_clf(path="one_pass", recompute=False)
    adapters = [m for m in clf.modules() if isinstance(m, FastSTAdapter)]
    assert adapters and all((m.path, m.recompute) == ("one_pass", False) for m in adapters)
    randomize_trainable(clf, seed=6)
    path = save_adapters(clf, tmp_path / "p.safetensors")
    for other in (build_clf(), build_clf(impl="reference", backend="torch")):  # runtime choices differ
        load_adapters(other, path)
        assert torch.equal(dict(other.named_parameters())["head.weight"], dict(clf.named_parameters())["head.weight"])
    with pytest.raises(ValueError, match="path must be one of"):
        STAdapterConfig(path="fused")
    with pytest.raises(ValueError, match="recompute must be a bool"):
        STAdapterConfig(recompute="no")


def test_load_errors_name_the_file(tmp_path):
    clf = build_clf()
    path = save_adapters(clf, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"a.safetensors: checkpoint backbone .* does not match"):
        load_adapters(build_clf(make=lambda: tiny_timm(depth=2)), path)
    with pytest.raises(ValueError, match=r"a.safetensors: checkpoint adapter_config .* does not match"):
        load_adapters(build_clf(adapter_channels=8), path)
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"corrupt.safetensors: cannot read adapter checkpoint"):
        load_adapters(clf, bad)


def _rewrite_safetensors(src, dst, edit_tensors=None, edit_header=None):
    """Copy an adapter checkpoint, editing its tensors (dict -> dict) or its raw JSON header."""
    import json
    import struct

    from safetensors.torch import load_file, save_file

    if edit_tensors is not None:
        from safetensors import safe_open

        with safe_open(str(src), framework="pt") as f:
            meta = f.metadata()
        save_file(edit_tensors(load_file(str(src))), str(dst), metadata=meta)
        return dst
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = edit_header(json.loads(raw[8:8 + n]))
    hb = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    return dst


def test_damaged_adapter_files_are_named_and_change_nothing(tmp_path):
    clf = build_clf()
    randomize_trainable(clf)
    path = save_adapters(clf, tmp_path / "a.safetensors")
    target = build_clf()
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    first = next(n for n, p in clf.named_parameters() if p.requires_grad and p.dim() == 2)
    last = [n for n, p in clf.named_parameters() if p.requires_grad][-1]

    def lie_about_size(h):
        # the last tensor's data range claims bytes past the end of the file
        start, end = h[last]["data_offsets"]
        h[last]["data_offsets"] = [start, end + 4096]
        return h

    cases = {
        "truncated": (lambda d: d.write_bytes(path.read_bytes()[:-64]) and d, r"cannot read"),
        "wrong shape": (lambda d: _rewrite_safetensors(path, d, edit_tensors=lambda t: {
            **t, first: t[first][:-1]}), rf"tensor {first} has shape"),
        "wrong dtype": (lambda d: _rewrite_safetensors(path, d, edit_tensors=lambda t: {
            **t, last: t[last].double()}), rf"tensor {last} has dtype torch.float64"),
        "missing key": (lambda d: _rewrite_safetensors(path, d, edit_tensors=lambda t: {
            k: v for k, v in t.items() if k != last}), r"missing \["),
        "header lies": (lambda d: _rewrite_safetensors(path, d, edit_header=lie_about_size),
                        r"cannot read"),
        "bad metadata": (lambda d: _rewrite_safetensors(path, d, edit_header=lambda h: {
            **h, "__metadata__": {"stadapter_fast": "{not json"}}), r"metadata is not valid JSON"),
    }
    for i, (name, (make, why)) in enumerate(cases.items()):
        make(tmp_path / f"bad{i}.safetensors")
        with pytest.raises(ValueError, match=rf"bad{i}.safetensors: .*{why}"):
            load_adapters(target, tmp_path / f"bad{i}.safetensors")
        for n, p in target.named_parameters():
            assert torch.equal(p, before[n]), f"{name}: {n} changed"
    load_adapters(target, path)  # the good file still loads
    assert torch.equal(dict(target.named_parameters())[first], dict(clf.named_parameters())[first])


def test_torchvision_shim_only_acts_on_the_known_failure(monkeypatch):
    import builtins

    from stadapter_fast import ensure_torchvision_importable

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "torchvision":
            raise RuntimeError("some other torchvision problem")
        return real_import(name, *a, **k)

    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RuntimeError, match="some other torchvision problem"):
        ensure_torchvision_importable()


@pytest.mark.parametrize("make", [tiny_timm, tiny_open_clip], ids=["timm", "open_clip"])
def test_backbone_checkpointing_same_gradients_less_memory(make):
    """--checkpoint-backbone: identical loss and gradients (with a dropout head; the re-run inside
    backward restores the RNG state), fewer bytes kept for backward; no effect without grad."""
    from stadapter_fast import set_backbone_checkpointing
    from stadapter_fast.memory import saved_activation_bytes

    torch.manual_seed(0)
    clf = VideoClassifier(add_st_adapters(make(), STAdapterConfig(adapter_channels=16, positions=("pre_attn", "pre_mlp"),
                                                                   act="gelu")), num_classes=7, num_frames=4, dropout=0.5)
    randomize_trainable(clf, seed=3)
    clf.train()
    v = video(T=4)
    labels = torch.tensor([1, 5])

    def run():
        torch.manual_seed(7)  # the head's dropout mask
        loss = torch.nn.functional.cross_entropy(clf(v), labels)
        params = [p for p in clf.parameters() if p.requires_grad]
        return loss, torch.autograd.grad(loss, params)

    plain_bytes, (loss0, grads0) = saved_activation_bytes(run)
    n = set_backbone_checkpointing(clf, True)
    assert n == len([m for m in clf.modules() if type(m).__name__ == "STAdapterBlock"]) > 0
    ckpt_bytes, (loss1, grads1) = saved_activation_bytes(run)
    assert torch.equal(loss0, loss1)
    for a, b in zip(grads0, grads1):
        assert torch.equal(a, b)
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)
    with torch.no_grad():
        clf.eval()
        out_ckpt = clf(v)
        set_backbone_checkpointing(clf, False)
        assert torch.equal(out_ckpt, clf(v))
    with pytest.raises(ValueError, match="enabled must be a bool"):
        set_backbone_checkpointing(clf, "yes")


def tiny_open_clip_tower():
    """A small open_clip image tower (2 blocks of width 32)."""
    pytest.importorskip("open_clip", reason="open_clip_torch is not installed")
    from open_clip.transformer import VisionTransformer as OpenCLIPViT

    torch.manual_seed(0)
    return OpenCLIPViT(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16)


@pytest.mark.parametrize("make,mechanism", [
    (tiny_timm, "set_backbone_checkpointing"),
    (tiny_open_clip_tower, "set_backbone_checkpointing"),
    (tiny_open_clip_tower, "open_clip set_grad_checkpointing"),
], ids=["timm", "open_clip", "open_clip_own"])
def test_checkpointing_with_mixed_frame_counts_same_gradients(make, mechanism):
    """Two clips with the same B*T but different T (8, then 4) through the backbone before one
    backward: the re-run of each checkpointed block in backward uses its own call's T, so the
    gradients equal those without checkpointing (fp64; the loss is on the tokens, the head being fp32)."""
    from stadapter_fast import set_backbone_checkpointing

    clf = VideoClassifier(add_st_adapters(make(), STAdapterConfig(adapter_channels=8, positions=("pre_attn", "pre_mlp"),
                                                                   backend="torch")), 3, num_frames=8)
    randomize_trainable(clf, seed=2, std=0.3)
    clf.double().eval()
    a, b = video(B=2, T=8, seed=1).double(), video(B=4, T=4, seed=2).double()
    params = [p for p in clf.backbone.parameters() if p.requires_grad]

    def grads():
        loss = clf.frame_tokens(a).square().sum() + clf.frame_tokens(b).square().sum()
        return torch.autograd.grad(loss, params)

    plain = grads()
    if mechanism == "set_backbone_checkpointing":
        assert set_backbone_checkpointing(clf, True) > 0
    else:
        clf.backbone.set_grad_checkpointing(True)
    for g, e in zip(grads(), plain):
        assert_close(g, e, torch.float64, "grad")


def test_hooks_on_a_wrapped_block_see_its_input_and_adapted_output():
    """Hooks registered on a block before wrapping still fire: the pre-hook gets the block's input, the
    forward hook the block's output with the adapters applied."""
    model = tiny_timm()
    seen = {}
    model.blocks[1].register_forward_pre_hook(lambda mod, args: seen.__setitem__("input", args[0]))
    model.blocks[1].register_forward_hook(lambda mod, args, out: seen.__setitem__("output", out))
    cfg = STAdapterConfig(adapter_channels=8, positions=("pre_attn", "pre_mlp"))
    clf = VideoClassifier(add_st_adapters(model, cfg), 3, num_frames=4).eval()
    randomize_trainable(clf, std=0.3)
    v = video()
    frames = v.transpose(1, 2).reshape(-1, 3, 32, 32)
    with torch.no_grad():
        tokens = clf.arch.block_tokens(frames, [0, 1])
        seen.clear()
        model.forward_features(frames)
        plain_block1 = model.blocks[1].block.__class__.forward(model.blocks[1].block, tokens[0])
    assert torch.equal(seen["input"], tokens[0])
    assert torch.equal(seen["output"], tokens[1])
    assert not torch.allclose(seen["output"], plain_block1)  # the adapters changed it


@pytest.mark.parametrize("make", [tiny_timm, tiny_open_clip_tower], ids=["timm", "open_clip"])
def test_deep_copy_and_pickle_give_independent_models(make, tmp_path):
    """copy.deepcopy and torch.save/torch.load of the whole classifier: the copy runs its own blocks and
    adapters (changing its adapters leaves the original as it was), with the same state_dict keys."""
    clf = build_clf(make).eval()
    randomize_trainable(clf, seed=4)
    v = video()
    with torch.no_grad():
        expected = clf(v)
    torch.save(clf, tmp_path / "clf.pt")
    for other in (copy.deepcopy(clf), torch.load(tmp_path / "clf.pt", weights_only=False)):
        assert list(other.state_dict()) == list(clf.state_dict())
        with torch.no_grad():
            assert torch.equal(other(v), expected)
            for n, p in other.named_parameters():
                if ".pre_mlp." in n:
                    p.add_(torch.randn_like(p))
            assert not torch.allclose(other(v), expected)
            assert torch.equal(clf(v), expected)
