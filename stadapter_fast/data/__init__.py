"""Video data: list files, clip sampling, the embedded synthetic dataset, and loaders (PyAV, DALI)."""
from .lists import VideoItem, read_class_names, read_video_list
from .sampling import ClipSampling, ClipView, clip_indices, clip_views, epoch_order, sample_rng

__all__ = ["VideoItem", "read_video_list", "read_class_names", "clip_indices", "ClipSampling", "ClipView",
           "clip_views", "epoch_order", "sample_rng"]
