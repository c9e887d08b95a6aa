"""The release's approach, and the fallback when DALI is missing: PyAV decoding in DataLoader workers,
clip sampling and augmentation in PyTorch."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .lists import VideoItem
from .sampling import ClipSampling, ClipView, clip_views, sample_rng

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VideoDecodeError(RuntimeError):
    """A video that cannot be used: unreadable, truncated or too short. The message names the file."""


def check_long_enough(path: str, frames: int, need: int) -> None:
    """A :class:`VideoDecodeError` naming ``path`` if its ``frames`` are fewer than the ``need`` of a clip."""
    if frames < need:
        raise VideoDecodeError(f"{path}: too short ({frames} frames, need {need})")


@contextmanager
def _decoding(path: str):
    """PyAV's decoded frames of ``path`` (an iterator); whatever PyAV raises, opening or decoding,
    becomes a :class:`VideoDecodeError` naming the file."""
    import av

    try:
        with av.open(path) as c:
            yield c.decode(video=0)
    except Exception as e:  # av.error.*, OSError, ...
        raise VideoDecodeError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e


def decode_video(path: str) -> np.ndarray:
    """All frames of ``path`` as uint8 [N, H, W, 3]."""
    with _decoding(path) as decoded:
        frames = [f.to_ndarray(format="rgb24") for f in decoded]
    if not frames:
        raise VideoDecodeError(f"{path}: no decodable video frames")
    return np.stack(frames)


def decodable_frames(path: str) -> int:
    """How many frames of ``path`` PyAV decodes (none kept: no RGB conversion, no memory held)."""
    with _decoding(path) as decoded:
        return sum(1 for _ in decoded)


def augment(clip: torch.Tensor, view: ClipView, size: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] (the view's frames) -> float [3, T, size, size], CLIP-normalised: resized
    to ``view.resize``, cropped at ``view.crop``, mirrored if ``view.flip``."""
    x = clip.permute(0, 3, 1, 2).float().div_(255.0)  # T 3 H W
    if tuple(view.resize) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=tuple(view.resize), mode="bilinear", align_corners=False, antialias=True)
    y0, x0 = view.crop
    x = x[..., y0:y0 + size, x0:x0 + size]
    if view.flip:
        x = x.flip(-1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).permute(1, 0, 2, 3).contiguous()  # 3 T H W


class VideoClipDataset(torch.utils.data.Dataset):
    """(clip [3, T, size, size], label) per item; in testing, each item yields all views
    ([V, 3, T, size, size], V = temporal x spatial views, temporal outer). ``on_error="skip"`` returns
    None for a bad video (drop it with :func:`collate_skip_bad`, which counts it); ``"raise"`` raises
    :class:`VideoDecodeError`. Views and their randomness come from :mod:`.sampling`, keyed by
    ``(seed, epoch, index)``."""

    def __init__(self, items: Sequence[VideoItem], num_frames: int = 8, mode: str = "stride", stride: int = 2,
                 size: int = 224, train: bool = True, flip: bool = True, scale: tuple = (1.0, 1.15),
                 temporal_views: int = 1, spatial_views: int = 1, on_error: str = "skip", seed: int = 0):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.cfg = ClipSampling(num_frames, mode, stride, size, flip, tuple(scale), temporal_views, spatial_views)
        self.items, self.train, self.on_error, self.seed, self.epoch = list(items), train, on_error, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness is a function of (seed, epoch, index): runs and resumes repeat exactly."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def views(self, i: int, num_video_frames: int, height: int, width: int) -> list[ClipView]:
        """The views item ``i`` yields in the current epoch (what :meth:`load` decodes and crops)."""
        return clip_views(self.cfg, num_video_frames, height, width, self.train, sample_rng(self.seed, self.epoch, i))

    def load(self, i: int):
        item = self.items[i]
        video = decode_video(item.path)
        check_long_enough(item.path, len(video), self.cfg.num_frames)
        video = torch.from_numpy(video)
        clips = [augment(video[v.frames], v, self.cfg.size) for v in self.views(i, *video.shape[:3])]
        return (clips[0] if self.train else torch.stack(clips)), item.label

    def __getitem__(self, i: int):
        try:
            return self.load(i)
        except VideoDecodeError:
            if self.on_error == "raise":
                raise
            return (None, self.items[i].path)


def collate_skip_bad(batch):
    """Default collate over the good samples; bad ones (None) are dropped and their paths returned."""
    good = [b for b in batch if b[0] is not None]
    bad = [b[1] for b in batch if b[0] is None]
    if not good:
        return None, None, bad
    clips, labels = torch.utils.data.default_collate(good)
    return clips, labels, bad


def make_pyav_loader(dataset: VideoClipDataset, batch_size: int, shuffle: bool, num_workers: int = 0,
                     sampler: Optional[torch.utils.data.Sampler] = None, drop_last: bool = False,
                     pin_memory: bool = False):
    """A DataLoader over ``dataset`` that drops bad videos (:func:`collate_skip_bad`). ``pin_memory``
    (for a CUDA training loop) puts batches in page-locked memory, so ``.to(device, non_blocking=True)``
    copies them asynchronously and at full PCIe speed."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                                       sampler=sampler, num_workers=num_workers, collate_fn=collate_skip_bad,
                                       drop_last=drop_last, persistent_workers=False, pin_memory=pin_memory)
