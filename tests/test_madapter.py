"""M-Adapter: no gradient or saved activation in the backbone; fast vs reference temporal modules;
config validation; save/load."""
import copy

import pytest
import torch

from stadapter_fast import (MAdapterConfig, MAdapterVideoClassifier, STAdapterConfig, VideoClassifier,
                            add_st_adapters, load_adapters, save_adapters, swap_adapters)
from stadapter_fast.memory import saved_activation_bytes
from tests._util import assert_models_agree, randomize_trainable, tiny_open_clip

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def tiny(depth=6):
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=depth, num_heads=4, num_classes=0)


def video(seed=0):
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fusion", ["add", "gate"])
def test_no_gradient_and_no_saved_activations_in_backbone(fusion):
    clf = MAdapterVideoClassifier(tiny(), MAdapterConfig(width=16, fusion=fusion), num_classes=3, num_frames=4)
    assert clf.levels == [2, 5]
    nbytes, _ = saved_activation_bytes(lambda: clf.level_features(video()))
    assert nbytes == 0, "the backbone forward must keep nothing for backward"
    clf(video()).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in clf.backbone.parameters())
    assert all(p.grad is not None for p in clf.branch.parameters() if p.requires_grad)
    clf.train()
    assert not clf.backbone.training and clf.branch.training


def test_saves_far_less_than_inserted_adapters():
    st = VideoClassifier(add_st_adapters(tiny(), STAdapterConfig(adapter_channels=16)), 3, 4)
    ma = MAdapterVideoClassifier(tiny(), MAdapterConfig(width=16), 3, 4)
    st_bytes, _ = saved_activation_bytes(lambda: st(video()))
    ma_bytes, _ = saved_activation_bytes(lambda: ma(video()))
    assert 0 < ma_bytes < st_bytes / 4, (ma_bytes, st_bytes)


@pytest.mark.parametrize("make", [lambda: tiny(), tiny_open_clip], ids=["timm", "open_clip"])
def test_fast_and_reference_temporal_modules_agree(make):
    cfg = MAdapterConfig(width=16, kernel_size=(3, 3, 3), act="gelu", fusion="gate", impl="reference", levels=3)
    ref = MAdapterVideoClassifier(make(), cfg, 3, 4).eval()
    randomize_trainable(ref, std=0.1)
    fast = copy.deepcopy(ref)
    assert swap_adapters(fast) == len(ref.levels)
    assert_models_agree(ref, fast, video(), factor=10)


def test_config_validation():
    with pytest.raises(ValueError, match="levels must be a positive int"):
        MAdapterConfig(levels=0)
    with pytest.raises(ValueError, match="fusion must be 'add' or 'gate'"):
        MAdapterConfig(fusion="concat")
    with pytest.raises(ValueError, match="width must be an int >= 2"):
        MAdapterConfig(width=1)
    with pytest.raises(ValueError, match="exceeds the backbone's depth 6"):
        MAdapterVideoClassifier(tiny(), MAdapterConfig(levels=7), 3)
    with pytest.raises(ValueError, match=r"levels \[1, 9\] has indices outside"):
        MAdapterVideoClassifier(tiny(), MAdapterConfig(levels=[1, 9]), 3)
    assert MAdapterConfig(levels=3).resolve_levels(12) == [2, 5, 8, 11]
    assert MAdapterConfig(levels=[0, -1]).resolve_levels(12) == [0, 11]


def test_save_load_round_trip(tmp_path):
    clf = MAdapterVideoClassifier(tiny(), MAdapterConfig(width=16, fusion="gate"), 5, 4).eval()
    randomize_trainable(clf, seed=3, std=0.1)
    path = save_adapters(clf, tmp_path / "m.safetensors")
    fresh = MAdapterVideoClassifier(tiny(), MAdapterConfig(width=16, fusion="gate"), 5, 4).eval()
    assert not torch.equal(fresh(video()), clf(video()))
    load_adapters(fresh, path)
    assert torch.equal(fresh(video()), clf(video()))
    with pytest.raises(ValueError, match="m.safetensors: checkpoint m_adapter_config"):
        load_adapters(MAdapterVideoClassifier(tiny(), MAdapterConfig(width=16, fusion="add"), 5, 4), path)
