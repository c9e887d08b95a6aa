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
            if not path or not (label.isascii() and label.isdigit()):
                raise ValueError(f"{list_file}:{n}: expected 'relative/path label' with an int label >= 0, got {line!r}")
            items.append(VideoItem(str(root / path.strip()), int(label)))
    if not items:
        raise ValueError(f"{list_file}: no videos listed")
    return items


def read_folder_per_class(root: Union[str, os.PathLike],
                          classes: Optional[list[str]] = None) -> tuple[list[VideoItem], list[str]]:
    """``root/<class>/<video>`` layout. Without ``classes`` (a training split): the class folders sorted
    by name, label = index; hidden folders (``.name``) are not classes, and a class folder with no video
    raises (it would shift the labels after it). With ``classes`` (another split of the same data, e.g.
    the training split's names): label = the folder's index in ``classes``; a folder not among them
    raises, one with no video is allowed. Returns ``(items, classes)``."""
    root = Path(root)
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    videos = {c: [p for p in sorted((root / c).iterdir()) if p.suffix.lower() in VIDEO_EXTS] for c in folders}
    if classes is None:
        classes = folders
        empty = [c for c in folders if not videos[c]]
        if empty:
            raise ValueError(f"{root}: class folder(s) {empty} hold no video ({', '.join(VIDEO_EXTS)}); "
                             f"every class folder needs one, or the labels of the classes after it shift")
    unknown = [c for c in folders if c not in classes]
    if unknown:
        raise ValueError(f"{root}: class folder(s) {unknown} are not among the training classes {classes}")
    label = {c: i for i, c in enumerate(classes)}
    items = [VideoItem(str(p), label[c]) for c in folders for p in videos[c]]
    if not items:
        raise ValueError(f"{root}: no videos found in class folders")
    return items, list(classes)


def read_class_names(path: Optional[Union[str, os.PathLike]]) -> Optional[list[str]]:
    if path is None or not Path(path).exists():
        return None
    return [l.strip() for l in Path(path).read_text().splitlines() if l.strip()]
