"""benchmarks/train_gpu.py (issue 12's end-to-end table) on CPU with a tiny model: it runs the configs'
stadapter-train commands (with the table's precision flags), reads their per-epoch records, appends a
second call's rows and times a loader alone. A check of the script, not a measurement (no NVML on CPU;
the sampler is checked with a stand-in reading)."""
import json
import statistics
import time

import pytest

from benchmarks import train_gpu

pytest.importorskip("av")
# the table's own flags (precision included), with a tiny backbone and small clips: argparse keeps the last
TINY = train_gpu.COMMON + (""" --backbone-kwargs '{"depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8}'"""
                           " --image-size 32 --adapter-channels 8")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from stadapter_fast.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("syn"), n_train=8, n_val=2, frames=16, size=32, seed=0)


def test_config_table_parses_and_names_each_setup():
    from stadapter_fast.train import build_parser

    cmds = {c: train_gpu.train_args(c, "D", "D/t.txt", "O", train_gpu.COMMON, 32, 16, 3, "cuda", "gpu")
            for c in train_gpu.CONFIGS}
    a = {c: build_parser().parse_args(cmd[3:]) for c, cmd in cmds.items()}
    assert sorted(a) == [1, 2, 3, 4, 5]
    assert [a[c].loader for c in a] == ["pyav", "pyav", "dali", "dali", "dali"]
    assert [a[c].adapter_impl for c in a] == ["reference", "fast", "fast", "fast", "fast"]
    assert [a[c].method for c in a] == ["st-adapter"] * 3 + ["m-adapter", "st-adapter"]
    assert [a[c].checkpoint_backbone for c in a] == [False] * 4 + [True]
    assert a[4].m_width == 384 and a[4].m_levels == "3"
    for x in a.values():
        assert (x.backbone, x.image_size, x.frames, x.adapter_channels) == ("timm:vit_base_patch16_224", 224, 8, 384)
        assert x.amp == x.backbone_dtype == "bf16"  # a pair autocast can run (fp16 under bf16 cannot)
        assert (x.batch_size, x.workers, x.epochs, x.val_every, x.dali_decoder) == (32, 16, 3, 3, "gpu")


def test_runs_configs_appends_and_times_a_loader_on_cpu(data, tmp_path, capsys):
    out = tmp_path / "runs"
    base = ["--data", str(data), "--out", str(out), "--batch-size", "4", "--workers", "0", "--epochs", "3",
            "--repeat", "2", "--device", "cpu", "--common", TINY]
    assert train_gpu.main([*base, "--configs", "1", "--loaders", ""]) == 0
    assert train_gpu.main([*base, "--configs", "2", "--loaders", "pyav", "--append"]) == 0
    res = json.loads((out / "train_gpu.json").read_text())
    r1, r2 = res["configs"]
    assert (r1["config"], r2["config"]) == (1, 2) and r1["exit"] == r2["exit"] == 0
    for r in (r1, r2):
        assert r["loader"] == "pyav" and len(r["clips_per_s_per_epoch"]) == 3
        assert r["clips_per_s"] == statistics.median(r["clips_per_s_per_epoch"][1:])  # epoch 1 left out
        assert r["peak_memory_mb"] is None and r["gpu_util_pct"] is None and r["samples"] == 0  # CPU: no NVML
    assert (out / "train_x2.txt").read_text().count("\n") == 16  # 8 videos listed twice
    (ld,) = res["loaders_alone"]
    assert ld["loader"] == "pyav" and ld["clips_per_s"] > 0 and len(ld["clips_per_s_per_epoch"]) == 3
    table = capsys.readouterr().out
    assert f"| (2) fast adapters + PyAV DataLoader | pyav | {r2['clips_per_s']:.1f} | " \
           f"{r2['clips_per_s'] / r1['clips_per_s']:.2f}x |" in table


def test_failed_config_is_reported_not_hidden(data, tmp_path):
    rc = train_gpu.main(["--data", str(data), "--out", str(tmp_path), "--configs", "2", "--loaders", "",
                         "--device", "cpu", "--common", TINY + " --act no_such_act"])
    row = json.loads((tmp_path / "train_gpu.json").read_text())["configs"][0]
    assert rc == 1 and row["exit"] == 2 and "no_such_act" in row["error"]


def test_sampler_window_and_errors():
    """The utilisation window averages only the samples inside it; a reading that fails stops the
    sampling and says why."""
    s = train_gpu.GpuSampler(read=lambda: (0, 0, 0.0))
    s.samples = [(1.0, 10, 0, 100.0), (2.0, 50, 20, 300.0), (3.0, 70, 40, 200.0), (4.0, 99, 99, 999.0)]
    assert s.window(2.0, 3.0) == {"gpu_util_pct": 60, "nvdec_util_pct": 30, "nvml_peak_used_mb": 300.0, "samples": 2}
    assert s.window(None, 3.0)["gpu_util_pct"] is None and s.window(5.0, 6.0)["samples"] == 0
    calls = []

    def read():
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("GPU is lost")
        return (42, 7, 1.5)

    deadline = time.time() + 10
    with train_gpu.GpuSampler(period=0.01, read=read) as s:
        while s.error is None and time.time() < deadline:
            time.sleep(0.01)
    assert [x[1:] for x in s.samples] == [(42, 7, 1.5)] * 3 and s.error == "sampling stopped: GPU is lost"
    assert train_gpu.GpuSampler(enabled=False).available is False


def test_dali_probe_on_cpu_says_cpu(tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    assert train_gpu.main(["--probe-dali", str(tmp_path)]) == 0
    assert (tmp_path / "route.txt").read_text() == "cpu\n" and "DALI NVDEC route failed" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--configs", "2,9"], r"--configs: expected numbers among \[1, 2, 3, 4, 5\], got \[9\]"),
    (["--epochs", "2"], r"--epochs: expected >= 3 \(epoch 1 is warm-up; utilisation is read over epochs 2..N-1\), got 2"),
    (["--repeat", "0"], r"--repeat: expected >= 1, got 0"),
])
def test_bad_arguments_are_named(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        train_gpu.main(["--data", str(tmp_path), "--out", str(tmp_path), *argv])
