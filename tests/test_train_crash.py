"""Killed at any moment, resumed, same result: ``stadapter-train`` is SIGKILLed mid-step, while writing
its checkpoint and during evaluation, resumed each time, and must end exactly where an uninterrupted
run ends (PyAV loader), never leave a partial or corrupt ``last.pt``, and keep ``metrics.jsonl``
free of repeated or missing epochs."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stadapter_fast.data.synthetic import make_synthetic

pytest.importorskip("av")
pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4

# Runs stadapter-train in a child process that SIGKILLs itself at the n-th pass through one point:
#   step: inside an optimizer update (after backward, before the weights change)
#   save: while writing last.pt (half of the temporary file written, before it replaces last.pt)
#   eval: at the start of an evaluation
KILLER = r"""
import os, signal, sys
import stadapter_fast.train as tr

point, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
seen = [0]

def hit():
    seen[0] += 1
    return seen[0] == nth

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def wrap(name):
    fn = getattr(tr, name)
    def wrapped(*a, **k):
        if hit():
            die()
        return fn(*a, **k)
    setattr(tr, name, wrapped)

if point in ("step", "eval"):
    wrap({"step": "optimizer_step", "eval": "evaluate"}[point])
elif point == "save":
    save = tr.atomic_save
    def wrapped_save(obj, path):
        if hit():
            tmp = path.with_name(path.name + ".tmp")
            tr.torch.save(obj, tmp)
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
            die()
        return save(obj, path)
    tr.atomic_save = wrapped_save
tr.main(argv)
"""

# (point, n-th pass in that process; 2 steps per epoch): a kill in epoch 2's training, one while
# saving epoch 2's checkpoint (after resuming from epoch 1's), one during epoch 3's evaluation (after
# epoch 2's completes again); then a run to the end.
KILLS = [("step", 3), ("save", 1), ("eval", 2)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), n_train=16, n_val=8, frames=16, size=32, seed=3)


def train_args(data, out):
    return ["--data-root", str(data), "--train-list", str(data / "train.txt"), "--val-list", str(data / "val.txt"),
            "--out", str(out), "--batch-size", "8", "--quiet", "--loader", "pyav", "--epochs", str(EPOCHS),
            "--dropout", "0.5", "--seed", "5"]


def run_child(argv, point=None, nth=0):
    cmd = [sys.executable, "-c", KILLER, point or "none", str(nth), *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def deterministic(metrics):
    """The metrics a rerun must reproduce (throughput varies run to run)."""
    return [{k: v for k, v in rec.items() if not k.startswith("clips_per_s")} for rec in metrics]


def check_resumable_state(out):
    """What --resume reads is whole: last.pt loads safely (if present); metrics.jsonl matches it."""
    ckpt = out / "last.pt"
    if not ckpt.exists():
        assert not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text() == ""
        return 0
    ck = torch.load(ckpt, weights_only=True)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in lines]
    assert epochs == list(range(1, len(epochs) + 1)), f"metrics.jsonl epochs {epochs}"
    assert len(lines) in (len(ck["metrics"]), len(ck["metrics"]) - 1)  # a kill between the two writes
    return ck["epoch"] + 1


def test_sigkill_at_any_point_then_resume_equals_uninterrupted(data, tmp_path):
    straight = tmp_path / "straight"
    proc = run_child(train_args(data, straight))
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "killed"
    resume = []
    survived = []
    for point, nth in KILLS:
        proc = run_child(train_args(data, out) + resume, point, nth)
        assert proc.returncode == -signal.SIGKILL, f"{point}: not killed (rc {proc.returncode}): {proc.stderr[-2000:]}"
        survived.append((point, check_resumable_state(out)))
        resume = ["--resume"] if (out / "last.pt").exists() else []
    proc = run_child(train_args(data, out) + resume)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the kills landed where planned (epochs completed and checkpointed when each struck)
    assert survived == [("step", 1), ("save", 1), ("eval", 2)]

    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS - 1 and a["step"] == b["step"]
    assert a["trainable"].keys() == b["trainable"].keys()
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    assert deterministic(a["metrics"]) == deterministic(b["metrics"])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert deterministic(lines) == deterministic(a["metrics"])
    from safetensors.torch import load_file

    sa, sb = load_file(straight / "adapters.safetensors"), load_file(out / "adapters.safetensors")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
