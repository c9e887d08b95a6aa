"""The training CLI: a 2-step run writes its outputs; resume continues exactly; both loaders run."""
import json
from pathlib import Path

import pytest
import torch

from stadapter_fast import read_adapter_metadata
from stadapter_fast.data.synthetic import make_synthetic
from stadapter_fast.train import main

pytest.importorskip("av")
pytest.importorskip("timm")


def test_steady_clips_per_s_reads_the_second_half_of_the_epoch():
    """A 2 s start (workers filling their first batches), then 8 clips every 0.1 s: the steady rate is
    80 clips/s, where the whole epoch's is 64 / 2.7 s = 23.7."""
    from stadapter_fast.train import steady_clips_per_s

    stamps = [(2.0 + 0.1 * i, 8 * (i + 1)) for i in range(8)]
    assert steady_clips_per_s(stamps) == pytest.approx(80.0)
    assert steady_clips_per_s(stamps[:3]) is None and steady_clips_per_s([(1.0, 8)] * 4) is None


def test_steady_clips_per_s_counts_whole_waves_of_a_worker_pool():
    """4 workers decoding a batch of 8 each per second arrive in bursts of 4 batches (the loop takes
    0.01 s a step): the rate is 32 clips/s. A window over whole waves reads it exactly; a plain
    second half (wave 1) starts inside a burst and reads 47. Fewer than two whole waves: None."""
    from stadapter_fast.train import steady_clips_per_s

    stamps = [(k + 0.01 * (j + 1), 8 * (4 * (k - 1) + j + 1)) for k in (1, 2, 3) for j in range(4)]
    assert steady_clips_per_s(stamps, wave=4) == pytest.approx(32.0)
    assert steady_clips_per_s(stamps, wave=1) == pytest.approx(48 / 1.02)
    assert steady_clips_per_s(stamps[:7], wave=4) is None


def test_loaders_name_their_waves():
    from types import SimpleNamespace

    from stadapter_fast.data.loaders import DALILoader, PyAVLoader

    assert DALILoader.batches_per_wave == 1
    for workers, wave in ((0, 1), (1, 1), (16, 16)):
        assert PyAVLoader.batches_per_wave.fget(SimpleNamespace(workers=workers)) == wave


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
    assert rec[-1]["clips_per_s"] > 0 and rec[-1]["clips_per_s_steady"] is None  # 2 steps: no second half
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["clips_per_s"] > 0 and summary["val_top1"] == rec[-1]["val_top1"]
    assert (tmp_path / "last.pt").exists() and (tmp_path / "curves.png").stat().st_size > 1000
    meta = read_adapter_metadata(tmp_path / "adapters.safetensors")
    assert meta["head"]["num_classes"] == 4 and meta["adapter_config"]["kernel_size"] == [3, 1, 1]


@pytest.fixture(scope="module")
def data_vp9(tmp_path_factory):
    """VP9 only: DALI's CPU decoder reads every file (the mixed dataset goes through PyAV in DALI)."""
    return make_synthetic(tmp_path_factory.mktemp("syn_vp9"), n_train=16, n_val=8, frames=16, size=32, seed=2,
                          codecs=("vp9",))


@pytest.mark.parametrize("loader", ["pyav", "dali", "dali-pyav-workers"])
def test_resume_continues_exactly(data, data_vp9, tmp_path, loader):
    """A run stopped part-way through epoch 1 (``--max-steps 1``), resumed to the end of it, then
    resumed at the epoch boundary for epoch 2, sees the clips, augmentations and dropout masks of an
    uninterrupted run (the loaders' randomness is a function of (seed, epoch, index); last.pt records
    both, the batch an epoch stopped after and the RNG states there), so the weights end bit-identical
    and so do the epochs' losses. DALI: VP9 through its decoder, and the mixed set through PyAV in two
    worker processes."""
    flags, data, kind = {"pyav": (["--loader", "pyav"], data, "pyav"),
                         "dali": (["--loader", "dali"], data_vp9, "dali-cpu-decoder"),
                         "dali-pyav-workers": (["--loader", "dali", "--workers", "2"], data, "dali-cpu-pyav-source"),
                         }[loader]
    if loader != "pyav":
        pytest.importorskip("nvidia.dali")
    common = [*flags, "--dropout", "0.5"]
    main(args(data, tmp_path / "straight", *common, "--epochs", "2", "--seed", "3"))
    main(args(data, tmp_path / "resumed", *common, "--epochs", "2", "--seed", "3", "--max-steps", "1"))
    stopped = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert stopped["epoch"] == 0 and stopped["step"] == 1 and stopped["partial"]["batch"] == 1
    assert [(r["epoch"], r["partial_batches"]) for r in stopped["metrics"]] == [(1, "1/2")]
    main(args(data, tmp_path / "resumed", *common, "--epochs", "2", "--seed", "3", "--max-steps", "2", "--resume"))
    ended = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert ended["epoch"] == 0 and ended["step"] == 2 and "partial" not in ended
    s = main(args(data, tmp_path / "resumed", *common, "--epochs", "2", "--seed", "3", "--resume"))
    assert s["loader"] == kind
    # tensors and plain types only: loads without unpickling arbitrary objects
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert a["data_rng"] == b["data_rng"] == {"seed": 3, "epoch": 1}
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    for ra, rb in zip(a["metrics"], b["metrics"], strict=True):
        assert (ra["epoch"], ra["step"], ra["train_loss"], ra["val_top1"]) == (rb["epoch"], rb["step"],
                                                                                rb["train_loss"], rb["val_top1"])
    lines = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines == b["metrics"]
    # another seed would sample other clips: refused, naming the flag, the expected and the given value
    ckpt = (tmp_path / "resumed" / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"--seed: the run in it sampled and augmented clips with --seed 3, got "
                                         r"--seed 4; resume with --seed 3"):
        main(args(data, tmp_path / "resumed", *common, "--epochs", "3", "--seed", "4", "--resume"))
    # a new --lr would be dropped without a word (the optimizer and schedule state hold the run's)
    with pytest.raises(ValueError, match=r"--lr: the run in it was trained with --lr 0.003, got 1e-06; resume with"):
        main(args(data, tmp_path / "resumed", *common, "--epochs", "3", "--seed", "3", "--lr", "1e-6", "--resume"))
    assert (tmp_path / "resumed" / "last.pt").read_bytes() == ckpt


class _Hostile:
    """Unpickling this would run a command (what weights_only=True refuses)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_damaged_or_hostile_checkpoint_is_refused_and_kept(data, tmp_path):
    run = tmp_path / "run"
    main(args(data, run, "--loader", "pyav", "--epochs", "1", "--max-steps", "1"))
    good = torch.load(run / "last.pt", weights_only=True)
    assert good["partial"]["batch"] == 1  # stopped after batch 1 of 2
    first = next(iter(good["trainable"]))
    marker = tmp_path / "pwned"

    def with_tensor(t):
        return {**good, "trainable": {**good["trainable"], first: t}}

    def with_partial(**kw):
        return {**good, "partial": {**good["partial"], **kw}}

    unreadable = "cannot be read as a training checkpoint"
    damaged = {
        "truncated": (lambda p: p.write_bytes(p.read_bytes()[:1000]), unreadable),
        "garbage": (lambda p: p.write_bytes(b"not a checkpoint" * 10), unreadable),
        "hostile": (lambda p: torch.save({"x": _Hostile(marker)}, p), unreadable),
        "wrong shape": (lambda p: torch.save(with_tensor(torch.zeros(3)), p), rf"tensor {first} is \(3,\)"),
        "wrong dtype": (lambda p: torch.save(with_tensor(good["trainable"][first].double()), p), "torch.float64"),
        "missing key": (lambda p: torch.save({k: v for k, v in good.items() if k != "opt"}, p), "entry 'opt'"),
        "non-finite": (lambda p: torch.save(with_tensor(torch.full_like(good["trainable"][first], float("nan"))), p),
                       "non-finite"),
        # an epoch stopped part-way on 2 ranks: this run's one rank would shard its clips anew
        "other world": (lambda p: torch.save(with_partial(world=2), p), r"sharded over 2 rank\(s\), got 1"),
        "batch past the epoch": (lambda p: torch.save(with_partial(batch=2), p),
                                 r"after batch 2 of an epoch, expected 1..1 \(the 2 batches"),
        "damaged partial": (lambda p: torch.save(with_partial(losses="x"), p), "entry 'partial' is not the record"),
    }
    ckpt = run / "last.pt"
    for name, (damage, why) in damaged.items():
        torch.save(good, ckpt)
        damage(ckpt)
        written = ckpt.read_bytes()
        with pytest.raises(ValueError, match=f"--resume: {ckpt}.*{why}"):
            main(args(data, run, "--loader", "pyav", "--epochs", "2", "--resume"))
        assert ckpt.read_bytes() == written, f"{name}: the checkpoint file was changed"
        assert not marker.exists(), "unpickling ran code"


def test_load_checkpoint_changes_nothing_on_a_bad_file(tmp_path):
    from stadapter_fast.train import load_checkpoint

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = [p.detach().clone() for p in model.parameters()]
    ckpt = tmp_path / "last.pt"
    torch.save({"trainable": {"weight": torch.ones(3, 4), "bias": torch.ones(2)}, "opt": opt.state_dict(),
                "sched": sched.state_dict(), "scaler": scaler.state_dict(), "epoch": 0, "step": 1, "metrics": [],
                "rng": {}}, ckpt)
    with pytest.raises(ValueError, match=r"tensor bias is \(2,\)"):
        load_checkpoint(ckpt, model, opt, sched, scaler)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_nonfinite_loss_stops_with_the_step_or_is_skipped_and_counted(data, tmp_path):
    # a learning rate so large that the first update makes every later loss inf/NaN
    blowup = ["--loader", "pyav", "--epochs", "1", "--lr", "1e30", "--warmup-epochs", "0"]
    with pytest.raises(FloatingPointError, match=r"non-finite .* at step 2 \(epoch 1\); the last good checkpoint: "
                                                 r"none written yet"):
        main(args(data, tmp_path / "stop", *blowup))
    s = main(args(data, tmp_path / "skip", *blowup, "--skip-nonfinite"))
    rec = json.loads((tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()[-1])
    assert s["steps"] == 1 and rec["nonfinite_skipped"] >= 1 and rec["amp_skipped_steps"] == 0


@pytest.mark.parametrize("method", ["st-adapter", "m-adapter"])
def test_kernel_path_options(data, tmp_path, method):
    s = main(args(data, tmp_path, "--loader", "pyav", "--method", method, "--epochs", "1", "--max-steps", "1",
                  "--kernel-path", "one_pass", "--no-recompute"))
    assert s["steps"] == 1
    meta = read_adapter_metadata(tmp_path / "adapters.safetensors")
    if method == "st-adapter":
        assert (meta["adapter_config"]["path"], meta["adapter_config"]["recompute"]) == ("one_pass", False)


def test_kernel_path_flag_and_its_deprecated_alias():
    """--adapter-path (the former name) still parses, into the same value, and is hidden from --help."""
    from stadapter_fast.train import build_parser

    ap = build_parser()
    assert ap.parse_args([]).kernel_path == "auto"
    for path in ("two_pass", "one_pass"):
        new, old = ap.parse_args(["--kernel-path", path]), ap.parse_args(["--adapter-path", path])
        assert new.kernel_path == old.kernel_path == path
    assert "--kernel-path" in ap.format_help() and "--adapter-path" not in ap.format_help()
    with pytest.raises(SystemExit):
        ap.parse_args(["--kernel-path", "three_pass"])


def test_help_reads_in_sections():
    from stadapter_fast.train import build_parser

    titles = [g.title for g in build_parser()._action_groups]
    for section in ("data", "clips: sampling and augmentation", "model", "optimisation", "run and checkpoints"):
        assert section in titles
    assert all(g._group_actions for g in build_parser()._action_groups if g.title != "positional arguments")


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


def test_labels_agree_between_splits_and_fit_the_head(tmp_path):
    """Validation labels are the training split's: a validation folder per class is labelled by the
    training class folders (not its own, which may lack a class), and a label the head cannot hold is
    a ValueError naming the list, not a silent miss (validation) or an opaque IndexError (training)."""
    from stadapter_fast.train import build_parser, load_datasets

    def folders(split, names):
        for c in names:
            (tmp_path / split / c).mkdir(parents=True)
            (tmp_path / split / c / "v.webm").write_bytes(b"")
        return str(tmp_path / split)

    def load(*argv):
        return load_datasets(build_parser().parse_args(["--data-root", str(tmp_path), *argv]), 0, 1)

    train, val = folders("train", ["archery", "bowling", "cycling"]), folders("val", ["archery", "cycling"])
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")  # for list files only: the folders name the classes
    tr, va, n = load("--train-list", train, "--val-list", val)
    assert n == 3 and [i.label for i in va] == [0, 2] and [i.label for i in tr] == [0, 1, 2]
    (tmp_path / "list.txt").write_text("x.webm 0\ny.webm 1\n")
    (tmp_path / "val4.txt").write_text("x.webm 4\n")
    with pytest.raises(ValueError, match=r"val4.txt: label 4 of .*x.webm \(and 0 more\) is out of range for 4 classes "
                                         r"\(from .*classes.txt\)"):
        load("--train-list", str(tmp_path / "list.txt"), "--val-list", str(tmp_path / "val4.txt"))
    with pytest.raises(ValueError, match=r"list.txt: label 1 .* out of range for 1 classes \(from --num-classes\)"):
        load("--train-list", str(tmp_path / "list.txt"), "--val-list", str(tmp_path / "list.txt"), "--num-classes", "1")
    (tmp_path / "classes.txt").unlink()
    _, _, n = load("--train-list", str(tmp_path / "list.txt"), "--val-list", str(tmp_path / "list.txt"))
    assert n == 2
    with pytest.raises(ValueError, match=r"val4.txt: label 4 .* for 2 classes \(from the largest label in .*list.txt, plus 1\)"):
        load("--train-list", str(tmp_path / "list.txt"), "--val-list", str(tmp_path / "val4.txt"))
    with pytest.raises(ValueError, match=r"--val-list .*val is a folder per class, but the training labels have no class names"):
        load("--train-list", str(tmp_path / "list.txt"), "--val-list", val)


@pytest.mark.parametrize("loader", ["pyav", "dali"])
def test_a_video_the_probe_drops_counts_in_val_bad_with_either_loader(data_vp9, tmp_path, loader):
    """An unreadable validation video is one bad video with either loader: the PyAV loader meets it in
    its batch, the DALI loader's probe leaves it out up front, and both count and name it."""
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    (tmp_path / "broken.webm").write_bytes(b"not a video")
    (tmp_path / "val.txt").write_text("".join(f"{data_vp9 / l}\n" for l in (data_vp9 / "val.txt").read_text().split("\n")[:3])
                                      + f"{tmp_path / 'broken.webm'} 0\n")
    argv = args(data_vp9, tmp_path / "run", "--loader", loader, "--epochs", "1", "--max-steps", "1")
    argv[argv.index("--val-list") + 1] = str(tmp_path / "val.txt")
    main(argv)
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["val_bad"] == 1 and rec["val_clips"] == 3


def test_a_training_set_that_fills_no_batch_is_an_error(data, tmp_path):
    """Training drops a last partial batch: 16 videos and --batch-size 17 would train 0 steps and
    report success."""
    with pytest.raises(ValueError, match=r"--batch-size 17: the 16 usable training videos over 1 rank\(s\) fill no "
                                         r"full batch; use a --batch-size of at most 16"):
        main(args(data, tmp_path, "--loader", "pyav", "--epochs", "1", "--batch-size", "17"))


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


@pytest.mark.parametrize("flag,local_rank,expected", [("cuda", "0", "cuda:0"), ("cuda", "3", "cuda:3"),
                                                       ("cuda:1", "3", "cuda:1"), (None, "2", "cuda:2")])
def test_cuda_device_gets_an_index(monkeypatch, flag, local_rank, expected):
    """``--device cuda`` becomes this process's GPU: torch.cuda.set_device refuses an index-less device
    (ValueError 'Expected a torch.device with a specified index'), which would stop every GPU run at start."""
    from stadapter_fast import train
    from stadapter_fast.train import build_parser

    seen = []

    def set_device(d):
        if torch.device(d).index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{d}")
        seen.append(str(d))

    monkeypatch.setattr(train, "_dist", lambda: (0, 1, int(local_rank)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    a = build_parser().parse_args([] if flag is None else ["--device", flag])
    device = train.init_process(a)[3]
    assert str(device) == expected and seen == [expected]


def test_grad_accum_steps_on_leftover_micro_batches(data, tmp_path):
    # 2 batches per epoch, accumulation 4: one (partial) step per epoch instead of none
    s = main(args(data, tmp_path, "--loader", "pyav", "--epochs", "2", "--grad-accum", "4"))
    assert s["steps"] == 2
    # a leftover step that reaches --max-steps ends the run: no epoch 2 (it trained a step past it)
    s = main(args(data, tmp_path / "capped", "--loader", "pyav", "--epochs", "2", "--grad-accum", "4",
                  "--max-steps", "1"))
    assert s["steps"] == 1 and s["epochs"] == 1


def test_leftover_accumulation_steps_on_the_mean_of_its_micro_batches(tmp_path, monkeypatch):
    """5 identical micro-batches, --grad-accum 4: the leftover fifth steps on the gradient of the
    mean, as the first four do (each loss is divided by 4; the leftover's gradient is scaled to 1)."""
    from stadapter_fast import train

    class Identical:
        batches_per_wave, dropped = 1, []

        def set_epoch(self, epoch, first_batch=0):
            pass

        def __len__(self):
            return 5

        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            x, y = torch.randn(2, 3, 2, 4, 4, generator=g), torch.tensor([0, 1])
            return iter([(x, y, [])] * 5)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(96, 2))
    a = train.build_parser().parse_args(["--grad-accum", "4", "--quiet", "--lr", "0"])
    opt, sched, scaler = train.optimization(a, model, torch.device("cpu"), 2)
    grads, step = [], train.optimizer_step

    def record(*step_args):
        grads.append(model[1].weight.grad.clone())
        return step(*step_args)

    monkeypatch.setattr(train, "optimizer_step", record)
    tr = train.Trainer(a, model, model, Identical(), None, "test", opt, sched, scaler, torch.device("cpu"), tmp_path)
    train.train_epoch(tr, 0)
    assert len(grads) == 2 and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)


def test_half_backbone_defaults_to_autocast(data, tmp_path):
    s = main(args(data, tmp_path, "--loader", "pyav", "--epochs", "1", "--max-steps", "1", "--backbone-dtype", "bf16"))
    assert s["steps"] == 1


@pytest.mark.parametrize("amp,bdt", [("bf16", "fp16"), ("fp16", "bf16")])
def test_mixed_half_types_are_refused_by_name(data, tmp_path, amp, bdt):
    """torch's autocast fails on an fp16 backbone under bf16 autocast (and the reverse) with an opaque
    'Unexpected floating ScalarType': the run is refused before anything is built."""
    with pytest.raises(ValueError, match=f"--backbone-dtype {bdt} with --amp {amp}: autocast cannot mix"):
        main(args(data, tmp_path, "--amp", amp, "--backbone-dtype", bdt))
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("scaled", [False, True])
def test_optimizer_step_reports_nonfinite_gradients(scaled):
    """An inf gradient: without a GradScaler nothing updates and the step is "nonfinite"; with fp16's
    GradScaler the scaler skips the update as designed and the step is reported "amp_skipped"."""
    from stadapter_fast.train import optimizer_step

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(model(torch.randn(3, 2)).sum()).backward()
    model.weight.grad[0, 0] = float("inf")
    step, outcome = optimizer_step(opt, sched, scaler, 7)
    assert (step, outcome) == ((8, "amp_skipped") if scaled else (7, "nonfinite"))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())
    # a finite step updates
    scaler.scale(model(torch.randn(3, 2)).sum()).backward()
    assert optimizer_step(opt, sched, scaler, step)[1] == "ok"
    assert not torch.equal(model.weight, before[0])


def test_checkpoint_backbone_trains_identically(data, tmp_path):
    common = ["--loader", "pyav", "--epochs", "1", "--max-steps", "2", "--dropout", "0.5"]
    main(args(data, tmp_path / "plain", *common))
    main(args(data, tmp_path / "ckpt", *common, "--checkpoint-backbone"))
    a = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    with pytest.raises(ValueError, match="--checkpoint-backbone applies to --method st-adapter"):
        main(args(data, tmp_path / "m", "--method", "m-adapter", "--checkpoint-backbone", *common))


@pytest.mark.parametrize("method,backbone", [("st-adapter", "hf:tiny-dinov2-registers"), ("m-adapter", "hf:tiny-siglip")])
def test_hf_backbone_trains(data, tmp_path, method, backbone):
    """--backbone hf:<built-in config>: a transformers tower with random weights (no download)."""
    pytest.importorskip("transformers")
    extra = ["--positions", "pre_attn", "pre_mlp", "--checkpoint-backbone"] if method == "st-adapter" else []
    s = main(args(data, tmp_path, "--loader", "pyav", "--backbone", backbone, "--method", method, "--epochs", "1",
                  "--max-steps", "1", *extra))
    assert s["steps"] == 1
    meta = read_adapter_metadata(tmp_path / "adapters.safetensors")
    assert meta["backbone"]["kind"] == "hf" and meta["backbone"]["grid"] == [4, 4]
    assert meta["backbone"]["num_prefix_tokens"] == (3 if method == "st-adapter" else 0)


def _cut_short_faststart_mp4(path):
    """An H.264 MP4 with its index first (faststart), cut at half its bytes, as an interrupted
    download leaves one: the probe reads 16 frames off the index; decoding fails."""
    import av
    import numpy as np

    from stadapter_fast.data.synthetic import make_clip

    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for f in make_clip(0, np.random.default_rng(0), frames=16, size=32):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def _run_ddp(argv: list, timeout_s: float = 150) -> dict:
    """stadapter-train under DDP, 2 ranks (gloo, CPU), in a fresh pair of processes (one process
    running several process groups in turn hung in one CI run): ``{rank: (summary, trainable
    weights)}``. A rank that fails or hangs fails the test; a hung rank prints its stacks first."""
    import multiprocessing as mp
    import queue as queues
    import time

    from tests._ddp import ddp_rank

    ctx = mp.get_context("spawn")  # fork: a parent with threads running (DALI, OpenMP) may hang the child
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=ddp_rank, args=(r, port, argv, q, timeout_s - 10)) for r in (0, 1)]
    for p in procs:
        p.start()
    got, deadline = {}, time.monotonic() + timeout_s
    try:
        while len(got) < 2:
            try:
                r, summary, weights = q.get(timeout=1)
                got[r] = (summary, weights)
            except queues.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    pytest.fail(f"DDP ranks: exit codes {[p.exitcode for p in procs]}, results from {sorted(got)} "
                                "(a rank that neither ends nor fails waits in a collective)")
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    assert all(isinstance(got[r][0], dict) for r in (0, 1)), {r: got[r][0] for r in (0, 1)}
    return got


def test_ddp_two_ranks_train_in_step_when_one_rank_gets_only_a_bad_video(data, tmp_path, capfd):
    """stadapter-train under DDP (2 ranks, gloo, CPU), 1 clip per rank per step, the list holding 3
    MP4s that pass the probe and fail when decoded. At step 1 only rank 1's clip is bad: it takes the
    step on a zero-weighted stand-in (a rank that skipped it would leave the other waiting in the
    all-reduce for ever, or pair the wrong all-reduces). At step 4 both are: both skip it, no update.
    Both ranks end with the same weights, and rank 0 names the 3 videos, 2 of which rank 1 met."""
    import shutil

    lines = (data / "train.txt").read_text().splitlines()[:7]
    bad = [_cut_short_faststart_mp4(tmp_path / "cut0.mp4")]
    bad += [Path(shutil.copy(bad[0], tmp_path / f"cut{k}.mp4")) for k in (1, 2)]
    (tmp_path / "train.txt").write_text("\n".join(lines + [f"{b} 1" for b in bad]) + "\n")
    argv = args(data, tmp_path / "run", "--loader", "pyav", "--epochs", "1", "--batch-size", "1", "--seed", "51")
    argv[argv.index("--train-list") + 1] = str(tmp_path / "train.txt")
    from stadapter_fast.data import read_video_list
    from stadapter_fast.data.sampling import epoch_order

    items = read_video_list(tmp_path / "train.txt", root=data)
    shards = [[items[i].path in map(str, bad) for i in epoch_order(10, 51, 0, True, r, 2)] for r in (0, 1)]
    # the seed puts a bad video first on rank 1 only (a step with no loss before it on that rank; rank 0
    # must hear of it) and bad videos at step 4 on both ranks
    assert shards == [[False, False, False, True, False], [True, False, False, True, False]]
    got = _run_ddp(argv)
    (s0, w0), (s1, w1) = got[0], got[1]
    assert s0["steps"] == s1["steps"] == 4 and w0.keys() == w1.keys() and len(w0) > 0  # 5 steps, 1 skipped
    for n in w0:
        assert (w0[n] == w1[n]).all(), n
    rec = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rec[-1]["train_bad"] == 3 and rec[-1]["val_clips"] == 8
    out = capfd.readouterr().out
    assert "epoch 1 training: skipped 3 bad video(s): " in out and all(str(b) in out for b in bad)


def test_ddp_ranks_draw_their_own_dropout_masks_and_resume_exactly(data, tmp_path):
    """Under DDP each rank draws its own dropout masks (its own RNG stream once the model is built:
    with one seed for all, every rank's clip k got the same mask), and last.pt keeps every rank's RNG
    states, so a 2-rank run stopped part-way through its epoch and resumed ends bit-identical to an
    uninterrupted one (weights and the epoch's loss)."""
    common = ["--loader", "pyav", "--epochs", "1", "--batch-size", "4", "--seed", "8", "--dropout", "0.5"]
    straight = _run_ddp(args(data, tmp_path / "straight", *common))
    stopped = _run_ddp(args(data, tmp_path / "resumed", *common, "--max-steps", "1"))
    assert [stopped[r][0]["steps"] for r in (0, 1)] == [1, 1]
    resumed = _run_ddp(args(data, tmp_path / "resumed", *common, "--resume"))
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    ranks = a["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    assert a["step"] == b["step"] == 2 and a["metrics"][-1]["train_loss"] == b["metrics"][-1]["train_loss"]
    for (_, wa), (_, wb) in ((straight[r], resumed[r]) for r in (0, 1)):
        assert wa.keys() == wb.keys() and len(wa) > 0
        for n in wa:
            assert (wa[n] == wb[n]).all(), n
