"""Loader factory for training: NVIDIA DALI pipelines, or the PyAV DataLoader (the fallback).

Both yield ``(clips, labels [B] int64, bad_paths list)``: training clips ``[B, 3, T, S, S]`` float,
test clips ``[B, V, 3, T, S, S]`` with V = temporal x spatial views (temporal outer), as
``evaluate`` averages them. Both have ``set_epoch``, ``len`` and ``rng_state``.

Both take everything random or view-dependent from :mod:`.sampling`: the epoch's order and rank shard
(:func:`~.sampling.epoch_order`), and per video the frame indices, resize, crop and flip of each view
(:func:`~.sampling.clip_views`, drawn from :func:`~.sampling.sample_rng` keyed by ``(seed, epoch,
index)``). So for the same seed, epoch and video list the two loaders cut the same clips, and a run
resumed from ``last.pt`` (which records the seed and epoch) repeats an uninterrupted one exactly.

The DALI pipeline gets those per-sample decisions through ``fn.external_source`` and runs no random
operator of its own. It decodes the listed frames, resizes, crops (``fn.slice``), mirrors and
CLIP-normalises:
  * GPU with NVDEC (the driver's ``libnvcuvid`` loads): ``fn.decoders.video(device="mixed")`` (H.264,
    HEVC, VP8/9, AV1, ...) on the file's bytes.
  * Otherwise DALI's CPU decoder, which handles VP8/VP9/MJPEG only: when every file is one of those
    ``fn.decoders.video(device="cpu")`` decodes, else PyAV decodes, in ``--workers`` DataLoader worker
    processes that the source callback reads in order (0: in the callback itself). On a GPU without
    NVDEC the decoded frames then go to the GPU for the resize, crop and normalisation.
:func:`dali_decode_plan` makes that choice (``--dali-decoder auto|gpu|cpu`` can force it); the loader's
``kind`` names it.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .lists import VideoItem
from .pyav_loader import (CLIP_MEAN, CLIP_STD, VideoClipDataset, VideoDecodeError, check_long_enough, decodable_frames,
                          decode_video, make_pyav_loader)
from .sampling import ClipSampling, clip_views, epoch_order, sample_rng

DALI_CPU_CODECS = {"vp8", "vp9", "mjpeg"}


def nvdec_available() -> bool:
    """Whether the driver's NVDEC library (``libnvcuvid.so.1``, which DALI's mixed video decoder loads)
    can be loaded here."""
    import ctypes

    try:
        ctypes.CDLL("libnvcuvid.so.1")
        return True
    except OSError:
        return False


def dali_decode_plan(gpu: bool, nvdec: bool, codecs: set) -> tuple[str, str, str]:
    """Where the DALI pipeline decodes: ``(mode, decoder device, kind)``. ``mode`` is "decoder" (DALI's
    video decoder on the file's bytes, on ``decoder device`` "mixed" = NVDEC or "cpu") or "pyav" (PyAV
    in the source callback: codecs DALI's CPU decoder lacks, with no NVDEC to take them); ``kind`` names
    the route, e.g. "dali-gpu-decoder" (NVDEC), "dali-gpu-cpu-decoder", "dali-cpu-pyav-source"."""
    if gpu and nvdec:
        return "decoder", "mixed", "dali-gpu-decoder"
    side = "gpu" if gpu else "cpu"
    if codecs <= DALI_CPU_CODECS:
        return "decoder", "cpu", f"dali-{side}-{'cpu-' if gpu else ''}decoder"
    return "pyav", "cpu", f"dali-{side}-pyav-source"


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    height: int
    width: int
    codec: str


def probe(items: Sequence[VideoItem], min_frames: int, on_error: str) -> tuple[dict, list]:
    """``({index: VideoInfo} of the usable videos, paths of the bad ones)`` from a PyAV probe (frame
    count, size, codec). A container that stores no frame count (e.g. WebM) is counted by decoding."""
    import av

    good, bad = {}, []
    seen = {}  # a list may name a file more than once: probe it once
    for i, it in enumerate(items):
        if it.path in seen:
            if seen[it.path] is None:
                bad.append(it.path)
            else:
                good[i] = seen[it.path]
            continue
        seen[it.path] = None
        try:
            with av.open(it.path) as c:
                s = c.streams.video[0]
                n = s.frames or sum(1 for _ in c.decode(video=0))
                info = VideoInfo(n, s.codec_context.height, s.codec_context.width, s.codec_context.name)
            check_long_enough(it.path, n, min_frames)
            good[i] = seen[it.path] = info
        except Exception as e:
            err = e if isinstance(e, VideoDecodeError) else VideoDecodeError(f"{it.path}: cannot open video ({e})")
            if on_error == "fail":
                raise err from e
            bad.append(it.path)
    return good, bad


class PyAVLoader:
    """PyAV DataLoader over :class:`VideoClipDataset` in :func:`~.sampling.epoch_order`; batches in
    page-locked memory with ``pin_memory`` (:func:`make_loaders` sets it for a CUDA device)."""

    def __init__(self, items, args, train: bool, rank: int, world: int, pin_memory: bool = False):
        pool, bad = range(len(items)), []
        if world > 1 and train:
            # every rank must run the same number of steps (DDP): drop bad files before sharding
            good, bad = probe(items, args.frames, args.on_bad_video)
            pool = sorted(good)
            if bad and rank == 0:
                print(f"PyAV loader: skipping {len(bad)} bad video(s): " + ", ".join(bad[:5]))
        self.pool = list(pool)  # indices of the items that can be sampled
        #: the probe's bad videos, left out of every epoch (the others are reported in their batches)
        self.dropped = bad
        self.ds = VideoClipDataset(items, args.frames, args.sampling, args.stride, args.image_size, train,
                                   flip=not args.no_flip, temporal_views=1 if train else args.test_temporal_views,
                                   spatial_views=1 if train else args.test_spatial_views,
                                   on_error="raise" if args.on_bad_video == "fail" else "skip", seed=args.seed)
        self.train, self.seed, self.rank, self.world = train, args.seed, rank, world
        self.batch_size, self.workers, self.pin_memory = args.batch_size, args.workers, pin_memory
        self.epoch = self.first_batch = 0

    @property
    def batches_per_wave(self) -> int:
        """Batches that arrive together when decoding is the bottleneck: each worker builds a whole
        batch, round-robin, so they come in bursts of ``workers``."""
        return max(1, self.workers)

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """The epoch the next iteration serves, from its ``first_batch`` on (an epoch resumed where a
        run stopped: the batches before it are the ones the stopped run trained on)."""
        self.epoch, self.first_batch = epoch, check_first_batch(first_batch, len(self))
        self.ds.set_epoch(epoch)

    def rng_state(self) -> dict:
        """All the loader's randomness: each epoch is a pure function of (seed, epoch, index)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def _indices(self):
        return [self.pool[p] for p in epoch_order(len(self.pool), self.seed, self.epoch, self.train, self.rank,
                                                  self.world)]

    def __len__(self) -> int:
        if self.train:
            return (len(self.pool) // self.world) // self.batch_size
        return math.ceil(math.ceil(len(self.pool) / self.world) / self.batch_size)

    def __iter__(self):
        indices = self._indices()[self.first_batch * self.batch_size:]
        loader = make_pyav_loader(torch.utils.data.Subset(self.ds, indices), self.batch_size, shuffle=False,
                                  num_workers=self.workers, drop_last=self.train, pin_memory=self.pin_memory)
        return iter(loader)


class DALILoader:
    """A DALI pipeline + ``DALIGenericIterator`` per epoch over a list of videos (one clip, or in
    testing all views, per video). The pipeline is rebuilt for each epoch (~20 ms on CPU): its source
    callback then serves exactly that epoch, and no read-ahead crosses an epoch boundary. So are PyAV
    mode's decoding workers (``--workers``; forked, like a DataLoader's, before the pipeline starts).

    Bad videos: the probe drops those it can tell (unreadable, too short). One that passes it and
    fails when decoded (damaged mid-stream, or changed since) is, as in the PyAV loader, skipped and
    reported in its batch's ``bad_paths`` (``--on-bad-video skip``) or a :class:`VideoDecodeError`
    naming it (``fail``). PyAV mode sees the error in the source. DALI's own decoder fails the whole
    batch without naming a file: the batch's files are then decoded with PyAV to find which, and the
    epoch goes on from that batch in a new pipeline, with a stand-in (label -1, dropped) fed for it
    from then on. Either way batch counts stay the same (every DDP rank runs the same steps)."""

    def __init__(self, items, args, train: bool, device: torch.device, rank: int, world: int):
        self.cfg = ClipSampling.from_args(args)
        self.items = list(items)
        #: the probe's bad videos, left out of every epoch (the others are reported in their batches)
        self.info, self.dropped = probe(self.items, self.cfg.num_frames, args.on_bad_video)
        if self.dropped and rank == 0:
            print(f"DALI loader: skipping {len(self.dropped)} bad video(s): " + ", ".join(self.dropped[:5]))
        self.pool = sorted(self.info)
        codecs = {i.codec for i in self.info.values()}
        self.gpu = device.type == "cuda"
        choice = args.dali_decoder
        if choice == "gpu" and not self.gpu:
            raise ValueError(f"--dali-decoder gpu: NVDEC needs a CUDA device, got --device {device}")
        nvdec = self.gpu and (choice == "gpu" or (choice == "auto" and nvdec_available()))
        self.mode, self.decode_device, self.kind = dali_decode_plan(self.gpu, nvdec, codecs)
        self.train, self.seed, self.rank, self.world, self.epoch = train, args.seed, rank, world, 0
        self.first_batch = 0
        self.batch_size, self.threads = args.batch_size, max(1, args.workers)
        self.decode_workers = args.workers  # PyAV mode's decoding processes (0: the source callback)
        self.on_error = args.on_bad_video
        self.broken: dict[int, str] = {}  # decoder mode: item index -> why DALI's decoder failed on it
        self._skipped: list[tuple[int, str]] = []  # (plan position, path) of the stand-ins fed, to report
        self._lock = threading.Lock()  # _skipped: appended by the source, read by _batches
        self.device_id = None
        if self.gpu:
            self.device_id = device.index if device.index is not None else torch.cuda.current_device()

    batches_per_wave = 1  # DALI's threads share each batch: batches arrive one by one

    def __getstate__(self) -> dict:
        """What a decoding worker gets (``_EpochSamples`` carries the loader where workers are spawned,
        not forked): no lock, and no epoch bookkeeping of the iterating process."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_skipped")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _skipped=[])

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """As :meth:`PyAVLoader.set_epoch`."""
        self.epoch, self.first_batch = epoch, check_first_batch(first_batch, len(self))

    def rng_state(self) -> dict:
        """All the loader's randomness: each epoch is a pure function of (seed, epoch, index)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def __len__(self) -> int:
        if self.train:
            return (len(self.pool) // self.world) // self.batch_size
        return math.ceil(math.ceil(len(self.pool) / self.world) / self.batch_size)

    def plan(self) -> list:
        """``(item index, label)`` per sample of the current epoch: training drops the last partial
        batch; testing pads it with label -1 rows (dropped in ``__iter__``), since every batch the
        pipeline makes is full."""
        order = [self.pool[p] for p in epoch_order(len(self.pool), self.seed, self.epoch, self.train, self.rank,
                                                   self.world)]
        B = self.batch_size
        if self.train:
            return [(i, self.items[i].label) for i in order[:len(order) // B * B]]
        return [(i, self.items[i].label) for i in order] + [(order[0], -1)] * (-len(order) % B) if order else []

    def _sample(self, index: int, label: int, epoch: int):
        """One sample's pipeline inputs: the encoded file (decoder mode) or the decoded frames (PyAV
        mode); the frames to decode (every temporal view's, concatenated); the resize, mirror and one
        crop start per spatial view; the label."""
        item = self.items[index]
        if self.mode == "decoder":
            info = self.info[index]
            n, h, w = info.frames, info.height, info.width
        else:
            video = decode_video(item.path)
            n, h, w = video.shape[:3]
            check_long_enough(item.path, n, self.cfg.num_frames)  # the probe may have counted more
        views = clip_views(self.cfg, n, h, w, self.train, sample_rng(self.seed, epoch, index))
        sv = 1 if self.train else self.cfg.spatial_views
        frames = np.concatenate([v.frames for v in views[::sv]])
        if self.mode == "decoder":
            data = (np.fromfile(item.path, dtype=np.uint8), frames.astype(np.int32))
        else:
            data = (np.ascontiguousarray(video[frames]),)
        (nh, nw), flip = views[0].resize, views[0].flip
        starts = [np.array(v.crop, dtype=np.int32) for v in views[:sv]]
        return (*data, np.array(nh, dtype=np.float32), np.array(nw, dtype=np.float32),
                np.array(int(flip), dtype=np.int32), *starts, np.array([label], dtype=np.int32))

    def _spare(self):
        """Decoder mode: the video whose sample stands in for a broken one (the pool's first not known
        to be broken; DALI decodes whatever is fed), or None."""
        return next((i for i in self.pool if i not in self.broken), None)

    def _stand_in(self, epoch: int):
        """The pipeline inputs fed in place of a bad video: a sample of label -1, which ``_batches``
        drops. PyAV mode: black frames; decoder mode: the sample of :meth:`_spare`."""
        if self.mode == "decoder":
            spare = self._spare()
            if spare is None:
                raise VideoDecodeError("DALI loader: every video of the list failed to decode: "
                                       + ", ".join(self.items[i].path for i in list(self.broken)[:5]))
            return self._sample(spare, -1, epoch)
        size, sv = self.cfg.size, 1 if self.train else self.cfg.spatial_views
        frames = self.cfg.num_frames * (1 if self.train else self.cfg.temporal_views)
        return (np.zeros((frames, size, size, 3), np.uint8), np.array(size, dtype=np.float32),
                np.array(size, dtype=np.float32), np.array(0, dtype=np.int32),
                *[np.zeros(2, dtype=np.int32)] * sv, np.array([-1], dtype=np.int32))

    def _skip(self, position: int, index: int, label: int, message: str, epoch: int):
        """A bad video met at ``position`` of the plan: ``fail`` raises ``message``; ``skip`` records
        its path for its batch to report and returns the stand-in. A padding row (label -1; its video
        is also the epoch's first) only gets the stand-in."""
        if label >= 0:
            if self.on_error == "fail":
                raise VideoDecodeError(message)
            with self._lock:
                self._skipped.append((position, self.items[index].path))
        return self._stand_in(epoch)

    def _reported(self, end: int) -> list:
        """The paths skipped at plan positions before ``end``, taken off the list (the source runs up
        to two batches ahead: those stay for their own batches)."""
        with self._lock:
            done = [path for pos, path in self._skipped if pos < end]
            self._skipped = [(pos, path) for pos, path in self._skipped if pos >= end]
        return done

    def _decoded(self, plan: list, epoch: int, start: int = 0):
        """PyAV mode with workers: the epoch's samples from ``start`` in plan order as ``(position, sample)``, decoded
        ahead in ``decode_workers`` DataLoader processes (started here, before the pipeline's threads;
        they exit when the iterator is dropped). None: the source callback makes each sample itself."""
        if self.mode != "pyav" or self.decode_workers < 1:
            return None
        return iter(torch.utils.data.DataLoader(_EpochSamples(self, plan, epoch, start), batch_size=None,
                                                num_workers=self.decode_workers))

    def _pipeline(self, plan: list, epoch: int, decoded, start: int = 0):
        """The epoch's pipeline from plan position ``start`` on; ``decoded``: the iterator of
        :meth:`_decoded` (from the same position), or None."""
        from nvidia.dali import fn, pipeline_def, types

        size, sv = self.cfg.size, 1 if self.train else self.cfg.spatial_views

        def source(info):
            k = start + info.idx_in_epoch
            if k >= len(plan):
                raise StopIteration
            index, label = plan[k]
            if decoded is None:
                if index in self.broken:  # decoder mode: found broken earlier (_find_broken)
                    return self._skip(k, index, label, self.broken[index], epoch)
                try:
                    return self._sample(index, label, epoch)
                except VideoDecodeError as e:
                    return self._skip(k, index, label, str(e), epoch)
            got, sample = next(decoded)
            if got != k:  # DALI asks for the samples in order; anything else would mislabel clips
                raise RuntimeError(f"DALI loader: the decoding workers sent sample {got} for {k}")
            if isinstance(sample, str):  # a worker's VideoDecodeError: as without workers
                return self._skip(k, index, label, sample, epoch)
            return tuple(np.asarray(a) for a in sample)

        @pipeline_def(batch_size=self.batch_size, num_threads=self.threads, device_id=self.device_id,
                      seed=self.seed, prefetch_queue_depth=2)
        def pipe():
            decoder = self.mode == "decoder"
            head = [("", types.UINT8), ("", types.INT32)] if decoder else [("FHWC", types.UINT8)]
            outs = fn.external_source(source=source, num_outputs=len(head) + 4 + sv, batch=False,
                                      layout=[h[0] for h in head] + [""] * (4 + sv),
                                      dtype=[h[1] for h in head] + [types.FLOAT] * 2 + [types.INT32] * (2 + sv))
            nh, nw, mirror, *starts, label = outs[len(head):]
            if decoder:
                # DALI 2.4's fn.decoders.video takes explicit frame indices per sample (`frames=`, any
                # order, repeats allowed); fn.experimental.readers.video only takes a start and stride
                video = fn.decoders.video(outs[0], frames=outs[1], device=self.decode_device)
            else:
                video = outs[0]
            if self.gpu and self.decode_device == "cpu":  # decoded on the CPU: augment on the GPU
                video = video.gpu()
            video = fn.resize(video, resize_y=nh, resize_x=nw, antialias=True)
            mean, std = [255 * m for m in CLIP_MEAN], [255 * s for s in CLIP_STD]
            crops = [fn.crop_mirror_normalize(fn.slice(video, start=start, shape=[size, size], axis_names="HW"),
                                              mirror=mirror, output_layout="CFHW", dtype=types.FLOAT,
                                              mean=mean, std=std)
                     for start in starts]
            return (*crops, label)

        return pipe()

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        plan = self.plan()
        if not plan:
            return
        sv = 1 if self.train else self.cfg.spatial_views
        names = [f"crop{k}" for k in range(sv)] + ["label"]
        with self._lock:
            self._skipped = []  # a previous epoch stopped early leaves its read-ahead's
        done = self.first_batch  # batches of the epoch yielded (or trained on before a resume)
        while True:
            decoded = self._decoded(plan, self.epoch, done * self.batch_size)  # PyAV mode: never restarts
            try:
                pipe = self._pipeline(plan, self.epoch, decoded, start=done * self.batch_size)
                for batch in self._batches(DALIGenericIterator(pipe, names, size=-1, auto_reset=False), sv, done):
                    yield batch
                    done += 1
                return
            except RuntimeError as e:  # DALI's "Critical error in pipeline" (its first batch: at construction)
                if self.mode != "decoder" or not _video_decoder_failed(e):
                    raise
                known = len(self.broken)
                self._find_broken(plan, done, e)
                if len(self.broken) == known:  # cannot happen (a broken video is never fed): never loop on it
                    raise
                with self._lock:  # all left is read-ahead of batches >= done, which the new pipeline feeds again
                    self._skipped = []
            finally:  # the workers exit with the epoch, also one stopped early or by an error
                getattr(decoded, "_shutdown_workers", lambda: None)()

    def _find_broken(self, plan: list, done: int, error: Exception) -> None:
        """DALI's decoder failed on a batch from ``done`` on (the one asked for, or one read ahead):
        decode the videos fed there with PyAV, the failing batch's first, and mark those PyAV cannot
        decode in full, or not to the frame count the probe read (which the clip's frame indices come
        from), as broken. None found: DALI's error is raised with the batch's files named; in
        ``fail`` mode the first found is a :class:`VideoDecodeError`."""
        B, fed = self.batch_size, []
        for b in range(done, min(done + 3, math.ceil(len(plan) / B))):  # prefetch_queue_depth 2
            batch = []
            for index, _ in plan[b * B:(b + 1) * B]:
                if index in self.broken and self._spare() is not None:  # None: _stand_in raised
                    index = self._spare()  # the stand-in's video
                if index not in batch:
                    batch.append(index)
            fed.append(batch)
        for batch in fed:
            found = {}
            for i in batch:
                path = self.items[i].path
                try:
                    n, why = decodable_frames(path), None
                except VideoDecodeError as e:
                    n, why = 0, str(e).removeprefix(f"{path}: ")
                if why is not None or n < self.info[i].frames:
                    found[i] = (f"{path}: cannot decode video (DALI's {self.decode_device} decoder failed on its "
                                f"batch; PyAV: {why or f'{n} frames, the probe counted {self.info[i].frames}'})")
            if found:
                if self.on_error == "fail":
                    raise VideoDecodeError(next(iter(found.values()))) from error
                self.broken.update(found)
                return
        paths = [self.items[i].path for i in fed[0]]
        raise RuntimeError(f"DALI loader: DALI's {self.decode_device} video decoder failed on the batch of "
                           f"{', '.join(paths)}, and PyAV decodes each of those files in full") from error

    def _batches(self, it, sv: int, start: int = 0):
        """``(clips, labels, bad_paths)`` per DALI batch (the ``start``-th of the epoch first), rows of
        label -1 (padding, stand-ins) dropped; a batch with none left is ``(None, None, bad_paths)``,
        as the PyAV loader yields one."""
        for b, out in enumerate(it, start):
            d = out[0]
            label = d["label"].reshape(-1).long()
            if self.train:
                video = d["crop0"]
            else:  # [B, 3, TV*T, S, S] per spatial view -> [B, TV*SV, 3, T, S, S], temporal views outer
                x = torch.stack([d[f"crop{k}"] for k in range(sv)], 1)
                B, _, C, _, S = x.shape[:5]
                tv, T = self.cfg.temporal_views, self.cfg.num_frames
                video = x.view(B, sv, C, tv, T, S, S).permute(0, 3, 1, 2, 4, 5, 6).reshape(B, tv * sv, C, T, S, S)
            keep = label >= 0
            bad = self._reported((b + 1) * self.batch_size)
            if not bool(keep.any()):
                yield None, None, bad
                continue
            if not bool(keep.all()):
                video, label = video[keep], label[keep]
            yield video, label, bad


def _video_decoder_failed(error: Exception) -> bool:
    """Whether ``error`` is a DALI pipeline error raised by its video decoder (what a damaged file
    causes), not e.g. running out of memory or an error of the loader's own code."""
    return (not isinstance(error, (VideoDecodeError, torch.OutOfMemoryError))
            and "Critical error in pipeline" in str(error) and "decoders.video" in str(error))


class _EpochSamples(torch.utils.data.Dataset):
    """One epoch's DALI pipeline inputs (:meth:`DALILoader._sample`) as ``(position, sample)``, in the
    epoch's plan order from position ``start``: what PyAV mode's decoding workers make."""

    def __init__(self, loader: DALILoader, plan: list, epoch: int, start: int = 0):
        self.loader, self.plan, self.epoch, self.start = loader, plan, epoch, start

    def __len__(self) -> int:
        return len(self.plan) - self.start

    def __getitem__(self, j: int):
        k = self.start + j
        try:
            return k, self.loader._sample(*self.plan[k], self.epoch)
        except VideoDecodeError as e:  # its message (it names the file) crosses to the source callback
            return k, str(e)


def check_first_batch(first_batch: int, batches: int) -> int:
    """``first_batch`` of an epoch of ``batches``, checked: an int in ``[0, batches)``, or 0."""
    if type(first_batch) is not int or not (first_batch == 0 or 0 < first_batch < batches):
        raise ValueError(f"first_batch: expected an int in [0, {batches}) (the epoch's batches), got {first_batch!r}")
    return first_batch


def make_loaders(args, train_items, val_items, device, rank: int, world: int):
    """(train loader, val loader, kind) following ``args.loader`` ("auto": DALI if installed)."""
    use_dali = args.loader == "dali" or (args.loader == "auto" and dali_available())
    if args.loader == "dali" and not dali_available():
        raise ValueError("--loader dali: nvidia-dali is not installed (pip install 'stadapter-fast[data]')")
    if use_dali:
        tr = DALILoader(train_items, args, True, device, rank, world)
        va = DALILoader(val_items, args, False, device, rank, world)
        return tr, va, tr.kind
    pin = device.type == "cuda"
    return (PyAVLoader(train_items, args, True, rank, world, pin_memory=pin),
            PyAVLoader(val_items, args, False, rank, world, pin_memory=pin), "pyav")
