"""Clip sampling as the release: T frames at a fixed stride (Kinetics) or one frame from each of T
uniform segments (SSv2); random in training, evenly spaced views in testing.

This module is the one source of truth for what a loader feeds the model, so the PyAV and the DALI
loaders agree by construction:

* :func:`epoch_order`: which videos an epoch visits, in which order, on which rank;
* :func:`sample_rng`: the generator of one sample's randomness, a pure function of
  ``(seed, epoch, index)`` (so a resumed run repeats an uninterrupted one exactly, with no RNG state
  to carry beyond the seed and the epoch);
* :func:`clip_views`: the frame indices, resize, crop and flip of each view of one video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..checks import check_int

MODES = ("stride", "segments")


def clip_indices(num_video_frames: int, num_frames: int, mode: str = "stride", stride: int = 2,
                 train: bool = True, view: int = 0, num_views: int = 1,
                 rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Frame indices (length ``num_frames``) of one clip, as the release's ``VideoDataset`` picks them.

    mode="stride": frames ``stride`` apart over a span of ``(num_frames - 1) * stride + 1``. Training:
    a uniformly random start in ``[0, N - span]``; a video no longer than the span starts at 0 and
    repeats the last frame the stride reaches. Testing: ``num_views`` starts spread from 0 to
    ``N - span`` (both ends included, ``round(max_start * view / (num_views - 1))``), or the middle
    start ``max_start // 2`` for one view; a short video repeats its last frame.
    mode="segments": ``num_frames`` segments of ``(N - 1) / num_frames`` frames, bounded by
    ``round(s * i)`` and ``round(s * (i + 1))``; one frame from each: uniform over the bounds (both
    included) in training, the middle ``(lo + hi) // 2`` in testing (view ``v`` of ``n``: at
    ``(v + 0.5) / n`` of the segment, which for one view is that middle).
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames}, {stride}")
    if not 0 <= view < num_views:
        raise ValueError(f"view must be in [0, num_views={num_views}), got {view}")
    rng = rng if rng is not None else np.random.default_rng()
    n = num_video_frames
    if mode == "stride":
        span = (num_frames - 1) * stride + 1
        max_start = max(n - span, 0)
        if train:
            start = int(rng.integers(0, max_start + 1))
        else:
            start = round(max_start / (num_views - 1) * view) if num_views > 1 else max_start // 2
        idx = start + stride * np.arange(num_frames)
        # past the end: training repeats the last frame on the stride, testing the video's last frame
        last = (n - 1) // stride * stride if train else n - 1
        idx = np.where(idx < n, idx, last)
    elif mode == "segments":
        bounds = np.round((n - 1) / num_frames * np.arange(num_frames + 1)).astype(np.int64)
        lo, hi = bounds[:-1], bounds[1:]
        if train:
            idx = rng.integers(lo, hi + 1)
        else:  # floor(lo + (hi - lo) * (view + 0.5) / num_views), in integers
            idx = (2 * num_views * lo + (hi - lo) * (2 * view + 1)) // (2 * num_views)
    else:
        raise ValueError(f"mode must be 'stride' or 'segments', got {mode!r}")
    return idx.astype(np.int64)


@dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video and augmented (the CLI's clip flags)."""
    num_frames: int = 8
    mode: str = "stride"
    stride: int = 2
    size: int = 224
    flip: bool = True
    scale: tuple = (1.0, 1.15)
    temporal_views: int = 1
    spatial_views: int = 1

    def __post_init__(self):
        check_int("num_frames (--frames)", self.num_frames)
        check_int("stride (--stride)", self.stride)
        check_int("size (--image-size)", self.size)
        check_int("temporal_views (--test-temporal-views)", self.temporal_views)
        check_int("spatial_views (--test-spatial-views)", self.spatial_views)
        if self.mode not in MODES:
            raise ValueError(f"mode (--sampling) must be one of {MODES}, got {self.mode!r}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale!r}")

    @classmethod
    def from_args(cls, args) -> "ClipSampling":
        return cls(num_frames=args.frames, mode=args.sampling, stride=args.stride, size=args.image_size,
                   flip=not args.no_flip, temporal_views=args.test_temporal_views,
                   spatial_views=args.test_spatial_views)

    def num_views(self, train: bool) -> int:
        return 1 if train else self.temporal_views * self.spatial_views


@dataclass(frozen=True)
class ClipView:
    """One view of a video: its frames, resized to ``resize`` = (height, width), cropped to ``size`` x
    ``size`` at ``crop`` = (top, left), then mirrored if ``flip``."""
    frames: np.ndarray
    resize: tuple
    crop: tuple
    flip: bool


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of the randomness of video ``index`` (its position in the loader's list) in
    ``epoch``: a pure function of the three."""
    return np.random.default_rng([seed, epoch, index])


def clip_views(cfg: ClipSampling, num_video_frames: int, height: int, width: int, train: bool,
               rng: Optional[np.random.Generator] = None) -> list[ClipView]:
    """The views of one video of ``num_video_frames`` frames of ``height`` x ``width`` pixels.

    Training: one random view. Its clip comes from :func:`clip_indices`, then the short side is resized
    to ``size * s`` (``s`` uniform in ``cfg.scale``), the crop is random and so is the flip (when
    ``cfg.flip``); ``rng`` is drawn in that order. Testing, as the release: ``temporal_views x
    spatial_views`` views (temporal outer) of the clips of :func:`clip_indices`, the short side resized
    to ``size`` (the long one to ``long * size // short``), one centre crop or ``spatial_views`` crops
    from one end of the long side to the other (0, margin // 2, margin for 3), no flip; ``rng`` is not
    used.
    """
    rng = rng if rng is not None else np.random.default_rng()

    def geometry(short: float):
        nh = max(cfg.size, round(height * short / min(height, width)))
        nw = max(cfg.size, round(width * short / min(height, width)))
        return nh, nw

    if train:
        frames = clip_indices(num_video_frames, cfg.num_frames, cfg.mode, cfg.stride, True, rng=rng)
        nh, nw = geometry(cfg.size * rng.uniform(*cfg.scale))
        crop = (int(rng.integers(0, nh - cfg.size + 1)), int(rng.integers(0, nw - cfg.size + 1)))
        flip = bool(cfg.flip and rng.random() < 0.5)
        return [ClipView(frames, (nh, nw), crop, flip)]
    # the short side to size, the long side scaled and floored (a square stays square)
    nh, nw = (cfg.size, width * cfg.size // height) if height < width else (height * cfg.size // width, cfg.size)
    n = cfg.spatial_views
    if n == 1:
        crops = [((nh - cfg.size) // 2, (nw - cfg.size) // 2)]
    else:  # along the long side (width when square), from one end to the other
        offsets = [(max(nh, nw) - cfg.size) * sv // (n - 1) for sv in range(n)]
        crops = [(o, 0) if nh > nw else (0, o) for o in offsets]
    return [ClipView(clip_indices(num_video_frames, cfg.num_frames, cfg.mode, cfg.stride, False, tv,
                                  cfg.temporal_views), (nh, nw), crop, False)
            for tv in range(cfg.temporal_views) for crop in crops]


def epoch_order(n: int, seed: int, epoch: int, train: bool, rank: int = 0, world: int = 1) -> list[int]:
    """Positions ``0..n-1`` this rank visits in ``epoch``, in order. Training: a permutation seeded by
    ``(seed, epoch)``, sharded over ranks with equal lengths (DDP steps in lockstep). Testing: every
    position once over all ranks, in list order."""
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)) if train
             else torch.arange(n))
    shard = order[rank::world]
    return (shard[:n // world] if train else shard).tolist()
