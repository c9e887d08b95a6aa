"""The README's Python examples run as written, each block in a fresh namespace, on CPU (the `torch`
backend; no download). The names a block takes from the reader's own code (``model``, ``video``,
``fresh_clf``) are made here, and what a block's comments state (counts, shapes, sizes) is checked."""
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[tuple[str, str]]:
    """``(section heading, code)`` of every ```python block of the README, in order."""
    text = README.read_text()
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        headings = re.findall(r"^## (.+)$", text[:m.start()], re.M)
        blocks.append((headings[-1] if headings else "", m.group(1)))
    return blocks


BLOCKS = python_blocks()


def given_names(heading: str, code: str) -> dict:
    """What the block uses but does not define: the reader's model, a clip batch, a second classifier."""
    from stadapter_fast import STAdapterConfig, VideoClassifier, add_st_adapters, create_backbone

    def used(name):
        return re.search(rf"\b{name}\b", code) and not re.search(rf"^\s*{name}\s*=", code, re.M)

    names = {}
    if used("model"):
        if "mmaction2" in heading:  # a VindLU-style model with mmaction2's adapter
            from tests.test_mmaction2 import MMAction2STAdapter, VindLULike
            names["model"] = VindLULike([MMAction2STAdapter(input_dim=32, hidden_dim=16, img_size=32, patch_size=8)
                                         for _ in range(2)], 32)
        else:  # an ST-Adapter codebase's model: official-style adapters
            from tests.test_swap import Net, OfficialAdapter
            names["model"] = Net([OfficialAdapter(16, 8, (3, 1, 1)), OfficialAdapter(16, 8, (3, 3, 3))])
    if used("video"):
        names["video"] = torch.randn(1, 3, 8, 224, 224)
    if used("fresh_clf"):
        backbone = create_backbone("timm:vit_base_patch16_224", pretrained=False)
        names["fresh_clf"] = VideoClassifier(add_st_adapters(backbone, STAdapterConfig(adapter_channels=384)),
                                             num_classes=400, num_frames=8)
    return names


def check_quick_start(ns, _):
    assert ns["n"] == 2 and ns["y"].shape == ns["x"].shape and ns["y"].dtype == ns["x"].dtype


def check_video_models(ns, tmp_path):
    from stadapter_fast import count_parameters

    assert count_parameters(ns["model"])[0] == 7_110_144
    assert ns["logits"].shape == (1, 400) and ns["logits"].dtype == torch.float32
    size_mb = (tmp_path / "k400.safetensors").stat().st_size / 1e6
    assert 27 < size_mb < 30, size_mb
    saved, loaded = ns["clf"].state_dict(), ns["fresh_clf"].state_dict()  # load_adapters filled fresh_clf
    keys = [k for k, p in ns["clf"].named_parameters() if p.requires_grad]
    assert len(keys) == 12 * 6 + 2, keys  # fc1, conv, fc2 (weight, bias) of 12 adapters; the head's Linear
    for k in keys:
        assert torch.equal(saved[k], loaded[k]), k


def check_mmaction2(ns, _):
    assert ns["n"] == 2


def check_logits(ns, _):
    assert ns["logits"].shape == (2, 10)


#: what each section's blocks state, beyond running
CHECKS = {"Quick start": check_quick_start, "Video models: timm and open_clip": check_video_models,
          "Using it in mmaction2": check_mmaction2, "Hugging Face vision towers": check_logits}


def test_readme_has_the_examples_checked_here():
    headings = {h for h, _ in BLOCKS}
    assert len(BLOCKS) >= 8 and set(CHECKS) <= headings, headings


@pytest.mark.parametrize("heading, code", BLOCKS, ids=[f"{i}-{h.split(':')[0]}" for i, (h, _) in enumerate(BLOCKS)])
def test_readme_example_runs(heading, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the examples write stay in tmp_path
    torch.manual_seed(0)
    ns = given_names(heading, code)
    exec(compile(code, f"README.md ({heading})", "exec"), ns)
    if heading in CHECKS:
        CHECKS[heading](ns, tmp_path)
