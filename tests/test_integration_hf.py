"""ST-Adapters in Hugging Face transformers vision towers (tiny configs, random weights, no download):
identity at init against the plain model, parameter counts, frozen backbone, checkpoints, fast vs
reference adapters, M-Adapter, output_hidden_states, activation checkpointing, torch.export and
torch.compile (also for the timm and open_clip paths), the training CLI's model building, and the
errors."""
import copy

import pytest
import torch

from stadapter_fast import (MAdapterConfig, MAdapterVideoClassifier, STAdapterConfig, VideoClassifier,
                            adapter_parameter_count, add_st_adapters, count_parameters, create_backbone,
                            ensure_torchvision_importable, load_adapters, save_adapters, set_backbone_checkpointing)
from stadapter_fast.hf import HFTower
from tests._util import assert_close, assert_models_agree, backends, randomize_trainable

ensure_torchvision_importable()  # transformers' image utilities import torchvision
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8)


def clip_with_projection():
    return transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY, projection_dim=16))


#: family -> a function building the plain model (seeded by the caller). DINOv2's layer scale is not 1
#: and its drop path and ViT's dropout are on, so train-mode identity checks them too.
MAKERS = {
    "clip": lambda: create_backbone("hf:tiny-clip", attention_dropout=0.1),
    "clip_projection": clip_with_projection,
    "siglip": lambda: create_backbone("hf:tiny-siglip"),
    "dinov2": lambda: create_backbone("hf:tiny-dinov2", layerscale_value=0.5, drop_path_rate=0.2),
    "dinov2_registers": lambda: create_backbone("hf:tiny-dinov2-registers", layerscale_value=0.5, drop_path_rate=0.2),
    "vit": lambda: create_backbone("hf:tiny-vit", hidden_dropout_prob=0.1),
}
#: non-square frames: ViT from a 32x48 config; the others at another input size than their config's
#: (position embeddings interpolated by the model itself)
NONSQUARE = {
    "vit_32x48_config": lambda: create_backbone("hf:tiny-vit", image_size=(32, 48)),
    "dinov2_registers_32x48_input": lambda: create_backbone("hf:tiny-dinov2-registers", input_size=(32, 48)),
    "clip_48x32_input": lambda: create_backbone("hf:tiny-clip", input_size=(48, 32)),
    "siglip_32x48_input": lambda: create_backbone("hf:tiny-siglip", input_size=(32, 48)),
}
ALL = {**MAKERS, **NONSQUARE}
BOTH = ("pre_attn", "pre_mlp")


def make(family):
    torch.manual_seed(0)
    return ALL[family]()


def video(size=(32, 32), B=2, T=3, seed=0):
    return torch.randn(B, 3, T, *size, generator=torch.Generator().manual_seed(seed))


def frames_of(v):
    return v.transpose(1, 2).reshape(-1, *v.shape[1:2], *v.shape[3:])


def classifier(family, positions=BOTH, num_classes=3, T=3, **cfg):
    model = add_st_adapters(make(family), STAdapterConfig(adapter_channels=8, positions=positions, **cfg))
    return VideoClassifier(model, num_classes, num_frames=T)


def hf_features(plain, tower, frames):
    """What the plain model gives: (last_hidden_state, pooled or projected output or None)."""
    kw = {"interpolate_pos_encoding": True} if tower.interpolate and tower.family.interpolate_kwarg else {}
    out = plain(pixel_values=frames, **kw)
    extra = getattr(out, "image_embeds", None)
    if extra is None and tower.config.model_type == "clip_vision_model":
        extra = out.pooler_output
    return out.last_hidden_state, extra


def our_features(clf, v):
    """The same from the wrapped model's per-frame tokens (CLIP's last_hidden_state is before its
    final norm; the other families' after it)."""
    arch, tokens = clf.arch, clf.frame_tokens(v)
    if arch.hf.config.model_type != "clip_vision_model":
        return arch.final_norm(tokens), None
    pooled = arch.final_norm(tokens[:, 0])
    proj = getattr(clf.backbone, "visual_projection", None)
    return tokens, pooled if proj is None else proj(pooled)


# --- identity at init -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(ALL))
@pytest.mark.parametrize("positions", [("pre_mlp",), BOTH])
def test_identity_at_init(family, positions):
    """Zero-init adapters: the per-frame features equal the plain model's, in eval mode and in train
    mode (same seed: dropout and DINOv2's drop path draw the same masks)."""
    plain = make(family)
    clf = VideoClassifier(add_st_adapters(copy.deepcopy(plain), STAdapterConfig(adapter_channels=8, positions=positions)),
                          5, num_frames=3)
    tower = clf.arch.hf
    v = video(tower.input_size)
    assert tower.grid == (tower.input_size[0] // 8, tower.input_size[1] // 8)
    for train in (False, True):
        plain.train(train)
        clf.train(train)
        torch.manual_seed(5)
        expected = hf_features(plain, tower, frames_of(v))
        torch.manual_seed(5)
        got = our_features(clf, v)
        for e, g in zip(expected, got):
            if e is not None:
                assert torch.allclose(g, e, atol=1e-6, rtol=0), (train, (g - e).abs().max())


def test_prefix_tokens_and_pooling():
    expect = {"clip": (1, "cls"), "clip_projection": (1, "cls"), "siglip": (0, "mean"), "dinov2": (1, "cls"),
              "dinov2_registers": (3, "cls"), "vit": (1, "cls")}
    for family, (prefix, pool) in expect.items():
        clf = classifier(family)
        assert (clf.arch.num_prefix_tokens, clf.pool) == (prefix, pool), family
        assert clf.arch.signature()["kind"] == "hf"


# --- training behaviour ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(MAKERS))
def test_trainable_count_and_frozen_backbone(family):
    for positions, layers, n in ((("pre_mlp",), 1, 1), (BOTH, "all", 4)):
        cfg = STAdapterConfig(adapter_channels=8, positions=positions, layers=layers)
        model = add_st_adapters(make(family), cfg)
        assert count_parameters(model)[0] == adapter_parameter_count(32, cfg, n)
    clf = VideoClassifier(model, 3, num_frames=3)
    randomize_trainable(clf)
    clf(video()).square().sum().backward()
    for name, p in clf.named_parameters():
        if name.startswith("head.") or ".pre_attn." in name or ".pre_mlp." in name:
            # (the last layer's pre-MLP adapter gets a zero gradient under class-token pooling: it skips
            # the class token, and the MLP does not mix tokens)
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert all(p.grad.abs().sum() > 0 for n, p in clf.named_parameters() if ".pre_attn." in n)


@pytest.mark.parametrize("family", list(MAKERS) + ["vit_32x48_config"])
def test_save_load_round_trip(family, tmp_path):
    clf = classifier(family).eval()
    randomize_trainable(clf, seed=2)
    path = save_adapters(clf, tmp_path / "a.safetensors")
    fresh = classifier(family).eval()
    v = video(clf.arch.hf.input_size)
    assert not torch.equal(fresh(v), clf(v))
    load_adapters(fresh, path)
    assert torch.equal(fresh(v), clf(v))


def test_checkpoint_of_another_family_is_refused(tmp_path):
    path = save_adapters(classifier("clip"), tmp_path / "clip.safetensors")
    with pytest.raises(ValueError, match="clip.safetensors: checkpoint backbone"):
        load_adapters(classifier("siglip"), path)


#: the Triton interpreter takes ~3 s per case here: three cases cover no prefix token, class + register
#: tokens and a non-square grid
FAST_CASES = [(f, "torch") for f in list(MAKERS) + ["vit_32x48_config"]] + [
    (f, b) for f in ("siglip", "dinov2_registers", "vit_32x48_config") for b in backends() if b != "torch"]


@pytest.mark.parametrize("family,backend", FAST_CASES)
def test_fast_and_reference_adapters_agree(family, backend):
    """impl="fast" vs impl="reference" with the same random (non-zero) adapter and head weights."""
    cfg = dict(adapter_channels=8, kernel_size=(3, 3, 3), act="gelu", positions=BOTH)
    plain = make(family)
    ref = VideoClassifier(add_st_adapters(copy.deepcopy(plain), STAdapterConfig(impl="reference", **cfg)), 3, 3).eval()
    fast = VideoClassifier(add_st_adapters(copy.deepcopy(plain), STAdapterConfig(impl="fast", backend=backend, **cfg)),
                           3, 3).eval()
    randomize_trainable(ref)
    fast.load_state_dict(ref.state_dict())
    assert_models_agree(ref, fast, video(ref.arch.hf.input_size))


@pytest.mark.parametrize("family", list(MAKERS))
def test_backbone_checkpointing_same_gradients(family):
    clf = classifier(family, act="gelu")
    randomize_trainable(clf, seed=3)
    clf.train()  # dropout / drop path on: the re-run in backward restores the RNG state
    v, labels = video(), torch.tensor([0, 2])
    params = [p for p in clf.parameters() if p.requires_grad]

    def run():
        torch.manual_seed(7)
        loss = torch.nn.functional.cross_entropy(clf(v), labels)
        return loss, torch.autograd.grad(loss, params)

    loss0, grads0 = run()
    assert set_backbone_checkpointing(clf, True) == 2
    loss1, grads1 = run()
    assert torch.equal(loss0, loss1)
    for a, b in zip(grads0, grads1):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", list(MAKERS))
@pytest.mark.parametrize("layers", ["all", 1])
def test_output_hidden_states_are_the_adapted_layers(family, layers):
    """``output_hidden_states=True`` on the wrapped model: the embeddings, then every layer's output
    (adapters included); the last entry is the last layer's output before the final norm, which
    ``last_hidden_state`` is (CLIP) or has applied (the others)."""
    clf = classifier(family, layers=layers).eval()
    randomize_trainable(clf, std=0.3)
    arch, frames = clf.arch, frames_of(video())
    with torch.no_grad():
        out = clf.backbone(pixel_values=frames, output_hidden_states=True)
        expected = [arch.embed(frames), *arch.block_tokens(frames, list(range(arch.depth)))]
        plain_last = type(arch.container[-1].block).forward(arch.container[-1].block, expected[-2], None)
    hidden = out.hidden_states
    assert len(hidden) == arch.depth + 1
    for i, (h, e) in enumerate(zip(hidden, expected)):
        assert torch.equal(h, e), i
    assert not torch.allclose(hidden[-1], plain_last[0] if isinstance(plain_last, tuple) else plain_last)
    last = hidden[-1] if arch.hf.config.model_type == "clip_vision_model" else arch.final_norm(hidden[-1])
    assert torch.equal(out.last_hidden_state, last)


@pytest.mark.parametrize("family", ["vit", "dinov2"])
@pytest.mark.parametrize("mechanism", ["set_backbone_checkpointing", "transformers"])
def test_checkpointing_with_mixed_frame_counts_same_gradients(family, mechanism):
    """Clips of 8 and then 4 frames (same B*T) before one backward, in training mode (ViT's dropout,
    DINOv2's drop path): each wrapped layer is re-run in backward with its own call's T, so the
    gradients equal those without checkpointing (fp64). transformers' own checkpointing reaches the
    wrapped layers: their attention runs again in backward."""
    clf = classifier(family, backend="torch", T=8)
    randomize_trainable(clf, seed=2, std=0.3)
    clf.double().train()
    a, b = video(B=2, T=8, seed=1).double(), video(B=4, T=4, seed=2).double()
    params = [p for p in clf.backbone.parameters() if p.requires_grad]
    attn = getattr(clf.arch.container[0].block, clf.arch.hf.family.attn)
    calls = []
    attn.register_forward_hook(lambda *_: calls.append(1))

    def grads():
        torch.manual_seed(7)
        loss = clf.frame_tokens(a).square().sum() + clf.frame_tokens(b).square().sum()
        return torch.autograd.grad(loss, params)

    plain = grads()
    assert len(calls) == 2
    if mechanism == "set_backbone_checkpointing":
        assert set_backbone_checkpointing(clf, True) == 2
    elif hasattr(clf.backbone, "activation_checkpointing_enable"):
        clf.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers before activation_checkpointing_enable
        clf.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls.clear()
    for g, e in zip(grads(), plain):
        assert_close(g, e, torch.float64, "grad")
    assert len(calls) == 4  # two forwards, two re-runs in backward


@pytest.mark.parametrize("family", list(MAKERS) + ["dinov2_registers_32x48_input"])
def test_m_adapter(family, tmp_path):
    """The branch reads the plain model's layer outputs; no gradient reaches the backbone; save/load."""
    plain = make(family).eval()
    cfg = MAdapterConfig(width=8, levels=1, fusion="gate")
    clf = MAdapterVideoClassifier(copy.deepcopy(plain), cfg, num_classes=3, num_frames=3).eval()
    assert clf.levels == [0, 1]
    tower = clf.arch.hf
    v = video(tower.input_size)
    kw = {"interpolate_pos_encoding": True} if tower.interpolate and tower.family.interpolate_kwarg else {}
    hidden = plain(pixel_values=frames_of(v), output_hidden_states=True, **kw).hidden_states
    feats, T = clf.level_features(v)
    assert T == 3 and len(feats) == 2
    for i, f in zip(clf.levels, feats):
        assert torch.allclose(f, hidden[i + 1], atol=1e-6, rtol=0), i
    randomize_trainable(clf, seed=4)
    clf(v).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in clf.backbone.parameters())
    assert all(p.grad is not None for p in clf.branch.parameters())
    path = save_adapters(clf, tmp_path / "m.safetensors")
    fresh = MAdapterVideoClassifier(copy.deepcopy(plain), cfg, num_classes=3, num_frames=3).eval()
    load_adapters(fresh, path)
    assert torch.equal(fresh(v), clf(v))


# --- torch.export and torch.compile ---------------------------------------------------------------

def tiny_timm():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)


def tiny_open_clip():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.transformer import VisionTransformer

    del open_clip
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16)


COMPILE_MAKERS = {"timm": tiny_timm, "open_clip": tiny_open_clip, **MAKERS}


def fast_classifier(family, backend="torch"):
    torch.manual_seed(0)
    backbone = COMPILE_MAKERS[family]()
    cfg = STAdapterConfig(adapter_channels=8, kernel_size=(3, 3, 3), act="gelu", positions=BOTH, backend=backend)
    clf = VideoClassifier(add_st_adapters(backbone, cfg), 3, num_frames=3).eval()
    randomize_trainable(clf)
    return clf


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("family", ["timm", "vit", "dinov2_registers"])
def test_torch_export_matches_eager(family, backend):
    """torch.export of a VideoClassifier holding FastSTAdapters: the adapters stay custom ops in the
    graph, and the exported program's output equals eager's. backend="triton" runs through Triton's
    interpreter here (CPU)."""
    clf = fast_classifier(family, backend)
    v = video()
    ep = torch.export.export(clf, (v,))
    assert "stadapter_fast." in str(ep.graph)
    with torch.no_grad():
        assert torch.equal(ep.module()(v), clf(v))


def _compile_check(clf, compile_backend):
    torch._dynamo.reset()
    v = video()
    params = [p for p in clf.parameters() if p.requires_grad]

    def run(fn):
        y = fn(v)
        return y, torch.autograd.grad(y.square().sum(), params)

    y_e, g_e = run(clf)
    y_c, g_c = run(torch.compile(clf, fullgraph=True, backend=compile_backend))
    assert_close(y_c, y_e, torch.float32, "logits", factor=10)
    for a, b in zip(g_c, g_e):
        assert_close(a, b, torch.float32, "grad", factor=10)


@pytest.mark.parametrize("family", list(COMPILE_MAKERS))
def test_compile_fullgraph_every_family(family):
    """fullgraph=True: the whole classifier (backbone blocks, adapters, head) is one graph, forward and
    backward (AOTAutograd). The aot_eager backend keeps this fast on CPU: Inductor's C++ build of the
    same graph takes ~27 s per model on 2 cores (test_compile_fullgraph_inductor below)."""
    _compile_check(fast_classifier(family), "aot_eager")


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    """The default backend (Inductor) on one HF family with layer scale, drop path and registers."""
    _compile_check(fast_classifier("dinov2_registers"), "inductor")


# --- errors ---------------------------------------------------------------------------------------

def test_errors_name_the_argument_and_values(monkeypatch):
    with pytest.raises(ValueError, match=r"config model_type must be one of .* got 'bert'"):
        create_backbone("hf:some/bert", config={"model_type": "bert", "hidden_size": 32})
    with pytest.raises(ValueError, match="config dict must contain 'model_type'"):
        create_backbone("hf:x", config={"hidden_size": 32})
    with pytest.raises(ValueError, match="config must be None, a dict or a transformers PretrainedConfig, got int"):
        create_backbone("hf:x", config=3)
    with pytest.raises(ValueError, match=r"unknown ViTConfig field 'depth' .* got depth=2"):
        create_backbone("hf:tiny-vit", depth=2)
    with pytest.raises(ValueError, match=r"'hf:tiny-vit' is a built-in config .* got pretrained=True"):
        create_backbone("hf:tiny-vit", pretrained=True)
    with pytest.raises(ValueError, match="pretrained must be a bool for 'hf:' backbones, got 'openai'"):
        create_backbone("hf:tiny-vit", pretrained="openai")
    with pytest.raises(ValueError, match=r"input_size must be a positive int or a pair .* got \(32, 0\)"):
        create_backbone("hf:tiny-vit", input_size=(32, 0))
    with pytest.raises(ValueError, match="backbone library must be 'timm', 'open_clip' or 'hf', got 'hg'"):
        create_backbone("hg:tiny-vit")
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=64))
    with pytest.raises(ValueError, match=r"unsupported transformers model BertModel \(config model_type 'bert'\)"):
        add_st_adapters(bert)
    clf = classifier("vit")
    with pytest.raises(ValueError, match=r"frames must be 32x32 \(the model's input size\), got 32x48"):
        clf(video((32, 48)))
    # a config object and a dict build the same tower as the built-in name
    cfg = transformers.ViTConfig(**TINY)
    for config in (cfg, {"model_type": "vit", **TINY}):
        torch.manual_seed(0)
        m = create_backbone("hf:my/vit", config=config)
        assert type(m).__name__ == "ViTModel" and m.config.hidden_size == 32 and m.pooler is None
    # without transformers: a message saying how to install it
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *a, **k):
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ValueError, match=r"pip install 'transformers>=5.18'"):
        create_backbone("hf:tiny-vit")


def test_plain_hf_forward_still_works_after_wrapping():
    """The model's own forward runs the wrapped layers (adapters included) with the context's T."""
    clf = classifier("dinov2_registers", T=3).eval()
    randomize_trainable(clf)
    v = video()
    out = clf.backbone(pixel_values=frames_of(v)).last_hidden_state
    assert torch.allclose(out, clf.arch.final_norm(clf.frame_tokens(v)), atol=1e-6, rtol=0)


def test_hf_tower_reads_projection_model():
    tower = HFTower(clip_with_projection())
    assert type(tower.core).__name__ == "CLIPVisionModel" and tower.num_prefix_tokens == 1
