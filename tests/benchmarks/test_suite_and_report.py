"""`pytest benchmarks/ --benchmark-only` passes on CPU, and the report tool turns its real JSON into a
Markdown table and a PNG chart."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package ("nvidia" for "nvidia.dali")
        return False


# The loader benchmark skips a loader whose package is absent; both need PyAV (it writes the data).
EXPECTED_LOADERS = ({"pyav"} | ({"dali"} if _installed("nvidia.dali") else set())) if _installed("av") else set()

# The CPU run of the benchmark suite (small shapes, seconds). On a GPU machine the same command runs
# the full GPU matrix, which is benchmarks/run_gpu.sh's job, not a test's.
pytestmark = pytest.mark.skipif(__import__("torch").cuda.is_available(),
                                reason="CPU benchmark check; on GPU use benchmarks/run_gpu.sh")


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    # the interpreter is never timed; an xdist worker's variables would make pytest-benchmark think the
    # child is distributed too (it then refuses --benchmark-only)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_XDIST")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "-q",
                           "-p", "no:cacheprovider", "-p", "no:xdist", f"--benchmark-json={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return out


def test_benchmark_rows_carry_metrics(bench_json):
    rows = [b["extra_info"] for b in json.loads(bench_json.read_text())["benchmarks"]]
    loader_rows = [r for r in rows if r["level"] == 0]
    assert {r["provider"].split("-")[0] for r in loader_rows} == EXPECTED_LOADERS
    assert all(r["clips_per_s"] > 0 for r in loader_rows)
    mem_rows = {r["provider"]: r for r in rows if r["case"] == "vitb16_8f_memory"}
    assert set(mem_rows) == {"st-adapter_12x384", "m-adapter_w384_l3", "st-adapter_12x384_reference",
                             "st-adapter_12x384_onepass", "st-adapter_12x384_onepass_stored"}
    assert mem_rows["m-adapter_w384_l3"]["mem_ratio_vs_st_adapter"] < 0.5
    # recompute keeps one [B*T, L, Ca] tensor less per adapter than keeping the pre-activation
    mb = {k: v["saved_activation_mb"] for k, v in mem_rows.items()}
    per_adapter = 8 * 197 * 384 * 4 / 2 ** 20
    assert abs(mb["st-adapter_12x384_onepass_stored"] - mb["st-adapter_12x384_onepass"] - 12 * per_adapter) < 1.0
    # one-pass with recompute keeps no z: one [B*T, L, Ca] tensor per adapter less than two-pass (whose
    # h and z include the class-token rows: 1/197 more than the reference's)
    assert abs(mb["st-adapter_12x384"] - mb["st-adapter_12x384_onepass"] - 12 * per_adapter) < 1.0
    assert mb["st-adapter_12x384_onepass"] < mb["st-adapter_12x384_reference"] - 11 * per_adapter
    rows = [r for r in rows if r["level"] != 0 and r["case"] != "vitb16_8f_memory"]
    assert {r["level"] for r in rows} == {1, 2, 3}
    assert {r["provider"] for r in rows} == {"reference", "fast", "fast_onepass"}
    for r in rows:
        assert r["median_ms"] > 0 and r["speedup_vs_reference"] > 0
        # CPU rows: device time is the host clock; no CUDA graph, and the row says why
        assert r["device_ms"] == r["median_ms"] and r["wall_ms"] > 0 and r["wall_speedup_vs_reference"] > 0
        assert r["graph_ms"] is None and "GPU" in r["graph_error"] and "host clock" in r["timing"]
        if r["level"] in (1, 2):
            assert 0 < r["bw_fraction"] and r["achieved_gbps"] > 0
        if r["level"] == 2:
            assert r["floor_ms"] > 0 and 0 < r["floor_fraction"]
        if r["provider"] == "reference":
            assert abs(r["speedup_vs_reference"] - 1) < 1e-9


def test_report_writes_table_and_chart(bench_json, tmp_path):
    from benchmarks.report import main

    assert main([str(bench_json), "--out-dir", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "| level | case | mode |" in md and "| fast |" in md
    assert ("| pyav |" in md) == ("pyav" in EXPECTED_LOADERS)
    png = (tmp_path / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_names_a_bad_file(tmp_path):
    from benchmarks.report import main

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match=str(bad)):
        main([str(bad)])


def test_model_fallback_without_timm_builds_and_runs():
    """The benchmark's fallback ViT (used where timm is missing) takes adapters like a timm ViT."""
    import torch

    from benchmarks._model import MiniViT
    from stadapter_fast import STAdapterConfig, VideoClassifier, add_st_adapters

    clf = VideoClassifier(add_st_adapters(MiniViT(32, 8, 48, 2, 4), STAdapterConfig(adapter_channels=8)), 3, 4)
    out = clf(torch.randn(2, 3, 4, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 3) and clf.head.weight.grad is not None
