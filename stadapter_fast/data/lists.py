"""Dataset specs: a list file of ``relative/path label`` lines (Kinetics/SSv2 style) under a root
directory, or a folder-per-class layout. Malformed lines are reported with file and line number."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov")


@dataclass(frozen=True)
class VideoItem:
    path: str
    label: int


def read_video_list(list_file: Union[str, os.PathLike], root: Union[str, os.PathLike, None] = None) -> list[VideoItem]:
    """Parse ``path label`` lines (whitespace-separated; the path may contain spaces: the label is the
    last field). Blank lines and ``#`` comments are skipped. Paths are joined to ``root`` (default:
    the list file's folder). Raises ValueError naming the file and line for a malformed line."""
    list_file = Path(list_file)
    root = Path(root) if root is not None else list_file.parent
    items = []
    with open(list_file) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            path, label = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
            if not path or not label.lstrip("-").isdigit() or int(label) < 0:
                raise ValueError(f"{list_file}:{n}: expected 'relative/path label' with an int label >= 0, got {line!r}")
            items.append(VideoItem(str(root / path.strip()), int(label)))
    if not items:
        raise ValueError(f"{list_file}: no videos listed")
    return items


def read_folder_per_class(root: Union[str, os.PathLike]) -> tuple[list[VideoItem], list[str]]:
    """``root/<class>/<video>`` layout: classes sorted by name, label = index."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    items = [VideoItem(str(p), i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir())
             if p.suffix.lower() in VIDEO_EXTS]
    if not items:
        raise ValueError(f"{root}: no videos found in class folders")
    return items, classes


def read_class_names(path: Optional[Union[str, os.PathLike]]) -> Optional[list[str]]:
    if path is None or not Path(path).exists():
        return None
    return [l.strip() for l in Path(path).read_text().splitlines() if l.strip()]
