"""M-Adapter vs ST-Adapter (12x384) on ViT-B/16, 8 frames: training-step time and activation memory;
also ST-Adapter with reference adapters and with the one-pass path, with and without recompute
(memory of the adapter paths).

GPU: 32 clips (B*T = 256), frozen backbone in bf16, branch/adapters fp32 under autocast; peak memory
of a training step (``max_memory_allocated`` delta). CPU: 1 clip in fp32; the bytes autograd saves
for backward (saved-tensor hooks), since CPU has no peak-memory counter."""
import pytest
import torch

from benchmarks._harness import device, peak_memory_bytes, sync, versions
from stadapter_fast import (MAdapterConfig, MAdapterVideoClassifier, STAdapterConfig, VideoClassifier,
                            add_st_adapters, ensure_torchvision_importable, set_adapter_path)
from stadapter_fast.memory import saved_activation_bytes

ensure_torchvision_importable()
timm = pytest.importorskip("timm")
RESULTS = {}


def build(method, dtype):
    torch.manual_seed(0)
    bb = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    if method.startswith("st-adapter_12x384"):
        impl = "reference" if method.endswith("reference") else "fast"
        clf = VideoClassifier(add_st_adapters(bb, STAdapterConfig(backbone_dtype=dtype, impl=impl)), 400, 8)
        if "onepass" in method:
            set_adapter_path(clf, "one_pass", recompute=not method.endswith("stored"))
    else:
        clf = MAdapterVideoClassifier(bb, MAdapterConfig(width=384, levels=3, backbone_dtype=dtype), 400, 8)
    return clf.to(device())


@pytest.mark.parametrize("method", ["st-adapter_12x384", "m-adapter_w384_l3", "st-adapter_12x384_reference",
                                    "st-adapter_12x384_onepass", "st-adapter_12x384_onepass_stored"])
def test_madapter_vs_st_adapter(benchmark, method):
    gpu = device() == "cuda"
    dtype = torch.bfloat16 if gpu else None
    clf = build(method, dtype)
    clips = 32 if gpu else 1
    video = torch.randn(clips, 3, 8, 224, 224, device=device())
    labels = torch.zeros(clips, dtype=torch.long, device=device())
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-3)

    def forward():
        with torch.autocast(device(), dtype=torch.bfloat16, enabled=gpu):
            return torch.nn.functional.cross_entropy(clf(video), labels)

    saved = []  # CPU: the bytes autograd saved in each step's forward (counted in the timed step itself)

    def step():
        if gpu:
            loss = forward()
        else:
            nbytes, loss = saved_activation_bytes(forward)
            saved.append(nbytes)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    benchmark.pedantic(step, rounds=5 if gpu else 1, warmup_rounds=2 if gpu else 0, iterations=1)
    info = benchmark.extra_info
    info.update(level=3, case="vitb16_8f_memory", mode="train_step", dtype="bf16" if gpu else "fp32",
                provider=method, median_ms=benchmark.stats.stats.median * 1e3, device=device(), **versions())
    if gpu:
        info["peak_mem_mb"] = peak_memory_bytes(step) / 2 ** 20
        key = "peak_mem_mb"
    else:
        assert len(set(saved)) == 1, saved  # the same graph every step
        info["saved_activation_mb"] = saved[0] / 2 ** 20
        key = "saved_activation_mb"
    RESULTS[method] = (info[key], info["median_ms"])
    base = RESULTS.get("st-adapter_12x384")
    if base:
        info["mem_ratio_vs_st_adapter"] = info[key] / base[0]
        info["speedup_vs_st_adapter"] = base[1] / info["median_ms"]
