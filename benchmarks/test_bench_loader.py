"""Loader throughput: clips/s of the DALI pipeline vs the PyAV DataLoader, same worker/thread count,
on the synthetic dataset at 224x224, 8 frames (one training epoch per round)."""
import pytest

from benchmarks._harness import device, versions

pytest.importorskip("av")
WORKERS = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from stadapter_fast.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("syn"), n_train=48, n_val=8, frames=16, size=64, seed=0)


@pytest.mark.parametrize("provider", ["pyav", "dali"])
def test_loader(benchmark, data, provider):
    import torch

    from stadapter_fast.data import read_video_list
    from stadapter_fast.data.loaders import make_loaders
    from stadapter_fast.train import build_parser

    if provider == "dali":
        pytest.importorskip("nvidia.dali")
    args = build_parser().parse_args(["--data-root", str(data), "--image-size", "224", "--frames", "8",
                                      "--batch-size", "8", "--workers", str(WORKERS), "--loader", provider])
    items = read_video_list(data / "train.txt")
    loader, _, kind = make_loaders(args, items, items[:8], torch.device(device()), 0, 1)
    epoch = iter(range(10 ** 6))

    def one_epoch():
        loader.set_epoch(next(epoch))
        return sum(len(labels) for _, labels, _ in loader)

    n = one_epoch()  # warm-up (and the clip count)
    benchmark.pedantic(one_epoch, rounds=3, iterations=1)
    t = benchmark.stats.stats.median
    benchmark.extra_info.update(level=0, case="synthetic_224_8f", mode=f"epoch_{WORKERS}workers", dtype="uint8",
                                provider=kind, median_ms=t * 1e3, clips_per_s=n / t, speedup_vs_reference=None,
                                device=device(), **versions())
