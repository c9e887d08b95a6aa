"""benchmarks/train_gpu.py (issue 12's end-to-end table) on CPU with a tiny model: it runs the configs'
stadapter-train commands, reads their per-epoch records and times a loader alone. A check of the
script, not a measurement (no GPU memory or utilisation on CPU)."""
import json

import pytest

from benchmarks import train_gpu

pytest.importorskip("av")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from stadapter_fast.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("syn"), n_train=8, n_val=2, frames=16, size=32, seed=0)


def test_config_table_names_each_setup():
    assert sorted(train_gpu.CONFIGS) == [1, 2, 3, 4, 5]
    args = {c: train_gpu.train_args(c, "D", "O", train_gpu.COMMON, 32, 16, 3, "cuda") for c in train_gpu.CONFIGS}
    assert "reference" in args[1] and "reference" not in args[2]
    assert [args[c][args[c].index("--loader") + 1] for c in (1, 2, 3, 4, 5)] == ["pyav", "pyav", "dali", "dali", "dali"]
    assert "m-adapter" in args[4] and "--checkpoint-backbone" in args[5] and "--checkpoint-backbone" not in args[3]
    common = args[3][args[3].index("--backbone"):]
    assert common[:2] == ["--backbone", "timm:vit_base_patch16_224"] and "384" in common and "fp16" in common


def test_runs_a_config_and_a_loader_on_cpu(data, tmp_path, capsys):
    out = tmp_path / "runs"
    rc = train_gpu.main(["--data", str(data), "--out", str(out), "--configs", "2", "--loaders", "pyav",
                         "--batch-size", "4", "--workers", "0", "--epochs", "2", "--device", "cpu",
                         "--common", "--image-size 32 --frames 8 --adapter-channels 8"])
    assert rc == 0
    res = json.loads((out / "train_gpu.json").read_text())
    (row,) = res["configs"]
    assert row["config"] == 2 and row["exit"] == 0 and row["loader"] == "pyav"
    assert len(row["clips_per_s_per_epoch"]) == 2 and row["clips_per_s"] == row["clips_per_s_per_epoch"][1] > 0
    assert row["peak_memory_mb"] is None and row["gpu_util_pct"] is None  # CPU
    (ld,) = res["loaders_alone"]
    assert ld["loader"] == "pyav" and ld["clips_per_s"] > 0 and len(ld["clips_per_s_per_epoch"]) == 2
    # no config (1) in this run: no ratio to it
    assert f"| (2) fast adapters + PyAV DataLoader | pyav | {row['clips_per_s']:.1f} | n/a |" in capsys.readouterr().out


def test_failed_config_is_reported_not_hidden(data, tmp_path):
    rc = train_gpu.main(["--data", str(data), "--out", str(tmp_path), "--configs", "2", "--loaders", "",
                         "--epochs", "2", "--device", "cpu", "--common", "--image-size 32 --act no_such_act"])
    row = json.loads((tmp_path / "train_gpu.json").read_text())["configs"][0]
    assert rc == 1 and row["exit"] == 2 and "no_such_act" in row["error"]


@pytest.mark.parametrize("argv,match", [(["--configs", "2,9"], r"--configs: expected numbers among \[1, 2, 3, 4, 5\], got \[9\]"),
                                        (["--epochs", "1"], r"--epochs: expected >= 2 \(epoch 1 is warm-up\), got 1")])
def test_bad_arguments_are_named(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        train_gpu.main(["--data", str(tmp_path), "--out", str(tmp_path), *argv])
