"""benchmarks/train_gpu.py (issue 12's end-to-end table) on CPU with a tiny model: it runs the configs'
stadapter-train commands (with the table's precision flags), reads their per-epoch records, appends a
second call's rows and times a loader alone. A check of the script, not a measurement (no NVML on CPU;
the sampler is checked with a stand-in reading)."""
import json
import statistics
import sys
import time
import types

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
    base = ["--data", str(data), "--out", str(out), "--workers", "0", "--epochs", "3", "--device", "cpu",
            "--common", TINY, "--min-steps", "0"]
    assert train_gpu.main([*base, "--batch-size", "4", "--repeat", "2", "--configs", "1", "--loaders", ""]) == 0
    # an appended run with --batch-size auto takes the first run's batch and list (no CUDA needed for that)
    assert train_gpu.main([*base, "--batch-size", "auto", "--configs", "2", "--loaders", "pyav", "--append"]) == 0
    res = json.loads((out / "train_gpu.json").read_text())
    r1, r2 = res["configs"]
    assert (r1["config"], r2["config"]) == (1, 2) and r1["exit"] == r2["exit"] == 0
    assert r1["batch_size"] == r2["batch_size"] == res["batch_size"] == 4
    assert r1["repeat"] == r2["repeat"] == res["repeat"] == 2
    for r in (r1, r2):
        assert r["loader"] == "pyav" and len(r["clips_per_s_per_epoch"]) == 3
        # epoch 1 left out; the rate over each epoch's second half (4 steps an epoch here), and whole epochs
        assert r["clips_per_s"] == statistics.median(r["clips_per_s_steady_per_epoch"][1:])
        assert r["clips_per_s_whole_epoch"] == statistics.median(r["clips_per_s_per_epoch"][1:])
        assert r["peak_memory_mb"] is None and r["gpu_util_pct"] is None and r["samples"] == 0  # CPU: no NVML
    assert (out / "train_x2.txt").read_text().count("\n") == 16  # 8 videos listed twice
    (ld,) = res["loaders_alone"]
    assert ld["loader"] == "pyav" and ld["clips_per_s"] > 0 and len(ld["clips_per_s_per_epoch"]) == 3
    assert ld["clips_per_s"] == statistics.median(ld["clips_per_s_steady_per_epoch"][1:])
    table = capsys.readouterr().out
    assert f"| (2) fast adapters + PyAV DataLoader | pyav | 4 | {r2['clips_per_s']:.1f} | " \
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
    s.samples = [(1.0, 10, None, 100.0), (2.0, 50, None, 300.0)]  # a device that does not report NVDEC's load
    assert s.window(1.0, 2.0) == {"gpu_util_pct": 30, "nvdec_util_pct": None, "nvml_peak_used_mb": 300.0, "samples": 2}
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


@pytest.mark.parametrize("device, visible, expected", [
    ("cuda", None, ("index", 0)), ("cuda:1", None, ("index", 1)), ("cuda", "3,1", ("index", 3)),
    ("cuda:1", " 3, 1", ("index", 1)), ("cuda:0", "GPU-8a1b2c3d-0000", ("uuid", "GPU-8a1b2c3d-0000")),
])
def test_nvml_device_is_the_one_torch_trains_on(device, visible, expected):
    assert train_gpu.nvml_device(device, visible) == expected


@pytest.mark.parametrize("device, visible, match", [("cuda:2", "0,1", "makes 2 GPU"),
                                                    ("cuda", "MIG-5c3f", "neither an index")])
def test_nvml_device_errors_name_the_device(device, visible, match):
    with pytest.raises(ValueError, match=match):
        train_gpu.nvml_device(device, visible)


def test_sampler_reads_the_training_device(monkeypatch):
    """With CUDA_VISIBLE_DEVICES=2,5 torch's cuda:1 is the machine's GPU 5 of 8: NVML reads that one's
    figures; a device NVML cannot name leaves the figures out and says why."""
    class FakeNVML(types.ModuleType):
        NVMLError = RuntimeError
        gpus = 8

        def nvmlInit(self):
            pass

        def nvmlDeviceGetCount(self):
            return self.gpus

        def nvmlDeviceGetHandleByIndex(self, i):
            return i

        def nvmlDeviceGetUtilizationRates(self, h):
            return types.SimpleNamespace(gpu=10 * h)

        def nvmlDeviceGetDecoderUtilization(self, h):
            return (h, 1000)

        def nvmlDeviceGetMemoryInfo(self, h):
            return types.SimpleNamespace(used=h * 2 ** 20)

    nvml = FakeNVML("pynvml")
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    s = train_gpu.GpuSampler(device="cuda:1")
    assert s.available and s.error is None and s._read() == (50, 5, 5.0)
    assert train_gpu.GpuSampler(device="cuda")._read() == (20, 2, 2.0)
    s = train_gpu.GpuSampler(device="cuda:2")
    assert not s.available and "makes 2 GPU" in s.error
    nvml.gpus = 1  # a machine's only GPU is the one, however the variable names it (a UUID prefix, say)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8a1b")
    assert train_gpu.GpuSampler(device="cuda")._read() == (0, 0, 0.0)


def test_dali_probe_on_cpu_says_cpu(tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    assert train_gpu.main(["--probe-dali", str(tmp_path)]) == 0
    assert (tmp_path / "route.txt").read_text() == "cpu\n" and "DALI NVDEC route failed" in capsys.readouterr().out


def test_min_steps_lists_the_videos_more_times(data, tmp_path):
    """8 videos, batch 4, 48 steps per epoch (the default): the list is repeated 24 times (not --repeat's 2)."""
    assert train_gpu.main(["--data", str(data), "--out", str(tmp_path), "--configs", "", "--loaders", "",
                           "--batch-size", "4", "--repeat", "2", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "train_gpu.json").read_text())["repeat"] == 24
    assert (tmp_path / "train_x24.txt").read_text().count("\n") == 192


def test_fit_batch_fills_the_memory_fraction_and_respects_shared_memory():
    # 2 GiB fixed + 2000 MiB per clip on a 143771 MiB device: (0.8 * 143771 - 4096 - 2000) / 2000 = 54.46
    fit = train_gpu.fit_batch({4: 10000.0, 12: 26000.0}, 143771, shm_free_mb=65536, clip_mb=4.59375, workers=16)
    assert (fit["per_clip_mb"], fit["fixed_mb"], fit["by_memory"]) == (2000.0, 2000.0, 54)
    assert fit["by_shm"] == 222 and fit["batch_size"] == 48  # rounded down to a multiple of 8
    # /dev/shm with room for 16 workers x 2 batches of 20 clips only
    small = train_gpu.fit_batch({4: 10000.0, 12: 26000.0}, 143771, shm_free_mb=2 * 16 * 2 * 20 * 4.59375,
                                clip_mb=4.59375, workers=16)
    assert small["by_shm"] == 20 and small["batch_size"] == 16
    assert train_gpu.fit_batch({4: 1000.0, 12: 1800.0}, 143771, 1e9, 4.6, 16)["batch_size"] == train_gpu.FIT_CAP
    assert train_gpu.fit_batch({4: 10000.0, 12: 26000.0}, 27000, 1e9, 4.6, 16)["batch_size"] == 7  # under 8: as is
    # Docker's 64 MiB /dev/shm: no useful batch for the PyAV loader; recorded, not applied (DALI's configs)
    tiny = train_gpu.fit_batch({4: 10000.0, 12: 26000.0}, 143771, 64, 4.59375, 16)
    assert tiny["by_shm"] == 0 and tiny["shm_applied"] is False and tiny["batch_size"] == 48
    with pytest.raises(ValueError, match=r"--batch-size auto: expected peak memory to grow with the batch"):
        train_gpu.fit_batch({4: 5000.0, 12: 5000.0}, 143771, 1e9, 4.6, 16)
    with pytest.raises(ValueError, match=r"--batch-size auto: expected room for one clip, got 11904 MiB usable "
                                         r"for 20000 MiB fixed \+ 2000 MiB per clip"):
        train_gpu.fit_batch({4: 28000.0, 12: 44000.0}, 20000, 1e9, 4.6, 16)


def test_step_memory_runs_a_training_step_per_batch_size(monkeypatch):
    """On CPU with a stand-in counter: one step per batch size, of config 1's model (reference adapters),
    and the adapters are updated (the step is a real training step)."""
    import torch

    readings, steps, real_step = iter([111.0, 333.0]), [], torch.optim.AdamW.step

    def step(opt, *a, **kw):  # each update has gradients, and changes the trainable parameters
        params = [p for g in opt.param_groups for p in g["params"]]
        before = [p.detach().clone() for p in params]
        steps.append(sum(p.grad is not None for p in params))
        out = real_step(opt, *a, **kw)
        assert any(not torch.equal(b, p) for b, p in zip(before, params))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    mem = train_gpu.step_memory(TINY + " --amp none --backbone-dtype none", train_gpu.CONFIGS[1][1], [2, 3], "cpu",
                                peak_mb=lambda: next(readings))
    assert mem == {2: 111.0, 3: 333.0}
    assert len(steps) == 3 and min(steps) > 0  # an unmeasured warm-up step, then one per batch size
    with pytest.raises(ValueError, match=r"step_memory: device: expected a CUDA device .*got 'cpu'"):
        train_gpu.step_memory(TINY, train_gpu.CONFIGS[1][1], [2], "cpu")


def test_auto_batch_runs_the_probe_in_its_own_process_and_fits(monkeypatch):
    """--batch-size auto: the probe command (config 1's model at FIT_PROBE_BATCHES, this run's --common),
    its JSON read back, the device's memory and the clip size from --common go into fit_batch. CUDA and
    the child process are stood in for."""
    import argparse
    import subprocess

    import torch

    seen = {}

    def run(cmd, **kw):
        seen["cmd"] = cmd
        out = f'log line\n{train_gpu.STEP_MEMORY_TAG}{{"4": 10000.0, "12": 26000.0}}\n{{"a late": "line"}}\n'
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: argparse.Namespace(total_memory=143771 * 2 ** 20))
    monkeypatch.setattr(train_gpu.subprocess, "run", run)
    monkeypatch.setattr(train_gpu.shutil, "disk_usage", lambda p: argparse.Namespace(free=64 * 2 ** 30))
    args = argparse.Namespace(device="cuda", common=train_gpu.COMMON, workers=16)
    fit = train_gpu.auto_batch(args)
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "benchmarks.train_gpu", "--step-memory", "1"]
    assert cmd[cmd.index("--batches") + 1] == "4,12" and cmd[cmd.index("--common") + 1] == train_gpu.COMMON
    assert fit["probe_mb"] == {"4": 10000.0, "12": 26000.0} and fit["per_clip_mb"] == 2000.0
    # 224x224x8 float32 clips: 4.59 MiB; 64 GiB of /dev/shm: 222 clips a batch
    assert fit["by_shm"] == 222 and fit["batch_size"] == 48
    monkeypatch.setattr(train_gpu.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, stdout="", stderr="CUDA out of memory"))
    with pytest.raises(RuntimeError, match=r"the memory probe failed \(exit 1\):\nCUDA out of memory"):
        train_gpu.auto_batch(args)
    monkeypatch.setattr(train_gpu.subprocess, "run",  # exit 0 without the tagged line
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout="{}\n", stderr=""))
    with pytest.raises(RuntimeError, match=r"the memory probe failed \(exit 0\)"):
        train_gpu.auto_batch(args)


def test_a_failed_fit_on_a_gpu_falls_back_and_is_recorded(data, tmp_path, monkeypatch):
    """On a GPU visit a failed probe must not cost the configs: they run at FIT_FALLBACK, and the
    error is in the JSON. (CUDA is stood in for; no config runs.)"""
    import torch

    def fail(args):
        raise RuntimeError("--batch-size auto: the memory probe failed (exit 1):\nboom")

    monkeypatch.setattr(train_gpu, "auto_batch", fail)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a stand-in GPU")
    assert train_gpu.main(["--data", str(data), "--out", str(tmp_path), "--configs", "", "--loaders", "",
                           "--device", "cuda", "--batch-size", "auto"]) == 0
    res = json.loads((tmp_path / "train_gpu.json").read_text())
    assert res["batch_size"] == train_gpu.FIT_FALLBACK == res["batch_fit"]["batch_size"]
    assert res["batch_fit"]["error"].endswith("the memory probe failed (exit 1):\nboom")


def test_batch_size_argument():
    assert train_gpu.batch_size_arg("auto") == "auto" and train_gpu.batch_size_arg("48") == 48
    for bad in ("0", "-8", "big"):
        with pytest.raises(Exception, match=rf"expected 'auto' or an integer >= 1, got '{bad}'"):
            train_gpu.batch_size_arg(bad)


@pytest.mark.parametrize("argv,match", [
    (["--step-memory", "9"], r"--step-memory: expected a number among \[1, 2, 3, 4, 5\], got 9"),
    (["--step-memory", "1", "--device", "cpu"], r"step_memory: device: expected a CUDA device"),
    (["--batch-size", "auto", "--device", "cpu"],
     r"--batch-size auto: expected a CUDA --device that is available, got 'cpu' \(give a number instead\)"),
    (["--configs", "2,9"], r"--configs: expected numbers among \[1, 2, 3, 4, 5\], got \[9\]"),
    (["--epochs", "2"], r"--epochs: expected >= 3 \(epoch 1 is warm-up; utilisation is read over epochs 2..N-1\), got 2"),
    (["--repeat", "0"], r"--repeat: expected >= 1, got 0"),
])
def test_bad_arguments_are_named(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        train_gpu.main(["--data", str(tmp_path), "--out", str(tmp_path), *argv])


def test_table_lists_rows_by_config():
    """run_gpu_train.sh runs configs 1 and 3 in one call and 2, 4, 5 in the next: the table is by config."""
    rows = [{"config": c, "what": f"setup {c}", "exit": 1, "batch_size": 8, "error": "x"} for c in (1, 3, 2)]
    lines = [line for line in train_gpu.table(rows, []).splitlines() if line.startswith("| (")]
    assert [line[:4] for line in lines] == ["| (1", "| (2", "| (3"]


def _ok_row(config, clips_per_s, peak_mb):
    return {"config": config, "what": f"setup {config}", "exit": 0, "batch_size": 8, "loader": "x",
            "clips_per_s": clips_per_s, "clips_per_s_whole_epoch": clips_per_s, "clips_per_s_epoch1": clips_per_s,
            "peak_memory_mb": peak_mb, "nvml_peak_used_mb": None, "gpu_util_pct": None, "nvdec_util_pct": None}


def test_table_reads_off_the_issue_targets():
    """(3) vs (1) clips/s, the loaders alone, (5) vs (3) memory with its time cost; a target whose rows
    are missing or failed says what it needs."""
    rows = [_ok_row(1, 100.0, 9000), _ok_row(3, 160.0, 10000), _ok_row(5, 128.0, 7000)]
    loaders = [{"loader": "pyav", "threads": 16, "clips_per_s": 150.0, "clips_per_s_whole_epoch": 140.0},
               {"loader": "dali-gpu-decoder", "threads": 16, "clips_per_s": 270.0, "clips_per_s_whole_epoch": 260.0}]
    text = train_gpu.table(rows, loaders)
    assert "- (3) vs (1) clips/s: 1.60x (wanted >= 1.5x): met" in text
    assert "- DALI loader alone vs PyAV alone, clips/s: 1.80x (wanted >= 2x): missed" in text
    assert ("- (5) vs (3) peak torch memory: 0.70x (wanted <= 0.6x): missed; (5) takes 1.25x (3)'s time per clip"
            in text)
    failed = [_ok_row(1, 100.0, 9000), {"config": 3, "what": "setup 3", "exit": 1, "batch_size": 8, "error": "x"}]
    text = train_gpu.table(failed, loaders[:1])
    assert "- (3) vs (1) clips/s: n/a (needs configs 1 and 3)" in text
    assert "- DALI loader alone vs PyAV alone, clips/s: n/a (needs both loaders alone)" in text
    assert "- (5) vs (3) peak torch memory: n/a (needs configs 3 and 5)" in text
