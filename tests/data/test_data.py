"""Data: list files, clip sampling, the synthetic generator, PyAV and DALI decoding, bad files."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from stadapter_fast.data import clip_indices, read_video_list
from stadapter_fast.data.lists import read_folder_per_class
from stadapter_fast.data.pyav_loader import VideoClipDataset, VideoDecodeError, collate_skip_bad, decode_video
from stadapter_fast.data.synthetic import CLASSES, make_clip, make_synthetic, write_video

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), n_train=8, n_val=4, frames=16, size=32, seed=3)


def test_list_parser(tmp_path):
    (tmp_path / "l.txt").write_text("# comment\na/b c.mp4 3\n\nx.webm 0\ny.mp4\t2\n")
    items = read_video_list(tmp_path / "l.txt", root="/data")
    assert [(i.path, i.label) for i in items] == [("/data/a/b c.mp4", 3), ("/data/x.webm", 0), ("/data/y.mp4", 2)]
    (tmp_path / "bad.txt").write_text("ok.mp4 1\nnolabel.mp4\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected 'relative/path label'"):
        read_video_list(tmp_path / "bad.txt")
    (tmp_path / "sup.txt").write_text("a.mp4 \u00b2\n")  # a digit to str.isdigit, not to int()
    with pytest.raises(ValueError, match=r"sup.txt:1: expected 'relative/path label'"):
        read_video_list(tmp_path / "sup.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no videos listed"):
        read_video_list(tmp_path / "empty.txt")


def test_folder_per_class(tmp_path):
    for c in ("b_run", "a_jump"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "v.mp4").write_bytes(b"")
    (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden: not a class (it would shift every label)
    items, classes = read_folder_per_class(tmp_path)
    assert classes == ["a_jump", "b_run"] and [i.label for i in items] == [0, 1]
    (tmp_path / "c_sit").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['c_sit'\] hold no video"):
        read_folder_per_class(tmp_path)
    # another split: labelled by the training classes, where a class may be missing or empty
    val = tmp_path.parent / f"{tmp_path.name}_val"
    (val / "b_run").mkdir(parents=True)
    (val / "b_run" / "w.webm").write_bytes(b"")
    (val / "c_sit").mkdir()
    items, classes = read_folder_per_class(val, ["a_jump", "b_run", "c_sit"])
    assert [i.label for i in items] == [1] and classes == ["a_jump", "b_run", "c_sit"]
    with pytest.raises(ValueError, match=r"\['c_sit'\] are not among the training classes \['a_jump', 'b_run'\]"):
        read_folder_per_class(val, ["a_jump", "b_run"])


def test_clip_indices():
    rng = np.random.default_rng(0)
    idx = clip_indices(100, 8, "stride", 4, train=True, rng=rng)
    assert len(idx) == 8 and np.all(np.diff(idx) == 4) and idx[0] <= 100 - 29
    assert clip_indices(100, 8, "stride", 4, train=False).tolist() == list(range(35, 64, 4))
    # the release's values (its VideoDataset, worked by hand): 3 test views of a 300-frame video span
    # the starts 0 .. N - span (187), the middle one round(93.5) = 94
    assert [clip_indices(300, 8, "stride", 16, False, v, 3)[0] for v in range(3)] == [0, 94, 187]
    assert [clip_indices(100, 4, "stride", 2, False, v, 2)[0] for v in range(2)] == [0, 93]
    assert clip_indices(5, 4, "stride", 2, train=False).tolist() == [0, 2, 4, 4]  # short: the last frame
    # short in training: the last frame the stride reaches (8 of 0..9), every draw
    assert clip_indices(10, 8, "stride", 2, train=True, rng=rng).tolist() == [0, 2, 4, 6, 8, 8, 8, 8]
    assert clip_indices(15, 8, "stride", 2, train=True, rng=rng).tolist() == list(range(0, 15, 2))  # span = N
    # segments of (80 - 1) / 8 frames, bounded by round(9.875 * i): 0 10 20 30 40 49 59 69 79
    seg = clip_indices(80, 8, "segments", train=False)
    assert seg.tolist() == [5, 15, 25, 35, 44, 54, 64, 74]
    lo, hi = np.array([0, 10, 20, 30, 40, 49, 59, 69]), np.array([10, 20, 30, 40, 49, 59, 69, 79])
    draws = np.stack([clip_indices(80, 8, "segments", train=True, rng=rng) for _ in range(400)])
    assert np.all((draws >= lo) & (draws <= hi))
    assert (draws.min(0) == lo).all() and (draws.max(0) == hi).all()  # both bounds drawn
    assert clip_indices(1, 4, "segments", train=True, rng=rng).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="mode must be 'stride' or 'segments'"):
        clip_indices(10, 4, "random")
    with pytest.raises(ValueError, match="view must be in"):
        clip_indices(10, 4, train=False, view=3, num_views=3)


def test_clip_views_test_geometry_is_the_releases():
    """Testing: the short side to size, the long one floored (340 x 256 -> 297 x 224, not round's
    298), 3 crops from one end of the long side to the other (0, 73 // 2, 73), temporal views outer."""
    from stadapter_fast.data import ClipSampling, clip_views

    cfg = ClipSampling(num_frames=8, stride=16, size=224, temporal_views=3, spatial_views=3)
    views = clip_views(cfg, 300, 256, 340, train=False)
    assert {v.resize for v in views} == {(224, 297)} and not any(v.flip for v in views)
    assert [v.crop for v in views] == [(0, 0), (0, 36), (0, 73)] * 3
    assert [int(v.frames[0]) for v in views] == [0] * 3 + [94] * 3 + [187] * 3
    portrait = clip_views(cfg, 300, 340, 256, train=False)
    assert portrait[0].resize == (297, 224) and [v.crop for v in portrait[:3]] == [(0, 0), (36, 0), (73, 0)]
    one = clip_views(ClipSampling(size=224), 300, 256, 340, train=False)
    assert len(one) == 1 and one[0].crop == (0, 36)  # the centre, floored
    square = clip_views(ClipSampling(size=32, spatial_views=3), 16, 40, 40, train=False)
    assert [v.crop for v in square] == [(0, 0)] * 3 and square[0].resize == (32, 32)


def test_synthetic_classes_differ_only_in_time_direction():
    a = make_clip(0, np.random.default_rng(7))
    b = make_clip(1, np.random.default_rng(7))
    assert np.array_equal(a[::-1], b)  # contracting = expanding played backwards: same set of frames
    c, d = make_clip(2, np.random.default_rng(8)), make_clip(3, np.random.default_rng(8))
    assert np.array_equal(c[::-1], d)
    assert not np.array_equal(a, b)


def test_synthetic_dataset_files_and_determinism(dataset, tmp_path):
    items = read_video_list(dataset / "train.txt")
    assert len(items) == 8 and {i.label for i in items} == set(range(len(CLASSES)))
    assert {p.suffix for p in (dataset / "videos" / "train").iterdir()} == {".webm", ".mp4"}
    # every class has each codec alike: no codec tells a class (per clip, classes 0/2 were all VP9)
    assert sorted((i.label, Path(i.path).suffix) for i in items) == [
        (c, suffix) for c in range(len(CLASSES)) for suffix in (".mp4", ".webm")]
    again = make_synthetic(tmp_path, n_train=8, n_val=4, frames=16, size=32, seed=3)
    for a, b in zip(items, read_video_list(again / "train.txt")):
        assert np.array_equal(decode_video(a.path), decode_video(b.path))
    assert (dataset / "classes.txt").read_text().splitlines() == CLASSES


def test_ensure_synthetic_keeps_a_dataset_of_its_settings_and_remakes_another(tmp_path):
    from stadapter_fast.data.synthetic import ensure_synthetic

    kw = dict(n_train=4, n_val=0, frames=4, size=16, seed=2, codecs=["vp9"])
    root = ensure_synthetic(tmp_path, **kw)
    meta = json.loads((root / "meta.json").read_text())
    assert meta == dict(kw, layout=2)
    stamp = (root / "train.txt").stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, **kw) == root and (root / "train.txt").stat().st_mtime_ns == stamp
    # a dataset of the former layout (codecs alternating per clip) is made again
    (root / "meta.json").write_text(json.dumps(dict(kw, codecs=["vp9"])))
    ensure_synthetic(tmp_path, **kw)
    assert json.loads((root / "meta.json").read_text()) == dict(kw, layout=2)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_encoding_is_repeatable(tmp_path, codec):
    """The same frames decode the same after every encode: x264's assembly gave 2-4 different outputs
    in 16 encodes of one clip (by buffer address), which made the synthetic set differ between runs.
    (WebM files differ in bytes anyway: the container writes a random segment id.)"""
    clip = make_clip(1, np.random.default_rng(0), 16, 32)
    ext = ".mp4" if codec == "h264" else ".webm"
    first, *rest = [decode_video(write_video(tmp_path / f"{k}{ext}", clip, codec)) for k in range(10)]
    assert all(np.array_equal(first, other) for other in rest)


def test_pyav_dataset_clip_layout_and_views(dataset):
    items = read_video_list(dataset / "val.txt")
    train = VideoClipDataset(items, num_frames=8, size=24, train=True)
    x, y = train[0]
    assert x.shape == (3, 8, 24, 24) and x.dtype == torch.float32 and y == items[0].label
    test = VideoClipDataset(items, num_frames=4, size=24, train=False, temporal_views=2, spatial_views=3)
    xv, _ = test[1]
    assert xv.shape == (6, 3, 4, 24, 24)
    train.set_epoch(1)
    x2, _ = train[0]
    train.set_epoch(0)
    assert torch.equal(train[0][0], x) and not torch.equal(x2, x)  # (seed, epoch, index) determinism


def test_bad_videos_reported_by_path(dataset, tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    good = read_video_list(dataset / "train.txt")[0].path
    (tmp_path / "trunc.webm").write_bytes(open(good, "rb").read()[:200])
    write_video(tmp_path / "short.webm", make_clip(0, np.random.default_rng(0), frames=2, size=32))
    from stadapter_fast.data.lists import VideoItem

    items = [VideoItem(good, 0)] + [VideoItem(str(tmp_path / n), 1) for n in ("text.mp4", "trunc.webm", "short.webm")]
    ds = VideoClipDataset(items, num_frames=8, size=16, on_error="skip")
    clips, labels, bad = collate_skip_bad([ds[i] for i in range(4)])
    assert clips.shape[0] == 1 and labels.tolist() == [0]
    assert bad == [str(tmp_path / n) for n in ("text.mp4", "trunc.webm", "short.webm")]
    strict = VideoClipDataset(items, num_frames=8, size=16, on_error="raise")
    with pytest.raises(VideoDecodeError, match="text.mp4: cannot decode video"):
        strict[1]
    with pytest.raises(VideoDecodeError, match=r"short.webm: too short \(2 frames, need 8\)"):
        strict[3]
    from stadapter_fast.data.loaders import probe

    ok, badp = probe(items, 8, "skip")
    assert list(ok) == [0] and ok[0].frames == 16 and (ok[0].height, ok[0].width) == (32, 32) and len(badp) == 3
    with pytest.raises(VideoDecodeError, match="text.mp4"):
        probe(items, 8, "fail")


def test_dali_cpu_vp9_matches_pyav_h264(tmp_path):
    """The same clip encoded as VP9 (decoded by DALI's CPU reader) and H.264 (decoded by PyAV)."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    clip = make_clip(0, np.random.default_rng(1), frames=16, size=64)
    write_video(tmp_path / "c.webm", clip, "vp9")
    write_video(tmp_path / "c.mp4", clip, "h264")

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        return fn.experimental.readers.video(device="cpu", filenames=[str(tmp_path / "c.webm")], sequence_length=16)

    p = pipe()
    p.build()
    dali_frames = np.asarray(p.run()[0].at(0))
    pyav_frames = decode_video(str(tmp_path / "c.mp4"))
    assert dali_frames.shape == pyav_frames.shape == clip.shape
    d, p = dali_frames.astype(np.int16), pyav_frames.astype(np.int16)
    # Measured: DALI vs PyAV on the *same* VP9 stream differ by ~3.9 levels (YUV->RGB conversion);
    # VP9/DALI vs H.264/PyAV by ~4.3; each decoder vs the source by ~19 (random per-pixel texture
    # loses its chroma to 4:2:0). A wrong frame order or garbage differs by far more.
    diff = np.abs(d - p).mean()
    assert diff < 6.0, diff
    assert np.abs(d - p[::-1]).mean() > 3 * diff  # frames line up in time (the clip is time-asymmetric)
    assert np.abs(d - clip).mean() < 25.0


# --- the DALI path samples as the PyAV path: one source of truth (stadapter_fast.data.sampling) ---

# (frames, height, width): non-square both ways (crops along either long side), and one video shorter
# than a stride clip's span (4 frames 3 apart need 10), whose indices are clamped and repeat
CLIP_VIDEOS = [(24, 48, 64), (30, 64, 48), (20, 48, 48), (8, 48, 64), (26, 48, 64)]


def _frames_with_identity(n, h, w, rng):
    """uint8 [n, h, w, 3]: a blocky texture (a crop or a flip shows) over a brightness that steps 7
    levels per frame (a wrong frame shows)."""
    tex = np.kron(rng.integers(-24, 25, (h // 8, w // 8)), np.ones((8, 8)))
    return np.repeat(np.stack([np.clip(30 + 7 * t + tex, 0, 255) for t in range(n)]).astype(np.uint8)[..., None], 3, -1)


def _write_clip_videos(root, scale=1):
    """CLIP_VIDEOS in VP9 and H.264 ({codec: [VideoItem]}), their sides times ``scale``."""
    from stadapter_fast.data.lists import VideoItem

    out = {}
    for codec, ext in (("vp9", "webm"), ("h264", "mp4")):
        out[codec] = []
        for k, (n, h, w) in enumerate(CLIP_VIDEOS):
            frames = _frames_with_identity(n, h * scale, w * scale, np.random.default_rng(k))
            out[codec].append(VideoItem(str(write_video(root / f"v{k}.{ext}", frames, codec)), k % 3))
    return out


@pytest.fixture(scope="module")
def clip_videos(tmp_path_factory):
    return _write_clip_videos(tmp_path_factory.mktemp("views"))


@pytest.fixture(scope="module")
def nvdec_clip_videos(tmp_path_factory):
    """CLIP_VIDEOS 4x as wide and high (192 px and more): NVDEC refuses frames under its minimum size
    (128x128 for VP9, 144x144 for HEVC, by NVIDIA's decoder guide), and DALI's GPU decoder then fails."""
    return _write_clip_videos(tmp_path_factory.mktemp("views_nvdec"), scale=4)


def _which_frames(clip, video, view, size, cache):
    """For each frame of an augmented clip [3, T, S, S], the index of the source frame it shows (the
    nearest of every frame of ``video`` put through the same resize, crop and flip), and the largest
    such distance. ``cache`` keeps each video's resized frames."""
    from stadapter_fast.data.pyav_loader import augment
    from stadapter_fast.data.sampling import ClipView

    key = (id(video), tuple(view.resize))
    if key not in cache:  # every frame resized and normalised, uncropped: [3, N, h, w]
        cache[key] = augment(torch.from_numpy(video), ClipView(None, view.resize, (0, 0), False), max(view.resize))
    (y0, x0), every = view.crop, cache[key]
    every = every[..., y0:y0 + size, x0:x0 + size]
    if view.flip:
        every = every.flip(-1)
    d = (clip[:, :, None] - every[:, None]).abs().mean((0, 3, 4))  # [T, N]
    best = d.min(1)
    return best.indices.tolist(), best.values.max().item()


@pytest.mark.parametrize("gpu,nvdec,codecs,plan", [
    (True, True, {"h264", "vp9"}, ("decoder", "mixed", "dali-gpu-decoder")),
    (True, False, {"vp9", "mjpeg"}, ("decoder", "cpu", "dali-gpu-cpu-decoder")),
    (True, False, {"h264", "vp9"}, ("pyav", "cpu", "dali-gpu-pyav-source")),
    (False, False, {"vp8"}, ("decoder", "cpu", "dali-cpu-decoder")),
    (False, False, {"hevc"}, ("pyav", "cpu", "dali-cpu-pyav-source")),
    (False, True, {"vp9"}, ("decoder", "cpu", "dali-cpu-decoder")),  # no GPU: NVDEC is not used
])
def test_dali_decode_plan(gpu, nvdec, codecs, plan):
    """NVDEC decodes every codec; without it DALI's CPU decoder takes VP8/VP9/MJPEG and PyAV the rest,
    and on a GPU the decoded frames are augmented there."""
    from stadapter_fast.data.loaders import dali_decode_plan

    assert dali_decode_plan(gpu, nvdec, codecs) == plan


@pytest.mark.parametrize("choice,nvdec,kind", [("auto", True, "dali-gpu-decoder"),
                                               ("auto", False, "dali-gpu-pyav-source"),
                                               ("gpu", False, "dali-gpu-decoder"),
                                               ("cpu", True, "dali-gpu-pyav-source")])
def test_dali_decoder_flag_picks_the_route(clip_videos, monkeypatch, choice, nvdec, kind):
    """On a CUDA device (only named here: the constructor touches no GPU for an explicit index),
    --dali-decoder auto follows whether libnvcuvid loads; gpu and cpu force the route."""
    from stadapter_fast.data import loaders
    from stadapter_fast.train import build_parser

    monkeypatch.setattr(loaders, "nvdec_available", lambda: nvdec)
    a = build_parser().parse_args(["--frames", "4", "--dali-decoder", choice])
    dl = loaders.DALILoader(clip_videos["h264"], a, True, torch.device("cuda", 0), 0, 1)
    assert dl.kind == kind and dl.decode_device == ("mixed" if kind == "dali-gpu-decoder" else "cpu")
    with pytest.raises(ValueError, match="--dali-decoder gpu: NVDEC needs a CUDA device, got --device cpu"):
        loaders.DALILoader(clip_videos["h264"], build_parser().parse_args(["--dali-decoder", "gpu"]), True,
                           torch.device("cpu"), 0, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("train", [True, False], ids=["train", "test-2x3"])
@pytest.mark.parametrize("route", ["gpu", "cpu"])
@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_dali_gpu_routes_equal_the_cpu_pipeline(nvdec_clip_videos, codec, route, train):
    """On a GPU, NVDEC (route gpu) and CPU decoding with GPU augmentation (route cpu; H.264 decoded by
    PyAV in 2 worker processes) give the clips of the CPU pipeline (no workers), which
    test_dali_clips_equal_pyav_clips ties to the PyAV loader: same labels, same order, pixels within
    the CPU test's bound, on the GPU."""
    pytest.importorskip("nvidia.dali")
    from stadapter_fast.data.loaders import DALILoader, nvdec_available
    from stadapter_fast.train import build_parser

    if route == "gpu" and not nvdec_available():
        pytest.skip("no NVDEC here (libnvcuvid.so.1 does not load)")
    # the videos and the crop 4x the CPU tests' (40 px): the same resize ratios
    flags = ["--frames", "4", "--stride", "3", "--image-size", "160", "--batch-size", "2", "--seed", "3"]
    flags += [] if train else ["--test-temporal-views", "2", "--test-spatial-views", "3"]
    items = nvdec_clip_videos[codec]
    on_gpu = DALILoader(items, build_parser().parse_args([*flags, "--dali-decoder", route, "--workers", "2"]), train,
                        torch.device("cuda", 0), 0, 1)
    on_cpu = DALILoader(items, build_parser().parse_args(flags), train, torch.device("cpu"), 0, 1)
    assert on_gpu.kind.startswith("dali-gpu-") and on_gpu.decode_device == ("mixed" if route == "gpu" else "cpu")
    for epoch in (0, 1):
        on_gpu.set_epoch(epoch)
        on_cpu.set_epoch(epoch)
        gb, cb = list(on_gpu), list(on_cpu)
        assert len(gb) == len(cb) == len(on_cpu) > 0
        for (x, y, _), (u, v, _) in zip(gb, cb):
            assert x.is_cuda and torch.equal(y.cpu(), v) and x.shape == u.shape
            # the CPU test's bound, in 0-255 levels (CLIP std ~0.27)
            assert (x.cpu() - u).abs().max().item() * 0.27 * 255 < 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("route", ["gpu", "cpu"])
def test_dali_gpu_routes_skip_or_name_a_video_damaged_after_the_probe(nvdec_clip_videos, tmp_path, route):
    """On a GPU, NVDEC (route gpu, VP9) and CPU decoding by PyAV with GPU augmentation (route cpu,
    H.264, 2 workers) skip or name a video that fails when decoded, as the CPU routes do."""
    pytest.importorskip("nvidia.dali")
    from stadapter_fast.data.loaders import DALILoader, nvdec_available
    from stadapter_fast.train import build_parser

    if route == "gpu" and not nvdec_available():
        pytest.skip("no NVDEC here (libnvcuvid.so.1 does not load)")

    def build(items, on_bad):
        a = build_parser().parse_args(["--frames", "4", "--stride", "3", "--image-size", "160", "--batch-size", "2",
                                       "--dali-decoder", route, "--workers", "2", "--on-bad-video", on_bad])
        return DALILoader(items, a, True, torch.device("cuda", 0), 0, 1)

    _damaged_after_the_probe(nvdec_clip_videos["vp9" if route == "gpu" else "h264"], tmp_path, build, victim=2)


@pytest.mark.parametrize("device,pinned", [("cpu", False), ("cuda", True)])
def test_pyav_batches_are_pinned_for_a_cuda_loop(clip_videos, device, pinned):
    """make_loaders asks the PyAV DataLoaders for page-locked batches when training on CUDA (an
    asynchronous, full-speed copy), not on the CPU. Building the loaders needs no GPU."""
    from stadapter_fast.data.loaders import make_loaders
    from stadapter_fast.train import build_parser

    a = build_parser().parse_args(["--loader", "pyav", "--frames", "4", "--image-size", "40", "--batch-size", "2"])
    tr, va, kind = make_loaders(a, clip_videos["vp9"], clip_videos["vp9"], torch.device(device), 0, 1)
    assert kind == "pyav" and tr.pin_memory is va.pin_memory is pinned


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_routes_pyav_batches_arrive_pinned(clip_videos):
    """On a GPU the PyAV loader's batches are in page-locked memory."""
    from stadapter_fast.data.loaders import make_loaders
    from stadapter_fast.train import build_parser

    a = build_parser().parse_args(["--loader", "pyav", "--frames", "4", "--image-size", "40", "--batch-size", "2",
                                   "--workers", "2"])
    tr, _, _ = make_loaders(a, clip_videos["vp9"], clip_videos["vp9"], torch.device("cuda", 0), 0, 1)
    batches = list(tr)
    assert batches and all(x.is_pinned() and y.is_pinned() for x, y, _ in batches)


def test_probe_reads_a_repeated_file_once(clip_videos, monkeypatch):
    """A list that names each file several times (a longer epoch without more files) is probed once
    per file, with the same answer for every entry."""
    import av

    from stadapter_fast.data import loaders

    items = clip_videos["vp9"][:2] * 3
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    good, bad = loaders.probe(items, 4, "skip")
    assert sorted(opened) == sorted(it.path for it in items[:2]) and not bad
    assert sorted(good) == list(range(6)) and good[0] == good[2] == good[4] and good[1] == good[3] == good[5]


@pytest.mark.parametrize("codec", ["vp9", "h264"])
@pytest.mark.parametrize("flags,train", [
    (["--sampling", "stride"], True),
    (["--sampling", "segments"], True),
    (["--sampling", "stride", "--test-temporal-views", "2", "--test-spatial-views", "3"], False),
    (["--sampling", "segments", "--test-temporal-views", "3"], False),
], ids=["train-stride", "train-segments", "test-stride-2x3", "test-segments-3x1"])
def test_dali_clips_equal_pyav_clips(clip_videos, codec, flags, train):
    """Same seed, epoch and videos: the DALI loader decodes exactly the frames the PyAV loader samples
    (found from the decoded pixels), with the same resize, crop and flip, for two epochs, in the same
    order and batches. VP9 goes through DALI's CPU decoder fed explicit frame indices; H.264 through
    PyAV inside the DALI pipeline."""
    pytest.importorskip("nvidia.dali")
    from stadapter_fast.data.loaders import DALILoader, PyAVLoader
    from stadapter_fast.train import build_parser

    items = clip_videos[codec]
    a = build_parser().parse_args(["--frames", "4", "--stride", "3", "--image-size", "40", "--batch-size", "2",
                                   "--seed", "3", *flags])
    dali = DALILoader(items, a, train, torch.device("cpu"), 0, 1)
    pyav = PyAVLoader(items, a, train, 0, 1)
    assert dali.kind == ("dali-cpu-decoder" if codec == "vp9" else "dali-cpu-pyav-source")
    videos = [decode_video(it.path) for it in items]
    flips, cache = set(), {}
    for epoch in (0, 1):
        dali.set_epoch(epoch)
        pyav.set_epoch(epoch)
        db, pb = list(dali), list(pyav)
        assert len(db) == len(pb) == len(dali) == len(pyav) == (2 if train else 3)
        order = iter(i for i, _ in dali.plan())
        planned = [i for i, label in dali.plan() if label >= 0]
        assert planned == pyav._indices()[:len(planned)] and len(planned) == (4 if train else 5)  # train: full batches
        for (x, y, _), (u, v, _) in zip(db, pb):
            assert torch.equal(y, v) and x.shape == u.shape
            n_views = a.test_temporal_views * a.test_spatial_views
            assert x.shape[1:] == ((3, 4, 40, 40) if train else (n_views, 3, 4, 40, 40))
            # in 0-255 levels (CLIP std ~0.27). Measured: max 1.5 for VP9 (DALI's decoder and YUV->RGB vs
            # PyAV's), max 0.5 for H.264 (PyAV decodes both; DALI's resize vs torch's)
            assert (x - u).abs().max().item() * 0.27 * 255 < 4
            for clip in x:
                i = next(order)
                video = videos[i]
                views = pyav.ds.views(i, *video.shape[:3])
                for view, c in zip(views, clip[None] if train else clip):
                    shown, dist = _which_frames(c, video, view, 40, cache)
                    assert shown == view.frames.tolist() and dist < 0.05, (i, shown, view.frames, dist)
                    flips.add(view.flip)
        if train and epoch == 0:
            first = db
    assert flips == ({False, True} if train else {False})
    if train:  # a new epoch draws new clips
        assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, db))


@pytest.mark.parametrize("train", [True, False], ids=["train", "test-2x3"])
def test_dali_pyav_source_decodes_in_workers(clip_videos, tmp_path, train):
    """PyAV inside DALI (H.264 on CPU) with --workers 2: two worker processes decode, ahead of the
    pipeline, and exit with the epoch, when the loop stops early and on an error. The batches are bit
    for bit those of --workers 0 (decoding in the source callback), and a file that fails to decode is
    named in the same VideoDecodeError."""
    import multiprocessing as mp
    import shutil

    pytest.importorskip("nvidia.dali")
    from stadapter_fast.data.lists import VideoItem
    from stadapter_fast.data.loaders import DALILoader
    from stadapter_fast.train import build_parser

    items = [VideoItem(shutil.copy(it.path, str(tmp_path / f"v{k}.mp4")), it.label)
             for k, it in enumerate(clip_videos["h264"])]
    views = [] if train else ["--test-temporal-views", "2", "--test-spatial-views", "3"]

    def loader(workers):
        a = build_parser().parse_args(["--frames", "4", "--stride", "3", "--image-size", "40", "--batch-size", "2",
                                       "--seed", "7", "--workers", str(workers), *views])
        dl = DALILoader(items, a, train, torch.device("cpu"), 0, 1)
        assert dl.kind == "dali-cpu-pyav-source"
        return dl

    before = set(mp.active_children())

    def workers_now():
        return len(set(mp.active_children()) - before)

    inline, pooled = loader(0), loader(2)
    for epoch in (0, 1):
        inline.set_epoch(epoch)
        pooled.set_epoch(epoch)
        batches = iter(pooled)
        first = next(batches)
        assert workers_now() == 2
        got = [first, *batches]
        assert workers_now() == 0
        want = list(inline)
        assert len(got) == len(want) == len(pooled)
        for (x, y, _), (u, v, _) in zip(got, want):
            assert torch.equal(x, u) and torch.equal(y, v)
    batches = iter(pooled)
    next(batches)
    batches.close()  # a loop that stops early
    assert workers_now() == 0
    # an epoch stopped by an error: test_dali_skips_or_names_a_video_damaged_after_the_probe


def _copies(items, root):
    """The videos of ``items`` copied into ``root`` (a test may damage them; the fixtures are shared)."""
    import shutil

    from stadapter_fast.data.lists import VideoItem

    return [VideoItem(shutil.copy(it.path, str(Path(root) / Path(it.path).name)), it.label) for it in items]


def _damaged_after_the_probe(items, tmp_path, build, victim):
    """The DALI loaders ``build(items, on_bad_video)`` makes, over copies of ``items`` in ``tmp_path``,
    probe every file as good; then the video at plan position ``victim`` is overwritten. ``skip``: two
    passes over the epoch give the undamaged run's batches bit for bit less that one row, its path
    reported once, in its own batch. ``fail``: a VideoDecodeError naming it. Either way the decoding
    workers exit."""
    import multiprocessing as mp

    items = _copies(items, tmp_path)
    before = set(mp.active_children())
    clean, skip, fail = build(items, "skip"), build(items, "skip"), build(items, "fail")
    want = list(clean)
    B, plan = skip.batch_size, skip.plan()
    path = items[plan[victim][0]].path
    assert plan.count(plan[victim]) == 1 and len(want) == len(skip) >= 2
    Path(path).write_text("damaged after the probe")
    for _ in range(2):  # the second pass: decoder mode feeds the stand-in from the start
        got = list(skip)
        assert len(got) == len(want)
        for b, ((x, y, bad), (u, v, _)) in enumerate(zip(got, want)):
            keep = [k for k in range(len(v)) if b * B + k != victim]
            assert bad == ([path] if b == victim // B else [])
            assert torch.equal(y, v[keep]) and torch.equal(x, u[keep])
    with pytest.raises(VideoDecodeError, match=rf"^{re.escape(path)}: cannot decode video"):
        list(fail)
    assert len(set(mp.active_children()) - before) == 0


@pytest.mark.parametrize("train,victim", [(True, 1), (True, 2), (False, 0)],
                         ids=["train-first-batch", "train-second-batch", "test-2x3-padded"])
@pytest.mark.parametrize("route", ["decoder", "pyav-inline", "pyav-workers"])
def test_dali_skips_or_names_a_video_damaged_after_the_probe(clip_videos, tmp_path, route, train, victim):
    """--on-bad-video holds for a video that passes the probe and fails when decoded, on every CPU
    route: DALI's own decoder (VP9; its error names no file, so the loader finds it with PyAV and
    goes on in a new pipeline), and PyAV in the source callback or in 2 worker processes (H.264). A
    victim in the first batch fails while DALI's iterator is built; in testing the first video also
    pads the last batch, and is still reported once."""
    pytest.importorskip("nvidia.dali")
    from stadapter_fast.data.loaders import DALILoader
    from stadapter_fast.train import build_parser

    workers = "2" if route == "pyav-workers" else "0"
    kind = "dali-cpu-decoder" if route == "decoder" else "dali-cpu-pyav-source"

    def build(items, on_bad):
        views = [] if train else ["--test-temporal-views", "2", "--test-spatial-views", "3"]
        a = build_parser().parse_args(["--frames", "4", "--stride", "3", "--image-size", "40", "--batch-size", "2",
                                       "--seed", "7", "--workers", workers, "--on-bad-video", on_bad, *views])
        dl = DALILoader(items, a, train, torch.device("cpu"), 0, 1)
        assert dl.kind == kind
        return dl

    _damaged_after_the_probe(clip_videos["vp9" if route == "decoder" else "h264"], tmp_path, build, victim)


def test_dali_decoder_failure_no_file_explains_is_raised_with_the_batch(clip_videos, tmp_path, monkeypatch):
    """When DALI's decoder fails on a batch whose files PyAV all decodes in full, DALI's error is
    raised with the batch's files named, not hidden by a skip."""
    pytest.importorskip("nvidia.dali")
    from stadapter_fast.data import loaders
    from stadapter_fast.train import build_parser

    items = _copies(clip_videos["vp9"], tmp_path)
    a = build_parser().parse_args(["--frames", "4", "--stride", "3", "--image-size", "40", "--batch-size", "2"])
    dl = loaders.DALILoader(items, a, True, torch.device("cpu"), 0, 1)
    first = [items[i].path for i, _ in dl.plan()[:2]]
    Path(first[1]).write_text("damaged after the probe")
    monkeypatch.setattr(loaders, "decodable_frames", lambda path: 64)
    with pytest.raises(RuntimeError, match=re.escape(f"the batch of {first[0]}, {first[1]}, and PyAV decodes")):
        list(dl)


def test_dali_loader_errors_other_than_its_decoders_are_not_taken_for_a_bad_video(clip_videos, monkeypatch):
    """An error of the pipeline that is not its video decoder's (here: out of memory while batching)
    propagates as it came: no video is marked broken, none decoded to look for one."""
    pytest.importorskip("nvidia.dali")
    from stadapter_fast.data import loaders
    from stadapter_fast.train import build_parser

    a = build_parser().parse_args(["--frames", "4", "--stride", "3", "--image-size", "40", "--batch-size", "2"])
    dl = loaders.DALILoader(clip_videos["vp9"], a, True, torch.device("cpu"), 0, 1)

    def oom(*_):
        raise torch.OutOfMemoryError("Critical error in pipeline: nvidia.dali.fn.decoders.video out of memory")

    monkeypatch.setattr(dl, "_batches", oom)
    monkeypatch.setattr(loaders, "decodable_frames", lambda path: pytest.fail("a video was decoded to look for"))
    with pytest.raises(torch.OutOfMemoryError):
        list(dl)
    assert dl.broken == {}


def test_dali_loader_pickles_for_spawned_workers(clip_videos):
    """PyAV mode's decoding workers get the loader inside _EpochSamples: where workers are spawned
    (macOS, Python >= 3.14's default on Linux) it is pickled, lock and all."""
    import pickle

    pytest.importorskip("nvidia.dali")
    from stadapter_fast.data.loaders import DALILoader, _EpochSamples
    from stadapter_fast.train import build_parser

    a = build_parser().parse_args(["--frames", "4", "--stride", "3", "--image-size", "40", "--batch-size", "2"])
    dl = DALILoader(clip_videos["h264"], a, True, torch.device("cpu"), 0, 1)
    back = pickle.loads(pickle.dumps(_EpochSamples(dl, dl.plan(), 0)))
    k, sample = back[1]
    assert k == 1 and all(np.array_equal(x, y) for x, y in zip(sample, dl._sample(*dl.plan()[1], 0)))


@pytest.mark.parametrize("loader", ["pyav", "dali"])
def test_loader_restarted_at_an_epoch_repeats_it(clip_videos, loader):
    """A loader built afresh (as after --resume) and set to epoch 1 yields exactly the batches of one
    that ran epoch 0 first: its RNG state is (seed, epoch), which last.pt records."""
    from stadapter_fast.data.loaders import DALILoader, PyAVLoader
    from stadapter_fast.train import build_parser

    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    a = build_parser().parse_args(["--frames", "4", "--stride", "3", "--image-size", "40", "--batch-size", "2",
                                   "--seed", "5"])

    def make():
        if loader == "dali":
            return DALILoader(clip_videos["vp9"], a, True, torch.device("cpu"), 0, 1)
        return PyAVLoader(clip_videos["vp9"], a, True, 0, 1)

    straight, restarted = make(), make()
    straight.set_epoch(0)
    list(straight)
    straight.set_epoch(1)
    restarted.set_epoch(1)
    assert straight.rng_state() == restarted.rng_state() == {"seed": 5, "epoch": 1}
    batches = list(straight)
    for (x, y, _), (u, v, _) in zip(batches, restarted, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)
    # an epoch resumed after its first batch (a run stopped there): the rest of its batches
    assert len(batches) == 2
    restarted.set_epoch(1, first_batch=1)
    for (x, y, _), (u, v, _) in zip(batches[1:], restarted, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)
    for bad in (2, -1, 1.0):
        with pytest.raises(ValueError, match=rf"first_batch: expected an int in \[0, 2\) .*got {bad}"):
            restarted.set_epoch(1, first_batch=bad)


def test_dali_shards_match_pyav_shards(clip_videos):
    """DDP: every rank's DALI plan is the PyAV loader's shard (equal lengths in training, every video
    once in testing)."""
    pytest.importorskip("nvidia.dali")
    from stadapter_fast.data.loaders import DALILoader, PyAVLoader
    from stadapter_fast.train import build_parser

    a = build_parser().parse_args(["--batch-size", "1", "--frames", "4"])
    for train in (True, False):
        plans = []
        for rank in (0, 1):
            dali = DALILoader(clip_videos["vp9"], a, train, torch.device("cpu"), rank, 2)
            plans.append([i for i, label in dali.plan() if label >= 0])
            assert plans[-1] == PyAVLoader(clip_videos["vp9"], a, train, rank, 2)._indices()
        assert not set(plans[0]) & set(plans[1])
        assert [len(p) for p in plans] == ([2, 2] if train else [3, 2])


def test_bad_sampling_arguments_are_named():
    from stadapter_fast.data.sampling import ClipSampling
    from stadapter_fast.train import build_parser

    with pytest.raises(ValueError, match=r"temporal_views \(--test-temporal-views\) must be a positive int, got 0"):
        ClipSampling(temporal_views=0)
    with pytest.raises(ValueError, match=r"mode \(--sampling\) must be one of \('stride', 'segments'\), got 'random'"):
        ClipSampling(mode="random")
    for flag in ("--frames", "--stride", "--test-spatial-views", "--test-temporal-views", "--image-size"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([flag, "0"])


def test_synthetic_cli_codecs(tmp_path):
    """`stadapter-make-synthetic --codecs vp9`: every file VP9 (what DALI's CPU decoder reads); an
    unknown codec is named."""
    from stadapter_fast.data.synthetic import main

    main([str(tmp_path / "d"), "--train", "3", "--val", "1", "--frames", "4", "--size", "16", "--codecs", "vp9"])
    files = sorted(p.suffix for p in (tmp_path / "d" / "videos").rglob("*.*"))
    assert files == [".webm"] * 4
    with pytest.raises(ValueError, match=r"--codecs: expected a comma-separated list of \['h264', 'vp9'\], got 'av1'"):
        main([str(tmp_path / "e"), "--codecs", "av1"])


@pytest.mark.parametrize("argv,error", [
    (["--frames", "0"], "argument --frames: expected an int >= 1, got '0'"),  # lists naming files never written
    (["--train", "-1"], "argument --train: expected an int >= 0, got '-1'"),
    (["--size", "33"], "argument --size: expected an even size with h264"),  # libx264's opaque open error
])
def test_synthetic_cli_arguments_are_named(tmp_path, capsys, argv, error):
    from stadapter_fast.data.synthetic import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "d"), *argv])
    assert error in capsys.readouterr().err and not (tmp_path / "d").exists()
