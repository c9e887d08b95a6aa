"""Loader factory for training: NVIDIA DALI pipelines, or the PyAV DataLoader (the fallback).

Both yield ``(clips [B, 3, T, S, S] float, labels [B] int64, bad_paths list)`` (test loaders of the
PyAV path yield ``[B, V, 3, T, S, S]`` for multi-view testing) and have ``set_epoch`` and ``len``.

DALI decoding is chosen per device and codec:
  * GPU: ``fn.experimental.readers.video(device="gpu")`` (NVDEC: H.264, HEVC, VP8/9, AV1, ...).
  * CPU: DALI's CPU decoder handles VP8/VP9/MJPEG only, so when every file is one of those the CPU
    reader decodes; otherwise PyAV decodes inside DALI through ``fn.external_source``.
Augmentations run in DALI on the pipeline's device: scale jitter + random crop + optional flip in
training, centre crop in testing, CLIP normalisation, output in ``[3, T, H, W]`` (VideoClassifier's layout).

Known limits of the DALI paths: the reader takes one clip per video starting at its first frame (no
temporal jitter in training; the first clip, not the centre one, in testing), testing is single-view,
and DALI's augmentation RNG is not checkpointed (exact ``--resume`` needs the PyAV loader).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .lists import VideoItem
from .pyav_loader import (CLIP_MEAN, CLIP_STD, VideoClipDataset, VideoDecodeError, decode_video,
                          make_pyav_loader)
from .sampling import clip_indices

DALI_CPU_CODECS = {"vp8", "vp9", "mjpeg"}


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


class PyAVLoader:
    """PyAV DataLoader with a deterministic per-epoch order (seed, epoch) and rank sharding."""

    def __init__(self, items, args, train: bool, rank: int, world: int):
        if world > 1 and train:
            # every rank must run the same number of steps (DDP): drop bad files before sharding
            items, bad, _ = probe(items, args.frames, args.on_bad_video)
            if bad and rank == 0:
                print(f"PyAV loader: skipping {len(bad)} bad video(s): " + ", ".join(bad[:5]))
        self.ds = VideoClipDataset(items, args.frames, args.sampling, args.stride, args.image_size, train,
                                   flip=not args.no_flip, temporal_views=1 if train else args.test_temporal_views,
                                   spatial_views=1 if train else args.test_spatial_views,
                                   on_error="raise" if args.on_bad_video == "fail" else "skip", seed=args.seed)
        self.train, self.seed, self.rank, self.world = train, args.seed, rank, world
        self.batch_size, self.workers = args.batch_size, args.workers
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.ds.set_epoch(epoch)

    def _indices(self):
        n = len(self.ds)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
                 if self.train else torch.arange(n))
        shard = order[self.rank::self.world]
        # training: equal shard lengths on every rank (DDP steps in lockstep); testing: every clip once
        return (shard[:n // self.world] if self.train else shard).tolist()

    def __len__(self) -> int:
        if self.train:
            return (len(self.ds) // self.world) // self.batch_size
        return math.ceil(math.ceil(len(self.ds) / self.world) / self.batch_size)

    def __iter__(self):
        loader = make_pyav_loader(torch.utils.data.Subset(self.ds, self._indices()), self.batch_size, shuffle=False,
                                  num_workers=self.workers, drop_last=self.train)
        return iter(loader)


def probe(items: Sequence[VideoItem], min_frames: int, on_error: str):
    """(good items, bad paths, codec names) from a quick PyAV probe (frame count, codec)."""
    import av

    good, bad, codecs = [], [], set()
    for it in items:
        try:
            with av.open(it.path) as c:
                s = c.streams.video[0]
                n = s.frames or sum(1 for _ in c.decode(video=0))
                codecs.add(s.codec_context.name)
            if n < min_frames:
                raise VideoDecodeError(f"{it.path}: too short ({n} frames, need {min_frames})")
            good.append(it)
        except Exception as e:
            err = e if isinstance(e, VideoDecodeError) else VideoDecodeError(f"{it.path}: cannot open video ({e})")
            if on_error == "fail":
                raise err from e
            bad.append(it.path)
    return good, bad, codecs


class _Info:
    """The fields of DALI's SampleInfo that ``DALILoader._source`` reads."""

    def __init__(self, idx_in_epoch: int, epoch_idx: int):
        self.idx_in_epoch, self.epoch_idx = idx_in_epoch, epoch_idx


class DALILoader:
    """A DALI pipeline + ``DALIGenericIterator`` over a list of videos (one clip per video per epoch)."""

    def __init__(self, items, args, train: bool, device: torch.device, rank: int, world: int):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        # DALI's reader needs frames * stride frames for one clip (PyAV sampling needs fewer)
        need = args.frames * args.stride if args.sampling == "stride" else args.frames
        self.items, self.bad, codecs = probe(items, need, args.on_bad_video)
        if self.bad:
            print(f"DALI loader: skipping {len(self.bad)} bad video(s): " + ", ".join(self.bad[:5]))
        gpu = device.type == "cuda"
        # DALI's reader samples T frames at a stride; segment sampling (and, on CPU, codecs DALI cannot
        # decode there) goes through PyAV inside the pipeline instead.
        self.mode = "reader" if args.sampling == "stride" and (gpu or codecs <= DALI_CPU_CODECS) else "pyav"
        self.kind = f"dali-{'gpu' if gpu else 'cpu'}-{'decoder' if self.mode == 'reader' else 'pyav-source'}"
        self.args, self.train, self.rank, self.world, self.epoch = args, train, rank, world, 0
        self.batch_size = args.batch_size
        device_id = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None
        self.pipe = self._build(gpu, device_id)
        self.pipe.build()
        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
        if self.mode == "reader":
            self.it = DALIGenericIterator(self.pipe, ["video", "label"], reader_name="reader", last_batch_policy=policy,
                                          auto_reset=True)
        else:
            # the source ends each epoch with StopIteration (size=-1 lets it)
            self.it = DALIGenericIterator(self.pipe, ["video", "label"], size=-1,
                                          last_batch_policy=policy, auto_reset=True)

    def _shard(self):
        shard = self.items[self.rank::self.world]
        return shard[:len(self.items) // self.world] if self.train else shard  # equal lengths for DDP

    def _source(self, info):
        """external_source callback (one sample): PyAV decode + clip sampling, deterministic per epoch."""
        shard = self._shard()
        # Test: pad the last batch (DALI drops a partial one here) with label -1 rows, dropped in __iter__.
        end = len(shard) if self.train else math.ceil(len(shard) / self.batch_size) * self.batch_size
        if info.idx_in_epoch >= end:
            raise StopIteration
        if info.idx_in_epoch >= len(shard):
            frames, _ = self._source(_Info(0, info.epoch_idx))
            return frames, np.array([-1], dtype=np.int32)
        order = (np.random.default_rng([self.args.seed, info.epoch_idx]).permutation(len(shard))
                 if self.train else np.arange(len(shard)))
        item = shard[order[info.idx_in_epoch]]
        video = decode_video(item.path)
        rng = np.random.default_rng([self.args.seed, info.epoch_idx, info.idx_in_epoch])
        idx = clip_indices(len(video), self.args.frames, self.args.sampling, self.args.stride, self.train, rng=rng)
        return np.ascontiguousarray(video[idx]), np.array([item.label], dtype=np.int32)

    def _build(self, gpu: bool, device_id):
        from nvidia.dali import fn, pipeline_def, types

        a, train = self.args, self.train
        size = a.image_size

        @pipeline_def(batch_size=self.batch_size, num_threads=max(1, a.workers), device_id=device_id,
                      seed=a.seed + 17 * self.rank, prefetch_queue_depth=2)
        def pipe():
            if self.mode == "reader":
                video, label = fn.experimental.readers.video(
                    device="gpu" if gpu else "cpu", filenames=[i.path for i in self.items],
                    labels=[i.label for i in self.items], sequence_length=a.frames, stride=a.stride,
                    step=10 ** 6, random_shuffle=train, initial_fill=max(16, len(self.items)), seed=a.seed,
                    shard_id=self.rank, num_shards=self.world, pad_last_batch=not train, name="reader")
            else:
                video, label = fn.external_source(source=self._source, num_outputs=2, batch=False,
                                                  layout=["FHWC", ""], dtype=[types.UINT8, types.INT32])
                if gpu:
                    video = video.gpu()
            if train:
                video = fn.resize(video, resize_shorter=fn.random.uniform(range=[size, size * 1.15]),
                                  antialias=True)
                pos = dict(crop_pos_x=fn.random.uniform(range=[0.0, 1.0]), crop_pos_y=fn.random.uniform(range=[0.0, 1.0]))
                mirror = fn.random.coin_flip() if not a.no_flip else 0
            else:
                video = fn.resize(video, resize_shorter=size, antialias=True)
                pos, mirror = {}, 0
            video = fn.crop_mirror_normalize(video, crop=(size, size), mirror=mirror, output_layout="CFHW",
                                             mean=[255 * m for m in CLIP_MEAN], std=[255 * s for s in CLIP_STD],
                                             dtype=types.FLOAT, **pos)
            return video, label

        return pipe()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.train:
            return (len(self.items) // self.world) // self.batch_size
        return math.ceil(math.ceil(len(self.items) / self.world) / self.batch_size)

    def __iter__(self):
        for out in self.it:
            d = out[0]
            video, label = d["video"], d["label"].reshape(-1).long()
            keep = label >= 0
            if not bool(keep.all()):
                video, label = video[keep], label[keep]
            yield video, label, []


def make_loaders(args, train_items, val_items, device, rank: int, world: int):
    """(train loader, val loader, kind) following ``args.loader`` ("auto": DALI if installed)."""
    use_dali = args.loader == "dali" or (args.loader == "auto" and dali_available())
    if args.loader == "dali" and not dali_available():
        raise ValueError("--loader dali: nvidia-dali is not installed (pip install 'stadapter-fast[data]')")
    if use_dali:
        tr = DALILoader(train_items, args, True, device, rank, world)
        va = DALILoader(val_items, args, False, device, rank, world)
        return tr, va, tr.kind
    return PyAVLoader(train_items, args, True, rank, world), PyAVLoader(val_items, args, False, rank, world), "pyav"
