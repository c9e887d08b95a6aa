"""The training CLI: a 2-step run writes its outputs; resume continues exactly; both loaders run."""
import json

import pytest
import torch

from stadapter_fast import read_adapter_metadata
from stadapter_fast.data.synthetic import make_synthetic
from stadapter_fast.train import main

pytest.importorskip("av")
pytest.importorskip("timm")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), n_train=16, n_val=8, frames=16, size=32, seed=1)


def args(data, out, *extra):
    return ["--data-root", str(data), "--train-list", str(data / "train.txt"), "--val-list", str(data / "val.txt"),
            "--out", str(out), "--batch-size", "8", "--quiet", *extra]


@pytest.mark.parametrize("loader", ["pyav", "dali"])
def test_two_step_run_writes_outputs(data, tmp_path, loader):
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    s = main(args(data, tmp_path, "--loader", loader, "--epochs", "3", "--max-steps", "2"))
    assert s["steps"] == 2 and s["loader"].startswith(loader)
    rec = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rec[-1]["step"] == 2 and 0 <= rec[-1]["val_top1"] <= 1 and rec[-1]["val_clips"] == 8
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["clips_per_s"] > 0 and summary["val_top1"] == rec[-1]["val_top1"]
    assert (tmp_path / "last.pt").exists() and (tmp_path / "curves.png").stat().st_size > 1000
    meta = read_adapter_metadata(tmp_path / "adapters.safetensors")
    assert meta["head"]["num_classes"] == 4 and meta["adapter_config"]["kernel_size"] == [3, 1, 1]


def test_resume_continues_exactly(data, tmp_path):
    common = ["--loader", "pyav", "--epochs", "2", "--dropout", "0.5"]
    main(args(data, tmp_path / "straight", *common))
    main(args(data, tmp_path / "resumed", *common[:-4], "--epochs", "1", "--dropout", "0.5"))
    main(args(data, tmp_path / "resumed", *common, "--resume"))
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    assert a["metrics"][-1]["train_loss"] == b["metrics"][-1]["train_loss"]


@pytest.mark.parametrize("method", ["st-adapter", "m-adapter"])
def test_adapter_path_options(data, tmp_path, method):
    s = main(args(data, tmp_path, "--loader", "pyav", "--method", method, "--epochs", "1", "--max-steps", "1",
                  "--adapter-path", "one_pass", "--no-recompute"))
    assert s["steps"] == 1
    meta = read_adapter_metadata(tmp_path / "adapters.safetensors")
    if method == "st-adapter":
        assert (meta["adapter_config"]["path"], meta["adapter_config"]["recompute"]) == ("one_pass", False)


def test_frame_only_baseline_trains_only_the_head(data, tmp_path):
    s = main(args(data, tmp_path, "--loader", "pyav", "--method", "frame-only", "--epochs", "1"))
    assert s["trainable_params"] == 64 * 4 + 4
    assert not (tmp_path / "adapters.safetensors").exists()


def test_folder_per_class_layout(data, tmp_path):
    import shutil

    for split in ("train", "val"):
        for line in (data / f"{split}.txt").read_text().splitlines():
            rel, label = line.rsplit(" ", 1)
            dst = tmp_path / "folders" / split / f"class_{label}"
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / rel, dst)
    s = main(["--data-root", str(tmp_path / "folders"), "--train-list", str(tmp_path / "folders" / "train"),
              "--val-list", str(tmp_path / "folders" / "val"), "--out", str(tmp_path / "run"), "--batch-size", "8",
              "--loader", "pyav", "--epochs", "1", "--quiet"])
    assert s["steps"] == 2 and read_adapter_metadata(tmp_path / "run" / "adapters.safetensors")["head"]["num_classes"] == 4


def test_ddp_shards_have_equal_training_lengths(data):
    """Ranks of a DDP run must take the same number of steps (else they deadlock in all-reduce)."""
    from stadapter_fast.data import read_video_list
    from stadapter_fast.data.loaders import PyAVLoader
    from stadapter_fast.train import build_parser

    items = read_video_list(data / "train.txt")[:15]
    a = build_parser().parse_args(["--batch-size", "4"])
    loaders = [PyAVLoader(items, a, True, rank, 2) for rank in (0, 1)]
    assert [len(l._indices()) for l in loaders] == [7, 7] and [len(l) for l in loaders] == [1, 1]
    shards = [set(l._indices()) for l in loaders]
    assert not shards[0] & shards[1]
    val = [PyAVLoader(items, a, False, rank, 2) for rank in (0, 1)]
    assert sorted(i for l in val for i in l._indices()) == list(range(15))  # testing sees every clip once


def test_grad_accum_steps_on_leftover_micro_batches(data, tmp_path):
    # 2 batches per epoch, accumulation 4: one (partial) step per epoch instead of none
    s = main(args(data, tmp_path, "--loader", "pyav", "--epochs", "2", "--grad-accum", "4"))
    assert s["steps"] == 2


def test_half_backbone_defaults_to_autocast(data, tmp_path):
    s = main(args(data, tmp_path, "--loader", "pyav", "--epochs", "1", "--max-steps", "1", "--backbone-dtype", "bf16"))
    assert s["steps"] == 1
