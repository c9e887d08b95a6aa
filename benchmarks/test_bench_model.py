"""Level 3: a ViT-B/16 video model with 12 (12x384, pre-MLP) or 24 (24x384) adapters; frozen backbone
in bf16/fp16, adapters and head fp32 under autocast: a training step (fwd + bwd + AdamW) and an
inference forward."""
import pytest

from benchmarks._cases import AMP_DTYPES, MODEL_PROVIDERS, dtype_id
from benchmarks._harness import device
from benchmarks._model import build_model_step
from benchmarks.conftest import skip_unavailable

CONFIGS = [("12x384", 1), ("24x384", 2)]


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
