"""The embedded default dataset: short clips that only temporal reasoning can classify.

Classes: 0 "disk expanding", 1 "disk contracting", 2 "square fading in", 3 "square fading out".
Classes 1 and 3 are classes 0 and 2 played backwards: the *set* of frames of a clip is exactly that
of its time-reversed twin, so any model that looks at frames independently and averages over time
(the frame-only baseline) cannot tell the direction. It can tell the family (disk vs square), so it
tops out at 50%. A temporal adapter sees the direction of change.

Every clip has a random textured background and object, position and sizes; deterministic by seed.
Clips come in groups of one per class, and the groups alternate between VP9 (.webm) and H.264 (.mp4),
so every class has both codecs alike: a codec's artefacts say nothing of the class. (Alternating per
clip gave classes 0 and 2 VP9 and 1 and 3 H.264: the codec's artefacts told the direction apart,
a cue that needs no look at time.)

    stadapter-make-synthetic DIR [--train 400] [--val 160] [--frames 16] [--size 64] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..checks import int_at_least

CLASSES = ["disk expanding", "disk contracting", "square fading in", "square fading out"]
CODECS = {"vp9": ("libvpx-vp9", ".webm"), "h264": ("libx264", ".mp4")}
#: the dataset's layout, in meta.json: a dataset of another layout is made again by ensure_synthetic
#: (2: codecs alternate per group of one clip per class, not per clip)
LAYOUT = 2


def make_clip(label: int, rng: np.random.Generator, frames: int = 16, size: int = 64) -> np.ndarray:
    """One clip of class ``label`` as uint8 [frames, size, size, 3]."""
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = rng.random((size, size, 3), dtype=np.float32) * 0.4
    tex = 0.5 + 0.5 * rng.random((size, size, 3), dtype=np.float32)
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    r0, r1 = rng.uniform(0.06, 0.15) * size, rng.uniform(0.34, 0.46) * size
    ramp = np.linspace(0.0, 1.0, frames)
    if label % 2 == 1:
        ramp = ramp[::-1]
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t, a in enumerate(ramp):
        if label < 2:
            r = r0 + a * (r1 - r0)
            m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)[..., None]
            f = np.where(m, tex, bg)
        else:
            h = 0.8 * r1
            m = ((np.abs(yy - cy) <= h) & (np.abs(xx - cx) <= h))[..., None]
            alpha = 0.15 + 0.85 * a
            f = np.where(m, alpha * tex + (1 - alpha) * bg, bg)
        out[t] = np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def write_video(path: Path, frames: np.ndarray, codec: str = "vp9", fps: int = 8) -> Path:
    """Encode uint8 [T, H, W, 3] frames (H, W even) with PyAV: codec "vp9" (.webm) or "h264" (.mp4)."""
    import av

    lib = CODECS[codec][0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(lib, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1  # deterministic output
        # x264's assembly made the same frames encode differently from call to call (2-4 distinct
        # outputs in 16 encodes of one clip, following the buffers' addresses); without it every
        # encode is identical, and a 224x224 clip of 16 frames still takes ~0.1 s
        stream.options = ({"crf": "10", "preset": "veryfast", "x264-params": "no-asm=1"} if codec == "h264"
                          else {"crf": "10", "b:v": "0", "deadline": "realtime", "cpu-used": "8"})
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_synthetic(root, n_train: int = 400, n_val: int = 160, frames: int = 16, size: int = 64,
                   seed: int = 0, codecs=("vp9", "h264")) -> Path:
    """Write the dataset under ``root``: ``videos/<split>/*.webm|mp4``, ``train.txt``, ``val.txt``
    (``relative/path label`` lines), ``classes.txt`` and ``meta.json``. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            label = i % len(CLASSES)
            codec = codecs[(i // len(CLASSES)) % len(codecs)]  # every class gets each codec alike
            rel = Path("videos") / split / f"{split}_{i:05d}_c{label}{CODECS[codec][1]}"
            write_video(root / rel, make_clip(label, rng, frames, size), codec)
            lines.append(f"{rel.as_posix()} {label}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "meta.json").write_text(json.dumps({"n_train": n_train, "n_val": n_val, "frames": frames,
                                                "size": size, "seed": seed, "codecs": list(codecs),
                                                "layout": LAYOUT}))
    return root


def ensure_synthetic(root, **kw) -> Path:
    """Create the dataset unless ``root`` already holds one made with the same settings."""
    root = Path(root)
    meta = root / "meta.json"
    want = dict(dict(n_train=400, n_val=160, frames=16, size=64, seed=0, codecs=["vp9", "h264"]), **kw)
    want["codecs"] = list(want["codecs"])
    if meta.exists() and json.loads(meta.read_text()) == dict(want, layout=LAYOUT):
        return root
    return make_synthetic(root, **want)


def main(argv: Optional[list] = None) -> None:
    ap = argparse.ArgumentParser(description="Write the synthetic temporal-reasoning video dataset.")
    ap.add_argument("dir")
    ap.add_argument("--train", type=int_at_least(0), default=400)
    ap.add_argument("--val", type=int_at_least(0), default=160)
    ap.add_argument("--frames", type=int_at_least(1), default=16)
    ap.add_argument("--size", type=int_at_least(2), default=64, help="frame side in pixels (even with h264)")
    ap.add_argument("--seed", type=int_at_least(0), default=0)
    ap.add_argument("--codecs", default="vp9,h264", help=f"comma-separated, taken in turn; of {sorted(CODECS)}")
    a = ap.parse_args(argv)
    codecs = tuple(c.strip() for c in a.codecs.split(",") if c.strip())
    if not codecs or set(codecs) - set(CODECS):
        raise ValueError(f"--codecs: expected a comma-separated list of {sorted(CODECS)}, got {a.codecs!r}")
    if "h264" in codecs and a.size % 2:
        ap.error(f"argument --size: expected an even size with h264 (it stores colour at half resolution), got {a.size}")
    root = make_synthetic(a.dir, a.train, a.val, a.frames, a.size, a.seed, codecs)
    print(f"wrote {a.train} train + {a.val} val clips ({len(CLASSES)} classes) to {root}")


if __name__ == "__main__":
    main()
