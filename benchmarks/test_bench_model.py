"""Level 3: a ViT-B/16 video model with 12 (12x384, pre-MLP) or 24 (24x384) adapters; frozen backbone
in bf16/fp16, adapters and head fp32 under autocast: a training step (fwd + bwd + AdamW) and an
inference forward."""
import pytest
import torch

from benchmarks._cases import AMP_DTYPES, MODEL_PROVIDERS, dtype_id
from benchmarks._harness import device
from benchmarks._model import build_models
from stadapter_fast import set_adapter_path
from benchmarks.conftest import skip_unavailable

CONFIGS = [("12x384", 1), ("24x384", 2)]


def build_model_step(config, dtype, mode, provider, compile_mode):
    gpu = device() == "cuda"
    frames, clips = (8, 32) if gpu else (8, 2)
    ref, fast, img = build_models(config[1], frames, dtype, gpu)
    model = (ref if provider.startswith("reference") else fast).to(device())
    if provider == "fast_onepass":
        set_adapter_path(model, "one_pass")
    fwd = torch.compile(model, mode=compile_mode) if provider.endswith("compiled") else model
    g = torch.Generator(device=device()).manual_seed(0)
    video = torch.randn(clips, 3, frames, img, img, device=device(), generator=g).to(dtype)
    labels = torch.randint(0, 400, (clips,), device=device(), generator=g)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)

    def step(i):
        with torch.autocast(device(), dtype=dtype):
            if mode == "inference":
                with torch.no_grad():
                    return fwd(video)
            loss = torch.nn.functional.cross_entropy(fwd(video), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def output():
        with torch.no_grad(), torch.autocast(device(), dtype=dtype):
            return fwd(video)
    return step, output


@pytest.mark.parametrize("provider", MODEL_PROVIDERS)
@pytest.mark.parametrize("mode", ["inference", "train_step"])
@pytest.mark.parametrize("dtype", AMP_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c[0])
def test_model(row, compile_mode, config, dtype, mode, provider):
    skip_unavailable(provider)
    name = ("vitb16_8f" if device() == "cuda" else "tiny_vit") + "_" + config[0]
    # the output check runs on fresh weights (before any optimizer step): providers must agree
    r = row(level=3, case_key=(name,), mode=mode, dtype=dtype,
            build=lambda p: build_model_step(config, dtype, mode, p, compile_mode))
    r.run(provider)
