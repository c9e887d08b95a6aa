"""``stadapter-train`` / ``python -m stadapter_fast.train``: fine-tune an image ViT with ST-Adapters on a
video classification dataset.

With no arguments it trains a small ViT with FastSTAdapters on the embedded synthetic dataset (created
under ./data/synthetic if absent). Real runs name a backbone and a dataset, e.g.::

    stadapter-train --backbone open_clip:ViT-B-16 --pretrained openai --image-size 224 \\
        --train-list k400/train.txt --val-list k400/val.txt --data-root k400 --num-classes 400 \\
        --frames 8 --stride 16 --batch-size 64 --epochs 12 --lr 2.5e-4 --amp fp16 --backbone-dtype fp16

Multi-GPU: ``torchrun --nproc_per_node=N -m stadapter_fast.train ...`` (DDP; data sharded per rank).
Outputs in ``--out``: ``metrics.jsonl``, ``summary.json``, ``curves.png``, ``last.pt`` (full
checkpoint for ``--resume``) and ``adapters.safetensors`` (adapter-only export).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from csrc_triton.activations import ACTIVATIONS

from ._backend import PATHS as KERNEL_PATHS
from .checks import int_at_least

DEFAULT_DATA = "data/synthetic"


#: --backbone-kwargs default for timm: a 2-block ViT for the synthetic data
_TINY_TIMM_KWARGS = '{"depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8}'


_POSITIVE, _NON_NEGATIVE = int_at_least(1), int_at_least(0)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an argument's default unless it is None or the help text already says it."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stadapter-train", description=__doc__.split("\n\n")[0],
                                 formatter_class=_HelpFormatter)
    d = ap.add_argument_group("data")
    d.add_argument("--data-root", default=DEFAULT_DATA, help="root of the list files' relative paths")
    d.add_argument("--train-list", default=None, help="'path label' lines, or a folder-per-class directory; default: "
                   "DATA_ROOT/train.txt (the synthetic dataset is created there if DATA_ROOT is the default and missing)")
    d.add_argument("--val-list", default=None, help="list file or folder-per-class directory; default: DATA_ROOT/val.txt")
    d.add_argument("--num-classes", type=_POSITIVE, default=None,
                   help="default: the number of class folders (a folder-per-class --train-list), of names in "
                        "DATA_ROOT/classes.txt, or the largest training label + 1")
    d.add_argument("--loader", choices=["auto", "dali", "pyav"], default="auto",
                   help="auto: DALI if installed, else the PyAV DataLoader")
    d.add_argument("--dali-decoder", choices=["auto", "gpu", "cpu"], default="auto",
                   help="where the DALI loader decodes on a GPU run: gpu (NVDEC), cpu (DALI's CPU decoder for "
                        "VP8/VP9/MJPEG, PyAV for the rest; augmentation still on the GPU), auto: gpu if the "
                        "driver's libnvcuvid loads")
    d.add_argument("--workers", type=_NON_NEGATIVE, default=0,
                   help="DataLoader workers / DALI threads, and the processes that decode with PyAV when "
                        "DALI's decoder cannot (0: main process / 1 thread)")
    d.add_argument("--on-bad-video", choices=["skip", "fail"], default="skip",
                   help="skip (count and report at epoch end) or fail on the first unreadable/short video, "
                        "whether the probe finds it or decoding does")
    c = ap.add_argument_group("clips: sampling and augmentation")
    c.add_argument("--frames", type=_POSITIVE, default=8, help="frames per clip (T)")
    c.add_argument("--sampling", choices=["stride", "segments"], default="stride",
                   help="stride: T frames STRIDE apart (Kinetics); segments: one per uniform segment (SSv2)")
    c.add_argument("--stride", type=_POSITIVE, default=2, help="frame step of --sampling stride")
    c.add_argument("--image-size", type=_POSITIVE, default=32, help="crop size (pixels, square)")
    c.add_argument("--no-flip", action="store_true", help="no horizontal flips (SSv2-like, direction-sensitive data)")
    c.add_argument("--test-temporal-views", type=_POSITIVE, default=1,
                   help="evenly spaced clips per video in validation; the softmax is averaged over all views")
    c.add_argument("--test-spatial-views", type=_POSITIVE, default=1,
                   help="crops along the long side per clip in validation")
    m = ap.add_argument_group("model")
    m.add_argument("--backbone", default="timm:vit_tiny_patch16_224",
                   help="timm:<name>, open_clip:<name> or hf:<model id or built-in config, e.g. tiny-vit>")
    m.add_argument("--backbone-kwargs", default=None,
                   help="JSON of constructor overrides ('{}' for the stock architecture); hf: config fields, plus "
                        "'config' (a dict with model_type) for a model id offline. Default: the small test ViT "
                        f"{_TINY_TIMM_KWARGS} for timm, '{{}}' otherwise")
    m.add_argument("--pretrained", default=None,
                   help="timm, hf: 'true'; open_clip: a tag such as 'openai' (downloads)")
    m.add_argument("--method", choices=["st-adapter", "m-adapter", "frame-only"], default="st-adapter",
                   help="st-adapter: adapters inside the blocks; m-adapter: a multi-level side branch (no "
                        "backprop through the backbone); frame-only: frozen backbone, frame-averaged baseline")
    m.add_argument("--dropout", type=float, default=0.5, help="before the classifier head")
    s = ap.add_argument_group("adapters (--method st-adapter; --kernel-size, --act and --adapter-impl also m-adapter)")
    s.add_argument("--adapter-channels", type=int, default=32, help="bottleneck width Ca (the release: 384)")
    s.add_argument("--kernel-size", type=int, nargs=3, default=[3, 1, 1], help="depthwise conv kernel (kt kh kw)")
    s.add_argument("--positions", nargs="+", default=["pre_mlp"], choices=["pre_attn", "pre_mlp"])
    s.add_argument("--layers", default="all", help="'all', k (last k blocks) or comma-separated indices")
    s.add_argument("--act", default=None, choices=[a for a in ACTIVATIONS if a != "none"],
                   help="activation after the conv; default: none (the release); m-adapter: gelu")
    s.add_argument("--adapter-impl", choices=["fast", "reference"], default="fast")
    ma = ap.add_argument_group("M-Adapter branch (--method m-adapter)")
    ma.add_argument("--m-levels", default="1", help="M-Adapter levels: k (every k-th block, ending at the last; "
                    "3 for a 12-block ViT) or comma-separated block indices")
    ma.add_argument("--m-width", type=int, default=32, help="M-Adapter branch width (e.g. 384 for ViT-B)")
    ma.add_argument("--m-fusion", choices=["add", "gate"], default="add")
    e = ap.add_argument_group("execution (same results, other speed/memory)")
    e.add_argument("--kernel-path", choices=KERNEL_PATHS, default="auto",
                   help="fast adapters' kernel path (FastSTAdapter's path=); checkpoints are unaffected")
    # the flag's former name, kept so existing command lines run; hidden from --help
    e.add_argument("--adapter-path", dest="kernel_path", choices=KERNEL_PATHS, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    e.add_argument("--no-recompute", action="store_true",
                   help="one-pass path: keep the conv's pre-activation for backward instead of recomputing it")
    e.add_argument("--checkpoint-backbone", action="store_true",
                   help="activation checkpointing of the backbone blocks that hold adapters (--method st-adapter): "
                        "less memory, one more forward of those blocks")
    o = ap.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=12)
    o.add_argument("--batch-size", type=_POSITIVE, default=16, help="per process")
    o.add_argument("--grad-accum", type=_POSITIVE, default=1, help="micro-batches per optimizer step")
    o.add_argument("--lr", type=float, default=3e-3, help="peak lr (the release: 1e-3 x total batch / 256)")
    o.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's; none on biases and 1-D parameters")
    o.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up, then a per-step cosine")
    o.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="fp16 uses a GradScaler")
    o.add_argument("--backbone-dtype", choices=["none", "fp16", "bf16"], default="none",
                   help="cast the frozen backbone (the release: fp16, with --amp fp16)")
    o.add_argument("--max-steps", type=_POSITIVE, default=None,
                   help="stop after this many optimizer steps; --resume goes on from there, mid-epoch too")
    r = ap.add_argument_group("run and checkpoints")
    r.add_argument("--out", default="runs/default", help="output folder (metrics, summary, last.pt, adapters)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    r.add_argument("--seed", type=_NON_NEGATIVE, default=0, help="model init, clip order, sampling and augmentation")
    r.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    r.add_argument("--val-every", type=_POSITIVE, default=1, help="validate every N epochs (and after the last)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--skip-nonfinite", action="store_true",
                   help="skip (and count in metrics.jsonl) a step whose loss or gradient is inf/NaN; default: stop "
                        "with an error naming the step and the last good checkpoint")
    return ap


_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A DDP rank's own seed for what it draws after the model is built (dropout masks): each rank
    draws other masks for its own clips, as one process over the whole batch would."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _dist():
    """(rank, world_size, local_rank); initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        return torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def build_model(args, num_classes: int, device: torch.device):
    from . import (STAdapterConfig, VideoClassifier, add_st_adapters, create_backbone, set_adapter_path,
                   set_backbone_checkpointing)

    timm_backbone = args.backbone.startswith("timm:")
    kwargs = json.loads(args.backbone_kwargs if args.backbone_kwargs is not None
                        else _TINY_TIMM_KWARGS if timm_backbone else "{}")
    if timm_backbone:
        kwargs.setdefault("img_size", args.image_size)
    elif args.backbone.startswith("hf:"):
        kwargs.setdefault("input_size", args.image_size)  # position embeddings interpolated if not the config's
    pretrained = args.pretrained
    if isinstance(pretrained, str) and pretrained.lower() in ("true", "1", "yes"):
        pretrained = True
    backbone = create_backbone(args.backbone, pretrained=pretrained or False, **kwargs)
    bdt = _DTYPES[args.backbone_dtype]
    if args.checkpoint_backbone and args.method != "st-adapter":
        raise ValueError(f"--checkpoint-backbone applies to --method st-adapter (the backbone blocks that hold "
                         f"adapters), got --method {args.method}")
    if args.method == "m-adapter":
        from .madapter import MAdapterConfig, MAdapterVideoClassifier

        levels = int(args.m_levels) if "," not in args.m_levels else [int(i) for i in args.m_levels.split(",")]
        cfg = MAdapterConfig(levels=levels, width=args.m_width, kernel_size=tuple(args.kernel_size),
                             act=args.act or "gelu", fusion=args.m_fusion, impl=args.adapter_impl, backbone_dtype=bdt)
        clf = MAdapterVideoClassifier(backbone, cfg, num_classes, num_frames=args.frames, dropout=args.dropout)
        set_adapter_path(clf, args.kernel_path, recompute=not args.no_recompute)
        return clf.to(device)
    if args.method == "frame-only":
        backbone.requires_grad_(False)
        if bdt is not None:
            backbone.to(bdt)
    else:
        layers = args.layers
        if layers != "all":
            layers = int(layers) if "," not in layers else [int(i) for i in layers.split(",")]
        cfg = STAdapterConfig(adapter_channels=args.adapter_channels, kernel_size=tuple(args.kernel_size),
                              act=args.act, positions=tuple(args.positions), layers=layers,
                              impl=args.adapter_impl, path=args.kernel_path, recompute=not args.no_recompute,
                              backbone_dtype=bdt)
        add_st_adapters(backbone, cfg, num_frames=args.frames)
        if args.checkpoint_backbone:
            set_backbone_checkpointing(backbone, True)
    return VideoClassifier(backbone, num_classes, num_frames=args.frames, dropout=args.dropout).to(device)


def param_groups(model, weight_decay: float):
    """AdamW groups as the release: no weight decay on biases and 1-D parameters."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def optimization(args, model, device: torch.device, steps_per_epoch: int):
    """``(optimizer, schedule, scaler)`` of a run: AdamW over the trainable parameters (the release's
    groups), the per-step cosine schedule with warm-up, and the GradScaler (enabled for fp16)."""
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(steps_per_epoch * args.epochs, int(args.warmup_epochs * steps_per_epoch)))
    return opt, sched, torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")


def forward_loss(model, clips, labels, amp_dtype, grad_accum: int = 1):
    """A training micro-batch's loss (cross-entropy under the run's autocast, divided by the
    accumulation count), ready for ``scaler.scale(loss).backward()``."""
    with torch.autocast(clips.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return F.cross_entropy(model(clips), labels) / grad_accum


def optimizer_step(opt, sched, scaler, step: int) -> tuple[int, str]:
    """One update from the accumulated gradients: ``(new step, outcome)``, outcome "ok"; "nonfinite"
    (a gradient holds inf/NaN: nothing updated, grads cleared); or "amp_skipped" (fp16's GradScaler
    found inf/NaN in the scaled grads and skipped the update, as it is built to; the step still counts)."""
    if not scaler.is_enabled():
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            opt.zero_grad(set_to_none=True)
            return step, "nonfinite"
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    sched.step()
    return step + 1, ("amp_skipped" if scale is not None and scaler.get_scale() < scale else "ok")


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_metrics(path: Path, metrics: list) -> None:
    """``metrics.jsonl`` rewritten whole and atomically from the records ``last.pt`` holds, so after a
    crash and ``--resume`` no epoch is missing or repeated."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(rec) + "\n" for rec in metrics))
    os.replace(tmp, path)


def _rng_state() -> dict:
    """Every RNG state as tensors and plain types, so ``last.pt`` loads with ``weights_only=True``."""
    _, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
            "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else None}


def _every_rank_rng_state(world: int) -> list:
    """:func:`_rng_state` of every rank, by rank (under DDP each rank draws its own)."""
    if world == 1:
        return [_rng_state()]
    every = [None] * world
    torch.distributed.all_gather_object(every, _rng_state())
    return every


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"].cpu())
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])


def _rank_rng(ck: dict, rank: int, world: int) -> dict:
    """``rank``'s RNG states in ``last.pt``: its own from ``rng_ranks`` (a DDP run's, by rank) when the
    file has them for ``world`` ranks; else ``rng`` (rank 0's), which :func:`resume` then reseeds
    other ranks from."""
    ranks = ck.get("rng_ranks")
    return ranks[rank] if isinstance(ranks, list) and len(ranks) == world else ck["rng"]


_CHECKPOINT_KEYS = {"trainable": dict, "opt": dict, "sched": dict, "scaler": dict, "epoch": int, "step": int,
                    "metrics": list, "rng": dict}


def _data_rng_problem(saved, epoch: int, data_seed: Optional[int]) -> Optional[str]:
    """What is wrong with the loader's RNG state in ``last.pt`` (absent in older files), or None. Each
    epoch's clip order, sampling and augmentation are pure functions of (seed, epoch, index), so the
    seed is the state to match; the epoch follows the checkpoint's."""
    if saved is None:
        return None
    if not isinstance(saved, dict) or not all(type(saved.get(k)) is int for k in ("seed", "epoch")):
        return f"entry 'data_rng' is {saved!r}, expected {{'seed': int, 'epoch': int}}"
    if saved["epoch"] != epoch:
        return f"entry 'data_rng' is for epoch index {saved['epoch']}, the checkpoint for epoch index {epoch}"
    if data_seed is not None and saved["seed"] != data_seed:
        return (f"--seed: the run in it sampled and augmented clips with --seed {saved['seed']}, got --seed "
                f"{data_seed}; resume with --seed {saved['seed']} to continue it exactly")
    return None


#: flags that make a run what it is: a resumed run must keep them. Some would be dropped without a
#: word (--lr and --weight-decay: the optimizer and schedule state in last.pt hold the run's), the
#: others would continue another model or recipe than the weights were trained in. The rest may
#: change on --resume: paths, loaders and workers, memory options, evaluation and stopping, and the
#: schedule's length (--epochs, --warmup-epochs: a longer run continues on the new schedule).
RUN_FLAGS = ("method", "backbone", "pretrained", "backbone_kwargs", "backbone_dtype", "amp", "act", "kernel_size",
             "adapter_channels", "layers", "positions", "dropout", "num_classes", "m_width", "m_levels", "m_fusion",
             "frames", "sampling", "stride", "image_size", "no_flip", "batch_size", "grad_accum", "lr", "weight_decay")


def _run_args_problem(saved, run_args: Optional[dict]) -> Optional[str]:
    """The first of :data:`RUN_FLAGS` whose value in ``run_args`` (the resumed run's, as saved) is not
    the one in ``saved`` (``last.pt``'s), or None."""
    if run_args is None or not isinstance(saved, dict):
        return None
    for k in RUN_FLAGS:
        if k in saved and saved[k] != run_args.get(k):
            flag = "--" + k.replace("_", "-")
            return (f"{flag}: the run in it was trained with {flag} {saved[k]!r}, got {run_args.get(k)!r}; resume "
                    f"with the run's value, or start a new run in another --out")
    return None


_PARTIAL_KEYS = {"batch": int, "losses": list, "clips": int, "bad": list, "counts": dict, "time_s": float,
                 "world": int, "rng": list}


def _partial_problem(partial, batches: Optional[int], world: Optional[int]) -> Optional[str]:
    """What is wrong with the record of an epoch stopped part-way (``last.pt``'s ``partial``, absent
    when the last epoch ended) for a loader of ``batches`` per epoch and ``world`` ranks, or None."""
    if partial is None:
        return None
    if not isinstance(partial, dict) or any(type(partial.get(k)) is not t for k, t in _PARTIAL_KEYS.items()):
        return f"entry 'partial' is not the record of a stopped epoch ({{{', '.join(_PARTIAL_KEYS)}}})"
    if world is not None and partial["world"] != world:
        return (f"it stopped part-way through an epoch sharded over {partial['world']} rank(s), got {world}; "
                f"resume on {partial['world']} rank(s) (another count would shard the epoch's clips anew)")
    if len(partial["rng"]) != partial["world"] or not all(isinstance(r, dict) for r in partial["rng"]):
        return f"entry 'partial' holds {len(partial['rng'])} RNG state(s) for {partial['world']} rank(s)"
    if batches is not None and not 0 < partial["batch"] < batches:
        return (f"it stopped after batch {partial['batch']} of an epoch, expected 1..{batches - 1} (the "
                f"{batches} batches an epoch has here)")
    return None


def _checkpoint_problem(ck, model: torch.nn.Module, opt, data_seed: Optional[int] = None,
                        run_args: Optional[dict] = None, batches: Optional[int] = None,
                        world: Optional[int] = None) -> Optional[str]:
    """What makes ``ck`` unusable for ``model``/``opt`` (and a loader seeded with ``data_seed``, of
    ``batches`` per epoch over ``world`` ranks, and a run of ``run_args``), or None."""
    if not isinstance(ck, dict):
        return f"holds a {type(ck).__name__}, not a checkpoint dict"
    for key, kind in _CHECKPOINT_KEYS.items():
        if not isinstance(ck.get(key), kind):
            return f"entry {key!r} is {type(ck.get(key)).__name__}, expected {kind.__name__}"
    problem = (_data_rng_problem(ck.get("data_rng"), ck["epoch"], data_seed)
               or _run_args_problem(ck.get("args"), run_args) or _partial_problem(ck.get("partial"), batches, world))
    if problem:
        return problem
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = ck["trainable"]
    missing, unexpected = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
    if missing or unexpected:
        return f"trainable tensors do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
    for n, t in saved.items():
        if not isinstance(t, torch.Tensor) or t.shape != params[n].shape or t.dtype != params[n].dtype:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            return f"tensor {n} is {got}, the model expects {tuple(params[n].shape)} {params[n].dtype}"
        if not torch.isfinite(t).all():
            return f"tensor {n} holds non-finite values"
    groups = ck["opt"].get("param_groups")
    if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [len(g["params"]) for g in opt.param_groups]:
        return "optimizer state does not match the model's parameter groups"
    return None


def load_checkpoint(path: Path, model: torch.nn.Module, opt, sched, scaler,
                    data_seed: Optional[int] = None, run_args: Optional[dict] = None,
                    batches: Optional[int] = None, world: Optional[int] = None, rank: int = 0) -> dict:
    """Load ``last.pt`` for ``--resume`` on ``rank`` (its own RNG states, where the file has them); ``data_seed`` (the loaders' ``--seed``) must be the one the
    checkpointed run sampled its clips with, and ``run_args`` (:func:`plain_args` of the resumed run)
    must hold its :data:`RUN_FLAGS`; an epoch it stopped part-way must have been of ``batches`` per
    epoch over ``world`` ranks. ``weights_only=True``: a hostile file cannot run code.
    Every check comes before the first change, so a damaged file raises a ValueError naming it and
    the problem, and changes nothing."""
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    try:
        # to CPU: the RNG states must stay CPU byte tensors; load_state_dict moves the rest to the params
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, tampered, not a torch file, or objects beyond tensors/plain types
        raise ValueError(f"--resume: {path} cannot be read as a training checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). A last.pt that holds "
                         f"objects beyond tensors and plain types (e.g. numpy RNG state, as older versions wrote) "
                         f"is refused: start a new run") from e
    problem = _checkpoint_problem(ck, model, opt, data_seed, run_args, batches, world)
    if problem:
        raise ValueError(f"--resume: {path}: {problem}; nothing was loaded")
    params = dict(model.named_parameters())
    try:
        opt_state = opt.state_dict()
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        scaler.load_state_dict(ck["scaler"])
        _set_rng_state(_rank_rng(ck, rank, world or 1))
    except Exception as e:  # noqa: BLE001
        opt.load_state_dict(opt_state)
        raise ValueError(f"--resume: {path}: optimizer, scheduler, scaler or RNG state cannot be restored "
                         f"({type(e).__name__}: {e}); nothing was loaded") from e
    with torch.no_grad():
        for n, t in ck["trainable"].items():
            params[n].copy_(t)
    return ck


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype) -> dict:
    model.eval()
    correct1 = correct5 = n = 0
    bad = []
    for clips, labels, bad_paths in loader:
        bad += bad_paths
        if clips is None:
            continue
        clips, labels = clips.to(device, non_blocking=True), labels.to(device)
        if clips.dim() == 6:  # [B, V, 3, T, H, W]: multi-view, average the softmax over views
            B, V = clips.shape[:2]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(clips.flatten(0, 1)).float().softmax(-1).view(B, V, -1).mean(1)
        else:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(clips).float()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(-1).sum().item()
        n += len(labels)
    model.train()
    counts = torch.tensor([correct1, correct5, n], dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)  # each rank saw its shard: report the whole val set
    correct1, correct5, n = (int(v) for v in counts.tolist())
    bad = report_bad_videos("validation", bad, loader.dropped)
    nbad = len(bad)
    return {"val_top1": correct1 / max(n, 1), "val_top5": correct5 / max(n, 1), "val_clips": n, "val_bad": nbad}


def _plot(metrics: list, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ep = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(ep, [m["train_loss"] for m in metrics], marker="o")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("train loss")
    val = [(m["epoch"], m["val_top1"]) for m in metrics if "val_top1" in m]
    if val:
        ax[1].plot(*zip(*val), marker="o")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("val top-1")
    ax[1].set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _items(spec: Path, root: Path, classes=None):
    """(items, class names or None) from a list file or a folder-per-class directory (labelled by
    ``classes`` when given)."""
    from .data import read_video_list
    from .data.lists import read_folder_per_class

    if spec.is_dir():
        return read_folder_per_class(spec, classes)
    return read_video_list(spec, root), None


def init_process(args) -> tuple[int, int, int, torch.device]:
    """(rank, world, local_rank, device): torch.distributed under torchrun, the device, and autocast for
    a half-precision backbone (the release's recipe: an fp16 backbone, fp32 adapters, autocast)."""
    if args.backbone_dtype != "none" and args.amp == "none":
        args.amp = args.backbone_dtype
    if args.backbone_dtype not in ("none", args.amp):
        raise ValueError(f"--backbone-dtype {args.backbone_dtype} with --amp {args.amp}: autocast cannot mix fp16 and "
                         f"bf16 (torch fails in the backbone's first concatenation); use --backbone-dtype {args.amp} "
                         f"or none, or --amp {args.backbone_dtype}")
    rank, world, local_rank = _dist()
    device = torch.device(args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if device.index is None:  # "--device cuda": this process's GPU (torch.cuda.set_device needs an index)
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return rank, world, local_rank, device


def load_datasets(args, rank: int, world: int):
    """(train items, val items, number of classes). The default synthetic dataset is written first if
    ``--data-root`` is the default and holds none."""
    from .data import read_class_names

    root = Path(args.data_root)
    if args.train_list is None and args.data_root == DEFAULT_DATA:
        from .data.synthetic import ensure_synthetic

        if rank == 0:
            ensure_synthetic(root)
        if world > 1:
            torch.distributed.barrier()
    train_spec, val_spec = Path(args.train_list or root / "train.txt"), Path(args.val_list or root / "val.txt")
    train_items, classes = _items(train_spec, root)
    if classes is None:  # a list file: the names, if any, in DATA_ROOT/classes.txt
        classes = read_class_names(root / "classes.txt")
    if val_spec.is_dir() and classes is None:
        raise ValueError(f"--val-list {val_spec} is a folder per class, but the training labels have no class "
                         f"names to match its folders to: use a folder-per-class --train-list, or put the names, "
                         f"one per line in label order, in {root / 'classes.txt'}")
    val_items, _ = _items(val_spec, root, classes)
    if args.num_classes:
        num_classes, source = args.num_classes, "--num-classes"
    elif classes:
        num_classes = len(classes)
        source = f"the class folders of {train_spec}" if train_spec.is_dir() else f"{root / 'classes.txt'}"
    else:
        num_classes, source = max(i.label for i in train_items) + 1, f"the largest label in {train_spec}, plus 1"
    for spec, items in ((train_spec, train_items), (val_spec, val_items)):
        over = [i for i in items if i.label >= num_classes]
        if over:
            raise ValueError(f"{spec}: label {over[0].label} of {over[0].path} (and {len(over) - 1} more) is out of "
                             f"range for {num_classes} classes (from {source}); labels must be in [0, {num_classes})")
    return train_items, val_items, num_classes


@dataclass
class Trainer:
    """What one run trains with, and where it stands: the next epoch, the optimizer step count, the
    metrics so far and the last checkpoint written (named when a non-finite step stops the run)."""
    args: argparse.Namespace
    model: torch.nn.Module
    ddp_model: torch.nn.Module
    train_loader: object
    val_loader: object
    loader_kind: str
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    out: Path
    rank: int = 0
    world: int = 1
    start_epoch: int = 0
    #: an epoch that a stopped run (``--max-steps``) left part-way: what its batches before the stop
    #: gave (:func:`_partial_record`), continued from there by the first epoch trained; else None
    partial: Optional[dict] = None
    step: int = 0
    metrics: list = field(default_factory=list)
    last_good: str = "none written yet"
    counts: dict = field(default_factory=dict)

    @property
    def amp_dtype(self):
        return _DTYPES[self.args.amp]

    @property
    def ckpt_path(self) -> Path:
        return self.out / "last.pt"

    def max_steps_reached(self) -> bool:
        return self.args.max_steps is not None and self.step >= self.args.max_steps


def build_trainer(args, train_items, val_items, num_classes: int, rank: int, world: int, local_rank: int,
                  device: torch.device) -> Trainer:
    """Seeded model (DDP-wrapped under torchrun), loaders, and the optimization (``optimization``)."""
    from .data.loaders import make_loaders

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(args.seed)
    model = build_model(args, num_classes, device)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
        _seed_everything(_rank_seed(args.seed, rank))  # the same model on every rank, then its own draws
    train_loader, val_loader, loader_kind = make_loaders(args, train_items, val_items, device, rank, world)
    if len(train_loader) == 0:  # training drops a last partial batch: this would train nothing and "succeed"
        raise ValueError(f"--batch-size {args.batch_size}: the {len(train_loader.pool)} usable training videos over "
                         f"{world} rank(s) fill no full batch; use a --batch-size of at most "
                         f"{max(1, len(train_loader.pool) // world)}")
    steps_per_epoch = math.ceil(len(train_loader) / args.grad_accum)
    opt, sched, scaler = optimization(args, model, device, steps_per_epoch)
    return Trainer(args, model, ddp_model, train_loader, val_loader, loader_kind, opt, sched, scaler, device, out,
                   rank, world)


def resume(tr: Trainer) -> None:
    """Continue from ``last.pt``: weights, optimizer, schedule, scaler, RNG states, metrics."""
    ck = load_checkpoint(tr.ckpt_path, tr.model, tr.opt, tr.sched, tr.scaler,
                         data_seed=tr.train_loader.rng_state()["seed"], run_args=plain_args(tr.args),
                         batches=len(tr.train_loader), world=tr.world, rank=tr.rank)
    ranks = ck.get("rng_ranks")
    if tr.world > 1 and not (isinstance(ranks, list) and len(ranks) == tr.world):
        # written by one process or another world size: a stream of this rank's own from here
        _seed_everything(_rank_seed(tr.args.seed, tr.rank, ck["step"]))
    tr.partial = ck.get("partial")
    tr.start_epoch, tr.step, tr.metrics = ck["epoch"] + (tr.partial is None), ck["step"], ck["metrics"]
    tr.last_good = f"{tr.ckpt_path} ({_where(ck['epoch'], tr.step, tr.partial)})"
    if tr.rank == 0:
        _write_metrics(tr.out / "metrics.jsonl", tr.metrics)


def _where(epoch: int, step: int, partial: Optional[dict]) -> str:
    """Where a checkpoint stands, in words (epoch: its index)."""
    if partial is None:
        return f"after epoch {epoch + 1}, step {step}"
    return f"in epoch {epoch + 1} after its batch {partial['batch']}, step {step}"


def _nonfinite(tr: Trainer, what: str, epoch: int) -> None:
    """Stop with an error naming the step and the last good checkpoint, or (``--skip-nonfinite``) count it."""
    if not tr.args.skip_nonfinite:
        raise FloatingPointError(f"{what} at step {tr.step + 1} (epoch {epoch + 1}); the last good checkpoint: "
                                 f"{tr.last_good}. Lower --lr, use --amp bf16, or pass --skip-nonfinite "
                                 f"to skip such steps and count them")
    tr.counts["nonfinite_skipped"] += 1


def _update(tr: Trainer, epoch: int) -> None:
    tr.step, outcome = optimizer_step(tr.opt, tr.sched, tr.scaler, tr.step)
    if outcome == "nonfinite":
        _nonfinite(tr, "non-finite gradient", epoch)
    elif outcome == "amp_skipped":
        tr.counts["amp_skipped_steps"] += 1


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_paths(paths: list) -> list:
    """Every rank's ``paths`` under DDP (each rank reads its own shard), rank by rank; else a copy."""
    if not _distributed():
        return list(paths)
    every = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, list(paths))
    return [p for rank_paths in every for p in rank_paths]


def report_bad_videos(what: str, paths: list, dropped: list = (), gathered: bool = False) -> list:
    """Every rank's bad video paths of an epoch's ``what`` ("training", "validation"), gathered under
    DDP (unless ``gathered`` already), then the loader's ``dropped`` (the videos its probe left out
    of every epoch, the same list on every rank), and printed by rank 0, the first five named."""
    dist = _distributed()
    paths = (list(paths) if gathered else gather_paths(paths)) + list(dropped)
    if paths and (not dist or torch.distributed.get_rank() == 0):
        print(f"{what}: skipped {len(paths)} bad video(s): " + ", ".join(paths[:5])
              + (" ..." if len(paths) > 5 else ""), flush=True)
    return paths


def _stand_in_batch(args, device: torch.device) -> tuple:
    """A one-clip batch of zeros: what a DDP rank whose whole batch was bad steps on, with its loss
    weighted 0, so that it still takes part in the step's all-reduces (the loss check's, the
    gradients') and no rank waits forever. The step's gradient is then the other ranks' sum over
    the world size."""
    T, S = args.frames, args.image_size
    return torch.zeros(1, 3, T, S, S, device=device), torch.zeros(1, dtype=torch.long, device=device)


def _finite_everywhere(tr: Trainer, loss_value: float, has_data: bool = True) -> tuple[bool, bool]:
    """``(the loss is finite on every rank, some rank has clips)``, in one all-reduce under DDP: all
    ranks must skip (or stop) together, or the gradient all-reduce hangs. A step where no rank has
    clips (every rank on a stand-in) is skipped by all, as one process skips an empty batch."""
    finite = math.isfinite(loss_value)
    if tr.world > 1:
        flag = torch.tensor([float(finite), -float(has_data)], device=tr.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite, has_data = bool(flag[0].item()), bool(flag[1].item() < 0)
    return finite, has_data


def steady_clips_per_s(stamps: list, wave: int = 1) -> Optional[float]:
    """Clips/s over the second half of an epoch, from ``(time, clips so far)`` taken after each step:
    past the epoch's start, where a DataLoader's workers each fill a whole first batch (and DALI its
    queue) before the loop runs, which a short epoch pays in a large share. ``wave``: batches that
    arrive together (a DataLoader's workers each build a whole batch, round-robin, so a decode-bound
    loader delivers them in bursts of ``workers``; the loaders' ``batches_per_wave``). The window runs
    over whole waves, from the end of wave ``waves // 2`` (at least the first) to the end of the last
    whole one, so that a burst is never half inside it. None under two whole waves or 4 steps."""
    wave = max(1, wave)
    waves = len(stamps) // wave
    first = max(1, waves // 2)
    if len(stamps) < 4 or waves <= first:
        return None
    (t0, n0), (t1, n1) = stamps[first * wave - 1], stamps[waves * wave - 1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else None


@dataclass
class EpochStats:
    time_s: float
    clips: int  # all ranks
    #: stopped at --max-steps before the epoch's last batch: what a resumed run continues from
    #: (:func:`_partial_record`); None for a whole epoch
    partial: Optional[dict] = None


def _partial_record(batch: int, losses: list, clips: int, bad: list, counts: dict, time_s: float, world: int,
                    rng: list) -> dict:
    """What an epoch stopped after its ``batch``-th batch (per rank) gave so far, as ``last.pt`` holds
    it, so that a resumed run ends the epoch as an uninterrupted one: its loss and clip counts, its bad
    videos (every rank's), the world size (the batches are this sharding's) and every rank's RNG
    states at the stop (before validation draws from them)."""
    return {"batch": batch, "losses": [float(v) for v in losses], "clips": clips, "bad": list(bad),
            "counts": dict(counts), "time_s": float(time_s), "world": world, "rng": rng}


def train_epoch(tr: Trainer, epoch: int) -> tuple[dict, EpochStats]:
    """One epoch of training, stopping early at ``--max-steps``: the epoch's metrics record (without
    validation) and its timing. An epoch a stopped run left part-way (``tr.partial``) goes on from
    the batch after the last one it trained on."""
    from tqdm.auto import tqdm

    args, device = tr.args, tr.device
    carried, tr.partial = tr.partial, None
    first = carried["batch"] if carried else 0
    tr.train_loader.set_epoch(epoch, first_batch=first)
    tr.model.train()
    losses, bad, n_clips = [], [], 0
    if carried:
        losses, n_clips = list(carried["losses"]), carried["clips"]
        bad = list(carried["bad"]) if tr.rank == 0 else []  # every rank's, gathered at the stop: held once
    t0 = time.time() - (carried["time_s"] if carried else 0.0)
    pending, batch, stamps = 0, first, []
    tr.counts = dict(carried["counts"]) if carried else {"nonfinite_skipped": 0, "amp_skipped_steps": 0}
    bar = tqdm(tr.train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.quiet or tr.rank != 0,
               leave=False, initial=first, total=len(tr.train_loader))
    for clips, labels, bad_paths in bar:
        if carried and batch == first:
            # the RNG states at the stop, now that the loader has drawn its seeds as it did at the start
            # of the stopped run's epoch (a DataLoader iterator draws one from torch's when it starts)
            _set_rng_state(carried["rng"][tr.rank])
        batch += 1
        bad += bad_paths
        stand_in = clips is None  # every video of the batch was bad
        if stand_in:
            if tr.world == 1:
                continue
            clips, labels = _stand_in_batch(args, device)  # DDP: every rank takes the step
        clips, labels = clips.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = forward_loss(tr.ddp_model, clips, labels, tr.amp_dtype, args.grad_accum)
        if stand_in:
            loss = loss * 0.0
        loss_value = loss.item() * args.grad_accum
        finite, any_clips = _finite_everywhere(tr, loss_value, not stand_in)
        if not any_clips:
            continue  # every rank on a stand-in: no update of zero gradients (AdamW would still move)
        if not finite:
            _nonfinite(tr, f"non-finite training loss ({loss_value} on this rank)" if tr.world > 1 else
                       f"non-finite training loss ({loss_value})", epoch)
            continue  # this micro-batch adds nothing to the pending accumulation
        tr.scaler.scale(loss).backward()
        pending += 1
        if pending == args.grad_accum:
            _update(tr, epoch)
            pending = 0
        if not stand_in:
            losses.append(loss_value)
            n_clips += len(labels)
            stamps.append((time.perf_counter(), n_clips))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", clips_s=f"{n_clips / (time.time() - t0):.1f}")
        if tr.max_steps_reached():
            break
    if pending:  # micro-batches left over from an incomplete accumulation: step on their mean too
        with torch.no_grad():  # each loss was divided by --grad-accum, not by the pending count
            for p in tr.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(args.grad_accum / pending)
        _update(tr, epoch)
    dt = time.time() - t0
    partial, bad = None, gather_paths(bad)
    if batch < len(tr.train_loader):  # stopped at --max-steps (pending is 0: the stop follows an update)
        partial = _partial_record(batch, losses, n_clips, bad, tr.counts, dt, tr.world,
                                  _every_rank_rng_state(tr.world))
    bad = report_bad_videos(f"epoch {epoch + 1} training", bad, tr.train_loader.dropped, gathered=True)
    steady = steady_clips_per_s(stamps, tr.train_loader.batches_per_wave)
    rec = {"epoch": epoch + 1, "step": tr.step, "train_loss": float(np.mean(losses)) if losses else float("nan"),
           "lr": tr.sched.get_last_lr()[0], "clips_per_s": n_clips * tr.world / max(dt, 1e-9),
           "clips_per_s_steady": None if steady is None else steady * tr.world, "train_bad": len(bad), **tr.counts}
    if partial is not None:
        rec["partial_batches"] = f"{batch}/{len(tr.train_loader)}"
    before = carried or {"time_s": 0.0, "clips": 0}  # the stopped run's part of the epoch, counted there
    return rec, EpochStats(dt - before["time_s"], (n_clips - before["clips"]) * tr.world, partial)


def plain_args(args) -> dict:
    """The run's flags as ``last.pt`` holds them: plain types (Paths as str)."""
    return json.loads(json.dumps(vars(args), default=str))


def save_checkpoint(tr: Trainer, epoch: int, partial: Optional[dict] = None, rngs: Optional[list] = None) -> None:
    """``last.pt`` (atomically; tensors and plain types only, so it loads with ``weights_only=True``),
    then ``metrics.jsonl`` rewritten from the records it holds. ``partial``: the epoch stopped
    part-way (:func:`_partial_record`); ``rngs``: every rank's RNG states (:func:`_every_rank_rng_state`,
    which every rank calls), by default this process's."""
    trainable = {n: p.detach() for n, p in tr.model.named_parameters() if p.requires_grad}
    rngs = rngs or [_rng_state()]
    ck = {"trainable": trainable, "opt": tr.opt.state_dict(), "sched": tr.sched.state_dict(),
          "scaler": tr.scaler.state_dict(), "epoch": epoch, "step": tr.step, "metrics": tr.metrics,
          "rng": rngs[0], "data_rng": tr.train_loader.rng_state(), "args": plain_args(tr.args)}
    if len(rngs) > 1:
        ck["rng_ranks"] = rngs
    if partial is not None:
        ck["partial"] = partial
    atomic_save(ck, tr.ckpt_path)
    tr.last_good = f"{tr.ckpt_path} ({_where(epoch, tr.step, partial)})"
    _write_metrics(tr.out / "metrics.jsonl", tr.metrics)


def train_epochs(tr: Trainer) -> tuple[float, int]:
    """Epochs from ``tr.start_epoch`` to ``--epochs`` (or ``--max-steps``), each validated when due and
    checkpointed. Returns (training seconds, clips trained on, all ranks)."""
    args = tr.args
    train_time, train_clips = 0.0, 0
    done = tr.max_steps_reached()
    for epoch in range(tr.start_epoch, args.epochs):
        if done:
            break
        rec, stats = train_epoch(tr, epoch)
        train_time += stats.time_s
        train_clips += stats.clips
        done = tr.max_steps_reached()
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs or done:
            rec.update(evaluate(tr.model, tr.val_loader, tr.device, tr.amp_dtype))
        if tr.metrics and tr.metrics[-1]["epoch"] == epoch + 1:  # the record of this epoch's stopped part
            tr.metrics.pop()
        tr.metrics.append(rec)
        rngs = _every_rank_rng_state(tr.world)
        if tr.rank == 0:
            save_checkpoint(tr, epoch, stats.partial, rngs)
            if not args.quiet:
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)
    return train_time, train_clips


def write_outputs(tr: Trainer, train_time: float, train_clips: int, t_start: float) -> dict:
    """The run's summary (also ``summary.json``), ``curves.png`` and ``adapters.safetensors``."""
    from .checkpoint import save_adapters

    last_val = next((m for m in reversed(tr.metrics) if "val_top1" in m), {})
    peak = torch.cuda.max_memory_allocated(tr.device) if tr.device.type == "cuda" else None
    summary = {"val_top1": last_val.get("val_top1"), "val_top5": last_val.get("val_top5"),
               "clips_per_s": train_clips / train_time if train_time else None,
               "peak_memory_mb": peak / 2 ** 20 if peak else None, "time_s": time.time() - t_start,
               "epochs": len(tr.metrics), "steps": tr.step, "method": tr.args.method, "loader": tr.loader_kind,
               "device": str(tr.device),
               "trainable_params": sum(p.numel() for p in tr.model.parameters() if p.requires_grad)}
    if tr.rank == 0:
        (tr.out / "summary.json").write_text(json.dumps(summary, indent=2))
        _plot(tr.metrics, tr.out / "curves.png")
        if tr.args.method != "frame-only":
            save_adapters(tr.model, tr.out / "adapters.safetensors")
    return summary


def run(args) -> dict:
    """Train as ``args`` say; returns the summary."""
    rank, world, local_rank, device = init_process(args)
    train_items, val_items, num_classes = load_datasets(args, rank, world)
    tr = build_trainer(args, train_items, val_items, num_classes, rank, world, local_rank, device)
    if args.resume:
        resume(tr)
    t_start = time.time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_time, train_clips = train_epochs(tr)
    summary = write_outputs(tr, train_time, train_clips, t_start)
    if world > 1:
        torch.distributed.destroy_process_group()
    return summary


def main(argv: Optional[list] = None) -> dict:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
