"""Clip sampling as the release: T frames at a fixed stride (Kinetics) or one frame from each of T
uniform segments (SSv2); random in training, evenly spaced views in testing."""
from __future__ import annotations

from typing import Optional

import numpy as np


def clip_indices(num_video_frames: int, num_frames: int, mode: str = "stride", stride: int = 2,
                 train: bool = True, view: int = 0, num_views: int = 1,
                 rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Frame indices (length ``num_frames``) of one clip.

    mode="stride": consecutive frames ``stride`` apart; the clip start is random in training and, in
    testing, view ``view`` of ``num_views`` evenly spaced starts. A video shorter than the clip repeats
    its last frame (indices are clamped).
    mode="segments": the video is cut into ``num_frames`` equal segments and one frame is taken from
    each: a random one in training, the middle (shifted per view) in testing.
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames}, {stride}")
    if not 0 <= view < num_views:
        raise ValueError(f"view must be in [0, num_views={num_views}), got {view}")
    rng = rng if rng is not None else np.random.default_rng()
    if mode == "stride":
        span = (num_frames - 1) * stride + 1
        max_start = max(num_video_frames - span, 0)
        if train:
            start = int(rng.integers(0, max_start + 1))
        else:
            start = int(round(max_start * (view + 0.5) / num_views)) if num_views > 1 else max_start // 2
        idx = start + stride * np.arange(num_frames)
    elif mode == "segments":
        edges = np.linspace(0, num_video_frames, num_frames + 1)
        lo, hi = edges[:-1], edges[1:]
        if train:
            idx = np.floor(lo + rng.random(num_frames) * (hi - lo))
        else:
            idx = np.floor(lo + (hi - lo) * (view + 0.5) / num_views)
        idx = idx.astype(np.int64)
    else:
        raise ValueError(f"mode must be 'stride' or 'segments', got {mode!r}")
    return np.clip(idx, 0, num_video_frames - 1).astype(np.int64)
